//! One struct per table of `cluster.toml`, with its defaults, and the
//! closed sets of names its fields take.

use std::fmt;
use std::path::PathBuf;

use anyhow::Result;
use serde::Deserialize;
use tidemark_connectors::kinesis::StartAt;
use tidemark_dataflow::params::{Aggregate, Outputs};

use super::*;

/// `source.kind`: where the job's transactions come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The built-in generator.
    Generator,
    /// JSON Lines files (plain or .gz), one partition per file.
    Files,
    Kafka,
    Kinesis,
}

/// `reference.kind`: where the merchants reference table comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferenceKind {
    None,
    /// Rows made by the built-in generator for its merchants.
    Generator,
    Files,
    Kafka,
}

/// `windows[i].kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKindName {
    Tumbling,
    Sliding,
    Session,
}

impl fmt::Display for WindowKindName {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            WindowKindName::Tumbling => "tumbling",
            WindowKindName::Sliding => "sliding",
            WindowKindName::Session => "session",
        })
    }
}

/// `windows[i].aggregates`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateName {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

impl From<AggregateName> for Aggregate {
    fn from(a: AggregateName) -> Aggregate {
        match a {
            AggregateName::Count => Aggregate::Count,
            AggregateName::Sum => Aggregate::Sum,
            AggregateName::Avg => Aggregate::Avg,
            AggregateName::Min => Aggregate::Min,
            AggregateName::Max => Aggregate::Max,
        }
    }
}

/// `anomaly.window.metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    TxnCount,
    SumCents,
}

/// Which outputs the job computes and writes (all by default). Off means
/// not written, and not computed where nothing else needs it: with
/// `anomalies = false` the detectors do not run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputsSection {
    pub transactions: bool,
    pub windows: bool,
    pub anomalies: bool,
    pub rejects: bool,
}
impl Default for OutputsSection {
    fn default() -> Self {
        let o = Outputs::default();
        OutputsSection {
            transactions: o.transactions,
            windows: o.windows,
            anomalies: o.anomalies,
            rejects: o.rejects,
        }
    }
}

