//! The as-of join of SPEC 9: each kept transaction takes the version of its
//! merchant's reference row with the greatest `valid_from` at or before its
//! event time (ties: the later row in (partition, offset) order), decided
//! when the frontier passes the transaction's tick.
//!
//! The reference table is small and a few merchants take most of the
//! traffic, so transactions are never exchanged by merchant: every version
//! is broadcast, and each worker holds the whole table as a differential
//! arrangement (arranged in place, with a pipeline pact), which its own
//! transactions look up where they are. Versions that can no longer match
//! are retracted as the frontier passes their successors, so the
//! arrangement holds, per merchant, the newest version at or before the
//! frontier plus the newer ones.

use std::collections::BTreeMap;

use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use differential_dataflow::trace::TraceReader;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::progress::frontier::AntichainRef;
use timely::progress::Antichain;

use crate::event::{key_group, key_hash, route, FastMap, Millis, RiskTier, Tick, Txn};
use crate::stateful::{stateful, Emit, Logic, Marker, Report};

/// One version of a merchant's reference row, ordered as SPEC 9 breaks
/// ties: by `valid_from`, then partition, then offset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub valid_from: Millis,
    pub partition: u32,
    pub offset: u64,
    pub merchant_category: String,
    pub risk_tier: RiskTier,
    pub country: String,
}

type Spine = ValSpine<String, Version, Tick, isize>;
type Batcher = ValBatcher<String, Version, Tick, isize>;

/// Joins `txns` (kept transactions at their ticks) with the merchants
/// table's `updates` ([`table`]): each transaction comes out at its own
/// tick, enriched from the version it matches, if any.
pub fn enrich<'s>(
    txns: StreamVec<'s, Tick, Txn>,
    updates: StreamVec<'s, Tick, Update>,
) -> StreamVec<'s, Tick, Txn> {
    let updates = updates.broadcast();
    let arranged =
        arrange_core::<_, _, Batcher, Spine>(updates, Pipeline, "Merchants", Batcher::new);
    let mut trace = arranged.trace.clone();
    txns.binary_frontier(
        arranged.stream,
        Pipeline,
        Pipeline,
        "EnrichAsOf",
        move |_cap, _info| {
            let mut stash: BTreeMap<Tick, (Capability<Tick>, Vec<Txn>)> = BTreeMap::new();
            move |(txn_in, txn_frontier), (table_in, table_frontier), output| {
                txn_in.for_each(|cap, data| {
                    let t = *cap.least().expect("transactions carry a time");
                    stash
                        .entry(t)
                        .or_insert_with(|| (cap.delayed(&t, 0), Vec::new()))
                        .1
                        .append(data);
                });
                // The batches are in the shared trace too.
                table_in.for_each(|_, _| {});

                // Ticks neither input can still send: the table is complete
                // for them, and so are their transactions.
                let ready: Vec<Tick> = stash
                    .keys()
                    .copied()
                    .take_while(|t| !txn_frontier.less_equal(t) && !table_frontier.less_equal(t))
                    .collect();
                if !ready.is_empty() {
                    let batches = trace
                        .batches_through(AntichainRef::new(&[]))
                        .expect("the merchants trace is readable");
                    let (mut cursor, storage) = cursor_list(batches);
                    // Reused for every lookup: keys are `String`s.
                    let mut key = String::new();
                    for t in ready {
                        let (cap, mut txns) = stash.remove(&t).expect("a stashed tick");
                        // In key order, so the cursor only moves forward.
                        txns.sort_by(|a, b| a.merchant().cmp(b.merchant()));
                        cursor.rewind_keys(&storage);
                        let mut session = output.session(&cap);
                        for mut txn in txns {
                            key.clear();
                            key.push_str(txn.merchant());
                            if let Some(v) = lookup(&mut cursor, &storage, &key, &txn, t) {
                                txn.enrich(&v.merchant_category, v.risk_tier, &v.country);
                            }
                            session.give(txn);
                        }
                    }
                }

                // Nothing before both frontiers will be asked again.
                let mut lower = Antichain::new();
                for t in txn_frontier
                    .frontier()
                    .iter()
                    .chain(table_frontier.frontier().iter())
                {
                    lower.insert(*t);
                }
                if let Some(first) = stash.keys().next() {
                    lower.insert(*first);
                }
                trace.set_logical_compaction(lower.borrow());
                trace.set_physical_compaction(lower.borrow());
            }
        },
    )
}

