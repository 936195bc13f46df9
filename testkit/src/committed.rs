//! Reads a tidemark output root the way SPEC 8 says readers must: only
//! through committed manifests, verifying every listed file (size, sha256,
//! row count), and turns the Parquet rows into the normalized rows of
//! [`crate::reference`]. Also [`assert_same`], the comparison the end-to-end
//! tests use, and [`manifests`]: how many epochs a root has committed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Decimal128Type, Float64Type, Int32Type, Int64Type, TimestampMillisecondType,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};
use tidemark_store::Storage;

use crate::reference::{
    civil_from_days, AnomalyRow, Outputs, RejectRow, TransactionRow, WindowRow,
};

pub const MANIFEST_FORMAT: &str = "tidemark-manifest/1";

/// An output root whose committed manifests can be listed: a local
/// directory (`Path`, `PathBuf`) or a store (`dyn Storage`, e.g. on S3).
pub trait Root {
    /// The file names of the public manifests (`manifests/*.json`),
    /// sorted (so by epoch); none while the root does not exist yet.
    /// Temporary files of a write in progress are not manifests.
    fn manifest_names(&self) -> Vec<String>;
}

impl Root for Path {
    fn manifest_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(self.join("manifests")).map_or(Vec::new(), |d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".json"))
                    .collect()
            });
        names.sort();
        names
    }
}

impl Root for PathBuf {
    fn manifest_names(&self) -> Vec<String> {
        self.as_path().manifest_names()
    }
}

impl Root for dyn Storage {
    fn manifest_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .list("manifests/")
            .unwrap()
            .into_iter()
            .filter(|k| k.ends_with(".json"))
            .map(|k| k.trim_start_matches("manifests/").to_owned())
            .collect();
        names.sort();
        names
    }
}

/// Copies a whole root from a store (on S3, say) to a local directory, to
/// read it like a local one ([`read_committed`]).
pub fn download(st: &dyn Storage, to: &Path) {
    for key in st.list("").unwrap() {
        let path = to.join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, st.get(&key).unwrap().unwrap()).unwrap();
    }
}

/// The sorted file names of the committed public manifests of `root`.
pub fn manifest_names<R: Root + ?Sized>(root: &R) -> Vec<String> {
    root.manifest_names()
}

/// How many epochs `root` has committed (public manifests), 0 before any.
pub fn manifests<R: Root + ?Sized>(root: &R) -> usize {
    root.manifest_names().len()
}

/// The newest committed epoch of `root` (its event-time boundary).
pub fn newest_epoch<R: Root + ?Sized>(root: &R) -> i64 {
    let names = root.manifest_names();
    let newest = names.last().expect("a committed manifest");
    newest
        .trim_end_matches(".json")
        .parse()
        .unwrap_or_else(|e| panic!("manifest name {newest}: {e}"))
}

/// The sum of the resume offsets in the newest manifest of local `root`
/// (`job.positions`): records read and committed so far; 0 before any
/// commit.
pub fn committed_offsets(root: &Path) -> u64 {
    let Some(newest) = root.manifest_names().pop() else {
        return 0;
    };
    let path = root.join("manifests").join(newest);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let m: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("manifest {} is not JSON: {e}", path.display()));
    m["job"]["positions"]
        .as_array()
        .map_or(0, |ps| ps.iter().filter_map(|p| p["offset"].as_u64()).sum())
}

/// How many rejects of `o` are `LATE`.
pub fn late(o: &Outputs) -> usize {
    o.rejects.iter().filter(|r| r.reason == "LATE").count()
}

