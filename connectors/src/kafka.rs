//! Kafka source building blocks (SPEC 2–3): per-partition readers over one
//! consumer per worker, start and end positions, offset commits for lag
//! tools, lag metrics, and a small producer for tests and tools.
//!
//! Offsets live in tidemark's manifests, not in the broker: partitions are
//! assigned explicitly (`assign`, never `subscribe`), so there is no group
//! rebalancing, and the group's committed offsets are only a mirror written
//! after each committed epoch so standard tools show lag.
//!
//! Positions are "next offset to read", never counts: Kafka offsets have
//! gaps (compaction, transaction markers, aborted records under
//! `read_committed`), and every record carries its own offset.
//!
//! Memory: each partition has its own librdkafka fetch queue (split from the
//! consumer queue), bounded by `queued.max.messages.kbytes` and
//! `queued.min.messages` (see [`CONSUMER_DEFAULTS`]). When the dataflow stops
//! polling, librdkafka stops fetching once a partition's queue is full, so
//! the prefetch queues are the bound.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tidemark_dataflow::source::{PartitionReader, Poll, RawBatch};

/// Timeout of the metadata and offset requests made at open and by helpers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// At most one log line per error kind in this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Consumer defaults; `properties` may override these.
///
/// - `auto.offset.reset=error`: a start offset that no longer exists
///   (retention, a recreated topic) is an error, never a silent skip.
/// - `isolation.level=read_committed`: aborted transactional records are
///   never read (they leave gaps in offsets).
/// - Prefetch bound per partition (separate partition queues make these
///   per-partition limits): at most 8 MiB of payload or 20,000 messages
///   (each queued message costs a few hundred bytes of librdkafka overhead
///   beyond its payload), plus the fetch response being parsed:
///   `fetch.max.bytes` per broker request, `max.partition.fetch.bytes` per
///   partition in it (measured: 10.5 MB queued with 40 MB waiting, test
///   `prefetch_stays_bounded_when_the_reader_is_not_polled`).
/// - Oversized records: Kafka returns a first record batch larger than the
///   fetch limits whole (KIP-74), and librdkafka accepts responses up to
///   `receive.message.max.bytes` (100 MB default), so any record the broker
///   accepted is delivered whole, never truncated; the dataflow rejects it
///   by `max_record_bytes`. (tansu 0.6 differs: it never returns a record
///   of min(`fetch.max.bytes`, 5 MiB) or more, so its partition stalls
///   there; lag metrics show it.)
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("auto.offset.reset", "error"),
    ("isolation.level", "read_committed"),
    ("queued.max.messages.kbytes", "8192"),
    ("queued.min.messages", "20000"),
    ("fetch.max.bytes", "16777216"),
    ("max.partition.fetch.bytes", "1048576"),
    ("enable.auto.offset.store", "false"),
    // A fetch at a partition's end waits this long for new data before the
    // broker answers (librdkafka's 500 ms default): it bounds the latency a
    // quiet partition adds; idle polling stays cheap at ~100 fetches/s.
    ("fetch.wait.max.ms", "10"),
];

/// Where a partition without a checkpoint starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest retained record (the low watermark at open).
    Earliest,
    /// Only records produced after open (the high watermark at open).
    Latest,
    /// The first record with timestamp >= this (ms since the epoch).
    TimestampMs(i64),
    /// An explicit offset.
    Offset(u64),
}

/// One Kafka partition read by the job.
#[derive(Clone, Debug)]
pub struct KafkaPartition {
    pub topic: String,
    pub partition: i32,
    /// The job's partition number (positions, rejects, watermarks), unique
    /// across all topics of the job.
    pub index: u32,
    pub start: StartAt,
    /// Next offset to read, from a checkpoint: overrides `start`.
    pub checkpoint: Option<u64>,
    /// Bounded read: stop before this offset (exclusive).
    pub end: Option<u64>,
}

/// Connection settings shared by consumers, producers and helpers.
#[derive(Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`, e.g. `host1:9092,host2:9092`.
    pub brokers: String,
    /// Group under which offsets are committed (for lag tools only).
    pub group_id: String,
    /// Passed through to librdkafka (security, tuning). A value `env:NAME`
    /// is read from the environment variable NAME, so secrets stay out of
    /// config files.
    pub properties: Vec<(String, String)>,
}

/// Whether a property's value must never be logged.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "sasl.oauthbearer", "ssl.key"]
        .iter()
        .any(|s| k.contains(s))
}

