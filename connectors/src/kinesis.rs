//! Kinesis source building blocks (SPEC 2–3, issue 5): shard discovery and
//! lineage, one [`PartitionReader`] per shard, start and end positions,
//! throttling and iterator renewal, KPL de-aggregation, `MillisBehindLatest`
//! metrics, and a small producer for tests and tools.
//!
//! # Partitions, offsets and tokens
//!
//! - A shard's job partition number is the numeric suffix of its ShardId
//!   (`shardId-000000000007` → 7, [`partition_of`]): stable across restarts
//!   and resharding (Kinesis never reuses a ShardId in a stream).
//! - The offset of each record is its ordinal in the shard: 0 for the first
//!   record read from the start position (TRIM_HORIZON, or the first record
//!   at or after a fresh LATEST / AT_TIMESTAMP start), +1 per *user* record
//!   (each user record of a KPL aggregate counts).
//! - [`RawBatch::resume`] is the sequence number of the batch's last Kinesis
//!   record. A resumed reader gets `(offset, token)` and continues with
//!   `AFTER_SEQUENCE_NUMBER token`, numbering from `offset` (never
//!   `AT_SEQUENCE_NUMBER`, which would read one record twice). All user
//!   records of an aggregate share a sequence number, so batches end only at
//!   aggregate boundaries: a batch may exceed `max` by the rest of one
//!   aggregate.
//! - Sequence numbers are decimal strings of up to 129 digits; AWS and
//!   kinesalite hand out 56-digit ones (about 2^185), **more than a `u128`
//!   holds**: compare them with [`cmp_sequence`], never as `u128`.
//!
//! # Lineage (child shards after their parents)
//!
//! A child shard (after SplitShard or MergeShards) is read only after each
//! of its parents has been read to its end, so records of one partition key
//! stay in put order. What is implemented:
//!
//! - [`Lineage`]: a set of finished partitions shared (`Arc`) by every
//!   reader of a process, across worker threads. A reader marks its
//!   partition finished when it returns [`Poll::Finished`] (closed shard read
//!   to the end, or a bound reached); a child reader answers
//!   [`Poll::Waiting`] until all of its waited-on parents are in the
//!   set: its records may be waiting, so it is not idle and keeps holding
//!   the watermark (an idle child would let the frontier pass records a
//!   parent's backlog keeps it from reading).
//!   A child waits only on parents present in the listing it was opened with
//!   (a parent trimmed past the retention period has nothing left to read).
//!   A resumed child waits too: a commit may hold a child's position from
//!   after its parents ended while a parent's own position in it is older
//!   (positions commit once all their records are below the epoch), and
//!   the parent, resumed there, must end again first.
//! - Which worker reads which shard, and when a child is opened, is
//!   [`crate::kinesis_stream`]'s business: all readers of a stream live in
//!   one process, sharing one [`Lineage`]. Across processes nothing would
//!   be shared: [`shard_read_to_end`] tells from a committed position
//!   whether a parent read elsewhere is done.
//! - Readers of the parents must exist in the process (a parent already
//!   finished before a restart finishes again at once when resumed from its
//!   committed token), or the job marks them finished itself.
//!
//! # New shards while running
//!
//! Every shard created in a live stream has a parent, so the job picks new
//! shards up when their first parent ends ([`crate::kinesis_stream`]),
//! listing the stream again then. [`ShardWatcher`] re-lists on an interval
//! instead (for tools and tests). A child must start at
//! [`StartAt::TrimHorizon`] whatever the configured start, or records put
//! between the resharding and its discovery are lost.
//!
//! # Reading within the limits
//!
//! - GetRecords asks for at most [`ReadLimits::max_records_per_call`] (AWS
//!   maximum 10,000) records, and calls on one shard are at least
//!   [`ReadLimits::min_interval`] apart (200 ms: AWS allows 5 calls per
//!   second per shard, shared by all consumers of the shard; raise it when
//!   others read the same stream). A page is buffered and served `max`
//!   records at a time; `poll` makes at most one GetRecords call and never
//!   sleeps.
//! - ProvisionedThroughputExceeded, KMS throttling, LimitExceeded and other
//!   throttling, timeouts and transport errors back off exponentially with
//!   full jitter ([`Backoff`]); meanwhile the reader answers
//!   [`Poll::Waiting`] (records may be waiting: not idleness).
//! - An expired iterator (ExpiredIteratorException, 5 minutes unused) is
//!   renewed from the last sequence number fetched (AFTER_SEQUENCE_NUMBER),
//!   or from the start position when nothing was fetched yet (a fresh
//!   LATEST start renews at AT_TIMESTAMP of its open time, so records put
//!   meanwhile are not skipped).
//! - `MillisBehindLatest` of the last GetRecords is in [`ShardMetrics`]
//!   (shared, readable after the reader is boxed into the dataflow).
//!
//! # Start and end
//!
//! Fresh starts: [`StartAt`] (TRIM_HORIZON, LATEST fixed when the reader is
//! opened, AT_TIMESTAMP in ms). AT_TIMESTAMP is also enforced on our side
//! (records that arrived before the time are skipped until the first one at
//! or after it), which makes two fallbacks exact: a time in the future is
//! read from LATEST, and a GetShardIterator AT_TIMESTAMP that times out
//! (kinesalite never answers it when no record is at or after the time) is
//! read from TRIM_HORIZON. Bounded reads ([`ShardReadConfig`]): an end time
//! (exclusive, by ApproximateArrivalTimestamp; when caught up, the shard is
//! finished once the wall clock passes the end by
//! [`ReadLimits::end_clock_slack`]) and/or "until caught up": an empty
//! GetRecords with `MillisBehindLatest == 0`. A closed shard read to its
//! end (null NextShardIterator) is [`Poll::Finished`], never an error.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use aws_sdk_kinesis::Client;
use rand::{Rng, SeedableRng};
use tidemark_aws::{fallback_region, Limits, Rt};
use tidemark_dataflow::source::{PartitionReader, Poll, RawBatch};

use crate::kpl;

/// The region used when neither the settings nor the SDK chain name one.
pub use tidemark_aws::DEFAULT_REGION;
/// AWS's maximum records per GetRecords call.
pub const MAX_RECORDS_PER_CALL: usize = 10_000;
/// 5 GetRecords calls per second per shard.
pub const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);
/// Timeout of one ListShards / PutRecord / DescribeStreamSummary attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one GetRecords / GetShardIterator call (not retried by the
/// SDK: the reader backs off itself).
const READ_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per request for calls the SDK retries (standard mode).
const MAX_ATTEMPTS: u32 = 5;
/// At most one log line per kind and shard in this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Client

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
    place: Arc<str>,
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
        let mut conf = aws_sdk_kinesis::config::Builder::from(&sdk);
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
fn classify<E>(e: &SdkError<E>) -> ApiError
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

/// Logs at most one line per key per [`LOG_INTERVAL`], with the count of
/// lines held back.
#[derive(Default)]
struct LogThrottle(Mutex<HashMap<String, (Instant, u64)>>);

impl LogThrottle {
    fn warn(&self, key: &str, msg: &dyn fmt::Display) {
        let mut m = self.0.lock().unwrap();
        let now = Instant::now();
        let held = match m.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < LOG_INTERVAL => {
                *held += 1;
                return;
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                n
            }
            None => {
                m.insert(key.to_owned(), (now, 0));
                0
            }
        };
        drop(m);
        tracing::warn!(held_back = held, "kinesis: {msg}");
    }
}

// ---------------------------------------------------------------------------
// Sequence numbers and shard ids

