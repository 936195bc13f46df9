//! Kinesis endpoint outages are waited out: the job reads kinesalite only
//! through a [`FaultProxy`], which hangs (connections open, no answers) for
//! two minutes and then refuses connections for two more, mid-run. A shard
//! with records unread is waiting, not idle, so it holds the frontier: no
//! record becomes LATE because of the outage, the job never exits, it
//! warns naming the shard, and what it commits equals the independent
//! reference — for a bounded replay, and for a following job stopped after
//! it caught up and restarted bounded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tidemark_connectors::kinesis::{
    create_stream, discover_shards, put_lines_batched, wait_stream_active, KinesisClient,
    KinesisSettings,
};
use tidemark_testkit::committed::{assert_same, committed_offsets, late, read_committed};
use tidemark_testkit::datasets::{generate, jsonl_files};
use tidemark_testkit::fault_proxy::{FaultProxy, Mode};
use tidemark_testkit::job::{self, finish, Logged, FAST_COMMITS};
use tidemark_testkit::kinesalite::Kinesalite;
use tidemark_testkit::launch::dummy_aws_env;
use tidemark_testkit::reference::{compute_records, read_records, Outputs, RefParams};
use tidemark_testkit::{scrape, tempdir, write};

/// Each phase of the outage (hung, then refused), as the issue states it:
/// four times the default `idle_timeout`, so a job that let a silent shard
/// go idle would move the frontier past its unread records.
const OUTAGE: Duration = Duration::from_secs(120);

/// Read rate of the jobs (events/s): slow enough that the outage starts
/// with every dense shard's records partly unread (a GetRecords page holds
/// up to 10,000), fast enough to finish soon after.
const RATE: &str = "4000";

const STREAM: &str = "payments";

/// The stream and what the SPEC (the independent reference) says it
/// produces.
struct Dataset {
    expected: Outputs,
    /// Records put.
    total: u64,
}

/// 8 shards: 0–3 dense (60,000 records over 60 s of event time, so each
/// needs two GetRecords pages), 4–7 sparse (4,000 over 200 s): read at the
/// same pace the sparse shards run far ahead in event time. File i goes
/// into shard i in order, so a record's offset is its line number, as the
/// reference numbers them.
fn outage_stream(dir: &Path, server: &Kinesalite, seed: u64) -> Dataset {
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, events, per_sec) in [("dense", 60_000, 1000), ("sparse", 4_000, 20)] {
        let input = dir.join(name);
        generate(&input, events, 4, seed, per_sec);
        files.extend(jsonl_files(&input));
    }
    let c = client(&server.endpoint());
    create_stream(&c, STREAM, files.len() as u32).unwrap();
    wait_stream_active(&c, STREAM, Duration::from_secs(30)).unwrap();
    let shards = discover_shards(&c, STREAM).unwrap();
    let records: Vec<Vec<Vec<u8>>> = files.iter().map(|f| read_records(f)).collect();
    std::thread::scope(|s| {
        for (lines, shard) in records.iter().zip(&shards) {
            let c = c.clone();
            s.spawn(move || {
                let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
                let seqs = put_lines_batched(&c, STREAM, shard.starting_hash, &lines).unwrap();
                assert_eq!(seqs.len(), lines.len());
            });
        }
    });
    Dataset {
        total: records.iter().map(|r| r.len() as u64).sum(),
        expected: compute_records(&records, &RefParams::default()),
    }
}

fn client(endpoint: &str) -> KinesisClient {
    let mut s = KinesisSettings::new("unused");
    s.endpoint = Some(endpoint.to_owned());
    s.client().unwrap()
}

/// When each phase of [`outage`] began and ended.
struct Phases {
    hung: Instant,
    refused: Instant,
    healed: Instant,
}

/// Hangs the proxy for [`OUTAGE`], then refuses connections for
/// [`OUTAGE`], then passes everything again; the job must keep running
/// throughout.
fn outage(proxy: &FaultProxy, job: &mut Logged) -> Phases {
    let hold = |job: &mut Logged, what: &str| {
        let until = Instant::now() + OUTAGE;
        while Instant::now() < until {
            job.assert_running(what);
            std::thread::sleep(Duration::from_millis(500));
        }
        job.assert_running(what);
    };
    let hung = Instant::now();
    proxy.set(Mode::Hang);
    hold(job, "endpoint hung");
    let refused = Instant::now();
    proxy.refuse();
    hold(job, "endpoint refusing connections");
    proxy.accept();
    proxy.heal();
    Phases {
        hung,
        refused,
        healed: Instant::now(),
    }
}