/// Secret values hidden, so settings can be logged.
impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "<redacted>" } else { v }))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("properties", &props)
            .finish()
    }
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>, group_id: impl Into<String>) -> Self {
        KafkaSettings {
            brokers: brokers.into(),
            group_id: group_id.into(),
            properties: Vec::new(),
        }
    }

    /// The properties with `env:NAME` values read from the environment.
    pub fn resolved_properties(&self) -> Result<Vec<(String, String)>> {
        self.properties
            .iter()
            .map(|(k, v)| match v.strip_prefix("env:") {
                Some(name) => std::env::var(name).map(|v| (k.clone(), v)).map_err(|_| {
                    anyhow!("Kafka property {k}: environment variable {name} is not set")
                }),
                None => Ok((k.clone(), v.clone())),
            })
            .collect()
    }

    fn config(&self, defaults: &[(&str, &str)], fixed: &[(&str, &str)]) -> Result<ClientConfig> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in self.resolved_properties()? {
            c.set(k, v);
        }
        for (k, v) in fixed {
            c.set(*k, *v);
        }
        tracing::debug!(settings = ?self, "Kafka client config");
        Ok(c)
    }

    /// A consumer that never subscribes (partitions are assigned
    /// explicitly), never auto-commits, and reports partition EOF.
    pub fn consumer(&self) -> Result<KafkaConsumer> {
        self.consumer_config()?
            .create_with_context(KafkaContext::default())
            .map_err(|e| config_error(e, "consumer"))
    }

    /// The configuration [`consumer`](Self::consumer) uses, for clients
    /// with a context of their own.
    pub fn consumer_config(&self) -> Result<ClientConfig> {
        self.config(
            CONSUMER_DEFAULTS,
            &[
                ("group.id", self.group_id.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "true"),
            ],
        )
    }

    /// An idempotent producer (no duplicates or reordering on retries).
    fn producer(&self, extra: &[(&str, &str)]) -> Result<BaseProducer<ProduceContext>> {
        let mut fixed = vec![("enable.idempotence", "true")];
        fixed.extend_from_slice(extra);
        let c = self.config(&[], &fixed)?;
        c.create_with_context(ProduceContext::default())
            .map_err(|e| config_error(e, "producer"))
    }
}

/// Client creation errors name the property but never echo a secret value.
fn config_error(e: KafkaError, what: &str) -> anyhow::Error {
    match e {
        KafkaError::ClientConfig(_, _, key, _) if is_secret(&key) => {
            anyhow!("Kafka {what}: invalid value for property {key}")
        }
        KafkaError::ClientConfig(_, desc, key, _) => {
            anyhow!("Kafka {what}: property {key}: {desc}")
        }
        e => anyhow!("creating Kafka {what}: {e}"),
    }
}

