//! The single committer (worker 0): when the frontier passes a commit
//! boundary, every worker's files for it have been reported, so one
//! conditional create of `manifests/<E>.json` commits the epoch atomically.
//!
//! The work is split in two. The timely operator on worker 0 decides what
//! each commit holds — the positions it settles, its files and state, its
//! log position, the final epoch — in epoch order, and hands each
//! [`Manifest`] to the job's committer thread. The thread does the storage
//! work, strictly in the order it was handed: the commit (retried on
//! storage errors), retention, the `on_commit` callback, then
//! [`CommitStatus`]. So worker 0 never sleeps or waits on the store, and a
//! commit that cannot be made becomes a [`CommitFailure`] the job returns,
//! read through the [`CommitHandle`], instead of ending the process here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::StreamVec;
use timely::scheduling::SyncActivator;

use tidemark_dataflow::event::Tick;
use tidemark_dataflow::source::PositionEntry;
use tidemark_dataflow::stateful::Marker;
use tidemark_protocol::epoch::{final_epoch, Ledger, Reported};

use crate::commit_log::{self, CommitError};
use crate::manifest::{Counts, JobSection, Manifest, Position, SourceNames};
use crate::retry::{retry, Failure, RetryPolicy, Stopped, Target};
use crate::storage::Storage;
use crate::writer::EpochReport;

#[derive(Clone)]
pub struct CommitterConfig {
    pub storage: Arc<dyn Storage>,
    pub generation: u64,
    /// Names positions by source.
    pub names: SourceNames,
    pub tick_ms: i64,
    pub interval_ms: i64,
    pub params_fingerprint: String,
    /// The epoch restored from, if any.
    pub previous_epoch: Option<i64>,
    /// The commit-log position restored from (0: none).
    pub previous_seq: u64,
    /// Positions of the restored manifest (kept for partitions not seen since).
    pub previous_positions: Vec<Position>,
    /// What each source partition is (`JobSection::inputs`).
    pub inputs: Vec<String>,
    /// Where each partition of a bounded run ends (`JobSection::ends`).
    pub ends: Vec<Option<u64>>,
    /// The same of the reference source.
    pub reference_inputs: Vec<String>,
    pub reference_ends: Vec<Option<u64>>,
    /// Recorded in every commit (see `JobSection::params`).
    pub params: Option<serde_json::Value>,
    /// How many commits (with their state snapshots) to keep in the log.
    pub retain: u64,
    /// How a commit is retried on storage errors ([`RetryPolicy::default`]
    /// with `[checkpoint] give_up_after` in a job; tests shorten the delays).
    pub retry: RetryPolicy,
}

/// What the committer has done, for progress displays and summaries.
#[derive(Clone, Debug, Default)]
pub struct CommitStatus {
    pub last_epoch: Option<i64>,
    pub epochs: u64,
    pub rows: BTreeMap<String, u64>,
    pub duplicates: u64,
    /// Commit attempts that failed (retried, or the last before giving up).
    pub failures: u64,
}

/// Called on the committer thread after each commit with the manifest and
/// how long committing took.
pub type OnCommit = Box<dyn FnMut(&Manifest, Duration) + Send>;

/// Why the committer stopped committing: the job cannot go on, and a
/// restart resumes from the last commit. The message names the store, as
/// `error: <root>: <why>` does on the command line.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CommitFailure {
    /// Another job extended the commit log first: it owns the root now.
    #[error("{root}: {}", CommitError::Conflict { seq: *seq, epoch: *epoch })]
    Conflict { root: String, seq: u64, epoch: i64 },
    /// Storage errors on every attempt until `give_up_after` passed
    /// ([`RetryPolicy`]); `error` is the last one.
    #[error("{root}: {error:#}")]
    GaveUp {
        root: String,
        epoch: i64,
        attempts: u32,
        error: Arc<anyhow::Error>,
    },
}

/// Manifests handed to the committer thread and not yet committed (the one
/// being committed included) before the operator stops building more.
///
/// The choice: the backlog stays in the operator, as boundaries and the
/// workers' reports not yet turned into manifests, and a manifest is built
/// and handed over only while fewer than this many wait. Nothing blocks
/// worker 0 (a blocking `send` on a full channel would stall its whole
/// dataflow behind a slow store, which is what the thread is for), and a
/// slow or hung store holds at most this many built manifests. Commits are
/// serialized by epoch anyway, so a short queue loses nothing; the thread
/// wakes the operator after every commit to hand over the next.
pub const MAX_QUEUED: usize = 4;

