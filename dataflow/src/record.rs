//! Record validation (SPEC 1 and 2): one input record's bytes in, a [`Txn`]
//! or the first failing [`RejectReason`] out.
//!
//! This is the hot path of the job, so it carries its own strict JSON scanner
//! instead of building a `serde_json::Value`: one pass over the bytes, no
//! allocation for unescaped strings (they are borrowed from the input), and
//! string contents skipped eight bytes at a time.
//!
//! What the scanner enforces (all of it is `MALFORMED`): exactly one JSON
//! object, optionally surrounded by JSON whitespace (space, tab, LF, CR);
//! RFC 8259 grammar (no leading zeros, `+1`, `.5`, `1.`, NaN/Infinity, trailing
//! commas, unescaped control characters in strings, bad escapes); valid UTF-8
//! throughout (so a BOM, which is not JSON whitespace, is rejected too);
//! no lone surrogate escapes; no duplicate key (compared after unescaping) in
//! any object at any depth; nesting at most [`MAX_DEPTH`] containers deep,
//! counting the record's own object as depth 1.
//!
//! Then the field rules are checked in SPEC order over the whole record:
//! every `MISSING_FIELD` condition before any `BAD_FIELD` one, and so on.
//! `LATE` is decided downstream, by the partition's watermark.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::event::{Currency, MerchantRow, Millis, RejectReason, RiskTier, Status, Txn, TxnText};
use crate::rfc3339::parse_rfc3339_ms;

/// Deepest container nesting accepted; the record's object is depth 1.
pub const MAX_DEPTH: usize = 128;

/// Byte length bounds of `transaction_id` and `customer_id` (after unescaping).
pub const MAX_ID_BYTES: usize = 128;

/// Exclusive upper bound of an amount, in cents (1,000,000.00).
pub const MAX_AMOUNT_CENTS: i64 = 100_000_000;

/// Objects with more keys than this switch duplicate detection from a
/// linear scan to a hash set, so adversarial wide objects stay linear.
const DUP_LINEAR_MAX: usize = 16;

/// Validates one record (SPEC 2, every rule but `LATE`) and builds its
/// [`Txn`]. `partition` and `offset` are carried into the result.
pub fn parse_record(
    bytes: &[u8],
    max_record_bytes: usize,
    partition: u32,
    offset: u64,
) -> Result<Txn, RejectReason> {
    if bytes.len() > max_record_bytes {
        return Err(RejectReason::TooLarge);
    }
    let src = std::str::from_utf8(bytes).map_err(|_| RejectReason::Malformed)?;
    let mut parser = Parser {
        src,
        b: bytes,
        pos: 0,
        keys: Vec::new(),
    };
    let fields = parser
        .record(required_slot, true)
        .map_err(|_| RejectReason::Malformed)?;
    fields.validate(partition, offset)
}

const MR_MERCHANT: usize = 0;
const MR_VALID_FROM: usize = 1;
const MR_CATEGORY: usize = 2;
const MR_RISK_TIER: usize = 3;
const MR_COUNTRY: usize = 4;

fn merchant_slot(key: &str) -> Option<usize> {
    Some(match key {
        "merchant" => MR_MERCHANT,
        "valid_from" => MR_VALID_FROM,
        "merchant_category" => MR_CATEGORY,
        "risk_tier" => MR_RISK_TIER,
        "country" => MR_COUNTRY,
        _ => return None,
    })
}

/// Validates one row of the merchants reference table (SPEC 9) with the
/// reason codes of SPEC 2 that apply, in their order: `TOO_LARGE`,
/// `MALFORMED`, `MISSING_FIELD` (any of the five absent or null),
/// `BAD_FIELD` (a text field not a string, a risk tier not exactly `LOW`,
/// `MEDIUM` or `HIGH`), `BAD_TIMESTAMP` (`valid_from`). Other keys are
/// ignored, `metadata` included.
pub fn parse_merchant_row(
    bytes: &[u8],
    max_record_bytes: usize,
) -> Result<MerchantRow, RejectReason> {
    if bytes.len() > max_record_bytes {
        return Err(RejectReason::TooLarge);
    }
    let src = std::str::from_utf8(bytes).map_err(|_| RejectReason::Malformed)?;
    let mut parser = Parser {
        src,
        b: bytes,
        pos: 0,
        keys: Vec::new(),
    };
    let fields = parser
        .record(merchant_slot, false)
        .map_err(|_| RejectReason::Malformed)?;
    let f = &fields.required[..=MR_COUNTRY];
    if f.iter().any(|v| matches!(v, Field::Absent | Field::Null)) {
        return Err(RejectReason::MissingField);
    }
    let text = |k: usize| match &f[k] {
        Field::Str(s) => Ok(s.to_string()),
        _ => Err(RejectReason::BadField),
    };
    let merchant = text(MR_MERCHANT)?;
    let merchant_category = text(MR_CATEGORY)?;
    let country = text(MR_COUNTRY)?;
    let risk_tier = match &f[MR_RISK_TIER] {
        Field::Str(s) => RiskTier::parse(s),
        _ => None,
    }
    .ok_or(RejectReason::BadField)?;
    let valid_from = match &f[MR_VALID_FROM] {
        Field::Str(s) => parse_rfc3339_ms(s),
        _ => None,
    }
    .ok_or(RejectReason::BadTimestamp)?;
    Ok(MerchantRow {
        merchant,
        valid_from,
        merchant_category,
        risk_tier,
        country,
    })
}

/// The exact value of a JSON number literal in whole cents, when it is an
/// amount SPEC 1 accepts: `0 < amount < 1,000,000` with no nonzero digit
/// below the cent. Decided on the literal's digits alone, so exponents of
/// any size neither overflow nor lose precision (`1250e-2` is 1250 cents,
/// `1.005`, `1e6` and `1e-400` are `None`). `None` as well for text that is
/// not a JSON number.
pub fn amount_cents_from_literal(lit: &str) -> Option<i64> {
    let b = lit.as_bytes();
    // A leading `-` (negative, or -0) is never above zero; it also fails the
    // integer-part check below.
    let mut i = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int = &b[..i];
    if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
        return None;
    }
    let mut frac: &[u8] = &[];
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac = &b[s..i];
        if frac.is_empty() {
            return None;
        }
    }
    // Saturate the exponent far beyond anything that could matter: a record
    // is at most a few MB, so no significand reaches 10^12 digits.
    const EXP_CAP: i64 = 1_000_000_000_000;
    let mut exp: i64 = 0;
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        let neg = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            exp = (exp * 10 + i64::from(b[i] - b'0')).min(EXP_CAP);
            i += 1;
        }
        if i == s {
            return None;
        }
        if neg {
            exp = -exp;
        }
    }
    if i != b.len() {
        return None;
    }

    // value = digits(int ++ frac) × 10^(exp − |frac|)
    let n = int.len() + frac.len();
    let digit = |k: usize| -> u8 {
        if k < int.len() {
            int[k] - b'0'
        } else {
            frac[k - int.len()] - b'0'
        }
    };
    let first = (0..n).find(|&k| digit(k) != 0)?; // None: the value is zero
    let last = (0..n).rev().find(|&k| digit(k) != 0)?;
    // value = D × 10^e where D = digits first..=last has no trailing zero.
    let sig_len = (last - first + 1) as i64;
    let e = exp - frac.len() as i64 + (n - 1 - last) as i64;
    let cents_exp = e + 2;
    // D has no trailing zero, so D × 10^cents_exp is whole iff cents_exp ≥ 0,
    // and it is below 10^8 cents iff it has at most 8 digits.
    if cents_exp < 0 || sig_len + cents_exp > 8 {
        return None;
    }
    let mut cents: i64 = 0;
    for k in first..=last {
        cents = cents * 10 + i64::from(digit(k));
    }
    for _ in 0..cents_exp {
        cents *= 10;
    }
    debug_assert!(cents > 0 && cents < MAX_AMOUNT_CENTS);
    Some(cents)
}

/// Writes `s` as a JSON string exactly as `serde_json::to_string(s)` does:
/// `"` and `\` escaped, control characters as `\b \t \n \f \r` or `\u00xx`
/// (lowercase hex), everything else (DEL and non-ASCII included) verbatim.
fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let b = s.as_bytes();
    if !b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut run = 0;
    for (i, &c) in b.iter().enumerate() {
        let short = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `i` is an ASCII byte, so both slices end on char boundaries.
        out.push_str(&s[run..i]);
        run = i + 1;
        if short.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[usize::from(c >> 4)] as char);
            out.push(HEX[usize::from(c & 0xf)] as char);
        } else {
            out.push_str(short);
        }
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// The scanner's only error: the record is not one valid JSON object.
struct SyntaxError;

type PResult<T> = Result<T, SyntaxError>;

/// What a top-level field held, as far as validation needs to know.
enum Field<'a> {
    Absent,
    Null,
    Str(Cow<'a, str>),
    /// A number literal, exactly as written (already checked against the
    /// JSON grammar).
    Num(&'a str),
    /// `true`, `false`, an object or an array.
    Other,
}

enum Meta<'a> {
    /// Absent, or `null`.
    None,
    /// An object whose values are all strings, sorted by key (bytewise).
    Strings(Vec<(Cow<'a, str>, Cow<'a, str>)>),
    /// Anything else: not an object, or an object with a non-string value.
    Bad,
}

