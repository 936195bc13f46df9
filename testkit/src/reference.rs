//! The test oracle: an independent, deliberately simple reading of docs/spec.md
//! (sections 1-7, and 9: enrichment from a merchants reference table) and
//! docs/outputs.md over bounded JSON Lines input.
//!
//! Everything here is single-threaded and computed from definitions, not from
//! the job's streaming machinery: the input is read fully, lateness is judged
//! per partition in read order, and every later step (dedup, the as-of join
//! with the reference table, windows, anomalies) sorts the accepted records
//! and applies SPEC's definition.
//!
//! JSON is checked by a small parser of our own (RFC 8259, strict): it sees
//! duplicate keys, lone surrogate escapes, BOMs and the exact literal of
//! `amount`, which serde_json alone would not.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;

// ---------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------

/// The kind of a window spec (SPEC 6). Durations are in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub enum WindowKind {
    Tumbling { size_ms: i64 },
    Sliding { size_ms: i64, slide_ms: i64 },
    Session { gap_ms: i64 },
}

/// One window spec (SPEC 6).
#[derive(Clone, Debug, PartialEq)]
pub struct WindowSpec {
    pub name: String,
    pub kind: WindowKind,
    /// Transaction fields to group by (string fields of `transactions`).
    pub group_by: Vec<String>,
    /// Any of "count", "sum", "avg", "min", "max".
    pub aggregates: Vec<String>,
}

impl WindowSpec {
    pub fn new(name: &str, kind: WindowKind, group_by: &[&str]) -> WindowSpec {
        WindowSpec {
            name: name.to_string(),
            kind,
            group_by: group_by.iter().map(|s| s.to_string()).collect(),
            aggregates: ALL_AGGREGATES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

pub const ALL_AGGREGATES: [&str; 5] = ["count", "sum", "avg", "min", "max"];

/// The three window specs of the default configuration (SPEC 6).
pub fn default_window_specs() -> Vec<WindowSpec> {
    vec![
        WindowSpec::new(
            "status_1m",
            WindowKind::Tumbling { size_ms: 60_000 },
            &["status"],
        ),
        WindowSpec::new(
            "merchant_5m",
            WindowKind::Sliding {
                size_ms: 300_000,
                slide_ms: 60_000,
            },
            &["merchant"],
        ),
        WindowSpec::new(
            "customer_session",
            WindowKind::Session {
                gap_ms: 30 * 60_000,
            },
            &["customer_id"],
        ),
    ]
}

/// Everything the reference depends on. `Default` gives SPEC's defaults.
#[derive(Clone, Debug)]
pub struct RefParams {
    /// The `source` column of transactions and rejects.
    pub source: String,
    /// The `source` column of the merchants reference table's rejects (SPEC 9).
    pub reference_source: String,
    pub max_out_of_orderness_ms: i64,
    pub dedup_horizon_ms: i64,
    pub max_record_bytes: usize,
    /// Per-transaction detector (SPEC 7).
    pub txn_min_history: u64,
    pub txn_z_threshold: f64,
    /// Per-window detector (SPEC 7); `window_z_spec: None` disables it.
    pub window_z_spec: Option<String>,
    /// Any of "txn_count", "sum_cents".
    pub window_z_metrics: Vec<String>,
    pub window_z_history: usize,
    pub window_min_history: u64,
    pub window_z_threshold: f64,
    pub window_z_cooldown_ms: i64,
    pub windows: Vec<WindowSpec>,
}

impl Default for RefParams {
    fn default() -> RefParams {
        RefParams {
            source: "transactions".to_string(),
            reference_source: "merchants".to_string(),
            max_out_of_orderness_ms: 10_000,
            dedup_horizon_ms: 10 * 60_000,
            max_record_bytes: 1_048_576,
            txn_min_history: 10,
            txn_z_threshold: 3.0,
            window_z_spec: Some("status_1m".to_string()),
            window_z_metrics: vec!["txn_count".to_string(), "sum_cents".to_string()],
            window_z_history: 60,
            window_min_history: 10,
            window_z_threshold: 3.0,
            window_z_cooldown_ms: 30 * 60_000,
            windows: default_window_specs(),
        }
    }
}

// ---------------------------------------------------------------------------
// Normalized output rows (shared with committed.rs)
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub struct TransactionRow {
    pub transaction_id: String,
    pub customer_id: String,
    /// The decimal(18,2) `amount` as its unscaled value (cents).
    pub amount: i128,
    pub currency: String,
    pub merchant: String,
    pub category: String,
    pub status: String,
    /// The input timestamp string, unchanged (its decoded JSON string value).
    pub timestamp: String,
    /// Compact JSON, keys sorted bytewise, serde_json escaping; None when absent.
    pub metadata: Option<String>,
    pub event_time: i64,
    pub amount_cents: i64,
    pub amount_category: String,
    pub hour_of_day: i32,
    pub day_of_week: i32,
    pub source: String,
    pub partition: i32,
    pub offset: i64,
    /// SPEC 9, from the merchants row the transaction joined as of its event
    /// time; None when no row matches (and always from the unenriched
    /// `compute*` functions).
    pub merchant_category: Option<String>,
    pub risk_tier: Option<String>,
    /// The reference row's `country`.
    pub merchant_country: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WindowRow {
    pub window: String,
    pub window_start: i64,
    pub window_end: i64,
    /// (group-by field, value), sorted by field name.
    pub group: Vec<(String, Option<String>)>,
    /// None when the aggregate is not configured for the spec.
    pub txn_count: Option<i64>,
    pub sum_cents: Option<i64>,
    pub avg_amount: Option<f64>,
    pub min_cents: Option<i64>,
    pub max_cents: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AnomalyRow {
    pub kind: String,
    pub key: String,
    pub metric: String,
    pub value: f64,
    pub mean: f64,
    pub stddev: f64,
    pub z: f64,
    pub event_time: i64,
    pub history_count: i64,
    pub transaction_id: Option<String>,
    pub window: Option<String>,
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RejectRow {
    pub raw: String,
    /// "utf8" or "base64"
    pub raw_encoding: String,
    pub reason: String,
    pub source: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outputs {
    pub transactions: Vec<TransactionRow>,
    pub windows: Vec<WindowRow>,
    pub anomalies: Vec<AnomalyRow>,
    pub rejects: Vec<RejectRow>,
    pub duplicates: u64,
}

// ---------------------------------------------------------------------------
// Reading JSON Lines files
// ---------------------------------------------------------------------------

/// Sorts paths in "sorted path order": bytewise on the path as given.
pub fn sort_paths(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut sorted = files.to_vec();
    sorted.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    sorted
}

/// The records of one JSON Lines file (gunzipped when the name ends in `.gz`):
/// every line without its `\n`; a final `\n` does not make an empty record;
/// a `\r` before the `\n` stays in the record.
pub fn read_records(path: &Path) -> Vec<Vec<u8>> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let bytes = if path.to_string_lossy().ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("gunzip {}: {e}", path.display()));
        out
    } else {
        raw
    };
    split_lines(&bytes)
}

pub fn split_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(|l| l.to_vec()).collect();
    if bytes.ends_with(b"\n") {
        lines.pop(); // the empty piece after the final newline
    }
    lines
}

// ---------------------------------------------------------------------------
// A strict JSON parser (RFC 8259), iterative so any nesting depth is fine
// ---------------------------------------------------------------------------

/// A parsed JSON value, kept shallow: containers below the second level keep
/// no contents (the record's rules never look that deep, but they are fully
/// validated).
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number's literal text, exactly as written.
    Number(String),
    String(String),
    Array,
    Object(Vec<(String, Json)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

/// An open container while parsing.
struct Open {
    is_object: bool,
    keys: HashSet<String>,
    /// Members kept for objects at depth 1 and 2 (the record and its fields).
    members: Vec<(String, Json)>,
    /// The key whose value is being parsed (objects only).
    pending_key: String,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Result<(), ()> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(())
        }
    }

    fn eat_word(&mut self, w: &[u8]) -> Result<(), ()> {
        if self.s[self.i..].starts_with(w) {
            self.i += w.len();
            Ok(())
        } else {
            Err(())
        }
    }

    fn hex4(&mut self) -> Result<u32, ()> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = (self.peek().ok_or(())? as char).to_digit(16).ok_or(())?;
            v = v * 16 + d;
            self.i += 1;
        }
        Ok(v)
    }

