//! Decides the commit boundaries and tells every worker.
//!
//! Boundaries are multiples of the checkpoint interval (in ticks). Worker 0
//! watches the sources' frontier; when it passes a boundary, that boundary is
//! marked for commit if at least `min_wall` of wall time has gone by since
//! the last one, so a fast replay does not commit every few milliseconds.
//! Skipped boundaries cost nothing: the next marked one covers them. A
//! stopping job commits without waiting for `min_wall`. The
//! ticker never holds the frontier below the sources': its capability sits
//! just below the next undecided boundary.
//!
//! A stop requested on any process reaches the ticker as a notice
//! (`crate::stop`). The ticker broadcasts [`Marker::Stop`] (so every
//! process knows whose request it is), marks the next boundary the
//! frontier passes for commit at once (and no later one), and broadcasts
//! [`Marker::Leave`] when that commit is in: every worker of every process then leaves
//! together. Quiet sources (a followed topic with nothing new: the
//! frontier never reaches another boundary) must stop too: when the
//! frontier has not moved for [`STOP_GRACE`] after the request and no
//! boundary was marked, the ticker leaves without a new commit, and a
//! restart resumes from the last one (re-reading what came after it,
//! which was never committed).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::StreamVec;

use crate::event::Tick;
use crate::stateful::Marker;
use crate::stop::{notices, Stopping, STOP_POLL};
use crate::time::floor_to;

/// How long a stop waits for the frontier to move (and reach a boundary to
/// commit) before it leaves at the last commit.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Where a stop stands, on worker 0.
struct StopState {
    /// The frontier when last seen moving, and when.
    seen: (Option<Tick>, Instant),
    /// The boundary marked for the stop's commit.
    target: Option<Tick>,
}

