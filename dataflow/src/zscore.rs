//! Anomaly z-scores (SPEC 7), per transaction and per window.
//!
//! Statistics are exact integer sums (docs/outputs.md "Numbers"), so the
//! score does not depend on evaluation order and `stddev > 0` is exact.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::event::{
    key_group, key_hash, Anomaly, AnomalyKind, FastMap, Metric, Millis, Tick, Txn, WindowRow,
};
use crate::params::{TxnZParams, WindowZParams};
use crate::stateful::{Emit, Logic};

/// Exact running sums of integer values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sums {
    pub n: u64,
    pub s: i128,
    pub q: i128,
}

/// A score against the history in `Sums`: (mean, stddev, z) in value units.
impl Sums {
    pub fn add(&mut self, x: i64) {
        self.n += 1;
        self.s += x as i128;
        self.q += (x as i128) * (x as i128);
    }
    pub fn remove(&mut self, x: i64) {
        self.n -= 1;
        self.s -= x as i128;
        self.q -= (x as i128) * (x as i128);
    }
    /// `None` when stddev is zero or there is no history.
    pub fn score(&self, x: i64) -> Option<(f64, f64, f64)> {
        if self.n == 0 {
            return None;
        }
        let n = self.n as i128;
        let var_num = n * self.q - self.s * self.s;
        if var_num <= 0 {
            return None;
        }
        let root = (var_num as f64).sqrt();
        let z = (n * x as i128 - self.s) as f64 / root;
        let mean = self.s as f64 / self.n as f64;
        let stddev = root / self.n as f64;
        Some((mean, stddev, z))
    }
}

/// What the per-transaction detector needs of a kept transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZIn {
    pub time: Millis,
    pub cents: i64,
    /// The customer id then the transaction id, in one allocation.
    text: String,
    split: u32,
}

impl ZIn {
    pub fn of(t: &Txn) -> Self {
        Self::new(
            t.event_time,
            t.amount_cents,
            t.customer_id(),
            t.transaction_id(),
        )
    }
    pub fn new(time: Millis, cents: i64, customer: &str, transaction_id: &str) -> Self {
        let mut text = String::with_capacity(customer.len() + transaction_id.len());
        text.push_str(customer);
        text.push_str(transaction_id);
        ZIn {
            time,
            cents,
            text,
            split: customer.len() as u32,
        }
    }
    pub fn customer(&self) -> &str {
        &self.text[..self.split as usize]
    }
    pub fn transaction_id(&self) -> &str {
        &self.text[self.split as usize..]
    }
}

pub struct TxnZ {
    p: TxnZParams,
    stats: FastMap<String, Sums>,
}

impl TxnZ {
    pub fn new(p: TxnZParams) -> Self {
        TxnZ {
            p,
            stats: FastMap::default(),
        }
    }
    pub fn restore(&mut self, groups: &[(u32, Vec<u8>)]) {
        for (_, bytes) in groups {
            let v: Vec<(String, Sums)> = bincode::deserialize(bytes).expect("z state decodes");
            self.stats.extend(v);
        }
    }
}

impl Logic for TxnZ {
    type In = ZIn;
    type Out = Anomaly;

    fn name(&self) -> String {
        "txn_z".into()
    }

    fn on_tick(&mut self, t: Tick, batch: &mut Vec<ZIn>, out: &mut Emit<Anomaly>) {
        batch.sort_unstable_by(|a, b| {
            (a.time, a.transaction_id().as_bytes()).cmp(&(b.time, b.transaction_id().as_bytes()))
        });
        for r in batch.drain(..) {
            if !self.stats.contains_key(r.customer()) {
                self.stats.insert(r.customer().to_owned(), Sums::default());
            }
            let sums = self.stats.get_mut(r.customer()).expect("inserted above");
            if sums.n >= self.p.min_history {
                if let Some((mean, stddev, z)) = sums.score(r.cents) {
                    if z.abs() >= self.p.z_threshold {
                        out.rows.push((
                            t,
                            Anomaly {
                                kind: AnomalyKind::Transaction,
                                key: r.customer().to_owned(),
                                metric: Metric::Amount,
                                value: r.cents as f64 / 100.0,
                                mean: mean / 100.0,
                                stddev: stddev / 100.0,
                                z,
                                event_time: r.time,
                                history_count: sums.n,
                                transaction_id: Some(r.transaction_id().to_owned()),
                                window: None,
                            },
                        ));
                    }
                }
            }
            sums.add(r.cents);
        }
    }

    fn flush(&mut self, _limit: Option<Tick>, _out: &mut Emit<Anomaly>) {}

    fn pending(&self) -> Option<Tick> {
        None
    }

    fn snapshot(&self) -> Vec<(u32, Vec<u8>)> {
        by_group(self.stats.iter().map(|(k, v)| (k.clone(), *v)))
    }
    fn keys(&self) -> u64 {
        self.stats.len() as u64
    }
}

