//! Differential test of the job's record scanner (`tidemark_dataflow::record`)
//! against the independent reference (`tidemark_testkit::reference::validate`,
//! its own JSON parser and SPEC 1–2 rules), with serde_json as a third
//! opinion on JSON well-formedness.
//!
//! A seeded generator writes valid records in many shapes (field order,
//! whitespace, escapes incl. `\uXXXX` and surrogate pairs, number forms,
//! timestamps with offsets, fractions and leap days, optional and unknown
//! fields), many of them with a field made wrong on purpose (missing, null,
//! wrong type, odd amounts, currencies, statuses and timestamps, duplicate
//! keys, deep nesting), and then mutates a share of them byte by byte (bit
//! flips, truncations, inserted quotes, backslashes and control bytes,
//! invalid UTF-8, BOMs) and picks `max_record_bytes` around the length for
//! some. Every record must get the same outcome from both implementations:
//! the same reason code, or the same fields. No input may panic the scanner.
//!
//! `TIDEMARK_DIFF_SEED` and `TIDEMARK_DIFF_RECORDS` reproduce or widen a run
//! (defaults: a fixed seed, 1,000,000 records); `TIDEMARK_DIFF_ONLY=i` runs
//! record `i` alone (as a failure report names it).

use std::collections::{BTreeMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use tidemark_dataflow::record::{parse_merchant_row, parse_record, MAX_DEPTH};
use tidemark_testkit::reference::{self, MAX_RECORD_DEPTH};

// The reference bounds nesting as the scanner does (docs/choices.md).
const _: () = assert!(MAX_DEPTH == MAX_RECORD_DEPTH);

const DEFAULT_SEED: u64 = 0x7164_6d61_726b_2d31;
const DEFAULT_RECORDS: usize = 1_000_000;
const MAX: usize = 1_048_576;

// ---------------------------------------------------------------------------
// A small deterministic generator (SplitMix64).
// ---------------------------------------------------------------------------

/// The generator's state, and whether the record being written holds a
/// deeply nested value (which serde_json's recursion limit cannot judge).
struct Rng(u64, bool);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    /// True with probability `p` percent.
    fn pct(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
    fn pick<'a, T: ?Sized>(&mut self, xs: &[&'a T]) -> &'a T {
        xs[self.below(xs.len())]
    }
}

// ---------------------------------------------------------------------------
// Record text
// ---------------------------------------------------------------------------

/// JSON whitespace, usually none.
fn ws(r: &mut Rng, out: &mut String) {
    if r.pct(85) {
        return;
    }
    for _ in 0..1 + r.below(3) {
        out.push_str(r.pick(&[" ", "\t", "\n", "\r", "  ", "\r\n"]));
    }
}

/// A JSON string literal of `s`, escaped in a random but valid way.
fn json_str(r: &mut Rng, s: &str, out: &mut String) {
    let style = r.below(10); // 0–5 plain, 6–8 some escapes, 9 all escaped
    out.push('"');
    for c in s.chars() {
        let must = c == '"' || c == '\\' || (c as u32) < 0x20;
        let escape = must || (style >= 6 && (style == 9 || r.pct(30)));
        if !escape {
            out.push(c);
            continue;
        }
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        match short {
            Some(e) if r.pct(70) => out.push_str(e),
            _ => {
                let hex: &[u8; 16] = if r.pct(50) {
                    b"0123456789abcdef"
                } else {
                    b"0123456789ABCDEF"
                };
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str("\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(hex[usize::from((*u >> shift) & 0xf)] as char);
                    }
                }
            }
        }
    }
    out.push('"');
}

/// Text of `len` characters from an alphabet with escapes' favourites.
fn text(len: usize, r: &mut Rng) -> String {
    const ALPHA: &[&str] = &[
        "a",
        "b",
        "x",
        "Z",
        "0",
        "7",
        "-",
        "_",
        " ",
        ".",
        "\"",
        "\\",
        "/",
        "\n",
        "\t",
        "\u{1}",
        "\u{1f}",
        "\u{7f}",
        "é",
        "ß",
        "中",
        "😀",
        "\u{2028}",
        "\u{feff}",
        "\u{10ffff}",
        "\u{fffd}",
    ];
    let mut s = String::new();
    for _ in 0..len {
        if r.pct(60) {
            s.push((b'a' + r.below(26) as u8) as char);
        } else {
            s.push_str(r.pick(ALPHA));
        }
    }
    s
}

