//! Publishing committed anomalies to an alerts topic and rejects to a
//! dead-letter topic.
//!
//! Only committed outputs are published: after an epoch commits, its
//! anomalies and rejects files are read back and produced, keyed
//! deterministically, then `_sinks/kafka.json` records the epoch. A start
//! publishes every committed epoch after the recorded one first. A crash
//! between producing and recording republishes that epoch with the same
//! keys: at least once, with duplicates recognisable by key (Kafka
//! transactions would make it exactly once; the test broker cannot commit
//! one, see `KeyedSink`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use tidemark_checkpoint::manifest::{self, Manifest};
use tidemark_checkpoint::parquet_rows::rows_as_json;
use tidemark_checkpoint::storage::Storage;
use tidemark_connectors::background::Background;
use tidemark_connectors::kafka::{KafkaSettings, KeyedSink};

pub use tidemark_protocol::keys::KAFKA_SINKS_PROGRESS as PROGRESS_KEY;

#[derive(Clone, Debug, Default)]
pub struct SinkTopics {
    pub alerts: Option<String>,
    pub dead_letters: Option<String>,
}

/// The key of an anomaly: `transaction/<id>` or
/// `window/<window>/<key>/<window_start>/<metric>`.
pub fn anomaly_key(row: &Map<String, Value>) -> String {
    let s = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("");
    if s("kind") == "transaction" {
        format!("transaction/{}", s("transaction_id"))
    } else {
        format!(
            "window/{}/{}/{}/{}",
            s("window"),
            s("key"),
            s("window_start"),
            s("metric")
        )
    }
}

/// The key of a reject: its source coordinates `<source>/<partition>/<offset>`.
pub fn reject_key(row: &Map<String, Value>) -> String {
    format!(
        "{}/{}/{}",
        row.get("source").and_then(Value::as_str).unwrap_or(""),
        row.get("partition").unwrap_or(&Value::Null),
        row.get("offset").unwrap_or(&Value::Null)
    )
}

type KeyFn = fn(&Map<String, Value>) -> String;

struct Publisher {
    storage: Arc<dyn Storage>,
    topics: SinkTopics,
    sink: KeyedSink,
    /// The last epoch published.
    done: Option<i64>,
}

impl Publisher {
    fn publish(&mut self, m: &Manifest) -> Result<()> {
        if self.done.is_some_and(|d| m.epoch <= d) {
            return Ok(());
        }
        let mut n = 0;
        for f in &m.files {
            let (topic, key): (&Option<String>, KeyFn) = match f.output.as_str() {
                "anomalies" => (&self.topics.alerts, anomaly_key),
                "rejects" => (&self.topics.dead_letters, reject_key),
                _ => continue,
            };
            let Some(topic) = topic else { continue };
            let bytes = self
                .storage
                .get(&f.path)?
                .with_context(|| format!("{} named by epoch {} is missing", f.path, m.epoch))?;
            for row in rows_as_json(bytes).with_context(|| format!("reading {}", f.path))? {
                let k = key(&row);
                let v = serde_json::to_vec(&row)?;
                self.sink.send(topic, k.as_bytes(), &v)?;
                n += 1;
            }
        }
        self.sink.flush(Duration::from_secs(60))?;
        self.storage.put(
            PROGRESS_KEY,
            serde_json::json!({ "epoch": m.epoch })
                .to_string()
                .as_bytes(),
        )?;
        self.done = Some(m.epoch);
        tracing::debug!(epoch = m.epoch, records = n, "published to Kafka sinks");
        Ok(())
    }

    /// Publishes, retrying while the brokers are unreachable.
    fn publish_retrying(&mut self, m: &Manifest) {
        let mut wait = Duration::from_millis(500);
        while let Err(e) = self.publish(m) {
            tracing::warn!(epoch = m.epoch, error = %format!("{e:#}"), "publishing to Kafka sinks failed; retrying");
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
}

/// Starts the publisher: committed epochs not yet published first, then each
/// manifest sent.
pub fn start(
    storage: Arc<dyn Storage>,
    settings: &KafkaSettings,
    topics: SinkTopics,
) -> Result<Background<Manifest>> {
    let done = match storage.get(PROGRESS_KEY)? {
        Some(b) => serde_json::from_slice::<Value>(&b)
            .ok()
            .and_then(|v| v["epoch"].as_i64()),
        None => None,
    };
    let mut p = Publisher {
        storage: storage.clone(),
        topics,
        sink: KeyedSink::new(settings)?,
        done,
    };
    let backlog: Vec<i64> = manifest::list_manifests(&*storage)?
        .into_iter()
        .filter(|e| done.is_none_or(|d| *e > d))
        .collect();
    let bg = Background::start("kafka-sinks", move |batch: Vec<Manifest>| {
        for m in batch {
            p.publish_retrying(&m);
        }
    })?;
    for e in backlog {
        bg.send(manifest::load(&*storage, e)?);
    }
    Ok(bg)
}
