//! Where outputs, state snapshots and manifests live: an object store seen as
//! flat keys (`manifests/00000001700000010000.json`,
//! `transactions/date=2023-11-14/hour=22/e…-g1-w0000.parquet`).
//!
//! This crate owns the seam between tidemark's exactly-once rules and the
//! bytes: the [`Storage`] trait, its errors typed as *certainly failed* or
//! *may have happened* ([`StoreError`]), three backends — [`LocalStorage`]
//! (a directory), [`S3Storage`] (S3 or an S3-compatible store) and
//! [`MemoryStorage`] (in memory, failing, hanging or losing responses on
//! command, for tests of what the job does when storage misbehaves) — and
//! one [`conformance`] suite that every backend passes.
//!
//! Keys are relative to the store's root, use `/` as separator and have no
//! empty, `.` or `..` segments. Callers never see paths.
//!
//! What the commit protocol relies on:
//! - [`Storage::put`] replaces the object atomically: a reader sees the old
//!   bytes or the new ones, never a prefix.
//! - [`Storage::put_if_absent`] is an atomic conditional create (S3
//!   `If-None-Match: *`): when many writers race on one key, exactly one wins
//!   and the object holds exactly its bytes.
//! - Neither leaves a partial object under the key after a crash. The local
//!   store writes to a temporary file beside the target
//!   (`<name>.tmp-<pid>-<n>`); such files are never listed and keys may not
//!   contain `.tmp-`.

pub mod conformance;
mod error;
mod local;
mod memory;
pub mod s3;

pub use error::{ErrorKind, StoreError};
pub use local::{LocalStorage, TempDir};
pub use memory::{Fault, MemoryStorage, Op};
pub use s3::{S3Options, S3Storage};

use anyhow::{anyhow, bail};
use std::sync::Arc;

/// What every [`Storage`] call returns.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The marker in temporary file names; keys containing it are reserved.
pub(crate) const TMP_MARKER: &str = ".tmp-";

/// An object store: keys to immutable-ish byte blobs.
///
/// Every error says whether the call certainly had no effect
/// ([`ErrorKind::Failed`]) or may have taken effect with its answer lost
/// ([`ErrorKind::Indeterminate`]): a retry of a conditional create must then
/// find out whether the object it meets is its own.
pub trait Storage: Send + Sync + 'static {
    /// Store `bytes` under `key`, replacing any previous object atomically.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// Create `key` holding `bytes` only if it does not exist yet, atomically.
    /// Returns `false` (and changes nothing) when the key already exists.
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool>;
    /// The object's bytes, `None` when the key does not exist.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Every key that starts with `prefix` (recursively, object-store style:
    /// `"manifests/"` lists that folder, `"manifests/0000"` filters by name
    /// too), sorted bytewise. Temporary files are never listed.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// A streaming reader of the object's bytes, for objects too large to
    /// hold in memory (backfill inputs). A missing key is an error. Call it
    /// from plain threads: the S3 reader blocks on its own runtime.
    ///
    /// The default reads the whole object with [`Storage::get`]; stores that
    /// hold large objects ([`LocalStorage`], [`S3Storage`]) stream instead.
    fn open_read(&self, key: &str) -> Result<Box<dyn std::io::Read + Send>> {
        let bytes = self
            .get(key)?
            .ok_or_else(|| anyhow!("{key} not found in {}", self.describe()))?;
        Ok(Box::new(std::io::Cursor::new(bytes)))
    }
    /// Remove `key`; a missing key is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Human-readable location, for logs (`local:/data/out`, `s3://b/p`).
    fn describe(&self) -> String;
    /// Where other tools find `key`: `s3://bucket/prefix/key` on S3, an
    /// absolute path on local disk. Written into Redshift COPY manifests.
    fn url(&self, key: &str) -> String;
}

/// Opens the storage named by a URL or a local path: `s3://bucket/prefix`
/// opens an [`S3Storage`] configured by [`S3Options::from_env`];
/// `file://…` and plain paths open a [`LocalStorage`] (the directory is
/// created when missing).
pub fn open(url_or_path: &str) -> anyhow::Result<Arc<dyn Storage>> {
    if url_or_path.starts_with("s3://") {
        return open_with(url_or_path, &S3Options::from_env());
    }
    open_with(url_or_path, &S3Options::default())
}

/// [`open`] with explicit S3 options (ignored for local paths).
pub fn open_with(url_or_path: &str, s3: &S3Options) -> anyhow::Result<Arc<dyn Storage>> {
    if url_or_path.starts_with("s3://") {
        return Ok(Arc::new(S3Storage::new(url_or_path, s3)?));
    }
    let path = url_or_path.strip_prefix("file://").unwrap_or(url_or_path);
    if path.is_empty() {
        bail!("empty storage path");
    }
    Ok(Arc::new(LocalStorage::new(path)?))
}

/// Checks that `key` is a well-formed object key (see the crate docs).
pub fn validate_key(key: &str) -> anyhow::Result<()> {
    if key.is_empty() {
        bail!("empty storage key");
    }
    if key.contains('\0') {
        bail!("storage key {key:?} contains NUL");
    }
    if key.contains(TMP_MARKER) {
        bail!("storage key {key:?} contains the reserved marker {TMP_MARKER:?}");
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            bail!("storage key {key:?} has an empty, '.' or '..' segment");
        }
    }
    Ok(())
}

/// Checks a listing prefix: no NUL, not absolute, no `..` folder.
pub(crate) fn validate_prefix(prefix: &str) -> anyhow::Result<()> {
    let folders = prefix.rsplit_once('/').map_or("", |(d, _)| d);
    if prefix.contains('\0') || prefix.starts_with('/') || folders.split('/').any(|s| s == "..") {
        bail!("bad storage prefix {prefix:?}");
    }
    Ok(())
}
