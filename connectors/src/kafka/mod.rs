//! Kafka source building blocks (SPEC 2–3): per-partition readers over one
//! consumer per worker, start and end positions, offset commits for lag
//! tools, lag metrics, and a small producer for tests and tools.
//!
//! Offsets live in tidemark's manifests, not in the broker: partitions are
//! assigned explicitly (`assign`, never `subscribe`), so there is no group
//! rebalancing, and the group's committed offsets are only a mirror written
//! after each committed epoch so standard tools show lag.
//!
//! Positions are "next offset to read", never counts: Kafka offsets have
//! gaps (compaction, transaction markers, aborted records under
//! `read_committed`), and every record carries its own offset.
//!
//! Memory: each partition has its own librdkafka fetch queue (split from the
//! consumer queue), bounded by `queued.max.messages.kbytes` and
//! `queued.min.messages` (see [`CONSUMER_DEFAULTS`]). When the dataflow stops
//! polling, librdkafka stops fetching once a partition's queue is full, so
//! the prefetch queues are the bound.
//!
//! One concern per file:
//!
//! - `settings`: [`KafkaSettings`] (connection, consumer configuration,
//!   secrets kept out of logs), [`CONSUMER_DEFAULTS`], [`StartAt`] and
//!   [`KafkaPartition`].
//! - `context`: [`KafkaContext`], librdkafka's logs and errors routed to
//!   `tracing`, throttled.
//! - `reader`: [`open_readers`] and the [`KafkaReader`] of each partition.
//! - `metadata`: partition counts, watermarks, offsets for a time, the
//!   group's committed offsets (the lag tools' mirror) and lag metrics.
//! - `produce`: [`produce_lines`] / [`produce_records`] for tests and tools,
//!   and the job sinks' [`KeyedSink`].

mod context;
mod metadata;
mod produce;
mod reader;
mod settings;

pub use context::{KafkaConsumer, KafkaContext};
pub use metadata::{
    commit_offsets, committed_offsets, high_watermarks, offsets_for_time, partition_metrics,
    topic_partitions, PartitionMetrics,
};
pub use produce::{produce_lines, produce_records, KeyedSink, ProduceRecord};
pub use reader::{empty_poll, open_readers, KafkaReader};
pub use settings::{
    is_secret, KafkaPartition, KafkaSettings, StartAt, CONSUMER_DEFAULTS, REQUEST_TIMEOUT,
};
