//! The `tidemark` command line.

mod cluster;
mod config;
mod exit;
mod inspect;
mod job;
mod kafka_job;
mod progress;
mod shutdown;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::cluster::ClusterArgs;
use crate::config::{Config, ReferenceKind, SourceKind};
use crate::job::{JobSpec, ReferenceSpec};
use crate::kafka_job::KafkaSource;
use tidemark_connectors::adapters::kinesis as kinesis_job;
use tidemark_connectors::adapters::SourceSpec;
use tidemark_connectors::kafka::KafkaSettings;
use tidemark_connectors::kinesis_stream::StreamSource;

// Records are small and short-lived across many threads: mimalloc's
// thread-local free lists cost far less than the system allocator here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exactly-once event-time processing of payment events on timely dataflow.
#[derive(Parser)]
#[command(name = "tidemark", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level or filter (e.g. `debug`, `info,tidemark=debug`); overrides
    /// TIDEMARK_LOG and `[job] log`.
    #[arg(long, global = true)]
    log: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the configured job (default: the shipped cluster.toml with the built-in generator).
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Batch backfill: the same dataflow over JSON Lines files (plain or .gz), one partition per file.
    #[command(disable_help_flag = true)]
    Replay(ReplayArgs),
    /// Write a synthetic dataset as per-partition JSON Lines files.
    Generate(GenerateArgs),
    /// List committed epochs and their row counts.
    Inspect {
        /// Output root.
        root: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every checksum named by the manifests; exits non-zero on any damage.
    Verify {
        /// Output root.
        root: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Configuration file.
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// Output root (overrides job.output).
    #[arg(long)]
    output: Option<String>,
    /// Generator: number of events (overrides source.events).
    #[arg(long)]
    events: Option<u64>,
    /// Keep running until SIGINT/SIGTERM (an unbounded generator).
    #[arg(long)]
    follow: bool,
    /// Read at most this many events per second (whole job).
    #[arg(long)]
    rate: Option<u64>,
    /// Resume under changed windows, dedup horizon or detectors: restore
    /// the state that still applies and start the changed operators empty.
    #[arg(long)]
    allow_config_change: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Args)]
struct ReplayArgs {
    /// Input files, S3 objects or glob patterns (quote globs), e.g.
    /// 'data/*.jsonl.gz' or 's3://bucket/prefix/*.jsonl.gz'.
    #[arg(long, required_unless_present_any = ["kafka", "kinesis"], conflicts_with_all = ["kafka", "kinesis"], num_args = 1..)]
    input: Vec<String>,
    /// Replay a fixed range of Kafka topics instead: the bootstrap servers
    /// (other connection settings from the config's [kafka]).
    #[arg(long, conflicts_with = "kinesis")]
    kafka: Option<String>,
    /// Replay a time range of a Kinesis stream instead: the stream name
    /// (region and endpoint from the config's [kinesis], else the AWS
    /// environment).
    #[arg(long)]
    kinesis: Option<String>,
    /// Kafka topic to replay (repeat for several; default: kafka.topics).
    #[arg(long, requires = "kafka")]
    topic: Vec<String>,
    /// Start of the range: earliest (Kinesis: trim_horizon), an RFC 3339
    /// time, Unix ms, or Kafka offsets `topic:partition=offset,…`.
    #[arg(long, default_value = "earliest")]
    from: String,
    /// End of the range (exclusive): latest or now (when the replay
    /// starts), a time, or Kafka offsets. Kinesis times are arrival times.
    #[arg(long, default_value = "latest")]
    to: String,
    /// Output root.
    #[arg(long)]
    output: String,
    /// Configuration file for windows, detectors and checkpoints (optional).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Merchants reference table files (JSON Lines, plain or .gz; globs
    /// quoted) that enrich the transactions (SPEC 9); overrides [reference].
    #[arg(long, num_args = 1..)]
    reference: Vec<String>,
    /// Read at most this many events per second (whole job).
    #[arg(long)]
    rate: Option<u64>,
    /// Resume under changed windows, dedup horizon or detectors: restore
    /// the state that still applies and start the changed operators empty.
    #[arg(long)]
    allow_config_change: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Args)]