/// Compares two sequence numbers (decimal strings of any length) as numbers.
pub fn cmp_sequence(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Whether `s` is a plausible sequence number (1 to 129 decimal digits).
pub fn is_sequence_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 129 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The job partition number of a shard: its ShardId's numeric suffix.
pub fn partition_of(shard_id: &str) -> Result<u32> {
    let digits = shard_id.rsplit('-').next().unwrap_or("");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        bail!("Kinesis shard id {shard_id:?} does not end in a number (expected shardId-NNNNNNNNNNNN)");
    }
    digits
        .parse::<u32>()
        .map_err(|_| anyhow!("Kinesis shard id {shard_id:?}: number too large for a partition"))
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Shards and lineage

/// One shard as ListShards describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: String,
    /// [`partition_of`] `id`.
    pub partition: u32,
    /// Partition numbers of `ParentShardId` then `AdjacentParentShardId`
    /// (after a merge), whether or not they are still listed.
    pub parents: Vec<u32>,
    pub starting_hash: u128,
    pub ending_hash: u128,
    pub starting_sequence: String,
    /// Set once the shard is closed (split or merged away).
    pub ending_sequence: Option<String>,
    /// `ending_sequence.is_some()`.
    pub closed: bool,
}

impl ShardInfo {
    fn from_sdk(s: &aws_sdk_kinesis::types::Shard) -> Result<ShardInfo> {
        let id = s.shard_id().to_owned();
        let mut parents = Vec::new();
        for p in [s.parent_shard_id(), s.adjacent_parent_shard_id()]
            .into_iter()
            .flatten()
        {
            parents.push(partition_of(p)?);
        }
        let hash = |v: &str| {
            v.parse::<u128>()
                .map_err(|_| anyhow!("shard {id}: hash key {v:?} is not a 128-bit number"))
        };
        let (starting_hash, ending_hash) = match s.hash_key_range() {
            Some(r) => (hash(r.starting_hash_key())?, hash(r.ending_hash_key())?),
            None => bail!("shard {id}: ListShards gave no hash key range"),
        };
        let seq = s.sequence_number_range();
        let ending_sequence = seq
            .and_then(|r| r.ending_sequence_number())
            .map(str::to_owned);
        Ok(ShardInfo {
            partition: partition_of(&id)?,
            parents,
            starting_hash,
            ending_hash,
            starting_sequence: seq
                .map(|r| r.starting_sequence_number().to_owned())
                .unwrap_or_default(),
            closed: ending_sequence.is_some(),
            ending_sequence,
            id,
        })
    }

    /// Whether `hash` is in this shard's hash key range.
    pub fn contains_hash(&self, hash: u128) -> bool {
        self.starting_hash <= hash && hash <= self.ending_hash
    }
}

/// Every shard of `stream` (open and closed, as long as retained), sorted
/// by partition number. ListShards is paginated with NextToken; throttling
/// (LimitExceeded) is retried with backoff.
pub fn discover_shards(client: &KinesisClient, stream: &str) -> Result<Vec<ShardInfo>> {
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(5),
        seed_from(stream),
    );
    let mut page = |token: Option<&str>| -> Result<ShardPage> {
        loop {
            let mut req = client.sdk().list_shards();
            req = match token {
                // With a NextToken, AWS refuses the stream name.
                Some(t) => req.next_token(t),
                None => req.stream_name(stream).max_results(1000),
            };
            match client.block_on(req.send()) {
                Ok(out) => {
                    let shards = out
                        .shards()
                        .iter()
                        .map(ShardInfo::from_sdk)
                        .collect::<Result<Vec<_>>>()
                        .with_context(|| {
                            format!("listing the shards of Kinesis stream {stream}")
                        })?;
                    return Ok((shards, out.next_token().map(str::to_owned)));
                }
                Err(e) => match classify(&e) {
                    ApiError::Throttled(m) | ApiError::Transient(m) | ApiError::TimedOut(m)
                        if backoff.attempts() < 8 =>
                    {
                        tracing::debug!("kinesis: ListShards {stream}: {m} (retrying)");
                        std::thread::sleep(backoff.next_delay());
                    }
                    err => {
                        let m = err.message();
                        if e.code() == Some("ResourceNotFoundException") {
                            bail!(
                                "Kinesis stream {stream} does not exist ({}): {m}. Create it, or \
                                 fix the stream name, region or endpoint",
                                client.place
                            );
                        }
                        if e.code() == Some("AccessDeniedException") {
                            bail!(
                                "Kinesis ListShards on stream {stream}: access denied: {m}. Grant \
                                 kinesis:ListShards, kinesis:GetShardIterator and \
                                 kinesis:GetRecords on the stream to the job's credentials"
                            );
                        }
                        bail!(
                            "Kinesis ListShards on stream {stream} ({}): {m}",
                            client.place
                        );
                    }
                },
            }
        }
    };
    collect_pages(&mut page)
}

/// Follows NextToken until the last page; shards are deduplicated by id and
/// sorted by partition number.
/// One ListShards page: the shards and the NextToken.
type ShardPage = (Vec<ShardInfo>, Option<String>);

fn collect_pages(
    page: &mut dyn FnMut(Option<&str>) -> Result<ShardPage>,
) -> Result<Vec<ShardInfo>> {
    let mut by_id: BTreeMap<String, ShardInfo> = BTreeMap::new();
    let mut token: Option<String> = None;
    let mut seen_tokens = BTreeSet::new();
    loop {
        let (shards, next) = page(token.as_deref())?;
        for s in shards {
            by_id.insert(s.id.clone(), s);
        }
        match next {
            Some(t) if !t.is_empty() => {
                if !seen_tokens.insert(t.clone()) {
                    bail!("ListShards returned the same NextToken twice");
                }
                token = Some(t);
            }
            _ => break,
        }
    }
    let mut shards: Vec<ShardInfo> = by_id.into_values().collect();
    shards.sort_by_key(|s| s.partition);
    Ok(shards)
}

/// Partitions of a process whose shards have been read to their end (or to
/// a bound): shared by all readers of the process, whichever worker runs
/// them. See the module docs for what it covers.
#[derive(Debug, Default)]
pub struct Lineage {
    finished: Mutex<BTreeSet<u32>>,
}

impl Lineage {
    pub fn new() -> Arc<Lineage> {
        Arc::new(Lineage::default())
    }
    /// Records that `partition` was read to its end: its children may start.
    /// Readers call it themselves; the job calls it for parents read by
    /// another process (see [`shard_read_to_end`]).
    pub fn mark_finished(&self, partition: u32) {
        self.finished.lock().unwrap().insert(partition);
    }
    pub fn is_finished(&self, partition: u32) -> bool {
        self.finished.lock().unwrap().contains(&partition)
    }
    pub fn all_finished(&self, partitions: &[u32]) -> bool {
        let f = self.finished.lock().unwrap();
        partitions.iter().all(|p| f.contains(p))
    }
    pub fn finished(&self) -> Vec<u32> {
        self.finished.lock().unwrap().iter().copied().collect()
    }
}

/// Whether shard `shard_id` is closed and holds no record after `after` (a
/// sequence number, e.g. a committed resume token; `None`: no record at
/// all). For the job's cross-process lineage rule: a parent is done when
/// this holds for its committed position. Lists the shards (an open shard
/// is never done), then follows the iterator until a record (not done) or
/// the end of the closed shard (done): empty pages may come before the end,
/// so only a null NextShardIterator counts.
pub fn shard_read_to_end(
    client: &KinesisClient,
    stream: &str,
    shard_id: &str,
    after: Option<&str>,
) -> Result<bool> {
    let shards = discover_shards(client, stream)?;
    let Some(shard) = shards.iter().find(|s| s.id == shard_id) else {
        bail!(
            "Kinesis stream {stream} has no shard {shard_id} (trimmed past the retention \
             period, or never existed)"
        );
    };
    if !shard.closed {
        return Ok(false);
    }
    let mut api = SdkShardApi::new(client.clone(), stream);
    let start = match after {
        Some(s) => IteratorStart::AfterSequence(s.to_owned()),
        None => IteratorStart::TrimHorizon,
    };
    let fail = |e: ApiError| anyhow!("Kinesis stream {stream} shard {shard_id}: {}", e.message());
    let mut it = api
        .shard_iterator(shard_id, &start, READ_CALL_TIMEOUT)
        .map_err(fail)?;
    for _ in 0..100 {
        let page = api.get_records(&it, 1).map_err(fail)?;
        if !page.records.is_empty() {
            return Ok(false);
        }
        match page.next_iterator {
            None => return Ok(true),
            Some(next) => {
                it = next;
                std::thread::sleep(MIN_CALL_INTERVAL);
            }
        }
    }
    bail!("Kinesis stream {stream} shard {shard_id}: closed, but no end after 100 empty pages")
}

