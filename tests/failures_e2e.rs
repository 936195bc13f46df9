//! End-to-end tests of how the job fails: an input that fails (a truncated
//! gzip file, a file that cannot be opened or read) ends the job with one
//! clear line naming the file and exit code 2, never a panic, and commits
//! nothing beyond what was read correctly; a killed peer process is named
//! with its address and the epoch to resume from (exit code 6), and a
//! restart of every process finishes the job exactly once.

use std::collections::HashSet;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use tidemark_testkit::committed::{
    anomaly_key, assert_same, manifests, newest_epoch, read_committed, reject_key, transaction_key,
    window_key,
};
use tidemark_testkit::datasets::{generate, jsonl_files};
use tidemark_testkit::job::{self, FAST_COMMITS};
use tidemark_testkit::reference::{self, Outputs, RefParams};
use tidemark_testkit::{cluster, tempdir};

/// Exit codes of `src/exit.rs` (the README's table).
const FAILED: i32 = 2;
const LOST_PEER: i32 = 6;

/// Waits for `child` at most `limit`; kills it and fails if it is still
/// running then.
fn wait_at_most(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "{what} did not end within {limit:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Every committed row is one the reference computes over the intact
/// inputs, with the same values, and none is committed twice: a run that
/// stopped early committed a prefix of the full result, never a row of its
/// own.
fn assert_within(full: &Outputs, committed: &Outputs) {
    fn keep<T: Clone, K: Hash + Eq>(all: &[T], got: &[T], key: impl Fn(&T) -> K) -> Vec<T> {
        let keys: HashSet<K> = got.iter().map(&key).collect();
        all.iter()
            .filter(|r| keys.contains(&key(r)))
            .cloned()
            .collect()
    }
    assert!(
        committed.duplicates <= full.duplicates,
        "{} duplicates committed, {} in the whole input",
        committed.duplicates,
        full.duplicates
    );
    let expected = Outputs {
        transactions: keep(&full.transactions, &committed.transactions, transaction_key),
        windows: keep(&full.windows, &committed.windows, window_key),
        anomalies: keep(&full.anomalies, &committed.anomalies, anomaly_key),
        rejects: keep(&full.rejects, &committed.rejects, reject_key),
        duplicates: committed.duplicates,
    };
    // A committed row the reference does not have, one that differs, or
    // one committed twice shows up as extra or different.
    assert_same(&expected, committed);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, bytes).unwrap();
    enc.finish().unwrap()
}