fn by_group<V: Serialize>(items: impl Iterator<Item = (String, V)>) -> Vec<(u32, Vec<u8>)> {
    let mut groups: BTreeMap<u32, Vec<(String, V)>> = BTreeMap::new();
    for (k, v) in items {
        groups
            .entry(key_group(key_hash(k.as_bytes())))
            .or_default()
            .push((k, v));
    }
    groups
        .into_iter()
        .map(|(g, mut v)| {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            (g, bincode::serialize(&v).expect("encode"))
        })
        .collect()
}

/// History of one (key, metric) for the window detector.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Ring {
    values: VecDeque<i64>,
    sums: Sums,
    /// Alerts are suppressed for windows ending before this.
    quiet_until: Option<Millis>,
}

pub struct WindowZ {
    p: WindowZParams,
    rings: FastMap<String, Vec<Ring>>,
}

impl WindowZ {
    pub fn new(p: WindowZParams) -> Self {
        WindowZ {
            p,
            rings: FastMap::default(),
        }
    }
    pub fn restore(&mut self, groups: &[(u32, Vec<u8>)]) {
        for (_, bytes) in groups {
            let v: Vec<(String, Vec<Ring>)> =
                bincode::deserialize(bytes).expect("window z state decodes");
            self.rings.extend(v);
        }
    }
}

impl Logic for WindowZ {
    type In = WindowRow;
    type Out = Anomaly;

    fn name(&self) -> String {
        "window_z".into()
    }

    fn on_tick(&mut self, t: Tick, batch: &mut Vec<WindowRow>, out: &mut Emit<Anomaly>) {
        batch.sort_by(|a, b| (&a.key, a.start, a.end).cmp(&(&b.key, b.start, b.end)));
        let metrics = self.p.metrics.len();
        for row in batch.drain(..) {
            let rings = self
                .rings
                .entry(row.key.clone())
                .or_insert_with(|| vec![Ring::default(); metrics]);
            for (metric, ring) in self.p.metrics.iter().zip(rings.iter_mut()) {
                let x = match metric {
                    Metric::TxnCount => row.count,
                    Metric::SumCents => row.sum_cents,
                    Metric::Amount => unreachable!("validated: window metrics are counts or sums"),
                };
                if ring.sums.n >= self.p.min_history {
                    if let Some((mean, stddev, z)) = ring.sums.score(x) {
                        let quiet = ring.quiet_until.is_some_and(|q| row.end < q);
                        if z.abs() >= self.p.z_threshold && !quiet {
                            ring.quiet_until = Some(row.end + self.p.cooldown_ms);
                            out.rows.push((
                                t,
                                Anomaly {
                                    kind: AnomalyKind::Window,
                                    key: unescape_key(&row.key),
                                    metric: *metric,
                                    value: x as f64,
                                    mean,
                                    stddev,
                                    z,
                                    event_time: row.end,
                                    history_count: ring.sums.n,
                                    transaction_id: None,
                                    window: Some((row.spec, row.start, row.end)),
                                },
                            ));
                        }
                    }
                }
                ring.values.push_back(x);
                ring.sums.add(x);
                if ring.values.len() > self.p.history {
                    let old = ring.values.pop_front().unwrap();
                    ring.sums.remove(old);
                }
            }
        }
    }

    fn flush(&mut self, _limit: Option<Tick>, _out: &mut Emit<Anomaly>) {}

    fn pending(&self) -> Option<Tick> {
        None
    }

    fn snapshot(&self) -> Vec<(u32, Vec<u8>)> {
        by_group(self.rings.iter().map(|(k, v)| (k.clone(), v.clone())))
    }
    fn keys(&self) -> u64 {
        self.rings.len() as u64
    }
}

