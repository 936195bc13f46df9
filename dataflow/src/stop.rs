//! A stop requested on any process (SIGTERM/SIGINT there) becomes a stop
//! of the whole job. Every worker runs [`notices`]: once its process's stop
//! flag is set it sends that process's index to worker 0, whose ticker
//! (`crate::ticker`) then stops the job for everyone: it broadcasts
//! [`Marker::Stop`](crate::stateful::Marker::Stop), commits the next
//! boundary the frontier passes (or none over quiet sources), and
//! broadcasts `Leave` once that commit is done. Timely's channels are the
//! only way between processes, so the notice travels as data.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::event::Tick;

/// How often an idle operator looks at the stop flag.
pub(crate) const STOP_POLL: Duration = Duration::from_millis(100);

/// What the dataflow shares with its process about stopping.
#[derive(Clone)]
pub struct Stopping {
    /// This process's stop request: set by a signal, or by the job when it
    /// learns of another process's request.
    pub requested: Arc<AtomicBool>,
    /// The newest committed boundary (tick), kept by process 0's committer:
    /// the ticker leaves once the stop's commit is in.
    pub committed: Arc<AtomicI64>,
    /// This process's index, named in its notice.
    pub process: u32,
}

impl Stopping {
    /// A single process's, with nothing committed yet.
    pub fn new(requested: Arc<AtomicBool>) -> Self {
        Stopping {
            requested,
            committed: Arc::new(AtomicI64::new(Tick::MIN)),
            process: 0,
        }
    }

    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }
}

/// Each worker's stop notice: its process index, sent once when the stop
/// flag is set. The operator's capability follows `progress`'s frontier
/// (the sources'), so it never holds the ticker back; it lets go when the
/// sources end, as the job then ends by itself.
pub fn notices<'s, D: timely::ExchangeData>(
    progress: StreamVec<'s, Tick, D>,
    stop: Stopping,
) -> StreamVec<'s, Tick, u32> {
    let scope = progress.scope();
    progress.unary_frontier(Pipeline, "StopNotice", move |cap, info| {
        let activator = scope.activator_for(info.address.clone());
        let mut cap = Some(cap);
        move |(input, frontier), output| {
            input.for_each(|_, data| data.clear());
            let Some(c) = cap.as_mut() else { return };
            if stop.is_requested() {
                output.session(&*c).give(stop.process);
                cap = None;
                return;
            }
            match frontier.frontier().first() {
                None => {
                    cap = None;
                    return;
                }
                Some(f) if f > c.time() => c.downgrade(f),
                Some(_) => {}
            }
            activator.activate_after(STOP_POLL);
        }
    })
}
