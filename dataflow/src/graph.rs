//! The whole computation, wired: source streams in, output streams out.

use std::collections::HashMap;
use std::time::Duration;

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::{Concatenate, Filter};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;

use crate::dedup::{route_txn, Dedup};
use crate::enrich::{enrich, table, Table, Version};
use crate::event::{Anomaly, Reject, Tick, Txn, WindowRow};
use crate::params::Params;
use crate::params::WindowSpec;
use crate::source::{PositionEntry, SourceStreams};
use crate::stateful::{stateful, Marker, Report};
use crate::stop::Stopping;
use crate::ticker::ticker;
use crate::window::{route_key, PreAgg, WinIn, Windows};
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

/// Builds dedup, enrichment, windows and detectors over the sources'
/// streams: the transactions source, and the merchants reference source
/// (SPEC 9) if there is one.
pub fn build<'s>(
    params: &Params,
    source: SourceStreams<'s>,
    reference: Option<SourceStreams<'s, (String, Version)>>,
    restored: &Restored,
    min_wall: Duration,
    stop: Stopping,
) -> JobStreams<'s> {
    let (txns, rejects, positions) = source;
    let scope = txns.scope();
    // Reference rejects and positions are the job's like any source's.
    let (versions, rejects, positions) = match reference {
        Some((versions, r, p)) => (
            Some(versions),
            scope.concatenate([rejects, r]),
            scope.concatenate([positions, p]),
        ),
        None => (None, rejects, positions),
    };
    let interval_ticks = params.checkpoint_interval_ms / params.tick_ms;
    let markers = ticker(
        positions.clone(),
        interval_ticks,
        min_wall,
        restored.boundary,
        stop,
    );

    let mut dedup = Dedup::new(params.dedup_horizon_ms, params.tick_ms);
    dedup.restore(restored.groups(&crate::stateful::Logic::name(&dedup)));
    let (kept, dedup_reports) = stateful(txns, Exchange::new(route_txn), markers.clone(), dedup);
    let mut reports = vec![dedup_reports];

    let kept = match versions {
        Some(versions) => {
            let mut logic = Table::new();
            if let Some(b) = restored.boundary {
                logic.restore(b, restored.groups(&crate::stateful::Logic::name(&logic)));
            }
            let (updates, r) = table(versions, markers.clone(), logic);
            reports.push(r);
            enrich(kept, updates)
        }
        None => kept,
    };

    // What is computed: windows that are written or watched by the window
    // detector; detectors only when anomalies are written.
    let out = &params.outputs;
    let txn_z = out.anomalies && params.txn_z.enabled;
    let window_z = out.anomalies && params.window_z.enabled;
    let specs: Vec<Option<WindowSpec>> = params
        .windows
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            (out.windows || (window_z && params.window_z.spec == i)).then(|| spec.clone())
        })
        .collect();
    let (kept, window_inputs, z_in) = fan_out(kept, specs.clone(), out.transactions, txn_z);
    let mut window_streams = Vec::new();
    let mut z_input = None;
    for ((i, spec), input) in specs.iter().enumerate().zip(window_inputs) {
        let Some(spec) = spec else { continue };
        let mut logic = Windows::new(i, spec, params.tick_ms);
        if let Some(b) = restored.boundary {
            let name = crate::stateful::Logic::name(&logic);
            logic.restore(b, restored.groups(&name));
        }
        let (rows, r) = stateful(
            input,
            Exchange::new(|w: &WinIn| route_key(&w.key)),
            markers.clone(),
            logic,
        );
        reports.push(r);
        if window_z && params.window_z.spec == i {
            z_input = Some(rows.clone());
        }
        if out.windows {
            window_streams.push(rows);
        }
    }

    let mut anomaly_streams = Vec::new();
    if let Some(input) = z_in {
        let mut logic = TxnZ::new(params.txn_z.clone());
        logic.restore(restored.groups("txn_z"));
        let (rows, r) = stateful(
            input,
            Exchange::new(|z: &ZIn| route_key(z.customer())),
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

    let windows = if window_streams.is_empty() {
        kept.clone().filter(|_| false).map(|_| unreachable!())
    } else {
        scope.concatenate(window_streams)
    };
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

/// One pass over kept transactions that makes what each consumer needs —
/// each window spec's partial aggregates (folded per tick and key here,
/// before the exchange, and sent once the frontier passes the tick) and the
/// z-score input — and passes the transactions on by move, so no consumer
/// gets its own deep copy. `specs` are the windows to compute; a `None`
/// stays empty.
#[allow(clippy::type_complexity)]
fn fan_out<'s>(
    kept: StreamVec<'s, Tick, Txn>,
    specs: Vec<Option<WindowSpec>>,
    pass_txns: bool,
    z_enabled: bool,
) -> (
    StreamVec<'s, Tick, Txn>,
    Vec<StreamVec<'s, Tick, WinIn>>,
    Option<StreamVec<'s, Tick, ZIn>>,
) {
    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
    use timely::dataflow::operators::generic::OutputBuilder;
    use timely::dataflow::operators::CapabilitySet;

    let mut builder = OperatorBuilder::new("FanOut".to_owned(), kept.scope());
    let mut input = builder.new_input(kept, Pipeline);
    let (txn_out, txns) = builder.new_output();
    let mut txn_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Txn>>>::from(txn_out);
    let mut win_outs = Vec::new();
    let mut win_streams = Vec::new();
    for _ in &specs {
        let (o, s) = builder.new_output();
        win_outs.push(OutputBuilder::<_, CapacityContainerBuilder<Vec<WinIn>>>::from(o));
        win_streams.push(s);
    }
    let (z_out, z_stream) = builder.new_output();
    let mut z_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<ZIn>>>::from(z_out);
    let mut pre: Vec<Option<PreAgg>> = specs.iter().map(|s| s.as_ref().map(PreAgg::new)).collect();
    let z_port = 1 + specs.len();

    builder.build(move |initial| {
        drop(initial);
        // One capability per window output and tick with partials held.
        let mut held: Vec<CapabilitySet<Tick>> = pre.iter().map(|_| CapabilitySet::new()).collect();
        move |frontiers| {
            let mut txn_session = txn_out.activate();
            let mut z_session = z_out.activate();
            input.for_each(|cap, data| {
                let t = *cap.least().expect("a time");
                for (i, p) in pre.iter_mut().enumerate() {
                    if let Some(p) = p {
                        p.add(t, data);
                        held[i].insert(cap.delayed(&t, 1 + i));
                    }
                }
                if z_enabled {
                    let c = cap.delayed(&t, z_port);
                    z_session
                        .session(&c)
                        .give_iterator(data.iter().map(ZIn::of));
                }
                if pass_txns {
                    let c = cap.delayed(&t, 0);
                    txn_session.session(&c).give_container(data);
                }
            });
            let limit = frontiers[0].frontier().first().copied();
            for ((p, out), caps) in pre.iter_mut().zip(win_outs.iter_mut()).zip(held.iter_mut()) {
                let Some(p) = p else { continue };
                let mut session = out.activate();
                for (t, partials) in p.take_below(limit) {
                    session
                        .session(&caps.delayed(&t))
                        .give_iterator(partials.into_iter());
                }
                match p.pending() {
                    Some(t) => caps.downgrade([t]),
                    None => caps.downgrade::<Tick, _>([]),
                }
            }
        }
    });
    (txns, win_streams, z_enabled.then_some(z_stream))
}
