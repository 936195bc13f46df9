//! What a person sees: logs, a progress bar on a terminal, the end summary.
//!
//! On a terminal the bar is drawn on stderr's last line and log lines are
//! printed above it (the bar is cleared, the line written, the bar drawn
//! again), so the two never share a line. Off a terminal there is no bar
//! and log lines are JSON, as before.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{HumanCount, ProgressBar, ProgressStyle};
use tidemark_checkpoint::committer::CommitStatus;
use tidemark_dataflow::source::Meter;

/// `flag` (`--log`) over the TIDEMARK_LOG environment variable over the
/// configured level.
pub fn init_logging(flag: Option<&str>, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match flag {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_env("TIDEMARK_LOG")
            .unwrap_or_else(|_| EnvFilter::new(default_level)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // JSON lines for machines, human format on a terminal. The job and
    // worker spans put job, process and worker on every line; events add
    // epochs and source coordinates.
    if std::io::stderr().is_terminal() {
        let _ = builder.with_writer(|| LogWriter).try_init();
    } else {
        let _ = builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init();
    }
}

/// The progress bar being drawn, if any.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// stderr for log lines on a terminal: each line (tracing writes one event
/// with one `write_all`) is printed with the progress bar cleared, and the
/// bar is drawn again below it.
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let bar = BAR.lock().unwrap().clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Ingest-to-commit latency: from the moment a batch of records is read to
/// the commit of the epoch that holds them.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Latency {
    pub fn new() -> Self {
        Latency(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"))
    }
    pub fn record(&mut self, d: Duration, n: u64) {
        let _ = self
            .0
            .record_n(d.as_micros().clamp(1, 3_600_000_000) as u64, n);
    }
    fn ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }
    fn quantiles(&self) -> String {
        format!(
            "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
            self.ms(0.5),
            self.ms(0.95),
            self.ms(0.99),
            self.ms(0.999)
        )
    }
}

pub struct Progress {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Progress {
    /// A progress bar on a terminal (records read, rate, committed epochs,
    /// the frontier's event time); nothing otherwise.
    pub fn start(
        meter: Arc<Meter>,
        status: Arc<Mutex<CommitStatus>>,
        frontier_ms: Arc<AtomicI64>,
    ) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise}  {wide_msg}",
                )
                .expect("a valid progress template"),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            *BAR.lock().unwrap() = Some(bar.clone());
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut last = (Instant::now(), 0u64);
                let mut rate = 0.0;
                while !stop.load(Ordering::Relaxed) {
                    let read = meter.records.load(Ordering::Relaxed);
                    if last.0.elapsed() >= Duration::from_secs(1) {
                        rate = (read - last.1) as f64 / last.0.elapsed().as_secs_f64();
                        last = (Instant::now(), read);
                    }
                    let s = status.lock().unwrap().clone();
                    let epoch = s.last_epoch.map_or("none".into(), fmt_epoch);
                    let f = frontier_ms.load(Ordering::Relaxed);
                    let frontier = if f > i64::MIN / 2 {
                        fmt_epoch(f)
                    } else {
                        "-".into()
                    };
                    // One line however narrow the terminal: {wide_msg} is
                    // cut to its width.
                    bar.set_message(format!(
                        "read {} records  {} ev/s  committed epochs {}, last {epoch}  frontier {frontier}",
                        HumanCount(read),
                        HumanCount(rate as u64),
                        s.epochs
                    ));
                    std::thread::sleep(Duration::from_millis(250));
                }
                *BAR.lock().unwrap() = None;
                bar.finish_and_clear();
            })
        });
        Progress { stop, handle }
    }
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn fmt_epoch(ms: i64) -> String {
    tidemark_dataflow::rfc3339::format_rfc3339_ms(ms)
}

pub struct Summary {
    pub process: usize,
    pub peers: usize,
    pub read: u64,
    /// The last committed epoch, when the output root already held the
    /// result up to the end of a bounded input and the run had nothing to do.
    pub already_finished: Option<i64>,
    pub elapsed: Duration,
    pub status: CommitStatus,
    pub latency: Latency,
    /// Streaming sources only: wall time at which the frontier passed each
    /// record's tick, beyond the tick's end plus the out-of-orderness bound
    /// (the earliest a perfect system could know the tick complete).
    pub beyond_watermark: Option<Latency>,
    /// Bytes of state restored and how long reading and loading it took
    /// (the slowest worker), when resuming.
    pub restored: Option<(u64, Duration)>,
    pub output: String,
}

impl Summary {
    pub fn print(&self) {
        if let Some(e) = self.already_finished {
            println!(
                "tidemark: nothing to do: {} already holds the committed result up to the end of the input (last epoch {e}, {}); to compute it again, write to a fresh --output directory or delete the root",
                self.output,
                fmt_epoch(e)
            );
            return;
        }
        let secs = self.elapsed.as_secs_f64();
        let rows = |k: &str| self.status.rows.get(k).copied().unwrap_or(0);
        println!(
            "tidemark: process {} of a {}-worker job, output {}",
            self.process, self.peers, self.output
        );
        println!(
            "  read        {:>12} records in {secs:.2}s ({:.0} records/s)",
            self.read,
            self.read as f64 / secs.max(1e-9)
        );
        if let Some((bytes, took)) = self.restored {
            println!(
                "  restored    {bytes:>12} state bytes in {:.1} ms",
                took.as_secs_f64() * 1000.0
            );
        }
        if self.process == 0 {
            println!(
                "  committed   {:>12} epochs, last {}",
                self.status.epochs,
                self.status
                    .last_epoch
                    .map_or("none".into(), |e| format!("{e} ({})", fmt_epoch(e)))
            );
            for k in ["transactions", "windows", "anomalies", "rejects"] {
                println!("  {k:<12}{:>12}", rows(k));
            }
            println!("  duplicates  {:>12}", self.status.duplicates);
            if !self.latency.0.is_empty() {
                println!("  ingest-to-commit latency {}", self.latency.quantiles());
            }
            if let Some(b) = self.beyond_watermark.as_ref().filter(|b| !b.0.is_empty()) {
                println!(
                    "  event-to-frontier beyond watermark {} ({} records)",
                    b.quantiles(),
                    b.0.len()
                );
            }
        }
    }
}
