//! Connection settings shared by consumers, producers and helpers, the
//! consumer defaults, and where a partition starts.

use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use super::context::{KafkaConsumer, KafkaContext};

/// Timeout of the metadata and offset requests made at open and by helpers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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

    pub(super) fn config(
        &self,
        defaults: &[(&str, &str)],
        fixed: &[(&str, &str)],
    ) -> Result<ClientConfig> {
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
}

/// Client creation errors name the property but never echo a secret value.
pub(super) fn config_error(e: KafkaError, what: &str) -> anyhow::Error {
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
}
