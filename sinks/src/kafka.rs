//! The Kafka publisher: a background thread that publishes each committed
//! epoch, then records it in the progress record.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// How long records may wait for the brokers before the wait is reported
/// (and how often the publisher looks while waiting).
const REPORT_AFTER: Duration = Duration::from_secs(5);
/// While the brokers stay away, the warning repeats at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// What the publisher has done, for the metrics (read at scrape).
#[derive(Debug)]
pub struct SinkStatus {
    /// The last epoch published (`i64::MIN`: none yet).
    pub published_epoch: AtomicI64,
    /// Unix ms since which the current epoch's records have been waiting
    /// for the brokers (0: nothing waiting past [`REPORT_AFTER`]).
    pub waiting_since_ms: AtomicU64,
    /// Failed publish attempts (each retried).
    pub failures: AtomicU64,
}

impl Default for SinkStatus {
    fn default() -> SinkStatus {
        SinkStatus {
            published_epoch: AtomicI64::new(i64::MIN),
            waiting_since_ms: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

impl SinkStatus {
    /// The last epoch published, if any.
    pub fn published(&self) -> Option<i64> {
        Some(self.published_epoch.load(Ordering::Relaxed)).filter(|e| *e != i64::MIN)
    }

    /// How long records have been waiting for the brokers (zero if none are).
    pub fn waiting(&self) -> Duration {
        match self.waiting_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(unix_ms().saturating_sub(since)),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Publisher {
    storage: Arc<dyn Storage>,
    topics: SinkTopics,
    sink: KeyedSink,
    /// The last epoch published.
    published: Option<i64>,
    status: Arc<SinkStatus>,
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
        self.deliver(m.epoch, n)?;
        self.storage
            .put(KAFKA_SINKS_PROGRESS, &sinks::progress(m.epoch))?;
        self.published = Some(m.epoch);
        self.status
            .published_epoch
            .store(m.epoch, Ordering::Relaxed);
        tracing::debug!(epoch = m.epoch, records = n, "published to Kafka sinks");
        Ok(())
    }

    /// Waits for the epoch's `n` records to reach the brokers, however long
    /// they are away (hung or refusing), warning at [`REPORT_AFTER`] and
    /// then every [`REPORT_EVERY`]. Commits go on meanwhile: publishing is
    /// behind them, on this thread.
    fn deliver(&mut self, epoch: i64, n: usize) -> Result<()> {
        let start = Instant::now();
        let mut reported: Option<Instant> = None;
        let status = self.status.clone();
        let topics = [&self.topics.alerts, &self.topics.dead_letters]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let result = self.sink.deliver(REPORT_AFTER, |in_flight| {
            let now = Instant::now();
            if reported.is_none() {
                let since = unix_ms().saturating_sub(start.elapsed().as_millis() as u64);
                status.waiting_since_ms.store(since.max(1), Ordering::Relaxed);
            }
            if reported.is_none_or(|r| now.duration_since(r) >= REPORT_EVERY) {
                reported = Some(now);
                tracing::warn!(
                    epoch,
                    topics = %topics,
                    in_flight,
                    "Kafka sinks: {in_flight} of epoch {epoch}'s {n} records not delivered after {:.0}s; waiting for the brokers (commits go on, publishing catches up when they answer)",
                    start.elapsed().as_secs_f64()
                );
            }
        });
        status.waiting_since_ms.store(0, Ordering::Relaxed);
        if reported.is_some() && result.is_ok() {
            tracing::info!(
                epoch,
                "Kafka sinks: the brokers are back after {:.1}s; epoch {epoch} delivered",
                start.elapsed().as_secs_f64()
            );
        }
        result
    }

    /// Publishes, retrying while the brokers are unreachable.
    fn publish_retrying(&mut self, m: &Manifest) {
        let mut wait = Duration::from_millis(500);
        while let Err(e) = self.publish(m) {
            self.status.failures.fetch_add(1, Ordering::Relaxed);
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
    status: Arc<SinkStatus>,
) -> Result<Background<Manifest>> {
    let published = storage
        .get(KAFKA_SINKS_PROGRESS)?
        .and_then(|b| sinks::parse_progress(&b));
    if let Some(e) = published {
        status.published_epoch.store(e, Ordering::Relaxed);
    }
    let backlog = sinks::backlog(&manifest::list_manifests(&*storage)?, published);
    let mut p = Publisher {
        storage: storage.clone(),
        topics,
        sink: KeyedSink::new(settings)?,
        published,
        status,
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
