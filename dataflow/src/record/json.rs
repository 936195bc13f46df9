//! The record's JSON scanner: strict, one pass over the bytes, no
//! allocation for unescaped strings (they are borrowed from the input), and
//! string contents skipped eight bytes at a time. It knows JSON, not the
//! SPEC: the caller names the members it wants (`slot`) and the one member
//! scanned as a map of strings (`metadata`); the rules live in `rules.rs`.
//!
//! What the scanner enforces (all of it is `MALFORMED`): exactly one JSON
//! object, optionally surrounded by JSON whitespace (space, tab, LF, CR);
//! RFC 8259 grammar (no leading zeros, `+1`, `.5`, `1.`, NaN/Infinity, trailing
//! commas, unescaped control characters in strings, bad escapes); valid UTF-8
//! throughout (checked by the caller, so a BOM, which is not JSON whitespace,
//! is rejected too); no lone surrogate escapes; no duplicate key (compared
//! after unescaping) in any object at any depth; nesting at most
//! [`MAX_DEPTH`] containers deep, counting the record's own object as depth 1.

use std::borrow::Cow;
use std::collections::HashSet;

/// Deepest container nesting accepted; the record's object is depth 1.
pub const MAX_DEPTH: usize = 128;

/// Objects with more keys than this switch duplicate detection from a
/// linear scan to a hash set, so adversarial wide objects stay linear.
const DUP_LINEAR_MAX: usize = 16;

/// Scans `src` (the whole record, already checked to be UTF-8) as one JSON
/// object, keeping the members `slot` numbers (below `N`) and the member
/// named `string_map`, if any.
#[inline]
pub(super) fn scan<'a, const N: usize>(
    src: &'a str,
    slot: fn(&str) -> Option<usize>,
    string_map: Option<&str>,
) -> PResult<Fields<'a, N>> {
    let mut parser = Parser {
        src,
        b: src.as_bytes(),
        pos: 0,
        keys: Vec::new(),
    };
    parser.record(slot, string_map)
}

/// Writes `s` as a JSON string exactly as `serde_json::to_string(s)` does:
/// `"` and `\` escaped, control characters as `\b \t \n \f \r` or `\u00xx`
/// (lowercase hex), everything else (DEL and non-ASCII included) verbatim.
pub(super) fn push_json_str(out: &mut String, s: &str) {
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
pub(super) struct SyntaxError;

pub(super) type PResult<T> = Result<T, SyntaxError>;

/// What a numbered member of the record's object held, as far as the
/// rules need to know.
pub(super) enum Field<'a> {
    Absent,
    Null,
    Str(Cow<'a, str>),
    /// A number literal, exactly as written (already checked against the
    /// JSON grammar).
    Num(&'a str),
    /// `true`, `false`, an object or an array.
    Other,
}

/// What the string-map member (SPEC 1's `metadata`) held.
pub(super) enum Meta<'a> {
    /// Absent, or `null`.
    None,
    /// An object whose values are all strings, sorted by key (bytewise).
    Strings(Vec<(Cow<'a, str>, Cow<'a, str>)>),
    /// Anything else: not an object, or an object with a non-string value.
    Bad,
}

/// The members of a syntactically valid record that the caller's `slot`
/// numbers, `Absent` where missing, and its string map.
pub(super) struct Fields<'a, const N: usize> {
    pub(super) slots: [Field<'a>; N],
    pub(super) metadata: Meta<'a>,
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
    /// the members `slot` numbers (and the one named `string_map`).
    fn record<const N: usize>(
        &mut self,
        slot: fn(&str) -> Option<usize>,
        string_map: Option<&str>,
    ) -> PResult<Fields<'a, N>> {
        self.skip_ws();
        let fields = self.top_object(slot, string_map)?;
        self.skip_ws();
        if self.pos != self.b.len() {
            return Err(SyntaxError);
        }
        Ok(fields)
    }

    /// The record's object (depth 1), keeping the members `slot` numbers.
    fn top_object<const N: usize>(
        &mut self,
        slot: fn(&str) -> Option<usize>,
        string_map: Option<&str>,
    ) -> PResult<Fields<'a, N>> {
        const { assert!(N < 16, "one bit of `seen` per slot, and one for the map") };
        self.expect(b'{')?;
        let mut fields = Fields {
            slots: [const { Field::Absent }; N],
            metadata: Meta::None,
        };
        let mut seen: u16 = 0;
        let metadata_bit: u16 = 1 << N;
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
                fields.slots[slot] = self.field_value()?;
            } else if string_map.is_some_and(|m| key == m) {
                if seen & metadata_bit != 0 {
                    return Err(SyntaxError);
                }
                seen |= metadata_bit;
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

    /// The string map's value (`pos` at its first byte).
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
    use super::super::parse_record;
    use super::super::testing::*;
    use super::*;
    use crate::event::RejectReason::*;

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
