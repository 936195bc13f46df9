//! The committer in a small timely dataflow over the in-memory store: worker
//! 0 keeps stepping while the store hangs on a commit, the queue to the
//! committer thread stays bounded, commits land in order with the log
//! positions and contents they always had, and a commit that cannot be
//! made is a typed error the job reads from the handle.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::dataflow::operators::vec::input::Handle;
use timely::dataflow::operators::vec::Input;
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;

use tidemark_checkpoint::commit_log::log_key;
use tidemark_checkpoint::committer::{
    committer, CommitFailure, CommitHandle, CommitStatus, CommitterConfig, MAX_QUEUED,
};
use tidemark_checkpoint::manifest::{
    self, Counts, FileEntry, JobSection, Manifest, Position, SourceNames,
};
use tidemark_checkpoint::retry::RetryPolicy;
use tidemark_checkpoint::storage::{Fault, MemoryStorage, Op, Storage};
use tidemark_checkpoint::writer::EpochReport;
use tidemark_dataflow::event::Tick;
use tidemark_dataflow::source::{PositionEntry, REFERENCE_BASE};
use tidemark_dataflow::stateful::Marker;

const TICK_MS: i64 = 1000;

fn config(st: &Arc<MemoryStorage>, retry: RetryPolicy) -> CommitterConfig {
    CommitterConfig {
        storage: st.clone() as Arc<dyn Storage>,
        generation: 3,
        names: names(),
        tick_ms: TICK_MS,
        interval_ms: TICK_MS,
        params_fingerprint: "fp".into(),
        previous_epoch: None,
        previous_seq: 0,
        previous_positions: Vec::new(),
        inputs: vec!["file:a.jsonl".into()],
        ends: Vec::new(),
        reference_inputs: vec!["file:m.jsonl".into()],
        reference_ends: Vec::new(),
        params: Some(serde_json::json!({"windows": []})),
        retain: 100,
        retry,
    }
}

fn names() -> SourceNames {
    SourceNames {
        main: "payments".into(),
        reference: "merchants".into(),
    }
}

/// Test delays: the same policy, in milliseconds instead of seconds.
fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        first_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(8),
        ..RetryPolicy::default()
    }
}

fn file(b: Tick) -> FileEntry {
    FileEntry {
        output: "transactions".into(),
        path: format!("transactions/date=1970-01-01/hour=00/e{b}-g3-w0000.parquet"),
        rows: b as u64 * 10,
        bytes: 100 + b as u64,
        sha256: format!("{b:064x}"),
    }
}

/// The committer of one worker, fed by hand as the writer and sources would.
struct Job {
    reports: Handle<Tick, EpochReport>,
    positions: Handle<Tick, PositionEntry>,
    markers: Handle<Tick, Marker>,
    probe: ProbeHandle<Tick>,
    handle: CommitHandle,
    status: Arc<Mutex<CommitStatus>>,
    /// The epochs `on_commit` saw, in order, and the thread that ran it.
    seen: Arc<Mutex<Vec<(i64, String)>>>,
}