/// An id: usually short, sometimes at or around the 128-byte bounds.
fn id_text(r: &mut Rng) -> String {
    match r.below(50) {
        0 => String::new(),
        1 => "a".repeat(127 + r.below(3)),
        2 => "é".repeat(63 + r.below(3)),
        3 => "😀".repeat(31 + r.below(3)),
        4 => format!("{}{}", "😀".repeat(31), "a".repeat(r.below(3))),
        5 => text(1 + r.below(130), r),
        _ => format!("tx-{}", r.next() % 1_000_000),
    }
}

/// An amount literal (usually valid JSON, often not a valid amount).
fn amount(r: &mut Rng) -> String {
    let cents = match r.below(10) {
        0 => r.range(1, 99),
        1 => r.range(99_999_900, 100_000_100),
        _ => r.range(1, 2_000_000),
    };
    let (int, frac) = (cents / 100, cents % 100);
    match r.below(30) {
        0..=5 => format!("{int}.{frac:02}"),
        6..=8 => {
            if frac == 0 {
                format!("{int}")
            } else if frac % 10 == 0 {
                format!("{int}.{}", frac / 10)
            } else {
                format!("{int}.{frac:02}")
            }
        }
        9 => format!("{cents}e-2"),
        10 => format!("{cents}E-2"),
        11 => format!("{int}.{frac:02}{}", "0".repeat(r.below(20))),
        12 => format!("{int}.{frac:02}{}", r.below(10)),
        13 => format!("{}.{:02}e{}", cents / 1000, cents % 1000, r.range(-3, 3)),
        14 => format!("0.{cents:08}e{}", r.range(4, 8)),
        15 => format!("{}{cents}e-{}", "0".repeat(r.below(3)), 2 + r.below(3)),
        16 => format!("-{int}.{frac:02}"),
        17 => r
            .pick(&[
                "0",
                "-0",
                "0.0",
                "-0.0",
                "0e5",
                "0.001",
                "0.01",
                "1e6",
                "1E+6",
                "999999.99",
                "999999.995",
                "1000000",
                "1000000.00",
                "99999999e-2",
                "100000000e-2",
                "1e-2",
                "1e-3",
                "1e400",
                "1e-400",
                "1E-400",
                "12.5e+0",
                "125e-1",
                "1.25e1",
                "0.125E2",
                "10e-1",
                "1.0e0",
            ])
            .to_string(),
        18 => format!("1{}", "0".repeat(r.below(40))),
        19 => format!("0.{}1", "0".repeat(r.below(40))),
        20 => format!(
            "{cents}e{}",
            r.pick(&["-99999999999999999999", "99999999999999999999", "-2", "+0"])
        ),
        21 => r
            .pick(&[
                "01",
                "1.",
                ".5",
                "+1",
                "1e",
                "1e+",
                "-",
                "--1",
                "NaN",
                "Infinity",
                "-Infinity",
                "0x10",
                "1_000",
                "12,5",
                "1.2.3",
            ])
            .to_string(),
        22 => r
            .pick(&["\"12.5\"", "true", "false", "[12.5]", "{}", "null", "\"\""])
            .to_string(),
        _ => format!("{int}.{frac:02}"),
    }
}

