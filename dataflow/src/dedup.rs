//! Deduplication by `transaction_id` (SPEC 4).
//!
//! Copies are decided in (event time, partition, offset) order once the
//! frontier has passed their tick. Ids are held as 128-bit hashes (16 bytes
//! instead of the id itself; a collision among even billions of live ids is
//! far less likely than a hardware error) with their anchor's event time.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::{key_group, Millis, Tick, Txn};
use crate::stateful::{Emit, Logic};
use crate::time::tick_start;

/// Hash of a transaction id: the low 64 bits route it, all 128 identify it.
#[inline]
pub fn id_hash(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// The exchange route of a transaction, by its id.
#[inline]
pub fn route_txn(t: &Txn) -> u64 {
    crate::event::route(id_hash(t.transaction_id()) as u64)
}

pub struct Dedup {
    horizon_ms: i64,
    tick_ms: i64,
    anchors: HashMap<u128, Millis>,
    /// Ticks below this have been processed; anchors older than
    /// `tick_start(done) - horizon` can no longer match and are swept.
    done: Tick,
    swept_at: Millis,
}

#[derive(Serialize, Deserialize)]
struct Group(Vec<(u128, Millis)>);

impl Dedup {
    pub fn new(horizon_ms: i64, tick_ms: i64) -> Self {
        Dedup {
            horizon_ms,
            tick_ms,
            anchors: HashMap::new(),
            done: Tick::MIN,
            swept_at: Millis::MIN,
        }
    }

    pub fn restore(&mut self, groups: &[(u32, Vec<u8>)]) {
        for (_, bytes) in groups {
            let Group(entries) = bincode::deserialize(bytes).expect("dedup state decodes");
            self.anchors.extend(entries);
        }
    }

    pub fn live_ids(&self) -> usize {
        self.anchors.len()
    }

    /// The earliest event time a future copy can have.
    fn horizon_floor(&self) -> Millis {
        tick_start(self.done, self.tick_ms).saturating_sub(self.horizon_ms)
    }
}

impl Logic for Dedup {
    type In = Txn;
    type Out = Txn;

    fn name(&self) -> String {
        "dedup".into()
    }

    fn on_tick(&mut self, t: Tick, batch: &mut Vec<Txn>, out: &mut Emit<Txn>) {
        batch.sort_unstable_by(|a, b| {
            (a.event_time, a.partition, a.offset).cmp(&(b.event_time, b.partition, b.offset))
        });
        let mut dups = 0u64;
        for txn in batch.drain(..) {
            let h = id_hash(txn.transaction_id());
            match self.anchors.get_mut(&h) {
                Some(anchor) if txn.event_time - *anchor <= self.horizon_ms => dups += 1,
                Some(anchor) => {
                    *anchor = txn.event_time;
                    out.rows.push((t, txn));
                }
                None => {
                    self.anchors.insert(h, txn.event_time);
                    out.rows.push((t, txn));
                }
            }
        }
        if dups > 0 {
            out.duplicates.push((t, dups));
        }
        self.done = t + 1;
    }

    fn flush(&mut self, limit: Option<Tick>, _out: &mut Emit<Txn>) {
        if let Some(l) = limit {
            self.done = self.done.max(l.saturating_sub(1));
        }
        // Sweep in strides of a quarter horizon so the cost stays amortised.
        let floor = self.horizon_floor();
        if floor.saturating_sub(self.swept_at) >= self.horizon_ms / 4 {
            self.anchors.retain(|_, a| *a >= floor);
            self.swept_at = floor;
        }
    }

    fn pending(&self) -> Option<Tick> {
        None
    }

    fn snapshot(&self) -> Vec<(u32, Vec<u8>)> {
        let floor = self.horizon_floor();
        let mut groups: HashMap<u32, Vec<(u128, Millis)>> = HashMap::new();
        for (&h, &a) in &self.anchors {
            if a >= floor {
                groups.entry(key_group(h as u64)).or_default().push((h, a));
            }
        }
        let mut out: Vec<(u32, Vec<u8>)> = groups
            .into_iter()
            .map(|(g, mut v)| {
                v.sort_unstable();
                (g, bincode::serialize(&Group(v)).expect("encode"))
            })
            .collect();
        out.sort_unstable_by_key(|g| g.0);
        out
    }
}
