//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::wall_ms;

/// Exponential backoff with full jitter: the n-th delay (from 0) is uniform
/// in `[0, min(cap, base·2^n)]`. Pure: the caller sleeps or schedules.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: rand_pcg::Pcg64Mcg,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
            rng: rand_pcg::Pcg64Mcg::seed_from_u64(seed),
        }
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay; each call doubles the ceiling up to `cap`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling().as_nanos() as u64;
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_nanos(self.rng.random_range(0..=ceiling))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

pub(super) fn seed_from(s: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(s.as_bytes());
    h.write_i64(wall_ms());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_exponential_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 7);
        let ceilings: Vec<u128> = (0..6)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d <= c, "{d:?} above {c:?}");
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        // Full jitter: delays spread over the whole range, not near the top.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 11);
        let d: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(d.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(d.iter().any(|d| *d > Duration::from_millis(900)));
        // Same seed, same delays.
        let mut x = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 3);
        let mut y = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 3);
        for _ in 0..5 {
            assert_eq!(x.next_delay(), y.next_delay());
        }
    }
}