/// The committed outputs under `root`: the union of the files listed by every
/// `<root>/manifests/*.json`, each verified against its manifest entry.
pub fn read_committed(root: &Path) -> Outputs {
    let mut out = Outputs::default();
    let manifest_dir = root.join("manifests");
    let mut manifests: Vec<_> = std::fs::read_dir(&manifest_dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", manifest_dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    manifests.sort();

    let mut seen_paths: BTreeSet<String> = BTreeSet::new();
    for manifest_path in &manifests {
        let text = std::fs::read_to_string(manifest_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", manifest_path.display()));
        let m: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("manifest {} is not JSON: {e}", manifest_path.display()));
        let ctx = manifest_path.display().to_string();
        assert_eq!(m["format"].as_str(), Some(MANIFEST_FORMAT), "{ctx}: format");
        let epoch = m["epoch"]
            .as_i64()
            .unwrap_or_else(|| panic!("{ctx}: epoch is not an integer"));
        let name = manifest_path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert_eq!(
            name,
            format!("{epoch:020}.json"),
            "{ctx}: manifest name must be the zero-padded epoch"
        );

        let files = m["files"]
            .as_array()
            .unwrap_or_else(|| panic!("{ctx}: files is not a list"));
        for f in files {
            let output = f["output"]
                .as_str()
                .unwrap_or_else(|| panic!("{ctx}: file without output: {f}"));
            let rel = f["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{ctx}: file without path: {f}"));
            let rows = f["rows"]
                .as_u64()
                .unwrap_or_else(|| panic!("{ctx}: file without rows: {f}"));
            let size = f["bytes"]
                .as_u64()
                .unwrap_or_else(|| panic!("{ctx}: file without bytes: {f}"));
            let sha = f["sha256"]
                .as_str()
                .unwrap_or_else(|| panic!("{ctx}: file without sha256: {f}"));
            assert!(
                seen_paths.insert(rel.to_string()),
                "{ctx}: {rel} is listed by more than one manifest entry"
            );

            let path = root.join(rel);
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{ctx}: reading listed file {rel}: {e}"));
            assert_eq!(
                bytes.len() as u64,
                size,
                "{ctx}: {rel}: byte size differs from the manifest"
            );
            let digest = hex::encode(Sha256::digest(&bytes));
            assert_eq!(
                digest,
                sha.to_ascii_lowercase(),
                "{ctx}: {rel}: sha256 differs from the manifest"
            );

            let fctx = format!("{ctx}: {output} file {rel}");
            let batches = read_parquet(&path, rows, &fctx);
            for batch in &batches {
                let b = Batch { batch, ctx: &fctx };
                match output {
                    "transactions" => out.transactions.extend(transaction_rows(&b, rel)),
                    "windows" => out.windows.extend(window_rows(&b, rel)),
                    "anomalies" => out.anomalies.extend(anomaly_rows(&b)),
                    "rejects" => out.rejects.extend(reject_rows(&b)),
                    other => panic!("{ctx}: unknown output {other:?}"),
                }
            }
        }
        out.duplicates += m["job"]["counts"]["duplicates"].as_u64().unwrap_or(0);
    }
    out
}

fn read_parquet(path: &Path, rows: u64, ctx: &str) -> Vec<RecordBatch> {
    let file = File::open(path).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap_or_else(|e| panic!("{ctx}: not Parquet: {e}"));
    let meta_rows = builder.metadata().file_metadata().num_rows() as u64;
    assert_eq!(
        meta_rows, rows,
        "{ctx}: Parquet row count differs from the manifest"
    );
    let reader = builder.build().unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let batches: Vec<RecordBatch> = reader
        .map(|b| b.unwrap_or_else(|e| panic!("{ctx}: {e}")))
        .collect();
    let read: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(
        read as u64, rows,
        "{ctx}: rows read differ from the manifest"
    );
    batches
}

// ---------------------------------------------------------------------------
// Typed column access
// ---------------------------------------------------------------------------

struct Batch<'a> {
    batch: &'a RecordBatch,
    ctx: &'a str,
}

