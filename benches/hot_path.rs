//! Criterion micro-benchmarks of tidemark's hot path, on records from the
//! built-in generator (`tidemark_connectors::generator`, default shape).
//!
//! Groups, each one step that a record takes through the job:
//!
//! * `parse`: `record::parse_record` (JSON scan + SPEC 2 validation) of
//!   1,024 generated records, of one fixed well-formed record, and of one
//!   malformed (truncated) record. Records/s (and bytes/s for the batch).
//! * `dedup`: `Dedup` through its `Logic` trait, one tick of 1,024
//!   transactions per iteration (`on_tick` + `flush`, as the stateful frame
//!   calls them), against a steady-state id set (a full 10 min horizon of
//!   ticks, swept as in production): `insert_fresh` (new ids) and
//!   `lookup_repeated` (ids already held: every record a duplicate).
//! * `window`: `Windows` through `Logic`, one tick of 1,024 records per
//!   iteration (`on_tick` + `flush`, so window emission is amortised over
//!   the ticks) for the default specs: tumbling 1 min by status, sliding
//!   5 min / 1 min by merchant, 30 min session by customer. `*_1024` feeds
//!   one-record inputs; `*_preagg_1024` runs the job's path, `PreAgg`
//!   (local pre-aggregation, `add` + `take_below`) then the logic on its
//!   partials (one worker, no exchange).
//! * `zscore`: `TxnZ` through `Logic::on_tick`, one tick of 1,024 inputs
//!   over a warmed per-customer history (exact-sums update + scoring).
//! * `parquet`: `transactions_columns` + `ParquetFile::new/write/finish` of
//!   8,192 transactions (Snappy, page statistics: what the writer does).
//! * `exchange`: what timely 0.32 does to a `Vec<Txn>` container of 1,024
//!   when it crosses a process boundary: its `ContainerBytes` impl
//!   (`length_in_bytes` + `into_bytes`, i.e. bincode padded to 8 bytes) and
//!   `from_bytes` (bincode). Records/s and bytes/s.
//!
//! Every group checks its results once, outside the timed loops, against
//! what a broken implementation would get wrong.
//!
//! Run: `cargo bench --bench hot_path` (filter with e.g.
//! `cargo bench --bench hot_path -- window`; a quick pass:
//! `cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 2`).
//! Under `cargo test` (CI's `cargo test --workspace --all-targets`) each
//! benchmark runs once, as a test.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::OnceLock;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use timely::bytes::arc::BytesMut;
use timely::dataflow::channels::ContainerBytes;

use tidemark_checkpoint::parquet_out::{transactions_columns, transactions_schema, ParquetFile};
use tidemark_checkpoint::parquet_rows::rows_as_json;
use tidemark_connectors::generator::{self, GenConfig};
use tidemark_dataflow::dedup::Dedup;
use tidemark_dataflow::event::{
    Anomaly, AnomalyKind, Currency, Millis, RejectReason, Status, Tick, Txn, TxnText, WindowRow,
};
use tidemark_dataflow::params::{Params, WindowKind, WindowSpec};
use tidemark_dataflow::record::parse_record;
use tidemark_dataflow::stateful::{Emit, Logic};
use tidemark_dataflow::time::{floor_to, tick_of};
use tidemark_dataflow::window::{group_key, PreAgg, WinIn, Windows};
use tidemark_dataflow::zscore::{TxnZ, ZIn};

const TICK_MS: i64 = 1_000;
/// Records per tick handed to a stateful operator.
const BATCH: usize = 1024;
/// Transactions per Parquet batch.
const PARQUET_ROWS: usize = 8192;
/// The first tick (the generator's default start, 2023-11-14T22:13:20Z).
const T0: Tick = 1_700_000_000;
/// Iterations per criterion batch for benches with untimed per-iteration
/// setup: bounds the inputs held at once, whatever the iteration count.
const PER_BATCH: BatchSize = BatchSize::NumIterations(32);

