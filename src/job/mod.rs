//! Runs one job: restore from the newest valid epoch, build the dataflow on
//! every worker, run it to completion, and report.
//!
//! - [`start`]: what the output root holds and whether to resume from it.
//! - [`worker`]: one timely worker: its sources, the dataflow, the loop.
//! - [`metrics`]: what the run counts, as Prometheus metrics.
//! - [`stop`]: how every worker follows a stop requested on any process.

mod metrics;
mod start;
mod stop;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tidemark_checkpoint::committer::{CommitFailure, CommitHandle, CommitStatus};
use tidemark_checkpoint::manifest::{self, Manifest, Position, SourceNames};
use tidemark_checkpoint::s3::S3Options;
use tidemark_checkpoint::storage::{self, Storage};
use tidemark_checkpoint::writer::{WriteFailure, WriteHandle};
use tidemark_connectors::adapters::SourceSpec;
use tidemark_connectors::background::Background;
use tidemark_connectors::kafka::KafkaSettings;
use tidemark_dataflow::backlog::Backlog;
use tidemark_dataflow::params::Params;
use tidemark_dataflow::source::{Meter, SourceFailure, REFERENCE_BASE};
use tidemark_sinks::{SinkStatus, SinkTopics};

use crate::kafka_job::offset_mirror;
use crate::kinesis_job::ShardLog;
use crate::progress::{Latency, Progress, Summary};
use crate::telemetry;

/// The merchants reference table (SPEC 9): a source of its own.
pub struct ReferenceSpec {
    /// Its `source` name in rejects and positions.
    pub name: String,
    pub source: SourceSpec,
}

pub struct JobSpec {
    pub params: Params,
    pub source: SourceSpec,
    pub source_name: String,
    pub reference: Option<ReferenceSpec>,
    pub output: String,
    pub min_wall: Duration,
    pub timely: timely::Config,
    /// Events per second across the whole job; `None` for as fast as possible.
    pub max_rate: Option<u64>,
    /// Commits (with state snapshots) kept in the log.
    pub retain: u64,
    /// `[checkpoint] give_up_after`: storage errors are retried this long
    /// (`None`: until they stop).
    pub give_up_after: Option<Duration>,
    /// `[checkpoint] max_pending_epochs`: checkpoint intervals the sources
    /// may read ahead of the epoch writers.
    pub max_pending_epochs: i64,
    /// `[checkpoint] max_pending_bytes`: bytes of finished epochs a process
    /// may hold until they are written before its sources pause.
    pub max_pending_bytes: u64,
    /// Publish committed anomalies and rejects to these Kafka topics.
    pub sinks: Option<(KafkaSettings, SinkTopics)>,
    pub s3: S3Options,
    /// Restore under changed parameters: the operators whose configuration
    /// changed start empty (`--allow-config-change`).
    pub allow_config_change: bool,
    /// Set by the first SIGTERM/SIGINT to this process, or by the job when
    /// another process's stop reaches it: stop at the next commit.
    pub stop: Arc<AtomicBool>,
}

impl JobSpec {
    fn names(&self) -> SourceNames {
        SourceNames {
            main: self.source_name.clone(),
            reference: self
                .reference
                .as_ref()
                .map_or_else(|| "merchants".to_owned(), |r| r.name.clone()),
        }
    }
}