/// Re-lists the shards every `interval` and reports the new ones.
pub struct ShardWatcher {
    client: KinesisClient,
    stream: String,
    interval: Duration,
    last: Instant,
    known: BTreeSet<String>,
    listing: Vec<ShardInfo>,
}

impl ShardWatcher {
    /// Starts from `known` (the listing the readers were opened with); the
    /// first re-listing happens `interval` from now.
    pub fn new(
        client: KinesisClient,
        stream: impl Into<String>,
        interval: Duration,
        known: &[ShardInfo],
    ) -> ShardWatcher {
        ShardWatcher {
            client,
            stream: stream.into(),
            interval,
            last: Instant::now(),
            known: known.iter().map(|s| s.id.clone()).collect(),
            listing: known.to_vec(),
        }
    }

    /// When `interval` has passed since the last listing, lists again and
    /// returns the shards not seen before, parents before children (by
    /// partition number); otherwise returns nothing at once.
    pub fn poll(&mut self) -> Result<Vec<ShardInfo>> {
        if self.last.elapsed() < self.interval {
            return Ok(Vec::new());
        }
        self.check_now()
    }

    /// Lists now and returns the new shards.
    pub fn check_now(&mut self) -> Result<Vec<ShardInfo>> {
        self.last = Instant::now();
        let shards = discover_shards(&self.client, &self.stream)?;
        let new: Vec<ShardInfo> = shards
            .iter()
            .filter(|s| !self.known.contains(&s.id))
            .cloned()
            .collect();
        self.known.extend(new.iter().map(|s| s.id.clone()));
        self.listing = shards;
        Ok(new)
    }

    /// The latest listing.
    pub fn listing(&self) -> &[ShardInfo] {
        &self.listing
    }
}

// ---------------------------------------------------------------------------
// Backoff

/// Exponential backoff with full jitter: the n-th delay (from 0) is uniform
/// in `[0, min(cap, base·2^n)]`. Pure: the caller sleeps or schedules.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: rand_pcg::Pcg64Mcg,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
            rng: rand_pcg::Pcg64Mcg::seed_from_u64(seed),
        }
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay; each call doubles the ceiling up to `cap`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling().as_nanos() as u64;
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_nanos(self.rng.random_range(0..=ceiling))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

fn seed_from(s: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(s.as_bytes());
    h.write_i64(wall_ms());
    h.finish()
}

// ---------------------------------------------------------------------------
// The calls a reader makes

/// Where a shard iterator starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IteratorStart {
    TrimHorizon,
    Latest,
    /// ms since the epoch.
    AtTimestamp(i64),
    AfterSequence(String),
}

/// One Kinesis record as GetRecords returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRecord {
    pub sequence: String,
    /// ApproximateArrivalTimestamp, ms since the epoch.
    pub arrival_ms: Option<i64>,
    pub data: Vec<u8>,
}

/// One GetRecords answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordsPage {
    pub records: Vec<ShardRecord>,
    /// `None`: the shard is closed and was read to its end.
    pub next_iterator: Option<String>,
    pub millis_behind: Option<i64>,
}

/// The two calls a [`KinesisShardReader`] makes, behind a trait so tests can
/// inject answers and errors.
pub trait ShardApi: Send + 'static {
    fn shard_iterator(
        &mut self,
        shard_id: &str,
        start: &IteratorStart,
        timeout: Duration,
    ) -> Result<String, ApiError>;
    fn get_records(&mut self, iterator: &str, limit: usize) -> Result<RecordsPage, ApiError>;
}

/// [`ShardApi`] over the SDK. The SDK does not retry these calls: the
/// reader backs off itself and answers `Waiting` meanwhile.
pub struct SdkShardApi {
    client: KinesisClient,
    stream: String,
}

impl SdkShardApi {
    pub fn new(client: KinesisClient, stream: impl Into<String>) -> Self {
        SdkShardApi {
            client,
            stream: stream.into(),
        }
    }

    fn call_config(timeout: Duration) -> aws_sdk_kinesis::config::Builder {
        aws_sdk_kinesis::config::Builder::default()
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(timeout)
                    .operation_timeout(timeout)
                    .build(),
            )
    }
}

impl ShardApi for SdkShardApi {
    fn shard_iterator(
        &mut self,
        shard_id: &str,
        start: &IteratorStart,
        timeout: Duration,
    ) -> Result<String, ApiError> {
        let mut req = self
            .client
            .sdk()
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(shard_id);
        req = match start {
            IteratorStart::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            IteratorStart::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            IteratorStart::AtTimestamp(ms) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            IteratorStart::AfterSequence(s) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(s),
        };
        let out = self
            .client
            .block_on(
                req.customize()
                    .config_override(Self::call_config(timeout))
                    .send(),
            )
            .map_err(|e| classify(&e))?;
        out.shard_iterator
            .ok_or_else(|| ApiError::Transient("GetShardIterator returned no iterator".into()))
    }

    fn get_records(&mut self, iterator: &str, limit: usize) -> Result<RecordsPage, ApiError> {
        let req = self
            .client
            .sdk()
            .get_records()
            .shard_iterator(iterator)
            .limit(limit.clamp(1, MAX_RECORDS_PER_CALL) as i32);
        let out = self
            .client
            .block_on(
                req.customize()
                    .config_override(Self::call_config(READ_CALL_TIMEOUT))
                    .send(),
            )
            .map_err(|e| classify(&e))?;
        Ok(RecordsPage {
            records: out
                .records
                .into_iter()
                .map(|r| ShardRecord {
                    sequence: r.sequence_number,
                    arrival_ms: r
                        .approximate_arrival_timestamp
                        .and_then(|t| t.to_millis().ok()),
                    data: r.data.into_inner(),
                })
                .collect(),
            next_iterator: out.next_shard_iterator,
            millis_behind: out.millis_behind_latest,
        })
    }
}

// ---------------------------------------------------------------------------
// The shard reader

/// Where a shard without a checkpoint starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest retained record.
    TrimHorizon,
    /// Only records put after the reader is opened.
    Latest,
    /// The first record that arrived at or after this time (ms since the
    /// epoch).
    AtTimestamp(i64),
}

/// Rates, backoff and timeouts of a reader. The defaults follow AWS's
/// limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// Records asked per GetRecords call (1..=10,000).
    pub max_records_per_call: usize,
    /// Least time between two GetRecords calls on the shard.
    pub min_interval: Duration,
    /// First backoff ceiling after a throttling or transient error.
    pub backoff_base: Duration,
    /// Largest backoff ceiling.
    pub backoff_cap: Duration,
    /// Timeout of GetShardIterator AT_TIMESTAMP before falling back to
    /// TRIM_HORIZON with the time enforced on our side.
    pub at_timestamp_timeout: Duration,
    /// With an end time, a caught-up shard is finished once the wall clock
    /// is this far past the end (arrival times are the server's clock).
    pub end_clock_slack: Duration,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_records_per_call: MAX_RECORDS_PER_CALL,
            min_interval: MIN_CALL_INTERVAL,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(10),
            at_timestamp_timeout: Duration::from_secs(5),
            end_clock_slack: Duration::from_secs(5),
        }
    }
}

/// How one shard is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardReadConfig {
    /// Used when there is no resume token.
    pub start: StartAt,
    /// Bounded read: stop before the first record that arrived at or after
    /// this time (ms since the epoch, exclusive).
    pub end_ms: Option<i64>,
    /// Bounded read: stop at the first empty GetRecords with
    /// `MillisBehindLatest == 0` ("to the end as of now"; a shard written
    /// faster than it is read may run on, so combine with `end_ms` for a
    /// hard bound).
    pub until_caught_up: bool,
    pub limits: ReadLimits,
}

