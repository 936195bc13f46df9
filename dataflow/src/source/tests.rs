//! The source operator end to end: lateness, successors, merchant rows,
//! idle and waiting partitions, resume positions.

use super::*;
use std::collections::VecDeque;
use std::time::Duration;
use timely::dataflow::operators::capture::Event;
use timely::dataflow::operators::Capture;

struct VecReader(VecDeque<Vec<u8>>, u64);

impl PartitionReader for VecReader {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        for _ in 0..max {
            match self.0.pop_front() {
                Some(r) => {
                    batch.push(&r, self.1);
                    self.1 += 1;
                    // A connector token, as Kinesis sequence numbers are.
                    batch.resume = Some(format!("after-{}", self.1 - 1));
                }
                None => return Ok(Poll::Finished),
            }
        }
        Ok(Poll::Ready)
    }
}

fn rec(id: &str, secs: i64) -> Vec<u8> {
    let ts = crate::rfc3339::format_rfc3339_ms(secs * 1000);
    format!(
        r#"{{"transaction_id":"{id}","customer_id":"c","amount":1.5,"currency":"USD","merchant":"m","category":"k","status":"PENDING","timestamp":"{ts}"}}"#
    )
    .into_bytes()
}

type Captured = (
    Vec<(Tick, Vec<Txn>)>,
    Vec<(Tick, Vec<Reject>)>,
    std::collections::BTreeMap<u32, PartitionStats>,
    Vec<PositionEntry>,
);

type Readers = Vec<(PartitionStart, Box<dyn PartitionReader>)>;

fn fresh(partition: u32) -> PartitionStart {
    PartitionStart {
        partition,
        offset: 0,
        max_ts: None,
        token: None,
    }
}

fn run(parts: Vec<Vec<Vec<u8>>>) -> Captured {
    run_readers(move || {
        parts
            .into_iter()
            .enumerate()
            .map(|(i, recs)| {
                (
                    fresh(i as u32),
                    Box::new(VecReader(recs.into(), 0)) as Box<dyn PartitionReader>,
                )
            })
            .collect()
    })
}

fn run_readers(make: impl FnOnce() -> Readers + Send + Sync + 'static) -> Captured {
    let meter = std::sync::Arc::new(Meter::default());
    let m = meter.clone();
    let (txns, rejects, positions) = timely::execute_directly(move |worker| {
        let (txns, rejects, positions) = worker.dataflow::<Tick, _, _>(|scope| {
            let readers = make();
            let config = SourceConfig {
                batch: 2,
                budget: 100,
                max_lag_ticks: 1000,
                max_pending_bytes: u64::MAX,
                backlog: Default::default(),
                skip_below: Tick::MIN,
                meter: m,
                max_rate: None,
            };
            let (t, r, p) = source(
                scope,
                "test",
                Params::default(),
                config,
                readers,
                ProbeHandle::new(),
            );
            (t.capture(), r.capture(), p.capture())
        });
        while worker.step() {}
        (txns, rejects, positions)
    });
    fn messages<D>(rx: std::sync::mpsc::Receiver<Event<Tick, Vec<D>>>) -> Vec<(Tick, Vec<D>)> {
        rx.try_iter()
            .filter_map(|e| match e {
                Event::Messages(t, d) => Some((*t.least().expect("a time"), d)),
                _ => None,
            })
            .collect()
    }
    let stats = meter.partitions.lock().unwrap().clone();
    let positions = messages(positions)
        .into_iter()
        .flat_map(|(_, v)| v)
        .collect();
    (messages(txns), messages(rejects), stats, positions)
}