/// The reader warned, naming the stream and a shard, in each phase, and
/// the job said a shard has records unread (it holds the frontier).
fn assert_warned(job: &Logged, p: &Phases) {
    let shard = format!("Kinesis stream {STREAM} shard shardId-");
    for (what, from, to) in [
        ("hung", p.hung, p.refused),
        ("refused", p.refused, p.healed),
    ] {
        let warned = job.lines_between(from, to, &[&shard, "backing off", "WARN"]);
        assert!(
            !warned.is_empty(),
            "no backoff warning while the endpoint {what}: {}",
            job.text()
        );
    }
    let unread = job.lines_between(p.hung, p.healed, &["has records unread", &shard]);
    assert!(
        !unread.is_empty(),
        "no warning named a waiting shard: {}",
        job.text()
    );
}

fn config(dir: &Path, name: &str, text: &str) -> PathBuf {
    write(dir, name, &format!("{FAST_COMMITS}\n{text}"))
}

fn kinesis_section(endpoint: &str, extra: &str) -> String {
    format!(
        "[kinesis]\nstream = \"{STREAM}\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n{extra}"
    )
}

#[test]
fn a_bounded_replay_waits_out_a_hung_then_refusing_endpoint() {
    let started = Instant::now();
    let tmp = tempdir();
    let server = Kinesalite::start();
    let data = outage_stream(&tmp, &server, 51);
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap());
    let cfg = config(&tmp, "replay.toml", &kinesis_section(&proxy.endpoint(), ""));
    let out = tmp.join("out");
    let mut cmd = job::command(&[
        "replay",
        "--kinesis",
        STREAM,
        "--from",
        "trim_horizon",
        "--to",
        "now",
        "--output",
        out.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "-w",
        "2",
        "--rate",
        RATE,
    ]);
    dummy_aws_env(&mut cmd);
    let mut job = Logged::spawn(cmd);
    job.await_commits(&out, 2);
    let read_before = committed_offsets(&out);
    let phases = outage(&proxy, &mut job);
    let status = job.wait();
    assert!(
        status.success(),
        "the replay failed ({status}): {}",
        job.text()
    );
    assert!(
        read_before * 2 < data.total,
        "the outage began after most records were committed ({read_before} of {})",
        data.total
    );
    let actual = read_committed(&out);
    assert_eq!(late(&actual), late(&data.expected), "LATE rejects");
    assert_same(&data.expected, &actual);
    assert_warned(&job, &phases);
    eprintln!("bounded replay through the outage: {:?}", started.elapsed());
}

#[test]
fn a_following_job_waits_out_a_hung_then_refusing_endpoint() {
    let started = Instant::now();
    let tmp = tempdir();
    let server = Kinesalite::start();
    let data = outage_stream(&tmp, &server, 52);
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap());
    let port = tidemark_testkit::free_port();
    let follow = config(
        &tmp,
        "follow.toml",
        &format!(
            "[source]\nkind = \"kinesis\"\n\n{}\n[metrics]\nport = \"{port}\"\naddress = \"127.0.0.1\"\n",
            kinesis_section(&proxy.endpoint(), "")
        ),
    );
    let out = tmp.join("out");
    let mut cmd = job::run_command(&follow, &out, &["-w", "2", "--rate", RATE]);
    dummy_aws_env(&mut cmd);
    let mut job = Logged::spawn(cmd);
    job.await_commits(&out, 2);
    // Midway through the hang, the metrics show a stalled shard and the
    // failed calls.
    let scraper = std::thread::spawn(move || {
        std::thread::sleep(OUTAGE / 2);
        let m = scrape::scrape(port);
        (
            scrape::sum(&m, "tidemark_source_stalled_seconds", &[]),
            scrape::sum(&m, "tidemark_source_errors_total", &[("kind", "transient")]),
        )
    });
    let phases = outage(&proxy, &mut job);
    let (stalled, errors) = scraper.join().unwrap();
    assert!(stalled > 0.0, "no shard stalled mid-outage: {stalled}");
    assert!(errors > 0.0, "no failed call counted mid-outage: {errors}");
    // Caught up: most records read and committed after the outage.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        job.assert_running("following after the outage");
        let committed = committed_offsets(&out);
        if committed * 10 >= data.total * 9 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stuck at {committed} of {} committed: {}",
            data.total,
            job.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: a plain signal to a child this test started.
    unsafe { libc::kill(job.child.id() as i32, libc::SIGTERM) };
    let status = job.wait();
    assert_eq!(status.code(), Some(0), "stop on SIGTERM: {}", job.text());
    // The rest, bounded at now, straight from the server.
    let bounded = config(
        &tmp,
        "bounded.toml",
        &format!(
            "[source]\nkind = \"kinesis\"\n\n{}",
            kinesis_section(&server.endpoint(), "end = \"now\"\n")
        ),
    );
    let mut restart = job::run_command(&bounded, &out, &["-w", "2"]);
    dummy_aws_env(&mut restart);
    finish(restart.spawn().unwrap(), "bounded restart");
    let actual = read_committed(&out);
    assert_eq!(late(&actual), late(&data.expected), "LATE rejects");
    assert_same(&data.expected, &actual);
    assert_warned(&job, &phases);
    eprintln!("following job through the outage: {:?}", started.elapsed());
}
