//! Replay inputs as the binary wires them: the file adapter
//! ([`tidemark_connectors::adapters::files`]) with `s3://` patterns listed
//! and read through the checkpoint crate's S3 storage.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tidemark_checkpoint::s3::{S3Options, S3Storage};
use tidemark_checkpoint::storage::Storage;
pub use tidemark_connectors::adapters::files::Input;
use tidemark_connectors::adapters::files::{self, ObjectStore};

/// Expands every pattern; a pattern that matches nothing is an error.
pub fn expand(patterns: &[String], s3: &S3Options) -> Result<Vec<Input>> {
    files::expand(patterns, |p| expand_s3(p, s3))
}

/// Objects of a [`Storage`], as the file adapter reads them.
struct Objects(Arc<dyn Storage>);

impl ObjectStore for Objects {
    fn url(&self, key: &str) -> String {
        self.0.url(key)
    }
    fn open_read(&self, key: &str) -> Result<Box<dyn std::io::Read + Send>> {
        Ok(self.0.open_read(key)?)
    }
}

/// `s3://bucket/dir/pattern` → the matching objects, each as (a store rooted
/// at `dir/`, its key under it). `*` and `?` do not cross `/`; `**` does.
fn expand_s3(url: &str, s3: &S3Options) -> Result<Vec<(Arc<dyn ObjectStore>, String)>> {
    let rest = url.strip_prefix("s3://").expect("an s3:// URL");
    let Some((bucket, path)) = rest.split_once('/') else {
        bail!("input {url:?} names a bucket but no objects: use s3://bucket/prefix/*.jsonl.gz");
    };
    let glob_at = path.find(['*', '?', '[']).unwrap_or(path.len());
    let dir_end = path[..glob_at].rfind('/').map_or(0, |i| i + 1);
    let (dir, pattern) = path.split_at(dir_end);
    if pattern.is_empty() {
        bail!("input {url:?} ends in '/': name objects, e.g. {url}*.jsonl");
    }
    let store: Arc<dyn Storage> = Arc::new(S3Storage::new(&format!("s3://{bucket}/{dir}"), s3)?);
    let matcher = glob::Pattern::new(pattern)
        .with_context(|| format!("bad glob pattern in input {url:?}"))?;
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    // Only the part before the first wildcard narrows the listing.
    let literal = &pattern[..pattern.find(['*', '?', '[']).unwrap_or(pattern.len())];
    let keys: Vec<String> = store
        .list(literal)
        .with_context(|| format!("listing input {url:?}"))?
        .into_iter()
        .filter(|k| matcher.matches_with(k, options))
        .collect();
    if keys.is_empty() {
        bail!("input {url:?} matches no object in {}", store.describe());
    }
    let objects: Arc<dyn ObjectStore> = Arc::new(Objects(store));
    Ok(keys.into_iter().map(|k| (objects.clone(), k)).collect())
}
