//! The source frame: validation, per-partition watermarks and lateness,
//! the worker's capability, and resume positions (SPEC 2–3, DESIGN "Time").
//!
//! Connectors implement [`PartitionReader`]; this operator owns everything
//! about time. A worker's capability is the minimum watermark tick of the
//! partitions it reads; each accepted record goes out at its own tick, each
//! reject at its partition's watermark tick when it was read.
//!
//! The operator's pieces, one concern per file:
//! * `partition.rs`: one partition's state: watermark, lateness
//!   (`classify`), idleness, stall warnings;
//! * `flow.rs`: how much to read per activation (back-pressure: probe lag
//!   and bytes waiting for storage; `--rate` budget with capped credit,
//!   fair shares) and when to look again;
//! * `operator.rs`: the timely operator: the poll loop, successors, and the
//!   capability's downgrade.

mod flow;
mod operator;
mod partition;
#[cfg(test)]
mod tests;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::event::{Millis, Reject, RejectReason, Tick, Txn};
use crate::params::Params;
use crate::record::parse_record;

/// Partitions of the reference source (SPEC 9) are numbered from here
/// inside the dataflow, so one `u32` names a partition of either source;
/// outputs and manifests name them by the reference source's name and
/// their own index (see `checkpoint::manifest::SourceNames`).
pub const REFERENCE_BASE: u32 = 1 << 31;

/// Raw records of one partition, back to back, without per-record allocation.
#[derive(Default)]
pub struct RawBatch {
    pub data: Vec<u8>,
    /// `(end in data, offset in the partition)` per record.
    pub records: Vec<(usize, u64)>,
    /// A connector's own resume token, valid after the batch's last record
    /// (a Kinesis sequence number): committed with the position and handed
    /// back in [`PartitionStart::token`]. `None` keeps the previous one.
    pub resume: Option<String>,
}

impl RawBatch {
    pub fn push(&mut self, bytes: &[u8], offset: u64) {
        self.data.extend_from_slice(bytes);
        self.records.push((self.data.len(), offset));
    }
    pub fn clear(&mut self) {
        self.data.clear();
        self.records.clear();
        self.resume = None;
    }
    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> {
        let mut start = 0;
        self.records.iter().map(move |&(end, offset)| {
            let r = &self.data[start..end];
            start = end;
            (r, offset)
        })
    }
}

/// What a partition's reader has to say when asked for records.
///
/// Idleness (SPEC 3) rests on one rule: a partition is idle only when it
/// has no data it knows about. A reader that has nothing to hand out says
/// which case it is in — [`Poll::CaughtUp`] (it has read everything it knows
/// of) or [`Poll::Waiting`] (records are, or may be, unread) — and only a
/// caught-up partition ever stops holding the frontier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Records were appended (possibly none, if a bound was reached).
    Ready,
    /// Nothing to read, and nothing known unread: an unbounded source is at
    /// the end its server last reported (Kafka partition EOF with no record
    /// since, Kinesis `MillisBehindLatest` = 0). After `time.idle_timeout`
    /// of wall time without records the partition is idle: it stops holding
    /// the frontier until it produces again.
    CaughtUp,
    /// Nothing to read right now, but records are (or may be) unread: below
    /// a bounded end, behind the last reported high watermark, or a server
    /// that does not answer. Never idle, however long it lasts: letting the
    /// frontier pass would make the unread records late. After
    /// `time.idle_timeout` without records the source warns, naming the
    /// partition, and marks it stalled in its [`PartitionStats`].
    Waiting,
    /// A bounded input has ended.
    Finished,
}

/// One source partition, positioned at its start offset by the connector.
pub trait PartitionReader: 'static {
    /// Append up to `max` records to `batch`. An error (naming the file or
    /// stream) fails the partition: the source records it in its [`Meter`]
    /// as a [`SourceFailure`], reads the partition no more and emits
    /// nothing further for it, and the job stops with the error. Records
    /// appended before the error in the same call are dropped.
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String>;

    /// Asked once, right after `poll` answered [`Poll::Finished`]: the
    /// partitions that continue this one (the children of a closed Kinesis
    /// shard), read from offset 0. An error fails the partition, as in
    /// [`PartitionReader::poll`]. Each starts with this partition's
    /// `max_ts`, so it continues its lateness and never needs a time the
    /// worker's capability has passed.
    fn successors(&mut self) -> Result<Vec<Successor>, String> {
        Ok(Vec::new())
    }

    /// Where this partition reads, for an operator's eyes (e.g. `topic
    /// payments partition 7, end offset 25000`): named in the warning about
    /// a partition that waits.
    fn describe(&self) -> String {
        String::new()
    }
}