pub fn run(mut spec: JobSpec) -> Result<Summary> {
    let started = Instant::now();
    let (_, process) = crate::cluster::shape(&spec.timely);
    let _span = tracing::info_span!("job", job = %spec.output, process).entered();
    let st: Arc<dyn Storage> = storage::open_with(&spec.output, &spec.s3)?;

    let start::Start {
        resume,
        generation,
        fingerprint,
        stale,
    } = start::open_root(&*st, &mut spec, process)?;
    crate::exit::set_cluster(process, crate::cluster::addresses(&spec.timely));
    if let Some(m) = &resume {
        crate::exit::committed(m.epoch);
    }

    let meter = Arc::new(Meter::default());
    let mirror = match (&spec.source, process) {
        (SourceSpec::Kafka(k), 0) => Some(offset_mirror(k, meter.clone())?),
        _ => None,
    };
    let sink_status = Arc::new(SinkStatus::default());
    let sinks = match (&spec.sinks, process) {
        (Some((settings, topics)), 0) => Some(tidemark_sinks::start(
            st.clone(),
            settings,
            topics.clone(),
            sink_status.clone(),
        )?),
        _ => None,
    };
    let inputs = spec.source.describe();
    let names = spec.names();
    // Resume positions by dataflow partition (the reference's rebased).
    let positions: Vec<(u32, Position)> = resume.as_ref().map_or_else(Vec::new, |m| {
        m.job
            .positions
            .iter()
            .map(|p| (names.dataflow_partition(p), p.clone()))
            .collect()
    });
    let main_positions: Vec<Position> = positions
        .iter()
        .filter(|(g, _)| *g < REFERENCE_BASE)
        .map(|(_, p)| p.clone())
        .collect();
    let planned = spec.source.plan(&main_positions);
    let shard_log = match (&spec.source, process) {
        (SourceSpec::Kinesis(k), 0) => Some(Mutex::new(ShardLog::new(k.clone(), meter.clone()))),
        _ => None,
    };
    let shared = Arc::new(Shared {
        process,
        processes: crate::cluster::processes(&spec.timely),
        names,
        stale,
        positions,
        reference_meter: Arc::new(Meter::default()),
        planned,
        shard_log,
        mirror,
        sinks,
        sink_status,
        inputs,
        spec,
        storage: st,
        resume,
        generation,
        fingerprint,
        meter,
        status: Arc::new(Mutex::new(CommitStatus::default())),
        committer: OnceLock::new(),
        writes: Arc::default(),
        backlog: Arc::default(),
        latency: Arc::new(Mutex::new(Latency::new())),
        beyond_watermark: Mutex::new(Latency::new()),
        restored: Mutex::new((0, Duration::ZERO)),
        stopped: AtomicBool::new(false),
        left_quiet: AtomicBool::new(false),
        held: AtomicUsize::new(0),
        committed: Arc::new(AtomicI64::new(i64::MIN)),
        frontier_ms: Arc::new(AtomicI64::new(i64::MIN)),
        opened: AtomicUsize::new(0),
    });
    // A lost peer's line waits for commits in flight to name the epoch to
    // resume from.
    let weak = Arc::downgrade(&shared);
    crate::exit::set_in_flight(move || {
        weak.upgrade()
            .and_then(|s| s.committer.get().map(CommitHandle::queued))
            .unwrap_or(0)
    });
    let progress = Progress::start(
        shared.meter.clone(),
        shared.status.clone(),
        shared.frontier_ms.clone(),
    );
    let collected = shared.clone();
    telemetry::on_scrape(move || metrics::collect(&collected));

    let worker_shared = shared.clone();
    let guards = timely::execute(shared.spec.timely.clone(), move |worker| {
        let result = worker::run(worker, &worker_shared);
        if result.is_err() && worker_shared.processes > 1 && worker_shared.failed_for_good() {
            hold_connections(&worker_shared);
        }
        result
    })
    .map_err(|e| anyhow::anyhow!("starting the timely cluster: {e}"))?;
    let Joined {
        commit_failure,
        source_failure,
        failed,
    } = join(guards, &shared);
    progress.stop();
    // The final values stay for a last scrape; the run's state goes.
    metrics::collect(&shared);
    telemetry::clear_collectors();
    if shared.left_quiet.load(Ordering::Relaxed) {
        tracing::info!(
            epoch = ?shared.status.lock().unwrap().last_epoch.or(shared.resume.as_ref().map(|m| m.epoch)),
            "stopped on request: the sources were quiet and no boundary was coming, so nothing new was committed; a restart resumes from the last commit"
        );
    } else if shared.stopped.load(Ordering::Relaxed) {
        tracing::info!(
            epoch = ?shared.status.lock().unwrap().last_epoch,
            "stopped on request after a commit; a restart resumes from it"
        );
    }
    if let Some(m) = &shared.mirror {
        m.finish(Duration::from_secs(15));
    }
    if let Some(s) = &shared.sinks {
        s.finish(Duration::from_secs(60));
    }
    // A commit that could not be made is the job's error, typed, for
    // `main` to give its exit code.
    if let Some(e) = commit_failure {
        return Err(e);
    }
    // So is a source that failed: typed, for `main` (exit code 2).
    if let Some(e) = source_failure {
        return Err(e);
    }
    if !failed.is_empty() {
        bail!("worker failed: {}", failed.join("; "));
    }
    summarize(&shared, started.elapsed())
}

