//! The Kafka broker away for minutes, injected by a fault proxy that every
//! connection to the broker passes (it advertises the proxy's address):
//! hung (connections open, nothing answers) for two minutes, then refused
//! (port closed, connections reset) for two more, mid-run. A partition
//! with records unread is waiting, not idle, so it holds the frontier and
//! none of its records becomes LATE however long the broker is away; the
//! job never exits, warns, and its committed outputs equal the reference's.
//! The alerts and dead-letter topics, behind the same proxy, are waited out
//! the same way: commits go on and publishing catches up.
//!
//! The tests run in parallel (each starts its own broker and proxy), so the
//! binary takes about as long as the longest.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::*;
use tidemark_testkit::committed::{assert_same, late, manifests, read_committed};
use tidemark_testkit::datasets::{generate, jsonl_files, replayed};
use tidemark_testkit::fault_proxy::{FaultProxy, Mode};
use tidemark_testkit::job::{self, finish, Logged};
use tidemark_testkit::reference::Outputs;
use tidemark_testkit::tansu::Tansu;
use tidemark_testkit::{scrape, tempdir, write};

/// Each phase of the outage: four times the default `idle_timeout` (30 s),
/// so a job that counted a silent partition as idle would move the
/// frontier past its unread records.
const OUTAGE: Duration = Duration::from_secs(120);

/// Fast commits, and a prefetch of a few KiB per partition (librdkafka's
/// fetch queue would otherwise hold most of these records before the
/// outage begins, and the outage would stall nothing).
const OUTAGE_CONFIG: &str = "[checkpoint]\ninterval = \"1s\"\nmin_wall_interval = \"0\"\n\n\
    [kafka.properties]\n\"queued.max.messages.kbytes\" = \"16\"\n\"queued.min.messages\" = \"50\"\n\
    \"fetch.max.bytes\" = \"32768\"\n\"message.max.bytes\" = \"16384\"\n\"max.partition.fetch.bytes\" = \"4096\"\n";

/// The sinks' settings (under `[kafka]`).
const SINKS: &str = "alerts_topic = \"alerts\"\ndead_letter_topic = \"dead-letters\"\n";

/// Sleeps `d`, asserting every second that the job is still running.
fn alive_for(job: &mut Logged, d: Duration, what: &str) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        job.assert_running(&format!("while the broker was {what}"));
        std::thread::sleep(Duration::from_secs(1).min(end - Instant::now()));
    }
}

/// The broker hung for [`OUTAGE`], then refusing for [`OUTAGE`], then back;
/// the job must run all along.
fn outage(proxy: &FaultProxy, job: &mut Logged) {
    proxy.set(Mode::Hang);
    alive_for(job, OUTAGE, "hung");
    proxy.refuse();
    alive_for(job, OUTAGE, "refusing connections");
    proxy.accept();
}

/// 8 partitions on a fresh broker, and what the SPEC (the independent
/// reference, not the job) says they produce. Partitions 0–3 are dense
/// (40,000 records over 40 s of event time), 4–7 sparse (4,000 over 200 s):
/// read at the same pace, the sparse ones run far ahead in event time, so a
/// job that let silent partitions go idle would move the frontier to the
/// sparse partitions' watermark, past the dense partitions' unread records.
fn outage_dataset(dir: &Path, broker: &Tansu, seed: u64) -> Outputs {
    use tidemark_testkit::reference::{compute_records, read_records, RefParams};
    let mut files = Vec::new();
    for (name, events, per_sec) in [("dense", 40_000, 1000), ("sparse", 4_000, 20)] {
        let input = dir.join(name);
        generate(&input, events, 4, seed, per_sec);
        files.extend(jsonl_files(&input));
    }
    produce(broker, "payments", &files);
    broker.create_topic("alerts", 3);
    broker.create_topic("dead-letters", 3);
    let records: Vec<Vec<Vec<u8>>> = files.iter().map(|f| read_records(f)).collect();
    compute_records(&records, &RefParams::default())
}

