//! `cluster.toml`: the job's configuration, parsed strictly. Every error
//! names the field and says how to fix it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
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
    pub port: String,
    pub address: String,
    /// Keep serving this long after a bounded job ends, for a last scrape.
    pub linger: String,
}
impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            port: "9464-9563".into(),
            address: "0.0.0.0".into(),
            linger: "0s".into(),
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
    pub stop_timeout: String,
}
impl Default for JobSection {
    fn default() -> Self {
        JobSection {
            output: "tidemark-out".into(),
            log: "info".into(),
            stop_timeout: "60s".into(),
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
    /// `generator` or `files`.
    pub kind: String,
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
            kind: "generator".into(),
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
    pub tick: String,
    pub max_out_of_orderness: String,
    pub idle_timeout: String,
}
impl Default for TimeSection {
    fn default() -> Self {
        TimeSection {
            tick: "1s".into(),
            max_out_of_orderness: "10s".into(),
            idle_timeout: "30s".into(),
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
    pub horizon: String,
}
impl Default for DedupSection {
    fn default() -> Self {
        DedupSection {
            horizon: "10m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    pub interval: String,
    pub min_wall_interval: String,
    /// Commits (with their state snapshots) kept for restarts.
    pub retain: u64,
}
impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            interval: "10s".into(),
            min_wall_interval: "2s".into(),
            retain: DEFAULT_RETAIN,
        }
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
    pub start: String,
    /// Bounded runs stop before records that arrived at or after this time
    /// (`now`, RFC 3339 or Unix ms). Unset: the job follows the stream.
    pub end: Option<String>,
}
impl Default for KinesisSection {
    fn default() -> Self {
        KinesisSection {
            stream: String::new(),
            region: None,
            endpoint: None,
            start: "trim_horizon".into(),
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
    pub kind: String,
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
            kind: "none".into(),
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
    pub kind: String,
    pub size: Option<String>,
    pub slide: Option<String>,
    pub gap: Option<String>,
    pub group_by: Vec<String>,
    #[serde(default = "all_aggregates")]
    pub aggregates: Vec<String>,
}

fn all_aggregates() -> Vec<String> {
    ["count", "sum", "avg", "min", "max"]
        .map(String::from)
        .to_vec()
}

fn default_windows() -> Vec<WindowSection> {
    let w = |name: &str,
             kind: &str,
             size: Option<&str>,
             slide: Option<&str>,
             gap: Option<&str>,
             by: &str| WindowSection {
        name: name.into(),
        kind: kind.into(),
        size: size.map(Into::into),
        slide: slide.map(Into::into),
        gap: gap.map(Into::into),
        group_by: vec![by.into()],
        aggregates: all_aggregates(),
    };
    vec![
        w("status_1m", "tumbling", Some("1m"), None, None, "status"),
        w(
            "merchant_5m",
            "sliding",
            Some("5m"),
            Some("1m"),
            None,
            "merchant",
        ),
        w(
            "customer_session",
            "session",
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
    pub metrics: Vec<String>,
    pub history: usize,
    pub min_history: u64,
    pub z_threshold: f64,
    pub cooldown: String,
}
impl Default for WindowAnomaly {
    fn default() -> Self {
        WindowAnomaly {
            enabled: true,
            window: "status_1m".into(),
            metrics: vec!["txn_count".into(), "sum_cents".into()],
            history: 60,
            min_history: 10,
            z_threshold: 3.0,
            cooldown: "30m".into(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        cfg.params()?;
        duration_ms("job.stop_timeout", &cfg.job.stop_timeout)?;
        duration_ms("metrics.linger", &cfg.metrics.linger)?;
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
        crate::kinesis_job::parse_start("kinesis.start", &k.start)?;
        if let Some(e) = &k.end {
            crate::kinesis_job::parse_end("kinesis.end", e)?;
        }
        let r = &cfg.reference;
        match r.kind.as_str() {
            "none" | "generator" => {}
            "files" if r.paths.is_empty() => bail!("reference.kind = \"files\" but reference.paths is empty: list the merchants JSON Lines files, e.g. paths = [\"merchants/*.jsonl\"]"),
            "kafka" if r.topic.trim().is_empty() => bail!("reference.kind = \"kafka\" but reference.topic is empty: name the compacted merchants topic"),
            "files" | "kafka" => {}
            other => bail!("reference.kind = {other:?}: use \"none\", \"generator\", \"files\" or \"kafka\""),
        }
        if r.name.trim().is_empty() || r.name == cfg.source.name {
            bail!("reference.name = {:?} must be non-empty and differ from source.name ({:?}): rejects and positions are told apart by it", r.name, cfg.source.name);
        }
        if cfg.source.kind == "kinesis" && k.stream.trim().is_empty() {
            bail!("source.kind = \"kinesis\" but kinesis.stream is empty: name the stream to read, e.g. [kinesis] stream = \"payments\"");
        }
        Ok(cfg)
    }

    /// The computation's parameters, checked.
    pub fn params(&self) -> Result<Params> {
        let tick_ms = duration_ms("time.tick", &self.time.tick)?;
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
            let need = |field: &str, v: &Option<String>| -> Result<i64> {
                let v = v.as_ref().with_context(|| {
                    format!("{at}.{field} is missing: a {} window needs it", w.kind)
                })?;
                multiple(
                    &format!("{at}.{field}"),
                    duration_ms(&format!("{at}.{field}"), v)?,
                )
            };
            let kind = match w.kind.as_str() {
                "tumbling" => WindowKind::Tumbling {
                    size_ms: need("size", &w.size)?,
                },
                "sliding" => {
                    let size_ms = need("size", &w.size)?;
                    let slide_ms = need("slide", &w.slide)?;
                    if size_ms % slide_ms != 0 {
                        bail!("{at}.size must be a multiple of its slide");
                    }
                    WindowKind::Sliding { size_ms, slide_ms }
                }
                "session" => WindowKind::Session {
                    gap_ms: need("gap", &w.gap)?,
                },
                other => {
                    bail!("{at}.kind = {other:?}: use \"tumbling\", \"sliding\" or \"session\"")
                }
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
            let aggregates = w
                .aggregates
                .iter()
                .map(|a| {
                    Ok(match a.as_str() {
                        "count" => Aggregate::Count,
                        "sum" => Aggregate::Sum,
                        "avg" => Aggregate::Avg,
                        "min" => Aggregate::Min,
                        "max" => Aggregate::Max,
                        other => bail!(
                            "{at}.aggregates: unknown {other:?}; use count, sum, avg, min, max"
                        ),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            windows.push(WindowSpec {
                name: w.name.clone(),
                kind,
                group_by,
                aggregates,
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
            .map(|m| match m.as_str() {
                "txn_count" => Ok(Metric::TxnCount),
                "sum_cents" => Ok(Metric::SumCents),
                other => {
                    bail!("anomaly.window.metrics: unknown {other:?}; use txn_count or sum_cents")
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if wa.history == 0 {
            bail!("anomaly.window.history must be at least 1");
        }
        let interval = multiple(
            "checkpoint.interval",
            duration_ms("checkpoint.interval", &self.checkpoint.interval)?,
        )?;
        if self.validation.max_record_bytes == 0 {
            bail!("validation.max_record_bytes must be at least 1");
        }
        Ok(Params {
            tick_ms,
            max_out_of_orderness_ms: duration_ms(
                "time.max_out_of_orderness",
                &self.time.max_out_of_orderness,
            )?,
            idle_timeout_ms: duration_ms("time.idle_timeout", &self.time.idle_timeout)? as u64,
            max_record_bytes: self.validation.max_record_bytes,
            dedup_horizon_ms: duration_ms("dedup.horizon", &self.dedup.horizon)?,
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
                cooldown_ms: duration_ms("anomaly.window.cooldown", &wa.cooldown)?,
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

    pub fn min_wall_interval(&self) -> Result<std::time::Duration> {
        let ms = duration_ms(
            "checkpoint.min_wall_interval",
            &self.checkpoint.min_wall_interval,
        )?;
        Ok(std::time::Duration::from_millis(ms as u64))
    }
}

/// A checked duration field as a `Duration`.
pub fn duration(field: &str, s: &str) -> Result<std::time::Duration> {
    Ok(std::time::Duration::from_millis(
        duration_ms(field, s)? as u64
    ))
}

/// Parses `500ms`, `10s`, `5m`, `2h`, `1d`, or `0`.
pub fn duration_ms(field: &str, s: &str) -> Result<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num
        .parse()
        .ok()
        .with_context(|| format!("{field} = {s:?} is not a duration: write a whole number and a unit, e.g. \"10s\", \"500ms\", \"5m\""))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" if n == 0 => 1,
        _ => bail!("{field} = {s:?} has an unknown unit {unit:?}: use ms, s, m, h or d"),
    };
    let v = n
        .checked_mul(scale)
        .with_context(|| format!("{field} = {s:?} is too large"))?;
    if v <= 0 && !matches!(field, "checkpoint.min_wall_interval" | "metrics.linger") {
        bail!("{field} must be greater than zero");
    }
    Ok(v)
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
}
