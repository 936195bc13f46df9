//! End-to-end tests of the binary: cluster-shape invariance, crash safety,
//! recovery from damage, and clear failures on bad configuration.
//!
//! Each compares whole committed outputs (read only through manifests)
//! against an uninterrupted single-worker run, which `tests/reference.rs`
//! in turn compares against the independent reference implementation.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tidemark_checkpoint::storage::Storage;
use tidemark_testkit::committed::{
    assert_same, manifest_names, manifests, newest_epoch, read_committed,
};
use tidemark_testkit::datasets::generate;
use tidemark_testkit::job::{self, FAST_COMMITS};
use tidemark_testkit::reference::{Outputs, WindowRow};
use tidemark_testkit::{cluster, tempdir};

fn write_config(dir: &Path, text: &str) -> PathBuf {
    tidemark_testkit::write(dir, "job.toml", text)
}

fn run_replay(input: &str, out: &Path, config: &Path, extra: &[&str]) {
    let o = job::replay_command(input, out, config, extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "replay {extra:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A real cluster of `n` processes over loopback, with a hostfile.
fn run_cluster(input: &str, out: &Path, config: &Path, processes: usize, workers: usize) {
    cluster::run(out.parent().unwrap(), processes, workers, |args| {
        job::replay_command(input, out, config, args)
    });
}

#[test]
fn cluster_shapes_commit_identical_outputs() {
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 100_000, 8, 11, 5000);
    let config = write_config(&tmp, FAST_COMMITS);

    let base = tmp.join("1x1");
    run_replay(&input, &base, &config, &["-w", "1"]);
    let expected = read_committed(&base);
    assert!(
        expected.transactions.len() > 90_000,
        "{} transactions",
        expected.transactions.len()
    );

    let two = tmp.join("1x2");
    run_replay(&input, &two, &config, &["-w", "2"]);
    assert_same(&expected, &read_committed(&two));

    for (n, w) in [(2, 1), (2, 2)] {
        let out = tmp.join(format!("{n}x{w}"));
        run_cluster(&input, &out, &config, n, w);
        job::verify_ok(&out);
        assert_same(&expected, &read_committed(&out));
    }
}

#[test]
fn kill_at_five_moments_then_restart_equals_uninterrupted() {
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 150_000, 8, 23, 5000);
    let config = write_config(&tmp, FAST_COMMITS);
    let clean = tmp.join("clean");
    run_replay(&input, &clean, &config, &["-w", "2"]);
    let expected = read_committed(&clean);
    let total = manifests(&clean);
    assert!(
        total >= 10,
        "only {total} epochs committed: the test needs many"
    );

    // Kill -9 once after each of five different numbers of committed epochs
    // (plus once before any commit), restarting in between.
    let out = tmp.join("crashy");
    // Throttled so that the job is still running at each kill.
    job::kill_at_five_moments(
        || {
            job::replay_command(&input, &out, &config, &["-w", "2", "--rate", "50000"])
                .spawn()
                .unwrap()
        },
        || manifests(&out),
        || {},
    );
    run_replay(&input, &out, &config, &["-w", "2"]);
    job::verify_ok(&out);
    assert_same(&expected, &read_committed(&out));
}

#[test]
fn damaged_epochs_are_reported_and_recovered() {
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 60_000, 4, 5, 5000);
    let config = write_config(&tmp, FAST_COMMITS);
    let clean = tmp.join("clean");
    run_replay(&input, &clean, &config, &["-w", "1"]);
    let expected = read_committed(&clean);

    for damage in ["manifest", "state", "data"] {
        let out = tmp.join(format!("damaged-{damage}"));
        // A run that stops half-way, so the newest epoch is not the last.
        let mut child = job::replay_command(&input, &out, &config, &["-w", "1", "--rate", "30000"])
            .spawn()
            .unwrap();
        while manifests(&out) < 4 && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill();
        let _ = child.wait();
        let newest = newest_manifest(&out);
        let text = std::fs::read_to_string(&newest).unwrap();
        let m: serde_json::Value = serde_json::from_str(&text).unwrap();
        match damage {
            "manifest" => std::fs::write(&newest, &text[..text.len() / 2]).unwrap(),
            "state" => {
                // State files are named by the commit log, not the public manifest.
                let log: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(newest_in(&out, "_commits")).unwrap())
                        .unwrap();
                assert_eq!(log["epoch"], m["epoch"]);
                let path = log["job"]["state"][0]["path"]
                    .as_str()
                    .expect("newest commit has state");
                flip_byte(&out.join(path));
            }
            _ => {
                let path = m["files"][0]["path"]
                    .as_str()
                    .expect("newest epoch has files");
                flip_byte(&out.join(path));
            }
        }
        let o = Command::new(job::bin())
            .args(["verify", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!o.status.success(), "verify missed damaged {damage}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("DAMAGED"));

        run_replay(&input, &out, &config, &["-w", "1"]);
        job::verify_ok(&out);
        assert_same(&expected, &read_committed(&out));
    }
}

