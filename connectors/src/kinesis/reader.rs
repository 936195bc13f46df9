//! One shard as a [`PartitionReader`]: start and end positions, the
//! GetRecords pace, backoff and iterator renewal, KPL de-aggregation, and
//! the idleness rule: [`Poll::CaughtUp`] only when the last GetRecords said
//! `MillisBehindLatest` = 0 with nothing buffered and no call failing, else
//! [`Poll::Waiting`].

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tidemark_dataflow::source::{PartitionReader, Poll, RawBatch};

use super::api::{IteratorStart, RecordsPage, SdkShardApi, ShardApi, ShardRecord};
use super::backoff::{seed_from, Backoff};
use super::client::{ApiError, KinesisClient};
use super::kpl;
use super::lineage::Lineage;
use super::shards::{cmp_sequence, is_sequence_number, ShardInfo};
use super::{wall_ms, MAX_RECORDS_PER_CALL, MIN_CALL_INTERVAL, READ_CALL_TIMEOUT};

/// At most one log line per kind and shard in this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Where a shard without a checkpoint starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest retained record.
    TrimHorizon,
    /// Only records put after the reader is opened.
    Latest,
    /// The first record that arrived at or after this time (ms since the
    /// epoch).
    AtTimestamp(i64),
}

/// Rates, backoff and timeouts of a reader. The defaults follow AWS's
/// limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// Records asked per GetRecords call (1..=10,000).
    pub max_records_per_call: usize,
    /// Least time between two GetRecords calls on the shard.
    pub min_interval: Duration,
    /// First backoff ceiling after a throttling or transient error.
    pub backoff_base: Duration,
    /// Largest backoff ceiling.
    pub backoff_cap: Duration,
    /// Timeout of GetShardIterator AT_TIMESTAMP before falling back to
    /// TRIM_HORIZON with the time enforced on our side.
    pub at_timestamp_timeout: Duration,
    /// With an end time, a caught-up shard is finished once the wall clock
    /// is this far past the end (arrival times are the server's clock).
    pub end_clock_slack: Duration,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_records_per_call: MAX_RECORDS_PER_CALL,
            min_interval: MIN_CALL_INTERVAL,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(10),
            at_timestamp_timeout: Duration::from_secs(5),
            end_clock_slack: Duration::from_secs(5),
        }
    }
}

/// How one shard is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardReadConfig {
    /// Used when there is no resume token.
    pub start: StartAt,
    /// Bounded read: stop before the first record that arrived at or after
    /// this time (ms since the epoch, exclusive).
    pub end_ms: Option<i64>,
    /// Bounded read: stop at the first empty GetRecords with
    /// `MillisBehindLatest == 0` ("to the end as of now"; a shard written
    /// faster than it is read may run on, so combine with `end_ms` for a
    /// hard bound).
    pub until_caught_up: bool,
    pub limits: ReadLimits,
}

impl Default for ShardReadConfig {
    fn default() -> Self {
        ShardReadConfig {
            start: StartAt::TrimHorizon,
            end_ms: None,
            until_caught_up: false,
            limits: ReadLimits::default(),
        }
    }
}

/// Per-shard counters, shared with whoever holds the `Arc` (metrics), also
/// after the reader is boxed into the dataflow.
#[derive(Debug)]
pub struct ShardMetrics {
    /// `MillisBehindLatest` of the last GetRecords; -1 before the first.
    pub millis_behind_latest: AtomicI64,
    pub get_records_calls: AtomicU64,
    /// Throttling answers (ProvisionedThroughputExceeded and the like).
    pub throttled: AtomicU64,
    /// Timeouts and transport errors.
    pub transient_errors: AtomicU64,
    pub expired_iterators: AtomicU64,
    /// Records dropped because their sequence number was not above the last
    /// one fetched (a server re-delivering; 0 unless something is wrong).
    pub skipped_repeats: AtomicU64,
    /// Kinesis records fetched, and user records handed out.
    pub kinesis_records: AtomicU64,
    pub user_records: AtomicU64,
    pub finished: AtomicBool,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            millis_behind_latest: AtomicI64::new(-1),
            get_records_calls: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            transient_errors: AtomicU64::new(0),
            expired_iterators: AtomicU64::new(0),
            skipped_repeats: AtomicU64::new(0),
            kinesis_records: AtomicU64::new(0),
            user_records: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        }
    }
}