    /// A string, starting at its opening quote. The input is valid UTF-8 and
    /// we only split it at ASCII bytes, so the copied bytes stay valid UTF-8.
    fn string(&mut self) -> Result<String, ()> {
        self.eat(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let b = self.peek().ok_or(())?;
            self.i += 1;
            match b {
                b'"' => break,
                0x00..=0x1f => return Err(()), // unescaped control character
                b'\\' => {
                    let e = self.peek().ok_or(())?;
                    self.i += 1;
                    let c: char = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let u = self.hex4()?;
                            if (0xD800..0xDC00).contains(&u) {
                                // high surrogate: must be followed by a low one
                                self.eat_word(b"\\u")?;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(());
                                }
                                char::from_u32(0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00))
                                    .ok_or(())?
                            } else if (0xDC00..0xE000).contains(&u) {
                                return Err(()); // lone low surrogate
                            } else {
                                char::from_u32(u).ok_or(())?
                            }
                        }
                        _ => return Err(()),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| ())
    }

    /// A number literal per RFC 8259: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    fn number(&mut self) -> Result<String, ()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.i += 1;
                }
            }
            _ => return Err(()),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits()?;
        }
        Ok(String::from_utf8(self.s[start..self.i].to_vec()).unwrap())
    }

    fn digits(&mut self) -> Result<(), ()> {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        if self.i == start {
            Err(())
        } else {
            Ok(())
        }
    }

    /// Reads an object key (after `{` or `,`) and its `:`, checking duplicates.
    fn key(&mut self, open: &mut Open) -> Result<(), ()> {
        self.skip_ws();
        let k = self.string()?;
        if !open.keys.insert(k.clone()) {
            return Err(()); // duplicate key
        }
        self.skip_ws();
        self.eat(b':')?;
        open.pending_key = k;
        Ok(())
    }
}

