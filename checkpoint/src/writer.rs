//! The per-worker epoch writer: buffers each output by tick and, when the
//! frontier passes a commit boundary, writes the epoch's Parquet files and
//! the worker's state snapshot, then reports them to the committer.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::CapabilitySet;
use timely::dataflow::StreamVec;

use tidemark_dataflow::event::{Anomaly, Reject, Tick, Txn, WindowRow};
use tidemark_dataflow::job::JobStreams;
use tidemark_dataflow::params::Params;
use tidemark_dataflow::stateful::{Marker, Report};

use crate::manifest::{file_name, sha256_hex, FileEntry, StateFile};
use crate::parquet_out;
use crate::storage::Storage;

/// What one worker wrote for one epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// The commit boundary (tick); `None` for the final flush after the input ended.
    pub boundary: Option<Tick>,
    pub worker: u32,
    pub files: Vec<FileEntry>,
    pub state: Option<StateFile>,
    pub duplicates: u64,
    /// The largest tick of any row written.
    pub max_tick: Option<Tick>,
}

/// A worker's state snapshot file: operator name → its key groups.
pub type StateSnapshot = Vec<(String, Vec<(u32, Vec<u8>)>)>;

/// Operator state reports waiting for their epoch: (boundary, operator, key groups).
type PendingStates = Vec<(Option<Tick>, String, Vec<(u32, Vec<u8>)>)>;

#[derive(Clone)]
pub struct WriterConfig {
    pub storage: Arc<dyn Storage>,
    pub generation: u64,
    pub source_name: String,
    pub params: Params,
}

/// Rows of one output, by tick.
struct Buffer<T>(BTreeMap<Tick, Vec<T>>);

impl<T> Buffer<T> {
    fn new() -> Self {
        Buffer(BTreeMap::new())
    }
    fn push(&mut self, t: Tick, data: &mut Vec<T>) {
        self.0.entry(t).or_default().append(data);
    }
    /// Removes and returns every row below `limit` (all, for `None`).
    fn take_below(&mut self, limit: Option<Tick>) -> (Vec<T>, Option<Tick>) {
        let taken = match limit {
            Some(l) => {
                let later = self.0.split_off(&l);
                std::mem::replace(&mut self.0, later)
            }
            None => std::mem::take(&mut self.0),
        };
        let max = taken.keys().next_back().copied();
        (taken.into_values().flatten().collect(), max)
    }
}

pub fn writer<'s>(streams: &JobStreams<'s>, cfg: WriterConfig) -> StreamVec<'s, Tick, EpochReport> {
    let scope = streams.transactions.scope();
    let worker = scope.index() as u32;
    let mut builder = OperatorBuilder::new("EpochWriter".to_owned(), scope);
    let mut txn_in = builder.new_input(streams.transactions.clone(), Pipeline);
    let mut win_in = builder.new_input(streams.windows.clone(), Pipeline);
    let mut anom_in = builder.new_input(streams.anomalies.clone(), Pipeline);
    let mut rej_in = builder.new_input(streams.rejects.clone(), Pipeline);
    let mut rep_in = builder.new_input(streams.reports.clone(), Pipeline);
    let mut mark_in = builder.new_input(streams.markers.clone(), Pipeline);
    let (out, reports) = builder.new_output();
    let mut out = OutputBuilder::<_, CapacityContainerBuilder<Vec<EpochReport>>>::from(out);

    builder.build(move |initial| {
        drop(initial);
        let mut caps = CapabilitySet::<Tick>::new();
        let mut txns = Buffer::<Txn>::new();
        let mut wins = Buffer::<WindowRow>::new();
        let mut anoms = Buffer::<Anomaly>::new();
        let mut rejs = Buffer::<Reject>::new();
        let mut dups: BTreeMap<Tick, u64> = BTreeMap::new();
        let mut states: PendingStates = Vec::new();
        let mut boundaries: Vec<Tick> = Vec::new();
        let mut final_at: Option<Tick> = None;
        let mut done = false;

        move |frontiers| {
            let time =
                |c: &timely::dataflow::operators::InputCapability<Tick>| *c.least().expect("time");
            txn_in.for_each(|c, d| txns.push(time(&c), d));
            win_in.for_each(|c, d| wins.push(time(&c), d));
            anom_in.for_each(|c, d| anoms.push(time(&c), d));
            rej_in.for_each(|c, d| rejs.push(time(&c), d));
            rep_in.for_each(|c, d| {
                let t = time(&c);
                for r in d.drain(..) {
                    match r {
                        Report::Duplicates(n) => *dups.entry(t).or_default() += n,
                        Report::State {
                            op,
                            boundary,
                            groups,
                        } => states.push((boundary, op, groups)),
                    }
                }
            });
            mark_in.for_each(|c, d| {
                let cap = c.retain_least(0).expect("marker time");
                let t = *cap.time();
                caps.insert(cap);
                for m in d.drain(..) {
                    match m {
                        Marker::Commit(b) => boundaries.push(b),
                        Marker::Final => final_at = Some(t),
                    }
                }
            });
            if done {
                return;
            }
            boundaries.sort_unstable();
            let frontier = frontiers
                .iter()
                .filter_map(|f| f.frontier().iter().min().copied())
                .min();
            let mut session = out.activate();

            while let Some(&b) = boundaries.first() {
                if frontier.is_some_and(|f| f < b) {
                    break;
                }
                boundaries.remove(0);
                let report = write_epoch(
                    &cfg,
                    worker,
                    Some(b),
                    txns.take_below(Some(b)),
                    wins.take_below(Some(b)),
                    anoms.take_below(Some(b)),
                    rejs.take_below(Some(b)),
                    take_dups(&mut dups, Some(b)),
                    take_states(&mut states, Some(b)),
                );
                session.session(&caps.delayed(&(b - 1))).give(report);
            }

            match frontier {
                Some(f) => {
                    let mut hold: Vec<Tick> =
                        boundaries.first().map(|b| b - 1).into_iter().collect();
                    hold.extend(final_at);
                    let _ = f;
                    match hold.iter().min() {
                        Some(&t) => caps.downgrade([t]),
                        None => caps.downgrade::<Tick, _>([]),
                    }
                }
                None => {
                    if final_at.is_some() {
                        let report = write_epoch(
                            &cfg,
                            worker,
                            None,
                            txns.take_below(None),
                            wins.take_below(None),
                            anoms.take_below(None),
                            rejs.take_below(None),
                            take_dups(&mut dups, None),
                            take_states(&mut states, None),
                        );
                        if let Some(t) = caps.iter().map(|c| *c.time()).min() {
                            session.session(&caps.delayed(&t)).give(report);
                        }
                    }
                    caps = CapabilitySet::new();
                    done = true;
                }
            }
        }
    });
    reports
}

