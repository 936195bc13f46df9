//! Record validation (SPEC 1 and 2): one input record's bytes in, a [`Txn`]
//! or the first failing [`RejectReason`] out; likewise a row of the
//! merchants reference table (SPEC 9) into a [`MerchantRow`].
//!
//! This is the hot path of the job, so it carries its own strict JSON scanner
//! instead of building a `serde_json::Value`. Checks run in SPEC 2's reason
//! order, one stage after the other:
//!
//! * here: `TOO_LARGE`, then UTF-8 (`MALFORMED`);
//! * `json`: the byte-level scanner, everything else that is `MALFORMED`
//!   (grammar, escapes, surrogates, duplicate keys, nesting); it hands the
//!   fields it was asked for to
//! * `rules`: the field rules, `MISSING_FIELD` through `BAD_TIMESTAMP`.
//!
//! `LATE` is decided downstream, by the partition's watermark.

mod json;
mod rules;
#[cfg(test)]
mod testing;

pub use json::MAX_DEPTH;
pub use rules::{amount_cents_from_literal, MAX_AMOUNT_CENTS, MAX_ID_BYTES};

use crate::event::{MerchantRow, RejectReason, Txn};

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
    let fields = json::scan(src, rules::required_slot, Some("metadata"))
        .map_err(|_| RejectReason::Malformed)?;
    rules::validate_txn(fields, partition, offset)
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
    let fields =
        json::scan(src, rules::merchant_slot, None).map_err(|_| RejectReason::Malformed)?;
    rules::validate_merchant_row(fields)
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::event::{Currency, Status};
    use RejectReason::*;

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
}

/// Differential test: random mutations of a rich record are MALFORMED here
/// exactly when serde_json rejects them (or they hold a duplicate key), and
/// the records accepted carry serde_json's values.
#[cfg(test)]
mod differential {
    use super::*;
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::collections::HashSet;

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
}
