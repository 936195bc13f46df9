//! The per-worker epoch writer: buffers each output by tick and, when the
//! frontier passes a commit boundary, writes the epoch's Parquet files and
//! the worker's state snapshot, then reports them to the committer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::CapabilitySet;
use timely::dataflow::StreamVec;

use tidemark_dataflow::backlog::Backlog;
use tidemark_dataflow::event::{Anomaly, Reject, Tick, Txn, WindowRow};
use tidemark_dataflow::graph::JobStreams;
use tidemark_dataflow::params::Params;
use tidemark_dataflow::stateful::{Marker, Report};

use crate::manifest::{file_name, sha256_hex, FileEntry, SourceNames, StateFile};
use crate::parquet_out::{self, ParquetFile};
use crate::retry::{retry, Failure, RetryPolicy, Stopped, Target};
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
    /// The sources' names, for the `source` columns.
    pub names: SourceNames,
    pub params: Params,
    /// How storage work is retried ([`RetryPolicy::default`] with
    /// `[checkpoint] give_up_after` in a job).
    pub retry: RetryPolicy,
    /// Shared by every worker's writer of a process: failure counts and
    /// the failure that stopped a writer, for the job's loop to see.
    pub handle: Arc<WriteHandle>,
    /// Shared by every worker's writer of a process and its sources: the
    /// bytes of finished epochs not yet written, which the sources bound
    /// (`[checkpoint] max_pending_bytes`).
    pub backlog: Arc<Backlog>,
}

/// Why an epoch writer stopped: the job cannot go on, and a restart resumes
/// from the last commit. The message names the store, as `error: <root>:
/// <why>` does on the command line.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteFailure {
    /// Storage errors on every attempt at `key` until `give_up_after`
    /// passed; `error` is the last one.
    #[error("{root}: writing {key} (epoch {}): {error:#}", epoch.map_or_else(|| "final".to_owned(), |e| e.to_string()))]
    GaveUp {
        root: String,
        key: String,
        /// The epoch (ms); `None` for the final flush.
        epoch: Option<i64>,
        attempts: u32,
        error: Arc<anyhow::Error>,
    },
}

/// The job's view of its epoch writers (one per process, shared by its workers).
#[derive(Debug, Default)]
pub struct WriteHandle {
    /// Failed storage attempts of every writer (retried, or the last one).
    failures: AtomicU64,
    /// Set (after `failure`) when a writer gave up; its thread has stopped.
    failed: AtomicBool,
    failure: Mutex<Option<WriteFailure>>,
}

impl WriteHandle {
    /// Whether a writer gave up (cheap: polled by every worker's loop).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Why a writer stopped, once one has.
    pub fn failure(&self) -> Option<WriteFailure> {
        if !self.failed() {
            return None;
        }
        self.failure.lock().unwrap().clone()
    }

    /// Failed storage attempts so far, of every writer of the process.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn record(&self, f: WriteFailure) {
        self.failure.lock().unwrap().get_or_insert(f);
        self.failed.store(true, Ordering::Release);
    }
}

/// Rows of one output, by tick, until the frontier passes them.
struct Buffer<T>(BTreeMap<Tick, Vec<T>>);

impl<T> Buffer<T> {
    fn new() -> Self {
        Buffer(BTreeMap::new())
    }
    fn push(&mut self, t: Tick, data: &mut Vec<T>) {
        self.0.entry(t).or_default().append(data);
    }
    /// Removes every row below `limit` (all, for `None`), with the largest tick.
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

/// Which file of the epoch a row goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FileKey {
    /// Transactions of one event hour (hours since 1970).
    Transactions(i64),
    Windows(u16),
    Anomalies,
    Rejects,
}

/// The epoch being written: its open files and what else it will report.
/// Every row below the writer's frontier belongs to the next committed
/// epoch (its boundary marker has not reached the frontier yet), so rows are
/// encoded as soon as they are final and only compressed bytes wait.
#[derive(Default)]
struct OpenEpoch {
    files: BTreeMap<FileKey, ParquetFile>,
    duplicates: u64,
    max_tick: Option<Tick>,
}

