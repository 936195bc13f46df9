//! tidemark's sources: JSON Lines file replay and the built-in generator of
//! synthetic payment events.

pub mod file;
pub mod gen_source;
pub mod generator;
