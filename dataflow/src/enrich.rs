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
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::progress::frontier::AntichainRef;
use timely::progress::Antichain;

use crate::event::{Millis, RiskTier, Tick, Txn};

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

/// Joins `txns` (kept transactions at their ticks) with `versions`
/// (accepted reference rows `(merchant, version)` at the tick of their
/// `valid_from`): each transaction comes out at its own tick with the
/// version it matches, if any.
pub fn enrich<'s>(
    txns: StreamVec<'s, Tick, Txn>,
    versions: StreamVec<'s, Tick, (String, Version)>,
) -> StreamVec<'s, Tick, (Txn, Option<Version>)> {
    let updates = retract_superseded(versions.broadcast());
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
                    for t in ready {
                        let (cap, mut txns) = stash.remove(&t).expect("a stashed tick");
                        txns.sort_by(|a, b| a.merchant().cmp(b.merchant()));
                        cursor.rewind_keys(&storage);
                        let mut session = output.session(&cap);
                        for txn in txns {
                            let found = lookup(&mut cursor, &storage, &txn, t);
                            session.give((txn, found));
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
fn lookup<C>(cursor: &mut C, storage: &C::Storage, txn: &Txn, t: Tick) -> Option<Version>
where
    C: for<'a> Cursor<
        Key<'a> = &'a String,
        Val<'a> = &'a Version,
        TimeGat<'a> = &'a Tick,
        DiffGat<'a> = &'a isize,
    >,
{
    let merchant = txn.merchant().to_owned();
    cursor.seek_key(storage, &merchant);
    if cursor.get_key(storage) != Some(&merchant) {
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
    best.cloned()
}

/// Versions as differential updates: each one inserted at its tick, and
/// retracted once the frontier `F` has passed the tick of a greater version
/// of its merchant: a transaction at `F` or later has an event time at or
/// after that version's `valid_from`, so the retracted one can no longer
/// win. The newest version below the frontier and all later ones stay.
fn retract_superseded<'s>(
    versions: StreamVec<'s, Tick, (String, Version)>,
) -> StreamVec<'s, Tick, ((String, Version), Tick, isize)> {
    versions.unary_frontier(Pipeline, "RetractSuperseded", |cap, _info| {
        let mut hold: Option<Capability<Tick>> = Some(cap);
        // Per merchant: live versions and the tick each was inserted at.
        let mut live: BTreeMap<String, BTreeMap<Version, Tick>> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let t = *cap.least().expect("versions carry a time");
                let cap = cap.delayed(&t, 0);
                let mut session = output.session(&cap);
                for (merchant, v) in data.drain(..) {
                    live.entry(merchant.clone())
                        .or_default()
                        .insert(v.clone(), t);
                    session.give(((merchant, v), t, 1));
                }
            });
            let Some(f) = frontier.frontier().first().copied() else {
                hold = None;
                return;
            };
            if let Some(h) = hold.as_mut() {
                if *h.time() < f {
                    h.downgrade(&f);
                }
                let mut session = output.session(h);
                for (merchant, versions) in live.iter_mut() {
                    // The greatest version inserted before the frontier.
                    let Some(keep) = versions
                        .iter()
                        .filter(|(_, t)| **t < f)
                        .map(|(v, _)| v.clone())
                        .max()
                    else {
                        continue;
                    };
                    let gone: Vec<Version> = versions
                        .iter()
                        .filter(|(v, t)| **t < f && **v < keep)
                        .map(|(v, _)| v.clone())
                        .collect();
                    for v in gone {
                        versions.remove(&v);
                        session.give(((merchant.clone(), v), f, -1));
                    }
                }
            }
        }
    })
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

    /// Runs the join on two workers: worker 0 feeds the versions, worker 1
    /// the transactions, each at its tick (in tick order: an input cannot
    /// go back), while the other input may be anywhere.
    fn run(
        versions: Vec<(String, Version)>,
        txns: Vec<Txn>,
    ) -> Vec<(String, Tick, Option<Version>)> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        timely::execute(timely::Config::process(2), move |worker| {
            let index = worker.index();
            let sink = sink.clone();
            let mut versions_in = Handle::<Tick, (String, Version)>::new();
            let mut txns_in = Handle::<Tick, Txn>::new();
            worker.dataflow::<Tick, _, _>(|scope| {
                let versions = scope.input_from(&mut versions_in);
                let txns = scope.input_from(&mut txns_in);
                enrich(txns, versions).inspect_core(move |event| {
                    if let Ok((stamp, data)) = event {
                        let t = *stamp.least().expect("a time");
                        let mut sink = sink.lock().unwrap();
                        for (txn, v) in data {
                            sink.push((txn.transaction_id().to_owned(), t, v.clone()));
                        }
                    }
                });
            });
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
        let want: Vec<(String, Tick, Option<Version>)> = want
            .into_iter()
            .map(|(id, t, v)| (id.to_owned(), t, v))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn superseded_versions_are_retracted_once_the_frontier_passes_their_successor() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        timely::execute_directly(move |worker| {
            let mut input = Handle::<Tick, (String, Version)>::new();
            worker.dataflow::<Tick, _, _>(|scope| {
                retract_superseded(scope.input_from(&mut input)).inspect_core(move |event| {
                    if let Ok((_, data)) = event {
                        sink.lock().unwrap().extend(data.iter().cloned());
                    }
                });
            });
            let m = |s: &str| s.to_owned();
            for (merchant, v) in [
                (m("m1"), version(10_000, 0, 0, RiskTier::Low)),
                (m("m1"), version(10_500, 0, 1, RiskTier::Low)),
                (m("m2"), version(12_000, 0, 2, RiskTier::Low)),
                (m("m1"), version(20_000, 0, 3, RiskTier::Low)),
                (m("m1"), version(40_000, 0, 4, RiskTier::Low)),
            ] {
                input.advance_to(v.valid_from / TICK);
                input.send((merchant, v));
                worker.step();
            }
            // The input is at 40 s: the frontier has passed 20 s, not 40 s.
            for _ in 0..10 {
                worker.step();
            }
        });
        let updates = out.lock().unwrap().clone();
        let mut net: BTreeMap<(String, Millis), isize> = BTreeMap::new();
        for ((m, v), t, d) in &updates {
            if *d < 0 {
                // Only once the frontier has passed a greater version's tick.
                assert!(
                    updates
                        .iter()
                        .any(|((m2, w), t2, d2)| m2 == m && w > v && *d2 > 0 && *t2 < *t),
                    "{m} {v:?} retracted at {t}"
                );
            }
            *net.entry((m.clone(), v.valid_from)).or_default() += d;
        }
        let live: Vec<(String, Millis)> = net
            .into_iter()
            .filter(|(_, d)| *d > 0)
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            live,
            vec![
                ("m1".to_owned(), 20_000),
                ("m1".to_owned(), 40_000),
                ("m2".to_owned(), 12_000)
            ]
        );
    }
}