impl Default for ShardReadConfig {
    fn default() -> Self {
        ShardReadConfig {
            start: StartAt::TrimHorizon,
            end_ms: None,
            until_caught_up: false,
            limits: ReadLimits::default(),
        }
    }
}

/// Per-shard counters, shared with whoever holds the `Arc` (metrics), also
/// after the reader is boxed into the dataflow.
#[derive(Debug)]
pub struct ShardMetrics {
    /// `MillisBehindLatest` of the last GetRecords; -1 before the first.
    pub millis_behind_latest: AtomicI64,
    pub get_records_calls: AtomicU64,
    /// Throttling answers (ProvisionedThroughputExceeded and the like).
    pub throttled: AtomicU64,
    /// Timeouts and transport errors.
    pub transient_errors: AtomicU64,
    pub expired_iterators: AtomicU64,
    /// Records dropped because their sequence number was not above the last
    /// one fetched (a server re-delivering; 0 unless something is wrong).
    pub skipped_repeats: AtomicU64,
    /// Kinesis records fetched, and user records handed out.
    pub kinesis_records: AtomicU64,
    pub user_records: AtomicU64,
    pub finished: AtomicBool,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            millis_behind_latest: AtomicI64::new(-1),
            get_records_calls: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            transient_errors: AtomicU64::new(0),
            expired_iterators: AtomicU64::new(0),
            skipped_repeats: AtomicU64::new(0),
            kinesis_records: AtomicU64::new(0),
            user_records: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        }
    }
}

/// One shard as a [`PartitionReader`]. See the module docs.
pub struct KinesisShardReader {
    api: Box<dyn ShardApi>,
    stream: String,
    shard_id: String,
    partition: u32,
    /// Parents still to wait for (emptied once they are finished).
    wait_for: Vec<u32>,
    lineage: Arc<Lineage>,
    config: ShardReadConfig,
    /// The resume token given at open, if any.
    resumed: bool,
    iterator: Option<String>,
    /// The last sequence number fetched (buffered or handed out).
    last_fetched: Option<String>,
    /// A fresh AT_TIMESTAMP start: records before this are skipped until
    /// the first one at or after it.
    skip_before_ms: Option<i64>,
    /// GetShardIterator AT_TIMESTAMP timed out: read from TRIM_HORIZON.
    at_timestamp_fallback: bool,
    /// The AT_TIMESTAMP time was refused as in the future: read from LATEST.
    at_timestamp_future: bool,
    /// Wall time of a fresh LATEST start's first iterator.
    latest_opened_ms: Option<i64>,
    buffer: VecDeque<ShardRecord>,
    next_offset: u64,
    closed: bool,
    caught_up: bool,
    finished: bool,
    /// The last call failed (throttling, transport): `Waiting` until a
    /// call succeeds.
    failing: bool,
    backoff: Backoff,
    last_backoff: Option<Duration>,
    next_call: Instant,
    metrics: Arc<ShardMetrics>,
    log: LogThrottle,
}

impl fmt::Debug for KinesisShardReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KinesisShardReader")
            .field("stream", &self.stream)
            .field("shard", &self.shard_id)
            .field("next_offset", &self.next_offset)
            .field("last_fetched", &self.last_fetched)
            .finish_non_exhaustive()
    }
}

impl KinesisShardReader {
    /// A reader of `shard`, over the SDK. `listing` is the shard list the
    /// shard came from (parents not in it are not waited for). `resume`:
    /// `(offset, token)` from a checkpoint (`token` `None` with offset 0 is
    /// a fresh start). A fresh LATEST start gets its iterator now, so
    /// records put after this call are read.
    pub fn open(
        client: &KinesisClient,
        stream: &str,
        shard: &ShardInfo,
        listing: &[ShardInfo],
        resume: (u64, Option<String>),
        config: ShardReadConfig,
        lineage: Arc<Lineage>,
    ) -> Result<KinesisShardReader> {
        let api = Box::new(SdkShardApi::new(client.clone(), stream));
        KinesisShardReader::with_api(api, stream, shard, listing, resume, config, lineage)
    }

    /// [`open`](Self::open) over any [`ShardApi`] (tests).
    pub fn with_api(
        api: Box<dyn ShardApi>,
        stream: &str,
        shard: &ShardInfo,
        listing: &[ShardInfo],
        resume: (u64, Option<String>),
        config: ShardReadConfig,
        lineage: Arc<Lineage>,
    ) -> Result<KinesisShardReader> {
        let (offset, token) = resume;
        if let Some(t) = &token {
            if !is_sequence_number(t) {
                bail!(
                    "Kinesis stream {stream} shard {}: the checkpointed resume token {t:?} is not \
                     a sequence number; was the checkpoint written by another kind of source?",
                    shard.id
                );
            }
        } else if offset > 0 {
            bail!(
                "Kinesis stream {stream} shard {}: a checkpoint at offset {offset} without a \
                 sequence number cannot be resumed; drop this partition's checkpoint to start \
                 over from the configured start position",
                shard.id
            );
        }
        if !(1..=MAX_RECORDS_PER_CALL).contains(&config.limits.max_records_per_call) {
            bail!(
                "Kinesis max records per GetRecords call must be 1..={MAX_RECORDS_PER_CALL}, not {}",
                config.limits.max_records_per_call
            );
        }
        let wait_for: Vec<u32> = shard
            .parents
            .iter()
            .copied()
            .filter(|p| listing.iter().any(|s| s.partition == *p))
            .collect();
        let skip_before_ms = match (&token, &config.start) {
            (None, StartAt::AtTimestamp(ms)) => Some(*ms),
            _ => None,
        };
        let backoff = Backoff::new(
            config.limits.backoff_base,
            config.limits.backoff_cap,
            seed_from(&shard.id) ^ u64::from(shard.partition),
        );
        let mut r = KinesisShardReader {
            api,
            stream: stream.to_owned(),
            shard_id: shard.id.clone(),
            partition: shard.partition,
            wait_for,
            lineage,
            resumed: token.is_some(),
            iterator: None,
            last_fetched: token,
            skip_before_ms,
            at_timestamp_fallback: false,
            at_timestamp_future: false,
            latest_opened_ms: None,
            buffer: VecDeque::new(),
            next_offset: offset,
            closed: false,
            caught_up: false,
            finished: false,
            failing: false,
            backoff,
            last_backoff: None,
            next_call: Instant::now(),
            metrics: Arc::new(ShardMetrics::default()),
            log: LogThrottle::default(),
            config,
        };
        if !r.resumed && r.config.start == StartAt::Latest {
            // LATEST means "after open": fix the position now.
            let mut last = None;
            for _ in 0..6 {
                match r.new_iterator() {
                    Ok(()) => break,
                    Err(Step::Fatal(m)) => bail!(m),
                    Err(Step::Again(m) | Step::Backoff(_, m)) => {
                        last = Some(m);
                        std::thread::sleep(r.backoff.next_delay());
                    }
                }
            }
            if r.iterator.is_none() {
                bail!(
                    "Kinesis stream {stream} shard {}: no LATEST iterator: {}",
                    shard.id,
                    last.unwrap_or_default()
                );
            }
            r.backoff.reset();
        }
        Ok(r)
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }
    /// The next offset to hand out.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }
    /// `MillisBehindLatest` of the last GetRecords (`None` before the first).
    pub fn millis_behind_latest(&self) -> Option<i64> {
        let v = self
            .metrics
            .millis_behind_latest
            .load(AtomicOrdering::Relaxed);
        (v >= 0).then_some(v)
    }
    pub fn metrics(&self) -> Arc<ShardMetrics> {
        self.metrics.clone()
    }
    /// Whether the shard was closed (split or merged away) and read to its
    /// end: its children continue it.
    pub fn read_to_close(&self) -> bool {
        self.finished && self.closed
    }
    /// Whether the reader still waits for parents to finish.
    pub fn waiting_for_parents(&self) -> bool {
        !self.wait_for.is_empty() && !self.lineage.all_finished(&self.wait_for)
    }
    /// Replaces the backoff (a seeded one, for tests).
    pub fn set_backoff(&mut self, backoff: Backoff) {
        self.backoff = backoff;
    }
    /// The jittered delay of the last backoff (for tests and logs).
    pub fn last_backoff(&self) -> Option<Duration> {
        self.last_backoff
    }

