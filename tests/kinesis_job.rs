//! The job reading Kinesis from a real Kinesis API server (kinesalite on
//! loopback, started per test): its committed outputs equal those of
//! `tidemark replay` over the same files, through five kills; and through a
//! split and a merge while producers write, they equal the SPEC computed
//! from the producer's own log of what it put, shard by shard.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tidemark_connectors::kinesis::{
    cmp_sequence, create_stream, discover_shards, merge_shards, put_lines_batched, put_record,
    split_shard, wait_stream_active, KinesisClient, KinesisSettings, ShardInfo,
};
use tidemark_testkit::committed::{assert_same, manifests, read_committed};
use tidemark_testkit::datasets::replayed;
use tidemark_testkit::job::{self, finish, FAST_COMMITS};
use tidemark_testkit::kinesalite::Kinesalite;
use tidemark_testkit::launch::dummy_aws_env;
use tidemark_testkit::reference::{compute_lineage, RefParams};
use tidemark_testkit::{cluster, scrape, tempdir, write};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn client(server: &Kinesalite) -> KinesisClient {
    let mut s = KinesisSettings::new("unused");
    s.endpoint = Some(server.endpoint());
    s.client().unwrap()
}

fn new_stream(c: &KinesisClient, stream: &str, shards: u32) -> Vec<ShardInfo> {
    create_stream(c, stream, shards).unwrap();
    wait_stream_active(c, stream, Duration::from_secs(30)).unwrap();
    discover_shards(c, stream).unwrap()
}

/// File i's lines, in order, into shard i (ExplicitHashKey in its range):
/// Kinesis offset = line number, as in a file replay.
fn put_files(c: &KinesisClient, stream: &str, shards: &[ShardInfo], files: &[PathBuf]) {
    for (f, shard) in files.iter().zip(shards) {
        let bytes = std::fs::read(f).unwrap();
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        let seqs = put_lines_batched(c, stream, shard.starting_hash, &lines).unwrap();
        assert_eq!(seqs.len(), lines.len());
    }
}

fn kinesis_config(dir: &Path, server: &Kinesalite, stream: &str, extra: &str) -> PathBuf {
    write(
        dir,
        &format!("kinesis-{stream}.toml"),
        &format!(
            "{FAST_COMMITS}\n[source]\nkind = \"kinesis\"\n\n[kinesis]\nstream = \"{stream}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n{extra}",
            server.endpoint()
        ),
    )
}

fn tidemark(args: &[&str]) -> Command {
    let mut c = job::command(args);
    dummy_aws_env(&mut c);
    c
}

fn run_cmd(config: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = job::run_command(config, out, extra);
    dummy_aws_env(&mut c);
    c
}

fn verify(out: &Path) {
    finish(
        tidemark(&["verify", out.to_str().unwrap()])
            .spawn()
            .unwrap(),
        "verify",
    );
}

