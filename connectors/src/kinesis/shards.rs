//! Shard ids, sequence numbers, and listing a stream's shards.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::backoff::{seed_from, Backoff};
use super::client::{classify, ApiError, KinesisClient};

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

/// How long listing the shards keeps retrying an endpoint that does not
/// answer, refuses connections or throttles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// Give up after this long, with an error naming the stream and the
    /// endpoint: at start, a wrong endpoint must surface as an error.
    For(Duration),
    /// Retry for ever, warning meanwhile: while running, the endpoint
    /// answered before, so this is an outage, and it is waited out.
    Forever,
}

/// How long listing at start retries an unreachable or throttling endpoint.
pub const START_PATIENCE: Duration = Duration::from_secs(300);

/// A failing call warns at once, then at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Every shard of `stream` (open and closed, as long as retained), sorted
/// by partition number, retrying for [`START_PATIENCE`] (see
/// [`discover_shards_with`]).
pub fn discover_shards(client: &KinesisClient, stream: &str) -> Result<Vec<ShardInfo>> {
    discover_shards_with(client, stream, Patience::For(START_PATIENCE))
}

/// Every shard of `stream`. ListShards is paginated with NextToken;
/// throttling, timeouts and transport errors (a hung or unreachable
/// endpoint) are retried with backoff for as long as `patience` allows,
/// with a warning naming the stream and the endpoint; other errors (no
/// such stream, access denied) fail at once.
pub fn discover_shards_with(
    client: &KinesisClient,
    stream: &str,
    patience: Patience,
) -> Result<Vec<ShardInfo>> {
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(5),
        seed_from(stream),
    );
    let what = format!("Kinesis ListShards on stream {stream} ({})", client.place);
    let mut page = |token: Option<&str>| -> Result<ShardPage> {
        let mut call = || {
            let mut req = client.sdk().list_shards();
            req = match token {
                // With a NextToken, AWS refuses the stream name.
                Some(t) => req.next_token(t),
                None => req.stream_name(stream).max_results(1000),
            };
            client.block_on(req.send()).map_err(|e| classify(&e))
        };
        let out = with_retries(
            &what,
            patience,
            &mut backoff,
            &mut call,
            &mut std::thread::sleep,
        )
        .map_err(|e| listing_error(stream, &what, &e, patience))?;
        let shards = out
            .shards()
            .iter()
            .map(ShardInfo::from_sdk)
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("listing the shards of Kinesis stream {stream}"))?;
        Ok((shards, out.next_token().map(str::to_owned)))
    };
    collect_pages(&mut page)
}

/// What a listing that failed (or gave up) tells the operator.
fn listing_error(stream: &str, what: &str, e: &ApiError, patience: Patience) -> anyhow::Error {
    let m = e.message();
    if m.starts_with("ResourceNotFoundException") {
        return anyhow!(
            "{what}: stream {stream} does not exist: {m}. Create it, or fix the stream name, \
             region or endpoint"
        );
    }
    if m.starts_with("AccessDeniedException") {
        return anyhow!(
            "{what}: access denied: {m}. Grant kinesis:ListShards, kinesis:GetShardIterator and \
             kinesis:GetRecords on the stream to the job's credentials"
        );
    }
    match (e, patience) {
        (
            ApiError::Throttled(_) | ApiError::Transient(_) | ApiError::TimedOut(_),
            Patience::For(limit),
        ) => anyhow!(
            "{what}: {m}; gave up after retrying for {} s. Is the endpoint right and reachable?",
            limit.as_secs()
        ),
        _ => anyhow!("{what}: {m}"),
    }
}

