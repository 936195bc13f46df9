//! Tools for `scripts/bench-kafka` and `scripts/bench-stream`:
//!
//!   kafka_bench produce BROKERS TOPIC FILE...   each file to its own partition
//!   kafka_bench consume BROKERS TOPIC           a bare rdkafka consumer: reads every
//!                                               partition to its high watermark
//!   kafka_bench produce-rate BROKERS TOPIC RATE SECONDS [PARTITIONS] [--drain MAX]
//!                                               RATE events/s for SECONDS, stamped
//!                                               with the wall clock
//!
//! `consume` is the baseline tidemark's Kafka ingest is compared with: the
//! same consumer settings (`CONSUMER_DEFAULTS`), no processing.
//!
//! `produce-rate` is the source of a streaming latency measurement: each
//! record's `timestamp` is the wall clock when it is handed to the producer,
//! records go round-robin over the partitions, and they are paced in small
//! batches (every [`PACE`]) so the rate is smooth. It prints one line,
//! `produce-rate: produced N records in S s = A records/s (target R), …`,
//! with the rate achieved and how far it fell behind its schedule at worst,
//! then `produce-rate: delivered D of N records, failed F` once everything
//! is flushed. Exit 1 when a record was not delivered. PARTITIONS defaults
//! to the topic's partition count.
//!
//! With `--drain MAX`, after SECONDS it goes on at the same rate, on the
//! same schedule, until its stdin is closed (at most MAX more seconds), and
//! reports those records on a line of their own (`drain: produced M more
//! records …, T in all`). A job following the topic commits, and so stops
//! on SIGTERM, only when its frontier passes the next commit boundary,
//! which needs records: the benchmark stops the job while this drain runs.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tidemark_connectors::generator::{mix64, MERCHANT_NAMES};
use tidemark_connectors::kafka::{high_watermarks, produce_lines, topic_partitions, KafkaSettings};
use tidemark_dataflow::rfc3339::format_rfc3339_ms;

const USAGE: &str = "usage: kafka_bench produce BROKERS TOPIC FILE... | consume BROKERS TOPIC \
                     | produce-rate BROKERS TOPIC RATE SECONDS [PARTITIONS] [--drain MAX_SECONDS]";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("produce") if args.len() >= 5 => produce(&args[2], &args[3], &args[4..]),
        Some("consume") if args.len() == 4 => consume(&args[2], &args[3]),
        Some("produce-rate") if args.len() >= 6 => {
            let rate: f64 = args[4].parse().context("RATE: events per second")?;
            let secs: f64 = args[5].parse().context("SECONDS")?;
            let (mut parts, mut drain) = (None, None);
            let mut rest = args[6..].iter();
            while let Some(a) = rest.next() {
                if a == "--drain" {
                    let v = rest.next().context("--drain MAX_SECONDS")?;
                    drain = Some(v.parse::<f64>().context("--drain MAX_SECONDS")?);
                } else if parts.is_none() {
                    parts = Some(a.parse::<i32>().context("PARTITIONS")?);
                } else {
                    bail!("{USAGE}");
                }
            }
            if drain.is_some_and(|d| !(d >= 0.0 && d.is_finite())) {
                bail!("--drain MAX_SECONDS must be a number of seconds");
            }
            if !(rate > 0.0 && rate.is_finite() && secs > 0.0 && secs.is_finite()) {
                bail!("RATE and SECONDS must be positive");
            }
            if parts.is_some_and(|p| p < 1) {
                bail!("PARTITIONS must be at least 1");
            }
            produce_rate(&args[2], &args[3], rate, secs, parts, drain)
        }
        _ => bail!("{USAGE}"),
    }
}

fn produce(brokers: &str, topic: &str, files: &[String]) -> Result<()> {
    let settings = KafkaSettings::new(brokers, "bench-producer");
    for (p, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).with_context(|| format!("reading {f}"))?;
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        // In chunks: the helper waits for every delivery of a call.
        for chunk in lines.chunks(50_000) {
            produce_lines(&settings, topic, p as i32, chunk)?;
        }
    }
    Ok(())
}

fn consume(brokers: &str, topic: &str) -> Result<()> {
    let settings = KafkaSettings::new(brokers, "bench-bare");
    let consumer = settings.consumer()?;
    let n = topic_partitions(&consumer, brokers, &[topic.to_owned()])?[0];
    let tps: Vec<(String, i32)> = (0..n).map(|p| (topic.to_owned(), p)).collect();
    let ends = high_watermarks(&consumer, &tps)?;
    let started = Instant::now();
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut next = vec![0u64; n as usize];
    let (mut records, mut bytes) = (0u64, 0u64);
    while next.iter().zip(&ends).any(|(a, b)| a < b) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                bytes += m.payload_len() as u64;
                next[m.partition() as usize] = m.offset() as u64 + 1;
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => bail!("consuming: {e}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "bare rdkafka consumer: {records} records, {bytes} bytes in {secs:.2} s = {:.0} records/s",
        records as f64 / secs
    );
    Ok(())
}

