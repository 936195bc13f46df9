//! `cluster.toml`: the job's configuration, parsed strictly and checked
//! once, at load: closed sets are enums, durations are parsed into [`Dur`],
//! and the computation's [`Params`] are built and kept. Every error names the
//! field and says how to fix it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use tidemark_connectors::kinesis::StartAt;
use tidemark_dataflow::event::{GroupField, Metric};
use tidemark_dataflow::params::{
    Aggregate, Outputs, Params, TxnZParams, WindowKind, WindowSpec, WindowZParams,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub job: JobSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub source: SourceSection,
    #[serde(default)]
    pub time: TimeSection,
    #[serde(default)]
    pub validation: ValidationSection,
    #[serde(default)]
    pub dedup: DedupSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub kafka: KafkaSection,
    #[serde(default)]
    pub kinesis: KinesisSection,
    #[serde(default)]
    pub reference: ReferenceSection,
    #[serde(default = "default_windows")]
    pub windows: Vec<WindowSection>,
    #[serde(default)]
    pub anomaly: AnomalySection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub outputs: OutputsSection,
    /// Built from the sections above by [`Config::parse`].
    #[serde(skip)]
    params: Params,
    /// [`Config::for_replay`] set `reference.kind` from "generator" to "none".
    #[serde(skip)]
    reference_dropped: bool,
}

/// A duration written as `500ms`, `10s`, `5m`, `2h`, `1d` or `0`, parsed
/// once when the file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(i64);

impl Dur {
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.0.max(0) as u64)
    }
    /// A duration literal of this file's defaults.
    fn lit(s: &str) -> Dur {
        Dur(parse_duration(s).expect("a valid default duration"))
    }
    /// Refuses zero: `field` must be greater than zero.
    fn positive(self, field: &str) -> Result<i64> {
        if self.0 <= 0 {
            bail!("{field} must be greater than zero");
        }
        Ok(self.0)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"500ms\" or \"5m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                parse_duration(s).map(Dur).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Dur, E> {
                if n == 0 {
                    return Ok(Dur(0));
                }
                Err(E::custom(format!(
                    "{n} has no unit; use a duration such as \"{n}s\", \"{n}ms\" or \"5m\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

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

/// `metrics.port`: `9464`, `"9464"`, a range `"9464-9563"` of which each
/// process takes the first free port, or `"off"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsPort {
    Off,
    /// The lowest and highest port to try.
    Range(u16, u16),
}

impl fmt::Display for MetricsPort {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            MetricsPort::Off => f.write_str("off"),
            MetricsPort::Range(lo, hi) if lo == hi => write!(f, "{lo}"),
            MetricsPort::Range(lo, hi) => write!(f, "{lo}-{hi}"),
        }
    }
}

impl<'de> Deserialize<'de> for MetricsPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MetricsPort, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MetricsPort;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port such as 9464, a range such as \"9464-9563\", or \"off\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<MetricsPort, E> {
                if s.trim() == "off" {
                    return Ok(MetricsPort::Off);
                }
                crate::telemetry::parse_ports(s.trim())
                    .map(|(lo, hi)| MetricsPort::Range(lo, hi))
                    .map_err(|e| E::custom(format!("{e:#}")))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<MetricsPort, E> {
                let p = u16::try_from(n).map_err(|_| {
                    E::custom(format!("{n} is not a port (0 to 65535); use a port such as 9464, a range such as \"9464-9563\", or \"off\""))
                })?;
                Ok(MetricsPort::Range(p, p))
            }
        }
        d.deserialize_any(V)
    }
}

/// `kinesis.start`, checked at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisStart(pub StartAt);

impl<'de> Deserialize<'de> for KinesisStart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KinesisStart, D::Error> {
        let s = String::deserialize(d)?;
        crate::kinesis_job::parse_start("kinesis.start", &s)
            .map(KinesisStart)
            .map_err(|e| de::Error::custom(format!("{e:#}")))
    }
}

/// `kinesis.end` as Unix ms (`now` is the time the file is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KinesisEnd(pub i64);