    fn what(&self) -> String {
        format!("Kinesis stream {} shard {}", self.stream, self.shard_id)
    }

    /// Where a new iterator must start.
    fn iterator_start(&self) -> IteratorStart {
        if let Some(s) = &self.last_fetched {
            return IteratorStart::AfterSequence(s.clone());
        }
        match self.config.start {
            StartAt::TrimHorizon => IteratorStart::TrimHorizon,
            // Renewing a LATEST start that fetched nothing yet: from its
            // open time, so records put meanwhile are read.
            StartAt::Latest => match self.latest_opened_ms {
                Some(_) if self.at_timestamp_fallback => IteratorStart::TrimHorizon,
                Some(ms) if !self.at_timestamp_future => IteratorStart::AtTimestamp(ms),
                _ => IteratorStart::Latest,
            },
            StartAt::AtTimestamp(ms) => {
                if self.at_timestamp_fallback {
                    IteratorStart::TrimHorizon
                } else if self.at_timestamp_future && ms > wall_ms() - 60_000 {
                    IteratorStart::Latest
                } else {
                    IteratorStart::AtTimestamp(ms)
                }
            }
        }
    }

    /// GetShardIterator from [`iterator_start`](Self::iterator_start).
    fn new_iterator(&mut self) -> Result<(), Step> {
        let start = self.iterator_start();
        let timeout = match start {
            IteratorStart::AtTimestamp(_) => self.config.limits.at_timestamp_timeout,
            _ => READ_CALL_TIMEOUT,
        };
        let opened = wall_ms();
        match self.api.shard_iterator(&self.shard_id, &start, timeout) {
            Ok(it) => {
                if start == IteratorStart::Latest && self.latest_opened_ms.is_none() {
                    self.latest_opened_ms = Some(opened);
                }
                self.iterator = Some(it);
                Ok(())
            }
            Err(e) => Err(self.iterator_error(&start, e)),
        }
    }

    fn iterator_error(&mut self, start: &IteratorStart, e: ApiError) -> Step {
        let what = self.what();
        match (start, e) {
            (IteratorStart::AtTimestamp(ms), ApiError::TimedOut(m)) => {
                // kinesalite never answers when no record is at or after
                // the time; on AWS a timeout is rare. TRIM_HORIZON with the
                // time enforced here is exact either way.
                tracing::warn!(
                    "kinesis: {what}: GetShardIterator AT_TIMESTAMP {ms} timed out ({m}); \
                     reading from TRIM_HORIZON and skipping records that arrived before {ms}"
                );
                self.at_timestamp_fallback = true;
                self.skip_before_ms = Some(self.skip_before_ms.unwrap_or(*ms));
                Step::Again(m)
            }
            (IteratorStart::AtTimestamp(ms), ApiError::InvalidArgument(m))
                if *ms > wall_ms() - 60_000 && !self.at_timestamp_future =>
            {
                // A time in the future (or just ahead of the server's clock).
                tracing::debug!("kinesis: {what}: AT_TIMESTAMP {ms} refused ({m}); using LATEST");
                self.at_timestamp_future = true;
                Step::Again(m)
            }
            (_, ApiError::Throttled(m)) => Step::Backoff("throttled", m),
            (_, ApiError::Transient(m) | ApiError::TimedOut(m) | ApiError::ExpiredIterator(m)) => {
                Step::Backoff("transient", m)
            }
            (IteratorStart::AfterSequence(s), ApiError::InvalidArgument(m)) => {
                Step::Fatal(format!(
                "{what}: the resume sequence number {s} is not valid for this shard ({m}). Was the \
                 stream deleted and recreated, or the checkpoint taken from another stream? Drop \
                 this partition's checkpoint to start over"
            ))
            }
            (_, e) => Step::Fatal(self.fatal_message("GetShardIterator", e.message())),
        }
    }

    fn fatal_message(&self, op: &str, m: &str) -> String {
        let what = self.what();
        if m.starts_with("ResourceNotFoundException") {
            format!(
                "{what}: {op}: {m}. Was the stream deleted, or the shard trimmed past the \
                 retention period? Check the stream name, region and endpoint"
            )
        } else if m.starts_with("AccessDeniedException") || m.starts_with("KMSAccessDenied") {
            format!(
                "{what}: {op}: {m}. Grant kinesis:GetShardIterator and kinesis:GetRecords (and \
                 kms:Decrypt for an encrypted stream) to the job's credentials"
            )
        } else {
            format!("{what}: {op}: {m}")
        }
    }

    /// Backs off after a throttling or transient error.
    fn back_off(&mut self, kind: &str, m: &str) {
        let delay = self.backoff.next_delay();
        self.last_backoff = Some(delay);
        self.next_call = Instant::now() + delay.max(self.config.limits.min_interval);
        self.failing = true;
        let counter = if kind == "throttled" {
            &self.metrics.throttled
        } else {
            &self.metrics.transient_errors
        };
        counter.fetch_add(1, AtomicOrdering::Relaxed);
        let key = format!("{}/{kind}", self.shard_id);
        let what = self.what();
        self.log.warn(
            &key,
            &format_args!("{what}: {m} (backing off {} ms)", delay.as_millis()),
        );
    }

    /// At most one GetRecords call, when the interval allows it.
    fn fetch(&mut self) -> Result<(), String> {
        if Instant::now() < self.next_call {
            return Ok(());
        }
        // At most one switch to a fallback start and one GetRecords per poll.
        let mut switched = false;
        loop {
            if self.iterator.is_none() {
                match self.new_iterator() {
                    Ok(()) => {}
                    Err(Step::Fatal(m)) => return Err(m),
                    Err(Step::Again(_)) if !switched => {
                        switched = true;
                        continue;
                    }
                    Err(Step::Again(m)) => {
                        self.back_off("transient", &format!("GetShardIterator: {m}"));
                        return Ok(());
                    }
                    Err(Step::Backoff(kind, m)) => {
                        self.back_off(kind, &format!("GetShardIterator: {m}"));
                        return Ok(());
                    }
                }
            }
            let iterator = self.iterator.clone().expect("an iterator");
            self.metrics
                .get_records_calls
                .fetch_add(1, AtomicOrdering::Relaxed);
            let limit = self.config.limits.max_records_per_call;
            let result = self.api.get_records(&iterator, limit);
            self.next_call = Instant::now() + self.config.limits.min_interval;
            match result {
                Ok(page) => {
                    self.backoff.reset();
                    self.failing = false;
                    self.accept(page);
                    return Ok(());
                }
                Err(ApiError::ExpiredIterator(m)) => {
                    // Renewed on the next poll (GetRecords' interval holds).
                    self.metrics
                        .expired_iterators
                        .fetch_add(1, AtomicOrdering::Relaxed);
                    tracing::debug!("kinesis: {}: {m}; renewing the iterator", self.what());
                    self.iterator = None;
                    return Ok(());
                }
                Err(ApiError::Throttled(m)) => {
                    self.back_off("throttled", &format!("GetRecords: {m}"));
                    return Ok(());
                }
                Err(ApiError::Transient(m) | ApiError::TimedOut(m)) => {
                    self.back_off("transient", &format!("GetRecords: {m}"));
                    return Ok(());
                }
                Err(e @ (ApiError::InvalidArgument(_) | ApiError::Fatal(_))) => {
                    return Err(self.fatal_message("GetRecords", e.message()));
                }
            }
        }
    }