/// The whole lines a truncated gzip stream yields before its error.
fn whole_lines(truncated: &[u8]) -> usize {
    let mut dec = flate2::read::MultiGzDecoder::new(truncated);
    let mut out = Vec::new();
    let mut buf = [0u8; 1 << 16];
    loop {
        match std::io::Read::read(&mut dec, &mut buf) {
            Ok(0) => panic!("the truncated stream ended cleanly"),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out.iter().filter(|&&b| b == b'\n').count()
}

/// Writes `files` gzipped into `dir`, the one at `cut` cut in half; returns
/// the glob of the gzipped files, the cut file's path and its whole lines.
fn gzipped_with_one_cut(files: &[PathBuf], dir: &Path, cut: usize) -> (String, PathBuf, usize) {
    std::fs::create_dir(dir).unwrap();
    let (mut path, mut lines) = (PathBuf::new(), 0);
    for (i, f) in files.iter().enumerate() {
        let name = format!("{}.gz", f.file_name().unwrap().to_string_lossy());
        let mut bytes = gzip(&std::fs::read(f).unwrap());
        if i == cut {
            bytes.truncate(bytes.len() / 2);
            path = dir.join(&name);
            lines = whole_lines(&bytes);
        }
        std::fs::write(dir.join(&name), bytes).unwrap();
    }
    (format!("{}/*.jsonl.gz", dir.display()), path, lines)
}

/// The line a truncated gzip input ends the job with.
fn truncated_line(partition: usize, path: &Path) -> String {
    format!(
        "error: input partition {partition}: reading {}: incomplete deflate stream \
         (the gzip file is truncated)",
        path.display()
    )
}

/// Four generated `.jsonl.gz` files, one of them (partition 2) cut in half
/// mid-stream: the job reads it up to the cut, exits 2 with the line
/// `error: input partition 2: reading …/part-00002.jsonl.gz: incomplete
/// deflate stream (the gzip file is truncated)`, without a panic; the
/// epochs committed before the failure verify and hold only rows the
/// reference computes over the intact files.
#[test]
fn a_truncated_gzip_input_exits_2_naming_it_and_commits_only_what_was_read() {
    let tmp = tempdir();
    let plain = tmp.join("plain");
    generate(&plain, 40_000, 4, 23, 1000);
    let files = jsonl_files(&plain);
    assert_eq!(files.len(), 4, "{files:?}");
    let (input, cut, whole) = gzipped_with_one_cut(&files, &tmp.join("gz"), 2);
    let config = tidemark_testkit::write(&tmp, "job.toml", FAST_COMMITS);
    let out = tmp.join("out");
    // Throttled, so that epochs commit before the reader reaches the cut.
    let child = job::replay_command(&input, &out, &config, &["-w", "2", "--rate", "4000"])
        .spawn()
        .unwrap();
    let o = wait_at_most(child, Duration::from_secs(120), "the replay");
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("the replay said:\n{err}");
    assert_eq!(o.status.code(), Some(FAILED), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert_eq!(last, truncated_line(2, &cut), "{err}");
    let committed = manifests(&out);
    assert!(committed >= 1, "no epoch committed before the failure");
    job::verify_ok(&out);
    let full = reference::compute(&files, &RefParams::default());
    let got = read_committed(&out);
    assert!(!got.transactions.is_empty());
    assert_within(&full, &got);
    // Nothing of the cut file beyond its whole lines was committed.
    let furthest = got
        .transactions
        .iter()
        .map(|t| (t.partition, t.offset))
        .chain(got.rejects.iter().map(|r| (r.partition, r.offset)))
        .filter(|r| r.0 == 2)
        .map(|r| r.1)
        .max()
        .unwrap_or(-1);
    assert!(
        furthest < whole as i64,
        "partition 2 committed line {furthest}; the cut file has {whole} whole lines"
    );
    eprintln!(
        "{committed} epochs committed ({} transactions) before the failure",
        got.transactions.len()
    );
}

/// In a two-process cluster, the process that reads the truncated file
/// exits 2 with the line naming it; the other, losing it, exits 6 naming
/// it as the peer that went away. Neither hangs nor panics, and what was
/// committed verifies.
#[test]
fn in_a_cluster_the_process_with_the_truncated_input_exits_2_and_its_peer_6() {
    let tmp = tempdir();
    let plain = tmp.join("plain");
    generate(&plain, 40_000, 4, 37, 1000);
    let files = jsonl_files(&plain);
    let config = tidemark_testkit::write(&tmp, "job.toml", FAST_COMMITS);
    // With one worker per process, process p reads partitions p and p + 2.
    for (cut, failing) in [(2usize, 0usize), (1, 1)] {
        let case = tmp.join(format!("cut-{cut}"));
        std::fs::create_dir(&case).unwrap();
        let (input, path, _) = gzipped_with_one_cut(&files, &case.join("gz"), cut);
        let out = case.join("out");
        let hostfile = cluster::hostfile(&case, 2);
        let hosts: Vec<String> = std::fs::read_to_string(&hostfile)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let procs: Vec<Child> = (0..2)
            .map(|p| {
                let p = p.to_string();
                let extra = ["-w", "1", "--rate", "4000", "-n", "2", "-p", &p, "-h"];
                job::replay_command(&input, &out, &config, &extra)
                    .arg(&hostfile)
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (i, child) in procs.into_iter().enumerate() {
            let o = wait_at_most(child, Duration::from_secs(120), &format!("process {i}"));
            let err = String::from_utf8_lossy(&o.stderr);
            eprintln!("file {cut} cut: process {i} said:\n{err}");
            assert!(!err.contains("panicked"), "process {i}: {err}");
            let last = err.lines().last().unwrap_or("");
            if i == failing {
                assert_eq!(o.status.code(), Some(FAILED), "process {i}: {err}");
                assert_eq!(last, truncated_line(cut, &path), "process {i}: {err}");
            } else {
                assert_eq!(o.status.code(), Some(LOST_PEER), "process {i}: {err}");
                let named = format!("error: process {failing} ({}) went away (", hosts[failing]);
                assert!(last.starts_with(&named), "process {i}: {err}");
                if i == 0 && manifests(&out) > 0 {
                    let epoch = newest_epoch(&out);
                    assert!(
                        last.ends_with(&format!("resume from epoch {epoch}")),
                        "process {i}: {err}"
                    );
                } else if i != 0 {
                    // Only process 0 commits, so only it names the epoch.
                    assert!(
                        last.ends_with("); restart every process to resume from the last commit"),
                        "process {i}: {err}"
                    );
                }
            }
        }
        if manifests(&out) > 0 {
            job::verify_ok(&out);
        }
    }
}

/// An input file that cannot be opened (a symlink to a sysctl that is
/// write-only, so opening it for reading is refused even to root:
/// `Permission denied`) or cannot be read (a symlink to `/proc/self/mem`,
/// whose first page is never mapped: `Input/output error`): exit 2, one
/// `error:` line naming the file, no panic, and no hang although only one
/// of the two workers has the file.
#[test]
fn an_unreadable_input_file_exits_2_naming_it() {
    for (target, cause, when) in [
        (
            "/proc/sys/vm/drop_caches",
            "Permission denied (os error 13)",
            "opening the input partitions: opening",
        ),
        (
            "/proc/self/mem",
            "Input/output error (os error 5)",
            "reading",
        ),
    ] {
        let tmp = tempdir();
        let dir = tmp.join("in");
        let input = generate(&dir, 4000, 4, 29, 1000);
        let bad = jsonl_files(&dir)[1].clone();
        std::fs::remove_file(&bad).unwrap();
        std::os::unix::fs::symlink(target, &bad).unwrap();
        let config = tidemark_testkit::write(&tmp, "job.toml", FAST_COMMITS);
        let out = tmp.join("out");
        let child = job::replay_command(&input, &out, &config, &["-w", "2"])
            .spawn()
            .unwrap();
        let o = wait_at_most(child, Duration::from_secs(60), "the replay");
        let err = String::from_utf8_lossy(&o.stderr);
        eprintln!("over {target}, the replay said:\n{err}");
        assert_eq!(o.status.code(), Some(FAILED), "{target}: {err}");
        assert!(!err.contains("panicked"), "{target}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(
            errors,
            [format!(
                "error: input partition 1: {when} {}: {cause}",
                bad.display()
            )],
            "{target}: {err}"
        );
    }
}

/// A two-process replay whose process 1 is killed with SIGKILL after the
/// first commit: process 0 exits 6 within seconds, naming process 1 with
/// its address and the epoch to resume from, without a panic; a restart of
/// both processes finishes the job, and the committed outputs equal the
/// reference (exactly once).
#[test]
fn a_killed_peer_is_named_and_a_restart_of_every_process_finishes_exactly_once() {
    let tmp = tempdir();
    let dir = tmp.join("in");
    let input = generate(&dir, 40_000, 4, 31, 1000);
    let files = jsonl_files(&dir);
    let config = tidemark_testkit::write(&tmp, "job.toml", FAST_COMMITS);
    let out = tmp.join("out");
    let hostfile = cluster::hostfile(&tmp, 2);
    let hosts: Vec<String> = std::fs::read_to_string(&hostfile)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut procs: Vec<Child> = (0..2)
        .map(|p| {
            let p = p.to_string();
            let extra = [
                "-w",
                "1",
                "--rate",
                "4000",
                "-n",
                "2",
                "-p",
                &p,
                "-h",
                hostfile.to_str().unwrap(),
            ];
            job::replay_command(&input, &out, &config, &extra)
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while manifests(&out) < 1 {
        assert!(Instant::now() < deadline, "no commit within a minute");
        for (i, p) in procs.iter_mut().enumerate() {
            assert!(
                p.try_wait().unwrap().is_none(),
                "process {i} ended before the first commit: throttle it more"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut killed = procs.pop().unwrap();
    killed.kill().unwrap();
    let _ = killed.wait();
    let killed_at = Instant::now();
    let zero = procs.pop().unwrap();
    let o = wait_at_most(zero, Duration::from_secs(30), "process 0");
    let took = killed_at.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("process 0 said, {took:?} after the kill:\n{err}");
    assert_eq!(o.status.code(), Some(LOST_PEER), "{err}");
    assert!(took < Duration::from_secs(10), "process 0 took {took:?}");
    assert!(!err.contains("panicked"), "{err}");
    let epoch = newest_epoch(&out);
    let last = err.lines().last().unwrap_or("");
    let prefix = format!("error: process 1 ({}) went away (", hosts[1]);
    let suffix = format!("); restart every process to resume from epoch {epoch}");
    assert!(
        last.starts_with(&prefix) && last.ends_with(&suffix),
        "expected `{prefix}…{suffix}`, got: {err}"
    );

    // Every process restarts; the job finishes exactly once.
    cluster::run(&tmp, 2, 1, |args| {
        job::replay_command(&input, &out, &config, args)
    });
    job::verify_ok(&out);
    assert_same(
        &reference::compute(&files, &RefParams::default()),
        &read_committed(&out),
    );
}
