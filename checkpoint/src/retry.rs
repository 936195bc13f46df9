//! The one retry policy of the writer and committer threads' storage work:
//! exponential backoff with jitter, forever by default or until
//! `give_up_after` has passed since the operation's first failure. While an
//! operation keeps failing, a warning names the store, the key and the
//! epoch at its first failure and then at most every `warn_every`; when it
//! succeeds again an info line says how long storage was out.
//!
//! [`Attempts`] holds the decisions (how long to wait, whether to warn,
//! whether to give up) as a pure function of the clock and a random number,
//! so they are table-tested; [`retry`] runs them with the real clock.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How storage work is retried.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The wait after the first failure, doubled after each further one.
    pub first_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
    /// Each wait is the nominal one times a factor drawn uniformly from
    /// `[1 - jitter, 1 + jitter]` (so workers do not retry in step).
    pub jitter: f64,
    /// Give up once this long has passed since the operation's first
    /// failure; `None`: never (`[checkpoint] give_up_after`).
    pub give_up_after: Option<Duration>,
    /// While an operation keeps failing, the warning repeats at most this often.
    pub warn_every: Duration,
    /// A request without an answer this long is warned about (by a
    /// watchdog thread: a hanging request has not failed yet), then at
    /// most every `warn_every`.
    pub slow_after: Duration,
}

impl Default for RetryPolicy {
    /// 0.5 s doubling to 30 s, ±20 % jitter, never giving up, a warning at
    /// the first failure (or 8 s into a request without an answer) and
    /// then at most every 30 s.
    fn default() -> RetryPolicy {
        RetryPolicy {
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            jitter: 0.2,
            give_up_after: None,
            warn_every: Duration::from_secs(30),
            slow_after: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The same policy giving up after `give_up_after` (`None`: never).
    pub fn giving_up_after(self, give_up_after: Option<Duration>) -> RetryPolicy {
        RetryPolicy {
            give_up_after,
            ..self
        }
    }

    /// The wait after the `failures`-th consecutive failure (1-based),
    /// before jitter.
    pub fn nominal_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.first_delay
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_delay)
    }

    /// The wait after the `failures`-th failure with jitter, for `unit` in `[0, 1)`.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * unit.clamp(0.0, 1.0);
        self.nominal_delay(failures).mul_f64(factor.max(0.0))
    }
}

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Wait this long, then try again; `warn`: log the failure now.
    Retry { after: Duration, warn: bool },
    /// `give_up_after` has passed since the first failure.
    GiveUp,
}

/// One operation's failures so far, and the decisions they lead to.
#[derive(Clone, Debug)]
pub struct Attempts {
    policy: RetryPolicy,
    first_failure: Option<Instant>,
    failures: u32,
    last_warned: Option<Instant>,
}

impl Attempts {
    pub fn new(policy: RetryPolicy) -> Attempts {
        Attempts {
            policy,
            first_failure: None,
            failures: 0,
            last_warned: None,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long the operation has been failing, at `now` (zero if it has not).
    pub fn failing_for(&self, now: Instant) -> Duration {
        self.first_failure
            .map_or(Duration::ZERO, |f| now.saturating_duration_since(f))
    }

    /// A failure at `now`; `unit` is a random number in `[0, 1)` for the jitter.
    /// The wait never runs past the give-up time, so giving up is on time.
    pub fn failed(&mut self, now: Instant, unit: f64) -> Step {
        let first = *self.first_failure.get_or_insert(now);
        self.failures += 1;
        let elapsed = now.saturating_duration_since(first);
        let mut after = self.policy.delay(self.failures, unit);
        if let Some(limit) = self.policy.give_up_after {
            if elapsed >= limit {
                return Step::GiveUp;
            }
            after = after.min(limit - elapsed);
        }
        let warn = self
            .last_warned
            .is_none_or(|w| now.saturating_duration_since(w) >= self.policy.warn_every);
        if warn {
            self.last_warned = Some(now);
        }
        Step::Retry { after, warn }
    }
}

/// What an operation works on, for its warnings: the store, the key, the epoch.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    pub store: &'a str,
    pub key: &'a str,
    /// The epoch (ms) the work belongs to; `None` for the final epoch not yet numbered.
    pub epoch: Option<i64>,
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} in {}", self.key, self.store)?;
        match self.epoch {
            Some(e) => write!(f, " (epoch {e})"),
            None => write!(f, " (final epoch)"),
        }
    }
}

