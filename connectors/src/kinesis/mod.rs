//! Kinesis source building blocks (SPEC 2–3, issue 5): shard discovery and
//! lineage, one [`PartitionReader`] per shard, start and end positions,
//! throttling and iterator renewal, KPL de-aggregation, `MillisBehindLatest`
//! metrics, and a small producer for tests and tools.
//!
//! # Partitions, offsets and tokens
//!
//! - A shard's job partition number is the numeric suffix of its ShardId
//!   (`shardId-000000000007` → 7, [`partition_of`]): stable across restarts
//!   and resharding (Kinesis never reuses a ShardId in a stream).
//! - The offset of each record is its ordinal in the shard: 0 for the first
//!   record read from the start position (TRIM_HORIZON, or the first record
//!   at or after a fresh LATEST / AT_TIMESTAMP start), +1 per *user* record
//!   (each user record of a KPL aggregate counts).
//! - [`RawBatch::resume`] is the sequence number of the batch's last Kinesis
//!   record. A resumed reader gets `(offset, token)` and continues with
//!   `AFTER_SEQUENCE_NUMBER token`, numbering from `offset` (never
//!   `AT_SEQUENCE_NUMBER`, which would read one record twice). All user
//!   records of an aggregate share a sequence number, so batches end only at
//!   aggregate boundaries: a batch may exceed `max` by the rest of one
//!   aggregate.
//! - Sequence numbers are decimal strings of up to 129 digits; AWS and
//!   kinesalite hand out 56-digit ones (about 2^185), **more than a `u128`
//!   holds**: compare them with [`cmp_sequence`], never as `u128`.
//!
//! # Lineage (child shards after their parents)
//!
//! A child shard (after SplitShard or MergeShards) is read only after each
//! of its parents has been read to its end, so records of one partition key
//! stay in put order. What is implemented:
//!
//! - [`Lineage`]: a set of finished partitions shared (`Arc`) by every
//!   reader of a process, across worker threads. A reader marks its
//!   partition finished when it returns [`Poll::Finished`] (closed shard read
//!   to the end, or a bound reached); a child reader answers
//!   [`Poll::Waiting`] until all of its waited-on parents are in the
//!   set: its records may be waiting, so it is not idle and keeps holding
//!   the watermark (an idle child would let the frontier pass records a
//!   parent's backlog keeps it from reading).
//!   A child waits only on parents present in the listing it was opened with
//!   (a parent trimmed past the retention period has nothing left to read).
//!   A resumed child waits too: a commit may hold a child's position from
//!   after its parents ended while a parent's own position in it is older
//!   (positions commit once all their records are below the epoch), and
//!   the parent, resumed there, must end again first.
//! - Which worker reads which shard, and when a child is opened, is
//!   [`crate::kinesis_stream`]'s business: all readers of a stream live in
//!   one process, sharing one [`Lineage`]. Across processes nothing would
//!   be shared: [`shard_read_to_end`] tells from a committed position
//!   whether a parent read elsewhere is done.
//! - Readers of the parents must exist in the process (a parent already
//!   finished before a restart finishes again at once when resumed from its
//!   committed token), or the job marks them finished itself.
//!
//! # New shards while running
//!
//! Every shard created in a live stream has a parent, so the job picks new
//! shards up when their first parent ends ([`crate::kinesis_stream`]),
//! listing the stream again then. [`ShardWatcher`] re-lists on an interval
//! instead (for tools and tests). A child must start at
//! [`StartAt::TrimHorizon`] whatever the configured start, or records put
//! between the resharding and its discovery are lost.
//!
//! # Reading within the limits
//!
//! - GetRecords asks for at most [`ReadLimits::max_records_per_call`] (AWS
//!   maximum 10,000) records, and calls on one shard are at least
//!   [`ReadLimits::min_interval`] apart (200 ms: AWS allows 5 calls per
//!   second per shard, shared by all consumers of the shard; raise it when
//!   others read the same stream). A page is buffered and served `max`
//!   records at a time; `poll` makes at most one GetRecords call and never
//!   sleeps.
//! - ProvisionedThroughputExceeded, KMS throttling, LimitExceeded and other
//!   throttling, timeouts and transport errors back off exponentially with
//!   full jitter ([`Backoff`]); meanwhile the reader answers
//!   [`Poll::Waiting`] (records may be waiting: not idleness), for as long
//!   as the endpoint fails: an outage of any length is waited out, with a
//!   warning per shard at once and then every 10 s. Each call times out
//!   (10 s), so a hung endpoint never blocks a worker for good.
//! - ListShards backs off the same way ([`Patience`]): for ever when a
//!   closed shard's children are looked up mid-run, for [`START_PATIENCE`]
//!   at start (then it fails naming the endpoint: a wrong one must show).
//!   The client's SDK retry quota is unlimited, so an outage never turns
//!   the SDK's own retries off.
//! - An expired iterator (ExpiredIteratorException, 5 minutes unused) is
//!   renewed from the last sequence number fetched (AFTER_SEQUENCE_NUMBER),
//!   or from the start position when nothing was fetched yet (a fresh
//!   LATEST start renews at AT_TIMESTAMP of its open time, so records put
//!   meanwhile are not skipped).
//! - `MillisBehindLatest` of the last GetRecords is in [`ShardMetrics`]
//!   (shared, readable after the reader is boxed into the dataflow).
//!
//! # Start and end
//!
//! Fresh starts: [`StartAt`] (TRIM_HORIZON, LATEST fixed when the reader is
//! opened, AT_TIMESTAMP in ms). AT_TIMESTAMP is also enforced on our side
//! (records that arrived before the time are skipped until the first one at
//! or after it), which makes two fallbacks exact: a time in the future is
//! read from LATEST, and a GetShardIterator AT_TIMESTAMP that times out
//! (kinesalite never answers it when no record is at or after the time) is
//! read from TRIM_HORIZON. Bounded reads ([`ShardReadConfig`]): an end time
//! (exclusive, by ApproximateArrivalTimestamp; when caught up, the shard is
//! finished once the wall clock passes the end by
//! [`ReadLimits::end_clock_slack`]) and/or "until caught up": an empty
//! GetRecords with `MillisBehindLatest == 0`. A closed shard read to its
//! end (null NextShardIterator) is [`Poll::Finished`], never an error.
//!
//! # Files
//!
//! - `client.rs`: the client ([`KinesisSettings`], [`KinesisClient`]) and
//!   the classification of failed calls ([`ApiError`]).
//! - `shards.rs`: shard ids and sequence numbers, listing
//!   ([`discover_shards`], [`ShardWatcher`]).
//! - `lineage.rs`: [`Lineage`] and [`shard_read_to_end`].
//! - `backoff.rs`: [`Backoff`].
//! - `api.rs`: the two calls a reader makes ([`ShardApi`]).
//! - `reader.rs`: [`KinesisShardReader`], one shard as a [`PartitionReader`].
//! - `stream.rs`: the stream as the job's partitions
//!   ([`crate::kinesis_stream`]); `kpl.rs`: KPL de-aggregation.
//! - `admin.rs`: producer and admin helpers for tests, examples and tools
//!   (put, create, split, merge); the job never calls them.
//!
//! [`PartitionReader`]: tidemark_dataflow::source::PartitionReader
//! [`Poll::Finished`]: tidemark_dataflow::source::Poll::Finished
//! [`Poll::Waiting`]: tidemark_dataflow::source::Poll::Waiting
//! [`RawBatch::resume`]: tidemark_dataflow::source::RawBatch::resume

use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod admin;
mod api;
mod backoff;
mod client;
pub mod kpl;
mod lineage;
mod reader;
mod shards;
pub mod stream;

pub use admin::{
    create_stream, merge_shards, put_lines_batched, put_record, put_records_to_shard, split_shard,
    wait_stream_active,
};
pub use api::{IteratorStart, RecordsPage, SdkShardApi, ShardApi, ShardRecord};
pub use backoff::Backoff;
pub use client::{ApiError, KinesisClient, KinesisSettings, DEFAULT_REGION};
pub use lineage::{shard_read_to_end, Lineage};
pub use reader::{KinesisShardReader, ReadLimits, ShardMetrics, ShardReadConfig, StartAt};
pub use shards::{
    cmp_sequence, discover_shards, discover_shards_with, is_sequence_number, partition_of,
    Patience, ShardInfo, ShardWatcher, START_PATIENCE,
};

/// AWS's maximum records per GetRecords call.
pub const MAX_RECORDS_PER_CALL: usize = 10_000;
/// 5 GetRecords calls per second per shard.
pub const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);
/// Timeout of one GetRecords / GetShardIterator call (not retried by the
/// SDK: the reader backs off itself).
const READ_CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
