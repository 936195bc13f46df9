//! [`Storage`] on Amazon S3 (or an S3-compatible store): `s3://bucket/prefix`.
//!
//! Keys are object keys under the prefix (`s3://b/out` + `manifests/1.json`
//! = object `out/manifests/1.json` in bucket `b`). The store owns a small
//! private tokio runtime and blocks on it for every call: callers are plain
//! threads (timely workers), never tasks of another tokio runtime.
//!
//! How the [`Storage`] contract maps onto S3:
//! - `put`: one PutObject up to [`SINGLE_PUT_MAX`] bytes, a multipart upload
//!   above (aborted on any failure). S3 makes an object visible only when the
//!   upload completes, so readers see the old bytes or the new ones.
//! - `put_if_absent`: the same with `If-None-Match: *` (on PutObject or on
//!   CompleteMultipartUpload). `412 PreconditionFailed` means the key exists.
//!   Every conditional write carries a random token in its metadata
//!   (`x-amz-meta-tidemark-put-id`): when a retried request finds the key
//!   taken, the token tells whether an earlier attempt of this same call
//!   created it (its response was lost) or another writer did. `409
//!   ConditionalRequestConflict` (a concurrent operation on the key) is
//!   retried, as AWS documents.
//! - Retries with backoff (SDK standard mode, 12 attempts, no retry quota) and timeouts
//!   (connect 5 s, attempt 30 s, operation 120 s); errors name the object
//!   (`s3://bucket/key`) and the S3 error code. An error after these is one
//!   failed attempt for the checkpoint threads, which retry it with their
//!   own policy (`tidemark_checkpoint::retry`) until storage is back.
//! - `open_read` streams an object through a bounded channel fed by a task
//!   on the runtime; a connection lost mid-body is resumed with a ranged
//!   GET pinned to the object's ETag.
//!
//! Credentials come from the SDK's standard chain (environment, profile, web
//! identity, ECS, IMDS). S3-compatible stores (MinIO, moto, Ceph…) are
//! reached with an endpoint override, see [`S3Options`].

use crate::{validate_key, validate_prefix, Storage, StoreError};
use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_s3::config::retry::{RetryPartition, TokenBucket};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart,
    CreateBucketConfiguration,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark_aws::{fallback_region, Limits, Rt};
use tokio::sync::mpsc;

/// Bodies up to this size go in one PutObject; larger ones are multipart.
pub const SINGLE_PUT_MAX: usize = 16 << 20;
/// Part size of multipart uploads (grown when a body would need more than
/// [`MAX_PARTS`] parts).
pub const PART_SIZE: usize = 8 << 20;
/// S3's limit on parts per upload.
const MAX_PARTS: usize = 10_000;
/// Parts uploaded concurrently.
const PART_CONCURRENCY: usize = 4;
/// Attempts per request (SDK standard retry mode, backoff up to 20 s): with
/// half of all requests throttled, twelve attempts fail together once in
/// 4,096 requests, and the executor's own retries take it from there.
const MAX_ATTEMPTS: u32 = 12;
/// How often a conditional write is re-sent after `409 ConditionalRequestConflict`.
const CONFLICT_RETRIES: u32 = 5;
/// How often a read that lost its connection mid-body is resumed.
const BODY_RETRIES: u32 = 5;
/// Chunks buffered between the download task and an [`Storage::open_read`] reader.
const READ_AHEAD_CHUNKS: usize = 16;
/// User metadata naming the conditional write that created an object.
const TOKEN_META: &str = "tidemark-put-id";
/// The region used when neither the options nor the SDK chain name one.
pub use tidemark_aws::DEFAULT_REGION;

/// Where and how to reach S3. [`S3Options::from_env`] is what
/// [`crate::open`] uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint override (`http://127.0.0.1:9000`) for S3-compatible stores.
    /// `None` leaves it to the SDK (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`,
    /// `endpoint_url` in the profile, else AWS).
    pub endpoint: Option<String>,
    /// Region; `None` asks the SDK chain (environment, profile, IMDS) and falls
    /// back to [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// Path-style addressing (`host/bucket/key`). `None`: on when an endpoint
    /// override is in effect (S3-compatible stores), off for AWS.
    pub path_style: Option<bool>,
}