/// Why [`retry`] stopped: the operation's own verdict (not to be retried),
/// or the give-up time passed with `error` the last failure.
#[derive(Debug)]
pub enum Stopped<E> {
    Fatal(E),
    GaveUp {
        error: E,
        failures: u32,
        after: Duration,
    },
}

/// What an attempt says about a failure.
pub enum Failure<E> {
    /// Try again (a storage error).
    Retry(E),
    /// Stop at once (say, a conflict).
    Fatal(E),
}

/// A small, seedless source of jitter (xorshift over the clock and a counter).
fn unit_random() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ nanos;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `attempt` until it succeeds, fails fatally, or the policy gives up,
/// sleeping between attempts. `on_failure` is called after every failed
/// attempt (the failure counters). Warnings and the recovery line are
/// logged here, naming `target`.
pub fn retry<T, E: fmt::Display>(
    policy: &RetryPolicy,
    target: &Target<'_>,
    mut on_failure: impl FnMut(),
    mut attempt: impl FnMut() -> Result<T, Failure<E>>,
) -> Result<T, Stopped<E>> {
    let mut attempts = Attempts::new(*policy);
    let _operation = Operation::start(policy.slow_after);
    loop {
        let watch = Watch::start(policy, target);
        let result = attempt();
        drop(watch);
        match result {
            Ok(v) => {
                if attempts.failures() > 0 {
                    let out = attempts.failing_for(Instant::now());
                    tracing::info!(
                        store = target.store,
                        key = target.key,
                        epoch = ?target.epoch,
                        failures = attempts.failures(),
                        "storage is back after {:.1}s: wrote {target}",
                        out.as_secs_f64()
                    );
                }
                return Ok(v);
            }
            Err(Failure::Fatal(e)) => {
                on_failure();
                return Err(Stopped::Fatal(e));
            }
            Err(Failure::Retry(e)) => {
                on_failure();
                let now = Instant::now();
                match attempts.failed(now, unit_random()) {
                    Step::GiveUp => {
                        return Err(Stopped::GaveUp {
                            error: e,
                            failures: attempts.failures(),
                            after: attempts.failing_for(now),
                        })
                    }
                    Step::Retry { after, warn } => {
                        if warn {
                            warn_failing(policy, target, &attempts, now, &e, after);
                        }
                        std::thread::sleep(after);
                    }
                }
            }
        }
    }
}

/// Storage operations under way (retries included): when each began, and
/// how long it may take before it counts as stalled.
static OPERATIONS: Mutex<BTreeMap<u64, (Instant, Duration)>> = Mutex::new(BTreeMap::new());

/// Registers an operation (all its attempts) while it is alive.
struct Operation(u64);

impl Operation {
    fn start(slow_after: Duration) -> Operation {
        let id = NEXT_WATCH.fetch_add(1, Ordering::Relaxed);
        OPERATIONS
            .lock()
            .unwrap()
            .insert(id, (Instant::now(), slow_after));
        Operation(id)
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        OPERATIONS.lock().unwrap().remove(&self.0);
    }
}

/// How long the oldest storage operation of this process has gone without
/// succeeding, hanging or failing, once past its `slow_after` (zero while
/// every operation is younger): what the `tidemark_checkpoint_stalled_seconds`
/// gauge shows, so an outage is visible within seconds, before any request
/// has timed out.
pub fn stalled_for() -> Duration {
    let now = Instant::now();
    OPERATIONS
        .lock()
        .unwrap()
        .values()
        .map(|(since, slow_after)| (now.saturating_duration_since(*since), *slow_after))
        .filter(|(age, slow_after)| age >= slow_after)
        .map(|(age, _)| age)
        .max()
        .unwrap_or(Duration::ZERO)
}

/// Whether the watchdog warns now about a request in flight since `since`.
pub fn slow_warning_due(
    since: Instant,
    last_warned: Option<Instant>,
    now: Instant,
    slow_after: Duration,
    every: Duration,
) -> bool {
    now.saturating_duration_since(since) >= slow_after
        && last_warned.is_none_or(|w| now.saturating_duration_since(w) >= every)
}

/// A request in flight, as the watchdog sees it.
struct InFlight {
    since: Instant,
    slow_after: Duration,
    every: Duration,
    last_warned: Option<Instant>,
    store: String,
    key: String,
    epoch: Option<i64>,
    what: String,
}