struct GenerateArgs {
    /// Directory for part-NNNNN.jsonl files.
    #[arg(long)]
    output: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Event-time rate of the generated stream, across partitions.
    #[arg(long, default_value_t = 5_000)]
    events_per_sec: u64,
    /// Also write the merchants reference table (SPEC 9) for these events
    /// here: a version per merchant, updates during the run, a few late
    /// and malformed rows.
    #[arg(long)]
    merchants: Option<PathBuf>,
    /// Share of transactions made at the hottest merchant (0 to 1), for
    /// skew benchmarks.
    #[arg(long, default_value_t = 0.0)]
    hot_merchant_share: f64,
    /// Share of transactions made by one customer (0 to 1), for hot-key
    /// skew benchmarks.
    #[arg(long, default_value_t = 0.0)]
    hot_customer_share: f64,
}

/// Keep freed memory instead of returning it to the OS soon after, and use
/// 4 KiB pages rather than transparent huge pages: a fault on a huge page
/// zeroes 2 MiB however little of it is used, and on the benchmark machine
/// (a VM, where first touch is expensive) huge pages made a replay 1.4–1.8×
/// slower (see docs/performance.md). The job's memory stays at its peak, as
/// a JVM's would. MIMALLOC_PURGE_DELAY / MIMALLOC_ALLOW_THP in the
/// environment still win.
fn tune_allocator() {
    // Indexes in mimalloc's option enum (v2 and v3), checked against their
    // defaults before they are changed.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
    // SAFETY: plain calls into the allocator's option table and prctl.
    unsafe {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none()
            && matches!(libmimalloc_sys::mi_option_get(PURGE_DELAY), 10 | 1000)
        {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none()
            && libmimalloc_sys::mi_option_get(ALLOW_THP) == 1
        {
            libmimalloc_sys::mi_option_set(ALLOW_THP, 0);
            // Also for systems whose THP mode is `always`.
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    exit::install_panic_hook();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::code_of(&e)
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let log_flag = cli.log;
    match cli.command {
        Command::Run(a) => {
            let cfg = Config::load(&a.config)?;
            progress::init_logging(log_flag.as_deref(), &cfg.job.log);
            let output = a.output.clone().unwrap_or_else(|| cfg.job.output.clone());
            let source = match cfg.source.kind {
                SourceKind::Generator => {
                    let mut g = tidemark_connectors::generator::GenConfig {
                        events: a.events.unwrap_or(cfg.source.events),
                        partitions: cfg.source.partitions,
                        seed: cfg.source.seed,
                        events_per_sec: cfg.source.events_per_sec,
                        ..Default::default()
                    };
                    if a.follow {
                        g.events = u64::MAX / 2;
                    }
                    SourceSpec::Generator(g)
                }
                SourceKind::Files => SourceSpec::Files(
                    tidemark_connectors::adapters::files::expand(
                        &cfg.source.paths,
                        &cfg.s3_options(),
                    )
                    .context("source.paths")?,
                ),
                SourceKind::Kinesis => {
                    let k = &cfg.kinesis;
                    SourceSpec::Kinesis(StreamSource::connect(
                        &k.settings(None)?,
                        k.start.0.clone(),
                        k.end.map(|e| e.0),
                    )?)
                }
                SourceKind::Kafka => {
                    let k = &cfg.kafka;
                    let (start, end) = k.bounds.as_ref().context("kafka.start: not checked")?;
                    SourceSpec::Kafka(KafkaSource::resolve(
                        kafka_settings(k, None),
                        &k.topics,
                        start,
                        end.as_ref(),
                    )?)
                }
            };
            let bounded = match &source {
                SourceSpec::Kafka(k) => k.parts.iter().all(|p| p.end.is_some()),
                SourceSpec::Kinesis(_) => cfg.kinesis.end.is_some(),
                SourceSpec::Generator(_) => !a.follow,
                _ => true,
            };
            let reference = reference_spec(&cfg, &source, bounded, None)?;
            let opts = RunOpts {
                max_rate: a.rate,
                allow_config_change: a.allow_config_change,
            };
            run(&cfg, a.cluster, source, reference, output, opts, None)
        }
        Command::Replay(a) => {
            let mut cfg = match &a.config {
                Some(p) => Config::load(p)?,
                None => Config::parse("")?,
            };
            progress::init_logging(log_flag.as_deref(), &cfg.job.log);
            if a.reference.is_empty() {
                if let Some(note) = cfg.for_replay() {
                    tracing::warn!("{note}");
                }
            }
            if a.kafka.is_none()
                && a.kinesis.is_none()
                && (a.from != "earliest" || a.to != "latest")
            {
                anyhow::bail!(
                    "--from and --to bound a --kafka or --kinesis replay; files are replayed whole"
                );
            }
            let source = match (&a.kafka, &a.kinesis) {
                (None, Some(stream)) => {
                    let start = kinesis_job::parse_start("--from", &a.from)?;
                    let end = kinesis_job::parse_end("--to", &a.to)?;
                    SourceSpec::Kinesis(StreamSource::connect(
                        &cfg.kinesis.settings(Some(stream))?,
                        start,
                        Some(end),
                    )?)
                }
                (Some(brokers), _) => {
                    let topics = if a.topic.is_empty() {
                        cfg.kafka.topics.clone()
                    } else {
                        a.topic.clone()
                    };
                    let start = kafka_job::parse_bound("--from", &a.from, &topics)?;
                    let end = kafka_job::parse_bound("--to", &a.to, &topics)?;
                    SourceSpec::Kafka(KafkaSource::resolve(
                        kafka_settings(&cfg.kafka, Some(brokers)),
                        &topics,
                        &start,
                        Some(&end),
                    )?)
                }
                (None, None) => SourceSpec::Files(tidemark_connectors::adapters::files::expand(
                    &a.input,
                    &cfg.s3_options(),
                )?),
            };
            let files = (!a.reference.is_empty()).then_some(&a.reference[..]);
            let reference = reference_spec(&cfg, &source, true, files)?;
            run(
                &cfg,
                a.cluster,
                source,
                reference,
                a.output,
                RunOpts {
                    max_rate: a.rate,
                    allow_config_change: a.allow_config_change,
                },
                a.kafka.as_deref(),
            )
        }
        Command::Generate(a) => {
            let g = tidemark_connectors::generator::GenConfig {
                events: a.events,
                partitions: a.partitions,
                seed: a.seed,
                events_per_sec: a.events_per_sec,
                hot_merchant_share: a.hot_merchant_share,
                hot_customer_share: a.hot_customer_share,
                ..Default::default()
            };
            if a.partitions == 0 || a.events_per_sec == 0 {
                anyhow::bail!("--partitions and --events-per-sec must be at least 1");
            }
            if !(0.0..=1.0).contains(&a.hot_merchant_share) {
                anyhow::bail!("--hot-merchant-share must be between 0 and 1");
            }
            if !(0.0..=1.0).contains(&a.hot_customer_share) {
                anyhow::bail!("--hot-customer-share must be between 0 and 1");
            }
            if let Some(path) = &a.merchants {
                tidemark_connectors::merchants_gen::write_merchants_file(
                    &g,
                    &tidemark_connectors::merchants_gen::MerchantsConfig::default(),
                    path,
                )?;
            }
            let t0 = std::time::Instant::now();
            let files = tidemark_connectors::generator::write_files(&g, &a.output)?;
            eprintln!(
                "wrote {} events in {} files to {} in {:.1}s",
                a.events,
                files.len(),
                a.output.display(),
                t0.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { root, json } => inspect::inspect(&root, json),
        Command::Verify { root } => inspect::verify(&root),
    }
}

fn kafka_settings(k: &config::KafkaSection, brokers: Option<&str>) -> KafkaSettings {
    KafkaSettings {
        brokers: brokers.unwrap_or(&k.brokers).to_owned(),
        group_id: k.group_id.clone(),
        properties: k
            .properties
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect(),
    }
}

/// The merchants reference source: `files` from the command line, else as
/// `[reference]` says. A Kafka reference topic ends where it is when a
/// bounded job starts, and is followed by a streaming one.
fn reference_spec(
    cfg: &Config,
    source: &SourceSpec,
    bounded: bool,
    files: Option<&[String]>,
) -> Result<Option<ReferenceSpec>> {
    let r = &cfg.reference;
    let spec = match (files, r.kind) {
        (Some(paths), _) => SourceSpec::Files(
            tidemark_connectors::adapters::files::expand(paths, &cfg.s3_options()).context("--reference")?,
        ),
        (None, ReferenceKind::None) => return Ok(None),
        (None, ReferenceKind::Files) => SourceSpec::Files(
            tidemark_connectors::adapters::files::expand(&r.paths, &cfg.s3_options()).context("reference.paths")?,
        ),
        (None, ReferenceKind::Kafka) => {
            let topics = [r.topic.clone()];
            let end = bounded.then_some(kafka_job::Bound::Latest);
            SourceSpec::Kafka(
                KafkaSource::resolve(
                    kafka_settings(&cfg.kafka, None),
                    &topics,
                    &kafka_job::Bound::Earliest,
                    end.as_ref(),
                )
                .context("the [reference] Kafka topic")?,
            )
        }
        (None, ReferenceKind::Generator) => match source {
            SourceSpec::Generator(g) => SourceSpec::Merchants(g.clone()),
            _ => anyhow::bail!("reference.kind = \"generator\" needs source.kind = \"generator\" (the rows are made for the generator's merchants): use files or kafka"),
        },
    };
    Ok(Some(ReferenceSpec {
        name: r.name.clone(),
        source: spec,
    }))
}

/// How `run` and `replay` run a job, beyond its configuration.
struct RunOpts {
    max_rate: Option<u64>,
    allow_config_change: bool,
}

fn run(
    cfg: &Config,
    cluster: ClusterArgs,
    source: SourceSpec,
    reference: Option<ReferenceSpec>,
    output: String,
    opts: RunOpts,
    brokers: Option<&str>,
) -> Result<ExitCode> {
    let params = cfg.params()?;
    if reference.is_none() && !cfg.reference_dropped() {
        if let Some((w, f)) = params.windows.iter().find_map(|w| {
            w.group_by
                .iter()
                .find(|f| f.is_enriched())
                .map(|f| (&w.name, f.name()))
        }) {
            anyhow::bail!("window {w:?} groups by {f}, which comes from the merchants reference table, but the job has none: set [reference] kind (generator, files or kafka), pass --reference FILES, or remove {f} from its group_by");
        }
    }
    let k = &cfg.kafka;
    let sinks = (k.alerts_topic.is_some() || k.dead_letter_topic.is_some()).then(|| {
        (
            kafka_settings(k, brokers),
            tidemark_sinks::SinkTopics {
                alerts: k.alerts_topic.clone(),
                dead_letters: k.dead_letter_topic.clone(),
            },
        )
    });
    if sinks.as_ref().is_some_and(|s| s.0.brokers.is_empty()) {
        anyhow::bail!("kafka.alerts_topic / kafka.dead_letter_topic need kafka.brokers: name the bootstrap servers");
    }
    let timely = cluster::timely_config(&cluster, &cfg.cluster)?;
    let stop = shutdown::install(cfg.job.stop_timeout.duration())?;
    let telemetry = telemetry::start(&cfg.metrics.address, cfg.metrics.port)?;
    let spec = JobSpec {
        params,
        source,
        source_name: cfg.source.name.clone(),
        reference,
        output,
        min_wall: cfg.checkpoint.min_wall_interval.duration(),
        timely,
        max_rate: opts.max_rate,
        retain: cfg.checkpoint.retain,
        give_up_after: cfg.checkpoint.give_up_after.duration(),
        max_pending_epochs: cfg.checkpoint.max_pending_epochs,
        max_pending_bytes: cfg.checkpoint.max_pending_bytes.0,
        s3: cfg.s3_options(),
        sinks,
        allow_config_change: opts.allow_config_change,
        stop: stop.clone(),
    };
    let summary = job::run(spec)?;
    summary.print();
    // A last scrape can see the finished job's counters.
    let linger = cfg.metrics.linger.duration();
    if telemetry.is_some() && !linger.is_zero() {
        let until = std::time::Instant::now() + linger;
        while std::time::Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed)
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    Ok(ExitCode::SUCCESS)
}