    fn accept(&mut self, page: RecordsPage) {
        self.metrics
            .millis_behind_latest
            .store(page.millis_behind.unwrap_or(-1), AtomicOrdering::Relaxed);
        let empty = page.records.is_empty();
        for r in page.records {
            if let Some(last) = &self.last_fetched {
                if cmp_sequence(&r.sequence, last) != Ordering::Greater {
                    self.metrics
                        .skipped_repeats
                        .fetch_add(1, AtomicOrdering::Relaxed);
                    let what = self.what();
                    self.log.warn(
                        &format!("{}/order", self.shard_id),
                        &format_args!(
                            "{what}: skipping record {} at or below the last one fetched ({last})",
                            r.sequence
                        ),
                    );
                    continue;
                }
            }
            self.last_fetched = Some(r.sequence.clone());
            self.metrics
                .kinesis_records
                .fetch_add(1, AtomicOrdering::Relaxed);
            if let Some(t) = self.skip_before_ms {
                if r.arrival_ms.is_some_and(|a| a < t) {
                    continue;
                }
                self.skip_before_ms = None;
            }
            self.buffer.push_back(r);
        }
        self.iterator = page.next_iterator;
        if self.iterator.is_none() {
            self.closed = true;
        }
        self.caught_up = empty && page.millis_behind == Some(0);
    }

    /// Hands out buffered records up to `max` user records, ending at a
    /// Kinesis record boundary; stops at the end time.
    fn drain(&mut self, max: usize, batch: &mut RawBatch) -> usize {
        let mut pushed = 0;
        while pushed < max {
            let Some(front) = self.buffer.front() else {
                break;
            };
            if let (Some(end), Some(at)) = (self.config.end_ms, front.arrival_ms) {
                if at >= end {
                    self.finish();
                    break;
                }
            }
            let rec = self.buffer.pop_front().expect("a buffered record");
            match kpl::deaggregate(&rec.data) {
                Some(users) => {
                    for u in users {
                        batch.push(u.data, self.next_offset);
                        self.next_offset += 1;
                        pushed += 1;
                    }
                }
                None => {
                    batch.push(&rec.data, self.next_offset);
                    self.next_offset += 1;
                    pushed += 1;
                }
            }
            batch.resume = Some(rec.sequence);
        }
        self.metrics
            .user_records
            .fetch_add(pushed as u64, AtomicOrdering::Relaxed);
        pushed
    }

    fn finish(&mut self) {
        self.finished = true;
        self.buffer.clear();
        self.iterator = None;
        self.lineage.mark_finished(self.partition);
        self.metrics.finished.store(true, AtomicOrdering::Relaxed);
    }

    /// Whether a bound or the shard's end has been reached with nothing
    /// left to hand out.
    fn at_end(&self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        if self.closed {
            return true;
        }
        if !self.caught_up {
            return false;
        }
        if self.config.until_caught_up {
            return true;
        }
        self.config.end_ms.is_some_and(|end| {
            wall_ms() >= end.saturating_add(self.config.limits.end_clock_slack.as_millis() as i64)
        })
    }
}

/// What to do after a failed GetShardIterator.
enum Step {
    /// A fallback start was chosen: try again now.
    Again(String),
    /// Throttled (`"throttled"`) or transient (`"transient"`): back off.
    Backoff(&'static str, String),
    Fatal(String),
}

impl PartitionReader for KinesisShardReader {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        if self.finished {
            return Ok(Poll::Finished);
        }
        if !self.wait_for.is_empty() {
            if !self.lineage.all_finished(&self.wait_for) {
                return Ok(Poll::Waiting);
            }
            self.wait_for.clear();
        }
        let max = max.max(1);
        let mut pushed = self.drain(max, batch);
        if !self.finished && pushed < max && self.buffer.is_empty() && !self.at_end() {
            self.fetch()?;
            pushed += self.drain(max - pushed, batch);
        }
        if !self.finished && self.at_end() {
            self.finish();
        }
        Ok(if pushed > 0 {
            Poll::Ready
        } else if self.finished {
            Poll::Finished
        } else if !self.failing && self.buffer.is_empty() && self.millis_behind_latest() == Some(0)
        {
            // The last GetRecords answered and said the shard's tip is
            // reached: nothing known unread (SPEC 3's idleness).
            Poll::CaughtUp
        } else {
            // Records are (or may be) waiting: behind the tip, not asked
            // yet, or the endpoint failing or throttling. Never idle.
            Poll::Waiting
        })
    }

    fn describe(&self) -> String {
        self.what()
    }
}

// ---------------------------------------------------------------------------
// Producer and admin helpers (tests and tools)

/// Puts one record; returns `(shard id, sequence number)`. `explicit_hash_key`
/// picks the shard (whose hash key range contains it); `after` is the
/// previous record's sequence number (SequenceNumberForOrdering).
pub fn put_record(
    client: &KinesisClient,
    stream: &str,
    partition_key: &str,
    explicit_hash_key: Option<u128>,
    data: &[u8],
    after: Option<&str>,
) -> Result<(String, String)> {
    let mut backoff = Backoff::new(
        Duration::from_millis(50),
        Duration::from_secs(2),
        seed_from(partition_key),
    );
    let mut ordering = after.map(str::to_owned);
    loop {
        let mut req = client
            .sdk()
            .put_record()
            .stream_name(stream)
            .partition_key(partition_key)
            .data(Blob::new(data));
        if let Some(h) = explicit_hash_key {
            req = req.explicit_hash_key(h.to_string());
        }
        if let Some(s) = &ordering {
            req = req.sequence_number_for_ordering(s);
        }
        match client.block_on(req.send()) {
            Ok(out) => return Ok((out.shard_id().to_owned(), out.sequence_number().to_owned())),
            Err(e) => match classify(&e) {
                ApiError::Throttled(m) | ApiError::Transient(m) if backoff.attempts() < 10 => {
                    tracing::debug!("kinesis: PutRecord {stream}: {m} (retrying)");
                    std::thread::sleep(backoff.next_delay());
                }
                // kinesalite refuses, for about a second after a resharding,
                // a new shard's sequence number as "in the future": records
                // of one caller are ordered anyway (each put waits for the
                // previous one), so put it without.
                ApiError::InvalidArgument(m)
                    if ordering.is_some() && m.contains("ExclusiveMinimumSequenceNumber") =>
                {
                    ordering = None;
                }
                err => bail!("Kinesis PutRecord to stream {stream}: {}", err.message()),
            },
        }
    }
}

/// Puts `lines` in order to the shard whose hash key range contains
/// `shard_hash_key`, up to 500 per PutRecords call, each call after the
/// previous one is acknowledged; returns their sequence numbers. A call with
/// any failed record is an error (retrying only the failed ones would put
/// them after records that followed them). Faster than
/// [`put_records_to_shard`]; PutRecords keeps a request's order on
/// kinesalite and in practice on AWS, which only PutRecord promises.
pub fn put_lines_batched(
    client: &KinesisClient,
    stream: &str,
    shard_hash_key: u128,
    lines: &[&[u8]],
) -> Result<Vec<String>> {
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    let key = format!("tidemark-{shard_hash_key}");
    let mut seqs: Vec<String> = Vec::with_capacity(lines.len());
    for chunk in lines.chunks(500) {
        let entries = chunk
            .iter()
            .map(|l| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(*l))
                    .partition_key(&key)
                    .explicit_hash_key(shard_hash_key.to_string())
                    .build()
                    .map_err(|e| anyhow!("PutRecords entry: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let req = client
            .sdk()
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries));
        let out = client.block_on(req.send()).map_err(|e| {
            anyhow!(
                "Kinesis PutRecords to stream {stream}: {}",
                classify(&e).message()
            )
        })?;
        if out.failed_record_count().unwrap_or(0) > 0 {
            bail!(
                "Kinesis PutRecords to stream {stream}: {} of {} records failed",
                out.failed_record_count().unwrap_or(0),
                chunk.len()
            );
        }
        for r in out.records() {
            let seq = r
                .sequence_number()
                .ok_or_else(|| anyhow!("PutRecords answered a record without a sequence number"))?;
            if let Some(last) = seqs.last() {
                if cmp_sequence(seq, last) != Ordering::Greater {
                    bail!(
                        "Kinesis PutRecords to stream {stream}: sequence numbers out of put order"
                    );
                }
            }
            seqs.push(seq.to_owned());
        }
    }
    Ok(seqs)
}

