//! Flow control of a source: how much it may read in one activation, and
//! when to look again. Small pure functions; the operator supplies the
//! clock and the probe's frontier.

use std::time::{Duration, Instant};

use crate::backlog::Pause;
use crate::event::Tick;

/// Whether the source pauses reading (back-pressure), and for which bound:
/// finished epochs waiting for storage hold more than `max_bytes`
/// (`pending`), or downstream lags (see [`lagging`]). A pause only stops
/// reading: the capability stays where the records read put it, so the
/// frontier never passes a record not yet read (none becomes late for
/// it), and the epochs already read still close. Only finished epochs
/// count in `pending`, never the one being filled, so writing them is all
/// it takes to resume: a pause cannot wait for itself.
pub(super) fn pause(
    cap: Tick,
    done: Option<Tick>,
    max_lag_ticks: i64,
    pending: u64,
    max_bytes: u64,
) -> Option<Pause> {
    if pending > max_bytes {
        Some(Pause::Bytes)
    } else if lagging(cap, done, max_lag_ticks) {
        Some(Pause::Epochs)
    } else {
        None
    }
}

/// Whether downstream lags: the probe (`done`, its least time) is more than
/// `max_lag_ticks` behind the source's capability `cap`. Nothing lags before
/// the source has a time, or while the probe is empty.
fn lagging(cap: Tick, done: Option<Tick>, max_lag_ticks: i64) -> bool {
    done.is_some_and(|done| cap > Tick::MIN && done < cap.saturating_sub(max_lag_ticks))
}

/// Under a rate of `rate` records per second, `elapsed` after the start with
/// `read` records read so far: how many may be read now (at most `cap`), and
/// the count of records read to charge from now on. Credit left unused while
/// a source waited (an outage) is capped at one second's worth, so there is
/// no burst past the rate.
pub(super) fn rate_budget(rate: u64, elapsed: Duration, read: u64, cap: usize) -> (usize, u64) {
    let allowed = (elapsed.as_secs_f64() * rate as f64) as u64;
    let read = read.max(allowed.saturating_sub(rate));
    ((allowed.saturating_sub(read) as usize).min(cap), read)
}

/// Records one partition may read per poll: every one of `live` partitions
/// gets a fair share of `budget`, at most `batch` and at least one.
pub(super) fn fair_share(batch: usize, budget: usize, live: usize) -> usize {
    batch.min(budget.div_ceil(live.max(1))).max(1)
}

/// When to activate the operator again: `None` at once, otherwise after a
/// pause (10 ms when a partition had nothing to hand out, 1 ms when only
/// back-pressure or the rate held reading back).
pub(super) fn reactivate_after(
    paused: bool,
    throttled: bool,
    pending: bool,
    read: usize,
) -> Option<Duration> {
    if paused || throttled || (pending && read == 0) {
        Some(Duration::from_millis(if pending { 10 } else { 1 }))
    } else {
        None
    }
}

/// The `--rate` limit of one worker's source (`None`: no limit).
pub(super) struct Rate {
    max_rate: Option<u64>,
    started: Instant,
    /// Records read since `started`, less credit forfeited (see [`rate_budget`]).
    read: u64,
}

impl Rate {
    pub(super) fn new(max_rate: Option<u64>) -> Self {
        Rate {
            max_rate,
            started: Instant::now(),
            read: 0,
        }
    }

    /// Records that may be read in this activation, at most `cap`.
    pub(super) fn budget(&mut self, cap: usize) -> usize {
        match self.max_rate {
            Some(rate) => {
                let (budget, read) = rate_budget(rate, self.started.elapsed(), self.read, cap);
                self.read = read;
                budget
            }
            None => cap,
        }
    }

    /// `n` records were read.
    pub(super) fn consumed(&mut self, n: usize) {
        self.read += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_measured_against_the_capability() {
        assert!(!lagging(100, None, 10), "an empty probe does not lag");
        assert!(!lagging(Tick::MIN, Some(Tick::MIN), 10), "no time yet");
        assert!(!lagging(100, Some(90), 10), "exactly max_lag behind");
        assert!(lagging(100, Some(89), 10));
        assert!(!lagging(100, Some(100), 10));
        assert!(!lagging(Tick::MIN + 1, Some(Tick::MIN), 10), "saturates");
    }

    #[test]
    fn pauses_over_either_bound() {
        let e = Some(Pause::Epochs);
        let b = Some(Pause::Bytes);
        // (cap, probe, max_lag_ticks, pending bytes, max bytes) → pause
        for (cap, done, lag, pending, max, want) in [
            (100, Some(100), 20, 0, 1024, None),
            (100, Some(80), 20, 1024, 1024, None),
            (100, Some(79), 20, 0, 1024, e),
            (100, Some(100), 20, 1025, 1024, b),
            (100, Some(79), 20, 1025, 1024, b),
            (100, None, 20, 0, 1024, None),
            // Bytes alone pause even before the source has a time.
            (Tick::MIN, None, 20, 1025, 1024, b),
            (Tick::MIN, Some(Tick::MIN), 20, 0, 0, None),
        ] {
            assert_eq!(
                pause(cap, done, lag, pending, max),
                want,
                "cap {cap}, done {done:?}, lag {lag}, {pending} of {max} bytes"
            );
        }
    }

    #[test]
    fn rate_budget_follows_the_clock() {
        let s = Duration::from_secs;
        assert_eq!(rate_budget(100, s(0), 0, 1000), (0, 0));
        assert_eq!(
            rate_budget(100, Duration::from_millis(500), 0, 1000),
            (50, 0)
        );
        assert_eq!(rate_budget(100, s(1), 60, 1000), (40, 60));
        // Capped by the activation's budget.
        assert_eq!(rate_budget(100, s(1), 0, 30), (30, 0));
        // Ahead of the rate: nothing until the clock catches up.
        assert_eq!(rate_budget(100, s(1), 150, 1000), (0, 150));
    }

    #[test]
    fn rate_credit_is_capped_at_one_second() {
        // Ten seconds without reading (an outage): one second's worth, not ten.
        assert_eq!(
            rate_budget(100, Duration::from_secs(10), 0, 10_000),
            (100, 900)
        );
        let mut r = Rate {
            max_rate: Some(100),
            started: Instant::now() - Duration::from_secs(10),
            read: 0,
        };
        let b = r.budget(10_000);
        assert!((100..=101).contains(&b), "{b}");
        r.consumed(b);
        assert!(r.budget(10_000) <= 1);
        assert_eq!(Rate::new(None).budget(64), 64);
    }

    #[test]
    fn every_live_partition_gets_a_fair_share() {
        assert_eq!(fair_share(16, 64, 2), 16);
        assert_eq!(fair_share(16, 64, 8), 8);
        assert_eq!(fair_share(16, 10, 3), 4);
        assert_eq!(fair_share(16, 1, 5), 1);
        assert_eq!(fair_share(16, 64, 0), 16, "no live partition counts as one");
    }

    #[test]
    fn reactivation() {
        let ms = Duration::from_millis;
        assert_eq!(reactivate_after(false, false, false, 5), None);
        assert_eq!(reactivate_after(false, false, true, 5), None);
        assert_eq!(reactivate_after(false, false, true, 0), Some(ms(10)));
        assert_eq!(reactivate_after(true, false, false, 0), Some(ms(1)));
        assert_eq!(reactivate_after(false, true, false, 0), Some(ms(1)));
        assert_eq!(reactivate_after(true, false, true, 3), Some(ms(10)));
    }
}
