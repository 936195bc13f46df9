//! Storage outages are ridden out: the epoch writer and the committer in a
//! small timely dataflow over the in-memory store. Every put and commit
//! fails for a few seconds in the middle of a run: both threads retry, a
//! warning naming the store, the key and the epoch comes at once and
//! repeats at a bounded rate, and after healing every epoch commits in
//! order with the same bytes as an undisturbed run. With `give_up_after`
//! a permanent outage is a typed error the job reads, not a panic.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use timely::dataflow::operators::vec::input::Handle;
use timely::dataflow::operators::vec::Input;
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;

use tidemark_checkpoint::commit_log::log_key;
use tidemark_checkpoint::committer::{
    committer, CommitFailure, CommitHandle, CommitStatus, CommitterConfig,
};
use tidemark_checkpoint::manifest::{self, Manifest, SourceNames};
use tidemark_checkpoint::retry::RetryPolicy;
use tidemark_checkpoint::storage::{Fault, MemoryStorage, Op, Storage};
use tidemark_checkpoint::writer::{writer, WriteFailure, WriteHandle, WriterConfig};
use tidemark_dataflow::event::{Anomaly, Currency, Reject, Status, Tick, Txn, TxnText, WindowRow};
use tidemark_dataflow::graph::JobStreams;
use tidemark_dataflow::params::Params;
use tidemark_dataflow::source::PositionEntry;
use tidemark_dataflow::stateful::{Marker, Report};

const TICK_MS: i64 = 1000;
const EPOCHS: Tick = 12;

/// Every log line of this test binary, with when it was written.
fn logs() -> &'static Mutex<Vec<(Instant, String)>> {
    static LOGS: OnceLock<Mutex<Vec<(Instant, String)>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        // Global: the writer and committer threads log too.
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(|| Capture)
            .init();
        Mutex::new(Vec::new())
    })
}

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf).into_owned();
        logs().lock().unwrap().push((Instant::now(), line));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The same policy as a job's, in milliseconds (and a warning at most
/// every second instead of every 30).
fn fast(give_up_after: Option<Duration>) -> RetryPolicy {
    RetryPolicy {
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
        warn_every: Duration::from_secs(1),
        slow_after: Duration::from_millis(300),
        ..RetryPolicy::default()
    }
    .giving_up_after(give_up_after)
}

fn names() -> SourceNames {
    SourceNames {
        main: "payments".into(),
        reference: "merchants".into(),
    }
}

struct Inputs {
    txns: Handle<Tick, Txn>,
    wins: Handle<Tick, WindowRow>,
    anoms: Handle<Tick, Anomaly>,
    rejs: Handle<Tick, Reject>,
    reports: Handle<Tick, Report>,
    positions: Handle<Tick, PositionEntry>,
    markers: Handle<Tick, Marker>,
}

struct Job {
    inputs: Inputs,
    probe: ProbeHandle<Tick>,
    commits: CommitHandle,
    writes: Arc<WriteHandle>,
    status: Arc<Mutex<CommitStatus>>,
}

struct Outcome {
    commit: Result<(), CommitFailure>,
    write: Option<WriteFailure>,
    status: CommitStatus,
    write_failures: u64,
}

