//! Tools for `scripts/bench-kafka`:
//!
//!   kafka_bench produce BROKERS TOPIC FILE...   each file to its own partition
//!   kafka_bench consume BROKERS TOPIC           a bare rdkafka consumer: reads every
//!                                               partition to its high watermark
//!
//! `consume` is the baseline tidemark's Kafka ingest is compared with: the
//! same consumer settings (`CONSUMER_DEFAULTS`), no processing.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tidemark_connectors::kafka::{high_watermarks, produce_lines, topic_partitions, KafkaSettings};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("produce") if args.len() >= 5 => produce(&args[2], &args[3], &args[4..]),
        Some("consume") if args.len() == 4 => consume(&args[2], &args[3]),
        _ => bail!("usage: kafka_bench produce BROKERS TOPIC FILE... | consume BROKERS TOPIC"),
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