fn newest_manifest(root: &Path) -> PathBuf {
    newest_in(root, "manifests")
}

fn newest_in(root: &Path, dir: &str) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".json"))
        .collect();
    v.sort();
    v.pop().expect("a committed manifest")
}

fn flip_byte(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0xff;
    std::fs::write(p, b).unwrap();
}

fn fails_with(args: &[&str], needle: &str) {
    let o = Command::new(job::bin()).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(
        err.contains(needle),
        "{args:?}: message {err:?} should mention {needle:?}"
    );
}

#[test]
fn bad_configuration_fails_at_start_naming_the_problem() {
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 100, 1, 1, 5000);
    let out = tmp.join("out");
    let out = out.to_str().unwrap();
    let cfg = |name: &str, text: &str| {
        let p = tmp.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let unknown = cfg(
        "unknown.toml",
        "[dedup]\nhorizon = \"10m\"\nhorizn = \"5m\"\n",
    );
    fails_with(
        &[
            "replay", "--input", &input, "--output", out, "--config", &unknown,
        ],
        "horizn",
    );
    let tick = cfg("tick.toml", "[time]\ntick = \"7s\"\n");
    fails_with(
        &[
            "replay", "--input", &input, "--output", out, "--config", &tick,
        ],
        "not a multiple of time.tick",
    );
    for (name, text, needle) in [
        (
            "retain.toml",
            "[checkpoint]\nretain = 0\n",
            "checkpoint.retain",
        ),
        (
            "endpoint.toml",
            "[storage]\nendpoint = \"localhost:9000\"\n",
            "storage.endpoint",
        ),
        ("storage.toml", "[storage]\nbucket = \"b\"\n", "bucket"),
    ] {
        let c = cfg(name, text);
        fails_with(
            &["replay", "--input", &input, "--output", out, "--config", &c],
            needle,
        );
    }
    let none = tmp.join("no-such-hostfile");
    fails_with(
        &[
            "replay",
            "--input",
            &input,
            "--output",
            out,
            "-n",
            "2",
            "-p",
            "0",
            "-h",
            none.to_str().unwrap(),
        ],
        "hostfile",
    );
    fails_with(
        &["replay", "--input", "/nonexistent/*.jsonl", "--output", out],
        "matches no file",
    );
    assert!(
        !Path::new(out).join("manifests").exists(),
        "a failed start must not commit"
    );

    // A restart over other inputs than the commits were made with.
    let done = tmp.join("done");
    job::run_ok(&[
        "replay",
        "--input",
        &input,
        "--output",
        done.to_str().unwrap(),
    ]);
    let other = tmp.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let first = std::fs::read_dir(tmp.join("in"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&first, other.join("renamed.jsonl")).unwrap();
    fails_with(
        &[
            "replay",
            "--input",
            other.join("renamed.jsonl").to_str().unwrap(),
            "--output",
            done.to_str().unwrap(),
        ],
        "the inputs changed",
    );
}

#[test]
fn two_jobs_on_one_root_exactly_one_commits() {
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 60_000, 4, 9, 5000);
    let config = write_config(&tmp, FAST_COMMITS);
    let clean = tmp.join("clean");
    run_replay(&input, &clean, &config, &["-w", "1"]);
    let expected = read_committed(&clean);

    let out = tmp.join("shared");
    let jobs: Vec<Child> = (0..2)
        .map(|_| {
            job::replay_command(&input, &out, &config, &["-w", "1", "--rate", "40000"])
                .spawn()
                .unwrap()
        })
        .collect();
    job::assert_one_job_wins(jobs);
    job::verify_ok(&out);
    assert_same(&expected, &read_committed(&out));
}