/// One shard as a [`PartitionReader`]. See the module docs.
pub struct KinesisShardReader {
    api: Box<dyn ShardApi>,
    stream: String,
    shard_id: String,
    partition: u32,
    /// Parents still to wait for (emptied once they are finished).
    wait_for: Vec<u32>,
    lineage: Arc<Lineage>,
    config: ShardReadConfig,
    /// The resume token given at open, if any.
    resumed: bool,
    iterator: Option<String>,
    /// The last sequence number fetched (buffered or handed out).
    last_fetched: Option<String>,
    /// A fresh AT_TIMESTAMP start: records before this are skipped until
    /// the first one at or after it.
    skip_before_ms: Option<i64>,
    /// GetShardIterator AT_TIMESTAMP timed out: read from TRIM_HORIZON.
    at_timestamp_fallback: bool,
    /// The AT_TIMESTAMP time was refused as in the future: read from LATEST.
    at_timestamp_future: bool,
    /// Wall time of a fresh LATEST start's first iterator.
    latest_opened_ms: Option<i64>,
    buffer: VecDeque<ShardRecord>,
    next_offset: u64,
    closed: bool,
    caught_up: bool,
    finished: bool,
    /// Since when calls have been failing (throttling, transport):
    /// `Waiting` until a call succeeds; named in warnings and [`describe`].
    ///
    /// [`describe`]: PartitionReader::describe
    failing_since: Option<Instant>,
    backoff: Backoff,
    last_backoff: Option<Duration>,
    next_call: Instant,
    metrics: Arc<ShardMetrics>,
    log: LogThrottle,
}

impl fmt::Debug for KinesisShardReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KinesisShardReader")
            .field("stream", &self.stream)
            .field("shard", &self.shard_id)
            .field("next_offset", &self.next_offset)
            .field("last_fetched", &self.last_fetched)
            .finish_non_exhaustive()
    }
}

impl KinesisShardReader {
    /// A reader of `shard`, over the SDK. `listing` is the shard list the
    /// shard came from (parents not in it are not waited for). `resume`:
    /// `(offset, token)` from a checkpoint (`token` `None` with offset 0 is
    /// a fresh start). A fresh LATEST start gets its iterator now, so
    /// records put after this call are read.
    pub fn open(
        client: &KinesisClient,
        stream: &str,
        shard: &ShardInfo,
        listing: &[ShardInfo],
        resume: (u64, Option<String>),
        config: ShardReadConfig,
        lineage: Arc<Lineage>,
    ) -> Result<KinesisShardReader> {
        let api = Box::new(SdkShardApi::new(client.clone(), stream));
        KinesisShardReader::with_api(api, stream, shard, listing, resume, config, lineage)
    }