const FIXED_LINE: &str = r#"{"transaction_id":"t-0-1","customer_id":"cust-004933","amount":158.21,"currency":"USD","merchant":"Hooli Cloud #0025","category":"restaurants","status":"COMPLETED","timestamp":"2023-11-14T22:13:17.013Z","metadata":{"device":"kiosk","location":"Berlin"}}"#;

fn max_record_bytes() -> usize {
    Params::default().max_record_bytes
}

// ---------------------------------------------------------------------------
// Inputs

/// Generated records that pass validation, and their transactions.
struct Corpus {
    lines: Vec<Vec<u8>>,
    txns: Vec<Txn>,
}

/// At least `PARQUET_ROWS` valid generated records of partition 0 (built
/// once). Checks the parser against the generator's labels on the way:
/// each record parses iff the generator meant it to (LATE is decided
/// downstream), and a rejected one fails with the intended reason.
fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let cfg = GenConfig {
            events: PARQUET_ROWS as u64 * 21 / 20,
            partitions: 1,
            ..GenConfig::default()
        };
        let max = max_record_bytes();
        let mut lines = Vec::new();
        let mut txns = Vec::new();
        let mut rejected = 0usize;
        for (offset, (line, label)) in generator::partition_with_labels(&cfg, 0).enumerate() {
            let parsed = parse_record(&line, max, 0, offset as u64);
            match label.reject_reason() {
                None | Some(RejectReason::Late) => {
                    let txn = parsed.unwrap_or_else(|r| {
                        panic!(
                            "{label:?} record {offset} rejected as {r:?}: {}",
                            String::from_utf8_lossy(&line)
                        )
                    });
                    assert_eq!(txn.offset, offset as u64);
                    lines.push(line);
                    txns.push(txn);
                }
                Some(reason) => {
                    assert_eq!(parsed.err(), Some(reason), "{label:?} record {offset}");
                    rejected += 1;
                }
            }
        }
        assert!(rejected > 0, "the generator's default mix has rejects");
        assert!(txns.len() >= PARQUET_ROWS, "{} valid records", txns.len());
        Corpus { lines, txns }
    })
}

/// A transaction shaped like `tmpl`, with another id, event time and offset.
fn txn_like(tmpl: &Txn, id: &str, event_time: Millis, offset: u64) -> Txn {
    let text = TxnText {
        transaction_id: id,
        customer_id: tmpl.customer_id(),
        merchant: tmpl.merchant(),
        category: tmpl.category(),
        timestamp: tmpl.timestamp_raw(),
        metadata: tmpl.metadata().unwrap_or(""),
    };
    Txn::new(
        event_time,
        tmpl.amount_cents,
        tmpl.currency,
        tmpl.status,
        text,
        tmpl.partition,
        offset,
    )
}

