//! Producing: records to one partition for tests and tools, and the keyed
//! sink of the job's alert and dead-letter outputs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::context::KafkaContext;
use super::settings::{config_error, KafkaSettings, REQUEST_TIMEOUT};

/// One record for [`produce_records`].
#[derive(Clone, Copy, Debug)]
pub struct ProduceRecord<'a> {
    /// `None` produces a null value.
    pub value: Option<&'a [u8]>,
    /// Create time in ms; `None`: now.
    pub timestamp_ms: Option<i64>,
}

#[derive(Default)]
struct ProduceContext {
    kafka: KafkaContext,
    /// Per record index: the offset, or the delivery error.
    results: Mutex<HashMap<usize, Result<u64, String>>>,
}

impl ClientContext for ProduceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        self.kafka.log(level, fac, msg)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.kafka.error(error, reason)
    }
}

impl ProducerContext for ProduceContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, index: usize) {
        let r = match r {
            Ok(m) => Ok(m.offset() as u64),
            Err((e, _)) => Err(e.to_string()),
        };
        self.results.lock().unwrap().insert(index, r);
    }
}

impl KafkaSettings {
    /// An idempotent producer (no duplicates or reordering on retries).
    fn producer(&self, extra: &[(&str, &str)]) -> Result<BaseProducer<ProduceContext>> {
        let mut fixed = vec![("enable.idempotence", "true")];
        fixed.extend_from_slice(extra);
        let c = self.config(&[], &fixed)?;
        c.create_with_context(ProduceContext::default())
            .map_err(|e| config_error(e, "producer"))
    }
}

/// Produces `lines` to one partition and waits for delivery; returns their
/// offsets. For tests and tools.
pub fn produce_lines(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    lines: &[&[u8]],
) -> Result<Vec<u64>> {
    let recs: Vec<ProduceRecord> = lines
        .iter()
        .map(|l| ProduceRecord {
            value: Some(l),
            timestamp_ms: None,
        })
        .collect();
    produce_records(settings, topic, partition, &recs)
}

/// Like [`produce_lines`], with null values and explicit timestamps.
pub fn produce_records(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    records: &[ProduceRecord],
) -> Result<Vec<u64>> {
    // Room for large test records; the broker still applies its own limit.
    let producer = settings.producer(&[("message.max.bytes", "67108864")])?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    for (i, r) in records.iter().enumerate() {
        let mut rec =
            BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, i).partition(partition);
        if let Some(v) = r.value {
            rec = rec.payload(v);
        }
        if let Some(ts) = r.timestamp_ms {
            rec = rec.timestamp(ts);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    rec = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => bail!("producing to topic {topic} partition {partition}: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(deadline.saturating_duration_since(Instant::now()))
        .with_context(|| format!("delivering to topic {topic} partition {partition}"))?;
    let mut results = producer.context().results.lock().unwrap();
    (0..records.len())
        .map(|i| match results.remove(&i) {
            Some(Ok(o)) => Ok(o),
            Some(Err(e)) => Err(anyhow!("record {i} to {topic}/{partition}: {e}")),
            None => Err(anyhow!(
                "record {i} to {topic}/{partition}: no delivery report"
            )),
        })
        .collect()
}

/// A keyed, idempotent producer for the job's sinks (alerts, dead letters).
///
/// Delivery is at least once: the broker de-duplicates a producer's retries
/// (idempotence), and a republished batch after a crash carries the same
/// keys, so consumers keep the last record per key. Kafka transactions would
/// make it exactly once, but tansu (the test broker) cannot end one
/// (`EndTxn` unsupported), so they are not used.
pub struct KeyedSink {
    producer: BaseProducer<ProduceContext>,
    sent: usize,
}

impl KeyedSink {
    /// Records never expire in the producer (`message.timeout.ms = 0`): an
    /// outage of any length is waited out in [`KeyedSink::deliver`], with
    /// librdkafka reconnecting and resending on its own.
    pub fn new(settings: &KafkaSettings) -> Result<KeyedSink> {
        Ok(KeyedSink {
            producer: settings.producer(&[("acks", "all"), ("message.timeout.ms", "0")])?,
            sent: 0,
        })
    }

    /// Queues one record; the partition follows from the key.
    pub fn send(&mut self, topic: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let mut rec = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, self.sent)
            .key(key)
            .payload(value);
        loop {
            match self.producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => bail!("producing to topic {topic}: {e}"),
            }
        }
        self.sent += 1;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Waits until every queued record is delivered, however long that
    /// takes, calling `waiting(records in flight)` every `tick` it is not
    /// done; fails if the brokers refused a record (not for being away).
    pub fn deliver(&mut self, tick: Duration, mut waiting: impl FnMut(usize)) -> Result<()> {
        loop {
            match self.producer.flush(tick) {
                Ok(()) => break,
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {
                    waiting(self.producer.in_flight_count().max(0) as usize)
                }
                Err(e) => return Err(e).context("delivering sink records"),
            }
        }
        let mut results = self.producer.context().results.lock().unwrap();
        let failed = results.values().filter(|r| r.is_err()).count();
        let first = results.values().find_map(|r| r.clone().err());
        let delivered = results.len();
        results.clear();
        let sent = std::mem::take(&mut self.sent);
        if failed > 0 || delivered != sent {
            bail!(
                "{failed} of {sent} sink records failed ({} reported): {}",
                delivered,
                first.unwrap_or_default()
            );
        }
        Ok(())
    }
}
