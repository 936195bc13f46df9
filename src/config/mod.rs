//! `cluster.toml`: the job's configuration, parsed strictly and checked
//! once, at load: closed sets are enums, durations are parsed into [`Dur`],
//! and the computation's [`Params`] are built and kept. Every error names the
//! field and says how to fix it.
//!
//! `sections` holds one struct per TOML table (with its defaults) and the
//! closed sets of names its fields take, `values` the typed values a field
//! can hold (durations, sizes, ports, positions), and this module the whole
//! file: parsing, errors that name the field, and the checks that span
//! sections.

mod sections;
#[cfg(test)]
mod tests;
mod values;

pub use sections::*;
pub use values::*;

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tidemark_dataflow::event::{GroupField, Metric};
use tidemark_dataflow::params::{
    Outputs, Params, TxnZParams, WindowKind, WindowSpec, WindowZParams,
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