static IN_FLIGHT: Mutex<BTreeMap<u64, InFlight>> = Mutex::new(BTreeMap::new());
static NEXT_WATCH: AtomicU64 = AtomicU64::new(0);
/// How often the watchdog looks at the requests in flight.
const WATCH_TICK: Duration = Duration::from_millis(100);

/// Registers a request with the watchdog while it is alive.
struct Watch(u64);

impl Watch {
    fn start(policy: &RetryPolicy, target: &Target<'_>) -> Watch {
        static WATCHDOG: OnceLock<()> = OnceLock::new();
        WATCHDOG.get_or_init(|| {
            let _ = std::thread::Builder::new()
                .name("storage-watchdog".to_owned())
                .spawn(watchdog);
        });
        let id = NEXT_WATCH.fetch_add(1, Ordering::Relaxed);
        let entry = InFlight {
            since: Instant::now(),
            slow_after: policy.slow_after,
            every: policy.warn_every,
            last_warned: None,
            store: target.store.to_owned(),
            key: target.key.to_owned(),
            epoch: target.epoch,
            what: target.to_string(),
        };
        IN_FLIGHT.lock().unwrap().insert(id, entry);
        Watch(id)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let entry = IN_FLIGHT.lock().unwrap().remove(&self.0);
        if let Some(e) = entry.filter(|e| e.last_warned.is_some()) {
            tracing::info!(
                store = e.store,
                key = e.key,
                epoch = ?e.epoch,
                "storage answered after {:.1}s: {}",
                e.since.elapsed().as_secs_f64(),
                e.what
            );
        }
    }
}

/// Warns about requests that have not answered for their `slow_after`,
/// then at most every `warn_every`, for as long as they hang.
fn watchdog() {
    loop {
        std::thread::sleep(WATCH_TICK);
        let now = Instant::now();
        let mut in_flight = IN_FLIGHT.lock().unwrap();
        for e in in_flight.values_mut() {
            if slow_warning_due(e.since, e.last_warned, now, e.slow_after, e.every) {
                e.last_warned = Some(now);
                tracing::warn!(
                    store = e.store,
                    key = e.key,
                    epoch = ?e.epoch,
                    "storage has not answered for {:.1}s: writing {}; still waiting",
                    now.duration_since(e.since).as_secs_f64(),
                    e.what
                );
            }
        }
    }
}

