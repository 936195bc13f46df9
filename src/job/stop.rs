//! Stopping on request in a cluster: what each worker does with the
//! ticker's stop markers. A stop requested on any process reaches worker
//! 0's ticker through the dataflow (`tidemark_dataflow::stop`); the ticker
//! tells every worker whose stop it is ([`Marker::Stop`]) and, once the
//! stop's commit is in (or over quiet sources, without one), to leave
//! ([`Marker::Leave`]).

use std::sync::atomic::Ordering;

use tidemark_dataflow::stateful::Marker;

use super::Shared;

pub(super) fn on_marker(sh: &Shared, m: &Marker) {
    match *m {
        Marker::Stop(from) => {
            // Starts this process's stop timeout, as a signal would have.
            if !sh.spec.stop.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    from,
                    "stop requested on process {from}: the whole job commits and exits"
                );
            }
        }
        Marker::Leave { committed } => {
            sh.left_quiet.store(!committed, Ordering::Relaxed);
            sh.stopped.store(true, Ordering::Relaxed);
        }
        Marker::Commit(_) | Marker::Final => {}
    }
}