/// Puts `lines` in order, one PutRecord at a time (each after the previous
/// one is acknowledged, chained with SequenceNumberForOrdering), to the
/// shard whose hash key range contains `shard_hash_key`; returns their
/// sequence numbers.
pub fn put_records_to_shard(
    client: &KinesisClient,
    stream: &str,
    shard_hash_key: u128,
    lines: &[&[u8]],
) -> Result<Vec<String>> {
    let key = format!("tidemark-{shard_hash_key}");
    let mut seqs: Vec<String> = Vec::with_capacity(lines.len());
    for line in lines {
        let (_, seq) = put_record(
            client,
            stream,
            &key,
            Some(shard_hash_key),
            line,
            seqs.last().map(String::as_str),
        )?;
        seqs.push(seq);
    }
    Ok(seqs)
}

/// Creates `stream` with `shards` shards and waits until it is ACTIVE.
pub fn create_stream(client: &KinesisClient, stream: &str, shards: u32) -> Result<()> {
    client
        .block_on(
            client
                .sdk()
                .create_stream()
                .stream_name(stream)
                .shard_count(shards as i32)
                .send(),
        )
        .map_err(|e| anyhow!("Kinesis CreateStream {stream}: {}", classify(&e).message()))?;
    wait_stream_active(client, stream, Duration::from_secs(60))
}

