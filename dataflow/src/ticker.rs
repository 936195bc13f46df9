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

pub fn ticker<'s, D: timely::ExchangeData>(
    progress: StreamVec<'s, Tick, D>,
    interval_ticks: i64,
    min_wall: Duration,
    after: Option<Tick>,
    stop: Arc<AtomicBool>,
) -> StreamVec<'s, Tick, Marker> {
    let index = progress.scope().index();
    progress
        .unary_frontier(Exchange::new(|_: &D| 0u64), "Ticker", move |cap, _info| {
            let mut cap = (index == 0).then_some(cap);
            let mut decided = after.unwrap_or(Tick::MIN);
            let mut last_commit: Option<Instant> = None;
            move |(input, frontier), output| {
                input.for_each(|_, data| data.clear());
                let Some(c) = cap.as_mut() else { return };
                match frontier.frontier().first().copied() {
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