    /// [`open`](Self::open) over any [`ShardApi`] (tests).
    pub fn with_api(
        api: Box<dyn ShardApi>,
        stream: &str,
        shard: &ShardInfo,
        listing: &[ShardInfo],
        resume: (u64, Option<String>),
        config: ShardReadConfig,
        lineage: Arc<Lineage>,
    ) -> Result<KinesisShardReader> {
        let (offset, token) = resume;
        if let Some(t) = &token {
            if !is_sequence_number(t) {
                bail!(
                    "Kinesis stream {stream} shard {}: the checkpointed resume token {t:?} is not \
                     a sequence number; was the checkpoint written by another kind of source?",
                    shard.id
                );
            }
        } else if offset > 0 {
            bail!(
                "Kinesis stream {stream} shard {}: a checkpoint at offset {offset} without a \
                 sequence number cannot be resumed; drop this partition's checkpoint to start \
                 over from the configured start position",
                shard.id
            );
        }
        if !(1..=MAX_RECORDS_PER_CALL).contains(&config.limits.max_records_per_call) {
            bail!(
                "Kinesis max records per GetRecords call must be 1..={MAX_RECORDS_PER_CALL}, not {}",
                config.limits.max_records_per_call
            );
        }
        let wait_for: Vec<u32> = shard
            .parents
            .iter()
            .copied()
            .filter(|p| listing.iter().any(|s| s.partition == *p))
            .collect();
        let skip_before_ms = match (&token, &config.start) {
            (None, StartAt::AtTimestamp(ms)) => Some(*ms),
            _ => None,
        };
        let backoff = Backoff::new(
            config.limits.backoff_base,
            config.limits.backoff_cap,
            seed_from(&shard.id) ^ u64::from(shard.partition),
        );
        let mut r = KinesisShardReader {
            api,
            stream: stream.to_owned(),
            shard_id: shard.id.clone(),
            partition: shard.partition,
            wait_for,
            lineage,
            resumed: token.is_some(),
            iterator: None,
            last_fetched: token,
            skip_before_ms,
            at_timestamp_fallback: false,
            at_timestamp_future: false,
            latest_opened_ms: None,
            buffer: VecDeque::new(),
            next_offset: offset,
            closed: false,
            caught_up: false,
            finished: false,
            failing_since: None,
            backoff,
            last_backoff: None,
            next_call: Instant::now(),
            metrics: Arc::new(ShardMetrics::default()),
            log: LogThrottle::default(),
            config,
        };
        if !r.resumed && r.config.start == StartAt::Latest {
            // LATEST means "after open": fix the position now.
            let mut last = None;
            for _ in 0..6 {
                match r.new_iterator() {
                    Ok(()) => break,
                    Err(Step::Fatal(m)) => bail!(m),
                    Err(Step::Again(m) | Step::Backoff(_, m)) => {
                        last = Some(m);
                        std::thread::sleep(r.backoff.next_delay());
                    }
                }
            }
            if r.iterator.is_none() {
                bail!(
                    "Kinesis stream {stream} shard {}: no LATEST iterator: {}",
                    shard.id,
                    last.unwrap_or_default()
                );
            }
            r.backoff.reset();
        }
        Ok(r)
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }
    /// The next offset to hand out.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }
    /// `MillisBehindLatest` of the last GetRecords (`None` before the first).
    pub fn millis_behind_latest(&self) -> Option<i64> {
        let v = self
            .metrics
            .millis_behind_latest
            .load(AtomicOrdering::Relaxed);
        (v >= 0).then_some(v)
    }
    pub fn metrics(&self) -> Arc<ShardMetrics> {
        self.metrics.clone()
    }
    /// Whether the shard was closed (split or merged away) and read to its
    /// end: its children continue it.
    pub fn read_to_close(&self) -> bool {
        self.finished && self.closed
    }
    /// Whether the reader still waits for parents to finish.
    pub fn waiting_for_parents(&self) -> bool {
        !self.wait_for.is_empty() && !self.lineage.all_finished(&self.wait_for)
    }
    /// Replaces the backoff (a seeded one, for tests).
    pub fn set_backoff(&mut self, backoff: Backoff) {
        self.backoff = backoff;
    }
    /// The jittered delay of the last backoff (for tests and logs).
    pub fn last_backoff(&self) -> Option<Duration> {
        self.last_backoff
    }

    fn what(&self) -> String {
        format!("Kinesis stream {} shard {}", self.stream, self.shard_id)
    }

    /// Where a new iterator must start.
    fn iterator_start(&self) -> IteratorStart {
        if let Some(s) = &self.last_fetched {
            return IteratorStart::AfterSequence(s.clone());
        }
        match self.config.start {
            StartAt::TrimHorizon => IteratorStart::TrimHorizon,
            // Renewing a LATEST start that fetched nothing yet: from its
            // open time, so records put meanwhile are read.
            StartAt::Latest => match self.latest_opened_ms {
                Some(_) if self.at_timestamp_fallback => IteratorStart::TrimHorizon,
                Some(ms) if !self.at_timestamp_future => IteratorStart::AtTimestamp(ms),
                _ => IteratorStart::Latest,
            },
            StartAt::AtTimestamp(ms) => {
                if self.at_timestamp_fallback {
                    IteratorStart::TrimHorizon
                } else if self.at_timestamp_future && ms > wall_ms() - 60_000 {
                    IteratorStart::Latest
                } else {
                    IteratorStart::AtTimestamp(ms)
                }
            }
        }
    }

    /// GetShardIterator from [`iterator_start`](Self::iterator_start).
    fn new_iterator(&mut self) -> Result<(), Step> {
        let start = self.iterator_start();
        let timeout = match start {
            IteratorStart::AtTimestamp(_) => self.config.limits.at_timestamp_timeout,
            _ => READ_CALL_TIMEOUT,
        };
        let opened = wall_ms();
        match self.api.shard_iterator(&self.shard_id, &start, timeout) {
            Ok(it) => {
                if start == IteratorStart::Latest && self.latest_opened_ms.is_none() {
                    self.latest_opened_ms = Some(opened);
                }
                self.iterator = Some(it);
                Ok(())
            }
            Err(e) => Err(self.iterator_error(&start, e)),
        }
    }

