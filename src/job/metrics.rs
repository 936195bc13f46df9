//! What a run counts, copied into the Prometheus registry: source and
//! checkpoint figures at scrape, output counters as rows are emitted.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tidemark_checkpoint::manifest::Manifest;
use tidemark_dataflow::backlog::Pause;
use tidemark_dataflow::source::REFERENCE_BASE;

use super::Shared;

/// Copies what the run has counted into the metrics registry (at scrape).
pub(super) fn collect(sh: &Shared) {
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
            let labels = [
                ("source", sh.names.main.clone()),
                ("partition", partition.to_string()),
            ];
            let behind = m.millis_behind_latest.load(Ordering::Relaxed);
            if behind >= 0 {
                gauge!("tidemark_source_lag_seconds", &labels).set(behind as f64 / 1e3);
            }
            // Failed calls the reader backs off from (an outage shows as
            // `transient`: timeouts, refused connections, 5xx).
            for (kind, n) in [
                ("throttled", &m.throttled),
                ("transient", &m.transient_errors),
            ] {
                let labels = [
                    labels[0].clone(),
                    labels[1].clone(),
                    ("kind", kind.to_owned()),
                ];
                counter!("tidemark_source_errors_total", &labels)
                    .absolute(n.load(Ordering::Relaxed));
            }
        }
    }
    // Back-pressure: bytes of finished epochs waiting for storage, and
    // whether a source of this process pauses for either bound.
    gauge!("tidemark_backpressure_pending_bytes").set(sh.backlog.bytes() as f64);
    for p in Pause::ALL {
        let paused = sh.backlog.paused(p) > 0;
        gauge!("tidemark_backpressure_paused", "bound" => p.as_str())
            .set(f64::from(u8::from(paused)));
    }
    // Failed storage attempts: this process's epoch writers, and on
    // process 0 its committer too.
    let s = sh.status.lock().unwrap().clone();
    counter!("tidemark_checkpoint_failures_total").absolute(s.failures + sh.writes.failures());
    gauge!("tidemark_checkpoint_stalled_seconds")
        .set(tidemark_checkpoint::retry::stalled_for().as_secs_f64());
    if sh.process != 0 {
        return;
    }
    for output in ["transactions", "windows", "anomalies", "rejects"] {
        let rows = s.rows.get(output).copied().unwrap_or(0);
        counter!("tidemark_records_out_total", "output" => output).absolute(rows);
    }
    counter!("tidemark_duplicates_total").absolute(s.duplicates);
    counter!("tidemark_checkpoints_total").absolute(s.epochs);
    if let Some(e) = s.last_epoch {
        gauge!("tidemark_checkpoint_last_epoch_timestamp_seconds").set(e as f64 / 1e3);
    }
    if sh.sinks.is_some() {
        let k = &sh.sink_status;
        if let Some(e) = k.published() {
            gauge!("tidemark_sink_last_epoch_timestamp_seconds").set(e as f64 / 1e3);
        }
        gauge!("tidemark_sink_waiting_seconds").set(k.waiting().as_secs_f64());
        counter!("tidemark_sink_failures_total").absolute(k.failures.load(Ordering::Relaxed));
    }
}

/// Counts rejects by reason, late records, window rows by spec and
/// anomalies by kind as they are emitted, and state sizes at each boundary:
/// one counter update per batch, not per record.
pub(super) fn count_outputs(
    streams: &tidemark_dataflow::graph::JobStreams<'_>,
    sh: &Shared,
    worker: usize,
) {
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
pub(super) fn record_commit(m: &Manifest, took: Duration) {
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum::<u64>()
        + m.job.state.iter().map(|s| s.bytes).sum::<u64>();
    metrics::gauge!("tidemark_checkpoint_size_bytes").set(bytes as f64);
    metrics::histogram!("tidemark_checkpoint_duration_seconds").record(took.as_secs_f64());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!("tidemark_checkpoint_last_success_timestamp_seconds").set(now.as_secs_f64());
}