/// Parses one complete JSON text (surrounding whitespace allowed).
/// Err(()) for anything that is not valid JSON or that SPEC calls malformed
/// (duplicate keys, lone surrogates). The input must already be valid UTF-8.
// Err carries nothing: every failure is the same reject (MALFORMED), and
// the oracle's tests compare with `Err(())` itself.
#[allow(clippy::result_unit_err)]
pub fn parse_json(text: &str) -> Result<Json, ()> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let mut stack: Vec<Open> = Vec::new();
    let result: Json;
    'value: loop {
        // Expect a value.
        p.skip_ws();
        let mut value = match p.peek().ok_or(())? {
            b'{' | b'[' => {
                let is_object = p.peek() == Some(b'{');
                p.i += 1;
                p.skip_ws();
                let close = if is_object { b'}' } else { b']' };
                if p.peek() == Some(close) {
                    p.i += 1;
                    if is_object {
                        Json::Object(Vec::new())
                    } else {
                        Json::Array
                    }
                } else {
                    let mut open = Open {
                        is_object,
                        keys: HashSet::new(),
                        members: Vec::new(),
                        pending_key: String::new(),
                    };
                    if is_object {
                        p.key(&mut open)?;
                    }
                    stack.push(open);
                    continue 'value;
                }
            }
            b'"' => Json::String(p.string()?),
            b't' => {
                p.eat_word(b"true")?;
                Json::Bool(true)
            }
            b'f' => {
                p.eat_word(b"false")?;
                Json::Bool(false)
            }
            b'n' => {
                p.eat_word(b"null")?;
                Json::Null
            }
            b'-' | b'0'..=b'9' => Json::Number(p.number()?),
            _ => return Err(()),
        };
        // A value is complete: hand it to its container, closing containers
        // as long as their closing bracket follows.
        loop {
            let depth = stack.len();
            let Some(top) = stack.last_mut() else {
                result = value;
                break 'value;
            };
            if top.is_object && depth <= 2 {
                top.members
                    .push((std::mem::take(&mut top.pending_key), value));
            }
            p.skip_ws();
            match p.peek().ok_or(())? {
                b',' => {
                    p.i += 1;
                    if top.is_object {
                        p.key(top)?;
                    }
                    continue 'value;
                }
                b'}' if top.is_object => {
                    p.i += 1;
                    let open = stack.pop().unwrap();
                    value = Json::Object(open.members);
                }
                b']' if !top.is_object => {
                    p.i += 1;
                    stack.pop();
                    value = Json::Array;
                }
                _ => return Err(()),
            }
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(());
    }
    Ok(result)
}

// ---------------------------------------------------------------------------
// Field rules
// ---------------------------------------------------------------------------

/// Exact cents of a JSON number literal when it is a valid amount
/// (0 < amount < 1,000,000, no nonzero digit beyond the second decimal).
pub fn amount_cents(literal: &str) -> Option<i64> {
    let b = literal.as_bytes();
    if b.first() == Some(&b'-') {
        return None; // negative or -0: never > 0
    }
    let (mantissa, exp_text) = match literal.find(['e', 'E']) {
        Some(i) => (&literal[..i], Some(&literal[i + 1..])),
        None => (literal, None),
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    // Exponent, saturated far beyond anything that could matter.
    let mut exp: i128 = 0;
    if let Some(t) = exp_text {
        let (neg, digits) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        for d in digits.bytes() {
            exp = (exp * 10 + (d - b'0') as i128).min(1_000_000_000_000);
        }
        if neg {
            exp = -exp;
        }
    }
    // value = D × 10^e with D the digit string (no point) and e the exponent
    // adjusted by the number of fractional digits.
    let mut digits: String = format!("{int_part}{frac_part}");
    let mut e: i128 = exp - frac_part.len() as i128;
    let trimmed = digits.trim_start_matches('0').to_string();
    digits = trimmed;
    if digits.is_empty() {
        return None; // zero
    }
    while digits.ends_with('0') {
        digits.pop();
        e += 1;
    }
    // cents = D × 10^(e+2): must be an integer and below 100,000,000.
    let shift = e + 2;
    if shift < 0 {
        return None; // a nonzero digit beyond the second decimal
    }
    if digits.len() as i128 + shift > 8 {
        return None; // at least 1,000,000.00
    }
    let mut cents: i64 = digits.parse().unwrap();
    for _ in 0..shift {
        cents *= 10;
    }
    assert!(cents > 0 && cents < 100_000_000);
    Some(cents)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

/// SPEC 2's timestamp form to UTC milliseconds (finer digits truncated).
/// `YYYY-MM-DD` `T`/`t` `hh:mm:ss` [`.` digits+] (`Z`/`z` | `±hh:mm`).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(|c| c.is_ascii_digit()) {
            return None;
        }
        Some(
            part.iter()
                .fold(0i64, |acc, c| acc * 10 + (c - b'0') as i64),
        )
    };
    let year = num(0, 4)?;
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let month = num(5, 2)?;
    if b.get(7) != Some(&b'-') {
        return None;
    }
    let day = num(8, 2)?;
    if !matches!(b.get(10), Some(b'T' | b't')) {
        return None;
    }
    let hour = num(11, 2)?;
    if b.get(13) != Some(&b':') {
        return None;
    }
    let minute = num(14, 2)?;
    if b.get(16) != Some(&b':') {
        return None;
    }
    let second = num(17, 2)?;
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        // First three digits, padded with zeros; finer digits are dropped.
        let mut ms_digits: Vec<u8> = b[start..i.min(start + 3)].to_vec();
        while ms_digits.len() < 3 {
            ms_digits.push(b'0');
        }
        frac_ms = ms_digits
            .iter()
            .fold(0i64, |acc, c| acc * 10 + (c - b'0') as i64);
    }
    let offset_seconds: i64 = match b.get(i) {
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            let sign = if *sign == b'+' { 1 } else { -1 };
            let oh = num(i + 1, 2)?;
            if b.get(i + 3) != Some(&b':') {
                return None;
            }
            let om = num(i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            i += 6;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    if i != b.len() {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let local_seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some((local_seconds - offset_seconds) * 1000 + frac_ms)
}

/// A record that passed every rule of SPEC 2 except lateness (public for
/// the differential test of the job's record scanner,
/// `tests/scanner_differential.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct Valid {
    pub transaction_id: String,
    pub customer_id: String,
    pub cents: i64,
    pub currency: String,
    pub merchant: String,
    pub category: String,
    pub status: String,
    pub timestamp: String,
    pub metadata: Option<BTreeMap<String, String>>,
    pub event_time: i64,
}

/// Deepest container nesting a record may have, its own object counting as
/// depth 1 (docs/choices.md: deeper records are `MALFORMED`). `parse_json`
/// itself accepts any depth; the record rules add this bound.
pub const MAX_RECORD_DEPTH: usize = 128;

/// The deepest container nesting of a JSON text accepted by `parse_json`:
/// brackets outside strings, counted byte by byte (only an estimate, but
/// never a panic, for other text).
pub fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &c in text.as_bytes() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The record's members, or `MALFORMED` (SPEC 2 rule 2 and the depth bound).
fn record_members(text: &str) -> Result<Vec<(String, Json)>, &'static str> {
    // A BOM (U+FEFF) is not JSON whitespace, so the parser rejects it.
    match parse_json(text) {
        Ok(Json::Object(members)) if nesting_depth(text) <= MAX_RECORD_DEPTH => Ok(members),
        _ => Err("MALFORMED"),
    }
}