const TRANSACTION_ID: usize = 0;
const CUSTOMER_ID: usize = 1;
const AMOUNT: usize = 2;
const CURRENCY: usize = 3;
const MERCHANT: usize = 4;
const CATEGORY: usize = 5;
const STATUS: usize = 6;
const TIMESTAMP: usize = 7;
const N_REQUIRED: usize = 8;

fn required_slot(key: &str) -> Option<usize> {
    Some(match key {
        "transaction_id" => TRANSACTION_ID,
        "customer_id" => CUSTOMER_ID,
        "amount" => AMOUNT,
        "currency" => CURRENCY,
        "merchant" => MERCHANT,
        "category" => CATEGORY,
        "status" => STATUS,
        "timestamp" => TIMESTAMP,
        _ => return None,
    })
}

/// The fields of a syntactically valid record.
struct Fields<'a> {
    required: [Field<'a>; N_REQUIRED],
    metadata: Meta<'a>,
}

impl Fields<'_> {
    /// SPEC 2's field rules, in its precedence order.
    fn validate(self, partition: u32, offset: u64) -> Result<Txn, RejectReason> {
        let f = &self.required;

        if f.iter().any(|v| matches!(v, Field::Absent | Field::Null)) {
            return Err(RejectReason::MissingField);
        }

        let id = |v: &'_ Field<'_>| match v {
            Field::Str(s) if (1..=MAX_ID_BYTES).contains(&s.len()) => Ok(()),
            _ => Err(RejectReason::BadField),
        };
        id(&f[TRANSACTION_ID])?;
        id(&f[CUSTOMER_ID])?;
        for k in [MERCHANT, CATEGORY] {
            if !matches!(f[k], Field::Str(_)) {
                return Err(RejectReason::BadField);
            }
        }
        if matches!(self.metadata, Meta::Bad) {
            return Err(RejectReason::BadField);
        }

        let amount_cents = match f[AMOUNT] {
            Field::Num(lit) => amount_cents_from_literal(lit),
            _ => None,
        }
        .ok_or(RejectReason::BadAmount)?;

        let currency = match &f[CURRENCY] {
            Field::Str(s) => Currency::parse(s),
            _ => None,
        }
        .ok_or(RejectReason::BadCurrency)?;

        let status = match &f[STATUS] {
            Field::Str(s) => Status::parse(s),
            _ => None,
        }
        .ok_or(RejectReason::BadStatus)?;

        let (timestamp, event_time): (&str, Millis) = match &f[TIMESTAMP] {
            Field::Str(s) => (&**s, parse_rfc3339_ms(s).ok_or(RejectReason::BadTimestamp)?),
            _ => return Err(RejectReason::BadTimestamp),
        };

        let metadata = match self.metadata {
            Meta::Strings(entries) => {
                let len: usize = entries.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
                let mut out = String::with_capacity(len + 2);
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_json_str(&mut out, k);
                    out.push(':');
                    push_json_str(&mut out, v);
                }
                out.push('}');
                out
            }
            _ => String::new(),
        };

        let s = |k: usize| match &f[k] {
            Field::Str(s) => &**s,
            _ => unreachable!("checked above"),
        };
        Ok(Txn::new(
            event_time,
            amount_cents,
            currency,
            status,
            TxnText {
                transaction_id: s(TRANSACTION_ID),
                customer_id: s(CUSTOMER_ID),
                merchant: s(MERCHANT),
                category: s(CATEGORY),
                timestamp,
                metadata: &metadata,
            },
            partition,
            offset,
        ))
    }
}

/// Duplicate-key detection for one object being scanned: its keys so far
/// are `Parser::keys[base..]`, or, once the object grows wide, a hash set.
struct KeyFrame<'a> {
    base: usize,
    set: Option<HashSet<Cow<'a, str>>>,
}

struct Parser<'a> {
    /// The whole record, already checked to be UTF-8.
    src: &'a str,
    b: &'a [u8],
    pos: usize,
    /// Keys of the objects currently open (a stack of [`KeyFrame`]s).
    keys: Vec<Cow<'a, str>>,
}

/// Bytes that end a run of plain string content: `"`, `\` and controls.
#[inline]
fn special_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    // The lowest flagged byte of each test is exact (borrows only propagate
    // upward, past a true hit), hence so is the lowest flagged byte of the or.
    has_zero(w ^ (ONES * u64::from(b'"')))
        | has_zero(w ^ (ONES * u64::from(b'\\')))
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
}

#[inline]
fn hex_val(c: u8) -> Option<u32> {
    match c {
        b'0'..=b'9' => Some(u32::from(c - b'0')),
        b'a'..=b'f' => Some(u32::from(c - b'a' + 10)),
        b'A'..=b'F' => Some(u32::from(c - b'A' + 10)),
        _ => None,
    }
}

/// Four hex digits at `b[at..at + 4]`.
#[inline]
fn hex4(b: &[u8], at: usize) -> PResult<u32> {
    let d = b.get(at..at + 4).ok_or(SyntaxError)?;
    let mut v = 0;
    for &c in d {
        v = (v << 4) | hex_val(c).ok_or(SyntaxError)?;
    }
    Ok(v)
}

