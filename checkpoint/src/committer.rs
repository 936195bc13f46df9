//! The single committer (worker 0): when the frontier passes a commit
//! boundary, every worker's files for it have been reported, so one
//! conditional create of `manifests/<E>.json` commits the epoch atomically.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::StreamVec;

use tidemark_dataflow::event::Tick;
use tidemark_dataflow::source::PositionEntry;
use tidemark_dataflow::stateful::Marker;
use tidemark_protocol::epoch::{final_epoch, Ledger, Reported};

use crate::commit_log;
use crate::manifest::{Counts, JobSection, Manifest, Position, SourceNames};
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
}

/// What the committer has done, for progress displays and summaries.
#[derive(Clone, Debug, Default)]
pub struct CommitStatus {
    pub last_epoch: Option<i64>,
    pub epochs: u64,
    pub rows: BTreeMap<String, u64>,
    pub duplicates: u64,
    /// Commit attempts that failed (and were retried).
    pub failures: u64,
}

/// Called after each commit with the manifest and how long committing took.
pub type OnCommit = Box<dyn FnMut(&Manifest, std::time::Duration)>;

/// Attempts at one commit before the job gives up (exit 3): storage errors
/// are retried after 1, 2, 4 and 8 s.
const COMMIT_ATTEMPTS: u32 = 5;

pub fn committer<'s>(
    reports: StreamVec<'s, Tick, EpochReport>,
    positions: StreamVec<'s, Tick, PositionEntry>,
    markers: StreamVec<'s, Tick, Marker>,
    cfg: CommitterConfig,
    status: Arc<Mutex<CommitStatus>>,
    on_commit: OnCommit,
) {
    let scope = reports.scope();
    // One committer: worker 0. The others only drain their (empty) inputs.
    let is_committer = scope.index() == 0;
    let mut builder = OperatorBuilder::new("Committer".to_owned(), scope);
    let mut rep_in = builder.new_input(reports, Exchange::new(|_: &EpochReport| 0u64));
    let mut pos_in = builder.new_input(positions, Exchange::new(|_: &PositionEntry| 0u64));
    let mut mark_in = builder.new_input(markers, Pipeline);

    builder.build(move |_caps| {
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
            status,
            on_commit,
        };

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
                    Marker::Final => None,
                }))
            });
            if done || !is_committer {
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
                let (now, later): (Vec<_>, Vec<_>) =
                    pending.drain(..).partition(|r| r.boundary == Some(b));
                pending = later;
                book.commit(Some(b), b * cfg.tick_ms, now);
            }

            if frontier.is_none() {
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
                    book.commit(None, epoch, finals);
                }
            }
        }
    });
}

/// The committer's ledger: what has been committed and what positions are known.
struct Book {
    /// Position reports not yet settled by a commit.
    ledger: Ledger,
    last: Option<i64>,
    /// The last commit-log position.
    seq: u64,
    committed_positions: BTreeMap<u32, Position>,
    cfg: CommitterConfig,
    status: Arc<Mutex<CommitStatus>>,
    /// Called after each commit with how long it took (latency
    /// accounting, metrics, offset mirrors).
    on_commit: OnCommit,
}

impl Book {
    fn commit(&mut self, boundary: Option<Tick>, epoch: i64, reports: Vec<EpochReport>) {
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
        let t0 = std::time::Instant::now();
        let mut attempt = 1;
        while let Err(e) = commit_log::commit(&*self.cfg.storage, &m) {
            // A conflict means another job owns the root now. Otherwise
            // nothing of this epoch may be committed yet: retry, then give
            // up; a restart resumes from the last commit.
            let conflict = matches!(e, commit_log::CommitError::Conflict { .. });
            self.status.lock().unwrap().failures += 1;
            if conflict || attempt >= COMMIT_ATTEMPTS {
                eprintln!("error: {}: {e}", self.cfg.storage.describe());
                std::process::exit(3);
            }
            tracing::warn!(epoch, attempt, error = %e, "commit failed; retrying");
            std::thread::sleep(std::time::Duration::from_secs(1 << (attempt - 1)));
            attempt += 1;
        }
        self.seq += 1;
        // Retention is housekeeping: a failure here loses nothing committed
        // and is retried after the next commit.
        match commit_log::retain(&*self.cfg.storage, self.seq, self.cfg.retain) {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::debug!(files = deleted.len(), "retention: deleted old commits")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "retention failed"),
        }
        tracing::info!(
            epoch,
            ?boundary,
            files = m.files.len(),
            duplicates,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "committed epoch"
        );
        self.last = Some(epoch);
        (self.on_commit)(&m, t0.elapsed());
        let mut s = self.status.lock().unwrap();
        s.last_epoch = Some(epoch);
        s.epochs += 1;
        s.duplicates += duplicates;
        for f in &m.files {
            *s.rows.entry(f.output.clone()).or_default() += f.rows;
        }
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
