//! tidemark's checkpointing: where outputs and state go, and how an epoch is
//! committed and restored.
//!
//! - [`storage`]: the object-store seam, re-exported from `tidemark-store`
//!   (local filesystem, S3 in [`s3`], in memory with faults).
//! - [`parquet_out`]: Parquet encoders with the output schemas of `docs/outputs.md`.
//! - [`manifest`]: the commit record of an epoch (SPEC 8), its verification,
//!   fallback past damaged manifests, and garbage collection.
//! - [`commit_log`]: the fenced log of commits, repair, and retention.
//! - [`redshift`]: Redshift COPY manifests of each epoch's transactions.
//! - [`writer`], [`committer`]: the timely operators that write an epoch on
//!   every worker and commit it once.
//! - [`restore`]: what a starting worker takes from the newest valid manifest.

pub mod commit_log;
pub mod committer;
pub mod manifest;
pub mod parquet_out;
pub mod parquet_rows;
pub mod redshift;
pub mod restore;
pub mod state_file;
pub mod writer;

/// The store seam (`tidemark-store`), under the paths this crate always had.
pub use tidemark_store as storage;
pub use tidemark_store::s3;
