//! The Kafka source as the job sees it: topics resolved to numbered job
//! partitions with start and end positions, readers opened per worker, and
//! the committed positions mirrored to the broker's group offsets (for lag
//! tools only) off the worker threads. The caller hands the mirror its own
//! position type and gets each partition's lag back (the binary turns it
//! into a gauge).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tidemark_dataflow::rfc3339::parse_rfc3339_ms;
use tidemark_dataflow::source::Meter;

use crate::background::Background;
use crate::kafka::{
    self, high_watermarks, offsets_for_time, KafkaPartition, KafkaSettings, StartAt,
};

/// A start or end position as written in config and flags.
#[derive(Clone, Debug, PartialEq)]
pub enum Bound {
    Earliest,
    Latest,
    TimeMs(i64),
    /// `(topic, partition) → offset`; every partition must be listed.
    Offsets(BTreeMap<(String, i32), u64>),
}

/// `earliest` | `latest` | RFC 3339 time | Unix ms | `topic:partition=offset,…`
/// (the topic may be left out when the job reads one topic).
pub fn parse_bound(field: &str, s: &str, topics: &[String]) -> Result<Bound> {
    let s = s.trim();
    let usage = "use earliest, latest, an RFC 3339 time (2024-01-31T00:00:00Z), Unix milliseconds, or offsets such as payments:0=120,payments:1=98";
    if s == "earliest" {
        return Ok(Bound::Earliest);
    }
    if s == "latest" {
        return Ok(Bound::Latest);
    }
    if let Some(ms) = parse_rfc3339_ms(s) {
        return Ok(Bound::TimeMs(ms));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Bound::TimeMs(
            s.parse().with_context(|| format!("{field} = {s:?}"))?,
        ));
    }
    if s.contains('=') {
        let mut m = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let parsed = (|| {
                let (tp, off) = item.split_once('=')?;
                let (topic, part) = match tp.rsplit_once(':') {
                    Some((t, p)) => (t.to_owned(), p),
                    None if topics.len() == 1 => (topics[0].clone(), tp),
                    None => return None,
                };
                Some((
                    topic,
                    part.trim().parse::<i32>().ok()?,
                    off.trim().parse::<u64>().ok()?,
                ))
            })();
            let Some((topic, part, off)) = parsed else {
                bail!("{field}: cannot read {item:?} as topic:partition=offset; {usage}");
            };
            if !topics.contains(&topic) {
                bail!("{field}: topic {topic:?} in {item:?} is not one of the job's topics {topics:?}");
            }
            m.insert((topic, part), off);
        }
        return Ok(Bound::Offsets(m));
    }
    bail!("{field} = {s:?}: {usage}")
}

/// The job's Kafka partitions, numbered topic by topic.
#[derive(Clone, Debug)]
pub struct KafkaSource {
    pub settings: KafkaSettings,
    pub parts: Vec<KafkaPartition>,
}

impl KafkaSource {
    /// Reads the topics' partition counts and resolves the bounds: start
    /// positions stay symbolic (each reader resolves its own at open); an end
    /// is fixed now, so every worker stops at the same place.
    pub fn resolve(
        settings: KafkaSettings,
        topics: &[String],
        start: &Bound,
        end: Option<&Bound>,
    ) -> Result<KafkaSource> {
        if settings.brokers.trim().is_empty() {
            bail!("kafka.brokers is empty: name the bootstrap servers, e.g. brokers = \"kafka1:9092,kafka2:9092\"");
        }
        if topics.is_empty() {
            bail!("kafka.topics is empty: name at least one topic");
        }
        let consumer = settings.consumer()?;
        let counts = kafka::topic_partitions(&consumer, &settings.brokers, topics)?;
        let mut parts = Vec::new();
        for (topic, n) in topics.iter().zip(counts) {
            for partition in 0..n {
                let index = parts.len() as u32;
                let start = match start {
                    Bound::Earliest => StartAt::Earliest,
                    Bound::Latest => StartAt::Latest,
                    Bound::TimeMs(ms) => StartAt::TimestampMs(*ms),
                    Bound::Offsets(m) => StartAt::Offset(listed(m, "start", topic, partition)?),
                };
                parts.push(KafkaPartition {
                    topic: topic.clone(),
                    partition,
                    index,
                    start,
                    checkpoint: None,
                    end: None,
                });
            }
        }
        let tps: Vec<(String, i32)> = parts
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        let ends: Option<Vec<u64>> = match end {
            None => None,
            Some(Bound::Earliest) => {
                bail!("kafka.end = earliest would read nothing: use latest, a time or offsets")
            }
            Some(Bound::Latest) => Some(high_watermarks(&consumer, &tps)?),
            Some(Bound::TimeMs(ms)) => Some(offsets_for_time(&consumer, &tps, *ms)?),
            Some(Bound::Offsets(m)) => Some(
                tps.iter()
                    .map(|(t, p)| listed(m, "end", t, *p))
                    .collect::<Result<_>>()?,
            ),
        };
        if let Some(ends) = ends {
            for (p, e) in parts.iter_mut().zip(ends) {
                p.end = Some(e);
            }
        }
        Ok(KafkaSource { settings, parts })
    }

