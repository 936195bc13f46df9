//! Event time ↔ timely ticks, and epoch boundaries.

use crate::event::{Millis, Tick};

/// The tick holding event time `ms` (floor division, so times before 1970 work).
#[inline]
pub fn tick_of(ms: Millis, tick_ms: i64) -> Tick {
    ms.div_euclid(tick_ms)
}

/// First millisecond of a tick.
#[inline]
pub fn tick_start(t: Tick, tick_ms: i64) -> Millis {
    t.saturating_mul(tick_ms)
}

/// Largest multiple of `step` that is `<= t`.
#[inline]
pub fn floor_to(t: i64, step: i64) -> i64 {
    t - t.rem_euclid(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_floor_including_negative_times() {
        assert_eq!(tick_of(0, 1000), 0);
        assert_eq!(tick_of(999, 1000), 0);
        assert_eq!(tick_of(1000, 1000), 1);
        assert_eq!(tick_of(-1, 1000), -1);
        assert_eq!(tick_of(-1000, 1000), -1);
        assert_eq!(tick_of(-1001, 1000), -2);
        assert_eq!(floor_to(25, 10), 20);
        assert_eq!(floor_to(-5, 10), -10);
        assert_eq!(tick_start(-2, 1000), -2000);
    }
}
