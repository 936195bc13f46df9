//! The job against a real S3 API server (moto on loopback): with the output
//! root on S3, kills at five moments and a damaged newest manifest still end
//! in outputs equal to an uninterrupted local run, with exactly what
//! retention keeps; two jobs on one S3 root leave one committing; a replay
//! whose input lives on S3 equals the same replay from local files.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use tidemark_checkpoint::storage::Storage;
use tidemark_testkit::committed::{assert_same, download, manifests, read_committed};
use tidemark_testkit::datasets::generate;
use tidemark_testkit::fault_proxy::{FaultProxy, Mode};
use tidemark_testkit::job::{self, FAST_COMMITS};
use tidemark_testkit::reference::Outputs;
use tidemark_testkit::{layout, moto, scrape, tempdir};

/// [`FAST_COMMITS`], keeping the newest three commits.
fn fast_commits() -> String {
    format!("{FAST_COMMITS}retain = 3\n")
}

/// A store on `s3://<name>/out`, its bucket created.
fn bucket(endpoint: &str, name: &str) -> Arc<dyn Storage> {
    Arc::new(moto::bucket(endpoint, &format!("s3://{name}/out")))
}

fn tidemark(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(job::bin());
    c.args(args).env("TIDEMARK_LOG", "warn");
    moto::client_env(&mut c, endpoint);
    c
}

