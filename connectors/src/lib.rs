//! tidemark's sources and sinks, one module per concern:
//!
//! - [`file`]: JSON Lines replay of local files and readers over any byte
//!   stream (gzip too).
//! - [`generator`]: the built-in generator of synthetic payment events and
//!   of the merchants reference table ([`gen_source`] reads them as
//!   partitions).
//! - [`kafka`]: the Kafka client, partition readers, keyed sink and admin
//!   calls.
//! - [`kinesis`]: the Kinesis client, shard lineage, shard readers, the
//!   stream as partitions ([`kinesis::stream`]), KPL de-aggregation
//!   ([`kinesis::kpl`]), and producer/admin helpers for tests and tools.
//! - [`adapters`]: each source as the job sees it: positions from config
//!   and flags, partitions, offset mirroring and shard logs.
//! - [`background`]: a worker thread that takes work without blocking the
//!   sender.
//!
//! `kinesis_stream`, `kpl` and `merchants_gen` are the former paths of
//! [`kinesis::stream`], [`kinesis::kpl`] and [`generator::merchants`].

pub mod adapters;
pub mod background;
pub mod file;
pub mod gen_source;
pub mod generator;
pub mod kafka;
pub mod kinesis;

pub use generator::merchants as merchants_gen;
pub use kinesis::{kpl, stream as kinesis_stream};