/// The anomaly `key`: group values joined with a plain `|` (SPEC 7).
pub fn unescape_key(key: &str) -> String {
    if !key.contains('\\') {
        return key.to_owned();
    }
    let mut out = String::with_capacity(key.len());
    let mut chars = key.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            // `\N` is a null value (window::NULL_VALUE): nothing to show.
            out.extend(chars.next().filter(|&n| n != 'N'));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zin(time: Millis, cents: i64, id: &str) -> ZIn {
        ZIn::new(time, cents, "c1", id)
    }

    fn txn_z(min_history: u64) -> TxnZ {
        TxnZ::new(TxnZParams {
            enabled: true,
            min_history,
            z_threshold: 3.0,
        })
    }

    #[test]
    fn sums_score_is_exact() {
        let mut s = Sums::default();
        for x in [100, 200, 100, 200] {
            s.add(x);
        }
        let (mean, stddev, z) = s.score(400).unwrap();
        assert_eq!((mean, stddev, z), (150.0, 50.0, 5.0));
        let mut flat = Sums::default();
        flat.add(7);
        flat.add(7);
        assert_eq!(flat.score(1_000_000), None, "zero stddev never scores");
    }

    #[test]
    fn scores_before_adding_and_needs_min_history() {
        let mut z = txn_z(10);
        let mut out = Emit::default();
        // Ten alternating values: mean 1.50, stddev 0.50.
        let mut batch: Vec<ZIn> = (0..10)
            .map(|i| {
                zin(
                    i * 1000,
                    if i % 2 == 0 { 100 } else { 200 },
                    &format!("t{i}"),
                )
            })
            .collect();
        z.on_tick(0, &mut batch, &mut out);
        assert!(
            out.rows.is_empty(),
            "fewer than min_history earlier values: no alerts"
        );
        z.on_tick(20, &mut vec![zin(20_000, 400, "big")], &mut out);
        let a = &out.rows.single();
        assert_eq!(
            (a.key.as_str(), a.value, a.mean, a.stddev, a.z),
            ("c1", 4.0, 1.5, 0.5, 5.0)
        );
        assert_eq!(
            (a.history_count, a.transaction_id.as_deref()),
            (10, Some("big"))
        );
        // The alerting value joined the history: the same amount again scores lower.
        z.on_tick(21, &mut vec![zin(21_000, 400, "again")], &mut out);
        assert!(out.rows.len() == 1 || out.rows[1].1.z < 5.0);
    }

    #[test]
    fn same_tick_is_ordered_by_time_then_id() {
        // In one tick, "a" (earlier id) is scored before "b" at the same time.
        let mut z = txn_z(1);
        let mut out = Emit::default();
        z.on_tick(0, &mut vec![zin(0, 100, "h1"), zin(0, 200, "h2")], &mut out);
        z.on_tick(
            5,
            &mut vec![zin(5_000, 10_000, "b"), zin(5_000, 10_000, "a")],
            &mut out,
        );
        assert_eq!(
            out.rows
                .first()
                .map(|(_, a)| a.transaction_id.clone().unwrap()),
            Some("a".into())
        );
        assert_eq!(out.rows[0].1.history_count, 2);
    }

    #[test]
    fn zero_stddev_never_alerts() {
        let mut z = txn_z(3);
        let mut out = Emit::default();
        z.on_tick(
            0,
            &mut (0..5).map(|i| zin(i, 500, &format!("t{i}"))).collect(),
            &mut out,
        );
        z.on_tick(1, &mut vec![zin(1_000, 99_999_999, "huge")], &mut out);
        assert!(out.rows.is_empty());
    }

    fn window_row(start_min: i64, count: i64) -> WindowRow {
        WindowRow {
            spec: 0,
            start: start_min * 60_000,
            end: (start_min + 1) * 60_000,
            key: "FAILED".into(),
            count,
            sum_cents: count * 100,
            min_cents: 100,
            max_cents: 100,
        }
    }

    #[test]
    fn window_ring_forgets_old_values_and_cooldown_suppresses() {
        let mut z = WindowZ::new(WindowZParams {
            enabled: true,
            spec: 0,
            metrics: vec![Metric::TxnCount],
            history: 3,
            min_history: 3,
            z_threshold: 3.0,
            cooldown_ms: 5 * 60_000,
        });
        let mut out = Emit::default();
        let counts = [1000, 2, 3, 2, 3, 50, 1000, 2, 3, 2, 80];
        for (i, c) in counts.iter().enumerate() {
            z.on_tick(i as Tick, &mut vec![window_row(i as i64, *c)], &mut out);
        }
        let alerts: Vec<(i64, u64)> = out
            .rows
            .iter()
            .map(|(_, a)| (a.window.unwrap().1 / 60_000, a.history_count))
            .collect();
        // The ring holds the last 3 values, so from minute 4 on the 1000 of
        // minute 0 is gone. Minute 5 (50 vs [3, 2, 3], z ≈ 100) alerts and
        // quiets the key until windows ending at 6m + 5m = 11m; minute 6
        // (1000, z ≈ 44) is suppressed and does not extend the quiet time;
        // minute 10 (80 vs [2, 3, 2]) ends at exactly 11m: alerts.
        assert_eq!(alerts, vec![(5, 3), (10, 3)]);
        let a = &out.rows[0].1;
        assert_eq!(
            (a.kind, a.metric, a.key.as_str(), a.event_time),
            (AnomalyKind::Window, Metric::TxnCount, "FAILED", 6 * 60_000)
        );
    }

    #[test]
    fn unescape_joins_group_values_plainly() {
        assert_eq!(unescape_key(r"a\|b|c\\d"), r"a|b|c\d");
        assert_eq!(unescape_key("plain"), "plain");
        assert_eq!(unescape_key(r"a|\N|b"), "a||b");
    }

    trait Single {
        fn single(&self) -> &Anomaly;
    }
    impl Single for Vec<(Tick, Anomaly)> {
        fn single(&self) -> &Anomaly {
            assert_eq!(self.len(), 1, "{self:?}");
            &self[0].1
        }
    }
}
