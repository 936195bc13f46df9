//! Replay inputs: local files and objects (S3) named by paths, URLs and
//! glob patterns (`data/*.jsonl`, `s3://bucket/prefix/*.jsonl.gz`). Each
//! input is one partition; partitions are numbered local files first (in
//! path order), then objects (in URL order), so a checkpoint's positions
//! stay valid across restarts over the same inputs. Listing and reading
//! objects is the caller's ([`ObjectStore`]): this crate has no object
//! storage of its own.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::file::{expand_inputs, FileReader};

/// A place objects are read from (an S3 bucket and prefix).
pub trait ObjectStore: Send + Sync {
    /// The object's URL, for names and messages.
    fn url(&self, key: &str) -> String;
    fn open_read(&self, key: &str) -> Result<Box<dyn Read + Send>>;
}

pub enum Input {
    Local(PathBuf),
    Object {
        store: Arc<dyn ObjectStore>,
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
                let raw = store
                    .open_read(key)
                    .with_context(|| format!("opening {url}"))?;
                FileReader::from_read(&url, raw, offset)
            }
        }
    }
}

/// Expands every pattern; a pattern that matches nothing is an error.
/// `s3://` patterns go to `expand_remote`, which returns the matching
/// objects as (store, key) pairs.
pub fn expand(
    patterns: &[String],
    mut expand_remote: impl FnMut(&str) -> Result<Vec<(Arc<dyn ObjectStore>, String)>>,
) -> Result<Vec<Input>> {
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
        for (store, key) in expand_remote(p)? {
            objects.push((store.url(&key), Input::Object { store, key }));
        }
    }
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    objects.dedup_by(|a, b| a.0 == b.0);
    inputs.extend(objects.into_iter().map(|(_, i)| i));
    Ok(inputs)
}