fn leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// A timestamp string (without quotes), usually in the grammar.
fn timestamp(r: &mut Rng) -> String {
    let year = match r.below(10) {
        0 => r.range(0, 9999),
        1 => *[1900, 2000, 2100, 2400, 1970, 1969, 0, 9999]
            .get(r.below(8))
            .unwrap(),
        _ => r.range(2020, 2026),
    };
    let month = if r.pct(3) {
        r.range(0, 13)
    } else {
        r.range(1, 12)
    };
    let dim = match month {
        2 if leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let day = match r.below(10) {
        0 => dim,
        1 => dim + 1,
        2 if month == 2 => 29,
        3 if r.pct(10) => 0,
        _ => r.range(1, 28),
    };
    let hour = if r.pct(3) { 24 } else { r.range(0, 23) };
    let minute = if r.pct(2) { 60 } else { r.range(0, 59) };
    let second = if r.pct(2) { 60 } else { r.range(0, 59) };
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}{}{hour:02}:{minute:02}:{second:02}",
        if r.pct(90) {
            "T"
        } else {
            r.pick(&["t", " ", "_", "TT"])
        }
    );
    if r.pct(40) {
        let digits = 1 + r.below(12);
        s.push('.');
        for _ in 0..digits {
            s.push((b'0' + r.below(10) as u8) as char);
        }
    }
    match r.below(20) {
        0..=9 => s.push('Z'),
        10 => s.push('z'),
        11 => {}
        12 => s.push_str(r.pick(&["+0100", "+1:00", "+01", "+01:0", "+01:00:00", "Z ", "ZZ"])),
        13 => s.push_str(&format!("+{:02}:{:02}", r.range(22, 25), r.range(0, 60))),
        _ => {
            let sign = if r.pct(50) { '+' } else { '-' };
            s.push_str(&format!(
                "{sign}{:02}:{:02}",
                r.range(0, 23),
                r.range(0, 59)
            ));
        }
    }
    if r.pct(2) {
        // Odd extras: a year of five digits, a leading space, an empty string.
        s = r
            .pick(&[
                "",
                " 2024-01-01T00:00:00Z",
                "12024-01-01T00:00:00Z",
                "2024-1-01T00:00:00Z",
            ])
            .to_string();
    }
    s
}

/// A JSON value of about `depth` containers (all ignored by the rules).
fn junk(depth: usize, r: &mut Rng, out: &mut String) {
    if depth == 0 {
        match r.below(7) {
            0 => out.push_str("null"),
            1 => out.push_str("true"),
            2 => out.push_str("false"),
            3 => out.push_str(r.pick(&["0", "-0", "1.5e-300", "1e999", "-12", "3.14159"])),
            _ => {
                let t = text(r.below(6), r);
                json_str(r, &t, out);
            }
        }
        return;
    }
    if r.pct(50) {
        out.push('[');
        ws(r, out);
        let n = 1 + r.below(2);
        for i in 0..n {
            if i > 0 {
                out.push(',');
                ws(r, out);
            }
            junk(if i == 0 { depth - 1 } else { 0 }, r, out);
        }
        ws(r, out);
        out.push(']');
    } else {
        out.push('{');
        let n = 1 + r.below(2);
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            ws(r, out);
            json_str(r, &format!("k{i}"), out);
            out.push(':');
            junk(if i == 0 { depth - 1 } else { 0 }, r, out);
        }
        out.push('}');
    }
}

/// A string value from a choice list, sometimes something else.
fn enum_value(r: &mut Rng, good: &[&str], bad: &[&str], out: &mut String) {
    if r.pct(93) {
        let v = r.pick(good);
        json_str(r, v, out);
    } else if r.pct(70) {
        let v = r.pick(bad);
        json_str(r, v, out);
    } else {
        out.push_str(r.pick(&["1", "true", "[]", "{}", "[\"USD\"]"]));
    }
}

const REQUIRED: [&str; 8] = [
    "transaction_id",
    "customer_id",
    "amount",
    "currency",
    "merchant",
    "category",
    "status",
    "timestamp",
];