/// SPEC 2's rules, in precedence order, except `LATE`.
pub fn validate(raw: &[u8], max_record_bytes: usize) -> Result<Valid, &'static str> {
    if raw.len() > max_record_bytes {
        return Err("TOO_LARGE");
    }
    let text = std::str::from_utf8(raw).map_err(|_| "MALFORMED")?;
    let members = record_members(text)?;
    let fields: HashMap<&str, &Json> = members.iter().map(|(k, v)| (k.as_str(), v)).collect();

    let required = [
        "transaction_id",
        "customer_id",
        "amount",
        "currency",
        "merchant",
        "category",
        "status",
        "timestamp",
    ];
    for name in required {
        match fields.get(name) {
            None | Some(Json::Null) => return Err("MISSING_FIELD"),
            Some(_) => {}
        }
    }
    let get = |name: &str| -> &Json { fields[name] };
    let as_str = |j: &Json| -> Option<String> {
        match j {
            Json::String(s) => Some(s.clone()),
            _ => None,
        }
    };

    // BAD_FIELD
    let id_ok = |j: &Json| matches!(j, Json::String(s) if (1..=128).contains(&s.len()));
    if !id_ok(get("transaction_id")) || !id_ok(get("customer_id")) {
        return Err("BAD_FIELD");
    }
    let merchant = as_str(get("merchant")).ok_or("BAD_FIELD")?;
    let category = as_str(get("category")).ok_or("BAD_FIELD")?;
    let metadata = match fields.get("metadata") {
        None | Some(Json::Null) => None,
        Some(Json::Object(entries)) => {
            let mut map = BTreeMap::new();
            for (k, v) in entries {
                let v = as_str(v).ok_or("BAD_FIELD")?;
                map.insert(k.clone(), v);
            }
            Some(map)
        }
        Some(_) => return Err("BAD_FIELD"),
    };

    // BAD_AMOUNT
    let cents = match get("amount") {
        Json::Number(lit) => amount_cents(lit).ok_or("BAD_AMOUNT")?,
        _ => return Err("BAD_AMOUNT"),
    };

    // BAD_CURRENCY
    let currency = as_str(get("currency"))
        .filter(|c| ["USD", "EUR", "GBP"].contains(&c.as_str()))
        .ok_or("BAD_CURRENCY")?;

    // BAD_STATUS
    let status = as_str(get("status"))
        .filter(|s| ["COMPLETED", "PENDING", "FAILED"].contains(&s.as_str()))
        .ok_or("BAD_STATUS")?;

    // BAD_TIMESTAMP
    let timestamp = as_str(get("timestamp")).ok_or("BAD_TIMESTAMP")?;
    let event_time = parse_timestamp(&timestamp).ok_or("BAD_TIMESTAMP")?;

    Ok(Valid {
        transaction_id: as_str(get("transaction_id")).unwrap(),
        customer_id: as_str(get("customer_id")).unwrap(),
        cents,
        currency,
        merchant,
        category,
        status,
        timestamp,
        metadata,
        event_time,
    })
}

// ---------------------------------------------------------------------------
// SPEC 9: merchants reference rows
// ---------------------------------------------------------------------------

/// A merchants reference row that passed SPEC 9's rules except lateness.
#[derive(Clone, Debug, PartialEq)]
pub struct RefValid {
    pub merchant: String,
    pub valid_from: i64,
    pub merchant_category: String,
    pub risk_tier: String,
    pub country: String,
}