/// How often the paced producer hands a batch to librdkafka.
const PACE: Duration = Duration::from_millis(5);
const CUSTOMERS: u64 = 10_000;
const MERCHANTS: u64 = 100;
const CATEGORIES: [&str; 10] = [
    "grocery",
    "electronics",
    "travel",
    "restaurants",
    "fuel",
    "entertainment",
    "health",
    "clothing",
    "home",
    "digital_goods",
];
const DEVICES: [&str; 5] = ["ios", "android", "web", "pos", "kiosk"];
const LOCATIONS: [&str; 8] = [
    "Berlin",
    "London",
    "New York",
    "São Paulo",
    "Zürich",
    "Paris",
    "Tokyo",
    "Lagos",
];

/// splitmix64: small, fast, good enough for test data.
struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.u64() % n
    }
    fn f64(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Records shaped like the generator's valid transactions: ~10k customers
/// (80% of the traffic from a fifth of them), each with a usual amount;
/// ~100 merchants with a skewed popularity; mostly COMPLETED; one in 500
/// amounts far off the customer's usual, for the z-score detector.
struct Txns {
    rng: Rng,
    merchants: Vec<(String, &'static str)>,
    usual_cents: Vec<f64>,
    line: String,
}

impl Txns {
    fn new(seed: u64) -> Txns {
        let merchants = (0..MERCHANTS)
            .map(|m| {
                let h = mix64(seed ^ (m << 8) ^ 2);
                let name = format!("{} #{m:04}", MERCHANT_NAMES[(h % 16) as usize]);
                let json = serde_json::to_string(&name).expect("a string serializes");
                (json, CATEGORIES[(h >> 8) as usize % CATEGORIES.len()])
            })
            .collect();
        let usual_cents = (0..CUSTOMERS)
            .map(|c| {
                let u = (mix64(seed ^ 0xc0ff_ee00 ^ mix64(c)) >> 11) as f64 / (1u64 << 53) as f64;
                (500f64.ln() + u * (80_000f64.ln() - 500f64.ln())).exp() // 5.00 .. 800.00
            })
            .collect();
        Txns {
            rng: Rng(seed),
            merchants,
            usual_cents,
            line: String::with_capacity(512),
        }
    }

    /// The JSON of transaction `t-<partition>-<n>` stamped `now_ms`.
    fn next(&mut self, partition: i32, n: u64, now_ms: i64) -> &[u8] {
        use std::fmt::Write;
        let r = &mut self.rng;
        let hot = CUSTOMERS / 5;
        let customer = if r.f64() < 0.8 {
            r.below(hot)
        } else {
            hot + r.below(CUSTOMERS - hot)
        };
        let mut cents = (self.usual_cents[customer as usize] * (0.75 + 0.5 * r.f64())) as i64;
        if r.below(500) == 0 {
            cents *= 20;
        }
        let currency = ["USD", "USD", "USD", "EUR", "EUR", "GBP"][r.below(6) as usize];
        // Zipf-like: merchant m with probability ~ 1/(m+1).
        let m = ((r.f64() * ((MERCHANTS + 1) as f64).ln()).exp() as u64)
            .saturating_sub(1)
            .min(MERCHANTS - 1);
        let (merchant, category) = &self.merchants[m as usize];
        let status = match r.below(20) {
            0..=16 => "COMPLETED",
            17..=18 => "PENDING",
            _ => "FAILED",
        };
        let bits = r.u64();
        let device = DEVICES[(bits % DEVICES.len() as u64) as usize];
        let location = LOCATIONS[((bits >> 8) % LOCATIONS.len() as u64) as usize];
        self.line.clear();
        write!(
            self.line,
            "{{\"transaction_id\":\"t-{partition}-{n}\",\"customer_id\":\"cust-{customer:06}\",\
             \"amount\":{}.{:02},\"currency\":\"{currency}\",\"merchant\":{merchant},\
             \"category\":\"{category}\",\"status\":\"{status}\",\"timestamp\":\"{}\",\
             \"metadata\":{{\"device\":\"{device}\",\"location\":\"{location}\"}}}}",
            cents / 100,
            cents % 100,
            format_rfc3339_ms(now_ms)
        )
        .expect("writing to a String");
        self.line.as_bytes()
    }
}

/// Counts deliveries; keeps the first error.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| e.to_string());
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// The paced send loop: record `i` is due `i / rate` seconds after `started`.
struct Paced<'a> {
    producer: BaseProducer<Deliveries>,
    topic: &'a str,
    rate: f64,
    partitions: i32,
    txns: Txns,
    per_partition: Vec<u64>,
    sent: u64,
    started: Instant,
    next_batch: Instant,
    /// How late a batch's oldest record left against its schedule, at worst.
    behind_max: Duration,
}

impl Paced<'_> {
    /// Sends until `limit` records are out in all, or `stop` is set.
    fn run_until(&mut self, limit: u64, stop: &AtomicBool) -> Result<()> {
        while self.sent < limit && !stop.load(Ordering::Relaxed) {
            let due = ((self.started.elapsed().as_secs_f64() * self.rate) as u64).min(limit);
            if due > self.sent {
                let scheduled = Duration::from_secs_f64(self.sent as f64 / self.rate);
                let late = self.started.elapsed().saturating_sub(scheduled + PACE);
                self.behind_max = self.behind_max.max(late);
            }
            while self.sent < due {
                self.send_one()?;
            }
            self.producer.poll(Duration::ZERO);
            self.next_batch += PACE;
            let now = Instant::now();
            if self.next_batch > now {
                std::thread::sleep(self.next_batch - now);
            } else {
                // Behind: catch up at once, then keep the pace from here.
                self.next_batch = now;
            }
        }
        Ok(())
    }

    fn send_one(&mut self) -> Result<()> {
        let p = (self.sent % self.partitions as u64) as i32;
        let n = self.per_partition[p as usize];
        let payload = self.txns.next(p, n, now_ms());
        let mut rec = BaseRecord::to(self.topic).partition(p).payload(payload);
        loop {
            match self.producer.send::<[u8], [u8]>(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    self.producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("producing to {}/{p}: {e}", self.topic),
            }
        }
        self.per_partition[p as usize] += 1;
        self.sent += 1;
        Ok(())
    }
}

