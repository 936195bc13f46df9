//! What a process tells its operators over HTTP: Prometheus metrics on
//! `/metrics`, liveness on `/live`, readiness on `/ready`.
//!
//! Counters that change with every batch are kept where the work happens
//! (source meters, the commit status) and copied into the registry when a
//! scrape arrives, so the hot path pays nothing for being observed. The
//! dataflow crates never see this module: they fill plain shared structs.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::MetricsPort;

/// Latency buckets, seconds: 1 ms to 60 s.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

type Collector = Box<dyn Fn() + Send + Sync>;

pub struct Telemetry {
    handle: PrometheusHandle,
    ready: AtomicBool,
    /// Copy shared counters into the registry; run before each render.
    collectors: Mutex<Vec<Collector>>,
}

static GLOBAL: OnceLock<Arc<Telemetry>> = OnceLock::new();

/// The process's telemetry, if an endpoint was started.
pub fn get() -> Option<&'static Arc<Telemetry>> {
    GLOBAL.get()
}

/// Marks the process ready (restore finished, sources open) or not.
pub fn set_ready(ready: bool) {
    if let Some(t) = get() {
        t.ready.store(ready, Ordering::Relaxed);
    }
    metrics::gauge!("tidemark_ready").set(if ready { 1.0 } else { 0.0 });
}

/// Runs `f` before every scrape (replacing earlier ones of the same run).
pub fn on_scrape(f: impl Fn() + Send + Sync + 'static) {
    if let Some(t) = get() {
        t.collectors.lock().unwrap().push(Box::new(f));
    }
}

/// Forgets the collectors of a finished run (their shared state is gone).
pub fn clear_collectors() {
    if let Some(t) = get() {
        t.collectors.lock().unwrap().clear();
    }
}

/// `port`: one port, or a range `A-B` of which the first free one is taken
/// (several processes of a cluster on one host). `Off` starts nothing.
pub fn start(address: &str, port: MetricsPort) -> Result<Option<Arc<Telemetry>>> {
    let MetricsPort::Range(lo, hi) = port else {
        return Ok(None);
    };
    let listener = (lo..=hi)
        .find_map(|p| TcpListener::bind((address, p)).ok())
        .with_context(|| {
            if lo == hi {
                format!("metrics.port = \"{port}\": cannot listen on {address}:{lo} (in use?); pick another port, a range such as \"9464-9563\", or \"off\"")
            } else {
                format!("metrics.port = \"{port}\": no free port in the range on {address}; widen the range or use \"off\"")
            }
        })?;
    let bound = listener.local_addr()?.port();
    let handle = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .expect("buckets are not empty")
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    metrics::gauge!("tidemark_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!("tidemark_ready").set(0.0);
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| anyhow::anyhow!("metrics endpoint: {e}"))?;
    let t = Arc::new(Telemetry {
        handle,
        ready: AtomicBool::new(false),
        collectors: Mutex::new(Vec::new()),
    });
    let _ = GLOBAL.set(t.clone());
    let served = t.clone();
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || serve(&server, &served))
        .context("starting the metrics thread")?;
    tracing::info!(address, port = bound, "serving /metrics, /live and /ready");
    Ok(Some(t))
}

/// `9464` or `9464-9563` (`metrics.port`, read in `crate::config`).
pub(crate) fn parse_ports(s: &str) -> Result<(u16, u16)> {
    let num = |x: &str| -> Result<u16> {
        x.trim().parse::<u16>().with_context(|| {
            format!("metrics.port = \"{s}\": use a port such as \"9464\", a range such as \"9464-9563\", or \"off\"")
        })
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(s)?, num(s)?),
    };
    if lo > hi {
        bail!("metrics.port = \"{s}\": the range is empty; write the lower port first");
    }
    Ok((lo, hi))
}

fn serve(server: &tiny_http::Server, t: &Telemetry) {
    let text = |s: &str| {
        tiny_http::Header::from_bytes(&b"Content-Type"[..], s.as_bytes()).expect("header")
    };
    for req in server.incoming_requests() {
        let path = req.url().split('?').next().unwrap_or("").to_owned();
        let (code, body, kind) = match path.as_str() {
            "/metrics" => {
                for c in t.collectors.lock().unwrap().iter() {
                    c();
                }
                t.handle.run_upkeep();
                (200, t.handle.render(), "text/plain; version=0.0.4")
            }
            "/live" => (200, "live\n".to_owned(), "text/plain"),
            "/ready" if t.ready.load(Ordering::Relaxed) => {
                (200, "ready\n".to_owned(), "text/plain")
            }
            "/ready" => (503, "not ready\n".to_owned(), "text/plain"),
            _ => (
                404,
                "try /metrics, /live or /ready\n".to_owned(),
                "text/plain",
            ),
        };
        let resp = tiny_http::Response::from_string(body)
            .with_status_code(code)
            .with_header(text(kind));
        let _ = req.respond(resp);
    }
}