/// SPEC 9's rules for a reference row, with SPEC 2's reason codes in their
/// precedence order, except `LATE`.
pub fn validate_reference(raw: &[u8], max_record_bytes: usize) -> Result<RefValid, &'static str> {
    if raw.len() > max_record_bytes {
        return Err("TOO_LARGE");
    }
    let text = std::str::from_utf8(raw).map_err(|_| "MALFORMED")?;
    let members = record_members(text)?;
    let fields: HashMap<&str, &Json> = members.iter().map(|(k, v)| (k.as_str(), v)).collect();

    let required = [
        "merchant",
        "valid_from",
        "merchant_category",
        "risk_tier",
        "country",
    ];
    for name in required {
        match fields.get(name) {
            None | Some(Json::Null) => return Err("MISSING_FIELD"),
            Some(_) => {}
        }
    }
    let as_str = |name: &str| -> Option<String> {
        match fields[name] {
            Json::String(s) => Some(s.clone()),
            _ => None,
        }
    };

    // BAD_FIELD: the strings, and a risk tier that is not one of the three.
    let merchant = as_str("merchant").ok_or("BAD_FIELD")?;
    let merchant_category = as_str("merchant_category").ok_or("BAD_FIELD")?;
    let country = as_str("country").ok_or("BAD_FIELD")?;
    let risk_tier = as_str("risk_tier")
        .filter(|t| ["LOW", "MEDIUM", "HIGH"].contains(&t.as_str()))
        .ok_or("BAD_FIELD")?;

    // BAD_TIMESTAMP
    let valid_from = as_str("valid_from")
        .and_then(|s| parse_timestamp(&s))
        .ok_or("BAD_TIMESTAMP")?;

    Ok(RefValid {
        merchant,
        valid_from,
        merchant_category,
        risk_tier,
        country,
    })
}

/// An accepted (valid, not late) reference row with its position.
#[derive(Clone, Debug)]
struct RefAccepted {
    v: RefValid,
    partition: i32,
    offset: i64,
}

/// The merchants table for the as-of join: per merchant, its accepted rows
/// in (valid_from, partition, offset) order.
struct MerchantTable {
    by_merchant: HashMap<String, Vec<RefAccepted>>,
}

impl MerchantTable {
    /// Validates the reference partitions and judges lateness in each one's
    /// own order (SPEC 3 and 9); rejects go to `out.rejects`.
    fn build(reference: &[Vec<Vec<u8>>], p: &RefParams, out: &mut Outputs) -> MerchantTable {
        let mut by_merchant: HashMap<String, Vec<RefAccepted>> = HashMap::new();
        for (partition, rows) in reference.iter().enumerate() {
            let partition = partition as i32;
            let mut max_ts: Option<i64> = None;
            for (offset, raw) in rows.iter().enumerate() {
                let offset = offset as i64;
                let verdict =
                    validate_reference(raw, p.max_record_bytes).and_then(|v| match max_ts {
                        Some(m) if v.valid_from < m - p.max_out_of_orderness_ms => Err("LATE"),
                        _ => Ok(v),
                    });
                match verdict {
                    Ok(v) => {
                        max_ts = Some(max_ts.map_or(v.valid_from, |m| m.max(v.valid_from)));
                        by_merchant
                            .entry(v.merchant.clone())
                            .or_default()
                            .push(RefAccepted {
                                v,
                                partition,
                                offset,
                            });
                    }
                    Err(reason) => out.rejects.push(reject_row(
                        raw,
                        reason,
                        &p.reference_source,
                        partition,
                        offset,
                    )),
                }
            }
        }
        for rows in by_merchant.values_mut() {
            rows.sort_by_key(|r| (r.v.valid_from, r.partition, r.offset));
        }
        MerchantTable { by_merchant }
    }

    /// The row of `merchant` as of `time`: the greatest (valid_from,
    /// partition, offset) with valid_from <= time.
    fn as_of(&self, merchant: &str, time: i64) -> Option<&RefValid> {
        let rows = self.by_merchant.get(merchant)?;
        let n = rows.partition_point(|r| r.v.valid_from <= time);
        n.checked_sub(1).map(|i| &rows[i].v)
    }
}

// ---------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------

/// An accepted (valid, not late) record with its position.
#[derive(Clone, Debug)]
struct Accepted {
    v: Valid,
    partition: i32,
    offset: i64,
}

pub fn compute(files: &[PathBuf], p: &RefParams) -> Outputs {
    let files = sort_paths(files);
    let partitions: Vec<Vec<Vec<u8>>> = files.iter().map(|f| read_records(f)).collect();
    compute_records(&partitions, p)
}

/// The same as `compute`, over records already read: `partitions[i]` holds
/// partition i's records in offset order.
pub fn compute_records(partitions: &[Vec<Vec<u8>>], p: &RefParams) -> Outputs {
    compute_lineage(partitions, &vec![None; partitions.len()], p)
}

/// The same as `compute_records`, where partition `i` with `inherit[i] =
/// Some(j)` (`j < i`) continues partition `j` (a Kinesis child shard and its
/// first parent): its `max_ts` starts at `j`'s final one.
pub fn compute_lineage(
    partitions: &[Vec<Vec<u8>>],
    inherit: &[Option<usize>],
    p: &RefParams,
) -> Outputs {
    pipeline(partitions, inherit, None, p)
}

