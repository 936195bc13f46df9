//! The job reading Kafka from a real broker (tansu on loopback, started per
//! test): its committed outputs equal those of `tidemark replay` over the
//! same files, whatever the cluster shape, through kills of the job and of
//! the broker; the group's committed offsets show the job's progress.
//! Long broker outages are `kafka_outage.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kafka::*;
use tidemark_connectors::kafka::{produce_lines, KafkaSettings};
use tidemark_testkit::committed::{assert_same, manifests, read_committed};
use tidemark_testkit::datasets::{generate, generate_with_merchants, jsonl_files, replayed};
use tidemark_testkit::job::{self, await_commits, finish, Logged, FAST_COMMITS};
use tidemark_testkit::tansu::Tansu;
use tidemark_testkit::{cluster, scrape, tempdir, write};

#[test]
fn kafka_equals_file_replay_across_cluster_shapes_and_mirrors_offsets() {
    let tmp = tempdir();
    let broker = Tansu::start();

    // 8 partitions: 1 process × 2 workers, and 2 processes × 1 worker.
    let (files, expected) = replayed(&tmp.join("eight"), 48_000, 8, 31, 5000);
    produce(&broker, "payments", &files);
    let config = kafka_config(&tmp, &broker, "payments", "tidemark-a");
    let out = tmp.join("kafka-1x2");
    finish(
        job::run_command(&config, &out, &["-w", "2"])
            .spawn()
            .unwrap(),
        "1x2",
    );
    assert_same(&expected, &read_committed(&out));
    // The group's offsets are the job's committed positions: the end.
    let end = ends(&broker, "payments", 8);
    assert_eq!(
        group_offsets(&broker, "payments", "tidemark-a", 8),
        end.iter().map(|e| Some(*e)).collect::<Vec<_>>()
    );

    let config = kafka_config(&tmp, &broker, "payments", "tidemark-b");
    let out = tmp.join("kafka-2x1");
    cluster::run(&tmp, 2, 1, |args| job::run_command(&config, &out, args));
    assert_same(&expected, &read_committed(&out));

    // 2 partitions, 3 workers: one worker owns none and must not hold the
    // frontier back; several epochs commit and the job ends.
    let (files, expected) = replayed(&tmp.join("two"), 20_000, 2, 32, 2000);
    produce(&broker, "narrow", &files);
    let port = tidemark_testkit::free_port();
    let metrics = format!("[metrics]\nport = \"{port}\"\naddress = \"127.0.0.1\"\n");
    let config = kafka_config_with(&tmp, &broker, "narrow", "tidemark-c", &metrics);
    let out = tmp.join("kafka-1x3");
    let job = job::run_command(&config, &out, &["-w", "3", "--rate", "10000"])
        .spawn()
        .unwrap();
    // Mid-run, the source lag the alerts watch: records between the
    // committed positions and the partitions' high watermarks.
    let mut lag = Vec::new();
    while lag.len() < 2 && manifests(&out) < 6 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        if let Some((200, body)) = scrape::get(port, "/metrics") {
            lag = scrape::parse(&body)
                .into_iter()
                .filter(|s| s.0 == "tidemark_source_lag_records" && s.2 > 0.0)
                .collect();
        }
    }
    assert_eq!(lag.len(), 2, "lag of both partitions mid-run: {lag:?}");
    assert!(lag
        .iter()
        .all(|s| s.2 <= 20_000.0 && s.1["source"] == "transactions"));
    finish(job, "1x3");
    assert_same(&expected, &read_committed(&out));
    assert!(
        manifests(&out) > 3,
        "the frontier advanced through several epochs"
    );

    // Several topics in one job: partitions numbered topic by topic, as
    // the two file sets are numbered in path order.
    let both = tmp.join("both-files");
    let files_cfg = write(&tmp, "fast.toml", FAST_COMMITS);
    job::run_ok(&[
        "replay",
        "--input",
        &format!("{}/eight/in/*.jsonl", tmp.display()),
        &format!("{}/two/in/*.jsonl", tmp.display()),
        "--output",
        both.to_str().unwrap(),
        "--config",
        files_cfg.to_str().unwrap(),
    ]);
    let config = write(
        &tmp,
        "two-topics.toml",
        &format!(
            "{FAST_COMMITS}\n[source]\nkind = \"kafka\"\n\n[kafka]\nbrokers = \"{}\"\ntopics = [\"payments\", \"narrow\"]\nend = \"latest\"\n",
            broker.brokers()
        ),
    );
    let out = tmp.join("kafka-two-topics");
    finish(
        job::run_command(&config, &out, &["-w", "2"])
            .spawn()
            .unwrap(),
        "two topics",
    );
    assert_same(&read_committed(&both), &read_committed(&out));

    // The bounded replay command reads the same range.
    let out = tmp.join("replay-kafka");
    job::run_ok(&[
        "replay",
        "--kafka",
        &broker.brokers(),
        "--topic",
        "narrow",
        "--from",
        "earliest",
        "--to",
        "latest",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_same(&expected, &read_committed(&out));
}

#[test]
fn kafka_kills_of_job_and_broker_end_in_equal_outputs() {
    let tmp = tempdir();
    let mut broker = Tansu::start();
    let (files, expected) = replayed(&tmp, 40_000, 4, 33, 1000);
    produce(&broker, "payments", &files);
    let total: u64 = ends(&broker, "payments", 4).iter().sum();
    broker.create_topic("alerts", 3);
    broker.create_topic("dead-letters", 3);
    let config = kafka_config_with(
        &tmp,
        &broker,
        "payments",
        "tidemark",
        "alerts_topic = \"alerts\"\ndead_letter_topic = \"dead-letters\"\n",
    );
    let out = tmp.join("out");

    let mut lag_seen = false;
    let mut grew = false;
    job::kill_at_five_moments(
        || {
            job::run_command(&config, &out, &["-w", "2", "--rate", "6000"])
                .spawn()
                .unwrap()
        },
        || manifests(&out),
        || {
            // Mid-run, the group shows progress short of the end: lag.
            let committed: u64 = group_offsets(&broker, "payments", "tidemark", 4)
                .iter()
                .map(|o| o.unwrap_or(0))
                .sum();
            lag_seen |= committed > 0 && committed < total;
            // Records produced after the first start are past the run's
            // end (`latest` as of its first start): restarts must not read
            // them either.
            if !grew {
                grew = true;
                let text = std::fs::read(&files[0]).unwrap();
                let extra: Vec<&[u8]> = text.split(|b| *b == b'\n').take(500).collect();
                let s = KafkaSettings::new(broker.brokers(), "late-producer");
                produce_lines(&s, "payments", 0, &extra).unwrap();
            }
        },
    );
    assert!(
        lag_seen,
        "the group's offsets never showed a partial position"
    );

    // The broker dies mid-run and comes back: the job waits and finishes.
    let child = job::run_command(&config, &out, &["-w", "2", "--rate", "10000"])
        .spawn()
        .unwrap();
    let before = manifests(&out);
    while manifests(&out) < before + 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut child = child;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the job ended before the broker died"
    );
    broker.kill();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the job must wait for the broker, not end"
    );
    broker.restart();
    finish(child, "the run through a broker restart");
    assert_same(&expected, &read_committed(&out));
    check_sinks(&broker, &expected);
}