impl Job {
    fn build(worker: &mut timely::worker::Worker, cfg: CommitterConfig) -> Job {
        let status = Arc::new(Mutex::new(CommitStatus::default()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let probe = ProbeHandle::new();
        let (reports, positions, markers, handle) = worker.dataflow::<Tick, _, _>(|scope| {
            let (reports, report_stream) = scope.new_input::<EpochReport>();
            let (positions, position_stream) = scope.new_input::<PositionEntry>();
            let (markers, marker_stream) = scope.new_input::<Marker>();
            let seen = seen.clone();
            let handle = committer(
                report_stream,
                position_stream,
                marker_stream.probe_with(&probe),
                cfg,
                status.clone(),
                Box::new(move |m: &Manifest, _took| {
                    let thread = std::thread::current().name().unwrap_or("").to_owned();
                    seen.lock().unwrap().push((m.epoch, thread));
                }),
            );
            (reports, positions, markers, handle)
        });
        Job {
            reports,
            positions,
            markers,
            probe,
            handle: handle.expect("worker 0 commits"),
            status,
            seen,
        }
    }

    /// What the writer and the source report for boundary `b`, then the
    /// inputs move past it and the worker steps until its frontier has.
    fn epoch(&mut self, worker: &mut timely::worker::Worker, b: Tick) {
        self.reports.send(EpochReport {
            boundary: Some(b),
            worker: 0,
            files: vec![file(b)],
            state: None,
            duplicates: b as u64,
            max_tick: Some(b - 1),
        });
        self.positions.send(PositionEntry {
            partition: 0,
            offset: b as u64 * 10,
            max_ts: Some(b * TICK_MS - 1),
            max_tick: b - 1,
            token: None,
        });
        self.markers.send(Marker::Commit(b));
        self.advance(worker, b);
    }

    fn advance(&mut self, worker: &mut timely::worker::Worker, t: Tick) {
        self.reports.advance_to(t);
        self.positions.advance_to(t);
        self.markers.advance_to(t);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.probe.less_than(&t) {
            assert!(Instant::now() < deadline, "the frontier never reached {t}");
            worker.step();
        }
        // The committer sees the frontier in the same or the next step.
        for _ in 0..3 {
            worker.step();
        }
    }

    /// Closes the inputs and steps as the job's worker loop does, leaving
    /// when the dataflow is complete or a commit failed; then waits for
    /// the committer thread as worker 0 does.
    fn finish(self, worker: &mut timely::worker::Worker) -> Outcome {
        let Job {
            reports,
            positions,
            markers,
            handle,
            status,
            seen,
            ..
        } = self;
        drop((reports, positions, markers));
        let deadline = Instant::now() + Duration::from_secs(30);
        while worker.step_or_park(Some(Duration::from_millis(1))) {
            assert!(Instant::now() < deadline, "the dataflow never completed");
            if handle.failed() {
                for id in worker.installed_dataflows() {
                    worker.drop_dataflow(id);
                }
                break;
            }
        }
        let result = handle.finish();
        let status = status.lock().unwrap().clone();
        let seen = seen.lock().unwrap().clone();
        Outcome {
            result,
            status,
            seen,
        }
    }
}

struct Outcome {
    result: Result<(), CommitFailure>,
    status: CommitStatus,
    seen: Vec<(i64, String)>,
}

/// The manifest the committer has always made for boundary `b` of the
/// epochs fed by [`Job::epoch`]: written out field by field.
fn expected(b: Tick, seq: u64, previous_epoch: Option<i64>, more: &[Position]) -> Manifest {
    let mut positions = vec![Position {
        source: "payments".into(),
        partition: 0,
        offset: b as u64 * 10,
        max_ts: Some(b * TICK_MS - 1),
        token: None,
    }];
    positions.extend(more.iter().cloned());
    Manifest::new(
        b * TICK_MS,
        vec![file(b)],
        JobSection {
            generation: 3,
            seq,
            previous_epoch,
            positions,
            state: Vec::new(),
            counts: Counts {
                duplicates: b as u64,
                records_in: 0,
            },
            params_fingerprint: "fp".into(),
            inputs: vec!["file:a.jsonl".into()],
            ends: Vec::new(),
            reference_inputs: vec!["file:m.jsonl".into()],
            reference_ends: Vec::new(),
            params: Some(serde_json::json!({"windows": []})),
        },
    )
}

fn log_entry(st: &MemoryStorage, seq: u64) -> Option<Vec<u8>> {
    st.get(&log_key(seq)).unwrap()
}

/// With today's inline commit the worker would block in the step that
/// commits boundary 1, never report, and the test fails at the deadline.
#[test]
fn worker_0_keeps_stepping_while_a_commit_hangs_and_hands_over_at_most_max_queued() {
    let st = Arc::new(MemoryStorage::new());
    // The first epoch's public manifest hangs (its log entry is claimed).
    st.inject(Op::PutIfAbsent, "manifests/", Fault::Hang, 1);
    let (tx, rx) = mpsc::channel::<(Tick, usize)>();
    let worker_st = st.clone();
    let cfg = config(&st, RetryPolicy::default());
    let job = std::thread::spawn(move || {
        timely::execute_directly(move |worker| {
            let mut job = Job::build(worker, cfg);
            job.epoch(worker, 1);
            // Step until the committer thread hangs on the store…
            let deadline = Instant::now() + Duration::from_secs(10);
            while worker_st.hanging() == 0 {
                assert!(
                    Instant::now() < deadline,
                    "the commit never reached the store"
                );
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            // …then keep going: seven more epochs pass through the dataflow.
            for b in 2..=8 {
                job.epoch(worker, b);
            }
            tx.send((8, job.handle.queued())).unwrap();
            job.finish(worker)
        })
    });
    let (reached, queued) = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(r) => r,
        Err(_) => {
            st.release();
            panic!("worker 0 stopped stepping while a commit hung on the store");
        }
    };
    assert_eq!(reached, 8);
    assert_eq!(st.hanging(), 1, "the commit of epoch 1 still hangs");
    // Four manifests handed over (the hung one included); boundaries 5 to 8
    // wait in the operator, not yet built.
    assert_eq!(queued, MAX_QUEUED);
    assert!(log_entry(&st, 1).is_some() && log_entry(&st, 2).is_none());
    assert!(manifest::list_manifests(&*st).unwrap().is_empty());

    st.release();
    let out = job.join().unwrap();
    out.result.unwrap();
    // Every epoch, in order, with the log positions and bytes as before.
    for b in 1..=8 {
        let seq = b as u64;
        let previous = (b > 1).then(|| (b - 1) * TICK_MS);
        let want = expected(b, seq, previous, &[]);
        assert_eq!(
            log_entry(&st, seq).as_deref(),
            Some(&want.to_bytes()[..]),
            "commit {seq}"
        );
        assert_eq!(manifest::load(&*st, b * TICK_MS).unwrap(), want.public());
    }
    let epochs: Vec<i64> = out.seen.iter().map(|s| s.0).collect();
    assert_eq!(epochs, (1..=8).map(|b| b * TICK_MS).collect::<Vec<_>>());
    assert!(
        out.seen.iter().all(|s| s.1 == "committer"),
        "on_commit runs on the committer thread: {:?}",
        out.seen
    );
    assert_eq!(out.status.epochs, 8);
    assert_eq!(out.status.last_epoch, Some(8000));
    assert_eq!(out.status.duplicates, (1..=8).sum::<u64>());
    assert_eq!(out.status.rows["transactions"], (1..=8).sum::<u64>() * 10);
    assert_eq!(out.status.failures, 0);
}

#[test]
fn commits_continue_the_restored_log_in_order_and_the_final_epoch_follows() {
    let st = Arc::new(MemoryStorage::new());
    let mut cfg = config(&st, fast_retry());
    // Restored from commit 7 at epoch 0, with a reference position not
    // reported again since: it is kept in every commit.
    let merchants = Position {
        source: "merchants".into(),
        partition: 0,
        offset: 42,
        max_ts: Some(-5),
        token: None,
    };
    cfg.previous_epoch = Some(0);
    cfg.previous_seq = 7;
    cfg.previous_positions = vec![merchants.clone()];
    // Some commit attempts fail or lose their answer; retries make them.
    st.inject(Op::PutIfAbsent, "_commits/", Fault::Fail, 2);
    st.inject(Op::PutIfAbsent, "_commits/", Fault::LoseResponse, 1);
    let st2 = st.clone();
    let out = timely::execute_directly(move |worker| {
        let mut job = Job::build(worker, cfg);
        for b in 1..=3 {
            job.epoch(worker, b);
        }
        // The input ends: a final report past the last boundary.
        job.reports.send(EpochReport {
            boundary: None,
            worker: 0,
            files: vec![file(9)],
            state: None,
            duplicates: 0,
            max_tick: Some(4),
        });
        job.positions.send(PositionEntry {
            partition: REFERENCE_BASE,
            offset: 50,
            max_ts: Some(4000),
            max_tick: 4,
            token: None,
        });
        let out = job.finish(worker);
        assert!(st2.list("_commits/").unwrap().len() == 4);
        out
    });
    out.result.unwrap();
    assert_eq!(out.status.failures, 3);
    for b in 1..=3 {
        let want = expected(
            b,
            7 + b as u64,
            Some((b - 1) * TICK_MS),
            std::slice::from_ref(&merchants),
        );
        assert_eq!(
            log_entry(&st, 7 + b as u64).unwrap(),
            want.to_bytes(),
            "epoch {b}"
        );
    }
    // The final epoch: the first interval boundary above tick 4.
    let last = manifest::parse(&log_entry(&st, 11).unwrap(), None).unwrap();
    assert_eq!(last.epoch, 5000);
    assert_eq!(last.job.seq, 11);
    assert_eq!(last.job.previous_epoch, Some(3000));
    assert_eq!(last.files, vec![file(9)]);
    assert_eq!(
        last.job.positions,
        vec![
            expected(3, 0, None, &[]).job.positions[0].clone(),
            Position {
                offset: 50,
                max_ts: Some(4000),
                ..merchants
            }
        ]
    );
    let epochs: Vec<i64> = out.seen.iter().map(|s| s.0).collect();
    assert_eq!(epochs, vec![1000, 2000, 3000, 5000]);
    assert_eq!(manifest::list_manifests(&*st).unwrap(), epochs);
}

/// With `give_up_after` a store that fails every commit is a typed error
/// once that long has passed since the first failure (not after a count of
/// attempts), with every attempt counted.
#[test]
fn a_store_that_fails_every_commit_is_a_typed_error_after_give_up_after() {
    let st = Arc::new(MemoryStorage::new());
    st.outage(Op::PutIfAbsent, "_commits/", Fault::Fail);
    let cfg = config(
        &st,
        fast_retry().giving_up_after(Some(Duration::from_millis(300))),
    );
    let t0 = Instant::now();
    let out = timely::execute_directly(move |worker| {
        let mut job = Job::build(worker, cfg);
        for b in 1..=6 {
            job.epoch(worker, b);
        }
        job.finish(worker)
    });
    let elapsed = t0.elapsed();
    let failure = out.result.unwrap_err();
    let attempts = match &failure {
        CommitFailure::GaveUp {
            root,
            epoch,
            attempts,
            ..
        } => {
            assert_eq!((root.as_str(), *epoch), ("memory", 1000));
            *attempts
        }
        other => panic!("expected GaveUp, got {other:?}"),
    };
    // The message `main` prints after `error: `, as the exit did.
    assert_eq!(
        failure.to_string(),
        format!(
            "memory: memory store PutIfAbsent {}: injected failure",
            log_key(1)
        )
    );
    // Waits of at most 8 ms over 300 ms: far more than the old 5 attempts.
    assert!(attempts > 20, "{attempts} attempts");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(out.status.failures, attempts as u64);
    // Nothing committed, nothing after the failed epoch tried, no callback.
    assert_eq!(st.faults(), attempts as u64);
    assert!(st.list("").unwrap().is_empty());
    assert!(out.seen.is_empty());
    assert_eq!(out.status.epochs, 0);
}

#[test]
fn a_conflict_is_a_typed_error_at_once() {
    let st = Arc::new(MemoryStorage::new());
    let cfg = config(&st, fast_retry());
    let st2 = st.clone();
    let out = timely::execute_directly(move |worker| {
        let mut job = Job::build(worker, cfg);
        job.epoch(worker, 1);
        // Another job claims the next log position.
        st2.put_if_absent(&log_key(2), b"another job").unwrap();
        for b in 2..=4 {
            job.epoch(worker, b);
        }
        job.finish(worker)
    });
    match out.result.unwrap_err() {
        CommitFailure::Conflict { root, seq, epoch } => {
            assert_eq!((root.as_str(), seq, epoch), ("memory", 2, 2000))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(out.status.failures, 1);
    assert_eq!(out.status.epochs, 1);
    assert_eq!(manifest::list_manifests(&*st).unwrap(), vec![1000]);
    assert!(log_entry(&st, 3).is_none());
}
