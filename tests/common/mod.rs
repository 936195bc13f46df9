//! Shared helpers of the end-to-end tests: the reference implementation (the
//! oracle), the manifest reader, and ways to run the `tidemark` binary.
#![allow(dead_code)]

pub mod committed;
pub mod layout;
pub mod reference;
pub mod scrape;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The `tidemark` binary cargo built for these tests.
pub fn tidemark_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tidemark"))
}

/// Runs `tidemark <args>`; panics with its stderr when it exits non-zero.
/// Returns its stdout.
pub fn run_ok(args: &[&str]) -> String {
    let output = Command::new(tidemark_bin())
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

/// A fresh, empty, unique directory under the system temp dir (not removed).
pub fn tempdir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("tidemark-test-{}-{nanos}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("creating {}: {e}", dir.display()),
        }
    }
}

/// Kills the job with SIGKILL at five moments: `1..=5` commits after each
/// restart (`committed()` counts commits so far), so kills land while
/// files, state or manifests are being written. `between` runs just before
/// each kill (e.g. to look at the job mid-run). Fails if a run ends before
/// its kill: the job must be throttled to still be running.
pub fn kill_at_five_moments(
    mut start: impl FnMut() -> std::process::Child,
    committed: impl Fn() -> usize,
    mut between: impl FnMut(),
) {
    use std::time::{Duration, Instant};
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
pub fn assert_one_job_wins(jobs: Vec<std::process::Child>) {
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

/// A hostfile of `n` free loopback ports in `dir`.
pub fn hostfile(dir: &std::path::Path, n: usize) -> PathBuf {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let hosts: Vec<String> = listeners
        .iter()
        .map(|l| format!("127.0.0.1:{}\n", l.local_addr().unwrap().port()))
        .collect();
    let path = dir.join(format!("hosts-{n}.txt"));
    std::fs::write(&path, hosts.concat()).unwrap();
    path
}

/// `tidemark generate` into `dir`: `partitions` JSON Lines files of
/// `events` in all, `events_per_sec` of event time. Returns the glob of the
/// files.
pub fn generate(
    dir: &std::path::Path,
    events: u64,
    partitions: u32,
    seed: u64,
    events_per_sec: u64,
) -> String {
    run_ok(&[
        "generate",
        "--output",
        dir.to_str().unwrap(),
        "--events",
        &events.to_string(),
        "--partitions",
        &partitions.to_string(),
        "--seed",
        &seed.to_string(),
        "--events-per-sec",
        &events_per_sec.to_string(),
    ]);
    format!("{}/*.jsonl", dir.display())
}
