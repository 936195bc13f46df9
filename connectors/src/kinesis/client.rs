//! The Kinesis client (settings, construction, its runtime) and what a
//! failed call means ([`ApiError`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use aws_sdk_kinesis::config::retry::{RetryPartition, TokenBucket};
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::Client;
use tidemark_aws::{fallback_region, Limits, Rt};

/// The region used when neither the settings nor the SDK chain name one.
pub use tidemark_aws::DEFAULT_REGION;
/// Timeout of one ListShards / PutRecord / DescribeStreamSummary attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per request for calls the SDK retries (standard mode).
const MAX_ATTEMPTS: u32 = 5;

/// Where to reach Kinesis. Credentials come from the SDK's standard chain
/// (environment, profile, web identity, ECS, IMDS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KinesisSettings {
    pub stream: String,
    /// `None` asks the SDK chain (environment, profile, IMDS), falling back
    /// to [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// Endpoint override (`http://127.0.0.1:4567` for kinesalite). `None`
    /// leaves it to the SDK (`AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL`,
    /// the profile's `endpoint_url`, else AWS).
    pub endpoint: Option<String>,
}

impl KinesisSettings {
    pub fn new(stream: impl Into<String>) -> Self {
        KinesisSettings {
            stream: stream.into(),
            region: None,
            endpoint: None,
        }
    }

    /// Builds the client (no request is sent; credentials are resolved on
    /// the first call).
    pub fn client(&self) -> Result<KinesisClient> {
        KinesisClient::new(self.region.as_deref(), self.endpoint.as_deref())
    }
}

/// An `aws-sdk-kinesis` client with its own small tokio runtime. Cheap to
/// clone (one per process is enough); every call blocks the calling thread,
/// which must not be a tokio runtime thread (timely workers are plain
/// threads).
#[derive(Clone)]
pub struct KinesisClient {
    client: Client,
    rt: Arc<Rt>,
    /// For messages: the region and endpoint in use.
    pub(super) place: Arc<str>,
}

impl fmt::Debug for KinesisClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KinesisClient")
            .field("at", &self.place)
            .finish_non_exhaustive()
    }
}

impl KinesisClient {
    /// A client for `region` (else the SDK chain, else [`DEFAULT_REGION`])
    /// and `endpoint` (else the SDK's endpoint resolution).
    pub fn new(region: Option<&str>, endpoint: Option<&str>) -> Result<KinesisClient> {
        let (sdk, rt) = tidemark_aws::load(
            "tidemark-kinesis",
            region,
            Limits {
                max_attempts: MAX_ATTEMPTS,
                connect: Duration::from_secs(5),
                attempt: ATTEMPT_TIMEOUT,
                operation: Duration::from_secs(60),
            },
        )?;
        // The SDK's default retry quota stops retrying once many attempts
        // failed (an outage); our callers back off and retry themselves for
        // as long as their patience says, so the quota must not cut in.
        let partition = RetryPartition::custom("tidemark-kinesis")
            .token_bucket(TokenBucket::unlimited())
            .build();
        let mut conf = aws_sdk_kinesis::config::Builder::from(&sdk).retry_partition(partition);
        if let Some(r) = fallback_region(&sdk) {
            conf = conf.region(r);
        }
        if let Some(ep) = endpoint {
            conf = conf.endpoint_url(ep.to_owned());
        }
        let conf = conf.build();
        let place = format!(
            "region {}{}",
            conf.region().map_or(DEFAULT_REGION, |r| r.as_ref()),
            endpoint.map_or(String::new(), |e| format!(", endpoint {e}"))
        );
        Ok(KinesisClient {
            client: Client::from_conf(conf),
            rt,
            place: place.into(),
        })
    }

    /// The SDK client (for tools and tests).
    pub fn sdk(&self) -> &Client {
        &self.client
    }

    /// Runs `f` on the client's runtime, blocking this thread.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.get().block_on(f)
    }
}

// ---------------------------------------------------------------------------
// Errors

/// What a failed call means for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// ProvisionedThroughputExceeded, KMS throttling, LimitExceeded, HTTP
    /// 429 and other throttling: back off and try again.
    Throttled(String),
    /// The shard iterator is older than 5 minutes: get a new one.
    ExpiredIterator(String),
    /// The call timed out.
    TimedOut(String),
    /// Transport failures, 5xx, internal failures: back off and try again.
    Transient(String),
    /// InvalidArgumentException (a bad sequence number, a timestamp in the
    /// future).
    InvalidArgument(String),
    /// Anything else (stream or shard not found, access denied, KMS): the
    /// reader fails with this message.
    Fatal(String),
}

impl ApiError {
    pub fn message(&self) -> &str {
        match self {
            ApiError::Throttled(m)
            | ApiError::ExpiredIterator(m)
            | ApiError::TimedOut(m)
            | ApiError::Transient(m)
            | ApiError::InvalidArgument(m)
            | ApiError::Fatal(m) => m,
        }
    }
}

const THROTTLING_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "KMSThrottlingException",
    "LimitExceededException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
];

/// Sorts an SDK error into an [`ApiError`] whose text names the error code.
pub(super) fn classify<E>(e: &SdkError<E>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().map(str::to_owned);
    let text = match (&code, status) {
        (Some(c), Some(s)) => format!("{c} (HTTP {s}): {}", e.message().unwrap_or("")),
        (Some(c), None) => format!("{c}: {}", e.message().unwrap_or("")),
        (None, Some(s)) => format!("HTTP {s}: {}", DisplayErrorContext(e)),
        (None, None) => DisplayErrorContext(e).to_string(),
    };
    match e {
        SdkError::TimeoutError(_) => return ApiError::TimedOut(text),
        SdkError::DispatchFailure(d) if d.is_timeout() => return ApiError::TimedOut(text),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            return ApiError::Transient(text)
        }
        _ => {}
    }
    match code.as_deref() {
        Some(c) if THROTTLING_CODES.contains(&c) => ApiError::Throttled(text),
        Some("ExpiredIteratorException") => ApiError::ExpiredIterator(text),
        Some("InvalidArgumentException") => ApiError::InvalidArgument(text),
        Some("InternalFailure" | "InternalFailureException" | "ServiceUnavailable") => {
            ApiError::Transient(text)
        }
        _ if status == Some(429) => ApiError::Throttled(text),
        _ if status.is_some_and(|s| s >= 500) => ApiError::Transient(text),
        _ => ApiError::Fatal(text),
    }
}
