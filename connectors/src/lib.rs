//! tidemark's sources: JSON Lines file replay, the built-in generator of
//! synthetic payment events, Kafka, and Kinesis (with KPL de-aggregation).

pub mod file;
pub mod gen_source;
pub mod generator;
pub mod kafka;
pub mod kinesis;
pub mod kinesis_stream;
pub mod kpl;
pub mod merchants_gen;
