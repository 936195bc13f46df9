//! What a process holds in memory for epochs not yet durably written, and
//! whether its sources hold back reading because of it (back-pressure).
//!
//! One [`Backlog`] per process: the epoch writers (crate `checkpoint`) add
//! an epoch's bytes when they hand it to their storage thread and take them
//! off once it is written; the sources read [`Backlog::bytes`] before every
//! activation and report when they pause. Kept here, and not in the
//! writer's crate, so the dataflow does not depend on `checkpoint`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Which bound made a source pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// Downstream (the epoch writers) is more than `[checkpoint]
    /// max_pending_epochs` checkpoint intervals behind what was read.
    Epochs,
    /// Finished epochs waiting to be written hold more than `[checkpoint]
    /// max_pending_bytes`.
    Bytes,
}

impl Pause {
    pub const ALL: [Pause; 2] = [Pause::Epochs, Pause::Bytes];

    /// The `bound` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Pause::Epochs => "epochs",
            Pause::Bytes => "bytes",
        }
    }
}

#[derive(Debug, Default)]
pub struct Backlog {
    /// Bytes of finished epochs handed to writer threads and not yet written.
    bytes: AtomicU64,
    /// Sources of the process paused now, by [`Pause`] (its index in `ALL`).
    paused: [AtomicUsize; 2],
}

impl Backlog {
    /// A finished epoch of `n` bytes waits for storage.
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    /// An epoch of `n` bytes (as added) is written.
    pub fn remove(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes of finished epochs not yet written.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// A source went from pausing for `before` to pausing for `now`.
    pub fn switch(&self, before: Option<Pause>, now: Option<Pause>) {
        if before == now {
            return;
        }
        if let Some(p) = before {
            self.paused[p as usize].fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(p) = now {
            self.paused[p as usize].fetch_add(1, Ordering::AcqRel);
        }
    }

    /// How many sources of the process pause for `p` now.
    pub fn paused(&self, p: Pause) -> usize {
        self.paused[p as usize].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_and_paused_sources() {
        let b = Backlog::default();
        b.add(10);
        b.add(5);
        b.remove(10);
        assert_eq!(b.bytes(), 5);
        b.switch(None, Some(Pause::Bytes));
        b.switch(None, Some(Pause::Bytes));
        b.switch(Some(Pause::Bytes), Some(Pause::Epochs));
        b.switch(Some(Pause::Epochs), Some(Pause::Epochs));
        assert_eq!((b.paused(Pause::Epochs), b.paused(Pause::Bytes)), (1, 1));
        b.switch(Some(Pause::Bytes), None);
        assert_eq!(b.paused(Pause::Bytes), 0);
    }
}