/// SPEC 1-9: `compute_records` with every kept transaction enriched from the
/// merchants reference table (SPEC 9). `reference[j]` holds reference
/// partition j's rows (JSON Lines records) in offset order; reference
/// partitions are numbered on their own, from 0, and their rejects carry
/// `p.reference_source`.
pub fn compute_enriched(
    partitions: &[Vec<Vec<u8>>],
    reference: &[Vec<Vec<u8>>],
    p: &RefParams,
) -> Outputs {
    pipeline(
        partitions,
        &vec![None; partitions.len()],
        Some(reference),
        p,
    )
}

/// `compute_enriched` over files: each list in sorted path order, a file's
/// partition index its position there (as `compute`).
pub fn compute_files_enriched(
    files: &[PathBuf],
    reference_files: &[PathBuf],
    p: &RefParams,
) -> Outputs {
    let read = |files: &[PathBuf]| -> Vec<Vec<Vec<u8>>> {
        sort_paths(files).iter().map(|f| read_records(f)).collect()
    };
    compute_enriched(&read(files), &read(reference_files), p)
}

/// The shared pipeline; `reference: None` leaves transactions unenriched.
fn pipeline(
    partitions: &[Vec<Vec<u8>>],
    inherit: &[Option<usize>],
    reference: Option<&[Vec<Vec<u8>>]>,
    p: &RefParams,
) -> Outputs {
    let mut out = Outputs::default();

    // SPEC 2 and 3: validate, then judge lateness in each partition's order.
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut final_max_ts: Vec<Option<i64>> = Vec::new();
    for (partition, records) in partitions.iter().enumerate() {
        let mut max_ts: Option<i64> = inherit[partition].and_then(|j| {
            assert!(
                j < partition,
                "partition {partition} inherits from a later one"
            );
            final_max_ts[j]
        });
        let partition = partition as i32;
        for (offset, raw) in records.iter().enumerate() {
            let offset = offset as i64;
            let verdict = validate(raw, p.max_record_bytes).and_then(|v| match max_ts {
                Some(m) if v.event_time < m - p.max_out_of_orderness_ms => Err("LATE"),
                _ => Ok(v),
            });
            match verdict {
                Ok(v) => {
                    max_ts = Some(max_ts.map_or(v.event_time, |m| m.max(v.event_time)));
                    accepted.push(Accepted {
                        v,
                        partition,
                        offset,
                    });
                }
                Err(reason) => out
                    .rejects
                    .push(reject_row(raw, reason, &p.source, partition, offset)),
            }
        }
        final_max_ts.push(max_ts);
    }

    // SPEC 4: dedup in (event time, partition, offset) order.
    accepted.sort_by_key(|a| (a.v.event_time, a.partition, a.offset));
    let mut anchors: HashMap<String, i64> = HashMap::new();
    let mut kept: Vec<Accepted> = Vec::new();
    for a in accepted {
        match anchors.get(&a.v.transaction_id) {
            Some(&anchor) if a.v.event_time - anchor <= p.dedup_horizon_ms => out.duplicates += 1,
            _ => {
                anchors.insert(a.v.transaction_id.clone(), a.v.event_time);
                kept.push(a);
            }
        }
    }

    // SPEC 9: the as-of join of every kept transaction with its merchant's row.
    let table = reference.map(|r| MerchantTable::build(r, p, &mut out));
    let joined: Vec<Option<&RefValid>> = kept
        .iter()
        .map(|a| {
            table
                .as_ref()
                .and_then(|t| t.as_of(&a.v.merchant, a.v.event_time))
        })
        .collect();

    // SPEC 5
    let txns: Vec<TransactionRow> = kept
        .iter()
        .zip(&joined)
        .map(|(a, r)| transaction_row(a, *r, &p.source))
        .collect();

    // SPEC 6
    for spec in &p.windows {
        let aggs = window_aggregates(spec, &txns);
        out.windows.extend(aggs.iter().map(|w| w.to_row(spec)));
    }

    // SPEC 7
    out.anomalies.extend(transaction_anomalies(&txns, p));
    if let Some(name) = &p.window_z_spec {
        let spec = p
            .windows
            .iter()
            .find(|s| &s.name == name)
            .unwrap_or_else(|| panic!("window_z_spec {name} is not a configured window spec"));
        let aggs = window_aggregates(spec, &txns);
        out.anomalies.extend(window_anomalies(spec, &aggs, p));
    }

    out.transactions = txns;
    out
}

fn reject_row(raw: &[u8], reason: &str, source: &str, partition: i32, offset: i64) -> RejectRow {
    let (raw, raw_encoding) = match std::str::from_utf8(raw) {
        Ok(s) => (s.to_string(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(raw),
            "base64",
        ),
    };
    RejectRow {
        raw,
        raw_encoding: raw_encoding.to_string(),
        reason: reason.to_string(),
        source: source.to_string(),
        partition,
        offset,
    }
}

pub fn amount_category(cents: i64) -> &'static str {
    if cents < 10_000 {
        "small"
    } else if cents < 100_000 {
        "medium"
    } else {
        "large"
    }
}

/// (hour of day, ISO day of week) in UTC of an event time in ms.
pub fn hour_and_weekday(ms: i64) -> (i32, i32) {
    let hour = ms.div_euclid(3_600_000).rem_euclid(24) as i32;
    let days = ms.div_euclid(86_400_000);
    // 1970-01-01 was a Thursday (ISO 4).
    let weekday = ((days + 3).rem_euclid(7) + 1) as i32;
    (hour, weekday)
}

