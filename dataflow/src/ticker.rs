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
//! A stop must also end a job whose sources are quiet (a followed topic
//! with nothing new: the frontier never reaches another boundary). When
//! the frontier has not moved for [`STOP_GRACE`] after the stop request,
//! the ticker broadcasts [`Marker::Leave`]: every worker leaves without a
//! new commit, and a restart resumes from the last one (re-reading what
//! came after it, which was never committed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::StreamVec;

use crate::event::Tick;
use crate::stateful::Marker;
use crate::time::floor_to;

/// How long a stop waits for the frontier to move (and reach a boundary to
/// commit) before it leaves at the last commit.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often worker 0's ticker looks at the stop request when nothing else
/// schedules it.
const STOP_POLL: Duration = Duration::from_millis(200);

pub fn ticker<'s, D: timely::ExchangeData>(
    progress: StreamVec<'s, Tick, D>,
    interval_ticks: i64,
    min_wall: Duration,
    after: Option<Tick>,
    stop: Arc<AtomicBool>,
) -> StreamVec<'s, Tick, Marker> {
    let scope = progress.scope();
    let index = scope.index();
    progress
        .unary_frontier(Exchange::new(|_: &D| 0u64), "Ticker", move |cap, info| {
            // Worker 0's ticker schedules itself to look at the stop request.
            let activator = scope.activator_for(info.address.clone());
            let mut cap = (index == 0).then_some(cap);
            let mut decided = after.unwrap_or(Tick::MIN);
            let mut last_commit: Option<Instant> = None;
            // The frontier when the stop was first seen, and when.
            let mut stop_seen: Option<(Option<Tick>, Instant)> = None;
            move |(input, frontier), output| {
                input.for_each(|_, data| data.clear());
                let Some(c) = cap.as_mut() else { return };
                let now_frontier = frontier.frontier().first().copied();
                if stop.load(Ordering::Relaxed) {
                    match stop_seen {
                        Some((f, _)) if f != now_frontier => {
                            stop_seen = Some((now_frontier, Instant::now()))
                        }
                        Some((_, at)) if at.elapsed() >= STOP_GRACE => {
                            // Quiet sources: nothing will reach a boundary.
                            output.session(&*c).give(Marker::Leave);
                            cap = None;
                            return;
                        }
                        Some(_) => {}
                        None => stop_seen = Some((now_frontier, Instant::now())),
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
                            // A stopping job commits the boundary its sources hold at.
                            let due = stop.load(Ordering::Relaxed)
                                || last_commit.is_none_or(|t| t.elapsed() >= min_wall);
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
                            }
                            decided = b;
                        }
                        let next = (decided.max(b) + interval_ticks - 1).max(*c.time());
                        c.downgrade(&next);
                    }
                    Some(_) => {}
                }
            }
        })
        .broadcast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use timely::dataflow::operators::{Input, Inspect, Probe};
    use timely::dataflow::{InputHandleVec, ProbeHandle};

    /// Drives a ticker (interval 10 ticks, `min_wall` 1 h, so only the
    /// first boundary and stops commit) through `script`: each step moves
    /// the input's frontier to a tick (or closes it with `None`), optionally
    /// sets the stop, and steps the worker for a while. Returns the markers
    /// with the wall time they were seen, relative to the stop.
    fn drive(script: Vec<(Option<Tick>, bool, Duration)>) -> Vec<(Marker, Option<Duration>)> {
        timely::execute_directly(move |worker| {
            let stop = Arc::new(AtomicBool::new(false));
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
            for (to, set_stop, run_for) in script {
                match (to, input.as_mut()) {
                    (Some(t), Some(i)) => i.advance_to(t),
                    (None, _) => input = None,
                    _ => {}
                }
                if set_stop && !stop.swap(true, Ordering::Relaxed) {
                    *stopped_at.borrow_mut() = Some(Instant::now());
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
            (Some(25), false, short),
            // Quiet: the frontier stays at 25; boundary 20 is decided but,
            // within min_wall, not marked.
            (Some(26), false, short),
            (Some(26), true, STOP_GRACE + Duration::from_secs(1)),
        ]);
        assert_eq!(markers(&seen), vec![Marker::Commit(20), Marker::Leave]);
        let after = seen[1].1.expect("seen after the stop");
        assert!(
            after >= STOP_GRACE && after < STOP_GRACE + Duration::from_millis(800),
            "left {after:?} after the stop"
        );
    }

    #[test]
    fn a_stop_over_moving_sources_commits_the_next_boundary_and_does_not_leave() {
        let short = Duration::from_millis(50);
        let seen = drive(vec![
            (Some(25), false, short),
            (Some(27), true, Duration::from_millis(500)),
            // The frontier moves within the grace and passes boundary 30: a
            // stopping job marks it at once, whatever min_wall says.
            (Some(31), false, Duration::from_millis(500)),
            (Some(33), false, Duration::from_millis(500)),
            (Some(35), false, Duration::from_millis(500)),
        ]);
        assert_eq!(markers(&seen), vec![Marker::Commit(20), Marker::Commit(30)]);
    }

    #[test]
    fn an_ended_input_is_final_without_a_stop() {
        let short = Duration::from_millis(50);
        let seen = drive(vec![(Some(25), false, short), (None, false, short)]);
        assert_eq!(markers(&seen), vec![Marker::Commit(20), Marker::Final]);
    }
}