/// The version `txn` matches: among its merchant's versions present at
/// tick `t`, the greatest with `valid_from` at or before its event time.
fn lookup<'s, C>(
    cursor: &mut C,
    storage: &'s C::Storage,
    merchant: &String,
    txn: &Txn,
    t: Tick,
) -> Option<&'s Version>
where
    C: for<'a> Cursor<
        Key<'a> = &'a String,
        Val<'a> = &'a Version,
        TimeGat<'a> = &'a Tick,
        DiffGat<'a> = &'a isize,
    >,
{
    cursor.seek_key(storage, merchant);
    if cursor.get_key(storage) != Some(merchant) {
        return None;
    }
    let mut best: Option<&Version> = None;
    cursor.rewind_vals(storage);
    while let Some(v) = cursor.get_val(storage) {
        if v.valid_from <= txn.event_time && best.is_none_or(|b| v > b) {
            let mut count = 0isize;
            cursor.map_times(storage, |time, diff| {
                if *time <= t {
                    count += *diff;
                }
            });
            if count > 0 {
                best = Some(v);
            }
        }
        cursor.step_val(storage);
    }
    best
}

/// Per merchant, the versions that can still match, as differential
/// updates: each version is inserted at its tick `t`, and once tick `t` is
/// complete every older version of its merchant, and every other version
/// inserted at `t` but the greatest, is retracted at `t + 1`: a transaction
/// at `t + 1` or later has an event time past all of them, so only the
/// greatest can win. Runs in the [`stateful`] frame, keyed by merchant, so
/// the table is snapshotted with each epoch by key group.
pub struct Table {
    /// Per merchant: the greatest version of the ticks processed so far.
    current: FastMap<String, Version>,
    /// Restored versions not yet sent on, and the tick they go out at.
    restored: Option<(Tick, Vec<(String, Version)>)>,
}

/// A merchant's key group.
fn group_of(merchant: &str) -> u32 {
    key_group(key_hash(merchant.as_bytes()))
}

/// Routes a version to the worker that owns its merchant.
pub fn route_version(v: &(String, Version)) -> u64 {
    route(key_hash(v.0.as_bytes()))
}

impl Table {
    pub fn new() -> Self {
        Table {
            current: FastMap::default(),
            restored: None,
        }
    }

    /// Takes the versions of `groups` committed at `boundary`; they are sent
    /// on at `boundary`, before any transaction that can look them up.
    pub fn restore(&mut self, boundary: Tick, groups: &[(u32, Vec<u8>)]) {
        let mut rows = Vec::new();
        for (_, bytes) in groups {
            let group: Vec<(String, Version)> =
                bincode::deserialize(bytes).expect("merchants state decodes");
            rows.extend(group);
        }
        self.current.extend(rows.iter().cloned());
        self.restored = Some((boundary, rows));
    }

    pub fn merchants(&self) -> usize {
        self.current.len()
    }
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

pub type Update = ((String, Version), Tick, isize);

impl Logic for Table {
    type In = (String, Version);
    type Out = Update;

    fn name(&self) -> String {
        "merchants".into()
    }

    fn on_tick(&mut self, t: Tick, batch: &mut Vec<(String, Version)>, out: &mut Emit<Update>) {
        // Greatest last per merchant: versions of a later tick are greater.
        batch.sort_unstable();
        let mut i = 0;
        while i < batch.len() {
            let mut j = i;
            while j < batch.len() && batch[j].0 == batch[i].0 {
                j += 1;
            }
            let merchant = &batch[i].0;
            if let Some(old) = self.current.get(merchant) {
                out.rows
                    .push((t + 1, ((merchant.clone(), old.clone()), t + 1, -1)));
            }
            for (k, (m, v)) in batch[i..j].iter().enumerate() {
                out.rows.push((t, ((m.clone(), v.clone()), t, 1)));
                if i + k + 1 < j {
                    out.rows.push((t + 1, ((m.clone(), v.clone()), t + 1, -1)));
                }
            }
            let (m, v) = batch[j - 1].clone();
            self.current.insert(m, v);
            i = j;
        }
        batch.clear();
    }

    fn flush(&mut self, limit: Option<Tick>, out: &mut Emit<Update>) {
        if let Some((b, _)) = &self.restored {
            if limit.is_none_or(|l| *b < l) {
                let (b, rows) = self.restored.take().expect("restored rows");
                out.rows.extend(rows.into_iter().map(|mv| (b, (mv, b, 1))));
            }
        }
    }

    fn pending(&self) -> Option<Tick> {
        self.restored.as_ref().map(|(b, _)| *b)
    }