/// Waits until `stream` is ACTIVE (after CreateStream, SplitShard,
/// MergeShards).
pub fn wait_stream_active(client: &KinesisClient, stream: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = client
            .block_on(
                client
                    .sdk()
                    .describe_stream_summary()
                    .stream_name(stream)
                    .send(),
            )
            .map_err(|e| {
                anyhow!(
                    "Kinesis DescribeStreamSummary {stream}: {}",
                    classify(&e).message()
                )
            })?;
        let status = out
            .stream_description_summary()
            .map(|s| s.stream_status().clone());
        if status == Some(StreamStatus::Active) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Kinesis stream {stream} not ACTIVE after {timeout:?} (status {status:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SplitShard at `new_starting_hash`, then waits until the stream is ACTIVE.
pub fn split_shard(
    client: &KinesisClient,
    stream: &str,
    shard_id: &str,
    new_starting_hash: u128,
) -> Result<()> {
    client
        .block_on(
            client
                .sdk()
                .split_shard()
                .stream_name(stream)
                .shard_to_split(shard_id)
                .new_starting_hash_key(new_starting_hash.to_string())
                .send(),
        )
        .map_err(|e| {
            anyhow!(
                "Kinesis SplitShard {stream} {shard_id}: {}",
                classify(&e).message()
            )
        })?;
    wait_stream_active(client, stream, Duration::from_secs(60))
}

/// MergeShards of two adjacent shards, then waits until the stream is ACTIVE.
pub fn merge_shards(
    client: &KinesisClient,
    stream: &str,
    shard: &str,
    adjacent: &str,
) -> Result<()> {
    client
        .block_on(
            client
                .sdk()
                .merge_shards()
                .stream_name(stream)
                .shard_to_merge(shard)
                .adjacent_shard_to_merge(adjacent)
                .send(),
        )
        .map_err(|e| {
            anyhow!(
                "Kinesis MergeShards {stream} {shard} {adjacent}: {}",
                classify(&e).message()
            )
        })?;
    wait_stream_active(client, stream, Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(partition: u32, parents: &[u32]) -> ShardInfo {
        ShardInfo {
            id: format!("shardId-{partition:012}"),
            partition,
            parents: parents.to_vec(),
            starting_hash: 0,
            ending_hash: u128::MAX,
            starting_sequence: "1".into(),
            ending_sequence: None,
            closed: false,
        }
    }

    #[test]
    fn readers_can_move_between_threads() {
        fn send<T: Send + 'static>() {}
        send::<KinesisShardReader>();
        send::<KinesisClient>();
        send::<Arc<Lineage>>();
    }

    #[test]
    fn sequence_numbers_compare_as_numbers_beyond_u128() {
        // Real sequence numbers have 56 digits (about 2^185): no u128 holds them.
        let a = "49590338271490256608559692538361571095921575989136588898";
        let b = "49590338271490256608559692540925702759324208523137515618";
        assert!(a.parse::<u128>().is_err());
        assert_eq!(cmp_sequence(a, b), Ordering::Less);
        assert_eq!(cmp_sequence(b, a), Ordering::Greater);
        assert_eq!(cmp_sequence(a, a), Ordering::Equal);
        // Length decides before digits; leading zeros do not count.
        assert_eq!(cmp_sequence("9", "10"), Ordering::Less);
        assert_eq!(cmp_sequence("0010", "9"), Ordering::Greater);
        assert!(is_sequence_number(a));
        assert!(!is_sequence_number("after-3"));
        assert!(!is_sequence_number(""));
    }

    #[test]
    fn partitions_are_shard_id_suffixes() {
        assert_eq!(partition_of("shardId-000000000007").unwrap(), 7);
        assert_eq!(partition_of("shardId-000000001234").unwrap(), 1234);
        assert!(partition_of("shardId-").is_err());
        assert!(partition_of("shardId-99999999999999").is_err());
    }

    #[test]
    fn list_pages_are_followed_to_the_end() {
        let pages = [
            (vec![shard(2, &[]), shard(0, &[])], Some("t1".to_owned())),
            (vec![shard(1, &[]), shard(3, &[0])], Some("t2".to_owned())),
            (vec![shard(4, &[0]), shard(2, &[])], None),
        ];
        let mut asked = Vec::new();
        let mut i = 0;
        let mut page = |t: Option<&str>| {
            asked.push(t.map(str::to_owned));
            i += 1;
            Ok(pages[i - 1].clone())
        };
        let got = collect_pages(&mut page).unwrap();
        assert_eq!(
            got.iter().map(|s| s.partition).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(asked, vec![None, Some("t1".into()), Some("t2".into())]);
        // A server repeating a token would loop forever: refused.
        let mut looping = |_: Option<&str>| Ok((vec![shard(0, &[])], Some("same".to_owned())));
        assert!(collect_pages(&mut looping).is_err());
    }

    #[test]
    fn backoff_is_exponential_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 7);
        let ceilings: Vec<u128> = (0..6)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d <= c, "{d:?} above {c:?}");
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        // Full jitter: delays spread over the whole range, not near the top.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 11);
        let d: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(d.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(d.iter().any(|d| *d > Duration::from_millis(900)));
        // Same seed, same delays.
        let mut x = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 3);
        let mut y = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 3);
        for _ in 0..5 {
            assert_eq!(x.next_delay(), y.next_delay());
        }
    }

    /// Scripted GetRecords answers; every call recorded with its time.
    #[derive(Clone, Default)]
    struct Fake {
        answers: Arc<Mutex<VecDeque<Result<RecordsPage, ApiError>>>>,
        iterators: Arc<Mutex<Vec<IteratorStart>>>,
        calls: Arc<Mutex<Vec<Instant>>>,
    }

    impl ShardApi for Fake {
        fn shard_iterator(
            &mut self,
            _shard: &str,
            start: &IteratorStart,
            _timeout: Duration,
        ) -> Result<String, ApiError> {
            let mut its = self.iterators.lock().unwrap();
            its.push(start.clone());
            Ok(format!("it-{}", its.len()))
        }
        fn get_records(&mut self, _it: &str, _limit: usize) -> Result<RecordsPage, ApiError> {
            self.calls.lock().unwrap().push(Instant::now());
            self.answers.lock().unwrap().pop_front().unwrap_or_else(|| {
                Ok(RecordsPage {
                    records: vec![],
                    next_iterator: Some("tip".into()),
                    millis_behind: Some(0),
                })
            })
        }
    }

    fn rec(seq: u32, data: &str) -> ShardRecord {
        ShardRecord {
            sequence: format!("{}", 1000 + seq),
            arrival_ms: Some(1_000),
            data: data.as_bytes().to_vec(),
        }
    }

    fn page(recs: Vec<ShardRecord>, next: Option<&str>) -> Result<RecordsPage, ApiError> {
        Ok(RecordsPage {
            records: recs,
            next_iterator: next.map(str::to_owned),
            millis_behind: Some(0),
        })
    }

    /// Polls until Finished; returns (offset, bytes) and every poll answer.
    fn read_all(r: &mut KinesisShardReader, max: usize) -> (Vec<(u64, String)>, Vec<Poll>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = Vec::new();
        let mut polls = Vec::new();
        let mut batch = RawBatch::default();
        loop {
            assert!(Instant::now() < deadline, "not finished: {out:?} {polls:?}");
            batch.clear();
            let p = r.poll(max, &mut batch).expect("poll");
            polls.push(p);
            out.extend(
                batch
                    .iter()
                    .map(|(b, o)| (o, String::from_utf8(b.to_vec()).unwrap())),
            );
            if p == Poll::Finished {
                return (out, polls);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn limits() -> ReadLimits {
        ReadLimits {
            min_interval: Duration::from_millis(20),
            backoff_base: Duration::from_millis(40),
            backoff_cap: Duration::from_millis(200),
            ..ReadLimits::default()
        }
    }

    #[test]
    fn throttling_backs_off_with_jitter_and_reading_continues() {
        let fake = Fake::default();
        {
            let mut a = fake.answers.lock().unwrap();
            for _ in 0..5 {
                a.push_back(Err(ApiError::Throttled(
                    "ProvisionedThroughputExceededException: rate exceeded".into(),
                )));
            }
            a.push_back(page(
                vec![rec(1, "a"), rec(2, "b"), rec(3, "c")],
                Some("it"),
            ));
            a.push_back(Err(ApiError::Transient("HTTP 503: slow down".into())));
            a.push_back(Err(ApiError::ExpiredIterator(
                "ExpiredIteratorException".into(),
            )));
            a.push_back(page(vec![rec(4, "d"), rec(5, "e")], None));
        }
        let config = ShardReadConfig {
            limits: limits(),
            ..ShardReadConfig::default()
        };
        let s = shard(0, &[]);
        let lineage = Lineage::new();
        let mut r = KinesisShardReader::with_api(
            Box::new(fake.clone()),
            "s",
            &s,
            std::slice::from_ref(&s),
            (0, None),
            config,
            lineage.clone(),
        )
        .unwrap();
        let seed = 42;
        r.set_backoff(Backoff::new(
            Duration::from_millis(40),
            Duration::from_millis(200),
            seed,
        ));
        let (got, polls) = read_all(&mut r, 2);
        // Every record once, in order, ordinals from 0: reading continued.
        let want: Vec<(u64, String)> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, d)| (i as u64, d.to_string()))
            .collect();
        assert_eq!(got, want);
        // While backing off the reader is Waiting, never CaughtUp
        // before the first record.
        let first_ready = polls.iter().position(|p| *p == Poll::Ready).unwrap();
        assert!(polls[..first_ready].iter().all(|p| *p == Poll::Waiting));
        // The delays between calls: each error's jittered delay (the same
        // seeded sequence), at least the 20 ms interval, and the ceilings
        // doubling 40, 80, 160, 200 (cap), 200.
        let mut expected =
            Backoff::new(Duration::from_millis(40), Duration::from_millis(200), seed);
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 9, "5 throttled + page + 503 + expired + page");
        let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        let mut ceilings = Vec::new();
        for (i, gap) in gaps.iter().enumerate().take(5) {
            ceilings.push(expected.ceiling().as_millis());
            let d = expected.next_delay().max(Duration::from_millis(20));
            assert!(*gap >= d, "gap {i}: {gap:?} < {d:?}");
            assert!(
                *gap < d + Duration::from_millis(100),
                "gap {i}: {gap:?} >> {d:?}"
            );
        }
        assert_eq!(ceilings, vec![40, 80, 160, 200, 200]);
        // After the page the backoff starts over: the 503 waits within the
        // first ceiling again.
        let after_503 = gaps[6];
        assert!(after_503 < Duration::from_millis(40 + 100), "{after_503:?}");
        // The expired iterator was renewed after the last sequence fetched.
        assert_eq!(
            *fake.iterators.lock().unwrap(),
            vec![
                IteratorStart::TrimHorizon,
                IteratorStart::AfterSequence("1003".into())
            ]
        );
        let m = r.metrics();
        assert_eq!(m.throttled.load(AtomicOrdering::Relaxed), 5);
        assert_eq!(m.transient_errors.load(AtomicOrdering::Relaxed), 1);
        assert_eq!(m.expired_iterators.load(AtomicOrdering::Relaxed), 1);
        assert_eq!(r.millis_behind_latest(), Some(0));
        // A closed shard read to its end finishes and frees its children.
        assert!(lineage.is_finished(0));
    }

    #[test]
    fn a_child_waits_for_its_parents_and_batches_end_at_aggregates() {
        let parent_api = Fake::default();
        parent_api
            .answers
            .lock()
            .unwrap()
            .push_back(page(vec![rec(1, "p1")], None));
        let child_api = Fake::default();
        let agg = kpl::aggregate(&[("k", b"c1"), ("k", b"c2"), ("k", b"c3")]);
        child_api.answers.lock().unwrap().push_back(page(
            vec![
                ShardRecord {
                    sequence: "2001".into(),
                    arrival_ms: Some(1),
                    data: agg,
                },
                rec(1002, "c4"),
            ],
            Some("more"),
        ));
        let (p, c) = (shard(0, &[]), shard(1, &[0, 9]));
        let listing = vec![p.clone(), c.clone()]; // 9 is not listed: not waited for
        let lineage = Lineage::new();
        let config = ShardReadConfig {
            limits: limits(),
            until_caught_up: true,
            ..ShardReadConfig::default()
        };
        let mut child = KinesisShardReader::with_api(
            Box::new(child_api.clone()),
            "s",
            &c,
            &listing,
            (0, None),
            config.clone(),
            lineage.clone(),
        )
        .unwrap();
        let mut batch = RawBatch::default();
        assert_eq!(child.poll(2, &mut batch).unwrap(), Poll::Waiting);
        assert!(child.waiting_for_parents());
        assert!(
            child_api.iterators.lock().unwrap().is_empty(),
            "no call before the parent ends"
        );
        let mut parent = KinesisShardReader::with_api(
            Box::new(parent_api),
            "s",
            &p,
            &listing,
            (0, None),
            config,
            lineage.clone(),
        )
        .unwrap();
        assert_eq!(read_all(&mut parent, 10).0, vec![(0, "p1".to_owned())]);
        // Now the child reads; max 2 stops after the whole 3-record aggregate.
        batch.clear();
        assert_eq!(child.poll(2, &mut batch).unwrap(), Poll::Ready);
        let got: Vec<(u64, Vec<u8>)> = batch.iter().map(|(b, o)| (o, b.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (0, b"c1".to_vec()),
                (1, b"c2".to_vec()),
                (2, b"c3".to_vec())
            ]
        );
        assert_eq!(batch.resume.as_deref(), Some("2001"));
        batch.clear();
        assert_eq!(child.poll(2, &mut batch).unwrap(), Poll::Ready);
        assert_eq!(batch.iter().map(|(_, o)| o).collect::<Vec<_>>(), vec![3]);
        assert_eq!(batch.resume.as_deref(), Some("2002"));
    }

    #[test]
    fn a_checkpoint_without_a_token_is_refused() {
        let s = shard(0, &[]);
        let err = KinesisShardReader::with_api(
            Box::new(Fake::default()),
            "s",
            &s,
            &[],
            (5, None),
            ShardReadConfig::default(),
            Lineage::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("offset 5 without a sequence number"), "{err}");
        let err = KinesisShardReader::with_api(
            Box::new(Fake::default()),
            "s",
            &s,
            &[],
            (5, Some("after-4".into())),
            ShardReadConfig::default(),
            Lineage::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a sequence number"), "{err}");
    }
}
