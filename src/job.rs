//! Runs one job: restore from the newest valid epoch, build the dataflow on
//! every worker, run it to completion, and report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tidemark_checkpoint::commit_log;
use tidemark_checkpoint::committer::{committer, CommitStatus, CommitterConfig};
use tidemark_checkpoint::manifest::{self, Manifest, Position, SourceNames};
use tidemark_checkpoint::restore::restore_state;
use tidemark_checkpoint::s3::S3Options;
use tidemark_checkpoint::storage::{self, Storage};
use tidemark_checkpoint::writer::{writer, WriterConfig};
use tidemark_connectors::gen_source::{GenReader, MerchantsReader};
use tidemark_connectors::generator::GenConfig;
use tidemark_connectors::kafka::open_readers;
use tidemark_connectors::merchants_gen::MerchantsConfig;
use tidemark_dataflow::event::Tick;
use tidemark_dataflow::job::{build, Restored};
use tidemark_dataflow::params::Params;
use tidemark_dataflow::source::{
    source, source_of, Merchants, Meter, PartitionReader, PartitionStart, SourceConfig,
    REFERENCE_BASE,
};
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;

use crate::background::Background;
use crate::inputs::Input;
use crate::kafka_job::{offset_mirror, KafkaSource};
use crate::kafka_sinks::{self, SinkTopics};
use crate::kinesis_job::ShardLog;
use crate::progress::{Latency, Progress, Summary};
use crate::upgrade;
use tidemark_connectors::kafka::KafkaSettings;
use tidemark_connectors::kinesis_stream::StreamSource;

pub enum SourceSpec {
    Files(Vec<Input>),
    Generator(GenConfig),
    Kafka(KafkaSource),
    /// Shards appear while running; all are read by process 0's workers.
    Kinesis(Arc<StreamSource>),
    /// The merchants reference table of the generator's merchants: one
    /// partition (a reference source only).
    Merchants(GenConfig),
}

impl SourceSpec {
    fn partitions(&self) -> u32 {
        match self {
            SourceSpec::Files(f) => f.len() as u32,
            SourceSpec::Generator(g) => g.partitions,
            SourceSpec::Kafka(k) => k.parts.len() as u32,
            SourceSpec::Kinesis(k) => k.describe().len() as u32,
            SourceSpec::Merchants(_) => 1,
        }
    }

    /// The partitions opened at start, given the committed ones.
    fn plan(&self, committed: &[Position]) -> Vec<u32> {
        match self {
            SourceSpec::Kinesis(k) => k.plan(&committed.iter().map(|p| p.partition).collect()),
            _ => (0..self.partitions()).collect(),
        }
    }

    /// Where each partition ends, for sources that end at an offset.
    fn ends(&self) -> Vec<Option<u64>> {
        match self {
            SourceSpec::Kafka(k) if k.parts.iter().any(|p| p.end.is_some()) => {
                k.parts.iter().map(|p| p.end).collect()
            }
            _ => Vec::new(),
        }
    }

    /// A restart keeps the ends its first start fixed.
    fn keep_ends(&mut self, ends: &[Option<u64>]) {
        if let SourceSpec::Kafka(k) = self {
            for (p, e) in k.parts.iter_mut().zip(ends) {
                if e.is_some() {
                    p.end = *e;
                }
            }
        }
    }

    /// What each partition is, recorded in commits.
    fn describe(&self) -> Vec<String> {
        match self {
            SourceSpec::Files(f) => f.iter().map(|i| format!("file:{}", i.name())).collect(),
            SourceSpec::Generator(g) => (0..g.partitions)
                .map(|p| format!("generator:{}/{p}", g.seed))
                .collect(),
            SourceSpec::Kafka(k) => k.describe(),
            SourceSpec::Kinesis(k) => k.describe(),
            SourceSpec::Merchants(g) => vec![format!("generator-merchants:{}", g.seed)],
        }
    }

