//! Operating the job: the Prometheus endpoint agrees with the committed
//! outputs, every metric the alerts and the dashboard query exists in a
//! real scrape, and SIGTERM stops at a commit from which a restart finishes
//! with outputs equal to an uninterrupted run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidemark_testkit::committed::{assert_same, manifests, newest_epoch, read_committed};
use tidemark_testkit::datasets::generate;
use tidemark_testkit::reference::WindowRow;
use tidemark_testkit::scrape::{get, scrape, sum, Sample};
use tidemark_testkit::{free_port, job, tempdir};

fn config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    let p = dir.join(format!("job-{port}.toml"));
    std::fs::write(
        &p,
        format!(
            "[checkpoint]\ninterval = \"1s\"\nmin_wall_interval = \"0\"\n\
             [metrics]\nport = \"{port}\"\naddress = \"127.0.0.1\"\n{extra}"
        ),
    )
    .unwrap();
    p
}

fn replay(input: &str, out: &Path, config: &Path, extra: &[&str]) -> Command {
    let mut c = job::replay_command(input, out, config, &["-w", "2"]);
    c.args(extra).stdout(Stdio::piped());
    c
}

/// Every `tidemark_*` name in the alert rules and the dashboard.
fn queried_metrics() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = BTreeSet::new();
    for f in ["ops/prometheus/alerts.yml", "ops/grafana/tidemark.json"] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("tidemark_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    assert!(names.len() > 15, "found only {names:?}");
    names
}

/// The names a scrape exports, with histograms' `_bucket/_sum/_count`.
fn exported(samples: &[Sample]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = samples.iter().map(|s| s.0.clone()).collect();
    for n in names.clone() {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = n.strip_suffix(suffix) {
                names.insert(base.to_owned());
            }
        }
    }
    names
}

