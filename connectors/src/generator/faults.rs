//! Which records become defects, and how: the plan of each record (late,
//! malformed, duplicate, re-used id, failure burst, anomaly, TOO_LARGE)
//! and the duplicates and re-uses derived from earlier records. How a
//! [`Fault`] is spelled in the bytes is in `json.rs`.

use tidemark_dataflow::event::RejectReason;

use super::transactions::{Ctx, Txn, COMPLETED, FAILED, PENDING};
use super::*;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
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

impl Ctx {
    pub(super) fn too_large_at(&self, q: u32, k: u64) -> bool {
        let n = self.len_of(q);
        if n < 20_000 {
            return false;
        }
        let count = (n / 200_000).max(1);
        let step = n / count;
        let first = step / 2;
        k >= first && (k - first).is_multiple_of(step) && (k - first) / step < count
    }

    pub(super) fn burst_at(&self, base: i64) -> bool {
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
    pub(super) fn plan(&self, q: u32, k: u64, base: i64) -> (Kind, Rng) {
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

    /// The Valid record `(q, k)`, regenerated; None if it was not planned Valid.
    pub(super) fn original(&self, g: u64) -> Option<Txn> {
        let q = (g % self.parts) as u32;
        let k = g / self.parts;
        if k >= self.len_of(q) {
            return None;
        }
        let base = self.base_ms(g);
        let (kind, mut r) = self.plan(q, k, base);
        (kind == Kind::Valid).then(|| self.gen_txn(q, k, base, &mut r))
    }

    pub(super) fn exact_dup(&self, g: u64, max_ts: Option<i64>, r: &mut Rng) -> Option<Txn> {
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

    pub(super) fn conflict_dup(&self, g: u64, own: &Txn, r: &mut Rng) -> Option<Txn> {
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

    pub(super) fn reuse(&self, p: u32, i: u64, own: &Txn) -> Option<Txn> {
        let k = i.checked_sub(self.reuse_back_i)?;
        let orig = self.original(self.global(p, k))?;
        let mut t = *own;
        t.id_p = orig.id_p;
        t.id_k = orig.id_k;
        (t.ts.event_ms > orig.ts.event_ms + DEDUP_HORIZON_MS).then_some(t)
    }
}