/// HELP lines for every metric tidemark exports.
fn describe() {
    use Unit::*;
    let c = |n: &'static str, u: Unit, h: &'static str| describe_counter!(n, u, h);
    let g = |n: &'static str, u: Unit, h: &'static str| describe_gauge!(n, u, h);
    c(
        "tidemark_records_read_total",
        Count,
        "Records read from a source partition, including re-reads after a restart.",
    );
    c(
        "tidemark_records_in_total",
        Count,
        "Records that entered the job from a source partition (kept, duplicate or rejected).",
    );
    c(
        "tidemark_source_bytes_read_total",
        Bytes,
        "Bytes read from a source partition.",
    );
    c(
        "tidemark_rejects_total",
        Count,
        "Records sent to the rejects output, by source and reason.",
    );
    c(
        "tidemark_late_records_total",
        Count,
        "Records rejected as LATE, by source.",
    );
    c(
        "tidemark_duplicates_total",
        Count,
        "Duplicate transactions dropped in committed epochs (process 0).",
    );
    c(
        "tidemark_records_out_total",
        Count,
        "Rows committed per output (process 0).",
    );
    c(
        "tidemark_windows_emitted_total",
        Count,
        "Window rows emitted, by window spec.",
    );
    c(
        "tidemark_anomalies_emitted_total",
        Count,
        "Anomalies emitted, by kind.",
    );
    c(
        "tidemark_checkpoints_total",
        Count,
        "Epochs committed (process 0).",
    );
    c(
        "tidemark_sink_failures_total",
        Count,
        "Failed attempts to publish a committed epoch to the Kafka sinks (each retried; process 0).",
    );
    g(
        "tidemark_sink_waiting_seconds",
        Seconds,
        "How long the Kafka sinks' current epoch has waited for the brokers (0 when nothing waits; process 0).",
    );
    g(
        "tidemark_sink_last_epoch_timestamp_seconds",
        Seconds,
        "The last committed epoch published to the Kafka sinks (its boundary, Unix time; process 0).",
    );
    g(
        "tidemark_checkpoint_stalled_seconds",
        Seconds,
        "How long the oldest checkpoint storage operation (a write or a commit, retries included) has gone without succeeding, once past 8 s; 0 otherwise.",
    );
    c(
        "tidemark_checkpoint_failures_total",
        Count,
        "Failed commit attempts (process 0).",
    );
    g(
        "tidemark_source_watermark_timestamp_seconds",
        Seconds,
        "A source partition's watermark, Unix time.",
    );
    g("tidemark_frontier_timestamp_seconds", Seconds, "The dataflow's output frontier (event time, Unix time); event-time lag is time() minus this.");
    g(
        "tidemark_source_lag_records",
        Count,
        "Kafka: records between the committed position and the high watermark.",
    );
    g(
        "tidemark_source_lag_seconds",
        Seconds,
        "Kinesis: MillisBehindLatest of the shard's last read, in seconds.",
    );
    c(
        "tidemark_source_errors_total",
        Count,
        "Kinesis: failed calls the shard's reader backed off from, by kind (throttled; transient: timeouts, refused connections, 5xx).",
    );
    g(
        "tidemark_checkpoint_last_success_timestamp_seconds",
        Seconds,
        "Wall time of the last commit (process 0).",
    );
    g(
        "tidemark_checkpoint_last_epoch_timestamp_seconds",
        Seconds,
        "Event-time boundary of the last committed epoch (process 0).",
    );
    g(
        "tidemark_checkpoint_interval_seconds",
        Seconds,
        "The configured epoch interval (event time).",
    );
    g(
        "tidemark_checkpoint_size_bytes",
        Bytes,
        "Bytes of data and state files in the last commit (process 0).",
    );
    g(
        "tidemark_state_keys",
        Count,
        "Keys held by a stateful operator on a worker, at the last commit boundary.",
    );
    g(
        "tidemark_state_bytes",
        Bytes,
        "Bytes of a stateful operator's snapshot on a worker, at the last commit boundary.",
    );
    g(
        "tidemark_ready",
        Count,
        "1 once restore has finished and every source is open.",
    );
    g("tidemark_build_info", Count, "The running version.");
    describe_histogram!("tidemark_event_to_output_seconds", Seconds, "From a record being read to the commit of the epoch holding it (records read by process 0).");
    describe_histogram!(
        "tidemark_frontier_delay_seconds",
        Seconds,
        "From a record being read to the dataflow's output frontier passing its time."
    );
    describe_histogram!(
        "tidemark_checkpoint_duration_seconds",
        Seconds,
        "Duration of one commit: manifest, commit log and retention."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_or_name_the_field() {
        assert_eq!(parse_ports("9464").unwrap(), (9464, 9464));
        assert_eq!(parse_ports("9464-9563").unwrap(), (9464, 9563));
        for bad in ["x", "9464-", "9600-9500", "70000"] {
            let e = parse_ports(bad).unwrap_err().to_string();
            assert!(e.contains("metrics.port"), "{bad}: {e}");
        }
    }
}
