//! The Kinesis source as the job sees it: start and end positions from
//! config and flags, and the per-shard metrics (`MillisBehindLatest`)
//! logged from the committer. The shards themselves are planned and read
//! by [`crate::kinesis::stream`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use tidemark_dataflow::rfc3339::parse_rfc3339_ms;
use tidemark_dataflow::source::Meter;

use crate::kinesis::stream::StreamSource;
use crate::kinesis::{ShardMetrics, StartAt};

/// `trim_horizon` (or `earliest`) | `latest` | RFC 3339 time | Unix ms: where
/// shards without a checkpoint start. Times are ApproximateArrivalTimestamp.
pub fn parse_start(field: &str, s: &str) -> Result<StartAt> {
    match s.trim() {
        "trim_horizon" | "TRIM_HORIZON" | "earliest" => Ok(StartAt::TrimHorizon),
        "latest" | "LATEST" => Ok(StartAt::Latest),
        t => match time_ms(t) {
            Some(ms) => Ok(StartAt::AtTimestamp(ms)),
            None => bail!(
                "{field} = {s:?}: use trim_horizon, latest, an RFC 3339 time (2024-01-31T00:00:00Z) or Unix milliseconds"
            ),
        },
    }
}

/// `now` (or `latest`: the time the job starts) | RFC 3339 time | Unix ms:
/// a bounded read stops before the first record that arrived at or after it.
pub fn parse_end(field: &str, s: &str) -> Result<i64> {
    match s.trim() {
        "now" | "latest" => Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as i64),
        t => match time_ms(t) {
            Some(ms) => Ok(ms),
            None => bail!(
                "{field} = {s:?}: use now, an RFC 3339 time (2024-01-31T00:00:00Z) or Unix milliseconds"
            ),
        },
    }
}

fn time_ms(s: &str) -> Option<i64> {
    parse_rfc3339_ms(s).or_else(|| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    })
}

/// Logs each opened shard's read position, `MillisBehindLatest` and
/// throttling, at most every `SHARD_LOG_INTERVAL` (called after commits).
pub struct ShardLog {
    source: Arc<StreamSource>,
    meter: Arc<Meter>,
    last: Option<Instant>,
}

const SHARD_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl ShardLog {
    pub fn new(source: Arc<StreamSource>, meter: Arc<Meter>) -> ShardLog {
        ShardLog {
            source,
            meter,
            last: None,
        }
    }

    /// Each shard's partition, id and counters.
    pub fn metrics(&self) -> Vec<(u32, String, Arc<ShardMetrics>)> {
        self.source.metrics()
    }

    pub fn maybe_log(&mut self) {
        if self.last.is_some_and(|t| t.elapsed() < SHARD_LOG_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        let read = self.meter.partitions.lock().unwrap().clone();
        for (partition, shard, m) in self.source.metrics() {
            let r = read.get(&partition).copied().unwrap_or_default();
            let behind = m.millis_behind_latest.load(Ordering::Relaxed);
            tracing::info!(
                stream = %self.source.stream(),
                shard = %shard,
                partition,
                millis_behind_latest = (behind >= 0).then_some(behind),
                records_read = r.records,
                bytes_read = r.bytes,
                read_position = r.position,
                watermark_ms = r.watermark_ms,
                get_records_calls = m.get_records_calls.load(Ordering::Relaxed),
                throttled = m.throttled.load(Ordering::Relaxed),
                transient_errors = m.transient_errors.load(Ordering::Relaxed),
                finished = m.finished.load(Ordering::Relaxed),
                "kinesis shard"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_ends_parse_or_name_the_field() {
        assert_eq!(
            parse_start("f", "trim_horizon").unwrap(),
            StartAt::TrimHorizon
        );
        assert_eq!(parse_start("f", "earliest").unwrap(), StartAt::TrimHorizon);
        assert_eq!(parse_start("f", " latest").unwrap(), StartAt::Latest);
        assert_eq!(
            parse_start("f", "1970-01-01T00:00:02Z").unwrap(),
            StartAt::AtTimestamp(2000)
        );
        assert_eq!(
            parse_start("f", "1500").unwrap(),
            StartAt::AtTimestamp(1500)
        );
        assert_eq!(parse_end("f", "1970-01-01T00:00:01.5Z").unwrap(), 1500);
        assert!(parse_end("f", "now").unwrap() > 1_700_000_000_000);
        let e = parse_start("kinesis.start", "yesterday")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kinesis.start") && e.contains("trim_horizon"),
            "{e}"
        );
        let e = parse_end("--to", "soon").unwrap_err().to_string();
        assert!(e.contains("--to") && e.contains("now"), "{e}");
    }
}