/// The Prometheus endpoint (`/metrics`, `/live`, `/ready`) of each process.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// A port, a range whose first free port each process takes, or "off".
    pub port: MetricsPort,
    pub address: String,
    /// Keep serving this long after a bounded job ends, for a last scrape.
    pub linger: Dur,
}
impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            port: MetricsPort::Range(9464, 9563),
            address: "0.0.0.0".into(),
            linger: Dur(0),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSection {
    /// Output root: a local directory.
    pub output: String,
    pub log: String,
    /// After SIGTERM/SIGINT, how long the job may take to commit its
    /// current epoch before it gives up (exit 1).
    pub stop_timeout: Dur,
}
impl Default for JobSection {
    fn default() -> Self {
        JobSection {
            output: "tidemark-out".into(),
            log: "info".into(),
            stop_timeout: Dur::lit("60s"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    pub workers: Option<usize>,
    pub processes: Option<usize>,
    pub process: Option<usize>,
    pub hostfile: Option<PathBuf>,
    pub hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSection {
    /// `generator`, `files`, `kafka` or `kinesis`.
    pub kind: SourceKind,
    /// Logical name written to the `source` column.
    pub name: String,
    /// files: paths or glob patterns.
    pub paths: Vec<String>,
    /// generator settings.
    pub events: u64,
    pub partitions: u32,
    pub seed: u64,
    pub events_per_sec: u64,
}
impl Default for SourceSection {
    fn default() -> Self {
        SourceSection {
            kind: SourceKind::Generator,
            name: "transactions".into(),
            paths: Vec::new(),
            events: 2_000_000,
            partitions: 8,
            seed: 42,
            events_per_sec: 5_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeSection {
    pub tick: Dur,
    pub max_out_of_orderness: Dur,
    pub idle_timeout: Dur,
}
impl Default for TimeSection {
    fn default() -> Self {
        TimeSection {
            tick: Dur::lit("1s"),
            max_out_of_orderness: Dur::lit("10s"),
            idle_timeout: Dur::lit("30s"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationSection {
    pub max_record_bytes: usize,
}
impl Default for ValidationSection {
    fn default() -> Self {
        ValidationSection {
            max_record_bytes: 1_048_576,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupSection {
    pub horizon: Dur,
}
impl Default for DedupSection {
    fn default() -> Self {
        DedupSection {
            horizon: Dur::lit("10m"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    pub interval: Dur,
    pub min_wall_interval: Dur,
    /// Commits (with their state snapshots) kept for restarts.
    pub retain: u64,
    /// How long storage may keep failing one write or commit before the
    /// job gives up (exit 3); never by default.
    pub give_up_after: GiveUpAfter,
    /// Back-pressure: finished epochs (in checkpoint intervals of event
    /// time) that may wait for storage before the sources pause.
    /// (Signed so that a negative value gets the same message as 0.)
    pub max_pending_epochs: i64,
    /// Back-pressure: bytes of finished epochs a process may hold in memory
    /// until they are written before its sources pause.
    pub max_pending_bytes: ByteSize,
}
impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            interval: Dur::lit("10s"),
            min_wall_interval: Dur::lit("2s"),
            retain: DEFAULT_RETAIN,
            give_up_after: GiveUpAfter(None),
            max_pending_epochs: DEFAULT_MAX_PENDING_EPOCHS,
            max_pending_bytes: ByteSize(DEFAULT_MAX_PENDING_BYTES),
        }
    }
}

/// Three intervals: the 30 ticks sources could run ahead of the epoch
/// writers before the bound was configurable (10 s intervals of 1 s ticks).
pub const DEFAULT_MAX_PENDING_EPOCHS: i64 = 3;
/// 256 MiB per process: far above what three epochs of a busy stream
/// encode to, so it binds only when epochs are very large or writes slow.
pub const DEFAULT_MAX_PENDING_BYTES: u64 = 256 << 20;

/// The Kafka source (`source.kind = "kafka"`), and the connection settings
/// of `tidemark replay --kafka`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topics read; job partitions are numbered topic by topic, in this
    /// order, then by Kafka partition.
    pub topics: Vec<String>,
    /// Group whose committed offsets mirror the job's (for lag tools only).
    pub group_id: String,
    /// Where partitions without a checkpoint start: `earliest`, `latest`,
    /// an RFC 3339 time, Unix ms, or offsets `topic:partition=offset,…`.
    pub start: String,
    /// Bounded runs stop here: `latest` (the end when the job starts), a
    /// time, or offsets. Unset: the job follows the topics for ever.
    pub end: Option<String>,
    /// librdkafka properties (TLS, SASL); a value `env:NAME` is read from
    /// the environment variable NAME.
    pub properties: std::collections::BTreeMap<String, String>,
    /// Committed anomalies are published here, keyed by anomaly.
    pub alerts_topic: Option<String>,
    /// Committed rejects are published here, keyed by source coordinates.
    pub dead_letter_topic: Option<String>,
    /// `start` and `end`, checked against `topics` at load when
    /// `source.kind = "kafka"`.
    #[serde(skip)]
    pub bounds: Option<(crate::kafka_job::Bound, Option<crate::kafka_job::Bound>)>,
}
impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            brokers: String::new(),
            topics: Vec::new(),
            group_id: "tidemark".into(),
            start: "earliest".into(),
            end: None,
            properties: Default::default(),
            alerts_topic: None,
            dead_letter_topic: None,
            bounds: None,
        }
    }
}

/// The Kinesis source (`source.kind = "kinesis"`), and the connection
/// settings of `tidemark replay --kinesis`. Credentials come from the
/// standard AWS chain (environment, profile, web identity, instance
/// metadata), never from this file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KinesisSection {
    pub stream: String,
    /// Unset: the SDK chain (`AWS_REGION`, profile), else us-east-1.
    pub region: Option<String>,
    /// Endpoint override (a Kinesis-compatible server, a VPC endpoint).
    /// Unset: `AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL`, else AWS.
    pub endpoint: Option<String>,
    /// Where shards without a checkpoint start: `trim_horizon`, `latest`,
    /// an RFC 3339 time or Unix ms (arrival time, AT_TIMESTAMP).
    pub start: KinesisStart,
    /// Bounded runs stop before records that arrived at or after this time
    /// (`now`, RFC 3339 or Unix ms). Unset: the job follows the stream.
    pub end: Option<KinesisEnd>,
}
impl Default for KinesisSection {
    fn default() -> Self {
        KinesisSection {
            stream: String::new(),
            region: None,
            endpoint: None,
            start: KinesisStart(StartAt::TrimHorizon),
            end: None,
        }
    }
}

impl KinesisSection {
    /// Connection settings, with `stream` instead of `kinesis.stream` when given.
    pub fn settings(
        &self,
        stream: Option<&str>,
    ) -> Result<tidemark_connectors::kinesis::KinesisSettings> {
        Ok(tidemark_connectors::kinesis::KinesisSettings {
            stream: stream.unwrap_or(&self.stream).to_owned(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
        })
    }
}

/// The merchants reference table (SPEC 9) that enriches transactions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReferenceSection {
    /// `none`, `generator` (rows made by the built-in generator for its
    /// merchants), `files` (JSON Lines) or `kafka` (a compacted topic keyed
    /// by merchant, read from its start with the [kafka] connection).
    pub kind: ReferenceKind,
    /// The `source` column of its rejects.
    pub name: String,
    /// files: paths or glob patterns, one partition per file.
    pub paths: Vec<String>,
    /// kafka: the topic.
    pub topic: String,
}
impl Default for ReferenceSection {
    fn default() -> Self {
        ReferenceSection {
            kind: ReferenceKind::None,
            name: "merchants".into(),
            paths: Vec::new(),
            topic: String::new(),
        }
    }
}

/// S3 settings for `s3://` output roots and inputs. Unset fields fall back to
/// the environment (`TIDEMARK_S3_ENDPOINT`, `AWS_REGION`,
/// `TIDEMARK_S3_PATH_STYLE`), then to the AWS SDK's own chain. Credentials
/// always come from the standard AWS chain, never from this file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Endpoint override for S3-compatible stores, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing; default: on with an endpoint override.
    pub path_style: Option<bool>,
}

/// Enough commits to walk back past a few damaged ones; each costs one full
/// state snapshot of storage.
pub const DEFAULT_RETAIN: u64 = 5;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSection {
    pub name: String,
    pub kind: WindowKindName,
    pub size: Option<Dur>,
    pub slide: Option<Dur>,
    pub gap: Option<Dur>,
    pub group_by: Vec<String>,
    #[serde(default = "all_aggregates")]
    pub aggregates: Vec<AggregateName>,
}

pub(super) fn all_aggregates() -> Vec<AggregateName> {
    use AggregateName::*;
    vec![Count, Sum, Avg, Min, Max]
}

pub(super) fn default_windows() -> Vec<WindowSection> {
    use WindowKindName::*;
    let w = |name: &str,
             kind: WindowKindName,
             size: Option<&str>,
             slide: Option<&str>,
             gap: Option<&str>,
             by: &str| WindowSection {
        name: name.into(),
        kind,
        size: size.map(Dur::lit),
        slide: slide.map(Dur::lit),
        gap: gap.map(Dur::lit),
        group_by: vec![by.into()],
        aggregates: all_aggregates(),
    };
    vec![
        w("status_1m", Tumbling, Some("1m"), None, None, "status"),
        w(
            "merchant_5m",
            Sliding,
            Some("5m"),
            Some("1m"),
            None,
            "merchant",
        ),
        w(
            "customer_session",
            Session,
            None,
            None,
            Some("30m"),
            "customer_id",
        ),
    ]
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalySection {
    pub transaction: TxnAnomaly,
    pub window: WindowAnomaly,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TxnAnomaly {
    pub enabled: bool,
    pub min_history: u64,
    pub z_threshold: f64,
}
impl Default for TxnAnomaly {
    fn default() -> Self {
        TxnAnomaly {
            enabled: true,
            min_history: 10,
            z_threshold: 3.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowAnomaly {
    pub enabled: bool,
    pub window: String,
    pub metrics: Vec<MetricName>,
    pub history: usize,
    pub min_history: u64,
    pub z_threshold: f64,
    pub cooldown: Dur,
}
impl Default for WindowAnomaly {
    fn default() -> Self {
        WindowAnomaly {
            enabled: true,
            window: "status_1m".into(),
            metrics: vec![MetricName::TxnCount, MetricName::SumCents],
            history: 60,
            min_history: 10,
            z_threshold: 3.0,
            cooldown: Dur::lit("30m"),
        }
    }
}
