//! The built-in synthetic source: realistic, deterministic payment events.
//!
//! # Shape of the data
//!
//! A dataset is `events` records spread over `partitions` partitions:
//! partition `p` has `events / partitions` records, the first
//! `events % partitions` partitions one more ([`partition_len`]). Record `i`
//! of partition `p` has the *global index* `g = i * partitions + p`, and the
//! *base time* `start_ms + floor(g * 1000 / events_per_sec)`: the partitions
//! interleave, and event time goes forward at `events_per_sec` across all of
//! them. The default 2,000,000 records at 5,000/s span 400 s of event time,
//! `[start_ms - jitter, start_ms + 400_000)`.
//!
//! Every record is generated from its own PCG stream seeded by
//! `(seed, p, i)`, so partition `p`'s bytes depend only on `(cfg, p)`: not on
//! which other partitions are generated, in what order, or on what thread.
//! (They do depend on the whole `cfg`: changing `events` or `partitions`
//! changes every partition's length and base times.) Because a record's
//! content is a pure function of `(cfg, p, i)`, a partition can regenerate
//! another partition's record, which is how exact duplicates cross
//! partitions.
//!
//! # What a record is ([`Label`])
//!
//! * **Valid** (≈98%): a new transaction, id `t-{p}-{i}`. Its event time is
//!   the base time jittered *backwards* by up to `max_jitter_ms` (skewed
//!   towards 0), and then truncated by the timestamp's precision (0–6
//!   fractional digits): it lies in `[base - jitter - 999 ms, base]`. The
//!   jitter is clamped to 8 s so that this stays inside the SPEC's 10 s
//!   `max_out_of_orderness`: no Valid record is ever LATE.
//!   Customers are skewed: the first 20% of customer ranks make 80% of the
//!   transactions (uniform inside each group); customer ids are
//!   `cust-NNNNNN`, a fixed permutation of ranks, so the hot ones are spread
//!   over the id space. Each customer has a usual amount (log-uniform 5.00 –
//!   800.00) and pays it ±25% (15% of the time rounded to whole units).
//!   Merchants are Zipf-ish (`P(rank k) ∝ log((k+2)/(k+1))`), each with a
//!   fixed category. Currency USD 60% / EUR 25% / GBP 15%; status COMPLETED
//!   85% / PENDING 10% / FAILED 5%. Amount literals: `12.50` (65%), minimal
//!   `12.5`/`7` (20%), `1250e-2`/`1250E-2` (10%), `12.500` (5%). Timestamps:
//!   offsets `Z`, `+00:00`, `+01:00`, `+02:00`, `-05:00`, `-05:30`,
//!   `+05:30`, `+05:45`, `-08:00`, `+09:00`; 0–6 fractional digits;
//!   rarely `t`/`z` lower case. Metadata: absent 48%, `null` 1%, `{}` 1%,
//!   `{"device","location"}` 50% (sometimes reordered or with
//!   `app_version`; locations include raw UTF-8 and `\u00fc` escapes).
//!   Merchant names include UTF-8 and an escaped quote. ~7% carry an unknown
//!   extra field (`channel` or `risk_score`); 10% use another field order;
//!   12% use `", "` / `": "` separators.
//! * **Anomaly** (`anomaly_fraction`): a valid new transaction, status
//!   COMPLETED, by a *hot* customer, of 20–50× that customer's usual amount.
//!   Only from global index `38 × hot customers` on (75 s into the default
//!   dataset), where a hot customer has ~30 earlier transactions on average,
//!   so the per-transaction z-score fires (min_history 10, |z| ≥ 3).
//! * **Burst**: a valid new FAILED transaction inside a failure burst. Bursts
//!   happen (when `anomaly_fraction > 0`) in the status_1m windows whose
//!   index relative to the window holding `start_ms` is 12, 47, 82, …
//!   (every 35 minutes from the 13th window, so that ≥ 10 earlier windows
//!   exist and the 30 min cooldown has passed), during the base-time seconds
//!   `[20, 40)` of that minute: there, 30% of the records become Burst. The
//!   FAILED window's txn_count and sum_cents then jump far above their
//!   history. (The COMPLETED/PENDING windows of that minute dip, and can
//!   alert too.) The default 2,000,000-record dataset (400 s) is too short
//!   for any burst: it needs `start + 13 min` of event time.
//! * **Reuse**: a new valid transaction that re-uses the id of this
//!   partition's Valid record from 11 minutes of event time earlier (`> 10
//!   min` dedup horizon), so it is kept as a new transaction (a new anchor).
//!   Rate `duplicate_fraction / 20`. Needs > 11 min of event time.
//! * **ExactDup**: the exact bytes of a Valid record from up to 3 s of base
//!   time earlier, of this or (with probability `(P-1)/P`) another
//!   partition; same event time. Checked not LATE against the running max.
//!   SPEC 4 keeps the copy that is first in (event time, partition, offset)
//!   order: when the copy in a *lower* partition is this one, the job keeps
//!   this copy and counts the original as the duplicate. Counts are the same.
//! * **ConflictDup**: same transaction_id, customer, merchant and currency as
//!   a Valid record from `max_jitter + 2 s` to 9 min earlier (of any
//!   partition), with a different status (a PENDING original becomes
//!   COMPLETED or FAILED) or amount, and its own timestamp, strictly after
//!   the original's event time and at most 10 min after it: always a
//!   duplicate, never the anchor.
//!   ExactDup is 60% and ConflictDup 40% of `duplicate_fraction`.
//! * **Late** (`late_fraction`): a well-formed new transaction whose event
//!   time is 30–120 s below the partition's running max event time (SPEC 3,
//!   tracked exactly by the generator): a `LATE` reject.
//! * **Malformed(fault)** (`malformed_fraction`): exactly one defect on an
//!   otherwise valid record, so the reject reason is `fault.reason()`. Faults
//!   are picked uniformly among the 7 reasons MALFORMED … BAD_TIMESTAMP, then
//!   uniformly among that reason's faults (see [`Fault`]). TOO_LARGE is not
//!   random: a partition with ≥ 20,000 records has `max(1, n / 200,000)` of
//!   them at evenly spaced positions (a valid record with a ~1 MiB
//!   `metadata.note`, 1,048,6xx bytes); smaller partitions have none.
//!
//! Fallbacks: a Late record needs an earlier accepted record in its
//! partition, a dup/reuse needs a suitable Valid original, an Anomaly needs
//! history; when that is missing the record is emitted as a plain Valid one
//! (labelled Valid) instead. Regenerated originals are only ever records
//! that were planned as Valid, so the bookkeeping is exact:
//!
//! ```text
//! transactions = #Valid + #Anomaly + #Burst + #Reuse
//! duplicates   = #ExactDup + #ConflictDup
//! rejects      = #Late + #Malformed(_)       (reason = Label::reject_reason)
//! ```
//!
//! An Anomaly fires the per-transaction detector unless its customer had
//! another Anomaly shortly before (a 50× value in a short history can mask a
//! later 20× one). In the default dataset all 954 fire, and SPEC 7's
//! detector also alerts on 264 of the other 1,964,832 kept transactions
//! (small histories of ±25% amounts).
//!
//! The default dataset (`GenConfig::default()`, seed 42, 4 partitions of
//! 500,000): 1,965,786 transactions, 20,031 duplicates, rejects LATE 4,058,
//! TOO_LARGE 8, and ~1,400–1,500 of each other reason; 954 Anomaly records;
//! no Burst and no Reuse (400 s is too short); accepted event times
//! `start - 5 s ..= start + 399,997 ms`, late ones down to `start - 119 s`;
//! ~490 MB as JSON Lines.
//!
//! Resuming from an offset: [`PartitionGen::skip_records`] advances without
//! writing (~4× faster than generating), keeping the state later records
//! depend on.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand::RngCore;
use rand_pcg::Pcg64Mcg;
use tidemark_dataflow::event::RejectReason;

/// SPEC 3 default `max_out_of_orderness`, which the generator's lateness
/// bookkeeping assumes.
pub const MAX_OUT_OF_ORDERNESS_MS: i64 = 10_000;
/// SPEC 4 default `dedup_horizon`, which the duplicate bookkeeping assumes.
pub const DEDUP_HORIZON_MS: i64 = 600_000;
/// SPEC 2 default `max_record_bytes`.
pub const MAX_RECORD_BYTES: usize = 1_048_576;

/// Jitter (plus up to 999 ms of timestamp truncation) must stay below
/// `MAX_OUT_OF_ORDERNESS_MS` for Valid records never to be late.
const MAX_EFFECTIVE_JITTER_MS: i64 = 8_000;
/// Share of records turned into FAILED burst records inside a burst.
const BURST_SHARE: f64 = 0.3;
/// First burst window (relative window index), and the period in windows.
const BURST_FIRST_WINDOW: i64 = 12;
const BURST_EVERY_WINDOWS: i64 = 35;
/// Burst part of the minute, in ms of base time.
const BURST_FROM_MS: i64 = 20_000;
const BURST_TO_MS: i64 = 40_000;
/// Exact duplicates copy a record from at most this much base time earlier.
const EXACT_DUP_BACK_MS: u64 = 3_000;
/// Conflicting duplicates copy a record from at most this much earlier.
const CONFLICT_MAX_BACK_MS: f64 = 540_000.0;
/// Reuse re-uses the id of the record this much base time earlier.
const REUSE_BACK_MS: u64 = 660_000;

