//! A Kinesis stream as the job's partitions: which shards are opened at
//! start, and the children a closed shard hands over to while running.
//!
//! Each shard is one partition (SPEC 3) numbered by its ShardId. A child
//! shard (after SplitShard or MergeShards) is opened by the reader of its
//! *owner*, its first listed parent (`ParentShardId`, else
//! `AdjacentParentShardId`), when the owner has been read to its end: it
//! joins on the owner's worker with the owner's `max_ts`
//! ([`PartitionReader::successors`]), and waits for its other parent
//! through the process's [`Lineage`]. All readers of a stream live in one
//! process, so the lineage and the claims below are plain shared memory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use tidemark_dataflow::source::{PartitionReader, Poll, RawBatch, Successor};

use crate::kinesis::{
    discover_shards, discover_shards_with, KinesisClient, KinesisSettings, KinesisShardReader,
    Lineage, Patience, ReadLimits, ShardInfo, ShardMetrics, ShardReadConfig, StartAt,
};

/// The shards of one stream read by this process.
pub struct StreamSource {
    client: KinesisClient,
    stream: String,
    listing: Vec<ShardInfo>,
    lineage: Arc<Lineage>,
    /// Shards that have a reader (or had one): each is opened once.
    claimed: Mutex<BTreeSet<u32>>,
    start: StartAt,
    end_ms: Option<i64>,
    limits: ReadLimits,
    metrics: Mutex<BTreeMap<u32, (String, Arc<ShardMetrics>)>>,
}

/// A shard's owner: its first parent still listed. `None` for a root.
pub fn owner(shard: &ShardInfo, listing: &[ShardInfo]) -> Option<u32> {
    shard
        .parents
        .iter()
        .copied()
        .find(|p| listing.iter().any(|s| s.partition == *p))
}

/// The shards to open at start, by partition number: every shard with a
/// committed position, and every shard no opened shard will hand over to
/// (roots, and children of shards that are not read). `skip_closed` (a
/// LATEST start) leaves out closed shards without a position: nothing new
/// will arrive in them. Also returns the listed shards that will never be
/// read, for [`Lineage`] (their children must not wait for them).
pub fn initial_shards(
    listing: &[ShardInfo],
    committed: &BTreeSet<u32>,
    skip_closed: bool,
) -> (Vec<u32>, Vec<u32>) {
    let mut sorted: Vec<&ShardInfo> = listing.iter().collect();
    sorted.sort_by_key(|s| s.partition);
    // Shards that will be read: opened now, or handed over to later.
    let mut reached = BTreeSet::new();
    let mut initial = Vec::new();
    let mut unread = Vec::new();
    for s in sorted {
        let has_position = committed.contains(&s.partition);
        let handed_over = owner(s, listing).is_some_and(|o| reached.contains(&o));
        let nothing_new = skip_closed && s.closed;
        if has_position || !(handed_over || nothing_new) {
            initial.push(s.partition);
            reached.insert(s.partition);
        } else if handed_over {
            reached.insert(s.partition);
        } else {
            unread.push(s.partition);
        }
    }
    (initial, unread)
}