    fn iterator_error(&mut self, start: &IteratorStart, e: ApiError) -> Step {
        let what = self.what();
        match (start, e) {
            (IteratorStart::AtTimestamp(ms), ApiError::TimedOut(m)) => {
                // kinesalite never answers when no record is at or after
                // the time; on AWS a timeout is rare. TRIM_HORIZON with the
                // time enforced here is exact either way.
                tracing::warn!(
                    "kinesis: {what}: GetShardIterator AT_TIMESTAMP {ms} timed out ({m}); \
                     reading from TRIM_HORIZON and skipping records that arrived before {ms}"
                );
                self.at_timestamp_fallback = true;
                self.skip_before_ms = Some(self.skip_before_ms.unwrap_or(*ms));
                Step::Again(m)
            }
            (IteratorStart::AtTimestamp(ms), ApiError::InvalidArgument(m))
                if *ms > wall_ms() - 60_000 && !self.at_timestamp_future =>
            {
                // A time in the future (or just ahead of the server's clock).
                tracing::debug!("kinesis: {what}: AT_TIMESTAMP {ms} refused ({m}); using LATEST");
                self.at_timestamp_future = true;
                Step::Again(m)
            }
            (_, ApiError::Throttled(m)) => Step::Backoff("throttled", m),
            (_, ApiError::Transient(m) | ApiError::TimedOut(m) | ApiError::ExpiredIterator(m)) => {
                Step::Backoff("transient", m)
            }
            (IteratorStart::AfterSequence(s), ApiError::InvalidArgument(m)) => {
                Step::Fatal(format!(
                "{what}: the resume sequence number {s} is not valid for this shard ({m}). Was the \
                 stream deleted and recreated, or the checkpoint taken from another stream? Drop \
                 this partition's checkpoint to start over"
            ))
            }
            (_, e) => Step::Fatal(self.fatal_message("GetShardIterator", e.message())),
        }
    }

    fn fatal_message(&self, op: &str, m: &str) -> String {
        let what = self.what();
        if m.starts_with("ResourceNotFoundException") {
            format!(
                "{what}: {op}: {m}. Was the stream deleted, or the shard trimmed past the \
                 retention period? Check the stream name, region and endpoint"
            )
        } else if m.starts_with("AccessDeniedException") || m.starts_with("KMSAccessDenied") {
            format!(
                "{what}: {op}: {m}. Grant kinesis:GetShardIterator and kinesis:GetRecords (and \
                 kms:Decrypt for an encrypted stream) to the job's credentials"
            )
        } else {
            format!("{what}: {op}: {m}")
        }
    }

    /// Backs off after a throttling or transient error.
    fn back_off(&mut self, kind: &str, m: &str) {
        let delay = self.backoff.next_delay();
        self.last_backoff = Some(delay);
        self.next_call = Instant::now() + delay.max(self.config.limits.min_interval);
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        let counter = if kind == "throttled" {
            &self.metrics.throttled
        } else {
            &self.metrics.transient_errors
        };
        counter.fetch_add(1, AtomicOrdering::Relaxed);
        let key = format!("{}/{kind}", self.shard_id);
        let what = self.what();
        self.log.warn(
            &key,
            &format_args!(
                "{what}: {m} (failing for {} s, backing off {} ms; the shard waits and holds \
                 the frontier)",
                since.elapsed().as_secs(),
                delay.as_millis()
            ),
        );
    }

    /// At most one GetRecords call, when the interval allows it.
    fn fetch(&mut self) -> Result<(), String> {
        if Instant::now() < self.next_call {
            return Ok(());
        }
        // At most one switch to a fallback start and one GetRecords per poll.
        let mut switched = false;
        loop {
            if self.iterator.is_none() {
                match self.new_iterator() {
                    Ok(()) => {}
                    Err(Step::Fatal(m)) => return Err(m),
                    Err(Step::Again(_)) if !switched => {
                        switched = true;
                        continue;
                    }
                    Err(Step::Again(m)) => {
                        self.back_off("transient", &format!("GetShardIterator: {m}"));
                        return Ok(());
                    }
                    Err(Step::Backoff(kind, m)) => {
                        self.back_off(kind, &format!("GetShardIterator: {m}"));
                        return Ok(());
                    }
                }
            }
            let iterator = self.iterator.clone().expect("an iterator");
            self.metrics
                .get_records_calls
                .fetch_add(1, AtomicOrdering::Relaxed);
            let limit = self.config.limits.max_records_per_call;
            let result = self.api.get_records(&iterator, limit);
            self.next_call = Instant::now() + self.config.limits.min_interval;
            match result {
                Ok(page) => {
                    self.backoff.reset();
                    self.failing_since = None;
                    self.accept(page);
                    return Ok(());
                }
                Err(ApiError::ExpiredIterator(m)) => {
                    // Renewed on the next poll (GetRecords' interval holds).
                    self.metrics
                        .expired_iterators
                        .fetch_add(1, AtomicOrdering::Relaxed);
                    tracing::debug!("kinesis: {}: {m}; renewing the iterator", self.what());
                    self.iterator = None;
                    return Ok(());
                }
                Err(ApiError::Throttled(m)) => {
                    self.back_off("throttled", &format!("GetRecords: {m}"));
                    return Ok(());
                }
                Err(ApiError::Transient(m) | ApiError::TimedOut(m)) => {
                    self.back_off("transient", &format!("GetRecords: {m}"));
                    return Ok(());
                }
                Err(e @ (ApiError::InvalidArgument(_) | ApiError::Fatal(_))) => {
                    return Err(self.fatal_message("GetRecords", e.message()));
                }
            }
        }
    }