    fn snapshot(&self) -> Vec<(u32, Vec<u8>)> {
        let mut groups: BTreeMap<u32, Vec<(&String, &Version)>> = BTreeMap::new();
        for (m, v) in &self.current {
            groups.entry(group_of(m)).or_default().push((m, v));
        }
        groups
            .into_iter()
            .map(|(g, mut rows)| {
                rows.sort_unstable();
                (g, bincode::serialize(&rows).expect("encode"))
            })
            .collect()
    }
    fn keys(&self) -> u64 {
        self.current.len() as u64
    }
}

/// The merchants table kept by [`Table`] over `versions` (accepted
/// reference rows at their ticks): its updates, and its state reports.
pub fn table<'s>(
    versions: StreamVec<'s, Tick, (String, Version)>,
    markers: StreamVec<'s, Tick, Marker>,
    logic: Table,
) -> (StreamVec<'s, Tick, Update>, StreamVec<'s, Tick, Report>) {
    stateful(versions, Exchange::new(route_version), markers, logic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Currency, Status, TxnText};
    use std::sync::{Arc, Mutex};
    use timely::dataflow::operators::core::Inspect;
    use timely::dataflow::operators::vec::input::Handle;
    use timely::dataflow::operators::vec::Input;

    fn version(valid_from: Millis, partition: u32, offset: u64, tier: RiskTier) -> Version {
        Version {
            valid_from,
            partition,
            offset,
            merchant_category: format!("cat-{valid_from}"),
            risk_tier: tier,
            country: format!("c{partition}{offset}"),
        }
    }

    fn txn(id: &str, merchant: &str, at: Millis) -> Txn {
        Txn::new(
            at,
            100,
            Currency::Usd,
            Status::Completed,
            TxnText {
                transaction_id: id,
                customer_id: "c",
                merchant,
                category: "k",
                timestamp: "",
                metadata: "",
            },
            0,
            0,
        )
    }

    const TICK: Millis = 1000;

    /// What a transaction was enriched with: the version's category,
    /// which the tests make unique per version.
    type Got = (String, Tick, Option<String>);

    /// Runs table and join on two workers: worker 0 feeds the versions,
    /// worker 1 the transactions, each at its tick (in tick order: an input
    /// cannot go back), while the other input may be anywhere.
    fn run(versions: Vec<(String, Version)>, txns: Vec<Txn>) -> Vec<Got> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        timely::execute(timely::Config::process(2), move |worker| {
            let index = worker.index();
            let sink = sink.clone();
            let mut versions_in = Handle::<Tick, (String, Version)>::new();
            let mut txns_in = Handle::<Tick, Txn>::new();
            let mut markers_in = Handle::<Tick, Marker>::new();
            worker.dataflow::<Tick, _, _>(|scope| {
                let versions = scope.input_from(&mut versions_in);
                let txns = scope.input_from(&mut txns_in);
                let markers = scope.input_from(&mut markers_in);
                let (updates, _) = table(versions, markers, Table::new());
                enrich(txns, updates).inspect_core(move |event| {
                    if let Ok((stamp, data)) = event {
                        let t = *stamp.least().expect("a time");
                        let mut sink = sink.lock().unwrap();
                        for txn in data {
                            sink.push((
                                txn.transaction_id().to_owned(),
                                t,
                                txn.merchant_category().map(str::to_owned),
                            ));
                        }
                    }
                });
            });
            markers_in.close();
            if index == 0 {
                let mut vs = versions.clone();
                vs.sort_by_key(|(_, v)| v.valid_from / TICK);
                for (m, v) in vs {
                    versions_in.advance_to(v.valid_from / TICK);
                    versions_in.send((m, v));
                    worker.step();
                }
            } else {
                let mut ts = txns.clone();
                ts.sort_by_key(|x| x.event_time / TICK);
                for x in ts {
                    txns_in.advance_to(x.event_time / TICK);
                    txns_in.send(x);
                    worker.step();
                }
            }
            versions_in.close();
            txns_in.close();
            while worker.step() {}
        })
        .unwrap();
        let mut v = out.lock().unwrap().clone();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn transactions_take_the_newest_version_at_their_event_time() {
        let m = |s: &str| s.to_owned();
        let a = version(10_000, 0, 0, RiskTier::Low);
        let b = version(10_500, 0, 1, RiskTier::Medium); // same tick as a
        let c = version(20_000, 1, 0, RiskTier::High);
        let d = version(20_000, 0, 5, RiskTier::Low); // ties with c: c is later in partition order
        let e = version(15_000, 2, 0, RiskTier::Medium);
        let late_arrival = version(31_000, 0, 9, RiskTier::High);
        let versions = vec![
            (m("m1"), a.clone()),
            (m("m1"), b.clone()),
            (m("m2"), e.clone()),
            (m("m1"), d.clone()),
            (m("m1"), c.clone()),
            (m("m1"), late_arrival.clone()),
        ];
        let txns = vec![
            txn("t1", "m1", 9_999),
            txn("t2", "m1", 10_200),
            txn("t3", "m1", 10_500),
            txn("t4", "m2", 14_999),
            txn("t5", "m1", 19_999),
            txn("t6", "m1", 20_000),
            txn("t7", "m2", 15_000),
            txn("t8", "m3", 30_000),
            txn("t9", "m1", 35_000),
            txn("t10", "m1", 50_000),
        ];
        let got = run(versions, txns);
        let want = vec![
            ("t1", 9, None),
            ("t10", 50, Some(late_arrival.clone())),
            ("t2", 10, Some(a.clone())),
            ("t3", 10, Some(b.clone())),
            ("t4", 14, None),
            ("t5", 19, Some(b.clone())),
            ("t6", 20, Some(c.clone())),
            ("t7", 15, Some(e.clone())),
            ("t8", 30, None),
            ("t9", 35, Some(late_arrival.clone())),
        ];
        let want: Vec<Got> = want
            .into_iter()
            .map(|(id, t, v)| (id.to_owned(), t, v.map(|v| v.merchant_category)))
            .collect();
        assert_eq!(got, want);
    }

    /// The table's updates summed per (merchant, valid_from) at or
    /// before `at`: what a lookup at tick `at` sees.
    fn live_at(updates: &[(Tick, Update)], at: Tick) -> Vec<(String, Millis)> {
        let mut net: BTreeMap<(String, Millis), isize> = BTreeMap::new();
        for (emitted, ((m, v), t, d)) in updates {
            assert_eq!(emitted, t, "an update goes out at its own time");
            if *t <= at {
                *net.entry((m.clone(), v.valid_from)).or_default() += d;
            }
        }
        assert!(net.values().all(|d| *d == 0 || *d == 1), "{net:?}");
        net.into_iter()
            .filter(|(_, d)| *d > 0)
            .map(|(k, _)| k)
            .collect()
    }

    #[test]
    fn the_table_keeps_what_can_still_match_and_restores_it() {
        let m = |s: &str| s.to_owned();
        let mut table = Table::new();
        let mut out = Emit::default();
        let feed =
            |table: &mut Table, out: &mut Emit<Update>, t: Tick, vs: Vec<(String, Version)>| {
                let mut batch = vs;
                table.on_tick(t, &mut batch, out);
            };
        feed(
            &mut table,
            &mut out,
            10,
            vec![
                (m("m1"), version(10_500, 0, 1, RiskTier::Low)),
                (m("m1"), version(10_000, 0, 0, RiskTier::Low)),
                (m("m2"), version(10_200, 0, 2, RiskTier::Low)),
            ],
        );
        feed(
            &mut table,
            &mut out,
            20,
            vec![(m("m1"), version(20_000, 0, 3, RiskTier::High))],
        );
        // At tick 10 both versions of m1 may match (by event time within
        // the tick); from tick 11 only the greater; from 21 only the newest.
        assert_eq!(
            live_at(&out.rows, 10),
            vec![(m("m1"), 10_000), (m("m1"), 10_500), (m("m2"), 10_200)]
        );
        assert_eq!(
            live_at(&out.rows, 11),
            vec![(m("m1"), 10_500), (m("m2"), 10_200)]
        );
        assert_eq!(
            live_at(&out.rows, 20),
            vec![(m("m1"), 10_500), (m("m1"), 20_000), (m("m2"), 10_200)]
        );
        assert_eq!(
            live_at(&out.rows, 21),
            vec![(m("m1"), 20_000), (m("m2"), 10_200)]
        );

        // A restore at boundary 25 holds the newest version per merchant,
        // sent on at 25 once the frame flushes past it, and supersedes them
        // like any other.
        let mut restored = Table::new();
        restored.restore(25, &table.snapshot());
        assert_eq!(restored.pending(), Some(25));
        let mut out = Emit::default();
        restored.flush(Some(25), &mut out);
        assert!(out.rows.is_empty(), "sent before its tick may be flushed");
        restored.flush(Some(26), &mut out);
        assert_eq!(restored.pending(), None);
        feed(
            &mut restored,
            &mut out,
            30,
            vec![(m("m2"), version(30_000, 1, 0, RiskTier::Medium))],
        );
        assert_eq!(
            live_at(&out.rows, 25),
            vec![(m("m1"), 20_000), (m("m2"), 10_200)]
        );
        assert_eq!(
            live_at(&out.rows, 31),
            vec![(m("m1"), 20_000), (m("m2"), 30_000)]
        );
        assert_eq!(restored.merchants(), 2);
    }
}
