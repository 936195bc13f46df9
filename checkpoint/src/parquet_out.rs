//! Parquet encoders for the four outputs, with the schemas of
//! `docs/outputs.md`: each function returns the complete bytes of one file
//! (Snappy, ≤ 128 Ki rows per row group, column statistics on).
//!
//! Also the calendar arithmetic of the derived columns and the Hive path
//! (`date=YYYY-MM-DD/hour=HH`), and the escaping of multi-field group keys
//! ([`join_key`] / [`split_key`]).

use anyhow::{anyhow, Context, Result};
use arrow_array::builder::StringBuilder;
use arrow_array::{
    ArrayRef, Decimal128Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use base64::Engine as _;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use std::sync::Arc;
use tidemark_dataflow::event::{Anomaly, AnomalyKind, Reject, RiskTier, Txn, WindowRow};
use tidemark_dataflow::params::{Aggregate, WindowSpec};

use crate::manifest::SourceNames;

/// Rows per row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

const MS_PER_DAY: i64 = 86_400_000;
const MS_PER_HOUR: i64 = 3_600_000;

/// Upper bounds (exclusive) of the `small` and `medium` amount categories, in cents.
pub const SMALL_BELOW_CENTS: i64 = 10_000;
pub const MEDIUM_BELOW_CENTS: i64 = 100_000;

// ---------------------------------------------------------------------------
// Calendar
// ---------------------------------------------------------------------------

pub use tidemark_dataflow::rfc3339::civil_from_days;

/// Hour of the day in UTC, 0–23 (floor semantics before 1970).
#[inline]
pub fn hour_of_day(event_time_ms: i64) -> i32 {
    (event_time_ms.rem_euclid(MS_PER_DAY) / MS_PER_HOUR) as i32
}

/// ISO day of the week in UTC, Monday = 1 … Sunday = 7.
#[inline]
pub fn day_of_week(event_time_ms: i64) -> i32 {
    // 1970-01-01 was a Thursday (4).
    (event_time_ms.div_euclid(MS_PER_DAY) + 3).rem_euclid(7) as i32 + 1
}

/// The Hive partition values of an event time: `("YYYY-MM-DD", "HH")`, UTC.
pub fn date_hour(event_time_ms: i64) -> (String, String) {
    let (y, m, d) = civil_from_days(event_time_ms.div_euclid(MS_PER_DAY));
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}", hour_of_day(event_time_ms)),
    )
}

/// `small` (< 100.00), `medium` (< 1000.00) or `large`.
#[inline]
pub fn amount_category(amount_cents: i64) -> &'static str {
    if amount_cents < SMALL_BELOW_CENTS {
        "small"
    } else if amount_cents < MEDIUM_BELOW_CENTS {
        "medium"
    } else {
        "large"
    }
}

// ---------------------------------------------------------------------------
// Group keys
// ---------------------------------------------------------------------------

/// Joins group-by values into one key: `|` between values, and `|` or `\`
/// inside a value escaped with a backslash, so [`split_key`] recovers the
/// values exactly. `WindowRow::key` is built with this.
pub fn join_key(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        if p.contains(['|', '\\']) {
            for c in p.chars() {
                if c == '|' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
        } else {
            out.push_str(p);
        }
    }
    out
}

/// Splits a key made by [`join_key`] back into its values. Always returns at
/// least one (possibly empty) value. A trailing lone backslash is kept as is.
/// A value written as `\N` (`window::NULL_VALUE`, which escaping never
/// makes) is null: an enriched field of a transaction without a reference row.
pub fn split_key(key: &str) -> Vec<Option<String>> {
    if !key.contains('\\') {
        return key.split('|').map(|s| Some(s.to_owned())).collect();
    }
    let mut parts = Vec::new();
    let mut cur = Some(String::new());
    let mut chars = key.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('N') => cur = None,
                next => cur
                    .get_or_insert_with(String::new)
                    .push(next.unwrap_or('\\')),
            },
            '|' => parts.push(cur.replace(String::new())),
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    parts.push(cur);
    parts
}

/// The anomaly `key` column of SPEC 7/8: the values joined with a plain `|`.
pub fn display_key(escaped_key: &str) -> String {
    if !escaped_key.contains('\\') {
        return escaped_key.to_owned();
    }
    split_key(escaped_key)
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect::<Vec<_>>()
        .join("|")
}

// ---------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn ts_ms(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        nullable,
    )
}