/// A partition that could not be opened (an input file that cannot be
/// read, a broker that refused): its first poll fails with why, so the
/// failure travels as every reader error does ([`SourceFailure`]) once the
/// dataflow is built on every worker. (A worker that left before building
/// it would leave the others waiting for it.)
pub struct Unopened(pub String);

impl PartitionReader for Unopened {
    fn poll(&mut self, _max: usize, _batch: &mut RawBatch) -> Result<Poll, String> {
        Err(self.0.clone())
    }
}

/// A partition that continues a finished one ([`PartitionReader::successors`]).
pub struct Successor {
    pub partition: u32,
    pub reader: Box<dyn PartitionReader>,
}

/// Where a partition starts, restored from a manifest or fresh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStart {
    pub partition: u32,
    /// Next offset to read.
    pub offset: u64,
    /// The partition's `max_ts` just before `offset`.
    pub max_ts: Option<Millis>,
    /// The connector's resume token at `offset`, if it uses one.
    #[serde(default)]
    pub token: Option<String>,
}

/// A resume position, valid for every epoch boundary above `max_tick`:
/// every record before `offset` has a time at or below `max_tick`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionEntry {
    pub partition: u32,
    pub offset: u64,
    pub max_ts: Option<Millis>,
    pub max_tick: Tick,
    /// The connector's resume token at `offset` ([`RawBatch::resume`]).
    pub token: Option<String>,
}

pub struct SourceConfig {
    /// Records read per partition per poll.
    pub batch: usize,
    /// Records read per activation, across partitions.
    pub budget: usize,
    /// Pause reading while the probe (the epoch writers' reports) lags the
    /// source by more than this many ticks: `[checkpoint]
    /// max_pending_epochs` checkpoint intervals. Also what keeps a source
    /// from running ahead of a slower dataflow.
    pub max_lag_ticks: i64,
    /// Pause reading while `backlog` holds more than this many bytes of
    /// finished epochs not yet written (`[checkpoint] max_pending_bytes`).
    pub max_pending_bytes: u64,
    /// The process's epochs waiting for storage, shared with its writers;
    /// sources report their pauses in it.
    pub backlog: std::sync::Arc<crate::backlog::Backlog>,
    /// Records with a time below this tick were committed before a restart:
    /// they are read (to rebuild watermarks) but not emitted.
    pub skip_below: Tick,
    /// Shared with the process's progress display and latency accounting.
    pub meter: std::sync::Arc<Meter>,
    /// Read at most this many records per second on this worker (`None`:
    /// as fast as downstream allows). For fixed-rate runs and benchmarks.
    pub max_rate: Option<u64>,
}

/// A source partition whose reader failed (an input file that cannot be
/// read, a truncated gzip stream, a shard whose children cannot be listed):
/// the job cannot go on. The partition stops where it read correctly; what
/// was committed before stays, and a restart resumes from the last commit.
/// The message names the partition and the reader's error, which names the
/// file or stream, e.g. `input partition 2: reading data/part-00002.jsonl.gz:
/// incomplete deflate stream`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} partition {}: {what}", input_of(*partition), partition & !REFERENCE_BASE)]
pub struct SourceFailure {
    /// The dataflow partition ([`REFERENCE_BASE`] and above: the reference
    /// table's).
    pub partition: u32,
    /// The reader's error.
    pub what: String,
}

fn input_of(partition: u32) -> &'static str {
    if partition >= REFERENCE_BASE {
        "reference input"
    } else {
        "input"
    }
}

/// What the sources of a process have read: a count, and for latency
/// accounting the wall time each batch was read with its largest tick;
/// and whether a source partition failed.
#[derive(Default)]
pub struct Meter {
    pub records: std::sync::atomic::AtomicU64,
    pub batches: std::sync::Mutex<std::collections::VecDeque<(Instant, Tick, u32)>>,
    /// The same, for measuring when the dataflow's frontier passes them.
    pub frontier_batches: std::sync::Mutex<std::collections::VecDeque<(Instant, Tick, u32)>>,
    /// Per partition, updated once per batch read.
    pub partitions: std::sync::Mutex<std::collections::BTreeMap<u32, PartitionStats>>,
    /// Set (after `failure`) when a partition's reader failed.
    failed: std::sync::atomic::AtomicBool,
    /// The first partition that failed in this process.
    failure: std::sync::Mutex<Option<SourceFailure>>,
}

