//! Serialisation: a transaction as the bytes of one JSON Lines record
//! (field order, spacing, number and timestamp forms), with the defect of
//! a [`Fault`] when the record is a malformed one.

use super::transactions::*;
use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum F {
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

pub(super) const REQUIRED: [F; 8] = [
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
    pub(super) fn key(self) -> &'static [u8] {
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

impl Ctx {
    /// Writes `t` into `buf` (cleared first), with `fault`'s defect (and
    /// its argument, e.g. which required field) when given.
    pub(super) fn write_txn(&self, t: &Txn, fault: Option<(Fault, u8)>, buf: &mut Vec<u8>) {
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
        let mut w = Fields {
            buf,
            first: true,
            spaced: t.spaced,
        };
        self.write_fields(&mut w, t, fault, REQUIRED[arg as usize % REQUIRED.len()]);
        let buf = w.buf;
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

    /// The fields in `t`'s order, with the extra ones; `target` is the
    /// required field an AbsentField or NullField fault leaves out or
    /// nulls.
    fn write_fields(&self, w: &mut Fields, t: &Txn, fault: Option<Fault>, target: F) {
        let is = |f: Fault| fault == Some(f);
        let order = if t.alt_order { &ORDER_B } else { &ORDER_A };
        if t.extra == 1 && !t.alt_order {
            w.key(b"\"channel\"");
            w.buf.extend_from_slice(b"\"online\"");
        }
        for &f in order {
            if is(Fault::AbsentField) && f == target {
                continue;
            }
            let forced_meta = is(Fault::MetadataNumber) || is(Fault::TooLarge);
            if f == F::Metadata && t.meta == 0 && !forced_meta {
                continue;
            }
            w.key(f.quoted_key());
            if is(Fault::NullField) && f == target {
                w.buf.extend_from_slice(b"null");
                continue;
            }
            self.write_value(w, f, t, fault);
        }
        if t.extra == 2 || (t.extra == 1 && t.alt_order) {
            w.key(b"\"risk_score\"");
            w.buf.extend_from_slice(b"0.");
            push_int(w.buf, 1 + t.id_k % 97);
        }
    }

    /// The value of field `f` (its key is written).
    fn write_value(&self, w: &mut Fields, f: F, t: &Txn, fault: Option<Fault>) {
        let buf = &mut *w.buf;
        match f {
            F::Id => push_id(buf, t, fault),
            F::Customer => {
                buf.push(b'"');
                let at = buf.len();
                self.push_customer(buf, t.customer);
                if fault == Some(Fault::LongCustomerId) {
                    buf.resize(at + 129, b'x');
                }
                buf.push(b'"');
            }
            F::Amount => push_amount_field(buf, t, fault),
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
                if fault == Some(Fault::DuplicateKey) {
                    w.key(b"\"status\"");
                    w.buf.push(b'"');
                    w.buf.extend_from_slice(STATUS[(t.status as usize + 1) % 3]);
                    w.buf.push(b'"');
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

/// The record being written: commas between fields and the spacing of
/// keys.
struct Fields<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
    spaced: bool,
}

impl Fields<'_> {
    fn key(&mut self, k: &[u8]) {
        if !self.first {
            self.buf.push(b',');
            if self.spaced {
                self.buf.push(b' ');
            }
        }
        self.first = false;
        self.buf.extend_from_slice(k);
        self.buf
            .extend_from_slice(if self.spaced { b": " } else { b":" });
    }
}

fn push_id(buf: &mut Vec<u8>, t: &Txn, fault: Option<Fault>) {
    if fault == Some(Fault::EmptyTransactionId) {
        buf.extend_from_slice(b"\"\"");
    } else {
        buf.extend_from_slice(b"\"t-");
        push_int(buf, t.id_p as u64);
        buf.push(b'-');
        push_int(buf, t.id_k);
        buf.push(b'"');
    }
}

fn push_amount_field(buf: &mut Vec<u8>, t: &Txn, fault: Option<Fault>) {
    match fault {
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
pub(super) fn push_amount(buf: &mut Vec<u8>, cents: i64, form: u8) {
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

pub(super) fn push_timestamp(buf: &mut Vec<u8>, ts: &Ts, fault: Option<Fault>) {
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