impl Job {
    fn build(
        worker: &mut timely::worker::Worker,
        st: &Arc<MemoryStorage>,
        generation: u64,
        retry: RetryPolicy,
    ) -> Job {
        let storage = st.clone() as Arc<dyn Storage>;
        let writes = Arc::new(WriteHandle::default());
        let status = Arc::new(Mutex::new(CommitStatus::default()));
        let probe = ProbeHandle::new();
        let (inputs, commits) = worker.dataflow::<Tick, _, _>(|scope| {
            let (txns, transactions) = scope.new_input::<Txn>();
            let (wins, windows) = scope.new_input::<WindowRow>();
            let (anoms, anomalies) = scope.new_input::<Anomaly>();
            let (rejs, rejects) = scope.new_input::<Reject>();
            let (reports, report_stream) = scope.new_input::<Report>();
            let (positions, position_stream) = scope.new_input::<PositionEntry>();
            let (markers, marker_stream) = scope.new_input::<Marker>();
            let streams = JobStreams {
                transactions,
                windows,
                anomalies,
                rejects,
                reports: report_stream,
                positions: position_stream,
                markers: marker_stream.probe_with(&probe),
            };
            let epoch_reports = writer(
                &streams,
                WriterConfig {
                    storage: storage.clone(),
                    generation,
                    names: names(),
                    params: Params::default(),
                    retry,
                    handle: writes.clone(),
                    backlog: Default::default(),
                },
            );
            let commits = committer(
                epoch_reports,
                streams.positions.clone(),
                streams.markers.clone(),
                CommitterConfig {
                    storage: storage.clone(),
                    generation,
                    names: names(),
                    tick_ms: TICK_MS,
                    interval_ms: TICK_MS,
                    params_fingerprint: "fp".into(),
                    previous_epoch: None,
                    previous_seq: 0,
                    previous_positions: Vec::new(),
                    inputs: vec!["file:a.jsonl".into()],
                    ends: Vec::new(),
                    reference_inputs: Vec::new(),
                    reference_ends: Vec::new(),
                    params: None,
                    retain: 100,
                    retry,
                },
                status.clone(),
                Box::new(|_: &Manifest, _| {}),
            );
            let inputs = Inputs {
                txns,
                wins,
                anoms,
                rejs,
                reports,
                positions,
                markers,
            };
            (inputs, commits.expect("worker 0 commits"))
        });
        Job {
            inputs,
            probe,
            commits,
            writes,
            status,
        }
    }

    /// Rows, a state snapshot and a position for boundary `b`, then the
    /// inputs move past it; the worker steps until its frontier has.
    fn epoch(&mut self, worker: &mut timely::worker::Worker, b: Tick) {
        let i = &mut self.inputs;
        for n in 0..3 {
            let id = format!("t{b}-{n}");
            i.txns.send(Txn::new(
                (b - 1) * TICK_MS + n * 100,
                100 * b + n,
                Currency::Usd,
                Status::Completed,
                TxnText {
                    transaction_id: &id,
                    customer_id: "c1",
                    merchant: "m1",
                    category: "food",
                    timestamp: "1970-01-01T00:00:00Z",
                    metadata: "",
                },
                0,
                (b * 10 + n) as u64,
            ));
        }
        i.reports.send(Report::State {
            op: "dedup".into(),
            boundary: Some(b),
            groups: vec![(b as u32 % 256, vec![b as u8; 32])],
            keys: 1,
        });
        i.reports.send(Report::Duplicates(1));
        i.positions.send(PositionEntry {
            partition: 0,
            offset: b as u64 * 10 + 3,
            max_ts: Some(b * TICK_MS - 1),
            max_tick: b - 1,
            token: None,
        });
        i.markers.send(Marker::Commit(b));
        i.txns.advance_to(b);
        i.wins.advance_to(b);
        i.anoms.advance_to(b);
        i.rejs.advance_to(b);
        i.reports.advance_to(b);
        i.positions.advance_to(b);
        i.markers.advance_to(b);
        // The markers' frontier moves whatever the store does: the worker
        // never waits on it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.probe.less_than(&b) {
            assert!(
                Instant::now() < deadline,
                "the worker stopped at boundary {b}"
            );
            worker.step();
        }
        for _ in 0..3 {
            worker.step();
        }
    }

    /// Closes the inputs and steps as the job's worker loop does (leaving
    /// on a failed commit or write), then waits for the committer thread.
    fn finish(self, worker: &mut timely::worker::Worker, limit: Duration) -> Outcome {
        let Job {
            inputs,
            commits,
            writes,
            status,
            ..
        } = self;
        drop(inputs);
        let deadline = Instant::now() + limit;
        while worker.step_or_park(Some(Duration::from_millis(1))) {
            assert!(Instant::now() < deadline, "the dataflow never completed");
            if commits.failed() || writes.failed() {
                for id in worker.installed_dataflows() {
                    worker.drop_dataflow(id);
                }
                break;
            }
        }
        let commit = commits.finish();
        let status = status.lock().unwrap().clone();
        Outcome {
            commit,
            write: writes.failure(),
            status,
            write_failures: writes.failures(),
        }
    }
}

