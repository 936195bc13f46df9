//! tidemark's exactly-once rules, as pure types and decisions.
//!
//! Nothing here does I/O or knows timely: the executor (`checkpoint`) reads
//! and writes a store and asks these functions what to do, so each rule is
//! a table test away. Model: Arroyo's `state-protocol` ("pure types and
//! decision logic; object-store I/O is kept at the edge").
//!
//! - [`epoch`]: the positions an epoch commits, and the final epoch.
//! - [`keys`]: every storage key the job writes, built and parsed in one place.
//! - [`manifest`]: the commit record of an epoch (the public format of
//!   docs/spec.md section 8, plus the job's own resume section).
//! - [`verify`]: whether a manifest's files are all there, intact.
//! - [`recovery`]: which commit a starting job restores, and which newer
//!   ones it quarantines.
//! - [`resume`]: whether a starting job may resume from a commit (the
//!   plan), or a typed refusal naming what changed.
//! - [`retention`]: which old commits and state snapshots to delete, in
//!   which order.
//! - [`sinks`]: which committed epochs the Kafka sinks publish, under
//!   which keys.
//! - [`gc`]: which files are garbage of crashed runs.

pub mod epoch;
pub mod gc;
pub mod keys;
pub mod manifest;
pub mod recovery;
pub mod resume;
pub mod retention;
pub mod sinks;
pub mod verify;
