//! tidemark's dataflow: the event model, the SPEC rules (validation,
//! lateness, dedup, windows, z-scores) and the timely operators that turn
//! source records into transactions, windows and anomalies.
//!
//! Nothing here does I/O: no socket, no file. Connectors hand records in
//! through [`source::PartitionReader`], sinks take rows out of the streams,
//! and everything in between is driven by timely's frontier.
//!
//! Modules:
//! * [`backlog`]: bytes held for epochs not yet written, and the sources'
//!   back-pressure pauses, shared with the epoch writers.
//! * [`event`]: the event model, what flows between operators.
//! * [`record`]: validation of one record (SPEC 1–2, SPEC 9 rows): a JSON
//!   scanner and the field rules.
//! * [`rfc3339`]: strict RFC 3339 timestamps and civil-calendar arithmetic.
//! * [`time`]: event time to timely ticks, and epoch boundaries.
//! * [`params`]: the computation's parameters (SPEC 3–7), validated.
//! * [`source`]: the source operator: per-partition watermarks, lateness,
//!   idleness, flow control, resume positions.
//! * [`stateful`]: the frontier-driven frame every stateful operator runs in.
//! * [`dedup`]: deduplication by `transaction_id` (SPEC 4).
//! * [`enrich`]: the as-of join with the merchants table (SPEC 9).
//! * [`window`]: event-time windows (SPEC 6).
//! * [`zscore`]: anomaly z-scores (SPEC 7).
//! * [`ticker`]: commit boundaries, decided once and told to every worker.
//! * [`stop`]: a stop requested on any process, sent to the ticker.
//! * [`graph`]: the whole computation wired, source streams in, outputs out.

pub mod backlog;
pub mod dedup;
pub mod enrich;
pub mod event;
pub mod graph;
pub mod params;
pub mod record;
pub mod rfc3339;
pub mod source;
pub mod stateful;
pub mod stop;
pub mod ticker;
pub mod time;
pub mod window;
pub mod zscore;
