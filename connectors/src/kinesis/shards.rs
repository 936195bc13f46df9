//! Shard ids, sequence numbers, and listing a stream's shards.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_kinesis::error::ProvideErrorMetadata;

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
