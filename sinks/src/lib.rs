//! Sinks beyond the output root: committed anomalies published to an alerts
//! topic and rejects to a dead-letter topic.
//!
//! Which epochs are due, the key of each row and the progress record are
//! the protocol's (`tidemark_protocol::sinks`); this crate reads committed
//! files from the store and produces them. Only committed outputs are
//! published: at least once, with duplicates recognisable by key (Kafka
//! transactions would make it exactly once; the test broker cannot commit
//! one, see `KeyedSink`).

pub mod kafka;

pub use kafka::{start, SinkStatus, SinkTopics};