    fn accept(&mut self, page: RecordsPage) {
        self.metrics
            .millis_behind_latest
            .store(page.millis_behind.unwrap_or(-1), AtomicOrdering::Relaxed);
        let empty = page.records.is_empty();
        for r in page.records {
            if let Some(last) = &self.last_fetched {
                if cmp_sequence(&r.sequence, last) != Ordering::Greater {
                    self.metrics
                        .skipped_repeats
                        .fetch_add(1, AtomicOrdering::Relaxed);
                    let what = self.what();
                    self.log.warn(
                        &format!("{}/order", self.shard_id),
                        &format_args!(
                            "{what}: skipping record {} at or below the last one fetched ({last})",
                            r.sequence
                        ),
                    );
                    continue;
                }
            }
            self.last_fetched = Some(r.sequence.clone());
            self.metrics
                .kinesis_records
                .fetch_add(1, AtomicOrdering::Relaxed);
            if let Some(t) = self.skip_before_ms {
                if r.arrival_ms.is_some_and(|a| a < t) {
                    continue;
                }
                self.skip_before_ms = None;
            }
            self.buffer.push_back(r);
        }
        self.iterator = page.next_iterator;
        if self.iterator.is_none() {
            self.closed = true;
        }
        self.caught_up = empty && page.millis_behind == Some(0);
    }

    /// Hands out buffered records up to `max` user records, ending at a
    /// Kinesis record boundary; stops at the end time.
    fn drain(&mut self, max: usize, batch: &mut RawBatch) -> usize {
        let mut pushed = 0;
        while pushed < max {
            let Some(front) = self.buffer.front() else {
                break;
            };
            if let (Some(end), Some(at)) = (self.config.end_ms, front.arrival_ms) {
                if at >= end {
                    self.finish();
                    break;
                }
            }
            let rec = self.buffer.pop_front().expect("a buffered record");
            match kpl::deaggregate(&rec.data) {
                Some(users) => {
                    for u in users {
                        batch.push(u.data, self.next_offset);
                        self.next_offset += 1;
                        pushed += 1;
                    }
                }
                None => {
                    batch.push(&rec.data, self.next_offset);
                    self.next_offset += 1;
                    pushed += 1;
                }
            }
            batch.resume = Some(rec.sequence);
        }
        self.metrics
            .user_records
            .fetch_add(pushed as u64, AtomicOrdering::Relaxed);
        pushed
    }

    fn finish(&mut self) {
        self.finished = true;
        self.buffer.clear();
        self.iterator = None;
        self.lineage.mark_finished(self.partition);
        self.metrics.finished.store(true, AtomicOrdering::Relaxed);
    }

    /// Whether a bound or the shard's end has been reached with nothing
    /// left to hand out.
    fn at_end(&self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        if self.closed {
            return true;
        }
        if !self.caught_up {
            return false;
        }
        if self.config.until_caught_up {
            return true;
        }
        self.config.end_ms.is_some_and(|end| {
            wall_ms() >= end.saturating_add(self.config.limits.end_clock_slack.as_millis() as i64)
        })
    }
}

/// What to do after a failed GetShardIterator.
enum Step {
    /// A fallback start was chosen: try again now.
    Again(String),
    /// Throttled (`"throttled"`) or transient (`"transient"`): back off.
    Backoff(&'static str, String),
    Fatal(String),
}

impl PartitionReader for KinesisShardReader {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        if self.finished {
            return Ok(Poll::Finished);
        }
        if !self.wait_for.is_empty() {
            if !self.lineage.all_finished(&self.wait_for) {
                return Ok(Poll::Waiting);
            }
            self.wait_for.clear();
        }
        let max = max.max(1);
        let mut pushed = self.drain(max, batch);
        if !self.finished && pushed < max && self.buffer.is_empty() && !self.at_end() {
            self.fetch()?;
            pushed += self.drain(max - pushed, batch);
        }
        if !self.finished && self.at_end() {
            self.finish();
        }
        Ok(if pushed > 0 {
            Poll::Ready
        } else if self.finished {
            Poll::Finished
        } else if self.failing_since.is_none()
            && self.buffer.is_empty()
            && self.millis_behind_latest() == Some(0)
        {
            // The last GetRecords answered and said the shard's tip is
            // reached: nothing known unread (SPEC 3's idleness).
            Poll::CaughtUp
        } else {
            // Records are (or may be) waiting: behind the tip, not asked
            // yet, or the endpoint failing or throttling. Never idle.
            Poll::Waiting
        })
    }