fn warn_failing<E: fmt::Display>(
    policy: &RetryPolicy,
    target: &Target<'_>,
    attempts: &Attempts,
    now: Instant,
    error: &E,
    after: Duration,
) {
    let give_up = match policy.give_up_after {
        Some(d) => format!("giving up {:.0}s after the first failure", d.as_secs_f64()),
        None => "retrying until it works".to_owned(),
    };
    tracing::warn!(
        store = target.store,
        key = target.key,
        epoch = ?target.epoch,
        failures = attempts.failures(),
        failing_for_s = attempts.failing_for(now).as_secs(),
        error = %format_args!("{error:#}"),
        "storage is failing: writing {target}; retrying in {:.2}s, {give_up}",
        after.as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The schedule before jitter: a wrong rule (no doubling, no cap, an
    /// overflow at many failures) gets a row wrong.
    #[test]
    fn nominal_delays_double_to_the_cap() {
        let p = RetryPolicy::default();
        for (failures, want) in [
            (1, ms(500)),
            (2, ms(1000)),
            (3, ms(2000)),
            (4, ms(4000)),
            (6, ms(16_000)),
            (7, ms(30_000)), // 32 s capped
            (8, ms(30_000)),
            (40, ms(30_000)), // no overflow past 2^31
            (u32::MAX, ms(30_000)),
        ] {
            assert_eq!(p.nominal_delay(failures), want, "failure {failures}");
        }
    }

    /// Jitter stays within ±20 %: the row at the top end catches a factor
    /// of `1 + unit` or a one-sided jitter.
    #[test]
    fn jitter_stays_within_its_bounds() {
        let p = RetryPolicy::default();
        for (failures, unit, want) in [
            (1, 0.0, ms(400)),
            (1, 0.5, ms(500)),
            (1, 0.999_999, ms(600)),
            (3, 0.0, ms(1600)),
            (3, 1.0, ms(2400)),
            (9, 0.0, ms(24_000)),
            (9, 1.0, ms(36_000)),
            (9, 7.0, ms(36_000)), // clamped
        ] {
            let d = p.delay(failures, unit);
            let diff = d.abs_diff(want);
            assert!(
                diff <= ms(1),
                "failure {failures} at {unit}: {d:?}, want {want:?}"
            );
        }
    }

    /// The decisions over a run of failures with an injected clock: waits,
    /// warnings (first failure, then at most every 30 s) and the give-up
    /// time. A rule counting give-up from the latest failure, or warning at
    /// every failure, gets rows wrong.
    #[test]
    fn warnings_and_give_up_follow_the_clock() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let p = RetryPolicy::default().giving_up_after(Some(Duration::from_secs(100)));
        let mut a = Attempts::new(p);
        let rows: [(u64, Step); 8] = [
            (
                0,
                Step::Retry {
                    after: ms(500),
                    warn: true,
                },
            ),
            (
                1,
                Step::Retry {
                    after: ms(1000),
                    warn: false,
                },
            ),
            (
                3,
                Step::Retry {
                    after: ms(2000),
                    warn: false,
                },
            ),
            (
                29,
                Step::Retry {
                    after: ms(4000),
                    warn: false,
                },
            ),
            (
                30,
                Step::Retry {
                    after: ms(8000),
                    warn: true,
                },
            ),
            (
                59,
                Step::Retry {
                    after: ms(16_000),
                    warn: false,
                },
            ),
            // the wait is cut to the give-up time
            (
                80,
                Step::Retry {
                    after: ms(20_000),
                    warn: true,
                },
            ),
            (100, Step::GiveUp),
        ];
        for (s, want) in rows {
            assert_eq!(a.failed(at(s), 0.5), want, "at {s}s");
        }
        assert_eq!(a.failures(), 8);
        assert_eq!(a.failing_for(at(100)), Duration::from_secs(100));
    }

    /// The watchdog's rule for a request without an answer: a rule warning
    /// from the last warning only (not the request's start), or at every
    /// look, gets a row wrong.
    #[test]
    fn a_hanging_request_is_warned_about_after_slow_after_then_every_warn_every() {
        let t0 = Instant::now();
        let at = |ms_: u64| t0 + ms(ms_);
        let (slow, every) = (ms(8000), ms(30_000));
        for (now, last, want) in [
            (at(0), None, false),
            (at(7999), None, false),
            (at(8000), None, true),
            (at(9000), Some(at(8000)), false),
            (at(37_999), Some(at(8000)), false),
            (at(38_000), Some(at(8000)), true),
        ] {
            assert_eq!(
                slow_warning_due(t0, last, now, slow, every),
                want,
                "{now:?} {last:?}"
            );
        }
    }

    /// Never giving up by default, however long the outage.
    #[test]
    fn the_default_never_gives_up() {
        let t0 = Instant::now();
        let mut a = Attempts::new(RetryPolicy::default());
        let mut warnings = 0;
        for s in 0..100_000u64 {
            match a.failed(t0 + Duration::from_secs(s * 30 + 1), 0.0) {
                Step::Retry { after, warn } => {
                    assert!(after <= ms(30_000));
                    warnings += warn as u32;
                }
                Step::GiveUp => panic!("gave up after {s} failures"),
            }
        }
        // One warning per 30 s: every failure here is 30 s after the last.
        assert_eq!(warnings, 100_000);
    }

    #[test]
    fn retry_runs_until_success_and_counts_failures() {
        let p = RetryPolicy {
            first_delay: ms(1),
            max_delay: ms(4),
            ..RetryPolicy::default()
        };
        let target = Target {
            store: "mem",
            key: "k",
            epoch: Some(10),
        };
        let mut left = 3;
        let mut failures = 0;
        let r: Result<u32, Stopped<String>> = retry(
            &p,
            &target,
            || failures += 1,
            || {
                if left > 0 {
                    left -= 1;
                    Err(Failure::Retry("down".to_owned()))
                } else {
                    Ok(7)
                }
            },
        );
        assert_eq!(r.unwrap(), 7);
        assert_eq!(failures, 3);

        let p = p.giving_up_after(Some(ms(30)));
        let t = Instant::now();
        let r: Result<(), _> = retry(&p, &target, || {}, || Err(Failure::Retry("down")));
        match r {
            Err(Stopped::GaveUp {
                error,
                failures,
                after,
            }) => {
                assert_eq!(error, "down");
                assert!(failures > 3 && after >= ms(30), "{failures} {after:?}");
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(2));
        let r: Result<(), _> = retry(&p, &target, || {}, || Err(Failure::Fatal("conflict")));
        assert!(matches!(r, Err(Stopped::Fatal("conflict"))));
    }
}