impl Batch<'_> {
    fn col(&self, name: &str) -> &ArrayRef {
        let idx = self.batch.schema().index_of(name).unwrap_or_else(|_| {
            panic!(
                "{}: no column {name:?} (schema: {:?})",
                self.ctx,
                self.batch.schema()
            )
        });
        self.batch.column(idx)
    }

    fn type_error(&self, name: &str, want: &str) -> ! {
        panic!(
            "{}: column {name:?} is {:?}, expected {want}",
            self.ctx,
            self.col(name).data_type()
        )
    }

    fn opt_strings(&self, name: &str) -> Vec<Option<String>> {
        let c = self.col(name);
        let get = |i: usize| -> Option<String> {
            if c.is_null(i) {
                return None;
            }
            Some(match c.data_type() {
                DataType::Utf8 => c.as_string::<i32>().value(i).to_string(),
                DataType::LargeUtf8 => c.as_string::<i64>().value(i).to_string(),
                DataType::Utf8View => c.as_string_view().value(i).to_string(),
                _ => self.type_error(name, "a UTF-8 string"),
            })
        };
        (0..c.len()).map(get).collect()
    }

    /// `opt_strings`, where a column missing from the file's schema reads as
    /// all null (a file written before the column existed).
    fn opt_strings_or_null(&self, name: &str) -> Vec<Option<String>> {
        if self.batch.schema().index_of(name).is_ok() {
            self.opt_strings(name)
        } else {
            vec![None; self.batch.num_rows()]
        }
    }

    fn opt_i64s(&self, name: &str) -> Vec<Option<i64>> {
        let c = self.col(name);
        let a = c
            .as_primitive_opt::<Int64Type>()
            .unwrap_or_else(|| self.type_error(name, "INT64"));
        a.iter().collect()
    }

    fn opt_i32s(&self, name: &str) -> Vec<Option<i32>> {
        let c = self.col(name);
        let a = c
            .as_primitive_opt::<Int32Type>()
            .unwrap_or_else(|| self.type_error(name, "INT32"));
        a.iter().collect()
    }

    fn opt_f64s(&self, name: &str) -> Vec<Option<f64>> {
        let c = self.col(name);
        let a = c
            .as_primitive_opt::<Float64Type>()
            .unwrap_or_else(|| self.type_error(name, "DOUBLE"));
        a.iter().collect()
    }

    /// TIMESTAMP(MILLIS) adjusted to UTC.
    fn opt_times(&self, name: &str) -> Vec<Option<i64>> {
        let c = self.col(name);
        match c.data_type() {
            DataType::Timestamp(TimeUnit::Millisecond, Some(_)) => {}
            _ => self.type_error(name, "TIMESTAMP(MILLIS, UTC)"),
        }
        c.as_primitive::<TimestampMillisecondType>()
            .iter()
            .collect()
    }

    /// DECIMAL(18,2) as its unscaled value.
    fn opt_decimals(&self, name: &str) -> Vec<Option<i128>> {
        let c = self.col(name);
        match c.data_type() {
            DataType::Decimal128(18, 2) => {}
            _ => self.type_error(name, "DECIMAL(18,2)"),
        }
        c.as_primitive::<Decimal128Type>().iter().collect()
    }

    fn required<T>(&self, name: &str, v: Vec<Option<T>>) -> Vec<T> {
        v.into_iter()
            .enumerate()
            .map(|(i, x)| {
                x.unwrap_or_else(|| panic!("{}: column {name:?} is null at row {i}", self.ctx))
            })
            .collect()
    }

    fn strings(&self, name: &str) -> Vec<String> {
        self.required(name, self.opt_strings(name))
    }
    fn i64s(&self, name: &str) -> Vec<i64> {
        self.required(name, self.opt_i64s(name))
    }
    fn i32s(&self, name: &str) -> Vec<i32> {
        self.required(name, self.opt_i32s(name))
    }
    fn f64s(&self, name: &str) -> Vec<f64> {
        self.required(name, self.opt_f64s(name))
    }
    fn times(&self, name: &str) -> Vec<i64> {
        self.required(name, self.opt_times(name))
    }
}

fn transaction_rows(b: &Batch, rel: &str) -> Vec<TransactionRow> {
    let transaction_id = b.strings("transaction_id");
    let customer_id = b.strings("customer_id");
    let amount = b.required("amount", b.opt_decimals("amount"));
    let currency = b.strings("currency");
    let merchant = b.strings("merchant");
    let category = b.strings("category");
    let status = b.strings("status");
    let timestamp = b.strings("timestamp");
    let metadata = b.opt_strings("metadata");
    let event_time = b.times("event_time");
    let amount_cents = b.i64s("amount_cents");
    let amount_category = b.strings("amount_category");
    let hour_of_day = b.i32s("hour_of_day");
    let day_of_week = b.i32s("day_of_week");
    let source = b.strings("source");
    let partition = b.i32s("partition");
    let offset = b.i64s("offset");
    // SPEC 9: nullable (no merchants row matched).
    let merchant_category = b.opt_strings_or_null("merchant_category");
    let risk_tier = b.opt_strings_or_null("risk_tier");
    let merchant_country = b.opt_strings_or_null("merchant_country");
    (0..b.batch.num_rows())
        .map(|i| {
            // Storage is partitioned by event date and hour (docs/outputs.md).
            let ms = event_time[i];
            let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
            let hour = ms.div_euclid(3_600_000).rem_euclid(24);
            let dir = format!("transactions/date={y:04}-{m:02}-{d:02}/hour={hour:02}/");
            assert!(
                rel.starts_with(&dir),
                "{}: row {i} has event_time {ms} but the file is not under {dir}",
                b.ctx
            );
            TransactionRow {
                transaction_id: transaction_id[i].clone(),
                customer_id: customer_id[i].clone(),
                amount: amount[i],
                currency: currency[i].clone(),
                merchant: merchant[i].clone(),
                category: category[i].clone(),
                status: status[i].clone(),
                timestamp: timestamp[i].clone(),
                metadata: metadata[i].clone(),
                event_time: ms,
                amount_cents: amount_cents[i],
                amount_category: amount_category[i].clone(),
                hour_of_day: hour_of_day[i],
                day_of_week: day_of_week[i],
                source: source[i].clone(),
                partition: partition[i],
                offset: offset[i],
                merchant_category: merchant_category[i].clone(),
                risk_tier: risk_tier[i].clone(),
                merchant_country: merchant_country[i].clone(),
            }
        })
        .collect()
}