pub fn ticker<'s, D: timely::ExchangeData + Clone>(
    progress: StreamVec<'s, Tick, D>,
    interval_ticks: i64,
    min_wall: Duration,
    after: Option<Tick>,
    stop: Stopping,
) -> StreamVec<'s, Tick, Marker> {
    let scope = progress.scope();
    let index = scope.index();
    let requests = notices(progress.clone(), stop.clone());
    progress
        .binary_frontier(
            requests,
            Exchange::new(|_: &D| 0u64),
            Exchange::new(|_: &u32| 0u64),
            "Ticker",
            move |cap, info| {
                // Worker 0's ticker schedules itself to look at the stop.
                let activator = scope.activator_for(info.address.clone());
                let mut cap = (index == 0).then_some(cap);
                let mut decided = after.unwrap_or(Tick::MIN);
                let mut last_commit: Option<Instant> = None;
                let mut stopping: Option<StopState> = None;
                move |(input, frontier), (requests, requests_frontier), output| {
                    input.for_each(|_, data| data.clear());
                    let mut from = None;
                    requests.for_each(|_, data| from = from.or(data.drain(..).next()));
                    let Some(c) = cap.as_mut() else { return };
                    let now_frontier = frontier
                        .frontier()
                        .iter()
                        .chain(requests_frontier.frontier().iter())
                        .min()
                        .copied();
                    let from = from.or(stop.is_requested().then_some(stop.process));
                    if let (None, Some(from)) = (&stopping, from) {
                        output.session(&*c).give(Marker::Stop(from));
                        stopping = Some(StopState {
                            seen: (now_frontier, Instant::now()),
                            target: None,
                        });
                    }
                    if let Some(s) = stopping.as_mut() {
                        let leave = match s.target {
                            // The stop's commit is in.
                            Some(t) => stop.committed.load(Ordering::Relaxed) >= t,
                            None if s.seen.0 != now_frontier => {
                                s.seen = (now_frontier, Instant::now());
                                false
                            }
                            // Quiet sources: nothing will reach a boundary.
                            None => s.seen.1.elapsed() >= STOP_GRACE,
                        };
                        if leave {
                            let committed = s.target.is_some();
                            output.session(&*c).give(Marker::Leave { committed });
                            cap = None;
                            return;
                        }
                    }
                    activator.activate_after(STOP_POLL);
                    match now_frontier {
                        None => {
                            output.session(&*c).give(Marker::Final);
                            cap = None;
                        }
                        Some(f) if f > Tick::MIN / 2 => {
                            let b = floor_to(f, interval_ticks);
                            if b > decided {
                                // A stopping job commits the boundary its sources
                                // hold at, and only that one: it leaves after it.
                                let due = match &stopping {
                                    Some(s) => s.target.is_none(),
                                    None => last_commit.is_none_or(|t| t.elapsed() >= min_wall),
                                };
                                if due {
                                    // With no wall-time limit every boundary commits;
                                    // otherwise the newest passed one stands for all.
                                    let lowest = if decided == Tick::MIN {
                                        b
                                    } else {
                                        decided + interval_ticks
                                    };
                                    let mut m = if min_wall.is_zero() { lowest } else { b };
                                    while m <= b {
                                        if m > *c.time() {
                                            output
                                                .session(&c.delayed(&(m - 1)))
                                                .give(Marker::Commit(m));
                                        }
                                        m += interval_ticks;
                                    }
                                    last_commit = Some(Instant::now());
                                    if let Some(s) = stopping.as_mut() {
                                        s.target.get_or_insert(b);
                                    }
                                }
                                decided = b;
                            }
                            let next = (decided.max(b) + interval_ticks - 1).max(*c.time());
                            c.downgrade(&next);
                        }
                        Some(_) => {}
                    }
                }
            },
        )
        .broadcast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicBool, AtomicI64};
    use std::sync::{Arc, Mutex};
    use timely::dataflow::operators::{Input, Inspect, Probe};
    use timely::dataflow::{InputHandleVec, ProbeHandle};

    /// What a step of a script does besides moving the frontier.
    #[derive(Clone, Copy, PartialEq)]
    enum Act {
        Run,
        /// The stop is requested on this process.
        Stop,
        /// Process 0's committer committed this boundary.
        Committed(Tick),
    }

    /// Drives a ticker (interval 10 ticks, `min_wall` 1 h, so only the
    /// first boundary and stops commit) through `script`: each step moves
    /// the input's frontier to a tick (or closes it with `None`), acts, and
    /// steps the worker for a while. Returns the markers with the wall time
    /// they were seen, relative to the stop.
    fn drive(script: Vec<(Option<Tick>, Act, Duration)>) -> Vec<(Marker, Option<Duration>)> {
        timely::execute_directly(move |worker| {
            let stop = Stopping::new(Arc::new(AtomicBool::new(false)));
            let seen = Rc::new(RefCell::new(Vec::new()));
            let mut input = InputHandleVec::<Tick, u32>::new();
            let probe = ProbeHandle::new();
            let stopped_at: Rc<RefCell<Option<Instant>>> = Rc::new(RefCell::new(None));
            worker.dataflow::<Tick, _, _>(|scope| {
                let (s, at) = (seen.clone(), stopped_at.clone());
                ticker(
                    scope.input_from(&mut input),
                    10,
                    Duration::from_secs(3600),
                    None,
                    stop.clone(),
                )
                .inspect(move |m| {
                    let since = at.borrow().map(|t: Instant| t.elapsed());
                    s.borrow_mut().push((*m, since));
                })
                .probe_with(&probe);
            });
            let mut input = Some(input);
            for (to, act, run_for) in script {
                match (to, input.as_mut()) {
                    (Some(t), Some(i)) => i.advance_to(t),
                    (None, _) => input = None,
                    _ => {}
                }
                match act {
                    Act::Stop if !stop.requested.swap(true, Ordering::Relaxed) => {
                        *stopped_at.borrow_mut() = Some(Instant::now());
                    }
                    Act::Committed(b) => stop.committed.store(b, Ordering::Relaxed),
                    _ => {}
                }
                let until = Instant::now() + run_for;
                while Instant::now() < until {
                    worker.step_or_park(Some(Duration::from_millis(10)));
                }
            }
            let out = seen.borrow().clone();
            out
        })
    }

    fn markers(seen: &[(Marker, Option<Duration>)]) -> Vec<Marker> {
        seen.iter().map(|(m, _)| *m).collect()
    }

    #[test]
    fn a_stop_over_quiet_sources_leaves_after_the_grace() {
        let short = Duration::from_millis(50);
        let seen = drive(vec![
            (Some(25), Act::Run, short),
            // Quiet: the frontier stays at 25; boundary 20 is decided but,
            // within min_wall, not marked.
            (Some(26), Act::Run, short),
            (Some(26), Act::Stop, STOP_GRACE + Duration::from_secs(1)),
        ]);
        assert_eq!(
            markers(&seen),
            vec![
                Marker::Commit(20),
                Marker::Stop(0),
                Marker::Leave { committed: false }
            ]
        );
        let after = seen[2].1.expect("seen after the stop");
        assert!(
            after >= STOP_GRACE && after < STOP_GRACE + Duration::from_millis(800),
            "left {after:?} after the stop"
        );
    }

    #[test]
    fn a_stop_over_moving_sources_commits_the_next_boundary_then_leaves_once_it_is_in() {
        let short = Duration::from_millis(50);
        let half = Duration::from_millis(500);
        let seen = drive(vec![
            (Some(25), Act::Run, short),
            (Some(27), Act::Stop, half),
            // The frontier moves within the grace and passes boundary 30: a
            // stopping job marks it at once, whatever min_wall says.
            (Some(31), Act::Run, half),
            // Past another boundary, then quiet, while the commit of 30 is
            // still to come: neither a second commit nor a leave.
            (Some(43), Act::Run, STOP_GRACE + half),
            // An earlier commit is not the stop's.
            (Some(43), Act::Committed(20), half),
            (Some(45), Act::Committed(30), half),
        ]);
        assert_eq!(
            markers(&seen),
            vec![
                Marker::Commit(20),
                Marker::Stop(0),
                Marker::Commit(30),
                Marker::Leave { committed: true }
            ]
        );
        let left = seen[3].1.expect("seen after the stop");
        let committed = half * 2 + STOP_GRACE + half * 2;
        assert!(
            left >= committed && left < committed + half,
            "left {left:?} after the stop"
        );
    }

    #[test]
    fn an_ended_input_is_final_without_a_stop() {
        let short = Duration::from_millis(50);
        let seen = drive(vec![(Some(25), Act::Run, short), (None, Act::Run, short)]);
        assert_eq!(markers(&seen), vec![Marker::Commit(20), Marker::Final]);
    }

    /// Two workers standing for two processes, each with its own stop flag:
    /// a stop requested on worker 1 only reaches worker 0's ticker as a
    /// notice, and both workers see whose stop it is and then leave.
    #[test]
    fn a_stop_requested_on_another_worker_stops_every_worker() {
        let seen: Arc<Mutex<Vec<(usize, Marker)>>> = Arc::default();
        let all = seen.clone();
        timely::execute(timely::Config::process(2), move |worker| {
            let index = worker.index();
            let mut stop = Stopping::new(Arc::new(AtomicBool::new(false)));
            stop.process = index as u32;
            stop.committed = Arc::new(AtomicI64::new(Tick::MIN));
            let mut input = InputHandleVec::<Tick, u32>::new();
            let probe = ProbeHandle::new();
            let s = all.clone();
            worker.dataflow::<Tick, _, _>(|scope| {
                ticker(
                    scope.input_from(&mut input),
                    10,
                    Duration::from_secs(3600),
                    None,
                    stop.clone(),
                )
                .inspect(move |m| s.lock().unwrap().push((index, *m)))
                .probe_with(&probe);
            });
            input.advance_to(25);
            let started = Instant::now();
            let mut left = false;
            while !left && started.elapsed() < STOP_GRACE * 3 {
                if index == 1 && started.elapsed() > Duration::from_millis(200) {
                    stop.requested.store(true, Ordering::Relaxed);
                }
                worker.step_or_park(Some(Duration::from_millis(10)));
                left = all
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(w, m)| *w == index && matches!(m, Marker::Leave { .. }));
            }
        })
        .unwrap()
        .join();
        let seen = seen.lock().unwrap();
        for w in [0, 1] {
            let mine: Vec<Marker> = seen
                .iter()
                .filter(|(x, _)| *x == w)
                .map(|(_, m)| *m)
                .collect();
            assert_eq!(
                mine,
                vec![
                    Marker::Commit(20),
                    Marker::Stop(1),
                    Marker::Leave { committed: false }
                ],
                "worker {w}"
            );
        }
    }
}