#[test]
fn lateness_is_per_partition_and_rejects_sit_at_the_watermark() {
    let (txns, rejects, stats, positions) = run(vec![
        vec![
            rec("a", 100),
            rec("b", 95),
            rec("c", 89),
            b"{oops".to_vec(),
            rec("d", 90),
        ],
        vec![rec("e", 50)],
    ]);
    let kept: Vec<(Tick, &str, u32, u64)> = txns
        .iter()
        .flat_map(|(t, v)| {
            v.iter()
                .map(move |x| (*t, x.transaction_id(), x.partition, x.offset))
        })
        .collect();
    // Partition 1's record at 50 s is not late: partition 0's watermark
    // (90 s) does not apply to it. 90 s is exactly the watermark: on time.
    let mut kept = kept;
    kept.sort();
    assert_eq!(
        kept,
        vec![
            (50, "e", 1, 0),
            (90, "d", 0, 4),
            (95, "b", 0, 1),
            (100, "a", 0, 0)
        ]
    );
    let rej: Vec<(Tick, RejectReason, u64)> = rejects
        .iter()
        .flat_map(|(t, v)| v.iter().map(move |x| (*t, x.reason, x.offset)))
        .collect();
    // Both at the tick of partition 0's watermark when read: 100 s − 10 s.
    assert_eq!(
        rej,
        vec![
            (90, RejectReason::Late, 2),
            (90, RejectReason::Malformed, 3)
        ]
    );
    // A connector's resume token travels with the position it belongs to.
    let last = |p: u32| positions.iter().rfind(|e| e.partition == p).cloned();
    assert_eq!(
        last(0).map(|e| (e.offset, e.token)),
        Some((5, Some("after-4".to_owned())))
    );
    assert_eq!(
        last(1).map(|e| (e.offset, e.token)),
        Some((1, Some("after-0".to_owned())))
    );
    assert!(positions.iter().all(|e| e
        .token
        .as_ref()
        .is_none_or(|t| *t == format!("after-{}", e.offset - 1))));
    // Per-partition metrics: records and bytes read, position, watermark.
    let bytes0 = [
        rec("a", 100),
        rec("b", 95),
        rec("c", 89),
        b"{oops".to_vec(),
        rec("d", 90),
    ]
    .iter()
    .map(Vec::len)
    .sum::<usize>() as u64;
    assert_eq!(
        stats.get(&0),
        Some(&PartitionStats {
            records: 5,
            records_in: 5,
            bytes: bytes0,
            position: 5,
            watermark_ms: Some(90_000),
            stalled_since: None,
        })
    );
    assert_eq!(
        stats.get(&1),
        Some(&PartitionStats {
            records: 1,
            records_in: 1,
            bytes: rec("e", 50).len() as u64,
            position: 1,
            watermark_ms: Some(40_000),
            stalled_since: None,
        })
    );
}

/// Serves its records, then finishes and hands over to `children`.
struct Parent(VecReader, Vec<(u32, Vec<Vec<u8>>)>);

impl PartitionReader for Parent {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        self.0.poll(max, batch)
    }
    fn successors(&mut self) -> Result<Vec<Successor>, String> {
        Ok(std::mem::take(&mut self.1)
            .into_iter()
            .map(|(partition, recs)| Successor {
                partition,
                reader: Box::new(VecReader(recs.into(), 0)),
            })
            .collect())
    }
}

#[test]
fn successors_continue_their_parents_lateness_from_offset_zero() {
    let (txns, rejects, _, positions) = run_readers(|| {
        vec![
            (
                fresh(0),
                Box::new(Parent(
                    VecReader(vec![rec("a", 100), rec("b", 95)].into(), 0),
                    vec![
                        (5, vec![rec("c", 89), rec("d", 91), rec("e", 50)]),
                        (6, vec![rec("f", 120)]),
                    ],
                )) as Box<dyn PartitionReader>,
            ),
            (fresh(1), Box::new(VecReader(vec![rec("g", 200)].into(), 0))),
        ]
    });
    let mut kept: Vec<(Tick, String, u32, u64)> = txns
        .iter()
        .flat_map(|(t, v)| {
            v.iter()
                .map(move |x| (*t, x.transaction_id().to_owned(), x.partition, x.offset))
        })
        .collect();
    kept.sort();
    let k = |t: Tick, id: &str, p: u32, o: u64| (t, id.to_owned(), p, o);
    // d (91 s) is on time against the parent's watermark (90 s), and
    // goes out at its own tick although partition 1 is at 190 s: the
    // capability waited for the successors.
    assert_eq!(
        kept,
        vec![
            k(91, "d", 5, 1),
            k(95, "b", 0, 1),
            k(100, "a", 0, 0),
            k(120, "f", 6, 0),
            k(200, "g", 1, 0)
        ]
    );
    // c and e would be on time in a fresh partition; they are late
    // against the inherited watermark.
    let rej: Vec<(u32, u64, RejectReason)> = rejects
        .iter()
        .flat_map(|(_, v)| v.iter().map(|x| (x.partition, x.offset, x.reason)))
        .collect();
    assert_eq!(
        rej,
        vec![(5, 0, RejectReason::Late), (5, 2, RejectReason::Late)]
    );
    // Each successor is announced at offset 0 with the inherited max_ts.
    for p in [5, 6] {
        let first = positions.iter().find(|e| e.partition == p).unwrap();
        assert_eq!((first.offset, first.max_ts), (0, Some(100_000)), "{p}");
    }
}