impl S3Options {
    /// Reads `TIDEMARK_S3_ENDPOINT`, `AWS_REGION` / `AWS_DEFAULT_REGION` and
    /// `TIDEMARK_S3_PATH_STYLE` (`1`/`true`/`yes` or `0`/`false`/`no`).
    /// Unset (or empty) variables leave the field `None`.
    pub fn from_env() -> S3Options {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        S3Options {
            endpoint: var("TIDEMARK_S3_ENDPOINT"),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            path_style: var("TIDEMARK_S3_PATH_STYLE").map(|v| parse_bool(&v)),
        }
    }
}

fn parse_bool(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// Splits `s3://bucket/prefix` into the bucket and the key prefix (`""` or
/// ending with `/`).
pub fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| anyhow!("{url:?} is not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.len() < 3
        || bucket.len() > 63
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        bail!("{url:?}: {bucket:?} is not a valid S3 bucket name (3-63 characters: a-z 0-9 . -)");
    }
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Ok((bucket.to_string(), String::new()));
    }
    validate_key(prefix).with_context(|| format!("prefix of {url:?}"))?;
    Ok((bucket.to_string(), format!("{prefix}/")))
}

/// Storage under `s3://bucket/prefix`.
pub struct S3Storage {
    bucket: String,
    /// `""` or `"prefix/"`.
    root: String,
    client: Client,
    rt: Arc<Rt>,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage")
            .field("url", &self.describe())
            .finish_non_exhaustive()
    }
}

/// What an error response says, for messages and decisions.
struct ErrInfo {
    code: Option<String>,
    status: Option<u16>,
    text: String,
}

fn err_info<E>(e: &SdkError<E>) -> ErrInfo
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().map(str::to_string);
    let text = match (&code, status) {
        (Some(c), Some(s)) => format!("{c} (HTTP {s}): {}", e.message().unwrap_or("")),
        (Some(c), None) => format!("{c}: {}", e.message().unwrap_or("")),
        (None, Some(s)) => format!("HTTP {s}: {}", DisplayErrorContext(e)),
        (None, None) => DisplayErrorContext(e).to_string(),
    };
    ErrInfo { code, status, text }
}

impl ErrInfo {
    fn is(&self, code: &str, status: u16) -> bool {
        self.code.as_deref() == Some(code) || (self.code.is_none() && self.status == Some(status))
    }
    fn not_found(&self) -> bool {
        matches!(self.code.as_deref(), Some("NoSuchKey" | "NotFound"))
            || (self.code.is_none() && self.status == Some(404))
    }
    fn precondition_failed(&self) -> bool {
        self.is("PreconditionFailed", 412)
    }
    fn conflict(&self) -> bool {
        self.is("ConditionalRequestConflict", 409)
    }
}

/// How a conditional write ended.
enum Created {
    Yes,
    /// The key exists (412).
    Exists,
    /// A concurrent operation on the key interfered (409): try again.
    Conflict,
}

/// A random id for one conditional write.
fn new_token() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut words = [0u64; 2];
    for w in &mut words {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(n);
        *w = h.finish();
    }
    format!("{:016x}{:016x}", words[0], words[1])
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(6))
}

