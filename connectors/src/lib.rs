//! tidemark's sources: JSON Lines file replay, the built-in generator of
//! synthetic payment events, and Kafka.

pub mod file;
pub mod gen_source;
pub mod generator;
pub mod kafka;