#[test]
fn merchant_rows_are_a_source_with_their_own_lateness_and_rejects() {
    let row = |m: &str, secs: i64, tier: &str| {
        let ts = crate::rfc3339::format_rfc3339_ms(secs * 1000);
        format!(
            r#"{{"merchant":"{m}","valid_from":"{ts}","merchant_category":"k","risk_tier":"{tier}","country":"DE"}}"#
        )
        .into_bytes()
    };
    let rows = vec![
        row("a", 100, "LOW"),
        row("b", 89, "HIGH"), // below the watermark (90 s): LATE
        row("c", 95, "HUGE"), // BAD_FIELD
        row("a", 120, "HIGH"),
    ];
    let (versions, rejects) = timely::execute_directly(move |worker| {
        let (v, r) = worker.dataflow::<Tick, _, _>(|scope| {
            let (v, r, _) = source_of::<Merchants>(
                scope,
                "merchants",
                Params::default(),
                SourceConfig {
                    batch: 2,
                    budget: 100,
                    max_lag_ticks: 1000,
                    max_pending_bytes: u64::MAX,
                    backlog: Default::default(),
                    skip_below: Tick::MIN,
                    meter: Default::default(),
                    max_rate: None,
                },
                vec![(
                    fresh(3),
                    Box::new(VecReader(rows.into(), 0)) as Box<dyn PartitionReader>,
                )],
                ProbeHandle::new(),
                None,
            );
            (v.capture(), r.capture())
        });
        while worker.step() {}
        (v, r)
    });
    let versions: Vec<(Tick, String, Millis, u32, u64)> = versions
        .try_iter()
        .filter_map(|e| match e {
            Event::Messages(t, d) => Some((*t.least().unwrap(), d)),
            _ => None,
        })
        .flat_map(|(t, d)| {
            d.into_iter()
                .map(move |(m, v)| (t, m, v.valid_from, v.partition, v.offset))
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            (100, "a".to_owned(), 100_000, 3, 0),
            (120, "a".to_owned(), 120_000, 3, 3)
        ]
    );
    let rejects: Vec<(RejectReason, u64)> = rejects
        .try_iter()
        .filter_map(|e| match e {
            Event::Messages(_, d) => Some(d),
            _ => None,
        })
        .flatten()
        .map(|r| (r.reason, r.offset))
        .collect();
    assert_eq!(
        rejects,
        vec![(RejectReason::Late, 1), (RejectReason::BadField, 2)]
    );
}

/// Serves its records, then answers `.3` (CaughtUp or Waiting) until
/// `stop` is set.
struct Stalling(
    VecDeque<Vec<u8>>,
    u64,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Poll,
);

impl PartitionReader for Stalling {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        for _ in 0..max {
            let Some(r) = self.0.pop_front() else { break };
            batch.push(&r, self.1);
            self.1 += 1;
        }
        if !batch.is_empty() {
            Ok(Poll::Ready)
        } else if self.2.load(std::sync::atomic::Ordering::Relaxed) {
            Ok(Poll::Finished)
        } else {
            Ok(self.3)
        }
    }
}

