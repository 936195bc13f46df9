//! Running the `tidemark` binary under test: finding it, commands with the
//! tests' defaults, and the crash and fencing drills the end-to-end tests
//! share.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Many small epochs (one a second of event time, no wall-time floor), so
/// that kills land between commits.
pub const FAST_COMMITS: &str = "[checkpoint]\ninterval = \"1s\"\nmin_wall_interval = \"0\"\n";

/// The `tidemark` binary cargo built for the running integration test:
/// `CARGO_BIN_EXE_tidemark` (cargo sets it when it runs the test), else
/// the binary beside the test's `deps/` folder (`target/<profile>/`).
/// Only the `tidemark` package's own tests have it built.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CARGO_BIN_EXE_tidemark") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let mut dir = exe.parent().expect("the test's folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("tidemark{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "no tidemark binary at {} (run the tidemark package's tests with cargo test)",
        bin.display()
    );
    bin
}

/// `tidemark <args>` as the tests run a job: warnings only, stdout
/// discarded, stderr piped (for [`finish`] to report).
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("TIDEMARK_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// `tidemark replay --input INPUT --output OUT --config CONFIG <extra>`, as
/// [`command`].
pub fn replay_command(input: &str, out: &Path, config: &Path, extra: &[&str]) -> Command {
    let mut c = command(&[
        "replay",
        "--input",
        input,
        "--output",
        out.to_str().unwrap(),
    ]);
    c.args(["--config", config.to_str().unwrap()]).args(extra);
    c
}

/// `tidemark run --config CONFIG --output OUT <extra>` (a source from the
/// config: Kafka, Kinesis), as [`command`].
pub fn run_command(config: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = command(&["run", "--config", config.to_str().unwrap()]);
    c.args(["--output", out.to_str().unwrap()]).args(extra);
    c
}

/// Runs `tidemark <args>`; panics with its stderr when it exits non-zero.
/// Returns its stdout.
pub fn run_ok(args: &[&str]) -> String {
    let output = Command::new(bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not start tidemark {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        panic!(
            "tidemark {args:?} failed with {}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            stdout
        );
    }
    stdout
}

/// Waits for `c`; panics naming `what`, with its stderr (when piped), unless
/// it exits 0.
pub fn finish(c: Child, what: &str) {
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Kills the job with SIGKILL at five moments: `1..=5` commits after each
/// restart (`committed()` counts commits so far), so kills land while
/// files, state or manifests are being written. `between` runs just before
/// each kill (e.g. to look at the job mid-run). Fails if a run ends before
/// its kill: the job must be throttled to still be running.
pub fn kill_at_five_moments(
    mut start: impl FnMut() -> Child,
    committed: impl Fn() -> usize,
    mut between: impl FnMut(),
) {
    for new_commits in 1..=5 {
        let at = committed();
        let mut child = start();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(e) = child.stderr.as_mut() {
                    let _ = std::io::Read::read_to_string(e, &mut err);
                }
                panic!("the job ended ({status}) before {new_commits} new commits: {err}");
            }
            if committed() >= at + new_commits || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        between();
        child.kill().unwrap();
        let _ = child.wait();
    }
}

/// Waits for jobs started at once on one root: exactly one finishes, the
/// others stop with the conflict message.
pub fn assert_one_job_wins(jobs: Vec<Child>) {
    let results: Vec<(bool, String)> = jobs
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.0).count(),
        1,
        "exactly one job must finish: {results:?}"
    );
    for (_, err) in results.iter().filter(|r| !r.0) {
        assert!(
            err.contains("two jobs are using one output root"),
            "loser said: {err}"
        );
    }
}

/// `tidemark verify ROOT` exits 0: every file the manifests name is there,
/// intact.
pub fn verify_ok(root: &Path) {
    let o = Command::new(bin())
        .args(["verify", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "verify failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// A job whose stderr lines are collected on a thread as they arrive, each
/// with its arrival time (so a long outage's warnings never fill the pipe,
/// and a test can tell when a warning came).
pub struct Logged {
    pub child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Logged {
    /// Starts `cmd` with its stderr piped and collected.
    pub fn spawn(mut cmd: Command) -> Logged {
        use std::io::BufRead;
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tidemark");
        let err = child.stderr.take().expect("piped stderr");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Logged {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// The lines that arrived in `[from, to)` and contain every one of
    /// `needles`.
    pub fn lines_between(&self, from: Instant, to: Instant, needles: &[&str]) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, l)| *at >= from && *at < to && needles.iter().all(|n| l.contains(n)))
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Everything logged so far, for failure messages.
    pub fn text(&self) -> String {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Panics with the log unless the job is still running.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            self.drain();
            panic!("{what}: the job exited ({status}): {}", self.text());
        }
    }

    /// Waits until `root` has committed `n` epochs (at most 2 minutes);
    /// panics with the log if the job ended first.
    pub fn await_commits(&mut self, root: &Path, n: usize) {
        if !await_commits(&mut self.child, root, n) {
            self.wait();
            panic!("the job ended before {n} commits: {}", self.text());
        }
    }

    /// Waits for the job to exit; returns its status (the log stays
    /// readable).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        self.drain();
        status
    }

    fn drain(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // A failing test must not leave the job running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `root` has committed `n` epochs (at most 2 minutes); false
/// if the job ended first.
pub fn await_commits(job: &mut Child, root: &Path, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while crate::committed::manifests(root) < n {
        if job.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "no {n} commits in 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