/// Tick `t`'s records: `BATCH` transactions shaped like the corpus (in
/// turn), with ids `t-{t}-{i}` (new every tick) and event times spread over
/// the tick.
fn tick_txns(t: Tick) -> Vec<Txn> {
    let txns = &corpus().txns;
    let mut id = String::with_capacity(24);
    (0..BATCH)
        .map(|i| {
            let n = (t - T0) as usize * BATCH + i;
            id.clear();
            write!(id, "t-{t}-{i}").unwrap();
            let time = t * TICK_MS + (i as i64 * 977) % TICK_MS;
            txn_like(&txns[n % txns.len()], &id, time, n as u64)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// parse

fn bench_parse(c: &mut Criterion) {
    let max = max_record_bytes();
    let lines = &corpus().lines[..BATCH];
    let bytes: u64 = lines.iter().map(|l| l.len() as u64).sum();

    let t = parse_record(FIXED_LINE.as_bytes(), max, 3, 17).expect("the fixed line is valid");
    assert_eq!(t.transaction_id(), "t-0-1");
    assert_eq!(t.customer_id(), "cust-004933");
    assert_eq!(t.amount_cents, 15_821);
    assert_eq!((t.currency, t.status), (Currency::Usd, Status::Completed));
    assert_eq!(t.merchant(), "Hooli Cloud #0025");
    assert_eq!(t.category(), "restaurants");
    assert_eq!(t.event_time, 1_699_999_997_013);
    assert_eq!(t.timestamp_raw(), "2023-11-14T22:13:17.013Z");
    assert_eq!(
        t.metadata(),
        Some(r#"{"device":"kiosk","location":"Berlin"}"#)
    );
    assert_eq!((t.partition, t.offset), (3, 17));
    let malformed = &FIXED_LINE.as_bytes()[..FIXED_LINE.len() - 1];
    assert_eq!(
        parse_record(malformed, max, 0, 0),
        Err(RejectReason::Malformed)
    );

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::ElementsAndBytes {
        elements: BATCH as u64,
        bytes,
    });
    g.bench_function("generated_1024", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for (i, line) in lines.iter().enumerate() {
                ok += black_box(parse_record(black_box(line), max, 0, i as u64)).is_ok() as usize;
            }
            assert_eq!(ok, BATCH);
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("fixed_line", |b| {
        b.iter(|| parse_record(black_box(FIXED_LINE.as_bytes()), max, 0, 1))
    });
    g.bench_function("malformed_truncated", |b| {
        b.iter(|| parse_record(black_box(malformed), max, 0, 1))
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// dedup

/// One tick through the dedup logic, as the stateful frame runs it.
fn dedup_tick(d: &mut Dedup, t: Tick, mut batch: Vec<Txn>) -> Emit<Txn> {
    let mut out = Emit::default();
    d.on_tick(t, &mut batch, &mut out);
    d.flush(Some(t + 1), &mut out);
    out
}

fn bench_dedup(c: &mut Criterion) {
    let horizon = Params::default().dedup_horizon_ms;
    let mut d = Dedup::new(horizon, TICK_MS);
    // A full horizon of ticks: the id set at its steady-state size.
    let mut t = T0;
    while t < T0 + horizon / TICK_MS {
        dedup_tick(&mut d, t, tick_txns(t));
        t += 1;
    }
    let live = d.live_ids();
    assert_eq!(live, (horizon / TICK_MS) as usize * BATCH);
    let out = dedup_tick(&mut d, t, tick_txns(t));
    assert_eq!(out.rows.len(), BATCH, "fresh ids are all kept");
    assert!(out.duplicates.is_empty());
    t += 1;

    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("insert_fresh_1024", |b| {
        b.iter_batched(
            || {
                t += 1;
                (t - 1, tick_txns(t - 1))
            },
            |(t, batch)| dedup_tick(&mut d, t, batch),
            PER_BATCH,
        )
    });

    // The last tick's records again, at their own tick: all duplicates, and
    // the state does not change from one iteration to the next.
    let repeat_tick = t - 1;
    let repeated = tick_txns(repeat_tick);
    let before = d.live_ids();
    let out = dedup_tick(&mut d, repeat_tick, repeated.clone());
    assert!(out.rows.is_empty(), "repeated ids are all duplicates");
    assert_eq!(out.duplicates, vec![(repeat_tick, BATCH as u64)]);
    assert_eq!(d.live_ids(), before);
    g.bench_function("lookup_repeated_1024", |b| {
        b.iter_batched(
            || repeated.clone(),
            |batch| dedup_tick(&mut d, repeat_tick, batch),
            PER_BATCH,
        )
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// window

/// One transaction's window input: the only place that knows `WinIn`'s
/// shape (now a pre-aggregated partial of one record).
fn win_in(time: Millis, cents: i64, key: String) -> WinIn {
    WinIn::one(time, cents, key)
}

/// Tick `t`'s window inputs under `spec` (the records of [`tick_txns`]),
/// with the (time, cents, key) that each came from.
fn tick_win(spec: &WindowSpec, t: Tick) -> Vec<(Millis, i64, String)> {
    tick_txns(t)
        .iter()
        .map(|x| (x.event_time, x.amount_cents, group_key(spec, x)))
        .collect()
}

fn to_win(batch: Vec<(Millis, i64, String)>) -> Vec<WinIn> {
    batch
        .into_iter()
        .map(|(time, cents, key)| win_in(time, cents, key))
        .collect()
}

/// One tick through the window logic, as the stateful frame runs it.
fn win_tick(w: &mut Windows, t: Tick, mut batch: Vec<WinIn>) -> Emit<WindowRow> {
    let mut out = Emit::default();
    w.on_tick(t, &mut batch, &mut out);
    w.flush(Some(t + 1), &mut out);
    out
}

type Brief = (Millis, Millis, String, i64, i64, i64, i64);

/// The rows that `records` must give under `kind`, computed naively.
fn expected_rows(kind: &WindowKind, records: &[(Millis, i64, String)]) -> Vec<Brief> {
    // (start, end, key) -> (count, sum, min, max); independent of `Agg`.
    type Naive = (i64, i64, i64, i64);
    let mut acc: BTreeMap<(Millis, Millis, String), Naive> = BTreeMap::new();
    let mut add = |s: Millis, e: Millis, key: &str, cents: i64| {
        let a = acc
            .entry((s, e, key.to_owned()))
            .or_insert((0, 0, i64::MAX, i64::MIN));
        *a = (a.0 + 1, a.1 + cents, a.2.min(cents), a.3.max(cents));
    };
    match *kind {
        WindowKind::Tumbling { size_ms } => {
            for (time, cents, key) in records {
                let s = floor_to(*time, size_ms);
                add(s, s + size_ms, key, *cents);
            }
        }
        WindowKind::Sliding { size_ms, slide_ms } => {
            for (time, cents, key) in records {
                let mut s = floor_to(*time, slide_ms);
                while s > time - size_ms {
                    add(s, s + size_ms, key, *cents);
                    s -= slide_ms;
                }
            }
        }
        WindowKind::Session { gap_ms } => {
            let mut by_key: BTreeMap<&str, Vec<(Millis, i64)>> = BTreeMap::new();
            for (time, cents, key) in records {
                by_key.entry(key).or_default().push((*time, *cents));
            }
            for (key, mut v) in by_key {
                v.sort();
                let mut i = 0;
                while i < v.len() {
                    let mut j = i + 1;
                    while j < v.len() && v[j].0 <= v[j - 1].0 + gap_ms {
                        j += 1;
                    }
                    for &(_, cents) in &v[i..j] {
                        add(v[i].0, v[j - 1].0 + gap_ms, key, cents);
                    }
                    i = j;
                }
            }
        }
    }
    acc.into_iter()
        .map(|((s, e, k), (n, sum, min, max))| (s, e, k, n, sum, min, max))
        .collect()
}

/// One tick through the job's window path as it now runs: the local
/// pre-aggregation of the tick's transactions, then the window logic on
/// the partials (one worker: no exchange).
fn preagg_tick(pre: &mut PreAgg, w: &mut Windows, t: Tick, txns: Vec<Txn>) -> Emit<WindowRow> {
    pre.add(t, &txns);
    let mut out = Emit::default();
    for (pt, mut partials) in pre.take_below(Some(t + 1)) {
        w.on_tick(pt, &mut partials, &mut out);
    }
    w.flush(Some(t + 1), &mut out);
    out
}

/// Runs `ticks` ticks through a fresh operator (behind a fresh
/// pre-aggregation if `preagg`), ends the input, and compares every row
/// with the naive computation.
fn check_windows(spec: &WindowSpec, ticks: i64, preagg: bool) {
    let mut w = Windows::new(0, spec, TICK_MS);
    let mut pre = PreAgg::new(spec);
    let mut rows = Vec::new();
    let mut records = Vec::new();
    for t in T0..T0 + ticks {
        records.extend(tick_win(spec, t));
        let out = if preagg {
            preagg_tick(&mut pre, &mut w, t, tick_txns(t))
        } else {
            win_tick(&mut w, t, to_win(tick_win(spec, t)))
        };
        for (at, r) in out.rows {
            assert!(
                at >= tick_of(r.end, TICK_MS),
                "{}: row emitted early",
                spec.name
            );
            rows.push(r);
        }
    }
    assert_eq!(pre.pending(), None);
    let mut out = Emit::default();
    w.flush(None, &mut out);
    rows.extend(out.rows.into_iter().map(|(_, r)| r));
    assert_eq!(w.pending(), None);
    let mut got: Vec<Brief> = rows
        .into_iter()
        .map(|r| {
            (
                r.start,
                r.end,
                r.key,
                r.count,
                r.sum_cents,
                r.min_cents,
                r.max_cents,
            )
        })
        .collect();
    got.sort();
    let want = expected_rows(&spec.kind, &records);
    assert!(!want.is_empty());
    assert_eq!(
        got.len(),
        want.len(),
        "{} (preagg {preagg}): window rows",
        spec.name
    );
    assert_eq!(got, want, "{} (preagg {preagg})", spec.name);
}

fn bench_windows(c: &mut Criterion) {
    let specs = Params::default().windows;
    let mut g = c.benchmark_group("window");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (i, spec) in specs.iter().enumerate() {
        let (name, warm) = match spec.kind {
            WindowKind::Tumbling { .. } => ("tumbling_1m_status", 60),
            WindowKind::Sliding { .. } => ("sliding_5m_1m_merchant", 300),
            WindowKind::Session { .. } => ("session_30m_customer", 60),
        };
        check_windows(spec, 150, false);
        check_windows(spec, 150, true);

        // The window logic on one-record inputs. Warm to steady state
        // (every pane a window needs is held).
        let mut w = Windows::new(i, spec, TICK_MS);
        let mut t = T0;
        while t < T0 + warm {
            win_tick(&mut w, t, to_win(tick_win(spec, t)));
            t += 1;
        }
        g.bench_function(format!("{name}_1024"), |b| {
            b.iter_batched(
                || {
                    t += 1;
                    (t - 1, to_win(tick_win(spec, t - 1)))
                },
                |(t, batch)| win_tick(&mut w, t, batch),
                PER_BATCH,
            )
        });

        // Pre-aggregation + the window logic on its partials.
        let mut w = Windows::new(i, spec, TICK_MS);
        let mut pre = PreAgg::new(spec);
        let mut t = T0;
        while t < T0 + warm {
            preagg_tick(&mut pre, &mut w, t, tick_txns(t));
            t += 1;
        }
        g.bench_function(format!("{name}_preagg_1024"), |b| {
            b.iter_batched(
                || {
                    t += 1;
                    (t - 1, tick_txns(t - 1))
                },
                |(t, txns)| preagg_tick(&mut pre, &mut w, t, txns),
                PER_BATCH,
            )
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// zscore

fn tick_z(t: Tick) -> Vec<ZIn> {
    tick_txns(t).iter().map(ZIn::of).collect()
}

fn z_tick(z: &mut TxnZ, t: Tick, mut batch: Vec<ZIn>) -> Emit<Anomaly> {
    let mut out = Emit::default();
    z.on_tick(t, &mut batch, &mut out);
    z.flush(Some(t + 1), &mut out);
    out
}

fn bench_zscore(c: &mut Criterion) {
    let params = Params::default().txn_z;

    // One customer: a steady history, then an outlier scores (and only it).
    let mut z = TxnZ::new(params.clone());
    let history = params.min_history as usize + 2;
    let tmpl = &corpus().txns[0];
    let mut batch: Vec<ZIn> = (0..history)
        .map(|i| {
            let cents = if i % 2 == 0 { 10_000 } else { 10_200 };
            let mut t = txn_like(tmpl, &format!("h{i:02}"), i as i64 * 1000, 0);
            t.amount_cents = cents;
            ZIn::of(&t)
        })
        .collect();
    let mut outlier = txn_like(tmpl, "outlier", history as i64 * 1000, 0);
    outlier.amount_cents = 100_000;
    batch.push(ZIn::of(&outlier));
    let out = z_tick(&mut z, 0, batch);
    assert_eq!(out.rows.len(), 1, "exactly the outlier scores");
    let a = &out.rows[0].1;
    assert_eq!(a.kind, AnomalyKind::Transaction);
    assert_eq!(a.key, tmpl.customer_id());
    assert_eq!(a.transaction_id.as_deref(), Some("outlier"));
    assert_eq!(a.history_count, history as u64);
    assert!((a.mean - 101.0).abs() < 1e-9 && (a.stddev - 1.0).abs() < 1e-9);
    assert!((a.z - 899.0).abs() < 1e-6, "z = {}", a.z);
    assert_eq!(z.keys(), 1);

    // Warm: every customer in the rotation has a history.
    let mut z = TxnZ::new(params);
    let mut customers = HashSet::new();
    let mut t = T0;
    while t < T0 + 60 {
        let batch = tick_z(t);
        customers.extend(batch.iter().map(|r| r.customer().to_owned()));
        z_tick(&mut z, t, batch);
        t += 1;
    }
    assert_eq!(z.keys(), customers.len() as u64);

    let mut g = c.benchmark_group("zscore");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("txn_z_1024", |b| {
        b.iter_batched(
            || {
                t += 1;
                (t - 1, tick_z(t - 1))
            },
            |(t, batch)| z_tick(&mut z, t, batch),
            PER_BATCH,
        )
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// parquet

fn encode_transactions(rows: &[&Txn]) -> Vec<u8> {
    let columns = transactions_columns(rows, "payments").expect("columns");
    let mut f = ParquetFile::new(transactions_schema()).expect("open");
    f.write(columns).expect("write");
    assert_eq!(f.rows(), rows.len() as u64);
    f.finish().expect("finish")
}

fn bench_parquet(c: &mut Criterion) {
    let rows: Vec<&Txn> = corpus().txns[..PARQUET_ROWS].iter().collect();
    let file = encode_transactions(&rows);
    assert!(file.starts_with(b"PAR1") && file.ends_with(b"PAR1"));
    let back = rows_as_json(file).expect("the file reads back");
    assert_eq!(back.len(), PARQUET_ROWS);
    for i in [0, PARQUET_ROWS / 2, PARQUET_ROWS - 1] {
        let row = &back[i];
        assert_eq!(row["transaction_id"], rows[i].transaction_id(), "row {i}");
        assert_eq!(row["customer_id"], rows[i].customer_id(), "row {i}");
        assert_eq!(row["amount_cents"], rows[i].amount_cents, "row {i}");
    }

    let mut g = c.benchmark_group("parquet");
    g.throughput(Throughput::Elements(PARQUET_ROWS as u64));
    g.bench_function("transactions_8192", |b| {
        b.iter(|| encode_transactions(black_box(&rows)))
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// exchange

/// What timely writes for a `Vec<T>` container: size it, then serialize.
fn serialize(batch: &Vec<Txn>, buf: &mut Vec<u8>) {
    buf.clear();
    buf.reserve(batch.length_in_bytes());
    batch.into_bytes(buf);
}

fn bench_exchange(c: &mut Criterion) {
    let batch: Vec<Txn> = corpus().txns[..BATCH].to_vec();
    let mut buf = Vec::new();
    serialize(&batch, &mut buf);
    assert_eq!(buf.len(), batch.length_in_bytes());
    assert_eq!(buf.len() % 8, 0, "timely pads containers to 8 bytes");
    let bytes = BytesMut::from(buf.clone()).freeze();
    let back: Vec<Txn> = ContainerBytes::from_bytes(bytes.clone());
    assert_eq!(back, batch, "round trip");

    let mut g = c.benchmark_group("exchange");
    g.throughput(Throughput::ElementsAndBytes {
        elements: BATCH as u64,
        bytes: buf.len() as u64,
    });
    g.bench_function("serialize_vec_txn_1024", |b| {
        b.iter(|| {
            serialize(black_box(&batch), &mut buf);
            buf.len()
        })
    });
    g.bench_function("deserialize_vec_txn_1024", |b| {
        b.iter_batched(
            || bytes.clone(),
            <Vec<Txn> as ContainerBytes>::from_bytes,
            PER_BATCH,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_parse,
    bench_dedup,
    bench_windows,
    bench_zscore,
    bench_parquet,
    bench_exchange
);
criterion_main!(benches);