/// Calls `call` until it answers. Throttling, timeouts and transport
/// errors back off (`sleep` the next delay of `backoff`) and try again, for
/// as long as `patience` allows, warning naming `what` at the first failure
/// and then every [`WARN_INTERVAL`]; any other error is returned at once,
/// and so is the last one when patience runs out. A success resets
/// `backoff`.
fn with_retries<T>(
    what: &str,
    patience: Patience,
    backoff: &mut Backoff,
    call: &mut dyn FnMut() -> Result<T, ApiError>,
    sleep: &mut dyn FnMut(Duration),
) -> Result<T, ApiError> {
    let mut first_failure: Option<Instant> = None;
    let mut warned: Option<Instant> = None;
    loop {
        let e = match call() {
            Ok(v) => {
                if let Some(t) = first_failure {
                    tracing::info!(
                        "kinesis: {what}: answered again after failing for {} s",
                        t.elapsed().as_secs()
                    );
                }
                backoff.reset();
                return Ok(v);
            }
            Err(e @ (ApiError::Throttled(_) | ApiError::Transient(_) | ApiError::TimedOut(_))) => e,
            Err(e) => return Err(e),
        };
        let since = *first_failure.get_or_insert_with(Instant::now);
        if let Patience::For(limit) = patience {
            if since.elapsed() >= limit {
                return Err(e);
            }
        }
        let delay = backoff.next_delay();
        if warned.is_none_or(|w| w.elapsed() >= WARN_INTERVAL) {
            warned = Some(Instant::now());
            tracing::warn!(
                attempts = backoff.attempts(),
                failing_s = since.elapsed().as_secs(),
                "kinesis: {what}: {}; retrying (backing off {} ms)",
                e.message(),
                delay.as_millis()
            );
        }
        sleep(delay);
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An open shard covering every hash key, for tests.
    pub(crate) fn shard(partition: u32, parents: &[u32]) -> ShardInfo {
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
    fn listing_waits_out_outages_for_its_patience_and_fails_fast_otherwise() {
        let outage = [
            ApiError::TimedOut("dispatch failure: timeout".into()),
            ApiError::Transient("dispatch failure: connection refused".into()),
            ApiError::Throttled("LimitExceededException: rate".into()),
        ];
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(40), 1);
        // Hung, refused and throttled 30 times, then an answer: waited out,
        // each retry after a jittered delay within the cap.
        let mut n = 0;
        let mut call = || {
            n += 1;
            if n <= 30 {
                Err(outage[n % 3].clone())
            } else {
                Ok(n)
            }
        };
        let mut slept = Vec::new();
        let got = with_retries("t", Patience::Forever, &mut backoff, &mut call, &mut |d| {
            slept.push(d)
        });
        assert_eq!(got, Ok(31));
        assert_eq!(slept.len(), 30);
        assert!(slept.iter().all(|d| *d <= Duration::from_millis(40)));
        assert_eq!(backoff.attempts(), 0, "an answer resets the backoff");
        // Out of patience: the last failure is returned, and named as such.
        let mut calls = 0;
        let got = with_retries(
            "t",
            Patience::For(Duration::ZERO),
            &mut backoff,
            &mut || {
                calls += 1;
                Err::<(), _>(outage[1].clone())
            },
            &mut |_| panic!("no sleep without patience"),
        );
        assert_eq!((got.clone(), calls), (Err(outage[1].clone()), 1));
        let m = listing_error(
            "s",
            "ListShards",
            &got.unwrap_err(),
            Patience::For(START_PATIENCE),
        )
        .to_string();
        assert!(
            m.contains("gave up after retrying for 300 s") && m.contains("refused"),
            "{m}"
        );
        // What no retry mends fails at once, even for ever.
        let missing = ApiError::Fatal("ResourceNotFoundException (HTTP 400): no stream".into());
        let got = with_retries(
            "t",
            Patience::Forever,
            &mut backoff,
            &mut || Err::<(), _>(missing.clone()),
            &mut |_| panic!("no retry of a missing stream"),
        );
        let m = listing_error("s", "ListShards", &got.unwrap_err(), Patience::Forever).to_string();
        assert!(m.contains("stream s does not exist"), "{m}");
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
}
