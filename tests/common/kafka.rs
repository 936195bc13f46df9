//! What the Kafka tests share: producing files to partitions, reading
//! topics and group offsets back, the sinks' check against the reference,
//! and running a job with its stderr drained.
//!
//! Each test binary uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tidemark_connectors::kafka::{
    committed_offsets, high_watermarks, produce_lines, KafkaSettings,
};
use tidemark_testkit::job::FAST_COMMITS;
use tidemark_testkit::reference::{parse_timestamp, Outputs};
use tidemark_testkit::tansu::Tansu;
use tidemark_testkit::write;

/// Each file's lines to one explicit partition, in order: Kafka offset =
/// line number, as in a file replay.
pub fn produce(broker: &Tansu, topic: &str, files: &[PathBuf]) {
    broker.create_topic(topic, files.len() as u32);
    let settings = KafkaSettings::new(broker.brokers(), "producer");
    for (p, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).unwrap();
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        let offsets = produce_lines(&settings, topic, p as i32, &lines).unwrap();
        assert_eq!(offsets.first(), Some(&0));
        assert_eq!(offsets.last(), Some(&(lines.len() as u64 - 1)));
    }
}

/// A job config reading `topic` to its end as of the start.
pub fn kafka_config(dir: &Path, broker: &Tansu, topic: &str, group: &str) -> PathBuf {
    kafka_config_with(dir, broker, topic, group, "")
}

pub fn kafka_config_with(
    dir: &Path,
    broker: &Tansu,
    topic: &str,
    group: &str,
    extra: &str,
) -> PathBuf {
    write(
        dir,
        &format!("kafka-{group}.toml"),
        &format!(
            "{FAST_COMMITS}\n[source]\nkind = \"kafka\"\n\n[kafka]\nbrokers = \"{}\"\ntopics = [\"{topic}\"]\ngroup_id = \"{group}\"\nend = \"latest\"\n{extra}",
            broker.brokers()
        ),
    )
}

/// Every (key, value) of a topic, from the start to its current end.
pub fn consume_all(
    broker: &Tansu,
    topic: &str,
    partitions: i32,
) -> Vec<(String, serde_json::Value)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", "sink-reader")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let mut out = Vec::new();
    for p in 0..partitions {
        let (_, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = 0;
        while next < high {
            assert!(
                Instant::now() < deadline,
                "{topic}/{p}: stuck at {next} of {high}"
            );
            let Some(m) = c.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m.unwrap();
            next = m.offset() + 1;
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            out.push((key, serde_json::from_slice(m.payload().unwrap()).unwrap()));
        }
    }
    out
}

/// The sinks hold every committed anomaly and reject (at least once: a
/// restart may publish an epoch again, with the same keys), keyed as
/// documented, and nothing else.
pub fn check_sinks(broker: &Tansu, expected: &Outputs) {
    use std::collections::{BTreeMap, BTreeSet};
    let rfc = |v: &serde_json::Value| parse_timestamp(v.as_str().unwrap());
    let alerts: BTreeMap<String, serde_json::Value> =
        consume_all(broker, "alerts", 3).into_iter().collect();
    let mut want = BTreeSet::new();
    for a in &expected.anomalies {
        want.insert((
            a.kind.clone(),
            a.transaction_id.clone(),
            a.window.clone(),
            a.key.clone(),
            a.metric.clone(),
            a.window_start,
            (a.z * 1e6).round() as i64,
        ));
    }
    let mut got = BTreeSet::new();
    for (k, v) in &alerts {
        let s = |f: &str| v[f].as_str().map(str::to_owned);
        let kind = s("kind").unwrap();
        let expect_key = if kind == "transaction" {
            format!("transaction/{}", s("transaction_id").unwrap())
        } else {
            format!(
                "window/{}/{}/{}/{}",
                s("window").unwrap(),
                s("key").unwrap(),
                s("window_start").unwrap(),
                s("metric").unwrap()
            )
        };
        assert_eq!(k, &expect_key);
        let start = if v["window_start"].is_null() {
            None
        } else {
            rfc(&v["window_start"])
        };
        got.insert((
            kind,
            s("transaction_id"),
            s("window"),
            s("key").unwrap(),
            s("metric").unwrap(),
            start,
            (v["z"].as_f64().unwrap() * 1e6).round() as i64,
        ));
    }
    assert!(!want.is_empty());
    assert_eq!(got, want, "alerts topic");

    let dead: BTreeMap<String, serde_json::Value> =
        consume_all(broker, "dead-letters", 3).into_iter().collect();
    let want: BTreeMap<String, (String, String)> = expected
        .rejects
        .iter()
        .map(|r| {
            (
                format!("{}/{}/{}", r.source, r.partition, r.offset),
                (r.reason.clone(), r.raw.clone()),
            )
        })
        .collect();
    let got: BTreeMap<String, (String, String)> = dead
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (
                    v["reason"].as_str().unwrap().to_owned(),
                    v["raw"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want, "dead-letter topic");
}

pub fn group_offsets(broker: &Tansu, topic: &str, group: &str, n: i32) -> Vec<Option<u64>> {
    let c = KafkaSettings::new(broker.brokers(), group)
        .consumer()
        .unwrap();
    let tps: Vec<(String, i32)> = (0..n).map(|p| (topic.to_owned(), p)).collect();
    committed_offsets(&c, &tps).unwrap()
}

pub fn ends(broker: &Tansu, topic: &str, n: i32) -> Vec<u64> {
    let c = KafkaSettings::new(broker.brokers(), "probe")
        .consumer()
        .unwrap();
    let tps: Vec<(String, i32)> = (0..n).map(|p| (topic.to_owned(), p)).collect();
    high_watermarks(&c, &tps).unwrap()
}