const WINDOW_FIXED_COLUMNS: [&str; 8] = [
    "window",
    "window_start",
    "window_end",
    "txn_count",
    "sum_cents",
    "avg_amount",
    "min_cents",
    "max_cents",
];

fn window_rows(b: &Batch, rel: &str) -> Vec<WindowRow> {
    let schema = b.batch.schema();
    let has = |name: &str| schema.index_of(name).is_ok();
    let window = b.strings("window");
    let start = b.times("window_start");
    let end = b.times("window_end");
    // Every other column is a group-by field.
    let group_fields: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !WINDOW_FIXED_COLUMNS.contains(&n.as_str()))
        .collect();
    // Nullable: an enriched field (SPEC 9) is null for transactions without
    // a merchants row, which is a group of its own.
    let group_values: Vec<Vec<Option<String>>> =
        group_fields.iter().map(|f| b.opt_strings(f)).collect();
    let n = b.batch.num_rows();
    let txn_count = has("txn_count").then(|| b.i64s("txn_count"));
    let sum_cents = has("sum_cents").then(|| b.i64s("sum_cents"));
    let avg_amount = has("avg_amount").then(|| b.f64s("avg_amount"));
    let min_cents = has("min_cents").then(|| b.i64s("min_cents"));
    let max_cents = has("max_cents").then(|| b.i64s("max_cents"));
    (0..n)
        .map(|i| {
            let dir = format!("windows/window={}/", window[i]);
            assert!(
                rel.starts_with(&dir),
                "{}: row {i} has window {:?} but the file is not under {dir}",
                b.ctx,
                window[i]
            );
            let mut group: Vec<(String, Option<String>)> = group_fields
                .iter()
                .zip(&group_values)
                .map(|(f, vals)| (f.clone(), vals[i].clone()))
                .collect();
            group.sort();
            WindowRow {
                window: window[i].clone(),
                window_start: start[i],
                window_end: end[i],
                group,
                txn_count: txn_count.as_ref().map(|v| v[i]),
                sum_cents: sum_cents.as_ref().map(|v| v[i]),
                avg_amount: avg_amount.as_ref().map(|v| v[i]),
                min_cents: min_cents.as_ref().map(|v| v[i]),
                max_cents: max_cents.as_ref().map(|v| v[i]),
            }
        })
        .collect()
}

fn anomaly_rows(b: &Batch) -> Vec<AnomalyRow> {
    let kind = b.strings("kind");
    let key = b.strings("key");
    let metric = b.strings("metric");
    let value = b.f64s("value");
    let mean = b.f64s("mean");
    let stddev = b.f64s("stddev");
    let z = b.f64s("z");
    let event_time = b.times("event_time");
    let history_count = b.i64s("history_count");
    let transaction_id = b.opt_strings("transaction_id");
    let window = b.opt_strings("window");
    let window_start = b.opt_times("window_start");
    let window_end = b.opt_times("window_end");
    (0..b.batch.num_rows())
        .map(|i| AnomalyRow {
            kind: kind[i].clone(),
            key: key[i].clone(),
            metric: metric[i].clone(),
            value: value[i],
            mean: mean[i],
            stddev: stddev[i],
            z: z[i],
            event_time: event_time[i],
            history_count: history_count[i],
            transaction_id: transaction_id[i].clone(),
            window: window[i].clone(),
            window_start: window_start[i],
            window_end: window_end[i],
        })
        .collect()
}

