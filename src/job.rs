//! Runs one job: restore from the newest valid epoch, build the dataflow on
//! every worker, run it to completion, and report.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tidemark_checkpoint::commit_log;
use tidemark_checkpoint::committer::{
    committer, CommitFailure, CommitHandle, CommitStatus, CommitterConfig, Retry,
};
use tidemark_checkpoint::manifest::{self, Manifest, Position, SourceNames};
use tidemark_checkpoint::restore::restore_state;
use tidemark_checkpoint::s3::S3Options;
use tidemark_checkpoint::storage::{self, Storage};
use tidemark_checkpoint::writer::{writer, WriterConfig};
use tidemark_dataflow::event::Tick;
use tidemark_dataflow::job::{build, Restored};
use tidemark_dataflow::params::Params;
use tidemark_dataflow::source::{
    source, source_of, Merchants, Meter, SourceConfig, REFERENCE_BASE,
};
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;

use crate::kafka_job::offset_mirror;
use crate::kinesis_job::ShardLog;
use crate::progress::{Latency, Progress, Summary};
use crate::telemetry;
use tidemark_connectors::adapters::SourceSpec;
use tidemark_connectors::background::Background;
use tidemark_connectors::kafka::KafkaSettings;
use tidemark_protocol::resume;
use tidemark_sinks::SinkTopics;

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
    /// Publish committed anomalies and rejects to these Kafka topics.
    pub sinks: Option<(KafkaSettings, SinkTopics)>,
    pub s3: S3Options,
    /// Restore under changed parameters: the operators whose configuration
    /// changed start empty (`--allow-config-change`).
    pub allow_config_change: bool,
    /// Set by the first SIGTERM/SIGINT: stop at the next commit.
    pub stop: Arc<AtomicBool>,
}

/// The parameters that shape state and outputs; a restore under different
/// ones would mix two computations in one output.
fn fingerprint(p: &Params) -> String {
    let mut p = p.clone();
    // The idle timeout decides when, not what: it may change across restarts.
    p.idle_timeout_ms = 0;
    manifest::sha256_hex(&serde_json::to_vec(&p).expect("params encode"))
}

