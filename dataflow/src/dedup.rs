//! Deduplication by `transaction_id` (SPEC 4).
//!
//! Copies are decided in (event time, partition, offset) order once the
//! frontier has passed their tick. Ids are held as 128-bit hashes (16 bytes
//! instead of the id itself; a collision among even billions of live ids is
//! far less likely than a hardware error) with their anchor's event time.

use crate::event::{key_group, FastMap, Millis, Tick, Txn, KEY_GROUPS};
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

/// An id hash as two words: as a map key it packs with its anchor into 24
/// bytes (a `u128` would align the entry to 32).
type Id = (u64, u64);

#[inline]
fn id_of(h: u128) -> Id {
    (h as u64, (h >> 64) as u64)
}

pub struct Dedup {
    horizon_ms: i64,
    tick_ms: i64,
    anchors: FastMap<Id, Millis>,
    /// Ticks below this have been processed; anchors older than
    /// `tick_start(done) - horizon` can no longer match and are swept.
    done: Tick,
    swept_at: Millis,
}

/// A key group's anchors, as bincode encodes a `Vec<(u128, Millis)>` (a
/// length, then 16 + 8 bytes per id), written and read by hand: this is the
/// largest state of the job and serde goes value by value.
const ENTRY: usize = 24;

fn encode_group(entries: &[(u128, Millis)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + ENTRY * entries.len());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (h, a) in entries {
        out.extend_from_slice(&h.to_le_bytes());
        out.extend_from_slice(&a.to_le_bytes());
    }
    out
}

fn decode_group(bytes: &[u8]) -> impl Iterator<Item = (u128, Millis)> + '_ {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .expect("dedup state has a length");
    let body = &bytes[8..];
    assert_eq!(body.len(), n * ENTRY, "dedup state length");
    body.chunks_exact(ENTRY).map(|c| {
        (
            u128::from_le_bytes(c[..16].try_into().expect("16 bytes")),
            Millis::from_le_bytes(c[16..].try_into().expect("8 bytes")),
        )
    })
}

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
        let total: usize = groups.iter().map(|(_, b)| b.len() / ENTRY).sum();
        self.anchors.reserve(total);
        for (_, bytes) in groups {
            self.anchors
                .extend(decode_group(bytes).map(|(h, a)| (id_of(h), a)));
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
            let h = id_of(id_hash(txn.transaction_id()));
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
        let live = || self.anchors.iter().filter(|(_, &a)| a >= floor);
        let mut sizes = vec![0usize; KEY_GROUPS as usize];
        for (h, _) in live() {
            sizes[key_group(h.0) as usize] += 1;
        }
        let mut groups: Vec<Vec<(u128, Millis)>> =
            sizes.iter().map(|&n| Vec::with_capacity(n)).collect();
        for (&(lo, hi), &a) in live() {
            groups[key_group(lo) as usize].push(((hi as u128) << 64 | lo as u128, a));
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(g, mut v)| {
                // Sorted, so equal state makes equal bytes.
                v.sort_unstable();
                (g as u32, encode_group(&v))
            })
            .collect()
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
    fn group_bytes_are_bincodes() {
        let v = vec![(1u128 << 100 | 5, -3i64), (u128::MAX, i64::MAX)];
        let bytes = encode_group(&v);
        assert_eq!(bytes, bincode::serialize(&v).unwrap());
        assert_eq!(decode_group(&bytes).collect::<Vec<_>>(), v);
        let h = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        let (lo, hi) = id_of(h);
        assert_eq!((hi as u128) << 64 | lo as u128, h);
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
