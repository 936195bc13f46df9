//! The whole computation, wired: source streams in, output streams out.

use std::collections::HashMap;
use std::time::Duration;

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::{Concatenate, Filter};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;

use crate::dedup::{route_txn, Dedup};
use crate::event::{Anomaly, Reject, Tick, Txn, WindowRow};
use crate::params::Params;
use crate::source::PositionEntry;
use crate::stateful::{stateful, Marker, Report};
use crate::ticker::ticker;
use crate::window::{group_key, route_key, WinIn, Windows};
use crate::zscore::{TxnZ, WindowZ, ZIn};

/// State restored from a committed epoch, for this worker's key groups.
#[derive(Default)]
pub struct Restored {
    /// The committed boundary (tick); `None` for a fresh start.
    pub boundary: Option<Tick>,
    /// Operator name → its key groups.
    pub state: HashMap<String, Vec<(u32, Vec<u8>)>>,
}

impl Restored {
    fn groups(&self, op: &str) -> &[(u32, Vec<u8>)] {
        self.state.get(op).map(Vec::as_slice).unwrap_or(&[])
    }
}

pub struct JobStreams<'s> {
    pub transactions: StreamVec<'s, Tick, Txn>,
    pub windows: StreamVec<'s, Tick, WindowRow>,
    pub anomalies: StreamVec<'s, Tick, Anomaly>,
    pub rejects: StreamVec<'s, Tick, Reject>,
    pub reports: StreamVec<'s, Tick, Report>,
    pub positions: StreamVec<'s, Tick, PositionEntry>,
    pub markers: StreamVec<'s, Tick, Marker>,
}

/// Builds dedup, windows and detectors over the sources' streams.
pub fn build<'s>(
    params: &Params,
    txns: StreamVec<'s, Tick, Txn>,
    rejects: StreamVec<'s, Tick, Reject>,
    positions: StreamVec<'s, Tick, PositionEntry>,
    restored: &Restored,
    min_wall: Duration,
) -> JobStreams<'s> {
    let scope = txns.scope();
    let interval_ticks = params.checkpoint_interval_ms / params.tick_ms;
    let markers = ticker(
        positions.clone(),
        interval_ticks,
        min_wall,
        restored.boundary,
    );

    let mut dedup = Dedup::new(params.dedup_horizon_ms, params.tick_ms);
    dedup.restore(restored.groups(&dedup_name()));
    let (kept, dedup_reports) = stateful(txns, Exchange::new(route_txn), markers.clone(), dedup);
    let mut reports = vec![dedup_reports];

    let mut window_streams = Vec::new();
    let mut z_input = None;
    for (i, spec) in params.windows.iter().enumerate() {
        let mut logic = Windows::new(i, spec, params.tick_ms);
        if let Some(b) = restored.boundary {
            let name = crate::stateful::Logic::name(&logic);
            logic.restore(b, restored.groups(&name));
        }
        let spec = spec.clone();
        let input = kept.clone().map(move |t| WinIn {
            time: t.event_time,
            cents: t.amount_cents,
            key: group_key(&spec, &t),
        });
        let (rows, r) = stateful(
            input,
            Exchange::new(|w: &WinIn| route_key(&w.key)),
            markers.clone(),
            logic,
        );
        reports.push(r);
        if params.window_z.enabled && params.window_z.spec == i {
            z_input = Some(rows.clone());
        }
        window_streams.push(rows);
    }

    let mut anomaly_streams = Vec::new();
    if params.txn_z.enabled {
        let mut logic = TxnZ::new(params.txn_z.clone());
        logic.restore(restored.groups("txn_z"));
        let input = kept.clone().map(|t| ZIn::of(&t));
        let (rows, r) = stateful(
            input,
            Exchange::new(|z: &ZIn| route_key(&z.customer)),
            markers.clone(),
            logic,
        );
        anomaly_streams.push(rows);
        reports.push(r);
    }
    if let Some(rows) = z_input {
        let mut logic = WindowZ::new(params.window_z.clone());
        logic.restore(restored.groups("window_z"));
        // Window rows already live on the worker that owns their key.
        let (rows, r) = stateful(rows, Pipeline, markers.clone(), logic);
        anomaly_streams.push(rows);
        reports.push(r);
    }

    let windows = scope.concatenate(window_streams);
    let anomalies = if anomaly_streams.is_empty() {
        // An empty stream that still closes when the sources do.
        kept.clone().filter(|_| false).map(|_| unreachable!())
    } else {
        scope.concatenate(anomaly_streams)
    };
    JobStreams {
        transactions: kept,
        windows,
        anomalies,
        rejects,
        reports: scope.concatenate(reports),
        positions,
        markers,
    }
}

fn dedup_name() -> String {
    "dedup".into()
}
