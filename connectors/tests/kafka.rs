//! The Kafka connector against a real broker (tansu, started per test).
//! Every test compares whole outputs with what it produced.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tidemark_connectors::kafka::{
    commit_offsets, committed_offsets, high_watermarks, offsets_for_time, open_readers,
    partition_metrics, produce_lines, produce_records, KafkaPartition, KafkaReader, KafkaSettings,
    PartitionMetrics, ProduceRecord, StartAt,
};
use tidemark_dataflow::source::{PartitionReader, Poll, RawBatch};
use tidemark_testkit::tansu::Tansu;

type Records = Vec<(u64, Vec<u8>)>;

fn settings(t: &Tansu, group: &str) -> KafkaSettings {
    KafkaSettings::new(t.brokers(), group)
}

fn part(topic: &str, partition: i32, index: u32, start: StartAt) -> KafkaPartition {
    KafkaPartition {
        topic: topic.into(),
        partition,
        index,
        start,
        checkpoint: None,
        end: None,
    }
}

fn tps(topic: &str, n: i32) -> Vec<(String, i32)> {
    (0..n).map(|p| (topic.to_owned(), p)).collect()
}

/// Polls every reader round-robin, `max` records at a time, until all are
/// Finished; returns the records by job partition index.
fn read_to_end(readers: &mut [KafkaReader], max: usize) -> BTreeMap<u32, Records> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out: BTreeMap<u32, Records> = readers.iter().map(|r| (r.index(), vec![])).collect();
    let mut done = vec![false; readers.len()];
    let mut batch = RawBatch::default();
    while done.iter().any(|d| !d) {
        assert!(
            Instant::now() < deadline,
            "bounded read did not finish: {out:?}"
        );
        for (i, r) in readers.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            batch.clear();
            let poll = r.poll(max, &mut batch).expect("poll");
            assert!(batch.len() <= max);
            let recs = out.get_mut(&r.index()).unwrap();
            recs.extend(batch.iter().map(|(b, o)| (o, b.to_vec())));
            if poll == Poll::Finished {
                done[i] = true;
            }
            if poll != Poll::Ready {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    // Finished stays finished.
    for r in readers.iter_mut() {
        batch.clear();
        assert_eq!(r.poll(10, &mut batch).unwrap(), Poll::Finished);
        assert!(batch.is_empty());
    }
    out
}

/// Polls one unbounded reader until `n` records came or `within` passed.
fn read_n(r: &mut KafkaReader, n: usize, within: Duration) -> Records {
    let deadline = Instant::now() + within;
    let mut got = vec![];
    let mut batch = RawBatch::default();
    while got.len() < n && Instant::now() < deadline {
        batch.clear();
        let poll = r.poll(n - got.len(), &mut batch).expect("poll");
        assert_ne!(poll, Poll::Finished, "an unbounded read finished");
        got.extend(batch.iter().map(|(b, o)| (o, b.to_vec())));
        if poll != Poll::Ready {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    got
}

/// An unbounded reader with nothing new: it answers Waiting (no record)
/// until the broker reports the partition's end, then CaughtUp (no record)
/// for all of `period`.
fn assert_caught_up_for(r: &mut KafkaReader, period: Duration) {
    let mut batch = RawBatch::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        batch.clear();
        let poll = r.poll(100, &mut batch).unwrap();
        assert!(batch.is_empty(), "unexpected records: {:?}", batch.records);
        if poll == Poll::CaughtUp {
            break;
        }
        assert_eq!(poll, Poll::Waiting, "before the end is reported");
        assert!(Instant::now() < deadline, "never caught up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let end = Instant::now() + period;
    while Instant::now() < end {
        batch.clear();
        assert_eq!(r.poll(100, &mut batch).unwrap(), Poll::CaughtUp);
        assert!(batch.is_empty(), "unexpected records: {:?}", batch.records);
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn numbered(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .collect()
}

fn as_slices(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(|x| x.as_slice()).collect()
}

fn from(offset: u64, lines: &[Vec<u8>]) -> Records {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| (offset + i as u64, l.clone()))
        .collect()
}

#[test]
fn bounded_read_of_each_partition_is_exactly_what_was_produced() {
    let t = Tansu::start();
    t.create_topic("pay", 3);
    t.create_topic("other", 1);
    let s = settings(&t, "g1");

    // Partition 0: the awkward values. A null value reads as empty bytes.
    let json = br#"{"transaction_id":"t1","amount":1.5}"#.to_vec();
    let bad_utf8 = vec![0xff, 0xfe, 0x00, 0x80, b'\n', 0xc3];
    let p0: Vec<ProduceRecord> = vec![
        ProduceRecord {
            value: Some(&json),
            timestamp_ms: None,
        },
        ProduceRecord {
            value: None,
            timestamp_ms: None,
        },
        ProduceRecord {
            value: Some(&bad_utf8),
            timestamp_ms: None,
        },
        ProduceRecord {
            value: Some(b""),
            timestamp_ms: None,
        },
        ProduceRecord {
            value: Some(b"{oops"),
            timestamp_ms: None,
        },
    ];
    let offsets = produce_records(&s, "pay", 0, &p0).unwrap();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    let want0: Records = vec![
        (0, json.clone()),
        (1, vec![]),
        (2, bad_utf8.clone()),
        (3, vec![]),
        (4, b"{oops".to_vec()),
    ];

    // Partition 1: records larger than the consumer's per-partition fetch
    // limit (max.partition.fetch.bytes, 1 MiB by default), between small ones.
    // (tansu 0.6 never returns a record at or above min(fetch.max.bytes,
    // 5 MiB); Kafka returns an oversized first batch whole.)
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let huge: Vec<u8> = (0..2_000_000u32).map(|i| b'A' + (i % 26) as u8).collect();
    let lines1 = vec![
        b"small-0".to_vec(),
        big.clone(),
        b"small-2".to_vec(),
        huge.clone(),
    ];
    assert_eq!(
        produce_lines(&s, "pay", 1, &as_slices(&lines1)).unwrap(),
        vec![0, 1, 2, 3]
    );

    // Partition 2: enough records for many fetches and polls.
    let lines2 = numbered("p2", 1000);
    let offs2 = produce_lines(&s, "pay", 2, &as_slices(&lines2)).unwrap();
    assert_eq!(offs2, (0..1000).collect::<Vec<u64>>());

    let consumer = s.consumer().unwrap();
    let mut all = tps("pay", 3);
    all.push(("other".into(), 0));
    let ends = high_watermarks(&consumer, &all).unwrap();
    assert_eq!(ends, vec![5, 4, 1000, 0]);

    // Several topics in one job, with the job's own partition numbers.
    let parts: Vec<KafkaPartition> = all
        .iter()
        .zip(&ends)
        .enumerate()
        .map(|(i, ((topic, p), &end))| KafkaPartition {
            end: Some(end),
            ..part(topic, *p, 10 + i as u32, StartAt::Earliest)
        })
        .collect();
    let mut readers = open_readers(&s, &parts).unwrap();
    assert_eq!(
        readers
            .iter()
            .map(|r| (r.index(), r.start_offset()))
            .collect::<Vec<_>>(),
        vec![(10, 0), (11, 0), (12, 0), (13, 0)]
    );
    let got = read_to_end(&mut readers, 7);
    let want: BTreeMap<u32, Records> = [
        (10, want0),
        (11, from(0, &lines1)),
        (12, from(0, &lines2)),
        (13, vec![]),
    ]
    .into_iter()
    .collect();
    // Compare lengths first: a failure then does not print 2 MB.
    let lens = |m: &BTreeMap<u32, Records>| -> Vec<(u32, Vec<(u64, usize)>)> {
        m.iter()
            .map(|(k, v)| (*k, v.iter().map(|(o, b)| (*o, b.len())).collect()))
            .collect()
    };
    assert_eq!(lens(&got), lens(&want));
    assert!(got == want, "same offsets and sizes, different bytes");
}

#[test]
fn resume_from_a_checkpoint_reads_exactly_the_suffix() {
    let t = Tansu::start();
    t.create_topic("pay", 2);
    let s = settings(&t, "g2");
    let a = numbered("a", 20);
    let b = numbered("b", 20);
    produce_lines(&s, "pay", 0, &as_slices(&a)).unwrap();
    produce_lines(&s, "pay", 1, &as_slices(&b)).unwrap();

    // The checkpoint overrides the configured start.
    let parts = vec![
        KafkaPartition {
            checkpoint: Some(7),
            end: Some(20),
            ..part("pay", 0, 0, StartAt::Earliest)
        },
        KafkaPartition {
            checkpoint: Some(19),
            end: Some(20),
            ..part("pay", 1, 1, StartAt::Latest)
        },
    ];
    let mut readers = open_readers(&s, &parts).unwrap();
    assert_eq!(readers[0].start_offset(), 7);
    assert_eq!(readers[1].start_offset(), 19);
    let got = read_to_end(&mut readers, 4);
    assert_eq!(got[&0], from(7, &a[7..]));
    assert_eq!(got[&1], from(19, &b[19..]));

    // At the end already: Finished at once, nothing read.
    let parts = vec![KafkaPartition {
        checkpoint: Some(20),
        end: Some(20),
        ..part("pay", 0, 0, StartAt::Earliest)
    }];
    let mut readers = open_readers(&s, &parts).unwrap();
    let mut batch = RawBatch::default();
    assert_eq!(readers[0].poll(10, &mut batch).unwrap(), Poll::Finished);
    assert!(batch.is_empty());

    // Unbounded from a checkpoint: the suffix, then caught up.
    let parts = vec![KafkaPartition {
        checkpoint: Some(15),
        ..part("pay", 1, 5, StartAt::Earliest)
    }];
    let mut readers = open_readers(&s, &parts).unwrap();
    assert_eq!(
        read_n(&mut readers[0], 5, Duration::from_secs(20)),
        from(15, &b[15..])
    );
    assert_caught_up_for(&mut readers[0], Duration::from_millis(500));
}

#[test]
fn start_at_a_timestamp_and_ranges_of_time() {
    let t = Tansu::start();
    t.create_topic("pay", 3);
    let s = settings(&t, "g3");
    let base = 1_700_000_000_000i64;
    // Per partition: (timestamp, value), timestamps rising.
    let data: Vec<Vec<(i64, Vec<u8>)>> = vec![
        (0..10)
            .map(|i| (base + i * 1000, format!("p0-{i}").into_bytes()))
            .collect(),
        (0..20)
            .map(|i| (base + i * 500, format!("p1-{i}").into_bytes()))
            .collect(),
        (0..3)
            .map(|i| (base + i * 100, format!("p2-{i}").into_bytes()))
            .collect(),
    ];
    for (p, recs) in data.iter().enumerate() {
        let rs: Vec<ProduceRecord> = recs
            .iter()
            .map(|(ts, v)| ProduceRecord {
                value: Some(v),
                timestamp_ms: Some(*ts),
            })
            .collect();
        produce_records(&s, "pay", p as i32, &rs).unwrap();
    }
    let consumer = s.consumer().unwrap();
    let all = tps("pay", 3);
    let ends = high_watermarks(&consumer, &all).unwrap();

    // Records with timestamp >= from_ts, and < to_ts when given.
    let expect = |from_ts: i64, to_ts: Option<i64>| -> BTreeMap<u32, Records> {
        data.iter()
            .enumerate()
            .map(|(p, recs)| {
                let v = recs
                    .iter()
                    .enumerate()
                    .filter(|(_, (ts, _))| *ts >= from_ts && to_ts.is_none_or(|to| *ts < to))
                    .map(|(o, (_, v))| (o as u64, v.clone()))
                    .collect();
                (p as u32, v)
            })
            .collect()
    };

    // Start at T (not on a record's timestamp), read to the end.
    let from_ts = base + 4_250;
    let parts: Vec<KafkaPartition> = (0..3)
        .map(|p| KafkaPartition {
            end: Some(ends[p as usize]),
            ..part("pay", p, p as u32, StartAt::TimestampMs(from_ts))
        })
        .collect();
    let mut readers = open_readers(&s, &parts).unwrap();
    // Partition 2 has nothing at or after T: it starts at its end.
    assert_eq!(
        readers.iter().map(|r| r.start_offset()).collect::<Vec<_>>(),
        vec![5, 9, 3]
    );
    assert_eq!(read_to_end(&mut readers, 3), expect(from_ts, None));

    // A range of time [T1, T2), both ends resolved by offsets_for_time.
    let (t1, t2) = (base + 1_000, base + 6_000);
    let starts = offsets_for_time(&consumer, &all, t1).unwrap();
    let stops = offsets_for_time(&consumer, &all, t2).unwrap();
    assert_eq!(starts, vec![1, 2, 3]);
    assert_eq!(stops, vec![6, 12, 3]);
    let parts: Vec<KafkaPartition> = (0..3)
        .map(|p| KafkaPartition {
            end: Some(stops[p as usize]),
            ..part("pay", p, p as u32, StartAt::Offset(starts[p as usize]))
        })
        .collect();
    let mut readers = open_readers(&s, &parts).unwrap();
    assert_eq!(read_to_end(&mut readers, 100), expect(t1, Some(t2)));
}

#[test]
fn latest_reads_only_what_comes_after_open_and_is_caught_up_at_the_end() {
    let t = Tansu::start();
    t.create_topic("pay", 2);
    let s = settings(&t, "g4");
    let old = numbered("old", 5);
    produce_lines(&s, "pay", 0, &as_slices(&old)).unwrap();

    let parts = vec![
        part("pay", 0, 0, StartAt::Latest),
        part("pay", 1, 1, StartAt::Latest),
    ];
    let mut readers = open_readers(&s, &parts).unwrap();
    assert_eq!(readers[0].start_offset(), 5);
    assert_eq!(readers[1].start_offset(), 0);
    assert_caught_up_for(&mut readers[0], Duration::from_secs(1));
    assert_caught_up_for(&mut readers[1], Duration::from_millis(200));

    let new = numbered("new", 3);
    produce_lines(&s, "pay", 0, &as_slices(&new)).unwrap();
    assert_eq!(
        read_n(&mut readers[0], 3, Duration::from_secs(20)),
        from(5, &new)
    );
    assert_caught_up_for(&mut readers[0], Duration::from_millis(500));
    assert_caught_up_for(&mut readers[1], Duration::from_millis(100));
}

#[test]
fn committed_offsets_show_lag_for_the_group() {
    let t = Tansu::start();
    t.create_topic("pay", 3);
    let s = settings(&t, "tidemark-lag");
    produce_lines(&s, "pay", 0, &as_slices(&numbered("a", 10))).unwrap();
    produce_lines(&s, "pay", 1, &as_slices(&numbered("b", 4))).unwrap();

    let committer = s.consumer().unwrap();
    commit_offsets(&committer, &[("pay".into(), 0, 6), ("pay".into(), 1, 4)]).unwrap();
    // A second commit moves the offset on.
    commit_offsets(&committer, &[("pay".into(), 0, 7)]).unwrap();
    drop(committer);

    // Read back by a fresh client of the same group, as a lag tool would.
    let reader = s.consumer().unwrap();
    let all = tps("pay", 3);
    let committed = committed_offsets(&reader, &all).unwrap();
    assert_eq!(committed, vec![Some(7), Some(4), None]);
    let positions: Vec<(String, i32, u64)> = all
        .iter()
        .zip(&committed)
        .map(|((t, p), c)| (t.clone(), *p, c.unwrap_or(0)))
        .collect();
    let m = partition_metrics(&reader, &positions).unwrap();
    let want = |p: i32, hw: u64, lag: u64| PartitionMetrics {
        topic: "pay".into(),
        partition: p,
        high_watermark: hw,
        lag,
    };
    assert_eq!(m, vec![want(0, 10, 3), want(1, 4, 0), want(2, 0, 0)]);

    // Another group sees nothing committed.
    let other = settings(&t, "someone-else").consumer().unwrap();
    assert_eq!(
        committed_offsets(&other, &all).unwrap(),
        vec![None, None, None]
    );
}

/// 200 records in batches of 10 on one partition, and a following reader
/// with tiny fetches that has read 30 of them: most records are still on
/// the broker, so an outage now leaves the reader behind.
fn a_reader_behind(t: &Tansu, group: &str) -> (KafkaSettings, KafkaReader, Records, Vec<Vec<u8>>) {
    t.create_topic("pay", 1);
    let mut s = settings(t, group);
    let first = numbered("first", 200);
    // Separate record batches: a fetch returns at least one whole batch.
    for chunk in first.chunks(10) {
        produce_lines(&s, "pay", 0, &as_slices(chunk)).unwrap();
    }
    s.properties = vec![
        ("max.partition.fetch.bytes".into(), "256".into()),
        ("fetch.max.bytes".into(), "1000".into()),
        ("message.max.bytes".into(), "1000".into()),
        ("queued.min.messages".into(), "5".into()),
        ("queued.max.messages.kbytes".into(), "1".into()),
        ("reconnect.backoff.max.ms".into(), "500".into()),
    ];
    let mut readers = open_readers(&s, &[part("pay", 0, 0, StartAt::Earliest)]).unwrap();
    let mut r = readers.remove(0);
    let got = read_n(&mut r, 30, Duration::from_secs(20));
    assert_eq!(got.len(), 30);
    (s, r, got, first)
}

/// Polls for `period` while the broker is away: Ready with prefetched
/// records, else Waiting (records are unread: not idleness), never
/// CaughtUp however the client's errors come and go; never an error, never
/// Finished. Ends Waiting, with records still unread.
fn assert_waiting_for(r: &mut KafkaReader, got: &mut Records, period: Duration) {
    let mut batch = RawBatch::default();
    let mut waiting = 0;
    let mut last = Poll::Ready;
    let until = Instant::now() + period;
    while Instant::now() < until {
        batch.clear();
        let poll = r
            .poll(10, &mut batch)
            .expect("no error while the broker is away");
        got.extend(batch.iter().map(|(b, o)| (o, b.to_vec())));
        match poll {
            Poll::Waiting => waiting += 1,
            Poll::Ready => {}
            Poll::CaughtUp => panic!("caught up with records unread on the broker"),
            Poll::Finished => panic!("an unbounded read finished"),
        }
        last = poll;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(waiting > 0, "never Waiting while the broker was away");
    assert_eq!(last, Poll::Waiting, "still away, so not idle");
    assert!(
        got.len() < 200,
        "all records were prefetched: the test shows nothing"
    );
}

/// A broker that hangs (SIGSTOP: connections open, no answers) while a
/// following reader is behind: librdkafka reports no error for a long time,
/// and still the reader says Waiting, never CaughtUp, so the partition
/// holds the frontier; when the broker answers again every record comes,
/// once, and then the reader is caught up.
#[test]
fn a_hung_broker_leaves_a_reader_behind_waiting_never_caught_up() {
    let t = Tansu::start();
    let (_, mut r, mut got, first) = a_reader_behind(&t, "g-hang");
    t.pause();
    assert_waiting_for(&mut r, &mut got, Duration::from_secs(4));
    t.resume();
    let n = 200 - got.len();
    got.extend(read_n(&mut r, n, Duration::from_secs(60)));
    assert_eq!(got, from(0, &first));
    assert_caught_up_for(&mut r, Duration::from_millis(300));
}

#[test]
fn a_broker_restart_mid_read_loses_and_repeats_nothing() {
    let mut t = Tansu::start();
    let (s, mut r, mut got, first) = a_reader_behind(&t, "g6");
    t.kill();
    assert_waiting_for(&mut r, &mut got, Duration::from_secs(3));
    t.restart();
    let second = numbered("second", 100);
    produce_lines(&s, "pay", 0, &as_slices(&second)).unwrap();
    let n = 300 - got.len();
    got.extend(read_n(&mut r, n, Duration::from_secs(60)));
    let mut want = from(0, &first);
    want.extend(from(200, &second));
    assert_eq!(got, want);
    assert_caught_up_for(&mut r, Duration::from_millis(300));
}

#[test]
fn unknown_topics_and_partitions_fail_at_open_naming_them() {
    let t = Tansu::start();
    t.create_topic("pay", 2);
    let s = settings(&t, "g7");
    let e = open_readers(&s, &[part("pay", 2, 0, StartAt::Earliest)])
        .err()
        .expect("partition 2 does not exist");
    let e = format!("{e:#}");
    assert!(
        e.contains("pay") && e.contains("partition 2") && e.contains("2 partitions"),
        "{e}"
    );

    let e = open_readers(&s, &[part("nope", 0, 0, StartAt::Earliest)])
        .err()
        .expect("topic nope does not exist");
    let e = format!("{e:#}");
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");

    // A checkpoint past the end (e.g. the topic was recreated).
    produce_lines(&s, "pay", 0, &[b"x"]).unwrap();
    let p = KafkaPartition {
        checkpoint: Some(50),
        ..part("pay", 0, 0, StartAt::Earliest)
    };
    let e = format!("{:#}", open_readers(&s, &[p]).err().expect("past the end"));
    assert!(
        e.contains("checkpointed position 50") && e.contains("high watermark 1"),
        "{e}"
    );
}

#[test]
fn prefetch_stays_bounded_when_the_reader_is_not_polled() {
    use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
    use rdkafka::statistics::Statistics;
    use rdkafka::{ClientContext, Offset, TopicPartitionList};
    use std::sync::{Arc, Mutex};
    /// The largest (messages, bytes) librdkafka reported queued for pay/0.
    #[derive(Default)]
    struct Peak(Mutex<(i64, u64)>);
    impl ClientContext for Peak {
        fn stats(&self, s: Statistics) {
            if let Some(p) = s.topics.get("pay").and_then(|t| t.partitions.get(&0)) {
                let mut m = self.0.lock().unwrap();
                *m = (m.0.max(p.fetchq_cnt), m.1.max(p.fetchq_size));
            }
        }
    }
    impl ConsumerContext for Peak {}

    let t = Tansu::start();
    t.create_topic("pay", 1);
    let s = settings(&t, "g9");
    // 40 MB on the broker, far beyond the prefetch bound.
    let line = vec![b'z'; 1000];
    let lines: Vec<&[u8]> = (0..40_000).map(|_| line.as_slice()).collect();
    produce_lines(&s, "pay", 0, &lines).unwrap();

    // The connector's own consumer configuration and queue layout: a
    // split partition queue that nobody polls.
    let c: Arc<BaseConsumer<Peak>> = Arc::new(
        s.consumer_config()
            .unwrap()
            .set("statistics.interval.ms", "200")
            .create_with_context(Peak::default())
            .unwrap(),
    );
    let _queue = c.split_partition_queue("pay", 0).unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("pay", 0, Offset::Offset(0))
        .unwrap();
    c.assign(&tpl).unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let _ = c.poll(Duration::from_millis(50));
    }
    let (msgs, bytes) = *c.context().0.lock().unwrap();
    // queued.max.messages.kbytes (8 MiB) plus one fetch response (tansu
    // caps a fetch at 5 MiB).
    assert!(bytes > 1 << 20, "nothing was prefetched: {bytes} bytes");
    assert!(
        bytes <= (8 << 20) + (5 << 20),
        "prefetch grew to {bytes} bytes"
    );
    assert!(msgs <= 20_000, "prefetch grew to {msgs} messages");
}