impl Meter {
    /// Records that a partition failed; the first failure is the one kept.
    pub fn fail(&self, f: SourceFailure) {
        let mut slot = self.failure.lock().unwrap();
        if slot.is_none() {
            *slot = Some(f);
        }
        self.failed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a partition failed (cheap: polled by every worker's loop).
    pub fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The first partition that failed, if one did.
    pub fn failure(&self) -> Option<SourceFailure> {
        if !self.failed() {
            return None;
        }
        self.failure.lock().unwrap().clone()
    }
}

/// What one source partition has read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionStats {
    pub records: u64,
    /// Records that entered the job: read, minus those of epochs committed
    /// before a restart (read again only to rebuild the watermark).
    pub records_in: u64,
    pub bytes: u64,
    /// The next offset to read.
    pub position: u64,
    /// The partition's watermark, ms (`max_ts − max_out_of_orderness`).
    pub watermark_ms: Option<Millis>,
    /// Since when the partition has been waiting with records unread and
    /// none arriving for longer than `idle_timeout` ([`Poll::Waiting`]):
    /// it holds the frontier. `None` while it reads or is caught up.
    pub stalled_since: Option<Instant>,
}

/// What a source's records are: how one is validated (every SPEC 2 rule
/// but `LATE`, which the source decides) and its event time.
pub trait Decode: 'static {
    type Out: timely::ExchangeData;
    fn decode(
        bytes: &[u8],
        params: &Params,
        partition: u32,
        offset: u64,
    ) -> Result<Self::Out, RejectReason>;
    fn event_time(out: &Self::Out) -> Millis;
}

/// Payment transactions (SPEC 1–2).
pub struct Transactions;

impl Decode for Transactions {
    type Out = Txn;
    #[inline]
    fn decode(
        bytes: &[u8],
        params: &Params,
        partition: u32,
        offset: u64,
    ) -> Result<Txn, RejectReason> {
        parse_record(bytes, params.max_record_bytes, partition, offset)
    }
    #[inline]
    fn event_time(out: &Txn) -> Millis {
        out.event_time
    }
}

/// Rows of the merchants reference table (SPEC 9), as `(merchant, version)`
/// at the time of their `valid_from`.
pub struct Merchants;

impl Decode for Merchants {
    type Out = (String, crate::enrich::Version);
    fn decode(
        bytes: &[u8],
        params: &Params,
        partition: u32,
        offset: u64,
    ) -> Result<Self::Out, RejectReason> {
        let row = crate::record::parse_merchant_row(bytes, params.max_record_bytes)?;
        Ok((
            row.merchant,
            crate::enrich::Version {
                valid_from: row.valid_from,
                partition,
                offset,
                merchant_category: row.merchant_category,
                risk_tier: row.risk_tier,
                country: row.country,
            },
        ))
    }
    fn event_time(out: &Self::Out) -> Millis {
        out.1.valid_from
    }
}

pub type SourceStreams<'s, D = Txn> = (
    StreamVec<'s, Tick, D>,
    StreamVec<'s, Tick, Reject>,
    StreamVec<'s, Tick, PositionEntry>,
);

/// Builds the source operator of transactions over this worker's partitions.
pub fn source<'s>(
    scope: Scope<'s, Tick>,
    name: &str,
    params: Params,
    config: SourceConfig,
    partitions: Vec<(PartitionStart, Box<dyn PartitionReader>)>,
    probe: ProbeHandle<Tick>,
) -> SourceStreams<'s> {
    source_of::<Transactions>(scope, name, params, config, partitions, probe, None)
}

/// Builds the source operator over this worker's partitions of records `D`.
///
/// With `follow` (another source's positions), this source's time follows
/// that stream's frontier while all its partitions are idle: a reference
/// table that has not changed for a while must not hold the job back
/// (SPEC 3's idle partitions), and a row that then arrives behind the
/// job's time is late against it.
pub fn source_of<'s, D: Decode>(
    scope: Scope<'s, Tick>,
    name: &str,
    params: Params,
    config: SourceConfig,
    partitions: Vec<(PartitionStart, Box<dyn PartitionReader>)>,
    probe: ProbeHandle<Tick>,
    follow: Option<StreamVec<'s, Tick, PositionEntry>>,
) -> SourceStreams<'s, D::Out> {
    operator::build::<D>(scope, name, params, config, partitions, probe, follow)
}