    /// `topic/partition` of each job partition, recorded in commits so a
    /// restart over other topics is refused.
    pub fn describe(&self) -> Vec<String> {
        self.parts
            .iter()
            .map(|p| format!("kafka:{}/{}", p.topic, p.partition))
            .collect()
    }
}

fn listed(
    m: &BTreeMap<(String, i32), u64>,
    which: &str,
    topic: &str,
    partition: i32,
) -> Result<u64> {
    m.get(&(topic.to_owned(), partition)).copied().with_context(|| {
        format!("{which} offsets do not list {topic}:{partition}: list every partition of the job's topics")
    })
}

/// Mirrors committed positions to the group's offsets from a thread of its
/// own (a commit blocks ~45 s when the brokers are down), and logs each
/// partition's high watermark and lag at most every `LAG_LOG_INTERVAL`.
/// Positions are the caller's type `P`: `at` gives a position's job
/// partition and offset, and `on_lag` gets each position with its
/// partition's lag (records between it and the high watermark) after every
/// mirrored commit.
pub fn offset_mirror<P: Send + 'static>(
    source: &KafkaSource,
    meter: Arc<Meter>,
    at: impl Fn(&P) -> (u32, u64) + Send + 'static,
    mut on_lag: impl FnMut(&P, u64) + Send + 'static,
) -> Result<Background<Vec<P>>> {
    let consumer = source.settings.consumer()?;
    let names: Vec<(String, i32)> = source
        .parts
        .iter()
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    let mut last_log: Option<Instant> = None;
    Background::start("kafka-offsets", move |mut batch: Vec<Vec<P>>| {
        // Only the newest commit matters.
        let positions = batch.pop().unwrap_or_default();
        let offsets: Vec<(String, i32, u64)> = positions
            .iter()
            .filter_map(|p| {
                let (partition, offset) = at(p);
                let (t, k) = names.get(partition as usize)?;
                Some((t.clone(), *k, offset))
            })
            .collect();
        if let Err(e) = kafka::commit_offsets(&consumer, &offsets) {
            tracing::warn!(error = %format!("{e:#}"), "mirroring committed positions to the Kafka group failed; lag tools show older offsets");
            return;
        }
        // Lag behind the committed positions, as lag tools see it.
        if let Ok(m) = kafka::partition_metrics(&consumer, &offsets) {
            for (x, p) in m.iter().zip(&positions) {
                on_lag(p, x.lag);
            }
            if last_log.is_none_or(|t| t.elapsed() >= LAG_LOG_INTERVAL) {
                last_log = Some(Instant::now());
                // Read-side counters exist for this process's partitions only.
                let read = meter.partitions.lock().unwrap().clone();
                for ((x, (_, _, pos)), p) in m.iter().zip(&offsets).zip(&positions) {
                    let r = read.get(&at(p).0).copied().unwrap_or_default();
                    tracing::info!(
                        topic = %x.topic,
                        partition = x.partition,
                        committed_position = pos,
                        high_watermark = x.high_watermark,
                        lag = x.lag,
                        records_read = r.records,
                        bytes_read = r.bytes,
                        read_position = r.position,
                        watermark_ms = r.watermark_ms,
                        "kafka partition"
                    );
                }
            }
        }
    })
}

const LAG_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_or_name_the_problem() {
        let one = vec!["payments".to_owned()];
        let two = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(parse_bound("f", "earliest", &one).unwrap(), Bound::Earliest);
        assert_eq!(parse_bound("f", " latest ", &one).unwrap(), Bound::Latest);
        assert_eq!(
            parse_bound("f", "1970-01-01T00:00:01Z", &one).unwrap(),
            Bound::TimeMs(1000)
        );
        assert_eq!(
            parse_bound("f", "1700000000000", &one).unwrap(),
            Bound::TimeMs(1_700_000_000_000)
        );
        let m = |v: &[(&str, i32, u64)]| {
            Bound::Offsets(
                v.iter()
                    .map(|(t, p, o)| ((t.to_string(), *p), *o))
                    .collect(),
            )
        };
        assert_eq!(
            parse_bound("f", "0=5, 1=7", &one).unwrap(),
            m(&[("payments", 0, 5), ("payments", 1, 7)])
        );
        assert_eq!(
            parse_bound("f", "a:0=1,b:2=3", &two).unwrap(),
            m(&[("a", 0, 1), ("b", 2, 3)])
        );
        for (bad, needle) in [
            ("0=5", "topic:partition=offset"),
            ("c:0=5", "not one of the job's topics"),
            ("a:x=5", "topic:partition=offset"),
            ("yesterday", "use earliest"),
        ] {
            let e = parse_bound("kafka.start", bad, &two)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(needle) && e.contains("kafka.start"),
                "{bad}: {e}"
            );
        }
    }
}
