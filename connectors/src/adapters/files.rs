//! Replay inputs: local files and objects (S3) named by paths, URLs and
//! glob patterns (`data/*.jsonl`, `s3://bucket/prefix/*.jsonl.gz`). Each
//! input is one partition; partitions are numbered local files first (in
//! path order), then objects (in URL order), so a checkpoint's positions
//! stay valid across restarts over the same inputs. Objects are listed and
//! read through the store crate's S3 backend.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tidemark_store::s3::{S3Options, S3Storage};
use tidemark_store::Storage;

use crate::file::{expand_inputs, FileReader};

pub enum Input {
    Local(PathBuf),
    Object {
        store: Arc<dyn Storage>,
        key: String,
    },
}

impl Input {
    /// The file or object name, without its folder.
    pub fn name(&self) -> String {
        match self {
            Input::Local(p) => p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            Input::Object { key, .. } => key.rsplit('/').next().unwrap_or(key).to_owned(),
        }
    }

    pub fn open(&self, offset: u64) -> Result<FileReader> {
        match self {
            Input::Local(p) => FileReader::open(p, offset),
            Input::Object { store, key } => {
                let url = store.url(key);
                let raw: Box<dyn Read + Send> = store
                    .open_read(key)
                    .with_context(|| format!("opening {url}"))?;
                FileReader::from_read(&url, raw, offset)
            }
        }
    }
}

/// Expands every pattern; a pattern that matches nothing is an error.
pub fn expand(patterns: &[String], s3: &S3Options) -> Result<Vec<Input>> {
    let (remote, local): (Vec<String>, Vec<String>) = patterns
        .iter()
        .cloned()
        .partition(|p| p.starts_with("s3://"));
    let mut inputs: Vec<Input> = if local.is_empty() {
        Vec::new()
    } else {
        expand_inputs(&local)?
            .into_iter()
            .map(Input::Local)
            .collect()
    };
    let mut objects: Vec<(String, Input)> = Vec::new();
    for p in &remote {
        for (store, key) in expand_s3(p, s3)? {
            objects.push((store.url(&key), Input::Object { store, key }));
        }
    }
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    objects.dedup_by(|a, b| a.0 == b.0);
    inputs.extend(objects.into_iter().map(|(_, i)| i));
    Ok(inputs)
}

/// `s3://bucket/dir/pattern` → the matching objects, each as (a store rooted
/// at `dir/`, its key under it). `*` and `?` do not cross `/`; `**` does.
fn expand_s3(url: &str, s3: &S3Options) -> Result<Vec<(Arc<dyn Storage>, String)>> {
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
    Ok(keys.into_iter().map(|k| (store.clone(), k)).collect())
}
