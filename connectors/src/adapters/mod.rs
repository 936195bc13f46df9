//! Source adapters: each source as the job sees it. Positions written in
//! config and flags are parsed and resolved to the job's numbered
//! partitions, and the side work the committer drives (Kafka group offsets,
//! Kinesis shard logs, lag figures) runs here; the readers themselves are in
//! [`crate::kafka`], [`crate::kinesis`] and [`crate::file`]. What the job
//! does with figures (gauges, checkpoint positions) stays with the caller.
//! [`SourceSpec`] is every source as one type the job opens per worker.

pub mod files;
pub mod kafka;
pub mod kinesis;
pub mod spec;

pub use spec::SourceSpec;