/// The Arrow schema of `transactions`.
pub fn transactions_schema() -> Schema {
    Schema::new(vec![
        utf8("transaction_id", false),
        utf8("customer_id", false),
        Field::new("amount", DataType::Decimal128(18, 2), false),
        utf8("currency", false),
        utf8("merchant", false),
        utf8("category", false),
        utf8("status", false),
        utf8("timestamp", false),
        utf8("metadata", true),
        ts_ms("event_time", false),
        Field::new("amount_cents", DataType::Int64, false),
        utf8("amount_category", false),
        Field::new("hour_of_day", DataType::Int32, false),
        Field::new("day_of_week", DataType::Int32, false),
        utf8("source", false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        // SPEC 9: null when no merchants reference row matched.
        utf8("merchant_category", true),
        utf8("risk_tier", true),
        utf8("merchant_country", true),
    ])
}

/// The aggregate columns a spec writes, in the fixed order
/// `txn_count, sum_cents, avg_amount, min_cents, max_cents` (only those configured).
fn aggregate_columns(spec: &WindowSpec) -> Vec<Aggregate> {
    [
        Aggregate::Count,
        Aggregate::Sum,
        Aggregate::Avg,
        Aggregate::Min,
        Aggregate::Max,
    ]
    .into_iter()
    .filter(|a| spec.aggregates.contains(a))
    .collect()
}

fn aggregate_field(a: Aggregate) -> Field {
    match a {
        Aggregate::Count => Field::new("txn_count", DataType::Int64, false),
        Aggregate::Sum => Field::new("sum_cents", DataType::Int64, false),
        Aggregate::Avg => Field::new("avg_amount", DataType::Float64, false),
        Aggregate::Min => Field::new("min_cents", DataType::Int64, false),
        Aggregate::Max => Field::new("max_cents", DataType::Int64, false),
    }
}

/// The Arrow schema of one window spec's output.
pub fn windows_schema(spec: &WindowSpec) -> Schema {
    let mut fields = vec![
        utf8("window", false),
        ts_ms("window_start", false),
        ts_ms("window_end", false),
    ];
    fields.extend(
        spec.group_by
            .iter()
            .map(|g| utf8(g.name(), g.is_enriched())),
    );
    fields.extend(aggregate_columns(spec).into_iter().map(aggregate_field));
    Schema::new(fields)
}

/// The Arrow schema of `anomalies`.
pub fn anomalies_schema() -> Schema {
    Schema::new(vec![
        utf8("kind", false),
        utf8("key", false),
        utf8("metric", false),
        Field::new("value", DataType::Float64, false),
        Field::new("mean", DataType::Float64, false),
        Field::new("stddev", DataType::Float64, false),
        Field::new("z", DataType::Float64, false),
        ts_ms("event_time", false),
        Field::new("history_count", DataType::Int64, false),
        utf8("transaction_id", true),
        utf8("window", true),
        ts_ms("window_start", true),
        ts_ms("window_end", true),
    ])
}

/// The Arrow schema of `rejects`.
pub fn rejects_schema() -> Schema {
    Schema::new(vec![
        utf8("raw", false),
        utf8("raw_encoding", false),
        utf8("reason", false),
        utf8("source", false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
    ])
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build()
}

/// A Parquet file being written in memory, batch by batch, so rows can be
/// encoded as soon as they are final instead of being held until a commit.
pub struct ParquetFile {
    schema: Arc<Schema>,
    writer: ArrowWriter<Vec<u8>>,
    rows: u64,
}

impl ParquetFile {
    pub fn new(schema: Schema) -> Result<Self> {
        let schema = Arc::new(schema);
        let writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(writer_properties()))
            .context("opening Parquet writer")?;
        Ok(ParquetFile {
            schema,
            writer,
            rows: 0,
        })
    }

    /// Appends rows given as columns of this file's schema.
    pub fn write(&mut self, columns: Vec<ArrayRef>) -> Result<()> {
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).context("building record batch")?;
        self.rows += batch.num_rows() as u64;
        self.writer.write(&batch).context("writing Parquet rows")
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes this file holds in memory: encoded row groups and the one in
    /// progress.
    pub fn held_bytes(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.memory_size()) as u64
    }

    /// The complete file's bytes.
    pub fn finish(self) -> Result<Vec<u8>> {
        self.writer.into_inner().context("closing Parquet file")
    }
}

/// One Parquet file holding `columns` under `schema`.
fn write_file(schema: Schema, columns: Vec<ArrayRef>) -> Result<Vec<u8>> {
    let mut f = ParquetFile::new(schema)?;
    f.write(columns)?;
    f.finish()
}

/// A whole `transactions` file. `source` is the logical input name.
pub fn encode_transactions(rows: &[&Txn], source: &str) -> Result<Vec<u8>> {
    write_file(transactions_schema(), transactions_columns(rows, source)?)
}

/// A whole file of one window spec's rows.
pub fn encode_windows(spec: &WindowSpec, rows: &[&WindowRow]) -> Result<Vec<u8>> {
    write_file(windows_schema(spec), windows_columns(spec, rows)?)
}

/// A whole `anomalies` file.
pub fn encode_anomalies(rows: &[&Anomaly], specs: &[WindowSpec]) -> Result<Vec<u8>> {
    write_file(anomalies_schema(), anomalies_columns(rows, specs)?)
}

/// A whole `rejects` file.
pub fn encode_rejects(rows: &[&Reject], names: &SourceNames) -> Result<Vec<u8>> {
    write_file(rejects_schema(), rejects_columns(rows, names)?)
}

fn partition_i32(p: u32) -> Result<i32> {
    i32::try_from(p).map_err(|_| anyhow!("partition {p} does not fit INT32"))
}

fn offset_i64(o: u64) -> Result<i64> {
    i64::try_from(o).map_err(|_| anyhow!("offset {o} does not fit INT64"))
}