fn produce_rate(
    brokers: &str,
    topic: &str,
    rate: f64,
    secs: f64,
    partitions: Option<i32>,
    drain: Option<f64>,
) -> Result<()> {
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        // Latency is what is measured: send each paced batch at once.
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Deliveries::default())
        .context("creating the producer")?;
    let partitions = match partitions {
        Some(p) => p,
        None => {
            let md = producer
                .client()
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .with_context(|| format!("metadata of topic {topic}"))?;
            match md.topics().first().map(|t| t.partitions().len()) {
                Some(n) if n > 0 => n as i32,
                _ => bail!("topic {topic} has no partitions (does it exist?)"),
            }
        }
    };
    let total = (rate * secs).round() as u64;
    let started = Instant::now();
    let mut paced = Paced {
        producer,
        topic,
        rate,
        partitions,
        txns: Txns::new(now_ms() as u64),
        per_partition: vec![0; partitions as usize],
        sent: 0,
        started,
        next_batch: started,
        behind_max: Duration::ZERO,
    };
    let stdin_closed = Arc::new(AtomicBool::new(false));
    if drain.is_some() {
        let closed = stdin_closed.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            closed.store(true, Ordering::Relaxed);
        });
    }
    paced.run_until(total, &AtomicBool::new(false))?;
    let elapsed = started.elapsed().as_secs_f64().max(secs);
    println!(
        "produce-rate: produced {} records in {elapsed:.2} s = {:.0} records/s (target {rate:.0}), \
         partitions {partitions}, max behind schedule {:.1} ms",
        paced.sent,
        paced.sent as f64 / elapsed,
        paced.behind_max.as_secs_f64() * 1000.0
    );
    if let Some(max) = drain {
        std::io::stdout().flush()?;
        let limit = total + (rate * max).round() as u64;
        paced.run_until(limit, &stdin_closed)?;
        let more = paced.sent - total;
        let secs = started.elapsed().as_secs_f64() - elapsed;
        println!(
            "produce-rate: drain: produced {more} more records in {secs:.2} s, {} in all",
            paced.sent
        );
    }
    paced
        .producer
        .flush(Duration::from_secs(60))
        .context("delivering the last records")?;
    let c = paced.producer.context();
    let (ok, failed) = (
        c.ok.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
    );
    println!(
        "produce-rate: delivered {ok} of {} records, failed {failed}",
        paced.sent
    );
    if failed > 0 || ok != paced.sent {
        bail!(
            "{} of {} records not delivered: {}",
            paced.sent - ok,
            paced.sent,
            c.first_error.lock().unwrap().clone().unwrap_or_default()
        );
    }
    Ok(())
}