/// Generator parameters. See the module docs for what each share produces.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Total records across all partitions (including dupes, malformed, late).
    pub events: u64,
    pub partitions: u32,
    pub seed: u64,
    /// Event time (base) of the first record, Unix ms.
    pub start_ms: i64,
    /// Event-time rate across all partitions.
    pub events_per_sec: u64,
    pub customers: u64,
    pub merchants: u64,
    pub late_fraction: f64,
    /// Exact + conflicting duplicates (re-used ids beyond the horizon come on
    /// top, at a twentieth of this).
    pub duplicate_fraction: f64,
    /// Spread over every reject reason but TOO_LARGE (which is positional).
    pub malformed_fraction: f64,
    /// Per-transaction amount anomalies; 0 also disables failure bursts.
    pub anomaly_fraction: f64,
    /// Out-of-order jitter (backwards), clamped to 8,000 ms.
    pub max_jitter_ms: i64,
    /// Share of transactions sent to merchant rank 0 on top of the usual
    /// Zipf-like spread, for skew benchmarks. Drawn from its own hash of the
    /// record, so 0 leaves every byte as it was.
    pub hot_merchant_share: f64,
    /// Share of transactions made by customer rank 0 instead of the usual
    /// spread (the hot-key incident), for skew benchmarks; 0 leaves every
    /// byte as it was, like `hot_merchant_share`.
    pub hot_customer_share: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            events: 2_000_000,
            partitions: 4,
            seed: 42,
            start_ms: 1_700_000_000_000,
            events_per_sec: 5_000,
            customers: 10_000,
            merchants: 500,
            late_fraction: 0.002,
            duplicate_fraction: 0.01,
            malformed_fraction: 0.005,
            anomaly_fraction: 0.0005,
            max_jitter_ms: 5_000,
            hot_merchant_share: 0.0,
            hot_customer_share: 0.0,
        }
    }
}

/// One deliberate defect; each maps to exactly one SPEC 2 reject reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// TOO_LARGE: a valid record with a ~1 MiB metadata note.
    TooLarge,
    // --- MALFORMED
    /// The object cut short.
    TruncatedJson,
    /// A UTF-8 byte-order mark before the object.
    Bom,
    /// `"amount":NaN`.
    NanAmount,
    /// `status` twice.
    DuplicateKey,
    /// A zero-length record.
    EmptyLine,
    /// The object inside `[...]`.
    Array,
    /// Bytes 0xFF 0xFE inside the merchant string.
    InvalidUtf8,
    /// `\ud800` inside the merchant string.
    LoneSurrogate,
    // --- MISSING_FIELD
    /// One required field left out.
    AbsentField,
    /// One required field `null`.
    NullField,
    // --- BAD_FIELD
    /// `"transaction_id":""`.
    EmptyTransactionId,
    /// A 129-byte customer_id.
    LongCustomerId,
    /// `metadata` with a number value.
    MetadataNumber,
    /// `merchant` a JSON number.
    MerchantNotString,
    // --- BAD_AMOUNT
    ZeroAmount,
    NegativeAmount,
    /// `1000000`.
    AmountTooLarge,
    /// A nonzero third decimal (`12.345`).
    ThreeDecimals,
    /// `"12.00"` as a string.
    StringAmount,
    // --- BAD_CURRENCY
    /// `usd`, `eur`, `gbp`.
    LowercaseCurrency,
    /// `JPY`.
    UnknownCurrency,
    // --- BAD_STATUS
    /// `completed`, `pending`, `failed`.
    LowercaseStatus,
    /// `DONE`.
    UnknownStatus,
    // --- BAD_TIMESTAMP
    /// `YYYY-02-30T12:00:00Z`.
    February30,
    /// `YYYY-MM-DD hh:mm:ss...`.
    SpaceSeparator,
    /// `+0100` (no colon).
    OffsetWithoutColon,
    /// Seconds `60`.
    LeapSecond,
}

const REASON_FAULTS: [&[Fault]; 7] = [
    &[
        Fault::TruncatedJson,
        Fault::Bom,
        Fault::NanAmount,
        Fault::DuplicateKey,
        Fault::EmptyLine,
        Fault::Array,
        Fault::InvalidUtf8,
        Fault::LoneSurrogate,
    ],
    &[Fault::AbsentField, Fault::NullField],
    &[
        Fault::EmptyTransactionId,
        Fault::LongCustomerId,
        Fault::MetadataNumber,
        Fault::MerchantNotString,
    ],
    &[
        Fault::ZeroAmount,
        Fault::NegativeAmount,
        Fault::AmountTooLarge,
        Fault::ThreeDecimals,
        Fault::StringAmount,
    ],
    &[Fault::LowercaseCurrency, Fault::UnknownCurrency],
    &[Fault::LowercaseStatus, Fault::UnknownStatus],
    &[
        Fault::February30,
        Fault::SpaceSeparator,
        Fault::OffsetWithoutColon,
        Fault::LeapSecond,
    ],
];

impl Fault {
    /// Every fault, TOO_LARGE first.
    pub fn all() -> impl Iterator<Item = Fault> {
        std::iter::once(Fault::TooLarge).chain(REASON_FAULTS.iter().flat_map(|f| f.iter().copied()))
    }

    /// The reject reason the job must give this record.
    pub fn reason(self) -> RejectReason {
        use Fault::*;
        match self {
            TooLarge => RejectReason::TooLarge,
            TruncatedJson | Bom | NanAmount | DuplicateKey | EmptyLine | Array | InvalidUtf8
            | LoneSurrogate => RejectReason::Malformed,
            AbsentField | NullField => RejectReason::MissingField,
            EmptyTransactionId | LongCustomerId | MetadataNumber | MerchantNotString => {
                RejectReason::BadField
            }
            ZeroAmount | NegativeAmount | AmountTooLarge | ThreeDecimals | StringAmount => {
                RejectReason::BadAmount
            }
            LowercaseCurrency | UnknownCurrency => RejectReason::BadCurrency,
            LowercaseStatus | UnknownStatus => RejectReason::BadStatus,
            February30 | SpaceSeparator | OffsetWithoutColon | LeapSecond => {
                RejectReason::BadTimestamp
            }
        }
    }
}

/// What the generator meant a record to be (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    /// A new transaction: kept.
    Valid,
    /// A new transaction of 20–50× the customer's usual amount: kept, and a
    /// per-transaction anomaly.
    Anomaly,
    /// A new FAILED transaction inside a failure burst: kept.
    Burst,
    /// A new transaction re-using an id older than the dedup horizon: kept.
    Reuse,
    /// The same bytes as an earlier Valid record: a duplicate.
    ExactDup,
    /// Same transaction_id as a Valid record ≤ 10 min earlier, different
    /// amount or status: a duplicate.
    ConflictDup,
    /// Well-formed but below the partition's watermark: a `LATE` reject.
    Late,
    /// Rejected for `fault.reason()` (any reason but LATE).
    Malformed(Fault),
}

impl Label {
    /// Becomes a row of `transactions` (or, for an ExactDup whose copy in a
    /// lower partition is this one, swaps roles with its original).
    pub fn is_kept(self) -> bool {
        matches!(
            self,
            Label::Valid | Label::Anomaly | Label::Burst | Label::Reuse
        )
    }
    /// Counted as a duplicate (SPEC 4).
    pub fn is_duplicate(self) -> bool {
        matches!(self, Label::ExactDup | Label::ConflictDup)
    }
    /// Valid and not late: moves the partition's max event time.
    pub fn is_accepted(self) -> bool {
        self.is_kept() || self.is_duplicate()
    }
    /// The reject reason, for records that go to `rejects`.
    pub fn reject_reason(self) -> Option<RejectReason> {
        match self {
            Label::Late => Some(RejectReason::Late),
            Label::Malformed(f) => Some(f.reason()),
            _ => None,
        }
    }
}

/// Number of records of partition `p`.
pub fn partition_len(cfg: &GenConfig, p: u32) -> u64 {
    let parts = cfg.partitions.max(1) as u64;
    cfg.events / parts + u64::from((p as u64) < cfg.events % parts)
}

/// The records of partition `p` of the dataset `cfg`, in order.
/// Deterministic: the same `(cfg, p)` gives the same bytes.
pub fn partition(cfg: &GenConfig, p: u32) -> PartitionGen {
    assert!(
        p < cfg.partitions,
        "partition {p} out of range (partitions = {})",
        cfg.partitions
    );
    PartitionGen {
        ctx: Ctx::new(cfg),
        p,
        len: partition_len(cfg, p),
        next: 0,
        max_ts: None,
        last_event_ms: None,
        last_len: 256,
    }
}

/// Like [`partition`], yielding what the generator meant each record to be.
#[doc(hidden)]
pub fn partition_with_labels(cfg: &GenConfig, p: u32) -> LabeledGen {
    LabeledGen(partition(cfg, p))
}

