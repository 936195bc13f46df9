//! What an epoch commits: the resume position of each source partition,
//! and the epoch a bounded input's end commits at.
//!
//! A committed epoch `E` means every record whose time (its tick) is below
//! `E` is in the committed outputs and nothing at or above is. Sources
//! report positions as they read: "every record before `offset` has a tick
//! at or below `max_tick`". The epoch's position for a partition is the
//! furthest report whose `max_tick` is below `E`'s tick: resuming there
//! re-reads nothing committed and skips nothing that is not.

use std::collections::BTreeMap;

/// One position report of a source partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    pub partition: u32,
    /// The next offset to read.
    pub offset: u64,
    /// The partition's largest accepted event time before `offset`.
    pub max_ts: Option<i64>,
    /// Every record before `offset` has a tick at or below this.
    pub max_tick: i64,
    /// The connector's resume token at `offset`.
    pub token: Option<String>,
}

/// The reports not yet settled, per partition in offset order.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: BTreeMap<u32, Vec<Reported>>,
}

impl Ledger {
    /// Takes a report (a repeated offset is kept once).
    pub fn record(&mut self, e: Reported) {
        let v = self.entries.entry(e.partition).or_default();
        let at = v.partition_point(|x| x.offset < e.offset);
        if v.get(at).is_none_or(|x| x.offset != e.offset) {
            v.insert(at, e);
        }
    }

    /// For each partition with one, the furthest report all of whose
    /// records are below tick `limit` (`max_tick < limit`). Older reports
    /// are forgotten; the one returned is kept, since the next epoch may
    /// find nothing further.
    pub fn settle(&mut self, limit: i64) -> Vec<Reported> {
        let mut out = Vec::new();
        for v in self.entries.values_mut() {
            let valid = v.partition_point(|e| e.max_tick < limit);
            if valid > 0 {
                out.push(v[valid - 1].clone());
                v.drain(..valid - 1);
            }
        }
        out
    }

    /// The largest tick any unsettled report covers.
    pub fn max_tick(&self) -> Option<i64> {
        self.entries.values().flatten().map(|e| e.max_tick).max()
    }
}

/// The epoch a bounded input's end commits at: the first multiple of
/// `interval_ms` above every row and position (`max_tick`, in ticks of
/// `tick_ms`) and above the last committed epoch.
pub fn final_epoch(
    max_tick: Option<i64>,
    tick_ms: i64,
    interval_ms: i64,
    last: Option<i64>,
) -> i64 {
    let above = (max_tick
        .unwrap_or(i64::MIN)
        .saturating_add(1)
        .saturating_mul(tick_ms))
    .max(last.map_or(i64::MIN, |l| l + 1));
    let t = above - 1;
    t - t.rem_euclid(interval_ms) + interval_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(partition: u32, offset: u64, max_tick: i64) -> Reported {
        Reported {
            partition,
            offset,
            max_ts: Some(max_tick * 1000),
            max_tick,
            token: None,
        }
    }

    #[test]
    fn an_epoch_takes_the_furthest_position_wholly_below_it() {
        let mut l = Ledger::default();
        for e in [
            rep(0, 20, 9),
            rep(0, 10, 5),
            rep(0, 30, 15),
            rep(0, 20, 9),
            rep(1, 7, 12),
        ] {
            l.record(e);
        }
        let offsets = |v: Vec<Reported>| -> Vec<(u32, u64)> {
            v.into_iter().map(|e| (e.partition, e.offset)).collect()
        };
        // (limit, settled): max_tick == limit is not below it; a partition
        // with nothing below keeps no entry; a settled report stays
        // available to the next epoch; nothing goes backwards.
        let rows: &[(i64, &[(u32, u64)])] = &[
            (5, &[]),
            (6, &[(0, 10)]),
            (10, &[(0, 20)]),
            (10, &[(0, 20)]),
            (13, &[(0, 20), (1, 7)]),
            (16, &[(0, 30), (1, 7)]),
        ];
        for (limit, want) in rows {
            assert_eq!(offsets(l.settle(*limit)), want.to_vec(), "limit {limit}");
        }
        assert_eq!(l.max_tick(), Some(15));
    }

    #[test]
    fn the_final_epoch_is_the_first_boundary_above_everything() {
        // (max_tick, last, epoch) with 1 s ticks and 10 s epochs: a tick
        // inside an interval, one ending exactly on a boundary, a last
        // epoch above the data, negative times, nothing at all.
        let rows = [
            (Some(12), None, 20_000),
            (Some(19), None, 20_000),
            (Some(20), None, 30_000),
            (Some(12), Some(20_000), 30_000),
            (Some(-3), None, 0),
            (None, Some(40_000), 50_000),
        ];
        for (max_tick, last, want) in rows {
            assert_eq!(
                final_epoch(max_tick, 1000, 10_000, last),
                want,
                "{max_tick:?} {last:?}"
            );
        }
    }
}