/// A non-null string column from `n` values.
fn str_col<'a>(n: usize, values: impl Iterator<Item = &'a str> + Clone) -> ArrayRef {
    let bytes: usize = values.clone().map(str::len).sum();
    let mut b = StringBuilder::with_capacity(n, bytes);
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

/// A nullable string column from `n` values.
fn opt_str_col<'a>(n: usize, values: impl Iterator<Item = Option<&'a str>> + Clone) -> ArrayRef {
    let bytes: usize = values.clone().map(|v| v.map_or(0, str::len)).sum();
    let mut b = StringBuilder::with_capacity(n, bytes);
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

/// The same string `n` times.
fn const_str_col(n: usize, value: &str) -> ArrayRef {
    str_col(n, std::iter::repeat_n(value, n))
}

fn ts_col(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(values).with_timezone("UTC"))
}

fn opt_ts_col(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(values).with_timezone("UTC"))
}

/// The `transactions` columns of `rows`; `source` is the logical input name.
pub fn transactions_columns(rows: &[&Txn], source: &str) -> Result<Vec<ArrayRef>> {
    let n = rows.len();
    let it = || rows.iter().copied();
    let mut partitions = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n);
    for t in it() {
        partitions.push(partition_i32(t.partition)?);
        offsets.push(offset_i64(t.offset)?);
    }
    let amount = Decimal128Array::from_iter_values(it().map(|t| i128::from(t.amount_cents)))
        .with_precision_and_scale(18, 2)?;
    let columns: Vec<ArrayRef> = vec![
        str_col(n, it().map(Txn::transaction_id)),
        str_col(n, it().map(Txn::customer_id)),
        Arc::new(amount),
        str_col(n, it().map(|t| t.currency.as_str())),
        str_col(n, it().map(Txn::merchant)),
        str_col(n, it().map(Txn::category)),
        str_col(n, it().map(|t| t.status.as_str())),
        str_col(n, it().map(Txn::timestamp_raw)),
        opt_str_col(n, it().map(Txn::metadata)),
        ts_col(it().map(|t| t.event_time).collect()),
        Arc::new(Int64Array::from_iter_values(it().map(|t| t.amount_cents))),
        str_col(n, it().map(|t| amount_category(t.amount_cents))),
        Arc::new(Int32Array::from_iter_values(
            it().map(|t| hour_of_day(t.event_time)),
        )),
        Arc::new(Int32Array::from_iter_values(
            it().map(|t| day_of_week(t.event_time)),
        )),
        const_str_col(n, source),
        Arc::new(Int32Array::from(partitions)),
        Arc::new(Int64Array::from(offsets)),
        opt_str_col(n, it().map(Txn::merchant_category)),
        opt_str_col(n, it().map(|t| t.risk_tier.map(RiskTier::as_str))),
        opt_str_col(n, it().map(Txn::merchant_country)),
    ];
    Ok(columns)
}

/// The columns of one window spec's rows. `row.key` is split with
/// [`split_key`] into one value per `spec.group_by` field.
pub fn windows_columns(spec: &WindowSpec, rows: &[&WindowRow]) -> Result<Vec<ArrayRef>> {
    let n = rows.len();
    let it = || rows.iter().copied();
    let groups = spec.group_by.len();
    let key_bytes: usize = it().map(|r| r.key.len()).sum();
    let mut group_cols: Vec<StringBuilder> = (0..groups)
        .map(|_| StringBuilder::with_capacity(n, key_bytes / groups.max(1)))
        .collect();
    if groups > 0 {
        let wrong = |r: &WindowRow| {
            anyhow!(
                "window {:?}: key {:?} does not have {} group value(s)",
                spec.name,
                r.key,
                groups
            )
        };
        for r in it() {
            if r.key.contains('\\') {
                let parts = split_key(&r.key);
                if parts.len() != groups {
                    return Err(wrong(r));
                }
                for (b, p) in group_cols.iter_mut().zip(&parts) {
                    b.append_option(p.as_deref());
                }
            } else {
                if r.key.bytes().filter(|&c| c == b'|').count() + 1 != groups {
                    return Err(wrong(r));
                }
                for (b, p) in group_cols.iter_mut().zip(r.key.split('|')) {
                    b.append_value(p);
                }
            }
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        const_str_col(n, &spec.name),
        ts_col(it().map(|r| r.start).collect()),
        ts_col(it().map(|r| r.end).collect()),
    ];
    columns.extend(
        group_cols
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef),
    );
    for a in aggregate_columns(spec) {
        let col: ArrayRef = match a {
            Aggregate::Count => Arc::new(Int64Array::from_iter_values(it().map(|r| r.count))),
            Aggregate::Sum => Arc::new(Int64Array::from_iter_values(it().map(|r| r.sum_cents))),
            Aggregate::Avg => Arc::new(Float64Array::from_iter_values(
                it().map(WindowRow::avg_amount),
            )),
            Aggregate::Min => Arc::new(Int64Array::from_iter_values(it().map(|r| r.min_cents))),
            Aggregate::Max => Arc::new(Int64Array::from_iter_values(it().map(|r| r.max_cents))),
        };
        columns.push(col);
    }
    Ok(columns)
}