impl<'de> Deserialize<'de> for KinesisEnd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KinesisEnd, D::Error> {
        let s = String::deserialize(d)?;
        crate::kinesis_job::parse_end("kinesis.end", &s)
            .map(KinesisEnd)
            .map_err(|e| de::Error::custom(format!("{e:#}")))
    }
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

/// A size in bytes: `"256MiB"`, `"1GiB"`, `"64KB"`, or an integer of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"256MiB\" or \"1GiB\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                parse_size(s).map(ByteSize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{n} is negative; {SIZE_USAGE}")))
            }
        }
        d.deserialize_any(V)
    }
}

const SIZE_USAGE: &str = "use a size such as \"256MiB\", \"1GiB\" or \"512KiB\" (units B, KiB, MiB, GiB, TiB; KB, MB, GB, TB are powers of 1000), or a whole number of bytes";

/// Parses `256MiB`, `1GiB`, `64KB`, `1048576` or `1048576B` into bytes; the
/// error starts with the value and says how to write one.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a size: write a whole number and a unit; {SIZE_USAGE}")
    })?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => return Err(format!("{s:?} has an unknown unit {u:?}; {SIZE_USAGE}")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large; {SIZE_USAGE}"))
}

/// `checkpoint.give_up_after`: a duration, or `"never"` (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GiveUpAfter(pub Option<Dur>);

impl GiveUpAfter {
    pub fn duration(self) -> Option<Duration> {
        self.0.map(Dur::duration)
    }
}