impl StreamSource {
    /// Lists the stream's shards (failing with a message that names the
    /// stream and where it was looked for).
    pub fn connect(
        settings: &KinesisSettings,
        start: StartAt,
        end_ms: Option<i64>,
    ) -> Result<Arc<StreamSource>> {
        if settings.stream.trim().is_empty() {
            bail!("kinesis.stream is empty: name the stream to read, e.g. stream = \"payments\"");
        }
        let client = settings.client()?;
        let listing = discover_shards(&client, &settings.stream)?;
        if listing.is_empty() {
            bail!("Kinesis stream {} has no shards", settings.stream);
        }
        Ok(Arc::new(StreamSource {
            client,
            stream: settings.stream.clone(),
            listing,
            lineage: Lineage::new(),
            claimed: Mutex::new(BTreeSet::new()),
            start,
            end_ms,
            limits: ReadLimits::default(),
            metrics: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Whether the read ends (`kinesis.end`), rather than following the
    /// stream for ever.
    pub fn bounded(&self) -> bool {
        self.end_ms.is_some()
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The shards listed at start.
    pub fn listing(&self) -> &[ShardInfo] {
        &self.listing
    }

    /// What each partition number is, recorded in commits (a restart over
    /// another stream is refused). Covers numbers up to the largest listed.
    pub fn describe(&self) -> Vec<String> {
        let max = self.listing.iter().map(|s| s.partition).max().unwrap_or(0);
        (0..=max)
            .map(|p| format!("kinesis:{}/shardId-{p:012}", self.stream))
            .collect()
    }

    /// Decides and claims the shards opened at start (see
    /// [`initial_shards`]); call once per run, before opening any.
    pub fn plan(&self, committed: &BTreeSet<u32>) -> Vec<u32> {
        let skip_closed = self.start == StartAt::Latest;
        let (initial, unread) = initial_shards(&self.listing, committed, skip_closed);
        for p in unread {
            self.lineage.mark_finished(p);
        }
        self.claimed.lock().unwrap().extend(initial.iter().copied());
        initial
    }

    /// Opens a planned shard, resumed from `(offset, token)` (`(0, None)`:
    /// fresh, at the configured start).
    pub fn open(
        self: &Arc<Self>,
        partition: u32,
        resume: (u64, Option<String>),
    ) -> Result<ShardPartition> {
        let shard = self
            .listing
            .iter()
            .find(|s| s.partition == partition)
            .expect("a planned shard is listed");
        self.open_shard(shard, &self.listing, resume, self.start.clone())
    }

    fn open_shard(
        self: &Arc<Self>,
        shard: &ShardInfo,
        listing: &[ShardInfo],
        resume: (u64, Option<String>),
        start: StartAt,
    ) -> Result<ShardPartition> {
        let reader = KinesisShardReader::open(
            &self.client,
            &self.stream,
            shard,
            listing,
            resume,
            ShardReadConfig {
                start,
                end_ms: self.end_ms,
                until_caught_up: false,
                limits: self.limits.clone(),
            },
            self.lineage.clone(),
        )?;
        self.metrics
            .lock()
            .unwrap()
            .insert(shard.partition, (shard.id.clone(), reader.metrics()));
        Ok(ShardPartition {
            reader,
            source: self.clone(),
        })
    }

    /// The children `partition` hands over to, claimed and opened. They
    /// start at TRIM_HORIZON (at the configured time for an AT_TIMESTAMP
    /// start), whatever a LATEST start said: every record put in them after
    /// the resharding belongs to the job. The listing is retried for ever:
    /// the endpoint answered before, so a failure now is an outage, waited
    /// out (the children hold the frontier meanwhile: their owner's reader
    /// blocks its worker, whose other shards wait too).
    fn children_of(self: &Arc<Self>, partition: u32) -> Result<Vec<ShardPartition>> {
        let listing = discover_shards_with(&self.client, &self.stream, Patience::Forever)?;
        let start = match self.start {
            StartAt::AtTimestamp(ms) => StartAt::AtTimestamp(ms),
            _ => StartAt::TrimHorizon,
        };
        let mut opened = Vec::new();
        for child in listing
            .iter()
            .filter(|s| owner(s, &listing) == Some(partition))
        {
            if !self.claimed.lock().unwrap().insert(child.partition) {
                continue;
            }
            tracing::info!(
                stream = %self.stream,
                parent = partition,
                shard = %child.id,
                "kinesis: reading a child shard"
            );
            opened.push(self.open_shard(child, &listing, (0, None), start.clone())?);
        }
        Ok(opened)
    }

    /// Every opened shard's counters (`MillisBehindLatest`, calls,
    /// throttling), by partition.
    pub fn metrics(&self) -> Vec<(u32, String, Arc<ShardMetrics>)> {
        self.metrics
            .lock()
            .unwrap()
            .iter()
            .map(|(p, (id, m))| (*p, id.clone(), m.clone()))
            .collect()
    }
}

/// One shard in the dataflow: its reader, and the stream to ask for its
/// children once it is closed and read to its end.
pub struct ShardPartition {
    reader: KinesisShardReader,
    source: Arc<StreamSource>,
}

impl ShardPartition {
    /// The next offset to read.
    pub fn next_offset(&self) -> u64 {
        self.reader.next_offset()
    }
}

impl PartitionReader for ShardPartition {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        self.reader.poll(max, batch)
    }

    fn describe(&self) -> String {
        self.reader.describe()
    }

    fn successors(&mut self) -> Result<Vec<Successor>, String> {
        if !self.reader.read_to_close() {
            return Ok(Vec::new());
        }
        let children = self
            .source
            .children_of(self.reader.partition())
            .map_err(|e| format!("{e:#}"))?;
        Ok(children
            .into_iter()
            .map(|c| Successor {
                partition: c.reader.partition(),
                reader: Box::new(c),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(partition: u32, parents: &[u32], closed: bool) -> ShardInfo {
        ShardInfo {
            id: format!("shardId-{partition:012}"),
            partition,
            parents: parents.to_vec(),
            starting_hash: 0,
            ending_hash: 0,
            starting_sequence: String::new(),
            ending_sequence: closed.then(|| "1".to_owned()),
            closed,
        }
    }

    /// 0 and 1 were merged into 3; 2 was split into 4 and 5; 4 and 3 were
    /// merged into 6 (4 is the first parent).
    fn family() -> Vec<ShardInfo> {
        vec![
            shard(0, &[], true),
            shard(1, &[], true),
            shard(2, &[], true),
            shard(3, &[0, 1], true),
            shard(4, &[2], true),
            shard(5, &[2], false),
            shard(6, &[4, 3], false),
        ]
    }

    #[test]
    fn owners_are_the_first_listed_parent() {
        let f = family();
        assert_eq!(owner(&f[3], &f), Some(0));
        assert_eq!(owner(&f[6], &f), Some(4));
        // The first parent trimmed away: the adjacent one owns the child.
        let trimmed: Vec<ShardInfo> = f.iter().filter(|s| s.partition != 4).cloned().collect();
        assert_eq!(owner(&f[6], &trimmed), Some(3));
        assert_eq!(owner(&f[0], &f), None);
    }

    #[test]
    fn a_fresh_start_opens_the_roots_and_children_are_handed_over() {
        let f = family();
        let none = BTreeSet::new();
        assert_eq!(initial_shards(&f, &none, false), (vec![0, 1, 2], vec![]));
        // LATEST: closed shards have nothing new; the open ones start now.
        assert_eq!(
            initial_shards(&f, &none, true),
            (vec![5, 6], vec![0, 1, 2, 3, 4])
        );
    }

    #[test]
    fn a_restart_opens_every_committed_shard_and_what_nobody_hands_over() {
        let f = family();
        // 0, 1, 2 finished; 3 and 4 read; 5 never started (handed over by
        // 2, which finishes again at once); 6 not yet.
        let committed: BTreeSet<u32> = [0, 1, 2, 3, 4].into();
        assert_eq!(
            initial_shards(&f, &committed, false),
            (vec![0, 1, 2, 3, 4], vec![])
        );
        // A LATEST run that started after 0..=4 closed, then committed 5
        // and 6: the closed ones stay unread.
        let committed: BTreeSet<u32> = [5, 6].into();
        assert_eq!(
            initial_shards(&f, &committed, true),
            (vec![5, 6], vec![0, 1, 2, 3, 4])
        );
        // Roots trimmed away: their oldest listed descendants are roots.
        let trimmed: Vec<ShardInfo> = f.iter().filter(|s| s.partition > 2).cloned().collect();
        assert_eq!(
            initial_shards(&trimmed, &BTreeSet::new(), false),
            (vec![3, 4, 5], vec![])
        );
    }
}