    /// Opens the partitions `mine` of one worker, each at its committed
    /// position (`None`: never committed, start where the source says).
    fn open_worker(
        &self,
        mine: &[(u32, Option<&Position>)],
    ) -> Result<Vec<(PartitionStart, Box<dyn PartitionReader>)>> {
        let start = |p: u32, pos: Option<&Position>, offset: u64| PartitionStart {
            partition: p,
            offset,
            max_ts: pos.and_then(|x| x.max_ts),
            token: pos.and_then(|x| x.token.clone()),
        };
        match self {
            SourceSpec::Kafka(k) => {
                // One consumer per worker for all its partitions.
                let parts: Vec<_> = mine
                    .iter()
                    .map(|&(p, pos)| {
                        let mut kp = k.parts[p as usize].clone();
                        kp.checkpoint = pos.map(|x| x.offset);
                        kp
                    })
                    .collect();
                let readers = open_readers(&k.settings, &parts)?;
                Ok(mine
                    .iter()
                    .zip(readers)
                    .map(|(&(p, pos), r)| {
                        let s = start(p, pos, r.start_offset());
                        (s, Box::new(r) as Box<dyn PartitionReader>)
                    })
                    .collect())
            }
            SourceSpec::Kinesis(k) => mine
                .iter()
                .map(|&(p, pos)| {
                    let (offset, token) = pos.map_or((0, None), |x| (x.offset, x.token.clone()));
                    let reader = k.open(p, (offset, token))?;
                    Ok((start(p, pos, reader.next_offset()), Box::new(reader) as _))
                })
                .collect(),
            _ => mine
                .iter()
                .map(|&(p, pos)| {
                    let offset = pos.map_or(0, |x| x.offset);
                    let reader: Box<dyn PartitionReader> = match self {
                        SourceSpec::Files(f) => Box::new(f[p as usize].open(offset)?),
                        SourceSpec::Generator(g) => Box::new(GenReader::open(g, p, offset)),
                        SourceSpec::Merchants(g) => Box::new(MerchantsReader::open(
                            g,
                            &MerchantsConfig::default(),
                            offset,
                        )),
                        SourceSpec::Kafka(_) | SourceSpec::Kinesis(_) => unreachable!(),
                    };
                    Ok((start(p, pos, offset), reader))
                })
                .collect::<Result<Vec<_>>>()
                .map_err(|e: anyhow::Error| e.context("opening the input partitions")),
        }
    }
}

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
}

/// The parameters that shape state and outputs; a restore under different
/// ones would mix two computations in one output.
fn fingerprint(p: &Params) -> String {
    let mut p = p.clone();
    // The idle timeout decides when, not what: it may change across restarts.
    p.idle_timeout_ms = 0;
    manifest::sha256_hex(&serde_json::to_vec(&p).expect("params encode"))
}

/// Refuses a restore that would mix two computations in one output: other
/// parameters or other inputs than the commit was made with. Keeps the
/// bounded ends the first start fixed.
/// Returns the operators whose restored state is dropped (only with
/// `allow_config_change`).
fn check_resume(
    m: &Manifest,
    spec: &mut JobSpec,
    fp: &str,
    st: &dyn Storage,
) -> Result<Vec<String>> {
    let stale = check_params(m, spec, fp, st)?;
    let names = spec.names();
    let is_main = |p: &&Position| names.dataflow_partition(p) < REFERENCE_BASE;
    let now = spec.source.describe();
    if let Some(p) = m.job.positions.iter().filter(is_main).find(|p| {
        m.job
            .inputs
            .get(p.partition as usize)
            .is_some_and(|was| now.get(p.partition as usize) != Some(was))
    }) {
        bail!(
            "the inputs changed since epoch {} was committed to {}: partition {} was {}, now {}; \
             resume with the same inputs (the same files, or the same topics in the same order), or write to a new output root",
            m.epoch,
            st.describe(),
            p.partition,
            m.job.inputs[p.partition as usize],
            now.get(p.partition as usize).map_or("missing", |s| s.as_str())
        );
    }
    if let Some(r) = &mut spec.reference {
        let now = r.source.describe();
        if let Some(p) = m.job.positions.iter().filter(|p| !is_main(p)).find(|p| {
            m.job
                .reference_inputs
                .get(p.partition as usize)
                .is_some_and(|was| now.get(p.partition as usize) != Some(was))
        }) {
            bail!(
                "the reference input changed since epoch {} was committed to {}: partition {} was {}, now {}; \
                 resume with the same reference input, or write to a new output root",
                m.epoch,
                st.describe(),
                p.partition,
                m.job.reference_inputs[p.partition as usize],
                now.get(p.partition as usize).map_or("missing", |s| s.as_str())
            );
        }
        r.source.keep_ends(&m.job.reference_ends);
    }
    spec.source.keep_ends(&m.job.ends);
    let positions = m.job.positions.iter().filter(is_main).count() as u32;
    // Kinesis positions name shards, some of which may be trimmed away.
    if !matches!(spec.source, SourceSpec::Kinesis(_)) && positions > spec.source.partitions() {
        bail!(
            "epoch {} has positions for {positions} partitions but the input has {}: resume with the same inputs",
            m.epoch,
            spec.source.partitions()
        );
    }
    Ok(stale)
}