/// Logs at most one line per key per [`LOG_INTERVAL`], with the count of
/// lines held back, so a broker outage does not flood the log.
#[derive(Default)]
struct Throttle(Mutex<HashMap<String, (Instant, u64)>>);

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be logged.
    fn allow(&self, key: &str) -> Option<u64> {
        let mut m = self.0.lock().unwrap();
        let now = Instant::now();
        match m.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < LOG_INTERVAL => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                Some(n)
            }
            None => {
                m.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Routes librdkafka's logs and errors to `tracing`, throttled.
#[derive(Default)]
pub struct KafkaContext {
    throttle: Throttle,
}

impl KafkaContext {
    fn warn(&self, key: &str, msg: &dyn fmt::Display) {
        if let Some(held) = self.throttle.allow(key) {
            tracing::warn!(held_back = held, "kafka: {msg}");
        }
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Debug | RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice => {
                tracing::debug!(target: "librdkafka", "{fac} {msg}")
            }
            _ => self.warn(fac, &format_args!("librdkafka {fac}: {msg}")),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Reaching a partition's end is news, not trouble.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        let key = format!("{:?}", error.rdkafka_error_code());
        self.warn(&key, &format_args!("{error}: {reason}"));
    }
}

impl ConsumerContext for KafkaContext {}

pub type KafkaConsumer = BaseConsumer<KafkaContext>;

/// Messages found on the consumer's shared queue instead of their partition
/// queue (see [`Shared::serve`]), kept in order for their reader.
type Stash = HashMap<(String, i32), Vec<(u64, Vec<u8>)>>;

/// The consumer of one worker, shared by its partition readers.
struct Shared {
    consumer: Arc<KafkaConsumer>,
    stash: Mutex<Stash>,
}

impl Shared {
    /// Serves the consumer queue: errors and events not tied to a partition
    /// (broker down, reconnects). librdkafka reconnects by itself; transient
    /// errors are logged (throttled) and the readers keep returning Waiting.
    fn serve(&self) -> Result<(), String> {
        while let Some(r) = self.consumer.poll(Duration::ZERO) {
            match r {
                // Partition queues are split before `assign`, so fetched
                // messages should never land here; if one does, keep it for
                // its reader rather than lose it.
                Ok(m) => {
                    let key = (m.topic().to_owned(), m.partition());
                    let rec = (m.offset() as u64, m.payload().unwrap_or(&[]).to_vec());
                    self.stash.lock().unwrap().entry(key).or_default().push(rec);
                }
                Err(e) => self.on_error(e, None)?,
            }
        }
        Ok(())
    }

    /// Fatal errors end the job with a message saying what to do; the rest
    /// are transient: logged, throttled.
    fn on_error(&self, e: KafkaError, tp: Option<(&str, i32)>) -> Result<(), String> {
        let at = tp.map_or(String::new(), |(t, p)| format!("topic {t} partition {p}: "));
        match &e {
            KafkaError::MessageConsumptionFatal(code) => {
                Err(format!("{at}fatal Kafka consumer error: {code}"))
            }
            // A partition's end seen on the consumer queue: news, not trouble.
            KafkaError::PartitionEOF(_) => Ok(()),
            KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset) => Err(format!(
                "{at}the position to read no longer exists on the broker (records deleted \
                 by retention, or the topic was recreated): {e}. To skip the lost records, \
                 start this partition from `earliest` (drop its checkpointed position) or \
                 set the property auto.offset.reset=earliest"
            )),
            _ => {
                let key = format!("{at}{:?}", e.rdkafka_error_code());
                self.consumer
                    .context()
                    .warn(&key, &format_args!("{at}{e} (retrying)"));
                Ok(())
            }
        }
    }
}

/// One assigned Kafka partition as a [`PartitionReader`].
pub struct KafkaReader {
    shared: Arc<Shared>,
    /// `None` once finished (or when the range was empty at open).
    queue: Option<PartitionQueue<KafkaContext>>,
    topic: String,
    partition: i32,
    index: u32,
    start: u64,
    next: u64,
    end: Option<u64>,
    /// The last thing the partition queue said was "end of partition" (the
    /// broker's high watermark as of its last answer), with no record since.
    at_eof: bool,
}

/// What a poll that found no record means (SPEC 3's idleness): an
/// unbounded partition is caught up only at the end the broker last
/// reported — partition EOF, with no record since. Anything else is
/// waiting: a bounded read below its end, a position behind the high
/// watermark, the time before the first fetch answers, a broker that hangs
/// or refuses connections. A waiting partition holds the frontier however
/// long it takes, so no record becomes late because of an outage.
pub fn empty_poll(bounded: bool, at_eof: bool) -> Poll {
    if !bounded && at_eof {
        Poll::CaughtUp
    } else {
        Poll::Waiting
    }
}

impl KafkaReader {
    /// The job's partition number.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// The resolved start: next offset to read at open (for the initial
    /// `PartitionStart`).
    pub fn start_offset(&self) -> u64 {
        self.start
    }
    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn partition(&self) -> i32 {
        self.partition
    }

    fn finish(&mut self) {
        if self.queue.take().is_some() {
            // Stop prefetching records past the end.
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, self.partition);
            let _ = self.shared.consumer.pause(&tpl);
        }
    }

    /// librdkafka's position: past the last record *and* control record
    /// (transaction marker) handed out, which a bounded read needs when its
    /// end falls right after markers that carry no record.
    fn position(&self) -> Option<u64> {
        let pos = self.shared.consumer.position().ok()?;
        match pos.find_partition(&self.topic, self.partition)?.offset() {
            Offset::Offset(o) if o >= 0 => Some(o as u64),
            _ => None,
        }
    }

    fn push_stashed(&mut self, max: usize, batch: &mut RawBatch, pushed: &mut usize) {
        let mut stash = self.shared.stash.lock().unwrap();
        let Some(recs) = stash.get_mut(&(self.topic.clone(), self.partition)) else {
            return;
        };
        let mut taken = 0;
        for (offset, bytes) in recs.iter() {
            if *pushed >= max || self.end.is_some_and(|e| *offset >= e) {
                break;
            }
            taken += 1;
            if *offset >= self.next {
                batch.push(bytes, *offset);
                self.next = offset + 1;
                *pushed += 1;
                self.at_eof = false;
            }
        }
        recs.drain(..taken);
    }
}

