//! Which shards of the process are read to their end, so their children
//! may start (see the module docs of [`crate::kinesis`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Result};

use super::api::{IteratorStart, SdkShardApi, ShardApi};
use super::client::{ApiError, KinesisClient};
use super::shards::discover_shards;
use super::{MIN_CALL_INTERVAL, READ_CALL_TIMEOUT};

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