#[test]
fn metrics_agree_with_the_committed_outputs() {
    let tmp = tempdir();
    // Duplicates, late records and every reject reason, in 8 partitions.
    let input = generate(&tmp.join("in"), 80_000, 8, 17, 5000);
    let port = free_port();
    let cfg = config(&tmp, port, "linger = \"60s\"\n");
    let out = tmp.join("out");
    let mut child = replay(&input, &out, &cfg, &["--rate", "40000"])
        .spawn()
        .unwrap();

    // During the run: alive, then ready, and the counters add up so far.
    let t0 = Instant::now();
    let mut during = None;
    while t0.elapsed() < Duration::from_secs(60) {
        assert!(child.try_wait().unwrap().is_none(), "ended early");
        if let (Some((200, _)), Some((200, _))) = (get(port, "/live"), get(port, "/ready")) {
            let s = scrape(port);
            if sum(&s, "tidemark_checkpoints_total", &[]) >= 2.0 {
                during = Some(s);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let during = during.expect("ready with two commits within a minute");
    let read = sum(&during, "tidemark_records_in_total", &[]);
    assert!(read > 0.0 && read < 80_000.0, "mid-run read {read}");
    let out_so_far: f64 = ["transactions", "rejects"]
        .iter()
        .map(|o| sum(&during, "tidemark_records_out_total", &[("output", o)]))
        .sum::<f64>()
        + sum(&during, "tidemark_duplicates_total", &[]);
    assert!(out_so_far <= read, "committed {out_so_far} > read {read}");

    // The summary is printed when the job is done; it then lingers.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 && !line.contains("duplicates") {
        line.clear();
    }
    let end = scrape(port);
    let o = read_committed(&out);
    child.kill().unwrap();
    let _ = child.wait();

    let m = |name: &str, with: &[(&str, &str)]| sum(&end, name, with) as u64;
    let records_in = m("tidemark_records_in_total", &[]);
    assert_eq!(
        records_in,
        m("tidemark_records_read_total", &[]),
        "no restart"
    );
    assert_eq!(
        records_in,
        (o.transactions.len() + o.rejects.len()) as u64 + o.duplicates
    );
    assert!(o.duplicates > 0 && o.rejects.len() > 100);
    assert_eq!(m("tidemark_duplicates_total", &[]), o.duplicates);
    for (output, rows) in [
        ("transactions", o.transactions.len()),
        ("windows", o.windows.len()),
        ("anomalies", o.anomalies.len()),
        ("rejects", o.rejects.len()),
    ] {
        assert_eq!(
            m("tidemark_records_out_total", &[("output", output)]),
            rows as u64,
            "{output}"
        );
    }
    let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &o.rejects {
        *reasons.entry(r.reason.as_str()).or_default() += 1;
    }
    assert!(reasons.len() >= 5, "{reasons:?}");
    for (reason, n) in &reasons {
        assert_eq!(
            m("tidemark_rejects_total", &[("reason", reason)]),
            *n,
            "{reason}"
        );
    }
    assert_eq!(m("tidemark_rejects_total", &[]), o.rejects.len() as u64);
    assert_eq!(
        m("tidemark_late_records_total", &[]),
        reasons.get("LATE").copied().unwrap_or(0)
    );
    let mut windows: BTreeMap<&str, u64> = BTreeMap::new();
    for w in &o.windows {
        *windows.entry(w.window.as_str()).or_default() += 1;
    }
    for (name, n) in &windows {
        assert_eq!(m("tidemark_windows_emitted_total", &[("window", name)]), *n);
    }
    for kind in ["transaction", "window"] {
        let n = o.anomalies.iter().filter(|a| a.kind == kind).count() as u64;
        assert_eq!(m("tidemark_anomalies_emitted_total", &[("kind", kind)]), n);
    }
    assert_eq!(m("tidemark_checkpoints_total", &[]), manifests(&out) as u64);
    // The frontier moved on to the end of the data (its last finite value:
    // a finished dataflow's frontier is empty).
    let newest = o.transactions.iter().map(|t| t.event_time).max().unwrap() as f64;
    let frontier = |s: &[Sample]| sum(s, "tidemark_frontier_timestamp_seconds", &[]) * 1e3;
    assert!(frontier(&during) > 0.0 && frontier(&end) > frontier(&during));
    assert!(
        frontier(&end) > newest - 60_000.0,
        "{} vs {newest}",
        frontier(&end)
    );
    assert!(m("tidemark_event_to_output_seconds_count", &[]) > 0);
    assert!(m("tidemark_state_keys", &[("operator", "dedup")]) > 0);

    // What the alerts and the dashboard query exists (Kafka and Kinesis
    // lag only with those sources: tests/kafka_e2e.rs, tests/kinesis_job.rs;
    // the sinks' only with Kafka sinks: tests/kafka_outage.rs).
    let have = exported(&during)
        .union(&exported(&end))
        .cloned()
        .collect::<BTreeSet<_>>();
    let missing: Vec<_> = queried_metrics()
        .into_iter()
        .filter(|n| !have.contains(n))
        .filter(|n| !n.starts_with("tidemark_source_lag_") && !n.starts_with("tidemark_sink_"))
        .collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
}

/// A run interrupted by a stop signal and restarted equals a clean run.
fn stop_and_resume(signals: usize, expect_code: i32) {
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 100_000, 8, 29, 5000);
    let port = free_port();
    // A wall-time floor between commits, as in production: the stop must
    // commit without waiting for it.
    let cfg = config(&tmp, port, "").to_string_lossy().to_string();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("min_wall_interval = \"0\"", "min_wall_interval = \"30s\"");
    std::fs::write(&cfg, text).unwrap();
    let cfg = Path::new(&cfg);

    let clean = tmp.join("clean");
    let o = replay(&input, &clean, cfg, &[]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected = read_committed(&clean);

    let out = tmp.join("out");
    let mut child: Child = replay(&input, &out, cfg, &["--rate", "20000"])
        .spawn()
        .unwrap();
    // Mid-run: the first commit is in, then no other for 30 s of wall time.
    let t0 = Instant::now();
    while manifests(&out) < 1 || t0.elapsed() < Duration::from_secs(2) {
        assert!(child.try_wait().unwrap().is_none(), "ended before the stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = manifests(&out);
    for i in 0..signals {
        if i > 0 {
            // Not at once: two pending signals would merge into one.
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let t1 = Instant::now();
    let status = child.wait().unwrap();
    let took = t1.elapsed();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.code(),
        Some(expect_code),
        "{status:?} {:?}: {err}",
        status.signal()
    );
    assert!(took < Duration::from_secs(10), "took {took:?} to stop");

    let at_stop = read_committed(&out);
    if expect_code == 0 {
        // A final epoch was committed at the stop, before the wall-time
        // floor would have allowed one, and open windows were not flushed
        // into it: every committed window ends by the last epoch.
        assert_eq!(manifests(&out), before + 1);
        let last = newest_epoch(&out);
        let early: Vec<&WindowRow> = at_stop
            .windows
            .iter()
            .filter(|w| w.window_end > last)
            .collect();
        assert!(early.is_empty(), "flushed early: {:?}", &early[..1]);
        assert!(at_stop.transactions.len() < expected.transactions.len());
    }

    let o = replay(&input, &out, cfg, &[]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same(&expected, &read_committed(&out));
}

#[test]
fn sigterm_commits_the_current_epoch_exits_0_and_a_restart_finishes_equal() {
    stop_and_resume(1, 0);
}

#[test]
fn a_second_signal_exits_at_once_and_a_restart_still_finishes_equal() {
    stop_and_resume(2, 128 + libc::SIGTERM);
}