/// Every object of the store, by key.
fn contents(st: &MemoryStorage) -> Vec<(String, Vec<u8>)> {
    let mut keys = st.list("").unwrap();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let v = st.get(&k).unwrap().unwrap();
            (k, v)
        })
        .collect()
}

/// The warning lines since `since` that name this writer's state file of
/// generation `generation` (so other tests' lines do not count).
fn warnings_since(since: Instant, needle: &str) -> Vec<(Duration, String)> {
    logs()
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, l)| *t >= since && l.contains("WARN") && l.contains(needle))
        .map(|(t, l)| (t.duration_since(since), l.clone()))
        .collect()
}

/// Would fail if a storage error panicked the writer thread (the dataflow
/// never completes), if the committer gave up after a few attempts, if
/// the first warning came late (or never) or repeated without a bound, or
/// if a retried put or commit left different bytes than an undisturbed run.
#[test]
fn an_outage_mid_run_is_ridden_out_with_a_warning_and_the_same_commits() {
    logs();
    // The undisturbed run.
    let calm = Arc::new(MemoryStorage::new());
    let st = calm.clone();
    let out = timely::execute_directly(move |worker| {
        let mut job = Job::build(worker, &st, 7, fast(None));
        for b in 1..=EPOCHS {
            job.epoch(worker, b);
        }
        job.finish(worker, Duration::from_secs(30))
    });
    out.commit.unwrap();
    assert!(out.write.is_none());
    assert_eq!(out.status.epochs, EPOCHS as u64);
    assert_eq!((out.status.failures, out.write_failures), (0, 0));

    // The same run with every put and commit failing for 3 s from epoch 5
    // (after a lost answer or two first).
    let stormy = Arc::new(MemoryStorage::new());
    let st = stormy.clone();
    let outage = Duration::from_secs(3);
    let (out, outage_began) = timely::execute_directly(move |worker| {
        let mut job = Job::build(worker, &st, 7, fast(None));
        for b in 1..=3 {
            job.epoch(worker, b);
        }
        st.inject(Op::Put, "state/", Fault::LoseResponse, 1);
        st.inject(Op::PutIfAbsent, "_commits/", Fault::LoseResponse, 1);
        job.epoch(worker, 4);
        // Commits fail first (epoch 5's files are written), then every put.
        let began = Instant::now();
        st.outage(Op::PutIfAbsent, "", Fault::Fail);
        job.epoch(worker, 5);
        let deadline = Instant::now() + Duration::from_secs(10);
        while job.status.lock().unwrap().failures == 0 {
            assert!(Instant::now() < deadline, "no commit attempt failed");
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        st.outage(Op::Put, "", Fault::Fail);
        // The worker keeps stepping and taking epochs while storage is out.
        for b in 6..=9 {
            job.epoch(worker, b);
        }
        while began.elapsed() < outage {
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
        let committed_during = job.status.lock().unwrap().epochs;
        st.heal();
        for b in 10..=EPOCHS {
            job.epoch(worker, b);
        }
        let out = job.finish(worker, Duration::from_secs(30));
        assert!(committed_during <= 4, "{committed_during} commits");
        (out, began)
    });
    out.commit.unwrap();
    assert!(out.write.is_none(), "{:?}", out.write);
    assert_eq!(out.status.epochs, EPOCHS as u64);
    // Every failed attempt counted, on both threads.
    assert!(out.write_failures >= 5, "{}", out.write_failures);
    assert!(out.status.failures >= 5, "{}", out.status.failures);

    // The same objects, byte for byte: log entries, manifests, Parquet and
    // state files.
    assert_eq!(contents(&stormy), contents(&calm));
    let epochs: Vec<i64> = (1..=EPOCHS).map(|b| b * TICK_MS).collect();
    assert_eq!(manifest::list_manifests(&*stormy).unwrap(), epochs);
    for (seq, e) in epochs.iter().enumerate() {
        let entry = stormy.get(&log_key(seq as u64 + 1)).unwrap().unwrap();
        assert_eq!(manifest::parse(&entry, None).unwrap().epoch, *e);
    }

    // The writer's warning: within 10 s of the first failure (here at
    // once), naming the store, the key and the epoch, then at most once a
    // second (`warn_every`) while the outage lasts.
    let writer = warnings_since(outage_began, "-g7-w0000.");
    assert!(!writer.is_empty(), "no warning from the writer");
    let (first, line) = &writer[0];
    assert!(*first < Duration::from_secs(10), "{first:?}: {line}");
    assert!(
        line.contains("storage is failing") && line.contains("memory") && line.contains("epoch"),
        "{line}"
    );
    // One operation fails at a time per thread: at most one warning per
    // second of outage plus the first, and one for the lost answer.
    assert!(
        writer.len() >= 2 && writer.len() <= 6,
        "{} writer warnings in a 3 s outage: {writer:#?}",
        writer.len()
    );
    let committer = warnings_since(outage_began, "_commits/");
    assert!(
        committer
            .first()
            .is_some_and(|(t, _)| *t < Duration::from_secs(10)),
        "{committer:#?}"
    );
    assert!(committer.len() <= 5, "{committer:#?}");
    let back = logs()
        .lock()
        .unwrap()
        .iter()
        .any(|(t, l)| *t >= outage_began && l.contains("storage is back after"));
    assert!(back, "no line saying storage is back");
}

/// Would fail if the writer panicked (its thread dies, the dataflow never
/// completes and the loop hits its deadline) or gave up before
/// `give_up_after`, or if the failure were untyped.
#[test]
fn a_permanent_outage_with_give_up_after_is_a_typed_write_failure() {
    logs();
    let st = Arc::new(MemoryStorage::new());
    let store = st.clone();
    let t0 = Instant::now();
    let out = timely::execute_directly(move |worker| {
        let mut job = Job::build(worker, &store, 8, fast(Some(Duration::from_secs(1))));
        job.epoch(worker, 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while job.status.lock().unwrap().epochs == 0 {
            assert!(Instant::now() < deadline, "epoch 1 never committed");
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        store.outage(Op::Put, "", Fault::Fail);
        for b in 2..=4 {
            job.epoch(worker, b);
        }
        job.finish(worker, Duration::from_secs(20))
    });
    let elapsed = t0.elapsed();
    match out.write.expect("a write failure") {
        WriteFailure::GaveUp {
            root,
            key,
            epoch,
            attempts,
            error,
        } => {
            assert_eq!(root, "memory");
            assert!(
                key.ends_with("-g8-w0000.parquet") || key.contains("-g8-"),
                "{key}"
            );
            assert_eq!(epoch, Some(2000));
            assert!(attempts >= 5, "{attempts}");
            assert!(
                format!("{error:#}").contains("injected failure"),
                "{error:#}"
            );
        }
    }
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    // Epoch 1 was committed before the outage; nothing after it.
    out.commit.unwrap();
    assert_eq!(out.status.epochs, 1);
    assert_eq!(manifest::list_manifests(&*st).unwrap(), vec![1000]);
    assert!(out.write_failures >= 5);
}

/// A request that hangs has not failed, so only the watchdog can warn
/// about it: would fail if nothing were logged until the request's own
/// timeout (the S3 client's is 120 s), or if the hang stopped the worker.
#[test]
fn a_hanging_put_is_warned_about_while_it_hangs() {
    logs();
    let st = Arc::new(MemoryStorage::new());
    let store = st.clone();
    let out = timely::execute_directly(move |worker| {
        let mut job = Job::build(worker, &store, 9, fast(None));
        store.inject(Op::Put, "state/", Fault::Hang, 1);
        job.epoch(worker, 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.hanging() == 0 {
            assert!(Instant::now() < deadline, "the put never reached the store");
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        let hung = Instant::now();
        for b in 2..=3 {
            job.epoch(worker, b);
        }
        while hung.elapsed() < Duration::from_millis(1500) {
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
        let warned = warnings_since(hung, "-g9-w0000.bin");
        store.release();
        let out = job.finish(worker, Duration::from_secs(30));
        (out, warned)
    });
    let (out, warned) = out;
    out.commit.unwrap();
    assert_eq!(out.status.epochs, 3);
    // At 300 ms, then once a second: two warnings in 1.5 s.
    assert!(!warned.is_empty() && warned.len() <= 3, "{warned:#?}");
    assert!(warned[0].0 < Duration::from_secs(1), "{warned:#?}");
    assert!(
        warned[0].1.contains("has not answered") && warned[0].1.contains("memory"),
        "{warned:#?}"
    );
}