/// Checks a resume against the commit (`protocol::resume`) and applies the
/// plan: the bounded ends the first start fixed are kept. Returns the
/// operators whose restored state is dropped (only with
/// `allow_config_change`).
fn check_resume(m: &Manifest, spec: &mut JobSpec, fp: &str, root: &str) -> Result<Vec<String>> {
    let params = spec.params.recorded();
    let inputs = spec.source.describe();
    let reference_inputs = spec.reference.as_ref().map(|r| r.source.describe());
    let names = spec.names();
    let plan = resume::plan(
        m,
        &resume::Job {
            root,
            params: &params,
            fingerprint: fp,
            allow_config_change: spec.allow_config_change,
            reference_name: &names.reference,
            inputs: &inputs,
            // Kinesis positions name shards, some of which may be trimmed away.
            partitions: (!matches!(spec.source, SourceSpec::Kinesis(_)))
                .then(|| spec.source.partitions()),
            reference_inputs: reference_inputs.as_deref(),
        },
    )?;
    if !plan.changes.is_empty() {
        tracing::warn!(changes = %plan.changes.join("; "), dropped = ?plan.stale, "restoring under a changed configuration");
    }
    spec.source.keep_ends(&plan.ends);
    if let Some(r) = &mut spec.reference {
        r.source.keep_ends(&plan.reference_ends);
    }
    Ok(plan.stale)
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
    let (peers, process) = crate::cluster::shape(&spec.timely);
    let _span = tracing::info_span!("job", job = %spec.output, process).entered();
    let st: Arc<dyn Storage> = storage::open_with(&spec.output, &spec.s3)?;

    let found = commit_log::newest_valid(&*st)?;
    for p in &found.problems {
        tracing::warn!(problem = %p, "skipping a damaged epoch");
    }
    if found.newest.is_none() {
        // Starting over is right only when the whole history was damaged;
        // when retention removed older commits, their epochs stay published
        // and a fresh start would compute them a second time.
        resume::fresh_start(&st.describe(), commit_log::list(&*st)?.first().copied())?;
    }
    let resume = found.newest.clone();
    let committed_generation = resume.as_ref().map_or(0, |m| m.job.generation);
    let generation = commit_log::claim_generation(
        &*st,
        committed_generation + 1,
        &format!("process {process}"),
    )?;
    let fp = fingerprint(&spec.params);
    let stale = match &resume {
        Some(m) => check_resume(m, &mut spec, &fp, &st.describe())?,
        None => Vec::new(),
    };
    if process == 0 {
        // Damaged commits make way for new commits of the same epochs.
        for moved in commit_log::discard(&*st, &found.damaged)? {
            tracing::warn!(to = %moved, "moved a damaged commit aside");
        }
        // Files of generations older than the newest committed one that no
        // manifest names are leftovers of crashed runs; newer ones may be
        // another job's work in flight and are left alone.
        let garbage = manifest::collect_garbage(&*st, committed_generation)?;
        if !garbage.is_empty() {
            tracing::info!(
                files = garbage.len(),
                "collected files of uncommitted epochs"
            );
        }
    }
    match &resume {
        Some(m) => tracing::info!(epoch = m.epoch, generation, "restoring"),
        None => tracing::info!(generation, "starting fresh"),
    }

    let meter = Arc::new(Meter::default());
    let mirror = match (&spec.source, process) {
        (SourceSpec::Kafka(k), 0) => Some(offset_mirror(k, meter.clone())?),
        _ => None,
    };
    let sinks = match (&spec.sinks, process) {
        (Some((settings, topics)), 0) => {
            Some(tidemark_sinks::start(st.clone(), settings, topics.clone())?)
        }
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
        inputs,
        spec,
        storage: st,
        resume,
        generation,
        fingerprint: fp,
        meter,
        status: Arc::new(Mutex::new(CommitStatus::default())),
        committer: OnceLock::new(),
        latency: Arc::new(Mutex::new(Latency::new())),
        beyond_watermark: Mutex::new(Latency::new()),
        restored: Mutex::new((0, Duration::ZERO)),
        stopped: AtomicBool::new(false),
        frontier_ms: Arc::new(AtomicI64::new(i64::MIN)),
        opened: AtomicUsize::new(0),
    });
    let progress = Progress::start(
        shared.meter.clone(),
        shared.status.clone(),
        shared.frontier_ms.clone(),
    );
    let collected = shared.clone();
    telemetry::on_scrape(move || collect(&collected));
    if process != 0 {
        watch_commits_for_stop(shared.clone());
    }

    let worker_shared = shared.clone();
    let guards = timely::execute(shared.spec.timely.clone(), move |worker| {
        run_worker(worker, &worker_shared)
    })
    .map_err(|e| anyhow::anyhow!("starting the timely cluster: {e}"))?;
    let mut failed = Vec::new();
    let mut commit_failure = None;
    let mut results = Vec::new();
    if shared.processes > 1 && process == 0 {
        // A failed commit stops this process's workers, but the other
        // processes' workers wait for them, and joining the connections to
        // those processes would wait for them forever. So once the workers
        // here are done after a failed commit, the connections are left to
        // the process's exit, which ends the peers as it always did.
        while !guards.guards().iter().all(|g| g.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        match shared.committer.get().and_then(CommitHandle::failure) {
            Some(f) => {
                commit_failure = Some(f.into());
                std::mem::forget(guards);
            }
            None => results = guards.join(),
        }
    } else {
        results = guards.join();
    }
    for r in results {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is::<CommitFailure>() => {
                commit_failure.get_or_insert(e);
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
    progress.stop();
    // The final values stay for a last scrape; the run's state goes.
    collect(&shared);
    telemetry::clear_collectors();
    if shared.stopped.load(Ordering::Relaxed) {
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
    if !failed.is_empty() {
        bail!("worker failed: {}", failed.join("; "));
    }
    let elapsed = started.elapsed();
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
    latency: Arc<Mutex<Latency>>,
    /// See [`Summary::beyond_watermark`]; kept by each process's first worker.
    beyond_watermark: Mutex<Latency>,
    /// State bytes restored (all workers) and the slowest worker's time.
    restored: Mutex<(u64, Duration)>,
    /// A commit completed after the stop request: workers leave.
    stopped: AtomicBool,
    /// The dataflow's output frontier, event-time ms (for metrics).
    frontier_ms: Arc<AtomicI64>,
    /// Workers of this process whose sources are open.
    opened: AtomicUsize,
}

/// A process other than 0 learns of the commit that ends a stop from the
/// commit log, which only process 0 writes.
fn watch_commits_for_stop(sh: Arc<Shared>) {
    std::thread::spawn(move || {
        while !sh.spec.stop.load(Ordering::Relaxed) {
            if Arc::strong_count(&sh) == 1 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let newest = || {
            commit_log::list(&*sh.storage)
                .ok()
                .and_then(|l| l.last().copied())
        };
        let at_stop = newest();
        while Arc::strong_count(&sh) > 1 {
            if newest() > at_stop {
                sh.stopped.store(true, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

/// Copies what the run has counted into the metrics registry (at scrape).
fn collect(sh: &Shared) {
    use metrics::{counter, gauge};
    for meter in [&sh.meter, &sh.reference_meter] {
        let parts = meter.partitions.lock().unwrap().clone();
        for (p, s) in parts {
            let (source, local) = sh.names.name_of(p);
            let labels = [
                ("source", source.to_owned()),
                ("partition", local.to_string()),
            ];
            counter!("tidemark_records_read_total", &labels).absolute(s.records);
            counter!("tidemark_records_in_total", &labels).absolute(s.records_in);
            counter!("tidemark_source_bytes_read_total", &labels).absolute(s.bytes);
            if let Some(w) = s.watermark_ms {
                gauge!("tidemark_source_watermark_timestamp_seconds", &labels).set(w as f64 / 1e3);
            }
            // How long a partition with records unread has had none arrive
            // (past `idle_timeout`; 0 otherwise): it holds the frontier.
            let stalled = s.stalled_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
            gauge!("tidemark_source_stalled_seconds", &labels).set(stalled);
        }
    }
    let f = sh.frontier_ms.load(Ordering::Relaxed);
    if f > i64::MIN / 2 {
        gauge!("tidemark_frontier_timestamp_seconds").set(f as f64 / 1e3);
    }
    gauge!("tidemark_checkpoint_interval_seconds")
        .set(sh.spec.params.checkpoint_interval_ms as f64 / 1e3);
    if let Some(log) = &sh.shard_log {
        for (partition, _shard, m) in log.lock().unwrap().metrics() {
            let behind = m.millis_behind_latest.load(Ordering::Relaxed);
            if behind >= 0 {
                let labels = [
                    ("source", sh.names.main.clone()),
                    ("partition", partition.to_string()),
                ];
                gauge!("tidemark_source_lag_seconds", &labels).set(behind as f64 / 1e3);
            }
        }
    }
    if sh.process != 0 {
        return;
    }
    let s = sh.status.lock().unwrap().clone();
    for output in ["transactions", "windows", "anomalies", "rejects"] {
        let rows = s.rows.get(output).copied().unwrap_or(0);
        counter!("tidemark_records_out_total", "output" => output).absolute(rows);
    }
    counter!("tidemark_duplicates_total").absolute(s.duplicates);
    counter!("tidemark_checkpoints_total").absolute(s.epochs);
    counter!("tidemark_checkpoint_failures_total").absolute(s.failures);
    if let Some(e) = s.last_epoch {
        gauge!("tidemark_checkpoint_last_epoch_timestamp_seconds").set(e as f64 / 1e3);
    }
}

impl Shared {
    /// The resumed position of a dataflow partition.
    fn position(&self, p: u32) -> Option<&Position> {
        self.positions.iter().find(|(g, _)| *g == p).map(|(_, x)| x)
    }
}

fn run_worker(worker: &mut timely::worker::Worker, sh: &Arc<Shared>) -> Result<()> {
    let index = worker.index();
    let peers = worker.peers();
    let _span = tracing::info_span!(
        "worker",
        job = %sh.storage.describe(),
        process = sh.process,
        worker = index
    )
    .entered();
    let params = sh.spec.params.clone();
    let restore_started = Instant::now();
    let mut restored = match &sh.resume {
        Some(m) => restore_state(&*sh.storage, m, params.tick_ms, index, peers)?,
        None => Restored::default(),
    };
    restored.state.retain(|op, _| !sh.stale.contains(op));
    let restored_bytes: u64 = restored
        .state
        .values()
        .flatten()
        .map(|(_, b)| b.len() as u64)
        .sum();
    let skip_below = restored.boundary.unwrap_or(Tick::MIN);

    // Partitions are assigned by a fixed function of (partition, workers).
    // A Kinesis stream is read by process 0's workers: a child shard joins
    // the worker of its parent and waits for its other parent through
    // memory shared by the process.
    let readers_count = match sh.spec.source {
        SourceSpec::Kinesis(_) => peers / sh.processes,
        _ => peers,
    };
    let mine: Vec<(u32, Option<&Position>)> = sh
        .planned
        .iter()
        .copied()
        .filter(|p| index < readers_count && *p as usize % readers_count == index)
        .map(|p| (p, sh.position(p)))
        .collect();
    let readers = sh.spec.source.open_worker(&mine)?;
    // Reference partitions, by a fixed function of (partition, workers).
    let reference_readers = match &sh.spec.reference {
        Some(r) => {
            let mine: Vec<(u32, Option<&Position>)> = (0..r.source.partitions())
                .filter(|l| *l as usize % peers == index)
                .map(|l| (l, sh.position(REFERENCE_BASE + l)))
                .collect();
            let mut readers = r
                .source
                .open_worker(&mine)
                .map_err(|e| e.context("opening the reference input"))?;
            for (start, _) in &mut readers {
                start.partition += REFERENCE_BASE;
            }
            Some(readers)
        }
        None => None,
    };

    let probe = ProbeHandle::new();
    worker.dataflow::<Tick, _, _>(|scope| {
        let config = |meter: &Arc<Meter>, max_rate| SourceConfig {
            batch: 1024,
            budget: 16 * 1024,
            max_lag_ticks: 30,
            skip_below,
            meter: meter.clone(),
            max_rate,
        };
        let main = source(
            scope,
            "Source",
            params.clone(),
            config(
                &sh.meter,
                sh.spec.max_rate.map(|r| (r / readers_count as u64).max(1)),
            ),
            readers,
            probe.clone(),
        );
        // An idle reference table follows the transactions' time.
        let follow = main.2.clone();
        let reference = reference_readers.map(|readers| {
            source_of::<Merchants>(
                scope,
                "Reference",
                params.clone(),
                config(&sh.reference_meter, None),
                readers,
                probe.clone(),
                Some(follow),
            )
        });
        let streams = build(
            &params,
            main,
            reference,
            &restored,
            sh.spec.min_wall,
            sh.spec.stop.clone(),
        );
        count_outputs(&streams, sh, index);
        let reports = writer(
            &streams,
            WriterConfig {
                storage: sh.storage.clone(),
                generation: sh.generation,
                names: sh.names.clone(),
                params: params.clone(),
            },
        );
        let reports = reports.probe_with(&probe);
        let meter = sh.meter.clone();
        let latency = sh.latency.clone();
        let sh2 = sh.clone();
        let tick_ms = params.tick_ms;
        let handle = committer(
            reports,
            streams.positions.clone(),
            streams.markers.clone(),
            CommitterConfig {
                storage: sh.storage.clone(),
                generation: sh.generation,
                names: sh.names.clone(),
                tick_ms: params.tick_ms,
                interval_ms: params.checkpoint_interval_ms,
                params_fingerprint: sh.fingerprint.clone(),
                params: Some(sh.spec.params.recorded()),
                previous_epoch: sh.resume.as_ref().map(|m| m.epoch),
                previous_seq: sh.resume.as_ref().map_or(0, |m| m.job.seq),
                previous_positions: sh.positions.iter().map(|(_, p)| p.clone()).collect(),
                retain: sh.spec.retain,
                inputs: sh.inputs.clone(),
                ends: sh.spec.source.ends(),
                reference_inputs: sh
                    .spec
                    .reference
                    .as_ref()
                    .map_or_else(Vec::new, |r| r.source.describe()),
                reference_ends: sh
                    .spec
                    .reference
                    .as_ref()
                    .map_or_else(Vec::new, |r| r.source.ends()),
                retry: Retry::default(),
            },
            sh.status.clone(),
            Box::new(move |m: &Manifest, took: Duration| {
                record_commit(m, took);
                if sh2.spec.stop.load(Ordering::Relaxed) {
                    sh2.stopped.store(true, Ordering::Relaxed);
                }
                if let Some(mirror) = &sh2.mirror {
                    let main = &sh2.names.main;
                    mirror.send(
                        m.job
                            .positions
                            .iter()
                            .filter(|p| &p.source == main)
                            .cloned()
                            .collect(),
                    );
                }
                if let Some(sinks) = &sh2.sinks {
                    sinks.send(m.clone());
                }
                if let Some(log) = &sh2.shard_log {
                    log.lock().unwrap().maybe_log();
                }
                // Every batch read with ticks below the epoch is now committed.
                let epoch = m.epoch;
                let now = Instant::now();
                let limit = epoch / tick_ms;
                let mut batches = meter.batches.lock().unwrap();
                let mut lat = latency.lock().unwrap();
                while let Some(&(at, t, n)) = batches.front() {
                    if t >= limit {
                        break;
                    }
                    let d = now.duration_since(at);
                    lat.record(d, n as u64);
                    metrics::histogram!("tidemark_event_to_output_seconds")
                        .record_many(d.as_secs_f64(), n as usize);
                    batches.pop_front();
                }
            }),
        );
        if let Some(h) = handle {
            if sh.committer.set(h).is_err() {
                unreachable!("one committer per process");
            }
        }
    });
    if sh.resume.is_some() {
        // Reading and decoding the state files, and loading every
        // operator's state while the dataflow was built.
        let took = restore_started.elapsed();
        let mut r = sh.restored.lock().unwrap();
        r.0 += restored_bytes;
        r.1 = r.1.max(took);
    }
    let per_process = peers / sh.processes;
    if sh.opened.fetch_add(1, Ordering::Relaxed) + 1 == per_process {
        telemetry::set_ready(true);
    }
    // The first worker of each process keeps the frontier metrics.
    let keeper = index.is_multiple_of(per_process);
    let mut frontier = Tick::MIN;
    let delay = metrics::histogram!("tidemark_frontier_delay_seconds");
    let commit_failed = || sh.committer.get().is_some_and(CommitHandle::failed);
    while worker.step_or_park(Some(Duration::from_millis(5))) {
        let nothing_read = || {
            sh.meter.records.load(Ordering::Relaxed) == 0
                && sh.reference_meter.records.load(Ordering::Relaxed) == 0
        };
        if sh.stopped.load(Ordering::Relaxed)
            || (sh.spec.stop.load(Ordering::Relaxed) && nothing_read())
            || commit_failed()
        {
            // Stopped after a commit (or before reading anything), or a
            // commit failed: the dataflow is dropped unfinished, so open
            // windows are not flushed.
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            break;
        }
        if keeper {
            let f = probe
                .with_frontier(|f| f.first().copied())
                .unwrap_or(Tick::MAX);
            if f > frontier {
                frontier = f;
                sh.frontier_ms
                    .store(f.saturating_mul(params.tick_ms), Ordering::Relaxed);
                let now = Instant::now();
                let wall_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                let mut beyond = sh.beyond_watermark.lock().unwrap();
                let mut q = sh.meter.frontier_batches.lock().unwrap();
                while let Some(&(at, t, n)) = q.front() {
                    if t >= f {
                        break;
                    }
                    delay.record_many(now.duration_since(at).as_secs_f64(), n as usize);
                    // From the moment a perfect system could know the tick
                    // complete (its end plus the out-of-orderness bound), or
                    // the record's read if that came later: a backlog of old
                    // records counts from when it was read, not from an
                    // event time long past.
                    let ready = (t + 1)
                        .saturating_mul(params.tick_ms)
                        .saturating_add(params.max_out_of_orderness_ms);
                    let read_ms = wall_ms - now.duration_since(at).as_millis() as i64;
                    let late_ms = wall_ms.saturating_sub(ready.max(read_ms)).max(0) as u64;
                    beyond.record(Duration::from_millis(late_ms), n as u64);
                    q.pop_front();
                }
            }
        }
    }
    if let Some(c) = sh.committer.get() {
        if index == 0 {
            // The dataflow is complete (or dropped) but the last epochs may
            // still be committing: the run ends when they are committed.
            c.finish()?;
        } else if let Some(f) = c.failure() {
            return Err(f.into());
        }
    }
    Ok(())
}

/// Counts rejects by reason, late records, window rows by spec and
/// anomalies by kind as they are emitted, and state sizes at each boundary:
/// one counter update per batch, not per record.
fn count_outputs(streams: &tidemark_dataflow::job::JobStreams<'_>, sh: &Shared, worker: usize) {
    use metrics::{counter, gauge, Counter};
    use tidemark_dataflow::event::{AnomalyKind, RejectReason};
    use tidemark_dataflow::stateful::Report;
    use timely::dataflow::operators::Inspect;

    let names = sh.names.clone();
    let sources = [names.main.clone(), names.reference.clone()];
    let rejects: Vec<Vec<Counter>> = sources
        .iter()
        .map(|s| {
            RejectReason::ALL
                .iter()
                .map(|r| counter!("tidemark_rejects_total", "source" => s.clone(), "reason" => r.as_str()))
                .collect()
        })
        .collect();
    let late: Vec<Counter> = sources
        .iter()
        .map(|s| counter!("tidemark_late_records_total", "source" => s.clone()))
        .collect();
    streams.rejects.clone().inspect_core(move |e| {
        let Ok((_, batch)) = e else { return };
        let mut n = [[0u64; RejectReason::ALL.len()]; 2];
        for r in batch {
            let s = usize::from(r.partition >= REFERENCE_BASE);
            let i = RejectReason::ALL
                .iter()
                .position(|x| *x == r.reason)
                .unwrap_or(0);
            n[s][i] += 1;
        }
        for (s, by_reason) in n.iter().enumerate() {
            for (i, &k) in by_reason.iter().enumerate() {
                if k > 0 {
                    rejects[s][i].increment(k);
                    if RejectReason::ALL[i] == RejectReason::Late {
                        late[s].increment(k);
                    }
                }
            }
        }
    });
    let windows: Vec<Counter> = sh
        .spec
        .params
        .windows
        .iter()
        .map(|w| counter!("tidemark_windows_emitted_total", "window" => w.name.clone()))
        .collect();
    streams.windows.clone().inspect_core(move |e| {
        let Ok((_, batch)) = e else { return };
        let mut n = vec![0u64; windows.len()];
        for w in batch {
            n[w.spec as usize] += 1;
        }
        for (c, k) in windows.iter().zip(n) {
            c.increment(k);
        }
    });
    let kinds = [
        (AnomalyKind::Transaction, "transaction"),
        (AnomalyKind::Window, "window"),
    ]
    .map(|(k, name)| {
        (
            k,
            counter!("tidemark_anomalies_emitted_total", "kind" => name),
        )
    });
    streams.anomalies.clone().inspect_core(move |e| {
        let Ok((_, batch)) = e else { return };
        for (kind, c) in &kinds {
            c.increment(batch.iter().filter(|a| a.kind == *kind).count() as u64);
        }
    });
    let worker = worker.to_string();
    streams.reports.clone().inspect(move |r| {
        if let Report::State {
            op,
            boundary: Some(_),
            groups,
            keys,
        } = r
        {
            let labels = [("operator", op.clone()), ("worker", worker.clone())];
            gauge!("tidemark_state_keys", &labels).set(*keys as f64);
            let bytes: usize = groups.iter().map(|(_, b)| b.len()).sum();
            gauge!("tidemark_state_bytes", &labels).set(bytes as f64);
        }
    });
}

/// Checkpoint metrics of one commit (process 0).
fn record_commit(m: &Manifest, took: Duration) {
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum::<u64>()
        + m.job.state.iter().map(|s| s.bytes).sum::<u64>();
    metrics::gauge!("tidemark_checkpoint_size_bytes").set(bytes as f64);
    metrics::histogram!("tidemark_checkpoint_duration_seconds").record(took.as_secs_f64());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!("tidemark_checkpoint_last_success_timestamp_seconds").set(now.as_secs_f64());
}