/// A commit another job made first stops this one with exit code 4 (fenced)
/// and the line `error: <root>: commit N (epoch E) was already made by
/// another job…`: the committer's typed failure, mapped by `main`. In a
/// cluster, process 0 leaves without waiting for its peers instead of
/// hanging, and the peers name it as a lost peer (exit 6, no backtrace).
#[test]
fn a_commit_taken_by_another_job_exits_4_naming_it_alone_and_in_a_cluster() {
    use tidemark_checkpoint::commit_log::{list, log_key};
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 60_000, 4, 17, 5000);
    let config = write_config(&tmp, FAST_COMMITS);
    for processes in [1usize, 2] {
        let out = tmp.join(format!("out-{processes}"));
        let hostfile = cluster::hostfile(&tmp, processes);
        let mut jobs: Vec<Child> = (0..processes)
            .map(|p| {
                let (n, p) = (processes.to_string(), p.to_string());
                let mut extra = vec!["-w", "1", "--rate", "20000"];
                if processes > 1 {
                    extra.extend(["-n", &n, "-p", &p, "-h", hostfile.to_str().unwrap()]);
                }
                job::replay_command(&input, &out, &config, &extra)
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Once the job has committed, another claims the next log position.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let claimed = loop {
            assert!(std::time::Instant::now() < deadline, "no commit");
            assert!(
                jobs[0].try_wait().unwrap().is_none(),
                "finished before the first commit: throttle it more"
            );
            let st = tidemark_checkpoint::storage::LocalStorage::new(&out).unwrap();
            if let Some(&newest) = list(&st).unwrap().last() {
                let mut seq = newest + 1;
                while !st.put_if_absent(&log_key(seq), b"another job").unwrap() {
                    seq += 1;
                }
                break (seq, st.describe());
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        for (i, mut job) in jobs.into_iter().enumerate() {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while job.try_wait().unwrap().is_none() {
                if std::time::Instant::now() > deadline {
                    job.kill().unwrap();
                    panic!("process {i} of {processes} did not end after the conflict");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let o = job.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            if i > 0 {
                // Process 0 left: the peers name it and exit with the
                // lost-peer code, without a panic backtrace.
                assert_eq!(o.status.code(), Some(6), "process {i}: {err}");
                assert!(
                    err.contains("error: process 0 (127.0.0.1:") && err.contains(" went away ("),
                    "process {i}: {err}"
                );
                assert!(!err.contains("panicked"), "process {i}: {err}");
                continue;
            }
            assert_eq!(o.status.code(), Some(4), "{err}");
            let (seq, root) = &claimed;
            let last = err.lines().last().unwrap_or("");
            assert!(
                last.starts_with(&format!("error: {root}: commit {seq} (epoch "))
                    && last.ends_with(
                        "was already made by another job writing to the same output root: \
                         two jobs are using one output root; this one stops without committing"
                    ),
                "{err}"
            );
        }
        // What was committed before the conflict stays verifiable.
        let st = tidemark_checkpoint::storage::LocalStorage::new(&out).unwrap();
        assert!(tidemark_checkpoint::manifest::list_manifests(&st)
            .unwrap()
            .iter()
            .all(|e| tidemark_checkpoint::manifest::verify(
                &st,
                &tidemark_checkpoint::manifest::load(&st, *e).unwrap()
            )
            .is_empty()));
    }
}

#[test]
fn retention_keeps_the_newest_three_commits_and_every_output() {
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 60_000, 4, 13, 5000);
    let config = write_config(&tmp, &format!("{FAST_COMMITS}retain = 3\n"));
    let clean = tmp.join("clean");
    run_replay(&input, &clean, &config, &["-w", "2"]);
    let expected = read_committed(&clean);

    // A run killed half-way leaves files of uncommitted epochs behind; the
    // restart finishes the job and must leave only what retention keeps.
    let out = tmp.join("out");
    kill_after_commits(&input, &out, &config, &["-w", "2", "--rate", "30000"], 6);
    run_replay(&input, &out, &config, &["-w", "2"]);

    let st = tidemark_checkpoint::storage::LocalStorage::new(&out).unwrap();
    let commits = tidemark_testkit::layout::assert_retained(&st, 3);
    // Six before the kill, at least one after: more than `retain`.
    assert!(commits >= 7, "only {commits} commits");
    assert!(st.list("quarantine/").unwrap().is_empty());
    job::verify_ok(&out);
    assert_same(&expected, &read_committed(&out));
}

/// Starts a throttled replay and kills it with SIGKILL once `n` epochs are
/// committed; returns the newest committed epoch (its event-time boundary).
fn kill_after_commits(input: &str, out: &Path, config: &Path, extra: &[&str], n: usize) -> i64 {
    let mut child = job::replay_command(input, out, config, extra)
        .spawn()
        .unwrap();
    while manifests(out) < n {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before {n} commits: throttle it more"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let _ = child.wait();
    newest_epoch(out)
}

fn copy_root(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-r")
        .args([from, to])
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -r {} {}", from.display(), to.display());
}

#[test]
fn a_stopped_two_worker_job_finishes_with_three_workers_or_two_processes() {
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 100_000, 8, 31, 5000);
    let config = write_config(&tmp, FAST_COMMITS);
    let clean = tmp.join("clean");
    run_replay(&input, &clean, &config, &["-w", "2"]);
    let expected = read_committed(&clean);

    // Stopped with state in flight: dedup ids, open windows and detector
    // histories of both workers' key groups are in the snapshot.
    let stopped = tmp.join("stopped");
    let extra = ["-w", "2", "--rate", "30000"];
    kill_after_commits(&input, &stopped, &config, &extra, 4);
    let two_procs = tmp.join("two_procs");
    copy_root(&stopped, &two_procs);

    run_replay(&input, &stopped, &config, &["-w", "3"]);
    job::verify_ok(&stopped);
    assert_same(&expected, &read_committed(&stopped));

    run_cluster(&input, &two_procs, &config, 2, 1);
    job::verify_ok(&two_procs);
    assert_same(&expected, &read_committed(&two_procs));
}

/// The default windows, written out so one of them can be changed.
fn windows_config(merchant_size: &str) -> String {
    format!(
        "[checkpoint]\ninterval = \"20s\"\nmin_wall_interval = \"0\"\n\
         [[windows]]\nname = \"status_1m\"\nkind = \"tumbling\"\nsize = \"1m\"\ngroup_by = [\"status\"]\n\
         [[windows]]\nname = \"merchant_5m\"\nkind = \"sliding\"\nsize = \"{merchant_size}\"\nslide = \"1m\"\ngroup_by = [\"merchant\"]\n\
         [[windows]]\nname = \"customer_session\"\nkind = \"session\"\ngap = \"30m\"\ngroup_by = [\"customer_id\"]\n"
    )
}

#[test]
fn a_changed_window_is_refused_unless_allowed_and_then_only_it_restarts() {
    let tmp = tempdir();
    // Ten minutes of event time, so windows open and close across restarts.
    let input = generate(&tmp.join("in"), 60_000, 8, 37, 100);
    let old_cfg = tmp.join("old.toml");
    std::fs::write(&old_cfg, windows_config("5m")).unwrap();
    let new_cfg = tmp.join("new.toml");
    std::fs::write(&new_cfg, windows_config("10m")).unwrap();

    let clean_old = tmp.join("clean_old");
    run_replay(&input, &clean_old, &old_cfg, &["-w", "2"]);
    let old = read_committed(&clean_old);
    let clean_new = tmp.join("clean_new");
    run_replay(&input, &clean_new, &new_cfg, &["-w", "2"]);
    let new = read_committed(&clean_new);

    let out = tmp.join("out");
    let boundary = kill_after_commits(&input, &out, &old_cfg, &["-w", "2", "--rate", "4000"], 8);

    // Refused, naming the spec and the field, and nothing is written.
    let before = manifests(&out);
    let o = job::replay_command(&input, &out, &new_cfg, &["-w", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a changed window must be refused");
    assert!(
        err.contains("windows[merchant_5m].kind.Sliding.size_ms: 300000 → 600000")
            && err.contains("--allow-config-change"),
        "{err}"
    );
    assert_eq!(manifests(&out), before);

    run_replay(
        &input,
        &out,
        &new_cfg,
        &["-w", "2", "--allow-config-change"],
    );
    job::verify_ok(&out);
    let got = read_committed(&out);

    // Everything but the changed spec continues as if nothing changed.
    let split = |o: &Outputs| {
        let mut rest = o.clone();
        rest.windows.retain(|w| w.window != "merchant_5m");
        let changed: Vec<_> = o
            .windows
            .iter()
            .filter(|w| w.window == "merchant_5m")
            .cloned()
            .collect();
        (rest, changed)
    };
    let (got_rest, got_m5) = split(&got);
    let (old_rest, old_m5) = split(&old);
    let (_, new_m5) = split(&new);
    assert!(!got.anomalies.is_empty() && !got.rejects.is_empty());
    assert_same(&old_rest, &got_rest);

    // The changed spec: the old windows up to the restored epoch, the new
    // ones from it, and the windows spanning it from post-restore data only.
    let only = |rows: &[WindowRow], keep: &dyn Fn(&WindowRow) -> bool| Outputs {
        windows: rows.iter().filter(|w| keep(w)).cloned().collect(),
        ..Default::default()
    };
    let before_cut = |w: &WindowRow| w.window_end <= boundary;
    let after_cut = |w: &WindowRow| w.window_start >= boundary;
    let old_part = only(&old_m5, &before_cut);
    let new_part = only(&new_m5, &after_cut);
    assert!(!old_part.windows.is_empty() && !new_part.windows.is_empty());
    assert_same(&old_part, &only(&got_m5, &before_cut));
    assert_same(&new_part, &only(&got_m5, &after_cut));
    // Those saw only the transactions from the restored epoch on.
    let spanning: Vec<_> = got_m5
        .iter()
        .filter(|w| !before_cut(w) && !after_cut(w))
        .collect();
    assert!(!spanning.is_empty());
    for w in spanning {
        assert_eq!(w.window_end - w.window_start, 600_000, "{w:?}");
        let merchant = w.group[0].1.as_deref();
        let seen = got
            .transactions
            .iter()
            .filter(|t| Some(t.merchant.as_str()) == merchant)
            .filter(|t| t.event_time >= boundary && t.event_time < w.window_end)
            .count();
        assert_eq!(w.txn_count, Some(seen as i64), "{w:?}");
    }
}

/// The workload other engines are measured on: dedup and one tumbling
/// window, every other output and the detectors off. What is switched off
/// is not written; what stays is exactly what the full job writes for it.
#[test]
fn switched_off_outputs_are_not_written_and_the_rest_is_unchanged() {
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 60_000, 4, 17, 200);
    let full_cfg = write_config(&tmp, FAST_COMMITS);
    let full = tmp.join("full");
    run_replay(&input, &full, &full_cfg, &["-w", "2"]);
    let expected = read_committed(&full);

    let peer_dir = tmp.join("peer-config");
    std::fs::create_dir_all(&peer_dir).unwrap();
    let peer_cfg = write_config(
        &peer_dir,
        &format!(
            "{FAST_COMMITS}[outputs]\ntransactions = false\nrejects = false\n\
             [anomaly.transaction]\nenabled = false\n[anomaly.window]\nenabled = false\n\
             [[windows]]\nname = \"status_1m\"\nkind = \"tumbling\"\nsize = \"1m\"\n\
             group_by = [\"status\"]\naggregates = [\"count\", \"sum\", \"avg\", \"min\", \"max\"]\n"
        ),
    );
    let peer = tmp.join("peer");
    run_replay(&input, &peer, &peer_cfg, &["-w", "2"]);
    job::verify_ok(&peer);
    let got = read_committed(&peer);
    assert!(got.transactions.is_empty() && got.rejects.is_empty() && got.anomalies.is_empty());
    assert!(!expected.rejects.is_empty() && !expected.anomalies.is_empty());
    let mut want: Vec<_> = expected
        .windows
        .iter()
        .filter(|w| w.window == "status_1m")
        .cloned()
        .collect();
    let mut have = got.windows.clone();
    let key = |w: &WindowRow| (w.window_start, format!("{:?}", w.group));
    want.sort_by_key(key);
    have.sort_by_key(key);
    assert!(want.len() > 10, "{} status windows", want.len());
    assert_eq!(have, want);
    // Duplicates are still decided (and counted) without the transactions output.
    assert_eq!(got.duplicates, expected.duplicates);
}

/// The shipped cluster.toml configures a replay too: its generator-only
/// setting (`reference.kind = "generator"`) is left out with one warning.
#[test]
fn replay_runs_with_the_shipped_cluster_toml() {
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 2000, 2, 5, 5000);
    let out = tmp.join("out");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml");
    let o = Command::new(job::bin())
        .args(["replay", "--input", &input, "--config"])
        .arg(&shipped)
        .arg("--output")
        .arg(&out)
        .env("TIDEMARK_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "replay --config cluster.toml failed: {err}"
    );
    assert_eq!(
        err.matches("reference.kind").count(),
        1,
        "one line should say the generator's reference table is left out: {err}"
    );
    job::verify_ok(&out);
    let committed = read_committed(&out);
    assert!(!committed.transactions.is_empty() && !committed.windows.is_empty());
}

/// A bounded replay over a root that already holds its whole result says
/// so, and how to compute again, instead of a summary of zeros.
#[test]
fn a_replay_over_a_finished_root_says_there_is_nothing_to_do() {
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 2000, 2, 5, 5000);
    let out = tmp.join("out");
    let config = write_config(&tmp, FAST_COMMITS);
    run_replay(&input, &out, &config, &["-w", "2"]);
    let before = read_committed(&out);
    let listed = manifest_names(&out);
    let o = job::replay_command(&input, &out, &config, &["-w", "2"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "second replay failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let last: i64 = listed
        .last()
        .unwrap()
        .trim_end_matches(".json")
        .parse()
        .unwrap();
    assert!(
        stdout.contains("nothing to do")
            && stdout.contains(&format!("last epoch {last}"))
            && stdout.contains("fresh --output directory"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(manifest_names(&out), listed);
    assert_same(&before, &read_committed(&out));
}
