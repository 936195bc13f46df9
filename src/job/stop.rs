//! Stopping on request in a cluster.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tidemark_checkpoint::commit_log;

use super::Shared;

/// A process other than 0 learns of the commit that ends a stop from the
/// commit log, which only process 0 writes.
pub(super) fn watch_commits(sh: Arc<Shared>) {
    std::thread::spawn(move || {
        while !sh.spec.stop.load(Ordering::Relaxed) {
            if Arc::strong_count(&sh) == 1 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let newest = || {
            commit_log::list(&*sh.storage)
                .ok()
                .and_then(|l| l.last().copied())
        };
        let at_stop = newest();
        while Arc::strong_count(&sh) > 1 {
            if newest() > at_stop {
                sh.stopped.store(true, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}