/// How the workers of this process ended.
struct Joined {
    /// A commit that could not be made: the job's error.
    commit_failure: Option<anyhow::Error>,
    /// A source partition that failed ([`SourceFailure`]): the job's error
    /// unless a commit failed too.
    source_failure: Option<anyhow::Error>,
    /// Any other worker errors.
    failed: Vec<String>,
}

/// A worker of a multi-process job that failed for good (a commit, a
/// write or a source) parks here instead of returning, so its end of the
/// connections to the other processes stays open until this process exits.
/// Had every worker returned, timely would close the connections cleanly,
/// and a peer told of a clean close keeps waiting for this process forever
/// instead of stopping with the lost-peer error (exit 6).
fn hold_connections(shared: &Shared) -> ! {
    shared.held.fetch_add(1, Ordering::AcqRel);
    loop {
        std::thread::park();
    }
}

/// Waits for every worker of this process, and for the committer thread.
fn join(guards: timely::communication::WorkerGuards<Result<()>>, shared: &Shared) -> Joined {
    let mut failed = Vec::new();
    let mut commit_failure = None;
    let mut source_failure = None;
    let mut results = Vec::new();
    let source_failed = || {
        shared
            .meter
            .failure()
            .or_else(|| shared.reference_meter.failure())
    };
    if shared.processes > 1 {
        // A failed commit (on process 0) or a failed source stops this
        // process's workers, but the other processes' workers wait for
        // them, and joining the connections to those processes would wait
        // for them forever. So once the workers here are done or holding
        // their connections after such a failure ([`hold_connections`]),
        // the connections are left to the process's exit, which ends the
        // peers (they name this process as lost).
        let workers = guards.guards().len();
        loop {
            let finished = guards.guards().iter().filter(|g| g.is_finished()).count();
            if finished == workers || finished + shared.held.load(Ordering::Acquire) == workers {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let commit = shared
            .committer
            .get()
            .and_then(CommitHandle::failure)
            .map(anyhow::Error::from)
            .or(shared.writes.failure().map(anyhow::Error::from));
        let source = source_failed();
        if commit.is_some() || source.is_some() {
            commit_failure = commit;
            source_failure = source.map(anyhow::Error::from);
            std::mem::forget(guards);
        } else {
            results = guards.join();
        }
    } else {
        results = guards.join();
    }
    for r in results {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is::<CommitFailure>() || e.is::<WriteFailure>() => {
                commit_failure.get_or_insert(e);
            }
            Ok(Err(e)) if e.is::<SourceFailure>() => {
                source_failure.get_or_insert(e);
            }
            Ok(Err(e)) => failed.push(format!("{e:#}")),
            Err(e) => failed.push(e),
        }
    }
    // Worker 0 waited for its commits; should it have failed before it got
    // there, this waits for them now.
    if let Some(c) = shared.committer.get() {
        if let Err(f) = c.finish() {
            commit_failure.get_or_insert(f.into());
        }
    }
    Joined {
        commit_failure,
        source_failure,
        failed,
    }
}

/// What the run did, once everything it wrote is committed; process 0
/// also collects leftovers of earlier runs.
fn summarize(shared: &Shared, elapsed: Duration) -> Result<Summary> {
    let (peers, process) = crate::cluster::shape(&shared.spec.timely);
    let generation = shared.generation;
    let status = shared.status.lock().unwrap().clone();
    if process == 0 && status.epochs > 0 {
        // Everything this run wrote is committed. Files of older generations
        // that no commit names are leftovers of crashed runs: any job that
        // could still commit them started before this one and lost its place
        // in the log to this run's commits.
        let garbage = manifest::collect_garbage(&*shared.storage, generation)?;
        if !garbage.is_empty() {
            tracing::info!(files = garbage.len(), "collected leftovers of earlier runs");
        }
    }
    let latency = shared.latency.lock().unwrap().clone();
    // Only a job that follows a live source has a meaningful figure: in a
    // bounded replay event time is history, not wall time.
    let following = shared.spec.source.following();
    let beyond_watermark = following.then(|| shared.beyond_watermark.lock().unwrap().clone());
    let restored = shared
        .resume
        .is_some()
        .then(|| *shared.restored.lock().unwrap());
    let read = shared.meter.records.load(Ordering::Relaxed);
    // A bounded job resumed from a commit past the end of its input reads
    // nothing and commits nothing: the root already holds its result.
    let already_finished = shared.resume.as_ref().map(|m| m.epoch).filter(|_| {
        process == 0
            && !following
            && !shared.spec.stop.load(Ordering::Relaxed)
            && read == 0
            && shared.reference_meter.records.load(Ordering::Relaxed) == 0
            && status.epochs == 0
    });
    Ok(Summary {
        process,
        peers,
        read,
        already_finished,
        elapsed,
        status,
        latency,
        beyond_watermark,
        restored,
        output: shared.storage.describe(),
    })
}

impl Shared {
    /// Whether a commit, a write or a source failed: the run ends with
    /// that error.
    fn failed_for_good(&self) -> bool {
        self.committer.get().is_some_and(|c| c.failure().is_some())
            || self.writes.failure().is_some()
            || self.meter.failure().is_some()
            || self.reference_meter.failure().is_some()
    }
}

struct Shared {
    process: usize,
    processes: usize,
    names: SourceNames,
    /// Operators whose committed state no longer applies (restored empty).
    stale: Vec<String>,
    /// The resumed epoch's positions, by dataflow partition.
    positions: Vec<(u32, Position)>,
    /// What the reference source has read (kept apart from the job's input
    /// counts and latency).
    reference_meter: Arc<Meter>,
    /// The partitions opened at start ([`SourceSpec::plan`]).
    planned: Vec<u32>,
    /// Logs Kinesis shard metrics after commits.
    shard_log: Option<Mutex<ShardLog>>,
    /// Mirrors committed Kafka positions to the group's offsets.
    mirror: Option<Background<Vec<Position>>>,
    /// Publishes committed epochs to the Kafka sinks.
    sinks: Option<Background<Manifest>>,
    /// What the sinks' publisher has done (for the metrics).
    sink_status: Arc<SinkStatus>,
    spec: JobSpec,
    storage: Arc<dyn Storage>,
    resume: Option<Manifest>,
    generation: u64,
    fingerprint: String,
    inputs: Vec<String>,
    meter: Arc<Meter>,
    status: Arc<Mutex<CommitStatus>>,
    /// The committer thread (set by worker 0 of process 0 when it builds
    /// the dataflow): every worker of the process watches it for a failed
    /// commit, and worker 0 waits for it at the end of the run.
    committer: OnceLock<CommitHandle>,
    /// The epoch writers' failures: every worker watches for one that gave up.
    writes: Arc<WriteHandle>,
    /// Bytes of finished epochs waiting for storage, and the sources'
    /// back-pressure pauses.
    backlog: Arc<Backlog>,
    latency: Arc<Mutex<Latency>>,
    /// See [`Summary::beyond_watermark`]; kept by each process's first worker.
    beyond_watermark: Mutex<Latency>,
    /// State bytes restored (all workers) and the slowest worker's time.
    restored: Mutex<(u64, Duration)>,
    /// The ticker ended a stop (its commit is in, or it found nothing to
    /// commit): workers leave.
    stopped: AtomicBool,
    /// The stop found the sources quiet and left at the last commit.
    left_quiet: AtomicBool,
    /// Workers parked by [`hold_connections`] after a failure.
    held: AtomicUsize,
    /// The newest committed boundary (tick; process 0 only): the ticker
    /// ends a stop once the stop's commit is in.
    committed: Arc<AtomicI64>,
    /// The dataflow's output frontier, event-time ms (for metrics).
    frontier_ms: Arc<AtomicI64>,
    /// Workers of this process whose sources are open.
    opened: AtomicUsize,
}

impl Shared {
    /// The resumed position of a dataflow partition.
    fn position(&self, p: u32) -> Option<&Position> {
        self.positions.iter().find(|(g, _)| *g == p).map(|(_, x)| x)
    }
}