/// The job's view of its committer thread (worker 0 of process 0 has one):
/// whether a commit failed, and the thread to wait for at the end of a run.
pub struct CommitHandle {
    shared: Arc<Handoff>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the operator, the thread and the handle share.
#[derive(Default)]
struct Handoff {
    /// Manifests handed over and not yet committed or failed.
    queued: AtomicUsize,
    /// Set (after `failure`) when a commit failed; the thread has stopped.
    failed: AtomicBool,
    failure: Mutex<Option<CommitFailure>>,
}

impl CommitHandle {
    /// Whether a commit failed (cheap: polled by every worker's loop).
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Why committing stopped, once it has.
    pub fn failure(&self) -> Option<CommitFailure> {
        if !self.failed() {
            return None;
        }
        self.shared.failure.lock().unwrap().clone()
    }

    /// Manifests handed to the thread and not yet committed (at most
    /// [`MAX_QUEUED`]).
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Waits until the thread has committed every manifest handed to it,
    /// then says whether all went well. Call it once the committer operator
    /// is gone (its dataflow completed or dropped): the thread ends when
    /// the operator's side of the queue closes. Later calls return the same
    /// answer at once.
    pub fn finish(&self) -> Result<(), CommitFailure> {
        let thread = self.thread.lock().unwrap().take();
        if let Some(t) = thread {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        self.failure().map_or(Ok(()), Err)
    }
}

/// One manifest for the thread, with the boundary it commits (for logs).
struct Queued {
    boundary: Option<Tick>,
    manifest: Manifest,
}

/// The operator's end of the queue.
struct Outbox {
    tx: SyncSender<Queued>,
    shared: Arc<Handoff>,
}

impl Outbox {
    fn has_room(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) < MAX_QUEUED
    }

    fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Hands a manifest over; only called when [`Outbox::has_room`].
    fn send(&self, boundary: Option<Tick>, manifest: Manifest) {
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(Queued { boundary, manifest }) {
            Ok(()) => {}
            // The channel holds at most what is counted in `queued`, minus
            // the manifest being committed.
            Err(TrySendError::Full(_)) => unreachable!("the committer queue is bounded by count"),
            // The thread stopped on a failed commit; the job is stopping.
            Err(TrySendError::Disconnected(_)) => {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// The committer operator. On worker 0 it also starts the job's committer
/// thread and returns its handle; other workers only drain their (empty)
/// inputs and return `None`.
pub fn committer<'s>(
    reports: StreamVec<'s, Tick, EpochReport>,
    positions: StreamVec<'s, Tick, PositionEntry>,
    markers: StreamVec<'s, Tick, Marker>,
    cfg: CommitterConfig,
    status: Arc<Mutex<CommitStatus>>,
    on_commit: OnCommit,
) -> Option<CommitHandle> {
    let scope = reports.scope();
    // One committer: worker 0. The others only drain their (empty) inputs.
    let is_committer = scope.index() == 0;
    let mut builder = OperatorBuilder::new("Committer".to_owned(), scope);
    let mut rep_in = builder.new_input(reports, Exchange::new(|_: &EpochReport| 0u64));
    let mut pos_in = builder.new_input(positions, Exchange::new(|_: &PositionEntry| 0u64));
    let mut mark_in = builder.new_input(markers, Pipeline);

    let (outbox, handle) = if is_committer {
        let activator = scope
            .worker()
            .sync_activator_for(builder.operator_info().address.to_vec());
        let (outbox, handle) = start_thread(&cfg, status, on_commit, activator);
        (Some(outbox), Some(handle))
    } else {
        (None, None)
    };

    builder.build_reschedule(move |_caps| {
        let mut pending: Vec<EpochReport> = Vec::new();
        let mut boundaries: Vec<Tick> = Vec::new();
        let mut done = false;
        let mut book = Book {
            ledger: Ledger::default(),
            last: cfg.previous_epoch,
            seq: cfg.previous_seq,
            committed_positions: cfg
                .previous_positions
                .iter()
                .map(|p| (cfg.names.dataflow_partition(p), p.clone()))
                .collect(),
            cfg: cfg.clone(),
        };

        // Returns whether manifests are ready but wait for room in the
        // queue: the operator must then not shut down when its frontier is
        // empty, and the thread wakes it when a commit is done.
        move |frontiers| {
            rep_in.for_each(|_, d| pending.append(d));
            pos_in.for_each(|_, d| {
                for e in d.drain(..) {
                    book.ledger.record(reported(e));
                }
            });
            mark_in.for_each(|_, d| {
                boundaries.extend(d.drain(..).filter_map(|m| match m {
                    Marker::Commit(b) => Some(b),
                    Marker::Final | Marker::Stop(_) | Marker::Leave { .. } => None,
                }))
            });
            let Some(outbox) = outbox.as_ref().filter(|_| !done) else {
                return false;
            };
            if outbox.failed() {
                // Nothing more can be committed: the job is stopping.
                done = true;
                return false;
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
                if !outbox.has_room() {
                    return true;
                }
                boundaries.remove(0);
                let (now, later): (Vec<_>, Vec<_>) =
                    pending.drain(..).partition(|r| r.boundary == Some(b));
                pending = later;
                let m = book.build(b * cfg.tick_ms, now);
                outbox.send(Some(b), m);
            }

            if frontier.is_none() {
                if !outbox.has_room() {
                    return true;
                }
                done = true;
                let finals: Vec<EpochReport> =
                    pending.drain(..).filter(|r| r.boundary.is_none()).collect();
                let anything = finals
                    .iter()
                    .any(|r| !r.files.is_empty() || r.duplicates > 0);
                if anything {
                    // The first boundary past every row and position.
                    let max_tick = finals
                        .iter()
                        .filter_map(|r| r.max_tick)
                        .chain(book.ledger.max_tick())
                        .max();
                    let epoch = final_epoch(max_tick, cfg.tick_ms, cfg.interval_ms, book.last);
                    let m = book.build(epoch, finals);
                    outbox.send(None, m);
                }
            }
            false
        }
    });
    handle
}

/// The committer's ledger: what has been decided and what positions are known.
struct Book {
    /// Position reports not yet settled by a commit.
    ledger: Ledger,
    /// The epoch of the last manifest built (restored from, at first).
    last: Option<i64>,
    /// The commit-log position of the last manifest built.
    seq: u64,
    committed_positions: BTreeMap<u32, Position>,
    cfg: CommitterConfig,
}

impl Book {
    /// The next commit: epoch `epoch` with these reports, at the next log
    /// position after the last one built. Every manifest built is committed
    /// in order, or the job stops at the first that cannot be: so the last
    /// one built is the one the next follows.
    fn build(&mut self, epoch: i64, reports: Vec<EpochReport>) -> Manifest {
        let files: Vec<_> = reports
            .iter()
            .flat_map(|r| r.files.iter().cloned())
            .collect();
        let state: Vec<_> = reports.iter().filter_map(|r| r.state.clone()).collect();
        let duplicates: u64 = reports.iter().map(|r| r.duplicates).sum();
        for e in self.ledger.settle(epoch / self.cfg.tick_ms) {
            let (source, local) = self.cfg.names.name_of(e.partition);
            self.committed_positions.insert(
                e.partition,
                Position {
                    source: source.to_owned(),
                    partition: local,
                    offset: e.offset,
                    max_ts: e.max_ts,
                    token: e.token,
                },
            );
        }
        let m = Manifest::new(
            epoch,
            files,
            JobSection {
                generation: self.cfg.generation,
                seq: self.seq + 1,
                previous_epoch: self.last,
                positions: self.committed_positions.values().cloned().collect(),
                state,
                counts: Counts {
                    duplicates,
                    records_in: 0,
                },
                params_fingerprint: self.cfg.params_fingerprint.clone(),
                inputs: self.cfg.inputs.clone(),
                ends: self.cfg.ends.clone(),
                reference_inputs: self.cfg.reference_inputs.clone(),
                reference_ends: self.cfg.reference_ends.clone(),
                params: self.cfg.params.clone(),
            },
        );
        self.seq += 1;
        self.last = Some(epoch);
        m
    }
}

/// What the committer thread needs.
struct Committing {
    storage: Arc<dyn Storage>,
    retain: u64,
    retry: RetryPolicy,
    status: Arc<Mutex<CommitStatus>>,
    on_commit: OnCommit,
    shared: Arc<Handoff>,
    /// Wakes the operator when there is room again (or a failure to see).
    activator: SyncActivator,
}

fn start_thread(
    cfg: &CommitterConfig,
    status: Arc<Mutex<CommitStatus>>,
    on_commit: OnCommit,
    activator: SyncActivator,
) -> (Outbox, CommitHandle) {
    let shared = Arc::new(Handoff::default());
    let (tx, rx) = std::sync::mpsc::sync_channel(MAX_QUEUED);
    let mut committing = Committing {
        storage: cfg.storage.clone(),
        retain: cfg.retain,
        retry: cfg.retry,
        status,
        on_commit,
        shared: shared.clone(),
        activator,
    };
    // The thread logs under the worker's span (job, process, worker).
    let span = tracing::Span::current();
    let thread = std::thread::Builder::new()
        .name("committer".to_owned())
        .spawn(move || {
            let _entered = span.enter();
            committing.run(rx);
        })
        .expect("starting the committer thread");
    (
        Outbox {
            tx,
            shared: shared.clone(),
        },
        CommitHandle {
            shared,
            thread: Mutex::new(Some(thread)),
        },
    )
}

impl Committing {
    /// Commits what the operator hands over, in order, until its side of
    /// the queue closes or a commit fails.
    fn run(&mut self, rx: Receiver<Queued>) {
        for q in rx {
            let result = self.commit(q);
            let failed = result.is_err();
            if let Err(f) = result {
                *self.shared.failure.lock().unwrap() = Some(f);
                self.shared.failed.store(true, Ordering::Release);
            }
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            // The worker may be gone already (end of run): nothing to wake.
            let _ = self.activator.activate();
            if failed {
                // The manifests still queued are dropped with `rx`: nothing
                // after a failed commit may be committed.
                return;
            }
        }
    }

    fn commit(&mut self, q: Queued) -> Result<(), CommitFailure> {
        let Queued {
            boundary,
            manifest: m,
        } = q;
        let st = &*self.storage;
        let t0 = Instant::now();
        let root = st.describe();
        let key = tidemark_protocol::keys::log_key(m.job.seq);
        let target = Target {
            store: &root,
            key: &key,
            epoch: Some(m.epoch),
        };
        // A conflict means another job owns the root now: stop at once.
        // Otherwise nothing of this epoch may be committed yet (a lost
        // answer is settled by `commit_log::commit` reading the entry
        // back): retry with the policy; a restart resumes from the last
        // commit should it give up.
        let status = &self.status;
        let outcome = retry(
            &self.retry,
            &target,
            || status.lock().unwrap().failures += 1,
            || match commit_log::commit(st, &m) {
                Ok(()) => Ok(()),
                Err(e @ CommitError::Conflict { .. }) => Err(Failure::Fatal(e)),
                Err(e @ CommitError::Storage(_)) => Err(Failure::Retry(e)),
            },
        );
        match outcome {
            Ok(()) => {}
            Err(Stopped::Fatal(CommitError::Conflict { seq, epoch })) => {
                return Err(CommitFailure::Conflict { root, seq, epoch })
            }
            Err(Stopped::Fatal(CommitError::Storage(e))) => unreachable!("retried: {e:#}"),
            Err(Stopped::GaveUp {
                error: CommitError::Storage(error),
                failures,
                ..
            }) => {
                return Err(CommitFailure::GaveUp {
                    root,
                    epoch: m.epoch,
                    attempts: failures,
                    error: Arc::new(error),
                })
            }
            Err(Stopped::GaveUp { error, .. }) => unreachable!("not retried: {error}"),
        }
        // Retention is housekeeping: a failure here loses nothing committed
        // and is retried after the next commit.
        match commit_log::retain(st, m.job.seq, self.retain) {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::debug!(files = deleted.len(), "retention: deleted old commits")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "retention failed"),
        }
        let duplicates = m.job.counts.duplicates;
        tracing::info!(
            epoch = m.epoch,
            ?boundary,
            files = m.files.len(),
            duplicates,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "committed epoch"
        );
        (self.on_commit)(&m, t0.elapsed());
        let mut s = self.status.lock().unwrap();
        s.last_epoch = Some(m.epoch);
        s.epochs += 1;
        s.duplicates += duplicates;
        for f in &m.files {
            *s.rows.entry(f.output.clone()).or_default() += f.rows;
        }
        Ok(())
    }
}

/// A source's position report, as the protocol reads it.
fn reported(e: PositionEntry) -> Reported {
    Reported {
        partition: e.partition,
        offset: e.offset,
        max_ts: e.max_ts,
        max_tick: e.max_tick,
        token: e.token,
    }
}
