//! The client context: librdkafka's logs and errors routed to `tracing`,
//! at most one line per error kind per interval.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

/// At most one log line per error kind in this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Logs at most one line per key per [`LOG_INTERVAL`], with the count of
/// lines held back, so a broker outage does not flood the log.
#[derive(Default)]
struct Throttle(Mutex<HashMap<String, (Instant, u64)>>);

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be logged.
    fn allow(&self, key: &str) -> Option<u64> {
        let mut m = self.0.lock().unwrap();
        let now = Instant::now();
        match m.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < LOG_INTERVAL => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                Some(n)
            }
            None => {
                m.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Routes librdkafka's logs and errors to `tracing`, throttled.
#[derive(Default)]
pub struct KafkaContext {
    throttle: Throttle,
}

impl KafkaContext {
    pub(super) fn warn(&self, key: &str, msg: &dyn fmt::Display) {
        if let Some(held) = self.throttle.allow(key) {
            tracing::warn!(held_back = held, "kafka: {msg}");
        }
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Debug | RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice => {
                tracing::debug!(target: "librdkafka", "{fac} {msg}")
            }
            _ => self.warn(fac, &format_args!("librdkafka {fac}: {msg}")),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Reaching a partition's end is news, not trouble.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        let key = format!("{:?}", error.rdkafka_error_code());
        self.warn(&key, &format_args!("{error}: {reason}"));
    }
}

impl ConsumerContext for KafkaContext {}

pub type KafkaConsumer = BaseConsumer<KafkaContext>;
