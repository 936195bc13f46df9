//! tidemark's checkpointing executor: how an epoch is written, committed
//! and restored. The rules (what an epoch commits, which commit to
//! restore, what retention and garbage collection delete, every key) are
//! pure decisions in `tidemark-protocol`; this crate runs them against a
//! store and inside timely operators.
//!
//! - [`storage`]: the object-store seam, re-exported from `tidemark-store`
//!   (local filesystem, S3 in [`s3`], in memory with faults).
//! - [`parquet_out`]: Parquet encoders with the output schemas of `docs/outputs.md`.
//! - [`manifest`]: manifests on a store: listing, loading, verification,
//!   quarantine and garbage collection (types re-exported from the protocol).
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
pub mod retry;
pub mod state_file;
pub mod writer;

/// The store seam (`tidemark-store`), under the paths this crate always had.
pub use tidemark_store as storage;
pub use tidemark_store::s3;