/// One member's value.
fn value_of(r: &mut Rng, key: &str, out: &mut String) {
    match key {
        "transaction_id" | "customer_id" => {
            if r.pct(97) {
                let t = id_text(r);
                json_str(r, &t, out);
            } else {
                out.push_str(r.pick(&["5", "1.5", "true", "[]", "{}", "[\"a\"]"]));
            }
        }
        "amount" => out.push_str(&amount(r)),
        "currency" => enum_value(
            r,
            &["USD", "EUR", "GBP"],
            &[
                "usd", "Usd", "USD ", " USD", "US", "USDD", "JPY", "", "EUR\u{0}", "ЕUR",
            ],
            out,
        ),
        "status" => enum_value(
            r,
            &["COMPLETED", "PENDING", "FAILED"],
            &["completed", "Completed", "DONE", "PENDING ", "", "FAILED\n"],
            out,
        ),
        "merchant" | "category" => {
            if r.pct(97) {
                let t = text(r.below(20), r);
                json_str(r, &t, out);
            } else {
                out.push_str(r.pick(&["5", "true", "false", "[]", "{}", "[\"x\"]", "0.5"]));
            }
        }
        "timestamp" => {
            if r.pct(98) {
                let t = timestamp(r);
                json_str(r, &t, out);
            } else {
                out.push_str(r.pick(&["1704067200000", "true", "[]", "{}", "0"]));
            }
        }
        "metadata" => match r.below(12) {
            0 => out.push_str("null"),
            1 => out.push_str("{}"),
            2 => out.push_str(r.pick(&["[]", "\"ios\"", "1", "true", "[{\"a\":\"b\"}]"])),
            _ => {
                out.push('{');
                let n = 1 + r.below(4);
                let mut keys: Vec<String> = (0..n).map(|_| text(r.below(5), r)).collect();
                if r.pct(5) {
                    // A duplicate metadata key (same text, maybe escaped differently).
                    keys.push(keys[0].clone());
                }
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    ws(r, out);
                    json_str(r, k, out);
                    ws(r, out);
                    out.push(':');
                    ws(r, out);
                    if r.pct(95) {
                        let v = text(r.below(12), r);
                        json_str(r, &v, out);
                    } else {
                        junk(r.below(3), r, out);
                    }
                }
                ws(r, out);
                out.push('}');
            }
        },
        _ => {
            let depth = match r.below(400) {
                0..=9 => MAX_DEPTH - 3 + r.below(6),
                10 => 1000,
                _ => r.below(4),
            };
            r.1 |= depth >= 100;
            junk(depth, r, out);
        }
    }
}

/// A record: all required fields, optional metadata and unknown members in
/// a random order, with now and then a field dropped, nulled, repeated or
/// replaced by a near-miss key.
fn record(r: &mut Rng) -> String {
    let mut keys: Vec<String> = Vec::new();
    for k in REQUIRED {
        match r.below(200) {
            0 => {}                              // absent
            1 => keys.push(format!("{k}!null")), // null
            2 => keys.push(k.to_uppercase()),    // a near miss, ignored
            _ => keys.push(k.to_string()),
        }
    }
    if r.pct(60) {
        keys.push("metadata".into());
    }
    for _ in 0..r.below(3) {
        keys.push(
            r.pick(&[
                "x",
                "extra",
                "Transaction_id",
                "amount ",
                "tags",
                "nested",
                "\u{e9}",
                "",
            ])
            .to_string(),
        );
    }
    if r.pct(4) {
        // A duplicate key: a required one, metadata or an unknown one.
        let k = keys[r.below(keys.len())].clone();
        keys.push(k);
    }
    // Shuffle, or keep the usual order.
    if r.pct(50) {
        for i in (1..keys.len()).rev() {
            let j = r.below(i + 1);
            keys.swap(i, j);
        }
    }
    let mut out = String::with_capacity(320);
    ws(r, &mut out);
    out.push('{');
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        ws(r, &mut out);
        let (name, null) = match k.strip_suffix("!null") {
            Some(n) => (n, true),
            None => (k.as_str(), false),
        };
        json_str(r, name, &mut out);
        ws(r, &mut out);
        out.push(':');
        ws(r, &mut out);
        if null {
            out.push_str("null");
        } else {
            value_of(r, name, &mut out);
        }
        ws(r, &mut out);
    }
    out.push('}');
    ws(r, &mut out);
    out
}

