//! Deduplication by `transaction_id` (SPEC 4).
//!
//! Copies are decided in (event time, partition, offset) order once the
//! frontier has passed their tick. Ids are held as 128-bit hashes (16 bytes
//! instead of the id itself; a collision among even billions of live ids is
//! far less likely than a hardware error) with their anchor's event time.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::{key_group, FastMap, Millis, Tick, Txn};
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
    anchors: FastMap<u128, Millis>,
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
            anchors: FastMap::default(),
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
    fn keys(&self) -> u64 {
        self.anchors.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Currency, Status, TxnText};

    fn txn(id: &str, t: Millis, partition: u32, offset: u64) -> Txn {
        let text = TxnText {
            transaction_id: id,
            customer_id: "c",
            ..Default::default()
        };
        Txn::new(
            t,
            100,
            Currency::Usd,
            Status::Completed,
            text,
            partition,
            offset,
        )
    }

    /// Feeds each tick's records and returns the kept (partition, offset) and duplicate count.
    fn run(horizon: i64, ticks: Vec<Vec<Txn>>) -> (Vec<(u32, u64)>, u64) {
        let mut d = Dedup::new(horizon, 1000);
        let mut out = Emit::default();
        for mut batch in ticks {
            let t = batch[0].event_time / 1000;
            d.on_tick(t, &mut batch, &mut out);
            d.flush(Some(t + 1), &mut out);
        }
        let kept = out
            .rows
            .iter()
            .map(|(_, t)| (t.partition, t.offset))
            .collect();
        (kept, out.duplicates.iter().map(|d| d.1).sum())
    }

    #[test]
    fn first_copy_wins_by_time_then_partition_then_offset() {
        // Same event time: the lower partition wins, whatever the arrival order.
        let (kept, dups) = run(
            600_000,
            vec![vec![txn("a", 5_000, 1, 0), txn("a", 5_000, 0, 9)]],
        );
        assert_eq!((kept, dups), (vec![(0, 9)], 1));
        // Same partition and time: the lower offset wins.
        let (kept, _) = run(
            600_000,
            vec![vec![txn("b", 5_000, 2, 7), txn("b", 5_000, 2, 3)]],
        );
        assert_eq!(kept, vec![(2, 3)]);
        // An earlier event time wins over a lower partition.
        let (kept, _) = run(
            600_000,
            vec![vec![txn("c", 5_100, 0, 0), txn("c", 5_050, 3, 0)]],
        );
        assert_eq!(kept, vec![(3, 0)]);
    }

    #[test]
    fn horizon_is_inclusive_and_measured_from_the_anchor() {
        let h = 600_000;
        let (kept, dups) = run(
            h,
            vec![
                vec![txn("x", 0, 0, 0)],
                vec![txn("x", 360_000, 0, 1)], // duplicate, does not move the anchor
                vec![txn("x", h, 0, 2)],       // exactly the horizon: duplicate
                vec![txn("x", h + 1, 0, 3)],   // beyond: kept, new anchor
                vec![txn("x", 2 * h + 1, 0, 4)], // horizon from the new anchor: duplicate
                vec![txn("y", 2 * h + 1, 1, 0)], // other ids are independent
            ],
        );
        assert_eq!(kept, vec![(0, 0), (0, 3), (1, 0)]);
        assert_eq!(dups, 3);
    }

    #[test]
    fn snapshot_restores_live_anchors() {
        let mut d = Dedup::new(600_000, 1000);
        let mut out = Emit::default();
        d.on_tick(0, &mut vec![txn("x", 0, 0, 0)], &mut out);
        d.flush(Some(1), &mut out);
        let mut r = Dedup::new(600_000, 1000);
        r.restore(&d.snapshot());
        let mut out = Emit::default();
        r.on_tick(300, &mut vec![txn("x", 300_000, 1, 0)], &mut out);
        assert!(out.rows.is_empty());
        assert_eq!(out.duplicates, vec![(300, 1)]);
    }
}