/// The `anomalies` columns of `rows`. The window name comes from `specs[spec index]`.
///
/// The `key` column: for `kind = window` the anomaly's key is a
/// `WindowRow::key` (built by [`join_key`]) and is written with the escapes
/// removed, values joined by a plain `|`; for `kind = transaction` it is the
/// customer id as is.
pub fn anomalies_columns(rows: &[&Anomaly], specs: &[WindowSpec]) -> Result<Vec<ArrayRef>> {
    let n = rows.len();
    let it = || rows.iter().copied();
    let mut window_names = Vec::with_capacity(n);
    for a in it() {
        window_names.push(match a.window {
            Some((i, _, _)) => Some(
                specs
                    .get(i as usize)
                    .map(|s| s.name.as_str())
                    .ok_or_else(|| anyhow!("anomaly names window spec {i}, unknown"))?,
            ),
            None => None,
        });
    }
    let keys: Vec<std::borrow::Cow<'_, str>> = it()
        .map(|a| match a.kind {
            AnomalyKind::Window if a.key.contains('\\') => display_key(&a.key).into(),
            _ => a.key.as_str().into(),
        })
        .collect();
    let history = it()
        .map(|a| {
            i64::try_from(a.history_count).map_err(|_| anyhow!("history_count overflows INT64"))
        })
        .collect::<Result<Vec<i64>>>()?;
    let columns: Vec<ArrayRef> = vec![
        str_col(
            n,
            it().map(|a| match a.kind {
                AnomalyKind::Transaction => "transaction",
                AnomalyKind::Window => "window",
            }),
        ),
        str_col(n, keys.iter().map(|k| k.as_ref())),
        str_col(n, it().map(|a| a.metric.as_str())),
        Arc::new(Float64Array::from_iter_values(it().map(|a| a.value))),
        Arc::new(Float64Array::from_iter_values(it().map(|a| a.mean))),
        Arc::new(Float64Array::from_iter_values(it().map(|a| a.stddev))),
        Arc::new(Float64Array::from_iter_values(it().map(|a| a.z))),
        ts_col(it().map(|a| a.event_time).collect()),
        Arc::new(Int64Array::from(history)),
        opt_str_col(n, it().map(|a| a.transaction_id.as_deref())),
        opt_str_col(n, window_names.iter().copied()),
        opt_ts_col(it().map(|a| a.window.map(|w| w.1)).collect()),
        opt_ts_col(it().map(|a| a.window.map(|w| w.2)).collect()),
    ];
    Ok(columns)
}

