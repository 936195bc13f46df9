//! The Kafka publisher: a background thread that publishes each committed
//! epoch, then records it in the progress record.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tidemark_checkpoint::manifest::{self, Manifest};
use tidemark_checkpoint::parquet_rows::rows_as_json;
use tidemark_connectors::background::Background;
use tidemark_connectors::kafka::{KafkaSettings, KeyedSink};
use tidemark_protocol::keys::KAFKA_SINKS_PROGRESS;
use tidemark_protocol::sinks::{self, Topic};
use tidemark_store::Storage;

/// The topics committed outputs are published to; `None`: not published.
#[derive(Clone, Debug, Default)]
pub struct SinkTopics {
    pub alerts: Option<String>,
    pub dead_letters: Option<String>,
}

impl SinkTopics {
    fn name(&self, t: Topic) -> Option<&str> {
        match t {
            Topic::Alerts => self.alerts.as_deref(),
            Topic::DeadLetters => self.dead_letters.as_deref(),
        }
    }
}

struct Publisher {
    storage: Arc<dyn Storage>,
    topics: SinkTopics,
    sink: KeyedSink,
    /// The last epoch published.
    published: Option<i64>,
}

impl Publisher {
    fn publish(&mut self, m: &Manifest) -> Result<()> {
        if !sinks::due(m.epoch, self.published) {
            return Ok(());
        }
        let mut n = 0;
        for f in &m.files {
            let Some(topic) = Topic::of(&f.output) else {
                continue;
            };
            let Some(name) = self.topics.name(topic) else {
                continue;
            };
            let bytes = self
                .storage
                .get(&f.path)?
                .with_context(|| format!("{} named by epoch {} is missing", f.path, m.epoch))?;
            for row in rows_as_json(bytes).with_context(|| format!("reading {}", f.path))? {
                let v = serde_json::to_vec(&row)?;
                self.sink.send(name, topic.key(&row).as_bytes(), &v)?;
                n += 1;
            }
        }
        self.sink.flush(Duration::from_secs(60))?;
        self.storage
            .put(KAFKA_SINKS_PROGRESS, &sinks::progress(m.epoch))?;
        self.published = Some(m.epoch);
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
    let published = storage
        .get(KAFKA_SINKS_PROGRESS)?
        .and_then(|b| sinks::parse_progress(&b));
    let backlog = sinks::backlog(&manifest::list_manifests(&*storage)?, published);
    let mut p = Publisher {
        storage: storage.clone(),
        topics,
        sink: KeyedSink::new(settings)?,
        published,
    };
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