#[test]
fn an_idle_partition_stops_holding_the_frontier_back() {
    assert!(
        frontier_passes_a_quiet_partition(Poll::CaughtUp, Duration::from_secs(10)),
        "the frontier stayed behind the idle partition"
    );
}

#[test]
fn a_waiting_partition_is_not_idle() {
    // Ten idle timeouts: an outage must hold the frontier, not skip it.
    assert!(
        !frontier_passes_a_quiet_partition(Poll::Waiting, Duration::from_millis(500)),
        "the frontier passed a partition that could not be read"
    );
}

/// Whether the frontier passes partition 0's watermark within `wait`
/// while partition 1 answers only `quiet`.
fn frontier_passes_a_quiet_partition(quiet: Poll, wait: Duration) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use timely::dataflow::operators::Probe;
    let stop = Arc::new(AtomicBool::new(false));
    timely::execute_directly({
        let stop = stop.clone();
        move |worker| {
            let probe = ProbeHandle::new();
            worker.dataflow::<Tick, _, _>(|scope| {
                let busy = (0..=100).map(|i| rec(&format!("t{i}"), 100 + i)).collect();
                let readers: Vec<(PartitionStart, Box<dyn PartitionReader>)> = vec![
                    (
                        PartitionStart {
                            partition: 0,
                            offset: 0,
                            max_ts: None,
                            token: None,
                        },
                        Box::new(Stalling(busy, 0, stop.clone(), Poll::CaughtUp)),
                    ),
                    // Never produces anything while the test watches.
                    (
                        PartitionStart {
                            partition: 1,
                            offset: 0,
                            max_ts: None,
                            token: None,
                        },
                        Box::new(Stalling(VecDeque::new(), 0, stop.clone(), quiet)),
                    ),
                ];
                let params = Params {
                    idle_timeout_ms: 50,
                    ..Params::default()
                };
                let config = SourceConfig {
                    batch: 16,
                    budget: 64,
                    max_lag_ticks: 1000,
                    max_pending_bytes: u64::MAX,
                    backlog: Default::default(),
                    skip_below: Tick::MIN,
                    meter: Default::default(),
                    max_rate: None,
                };
                let (t, _, _) = source(scope, "idle", params, config, readers, ProbeHandle::new());
                t.probe_with(&probe);
            });
            // Partition 0's watermark is 200 s − 10 s; partition 1 has
            // none, so only idleness lets the frontier get there.
            let deadline = Instant::now() + wait;
            while probe.less_than(&190) && Instant::now() < deadline {
                worker.step_or_park(Some(Duration::from_millis(5)));
            }
            let reached = !probe.less_than(&190);
            stop.store(true, Ordering::Relaxed);
            while worker.step_or_park(Some(Duration::from_millis(5))) {}
            reached
        }
    })
}

/// Serves what the test puts in `.0`; with nothing to serve, answers `.1`.
type Script = std::sync::Arc<std::sync::Mutex<(VecDeque<Vec<u8>>, Poll)>>;
struct Scripted(Script, u64);

impl PartitionReader for Scripted {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        let mut s = self.0.lock().unwrap();
        for _ in 0..max {
            let Some(r) = s.0.pop_front() else { break };
            batch.push(&r, self.1);
            self.1 += 1;
        }
        Ok(if batch.is_empty() { s.1 } else { Poll::Ready })
    }
    fn describe(&self) -> String {
        "scripted".to_owned()
    }
}

