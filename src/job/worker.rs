//! One timely worker of a job: restore its share of the state, open its
//! partitions, build the dataflow (sources, computation, writer,
//! committer), and step it until it completes, is stopped, a commit
//! fails, or a source partition fails.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tidemark_checkpoint::committer::{committer, CommitHandle, CommitterConfig};
use tidemark_checkpoint::manifest::{Manifest, Position};
use tidemark_checkpoint::restore::restore_state;
use tidemark_checkpoint::retry::RetryPolicy;
use tidemark_checkpoint::writer::{writer, WriterConfig};
use tidemark_connectors::adapters::SourceSpec;
use tidemark_dataflow::event::Tick;
use tidemark_dataflow::graph::{build, Restored};
use tidemark_dataflow::source::{
    source, source_of, Merchants, Meter, PartitionReader, PartitionStart, SourceConfig, Unopened,
    REFERENCE_BASE,
};
use tidemark_dataflow::stop::Stopping;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::ProbeHandle;

use super::{metrics, Shared};
use crate::telemetry;

pub(super) fn run(worker: &mut timely::worker::Worker, sh: &Arc<Shared>) -> Result<()> {
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

    let Sources {
        readers,
        reference_readers,
        readers_count,
    } = open_sources(sh, index, peers);

    // Back-pressure by epochs: the writers' reports (the probe) may lag
    // the sources by this many checkpoint intervals of event time.
    let interval_ticks = params.checkpoint_interval_ms / params.tick_ms;
    let max_lag_ticks = sh.spec.max_pending_epochs.saturating_mul(interval_ticks);
    let probe = ProbeHandle::new();
    worker.dataflow::<Tick, _, _>(|scope| {
        let config = |meter: &Arc<Meter>, max_rate| SourceConfig {
            batch: 1024,
            budget: 16 * 1024,
            max_lag_ticks,
            max_pending_bytes: sh.spec.max_pending_bytes,
            backlog: sh.backlog.clone(),
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
            Stopping {
                requested: sh.spec.stop.clone(),
                committed: sh.committed.clone(),
                process: sh.process as u32,
            },
        );
        metrics::count_outputs(&streams, sh, index);
        // A stop requested on any process, and its end: every worker leaves.
        let stopping = sh.clone();
        streams
            .markers
            .clone()
            .inspect(move |m| super::stop::on_marker(&stopping, m));
        let reports = writer(
            &streams,
            WriterConfig {
                storage: sh.storage.clone(),
                generation: sh.generation,
                names: sh.names.clone(),
                params: params.clone(),
                retry: RetryPolicy::default().giving_up_after(sh.spec.give_up_after),
                handle: sh.writes.clone(),
                backlog: sh.backlog.clone(),
            },
        );
        let reports = reports.probe_with(&probe);
        let sh2 = sh.clone();
        let handle = committer(
            reports,
            streams.positions.clone(),
            streams.markers.clone(),
            committer_config(sh),
            sh.status.clone(),
            Box::new(move |m: &Manifest, took: Duration| after_commit(&sh2, m, took)),
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
    let mut keeper = index.is_multiple_of(per_process).then(FrontierKeeper::new);
    let commit_failed =
        || sh.committer.get().is_some_and(CommitHandle::failed) || sh.writes.failed();
    let source_failed = || sh.meter.failed() || sh.reference_meter.failed();
    while worker.step_or_park(Some(Duration::from_millis(5))) {
        let nothing_read = || {
            sh.meter.records.load(Ordering::Relaxed) == 0
                && sh.reference_meter.records.load(Ordering::Relaxed) == 0
        };
        // A single process stopped before reading anything leaves at once;
        // in a cluster the ticker decides for every process.
        if sh.stopped.load(Ordering::Relaxed)
            || (sh.processes == 1 && sh.spec.stop.load(Ordering::Relaxed) && nothing_read())
            || commit_failed()
            || source_failed()
        {
            // Stopped after a commit (or before reading anything), a
            // commit failed, or a source partition failed: the dataflow is
            // dropped unfinished, so open windows are not flushed and no
            // epoch past the last complete one is committed.
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            break;
        }
        if let Some(k) = &mut keeper {
            k.observe(sh, &probe);
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
    // A writer that gave up: this worker's, or another's of the process.
    if let Some(f) = sh.writes.failure() {
        return Err(f.into());
    }
    // A failed source is the job's error once the epochs completed before
    // it are committed (above): they hold only records read correctly.
    if let Some(f) = sh.meter.failure().or_else(|| sh.reference_meter.failure()) {
        return Err(f.into());
    }
    Ok(())
}

/// One worker's partition readers.
struct Sources {
    readers: Vec<(PartitionStart, Box<dyn PartitionReader>)>,
    reference_readers: Option<Vec<(PartitionStart, Box<dyn PartitionReader>)>>,
    /// How many workers read the main source.
    readers_count: usize,
}

/// Opens this worker's partitions, each at its committed position. A
/// partition that cannot be opened fails when first read ([`unopened`]).
fn open_sources(sh: &Shared, index: usize, peers: usize) -> Sources {
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
    let readers = sh
        .spec
        .source
        .open_worker(&mine)
        .unwrap_or_else(|e| unopened(&mine, &e));
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
                .unwrap_or_else(|e| unopened(&mine, &e.context("opening the reference input")));
            for (start, _) in &mut readers {
                start.partition += REFERENCE_BASE;
            }
            Some(readers)
        }
        None => None,
    };
    Sources {
        readers,
        reference_readers,
        readers_count,
    }
}

/// Partitions that could not be opened, each at its committed position:
/// each fails with `e` when first read ([`Unopened`]), and the job stops
/// with it once every worker has built its dataflow.
fn unopened(
    mine: &[(u32, Option<&Position>)],
    e: &anyhow::Error,
) -> Vec<(PartitionStart, Box<dyn PartitionReader>)> {
    mine.iter()
        .map(|&(p, pos)| {
            let start = PartitionStart {
                partition: p,
                offset: pos.map_or(0, |x| x.offset),
                max_ts: pos.and_then(|x| x.max_ts),
                token: pos.and_then(|x| x.token.clone()),
            };
            let reader: Box<dyn PartitionReader> = Box::new(Unopened(format!("{e:#}")));
            (start, reader)
        })
        .collect()
}

/// What the committer records in every commit and resumes from.
fn committer_config(sh: &Shared) -> CommitterConfig {
    let params = &sh.spec.params;
    let reference = sh.spec.reference.as_ref();
    CommitterConfig {
        storage: sh.storage.clone(),
        generation: sh.generation,
        names: sh.names.clone(),
        tick_ms: params.tick_ms,
        interval_ms: params.checkpoint_interval_ms,
        params_fingerprint: sh.fingerprint.clone(),
        params: Some(params.recorded()),
        previous_epoch: sh.resume.as_ref().map(|m| m.epoch),
        previous_seq: sh.resume.as_ref().map_or(0, |m| m.job.seq),
        previous_positions: sh.positions.iter().map(|(_, p)| p.clone()).collect(),
        retain: sh.spec.retain,
        inputs: sh.inputs.clone(),
        ends: sh.spec.source.ends(),
        reference_inputs: reference.map_or_else(Vec::new, |r| r.source.describe()),
        reference_ends: reference.map_or_else(Vec::new, |r| r.source.ends()),
        retry: RetryPolicy::default().giving_up_after(sh.spec.give_up_after),
    }
}

/// After each commit (on the committer thread): metrics, the committed
/// boundary (a stop ends once its commit is in), the Kafka offset mirror
/// and sinks, the Kinesis shard log, and the ingest-to-commit latency of
/// every batch the epoch covers.
fn after_commit(sh: &Shared, m: &Manifest, took: Duration) {
    metrics::record_commit(m, took);
    crate::exit::committed(m.epoch);
    sh.committed
        .fetch_max(m.epoch / sh.spec.params.tick_ms, Ordering::Relaxed);
    if let Some(mirror) = &sh.mirror {
        let main = &sh.names.main;
        mirror.send(
            m.job
                .positions
                .iter()
                .filter(|p| &p.source == main)
                .cloned()
                .collect(),
        );
    }
    if let Some(sinks) = &sh.sinks {
        sinks.send(m.clone());
    }
    if let Some(log) = &sh.shard_log {
        log.lock().unwrap().maybe_log();
    }
    // Every batch read with ticks below the epoch is now committed.
    let now = Instant::now();
    let limit = m.epoch / sh.spec.params.tick_ms;
    let mut batches = sh.meter.batches.lock().unwrap();
    let mut lat = sh.latency.lock().unwrap();
    while let Some(&(at, t, n)) = batches.front() {
        if t >= limit {
            break;
        }
        let d = now.duration_since(at);
        lat.record(d, n as u64);
        ::metrics::histogram!("tidemark_event_to_output_seconds")
            .record_many(d.as_secs_f64(), n as usize);
        batches.pop_front();
    }
}

/// The frontier metrics, kept by the first worker of each process: the
/// frontier itself, how long batches waited for it, and how far beyond the
/// ideal watermark it passed them.
struct FrontierKeeper {
    frontier: Tick,
    delay: ::metrics::Histogram,
}

impl FrontierKeeper {
    fn new() -> Self {
        FrontierKeeper {
            frontier: Tick::MIN,
            delay: ::metrics::histogram!("tidemark_frontier_delay_seconds"),
        }
    }

    fn observe(&mut self, sh: &Shared, probe: &ProbeHandle<Tick>) {
        let params = &sh.spec.params;
        let f = probe
            .with_frontier(|f| f.first().copied())
            .unwrap_or(Tick::MAX);
        if f <= self.frontier {
            return;
        }
        self.frontier = f;
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
            self.delay
                .record_many(now.duration_since(at).as_secs_f64(), n as usize);
            // From the moment a perfect system could know the tick complete
            // (its end plus the out-of-orderness bound), or the record's read
            // if that came later: a backlog of old records counts from when
            // it was read, not from an event time long past.
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