/// A kept transaction's row; `joined` is its merchants row as of its event
/// time (SPEC 9), None when unenriched or without a match.
fn transaction_row(a: &Accepted, joined: Option<&RefValid>, source: &str) -> TransactionRow {
    let v = &a.v;
    let (hour_of_day, day_of_week) = hour_and_weekday(v.event_time);
    TransactionRow {
        transaction_id: v.transaction_id.clone(),
        customer_id: v.customer_id.clone(),
        amount: v.cents as i128,
        currency: v.currency.clone(),
        merchant: v.merchant.clone(),
        category: v.category.clone(),
        status: v.status.clone(),
        timestamp: v.timestamp.clone(),
        // BTreeMap<String, _> iterates keys in bytewise order.
        metadata: v
            .metadata
            .as_ref()
            .map(|m| serde_json::to_string(m).unwrap()),
        event_time: v.event_time,
        amount_cents: v.cents,
        amount_category: amount_category(v.cents).to_string(),
        hour_of_day,
        day_of_week,
        source: source.to_string(),
        partition: a.partition,
        offset: a.offset,
        merchant_category: joined.map(|r| r.merchant_category.clone()),
        risk_tier: joined.map(|r| r.risk_tier.clone()),
        merchant_country: joined.map(|r| r.country.clone()),
    }
}

/// A string field of a transaction, for group-by. The enriched fields
/// (SPEC 9) are None for a transaction without a merchants row; a None value
/// is a group of its own.
pub fn group_field(t: &TransactionRow, field: &str) -> Option<String> {
    let value = match field {
        "transaction_id" => &t.transaction_id,
        "customer_id" => &t.customer_id,
        "currency" => &t.currency,
        "merchant" => &t.merchant,
        "category" => &t.category,
        "status" => &t.status,
        "timestamp" => &t.timestamp,
        "amount_category" => &t.amount_category,
        "source" => &t.source,
        "merchant_category" => return t.merchant_category.clone(),
        "risk_tier" => return t.risk_tier.clone(),
        "merchant_country" => return t.merchant_country.clone(),
        other => panic!("reference: unsupported group-by field {other}"),
    };
    Some(value.clone())
}

/// One window's aggregate for one group.
#[derive(Clone, Debug)]
struct WindowAgg {
    start: i64,
    end: i64,
    /// Group values, in the spec's group_by order (None: an enriched field
    /// without a merchants row).
    key: Vec<Option<String>>,
    count: i64,
    sum: i64,
    min: i64,
    max: i64,
}

impl WindowAgg {
    fn new(start: i64, end: i64, key: Vec<Option<String>>) -> WindowAgg {
        WindowAgg {
            start,
            end,
            key,
            count: 0,
            sum: 0,
            min: i64::MAX,
            max: i64::MIN,
        }
    }

    fn add(&mut self, cents: i64) {
        self.count += 1;
        self.sum += cents;
        self.min = self.min.min(cents);
        self.max = self.max.max(cents);
    }

    fn to_row(&self, spec: &WindowSpec) -> WindowRow {
        let has = |a: &str| spec.aggregates.iter().any(|x| x == a);
        let mut group: Vec<(String, Option<String>)> = spec
            .group_by
            .iter()
            .cloned()
            .zip(self.key.iter().cloned())
            .collect();
        group.sort();
        WindowRow {
            window: spec.name.clone(),
            window_start: self.start,
            window_end: self.end,
            group,
            txn_count: has("count").then_some(self.count),
            sum_cents: has("sum").then_some(self.sum),
            avg_amount: has("avg").then(|| self.sum as f64 / self.count as f64 / 100.0),
            min_cents: has("min").then_some(self.min),
            max_cents: has("max").then_some(self.max),
        }
    }
}

/// Every window row of a spec over the kept transactions, sorted by
/// (key, start, end).
fn window_aggregates(spec: &WindowSpec, txns: &[TransactionRow]) -> Vec<WindowAgg> {
    let key_of = |t: &TransactionRow| -> Vec<Option<String>> {
        spec.group_by.iter().map(|f| group_field(t, f)).collect()
    };
    let mut windows: BTreeMap<(Vec<Option<String>>, i64, i64), WindowAgg> = BTreeMap::new();
    let mut add = |key: Vec<Option<String>>, start: i64, end: i64, cents: i64| {
        windows
            .entry((key.clone(), start, end))
            .or_insert_with(|| WindowAgg::new(start, end, key))
            .add(cents);
    };
    match spec.kind {
        WindowKind::Tumbling { size_ms } => {
            for t in txns {
                let start = t.event_time.div_euclid(size_ms) * size_ms;
                add(key_of(t), start, start + size_ms, t.amount_cents);
            }
        }
        WindowKind::Sliding { size_ms, slide_ms } => {
            for t in txns {
                // Every start s = k·slide with s <= t < s + size.
                let mut start = t.event_time.div_euclid(slide_ms) * slide_ms;
                while start + size_ms > t.event_time {
                    add(key_of(t), start, start + size_ms, t.amount_cents);
                    start -= slide_ms;
                }
            }
        }
        WindowKind::Session { gap_ms } => {
            let mut by_key: BTreeMap<Vec<Option<String>>, Vec<&TransactionRow>> = BTreeMap::new();
            for t in txns {
                by_key.entry(key_of(t)).or_default().push(t);
            }
            for (key, mut ts) in by_key {
                ts.sort_by_key(|t| t.event_time);
                let mut current: Option<(i64, i64, Vec<i64>)> = None; // (first, last, amounts)
                for t in ts {
                    match &mut current {
                        Some((_, last, amounts)) if t.event_time - *last <= gap_ms => {
                            *last = t.event_time;
                            amounts.push(t.amount_cents);
                        }
                        _ => {
                            if let Some((first, last, amounts)) = current.take() {
                                for c in amounts {
                                    add(key.clone(), first, last + gap_ms, c);
                                }
                            }
                            current = Some((t.event_time, t.event_time, vec![t.amount_cents]));
                        }
                    }
                }
                if let Some((first, last, amounts)) = current.take() {
                    for c in amounts {
                        add(key.clone(), first, last + gap_ms, c);
                    }
                }
            }
        }
    }
    windows.into_values().collect()
}