/// Writes `part-00000.jsonl`, … (one per partition, each record plus `\n`)
/// into `dir`, creating it. Fails if `dir` already holds other
/// `part-*.jsonl` files (their sorted order would no longer be partition
/// order). Returns the paths in partition order.
pub fn write_files(cfg: &GenConfig, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if cfg.partitions == 0 {
        bail!("generator: partitions must be at least 1");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let paths: Vec<PathBuf> = (0..cfg.partitions)
        .map(|p| dir.join(format!("part-{p:05}.jsonl")))
        .collect();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("part-") && name.ends_with(".jsonl") && !paths.contains(&path) {
            bail!(
                "{} already holds {name}, which is not part of this {}-partition dataset",
                dir.display(),
                cfg.partitions
            );
        }
    }
    let mut buf = Vec::with_capacity(1024);
    for (p, path) in paths.iter().enumerate() {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut gen = partition(cfg, p as u32);
        while gen.next_into(&mut buf) {
            buf.push(b'\n');
            out.write_all(&buf)?;
        }
        out.flush()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(paths)
}

/// The records of one partition, in order, as JSON Lines bodies (no newline).
pub struct PartitionGen {
    ctx: Ctx,
    p: u32,
    len: u64,
    next: u64,
    /// SPEC 3 `max_ts` of the partition so far.
    max_ts: Option<i64>,
    last_event_ms: Option<i64>,
    last_len: usize,
}

impl PartitionGen {
    /// Writes the next record into `buf` (cleared first); false at the end.
    pub fn next_into(&mut self, buf: &mut Vec<u8>) -> bool {
        self.next_labeled_into(buf).is_some()
    }

    /// Total records of this partition.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records not yet produced.
    pub fn remaining(&self) -> u64 {
        self.len - self.next
    }

    /// Event time (Unix ms, as the job reads it) of the last record produced,
    /// when it was a well-formed transaction (kept, duplicate or late).
    #[doc(hidden)]
    pub fn last_event_ms(&self) -> Option<i64> {
        self.last_event_ms
    }

    /// Like [`next_into`](Self::next_into), returning the record's [`Label`].
    #[doc(hidden)]
    pub fn next_labeled_into(&mut self, buf: &mut Vec<u8>) -> Option<Label> {
        self.step(Some(buf))
    }

    /// Skips up to `n` records without writing them (a resume from an
    /// offset: the state that later records depend on is still tracked, so
    /// what follows is exactly what `next_into` would have produced).
    /// Returns how many were skipped. Several times faster than generating.
    pub fn skip_records(&mut self, n: u64) -> u64 {
        let n = n.min(self.remaining());
        for _ in 0..n {
            self.step(None);
        }
        n
    }

    /// Advances by one record, writing it into `out` when given.
    fn step(&mut self, out: Option<&mut Vec<u8>>) -> Option<Label> {
        if self.next >= self.len {
            return None;
        }
        let (p, i) = (self.p, self.next);
        self.next += 1;
        let ctx = &self.ctx;
        let max_ts = self.max_ts;
        let g = ctx.global(p, i);
        let base = ctx.base_ms(g);
        let (kind, mut r) = ctx.plan(p, i, base);
        let own = ctx.gen_txn(p, i, base, &mut r);

        let made: Option<(Label, Txn)> = match kind {
            Kind::Valid => None,
            Kind::TooLarge | Kind::Fault(..) => {
                let (fault, arg) = match kind {
                    Kind::Fault(fault, arg) => (fault, arg),
                    _ => (Fault::TooLarge, 0),
                };
                if let Some(buf) = out {
                    ctx.write_txn(&own, Some((fault, arg)), buf);
                }
                self.last_event_ms = None;
                return Some(Label::Malformed(fault));
            }
            Kind::Burst => {
                let mut t = own;
                t.status = FAILED;
                Some((Label::Burst, t))
            }
            Kind::Late => max_ts.map(|m| {
                let mut t = own;
                t.ts.set_time(m - 30_000 - r.below(90_001) as i64);
                (Label::Late, t)
            }),
            Kind::Anomaly => (g >= ctx.anomaly_min_g).then(|| {
                let mut t = own;
                t.customer = r.below(ctx.hot);
                let usual = ctx.usual_cents(t.customer);
                let cents = (usual * (20.0 + 30.0 * r.f64())).round() as i64;
                t.cents = cents.clamp(1, 99_999_999);
                t.status = COMPLETED;
                (Label::Anomaly, t)
            }),
            Kind::ExactDup => ctx
                .exact_dup(g, max_ts, &mut r)
                .map(|t| (Label::ExactDup, t)),
            Kind::ConflictDup => ctx
                .conflict_dup(g, &own, &mut r)
                .map(|t| (Label::ConflictDup, t)),
            Kind::Reuse => ctx.reuse(p, i, &own).map(|t| (Label::Reuse, t)),
        };
        let (label, t) = made.unwrap_or((Label::Valid, own));
        if let Some(buf) = out {
            ctx.write_txn(&t, None, buf);
        }
        let ev = t.ts.event_ms;
        if label.is_accepted() {
            self.max_ts = Some(max_ts.map_or(ev, |m| m.max(ev)));
        }
        self.last_event_ms = Some(ev);
        Some(label)
    }
}

impl Iterator for PartitionGen {
    type Item = Vec<u8>;
    fn next(&mut self) -> Option<Vec<u8>> {
        let mut buf = Vec::with_capacity(self.last_len + 64);
        self.next_into(&mut buf).then(|| {
            self.last_len = buf.len().min(4096);
            buf
        })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining()).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

/// [`PartitionGen`] yielding `(bytes, label)`.
#[doc(hidden)]
pub struct LabeledGen(pub PartitionGen);

impl Iterator for LabeledGen {
    type Item = (Vec<u8>, Label);
    fn next(&mut self) -> Option<(Vec<u8>, Label)> {
        let mut buf = Vec::with_capacity(self.0.last_len + 64);
        let label = self.0.next_labeled_into(&mut buf)?;
        self.0.last_len = buf.len().min(4096);
        Some((buf, label))
    }
}

// ---------------------------------------------------------------------------
// Randomness

/// splitmix64's finaliser: a fixed, well-mixed 64-bit hash.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

struct Rng(Pcg64Mcg);

impl Rng {
    fn for_record(seed_key: u64, p: u32, i: u64) -> Rng {
        let h1 = mix64(mix64(seed_key ^ p as u64) ^ i);
        let h2 = mix64(h1 ^ 0x5851_F42D_4C95_7F2D);
        Rng(Pcg64Mcg::new(((h1 as u128) << 64) | h2 as u128))
    }
    #[inline]
    fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `[0, n)`; `n > 0`.
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((self.u64() as u128 * n as u128) >> 64) as u64
    }
    #[inline]
    fn f64(&mut self) -> f64 {
        unit(self.u64())
    }
}

// ---------------------------------------------------------------------------
// Plan and content

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Valid,
    TooLarge,
    Burst,
    Late,
    Fault(Fault, u8),
    ExactDup,
    ConflictDup,
    Reuse,
    Anomaly,
}

const COMPLETED: u8 = 0;
const PENDING: u8 = 1;
const FAILED: u8 = 2;
const STATUS: [&[u8]; 3] = [b"COMPLETED", b"PENDING", b"FAILED"];
const STATUS_LOWER: [&[u8]; 3] = [b"completed", b"pending", b"failed"];
const CURRENCY: [&[u8]; 3] = [b"USD", b"EUR", b"GBP"];
const CURRENCY_LOWER: [&[u8]; 3] = [b"usd", b"eur", b"gbp"];

pub(crate) const CATEGORIES: [&str; 10] = [
    "grocery",
    "electronics",
    "travel",
    "restaurants",
    "fuel",
    "entertainment",
    "health",
    "clothing",
    "home",
    "digital_goods",
];
/// Merchant name stems (each merchant is `<stem> #NNNN`).
pub const MERCHANT_NAMES: [&str; 16] = [
    "Acme Stores",
    "Globex",
    "Initech",
    "Umbrella Pharmacy",
    "Café Lumière",
    "Bäckerei Müller",
    "東京ラーメン",
    "Joe's \"Diner\"",
    "Northwind Traders",
    "Blue Bottle",
    "Stark Fuel",
    "Wayne Electronics",
    "Soylent Market",
    "Hooli Cloud",
    "Pied Piper",
    "Vandelay Imports",
];
const DEVICES: [&str; 5] = ["ios", "android", "web", "pos", "kiosk"];
/// Raw JSON string literals (with quotes), some escaped.
const LOCATIONS: [&[u8]; 10] = [
    b"\"Berlin\"",
    b"\"London\"",
    b"\"New York\"",
    "\"São Paulo\"".as_bytes(),
    b"\"Z\\u00fcrich\"",
    "\"Zürich\"".as_bytes(),
    b"\"Paris\"",
    b"\"Tokyo\"",
    b"\"Mumbai\"",
    b"\"Lagos\"",
];
/// UTC offsets in minutes; `None` is `Z`. Uniform pick: `Z` ~45%.
const OFFSETS: [Option<i16>; 20] = [
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    Some(0),
    Some(60),
    Some(120),
    Some(120),
    Some(-300),
    Some(-330),
    Some(330),
    Some(345),
    Some(-480),
    Some(540),
    Some(60),
];
const FRACTION_DIGITS: [u8; 20] = [0, 0, 0, 0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 4, 5, 6, 6, 6, 6];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum F {
    Id,
    Customer,
    Amount,
    Currency,
    Merchant,
    Category,
    Status,
    Timestamp,
    Metadata,
}

const REQUIRED: [F; 8] = [
    F::Id,
    F::Customer,
    F::Amount,
    F::Currency,
    F::Merchant,
    F::Category,
    F::Status,
    F::Timestamp,
];
const ORDER_A: [F; 9] = [
    F::Id,
    F::Customer,
    F::Amount,
    F::Currency,
    F::Merchant,
    F::Category,
    F::Status,
    F::Timestamp,
    F::Metadata,
];
const ORDER_B: [F; 9] = [
    F::Timestamp,
    F::Id,
    F::Status,
    F::Amount,
    F::Currency,
    F::Customer,
    F::Merchant,
    F::Category,
    F::Metadata,
];