impl S3Storage {
    /// Opens `s3://bucket/prefix` (prefix optional). Builds the client only:
    /// nothing is sent until the first call, and credentials are resolved
    /// then.
    pub fn new(url: &str, opts: &S3Options) -> Result<S3Storage> {
        let (bucket, root) = parse_url(url)?;
        let (sdk, rt) = tidemark_aws::load(
            "tidemark-s3",
            opts.region.as_deref(),
            Limits {
                max_attempts: MAX_ATTEMPTS,
                connect: Duration::from_secs(5),
                attempt: Duration::from_secs(30),
                operation: Duration::from_secs(120),
            },
        )?;
        let endpoint_override = opts.endpoint.is_some() || sdk_endpoint_configured(&sdk);
        // No retry quota: the SDK's token bucket stops retrying once many
        // requests fail (half of them answered 503 SlowDown ended the job at
        // its first listing), but a throttled or briefly unreachable store
        // is exactly what retries are for; the backoff still spaces them.
        let partition = RetryPartition::custom("tidemark-s3")
            .token_bucket(TokenBucket::unlimited())
            .build();
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .retry_partition(partition)
            .force_path_style(opts.path_style.unwrap_or(endpoint_override));
        if let Some(r) = fallback_region(&sdk) {
            conf = conf.region(r);
        }
        if let Some(ep) = &opts.endpoint {
            conf = conf.endpoint_url(ep.clone());
        }
        Ok(S3Storage {
            bucket,
            root,
            client: Client::from_conf(conf.build()),
            rt,
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix (`""` or ending with `/`).
    pub fn prefix(&self) -> &str {
        &self.root
    }

    /// The SDK client (for tools and tests).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the bucket (for tests and tools); an existing bucket of ours
    /// is fine.
    pub fn create_bucket(&self) -> Result<()> {
        let region = self
            .client
            .config()
            .region()
            .map(|r| r.as_ref().to_string());
        let mut req = self.client.create_bucket().bucket(&self.bucket);
        if let Some(r) = region.filter(|r| r != DEFAULT_REGION) {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(r.as_str()))
                    .build(),
            );
        }
        match self.rt.get().block_on(req.send()) {
            Ok(_) => Ok(()),
            Err(e) => {
                let info = err_info(&e);
                if info.code.as_deref() == Some("BucketAlreadyOwnedByYou") {
                    Ok(())
                } else {
                    bail!("S3 CreateBucket s3://{}: {}", self.bucket, info.text)
                }
            }
        }
    }

    fn full_key(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.root))
    }

    fn url_of(&self, full: &str) -> String {
        format!("s3://{}/{full}", self.bucket)
    }

    /// The error of a failed call, typed: reads and refused requests
    /// certainly had no effect; a write whose answer was lost (timeout, a
    /// connection dropped, a server error other than 503 SlowDown) may have.
    fn fail<E>(&self, op: &str, full: &str, e: &SdkError<E>) -> anyhow::Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let info = err_info(e);
        let msg = anyhow!("S3 {op} {}: {}", self.url_of(full), info.text);
        let writes = matches!(op, "PutObject" | "CompleteMultipartUpload" | "DeleteObject");
        let refused = match e {
            SdkError::ConstructionFailure(_) => true,
            SdkError::ServiceError(_) => info.status.is_some_and(|s| s < 500 || s == 503),
            _ => false,
        };
        if writes && !refused {
            anyhow::Error::new(StoreError::indeterminate(msg))
        } else {
            anyhow::Error::new(StoreError::failed(msg))
        }
    }

    /// One PutObject; `token` makes it conditional (`If-None-Match: *`).
    async fn put_object(&self, full: &str, bytes: &[u8], token: Option<&str>) -> Result<Created> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .body(ByteStream::from(bytes.to_vec()));
        if let Some(t) = token {
            req = req.if_none_match("*").metadata(TOKEN_META, t);
        }
        match req.send().await {
            Ok(_) => Ok(Created::Yes),
            Err(e) => {
                let info = err_info(&e);
                if token.is_some() && info.precondition_failed() {
                    Ok(Created::Exists)
                } else if token.is_some() && info.conflict() {
                    Ok(Created::Conflict)
                } else {
                    Err(self.fail("PutObject", full, &e))
                }
            }
        }
    }

    /// HeadObject of `full`; `None` when there is no such object.
    async fn head(&self, full: &str) -> Result<Option<HeadObjectOutput>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(e) if err_info(&e).not_found() => Ok(None),
            Err(e) => Err(self.fail("HeadObject", full, &e)),
        }
    }

    /// The token of the conditional write that created `full`, if any.
    async fn token_of(&self, full: &str) -> Result<Option<String>> {
        Ok(self
            .head(full)
            .await?
            .and_then(|out| out.metadata().and_then(|m| m.get(TOKEN_META)).cloned()))
    }

    async fn exists(&self, full: &str) -> Result<bool> {
        Ok(self.head(full).await?.is_some())
    }

    /// A multipart upload of `bytes` (every upload carries a token, so that a
    /// completion whose response was lost can be recognised). `conditional`
    /// completes it with `If-None-Match: *`. The upload is aborted unless it
    /// completed.
    async fn multipart(&self, full: &str, bytes: &[u8], conditional: bool) -> Result<Created> {
        let token = new_token();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .metadata(TOKEN_META, &token)
            .send()
            .await
            .map_err(|e| self.fail("CreateMultipartUpload", full, &e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| {
                anyhow!(
                    "S3 CreateMultipartUpload {}: no upload id",
                    self.url_of(full)
                )
            })?
            .to_string();
        let res = self
            .upload_and_complete(full, bytes, conditional, &upload_id, &token)
            .await;
        if !matches!(res, Ok(Created::Yes)) {
            if let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await
            {
                tracing::warn!(
                    object = %self.url_of(full),
                    upload_id,
                    error = %err_info(&e).text,
                    "could not abort a multipart upload; a bucket lifecycle rule \
                     (AbortIncompleteMultipartUpload) will have to remove its parts"
                );
            }
        }
        res
    }

    async fn upload_and_complete(
        &self,
        full: &str,
        bytes: &[u8],
        conditional: bool,
        upload_id: &str,
        token: &str,
    ) -> Result<Created> {
        let part_size = PART_SIZE.max(bytes.len().div_ceil(MAX_PARTS));
        let n_parts = bytes.len().div_ceil(part_size).max(1);
        let mut parts: Vec<Option<CompletedPart>> = vec![None; n_parts];
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = 0;
        while next < n_parts || !tasks.is_empty() {
            while next < n_parts && tasks.len() < PART_CONCURRENCY {
                let lo = next * part_size;
                let hi = (lo + part_size).min(bytes.len());
                let number = next as i32 + 1;
                let req = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(upload_id)
                    .part_number(number)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .body(ByteStream::from(bytes[lo..hi].to_vec()));
                tasks.spawn(async move { (number, req.send().await) });
                next += 1;
            }
            let (number, res) = tasks
                .join_next()
                .await
                .expect("a part is in flight")
                .context("part upload task failed")?;
            let out = res.map_err(|e| {
                anyhow!(
                    "S3 UploadPart {} (part {number}): {}",
                    self.url_of(full),
                    err_info(&e).text
                )
            })?;
            parts[number as usize - 1] = Some(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                    .build(),
            );
        }
        let parts: Vec<CompletedPart> = parts.into_iter().map(|p| p.expect("every part")).collect();
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        let mut attempt = 0;
        loop {
            let mut req = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(upload_id)
                .multipart_upload(upload.clone());
            if conditional {
                req = req.if_none_match("*");
            }
            let e = match req.send().await {
                Ok(_) => return Ok(Created::Yes),
                Err(e) => e,
            };
            let info = err_info(&e);
            // Did the upload complete anyway? A retried completion finds the
            // key taken (412) or the upload gone (NoSuchUpload) when an
            // earlier attempt succeeded, and a store may answer a success the
            // SDK cannot parse (moto's `CompleteMultipartUploadResponse`
            // root). The object is ours exactly when it carries our token.
            if self.token_of(full).await?.as_deref() == Some(token) {
                return Ok(Created::Yes);
            }
            if conditional && info.precondition_failed() {
                return Ok(Created::Exists);
            }
            if conditional && info.conflict() && attempt < CONFLICT_RETRIES {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            return Err(self.fail("CompleteMultipartUpload", full, &e));
        }
    }

    /// GetObject of the whole object; `None` when the key does not exist.
    async fn get_object(&self, full: &str) -> Result<Option<Vec<u8>>> {
        let mut attempt = 0;
        loop {
            let out = match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(full)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) if err_info(&e).not_found() => return Ok(None),
                Err(e) => return Err(self.fail("GetObject", full, &e)),
            };
            match out.body.collect().await {
                Ok(data) => return Ok(Some(data.to_vec())),
                Err(e) if attempt + 1 < BODY_RETRIES => {
                    attempt += 1;
                    tracing::debug!(object = %self.url_of(full), error = %DisplayErrorContext(&e), "reading an object failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => {
                    bail!(
                        "S3 GetObject {}: reading the body: {}",
                        self.url_of(full),
                        DisplayErrorContext(&e)
                    )
                }
            }
        }
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let full_prefix = format!("{}{prefix}", self.root);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                anyhow!(
                    "S3 ListObjectsV2 s3://{}/{full_prefix}: {}",
                    self.bucket,
                    err_info(&e).text
                )
            })?;
            for obj in page.contents() {
                let Some(rel) = obj.key().and_then(|k| k.strip_prefix(&self.root)) else {
                    continue;
                };
                // Temporary names, folder markers (`dir/`) and other keys this
                // store could not address are not listed.
                if validate_key(rel).is_ok() {
                    out.push(rel.to_string());
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// Whether the SDK configuration carries an endpoint override of its own
/// (`AWS_ENDPOINT_URL[_S3]`, `endpoint_url` in the shared config).
fn sdk_endpoint_configured(sdk: &aws_config::SdkConfig) -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_ok_and(|v| parse_bool(&v)) {
        return false;
    }
    sdk.endpoint_url().is_some() || set("AWS_ENDPOINT_URL_S3")
}

impl Storage for S3Storage {
    fn put(&self, key: &str, bytes: &[u8]) -> crate::Result<()> {
        let full = self.full_key(key)?;
        Ok(self.rt.get().block_on(async {
            if bytes.len() <= SINGLE_PUT_MAX {
                self.put_object(&full, bytes, None).await?;
            } else {
                self.multipart(&full, bytes, false).await?;
            }
            anyhow::Ok(())
        })?)
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> crate::Result<bool> {
        let full = self.full_key(key)?;
        Ok(self.rt.get().block_on(async {
            if bytes.len() > SINGLE_PUT_MAX {
                // Don't upload megabytes only to be refused.
                if self.exists(&full).await? {
                    return Ok(false);
                }
                return Ok(matches!(
                    self.multipart(&full, bytes, true).await?,
                    Created::Yes
                ));
            }
            let token = new_token();
            let mut attempt = 0;
            loop {
                match self.put_object(&full, bytes, Some(&token)).await? {
                    Created::Yes => return Ok(true),
                    Created::Exists => {
                        // Ours when an earlier attempt of this call created it
                        // and its response was lost.
                        return Ok(self.token_of(&full).await?.as_deref() == Some(&token));
                    }
                    Created::Conflict if attempt < CONFLICT_RETRIES => {
                        attempt += 1;
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    Created::Conflict => bail!(
                        "S3 PutObject {}: ConditionalRequestConflict (HTTP 409) {} times in a row",
                        self.url_of(&full),
                        attempt + 1
                    ),
                }
            }
        })?)
    }

    fn get(&self, key: &str) -> crate::Result<Option<Vec<u8>>> {
        let full = self.full_key(key)?;
        Ok(self.rt.get().block_on(self.get_object(&full))?)
    }

    fn open_read(&self, key: &str) -> crate::Result<Box<dyn Read + Send>> {
        let full = self.full_key(key)?;
        let url = self.url_of(&full);
        let first = self.rt.get().block_on(async {
            match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
            {
                Ok(out) => Ok(out),
                Err(e) => Err(self.fail("GetObject", &full, &e)),
            }
        })?;
        let (tx, rx) = mpsc::channel(READ_AHEAD_CHUNKS);
        let download = Download {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full,
            url: url.clone(),
            etag: first.e_tag().map(str::to_string),
            length: first.content_length().and_then(|l| u64::try_from(l).ok()),
            tx,
        };
        self.rt.get().spawn(download.run(first.body));
        Ok(Box::new(S3Reader {
            rx,
            chunk: Bytes::new(),
            state: ReaderState::Open,
            url,
            _rt: self.rt.clone(),
        }))
    }

    fn list(&self, prefix: &str) -> crate::Result<Vec<String>> {
        validate_prefix(prefix)?;
        Ok(self.rt.get().block_on(self.list_keys(prefix))?)
    }

    fn delete(&self, key: &str) -> crate::Result<()> {
        let full = self.full_key(key)?;
        Ok(self.rt.get().block_on(async {
            match self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if err_info(&e).not_found() => Ok(()),
                Err(e) => Err(self.fail("DeleteObject", &full, &e)),
            }
        })?)
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.root.trim_end_matches('/'))
            .trim_end_matches('/')
            .to_string()
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{}{key}", self.bucket, self.root)
    }
}

/// What the download task hands the reader.
enum Msg {
    Data(Bytes),
    End,
    Failed(String),
}

/// The task behind an [`S3Storage::open_read`] reader.
struct Download {
    client: Client,
    bucket: String,
    key: String,
    url: String,
    etag: Option<String>,
    length: Option<u64>,
    tx: mpsc::Sender<Msg>,
}

impl Download {
    async fn run(self, body: ByteStream) {
        let msg = match self.pump(body).await {
            Ok(true) => Msg::End,
            Ok(false) => return, // the reader went away
            Err(e) => Msg::Failed(format!("{e:#}")),
        };
        let _ = self.tx.send(msg).await;
    }

    /// Sends the object's bytes; `Ok(false)` when the reader was dropped.
    async fn pump(&self, mut body: ByteStream) -> Result<bool> {
        let mut offset: u64 = 0;
        let mut resumes = 0;
        loop {
            match body.next().await {
                Some(Ok(data)) => {
                    offset += data.len() as u64;
                    if self.tx.send(Msg::Data(data)).await.is_err() {
                        return Ok(false);
                    }
                }
                None => {
                    if let Some(len) = self.length {
                        if offset != len {
                            bail!(
                                "S3 GetObject {}: body ended after {offset} of {len} bytes",
                                self.url
                            );
                        }
                    }
                    return Ok(true);
                }
                Some(Err(e)) => {
                    let resumable = self.length.is_some() && self.etag.is_some();
                    if !resumable || resumes >= BODY_RETRIES {
                        bail!(
                            "S3 GetObject {}: reading the body at byte {offset}: {}",
                            self.url,
                            DisplayErrorContext(&e)
                        );
                    }
                    resumes += 1;
                    tracing::debug!(object = %self.url, offset, error = %DisplayErrorContext(&e), "object read interrupted; resuming");
                    tokio::time::sleep(backoff(resumes)).await;
                    if Some(offset) == self.length {
                        return Ok(true);
                    }
                    body = self.resume(offset).await?;
                }
            }
        }
    }

    /// A ranged GET from `offset`, refused (412) if the object changed.
    async fn resume(&self, offset: u64) -> Result<ByteStream> {
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!("bytes={offset}-"));
        if let Some(etag) = &self.etag {
            req = req.if_match(etag);
        }
        match req.send().await {
            Ok(out) => {
                // A server that ignored the range would send the whole object.
                let expected = format!("bytes {offset}-");
                if !out
                    .content_range()
                    .is_some_and(|r| r.starts_with(&expected))
                {
                    bail!(
                        "S3 GetObject {}: asked to resume at byte {offset}, got Content-Range {:?}",
                        self.url,
                        out.content_range()
                    );
                }
                Ok(out.body)
            }
            Err(e) => {
                let info = err_info(&e);
                if info.precondition_failed() {
                    bail!(
                        "S3 GetObject {}: the object changed while it was being read",
                        self.url
                    );
                }
                bail!(
                    "S3 GetObject {} (resuming at byte {offset}): {}",
                    self.url,
                    info.text
                )
            }
        }
    }
}