    fn describe(&self) -> String {
        match self.failing_since {
            Some(t) => format!(
                "{}, calls failing for {} s, retrying",
                self.what(),
                t.elapsed().as_secs()
            ),
            None => self.what(),
        }
    }
}

/// Logs at most one line per key per [`LOG_INTERVAL`], with the count of
/// lines held back.
#[derive(Default)]
struct LogThrottle(Mutex<HashMap<String, (Instant, u64)>>);

impl LogThrottle {
    fn warn(&self, key: &str, msg: &dyn fmt::Display) {
        let mut m = self.0.lock().unwrap();
        let now = Instant::now();
        let held = match m.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < LOG_INTERVAL => {
                *held += 1;
                return;
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                n
            }
            None => {
                m.insert(key.to_owned(), (now, 0));
                0
            }
        };
        drop(m);
        tracing::warn!(held_back = held, "kinesis: {msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kinesis::shards::tests::shard;

    #[test]
    fn readers_can_move_between_threads() {
        fn send<T: Send + 'static>() {}
        send::<KinesisShardReader>();
        send::<KinesisClient>();
        send::<Arc<Lineage>>();
    }

    /// Scripted GetRecords answers; every call recorded with its time.
    #[derive(Clone, Default)]
    struct Fake {
        answers: Arc<Mutex<VecDeque<Result<RecordsPage, ApiError>>>>,
        iterators: Arc<Mutex<Vec<IteratorStart>>>,
        calls: Arc<Mutex<Vec<Instant>>>,
    }

    impl ShardApi for Fake {
        fn shard_iterator(
            &mut self,
            _shard: &str,
            start: &IteratorStart,
            _timeout: Duration,
        ) -> Result<String, ApiError> {
            let mut its = self.iterators.lock().unwrap();
            its.push(start.clone());
            Ok(format!("it-{}", its.len()))
        }
        fn get_records(&mut self, _it: &str, _limit: usize) -> Result<RecordsPage, ApiError> {
            self.calls.lock().unwrap().push(Instant::now());
            self.answers.lock().unwrap().pop_front().unwrap_or_else(|| {
                Ok(RecordsPage {
                    records: vec![],
                    next_iterator: Some("tip".into()),
                    millis_behind: Some(0),
                })
            })
        }
    }

    fn rec(seq: u32, data: &str) -> ShardRecord {
        ShardRecord {
            sequence: format!("{}", 1000 + seq),
            arrival_ms: Some(1_000),
            data: data.as_bytes().to_vec(),
        }
    }

    fn page(recs: Vec<ShardRecord>, next: Option<&str>) -> Result<RecordsPage, ApiError> {
        Ok(RecordsPage {
            records: recs,
            next_iterator: next.map(str::to_owned),
            millis_behind: Some(0),
        })
    }

    /// Polls until Finished; returns (offset, bytes) and every poll answer.
    fn read_all(r: &mut KinesisShardReader, max: usize) -> (Vec<(u64, String)>, Vec<Poll>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = Vec::new();
        let mut polls = Vec::new();
        let mut batch = RawBatch::default();
        loop {
            assert!(Instant::now() < deadline, "not finished: {out:?} {polls:?}");
            batch.clear();
            let p = r.poll(max, &mut batch).expect("poll");
            polls.push(p);
            out.extend(
                batch
                    .iter()
                    .map(|(b, o)| (o, String::from_utf8(b.to_vec()).unwrap())),
            );
            if p == Poll::Finished {
                return (out, polls);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn limits() -> ReadLimits {
        ReadLimits {
            min_interval: Duration::from_millis(20),
            backoff_base: Duration::from_millis(40),
            backoff_cap: Duration::from_millis(200),
            ..ReadLimits::default()
        }
    }

    #[test]
    fn throttling_backs_off_with_jitter_and_reading_continues() {
        let fake = Fake::default();
        {
            let mut a = fake.answers.lock().unwrap();
            for _ in 0..5 {
                a.push_back(Err(ApiError::Throttled(
                    "ProvisionedThroughputExceededException: rate exceeded".into(),
                )));
            }
            a.push_back(page(
                vec![rec(1, "a"), rec(2, "b"), rec(3, "c")],
                Some("it"),
            ));
            a.push_back(Err(ApiError::Transient("HTTP 503: slow down".into())));
            a.push_back(Err(ApiError::ExpiredIterator(
                "ExpiredIteratorException".into(),
            )));
            a.push_back(page(vec![rec(4, "d"), rec(5, "e")], None));
        }
        let config = ShardReadConfig {
            limits: limits(),
            ..ShardReadConfig::default()
        };
        let s = shard(0, &[]);
        let lineage = Lineage::new();
        let mut r = KinesisShardReader::with_api(
            Box::new(fake.clone()),
            "s",
            &s,
            std::slice::from_ref(&s),
            (0, None),
            config,
            lineage.clone(),
        )
        .unwrap();
        let seed = 42;
        r.set_backoff(Backoff::new(
            Duration::from_millis(40),
            Duration::from_millis(200),
            seed,
        ));
        let (got, polls) = read_all(&mut r, 2);
        // Every record once, in order, ordinals from 0: reading continued.
        let want: Vec<(u64, String)> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, d)| (i as u64, d.to_string()))
            .collect();
        assert_eq!(got, want);
        // While backing off the reader is Waiting, never CaughtUp
        // before the first record.
        let first_ready = polls.iter().position(|p| *p == Poll::Ready).unwrap();
        assert!(polls[..first_ready].iter().all(|p| *p == Poll::Waiting));
        // The delays between calls: each error's jittered delay (the same
        // seeded sequence), at least the 20 ms interval, and the ceilings
        // doubling 40, 80, 160, 200 (cap), 200.
        let mut expected =
            Backoff::new(Duration::from_millis(40), Duration::from_millis(200), seed);
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 9, "5 throttled + page + 503 + expired + page");
        let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        let mut ceilings = Vec::new();
        for (i, gap) in gaps.iter().enumerate().take(5) {
            ceilings.push(expected.ceiling().as_millis());
            let d = expected.next_delay().max(Duration::from_millis(20));
            assert!(*gap >= d, "gap {i}: {gap:?} < {d:?}");
            assert!(
                *gap < d + Duration::from_millis(100),
                "gap {i}: {gap:?} >> {d:?}"
            );
        }
        assert_eq!(ceilings, vec![40, 80, 160, 200, 200]);
        // After the page the backoff starts over: the 503 waits within the
        // first ceiling again.
        let after_503 = gaps[6];
        assert!(after_503 < Duration::from_millis(40 + 100), "{after_503:?}");
        // The expired iterator was renewed after the last sequence fetched.
        assert_eq!(
            *fake.iterators.lock().unwrap(),
            vec![
                IteratorStart::TrimHorizon,
                IteratorStart::AfterSequence("1003".into())
            ]
        );
        let m = r.metrics();
        assert_eq!(m.throttled.load(AtomicOrdering::Relaxed), 5);
        assert_eq!(m.transient_errors.load(AtomicOrdering::Relaxed), 1);
        assert_eq!(m.expired_iterators.load(AtomicOrdering::Relaxed), 1);
        assert_eq!(r.millis_behind_latest(), Some(0));
        // A closed shard read to its end finishes and frees its children.
        assert!(lineage.is_finished(0));
    }

    #[test]
    fn a_caught_up_shard_whose_endpoint_fails_waits_and_says_so() {
        let fake = Fake::default();
        {
            let mut a = fake.answers.lock().unwrap();
            a.push_back(page(vec![], Some("tip")));
            a.push_back(Err(ApiError::TimedOut(
                "operation timeout after 10s".into(),
            )));
            a.push_back(Err(ApiError::Transient("connection refused".into())));
            a.push_back(Err(ApiError::Transient("connection refused".into())));
            a.push_back(page(vec![rec(1, "a")], Some("it")));
        }
        let s = shard(3, &[]);
        let mut r = KinesisShardReader::with_api(
            Box::new(fake.clone()),
            "pay",
            &s,
            std::slice::from_ref(&s),
            (0, None),
            ShardReadConfig {
                limits: limits(),
                ..ShardReadConfig::default()
            },
            Lineage::new(),
        )
        .unwrap();
        let mut batch = RawBatch::default();
        let mut poll = |r: &mut KinesisShardReader| {
            batch.clear();
            let p = r.poll(10, &mut batch).unwrap();
            (p, r.describe(), batch.len())
        };
        // Caught up at the tip: idle may begin.
        let (p, d, _) = poll(&mut r);
        assert_eq!(p, Poll::CaughtUp);
        assert_eq!(d, "Kinesis stream pay shard shardId-000000000003");
        // The endpoint hangs, then refuses: waiting (never caught up, though
        // the last answer said the tip was reached), and described so,
        // until a call answers again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut during = Vec::new();
        let read = loop {
            assert!(Instant::now() < deadline, "{during:?}");
            std::thread::sleep(Duration::from_millis(5));
            let (p, d, n) = poll(&mut r);
            if n > 0 {
                break (p, d);
            }
            during.push((p, d));
        };
        // Until the next call (the interval), still caught up; from the
        // first failure on, waiting.
        let first = during
            .iter()
            .position(|(p, _)| *p != Poll::CaughtUp)
            .expect("a failed call");
        for (p, d) in &during[first..] {
            assert_eq!(*p, Poll::Waiting, "{during:?}");
            assert!(
                d.starts_with("Kinesis stream pay shard shardId-000000000003, calls failing for"),
                "{d}"
            );
        }
        assert_eq!(
            read,
            (
                Poll::Ready,
                "Kinesis stream pay shard shardId-000000000003".into()
            )
        );
        let m = r.metrics();
        assert_eq!(m.transient_errors.load(AtomicOrdering::Relaxed), 3);
    }

    #[test]
    fn a_child_waits_for_its_parents_and_batches_end_at_aggregates() {
        let parent_api = Fake::default();
        parent_api
            .answers
            .lock()
            .unwrap()
            .push_back(page(vec![rec(1, "p1")], None));
        let child_api = Fake::default();
        let agg = kpl::aggregate(&[("k", b"c1"), ("k", b"c2"), ("k", b"c3")]);
        child_api.answers.lock().unwrap().push_back(page(
            vec![
                ShardRecord {
                    sequence: "2001".into(),
                    arrival_ms: Some(1),
                    data: agg,
                },
                rec(1002, "c4"),
            ],
            Some("more"),
        ));
        let (p, c) = (shard(0, &[]), shard(1, &[0, 9]));
        let listing = vec![p.clone(), c.clone()]; // 9 is not listed: not waited for
        let lineage = Lineage::new();
        let config = ShardReadConfig {
            limits: limits(),
            until_caught_up: true,
            ..ShardReadConfig::default()
        };
        let mut child = KinesisShardReader::with_api(
            Box::new(child_api.clone()),
            "s",
            &c,
            &listing,
            (0, None),
            config.clone(),
            lineage.clone(),
        )
        .unwrap();
        let mut batch = RawBatch::default();
        assert_eq!(child.poll(2, &mut batch).unwrap(), Poll::Waiting);
        assert!(child.waiting_for_parents());
        assert!(
            child_api.iterators.lock().unwrap().is_empty(),
            "no call before the parent ends"
        );
        let mut parent = KinesisShardReader::with_api(
            Box::new(parent_api),
            "s",
            &p,
            &listing,
            (0, None),
            config,
            lineage.clone(),
        )
        .unwrap();
        assert_eq!(read_all(&mut parent, 10).0, vec![(0, "p1".to_owned())]);
        // Now the child reads; max 2 stops after the whole 3-record aggregate.
        batch.clear();
        assert_eq!(child.poll(2, &mut batch).unwrap(), Poll::Ready);
        let got: Vec<(u64, Vec<u8>)> = batch.iter().map(|(b, o)| (o, b.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (0, b"c1".to_vec()),
                (1, b"c2".to_vec()),
                (2, b"c3".to_vec())
            ]
        );
        assert_eq!(batch.resume.as_deref(), Some("2001"));
        batch.clear();
        assert_eq!(child.poll(2, &mut batch).unwrap(), Poll::Ready);
        assert_eq!(batch.iter().map(|(_, o)| o).collect::<Vec<_>>(), vec![3]);
        assert_eq!(batch.resume.as_deref(), Some("2002"));
    }

    #[test]
    fn a_checkpoint_without_a_token_is_refused() {
        let s = shard(0, &[]);
        let err = KinesisShardReader::with_api(
            Box::new(Fake::default()),
            "s",
            &s,
            &[],
            (5, None),
            ShardReadConfig::default(),
            Lineage::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("offset 5 without a sequence number"), "{err}");
        let err = KinesisShardReader::with_api(
            Box::new(Fake::default()),
            "s",
            &s,
            &[],
            (5, Some("after-4".into())),
            ShardReadConfig::default(),
            Lineage::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a sequence number"), "{err}");
    }
}
