//! Anomaly z-scores (SPEC 7), per transaction and per window.
//!
//! Statistics are exact integer sums (docs/outputs.md "Numbers"), so the
//! score does not depend on evaluation order and `stddev > 0` is exact.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::event::{
    key_group, key_hash, Anomaly, AnomalyKind, Metric, Millis, Tick, Txn, WindowRow,
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
    pub customer: String,
    pub transaction_id: String,
}

impl ZIn {
    pub fn of(t: &Txn) -> Self {
        ZIn {
            time: t.event_time,
            cents: t.amount_cents,
            customer: t.customer_id().to_owned(),
            transaction_id: t.transaction_id().to_owned(),
        }
    }
}

pub struct TxnZ {
    p: TxnZParams,
    stats: HashMap<String, Sums>,
}

impl TxnZ {
    pub fn new(p: TxnZParams) -> Self {
        TxnZ {
            p,
            stats: HashMap::new(),
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
            (a.time, a.transaction_id.as_bytes()).cmp(&(b.time, b.transaction_id.as_bytes()))
        });
        for r in batch.drain(..) {
            if !self.stats.contains_key(&r.customer) {
                self.stats.insert(r.customer.clone(), Sums::default());
            }
            let sums = self.stats.get_mut(&r.customer).expect("inserted above");
            if sums.n >= self.p.min_history {
                if let Some((mean, stddev, z)) = sums.score(r.cents) {
                    if z.abs() >= self.p.z_threshold {
                        out.rows.push((
                            t,
                            Anomaly {
                                kind: AnomalyKind::Transaction,
                                key: r.customer.clone(),
                                metric: Metric::Amount,
                                value: r.cents as f64 / 100.0,
                                mean: mean / 100.0,
                                stddev: stddev / 100.0,
                                z,
                                event_time: r.time,
                                history_count: sums.n,
                                transaction_id: Some(r.transaction_id),
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
    rings: HashMap<String, Vec<Ring>>,
}

impl WindowZ {
    pub fn new(p: WindowZParams) -> Self {
        WindowZ {
            p,
            rings: HashMap::new(),
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
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}