/// Refuses parameters other than the commit's, naming the differences,
/// unless the operator allowed it; then names the operators to start empty.
fn check_params(m: &Manifest, spec: &JobSpec, fp: &str, st: &dyn Storage) -> Result<Vec<String>> {
    let now = upgrade::recorded(&spec.params);
    let changes = match &m.job.params {
        Some(old) => upgrade::differences(old, &now),
        // Older commits record only the fingerprint.
        None if !m.job.params_fingerprint.is_empty() && m.job.params_fingerprint != fp => {
            vec!["(this commit records only a fingerprint of its configuration)".to_string()]
        }
        None => Vec::new(),
    };
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let listed = changes.join("; ");
    if !spec.allow_config_change {
        bail!(
            "the configuration that shapes state and outputs changed since epoch {} was committed to {}: {listed}. \
             Restore with the same configuration, write to a new output root, or pass --allow-config-change to keep the state that still applies (the changed operators start empty)",
            m.epoch,
            st.describe()
        );
    }
    let Some(old) = &m.job.params else {
        bail!(
            "--allow-config-change: epoch {} does not record its configuration, so which state still applies is unknown; write to a new output root",
            m.epoch
        );
    };
    let stale = upgrade::stale_operators(old, &spec.params).map_err(|why| {
        anyhow::anyhow!(
            "--allow-config-change cannot restore epoch {}: {why}; write to a new output root",
            m.epoch
        )
    })?;
    tracing::warn!(changes = %listed, dropped = ?stale, "restoring under a changed configuration");
    Ok(stale)
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
    let st: Arc<dyn Storage> = storage::open_with(&spec.output, &spec.s3)?;

    let found = commit_log::newest_valid(&*st)?;
    for p in &found.problems {
        tracing::warn!(problem = %p, "skipping a damaged epoch");
    }
    if found.newest.is_none() {
        // Starting over is right only when the whole history was damaged;
        // when retention removed older commits, their epochs stay published
        // and a fresh start would compute them a second time.
        if let Some(&first) = commit_log::list(&*st)?.first() {
            if first > 1 {
                bail!(
                    "none of the retained commits in {} verifies (commits {first} and later; older ones were removed by checkpoint.retain), \
                     so the job cannot resume; `tidemark verify` lists the damage. Repair the files, or write to a new output root",
                    st.describe()
                );
            }
        }
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
        Some(m) => check_resume(m, &mut spec, &fp, &*st)?,
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
            Some(kafka_sinks::start(st.clone(), settings, topics.clone())?)
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
        latency: Arc::new(Mutex::new(Latency::new())),
    });
    let progress = Progress::start(shared.meter.clone(), shared.status.clone());

    let worker_shared = shared.clone();
    let guards = timely::execute(shared.spec.timely.clone(), move |worker| {
        run_worker(worker, &worker_shared)
    })
    .map_err(|e| anyhow::anyhow!("starting the timely cluster: {e}"))?;
    let mut failed = Vec::new();
    for r in guards.join() {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{e:#}")),
            Err(e) => failed.push(e),
        }
    }
    progress.stop();
    if let Some(m) = &shared.mirror {
        m.finish(Duration::from_secs(15));
    }
    if let Some(s) = &shared.sinks {
        s.finish(Duration::from_secs(60));
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
    Ok(Summary {
        process,
        peers,
        read: shared
            .meter
            .records
            .load(std::sync::atomic::Ordering::Relaxed),
        elapsed,
        status,
        latency,
        output: shared.storage.describe(),
    })
}

struct Shared {
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
    latency: Arc<Mutex<Latency>>,
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
    let params = sh.spec.params.clone();
    let mut restored = match &sh.resume {
        Some(m) => restore_state(&*sh.storage, m, params.tick_ms, index, peers)?,
        None => Restored::default(),
    };
    restored.state.retain(|op, _| !sh.stale.contains(op));
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
        let streams = build(&params, main, reference, &restored, sh.spec.min_wall);
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
        committer(
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
                params: Some(upgrade::recorded(&sh.spec.params)),
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
            },
            sh.status.clone(),
            Box::new(move |m: &Manifest| {
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
                    lat.record(now.duration_since(at), n as u64);
                    batches.pop_front();
                }
            }),
        );
    });
    while worker.step_or_park(Some(Duration::from_millis(5))) {}
    Ok(())
}