fn reject_rows(b: &Batch) -> Vec<RejectRow> {
    let raw = b.strings("raw");
    let raw_encoding = b.strings("raw_encoding");
    let reason = b.strings("reason");
    let source = b.strings("source");
    let partition = b.i32s("partition");
    let offset = b.i64s("offset");
    (0..b.batch.num_rows())
        .map(|i| RejectRow {
            raw: raw[i].clone(),
            raw_encoding: raw_encoding[i].clone(),
            reason: reason[i].clone(),
            source: source[i].clone(),
            partition: partition[i],
            offset: offset[i],
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------

/// Doubles agree to a relative precision of 1e-9 (absolute 1e-9 near zero).
pub fn close(a: f64, b: f64) -> bool {
    if a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    let diff = (a - b).abs();
    diff <= 1e-9 || diff <= 1e-9 * a.abs().max(b.abs())
}

fn close_opt(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => close(a, b),
        _ => false,
    }
}

/// Every column exactly equal (the derived `PartialEq`), the enriched ones
/// of SPEC 9 (`merchant_category`, `risk_tier`, `merchant_country`) included.
fn same_transaction(a: &TransactionRow, b: &TransactionRow) -> bool {
    a == b
}

fn same_window(a: &WindowRow, b: &WindowRow) -> bool {
    a.window == b.window
        && a.window_start == b.window_start
        && a.window_end == b.window_end
        && a.group == b.group
        && a.txn_count == b.txn_count
        && a.sum_cents == b.sum_cents
        && close_opt(a.avg_amount, b.avg_amount)
        && a.min_cents == b.min_cents
        && a.max_cents == b.max_cents
}

fn same_anomaly(a: &AnomalyRow, b: &AnomalyRow) -> bool {
    a.kind == b.kind
        && a.key == b.key
        && a.metric == b.metric
        && close(a.value, b.value)
        && close(a.mean, b.mean)
        && close(a.stddev, b.stddev)
        && close(a.z, b.z)
        && a.event_time == b.event_time
        && a.history_count == b.history_count
        && a.transaction_id == b.transaction_id
        && a.window == b.window
        && a.window_start == b.window_start
        && a.window_end == b.window_end
}

fn same_reject(a: &RejectRow, b: &RejectRow) -> bool {
    a == b
}

/// What identifies a row of each output (the keys [`assert_same`] pairs
/// rows by): transactions and rejects by their source coordinates, windows
/// by window and group, anomalies by what they flag.
pub type TxnKey = (String, i32, i64);
pub type WindowKey = (String, i64, i64, Vec<(String, Option<String>)>);
pub type AnomalyKey = (
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    i64,
);

pub fn transaction_key(r: &TransactionRow) -> TxnKey {
    (r.source.clone(), r.partition, r.offset)
}
pub fn window_key(r: &WindowRow) -> WindowKey {
    (
        r.window.clone(),
        r.window_start,
        r.window_end,
        r.group.clone(),
    )
}
pub fn anomaly_key(r: &AnomalyRow) -> AnomalyKey {
    (
        r.kind.clone(),
        r.metric.clone(),
        r.key.clone(),
        r.window.clone(),
        r.window_start,
        r.window_end,
        r.transaction_id.clone(),
        r.event_time,
    )
}
pub fn reject_key(r: &RejectRow) -> TxnKey {
    (r.source.clone(), r.partition, r.offset)
}

/// A row's Debug text, shortened for the report (rejects can be 1 MiB).
fn show<T: Debug>(row: &T) -> String {
    let s = format!("{row:?}");
    if s.chars().count() > 600 {
        let head: String = s.chars().take(600).collect();
        format!("{head}… ({} chars)", s.chars().count())
    } else {
        s
    }
}

/// Compares one output. Rows are matched by a unique key (sorted), then
/// compared in full; appends a report section when they differ.
fn compare<T: Debug, K: Ord + Debug>(
    name: &str,
    expected: &[T],
    actual: &[T],
    key: impl Fn(&T) -> K,
    same: impl Fn(&T, &T) -> bool,
    report: &mut Vec<String>,
) {
    const SHOW: usize = 5;
    let mut e: Vec<(K, &T)> = expected.iter().map(|r| (key(r), r)).collect();
    let mut a: Vec<(K, &T)> = actual.iter().map(|r| (key(r), r)).collect();
    e.sort_by(|x, y| x.0.cmp(&y.0));
    a.sort_by(|x, y| x.0.cmp(&y.0));
    let (mut missing, mut extra, mut differ) = (Vec::new(), Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < e.len() || j < a.len() {
        if j == a.len() || (i < e.len() && e[i].0 < a[j].0) {
            missing.push(e[i].1);
            i += 1;
        } else if i == e.len() || a[j].0 < e[i].0 {
            extra.push(a[j].1);
            j += 1;
        } else {
            if !same(e[i].1, a[j].1) {
                differ.push((e[i].1, a[j].1));
            }
            i += 1;
            j += 1;
        }
    }
    if missing.is_empty() && extra.is_empty() && differ.is_empty() {
        return;
    }
    let mut s = format!(
        "output `{name}` differs: expected {} rows, committed {} rows; {} missing, {} extra, {} with different values",
        expected.len(),
        actual.len(),
        missing.len(),
        extra.len(),
        differ.len()
    );
    for r in missing.iter().take(SHOW) {
        s += &format!("\n  missing (expected, not committed): {}", show(*r));
    }
    for r in extra.iter().take(SHOW) {
        s += &format!("\n  extra (committed, not expected):   {}", show(*r));
    }
    for (x, y) in differ.iter().take(SHOW) {
        s += &format!(
            "\n  differs:\n    expected:  {}\n    committed: {}",
            show(*x),
            show(*y)
        );
    }
    report.push(s);
}

/// Panics, naming every output that differs, unless `actual` equals
/// `expected` (as sets of rows; doubles to 1e-9 relative precision).
pub fn assert_same(expected: &Outputs, actual: &Outputs) {
    let mut report = Vec::new();
    compare(
        "transactions",
        &expected.transactions,
        &actual.transactions,
        transaction_key,
        same_transaction,
        &mut report,
    );

    let mut specs: BTreeSet<&str> = BTreeSet::new();
    let by_spec = |rows: &'_ [WindowRow]| {
        let mut m: BTreeMap<String, Vec<WindowRow>> = BTreeMap::new();
        for r in rows {
            m.entry(r.window.clone()).or_default().push(r.clone());
        }
        m
    };
    let e_windows = by_spec(&expected.windows);
    let a_windows = by_spec(&actual.windows);
    specs.extend(e_windows.keys().map(|s| s.as_str()));
    specs.extend(a_windows.keys().map(|s| s.as_str()));
    for spec in specs {
        let none = Vec::new();
        compare(
            &format!("windows[{spec}]"),
            e_windows.get(spec).unwrap_or(&none),
            a_windows.get(spec).unwrap_or(&none),
            window_key,
            same_window,
            &mut report,
        );
    }

    compare(
        "anomalies",
        &expected.anomalies,
        &actual.anomalies,
        anomaly_key,
        same_anomaly,
        &mut report,
    );
    compare(
        "rejects",
        &expected.rejects,
        &actual.rejects,
        reject_key,
        same_reject,
        &mut report,
    );
    if expected.duplicates != actual.duplicates {
        report.push(format!(
            "duplicates count differs: expected {}, committed {}",
            expected.duplicates, actual.duplicates
        ));
    }
    if !report.is_empty() {
        panic!(
            "committed outputs differ from the reference:\n{}",
            report.join("\n\n")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_count_only_published_json_in_name_order() {
        let root = crate::tempdir();
        assert_eq!(manifests(&root), 0, "no root yet");
        let dir = root.join("manifests");
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "00000000000000002000.json",
            "00000000000000001000.json",
            // A write in progress (LocalStorage's temporary file).
            "00000000000000003000.json.tmp-1-1",
        ] {
            std::fs::write(dir.join(name), b"{}").unwrap();
        }
        assert_eq!(manifests(&root), 2);
        assert_eq!(manifests(root.as_path()), 2);
        assert_eq!(
            manifest_names(&root),
            ["00000000000000001000.json", "00000000000000002000.json"]
        );
        assert_eq!(newest_epoch(&root), 2000);
    }

    #[test]
    fn manifests_of_a_store_are_the_same_count() {
        let st: std::sync::Arc<dyn Storage> =
            std::sync::Arc::new(tidemark_store::MemoryStorage::new());
        assert_eq!(manifests(&*st), 0);
        st.put("manifests/00000000000000001000.json", b"{}")
            .unwrap();
        st.put("manifests/00000000000000002000.json", b"{}")
            .unwrap();
        st.put("_commits/00000000000000000001.json", b"{}").unwrap();
        assert_eq!(manifests(&*st), 2);
        assert_eq!(newest_epoch(&*st), 2000);
    }
}