/// Byte-level damage, one to three times.
fn mutate(r: &mut Rng, v: &mut Vec<u8>) {
    const INSERTS: &[&[u8]] = &[
        b"\"",
        b"\\",
        b"\\\"",
        b"\\u",
        b"\\ud800",
        b"\\udc00",
        b"\\ud83d\\ude00",
        b"\\x",
        b"\x00",
        b"\x01",
        b"\x1f",
        b"\x7f",
        b"\t",
        b"\n",
        b"\r",
        b"\x0b",
        b"\x0c",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b" ",
        b"0",
        b"-",
        b"e",
        b".",
        b"\xc3",
        b"\xa9",
        b"\xff",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xc0\xaf",
        b"\xef\xbb\xbf",
        b"\xc2\xa0",
        b"null",
        b"\"a\":1,",
        b"\"amount\":1,",
        b"NaN",
    ];
    for _ in 0..1 + r.below(3) {
        let at = r.below(v.len() + 1);
        match r.below(9) {
            0 | 1 if at < v.len() => v[at] ^= 1 << r.below(8),
            2 => v.truncate(at),
            3 | 4 => drop(v.splice(at..at, r.pick(INSERTS).iter().copied())),
            5 if at < v.len() => drop(v.remove(at)),
            6 if at < v.len() => v[at] = r.pick(INSERTS)[0],
            7 => drop(v.splice(0..0, b"\xef\xbb\xbf".iter().copied())),
            8 => v.extend_from_slice(r.pick(&[&b"{}"[..], b"\n", b" x", b"\x00", b"\r"])),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------

/// What both implementations expose of an accepted record.
#[derive(Debug, PartialEq)]
struct Accepted {
    transaction_id: String,
    customer_id: String,
    cents: i64,
    currency: String,
    merchant: String,
    category: String,
    status: String,
    timestamp: String,
    event_time: i64,
    /// Canonical JSON (sorted keys, serde_json escaping).
    metadata: Option<String>,
}

type Outcome = Result<Accepted, &'static str>;

fn ours(raw: &[u8], max: usize) -> std::thread::Result<Outcome> {
    catch_unwind(AssertUnwindSafe(|| {
        parse_record(raw, max, 0, 0)
            .map(|t| Accepted {
                transaction_id: t.transaction_id().into(),
                customer_id: t.customer_id().into(),
                cents: t.amount_cents,
                currency: t.currency.as_str().into(),
                merchant: t.merchant().into(),
                category: t.category().into(),
                status: t.status.as_str().into(),
                timestamp: t.timestamp_raw().into(),
                event_time: t.event_time,
                metadata: t.metadata().map(str::to_string),
            })
            .map_err(|e| e.as_str())
    }))
}

fn theirs(raw: &[u8], max: usize) -> Outcome {
    reference::validate(raw, max).map(|v| Accepted {
        transaction_id: v.transaction_id,
        customer_id: v.customer_id,
        cents: v.cents,
        currency: v.currency,
        merchant: v.merchant,
        category: v.category,
        status: v.status,
        timestamp: v.timestamp,
        event_time: v.event_time,
        metadata: v.metadata.map(|m| serde_json::to_string(&m).unwrap()),
    })
}

/// serde_json's opinion: `Ok(Some(has_duplicate_key))` when the bytes are
/// one JSON object, `Ok(None)` when not, `Err(())` when it cannot judge: a
/// number beyond `f64` (`1e400`) is an error to serde_json but valid JSON.
fn serde_object(v: &[u8]) -> Result<Option<bool>, ()> {
    struct Dup;
    impl<'de> Visitor<'de> for Dup {
        type Value = (bool, bool); // (is an object, has a duplicate key)
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok((false, false))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok((false, false))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok((false, false))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok((false, false))
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok((false, false))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok((false, false))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut dup = false;
            while let Some((_, d)) = a.next_element_seed(Seed)? {
                dup |= d;
            }
            Ok((false, dup))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut dup = false;
            let mut keys = HashSet::new();
            while let Some(k) = a.next_key::<String>()? {
                dup |= !keys.insert(k);
                dup |= a.next_value_seed(Seed)?.1;
            }
            Ok((true, dup))
        }
    }
    struct Seed;
    impl<'de> DeserializeSeed<'de> for Seed {
        type Value = (bool, bool);
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Dup)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(v);
    let judged = |e: serde_json::Error| {
        if e.to_string().contains("number out of range") {
            Err(())
        } else {
            Ok(None)
        }
    };
    let (object, dup) = match Seed.deserialize(&mut de) {
        Ok(x) => x,
        Err(e) => return judged(e),
    };
    if let Err(e) = de.end() {
        return judged(e);
    }
    Ok(object.then_some(dup))
}

/// `bytes` printable: ASCII as is, everything else `\xNN`.
fn escaped(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

/// Counts and mismatches of one run.
#[derive(Default)]
struct Stats {
    classes: BTreeMap<&'static str, usize>,
    serde_checked: usize,
    serde_duplicates: usize,
    serde_skipped_deep: usize,
    serde_skipped_range: usize,
    mutated: usize,
    exhaustive: usize,
    exhaustive_records: usize,
    mismatches: Vec<String>,
}

/// Classifies `v` both ways (and by serde_json where it can judge) and
/// records any difference. `deep`: the generator nested it 100+ levels.
fn check(label: &dyn Fn() -> String, v: &[u8], max: usize, deep: bool, st: &mut Stats) {
    let report = |what: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        format!(
            "{} (max_record_bytes {max}): {what}\n  bytes: \"{}\"\n  scanner:   {a:?}\n  other:     {b:?}",
            label(),
            escaped(v)
        )
    };
    let a = match ours(v, max) {
        Ok(a) => a,
        Err(_) => {
            let b = theirs(v, max);
            st.mismatches
                .push(report("the scanner PANICKED", &"panic", &b));
            return;
        }
    };
    let b = theirs(v, max);
    if a != b {
        st.mismatches
            .push(report("different outcomes (other = reference)", &a, &b));
    }
    *st.classes
        .entry(match &a {
            Ok(_) => "ACCEPTED",
            Err(e) => *e,
        })
        .or_default() += 1;

    // serde_json's opinion on the JSON itself, where it applies: within
    // the size bound, and no deeper than its recursion limit (127
    // containers; the contract's bound is 128). The generator knows when it
    // nested that deep; byte mutations add a level or two at most.
    if v.len() > max {
        return;
    }
    if deep {
        st.serde_skipped_deep += 1;
        return;
    }
    let Ok(serde) = serde_object(v) else {
        st.serde_skipped_range += 1;
        return;
    };
    st.serde_checked += 1;
    // SPEC 2: a duplicate key at any depth is MALFORMED, although
    // serde_json (keeping the last) reads the document.
    let serde_valid = serde == Some(false);
    if serde == Some(true) {
        st.serde_duplicates += 1;
    }
    let syntax_ok = a != Err("MALFORMED");
    if syntax_ok != serde_valid {
        st.mismatches.push(report(
            "serde_json disagrees on well-formedness (other = serde_json: Some(has a duplicate key) for an object)",
            &a,
            &serde,
        ));
    }
    if let Ok(acc) = &a {
        let j: serde_json::Value = serde_json::from_slice(v).unwrap();
        let same = [
            ("transaction_id", &acc.transaction_id),
            ("customer_id", &acc.customer_id),
            ("merchant", &acc.merchant),
            ("category", &acc.category),
            ("timestamp", &acc.timestamp),
            ("currency", &acc.currency),
            ("status", &acc.status),
        ]
        .iter()
        .all(|(k, val)| j[*k].as_str() == Some(val.as_str()));
        let meta_same = match j.get("metadata") {
            None | Some(serde_json::Value::Null) => acc.metadata.is_none(),
            Some(m) => {
                let sorted: Option<BTreeMap<String, String>> =
                    serde_json::from_value(m.clone()).ok();
                sorted.map(|s| serde_json::to_string(&s).unwrap()) == acc.metadata
            }
        };
        if !same || !meta_same {
            st.mismatches
                .push(report("serde_json reads other field values", &a, &j));
        }
    }
}

/// Generates and checks records `range` of the run with `seed`.
fn run(seed: u64, range: std::ops::Range<usize>) -> Stats {
    let mut st = Stats::default();
    for i in range {
        let mut r = Rng(seed ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03), false);
        let mut v = record(&mut r).into_bytes();
        let deep = r.1;
        if i % 50_000 == 0 && !deep {
            // Every prefix (a truncation at every kind of position) and
            // every single bit flip of this record, before any mutation.
            for k in 0..v.len() {
                check(
                    &|| format!("record #{i} (seed {seed:#x}) cut to {k} bytes"),
                    &v[..k],
                    MAX,
                    false,
                    &mut st,
                );
            }
            let mut w = v.clone();
            for k in 0..w.len() * 8 {
                w[k / 8] ^= 1 << (k % 8);
                check(
                    &|| format!("record #{i} (seed {seed:#x}) with bit {k} flipped"),
                    &w,
                    MAX,
                    false,
                    &mut st,
                );
                w[k / 8] ^= 1 << (k % 8);
            }
            st.exhaustive += v.len() * 9;
            st.exhaustive_records += 1;
        }
        if r.pct(40) {
            mutate(&mut r, &mut v);
            st.mutated += 1;
        }
        let max = match r.below(100) {
            0..=2 => (v.len() + r.below(3)).saturating_sub(1),
            3 => r.below(v.len() + 1),
            _ => MAX,
        };
        check(
            &|| format!("record #{i} (seed {seed:#x}, TIDEMARK_DIFF_ONLY={i})"),
            &v,
            max,
            deep,
            &mut st,
        );
        if st.mismatches.len() >= 20 {
            break;
        }
    }
    st
}

#[test]
fn scanner_agrees_with_reference_and_serde_json() {
    let seed: u64 = std::env::var("TIDEMARK_DIFF_SEED")
        .ok()
        .map(|s| {
            let s = s.trim_start_matches("0x");
            u64::from_str_radix(s, 16).expect("TIDEMARK_DIFF_SEED in hex")
        })
        .unwrap_or(DEFAULT_SEED);
    let n: usize = std::env::var("TIDEMARK_DIFF_RECORDS")
        .ok()
        .map(|s| s.parse().expect("TIDEMARK_DIFF_RECORDS"))
        .unwrap_or(DEFAULT_RECORDS);
    let started = std::time::Instant::now();
    eprintln!("scanner_differential: seed {seed:#x} (TIDEMARK_DIFF_SEED), {n} records");
    // Each record has a generator of its own, seeded by (seed, index), so
    // any one is reproducible alone and the work splits across threads.
    let range = match std::env::var("TIDEMARK_DIFF_ONLY") {
        Ok(i) => {
            let i: usize = i.parse().expect("TIDEMARK_DIFF_ONLY: a record index");
            i..i + 1
        }
        Err(_) => 0..n,
    };
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get().clamp(2, 4));
    let chunk = range.len().div_ceil(threads).max(1);
    let parts: Vec<Stats> = std::thread::scope(|scope| {
        let workers: Vec<_> = (range.start..range.end)
            .step_by(chunk)
            .map(|from| {
                let to = (from + chunk).min(range.end);
                scope.spawn(move || run(seed, from..to))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a worker panicked"))
            .collect()
    });
    let mut st = Stats::default();
    for part in parts {
        for (class, count) in part.classes {
            *st.classes.entry(class).or_default() += count;
        }
        st.mutated += part.mutated;
        st.exhaustive += part.exhaustive;
        st.exhaustive_records += part.exhaustive_records;
        st.serde_checked += part.serde_checked;
        st.serde_duplicates += part.serde_duplicates;
        st.serde_skipped_deep += part.serde_skipped_deep;
        st.serde_skipped_range += part.serde_skipped_range;
        st.mismatches.extend(part.mismatches);
    }
    let (mutated, exhaustive) = (st.mutated, st.exhaustive);
    let n = range.len();
    let total: usize = st.classes.values().sum();
    eprintln!(
        "scanner_differential: {total} records checked in {:.1?}: {n} generated ({mutated} of them \
         byte-mutated) and {exhaustive} prefixes and single bit flips of {} of them",
        started.elapsed(),
        st.exhaustive_records
    );
    for (class, count) in &st.classes {
        eprintln!("  {class:<14} {count:>8}");
    }
    eprintln!(
        "  serde_json checked {} (of which {} duplicate-key objects it reads but SPEC 2 \
         rejects), skipped {} nested 100+ deep and {} with a number beyond f64",
        st.serde_checked, st.serde_duplicates, st.serde_skipped_deep, st.serde_skipped_range
    );
    assert!(
        st.mismatches.is_empty(),
        "{} mismatch(es) (first ones below; rerun with TIDEMARK_DIFF_SEED={seed:#x}):\n{}",
        st.mismatches.len(),
        st.mismatches[..st.mismatches.len().min(20)].join("\n")
    );
    // Every record was classified, and the generator exercises every class.
    assert_eq!(total, n + exhaustive);
    for class in [
        "ACCEPTED",
        "TOO_LARGE",
        "MALFORMED",
        "MISSING_FIELD",
        "BAD_FIELD",
        "BAD_AMOUNT",
        "BAD_CURRENCY",
        "BAD_STATUS",
        "BAD_TIMESTAMP",
    ] {
        let c = st.classes.get(class).copied().unwrap_or(0);
        assert!(c * 200 >= n || n < 10_000, "only {c} {class}");
    }
}

/// SPEC 9 rows of the merchants table: the same comparison, fewer records.
#[test]
fn merchant_rows_agree_with_reference() {
    let mut r = Rng(DEFAULT_SEED ^ 0x5eed, false);
    let mut mismatches = Vec::new();
    let mut classes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let n = 100_000;
    for i in 0..n {
        let mut keys: Vec<&str> = vec![
            "merchant",
            "valid_from",
            "merchant_category",
            "risk_tier",
            "country",
        ];
        if r.pct(3) {
            keys.remove(r.below(keys.len()));
        }
        if r.pct(20) {
            keys.push(r.pick(&["metadata", "x", "merchant"]));
        }
        if r.pct(50) {
            for k in (1..keys.len()).rev() {
                let j = r.below(k + 1);
                keys.swap(k, j);
            }
        }
        let mut s = String::from("{");
        for (k, key) in keys.iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            ws(&mut r, &mut s);
            json_str(&mut r, key, &mut s);
            s.push(':');
            match *key {
                "valid_from" if r.pct(97) => {
                    let t = timestamp(&mut r);
                    json_str(&mut r, &t, &mut s);
                }
                "risk_tier" => enum_value(
                    &mut r,
                    &["LOW", "MEDIUM", "HIGH"],
                    &["low", "NONE", ""],
                    &mut s,
                ),
                "metadata" | "x" => value_of(&mut r, "x", &mut s),
                _ if r.pct(97) => {
                    let t = text(r.below(10), &mut r);
                    json_str(&mut r, &t, &mut s);
                }
                _ => s.push_str(r.pick(&["null", "1", "[]", "{}"])),
            }
        }
        s.push('}');
        let mut v = s.into_bytes();
        if r.pct(30) {
            mutate(&mut r, &mut v);
        }
        let max = if r.pct(3) {
            v.len().saturating_sub(r.below(2))
        } else {
            MAX
        };
        let a = catch_unwind(AssertUnwindSafe(|| {
            parse_merchant_row(&v, max)
                .map(|m| {
                    (
                        m.merchant,
                        m.valid_from,
                        m.merchant_category,
                        m.risk_tier.as_str().to_string(),
                        m.country,
                    )
                })
                .map_err(|e| e.as_str())
        }));
        let b = reference::validate_reference(&v, max).map(|m| {
            (
                m.merchant,
                m.valid_from,
                m.merchant_category,
                m.risk_tier,
                m.country,
            )
        });
        match a {
            Err(_) => mismatches.push(format!("row #{i}: PANIC on \"{}\"", escaped(&v))),
            Ok(a) => {
                if a != b {
                    mismatches.push(format!(
                        "row #{i} (max {max}): \"{}\"\n  scanner:   {a:?}\n  reference: {b:?}",
                        escaped(&v)
                    ));
                }
                let class = match &a {
                    Ok(_) => "ACCEPTED",
                    Err(e) => *e,
                };
                *classes.entry(class).or_default() += 1;
            }
        }
        if mismatches.len() >= 20 {
            break;
        }
    }
    eprintln!("merchant rows: {classes:?}");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