fn run_ok(mut c: Command) {
    let o = c.stdout(Stdio::null()).output().unwrap();
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn crashes_and_damage_on_s3_end_in_equal_outputs() {
    let endpoint = moto::shared().endpoint.clone();
    let tmp = tempdir();
    let input_dir = tmp.join("in");
    let input = generate(&input_dir, 80_000, 4, 3, 5000);
    let config = tmp.join("job.toml");
    std::fs::write(&config, fast_commits()).unwrap();
    let config = config.to_str().unwrap();

    let clean = tmp.join("clean");
    let replay = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "replay", "--input", &input, "--output", out, "--config", config, "-w", "2",
        ];
        args.extend_from_slice(extra);
        tidemark(&endpoint, &args)
    };
    run_ok(replay(clean.to_str().unwrap(), &[]));
    let expected = read_committed(&clean);
    assert!(expected.transactions.len() > 70_000);

    let st = bucket(&endpoint, "tm-crash");
    let root = "s3://tm-crash/out";
    job::kill_at_five_moments(
        || {
            replay(root, &["--rate", "20000"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        },
        || manifests(&*st),
        || {},
    );

    // Damage the newest manifest: verify reports it, a restart recovers.
    let newest = st
        .list("manifests/")
        .unwrap()
        .into_iter()
        .filter(|k| k.ends_with(".json"))
        .max()
        .unwrap();
    let text = st.get(&newest).unwrap().unwrap();
    st.put(&newest, &text[..text.len() / 2]).unwrap();
    let o = tidemark(&endpoint, &["verify", root]).output().unwrap();
    assert!(!o.status.success(), "verify missed the damaged manifest");
    assert!(String::from_utf8_lossy(&o.stdout).contains("DAMAGED"));

    run_ok(replay(root, &[]));
    run_ok(tidemark(&endpoint, &["verify", root]));
    let commits = layout::assert_retained(&*st, 3);
    assert!(commits > 5);
    let local = tmp.join("from-s3");
    download(&*st, &local);
    assert_same(&expected, &read_committed(&local));
}

#[test]
fn two_jobs_on_one_s3_root_exactly_one_commits() {
    let endpoint = moto::shared().endpoint.clone();
    let tmp = tempdir();
    let input_dir = tmp.join("in");
    generate(&input_dir, 40_000, 4, 9, 5000);
    let input = format!("{}/*.jsonl", input_dir.display());
    let config = tmp.join("job.toml");
    std::fs::write(&config, fast_commits()).unwrap();
    let config = config.to_str().unwrap();
    let replay = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "replay", "--input", &input, "--output", out, "--config", config, "-w", "1",
        ];
        args.extend_from_slice(extra);
        tidemark(&endpoint, &args)
    };
    let clean = tmp.join("clean");
    run_ok(replay(clean.to_str().unwrap(), &[]));
    let expected = read_committed(&clean);

    let st = bucket(&endpoint, "tm-two-jobs");
    let root = "s3://tm-two-jobs/out";
    let jobs: Vec<_> = (0..2)
        .map(|_| {
            replay(root, &["--rate", "20000"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    job::assert_one_job_wins(jobs);
    run_ok(tidemark(&endpoint, &["verify", root]));
    let local = tmp.join("from-s3");
    download(&*st, &local);
    assert_same(&expected, &read_committed(&local));
}

#[test]
fn replay_from_s3_inputs_equals_replay_from_local_files() {
    let endpoint = moto::shared().endpoint.clone();
    let tmp = tempdir();
    let input_dir = tmp.join("in");
    generate(&input_dir, 40_000, 4, 21, 5000);
    let config = tmp.join("job.toml");
    std::fs::write(&config, fast_commits()).unwrap();
    let config = config.to_str().unwrap();
    let replay = |input: &str, out: &Path| {
        tidemark(
            &endpoint,
            &[
                "replay",
                "--input",
                input,
                "--output",
                out.to_str().unwrap(),
                "--config",
                config,
                "-w",
                "2",
            ],
        )
    };
    let local_out = tmp.join("local");
    run_ok(replay(
        &format!("{}/*.jsonl", input_dir.display()),
        &local_out,
    ));

    // The same files, gzipped, on S3 — with objects next to them that the
    // pattern must not match (another suffix, a deeper folder).
    let inputs = bucket(&endpoint, "tm-inputs");
    let mut names: Vec<_> = std::fs::read_dir(&input_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4);
    for name in &names {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &std::fs::read(input_dir.join(name)).unwrap()).unwrap();
        inputs
            .put(&format!("backfill/{name}.gz"), &gz.finish().unwrap())
            .unwrap();
    }
    inputs.put("backfill/notes.txt", b"not input").unwrap();
    inputs
        .put("backfill/old/part-99999.jsonl.gz", b"not input either")
        .unwrap();

    let s3_out = tmp.join("from-s3-input");
    run_ok(replay("s3://tm-inputs/out/backfill/*.jsonl.gz", &s3_out));
    let expected = read_committed(&local_out);
    assert!(expected.transactions.len() > 35_000);
    assert_same(&expected, &read_committed(&s3_out));

    // A pattern that matches nothing fails at start, naming it.
    let o = replay("s3://tm-inputs/out/backfill/*.csv", &tmp.join("none"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("matches no object"));
}

/// The job's S3 traffic through a fault proxy in front of moto.
fn proxied(moto_endpoint: &str) -> FaultProxy {
    let addr: std::net::SocketAddr = moto_endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("moto listens on an IP address");
    FaultProxy::start(addr)
}

/// A replay of 60,000 events (a minute of event time: sixty commits) to a
/// local root: what the S3 runs must equal.
fn undisturbed(tmp: &Path, endpoint: &str, config: &str) -> (String, Outputs) {
    let input = generate(&tmp.join("in"), 60_000, 4, 11, 1000);
    let clean = tmp.join("clean");
    run_ok(tidemark(
        endpoint,
        &[
            "replay",
            "--input",
            &input,
            "--output",
            clean.to_str().unwrap(),
            "--config",
            config,
            "-w",
            "2",
        ],
    ));
    (input, read_committed(&clean))
}

/// S3 answering `503 SlowDown` to every other request for a whole run
/// (the start, every write, every commit): the job rides it out, exit 0,
/// and commits exactly what an undisturbed run does.
#[test]
fn s3_slowing_down_half_of_all_requests_changes_nothing() {
    let moto_endpoint = moto::shared().endpoint.clone();
    let tmp = tempdir();
    let config = tmp.join("job.toml");
    std::fs::write(&config, FAST_COMMITS).unwrap();
    let config = config.to_str().unwrap();
    let (input, expected) = undisturbed(&tmp, &moto_endpoint, config);

    let st = bucket(&moto_endpoint, "tm-slow");
    let proxy = proxied(&moto_endpoint);
    proxy.slow_down(0.5);
    let o = tidemark(
        &proxy.endpoint(),
        &[
            "replay",
            "--input",
            &input,
            "--output",
            "s3://tm-slow/out",
            "--config",
            config,
            "-w",
            "2",
        ],
    )
    .stdout(Stdio::null())
    .output()
    .unwrap();
    let (requests, slowed) = proxy.http_counts();
    assert!(
        o.status.success(),
        "exit {:?} after {slowed} of {requests} requests slowed: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        slowed >= 40 && (slowed as f64) > 0.35 * requests as f64,
        "{slowed} of {requests}, {} manifests, {} keys, {} connections",
        manifests(&*st),
        st.list("").unwrap().len(),
        proxy.connections()
    );
    let local = tmp.join("downloaded");
    download(&*st, &local);
    assert_same(&expected, &read_committed(&local));
}

/// S3 unreachable for five minutes in the middle of a replay: first frozen
/// (connections accepted, nothing answered) for 150 s, then refused for
/// 150 s, then back. The process never exits meanwhile, warns within 10 s,
/// shows the stall and the failed attempts in its metrics, keeps its memory
/// within the configured `max_pending_bytes` (and as much again), and ends
/// with exactly an undisturbed run's outputs.
#[test]
fn s3_away_for_five_minutes_mid_replay_changes_nothing() {
    use std::time::{Duration, Instant};
    let moto_endpoint = moto::shared().endpoint.clone();
    let tmp = tempdir();
    let config = tmp.join("job.toml");
    std::fs::write(&config, FAST_COMMITS).unwrap();
    let config = config.to_str().unwrap();
    let (input, expected) = undisturbed(&tmp, &moto_endpoint, config);

    let st = bucket(&moto_endpoint, "tm-away");
    let proxy = proxied(&moto_endpoint);
    let port = tidemark_testkit::launch::free_port();
    // The configured bound on what waits for storage in memory.
    const BOUND_MIB: u64 = 64;
    let observed = tmp.join("observed.toml");
    std::fs::write(
        &observed,
        format!("{FAST_COMMITS}max_pending_bytes = \"{BOUND_MIB}MiB\"\n\n[metrics]\naddress = \"127.0.0.1\"\nport = \"{port}\"\n"),
    )
    .unwrap();
    let config = observed.to_str().unwrap();
    let metric = |name: &str| scrape::sum(&scrape::scrape(port), name, &[]);
    let mut cmd = tidemark(
        &proxy.endpoint(),
        &[
            "replay",
            "--input",
            &input,
            "--output",
            "s3://tm-away/out",
            "--config",
            config,
            "-w",
            "2",
            "--rate",
            "4000",
        ],
    );
    cmd.stdout(Stdio::null());
    let mut job = job::Logged::spawn(cmd);
    // Two commits, then the outage.
    let deadline = Instant::now() + Duration::from_secs(120);
    while manifests(&*st) < 2 {
        job.assert_running("before the outage");
        assert!(Instant::now() < deadline, "no commits");
        std::thread::sleep(Duration::from_millis(50));
    }
    let failures_before = metric("tidemark_checkpoint_failures_total");
    let rss_before = rss_bytes(job.child.id());
    let away = Instant::now();
    proxy.set(Mode::Hang);
    let peak_rss = std::cell::Cell::new(0u64);
    let phase = |until: Duration, job: &mut job::Logged| {
        while away.elapsed() < until {
            job.assert_running(&format!("{:?} into the outage", away.elapsed()));
            peak_rss.set(peak_rss.get().max(rss_bytes(job.child.id())));
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Within seconds the stall shows, before any request has timed out.
    phase(Duration::from_secs(15), &mut job);
    let stalled = metric("tidemark_checkpoint_stalled_seconds");
    assert!(
        stalled >= 5.0,
        "tidemark_checkpoint_stalled_seconds = {stalled} 15 s into the outage"
    );
    phase(Duration::from_secs(150), &mut job);
    proxy.refuse();
    phase(Duration::from_secs(295), &mut job);
    let (stalled, failures) = (
        metric("tidemark_checkpoint_stalled_seconds"),
        metric("tidemark_checkpoint_failures_total"),
    );
    eprintln!("at 295 s: stalled {stalled:.0} s, failures {failures_before} -> {failures}");
    assert!(
        stalled >= 250.0,
        "tidemark_checkpoint_stalled_seconds = {stalled}"
    );
    assert!(
        failures > failures_before,
        "tidemark_checkpoint_failures_total stayed at {failures}"
    );
    phase(Duration::from_secs(300), &mut job);
    proxy.accept();
    let status = job.wait();
    assert!(status.success(), "exit {:?}: {}", status.code(), job.text());
    let warned = job.lines_between(away, away + Duration::from_secs(10), &["\"WARN\""]);
    assert!(
        !warned.is_empty(),
        "no warning within 10 s of the outage's start: {}",
        job.text()
    );
    // The sources wait while epochs cannot be written (back-pressure: at
    // most `max_pending_epochs` intervals ahead of the writers): memory
    // does not grow with the outage.
    eprintln!(
        "RSS before the outage {} MiB, peak during it {} MiB",
        rss_before >> 20,
        peak_rss.get() >> 20
    );
    // What waits is bounded by `max_pending_bytes` (plus the epoch that
    // crossed it); allow as much again for the allocator and the requests
    // being retried.
    assert!(
        peak_rss.get() < rss_before + ((2 * BOUND_MIB) << 20),
        "peak RSS {} MiB, {} MiB before the outage, bound {BOUND_MIB} MiB",
        peak_rss.get() >> 20,
        rss_before >> 20
    );
    let local = tmp.join("downloaded");
    download(&*st, &local);
    assert_same(&expected, &read_committed(&local));
}

/// A process's resident set, from `/proc` (0 once it is gone).
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