impl<'a> Parser<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn expect(&mut self, c: u8) -> PResult<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(SyntaxError)
        }
    }

    /// The whole input: one object between optional whitespace, keeping
    /// the fields `slot` numbers (and `metadata`, when `metadata`).
    fn record(&mut self, slot: fn(&str) -> Option<usize>, metadata: bool) -> PResult<Fields<'a>> {
        self.skip_ws();
        let fields = self.top_object(slot, metadata)?;
        self.skip_ws();
        if self.pos != self.b.len() {
            return Err(SyntaxError);
        }
        Ok(fields)
    }

    /// The record's object (depth 1), keeping the fields `slot` numbers.
    fn top_object(
        &mut self,
        slot: fn(&str) -> Option<usize>,
        metadata: bool,
    ) -> PResult<Fields<'a>> {
        self.expect(b'{')?;
        let mut fields = Fields {
            required: [const { Field::Absent }; N_REQUIRED],
            metadata: Meta::None,
        };
        let mut seen: u16 = 0;
        const METADATA_BIT: u16 = 1 << N_REQUIRED;
        let mut frame = KeyFrame {
            base: self.keys.len(),
            set: None,
        };
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(fields);
        }
        loop {
            let key = self.key()?;
            if let Some(slot) = slot(&key) {
                let bit = 1 << slot;
                if seen & bit != 0 {
                    return Err(SyntaxError);
                }
                seen |= bit;
                fields.required[slot] = self.field_value()?;
            } else if metadata && key == "metadata" {
                if seen & METADATA_BIT != 0 {
                    return Err(SyntaxError);
                }
                seen |= METADATA_BIT;
                fields.metadata = self.metadata_value()?;
            } else {
                // Unknown keys never equal a known one, so they only need
                // checking against each other.
                self.insert_key(&mut frame, key)?;
                self.value(2)?;
            }
            if self.end_of_member(b'}')? {
                break;
            }
        }
        self.keys.truncate(frame.base);
        Ok(fields)
    }

    /// After a member or element: `true` at the closing bracket, `false`
    /// after a comma (which must be followed by another one).
    #[inline]
    fn end_of_member(&mut self, close: u8) -> PResult<bool> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(false)
            }
            Some(c) if c == close => {
                self.pos += 1;
                Ok(true)
            }
            _ => Err(SyntaxError),
        }
    }

    /// An object key (unescaped) and its `:`, leaving `pos` at the value.
    #[inline]
    fn key(&mut self) -> PResult<Cow<'a, str>> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return Err(SyntaxError);
        }
        let key = self.string()?;
        self.skip_ws();
        self.expect(b':')?;
        self.skip_ws();
        Ok(key)
    }

    fn insert_key(&mut self, frame: &mut KeyFrame<'a>, key: Cow<'a, str>) -> PResult<()> {
        if let Some(set) = frame.set.as_mut() {
            return if set.insert(key) {
                Ok(())
            } else {
                Err(SyntaxError)
            };
        }
        let live = &self.keys[frame.base..];
        if live.contains(&key) {
            return Err(SyntaxError);
        }
        if live.len() < DUP_LINEAR_MAX {
            self.keys.push(key);
        } else {
            let mut set: HashSet<Cow<'a, str>> = self.keys.drain(frame.base..).collect();
            set.insert(key);
            frame.set = Some(set);
        }
        Ok(())
    }

    /// A top-level field's value (`pos` at its first byte).
    fn field_value(&mut self) -> PResult<Field<'a>> {
        Ok(match self.peek() {
            Some(b'"') => Field::Str(self.string()?),
            Some(b'-' | b'0'..=b'9') => Field::Num(self.number()?),
            Some(b'n') => {
                self.literal(b"null")?;
                Field::Null
            }
            _ => {
                self.value(2)?;
                Field::Other
            }
        })
    }

    /// The `metadata` value (`pos` at its first byte).
    fn metadata_value(&mut self) -> PResult<Meta<'a>> {
        match self.peek() {
            Some(b'n') => {
                self.literal(b"null")?;
                Ok(Meta::None)
            }
            Some(b'{') => {
                // Metadata keys are checked for duplicates by sorting them,
                // which canonicalisation needs anyway; values that are not
                // strings are kept as `None`.
                self.pos += 1;
                let mut entries: Vec<(Cow<'a, str>, Option<Cow<'a, str>>)> = Vec::new();
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(Meta::Strings(Vec::new()));
                }
                loop {
                    let key = self.key()?;
                    let value = if self.peek() == Some(b'"') {
                        Some(self.string()?)
                    } else {
                        self.value(3)?;
                        None
                    };
                    entries.push((key, value));
                    if self.end_of_member(b'}')? {
                        break;
                    }
                }
                entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                if entries.windows(2).any(|w| w[0].0 == w[1].0) {
                    return Err(SyntaxError);
                }
                if entries.iter().any(|(_, v)| v.is_none()) {
                    return Ok(Meta::Bad);
                }
                Ok(Meta::Strings(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k, v.unwrap_or_default()))
                        .collect(),
                ))
            }
            _ => {
                self.value(2)?;
                Ok(Meta::Bad)
            }
        }
    }

    /// Any JSON value (`pos` at its first byte), checked and skipped.
    /// A container here is at nesting `depth`.
    fn value(&mut self, depth: usize) -> PResult<()> {
        match self.peek().ok_or(SyntaxError)? {
            b'"' => self.skip_string(),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            _ => Err(SyntaxError),
        }
    }

    fn object(&mut self, depth: usize) -> PResult<()> {
        if depth > MAX_DEPTH {
            return Err(SyntaxError);
        }
        self.pos += 1; // '{'
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        let mut frame = KeyFrame {
            base: self.keys.len(),
            set: None,
        };
        loop {
            let key = self.key()?;
            self.insert_key(&mut frame, key)?;
            self.value(depth + 1)?;
            if self.end_of_member(b'}')? {
                break;
            }
        }
        self.keys.truncate(frame.base);
        Ok(())
    }

    fn array(&mut self, depth: usize) -> PResult<()> {
        if depth > MAX_DEPTH {
            return Err(SyntaxError);
        }
        self.pos += 1; // '['
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            self.value(depth + 1)?;
            if self.end_of_member(b']')? {
                break;
            }
        }
        Ok(())
    }

    #[inline]
    fn literal(&mut self, lit: &[u8]) -> PResult<()> {
        if self.b[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            Ok(())
        } else {
            Err(SyntaxError)
        }
    }

    /// A number literal per RFC 8259, returned as written.
    fn number(&mut self) -> PResult<&'a str> {
        let b = self.b;
        let start = self.pos;
        let mut i = start;
        let digits = |mut i: usize| {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            i
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(i + 1),
            _ => return Err(SyntaxError),
        }
        if b.get(i) == Some(&b'.') {
            let j = digits(i + 1);
            if j == i + 1 {
                return Err(SyntaxError);
            }
            i = j;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let j = digits(i);
            if j == i {
                return Err(SyntaxError);
            }
            i = j;
        }
        self.pos = i;
        Ok(&self.src[start..i])
    }

    /// Checks the string at `pos` (its opening quote) and moves past it.
    /// Returns the content's byte range and whether it holds escapes.
    #[inline]
    fn scan_string(&mut self) -> PResult<(usize, usize, bool)> {
        let b = self.b;
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            while let Some(chunk) = b.get(i..i + 8) {
                let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                let m = special_mask(w);
                if m != 0 {
                    i += (m.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            match *b.get(i).ok_or(SyntaxError)? {
                b'"' => {
                    self.pos = i + 1;
                    return Ok((start, i, escaped));
                }
                b'\\' => {
                    escaped = true;
                    i = Self::escape(b, i + 1)?;
                }
                0x00..=0x1f => return Err(SyntaxError),
                _ => i += 1,
            }
        }
    }

    /// Checks the escape whose letter is at `b[i]`; returns the index after it.
    fn escape(b: &[u8], i: usize) -> PResult<usize> {
        match b.get(i) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 1),
            Some(b'u') => {
                let cp = hex4(b, i + 1)?;
                match cp {
                    0xD800..=0xDBFF => {
                        // A high surrogate must be followed by a low one.
                        if b.get(i + 5) != Some(&b'\\') || b.get(i + 6) != Some(&b'u') {
                            return Err(SyntaxError);
                        }
                        if !(0xDC00..=0xDFFF).contains(&hex4(b, i + 7)?) {
                            return Err(SyntaxError);
                        }
                        Ok(i + 11)
                    }
                    0xDC00..=0xDFFF => Err(SyntaxError),
                    _ => Ok(i + 5),
                }
            }
            _ => Err(SyntaxError),
        }
    }

    #[inline]
    fn skip_string(&mut self) -> PResult<()> {
        self.scan_string().map(drop)
    }

    /// The string at `pos`, unescaped; borrowed unless it holds escapes.
    #[inline]
    fn string(&mut self) -> PResult<Cow<'a, str>> {
        let (start, end, escaped) = self.scan_string()?;
        let raw = &self.src[start..end];
        Ok(if escaped {
            Cow::Owned(unescape(raw))
        } else {
            Cow::Borrowed(raw)
        })
    }
}

