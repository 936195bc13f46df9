//! tidemark's dataflow: the event model, validation, and the timely operators
//! that turn source records into transactions, windows and anomalies.
//!
//! Nothing here opens a socket or a file: sources hand records in, sinks take
//! rows out, and everything in between is driven by timely's frontier.

pub mod dedup;
pub mod enrich;
pub mod event;
pub mod job;
pub mod params;
pub mod record;
pub mod rfc3339;
pub mod source;
pub mod stateful;
pub mod ticker;
pub mod time;
pub mod window;
pub mod zscore;