/// The sequence a hung Kafka broker produced: a partition with unread
/// records gets nothing for many idle timeouts while another runs far
/// ahead. It must hold the frontier all along (and be reported stalled),
/// so its records, when they come, are on time; only once it is caught
/// up does it go idle and let the frontier pass.
#[test]
fn a_partition_waiting_with_unread_records_holds_the_frontier_until_caught_up() {
    use std::sync::{Arc, Mutex};
    use timely::dataflow::operators::Probe;
    let busy: Script = Arc::new(Mutex::new((
        (0..=100).map(|i| rec(&format!("b{i}"), 100 + i)).collect(),
        Poll::CaughtUp,
    )));
    // One record (watermark 90 s), then the broker stops answering.
    let quiet: Script = Arc::new(Mutex::new((
        VecDeque::from(vec![rec("q0", 100)]),
        Poll::Waiting,
    )));
    let meter = Arc::new(Meter::default());
    let (b, q, m) = (busy.clone(), quiet.clone(), meter.clone());
    let (seen, rejects) = timely::execute_directly(move |worker| {
        let probe = ProbeHandle::new();
        let rejects = worker.dataflow::<Tick, _, _>(|scope| {
            let readers: Readers = vec![
                (fresh(0), Box::new(Scripted(b.clone(), 0))),
                (fresh(1), Box::new(Scripted(q.clone(), 0))),
            ];
            let params = Params {
                idle_timeout_ms: 300,
                ..Params::default()
            };
            let config = SourceConfig {
                batch: 16,
                budget: 64,
                max_lag_ticks: 1000,
                max_pending_bytes: u64::MAX,
                backlog: Default::default(),
                skip_below: Tick::MIN,
                meter: m.clone(),
                max_rate: None,
            };
            let (t, r, _) = source(scope, "hang", params, config, readers, ProbeHandle::new());
            t.probe_with(&probe);
            r.capture()
        });
        let frontier = || probe.with_frontier(|f| f.first().copied().unwrap_or(Tick::MAX));
        let stalled = || m.partitions.lock().unwrap()[&1].stalled_since.is_some();
        let mut seen = Vec::new();
        // Ten idle timeouts of waiting.
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
        seen.push((frontier(), stalled()));
        // The broker answers again: records partition 0's watermark
        // (190 s) has long passed, but partition 1's has not.
        q.lock().unwrap().0.extend([rec("q1", 105), rec("q2", 120)]);
        let until = Instant::now() + Duration::from_secs(5);
        while frontier() < 110 && Instant::now() < until {
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
        seen.push((frontier(), stalled()));
        // Caught up: idle after the timeout, and the frontier moves on.
        q.lock().unwrap().1 = Poll::CaughtUp;
        let until = Instant::now() + Duration::from_secs(10);
        while frontier() < 190 && Instant::now() < until {
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
        seen.push((frontier(), stalled()));
        b.lock().unwrap().1 = Poll::Finished;
        q.lock().unwrap().1 = Poll::Finished;
        while worker.step_or_park(Some(Duration::from_millis(5))) {}
        (seen, rejects)
    });
    assert_eq!(
        seen,
        vec![(90, true), (110, false), (190, false)],
        "(frontier, partition 1 stalled) while waiting, after its records, once caught up"
    );
    let rejects: Vec<Reject> = rejects
        .try_iter()
        .filter_map(|e| match e {
            Event::Messages(_, d) => Some(d),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(rejects.is_empty(), "nothing late: {rejects:?}");
    assert!(quiet.lock().unwrap().0.is_empty());
}

#[test]
fn rejects_before_any_watermark_sit_at_the_start_of_time() {
    let (_, rejects, _, _) = run(vec![vec![b"[]".to_vec(), rec("a", 10)]]);
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].0, Tick::MIN);
    assert_eq!(rejects[0].1[0].reason, RejectReason::Malformed);
}

/// Hands out its records, then fails (in the middle of a batch, as a
/// truncated file does), or, with `finish_then_fail`, finishes and then
/// cannot say which partitions continue it.
struct Failing {
    records: VecReader,
    finish_then_fail: bool,
}

impl PartitionReader for Failing {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        match self.records.poll(max, batch)? {
            Poll::Finished if !self.finish_then_fail => {
                Err("reading in/part-00000.jsonl.gz: incomplete deflate stream".into())
            }
            p => Ok(p),
        }
    }

    fn successors(&mut self) -> Result<Vec<Successor>, String> {
        Err("listing the children of shard 0: throttled".into())
    }
}

/// Runs the source over `readers` until a partition fails, then a while
/// longer: what it emitted, the positions it reported, the failure in the
/// meter, and whether the dataflow could complete (it must not: the failed
/// partition holds the capability until the job drops the dataflow).
fn run_until_failure(
    make: impl FnOnce() -> Readers + Send + Sync + 'static,
) -> (Vec<String>, Vec<PositionEntry>, Option<SourceFailure>, bool) {
    let meter = std::sync::Arc::new(Meter::default());
    let m = meter.clone();
    let (txns, positions, completed) = timely::execute_directly(move |worker| {
        let (txns, positions) = worker.dataflow::<Tick, _, _>(|scope| {
            let config = SourceConfig {
                batch: 2,
                budget: 100,
                max_lag_ticks: 1000,
                max_pending_bytes: u64::MAX,
                backlog: Default::default(),
                skip_below: Tick::MIN,
                meter: m.clone(),
                max_rate: None,
            };
            let (t, _, p) = source(
                scope,
                "test",
                Params::default(),
                config,
                make(),
                ProbeHandle::new(),
            );
            (t.capture(), p.capture())
        });
        let mut completed = false;
        let mut after = 0;
        while after < 200 {
            if !worker.step_or_park(Some(Duration::from_millis(1))) {
                completed = true;
                break;
            }
            if m.failed() {
                after += 1;
            }
        }
        // What the job does on a failure.
        for id in worker.installed_dataflows() {
            worker.drop_dataflow(id);
        }
        (txns, positions, completed)
    });
    let ids = txns
        .try_iter()
        .flat_map(|e| match e {
            Event::Messages(_, d) => d,
            _ => Vec::new(),
        })
        .map(|t| t.transaction_id().to_owned())
        .collect();
    let positions = positions
        .try_iter()
        .flat_map(|e| match e {
            Event::Messages(_, d) => d,
            _ => Vec::new(),
        })
        .collect();
    (ids, positions, meter.failure(), completed)
}

#[test]
fn a_failing_reader_stops_its_partition_where_it_read_correctly_without_a_panic() {
    let (mut ids, positions, failure, completed) = run_until_failure(|| {
        vec![
            (
                fresh(0),
                Box::new(Failing {
                    // Batches of 2: a, b | c, d | e, then the error.
                    records: VecReader(
                        ["a", "b", "c", "d", "e"]
                            .iter()
                            .zip(100..)
                            .map(|(id, s)| rec(id, s))
                            .collect(),
                        0,
                    ),
                    finish_then_fail: false,
                }) as Box<dyn PartitionReader>,
            ),
            (fresh(1), Box::new(VecReader(vec![rec("z", 200)].into(), 0))),
        ]
    });
    assert_eq!(
        failure,
        Some(SourceFailure {
            partition: 0,
            what: "reading in/part-00000.jsonl.gz: incomplete deflate stream".into()
        })
    );
    assert_eq!(
        failure.unwrap().to_string(),
        "input partition 0: reading in/part-00000.jsonl.gz: incomplete deflate stream"
    );
    assert!(!completed, "the failed partition must hold the capability");
    // e was read in the batch that failed: neither emitted nor reported.
    ids.sort();
    assert_eq!(ids, ["a", "b", "c", "d", "z"]);
    let furthest = positions
        .iter()
        .filter(|p| p.partition == 0)
        .map(|p| (p.offset, p.max_ts))
        .max()
        .unwrap();
    assert_eq!(furthest, (4, Some(103_000)));
}

#[test]
fn a_successor_listing_that_fails_fails_the_partition_instead_of_finishing_it() {
    let (ids, _, failure, completed) = run_until_failure(|| {
        vec![(
            fresh(REFERENCE_BASE + 3),
            Box::new(Failing {
                records: VecReader(vec![rec("a", 100)].into(), 0),
                finish_then_fail: true,
            }) as Box<dyn PartitionReader>,
        )]
    });
    assert_eq!(ids, ["a"]);
    assert!(
        !completed,
        "a partition whose successors are unknown must not finish"
    );
    assert_eq!(
        failure.unwrap().to_string(),
        "reference input partition 3: listing the children of shard 0: throttled"
    );
}

/// Back-pressure over the byte bound: the source reads nothing while the
/// backlog holds more than `max_pending_bytes`, and its frontier stays
/// where the records read put it. Time spent paused is not time without
/// data: a caught-up partition does not go idle (letting the frontier pass
/// it) just because the source paused for longer than `idle_timeout`.
#[test]
fn a_source_over_the_byte_bound_pauses_holding_its_frontier_and_idleness() {
    use crate::backlog::{Backlog, Pause};
    use std::sync::{Arc, Mutex};
    use timely::dataflow::operators::Probe;
    let one = |id: &str| -> Script {
        Arc::new(Mutex::new((
            VecDeque::from(vec![rec(id, 100)]),
            Poll::CaughtUp,
        )))
    };
    let (busy, quiet) = (one("b0"), one("q0"));
    let backlog = Arc::new(Backlog::default());
    let meter = Arc::new(Meter::default());
    let (b, q, m, bl) = (busy.clone(), quiet.clone(), meter.clone(), backlog.clone());
    let seen = timely::execute_directly(move |worker| {
        let probe = ProbeHandle::new();
        worker.dataflow::<Tick, _, _>(|scope| {
            let readers: Readers = vec![
                (fresh(0), Box::new(Scripted(b.clone(), 0))),
                (fresh(1), Box::new(Scripted(q.clone(), 0))),
            ];
            let params = Params {
                idle_timeout_ms: 1000,
                ..Params::default()
            };
            let config = SourceConfig {
                batch: 16,
                budget: 64,
                max_lag_ticks: 1000,
                max_pending_bytes: 5,
                backlog: bl.clone(),
                skip_below: Tick::MIN,
                meter: m.clone(),
                max_rate: None,
            };
            let (t, _, _) = source(scope, "paused", params, config, readers, ProbeHandle::new());
            t.probe_with(&probe);
        });
        let frontier = || probe.with_frontier(|f| f.first().copied().unwrap_or(Tick::MAX));
        let read = || m.records.load(std::sync::atomic::Ordering::Relaxed);
        let step_for = |worker: &mut timely::worker::Worker, d: Duration| {
            let until = Instant::now() + d;
            while Instant::now() < until {
                worker.step_or_park(Some(Duration::from_millis(5)));
            }
        };
        let mut seen = Vec::new();
        step_for(worker, Duration::from_millis(100));
        seen.push((frontier(), read(), bl.paused(Pause::Bytes)));
        // Storage holds back 10 bytes; partition 0 gets a record far ahead.
        bl.add(10);
        b.lock().unwrap().0.push_back(rec("b1", 200));
        step_for(worker, Duration::from_secs(2));
        seen.push((frontier(), read(), bl.paused(Pause::Bytes)));
        // Written: reading resumes, and partition 1, caught up but paused
        // for two idle timeouts, still holds the frontier.
        bl.remove(10);
        let until = Instant::now() + Duration::from_secs(5);
        while read() < 3 && Instant::now() < until {
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
        // Long enough for the frontier to move, well short of a timeout.
        step_for(worker, Duration::from_millis(200));
        seen.push((frontier(), read(), bl.paused(Pause::Bytes)));
        // Only a whole idle timeout of its own lets the frontier pass it.
        let until = Instant::now() + Duration::from_secs(5);
        while frontier() < 190 && Instant::now() < until {
            worker.step_or_park(Some(Duration::from_millis(5)));
        }
        seen.push((frontier(), read(), bl.paused(Pause::Bytes)));
        b.lock().unwrap().1 = Poll::Finished;
        q.lock().unwrap().1 = Poll::Finished;
        while worker.step_or_park(Some(Duration::from_millis(5))) {}
        seen
    });
    assert_eq!(
        seen,
        vec![(90, 2, 0), (90, 2, 1), (90, 3, 0), (190, 3, 0)],
        "(frontier, records read, sources paused for bytes): before, during, \
         right after the pause, and once partition 1 is idle"
    );
    assert_eq!(backlog.paused(Pause::Bytes), 0);
}