impl PartitionReader for KafkaReader {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        if self.queue.is_none() {
            return Ok(Poll::Finished);
        }
        self.shared.serve()?;
        let mut pushed = 0;
        self.push_stashed(max, batch, &mut pushed);
        let mut reached_end = self.end.is_some_and(|e| self.next >= e);
        while pushed < max && !reached_end {
            let Some(queue) = &self.queue else { break };
            match queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    let offset = m.offset() as u64;
                    if offset < self.next {
                        // Already handed out; librdkafka does not redeliver
                        // after reconnects, but positions must only grow.
                        continue;
                    }
                    if self.end.is_some_and(|e| offset >= e) {
                        reached_end = true;
                        break;
                    }
                    // A null value becomes empty bytes: the dataflow rejects it.
                    batch.push(m.payload().unwrap_or(&[]), offset);
                    self.next = offset + 1;
                    pushed += 1;
                    self.at_eof = false;
                    reached_end = self.end.is_some_and(|e| self.next >= e);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    self.at_eof = true;
                    // Caught up. A bounded read may end in offsets that
                    // hold only control records: ask librdkafka's position.
                    if let Some(end) = self.end {
                        reached_end = self.position().is_some_and(|p| p >= end);
                    }
                    break;
                }
                Some(Err(e)) => {
                    self.shared
                        .on_error(e, Some((&self.topic, self.partition)))?;
                    break;
                }
            }
        }
        if reached_end {
            self.finish();
        }
        Ok(if pushed > 0 {
            Poll::Ready
        } else if self.queue.is_none() {
            Poll::Finished
        } else {
            empty_poll(self.end.is_some(), self.at_eof)
        })
    }

    fn describe(&self) -> String {
        match self.end {
            Some(end) => format!(
                "topic {} partition {}, at offset {} of {end}",
                self.topic, self.partition, self.next
            ),
            None => format!(
                "topic {} partition {}, at offset {}",
                self.topic, self.partition, self.next
            ),
        }
    }
}

