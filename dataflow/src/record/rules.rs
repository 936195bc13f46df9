//! SPEC 2's field rules over a scanned record (`json.rs` did the syntax), in
//! SPEC order over the whole record: every `MISSING_FIELD` condition before
//! any `BAD_FIELD` one, then `BAD_AMOUNT` (exact cents), `BAD_CURRENCY`,
//! `BAD_STATUS` and `BAD_TIMESTAMP`; and SPEC 9's rules for rows of the
//! merchants reference table, with the reason codes of SPEC 2 that apply.
//! `LATE` is decided downstream, by the partition's watermark.

use super::json::{push_json_str, Field, Fields, Meta};
use crate::event::{Currency, MerchantRow, Millis, RejectReason, RiskTier, Status, Txn, TxnText};
use crate::rfc3339::parse_rfc3339_ms;

/// Byte length bounds of `transaction_id` and `customer_id` (after unescaping).
pub const MAX_ID_BYTES: usize = 128;

/// Exclusive upper bound of an amount, in cents (1,000,000.00).
pub const MAX_AMOUNT_CENTS: i64 = 100_000_000;

const TRANSACTION_ID: usize = 0;
const CUSTOMER_ID: usize = 1;
const AMOUNT: usize = 2;
const CURRENCY: usize = 3;
const MERCHANT: usize = 4;
const CATEGORY: usize = 5;
const STATUS: usize = 6;
const TIMESTAMP: usize = 7;
pub(super) const N_REQUIRED: usize = 8;

pub(super) fn required_slot(key: &str) -> Option<usize> {
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

/// SPEC 2's field rules over a scanned record, in its precedence order.
pub(super) fn validate_txn(
    fields: Fields<'_, N_REQUIRED>,
    partition: u32,
    offset: u64,
) -> Result<Txn, RejectReason> {
    let f = &fields.slots;

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
    if matches!(fields.metadata, Meta::Bad) {
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

    let metadata = match fields.metadata {
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

const MR_MERCHANT: usize = 0;
const MR_VALID_FROM: usize = 1;
const MR_CATEGORY: usize = 2;
const MR_RISK_TIER: usize = 3;
const MR_COUNTRY: usize = 4;
pub(super) const N_MERCHANT: usize = 5;

pub(super) fn merchant_slot(key: &str) -> Option<usize> {
    Some(match key {
        "merchant" => MR_MERCHANT,
        "valid_from" => MR_VALID_FROM,
        "merchant_category" => MR_CATEGORY,
        "risk_tier" => MR_RISK_TIER,
        "country" => MR_COUNTRY,
        _ => return None,
    })
}

/// SPEC 9's rules for a scanned row of the merchants table, with SPEC 2's
/// reason codes in their order (see [`super::parse_merchant_row`]).
pub(super) fn validate_merchant_row(
    fields: Fields<'_, N_MERCHANT>,
) -> Result<MerchantRow, RejectReason> {
    let f = &fields.slots;
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

#[cfg(test)]
mod tests {
    use super::super::parse_merchant_row;
    use super::super::testing::*;
    use super::*;
    use RejectReason::*;

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