impl<'de> Deserialize<'de> for GiveUpAfter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GiveUpAfter, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = GiveUpAfter;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"never\" or a duration such as \"10m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<GiveUpAfter, E> {
                if s.trim() == "never" {
                    return Ok(GiveUpAfter(None));
                }
                match parse_duration(s) {
                    Ok(ms) if ms > 0 => Ok(GiveUpAfter(Some(Dur(ms)))),
                    Ok(_) => Err(E::custom(format!(
                        "{s:?} would give up at the first storage error; write a duration such as \"10m\", or \"never\" (the default) to retry until storage is back"
                    ))),
                    Err(m) => Err(E::custom(format!("{m}; or \"never\""))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<GiveUpAfter, E> {
                Err(E::custom(format!(
                    "{n} has no unit; use a duration such as \"{n}s\" or \"10m\", or \"never\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

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

fn all_aggregates() -> Vec<AggregateName> {
    use AggregateName::*;
    vec![Count, Sum, Avg, Min, Max]
}

fn default_windows() -> Vec<WindowSection> {
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

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Reads and checks the whole file: after this, nothing in it is parsed
    /// or checked again.
    pub fn parse(text: &str) -> Result<Config> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| field_error(text, e))?;
        cfg.params = cfg.build_params()?;
        cfg.job.stop_timeout.positive("job.stop_timeout")?;
        let epochs = cfg.checkpoint.max_pending_epochs;
        if epochs < 1 {
            bail!("checkpoint.max_pending_epochs = {epochs} would pause the sources for good; use 1 or more (default {DEFAULT_MAX_PENDING_EPOCHS})");
        }
        if cfg.checkpoint.max_pending_bytes.0 == 0 {
            bail!("checkpoint.max_pending_bytes = 0 would pause the sources whenever an epoch waits for storage; use a size such as \"256MiB\" (the default)");
        }
        if cfg.checkpoint.retain == 0 {
            bail!("checkpoint.retain = 0: a restart needs at least the newest commit; use 1 or more (default {DEFAULT_RETAIN})");
        }
        if let Some(e) = &cfg.storage.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                bail!("storage.endpoint = {e:?} is not an http:// or https:// URL");
            }
        }
        let k = &cfg.kinesis;
        if let Some(e) = &k.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                bail!("kinesis.endpoint = {e:?} is not an http:// or https:// URL, such as https://kinesis.eu-west-1.amazonaws.com or http://127.0.0.1:4567");
            }
        }
        let r = &cfg.reference;
        match r.kind {
            ReferenceKind::Files if r.paths.is_empty() => bail!("reference.kind = \"files\" but reference.paths is empty: list the merchants JSON Lines files, e.g. paths = [\"merchants/*.jsonl\"]"),
            ReferenceKind::Kafka if r.topic.trim().is_empty() => bail!("reference.kind = \"kafka\" but reference.topic is empty: name the compacted merchants topic"),
            _ => {}
        }
        if r.name.trim().is_empty() || r.name == cfg.source.name {
            bail!("reference.name = {:?} must be non-empty and differ from source.name ({:?}): rejects and positions are told apart by it", r.name, cfg.source.name);
        }
        match cfg.source.kind {
            SourceKind::Kinesis if k.stream.trim().is_empty() => {
                bail!("source.kind = \"kinesis\" but kinesis.stream is empty: name the stream to read, e.g. [kinesis] stream = \"payments\"");
            }
            SourceKind::Generator if cfg.source.partitions == 0 => {
                bail!("source.partitions must be at least 1");
            }
            SourceKind::Kafka => {
                let k = &cfg.kafka;
                let start = crate::kafka_job::parse_bound("kafka.start", &k.start, &k.topics)?;
                let end = k
                    .end
                    .as_deref()
                    .map(|e| crate::kafka_job::parse_bound("kafka.end", e, &k.topics))
                    .transpose()?;
                cfg.kafka.bounds = Some((start, end));
            }
            _ => {}
        }
        Ok(cfg)
    }

    /// Leaves out what only `tidemark run`'s built-in generator can use, so
    /// that a replay can share `run`'s file (the shipped cluster.toml):
    /// `reference.kind = "generator"` makes rows for the generator's
    /// merchants, and a replay reads no generator. Returns the line to log
    /// when something was left out. (`[source]` is not read by a replay.)
    pub fn for_replay(&mut self) -> Option<&'static str> {
        if self.reference.kind != ReferenceKind::Generator {
            return None;
        }
        self.reference.kind = ReferenceKind::None;
        self.reference_dropped = true;
        Some("reference.kind = \"generator\" is for `tidemark run` with the built-in generator (its rows are made for the generator's merchants), so this replay ignores it and runs without a reference table: merchant_category, risk_tier and merchant_country are null; pass --reference FILES to enrich")
    }

    /// Whether [`Config::for_replay`] left the reference table out.
    pub fn reference_dropped(&self) -> bool {
        self.reference_dropped
    }

    /// The computation's parameters, checked at load.
    pub fn params(&self) -> Result<Params> {
        Ok(self.params.clone())
    }

    fn build_params(&self) -> Result<Params> {
        let tick_ms = self.time.tick.positive("time.tick")?;
        let multiple = |field: &str, v: i64| -> Result<i64> {
            if v % tick_ms != 0 {
                bail!("{field} = {} is not a multiple of time.tick ({}): windows and epochs are made of whole ticks; use a multiple of the tick or a smaller tick", fmt_ms(v), fmt_ms(tick_ms));
            }
            Ok(v)
        };
        let mut windows = Vec::new();
        for (i, w) in self.windows.iter().enumerate() {
            let at = format!("windows[{i}] ({:?})", w.name);
            if w.name.is_empty() || w.name.contains(['/', '=']) {
                bail!("{at}.name must be non-empty and free of '/' and '='");
            }
            if self.windows[..i].iter().any(|o| o.name == w.name) {
                bail!("{at}.name is used twice: window names must be unique");
            }
            let need = |field: &str, v: Option<Dur>| -> Result<i64> {
                let v = v.with_context(|| {
                    format!("{at}.{field} is missing: a {} window needs it", w.kind)
                })?;
                let field = format!("{at}.{field}");
                multiple(&field, v.positive(&field)?)
            };
            let kind = match w.kind {
                WindowKindName::Tumbling => WindowKind::Tumbling {
                    size_ms: need("size", w.size)?,
                },
                WindowKindName::Sliding => {
                    let size_ms = need("size", w.size)?;
                    let slide_ms = need("slide", w.slide)?;
                    if size_ms % slide_ms != 0 {
                        bail!("{at}.size must be a multiple of its slide");
                    }
                    WindowKind::Sliding { size_ms, slide_ms }
                }
                WindowKindName::Session => WindowKind::Session {
                    gap_ms: need("gap", w.gap)?,
                },
            };
            if w.group_by.is_empty() {
                bail!("{at}.group_by is empty: name at least one of status, currency, customer_id, merchant, category, merchant_category, risk_tier, merchant_country");
            }
            let group_by = w
                .group_by
                .iter()
                .map(|g| {
                    GroupField::parse(g).with_context(|| {
                        format!("{at}.group_by: unknown field {g:?}; use status, currency, customer_id, merchant, category, or (with a [reference] table) merchant_category, risk_tier, merchant_country")
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            windows.push(WindowSpec {
                name: w.name.clone(),
                kind,
                group_by,
                aggregates: w.aggregates.iter().map(|&a| a.into()).collect(),
            });
        }
        let wa = &self.anomaly.window;
        let spec = match windows.iter().position(|w| w.name == wa.window) {
            Some(i) => i,
            None if !wa.enabled => 0,
            None => bail!(
                "anomaly.window.window = {:?} names no window spec; use one of the [[windows]] names or set anomaly.window.enabled = false",
                wa.window
            ),
        };
        let metrics = wa
            .metrics
            .iter()
            .map(|m| match m {
                MetricName::TxnCount => Metric::TxnCount,
                MetricName::SumCents => Metric::SumCents,
            })
            .collect();
        if wa.history == 0 {
            bail!("anomaly.window.history must be at least 1");
        }
        let interval = multiple(
            "checkpoint.interval",
            self.checkpoint.interval.positive("checkpoint.interval")?,
        )?;
        if self.validation.max_record_bytes == 0 {
            bail!("validation.max_record_bytes must be at least 1");
        }
        Ok(Params {
            tick_ms,
            max_out_of_orderness_ms: self
                .time
                .max_out_of_orderness
                .positive("time.max_out_of_orderness")?,
            idle_timeout_ms: self.time.idle_timeout.positive("time.idle_timeout")? as u64,
            max_record_bytes: self.validation.max_record_bytes,
            dedup_horizon_ms: self.dedup.horizon.positive("dedup.horizon")?,
            windows,
            txn_z: TxnZParams {
                enabled: self.anomaly.transaction.enabled,
                min_history: self.anomaly.transaction.min_history,
                z_threshold: self.anomaly.transaction.z_threshold,
            },
            window_z: WindowZParams {
                enabled: wa.enabled,
                spec,
                metrics,
                history: wa.history,
                min_history: wa.min_history,
                z_threshold: wa.z_threshold,
                cooldown_ms: wa.cooldown.positive("anomaly.window.cooldown")?,
            },
            checkpoint_interval_ms: interval,
            outputs: Outputs {
                transactions: self.outputs.transactions,
                windows: self.outputs.windows,
                anomalies: self.outputs.anomalies,
                rejects: self.outputs.rejects,
            },
        })
    }

    /// The S3 options: this file's `[storage]`, then the environment.
    pub fn s3_options(&self) -> tidemark_checkpoint::s3::S3Options {
        let env = tidemark_checkpoint::s3::S3Options::from_env();
        tidemark_checkpoint::s3::S3Options {
            endpoint: self.storage.endpoint.clone().or(env.endpoint),
            region: self.storage.region.clone().or(env.region),
            path_style: self.storage.path_style.or(env.path_style),
        }
    }
}

/// A deserialization error, led by the field it is about
/// (`time.idle_timeout = "30x": …`) and its line.
fn field_error(text: &str, e: toml::de::Error) -> anyhow::Error {
    let msg = e.message().trim_end();
    let Some(span) = e.span() else {
        return anyhow::anyhow!("{e}");
    };
    let at = span.start.min(text.len());
    let line = text[..at].matches('\n').count() + 1;
    let Some(path) = field_at(text, at) else {
        return anyhow::anyhow!("{e}");
    };
    if msg.starts_with(&path) {
        anyhow::anyhow!("{msg} (line {line})")
    } else if msg.starts_with('"') {
        anyhow::anyhow!("{path} = {msg} (line {line})")
    } else {
        anyhow::anyhow!("{path}: {msg} (line {line})")
    }
}

/// The dotted path of the field whose key or value is at byte `at`, such
/// as `time.idle_timeout` or `windows[1].size`: the key of the nearest
/// `key = …` line at or above it, under the nearest table header.
fn field_at(text: &str, at: usize) -> Option<String> {
    let before = &text[..at];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let mut lines: Vec<&str> = text[..line_start].lines().collect();
    lines.push(&text[line_start..line_end]);
    let mut key = None;
    let mut header: Option<String> = None;
    for (i, l) in lines.iter().enumerate().rev() {
        let l = l.trim();
        if let Some(h) = l.strip_prefix("[[") {
            let name = h.split("]]").next()?.trim();
            let n = lines[..i]
                .iter()
                .filter(|o| {
                    o.trim()
                        .strip_prefix("[[")
                        .and_then(|o| o.split("]]").next())
                        .map(str::trim)
                        == Some(name)
                })
                .count();
            header = Some(format!("{name}[{n}]"));
            break;
        }
        if let Some(h) = l.strip_prefix('[') {
            header = Some(h.split(']').next()?.trim().to_owned());
            break;
        }
        if key.is_none() && !l.starts_with('#') {
            if let Some((k, _)) = l.split_once('=') {
                key = Some(k.trim().trim_matches('"').to_owned());
            }
        }
    }
    match (header, key) {
        (Some(h), Some(k)) => Some(format!("{h}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(h), None) => Some(h),
        (None, None) => None,
    }
}

/// Parses `500ms`, `10s`, `5m`, `2h`, `1d`, or `0` into milliseconds; the
/// error starts with the value and says how to write one.
fn parse_duration(s: &str) -> std::result::Result<i64, String> {
    let s = s.trim();
    let usage = "use a duration such as \"30s\", \"500ms\" or \"5m\" (units ms, s, m, h, d)";
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration: write a whole number and a unit; {usage}")
    })?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" if n == 0 => 1,
        "" => return Err(format!("{s:?} has no unit; {usage}")),
        _ => return Err(format!("{s:?} has an unknown unit {unit:?}; {usage}")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large; {usage}"))
}

/// Parses a duration field: `500ms`, `10s`, `5m`, `2h`, `1d`, or `0`.
#[cfg(test)]
pub fn duration_ms(field: &str, s: &str) -> Result<i64> {
    parse_duration(s).map_err(|m| anyhow::anyhow!("{field} = {m}"))
}

fn fmt_ms(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_spec() {
        let p = Config::parse("").unwrap().params().unwrap();
        assert_eq!(p, Params::default());
    }

    #[test]
    fn errors_name_the_field() {
        let e = format!("{:#}", Config::parse("[job]\noutptu = 'x'\n").unwrap_err());
        assert!(e.contains("outptu"), "{e}");
        let e = format!("{:#}", Config::parse("[time]\ntick = '7s'\n").unwrap_err());
        assert!(
            e.contains("windows[0]") && e.contains("multiple of time.tick"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            Config::parse("[dedup]\nhorizon = '10 minutes'\n").unwrap_err()
        );
        assert!(e.contains("dedup.horizon"), "{e}");
        for (text, needle) in [
            (
                "[kinesis]\nendpoint = 'localhost:4567'\n",
                "kinesis.endpoint",
            ),
            ("[kinesis]\nstart = 'yesterday'\n", "kinesis.start"),
            ("[kinesis]\nend = 'soon'\n", "kinesis.end"),
            ("[kinesis]\nshards = 4\n", "shards"),
            ("[source]\nkind = 'kinesis'\n", "kinesis.stream"),
        ] {
            let e = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(e.contains(needle), "{text}: {e}");
        }
        assert_eq!(duration_ms("x", "1500ms").unwrap(), 1500);
        assert_eq!(duration_ms("x", "2h").unwrap(), 7_200_000);
    }

    fn error_of(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn metrics_port_takes_an_integer_a_string_a_range_or_off() {
        for (text, want) in [
            ("port = 9464", MetricsPort::Range(9464, 9464)),
            ("port = \"9464\"", MetricsPort::Range(9464, 9464)),
            ("port = \"9464-9563\"", MetricsPort::Range(9464, 9563)),
            ("port = \"off\"", MetricsPort::Off),
        ] {
            let cfg = Config::parse(&format!("[metrics]\n{text}\n")).unwrap();
            assert_eq!(cfg.metrics.port, want, "{text}");
        }
        assert_eq!(
            Config::parse("").unwrap().metrics.port,
            MetricsPort::Range(9464, 9563)
        );
        for bad in [
            "port = 70000",
            "port = -1",
            "port = \"x\"",
            "port = \"9600-9500\"",
        ] {
            let e = error_of(&format!("[metrics]\n{bad}\n"));
            assert!(e.contains("metrics.port"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_bad_kind_names_the_field_and_the_allowed_values() {
        let e = error_of("[source]\nkind = \"kafkaa\"\n");
        for needle in ["source.kind", "generator", "files", "kafka", "kinesis"] {
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let e = error_of("[reference]\nkind = \"csv\"\n");
        for needle in ["reference.kind", "none", "generator", "files", "kafka"] {
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let w = "[[windows]]\nname = \"a\"\nkind = \"tumbling\"\nsize = \"1m\"\ngroup_by = [\"status\"]\n";
        let e = error_of(&format!(
            "{w}[[windows]]\nname = \"b\"\nkind = \"hopping\"\ngroup_by = [\"status\"]\n"
        ));
        for needle in ["windows[1].kind", "tumbling", "sliding", "session"] {
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let e = error_of(&format!("{w}aggregates = [\"count\", \"median\"]\n"));
        assert!(
            e.contains("windows[0].aggregates") && e.contains("avg"),
            "{e}"
        );
        let e = error_of("[anomaly.window]\nmetrics = [\"txn_total\"]\n");
        assert!(
            e.contains("anomaly.window.metrics") && e.contains("sum_cents"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_duration_names_the_field() {
        let e = error_of("[time]\nidle_timeout = \"30x\"\n");
        assert!(
            e.contains("time.idle_timeout = \"30x\"") && e.contains("\"30s\""),
            "{e}"
        );
        for (text, needle) in [
            ("[checkpoint]\ninterval = 10\n", "checkpoint.interval"),
            ("[checkpoint]\nmin_wall_interval = \"2\"\n", "checkpoint.min_wall_interval"),
            ("[checkpoint]\ngive_up_after = \"0s\"\n", "checkpoint.give_up_after"),
            ("[checkpoint]\ngive_up_after = \"soon\"\n", "checkpoint.give_up_after"),
            ("[checkpoint]\ngive_up_after = 600\n", "checkpoint.give_up_after"),
            ("[checkpoint]\nmax_pending_epochs = 0\n", "checkpoint.max_pending_epochs = 0"),
            ("[checkpoint]\nmax_pending_epochs = -1\n", "checkpoint.max_pending_epochs = -1 would pause the sources for good; use 1 or more"),
            ("[checkpoint]\nmax_pending_epochs = \"3\"\n", "checkpoint.max_pending_epochs"),
            ("[checkpoint]\nmax_pending_bytes = 0\n", "checkpoint.max_pending_bytes = 0"),
            ("[checkpoint]\nmax_pending_bytes = \"0MiB\"\n", "checkpoint.max_pending_bytes = 0"),
            ("[checkpoint]\nmax_pending_bytes = -5\n", "checkpoint.max_pending_bytes"),
            ("[checkpoint]\nmax_pending_bytes = \"256 megs\"\n", "checkpoint.max_pending_bytes = \"256 megs\" has an unknown unit"),
            ("[checkpoint]\nmax_pending_bytes = \"lots\"\n", "checkpoint.max_pending_bytes = \"lots\" is not a size"),
            ("[checkpoint]\nmax_pending_bytes = \"99999999TiB\"\n", "checkpoint.max_pending_bytes = \"99999999TiB\" is too large"),
            ("[job]\nstop_timeout = \"0s\"\n", "job.stop_timeout must be greater than zero"),
            ("[anomaly.window]\ncooldown = \"soon\"\n", "anomaly.window.cooldown"),
            (
                "[[windows]]\nname = \"a\"\nkind = \"tumbling\"\nsize = \"1 minute\"\ngroup_by = [\"status\"]\n",
                "windows[0].size",
            ),
        ] {
            let e = error_of(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
        let cfg =
            Config::parse("[time]\nidle_timeout = \"90s\"\n[metrics]\nlinger = \"0\"\n").unwrap();
        assert_eq!(cfg.time.idle_timeout, Dur(90_000));
        assert_eq!(cfg.params().unwrap().idle_timeout_ms, 90_000);
        assert!(cfg.metrics.linger.duration().is_zero());
    }

    #[test]
    fn give_up_after_is_never_by_default_or_a_positive_duration() {
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.checkpoint.give_up_after.duration(), None);
        let cfg = Config::parse("[checkpoint]\ngive_up_after = \"never\"\n").unwrap();
        assert_eq!(cfg.checkpoint.give_up_after.duration(), None);
        let cfg = Config::parse("[checkpoint]\ngive_up_after = \"10m\"\n").unwrap();
        assert_eq!(
            cfg.checkpoint.give_up_after.duration(),
            Some(Duration::from_secs(600))
        );
        let e = error_of("[checkpoint]\ngive_up_after = \"0\"\n");
        assert!(
            e.contains("checkpoint.give_up_after") && e.contains("never"),
            "{e}"
        );
    }

    #[test]
    fn back_pressure_bounds_default_and_parse_human_sizes() {
        let c = Config::parse("").unwrap().checkpoint;
        assert_eq!(c.max_pending_epochs, 3);
        assert_eq!(c.max_pending_bytes, ByteSize(256 << 20));
        for (text, want) in [
            ("\"256MiB\"", 256 << 20),
            ("\"1GiB\"", 1 << 30),
            ("\"512KiB\"", 512 << 10),
            ("\"64KB\"", 64_000),
            ("\"2 MB\"", 2_000_000),
            ("\"4096B\"", 4096),
            ("\"4096\"", 4096),
            ("1048576", 1 << 20),
        ] {
            let cfg = Config::parse(&format!(
                "[checkpoint]\nmax_pending_bytes = {text}\nmax_pending_epochs = 7\n"
            ))
            .unwrap();
            assert_eq!(cfg.checkpoint.max_pending_bytes, ByteSize(want), "{text}");
            assert_eq!(cfg.checkpoint.max_pending_epochs, 7);
        }
    }

    #[test]
    fn the_shipped_cluster_toml_loads_for_run_and_replay() {
        let text = include_str!("../cluster.toml");
        // run: the generator with its merchants table.
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.source.kind, SourceKind::Generator);
        assert_eq!(cfg.reference.kind, ReferenceKind::Generator);
        let p = cfg.params().unwrap();
        assert_eq!(p.windows.len(), 4);
        assert_eq!(cfg.metrics.port, MetricsPort::Range(9464, 9563));
        // replay: the generator-only reference is left out, with a note.
        let mut cfg = Config::parse(text).unwrap();
        let note = cfg.for_replay().expect("a note on what was left out");
        assert!(
            note.contains("reference.kind") && note.contains("--reference"),
            "{note}"
        );
        assert_eq!(cfg.reference.kind, ReferenceKind::None);
        assert!(cfg.reference_dropped());
        assert_eq!(cfg.params().unwrap(), p);
        // Nothing else to leave out.
        assert_eq!(cfg.for_replay(), None);
    }
}