/// z-score statistics over integer history values, exactly as docs/outputs.md
/// "Numbers" defines them. Returns (mean, stddev, z) in the values' own unit,
/// or None when stddev is not > 0.
pub fn z_stats(history: &[i64], x: i64) -> Option<(f64, f64, f64)> {
    let n = history.len() as i128;
    let s: i128 = history.iter().map(|&v| v as i128).sum();
    let q: i128 = history.iter().map(|&v| (v as i128) * (v as i128)).sum();
    let var_n2 = n * q - s * s; // n² · variance
    if var_n2 <= 0 {
        return None;
    }
    let root = (var_n2 as f64).sqrt();
    let mean = s as f64 / n as f64;
    let stddev = root / n as f64;
    let z = (n * x as i128 - s) as f64 / root;
    Some((mean, stddev, z))
}

fn transaction_anomalies(txns: &[TransactionRow], p: &RefParams) -> Vec<AnomalyRow> {
    let mut by_customer: BTreeMap<&str, Vec<&TransactionRow>> = BTreeMap::new();
    for t in txns {
        by_customer.entry(&t.customer_id).or_default().push(t);
    }
    let mut rows = Vec::new();
    for (customer, mut ts) in by_customer {
        ts.sort_by(|a, b| {
            (a.event_time, a.transaction_id.as_bytes())
                .cmp(&(b.event_time, b.transaction_id.as_bytes()))
        });
        let mut history: Vec<i64> = Vec::new();
        for t in ts {
            let x = t.amount_cents;
            if history.len() as u64 >= p.txn_min_history {
                if let Some((mean, stddev, z)) = z_stats(&history, x) {
                    if z.abs() >= p.txn_z_threshold {
                        rows.push(AnomalyRow {
                            kind: "transaction".to_string(),
                            key: customer.to_string(),
                            metric: "amount".to_string(),
                            value: x as f64 / 100.0,
                            mean: mean / 100.0,
                            stddev: stddev / 100.0,
                            z,
                            event_time: t.event_time,
                            history_count: history.len() as i64,
                            transaction_id: Some(t.transaction_id.clone()),
                            window: None,
                            window_start: None,
                            window_end: None,
                        });
                    }
                }
            }
            history.push(x);
        }
    }
    rows
}

fn window_anomalies(spec: &WindowSpec, aggs: &[WindowAgg], p: &RefParams) -> Vec<AnomalyRow> {
    // Group the spec's window rows by key, each in (start, end) order. The
    // anomaly `key` is the values joined with `|`, a None value written as
    // ""; distinct groups keep distinct histories even when their joined
    // texts coincide.
    let mut by_key: BTreeMap<(String, Vec<Option<String>>), Vec<&WindowAgg>> = BTreeMap::new();
    for w in aggs {
        let text: Vec<&str> = w.key.iter().map(|v| v.as_deref().unwrap_or("")).collect();
        by_key
            .entry((text.join("|"), w.key.clone()))
            .or_default()
            .push(w);
    }
    let mut rows = Vec::new();
    for ((key, _), mut ws) in by_key {
        ws.sort_by_key(|w| (w.start, w.end));
        for metric in &p.window_z_metrics {
            let value_of = |w: &WindowAgg| -> i64 {
                match metric.as_str() {
                    "txn_count" => w.count,
                    "sum_cents" => w.sum,
                    other => panic!("reference: unknown window metric {other}"),
                }
            };
            let mut ring: VecDeque<i64> = VecDeque::new();
            let mut last_alert_end: Option<i64> = None;
            for w in &ws {
                let x = value_of(w);
                let history: Vec<i64> = ring.iter().copied().collect();
                if history.len() as u64 >= p.window_min_history {
                    if let Some((mean, stddev, z)) = z_stats(&history, x) {
                        let cooled = match last_alert_end {
                            None => true,
                            Some(e) => w.end >= e + p.window_z_cooldown_ms,
                        };
                        if z.abs() >= p.window_z_threshold && cooled {
                            last_alert_end = Some(w.end);
                            rows.push(AnomalyRow {
                                kind: "window".to_string(),
                                key: key.clone(),
                                metric: metric.clone(),
                                value: x as f64,
                                mean,
                                stddev,
                                z,
                                event_time: w.end,
                                history_count: history.len() as i64,
                                transaction_id: None,
                                window: Some(spec.name.clone()),
                                window_start: Some(w.start),
                                window_end: Some(w.end),
                            });
                        }
                    }
                }
                ring.push_back(x);
                if ring.len() > p.window_z_history {
                    ring.pop_front();
                }
            }
        }
    }
    rows
}
