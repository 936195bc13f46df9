//! The Kinesis connector against a real Kinesis API server (kinesalite,
//! started per test). Every test compares whole sequences with what it put.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tidemark_connectors::kinesis::{
    create_stream, discover_shards, merge_shards, put_record, put_records_to_shard,
    shard_read_to_end, split_shard, KinesisClient, KinesisSettings, KinesisShardReader, Lineage,
    ReadLimits, ShardInfo, ShardReadConfig, ShardWatcher, StartAt,
};
use tidemark_connectors::kpl;
use tidemark_dataflow::source::{PartitionReader, Poll, RawBatch};
use tidemark_testkit::kinesalite::Kinesalite;

type Records = Vec<(u64, Vec<u8>)>;

/// One batch as handed out: its records and its resume token.
#[derive(Debug)]
struct Batch {
    records: Records,
    resume: Option<String>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A server, a client and a stream of `shards` shards.
fn setup(stream: &str, shards: u32) -> (Kinesalite, KinesisClient, Vec<ShardInfo>) {
    let k = Kinesalite::start();
    let settings = KinesisSettings {
        stream: stream.into(),
        region: Some("us-east-1".into()),
        endpoint: Some(k.endpoint()),
    };
    let client = settings.client().expect("client");
    create_stream(&client, stream, shards).expect("create stream");
    let listed = discover_shards(&client, stream).expect("list shards");
    assert_eq!(listed.len(), shards as usize);
    (k, client, listed)
}

/// A hash key inside `s`'s range, `num/den` of the way in.
fn hash_at(s: &ShardInfo, num: u128, den: u128) -> u128 {
    s.starting_hash + (s.ending_hash - s.starting_hash) / den * num
}

fn config(start: StartAt) -> ShardReadConfig {
    ShardReadConfig {
        start,
        until_caught_up: true,
        ..ShardReadConfig::default()
    }
}

fn open(
    client: &KinesisClient,
    stream: &str,
    shard: &ShardInfo,
    listing: &[ShardInfo],
    resume: (u64, Option<String>),
    config: ShardReadConfig,
    lineage: &Arc<Lineage>,
) -> KinesisShardReader {
    KinesisShardReader::open(
        client,
        stream,
        shard,
        listing,
        resume,
        config,
        lineage.clone(),
    )
    .expect("open reader")
}

/// Polls until Finished; every batch with its token. The server must never
/// have handed out a record twice (AT_SEQUENCE_NUMBER would).
fn read_to_end(r: &mut KinesisShardReader, max: usize) -> Vec<Batch> {
    let batches = read_to_end_inner(r, max);
    let repeats = r.metrics().skipped_repeats.load(Ordering::Relaxed);
    assert_eq!(repeats, 0, "shard {}: records fetched twice", r.shard_id());
    batches
}

fn read_to_end_inner(r: &mut KinesisShardReader, max: usize) -> Vec<Batch> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    let mut batch = RawBatch::default();
    loop {
        assert!(
            Instant::now() < deadline,
            "shard {} did not finish: {out:?}",
            r.shard_id()
        );
        batch.clear();
        let p = r.poll(max, &mut batch).expect("poll");
        if !batch.is_empty() {
            out.push(Batch {
                records: batch.iter().map(|(b, o)| (o, b.to_vec())).collect(),
                resume: batch.resume.clone(),
            });
        } else {
            assert_eq!(batch.resume, None, "a token without records");
        }
        if p == Poll::Finished {
            return out;
        }
        if p != Poll::Ready {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn records(batches: &[Batch]) -> Records {
    batches.iter().flat_map(|b| b.records.clone()).collect()
}

/// `values` numbered from `first`.
fn numbered(first: u64, values: &[Vec<u8>]) -> Records {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| (first + i as u64, v.clone()))
        .collect()
}

fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(Vec::as_slice).collect()
}

/// Values that are hard on a byte pipeline: binary, whitespace, a record
/// that starts like a KPL aggregate but is not one, a large one.
fn odd_values(shard: u32) -> Vec<Vec<u8>> {
    let mut fake_kpl = kpl::MAGIC.to_vec();
    fake_kpl.extend_from_slice(&[0x0A, 0x01, b'k', 0x1A, 0x03, 0x08, 0x00, 0x1A]);
    fake_kpl.extend_from_slice(&[0u8; 16]); // not the MD5 of the body
    let mut v = vec![
        b"{\"transaction_id\":\"t\"}".to_vec(),
        vec![],
        vec![0x00],
        vec![0xFF, 0xFE, 0x00, 0x80, b'\n'],
        b" ".to_vec(),
        b"\n".to_vec(),
        b"\r\n".to_vec(),
        fake_kpl,
        vec![b'x'; 100_000],
    ];
    v.extend((0..40).map(|i| format!("shard{shard}-{i}").into_bytes()));
    v
}

#[test]
fn every_shard_reads_back_exactly_what_was_put() {
    let stream = "every-shard";
    let (_k, client, shards) = setup(stream, 3);
    // Three shards covering the hash key space, in order, open.
    assert_eq!(
        shards.iter().map(|s| s.partition).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(shards[0].starting_hash, 0);
    assert_eq!(shards[2].ending_hash, u128::MAX);
    assert_eq!(shards[1].starting_hash, shards[0].ending_hash + 1);
    assert_eq!(shards[2].starting_hash, shards[1].ending_hash + 1);
    assert!(shards.iter().all(|s| !s.closed && s.parents.is_empty()));

    let mut put: BTreeMap<u32, (Vec<Vec<u8>>, Vec<String>)> = BTreeMap::new();
    for s in &shards {
        let values = odd_values(s.partition);
        let seqs =
            put_records_to_shard(&client, stream, hash_at(s, 1, 2), &refs(&values)).expect("put");
        put.insert(s.partition, (values, seqs));
    }
    let lineage = Lineage::new();
    for s in &shards {
        let (values, seqs) = &put[&s.partition];
        let mut r = open(
            &client,
            stream,
            s,
            &shards,
            (0, None),
            config(StartAt::TrimHorizon),
            &lineage,
        );
        let batches = read_to_end(&mut r, 7);
        assert_eq!(records(&batches), numbered(0, values), "shard {}", s.id);
        // Every batch's token is the sequence number of its last record.
        for b in &batches {
            assert!(b.records.len() <= 7);
            let last = b.records.last().unwrap().0 as usize;
            assert_eq!(b.resume.as_ref(), Some(&seqs[last]), "shard {}", s.id);
        }
        assert_eq!(batches.last().unwrap().resume.as_ref(), seqs.last());
        assert_eq!(r.millis_behind_latest(), Some(0));
        assert_eq!(r.next_offset(), values.len() as u64);
    }
    assert_eq!(lineage.finished(), vec![0, 1, 2]);
}

#[test]
fn a_resumed_reader_reads_exactly_the_suffix() {
    let stream = "resume";
    let (_k, client, shards) = setup(stream, 1);
    let s = &shards[0];
    let values: Vec<Vec<u8>> = (0..30).map(|i| format!("r{i}").into_bytes()).collect();
    let seqs = put_records_to_shard(&client, stream, 7, &refs(&values)).unwrap();
    let lineage = Lineage::new();
    for k in [1usize, 13, 29, 30] {
        let mut r = open(
            &client,
            stream,
            s,
            &shards,
            (k as u64, Some(seqs[k - 1].clone())),
            config(StartAt::TrimHorizon),
            &lineage,
        );
        let got = records(&read_to_end(&mut r, 4));
        assert_eq!(got, numbered(k as u64, &values[k..]), "resumed at {k}");
    }
    // An unbounded reader resumed mid-shard tails new records, numbering on.
    let mut r = open(
        &client,
        stream,
        s,
        &shards,
        (20, Some(seqs[19].clone())),
        ShardReadConfig::default(),
        &lineage,
    );
    let mut got = Records::new();
    let mut batch = RawBatch::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let more: Vec<Vec<u8>> = (30..35).map(|i| format!("r{i}").into_bytes()).collect();
    let mut put_more = false;
    while got.len() < 15 {
        assert!(Instant::now() < deadline, "{got:?}");
        batch.clear();
        let p = r.poll(100, &mut batch).unwrap();
        got.extend(batch.iter().map(|(b, o)| (o, b.to_vec())));
        assert_ne!(p, Poll::Finished, "an open shard never finishes unbounded");
        if got.len() == 10 && !put_more {
            put_records_to_shard(&client, stream, 7, &refs(&more)).unwrap();
            put_more = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut want = values[20..].to_vec();
    want.extend(more);
    assert_eq!(got, numbered(20, &want));
}

#[test]
fn kpl_aggregates_are_read_per_user_record_and_resume_exactly() {
    let stream = "kpl";
    let (_k, client, shards) = setup(stream, 1);
    let s = &shards[0];
    let agg = |prefix: &str, n: usize| {
        let recs: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| (format!("pk{i}"), format!("{prefix}{i}").into_bytes()))
            .collect();
        let r: Vec<(&str, &[u8])> = recs
            .iter()
            .map(|(k, d)| (k.as_str(), d.as_slice()))
            .collect();
        (
            kpl::aggregate(&r),
            recs.into_iter().map(|(_, d)| d).collect(),
        )
    };
    // (Kinesis record, its user records)
    let mut kinesis: Vec<(Vec<u8>, Vec<Vec<u8>>)> = vec![(b"p0".to_vec(), vec![b"p0".to_vec()])];
    kinesis.push(agg("a", 3));
    kinesis.push((b"p1".to_vec(), vec![b"p1".to_vec()]));
    kinesis.push(agg("b", 5));
    kinesis.push(agg("c", 1));
    let mut bad = agg("d", 2).0;
    *bad.last_mut().unwrap() ^= 0xFF; // MD5 broken: one plain record
    kinesis.push((bad.clone(), vec![bad]));
    kinesis.push(agg("e", 4));
    let seqs = put_records_to_shard(
        &client,
        stream,
        1,
        &kinesis
            .iter()
            .map(|(r, _)| r.as_slice())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let users: Vec<Vec<u8>> = kinesis.iter().flat_map(|(_, u)| u.clone()).collect();
    // For each user ordinal: the sequence number of its Kinesis record, and
    // whether it is the last user record of that Kinesis record.
    let mut owner: Vec<(String, bool)> = Vec::new();
    for ((_, u), seq) in kinesis.iter().zip(&seqs) {
        for i in 0..u.len() {
            owner.push((seq.clone(), i + 1 == u.len()));
        }
    }
    let lineage = Lineage::new();
    let mut r = open(
        &client,
        stream,
        s,
        &shards,
        (0, None),
        config(StartAt::TrimHorizon),
        &lineage,
    );
    let batches = read_to_end(&mut r, 2);
    assert_eq!(records(&batches), numbered(0, &users));
    // Batches end only where a Kinesis record ends; their token is its
    // sequence number. Some batch went over `max` to finish an aggregate.
    for b in &batches {
        let last = b.records.last().unwrap().0 as usize;
        assert!(owner[last].1, "batch ends inside an aggregate: {b:?}");
        assert_eq!(b.resume.as_ref(), Some(&owner[last].0));
    }
    assert!(batches.iter().any(|b| b.records.len() > 2));
    // Resuming at every batch boundary gives exactly the rest.
    for b in &batches {
        let next = b.records.last().unwrap().0 + 1;
        let mut r = open(
            &client,
            stream,
            s,
            &shards,
            (next, b.resume.clone()),
            config(StartAt::TrimHorizon),
            &lineage,
        );
        let got = records(&read_to_end(&mut r, 3));
        assert_eq!(
            got,
            numbered(next, &users[next as usize..]),
            "resumed at {next}"
        );
    }
}

/// One record put by the resharding producer.
#[derive(Clone, Debug)]
struct Put {
    key: usize,
    i: u64,
    shard: u32,
    seq: String,
}

fn value(key: usize, i: u64) -> Vec<u8> {
    format!("k{key}:{i}").into_bytes()
}

fn parse_value(v: &[u8]) -> (usize, u64) {
    let s = std::str::from_utf8(v).unwrap();
    let (k, i) = s[1..].split_once(':').unwrap();
    (k.parse().unwrap(), i.parse().unwrap())
}

/// Per key, the `i`s in the order read.
fn per_key(read: &[(u32, u64, Vec<u8>)]) -> BTreeMap<usize, Vec<u64>> {
    let mut m: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (_, _, v) in read {
        let (k, i) = parse_value(v);
        m.entry(k).or_default().push(i);
    }
    m
}

/// Per key, `got` equals `want`; a failure names the first key and place
/// that differ instead of printing every list.
fn assert_same_order(
    got: &BTreeMap<usize, Vec<u64>>,
    want: &BTreeMap<usize, Vec<u64>>,
    what: &str,
) {
    if let Some(d) = first_difference(got, want) {
        panic!("{what}: {d}");
    }
}

fn first_difference(
    got: &BTreeMap<usize, Vec<u64>>,
    want: &BTreeMap<usize, Vec<u64>>,
) -> Option<String> {
    let keys: BTreeSet<&usize> = got.keys().chain(want.keys()).collect();
    for k in keys {
        let (g, w) = (
            got.get(k).map_or(&[][..], Vec::as_slice),
            want.get(k).map_or(&[][..], Vec::as_slice),
        );
        if g != w {
            let at = g.iter().zip(w).take_while(|(a, b)| a == b).count();
            let window = |v: &[u64]| v[at.saturating_sub(2)..(at + 5).min(v.len())].to_vec();
            return Some(format!(
                "key {k}: {} read, {} put; first difference at position {at}: read {:?}, put {:?}",
                g.len(),
                w.len(),
                window(g),
                window(w)
            ));
        }
    }
    None
}

/// Round-robin over `readers`, `max` records each, until all finish.
fn read_all_round_robin(
    readers: &mut [KinesisShardReader],
    max: usize,
) -> Vec<(u32, u64, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    let mut done = vec![false; readers.len()];
    let mut batch = RawBatch::default();
    while done.iter().any(|d| !d) {
        assert!(Instant::now() < deadline, "not finished: {done:?}");
        for (i, r) in readers.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            batch.clear();
            let p = r.poll(max, &mut batch).unwrap();
            out.extend(batch.iter().map(|(b, o)| (r.partition(), o, b.to_vec())));
            done[i] = p == Poll::Finished;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    out
}

#[test]
fn split_and_merge_while_producing_keep_every_key_in_order() {
    let stream = "reshard";
    let (_k, client, shards) = setup(stream, 3);
    // Four keys in each shard's range; shard 0 is split in the middle (two
    // keys to each child), shards 1 and 2 are merged.
    let keys: Vec<u128> = shards
        .iter()
        .flat_map(|s| [1, 3, 5, 7].map(|n| hash_at(s, n, 8)))
        .collect();
    let log: Arc<Mutex<Vec<Put>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (client, log, stop, keys) = (client.clone(), log.clone(), stop.clone(), keys.clone());
        std::thread::spawn(move || {
            let mut last: Vec<Option<String>> = vec![None; keys.len()];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (key, hash) in keys.iter().enumerate() {
                    let (shard, seq) = put_record(
                        &client,
                        stream,
                        &format!("key{key}"),
                        Some(*hash),
                        &value(key, i),
                        last[key].as_deref(),
                    )
                    .expect("put");
                    last[key] = Some(seq.clone());
                    log.lock().unwrap().push(Put {
                        key,
                        i,
                        shard: tidemark_connectors::kinesis::partition_of(&shard).unwrap(),
                        seq,
                    });
                }
                i += 1;
            }
        })
    };

    // The live reader: starts with the three shards, finds the children by
    // re-listing, reads children only after their parents.
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let reader = {
        let (client, shards, target) = (client.clone(), shards.clone(), target.clone());
        std::thread::spawn(move || {
            let lineage = Lineage::new();
            let mut readers: Vec<KinesisShardReader> = shards
                .iter()
                .map(|s| {
                    let c = ShardReadConfig::default();
                    open(&client, stream, s, &shards, (0, None), c, &lineage)
                })
                .collect();
            let mut watcher =
                ShardWatcher::new(client.clone(), stream, Duration::from_millis(300), &shards);
            let mut discovered = Vec::new();
            let mut finished = BTreeSet::new();
            let mut read: Vec<(u32, u64, Vec<u8>)> = Vec::new();
            let mut batch = RawBatch::default();
            let mut reached: Option<Instant> = None;
            let deadline = Instant::now() + Duration::from_secs(120);
            // Read until everything put is read, then one more second to
            // catch anything read twice.
            while reached.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) {
                assert!(
                    Instant::now() < deadline,
                    "live read stuck at {}",
                    read.len()
                );
                for s in watcher.poll().expect("re-list") {
                    discovered.push(s.clone());
                    let listing = watcher.listing().to_vec();
                    let c = ShardReadConfig::default();
                    readers.push(open(&client, stream, &s, &listing, (0, None), c, &lineage));
                }
                for r in readers.iter_mut() {
                    batch.clear();
                    if r.poll(5, &mut batch).unwrap() == Poll::Finished {
                        finished.insert(r.partition());
                    }
                    read.extend(batch.iter().map(|(b, o)| (r.partition(), o, b.to_vec())));
                }
                if reached.is_none() && read.len() >= target.load(Ordering::Relaxed) {
                    reached = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (read, discovered, finished, lineage.finished())
        })
    };

    std::thread::sleep(Duration::from_millis(1000));
    let mid0 = hash_at(&shards[0], 1, 2);
    split_shard(&client, stream, &shards[0].id, mid0).expect("split");
    std::thread::sleep(Duration::from_millis(1000));
    merge_shards(&client, stream, &shards[1].id, &shards[2].id).expect("merge");
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    let log = log.lock().unwrap().clone();
    target.store(log.len(), Ordering::Relaxed);
    let (read, discovered, finished, lineage_finished) = reader.join().unwrap();

    // The shards after: 0 split into 3 (low half) and 4; 1 and 2 merged into 5.
    let after = discover_shards(&client, stream).unwrap();
    let lineage_of: Vec<(u32, Vec<u32>, bool)> = after
        .iter()
        .map(|s| (s.partition, s.parents.clone(), s.closed))
        .collect();
    assert_eq!(
        lineage_of,
        vec![
            (0, vec![], true),
            (1, vec![], true),
            (2, vec![], true),
            (3, vec![0], false),
            (4, vec![0], false),
            (5, vec![1, 2], false),
        ]
    );
    assert_eq!(after[3].ending_hash + 1, mid0);
    assert_eq!(
        discovered.iter().map(|s| s.partition).collect::<Vec<_>>(),
        vec![3, 4, 5],
        "children found by re-listing"
    );
    assert_eq!(finished, BTreeSet::from([0, 1, 2]), "closed parents finish");
    assert_eq!(lineage_finished, vec![0, 1, 2]);
    // Records went to every shard, parents and children.
    let per_shard = |p: u32| log.iter().filter(|x| x.shard == p).count();
    for p in 0..6 {
        assert!(per_shard(p) > 10, "shard {p}: {} records", per_shard(p));
    }

    // Per key: exactly the producer's put order, nothing lost or repeated.
    let mut want: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for x in &log {
        want.entry(x.key).or_default().push(x.i);
    }
    assert_same_order(&per_key(&read), &want, "live read");
    assert_eq!(read.len(), log.len());
    // Per shard: the records put there, in sequence order, ordinals 0, 1, ….
    for p in 0..6u32 {
        let mut put: Vec<&Put> = log.iter().filter(|x| x.shard == p).collect();
        put.sort_by(|a, b| tidemark_connectors::kinesis::cmp_sequence(&a.seq, &b.seq));
        let want: Records = put
            .iter()
            .enumerate()
            .map(|(n, x)| (n as u64, value(x.key, x.i)))
            .collect();
        let got: Records = read
            .iter()
            .filter(|(q, _, _)| *q == p)
            .map(|(_, o, v)| (*o, v.clone()))
            .collect();
        assert_eq!(got, want, "shard {p}");
    }

    // Afterwards, a fresh bounded read of all six shards at once, children
    // gated by their parents, gives the same per-key order...
    let lineage = Lineage::new();
    let mut readers: Vec<KinesisShardReader> = after
        .iter()
        .map(|s| {
            let c = config(StartAt::TrimHorizon);
            open(&client, stream, s, &after, (0, None), c, &lineage)
        })
        .collect();
    let all = read_all_round_robin(&mut readers, 5);
    assert_same_order(&per_key(&all), &want, "read after resharding");
    // ... and without the gate (parents not in the listing given) the same
    // read breaks it: the check above can fail.
    let ungated = Lineage::new();
    let mut readers: Vec<KinesisShardReader> = after
        .iter()
        .map(|s| {
            let c = config(StartAt::TrimHorizon);
            open(&client, stream, s, &[], (0, None), c, &ungated)
        })
        .collect();
    let all = read_all_round_robin(&mut readers, 5);
    assert_eq!(all.len(), log.len());
    assert_ne!(
        per_key(&all),
        want,
        "reading children early must reorder keys"
    );

    // The cross-process rule: a parent is done when nothing follows its
    // committed position.
    let last_of = |p: u32| {
        let mut s: Vec<&Put> = log.iter().filter(|x| x.shard == p).collect();
        s.sort_by(|a, b| tidemark_connectors::kinesis::cmp_sequence(&a.seq, &b.seq));
        s.iter().map(|x| x.seq.clone()).collect::<Vec<_>>()
    };
    let seq0 = last_of(0);
    let done =
        |id: &str, after: Option<&str>| shard_read_to_end(&client, stream, id, after).unwrap();
    assert!(done(&after[0].id, seq0.last().map(String::as_str)));
    assert!(!done(&after[0].id, Some(&seq0[seq0.len() - 2])));
    assert!(!done(&after[0].id, None));
    let seq3 = last_of(3);
    assert!(
        !done(&after[3].id, seq3.last().map(String::as_str)),
        "open shard"
    );
}

#[test]
fn a_parent_closed_long_after_its_last_record_is_read_to_its_end() {
    let stream = "quiet";
    let (_k, client, shards) = setup(stream, 1);
    let s = &shards[0];
    let values: Vec<Vec<u8>> = (0..5).map(|i| format!("q{i}").into_bytes()).collect();
    let seqs = put_records_to_shard(&client, stream, 7, &refs(&values)).unwrap();
    // Quiet for longer than the sequence numbers' 1 s resolution.
    std::thread::sleep(Duration::from_millis(2100));
    split_shard(&client, stream, &s.id, u128::MAX / 2).unwrap();
    let after = discover_shards(&client, stream).unwrap();
    assert!(after[0].closed && after[0].ending_sequence.is_some());
    let lineage = Lineage::new();
    // From the start and resumed at its last record: both finish.
    let mut r = open(
        &client,
        stream,
        &after[0],
        &after,
        (0, None),
        config(StartAt::TrimHorizon),
        &lineage,
    );
    assert_eq!(records(&read_to_end(&mut r, 10)), numbered(0, &values));
    let unbounded = ShardReadConfig::default();
    let resume = (5, Some(seqs[4].clone()));
    let mut r = open(
        &client, stream, &after[0], &after, resume, unbounded, &lineage,
    );
    assert_eq!(
        records(&read_to_end(&mut r, 10)),
        vec![],
        "closed shard, resumed at its end"
    );
    assert!(shard_read_to_end(&client, stream, &after[0].id, Some(&seqs[4])).unwrap());
    assert!(!shard_read_to_end(&client, stream, &after[0].id, Some(&seqs[3])).unwrap());
    // The children are open: never read to their end.
    assert!(!shard_read_to_end(&client, stream, &after[1].id, None).unwrap());
}

#[test]
fn at_timestamp_latest_and_end_time_starts_and_stops() {
    let stream = "times";
    let (_k, client, shards) = setup(stream, 3);
    let vals = |p: &str, n: usize| -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("{p}{i}").into_bytes()).collect()
    };
    let put = |s: &ShardInfo, v: &[Vec<u8>]| {
        put_records_to_shard(&client, stream, hash_at(s, 1, 2), &refs(v)).unwrap()
    };
    let lineage = Lineage::new();
    let fast = ReadLimits {
        at_timestamp_timeout: Duration::from_secs(1),
        end_clock_slack: Duration::ZERO,
        ..ReadLimits::default()
    };
    let bounded = |start: StartAt, end_ms: Option<i64>| ShardReadConfig {
        start,
        end_ms,
        until_caught_up: end_ms.is_none(),
        limits: fast.clone(),
    };

    // Shard 0: A before t, B after.
    let (a, b) = (vals("a", 5), vals("b", 5));
    put(&shards[0], &a);
    std::thread::sleep(Duration::from_millis(50));
    let t = now_ms();
    std::thread::sleep(Duration::from_millis(50));
    put(&shards[0], &b);
    let s0 = &shards[0];
    let mut r = open(
        &client,
        stream,
        s0,
        &shards,
        (0, None),
        bounded(StartAt::AtTimestamp(t), None),
        &lineage,
    );
    assert_eq!(
        records(&read_to_end(&mut r, 3)),
        numbered(0, &b),
        "AT_TIMESTAMP"
    );
    let mut r = open(
        &client,
        stream,
        s0,
        &shards,
        (0, None),
        bounded(StartAt::TrimHorizon, Some(t)),
        &lineage,
    );
    assert_eq!(
        records(&read_to_end(&mut r, 3)),
        numbered(0, &a),
        "end time"
    );
    let mut r = open(
        &client,
        stream,
        s0,
        &shards,
        (0, None),
        bounded(StartAt::AtTimestamp(t), Some(t)),
        &lineage,
    );
    assert_eq!(records(&read_to_end(&mut r, 3)), vec![], "empty range");

    // Shard 1: only records before t1. AT_TIMESTAMP t1 finds nothing (and
    // kinesalite never answers: the reader falls back to TRIM_HORIZON).
    let c = vals("c", 3);
    put(&shards[1], &c);
    std::thread::sleep(Duration::from_millis(50));
    let t1 = now_ms();
    let s1 = &shards[1];
    let mut r = open(
        &client,
        stream,
        s1,
        &shards,
        (0, None),
        bounded(StartAt::AtTimestamp(t1), None),
        &lineage,
    );
    assert_eq!(records(&read_to_end(&mut r, 3)), vec![], "nothing after t1");
    // An end time already past, caught up: finished, with everything before it.
    let end = now_ms();
    let mut r = open(
        &client,
        stream,
        s1,
        &shards,
        (0, None),
        bounded(StartAt::TrimHorizon, Some(end)),
        &lineage,
    );
    assert_eq!(
        records(&read_to_end(&mut r, 3)),
        numbered(0, &c),
        "end time passed"
    );
    // Unbounded from t1: records put later are read, numbered from 0.
    let live = ShardReadConfig {
        start: StartAt::AtTimestamp(t1),
        limits: fast.clone(),
        ..ShardReadConfig::default()
    };
    let mut r = open(&client, stream, s1, &shards, (0, None), live, &lineage);
    let d = vals("d", 3);
    let got = read_until(
        &mut r,
        3,
        Some(&|| {
            put(&shards[1], &d);
        }),
    );
    assert_eq!(got, numbered(0, &d), "AT_TIMESTAMP with no record yet");

    // Shard 2: LATEST reads only what is put after open.
    let (e, f) = (vals("e", 3), vals("f", 3));
    put(&shards[2], &e);
    let s2 = &shards[2];
    let mut r = open(
        &client,
        stream,
        s2,
        &shards,
        (0, None),
        bounded(StartAt::Latest, None),
        &lineage,
    );
    put(&shards[2], &f);
    assert_eq!(records(&read_to_end(&mut r, 2)), numbered(0, &f), "LATEST");
    // A time in the future: records before it are skipped, later ones read.
    let t2 = now_ms() + 1500;
    let future = ShardReadConfig {
        start: StartAt::AtTimestamp(t2),
        limits: fast.clone(),
        ..ShardReadConfig::default()
    };
    let mut r = open(&client, stream, s2, &shards, (0, None), future, &lineage);
    let (g, h) = (vals("g", 3), vals("h", 3));
    put(&shards[2], &g);
    let got = read_until(
        &mut r,
        3,
        Some(&|| {
            while now_ms() <= t2 + 50 {
                std::thread::sleep(Duration::from_millis(10));
            }
            put(&shards[2], &h);
        }),
    );
    assert_eq!(got, numbered(0, &h), "AT_TIMESTAMP in the future");
}

/// Polls `r` (unbounded) until `n` records are read, running `then` after
/// the first poll; then polls one more second to catch extra records.
fn read_until(r: &mut KinesisShardReader, n: usize, then: Option<&dyn Fn()>) -> Records {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Records::new();
    let mut batch = RawBatch::default();
    let mut then = then;
    let mut reached: Option<Instant> = None;
    while reached.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) {
        assert!(Instant::now() < deadline, "{got:?}");
        batch.clear();
        let p = r.poll(100, &mut batch).unwrap();
        assert_ne!(p, Poll::Finished);
        got.extend(batch.iter().map(|(b, o)| (o, b.to_vec())));
        if let Some(f) = then.take() {
            f();
        }
        if reached.is_none() && got.len() >= n {
            reached = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    got
}
