//! Metadata and offset calls: partition counts, watermarks, offsets for a
//! time, the group's committed offsets (a mirror for lag tools) and lag
//! metrics.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::context::KafkaConsumer;
use super::settings::{KafkaPartition, REQUEST_TIMEOUT};

/// The number of partitions of each topic, in the order given; an unknown
/// topic or unreachable brokers fail naming them.
pub fn topic_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    brokers: &str,
    topics: &[String],
) -> Result<Vec<i32>> {
    topics
        .iter()
        .map(|topic| {
            let md = consumer
                .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
                .map_err(|e| {
                    anyhow!(
                        "cannot read the metadata of Kafka topic {topic} from {brokers}: {e}. \
                         Check the broker addresses, the network, and the TLS/SASL properties"
                    )
                })?;
            let t = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .ok_or_else(|| {
                    anyhow!("Kafka topic {topic}: not in the broker's metadata answer")
                })?;
            if let Some(err) = t.error() {
                let code = RDKafkaErrorCode::from(err);
                if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                    bail!(
                        "Kafka topic {topic} does not exist on {brokers}: create it, or fix the \
                         topic name in the source config"
                    );
                }
                bail!("Kafka topic {topic}: metadata error {code}");
            }
            Ok(t.partitions().len() as i32)
        })
        .collect()
}

/// Unknown topics or partitions fail at open, not as a stall later.
pub(super) fn check_partitions(
    consumer: &KafkaConsumer,
    brokers: &str,
    parts: &[KafkaPartition],
) -> Result<()> {
    let mut topics: Vec<String> = parts.iter().map(|p| p.topic.clone()).collect();
    topics.sort();
    topics.dedup();
    let counts = topic_partitions(consumer, brokers, &topics)?;
    for (topic, n) in topics.iter().zip(counts) {
        for p in parts.iter().filter(|p| &p.topic == topic) {
            if p.partition < 0 || p.partition >= n {
                bail!(
                    "Kafka topic {topic} partition {} does not exist: the topic has {n} \
                     partitions (0..={}). Fix the partition list, or add partitions to the topic",
                    p.partition,
                    n - 1
                );
            }
        }
    }
    Ok(())
}

pub(super) fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Result<(u64, u64)> {
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
        .with_context(|| format!("watermarks of topic {topic} partition {partition}"))?;
    Ok((low.max(0) as u64, high.max(0) as u64))
}

/// The current high watermarks (next offset to be written): the end of
/// "read until the end as of now" bounded reads.
pub fn high_watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    parts: &[(String, i32)],
) -> Result<Vec<u64>> {
    parts
        .iter()
        .map(|(t, p)| watermarks(consumer, t, *p).map(|w| w.1))
        .collect()
}

/// Per partition, the first offset whose record timestamp is >= `ms` (the
/// high watermark when there is none): a start at a time, or the exclusive
/// end of a range "before `ms`".
///
/// `consumer` must read nothing (e.g. the one for commits and metrics): an
/// answer at the log start is checked by reading that record, because some
/// brokers (tansu 0.6) answer offset 0 instead of "none" when every record
/// is older than `ms`.
pub fn offsets_for_time<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    parts: &[(String, i32)],
    ms: i64,
) -> Result<Vec<u64>> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in parts {
        tpl.add_partition_offset(t, *p, Offset::Offset(ms))
            .context("building the offsets-for-times request")?;
    }
    let found = consumer
        .offsets_for_times(tpl, REQUEST_TIMEOUT)
        .with_context(|| format!("offsets for time {ms} ms"))?;
    parts
        .iter()
        .map(|(t, p)| {
            let e = found
                .find_partition(t, *p)
                .ok_or_else(|| anyhow!("topic {t} partition {p}: no answer for time {ms}"))?;
            e.error()
                .with_context(|| format!("topic {t} partition {p}: offset for time {ms}"))?;
            let (low, high) = watermarks(consumer, t, *p)?;
            Ok(match e.offset() {
                Offset::Offset(o) if o >= 0 && (o as u64) < high => {
                    let o = (o as u64).max(low);
                    if o == low && timestamp_at(consumer, t, *p, o)?.is_some_and(|ts| ts < ms) {
                        high
                    } else {
                        o
                    }
                }
                // No record at or after `ms`: the end of the partition.
                _ => high,
            })
        })
        .collect()
}

/// The timestamp of the record at `offset` (which must exist), read by
/// assigning `consumer` to it for a moment.
fn timestamp_at<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    offset: u64,
) -> Result<Option<i64>> {
    if consumer.assignment().map_or(0, |a| a.count()) > 0 {
        bail!("offsets_for_time needs a consumer with no assigned partitions");
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset as i64))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let found = loop {
        if Instant::now() > deadline {
            break Err(anyhow!(
                "topic {topic} partition {partition}: timed out reading offset {offset}"
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.topic() == topic && m.partition() == partition => {
                break Ok(m.timestamp().to_millis());
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break Ok(None),
            _ => {}
        }
    };
    consumer.unassign()?;
    while consumer.poll(Duration::ZERO).is_some() {}
    found
}

/// Commits `(topic, partition, next offset)` under the consumer's group so
/// standard tools show lag. Call after an epoch is committed; tidemark never
/// reads these back to resume, so a failure is only worth a warning.
///
/// Blocks until the group coordinator answers: about 45 s, then an error,
/// when the brokers are down (measured), so call it where waiting is
/// harmless (not on a worker thread).
pub fn commit_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    offsets: &[(String, i32, u64)],
) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in offsets {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o as i64))
            .context("building the offset commit")?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .context("committing Kafka offsets")?;
    // Drain events queued by the commit (its result, errors).
    while consumer.poll(Duration::ZERO).is_some() {}
    Ok(())
}

/// The group's committed next offsets (`None`: nothing committed).
pub fn committed_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    parts: &[(String, i32)],
) -> Result<Vec<Option<u64>>> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in parts {
        tpl.add_partition(t, *p);
    }
    let got = consumer
        .committed_offsets(tpl, REQUEST_TIMEOUT)
        .context("reading committed Kafka offsets")?;
    parts
        .iter()
        .map(|(t, p)| {
            let e = got
                .find_partition(t, *p)
                .ok_or_else(|| anyhow!("topic {t} partition {p}: no committed-offset answer"))?;
            Ok(match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o as u64),
                _ => None,
            })
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMetrics {
    pub topic: String,
    pub partition: i32,
    pub high_watermark: u64,
    /// high watermark − position (0 when the position is past it).
    pub lag: u64,
}

/// High watermark and lag per `(topic, partition, position)`; one broker
/// round trip per partition (up to [`REQUEST_TIMEOUT`] each when down).
pub fn partition_metrics<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    positions: &[(String, i32, u64)],
) -> Result<Vec<PartitionMetrics>> {
    positions
        .iter()
        .map(|(t, p, pos)| {
            let (_, high) = watermarks(consumer, t, *p)?;
            Ok(PartitionMetrics {
                topic: t.clone(),
                partition: *p,
                high_watermark: high,
                lag: high.saturating_sub(*pos),
            })
        })
        .collect()
}