#[test]
fn null_binary_and_oversized_messages_are_rejects_not_crashes() {
    use tidemark_connectors::kafka::{produce_records, ProduceRecord};
    use tidemark_testkit::reference::{compute_records, RefParams};
    let tmp = tempdir();
    let broker = Tansu::start();
    let (files, _) = replayed(&tmp, 2_000, 2, 34, 500);
    broker.create_topic("mixed", 2);
    // Each file's records, with a null value, binary garbage and a record
    // over max_record_bytes (2 KB of valid JSON) mixed in.
    let big = format!(
        "{{\"transaction_id\":\"big\",\"padding\":\"{}\"}}",
        "x".repeat(2_000)
    );
    let mut partitions: Vec<Vec<Option<Vec<u8>>>> = Vec::new();
    for f in &files {
        let text = std::fs::read(f).unwrap();
        let mut recs: Vec<Option<Vec<u8>>> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| Some(l.to_vec()))
            .collect();
        recs.insert(10, None);
        recs.insert(20, Some(vec![0xff, 0xfe, 0x00, 0x9c, b'{']));
        recs.insert(30, Some(big.clone().into_bytes()));
        partitions.push(recs);
    }
    let settings = KafkaSettings::new(broker.brokers(), "producer");
    for (p, recs) in partitions.iter().enumerate() {
        let recs: Vec<ProduceRecord> = recs
            .iter()
            .map(|v| ProduceRecord {
                value: v.as_deref(),
                timestamp_ms: None,
            })
            .collect();
        produce_records(&settings, "mixed", p as i32, &recs).unwrap();
    }
    let config = write(
        &tmp,
        "small.toml",
        "[validation]\nmax_record_bytes = 1000\n",
    );
    let out = tmp.join("out");
    job::run_ok(&[
        "replay",
        "--kafka",
        &broker.brokers(),
        "--topic",
        "mixed",
        "--output",
        out.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    let actual = read_committed(&out);

    // The independent reference over the same bytes (a null value is an
    // empty record).
    let bytes: Vec<Vec<Vec<u8>>> = partitions
        .iter()
        .map(|p| p.iter().map(|v| v.clone().unwrap_or_default()).collect())
        .collect();
    let expected = compute_records(
        &bytes,
        &RefParams {
            max_record_bytes: 1000,
            ..RefParams::default()
        },
    );
    assert_same(&expected, &actual);
    for (offset, reason) in [(10, "MALFORMED"), (20, "MALFORMED"), (30, "TOO_LARGE")] {
        for p in 0..2 {
            assert!(
                actual
                    .rejects
                    .iter()
                    .any(|r| r.partition == p && r.offset == offset && r.reason == reason),
                "partition {p} offset {offset}: {reason} expected"
            );
        }
    }
}

/// Rows with keys, each to the partition given, in order.
fn produce_keyed(broker: &Tansu, topic: &str, rows: &[(i32, String, Vec<u8>)]) {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::ClientConfig;
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for (partition, key, value) in rows {
        let rec = BaseRecord::<str, [u8]>::to(topic)
            .partition(*partition)
            .key(key.as_str())
            .payload(value);
        p.send(rec).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

#[test]
fn merchants_from_a_compacted_topic_enrich_as_the_spec_says() {
    use tidemark_testkit::reference::{
        compute_enriched, default_window_specs, read_records, RefParams, WindowKind, WindowSpec,
    };
    let tmp = tempdir();
    let broker = Tansu::start();

    // Transactions and their merchants table; the transactions go in as in
    // the other tests, file i to partition i.
    let input = tmp.join("in");
    let table = tmp.join("merchants.jsonl");
    generate_with_merchants(&input, 30_000, 4, 34, 200, &table);
    let files = jsonl_files(&input);
    produce(&broker, "payments", &files);

    // The table keyed by merchant over two partitions of a compacted topic.
    // The partition is our own choice of the key, so the SPEC can be computed
    // from the same per-partition orders (ties across partitions and
    // lateness per partition both depend on them).
    broker.create_topic_with("merchants", 2, &["cleanup.policy=compact"]);
    let mut parts: Vec<Vec<Vec<u8>>> = vec![Vec::new(), Vec::new()];
    let mut keyed = Vec::new();
    for row in read_records(&table) {
        let key = serde_json::from_slice::<serde_json::Value>(&row)
            .ok()
            .and_then(|v| v.get("merchant")?.as_str().map(str::to_string))
            .unwrap_or_else(|| "unreadable".to_string());
        let p = key.bytes().fold(0u32, |h, b| h.wrapping_mul(31) + b as u32) % 2;
        parts[p as usize].push(row.clone());
        keyed.push((p as i32, key, row));
    }
    assert!(parts.iter().all(|p| p.len() > 100), "both partitions used");
    produce_keyed(&broker, "merchants", &keyed);

    let windows = "[[windows]]\nname = \"status_1m\"\nkind = \"tumbling\"\nsize = \"1m\"\ngroup_by = [\"status\"]\n\n\
        [[windows]]\nname = \"merchant_5m\"\nkind = \"sliding\"\nsize = \"5m\"\nslide = \"1m\"\ngroup_by = [\"merchant\"]\n\n\
        [[windows]]\nname = \"customer_session\"\nkind = \"session\"\ngap = \"30m\"\ngroup_by = [\"customer_id\"]\n\n\
        [[windows]]\nname = \"risk_tier_1m\"\nkind = \"tumbling\"\nsize = \"1m\"\ngroup_by = [\"risk_tier\"]\n";
    let config = kafka_config_with(
        &tmp,
        &broker,
        "payments",
        "tidemark-ref",
        &format!("\n[reference]\nkind = \"kafka\"\ntopic = \"merchants\"\n\n{windows}"),
    );
    let out = tmp.join("kafka-reference");
    finish(
        job::run_command(&config, &out, &["-w", "2"])
            .spawn()
            .unwrap(),
        "kafka reference",
    );

    let mut p = RefParams::default();
    assert_eq!(p.windows, default_window_specs(), "the three specs above");
    p.windows.push(WindowSpec::new(
        "risk_tier_1m",
        WindowKind::Tumbling { size_ms: 60_000 },
        &["risk_tier"],
    ));
    let txns: Vec<Vec<Vec<u8>>> = files.iter().map(|f| read_records(f)).collect();
    let expected = compute_enriched(&txns, &parts, &p);
    let enriched = expected
        .transactions
        .iter()
        .filter(|t| t.risk_tier.is_some())
        .count();
    assert!(enriched > expected.transactions.len() / 2, "{enriched}");
    assert!(expected.rejects.iter().any(|r| r.source == "merchants"));
    assert_same(&expected, &read_committed(&out));
}

/// SIGTERM to a job that follows a topic ends it within 5 s with exit 0
/// on every process, whichever processes are signalled: alone, as a
/// two-process cluster with every process signalled (a Kubernetes
/// rollout), with only process 1 or only process 0 signalled (one pod
/// evicted: the stop travels through the dataflow to every process), over
/// a caught-up topic (nothing new arrives, so no epoch boundary is coming)
/// and with records still flowing. A bounded restart then commits exactly
/// the reference's outputs: nothing the stop left uncommitted is lost,
/// nothing committed is repeated. One broker and topic serve every drill.
#[test]
fn sigterm_to_any_process_stops_the_whole_job_within_5_s_with_exit_0() {
    use tidemark_testkit::reference::{compute_records, read_records, RefParams};
    let tmp = tempdir();
    let broker = Tansu::start();
    let input = tmp.join("in");
    generate(&input, 20_000, 4, 47, 500);
    let files = jsonl_files(&input);
    produce(&broker, "quiet", &files);
    let records: Vec<Vec<Vec<u8>>> = files.iter().map(|f| read_records(f)).collect();
    let expected = compute_records(&records, &RefParams::default());
    let topic = Topic {
        broker: &broker,
        total: ends(&broker, "quiet", 4).iter().sum(),
    };
    for (processes, signalled, flowing) in [
        (1, &[0][..], false),
        (2, &[0, 1][..], false),
        (2, &[1][..], false),
        (2, &[0][..], false),
        (2, &[1][..], true),
        (2, &[0][..], true),
    ] {
        let drill = Drill {
            processes,
            signalled,
            flowing,
        };
        let out = drill.run(&tmp, &topic);
        // The restart reads the rest to the end of the topic as it is now.
        let bounded = kafka_config(&tmp, &broker, "quiet", &drill.group());
        finish(
            job::run_command(&bounded, &out, &["-w", "2"])
                .spawn()
                .unwrap(),
            "bounded restart",
        );
        assert_same(&expected, &read_committed(&out));
    }
}

/// The followed topic of the stop drills.
struct Topic<'a> {
    broker: &'a Tansu,
    /// Its records, all partitions.
    total: u64,
}

impl Topic<'_> {
    /// The group's committed offsets, all partitions.
    fn committed(&self, group: &str) -> u64 {
        group_offsets(self.broker, "quiet", group, 4)
            .iter()
            .map(|o| o.unwrap_or(0))
            .sum()
    }
}

/// One stop drill: a job of `processes` following the topic from its
/// start, SIGTERM to the `signalled` ones once it is caught up and quiet
/// (or, `flowing`, after its first commit while it reads at a capped rate).
struct Drill {
    processes: usize,
    signalled: &'static [usize],
    flowing: bool,
}

impl Drill {
    fn group(&self) -> String {
        let who: Vec<String> = self.signalled.iter().map(usize::to_string).collect();
        let how = if self.flowing { "flowing" } else { "quiet" };
        format!("{how}-{}-signal-{}", self.processes, who.join(""))
    }

    /// Runs the drill up to the exit of every process; returns the output root.
    fn run(&self, tmp: &Path, topic: &Topic) -> PathBuf {
        let (processes, group) = (self.processes, self.group());
        let what = format!("{group}:");
        let follow = write(
            tmp,
            &format!("follow-{group}.toml"),
            &format!(
                "{FAST_COMMITS}\n[source]\nkind = \"kafka\"\n\n[kafka]\nbrokers = \"{}\"\ntopics = [\"quiet\"]\ngroup_id = \"{group}\"\n",
                topic.broker.brokers()
            ),
        );
        let out = tmp.join(format!("out-{group}"));
        let hostfile = cluster::hostfile(tmp, processes);
        let mut jobs: Vec<Logged> = (0..processes)
            .map(|p| {
                let (n, p) = (processes.to_string(), p.to_string());
                let mut extra = vec!["-w", "1"];
                if processes > 1 {
                    extra.extend(["-n", &n, "-p", &p, "-h", hostfile.to_str().unwrap()]);
                }
                if self.flowing {
                    // 20,000 records in about 10 s.
                    extra.extend(["--rate", "2000"]);
                }
                let mut cmd = job::run_command(&follow, &out, &extra);
                cmd.env("TIDEMARK_LOG", "info");
                Logged::spawn(cmd)
            })
            .collect();
        if self.flowing {
            assert!(
                await_commits(&mut jobs[0].child, &out, 1),
                "{what} ended early"
            );
        } else {
            self.await_quiet(&mut jobs, topic);
        }
        let signalled = Instant::now();
        for i in self.signalled {
            // SAFETY: a plain signal to a child this test started.
            unsafe { libc::kill(jobs[*i].child.id() as i32, libc::SIGTERM) };
        }
        for (i, mut j) in jobs.into_iter().enumerate() {
            while j.child.try_wait().unwrap().is_none() {
                if signalled.elapsed() > Duration::from_secs(5) {
                    j.child.kill().unwrap();
                    j.wait();
                    panic!(
                        "{what} process {i} still running 5 s after SIGTERM: {}",
                        j.text()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let status = j.wait();
            let log = j.text();
            assert_eq!(status.code(), Some(0), "{what} process {i}: {log}");
            assert!(!log.contains("panicked"), "{what} process {i}: {log}");
            if i == 0 {
                assert!(log.contains("stopped on request"), "{what} {log}");
            }
            if !self.signalled.contains(&i) {
                let from = format!("stop requested on process {}", self.signalled[0]);
                assert!(log.contains(&from), "{what} process {i}: {log}");
            }
        }
        eprintln!(
            "{what} every process exited 0 within {:?}",
            signalled.elapsed()
        );
        if self.flowing {
            // It stopped mid-stream, after a commit of its own.
            let committed = topic.committed(&group);
            assert!(
                manifests(&out) >= 2 && committed < topic.total,
                "{what} {committed} of {} committed",
                topic.total
            );
        }
        out
    }

    /// Waits until the job has read everything, committed some of it, and
    /// gone quiet (the committed offsets stop moving).
    fn await_quiet(&self, jobs: &mut [Logged], topic: &Topic) {
        let group = self.group();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = (u64::MAX, Instant::now());
        loop {
            for (i, j) in jobs.iter_mut().enumerate() {
                assert!(
                    j.child.try_wait().unwrap().is_none(),
                    "{group}: process {i} ended"
                );
            }
            let committed = topic.committed(&group);
            if committed != last.0 {
                last = (committed, Instant::now());
            } else if committed > 0 && last.1.elapsed() > Duration::from_secs(3) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{group}: never caught up: {committed} of {}",
                topic.total
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
