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
//!
//! # Files
//!
//! - this file: the public API ([`GenConfig`], [`partition`],
//!   [`write_files`], [`PartitionGen`], [`Label`]) and the per-record
//!   random streams;
//! - `transactions.rs`: the event stream, the content of each new
//!   transaction (customers, amounts, merchants, timestamps);
//! - `faults.rs`: which record becomes a malformed, late, duplicate,
//!   re-used, burst or anomalous one ([`Fault`]);
//! - `json.rs`: a transaction as JSON bytes, with each fault's defect;
//! - `merchants.rs`: merchant names and the merchants reference table
//!   ([`merchants::merchant_rows`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rand::RngCore;
use rand_pcg::Pcg64Mcg;
use tidemark_dataflow::event::RejectReason;

mod faults;
mod json;
pub mod merchants;
#[cfg(test)]
mod tests;
mod transactions;

pub use faults::Fault;
pub use merchants::{merchant_names, MERCHANT_NAMES};

pub(crate) use json::civil_from_days;
pub(crate) use transactions::CATEGORIES;

use faults::Kind;
use transactions::{Ctx, Txn, COMPLETED, FAILED};

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

pub(crate) fn seed_key(cfg: &GenConfig) -> u64 {
    mix64(cfg.seed ^ 0x7469_6465_6d61_726b) // "tidemark"
}