#[test]
fn kinesis_equals_file_replay_on_one_and_two_processes() {
    let tmp = tempdir();
    let server = Kinesalite::start();
    let c = client(&server);
    let (files, expected) = replayed(&tmp, 40_000, 4, 41, 2000);
    let shards = new_stream(&c, "payments", 4);
    put_files(&c, "payments", &shards, &files);
    let port = tidemark_testkit::free_port();
    let config = kinesis_config(
        &tmp,
        &server,
        "payments",
        &format!("[metrics]\nport = \"{port}\"\naddress = \"127.0.0.1\"\nlinger = \"1s\"\n"),
    );

    // replay --kinesis to "now": a bounded read of everything put.
    let out = tmp.join("replay-1x2");
    let mut job = tidemark(&[
        "replay",
        "--kinesis",
        "payments",
        "--from",
        "trim_horizon",
        "--to",
        "now",
        "--output",
        out.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "-w",
        "2",
    ])
    .spawn()
    .unwrap();
    // The last scrape (the job lingers a second after it ends) holds each
    // shard's MillisBehindLatest, the Kinesis lag the alerts watch.
    let mut last = None;
    while job.try_wait().unwrap().is_none() {
        if let Some((200, body)) = scrape::get(port, "/metrics") {
            last = Some(scrape::parse(&body));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    finish(job, "replay --kinesis");
    let lag: Vec<_> = last
        .expect("scraped")
        .into_iter()
        .filter(|s| s.0 == "tidemark_source_lag_seconds")
        .collect();
    assert_eq!(lag.len(), 4, "one per shard: {lag:?}");
    assert!(lag
        .iter()
        .all(|s| s.1["source"] == "transactions" && s.2 >= 0.0));
    assert_same(&expected, &read_committed(&out));
    verify(&out);

    // Two processes: process 0 reads every shard, both compute.
    let bounded = kinesis_config(
        &tmp,
        &server,
        "payments",
        &format!("end = \"{}\"\n", now_ms()),
    );
    let out = tmp.join("run-2x1");
    cluster::run(&tmp, 2, 1, |args| run_cmd(&bounded, &out, args));
    assert_same(&expected, &read_committed(&out));
}

#[test]
fn kinesis_kills_at_five_moments_end_equal() {
    let tmp = tempdir();
    let server = Kinesalite::start();
    let c = client(&server);
    let (files, expected) = replayed(&tmp, 40_000, 4, 43, 1000);
    let shards = new_stream(&c, "payments", 4);
    put_files(&c, "payments", &shards, &files);
    // The end is fixed before the first start, so every restart reads the
    // same records.
    let config = kinesis_config(
        &tmp,
        &server,
        "payments",
        &format!("end = \"{}\"\n", now_ms() + 1),
    );
    let out = tmp.join("out");
    job::kill_at_five_moments(
        || {
            run_cmd(&config, &out, &["-w", "2", "--rate", "6000"])
                .spawn()
                .unwrap()
        },
        || manifests(&out),
        || {},
    );
    finish(
        run_cmd(&config, &out, &["-w", "2"]).spawn().unwrap(),
        "the last run",
    );
    assert_same(&expected, &read_committed(&out));
    verify(&out);
}

/// One put, as the producer logged it.
struct Put {
    shard: u32,
    seq: String,
    customer: String,
    id: String,
    bytes: Vec<u8>,
}

fn partition_of(shard_id: &str) -> u32 {
    shard_id.rsplit('-').next().unwrap().parse().unwrap()
}

/// Puts valid records for 20 customers of its own (the partition key)
/// until `stop`, event time 20 ms apart, with every 53rd record 15 s behind
/// (late in its shard), logging every put. While `behind` is above zero,
/// the next records are 15 s behind too (spanning a resharding, the first
/// records of new child shards: late only through the watermark they
/// inherit).
/// Customer j's records go to the shard holding hash key `keys[j]`, every
/// record `lag_ms` further behind.
#[allow(clippy::too_many_arguments)]
fn produce(
    c: KinesisClient,
    stream: &str,
    who: usize,
    lag_ms: i64,
    keys: Vec<u128>,
    stop: Arc<AtomicBool>,
    behind: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Put>>>,
) {
    let base: i64 = 1_704_067_200_000;
    let mut i: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let j = i as usize % keys.len();
        let customer = format!("p{who}c{j}");
        let mut at = base + i * 20 - lag_ms;
        let now_behind = behind
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if i % 53 == 52 || now_behind {
            at -= 15_000;
        }
        let ts = tidemark_dataflow::rfc3339::format_rfc3339_ms(at);
        let id = format!("p{who}t{i}");
        let bytes = format!(
            r#"{{"transaction_id":"{id}","customer_id":"{customer}","amount":{}.25,"currency":"EUR","merchant":"m{}","category":"k","status":"COMPLETED","timestamp":"{ts}"}}"#,
            1 + i % 500,
            i % 7
        )
        .into_bytes();
        let (shard, seq) = put_record(&c, stream, &customer, Some(keys[j]), &bytes, None).unwrap();
        log.lock().unwrap().push(Put {
            shard: partition_of(&shard),
            seq,
            customer,
            id,
            bytes,
        });
        i += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn resharding_mid_run_loses_and_repeats_nothing() {
    let tmp = tempdir();
    let server = Kinesalite::start();
    let c = client(&server);
    let shards = new_stream(&c, "live", 4);
    let run_for = Duration::from_secs(24);
    let started = now_ms();
    // The run ends at a fixed time a little after the producers stop.
    let config = kinesis_config(
        &tmp,
        &server,
        "live",
        &format!(
            "end = \"{}\"\n",
            started + run_for.as_millis() as i64 + 1000
        ),
    );
    let out = tmp.join("out");
    // One worker: its frontier is the least watermark of every shard.
    let job = run_cmd(&config, &out, &["-w", "1"]).spawn().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let behind = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    // Two producers over all shards, and one 30 s behind them into shard 0,
    // which holds the job's frontier back: a child shard's record behind
    // its parent's watermark is then still above the frontier, and only
    // the inherited watermark makes it late.
    let start = shards[1].starting_hash;
    let step = (u128::MAX - start) / 20;
    let spread: Vec<u128> = (0..20).map(|j| start + step * j + step / 2).collect();
    let into_0: Vec<u128> = vec![shards[0].starting_hash; 5];
    let producers: Vec<_> = [(0, 0, spread.clone()), (1, 0, spread), (2, 30_000, into_0)]
        .into_iter()
        .map(|(who, lag_ms, keys)| {
            let (c, stop, log) = (c.clone(), stop.clone(), log.clone());
            let behind = behind.clone();
            std::thread::spawn(move || produce(c, "live", who, lag_ms, keys, stop, behind, log))
        })
        .collect();
    // While the job reads and the producers write: split shard 1 in the
    // middle of its range, then merge shards 2 and 3 (adjacent).
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let mid = shards[1].starting_hash + (shards[1].ending_hash - shards[1].starting_hash) / 2;
    // A run of records behind, spanning the resharding, so the children's
    // first records are among them.
    behind.store(300, Ordering::Relaxed);
    split_shard(&c, "live", &shards[1].id, mid).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    behind.store(300, Ordering::Relaxed);
    merge_shards(&c, "live", &shards[2].id, &shards[3].id).unwrap();
    while t0.elapsed() < run_for - Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().unwrap();
    }
    finish(job, "the run through the resharding");
    verify(&out);

    let log = std::mem::take(&mut *log.lock().unwrap());
    let listing = discover_shards(&c, "live").unwrap();
    assert_eq!(
        listing.len(),
        7,
        "4 shards, 2 from the split, 1 from the merge"
    );
    let written: BTreeSet<u32> = log.iter().map(|p| p.shard).collect();
    assert!(
        written.len() >= 6,
        "puts must land in parents and children alike: {written:?}"
    );

    // The reference: each shard's records in sequence-number order, a child
    // continuing its first listed parent.
    let max = listing.iter().map(|s| s.partition).max().unwrap() as usize;
    let mut by_shard: Vec<Vec<&Put>> = vec![Vec::new(); max + 1];
    for p in &log {
        by_shard[p.shard as usize].push(p);
    }
    for v in &mut by_shard {
        v.sort_by(|a, b| cmp_sequence(&a.seq, &b.seq));
    }
    let mut inherit = vec![None; max + 1];
    for s in &listing {
        inherit[s.partition as usize] = s
            .parents
            .iter()
            .find(|p| listing.iter().any(|l| l.partition == **p))
            .map(|p| *p as usize);
    }
    let partitions: Vec<Vec<Vec<u8>>> = by_shard
        .iter()
        .map(|v| v.iter().map(|p| p.bytes.clone()).collect())
        .collect();
    let expected = compute_lineage(&partitions, &inherit, &RefParams::default());
    let committed = read_committed(&out);
    // Some child shard's records are late only through the watermark it
    // inherits: the rule is exercised.
    let fresh = compute_lineage(&partitions, &vec![None; max + 1], &RefParams::default());
    assert!(
        expected.rejects.len() > fresh.rejects.len(),
        "no record is late through inheritance: {} vs {}",
        expected.rejects.len(),
        fresh.rejects.len()
    );
    assert_same(&expected, &committed);

    // Directly: every put is committed exactly once (kept or rejected) ...
    let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
    for (p, o) in committed
        .transactions
        .iter()
        .map(|t| (t.partition, t.offset))
        .chain(committed.rejects.iter().map(|r| (r.partition, r.offset)))
    {
        *seen.entry((p, o)).or_default() += 1;
    }
    assert_eq!(seen.len(), log.len(), "records committed vs put");
    assert!(seen.values().all(|n| *n == 1));
    // ... and each key's committed records, in put order, move only from a
    // shard to its descendants, in offset order within a shard.
    let mut position: HashMap<String, (u32, i64)> = committed
        .transactions
        .iter()
        .map(|t| (t.transaction_id.clone(), (t.partition as u32, t.offset)))
        .collect();
    for r in &committed.rejects {
        let v: serde_json::Value = serde_json::from_str(&r.raw).unwrap();
        let id = v["transaction_id"].as_str().unwrap().to_owned();
        position.insert(id, (r.partition as u32, r.offset));
    }
    let parents: BTreeMap<u32, Vec<u32>> = listing
        .iter()
        .map(|s| (s.partition, s.parents.clone()))
        .collect();
    let descends = |child: u32, ancestor: u32| -> bool {
        let mut todo = vec![child];
        while let Some(s) = todo.pop() {
            if s == ancestor {
                return true;
            }
            todo.extend(parents.get(&s).into_iter().flatten());
        }
        false
    };
    let mut last: HashMap<&str, (u32, i64)> = HashMap::new();
    for p in &log {
        let now = position[&p.id];
        if let Some(&(s, o)) = last.get(p.customer.as_str()) {
            assert!(
                if s == now.0 {
                    o < now.1
                } else {
                    descends(now.0, s)
                },
                "{}: {} at shard {} offset {} after shard {s} offset {o}",
                p.customer,
                p.id,
                now.0,
                now.1
            );
        }
        last.insert(p.customer.as_str(), now);
    }
}