/// The `rejects` columns of `rows`: `raw` as UTF-8 text when the bytes are valid UTF-8,
/// otherwise standard (padded) base64, with `raw_encoding` saying which.
pub fn rejects_columns(rows: &[&Reject], names: &SourceNames) -> Result<Vec<ArrayRef>> {
    let n = rows.len();
    let it = || rows.iter().copied();
    let raw_bytes: usize = it().map(|r| r.raw.len()).sum();
    let mut raw = StringBuilder::with_capacity(n, raw_bytes + raw_bytes / 3);
    let mut encoding = StringBuilder::with_capacity(n, n * 6);
    let mut b64 = String::new();
    for r in it() {
        match std::str::from_utf8(&r.raw) {
            Ok(s) => {
                raw.append_value(s);
                encoding.append_value("utf8");
            }
            Err(_) => {
                b64.clear();
                base64::engine::general_purpose::STANDARD.encode_string(&r.raw, &mut b64);
                raw.append_value(&b64);
                encoding.append_value("base64");
            }
        }
    }
    let mut partitions = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n);
    for r in it() {
        partitions.push(partition_i32(names.name_of(r.partition).1)?);
        offsets.push(offset_i64(r.offset)?);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(raw.finish()),
        Arc::new(encoding.finish()),
        str_col(n, it().map(|r| r.reason.as_str())),
        str_col(n, it().map(|r| names.name_of(r.partition).0)),
        Arc::new(Int32Array::from(partitions)),
        Arc::new(Int64Array::from(offsets)),
    ];
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{
        Decimal128Type, Float64Type, Int32Type, Int64Type, TimestampMillisecondType,
    };
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::{LogicalType, Type as PhysicalType};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use tidemark_dataflow::event::{Currency, GroupField, Metric, RejectReason, Status, TxnText};
    use tidemark_dataflow::params::{Params, WindowKind};

    /// Reads a file back: its single record batch (all row groups concatenated).
    fn read_back(bytes: Vec<u8>) -> RecordBatch {
        let b = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .unwrap()
            .with_batch_size(1 << 20)
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = b.map(|r| r.unwrap()).collect();
        assert_eq!(batches.len(), 1);
        batches.into_iter().next().unwrap()
    }

    fn strs(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
        b.column_by_name(name)
            .unwrap_or_else(|| panic!("column {name}"))
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect()
    }

    fn str_vals(b: &RecordBatch, name: &str) -> Vec<String> {
        strs(b, name).into_iter().map(Option::unwrap).collect()
    }

    fn i64s(b: &RecordBatch, name: &str) -> Vec<i64> {
        let a = b.column_by_name(name).unwrap().as_primitive::<Int64Type>();
        assert_eq!(a.null_count(), 0);
        a.values().to_vec()
    }

    fn i32s(b: &RecordBatch, name: &str) -> Vec<i32> {
        let a = b.column_by_name(name).unwrap().as_primitive::<Int32Type>();
        a.values().to_vec()
    }

    fn f64s(b: &RecordBatch, name: &str) -> Vec<f64> {
        let a = b
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>();
        a.values().to_vec()
    }

    fn tss(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<TimestampMillisecondType>()
            .iter()
            .collect()
    }

    fn ts_type() -> DataType {
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    }

    fn assert_type(b: &RecordBatch, name: &str, t: DataType, nullable: bool) {
        let f = b.schema().field_with_name(name).unwrap().clone();
        assert_eq!(f.data_type(), &t, "{name}");
        assert_eq!(f.is_nullable(), nullable, "{name}");
    }

    /// Parquet-level (physical type, logical type) of a column, independent
    /// of the embedded Arrow schema.
    fn parquet_type(bytes: &[u8], name: &str) -> (PhysicalType, Option<LogicalType>) {
        let r = SerializedFileReader::new(bytes::Bytes::from(bytes.to_vec())).unwrap();
        let md = r.metadata();
        let schema = md.file_metadata().schema_descr();
        let c = (0..schema.num_columns())
            .map(|i| schema.column(i))
            .find(|c| c.name() == name)
            .unwrap();
        (c.physical_type(), c.logical_type_ref().cloned())
    }

    fn txn(ms: i64, cents: i64, id: &str, meta: &str, partition: u32, offset: u64) -> Txn {
        Txn::new(
            ms,
            cents,
            Currency::Gbp,
            Status::Completed,
            TxnText {
                transaction_id: id,
                customer_id: "cust|1",
                merchant: "Café \"Zoë\"",
                category: "food",
                timestamp: "raw-ts",
                metadata: meta,
            },
            partition,
            offset,
        )
    }

    #[test]
    fn calendar_known_dates() {
        // 2023-11-14T22:13:20Z, a Tuesday.
        assert_eq!(
            date_hour(1_700_000_000_000),
            ("2023-11-14".into(), "22".into())
        );
        assert_eq!(day_of_week(1_700_000_000_000), 2);
        assert_eq!(hour_of_day(1_700_000_000_000), 22);
        // The epoch: Thursday.
        assert_eq!(date_hour(0), ("1970-01-01".into(), "00".into()));
        assert_eq!(day_of_week(0), 4);
        // 1969-12-31T23:00:00Z, a Wednesday.
        let t = -3_600_000;
        assert_eq!(date_hour(t), ("1969-12-31".into(), "23".into()));
        assert_eq!(day_of_week(t), 3);
        assert_eq!(hour_of_day(t), 23);
        // One millisecond before the epoch.
        assert_eq!(date_hour(-1), ("1969-12-31".into(), "23".into()));
        // 1969-12-31T00:00:00Z exactly.
        assert_eq!(date_hour(-MS_PER_DAY), ("1969-12-31".into(), "00".into()));
        assert_eq!(day_of_week(-MS_PER_DAY), 3);
        // Leap day 2024-02-29T12:34:56.789Z, a Thursday; next day is March 1st.
        let leap = 1_709_210_096_789;
        assert_eq!(date_hour(leap), ("2024-02-29".into(), "12".into()));
        assert_eq!(day_of_week(leap), 4);
        assert_eq!(date_hour(leap + 12 * MS_PER_HOUR).0, "2024-03-01");
        // 2000-02-29 (a 400-year leap day), Tuesday; 1900-03-01, Thursday.
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(day_of_week(11_016 * MS_PER_DAY), 2);
        assert_eq!(civil_from_days(-25_508), (1900, 3, 1));
        assert_eq!(day_of_week(-25_508 * MS_PER_DAY), 4);
        // Sunday 2024-03-03 is 7, Monday 2024-03-04 is 1.
        assert_eq!(day_of_week(19_785 * MS_PER_DAY), 7);
        assert_eq!(day_of_week(19_786 * MS_PER_DAY), 1);
        // Cross-check a range of days against a day-by-day walk.
        let (mut y, mut m, mut d) = (1960i64, 1u32, 1u32);
        let start = -3_653; // 1960-01-01
        for days in start..start + 30_000 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ][m as usize - 1];
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn amount_categories() {
        assert_eq!(amount_category(1), "small");
        assert_eq!(amount_category(9_999), "small");
        assert_eq!(amount_category(10_000), "medium");
        assert_eq!(amount_category(99_999), "medium");
        assert_eq!(amount_category(100_000), "large");
    }

    #[test]
    fn keys_round_trip() {
        let cases: Vec<Vec<&str>> = vec![
            vec!["a"],
            vec!["a", "b"],
            vec!["", ""],
            vec!["x|y", "z"],
            vec!["back\\slash", "|", "\\", "\\|", "tail\\"],
            vec!["Café|Zoë", "ünï|\\cödé"],
            vec![""],
        ];
        for parts in cases {
            let k = join_key(&parts);
            let some: Vec<Option<String>> = parts.iter().map(|p| Some(p.to_string())).collect();
            assert_eq!(split_key(&k), some, "{k:?}");
            assert_eq!(display_key(&k), parts.join("|"));
        }
        assert_eq!(join_key(&["a|b", "c"]), "a\\|b|c");
        assert_eq!(join_key(&["a\\b"]), "a\\\\b");
        assert_eq!(join_key(&["plain", "x"]), "plain|x");
        assert_eq!(split_key("lone\\"), vec![Some("lone\\".to_owned())]);
        // A null value (no reference row) next to plain ones.
        assert_eq!(
            split_key("a|\\N|b\\|c"),
            vec![Some("a".to_owned()), None, Some("b|c".to_owned())]
        );
        assert_eq!(display_key("a|\\N|b"), "a||b");
    }

    #[test]
    fn transactions_round_trip() {
        let mut rows = [
            txn(1_700_000_000_000, 1, "t1", "{\"device\":\"ios\"}", 0, 0),
            txn(-3_600_000, 9_999, "t2", "", 3, 17),
            txn(1_709_210_096_789, 10_000, "t3", "", 1, 5_000_000_000),
            txn(0, 99_999_999, "t4", "{}", i32::MAX as u32, 2),
        ];
        rows[0].enrich("grocery", RiskTier::High, "DE");
        rows[3].enrich("", RiskTier::Low, "ZZ");
        let refs: Vec<&Txn> = rows.iter().collect();
        let bytes = encode_transactions(&refs, "transactions").unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        let b = read_back(bytes.clone());
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "transaction_id",
                "customer_id",
                "amount",
                "currency",
                "merchant",
                "category",
                "status",
                "timestamp",
                "metadata",
                "event_time",
                "amount_cents",
                "amount_category",
                "hour_of_day",
                "day_of_week",
                "source",
                "partition",
                "offset",
                "merchant_category",
                "risk_tier",
                "merchant_country"
            ]
        );
        assert_type(&b, "amount", DataType::Decimal128(18, 2), false);
        assert_type(&b, "event_time", ts_type(), false);
        assert_type(&b, "amount_cents", DataType::Int64, false);
        assert_type(&b, "hour_of_day", DataType::Int32, false);
        assert_type(&b, "day_of_week", DataType::Int32, false);
        assert_type(&b, "partition", DataType::Int32, false);
        assert_type(&b, "offset", DataType::Int64, false);
        assert_type(&b, "metadata", DataType::Utf8, true);
        assert_type(&b, "transaction_id", DataType::Utf8, false);

        assert_eq!(str_vals(&b, "transaction_id"), ["t1", "t2", "t3", "t4"]);
        assert_eq!(str_vals(&b, "customer_id"), ["cust|1"; 4]);
        let amount = b
            .column_by_name("amount")
            .unwrap()
            .as_primitive::<Decimal128Type>();
        assert_eq!(amount.values().to_vec(), [1i128, 9_999, 10_000, 99_999_999]);
        assert_eq!(amount.value_as_string(3), "999999.99");
        assert_eq!(amount.value_as_string(0), "0.01");
        assert_eq!(str_vals(&b, "currency"), ["GBP"; 4]);
        assert_eq!(str_vals(&b, "merchant"), ["Café \"Zoë\""; 4]);
        assert_eq!(str_vals(&b, "category"), ["food"; 4]);
        assert_eq!(str_vals(&b, "status"), ["COMPLETED"; 4]);
        assert_eq!(str_vals(&b, "timestamp"), ["raw-ts"; 4]);
        assert_eq!(
            strs(&b, "metadata"),
            [
                Some("{\"device\":\"ios\"}".to_string()),
                None,
                None,
                Some("{}".to_string())
            ]
        );
        assert_eq!(
            tss(&b, "event_time"),
            [
                Some(1_700_000_000_000),
                Some(-3_600_000),
                Some(1_709_210_096_789),
                Some(0)
            ]
        );
        assert_eq!(i64s(&b, "amount_cents"), [1, 9_999, 10_000, 99_999_999]);
        assert_eq!(
            str_vals(&b, "amount_category"),
            ["small", "small", "medium", "large"]
        );
        assert_eq!(i32s(&b, "hour_of_day"), [22, 23, 12, 0]);
        assert_eq!(i32s(&b, "day_of_week"), [2, 3, 4, 4]);
        assert_eq!(str_vals(&b, "source"), ["transactions"; 4]);
        assert_eq!(i32s(&b, "partition"), [0, 3, 1, i32::MAX]);
        assert_eq!(i64s(&b, "offset"), [0, 17, 5_000_000_000, 2]);
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            strs(&b, "merchant_category"),
            [some("grocery"), None, None, some("")]
        );
        assert_eq!(
            strs(&b, "risk_tier"),
            [some("HIGH"), None, None, some("LOW")]
        );
        assert_eq!(
            strs(&b, "merchant_country"),
            [some("DE"), None, None, some("ZZ")]
        );
        for c in ["merchant_category", "risk_tier", "merchant_country"] {
            assert_type(&b, c, DataType::Utf8, true);
        }

        // The Parquet logical types themselves.
        use parquet::basic::TimeUnit as PTimeUnit;
        let decimal = parquet_type(&bytes, "amount");
        assert_eq!(decimal.1, Some(LogicalType::decimal(2, 18)));
        assert_eq!(
            parquet_type(&bytes, "event_time"),
            (
                PhysicalType::INT64,
                Some(LogicalType::timestamp(true, PTimeUnit::MILLIS))
            )
        );
        assert_eq!(parquet_type(&bytes, "amount_cents").0, PhysicalType::INT64);
        assert_eq!(parquet_type(&bytes, "offset").0, PhysicalType::INT64);
        for c in ["hour_of_day", "day_of_week", "partition"] {
            assert_eq!(parquet_type(&bytes, c).0, PhysicalType::INT32, "{c}");
        }
        assert_eq!(
            parquet_type(&bytes, "merchant"),
            (PhysicalType::BYTE_ARRAY, Some(LogicalType::String))
        );

        // Compression and statistics.
        let r = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        let rg = r.metadata().row_group(0);
        for c in rg.columns() {
            assert_eq!(c.compression(), Compression::SNAPPY);
            assert!(c.statistics().is_some(), "{}", c.column_path());
        }
    }

    #[test]
    fn transactions_empty_and_out_of_range() {
        let bytes = encode_transactions(&[], "s").unwrap();
        let r = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap();
        assert_eq!(r.metadata().file_metadata().num_rows(), 0);
        let big = txn(0, 1, "t", "", u32::MAX, 0);
        assert!(encode_transactions(&[&big], "s").is_err());
        let big = txn(0, 1, "t", "", 0, u64::MAX);
        assert!(encode_transactions(&[&big], "s").is_err());
    }

    #[test]
    fn transactions_split_into_row_groups() {
        let rows: Vec<Txn> = (0..(ROW_GROUP_ROWS + 10) as u64)
            .map(|i| txn(i as i64 * 1000, 100 + i as i64, "t", "", 0, i))
            .collect();
        let refs: Vec<&Txn> = rows.iter().collect();
        let bytes = encode_transactions(&refs, "s").unwrap();
        let r = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        let md = r.metadata();
        assert_eq!(md.num_row_groups(), 2);
        assert_eq!(md.row_group(0).num_rows() as usize, ROW_GROUP_ROWS);
        assert_eq!(md.row_group(1).num_rows(), 10);
    }

    fn two_field_spec() -> WindowSpec {
        WindowSpec {
            name: "cur_merchant_5m".into(),
            kind: WindowKind::Tumbling { size_ms: 300_000 },
            group_by: vec![GroupField::Currency, GroupField::Merchant],
            aggregates: vec![
                Aggregate::Max,
                Aggregate::Min,
                Aggregate::Avg,
                Aggregate::Sum,
                Aggregate::Count,
            ],
        }
    }

    fn wrow(start: i64, key: String, count: i64, sum: i64) -> WindowRow {
        WindowRow {
            spec: 0,
            start,
            end: start + 300_000,
            key,
            count,
            sum_cents: sum,
            min_cents: 5,
            max_cents: sum - 5,
        }
    }

    #[test]
    fn windows_round_trip() {
        let spec = two_field_spec();
        let rows = [
            wrow(-300_000, join_key(&["USD", "A|B \\ C"]), 3, 1_001),
            wrow(0, join_key(&["EUR", "plain"]), 1, 250),
        ];
        let refs: Vec<&WindowRow> = rows.iter().collect();
        let b = read_back(encode_windows(&spec, &refs).unwrap());
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "window",
                "window_start",
                "window_end",
                "currency",
                "merchant",
                "txn_count",
                "sum_cents",
                "avg_amount",
                "min_cents",
                "max_cents"
            ]
        );
        assert_type(&b, "window_start", ts_type(), false);
        assert_type(&b, "window_end", ts_type(), false);
        assert_type(&b, "merchant", DataType::Utf8, false);
        assert_type(&b, "txn_count", DataType::Int64, false);
        assert_type(&b, "avg_amount", DataType::Float64, false);
        assert_eq!(str_vals(&b, "window"), ["cur_merchant_5m"; 2]);
        assert_eq!(tss(&b, "window_start"), [Some(-300_000), Some(0)]);
        assert_eq!(tss(&b, "window_end"), [Some(0), Some(300_000)]);
        assert_eq!(str_vals(&b, "currency"), ["USD", "EUR"]);
        assert_eq!(str_vals(&b, "merchant"), ["A|B \\ C", "plain"]);
        assert_eq!(i64s(&b, "txn_count"), [3, 1]);
        assert_eq!(i64s(&b, "sum_cents"), [1_001, 250]);
        assert_eq!(f64s(&b, "avg_amount"), [1_001.0 / 3.0 / 100.0, 2.5]);
        assert_eq!(i64s(&b, "min_cents"), [5, 5]);
        assert_eq!(i64s(&b, "max_cents"), [996, 245]);
    }

    #[test]
    fn windows_default_specs_and_bad_keys() {
        let params = Params::default();
        let spec = &params.windows[1]; // merchant_5m
        let row = wrow(60_000, join_key(&["M|1"]), 2, 300);
        let b = read_back(encode_windows(spec, &[&row]).unwrap());
        assert_eq!(b.num_columns(), 4 + 5);
        assert_eq!(str_vals(&b, "merchant"), ["M|1"]);
        assert_eq!(str_vals(&b, "window"), ["merchant_5m"]);

        // A subset of aggregates keeps the fixed column order.
        let mut few = spec.clone();
        few.aggregates = vec![Aggregate::Max, Aggregate::Count];
        let b = read_back(encode_windows(&few, &[&row]).unwrap());
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "window",
                "window_start",
                "window_end",
                "merchant",
                "txn_count",
                "max_cents"
            ]
        );

        // Wrong number of values for the spec's group-by fields.
        let two = two_field_spec();
        for key in ["only", "a|b|c", "a\\|b"] {
            let r = wrow(0, key.into(), 1, 10);
            assert!(encode_windows(&two, &[&r]).is_err(), "{key}");
        }
    }

    #[test]
    fn anomalies_round_trip() {
        let params = Params::default();
        let rows = [
            Anomaly {
                kind: AnomalyKind::Transaction,
                key: "cust\\|raw".into(), // a customer id, written as is
                metric: Metric::Amount,
                value: 950.25,
                mean: 12.5,
                stddev: 3.25,
                z: 288.5,
                event_time: 1_700_000_000_123,
                history_count: 42,
                transaction_id: Some("t-9".into()),
                window: None,
            },
            Anomaly {
                kind: AnomalyKind::Window,
                key: join_key(&["A|B", "C"]),
                metric: Metric::SumCents,
                value: 100_000.0,
                mean: 1_000.0,
                stddev: 10.0,
                z: -9_900.0,
                event_time: 60_000,
                history_count: 10,
                transaction_id: None,
                window: Some((0, 0, 60_000)),
            },
        ];
        let refs: Vec<&Anomaly> = rows.iter().collect();
        let b = read_back(encode_anomalies(&refs, &params.windows).unwrap());
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "kind",
                "key",
                "metric",
                "value",
                "mean",
                "stddev",
                "z",
                "event_time",
                "history_count",
                "transaction_id",
                "window",
                "window_start",
                "window_end"
            ]
        );
        assert_type(&b, "z", DataType::Float64, false);
        assert_type(&b, "event_time", ts_type(), false);
        assert_type(&b, "history_count", DataType::Int64, false);
        assert_type(&b, "transaction_id", DataType::Utf8, true);
        assert_type(&b, "window", DataType::Utf8, true);
        assert_type(&b, "window_start", ts_type(), true);
        assert_type(&b, "window_end", ts_type(), true);
        assert_eq!(str_vals(&b, "kind"), ["transaction", "window"]);
        assert_eq!(str_vals(&b, "key"), ["cust\\|raw", "A|B|C"]);
        assert_eq!(str_vals(&b, "metric"), ["amount", "sum_cents"]);
        assert_eq!(f64s(&b, "value"), [950.25, 100_000.0]);
        assert_eq!(f64s(&b, "mean"), [12.5, 1_000.0]);
        assert_eq!(f64s(&b, "stddev"), [3.25, 10.0]);
        assert_eq!(f64s(&b, "z"), [288.5, -9_900.0]);
        assert_eq!(
            tss(&b, "event_time"),
            [Some(1_700_000_000_123), Some(60_000)]
        );
        assert_eq!(i64s(&b, "history_count"), [42, 10]);
        assert_eq!(strs(&b, "transaction_id"), [Some("t-9".into()), None]);
        assert_eq!(strs(&b, "window"), [None, Some("status_1m".into())]);
        assert_eq!(tss(&b, "window_start"), [None, Some(0)]);
        assert_eq!(tss(&b, "window_end"), [None, Some(60_000)]);

        // An unknown spec index is an error.
        let mut bad = rows[1].clone();
        bad.window = Some((99, 0, 1));
        assert!(encode_anomalies(&[&bad], &params.windows).is_err());
    }

    #[test]
    fn rejects_round_trip() {
        let rows = [
            Reject {
                reason: RejectReason::Malformed,
                partition: 2,
                offset: 7,
                raw: b"{\"not\": json\r".to_vec(),
            },
            Reject {
                reason: RejectReason::Malformed,
                partition: 0,
                offset: 8,
                raw: vec![0xff, 0xfe, b'x', 0x00],
            },
            Reject {
                reason: RejectReason::Late,
                partition: 1,
                offset: 0,
                raw: "é".as_bytes().to_vec(),
            },
            Reject {
                reason: RejectReason::TooLarge,
                partition: 1,
                offset: 1,
                raw: vec![],
            },
            // A merchants reference row: named by its own source and index.
            Reject {
                reason: RejectReason::BadField,
                partition: tidemark_dataflow::source::REFERENCE_BASE + 1,
                offset: 3,
                raw: b"{}".to_vec(),
            },
        ];
        let refs: Vec<&Reject> = rows.iter().collect();
        let names = SourceNames {
            main: "transactions".into(),
            reference: "merchants".into(),
        };
        let b = read_back(encode_rejects(&refs, &names).unwrap());
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "raw",
                "raw_encoding",
                "reason",
                "source",
                "partition",
                "offset"
            ]
        );
        assert_type(&b, "partition", DataType::Int32, false);
        assert_type(&b, "offset", DataType::Int64, false);
        assert_eq!(
            str_vals(&b, "raw"),
            ["{\"not\": json\r", "//54AA==", "é", "", "{}"]
        );
        assert_eq!(
            str_vals(&b, "raw_encoding"),
            ["utf8", "base64", "utf8", "utf8", "utf8"]
        );
        let decoded = base64::engine::general_purpose::STANDARD
            .decode("//54AA==")
            .unwrap();
        assert_eq!(decoded, rows[1].raw);
        assert_eq!(
            str_vals(&b, "reason"),
            ["MALFORMED", "MALFORMED", "LATE", "TOO_LARGE", "BAD_FIELD"]
        );
        assert_eq!(
            str_vals(&b, "source"),
            [
                "transactions",
                "transactions",
                "transactions",
                "transactions",
                "merchants"
            ]
        );
        assert_eq!(i32s(&b, "partition"), [2, 0, 1, 1, 1]);
        assert_eq!(i64s(&b, "offset"), [7, 8, 0, 1, 3]);
    }
}