/// Unescapes string content already checked by `scan_string`.
fn unescape(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut run = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(&raw[run..i]);
        let c = match b[i + 1] {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            _ => {
                // 'u': validated, so the code point and any pair are sound.
                let hi = hex4(b, i + 2).unwrap_or(0xFFFD);
                let cp = if (0xD800..=0xDBFF).contains(&hi) {
                    let lo = hex4(b, i + 8).unwrap_or(0xDC00);
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                i += 4;
                char::from_u32(cp).unwrap_or('\u{FFFD}')
            }
        };
        out.push(c);
        i += 2;
        run = i;
    }
    out.push_str(&raw[run..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use RejectReason::*;

    const MAX: usize = 1_048_576;

    const GOOD: &str = r#"{"transaction_id":"tx-1","customer_id":"c-9","amount":12.5,"currency":"USD","merchant":"Acme","category":"books","status":"COMPLETED","timestamp":"2024-01-01T00:00:00Z"}"#;

    fn parse(s: &str) -> Result<Txn, RejectReason> {
        parse_record(s.as_bytes(), MAX, 0, 0)
    }

    fn reason(s: &str) -> RejectReason {
        match parse(s) {
            Ok(t) => panic!("expected a reject for {s:?}, got {t:?}"),
            Err(r) => r,
        }
    }

    /// A valid record with `field`'s value replaced by the raw JSON `value`
    /// (or removed when `value` is `None`).
    fn with(field: &str, value: Option<&str>) -> String {
        let fields = [
            ("transaction_id", r#""tx-1""#),
            ("customer_id", r#""c-9""#),
            ("amount", "12.5"),
            ("currency", r#""USD""#),
            ("merchant", r#""Acme""#),
            ("category", r#""books""#),
            ("status", r#""COMPLETED""#),
            ("timestamp", r#""2024-01-01T00:00:00Z""#),
        ];
        let mut parts: Vec<String> = fields
            .iter()
            .filter(|(k, _)| *k != field)
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        if let Some(v) = value {
            parts.push(format!("\"{field}\":{v}"));
        }
        format!("{{{}}}", parts.join(","))
    }

    /// A valid record with several fields replaced.
    fn with_all(changes: &[(&str, Option<&str>)]) -> String {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(GOOD).unwrap();
        let mut s = String::from("{");
        for (k, _) in changes {
            v.remove(*k);
        }
        for (k, val) in &v {
            s.push_str(&format!("{}:{},", serde_json::to_string(k).unwrap(), val));
        }
        for (k, val) in changes {
            if let Some(val) = val {
                s.push_str(&format!("\"{k}\":{val},"));
            }
        }
        if s.ends_with(',') {
            s.pop();
        }
        s.push('}');
        s
    }

    fn amount(lit: &str) -> Result<i64, RejectReason> {
        parse(&with("amount", Some(lit))).map(|t| t.amount_cents)
    }

    #[test]
    fn typical_record_parses() {
        let rec = r#"{"transaction_id":"7f3c2a9e-1b4d-4e8a-9c2f-5d6e7f8a9b0c","customer_id":"cust_004217","amount":249.99,"currency":"EUR","merchant":"Nordic Outfitters","category":"apparel","status":"PENDING","timestamp":"2024-03-15T14:22:31.417+01:00","metadata":{"location":"Oslo, NO","device":"ios","ip":"203.0.113.7"}}"#;
        let t = parse_record(rec.as_bytes(), MAX, 3, 42).unwrap();
        assert_eq!(t.transaction_id(), "7f3c2a9e-1b4d-4e8a-9c2f-5d6e7f8a9b0c");
        assert_eq!(t.customer_id(), "cust_004217");
        assert_eq!(t.amount_cents, 24_999);
        assert_eq!(t.currency, Currency::Eur);
        assert_eq!(t.merchant(), "Nordic Outfitters");
        assert_eq!(t.category(), "apparel");
        assert_eq!(t.status, Status::Pending);
        assert_eq!(t.timestamp_raw(), "2024-03-15T14:22:31.417+01:00");
        assert_eq!(t.event_time, 1_710_508_951_417);
        assert_eq!(
            t.metadata(),
            Some(r#"{"device":"ios","ip":"203.0.113.7","location":"Oslo, NO"}"#)
        );
        assert_eq!(t.partition, 3);
        assert_eq!(t.offset, 42);
    }

    #[test]
    fn minimal_record_fields() {
        let t = parse(GOOD).unwrap();
        assert_eq!(t.transaction_id(), "tx-1");
        assert_eq!(t.customer_id(), "c-9");
        assert_eq!(t.amount_cents, 1250);
        assert_eq!(t.currency, Currency::Usd);
        assert_eq!(t.status, Status::Completed);
        assert_eq!(t.merchant(), "Acme");
        assert_eq!(t.category(), "books");
        assert_eq!(t.event_time, 1_704_067_200_000);
        assert_eq!(t.metadata(), None);
        // Field order does not matter.
        let t2 = parse(&with("transaction_id", Some(r#""tx-1""#))).unwrap();
        assert_eq!(t, t2);
    }

    // ---- TOO_LARGE ----

    #[test]
    fn too_large_boundary() {
        let n = GOOD.len();
        assert!(parse_record(GOOD.as_bytes(), n, 0, 0).is_ok());
        assert!(parse_record(GOOD.as_bytes(), n + 1, 0, 0).is_ok());
        assert_eq!(parse_record(GOOD.as_bytes(), n - 1, 0, 0), Err(TooLarge));
        assert_eq!(parse_record(b"", 0, 0, 0), Err(Malformed));
        assert_eq!(parse_record(b"x", 0, 0, 0), Err(TooLarge));
    }

    #[test]
    fn too_large_beats_malformed() {
        assert_eq!(parse_record(b"not json at all", 3, 0, 0), Err(TooLarge));
        assert_eq!(parse_record(&[0xff; 10], 9, 0, 0), Err(TooLarge));
        assert_eq!(parse_record(&[0xff; 10], 10, 0, 0), Err(Malformed));
    }

    #[test]
    fn default_max_is_inclusive() {
        // Pad a valid record with whitespace to exactly 1 MiB, then one more.
        let mut rec = GOOD.to_string();
        rec.push_str(&" ".repeat(MAX - rec.len()));
        assert_eq!(rec.len(), MAX);
        assert!(parse(&rec).is_ok());
        rec.push(' ');
        assert_eq!(reason(&rec), TooLarge);
    }

    // ---- MALFORMED ----

    #[test]
    fn malformed_shapes() {
        for s in [
            "",
            " ",
            "\n",
            "\r\n",
            "[]",
            "[{}]",
            "\"str\"",
            "1",
            "null",
            "true",
            "{",
            "}",
            "{}}",
            "{}{}",
            "{} x",
            "{}\n{}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "{,\"a\":1}",
            "{\"a\":1,,\"b\":2}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":[1,]}",
            "{\"a\":[,1]}",
            "{\"a\":[1 2]}",
            "{\"a\":[}",
            "{\"a\":{]}",
            "{'a':1}",
            "{a:1}",
            "{\"a\":'x'}",
            "{\"a\":tru}",
            "{\"a\":truex}",
            "{\"a\":nul}",
            "{\"a\":nulll}",
            "{\"a\":False}",
            "{\"a\":None}",
            "{\"a\":undefined}",
            "{\"a\":\"unterminated}",
            "{\"a\":\"x\\\"}",
            "\u{feff}{}",
            "{}\u{feff}",
            "\u{a0}{}",
            "{}\u{0b}",
            "{}\u{0c}",
            "{\"a\":1}\0",
            "{\"a\":1}/* c */",
        ] {
            assert_eq!(reason(s), Malformed, "{s:?}");
        }
    }

    #[test]
    fn malformed_numbers() {
        for n in [
            "NaN",
            "Infinity",
            "-Infinity",
            "+1",
            ".5",
            "1.",
            "01",
            "-01",
            "00",
            "-",
            "1e",
            "1e+",
            "1E-",
            "1.e5",
            "--1",
            "0x10",
            "1_000",
            "1.5.5",
            "1e5e5",
            "- 1",
            "١",
        ] {
            let s = format!("{{\"n\":{n}}}");
            assert_eq!(reason(&s), Malformed, "{n}");
            // ...whether in an unknown field or in `amount` itself.
            assert_eq!(reason(&with("amount", Some(n))), Malformed, "{n}");
        }
    }

    #[test]
    fn valid_numbers_in_unknown_fields() {
        for n in [
            "0",
            "-0",
            "0.0",
            "-0.0",
            "1e5",
            "1E+5",
            "1e-5",
            "-1.5e-300",
            "123456789012345678901234567890",
            "1e400",
            "0e0",
        ] {
            let s = with("extra", Some(n));
            assert!(parse(&s).is_ok(), "{n}");
        }
    }

    #[test]
    fn whitespace_around_and_inside_is_fine() {
        let spaced = format!(" \t\r\n{GOOD}\r\n\t ");
        assert!(parse(&spaced).is_ok());
        let inside = r#" { "transaction_id" : "tx-1" ,
            "customer_id":"c-9",	"amount" :12.5 ,"currency": "USD",
            "merchant":"Acme","category":"books","status":"COMPLETED",
            "timestamp":"2024-01-01T00:00:00Z" , "x" : [ 1 , { "y" : [ ] } , { } ] }
        "#;
        assert!(parse(inside).is_ok());
        // A `\r` before the newline belongs to the record and is whitespace.
        assert!(parse(&format!("{GOOD}\r")).is_ok());
    }

    #[test]
    fn invalid_utf8_anywhere_is_malformed() {
        let good = GOOD.as_bytes();
        // Inside a string value.
        let mut inside = good.to_vec();
        let at = GOOD.find("Acme").unwrap() + 1;
        inside[at] = 0xff;
        assert_eq!(parse_record(&inside, MAX, 0, 0), Err(Malformed));
        // Truncated multibyte sequence, overlong encoding, encoded surrogate.
        for bad in [
            &[0xc3][..],
            &[0xc0, 0xaf],
            &[0xed, 0xa0, 0x80],
            &[0xf5, 0x80, 0x80, 0x80],
        ] {
            let mut v = br#"{"x":""#.to_vec();
            v.extend_from_slice(bad);
            v.extend_from_slice(br#""}"#);
            assert_eq!(parse_record(&v, MAX, 0, 0), Err(Malformed), "{bad:?}");
        }
        // After the object.
        let mut trailing = good.to_vec();
        trailing.push(0x80);
        assert_eq!(parse_record(&trailing, MAX, 0, 0), Err(Malformed));
        // Invalid UTF-8 beats every field rule: the record is missing fields too.
        assert_eq!(parse_record(b"{\"a\":\"\xff\"}", MAX, 0, 0), Err(Malformed));
    }

    #[test]
    fn bom_is_malformed() {
        let mut v = vec![0xef, 0xbb, 0xbf];
        v.extend_from_slice(GOOD.as_bytes());
        assert_eq!(parse_record(&v, MAX, 0, 0), Err(Malformed));
    }

    #[test]
    fn control_characters_in_strings() {
        for c in (0u8..0x20).map(char::from) {
            let s = with("merchant", Some(&format!("\"a{c}b\"")));
            assert_eq!(reason(&s), Malformed, "{:#x}", c as u32);
            let k = with("extra", Some(&format!("\"{c}\"")));
            assert_eq!(reason(&k), Malformed, "{:#x}", c as u32);
        }
        // Escaped, they are fine; DEL and non-ASCII need no escape.
        let t = parse(&with("merchant", Some(r#""a\tb\u0000c\u001fd\u007f""#))).unwrap();
        assert_eq!(t.merchant(), "a\tb\0c\u{1f}d\u{7f}");
        let t = parse(&with("merchant", Some("\"a\u{7f}é€😀\""))).unwrap();
        assert_eq!(t.merchant(), "a\u{7f}é€😀");
    }

    #[test]
    fn escapes() {
        let t = parse(&with(
            "merchant",
            Some(r#""q\"b\\s\/b\bf\fn\nr\rt\tu\u00e9\u20AC""#),
        ))
        .unwrap();
        assert_eq!(t.merchant(), "q\"b\\s/b\u{8}f\u{c}n\nr\rt\tu\u{e9}\u{20ac}");
        for bad in [
            r#""\a""#,
            r#""\x41""#,
            r#""\u12""#,
            r#""\u12G4""#,
            r#""\U0041""#,
            r#""\'""#,
            "\"\\\"",
            r#""\ ""#,
        ] {
            assert_eq!(reason(&with("merchant", Some(bad))), Malformed, "{bad}");
            assert_eq!(reason(&with("extra", Some(bad))), Malformed, "{bad}");
        }
    }

    #[test]
    fn surrogates() {
        // A valid pair is one supplementary character.
        let t = parse(&with("merchant", Some(r#""a\ud83d\ude00b""#))).unwrap();
        assert_eq!(t.merchant(), "a😀b");
        let t = parse(&with("merchant", Some(r#""\uD83D\uDE00""#))).unwrap();
        assert_eq!(t.merchant(), "😀");
        let t = parse(&with("merchant", Some(r#""\udbff\udfff""#))).unwrap();
        assert_eq!(t.merchant(), "\u{10ffff}");
        let t = parse(&with("merchant", Some(r#""\ud800\udc00""#))).unwrap();
        assert_eq!(t.merchant(), "\u{10000}");
        // Lone or misordered surrogates, anywhere.
        for bad in [
            r#""\ud800""#,
            r#""\ud800x""#,
            r#""\ud800\n""#,
            r#""\ud800\u0041""#,
            r#""\ud800\ud800""#,
            r#""\ud800\""#,
            r#""\ud83d\ude0""#,
            r#""\udc00""#,
            r#""\udfff""#,
            r#""\ude00\ud83d""#,
            r#""x\ud83d""#,
        ] {
            assert_eq!(reason(&with("merchant", Some(bad))), Malformed, "{bad}");
            assert_eq!(reason(&with("extra", Some(bad))), Malformed, "{bad}");
            assert_eq!(
                reason(&with("extra", Some(&format!("{{{bad}:1}}")))),
                Malformed,
                "{bad}"
            );
        }
        // Non-surrogate neighbours are ordinary characters.
        let t = parse(&with("merchant", Some(r#""\ud7ff\ue000""#))).unwrap();
        assert_eq!(t.merchant(), "\u{d7ff}\u{e000}");
    }

    #[test]
    fn duplicate_keys_at_any_depth() {
        // Top level: known, metadata and unknown keys.
        assert_eq!(reason(&GOOD.replace("{", r#"{"amount":1,"#)), Malformed);
        assert_eq!(
            reason(&GOOD.replace("{", r#"{"merchant":"Acme","#)),
            Malformed
        );
        assert_eq!(reason(&GOOD.replace("{", r#"{"status":null,"#)), Malformed);
        assert_eq!(
            reason(&GOOD.replace("{", r#"{"metadata":null,"metadata":null,"#)),
            Malformed
        );
        assert_eq!(reason(&GOOD.replace("{", r#"{"x":1,"x":2,"#)), Malformed);
        // Compared after unescaping.
        assert_eq!(
            reason(&GOOD.replace("{", r#"{"x":1,"\u0078":2,"#)),
            Malformed
        );
        assert_eq!(
            reason(&GOOD.replace("{", r#"{"amo\u0075nt":1,"#)),
            Malformed
        );
        assert_eq!(
            reason(&GOOD.replace("{", r#"{"metadat\u0061":{},"metadata":{},"#)),
            Malformed
        );
        // Nested, in metadata and in unknown fields.
        assert_eq!(
            reason(&with("metadata", Some(r#"{"a":"1","a":"2"}"#))),
            Malformed
        );
        assert_eq!(
            reason(&with("metadata", Some(r#"{"a":"1","\u0061":"2"}"#))),
            Malformed
        );
        assert_eq!(
            reason(&with("metadata", Some(r#"{"a":1,"a":"2"}"#))),
            Malformed
        );
        assert_eq!(reason(&with("x", Some(r#"{"a":1,"a":1}"#))), Malformed);
        assert_eq!(
            reason(&with("x", Some(r#"[{"b":{"a":1,"a":1}}]"#))),
            Malformed
        );
        assert_eq!(
            reason(&with("x", Some(r#"{"😀":1,"\ud83d\ude00":1}"#))),
            Malformed
        );
        // The same key in different objects is fine.
        let ok = with(
            "x",
            Some(r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}],"amount":3}"#),
        );
        assert!(parse(&ok).is_ok());
        let ok = with("metadata", Some(r#"{"amount":"1","merchant":"x"}"#));
        assert!(parse(&ok).is_ok());
        // Distinct keys that only look alike.
        assert!(parse(&with("x", Some(r#"{"a":1,"A":1,"a ":1,"\u00e9":1,"é":1}"#))).is_err());
        assert!(parse(&with("x", Some(r#"{"a":1,"A":1,"a ":1,"\u00e9":1}"#))).is_ok());
    }

    #[test]
    fn duplicate_keys_in_wide_objects() {
        // Past the linear-scan threshold, detection switches to a hash set.
        for n in [15, 16, 17, 40, 5000] {
            let body: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            let ok = with("x", Some(&format!("{{{}}}", body.join(","))));
            assert!(parse(&ok).is_ok(), "{n}");
            for dup in [0, n / 2, n - 1] {
                let mut b = body.clone();
                b.push(format!("\"k{dup}\":0"));
                let bad = with("x", Some(&format!("{{{}}}", b.join(","))));
                assert_eq!(reason(&bad), Malformed, "{n} {dup}");
            }
            // Wide metadata, and wide top-level objects of unknown keys.
            let meta: Vec<String> = (0..n).map(|i| format!("\"k{i}\":\"v\"")).collect();
            assert!(parse(&with("metadata", Some(&format!("{{{}}}", meta.join(","))))).is_ok());
            let mut m2 = meta.clone();
            m2.push("\"k0\":\"w\"".into());
            assert_eq!(
                reason(&with("metadata", Some(&format!("{{{}}}", m2.join(","))))),
                Malformed
            );
            let top = format!("{{{},{}}}", meta.join(","), &GOOD[1..GOOD.len() - 1]);
            assert!(parse(&top).is_ok());
            let top_dup = format!(
                "{{{},{},\"k{}\":1}}",
                meta.join(","),
                &GOOD[1..GOOD.len() - 1],
                n - 1
            );
            assert_eq!(reason(&top_dup), Malformed);
            // A nested object after a wide one still sees only its own keys.
            let nested = format!(
                "{{{},\"inner\":{{\"k0\":1,\"k1\":2}},\"after\":1}}",
                body.join(",")
            );
            assert!(parse(&with("x", Some(&nested))).is_ok(), "{n}");
        }
    }

    #[test]
    fn nesting_depth_limit() {
        // The record is depth 1; a value nested k containers deep inside a
        // field sits at depth 1 + k.
        let nest = |k: usize| format!("{}{}", "[".repeat(k), "]".repeat(k));
        assert!(parse(&with("x", Some(&nest(MAX_DEPTH - 1)))).is_ok());
        assert_eq!(reason(&with("x", Some(&nest(MAX_DEPTH)))), Malformed);
        let objs = |k: usize| format!("{}1{}", "{\"a\":".repeat(k), "}".repeat(k));
        assert!(parse(&with("x", Some(&objs(MAX_DEPTH - 1)))).is_ok());
        assert_eq!(reason(&with("x", Some(&objs(MAX_DEPTH)))), Malformed);
        // Inside metadata too (and then it also is not string → string).
        assert_eq!(reason(&with("metadata", Some(&objs(MAX_DEPTH)))), Malformed);
        assert_eq!(
            reason(&with("metadata", Some(&objs(MAX_DEPTH - 1)))),
            BadField
        );
        // Far deeper input neither overflows the stack nor passes.
        let deep = format!("{{\"x\":{}}}", "[".repeat(500_000));
        assert_eq!(reason(&deep), Malformed);
        let deep = format!("{{\"x\":{}", "{\"a\":".repeat(200_000));
        assert_eq!(reason(&deep), Malformed);
    }

    #[test]
    fn nested_unknown_values_are_validated() {
        assert!(parse(&with("x", Some(r#"[1,"a",true,false,null,{"b":[{}]},[]]"#))).is_ok());
        assert_eq!(reason(&with("x", Some(r#"[1,"a",tru]"#))), Malformed);
        assert_eq!(reason(&with("x", Some(r#"{"b":[01]}"#))), Malformed);
        assert_eq!(reason(&with("x", Some(r#"{"b":NaN}"#))), Malformed);
        assert_eq!(reason(&with("x", Some(r#"{"b":"\ud800"}"#))), Malformed);
        assert_eq!(reason(&with("x", Some(r#"{"b":1,}"#))), Malformed);
        assert_eq!(reason(&with("x", Some(r#"{"b" 1}"#))), Malformed);
        assert_eq!(reason(&with("x", Some(r#"{1:1}"#))), Malformed);
    }

    #[test]
    fn malformed_beats_every_field_rule() {
        // Missing everything, but malformed first.
        assert_eq!(reason(r#"{"a":1,}"#), Malformed);
        assert_eq!(reason(r#"[{"transaction_id":"x"}]"#), Malformed);
        // An otherwise bad-field record with a duplicate elsewhere.
        assert_eq!(
            reason(&with_all(&[
                ("transaction_id", Some("5")),
                ("x", Some("[1,]"))
            ])),
            Malformed
        );
        // The syntax error after all the bad fields still wins.
        assert_eq!(
            reason(&format!(
                "{},\"zz\":NaN}}",
                &with_all(&[
                    ("amount", Some("-1")),
                    ("currency", Some("\"usd\"")),
                    ("status", Some("\"x\"")),
                    ("timestamp", Some("\"x\""))
                ])
                .trim_end_matches('}')
            )),
            Malformed
        );
    }

    // ---- MISSING_FIELD ----

    #[test]
    fn missing_each_required_field() {
        for f in [
            "transaction_id",
            "customer_id",
            "amount",
            "currency",
            "merchant",
            "category",
            "status",
            "timestamp",
        ] {
            assert_eq!(reason(&with(f, None)), MissingField, "{f} absent");
            assert_eq!(reason(&with(f, Some("null"))), MissingField, "{f} null");
            assert_eq!(reason(&with(f, Some(" null"))), MissingField, "{f} null");
        }
        assert_eq!(reason("{}"), MissingField);
        assert_eq!(reason(" {\"x\":1} "), MissingField);
    }

    #[test]
    fn missing_beats_later_rules() {
        // A later field absent beats an earlier field being bad.
        for bad in [
            ("transaction_id", Some("5")),
            ("transaction_id", Some("\"\"")),
            ("merchant", Some("1")),
            ("metadata", Some("[]")),
            ("amount", Some("-1")),
            ("currency", Some("\"usd\"")),
            ("status", Some("\"done\"")),
            ("timestamp", Some("\"yesterday\"")),
        ] {
            for missing in ["timestamp", "transaction_id", "category"] {
                if missing == bad.0 {
                    continue;
                }
                assert_eq!(
                    reason(&with_all(&[bad, (missing, None)])),
                    MissingField,
                    "{bad:?} / {missing}"
                );
                assert_eq!(
                    reason(&with_all(&[bad, (missing, Some("null"))])),
                    MissingField,
                    "{bad:?} / {missing} null"
                );
            }
        }
    }

    #[test]
    fn null_metadata_is_absent_and_metadata_is_optional() {
        let t = parse(&with("metadata", Some("null"))).unwrap();
        assert_eq!(t.metadata(), None);
        let t = parse(&with("metadata", None)).unwrap();
        assert_eq!(t.metadata(), None);
    }

    // ---- BAD_FIELD ----

    #[test]
    fn bad_ids() {
        for f in ["transaction_id", "customer_id"] {
            for v in ["5", "true", "false", "[]", "{}", "[\"a\"]", "\"\"", "1.5"] {
                assert_eq!(reason(&with(f, Some(v))), BadField, "{f}={v}");
            }
        }
    }

    #[test]
    fn id_byte_length_boundaries() {
        for f in ["transaction_id", "customer_id"] {
            let ok = |v: &str| {
                let t = parse(&with(f, Some(&format!("\"{v}\"")))).unwrap();
                if f == "transaction_id" {
                    t.transaction_id().to_string()
                } else {
                    t.customer_id().to_string()
                }
            };
            assert_eq!(ok("a"), "a");
            let a128 = "a".repeat(128);
            assert_eq!(ok(&a128), a128);
            let a129 = "a".repeat(129);
            assert_eq!(reason(&with(f, Some(&format!("\"{a129}\"")))), BadField);
            // 64 two-byte characters are 128 bytes; one more ASCII byte is 129.
            let e64 = "é".repeat(64);
            assert_eq!(ok(&e64), e64);
            assert_eq!(reason(&with(f, Some(&format!("\"{e64}x\"")))), BadField);
            // 32 four-byte characters: 128 bytes, though only 32 chars.
            let g32 = "😀".repeat(32);
            assert_eq!(ok(&g32), g32);
            assert_eq!(reason(&with(f, Some(&format!("\"{g32}a\"")))), BadField);
            // Counted after unescaping: 128 escapes of 6 bytes each are 128 bytes.
            let esc128 = "\\u0041".repeat(128);
            assert_eq!(ok(&esc128), "A".repeat(128));
            let esc129 = "\\u0041".repeat(129);
            assert_eq!(reason(&with(f, Some(&format!("\"{esc129}\"")))), BadField);
            // ...and "\u00e9" is two bytes: 64 of them are 128 bytes, 65 too many.
            assert_eq!(ok(&"\\u00e9".repeat(64)), e64);
            assert_eq!(
                reason(&with(f, Some(&format!("\"{}\"", "\\u00e9".repeat(65))))),
                BadField
            );
            // A single escaped character is a non-empty id.
            assert_eq!(ok("\\n"), "\n");
        }
    }

    #[test]
    fn merchant_and_category_must_be_strings() {
        for f in ["merchant", "category"] {
            for v in ["5", "true", "[]", "{}", "[\"x\"]", "0.5"] {
                assert_eq!(reason(&with(f, Some(v))), BadField, "{f}={v}");
            }
            // The empty string is allowed, and so are long strings.
            assert!(parse(&with(f, Some("\"\""))).is_ok());
            assert!(parse(&with(f, Some(&format!("\"{}\"", "m".repeat(5000))))).is_ok());
        }
        let t = parse(&with_all(&[
            ("merchant", Some("\"\"")),
            ("category", Some("\"\"")),
        ]))
        .unwrap();
        assert_eq!(t.merchant(), "");
        assert_eq!(t.category(), "");
    }

    #[test]
    fn bad_metadata() {
        for v in [
            "\"x\"",
            "1",
            "true",
            "[]",
            "[{\"a\":\"b\"}]",
            "{\"a\":1}",
            "{\"a\":null}",
            "{\"a\":true}",
            "{\"a\":{}}",
            "{\"a\":[]}",
            "{\"a\":{\"b\":\"c\"}}",
            "{\"a\":\"b\",\"c\":2}",
            "{\"c\":2,\"a\":\"b\"}",
        ] {
            assert_eq!(reason(&with("metadata", Some(v))), BadField, "{v}");
        }
    }

    #[test]
    fn bad_field_beats_later_rules() {
        for later in [
            ("amount", Some("-1")),
            ("amount", Some("\"12\"")),
            ("currency", Some("\"usd\"")),
            ("status", Some("\"done\"")),
            ("timestamp", Some("\"yesterday\"")),
            ("timestamp", Some("5")),
        ] {
            for bad in [
                ("transaction_id", Some("5")),
                ("customer_id", Some("\"\"")),
                ("merchant", Some("1")),
                ("category", Some("[]")),
                ("metadata", Some("{\"a\":1}")),
            ] {
                assert_eq!(
                    reason(&with_all(&[bad, later])),
                    BadField,
                    "{bad:?} vs {later:?}"
                );
            }
        }
    }

    // ---- BAD_AMOUNT ----

    #[test]
    fn amounts_in_cents() {
        assert_eq!(amount("12.5"), Ok(1250));
        assert_eq!(amount("12.50"), Ok(1250));
        assert_eq!(amount("12.500"), Ok(1250));
        assert_eq!(amount("12.5000000000000000000000000"), Ok(1250));
        assert_eq!(amount("1250e-2"), Ok(1250));
        assert_eq!(amount("1250E-2"), Ok(1250));
        assert_eq!(amount("125000e-4"), Ok(1250));
        assert_eq!(amount("1E2"), Ok(10_000));
        assert_eq!(amount("1e+2"), Ok(10_000));
        assert_eq!(amount("0.10e1"), Ok(100));
        assert_eq!(amount("0.01"), Ok(1));
        assert_eq!(amount("1e-2"), Ok(1));
        assert_eq!(amount("0.0001e2"), Ok(1));
        assert_eq!(amount("1"), Ok(100));
        assert_eq!(amount("10"), Ok(1000));
        assert_eq!(amount("999999.99"), Ok(99_999_999));
        assert_eq!(amount("99999999e-2"), Ok(99_999_999));
        assert_eq!(amount("9.9999999e5"), Ok(99_999_999));
        assert_eq!(amount("999999.990000"), Ok(99_999_999));
        assert_eq!(amount("100000"), Ok(10_000_000));
        assert_eq!(amount("1e5"), Ok(10_000_000));
        assert_eq!(amount("1e0005"), Ok(10_000_000));
        assert_eq!(amount("0.5"), Ok(50));
        assert_eq!(amount("249.99"), Ok(24_999));
        // 0.(37 zeros)12 × 10^38 = 1.2
        assert_eq!(amount(&format!("0.{}12e38", "0".repeat(37))), Ok(120));
        assert_eq!(amount(&format!("0.{}12e37", "0".repeat(37))), Ok(12));
    }

    #[test]
    fn bad_amounts() {
        for lit in [
            "0",
            "0.0",
            "0.00",
            "-0",
            "-0.0",
            "0e5",
            "0.000e-9",
            "-5",
            "-0.01",
            "-1e2",
            "1.005",
            "0.001",
            "0.009",
            "12.501",
            "1e-3",
            "1e6",
            "1000000",
            "1000000.00",
            "1000000.001",
            "999999.999",
            "999999.991",
            "1e400",
            "1e-400",
            "1e99999999999999999999999999999999",
            "1e-99999999999999999999999999999999",
            "12345678901234567890",
            "0.1e-2",
            "1255e-4",
            "0.000000000000000000000000000000000000012e36",
        ] {
            assert_eq!(amount(lit), Err(BadAmount), "{lit}");
        }
        for v in [
            "\"12.50\"",
            "true",
            "false",
            "[12.5]",
            "{\"v\":12.5}",
            "\"\"",
        ] {
            assert_eq!(amount(v), Err(BadAmount), "{v}");
        }
    }

    #[test]
    fn amount_literal_helper() {
        assert_eq!(amount_cents_from_literal("12.5"), Some(1250));
        assert_eq!(amount_cents_from_literal("0.10e1"), Some(100));
        assert_eq!(amount_cents_from_literal("1.005"), None);
        // Not JSON numbers.
        for s in ["", "01", "1.", ".5", "+1", "1e", "1 ", "abc", "1e+", "--1"] {
            assert_eq!(amount_cents_from_literal(s), None, "{s:?}");
        }
        // A very long exponent saturates without overflow.
        let huge = format!("1e{}", "9".repeat(1000));
        assert_eq!(amount_cents_from_literal(&huge), None);
        let tiny = format!("1e-{}", "9".repeat(1000));
        assert_eq!(amount_cents_from_literal(&tiny), None);
        // Very long significands are judged exactly.
        let long = format!("0.{}1", "0".repeat(10_000));
        assert_eq!(amount_cents_from_literal(&long), None);
        let long_ok = format!("0.{}1e10001", "0".repeat(10_000));
        assert_eq!(amount_cents_from_literal(&long_ok), Some(100));
    }

    #[test]
    fn bad_amount_beats_later_rules() {
        for later in [
            ("currency", Some("\"usd\"")),
            ("currency", Some("1")),
            ("status", Some("\"done\"")),
            ("timestamp", Some("\"yesterday\"")),
        ] {
            for bad in ["-1", "1.005", "\"5\"", "1e6"] {
                assert_eq!(
                    reason(&with_all(&[("amount", Some(bad)), later])),
                    BadAmount,
                    "{bad} vs {later:?}"
                );
            }
        }
    }

    // ---- BAD_CURRENCY ----

    #[test]
    fn currencies() {
        for (lit, c) in [
            ("\"USD\"", Currency::Usd),
            ("\"EUR\"", Currency::Eur),
            ("\"GBP\"", Currency::Gbp),
            ("\"US\\u0044\"", Currency::Usd),
            ("\"\\u0047\\u0042\\u0050\"", Currency::Gbp),
        ] {
            assert_eq!(
                parse(&with("currency", Some(lit))).unwrap().currency,
                c,
                "{lit}"
            );
        }
        for lit in [
            "\"usd\"",
            "\"Usd\"",
            "\"USD \"",
            "\" USD\"",
            "\"JPY\"",
            "\"\"",
            "\"US\"",
            "\"USDD\"",
            "1",
            "true",
            "[\"USD\"]",
            "{\"USD\":1}",
        ] {
            assert_eq!(reason(&with("currency", Some(lit))), BadCurrency, "{lit}");
        }
    }

    #[test]
    fn bad_currency_beats_later_rules() {
        let r = with_all(&[
            ("currency", Some("\"usd\"")),
            ("status", Some("\"done\"")),
            ("timestamp", Some("\"x\"")),
        ]);
        assert_eq!(reason(&r), BadCurrency);
    }

    // ---- BAD_STATUS ----

    #[test]
    fn statuses() {
        for (lit, s) in [
            ("\"COMPLETED\"", Status::Completed),
            ("\"PENDING\"", Status::Pending),
            ("\"FAILED\"", Status::Failed),
            ("\"FAIL\\u0045D\"", Status::Failed),
        ] {
            assert_eq!(
                parse(&with("status", Some(lit))).unwrap().status,
                s,
                "{lit}"
            );
        }
        for lit in [
            "\"completed\"",
            "\"Completed\"",
            "\"DONE\"",
            "\"\"",
            "\"FAILED \"",
            "0",
            "false",
            "[]",
        ] {
            assert_eq!(reason(&with("status", Some(lit))), BadStatus, "{lit}");
        }
    }

    #[test]
    fn bad_status_beats_bad_timestamp() {
        let r = with_all(&[("status", Some("\"x\"")), ("timestamp", Some("\"x\""))]);
        assert_eq!(reason(&r), BadStatus);
        let r = with_all(&[("status", Some("1")), ("timestamp", Some("1"))]);
        assert_eq!(reason(&r), BadStatus);
    }

    // ---- BAD_TIMESTAMP ----

    #[test]
    fn timestamps() {
        let ts = |lit: &str| parse(&with("timestamp", Some(lit)));
        for lit in [
            "\"2024-01-01 00:00:00Z\"",
            "\"2024-01-01T00:00:00+0100\"",
            "\"2016-12-31T23:59:60Z\"",
            "\"2024-13-01T00:00:00Z\"",
            "\"2024-01-01T24:00:00Z\"",
            "\"2024-02-30T00:00:00Z\"",
            "\"2023-02-29T00:00:00Z\"",
            "\"1900-02-29T00:00:00Z\"",
            "\"2024-01-01T00:00:00+24:00\"",
            "\"2024-01-01T00:00:00+01:60\"",
            "\"2024-01-01T00:00:00\"",
            "\"2024-01-01\"",
            "\"\"",
            "\" 2024-01-01T00:00:00Z\"",
            "\"2024-01-01T00:00:00Z \"",
            "1704067200000",
            "true",
            "[\"2024-01-01T00:00:00Z\"]",
            "{}",
        ] {
            assert_eq!(ts(lit), Err(BadTimestamp), "{lit}");
        }
        let ok = |lit: &str| ts(lit).unwrap();
        assert_eq!(ok("\"2000-02-29T00:00:00Z\"").event_time, 951_782_400_000);
        assert_eq!(ok("\"2024-02-29T12:00:00Z\"").event_time, 1_709_208_000_000);
        assert_eq!(ok("\"2024-01-01t00:00:00z\"").event_time, 1_704_067_200_000);
        assert_eq!(ok("\"2024-01-01T23:59:59Z\"").event_time, 1_704_153_599_000);
        assert_eq!(
            ok("\"2024-01-01T00:00:00.123456789Z\"").event_time,
            1_704_067_200_123
        );
        assert_eq!(
            ok("\"2024-01-01T00:00:00.9+23:59\"").event_time,
            1_704_067_200_900 - 86_340_000
        );
        assert_eq!(
            ok("\"2024-01-01T00:00:00-23:59\"").event_time,
            1_704_067_200_000 + 86_340_000
        );
        assert_eq!(ok("\"1969-12-31T23:59:59.9999Z\"").event_time, -1);
        // The raw string is kept as given (after unescaping JSON), offset and all.
        let t = ok("\"2024-01-01T01:00:00.50+01:00\"");
        assert_eq!(t.timestamp_raw(), "2024-01-01T01:00:00.50+01:00");
        assert_eq!(t.event_time, 1_704_067_200_500);
        let t = ok("\"2024-01-01T00:00:00\\u005a\"");
        assert_eq!(t.timestamp_raw(), "2024-01-01T00:00:00Z");
        assert_eq!(t.event_time, 1_704_067_200_000);
    }

    // ---- metadata canonicalisation ----

    #[test]
    fn metadata_canonical_form() {
        let meta = |v: &str| {
            parse(&with("metadata", Some(v)))
                .unwrap()
                .metadata()
                .map(str::to_string)
        };
        assert_eq!(meta("{}").as_deref(), Some("{}"));
        assert_eq!(meta(" { } ").as_deref(), Some("{}"));
        assert_eq!(
            meta(r#"{"b":"2","a":"1"}"#).as_deref(),
            Some(r#"{"a":"1","b":"2"}"#)
        );
        assert_eq!(
            meta(r#" { "z" : "" , "device" : "ios", "B": "x", "a": "y" } "#).as_deref(),
            Some(r#"{"B":"x","a":"y","device":"ios","z":""}"#)
        );
        // Sorted bytewise on the unescaped UTF-8 key.
        assert_eq!(
            meta(r#"{"é":"1","z":"2","\u00e0":"3","Z":"4","~":"5"}"#).as_deref(),
            Some(r#"{"Z":"4","z":"2","~":"5","à":"3","é":"1"}"#)
        );
        // Escapes are rewritten the way serde_json writes them.
        assert_eq!(
            meta(r#"{"k\/\u0041":"\u00e9\/\"\\\b\f\n\r\t\u0001\u001f\u007f\ud83d\ude00"}"#)
                .as_deref(),
            Some("{\"k/A\":\"é/\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f}😀\"}")
        );
    }

    #[test]
    fn metadata_matches_serde_json() {
        // The canonical form equals serde_json's serialisation of a sorted map.
        let raw = r#"{"zeta":"\u0000\u0008ab\"","alpha":"\u2028\u2029 ok","mid\tkey":"\\","":"empty key","emoji😀":"\ud83d\ude00"}"#;
        let parsed: std::collections::BTreeMap<String, String> = serde_json::from_str(raw).unwrap();
        let expect = serde_json::to_string(&parsed).unwrap();
        let t = parse(&with("metadata", Some(raw))).unwrap();
        assert_eq!(t.metadata(), Some(expect.as_str()));
    }

    #[test]
    fn json_string_writer_matches_serde_json() {
        let mut all = String::new();
        for c in (0u32..0x800)
            .chain(0xfff0..0x10010)
            .filter_map(char::from_u32)
        {
            all.push(c);
            let s = c.to_string();
            let mut out = String::new();
            push_json_str(&mut out, &s);
            assert_eq!(out, serde_json::to_string(&s).unwrap(), "{:#x}", c as u32);
        }
        let mut out = String::new();
        push_json_str(&mut out, &all);
        assert_eq!(out, serde_json::to_string(&all).unwrap());
    }

    // ---- misc ----

    #[test]
    fn unknown_fields_are_ignored() {
        let rec = with(
            "extra",
            Some(r#"{"nested":[1,2,{"deep":"x"}],"amount":"not checked"}"#),
        );
        let t = parse(&rec).unwrap();
        assert_eq!(t.amount_cents, 1250);
        let rec = GOOD.replace("{", r#"{"Amount":"x","AMOUNT":null,"amount ":[],"#);
        assert_eq!(parse(&rec).unwrap().amount_cents, 1250);
    }

    #[test]
    fn escaped_keys_name_known_fields() {
        let rec = GOOD.replace("\"amount\"", "\"\\u0061mount\"");
        assert_ne!(rec, GOOD);
        assert_eq!(parse(&rec).unwrap().amount_cents, 1250);
        let rec = GOOD.replace("\"transaction_id\"", "\"transaction\\u005fid\"");
        assert_eq!(parse(&rec).unwrap().transaction_id(), "tx-1");
        let rec = with("metad\\u0061ta", Some(r#"{"k":"v"}"#));
        assert_eq!(parse(&rec).unwrap().metadata(), Some(r#"{"k":"v"}"#));
    }

    #[test]
    fn strings_of_every_length_scan_correctly() {
        // Exercise the 8-byte scanning loop at every alignment, with escapes
        // and specials at every position.
        for n in 0..40 {
            for special in ["", "\\\"", "\\\\", "é", "😀", "\\u00e9"] {
                for at in 0..=n {
                    let mut s = "m".repeat(n);
                    s.insert_str(at, special);
                    let t = parse(&with("merchant", Some(&format!("\"{s}\"")))).unwrap();
                    let expect: String = serde_json::from_str(&format!("\"{s}\"")).unwrap();
                    assert_eq!(t.merchant(), expect);
                }
                let mut bad = "m".repeat(n);
                bad.insert(n / 2, '\u{1}');
                assert_eq!(
                    reason(&with("merchant", Some(&format!("\"{bad}\"")))),
                    Malformed
                );
            }
            // Unterminated at every length, with or without a trailing backslash.
            let open = format!("{{\"x\":\"{}", "m".repeat(n));
            assert_eq!(reason(&open), Malformed);
            assert_eq!(reason(&format!("{open}\\")), Malformed);
            assert_eq!(reason(&format!("{open}\\u00")), Malformed);
        }
    }

    #[test]
    fn agrees_with_serde_json_on_validity() {
        // Corpus of tricky documents: every one serde_json rejects must be
        // MALFORMED here, and every one it accepts (without duplicate keys)
        // must not be.
        let docs = [
            r#"{"a":1}"#,
            r#"{"a":[1,2,3],"b":{"c":null}}"#,
            r#"{"a":-0.0e-0}"#,
            r#"{"a":"\u0000"}"#,
            r#"{"a":"\ud834\udd1e"}"#,
            r#"{"":""}"#,
            "{\"a\":\"\u{10ffff}\"}",
            r#"{"a":1e}"#,
            r#"{"a":"\u"}"#,
            r#"{"a":[}"#,
            r#"{"a":1}}"#,
            r#"{"a" :1 , "b" :[ ] }"#,
            r#"{"a":.1}"#,
            r#"{"a":-}"#,
            r#"{"a":[true,false,null]}"#,
        ];
        for d in docs {
            let serde_ok = serde_json::from_str::<serde_json::Value>(d)
                .map(|v| v.is_object())
                .unwrap_or(false);
            let ours = parse(d);
            if serde_ok {
                assert_eq!(ours, Err(MissingField), "{d}");
            } else {
                assert_eq!(ours, Err(Malformed), "{d}");
            }
        }
    }
}

/// Differential test: random mutations of a rich record are MALFORMED here
/// exactly when serde_json rejects them (or they hold a duplicate key), and
/// the records accepted carry serde_json's values.
#[cfg(test)]
mod differential {
    use super::*;
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    /// Whether a document serde_json accepts has a duplicate key anywhere.
    fn has_duplicate_key(v: &[u8]) -> bool {
        struct Dup;
        impl<'de> Visitor<'de> for Dup {
            type Value = bool;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
                Ok(false)
            }
            fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
                Ok(false)
            }
            fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
                Ok(false)
            }
            fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
                Ok(false)
            }
            fn visit_str<E>(self, _: &str) -> Result<bool, E> {
                Ok(false)
            }
            fn visit_unit<E>(self) -> Result<bool, E> {
                Ok(false)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<bool, A::Error> {
                let mut dup = false;
                while let Some(d) = a.next_element_seed(Seed)? {
                    dup |= d;
                }
                Ok(dup)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<bool, A::Error> {
                let mut dup = false;
                let mut keys = HashSet::new();
                while let Some(k) = a.next_key::<String>()? {
                    dup |= !keys.insert(k);
                    dup |= a.next_value_seed(Seed)?;
                }
                Ok(dup)
            }
        }
        struct Seed;
        impl<'de> DeserializeSeed<'de> for Seed {
            type Value = bool;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
                d.deserialize_any(Dup)
            }
        }
        let mut de = serde_json::Deserializer::from_slice(v);
        Seed.deserialize(&mut de).unwrap_or(false)
    }

    #[test]
    fn random_mutations_agree_with_serde_json() {
        let seed = r#"{"transaction_id":"tx-1","customer_id":"c-9","amount":12.5,"currency":"USD","merchant":"Ac\u00e9me","category":"books","status":"COMPLETED","timestamp":"2024-01-01T00:00:00Z","metadata":{"a":"b","c":"d\ud83d\ude00"},"x":[1,-2.5e3,true,false,null,{"y":{}}]}"#;
        let alphabet: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b"\\",
            b",",
            b":",
            b" ",
            b"0",
            b"1",
            b"-",
            b"+",
            b".",
            b"e",
            b"E",
            b"u",
            b"d",
            b"8",
            b"n",
            b"t",
            b"\t",
            b"\x01",
            b"\xc3",
            b"\xa9",
            b"\xff",
            b"\\u",
            b"\\ud800",
            b"\\udc00",
            b"a",
            b"\"a\":1,",
            b"null",
            b"\r\n",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let (mut accepted, mut malformed) = (0, 0);
        for _ in 0..60_000 {
            let mut v = seed.as_bytes().to_vec();
            for _ in 0..1 + rnd(3) {
                let at = rnd(v.len() + 1);
                let a = alphabet[rnd(alphabet.len())];
                match rnd(3) {
                    0 => drop(v.splice(at..at, a.iter().copied())),
                    1 if at < v.len() => drop(v.remove(at)),
                    _ if at < v.len() => v[at] = a[0],
                    _ => {}
                }
            }
            let ours = parse_record(&v, 1 << 20, 0, 0);
            let serde_ok = serde_json::from_slice::<serde_json::Value>(&v)
                .map(|j| j.is_object())
                .unwrap_or(false)
                && !has_duplicate_key(&v);
            assert_eq!(
                ours != Err(RejectReason::Malformed),
                serde_ok,
                "{ours:?} for {:?}",
                String::from_utf8_lossy(&v)
            );
            if !serde_ok {
                malformed += 1;
            }
            let Ok(t) = ours else { continue };
            accepted += 1;
            let j: serde_json::Value = serde_json::from_slice(&v).unwrap();
            let s = |k: &str| j[k].as_str().unwrap().to_string();
            assert_eq!(t.transaction_id(), s("transaction_id"));
            assert_eq!(t.customer_id(), s("customer_id"));
            assert_eq!(t.merchant(), s("merchant"));
            assert_eq!(t.category(), s("category"));
            assert_eq!(t.timestamp_raw(), s("timestamp"));
            let amount = j["amount"].as_f64().unwrap();
            assert!((amount * 100.0 - t.amount_cents as f64).abs() < 1e-6);
            match j.get("metadata") {
                None | Some(serde_json::Value::Null) => assert_eq!(t.metadata(), None),
                Some(m) => {
                    let sorted: std::collections::BTreeMap<String, String> =
                        serde_json::from_value(m.clone()).unwrap();
                    let expect = serde_json::to_string(&sorted).unwrap();
                    assert_eq!(t.metadata(), Some(expect.as_str()));
                }
            }
        }
        // The mutations exercise both sides.
        assert!(accepted > 1_000, "{accepted}");
        assert!(malformed > 10_000, "{malformed}");
    }

    #[test]
    fn merchant_rows_follow_spec_9_in_spec_2_order() {
        let ok = br#"{"merchant":"acme","valid_from":"2024-01-31T10:00:00.5+01:00","merchant_category":"grocery","risk_tier":"HIGH","country":"DE","metadata":7,"x":[1]}"#;
        assert_eq!(
            parse_merchant_row(ok, 1 << 20),
            Ok(MerchantRow {
                merchant: "acme".into(),
                valid_from: parse_rfc3339_ms("2024-01-31T09:00:00.5Z").unwrap(),
                merchant_category: "grocery".into(),
                risk_tier: RiskTier::High,
                country: "DE".into(),
            })
        );
        let row = |fields: &str| format!("{{{fields}}}");
        let all = r#""merchant":"m","valid_from":"2024-01-01T00:00:00Z","merchant_category":"c","risk_tier":"LOW","country":"US""#;
        let cases: Vec<(String, RejectReason)> = vec![
            (
                format!("{}{}", row(all), " ".repeat(200)),
                RejectReason::TooLarge,
            ),
            (
                format!(r#"{{{all},"merchant":"n"}}"#),
                RejectReason::Malformed,
            ),
            (format!("[{}]", row(all)), RejectReason::Malformed),
            (
                row(&all.replace(r#""country":"US""#, r#""country":null"#)),
                RejectReason::MissingField,
            ),
            (
                // Missing wins over a bad tier and a bad time.
                row(r#""merchant":"m","valid_from":"x","risk_tier":"low","country":"US""#),
                RejectReason::MissingField,
            ),
            (
                row(&all.replace(r#""merchant":"m""#, r#""merchant":5"#)),
                RejectReason::BadField,
            ),
            (row(&all.replace("LOW", "low")), RejectReason::BadField),
            (
                row(&all
                    .replace("LOW", "EXTREME")
                    .replace("2024-01-01T00:00:00Z", "yesterday")),
                RejectReason::BadField,
            ),
            (
                row(&all.replace("2024-01-01T00:00:00Z", "2024-02-30T00:00:00Z")),
                RejectReason::BadTimestamp,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_merchant_row(text.as_bytes(), 200).map(|_| ()),
                Err(want),
                "{text}"
            );
        }
        assert!(parse_merchant_row(row(all).as_bytes(), 200).is_ok());
    }
}