impl F {
    fn quoted_key(self) -> &'static [u8] {
        match self {
            F::Id => b"\"transaction_id\"",
            F::Customer => b"\"customer_id\"",
            F::Amount => b"\"amount\"",
            F::Currency => b"\"currency\"",
            F::Merchant => b"\"merchant\"",
            F::Category => b"\"category\"",
            F::Status => b"\"status\"",
            F::Timestamp => b"\"timestamp\"",
            F::Metadata => b"\"metadata\"",
        }
    }
    #[cfg(test)]
    fn key(self) -> &'static [u8] {
        match self {
            F::Id => b"transaction_id",
            F::Customer => b"customer_id",
            F::Amount => b"amount",
            F::Currency => b"currency",
            F::Merchant => b"merchant",
            F::Category => b"category",
            F::Status => b"status",
            F::Timestamp => b"timestamp",
            F::Metadata => b"metadata",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Ts {
    /// Event time before truncation to the written precision.
    intended: i64,
    /// Event time as the job reads it.
    event_ms: i64,
    offset: Option<i16>,
    digits: u8,
    /// Sub-millisecond digits, `< 10^(digits-3)`.
    sub: u32,
    lower_t: bool,
    lower_z: bool,
}

impl Ts {
    fn set_time(&mut self, t: i64) {
        self.intended = t;
        self.event_ms = if self.digits >= 3 {
            t
        } else {
            let unit = 10i64.pow(3 - self.digits as u32);
            t - t.rem_euclid(unit)
        };
    }
}

#[derive(Clone, Copy, Debug)]
struct Txn {
    id_p: u32,
    id_k: u64,
    /// Customer rank: `< hot` is a hot customer.
    customer: u64,
    cents: i64,
    amount_form: u8,
    currency: u8,
    merchant: u32,
    status: u8,
    ts: Ts,
    /// 0 absent, 1 null, 2 `{}`, 3 device + location.
    meta: u8,
    device: u8,
    location: u8,
    meta_swap: bool,
    meta_app: bool,
    alt_order: bool,
    spaced: bool,
    /// 0 none, 1 `channel`, 2 `risk_score`.
    extra: u8,
}

struct Ctx {
    seed_key: u64,
    events: u64,
    parts: u64,
    eps: u64,
    start_ms: i64,
    jitter: i64,
    customers: u64,
    hot: u64,
    /// Usual amount of each customer rank, in cents (empty when huge).
    usual: Vec<f64>,
    cust_mul: u64,
    cust_add: u64,
    cust_width: usize,
    /// JSON string literals of the merchants, with quotes.
    merchants: Vec<Vec<u8>>,
    merchant_category: Vec<u8>,
    ln_merchants: f64,
    hot_merchant_share: f64,
    hot_customer_share: f64,
    categories: Vec<Vec<u8>>,
    th_late: f64,
    th_malformed: f64,
    th_exact: f64,
    th_conflict: f64,
    th_reuse: f64,
    th_anomaly: f64,
    bursts: bool,
    first_window: i64,
    anomaly_min_g: u64,
    exact_back_g: u64,
    reuse_back_i: u64,
}

/// The merchant of each rank (rank 0 the most frequent), as the
/// transactions spell it.
pub fn merchant_names(cfg: &GenConfig) -> Vec<String> {
    let seed_key = seed_key(cfg);
    let n_merchants = cfg.merchants.max(1);
    let mwidth = (n_merchants - 1).to_string().len().max(4);
    (0..n_merchants)
        .map(|m| {
            let base = MERCHANT_NAMES[(mix64(seed_key ^ 2 ^ (m << 8)) % 16) as usize];
            format!("{base} #{m:0mwidth$}")
        })
        .collect()
}

pub(crate) fn seed_key(cfg: &GenConfig) -> u64 {
    mix64(cfg.seed ^ 0x7469_6465_6d61_726b) // "tidemark"
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Ctx {
    fn new(cfg: &GenConfig) -> Ctx {
        let seed_key = seed_key(cfg);
        let customers = cfg.customers.max(1);
        let hot = customers.div_ceil(5);
        // A fixed permutation rank -> id: x * a + b mod n, gcd(a, n) = 1.
        let mut cust_mul = ((customers as f64 * 0.618_033_988_7) as u64).max(1);
        while gcd(cust_mul, customers) != 1 {
            cust_mul += 1;
        }
        let cust_add = mix64(seed_key ^ 1) % customers;
        let cust_width = (customers - 1).to_string().len().max(6);
        let n_merchants = cfg.merchants.max(1);
        let merchants = merchant_names(cfg)
            .iter()
            .map(|name| serde_json::to_vec(name).expect("string serializes"))
            .collect();
        let merchant_category = (0..n_merchants)
            .map(|m| (mix64(seed_key ^ 3 ^ (m << 8)) % CATEGORIES.len() as u64) as u8)
            .collect();
        let categories = CATEGORIES
            .iter()
            .map(|c| serde_json::to_vec(c).expect("string serializes"))
            .collect();
        let clamp = |x: f64| {
            if x.is_finite() {
                x.clamp(0.0, 1.0)
            } else {
                0.0
            }
        };
        let th_late = clamp(cfg.late_fraction);
        let th_malformed = clamp(th_late + clamp(cfg.malformed_fraction));
        let dup = clamp(cfg.duplicate_fraction);
        let th_exact = clamp(th_malformed + 0.6 * dup);
        let th_conflict = clamp(th_malformed + dup);
        let th_reuse = clamp(th_conflict + dup / 20.0);
        let th_anomaly = clamp(th_reuse + clamp(cfg.anomaly_fraction));
        let eps = cfg.events_per_sec.max(1);
        let parts = cfg.partitions.max(1) as u64;
        let mut ctx = Ctx {
            seed_key,
            events: cfg.events,
            parts,
            eps,
            start_ms: cfg.start_ms,
            jitter: cfg.max_jitter_ms.clamp(0, MAX_EFFECTIVE_JITTER_MS),
            customers,
            hot,
            usual: Vec::new(),
            cust_mul,
            cust_add,
            cust_width,
            merchants,
            merchant_category,
            ln_merchants: ((n_merchants + 1) as f64).ln(),
            hot_merchant_share: clamp(cfg.hot_merchant_share),
            hot_customer_share: clamp(cfg.hot_customer_share),
            categories,
            th_late,
            th_malformed,
            th_exact,
            th_conflict,
            th_reuse,
            th_anomaly,
            bursts: cfg.anomaly_fraction > 0.0,
            first_window: cfg.start_ms.div_euclid(60_000),
            anomaly_min_g: 38 * hot,
            exact_back_g: (EXACT_DUP_BACK_MS * eps / 1000).max(1),
            reuse_back_i: (REUSE_BACK_MS * eps).div_ceil(1000 * parts) + 1,
        };
        if customers <= 1 << 22 {
            ctx.usual = (0..customers).map(|c| ctx.compute_usual_cents(c)).collect();
        }
        ctx
    }

    fn len_of(&self, q: u32) -> u64 {
        self.events / self.parts + u64::from((q as u64) < self.events % self.parts)
    }

    fn global(&self, q: u32, k: u64) -> u64 {
        k * self.parts + q as u64
    }

    fn base_ms(&self, g: u64) -> i64 {
        let off = match g.checked_mul(1000) {
            Some(x) => x / self.eps,
            None => (g as u128 * 1000 / self.eps as u128) as u64,
        };
        self.start_ms + off as i64
    }

    fn too_large_at(&self, q: u32, k: u64) -> bool {
        let n = self.len_of(q);
        if n < 20_000 {
            return false;
        }
        let count = (n / 200_000).max(1);
        let step = n / count;
        let first = step / 2;
        k >= first && (k - first).is_multiple_of(step) && (k - first) / step < count
    }

    fn burst_at(&self, base: i64) -> bool {
        if !self.bursts {
            return false;
        }
        let rel = base.div_euclid(60_000) - self.first_window;
        let sec = base.rem_euclid(60_000);
        rel >= BURST_FIRST_WINDOW
            && (rel - BURST_FIRST_WINDOW) % BURST_EVERY_WINDOWS == 0
            && (BURST_FROM_MS..BURST_TO_MS).contains(&sec)
    }

    /// What record `(q, k)` is meant to be, and its stream positioned for
    /// [`gen_txn`](Self::gen_txn). A pure function of `(cfg, q, k)`.
    fn plan(&self, q: u32, k: u64, base: i64) -> (Kind, Rng) {
        let mut r = Rng::for_record(self.seed_key, q, k);
        let u_burst = r.f64();
        let u = r.f64();
        let v = r.u64();
        let kind = if self.too_large_at(q, k) {
            Kind::TooLarge
        } else if u_burst < BURST_SHARE && self.burst_at(base) {
            Kind::Burst
        } else if u < self.th_late {
            Kind::Late
        } else if u < self.th_malformed {
            let faults = REASON_FAULTS[(v % 7) as usize];
            let fault = faults[((v >> 8) % faults.len() as u64) as usize];
            Kind::Fault(fault, ((v >> 16) % 8) as u8)
        } else if u < self.th_exact {
            Kind::ExactDup
        } else if u < self.th_conflict {
            Kind::ConflictDup
        } else if u < self.th_reuse {
            Kind::Reuse
        } else if u < self.th_anomaly {
            Kind::Anomaly
        } else {
            Kind::Valid
        };
        (kind, r)
    }

    fn usual_cents(&self, customer: u64) -> f64 {
        match self.usual.get(customer as usize) {
            Some(&c) => c,
            None => self.compute_usual_cents(customer),
        }
    }

    fn compute_usual_cents(&self, customer: u64) -> f64 {
        let u = unit(mix64(self.seed_key ^ 0xC0FF_EE00 ^ mix64(customer)));
        // log-uniform 5.00 .. 800.00
        (500f64.ln() + u * (80_000f64.ln() - 500f64.ln())).exp()
    }

    /// The content of record `(q, k)` as a plain valid new transaction.
    fn gen_txn(&self, q: u32, k: u64, base: i64, r: &mut Rng) -> Txn {
        let customer = if r.f64() < 0.8 {
            r.below(self.hot)
        } else if self.customers > self.hot {
            self.hot + r.below(self.customers - self.hot)
        } else {
            r.below(self.customers)
        };
        // Not from `r`, like the hot merchant.
        let customer = if self.hot_customer_share > 0.0
            && unit(mix64(
                self.seed_key ^ 0x4355_5354 ^ mix64(self.global(q, k)),
            )) < self.hot_customer_share
        {
            0
        } else {
            customer
        };
        let mut cents = (self.usual_cents(customer) * (0.75 + 0.5 * r.f64())).round() as i64;
        if r.below(100) < 15 {
            cents = ((cents + 50) / 100).max(1) * 100;
        }
        let amount_form = match r.below(20) {
            0..=12 => 0,  // 12.50
            13..=16 => 1, // 12.5
            17 => 2,      // 1250e-2
            18 => 3,      // 1250E-2
            _ => 4,       // 12.500
        };
        let currency = match r.below(20) {
            0..=11 => 0,
            12..=16 => 1,
            _ => 2,
        };
        let merchant = {
            let x = (r.f64() * self.ln_merchants).exp() as u64;
            let usual = (x.saturating_sub(1)).min(self.merchants.len() as u64 - 1) as u32;
            // Not from `r`: a share of 0 must leave the record stream as it is.
            let hot = self.hot_merchant_share > 0.0
                && unit(mix64(
                    self.seed_key ^ 0x484f_5421 ^ mix64(self.global(q, k)),
                )) < self.hot_merchant_share;
            if hot {
                0
            } else {
                usual
            }
        };
        let status = match r.below(20) {
            0..=16 => COMPLETED,
            17..=18 => PENDING,
            _ => FAILED,
        };
        let ju = r.f64();
        let jitter = (self.jitter as f64 * ju * ju) as i64;
        let digits = FRACTION_DIGITS[r.below(20) as usize];
        let sub = if digits > 3 {
            r.below(10u64.pow(digits as u32 - 3)) as u32
        } else {
            0
        };
        let mut ts = Ts {
            intended: 0,
            event_ms: 0,
            offset: OFFSETS[r.below(20) as usize],
            digits,
            sub,
            lower_t: r.below(100) == 0,
            lower_z: r.below(100) == 0,
        };
        ts.set_time(base - jitter);
        let meta = match r.below(100) {
            0..=47 => 0,
            48 => 1,
            49 => 2,
            _ => 3,
        };
        let bits = r.u64();
        Txn {
            id_p: q,
            id_k: k,
            customer,
            cents,
            amount_form,
            currency,
            merchant,
            status,
            ts,
            meta,
            device: (bits % DEVICES.len() as u64) as u8,
            location: ((bits >> 8) % LOCATIONS.len() as u64) as u8,
            meta_swap: (bits >> 16).is_multiple_of(7),
            meta_app: (bits >> 24).is_multiple_of(20),
            alt_order: (bits >> 32).is_multiple_of(10),
            spaced: (bits >> 40).is_multiple_of(8),
            extra: match (bits >> 48) % 30 {
                0 => 1,
                1 => 2,
                _ => 0,
            },
        }
    }

    /// The Valid record `(q, k)`, regenerated; None if it was not planned Valid.
    fn original(&self, g: u64) -> Option<Txn> {
        let q = (g % self.parts) as u32;
        let k = g / self.parts;
        if k >= self.len_of(q) {
            return None;
        }
        let base = self.base_ms(g);
        let (kind, mut r) = self.plan(q, k, base);
        (kind == Kind::Valid).then(|| self.gen_txn(q, k, base, &mut r))
    }

    fn exact_dup(&self, g: u64, max_ts: Option<i64>, r: &mut Rng) -> Option<Txn> {
        for _ in 0..4 {
            let d = 1 + r.below(self.exact_back_g);
            let Some(go) = g.checked_sub(d) else { continue };
            let Some(t) = self.original(go) else { continue };
            if max_ts.is_some_and(|m| t.ts.event_ms < m - MAX_OUT_OF_ORDERNESS_MS) {
                continue;
            }
            return Some(t);
        }
        None
    }

    fn conflict_dup(&self, g: u64, own: &Txn, r: &mut Rng) -> Option<Txn> {
        let lo = (self.jitter + 2_000) as f64;
        let mut hi = CONFLICT_MAX_BACK_MS;
        for _ in 0..4 {
            // Log-uniform in [lo, hi]; each retry looks closer back.
            let back_ms = lo * (hi / lo).powf(r.f64());
            hi = (hi / 4.0).max(lo);
            let d = ((back_ms * self.eps as f64 / 1000.0).ceil() as u64).max(1);
            let Some(go) = g.checked_sub(d) else { continue };
            let Some(orig) = self.original(go) else {
                continue;
            };
            let mut t = orig;
            t.ts = own.ts;
            if !(orig.ts.event_ms < t.ts.event_ms
                && t.ts.event_ms <= orig.ts.event_ms + DEDUP_HORIZON_MS)
            {
                continue;
            }
            t.amount_form = own.amount_form;
            t.meta = own.meta;
            if orig.status == PENDING {
                t.status = if r.below(4) == 0 { FAILED } else { COMPLETED };
            } else if r.below(2) == 0 {
                t.status = (orig.status + 1 + r.below(2) as u8) % 3;
            } else {
                let delta = 1 + r.below((orig.cents as u64 / 4).max(1)) as i64;
                t.cents = if r.below(2) == 0 || orig.cents <= delta {
                    orig.cents + delta
                } else {
                    orig.cents - delta
                };
            }
            return Some(t);
        }
        None
    }

    fn reuse(&self, p: u32, i: u64, own: &Txn) -> Option<Txn> {
        let k = i.checked_sub(self.reuse_back_i)?;
        let orig = self.original(self.global(p, k))?;
        let mut t = *own;
        t.id_p = orig.id_p;
        t.id_k = orig.id_k;
        (t.ts.event_ms > orig.ts.event_ms + DEDUP_HORIZON_MS).then_some(t)
    }

    // -----------------------------------------------------------------------
    // Serialisation

    fn write_txn(&self, t: &Txn, fault: Option<(Fault, u8)>, buf: &mut Vec<u8>) {
        buf.clear();
        let (fault, arg) = match fault {
            Some((f, a)) => (Some(f), a),
            None => (None, 0),
        };
        let is = |f: Fault| fault == Some(f);
        if is(Fault::EmptyLine) {
            return;
        }
        if is(Fault::Bom) {
            buf.extend_from_slice(b"\xEF\xBB\xBF");
        }
        if is(Fault::Array) {
            buf.push(b'[');
        }
        buf.push(b'{');
        let target = REQUIRED[arg as usize % REQUIRED.len()];
        let order = if t.alt_order { &ORDER_B } else { &ORDER_A };
        let mut first = true;
        let spaced = t.spaced;
        let key = |buf: &mut Vec<u8>, first: &mut bool, k: &[u8]| {
            if !*first {
                buf.push(b',');
                if spaced {
                    buf.push(b' ');
                }
            }
            *first = false;
            buf.extend_from_slice(k);
            buf.extend_from_slice(if spaced { b": " } else { b":" });
        };
        if t.extra == 1 && !t.alt_order {
            key(buf, &mut first, b"\"channel\"");
            buf.extend_from_slice(b"\"online\"");
        }
        for &f in order {
            if is(Fault::AbsentField) && f == target {
                continue;
            }
            let forced_meta = is(Fault::MetadataNumber) || is(Fault::TooLarge);
            if f == F::Metadata && t.meta == 0 && !forced_meta {
                continue;
            }
            key(buf, &mut first, f.quoted_key());
            if is(Fault::NullField) && f == target {
                buf.extend_from_slice(b"null");
                continue;
            }
            match f {
                F::Id => {
                    if is(Fault::EmptyTransactionId) {
                        buf.extend_from_slice(b"\"\"");
                    } else {
                        buf.extend_from_slice(b"\"t-");
                        push_int(buf, t.id_p as u64);
                        buf.push(b'-');
                        push_int(buf, t.id_k);
                        buf.push(b'"');
                    }
                }
                F::Customer => {
                    buf.push(b'"');
                    let at = buf.len();
                    self.push_customer(buf, t.customer);
                    if is(Fault::LongCustomerId) {
                        buf.resize(at + 129, b'x');
                    }
                    buf.push(b'"');
                }
                F::Amount => match fault {
                    Some(Fault::NanAmount) => buf.extend_from_slice(b"NaN"),
                    Some(Fault::ZeroAmount) => buf.extend_from_slice(b"0"),
                    Some(Fault::NegativeAmount) => {
                        buf.push(b'-');
                        push_amount(buf, t.cents, 0);
                    }
                    Some(Fault::AmountTooLarge) => buf.extend_from_slice(b"1000000"),
                    Some(Fault::ThreeDecimals) => {
                        push_amount(buf, t.cents, 0);
                        buf.push(b'1' + (t.id_k % 9) as u8);
                    }
                    Some(Fault::StringAmount) => {
                        buf.push(b'"');
                        push_amount(buf, t.cents, 0);
                        buf.push(b'"');
                    }
                    _ => push_amount(buf, t.cents, t.amount_form),
                },
                F::Currency => {
                    buf.push(b'"');
                    buf.extend_from_slice(match fault {
                        Some(Fault::LowercaseCurrency) => CURRENCY_LOWER[t.currency as usize],
                        Some(Fault::UnknownCurrency) => b"JPY",
                        _ => CURRENCY[t.currency as usize],
                    });
                    buf.push(b'"');
                }
                F::Merchant => match fault {
                    Some(Fault::MerchantNotString) => push_int(buf, t.merchant as u64),
                    Some(Fault::InvalidUtf8) => buf.extend_from_slice(b"\"Shop \xFF\xFE\""),
                    Some(Fault::LoneSurrogate) => buf.extend_from_slice(b"\"Caf\\ud800 Shop\""),
                    _ => buf.extend_from_slice(&self.merchants[t.merchant as usize]),
                },
                F::Category => buf.extend_from_slice(
                    &self.categories[self.merchant_category[t.merchant as usize] as usize],
                ),
                F::Status => {
                    buf.push(b'"');
                    buf.extend_from_slice(match fault {
                        Some(Fault::LowercaseStatus) => STATUS_LOWER[t.status as usize],
                        Some(Fault::UnknownStatus) => b"DONE",
                        _ => STATUS[t.status as usize],
                    });
                    buf.push(b'"');
                    if is(Fault::DuplicateKey) {
                        key(buf, &mut first, b"\"status\"");
                        buf.push(b'"');
                        buf.extend_from_slice(STATUS[(t.status as usize + 1) % 3]);
                        buf.push(b'"');
                    }
                }
                F::Timestamp => {
                    buf.push(b'"');
                    push_timestamp(buf, &t.ts, fault);
                    buf.push(b'"');
                }
                F::Metadata => self.push_metadata(buf, t, fault),
            }
        }
        if t.extra == 2 || (t.extra == 1 && t.alt_order) {
            key(buf, &mut first, b"\"risk_score\"");
            buf.extend_from_slice(b"0.");
            push_int(buf, 1 + t.id_k % 97);
        }
        buf.push(b'}');
        if is(Fault::Array) {
            buf.push(b']');
        }
        if is(Fault::TruncatedJson) {
            // Cut somewhere after the opening brace, always losing the '}'.
            let cut = 1 + (t.id_k as usize % (buf.len() - 1));
            buf.truncate(cut);
        }
    }

    fn push_customer(&self, buf: &mut Vec<u8>, rank: u64) {
        let id = ((rank as u128 * self.cust_mul as u128 + self.cust_add as u128)
            % self.customers as u128) as u64;
        buf.extend_from_slice(b"cust-");
        let mut b = itoa::Buffer::new();
        let s = b.format(id).as_bytes();
        for _ in s.len()..self.cust_width {
            buf.push(b'0');
        }
        buf.extend_from_slice(s);
    }

    fn push_metadata(&self, buf: &mut Vec<u8>, t: &Txn, fault: Option<Fault>) {
        let device = DEVICES[t.device as usize].as_bytes();
        match fault {
            Some(Fault::MetadataNumber) => {
                buf.extend_from_slice(b"{\"device\":\"");
                buf.extend_from_slice(device);
                buf.extend_from_slice(b"\",\"attempt\":3}");
                return;
            }
            Some(Fault::TooLarge) => {
                buf.extend_from_slice(b"{\"device\":\"");
                buf.extend_from_slice(device);
                buf.extend_from_slice(b"\",\"note\":\"");
                let len = buf.len() + MAX_RECORD_BYTES + (t.id_k % 97) as usize;
                buf.resize(len, b'x');
                buf.extend_from_slice(b"\"}");
                return;
            }
            _ => {}
        }
        match t.meta {
            1 => buf.extend_from_slice(b"null"),
            2 => buf.extend_from_slice(b"{}"),
            _ => {
                let loc = LOCATIONS[t.location as usize];
                buf.push(b'{');
                if t.meta_swap {
                    buf.extend_from_slice(b"\"location\":");
                    buf.extend_from_slice(loc);
                    buf.extend_from_slice(b",\"device\":\"");
                    buf.extend_from_slice(device);
                    buf.push(b'"');
                } else {
                    buf.extend_from_slice(b"\"device\":\"");
                    buf.extend_from_slice(device);
                    buf.extend_from_slice(b"\",\"location\":");
                    buf.extend_from_slice(loc);
                }
                if t.meta_app {
                    buf.extend_from_slice(b",\"app_version\":\"5.");
                    push_int(buf, t.id_k % 13);
                    buf.extend_from_slice(b".0\"");
                }
                buf.push(b'}');
            }
        }
    }
}

#[inline]
fn push_int(buf: &mut Vec<u8>, v: u64) {
    let mut b = itoa::Buffer::new();
    buf.extend_from_slice(b.format(v).as_bytes());
}

#[inline]
fn push2(buf: &mut Vec<u8>, v: u32) {
    buf.push(b'0' + (v / 10) as u8);
    buf.push(b'0' + (v % 10) as u8);
}

/// `cents > 0`; form 0 `12.50`, 1 `12.5`/`7`, 2 `1250e-2`, 3 `1250E-2`,
/// 4 `12.500`.
fn push_amount(buf: &mut Vec<u8>, cents: i64, form: u8) {
    let cents = cents.unsigned_abs();
    let (units, frac) = (cents / 100, (cents % 100) as u32);
    match form {
        1 => {
            push_int(buf, units);
            if frac != 0 {
                buf.push(b'.');
                if frac % 10 == 0 {
                    buf.push(b'0' + (frac / 10) as u8);
                } else {
                    push2(buf, frac);
                }
            }
        }
        2 | 3 => {
            push_int(buf, cents);
            buf.extend_from_slice(if form == 2 { b"e-2" } else { b"E-2" });
        }
        _ => {
            push_int(buf, units);
            buf.push(b'.');
            push2(buf, frac);
            if form == 4 {
                buf.push(b'0');
            }
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A small stack buffer, copied into the record in one go.
struct Small {
    a: [u8; 48],
    n: usize,
}

impl Small {
    #[inline]
    fn push(&mut self, c: u8) {
        self.a[self.n] = c;
        self.n += 1;
    }
    #[inline]
    fn push2(&mut self, v: u32) {
        self.a[self.n] = b'0' + (v / 10) as u8;
        self.a[self.n + 1] = b'0' + (v % 10) as u8;
        self.n += 2;
    }
}

fn push_timestamp(buf: &mut Vec<u8>, ts: &Ts, fault: Option<Fault>) {
    let offset_min = ts.offset.unwrap_or(0) as i64;
    let local = ts.intended + offset_min * 60_000;
    let days = local.div_euclid(86_400_000);
    let in_day = local.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    let y = y.clamp(0, 9999) as u32;
    let mut o = Small { a: [0; 48], n: 0 };
    o.push2(y / 100);
    o.push2(y % 100);
    o.push(b'-');
    if fault == Some(Fault::February30) {
        buf.extend_from_slice(&o.a[..o.n]);
        buf.extend_from_slice(b"02-30T12:00:00Z");
        return;
    }
    o.push2(mo);
    o.push(b'-');
    o.push2(d);
    o.push(match fault {
        Some(Fault::SpaceSeparator) => b' ',
        _ if ts.lower_t => b't',
        _ => b'T',
    });
    let secs = (in_day / 1000) as u32;
    o.push2(secs / 3600);
    o.push(b':');
    o.push2(secs / 60 % 60);
    o.push(b':');
    o.push2(if fault == Some(Fault::LeapSecond) {
        60
    } else {
        secs % 60
    });
    if ts.digits > 0 {
        o.push(b'.');
        let ms = (in_day % 1000) as u32;
        o.push(b'0' + (ms / 100) as u8);
        if ts.digits > 1 {
            o.push(b'0' + (ms / 10 % 10) as u8);
        }
        if ts.digits > 2 {
            o.push(b'0' + (ms % 10) as u8);
        }
        // Sub-millisecond digits, most significant first.
        let extra = ts.digits.saturating_sub(3) as u32;
        for e in (0..extra).rev() {
            o.push(b'0' + (ts.sub / 10u32.pow(e) % 10) as u8);
        }
    }
    let no_colon = fault == Some(Fault::OffsetWithoutColon);
    match ts.offset {
        None if !no_colon => o.push(if ts.lower_z { b'z' } else { b'Z' }),
        _ => {
            o.push(if offset_min < 0 { b'-' } else { b'+' });
            let a = offset_min.unsigned_abs() as u32;
            o.push2(a / 60);
            if !no_colon {
                o.push(b':');
            }
            o.push2(a % 60);
        }
    }
    buf.extend_from_slice(&o.a[..o.n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::{HashMap, HashSet};

    // ---- a reference model of SPEC 1–4, independent of the generator ----

    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// SPEC 2 BAD_TIMESTAMP rules; event time in ms (finer digits truncated).
    fn parse_ts(s: &str) -> Option<i64> {
        let b = s.as_bytes();
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let part = b.get(r)?;
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return None;
            }
            Some(part.iter().fold(0i64, |a, &c| a * 10 + (c - b'0') as i64))
        };
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
            return None;
        }
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let mut i = 19;
        let mut ms = 0;
        if b[i] == b'.' {
            let start = i + 1;
            i = start;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == start {
                return None;
            }
            let mut digits = b[start..i].to_vec();
            digits.resize(3.max(digits.len()), b'0');
            ms = digits[..3]
                .iter()
                .fold(0i64, |a, &c| a * 10 + (c - b'0') as i64);
        }
        let off = match b.get(i)? {
            b'Z' | b'z' if i + 1 == b.len() => 0,
            c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
                let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                if oh > 23 || om > 59 {
                    return None;
                }
                let o = oh * 60 + om;
                if *c == b'-' {
                    -o
                } else {
                    o
                }
            }
            _ => return None,
        };
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let dim = [
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
        ];
        if !(1..=12).contains(&mo) || d < 1 || d > dim[mo as usize - 1] {
            return None;
        }
        if h > 23 || mi > 59 || se > 59 {
            return None;
        }
        let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - off * 60;
        Some(secs * 1000 + ms)
    }

    /// True when some object has a key twice (on text serde_json accepted).
    fn has_duplicate_keys(s: &[u8]) -> bool {
        let mut stack: Vec<Option<HashSet<&[u8]>>> = Vec::new();
        let mut expect_key = false;
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'{' => {
                    stack.push(Some(HashSet::new()));
                    expect_key = true;
                }
                b'[' => {
                    stack.push(None);
                    expect_key = false;
                }
                b'}' | b']' => {
                    stack.pop();
                    expect_key = false;
                }
                b',' => expect_key = matches!(stack.last(), Some(Some(_))),
                b'"' => {
                    let start = i + 1;
                    i += 1;
                    while s[i] != b'"' {
                        if s[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    if expect_key {
                        if let Some(Some(keys)) = stack.last_mut() {
                            if !keys.insert(&s[start..i]) {
                                return true;
                            }
                        }
                        expect_key = false;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        false
    }

    /// Exact cents of a JSON number literal, if it has at most 2 decimals.
    fn literal_cents(lit: &str) -> Option<i128> {
        let (neg, lit) = match lit.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, lit),
        };
        let (mant, exp) = match lit.find(['e', 'E']) {
            Some(at) => (&lit[..at], lit[at + 1..].parse::<i64>().ok()?),
            None => (lit, 0),
        };
        let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
        let digits: String = format!("{int}{frac}");
        let mut v: i128 = digits.parse().ok()?;
        let mut scale = exp - frac.len() as i64 + 2;
        while scale < 0 {
            if v % 10 != 0 {
                return None;
            }
            v /= 10;
            scale += 1;
        }
        while scale > 0 {
            v = v.checked_mul(10)?;
            scale -= 1;
        }
        Some(if neg { -v } else { v })
    }

    #[derive(Debug)]
    struct Parsed {
        id: String,
        customer: String,
        cents: i64,
        status: String,
        event_ms: i64,
    }

    /// SPEC 2 classification, LATE aside.
    fn classify(raw: &[u8]) -> Result<Parsed, RejectReason> {
        use RejectReason::*;
        if raw.len() > MAX_RECORD_BYTES {
            return Err(TooLarge);
        }
        let text = std::str::from_utf8(raw).map_err(|_| Malformed)?;
        if text.starts_with('\u{feff}') {
            return Err(Malformed);
        }
        let v: Value = serde_json::from_str(text).map_err(|_| Malformed)?;
        if has_duplicate_keys(raw) {
            return Err(Malformed);
        }
        let Value::Object(o) = v else {
            return Err(Malformed);
        };
        for f in REQUIRED {
            let k = std::str::from_utf8(f.key()).unwrap();
            if o.get(k).is_none_or(Value::is_null) {
                return Err(MissingField);
            }
        }
        for k in ["transaction_id", "customer_id"] {
            match o[k].as_str() {
                Some(s) if (1..=128).contains(&s.len()) => {}
                _ => return Err(BadField),
            }
        }
        if !o["merchant"].is_string() || !o["category"].is_string() {
            return Err(BadField);
        }
        match o.get("metadata") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.values().all(Value::is_string) => {}
            _ => return Err(BadField),
        }
        if !o["amount"].is_number() {
            return Err(BadAmount);
        }
        let lit_at = text.find("\"amount\":").unwrap() + 9;
        let lit = text[lit_at..].trim_start();
        let end = lit.find([',', '}']).unwrap();
        let cents = literal_cents(lit[..end].trim()).ok_or(BadAmount)?;
        if cents <= 0 || cents >= 100_000_000 {
            return Err(BadAmount);
        }
        if !matches!(o["currency"].as_str(), Some("USD" | "EUR" | "GBP")) {
            return Err(BadCurrency);
        }
        let status = o["status"].as_str().unwrap_or("");
        if !matches!(status, "COMPLETED" | "PENDING" | "FAILED") {
            return Err(BadStatus);
        }
        let event_ms = o["timestamp"]
            .as_str()
            .and_then(parse_ts)
            .ok_or(BadTimestamp)?;
        Ok(Parsed {
            id: o["transaction_id"].as_str().unwrap().to_owned(),
            customer: o["customer_id"].as_str().unwrap().to_owned(),
            cents: cents as i64,
            status: status.to_owned(),
            event_ms,
        })
    }

    struct Record {
        raw: Vec<u8>,
        p: u32,
        offset: u64,
        label: Label,
        outcome: Result<Parsed, RejectReason>,
    }

    /// Generates every partition and runs the reference model of SPEC 2–3 on
    /// it; asserts that each record gets the reason its label promises.
    fn run_reference(cfg: &GenConfig) -> Vec<Record> {
        let mut out = Vec::new();
        for p in 0..cfg.partitions {
            let mut max_ts: Option<i64> = None;
            for (offset, (raw, label)) in partition_with_labels(cfg, p).enumerate() {
                let mut outcome = classify(&raw);
                if let Ok(parsed) = &outcome {
                    let ev = parsed.event_ms;
                    if max_ts.is_some_and(|m| ev < m - MAX_OUT_OF_ORDERNESS_MS) {
                        outcome = Err(RejectReason::Late);
                    } else {
                        max_ts = Some(max_ts.map_or(ev, |m| m.max(ev)));
                    }
                }
                assert_eq!(
                    outcome.as_ref().err().copied(),
                    label.reject_reason(),
                    "partition {p} offset {offset} label {label:?}: {}",
                    String::from_utf8_lossy(&raw[..raw.len().min(400)])
                );
                out.push(Record {
                    raw,
                    p,
                    offset: offset as u64,
                    label,
                    outcome,
                });
            }
        }
        out
    }

    /// SPEC 4 over accepted records: indexes of the kept ones, and the
    /// number of duplicates. Also checks ConflictDup/Reuse individually.
    fn reference_dedup(records: &[Record]) -> (Vec<usize>, u64) {
        let mut acc: Vec<(i64, u32, u64, usize)> = records
            .iter()
            .enumerate()
            .filter_map(|(n, r)| {
                r.outcome
                    .as_ref()
                    .ok()
                    .map(|x| (x.event_ms, r.p, r.offset, n))
            })
            .collect();
        acc.sort();
        let mut anchor: HashMap<&str, i64> = HashMap::new();
        let mut kept = Vec::new();
        let mut dups = 0;
        for &(ev, _, _, n) in &acc {
            let id = records[n].outcome.as_ref().unwrap().id.as_str();
            let is_dup = anchor.get(id).is_some_and(|&a| ev <= a + DEDUP_HORIZON_MS);
            match records[n].label {
                Label::ConflictDup => assert!(is_dup, "ConflictDup {id} kept"),
                Label::Reuse | Label::Anomaly | Label::Burst => {
                    assert!(!is_dup, "{:?} {id} is a duplicate", records[n].label)
                }
                _ => {}
            }
            if is_dup {
                dups += 1;
            } else {
                anchor.insert(id, ev);
                kept.push(n);
            }
        }
        (kept, dups)
    }

    fn count(records: &[Record], f: impl Fn(Label) -> bool) -> u64 {
        records.iter().filter(|r| f(r.label)).count() as u64
    }

    fn small(events: u64, partitions: u32) -> GenConfig {
        GenConfig {
            events,
            partitions,
            ..GenConfig::default()
        }
    }

    #[test]
    fn a_hot_customer_share_concentrates_customers_and_nothing_else() {
        let base = GenConfig {
            events: 20_000,
            ..Default::default()
        };
        let hot = GenConfig {
            hot_customer_share: 0.6,
            ..base.clone()
        };
        let parse = |cfg: &GenConfig| -> Vec<Option<serde_json::Value>> {
            partition(cfg, 0)
                .map(|r| serde_json::from_slice::<serde_json::Value>(&r).ok())
                .collect()
        };
        let (a, b) = (parse(&base), parse(&hot));
        assert_eq!(a.len(), b.len());
        let customer = |v: &serde_json::Value| v["customer_id"].as_str().map(str::to_owned);
        let mut counts = std::collections::HashMap::new();
        for v in b.iter().flatten() {
            *counts.entry(customer(v)).or_insert(0usize) += 1;
        }
        let top = counts.values().max().copied().unwrap_or(0) as f64;
        let frac = top / b.len() as f64;
        assert!((0.57..0.7).contains(&frac), "{frac}");
        // Records stay records of the same kinds: the same ones parse, and
        // ids and timestamps are untouched.
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.is_some(), y.is_some());
            if let (Some(x), Some(y)) = (x, y) {
                assert_eq!(x["transaction_id"], y["transaction_id"]);
                assert_eq!(x["timestamp"], y["timestamp"]);
            }
        }
    }
    #[test]
    fn determinism_and_independence() {
        let cfg = small(30_000, 3);
        let a: Vec<Vec<u8>> = partition(&cfg, 1).collect();
        let b: Vec<Vec<u8>> = partition(&cfg, 1).collect();
        assert_eq!(a, b);
        assert_eq!(a.len() as u64, partition_len(&cfg, 1));

        // Files: byte-equal across runs, and each file equals its partition
        // generated alone (a partition depends only on (cfg, p)).
        let root = std::env::temp_dir().join(format!("tidemark-gen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let one = write_files(&cfg, &root.join("a")).unwrap();
        let two = write_files(&cfg, &root.join("b")).unwrap();
        assert_eq!(one.len(), 3);
        let mut sorted = one.clone();
        sorted.sort();
        assert_eq!(sorted, one);
        for (p, (x, y)) in one.iter().zip(&two).enumerate() {
            let x = std::fs::read(x).unwrap();
            assert_eq!(x, std::fs::read(y).unwrap());
            let mut alone = Vec::new();
            for rec in partition(&cfg, p as u32) {
                alone.extend_from_slice(&rec);
                alone.push(b'\n');
            }
            assert_eq!(x, alone, "partition {p}");
        }
        // Re-writing into a directory with stale extra parts fails.
        assert!(write_files(&small(100, 2), &root.join("a")).is_err());
        std::fs::remove_dir_all(&root).unwrap();

        // next_into, the Iterator and the labelled iterator agree.
        let mut gen = partition(&cfg, 2);
        let mut buf = Vec::new();
        let mut via_into = Vec::new();
        while gen.next_into(&mut buf) {
            via_into.push(buf.clone());
        }
        let labelled: Vec<Vec<u8>> = partition_with_labels(&cfg, 2).map(|(b, _)| b).collect();
        assert_eq!(via_into, partition(&cfg, 2).collect::<Vec<_>>());
        assert_eq!(via_into, labelled);

        // Skipping then generating gives the same tail.
        let mut skipped = partition(&cfg, 2);
        assert_eq!(skipped.skip_records(4_321), 4_321);
        let tail: Vec<Vec<u8>> = skipped.collect();
        assert_eq!(tail, via_into[4_321..]);
        let mut all = partition(&cfg, 2);
        assert_eq!(all.skip_records(u64::MAX), via_into.len() as u64);
        assert_eq!(all.next(), None);

        // Another seed gives other data; lengths split as documented.
        let other = GenConfig {
            seed: 7,
            ..cfg.clone()
        };
        assert_ne!(a, partition(&other, 1).collect::<Vec<_>>());
        let c = small(10, 4);
        let lens: Vec<u64> = (0..4).map(|p| partition_len(&c, p)).collect();
        assert_eq!(lens, [3, 3, 2, 2]);
    }

    #[test]
    fn default_mix_matches_labels_and_spec() {
        let cfg = small(200_000, 4);
        let records = run_reference(&cfg);
        let n = records.len() as u64;
        assert_eq!(n, 200_000);

        // Every reject reason, and every fault, appears.
        let reasons: HashSet<RejectReason> = records
            .iter()
            .filter_map(|r| r.label.reject_reason())
            .collect();
        for reason in RejectReason::ALL {
            assert!(reasons.contains(&reason), "no {reason:?}");
        }
        let faults: HashSet<Fault> = records
            .iter()
            .filter_map(|r| match r.label {
                Label::Malformed(f) => Some(f),
                _ => None,
            })
            .collect();
        for f in Fault::all() {
            assert!(faults.contains(&f), "no {f:?}");
        }
        let too_large = count(&records, |l| l == Label::Malformed(Fault::TooLarge));
        assert_eq!(too_large, 4, "one per 50,000-record partition");

        // serde_json parses exactly the records the JSON-level faults spare
        // (it accepts duplicate keys and arrays).
        for r in &records {
            let parses = matches!(
                serde_json::from_slice::<Value>(&r.raw),
                Ok(Value::Object(_))
            );
            let expect = match r.label {
                Label::Malformed(f) => !matches!(
                    f,
                    Fault::TruncatedJson
                        | Fault::Bom
                        | Fault::NanAmount
                        | Fault::EmptyLine
                        | Fault::Array
                        | Fault::InvalidUtf8
                        | Fault::LoneSurrogate
                ),
                _ => true,
            };
            assert_eq!(parses, expect, "{:?}", r.label);
        }

        // Shares.
        let frac = |f: &dyn Fn(Label) -> bool| count(&records, f) as f64 / n as f64;
        let valid_objects = frac(&|l: Label| l.reject_reason().is_none() || l == Label::Late);
        assert!((0.990..0.999).contains(&valid_objects), "{valid_objects}");
        let kept = frac(&|l: Label| l.is_kept());
        assert!((0.975..0.99).contains(&kept), "kept {kept}");
        let late = frac(&|l| l == Label::Late);
        assert!((0.001..0.003).contains(&late), "late {late}");
        let dup = frac(&|l| l.is_duplicate());
        assert!((0.007..0.012).contains(&dup), "dup {dup}");
        let mal = frac(&|l| matches!(l, Label::Malformed(_)));
        assert!((0.004..0.006).contains(&mal), "malformed {mal}");
        assert!(count(&records, |l| l == Label::ExactDup) > 500);
        assert!(count(&records, |l| l == Label::ConflictDup) > 300);
        assert!(count(&records, |l| l == Label::Anomaly) > 20);

        // Cross-partition exact duplicates exist.
        let mut ids: HashMap<&str, HashSet<u32>> = HashMap::new();
        for r in &records {
            if let Ok(x) = &r.outcome {
                ids.entry(&x.id).or_default().insert(r.p);
            }
        }
        assert!(ids.values().any(|ps| ps.len() > 1));

        // SPEC 4 agrees with the bookkeeping.
        let (kept_idx, dups) = reference_dedup(&records);
        assert_eq!(kept_idx.len() as u64, count(&records, Label::is_kept));
        assert_eq!(dups, count(&records, Label::is_duplicate));

        // Skew: the top 20% customers make 70–90% of kept transactions.
        let mut per_customer: HashMap<&str, u64> = HashMap::new();
        for &k in &kept_idx {
            *per_customer
                .entry(&records[k].outcome.as_ref().unwrap().customer)
                .or_default() += 1;
        }
        let mut counts: Vec<u64> = per_customer.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top: u64 = counts.iter().take((cfg.customers / 5) as usize).sum();
        let share = top as f64 / kept_idx.len() as f64;
        eprintln!(
            "valid objects {valid_objects}, kept {kept}, late {late}, dup {dup}, malformed {mal}, top-20% {share}"
        );
        let mut by_label: HashMap<String, u64> = HashMap::new();
        for r in &records {
            *by_label.entry(format!("{:?}", r.label)).or_default() += 1;
        }
        let mut by_label: Vec<_> = by_label.into_iter().collect();
        by_label.sort();
        eprintln!("{by_label:?}");
        assert!((0.7..0.9).contains(&share), "top-20% share {share}");

        // Event time stays within the documented span.
        let min = records
            .iter()
            .filter(|r| r.label != Label::Late)
            .filter_map(|r| r.outcome.as_ref().ok().map(|x| x.event_ms))
            .min()
            .unwrap();
        let max = records
            .iter()
            .filter_map(|r| r.outcome.as_ref().ok().map(|x| x.event_ms))
            .max()
            .unwrap();
        assert!(min >= cfg.start_ms - 5_000 - 1_000);
        assert!(max < cfg.start_ms + 40_000);
    }

    /// Exact z of `x` against history sums, as docs/outputs.md computes it.
    fn z_of(n: i128, s: i128, q: i128, x: i128) -> Option<f64> {
        let var = n * q - s * s;
        (var > 0).then(|| (n * x - s) as f64 / (var as f64).sqrt())
    }

    /// Runs SPEC 7's per-transaction detector (defaults) over the kept
    /// records: (anomalies, anomalies that fire, other alerts, others).
    fn txn_z_stats(records: &[Record], kept_idx: &[usize]) -> (u32, u32, u32, u32) {
        let mut kept: Vec<(&str, i64, &str, i64, Label)> = kept_idx
            .iter()
            .map(|&k| {
                let x = records[k].outcome.as_ref().unwrap();
                (
                    x.customer.as_str(),
                    x.event_ms,
                    x.id.as_str(),
                    x.cents,
                    records[k].label,
                )
            })
            .collect();
        kept.sort();
        let mut hist: HashMap<&str, (i128, i128, i128)> = HashMap::new();
        let (mut anomalies, mut fired, mut false_pos, mut normal) = (0, 0, 0, 0);
        for &(c, _, _, cents, label) in &kept {
            let (n, s, q) = hist.entry(c).or_default();
            let z = if *n >= 10 {
                z_of(*n, *s, *q, cents as i128)
            } else {
                None
            };
            let alert = z.is_some_and(|z| z.abs() >= 3.0);
            if label == Label::Anomaly {
                anomalies += 1;
                fired += alert as u32;
            } else {
                normal += 1;
                false_pos += alert as u32;
            }
            *n += 1;
            *s += cents as i128;
            *q += (cents as i128) * (cents as i128);
        }
        (anomalies, fired, false_pos, normal)
    }

    #[test]
    fn long_run_has_reuse_bursts_and_anomalies_that_fire() {
        // 200,000 records at 200/s: 1,000 s of event time.
        let cfg = GenConfig {
            events: 200_000,
            partitions: 2,
            events_per_sec: 200,
            customers: 2_000,
            ..GenConfig::default()
        };
        let records = run_reference(&cfg);
        let (kept_idx, dups) = reference_dedup(&records);
        assert_eq!(kept_idx.len() as u64, count(&records, Label::is_kept));
        assert_eq!(dups, count(&records, Label::is_duplicate));
        assert!(count(&records, |l| l == Label::Reuse) > 10);
        assert!(count(&records, |l| l == Label::Burst) > 100);
        assert_eq!(
            count(&records, |l| l == Label::Malformed(Fault::TooLarge)),
            2
        );

        let (anomalies, fired, false_pos, normal) = txn_z_stats(&records, &kept_idx);
        eprintln!("anomalies {anomalies}, fired {fired}, false alerts {false_pos} of {normal}");
        assert!(anomalies > 20);
        assert_eq!(fired, anomalies, "every Anomaly fires");
        assert!(
            (false_pos as f64) < 0.002 * normal as f64,
            "{false_pos} of {normal}"
        );

        // Window z-score (SPEC 7) of FAILED txn_count on status_1m fires in
        // the burst window (relative window 12).
        let mut failed: HashMap<i64, i128> = HashMap::new();
        for &k in &kept_idx {
            let x = records[k].outcome.as_ref().unwrap();
            if x.status == "FAILED" {
                *failed.entry(x.event_ms.div_euclid(60_000)).or_default() += 1;
            }
        }
        let first = cfg.start_ms.div_euclid(60_000);
        let burst = first + BURST_FIRST_WINDOW;
        let history: Vec<i128> = (first..burst)
            .filter_map(|w| failed.get(&w).copied())
            .collect();
        assert!(history.len() >= 10);
        let (n, s, q) = history
            .iter()
            .fold((0, 0, 0), |(n, s, q), &v| (n + 1, s + v, q + v * v));
        let z = z_of(n, s, q, failed[&burst]).unwrap();
        eprintln!(
            "burst window FAILED count {} vs history {history:?}: z {z}",
            failed[&burst]
        );
        assert!(z >= 3.0, "burst z {z}");
    }

    #[test]
    fn tiny_and_odd_configs() {
        // No panics, right lengths, no TOO_LARGE below 20,000 records.
        for (events, parts) in [(0, 1), (1, 1), (5, 8), (1_000, 3)] {
            let cfg = small(events, parts);
            let total: u64 = (0..parts)
                .map(|p| {
                    partition_with_labels(&cfg, p)
                        .inspect(|(raw, label)| {
                            assert!(raw.len() < MAX_RECORD_BYTES);
                            assert_ne!(*label, Label::Malformed(Fault::TooLarge));
                        })
                        .count() as u64
                })
                .sum();
            assert_eq!(total, events);
        }
        let cfg = GenConfig {
            events: 5_000,
            partitions: 1,
            customers: 1,
            merchants: 1,
            events_per_sec: 1,
            max_jitter_ms: 60_000,
            late_fraction: 0.1,
            duplicate_fraction: 0.2,
            malformed_fraction: 0.1,
            anomaly_fraction: 0.05,
            ..GenConfig::default()
        };
        let records = run_reference(&cfg);
        let (kept, dups) = reference_dedup(&records);
        assert_eq!(kept.len() as u64, count(&records, Label::is_kept));
        assert_eq!(dups, count(&records, Label::is_duplicate));
    }

    #[test]
    fn amounts_and_timestamps_are_exact() {
        for (cents, form, text) in [
            (1250, 0, "12.50"),
            (1250, 1, "12.5"),
            (700, 1, "7"),
            (1203, 1, "12.03"),
            (1250, 2, "1250e-2"),
            (1250, 3, "1250E-2"),
            (1250, 4, "12.500"),
            (7, 0, "0.07"),
        ] {
            let mut buf = Vec::new();
            push_amount(&mut buf, cents, form);
            assert_eq!(std::str::from_utf8(&buf).unwrap(), text);
            assert_eq!(literal_cents(text), Some(cents as i128));
        }
        let mut ts = Ts {
            intended: 0,
            event_ms: 0,
            offset: Some(-330),
            digits: 5,
            sub: 7,
            lower_t: false,
            lower_z: false,
        };
        ts.set_time(1_700_000_000_123);
        let mut buf = Vec::new();
        push_timestamp(&mut buf, &ts, None);
        let s = String::from_utf8(buf).unwrap();
        assert_eq!(s, "2023-11-14T16:43:20.12307-05:30");
        assert_eq!(parse_ts(&s), Some(1_700_000_000_123));
        ts.digits = 1;
        ts.offset = None;
        ts.set_time(1_700_000_000_123);
        assert_eq!(ts.event_ms, 1_700_000_000_100);
        let mut buf = Vec::new();
        push_timestamp(&mut buf, &ts, None);
        assert_eq!(std::str::from_utf8(&buf).unwrap(), "2023-11-14T22:13:20.1Z");
        // A leap day and the turn of a year.
        for t in [951_782_400_000i64, 946_684_799_999, 1_709_164_800_000] {
            let days = t.div_euclid(86_400_000);
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m as i64, d as i64), days);
        }
    }

    /// The job's own validator (tidemark-dataflow's `parse_record`) gives
    /// every record the reason its label promises, and the event time the
    /// generator meant.
    #[test]
    fn job_validator_agrees_with_labels() {
        use tidemark_dataflow::record::parse_record;
        let cfg = small(60_000, 3);
        for p in 0..cfg.partitions {
            let mut gen = partition(&cfg, p);
            let mut buf = Vec::new();
            let mut offset = 0;
            while let Some(label) = gen.next_labeled_into(&mut buf) {
                let got = parse_record(&buf, MAX_RECORD_BYTES, p, offset);
                let expect = label.reject_reason().filter(|r| *r != RejectReason::Late);
                assert_eq!(
                    got.as_ref().err().copied(),
                    expect,
                    "partition {p} offset {offset} {label:?}: {}",
                    String::from_utf8_lossy(&buf[..buf.len().min(400)])
                );
                if let Ok(txn) = got {
                    assert_eq!(Some(txn.event_time), gen.last_event_ms());
                }
                offset += 1;
            }
        }
    }
}