/// Opens one consumer for `parts` (one worker's share; topics may differ)
/// and returns a reader per partition, in the order given.
///
/// Fails, naming the topic/partition and the fix, when a topic or partition
/// does not exist, when a start offset is no longer (or not yet) in the
/// partition, or when the brokers cannot be reached.
pub fn open_readers(
    settings: &KafkaSettings,
    parts: &[KafkaPartition],
) -> Result<Vec<KafkaReader>> {
    let consumer = Arc::new(settings.consumer()?);
    check_partitions(&consumer, &settings.brokers, parts)?;

    // Resolve every start to a concrete offset, so the caller can record it.
    let tps: Vec<(String, i32)> = parts
        .iter()
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    let mut starts = Vec::with_capacity(parts.len());
    let mut by_time: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, p) in parts.iter().enumerate() {
        let (low, high) = watermarks(&consumer, &p.topic, p.partition)?;
        let start = match (p.checkpoint, &p.start) {
            (Some(o), _) | (None, &StartAt::Offset(o)) => o,
            (None, StartAt::Earliest) => low,
            (None, StartAt::Latest) => high,
            (None, StartAt::TimestampMs(ms)) => {
                by_time.entry(*ms).or_default().push(i);
                high
            }
        };
        let what = if p.checkpoint.is_some() {
            "checkpointed position"
        } else {
            "start offset"
        };
        if start < low {
            bail!(
                "topic {} partition {}: {what} {start} was deleted (the oldest retained \
                 offset is {low}); records {start}..{low} are lost. Start from `earliest` \
                 to skip them",
                p.topic,
                p.partition
            );
        }
        if start > high {
            bail!(
                "topic {} partition {}: {what} {start} is past the end of the partition \
                 (high watermark {high}); was the topic recreated? Start from `earliest` \
                 or `latest` instead",
                p.topic,
                p.partition
            );
        }
        starts.push(start);
    }
    // A consumer of its own: resolving a time may read a record.
    let probe = if by_time.is_empty() {
        None
    } else {
        Some(settings.consumer()?)
    };
    for (ms, idx) in by_time {
        let list: Vec<(String, i32)> = idx.iter().map(|&i| tps[i].clone()).collect();
        let found = offsets_for_time(probe.as_ref().unwrap(), &list, ms)?;
        for (&i, o) in idx.iter().zip(found) {
            starts[i] = o;
        }
    }

    // Split the partition queues *before* assigning: fetched messages then
    // never pass through the shared consumer queue.
    let shared = Arc::new(Shared {
        consumer: consumer.clone(),
        stash: Mutex::new(HashMap::new()),
    });
    let mut tpl = TopicPartitionList::new();
    let mut readers = Vec::with_capacity(parts.len());
    for (p, &start) in parts.iter().zip(&starts) {
        let live = p.end.is_none_or(|e| start < e);
        let queue = if live {
            let q = consumer
                .split_partition_queue(&p.topic, p.partition)
                .ok_or_else(|| {
                    anyhow!(
                        "topic {} partition {}: no partition queue",
                        p.topic,
                        p.partition
                    )
                })?;
            tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(start as i64))
                .context("building the assignment")?;
            Some(q)
        } else {
            None
        };
        readers.push(KafkaReader {
            shared: shared.clone(),
            queue,
            topic: p.topic.clone(),
            partition: p.partition,
            index: p.index,
            start,
            next: start,
            end: p.end,
            at_eof: false,
        });
    }
    if tpl.count() > 0 {
        consumer
            .assign(&tpl)
            .context("assigning Kafka partitions")?;
    }
    Ok(readers)
}

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
fn check_partitions(
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

fn watermarks<C: ConsumerContext>(
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
    pub fn new(settings: &KafkaSettings) -> Result<KeyedSink> {
        Ok(KeyedSink {
            producer: settings.producer(&[("acks", "all")])?,
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

    /// Waits until every queued record is delivered; fails if any was not.
    pub fn flush(&mut self, timeout: Duration) -> Result<()> {
        self.producer
            .flush(timeout)
            .context("delivering sink records")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_resolved_and_secrets_never_printed() {
        std::env::set_var("TIDEMARK_TEST_KAFKA_PW", "hunter2");
        let mut s = KafkaSettings::new("b:9092", "g");
        s.properties = vec![
            ("sasl.password".into(), "env:TIDEMARK_TEST_KAFKA_PW".into()),
            ("ssl.key.pem".into(), "PEMDATA".into()),
            ("client.id".into(), "tm".into()),
        ];
        let r = s.resolved_properties().unwrap();
        assert_eq!(r[0], ("sasl.password".into(), "hunter2".into()));
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("PEMDATA") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("\"tm\""), "{shown}");

        s.properties = vec![(
            "sasl.password".into(),
            "env:TIDEMARK_TEST_KAFKA_UNSET".into(),
        )];
        let e = s.resolved_properties().unwrap_err().to_string();
        assert!(e.contains("TIDEMARK_TEST_KAFKA_UNSET"), "{e}");
        assert!(is_secret("sasl.oauthbearer.client.secret") && !is_secret("bootstrap.servers"));
    }

    #[test]
    fn a_bad_property_is_named_without_its_secret_value() {
        let mut s = KafkaSettings::new("127.0.0.1:1", "g");
        s.properties = vec![("no.such.password".into(), "s3cr3t".into())];
        let e = format!("{:#}", s.consumer().err().expect("an error"));
        assert!(
            e.contains("no.such.password") && !e.contains("s3cr3t"),
            "{e}"
        );
    }

    /// The idleness rule for Kafka (SPEC 3): only an unbounded partition at
    /// the broker's reported end is caught up. Every other empty poll waits,
    /// whatever happened before: a bounded read is never idle below its
    /// end (it finishes there), and without an end-of-partition since the
    /// last record — a hung broker, a refused connection, a fetch not yet
    /// answered — the partition may hold unread records.
    #[test]
    fn only_an_unbounded_partition_at_its_reported_end_is_caught_up() {
        let cases = [
            // (bounded, at_eof, expected)
            (false, true, Poll::CaughtUp),
            (false, false, Poll::Waiting),
            // A bounded read that saw an EOF (the high watermark of the
            // moment) but is still below its end: waiting, not idle.
            (true, true, Poll::Waiting),
            (true, false, Poll::Waiting),
        ];
        for (bounded, at_eof, want) in cases {
            assert_eq!(
                empty_poll(bounded, at_eof),
                want,
                "bounded {bounded}, at_eof {at_eof}"
            );
        }
    }
}