fn take_dups(dups: &mut BTreeMap<Tick, u64>, limit: Option<Tick>) -> (u64, Option<Tick>) {
    let taken = match limit {
        Some(l) => {
            let later = dups.split_off(&l);
            std::mem::replace(dups, later)
        }
        None => std::mem::take(dups),
    };
    (taken.values().sum(), taken.keys().next_back().copied())
}

fn take_states(states: &mut PendingStates, boundary: Option<Tick>) -> StateSnapshot {
    let mut snapshot: StateSnapshot = Vec::new();
    states.retain_mut(|(b, op, groups)| {
        if *b == boundary {
            snapshot.push((std::mem::take(op), std::mem::take(groups)));
            false
        } else {
            true
        }
    });
    snapshot.sort_by(|a, b| a.0.cmp(&b.0));
    snapshot
}

/// Encodes and stores one epoch's files for this worker. I/O failures stop
/// the job: nothing is committed without every file in place, and a restart
/// resumes from the last committed epoch.
#[allow(clippy::too_many_arguments)]
fn write_epoch(
    cfg: &WriterConfig,
    worker: u32,
    boundary: Option<Tick>,
    txns: (Vec<Txn>, Option<Tick>),
    wins: (Vec<WindowRow>, Option<Tick>),
    anoms: (Vec<Anomaly>, Option<Tick>),
    rejs: (Vec<Reject>, Option<Tick>),
    dups: (u64, Option<Tick>),
    state: StateSnapshot,
) -> EpochReport {
    let epoch = match boundary {
        Some(b) => b * cfg.params.tick_ms,
        None => i64::MAX,
    };
    let name = file_name(epoch, cfg.generation, worker, "parquet");
    let st = &*cfg.storage;
    let mut files = Vec::new();
    let mut put = |output: &str, key: String, rows: usize, bytes: Vec<u8>| {
        st.put(&key, &bytes)
            .unwrap_or_else(|e| panic!("writing {key} to {}: {e:#}", st.describe()));
        files.push(FileEntry {
            output: output.to_owned(),
            path: key,
            rows: rows as u64,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        });
    };
    let fail = |what: &str, e: anyhow::Error| -> ! { panic!("encoding {what}: {e:#}") };

    // Transactions, partitioned by event date and hour.
    let mut by_hour: BTreeMap<(String, String), Vec<&Txn>> = BTreeMap::new();
    for t in &txns.0 {
        by_hour
            .entry(parquet_out::date_hour(t.event_time))
            .or_default()
            .push(t);
    }
    for ((date, hour), rows) in by_hour {
        let bytes = parquet_out::encode_transactions(&rows, &cfg.source_name)
            .unwrap_or_else(|e| fail("transactions", e));
        put(
            "transactions",
            format!("transactions/date={date}/hour={hour}/{name}"),
            rows.len(),
            bytes,
        );
    }
    for (i, spec) in cfg.params.windows.iter().enumerate() {
        let rows: Vec<&WindowRow> = wins.0.iter().filter(|w| w.spec as usize == i).collect();
        if !rows.is_empty() {
            let bytes =
                parquet_out::encode_windows(spec, &rows).unwrap_or_else(|e| fail("windows", e));
            put(
                "windows",
                format!("windows/window={}/{name}", spec.name),
                rows.len(),
                bytes,
            );
        }
    }
    if !anoms.0.is_empty() {
        let rows: Vec<&Anomaly> = anoms.0.iter().collect();
        let bytes = parquet_out::encode_anomalies(&rows, &cfg.params.windows)
            .unwrap_or_else(|e| fail("anomalies", e));
        put("anomalies", format!("anomalies/{name}"), rows.len(), bytes);
    }
    if !rejs.0.is_empty() {
        let rows: Vec<&Reject> = rejs.0.iter().collect();
        let bytes = parquet_out::encode_rejects(&rows, &cfg.source_name)
            .unwrap_or_else(|e| fail("rejects", e));
        put("rejects", format!("rejects/{name}"), rows.len(), bytes);
    }

    let state = (!state.is_empty()).then(|| {
        let bytes = bincode::serialize(&state).expect("state encodes");
        let key = format!("state/{}", file_name(epoch, cfg.generation, worker, "bin"));
        st.put(&key, &bytes)
            .unwrap_or_else(|e| panic!("writing {key} to {}: {e:#}", st.describe()));
        StateFile {
            path: key,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            worker,
        }
    });

    EpochReport {
        boundary,
        worker,
        files,
        state,
        duplicates: dups.0,
        max_tick: [txns.1, wins.1, anoms.1, rejs.1, dups.1]
            .into_iter()
            .flatten()
            .max(),
    }
}