enum ReaderState {
    Open,
    Ended,
    Failed(String),
}

/// A blocking reader over an object's bytes (see [`Storage::open_read`]).
struct S3Reader {
    rx: mpsc::Receiver<Msg>,
    chunk: Bytes,
    state: ReaderState,
    url: String,
    /// Keeps the runtime (and so the download task) alive.
    _rt: Arc<Rt>,
}

impl Read for S3Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.chunk.is_empty() {
                let n = buf.len().min(self.chunk.len());
                buf[..n].copy_from_slice(&self.chunk.split_to(n));
                return Ok(n);
            }
            match &self.state {
                ReaderState::Ended => return Ok(0),
                ReaderState::Failed(e) => return Err(io::Error::other(e.clone())),
                ReaderState::Open => {}
            }
            self.state = match self.rx.blocking_recv() {
                Some(Msg::Data(d)) => {
                    self.chunk = d;
                    ReaderState::Open
                }
                Some(Msg::End) => ReaderState::Ended,
                Some(Msg::Failed(e)) => ReaderState::Failed(e),
                None => ReaderState::Failed(format!(
                    "S3 GetObject {}: the download stopped before the end of the object",
                    self.url
                )),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("s3://bucket").unwrap(),
            ("bucket".into(), "".into())
        );
        assert_eq!(
            parse_url("s3://bucket/").unwrap(),
            ("bucket".into(), "".into())
        );
        assert_eq!(
            parse_url("s3://my-bucket.x/a/b/").unwrap(),
            ("my-bucket.x".into(), "a/b/".into())
        );
        for bad in [
            "s3://",
            "s3:///x",
            "s3://ab",
            "s3://Bucket/x",
            "s3://b_c/x",
            "s3://bucket//x",
            "s3://bucket/a/../b",
            "s3://bucket/x.tmp-1",
            "file:///x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_and_describe() {
        let opts = S3Options {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("eu-west-1".into()),
            path_style: None,
        };
        let st = S3Storage::new("s3://bucket/out/run1/", &opts).unwrap();
        assert_eq!(st.describe(), "s3://bucket/out/run1");
        assert_eq!(st.prefix(), "out/run1/");
        assert_eq!(
            st.client().config().region().map(|r| r.as_ref()),
            Some("eu-west-1")
        );
        let st = S3Storage::new("s3://bucket", &opts).unwrap();
        assert_eq!(st.describe(), "s3://bucket");
        assert!(st.put("a/../b", b"x").is_err());
        assert!(parse_bool("TRUE") && parse_bool("1") && !parse_bool("0"));
    }

    #[test]
    fn tokens_differ() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