impl OpenEpoch {
    fn file(&mut self, key: FileKey, cfg: &WriterConfig) -> &mut ParquetFile {
        self.files.entry(key).or_insert_with(|| {
            let schema = match key {
                FileKey::Transactions(_) => parquet_out::transactions_schema(),
                FileKey::Windows(i) => parquet_out::windows_schema(&cfg.params.windows[i as usize]),
                FileKey::Anomalies => parquet_out::anomalies_schema(),
                FileKey::Rejects => parquet_out::rejects_schema(),
            };
            ParquetFile::new(schema).unwrap_or_else(|e| panic!("opening a Parquet file: {e:#}"))
        })
    }

    fn see(&mut self, t: Option<Tick>) {
        self.max_tick = self.max_tick.max(t);
    }

    /// Bytes its files hold in memory.
    fn held_bytes(&self) -> u64 {
        self.files.values().map(ParquetFile::held_bytes).sum()
    }
}

struct Inputs {
    txns: Buffer<Txn>,
    wins: Buffer<WindowRow>,
    anoms: Buffer<Anomaly>,
    rejs: Buffer<Reject>,
    dups: BTreeMap<Tick, u64>,
}

impl Inputs {
    /// Encodes every row below `limit` into the open epoch's files.
    fn seal(&mut self, limit: Option<Tick>, epoch: &mut OpenEpoch, cfg: &WriterConfig) {
        let fail = |what: &str, e: anyhow::Error| -> ! { panic!("encoding {what}: {e:#}") };
        let (txns, t) = self.txns.take_below(limit);
        epoch.see(t);
        let mut by_hour: BTreeMap<i64, Vec<&Txn>> = BTreeMap::new();
        for x in &txns {
            by_hour
                .entry(x.event_time.div_euclid(3_600_000))
                .or_default()
                .push(x);
        }
        for (hour, rows) in by_hour {
            let cols = parquet_out::transactions_columns(&rows, &cfg.names.main)
                .unwrap_or_else(|e| fail("transactions", e));
            epoch
                .file(FileKey::Transactions(hour), cfg)
                .write(cols)
                .unwrap_or_else(|e| fail("transactions", e));
        }
        let (wins, t) = self.wins.take_below(limit);
        epoch.see(t);
        for (i, spec) in cfg.params.windows.iter().enumerate() {
            let rows: Vec<&WindowRow> = wins.iter().filter(|w| w.spec as usize == i).collect();
            if !rows.is_empty() {
                let cols = parquet_out::windows_columns(spec, &rows)
                    .unwrap_or_else(|e| fail("windows", e));
                epoch
                    .file(FileKey::Windows(i as u16), cfg)
                    .write(cols)
                    .unwrap_or_else(|e| fail("windows", e));
            }
        }
        let (anoms, t) = self.anoms.take_below(limit);
        epoch.see(t);
        if !anoms.is_empty() {
            let rows: Vec<&Anomaly> = anoms.iter().collect();
            let cols = parquet_out::anomalies_columns(&rows, &cfg.params.windows)
                .unwrap_or_else(|e| fail("anomalies", e));
            epoch
                .file(FileKey::Anomalies, cfg)
                .write(cols)
                .unwrap_or_else(|e| fail("anomalies", e));
        }
        let (rejs, t) = self.rejs.take_below(limit);
        epoch.see(t);
        if !rejs.is_empty() && cfg.params.outputs.rejects {
            let rows: Vec<&Reject> = rejs.iter().collect();
            let cols = parquet_out::rejects_columns(&rows, &cfg.names)
                .unwrap_or_else(|e| fail("rejects", e));
            epoch
                .file(FileKey::Rejects, cfg)
                .write(cols)
                .unwrap_or_else(|e| fail("rejects", e));
        }
        let taken = match limit {
            Some(l) => {
                let later = self.dups.split_off(&l);
                std::mem::replace(&mut self.dups, later)
            }
            None => std::mem::take(&mut self.dups),
        };
        epoch.duplicates += taken.values().sum::<u64>();
        epoch.see(taken.keys().next_back().copied());
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

    // Finishing an epoch's files, hashing and storing them and the state
    // happen on a thread of their own, in order, so the worker keeps
    // processing (and its frontier moving) while they are written. The
    // report is released, with the capability held for it, when it is back.
    // Each epoch goes with the bytes it added to the backlog, taken off
    // once it is written.
    let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
    let (done_tx, finished) = std::sync::mpsc::channel::<EpochReport>();
    let activator = scope
        .worker()
        .sync_activator_for(builder.operator_info().address.to_vec());
    let thread_cfg = cfg.clone();
    // The thread logs under the worker's span (job, process, worker).
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name(format!("epoch-writer-{worker}"))
        .spawn(move || {
            let _entered = span.enter();
            for Job {
                boundary,
                epoch,
                state,
                held,
            } in job_rx
            {
                match close_epoch(&thread_cfg, worker, boundary, epoch, state) {
                    Ok(report) => {
                        thread_cfg.backlog.remove(held);
                        if done_tx.send(report).is_err() {
                            break;
                        }
                    }
                    Err(f) => {
                        // Nothing of this epoch is reported, so nothing
                        // after it commits; the workers see the failure
                        // and stop, and a restart resumes from the last
                        // commit.
                        tracing::error!("{f}");
                        thread_cfg.handle.record(f);
                        let _ = activator.activate();
                        break;
                    }
                }
                let _ = activator.activate();
            }
        })
        .expect("starting the epoch writer thread");

    builder.build(move |initial| {
        drop(initial);
        let mut in_flight: std::collections::VecDeque<
            timely::dataflow::operators::Capability<Tick>,
        > = std::collections::VecDeque::new();
        let mut caps = CapabilitySet::<Tick>::new();
        let mut inputs = Inputs {
            txns: Buffer::new(),
            wins: Buffer::new(),
            anoms: Buffer::new(),
            rejs: Buffer::new(),
            dups: BTreeMap::new(),
        };
        let mut epoch = OpenEpoch::default();
        let mut states: PendingStates = Vec::new();
        let mut boundaries: Vec<Tick> = Vec::new();
        let mut final_at: Option<Tick> = None;
        let mut done = false;

        move |frontiers| {
            let time =
                |c: &timely::dataflow::operators::InputCapability<Tick>| *c.least().expect("time");
            txn_in.for_each(|c, d| inputs.txns.push(time(&c), d));
            win_in.for_each(|c, d| inputs.wins.push(time(&c), d));
            anom_in.for_each(|c, d| inputs.anoms.push(time(&c), d));
            rej_in.for_each(|c, d| inputs.rejs.push(time(&c), d));
            rep_in.for_each(|c, d| {
                let t = time(&c);
                for r in d.drain(..) {
                    match r {
                        Report::Duplicates(n) => *inputs.dups.entry(t).or_default() += n,
                        Report::State {
                            op,
                            boundary,
                            groups,
                            ..
                        } => states.push((boundary, op, groups)),
                    }
                }
            });
            mark_in.for_each(|c, d| {
                // `Stop` and `Leave` need no capability: the workers drop
                // the dataflow after them.
                d.retain(|m| matches!(m, Marker::Commit(_) | Marker::Final));
                if d.is_empty() {
                    return;
                }
                let cap = c.retain_least(0).expect("marker time");
                let t = *cap.time();
                caps.insert(cap);
                for m in d.drain(..) {
                    match m {
                        Marker::Commit(b) => boundaries.push(b),
                        Marker::Final => final_at = Some(t),
                        Marker::Stop(_) | Marker::Leave { .. } => {}
                    }
                }
            });
            {
                let mut session = out.activate();
                while let Ok(report) = finished.try_recv() {
                    let cap = in_flight.pop_front().expect("a capability per epoch sent");
                    session.session(&cap).give(report);
                }
            }
            if done {
                return;
            }
            boundaries.sort_unstable();
            let frontier = frontiers
                .iter()
                .filter_map(|f| f.frontier().iter().min().copied())
                .min();
            while let Some(&b) = boundaries.first() {
                if frontier.is_some_and(|f| f < b) {
                    break;
                }
                boundaries.remove(0);
                inputs.seal(Some(b), &mut epoch, &cfg);
                in_flight.push_back(caps.delayed(&(b - 1)));
                let job = Job::new(
                    Some(b),
                    std::mem::take(&mut epoch),
                    take_states(&mut states, Some(b)),
                    &cfg.backlog,
                );
                // The thread is gone only after giving up: the job is stopping.
                let _ = jobs.send(job);
            }

            match frontier {
                Some(f) => {
                    inputs.seal(Some(f), &mut epoch, &cfg);
                    let mut hold: Vec<Tick> =
                        boundaries.first().map(|b| b - 1).into_iter().collect();
                    hold.extend(final_at);
                    match hold.iter().min() {
                        Some(&t) => caps.downgrade([t]),
                        None => caps.downgrade::<Tick, _>([]),
                    }
                }
                None => {
                    if final_at.is_some() {
                        inputs.seal(None, &mut epoch, &cfg);
                        if let Some(t) = caps.iter().map(|c| *c.time()).min() {
                            in_flight.push_back(caps.delayed(&t));
                            let job = Job::new(
                                None,
                                std::mem::take(&mut epoch),
                                take_states(&mut states, None),
                                &cfg.backlog,
                            );
                            let _ = jobs.send(job);
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

/// One finished epoch for the writer thread.
struct Job {
    boundary: Option<Tick>,
    epoch: OpenEpoch,
    state: StateSnapshot,
    /// Bytes counted in the backlog for it.
    held: u64,
}

impl Job {
    /// The epoch, its bytes counted in `backlog` until it is written.
    fn new(
        boundary: Option<Tick>,
        epoch: OpenEpoch,
        state: StateSnapshot,
        backlog: &Backlog,
    ) -> Self {
        let held = epoch.held_bytes() + state_bytes(&state);
        backlog.add(held);
        Job {
            boundary,
            epoch,
            state,
            held,
        }
    }
}

fn state_bytes(state: &StateSnapshot) -> u64 {
    state
        .iter()
        .flat_map(|(_, groups)| groups.iter().map(|(_, b)| b.len() as u64))
        .sum()
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

/// Finishes and stores one epoch's files and state for this worker.
/// Storage errors are retried with the policy (puts replace, so a lost
/// answer is retried like a failure); nothing is committed without every
/// file in place. Giving up is a [`WriteFailure`]; a restart resumes from
/// the last committed epoch.
fn close_epoch(
    cfg: &WriterConfig,
    worker: u32,
    boundary: Option<Tick>,
    epoch: OpenEpoch,
    state: StateSnapshot,
) -> Result<EpochReport, WriteFailure> {
    let number = match boundary {
        Some(b) => b * cfg.params.tick_ms,
        None => i64::MAX,
    };
    let epoch_ms = boundary.map(|b| b * cfg.params.tick_ms);
    let name = file_name(number, cfg.generation, worker, "parquet");
    let st = &*cfg.storage;
    let root = st.describe();
    let store = |key: &str, bytes: &[u8]| -> Result<(), WriteFailure> {
        let target = Target {
            store: &root,
            key,
            epoch: epoch_ms,
        };
        retry(
            &cfg.retry,
            &target,
            || {
                cfg.handle.failures.fetch_add(1, Ordering::Relaxed);
            },
            || st.put(key, bytes).map_err(Failure::Retry),
        )
        .map_err(|stopped| match stopped {
            Stopped::GaveUp {
                error, failures, ..
            } => WriteFailure::GaveUp {
                root: root.clone(),
                key: key.to_owned(),
                epoch: epoch_ms,
                attempts: failures,
                error: Arc::new(error.into()),
            },
            // Every storage error is retried.
            Stopped::Fatal(error) => unreachable!("not retried: {error:#}"),
        })
    };
    let mut files = Vec::new();
    for (key, file) in epoch.files {
        let (output, path) = match key {
            FileKey::Transactions(hour) => {
                let (date, hour) = parquet_out::date_hour(hour * 3_600_000);
                (
                    "transactions",
                    format!("transactions/date={date}/hour={hour}/{name}"),
                )
            }
            FileKey::Windows(i) => (
                "windows",
                format!(
                    "windows/window={}/{name}",
                    cfg.params.windows[i as usize].name
                ),
            ),
            FileKey::Anomalies => ("anomalies", format!("anomalies/{name}")),
            FileKey::Rejects => ("rejects", format!("rejects/{name}")),
        };
        let rows = file.rows();
        let bytes = file
            .finish()
            .unwrap_or_else(|e| panic!("finishing {path}: {e:#}"));
        store(&path, &bytes)?;
        files.push(FileEntry {
            output: output.to_owned(),
            path,
            rows,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        });
    }
    let state = if state.is_empty() {
        None
    } else {
        let bytes = crate::state_file::encode(&state);
        let key = format!("state/{}", file_name(number, cfg.generation, worker, "bin"));
        store(&key, &bytes)?;
        Some(StateFile {
            path: key,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            worker,
        })
    };
    Ok(EpochReport {
        boundary,
        worker,
        files,
        state,
        duplicates: epoch.duplicates,
        max_tick: epoch.max_tick,
    })
}