/// A bounded replay (`replay --kafka … --to latest`, rate-limited so the
/// broker goes away mid-run) through the outage: exit 0, a warning naming
/// the waiting partitions, exactly the reference's outputs (no extra LATE)
/// and every committed anomaly and reject in the sinks.
#[test]
fn a_bounded_replay_rides_out_a_broker_hung_then_refusing_for_two_minutes_each() {
    let tmp = tempdir();
    let (broker, proxy) = Tansu::start_behind_proxy();
    let expected = outage_dataset(&tmp, &broker, 41);
    let config = write(
        &tmp,
        "outage.toml",
        &format!("{OUTAGE_CONFIG}\n[kafka]\n{SINKS}"),
    );
    let out = tmp.join("out");
    let mut cmd = Command::new(job::bin());
    cmd.args([
        "replay",
        "--kafka",
        &broker.brokers(),
        "--topic",
        "payments",
    ])
    .args(["--from", "earliest", "--to", "latest", "-w", "2"])
    .args(["--rate", "8000", "--output", out.to_str().unwrap()])
    .args(["--config", config.to_str().unwrap()])
    .env("TIDEMARK_LOG", "warn")
    .stdout(Stdio::null());
    let mut job = Logged::spawn(cmd);
    job.await_commits(&out, 2);
    outage(&proxy, &mut job);
    let status = job.wait();
    let log = job.text();
    assert!(status.success(), "the replay failed: {log}");
    let actual = read_committed(&out);
    assert_eq!(late(&actual), late(&expected), "LATE rejects");
    assert_same(&expected, &actual);
    check_sinks(&broker, &expected);
    assert!(
        log.contains("has records unread") && log.contains("topic payments partition"),
        "no warning named a waiting partition: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// Following the topic (no end) through the outage, with the sinks on the
/// same broker; stopped once it has committed most of the records, then
/// restarted bounded (`end = latest`): the committed outputs are exactly
/// the reference's, and the sinks hold every committed anomaly and reject.
#[test]
fn a_following_job_rides_out_a_broker_hung_then_refusing_for_two_minutes_each() {
    let tmp = tempdir();
    let (broker, proxy) = Tansu::start_behind_proxy();
    let expected = outage_dataset(&tmp, &broker, 43);
    let total: u64 = ends(&broker, "payments", 8).iter().sum();
    let follow = write(
        &tmp,
        "follow.toml",
        &format!(
            "[source]\nkind = \"kafka\"\n\n{OUTAGE_CONFIG}\n[kafka]\nbrokers = \"{}\"\ntopics = [\"payments\"]\ngroup_id = \"follower\"\n{SINKS}",
            broker.brokers()
        ),
    );
    let out = tmp.join("out");
    let mut job = Logged::spawn(job::run_command(
        &follow,
        &out,
        &["-w", "2", "--rate", "3000"],
    ));
    job.await_commits(&out, 2);
    outage(&proxy, &mut job);
    // Most records read and committed after the outage: the group's
    // offsets mirror the committed positions.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        job.assert_running("catching up after the outage");
        let committed: u64 = group_offsets(&broker, "payments", "follower", 8)
            .iter()
            .map(|o| o.unwrap_or(0))
            .sum();
        if committed * 10 >= total * 9 {
            break;
        }
        assert!(Instant::now() < deadline, "stuck at {committed} of {total}");
        std::thread::sleep(Duration::from_millis(200));
    }
    job.child.kill().unwrap();
    job.wait();
    let log = job.text();
    assert!(
        log.contains("has records unread"),
        "no warning named a waiting partition: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    let bounded = kafka_config_with(&tmp, &broker, "payments", "follower", SINKS);
    finish(
        job::run_command(&bounded, &out, &["-w", "2"])
            .spawn()
            .unwrap(),
        "bounded restart",
    );
    let actual = read_committed(&out);
    assert_eq!(late(&actual), late(&expected), "LATE rejects");
    assert_same(&expected, &actual);
    check_sinks(&broker, &expected);
}

/// How long the sinks' broker is hung, then refusing, in the sink test.
const SINK_OUTAGE: Duration = Duration::from_secs(40);

/// A file replay publishing to the alerts and dead-letter topics, whose
/// broker is hung and then refusing mid-run: commits go on all along (the
/// sinks never hold the dataflow back), a warning names the waiting epoch
/// within 10 s, the sinks' waiting gauge moves, and once the broker is back
/// the run ends with exit 0 and the topics hold every committed anomaly and
/// reject.
#[test]
fn commits_go_on_while_the_sinks_broker_is_away_and_publishing_catches_up() {
    let tmp = tempdir();
    let (broker, proxy) = Tansu::start_behind_proxy();
    broker.create_topic("alerts", 3);
    broker.create_topic("dead-letters", 3);
    let (files, expected) = replayed(&tmp.join("in"), 60_000, 4, 45, 1000);
    let port = tidemark_testkit::launch::free_port();
    let config = write(
        &tmp,
        "sinks.toml",
        &format!(
            "{}\n[kafka]\nbrokers = \"{}\"\n{SINKS}\n[metrics]\naddress = \"127.0.0.1\"\nport = \"{port}\"\n",
            job::FAST_COMMITS,
            broker.brokers()
        ),
    );
    let out = tmp.join("out");
    let inputs: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    let mut cmd = Command::new(job::bin());
    cmd.args(["replay", "--input"])
        .args(&inputs)
        .args(["--rate", "500", "--output", out.to_str().unwrap()])
        .args(["--config", config.to_str().unwrap()])
        .env("TIDEMARK_LOG", "warn")
        .stdout(Stdio::null());
    let mut job = Logged::spawn(cmd);
    job.await_commits(&out, 2);
    proxy.set(Mode::Hang);
    let away = Instant::now();
    let hung = manifests(&out);
    // Waiting is reported at 5 s: by 10 s the gauge shows it.
    std::thread::sleep(Duration::from_secs(10));
    let waiting = scrape::sum(&scrape::scrape(port), "tidemark_sink_waiting_seconds", &[]);
    assert!(waiting >= 4.0, "tidemark_sink_waiting_seconds = {waiting}");
    alive_for(&mut job, SINK_OUTAGE - Duration::from_secs(10), "hung");
    proxy.refuse();
    alive_for(&mut job, SINK_OUTAGE, "refusing connections");
    let during = manifests(&out) - hung;
    assert!(
        during >= 10,
        "only {during} commits while the sinks were away"
    );
    proxy.accept();
    let status = job.wait();
    let log = job.text();
    assert!(status.success(), "the replay failed: {log}");
    assert_same(&expected, &read_committed(&out));
    check_sinks(&broker, &expected);
    let warned = job.lines_between(
        away,
        away + Duration::from_secs(10),
        &["not delivered after", "waiting for the brokers"],
    );
    assert!(
        !warned.is_empty(),
        "no warning about the sinks' wait within 10 s: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
