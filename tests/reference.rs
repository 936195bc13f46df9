//! Tests of the test oracle (`tidemark_testkit::reference`) on tiny hand-written
//! inputs with hand-computed expectations, and the main end-to-end check:
//! a replay's committed outputs equal the reference's.
#![allow(clippy::type_complexity)]

use tidemark_testkit::committed::{assert_same, read_committed};
use tidemark_testkit::datasets::{generate, jsonl_files};
use tidemark_testkit::job::run_ok;
use tidemark_testkit::reference::{
    self, amount_cents, compute, compute_enriched, compute_files_enriched, compute_lineage,
    compute_records, parse_json, parse_timestamp, AnomalyRow, Json, Outputs, RefParams, WindowKind,
    WindowRow, WindowSpec,
};

/// 2024-01-01T00:00:00Z (a Monday) in Unix milliseconds.
const T0: i64 = 1_704_067_200_000;
const SEC: i64 = 1_000;
const MIN: i64 = 60_000;

/// An RFC 3339 UTC timestamp for `T0 + ms` (ms within 2024-01-01..31).
fn ts(ms: i64) -> String {
    let t = T0 + ms;
    let days = t.div_euclid(86_400_000);
    let (y, m, d) = reference::civil_from_days(days);
    let in_day = t.rem_euclid(86_400_000);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// A valid record line.
fn rec(id: &str, customer: &str, amount: &str, status: &str, merchant: &str, at: i64) -> String {
    format!(
        r#"{{"transaction_id":"{id}","customer_id":"{customer}","amount":{amount},"currency":"USD","merchant":"{merchant}","category":"food","status":"{status}","timestamp":"{}"}}"#,
        ts(at)
    )
}

fn simple(id: &str, at: i64) -> String {
    rec(id, "c1", "10.00", "COMPLETED", "m1", at)
}

fn run_with(parts: &[Vec<String>], p: &RefParams) -> Outputs {
    let partitions: Vec<Vec<Vec<u8>>> = parts
        .iter()
        .map(|lines| lines.iter().map(|l| l.as_bytes().to_vec()).collect())
        .collect();
    compute_records(&partitions, p)
}

fn run(parts: &[Vec<String>]) -> Outputs {
    run_with(parts, &RefParams::default())
}

/// The reason of the single reject of a one-record input ("OK" when kept).
fn reason_of(line: &[u8]) -> String {
    reason_with(line, &RefParams::default())
}

fn reason_with(line: &[u8], p: &RefParams) -> String {
    let out = compute_records(&[vec![line.to_vec()]], p);
    match (out.rejects.len(), out.transactions.len()) {
        (1, 0) => out.rejects[0].reason.clone(),
        (0, 1) => "OK".to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

/// A valid record with one field replaced by raw JSON text (None removes it;
/// a replaced or new field goes last).
fn with_field(field: &str, value: Option<&str>) -> String {
    let mut fields: Vec<(String, String)> = [
        ("transaction_id", r#""t1""#),
        ("customer_id", r#""c1""#),
        ("amount", "12.50"),
        ("currency", r#""USD""#),
        ("merchant", r#""m1""#),
        ("category", r#""food""#),
        ("status", r#""COMPLETED""#),
        ("timestamp", r#""2024-01-01T00:00:00Z""#),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    fields.retain(|(k, _)| k != field);
    if let Some(v) = value {
        fields.push((field.to_string(), v.to_string()));
    }
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

// ---------------------------------------------------------------------------
// SPEC 2: parsing and rejects
// ---------------------------------------------------------------------------

#[test]
fn amounts_are_exact_cents() {
    assert_eq!(amount_cents("12.50"), Some(1250));
    assert_eq!(amount_cents("12.500"), Some(1250));
    assert_eq!(amount_cents("1250e-2"), Some(1250));
    assert_eq!(amount_cents("1.25E1"), Some(1250));
    assert_eq!(amount_cents("0.01"), Some(1));
    assert_eq!(amount_cents("999999.99"), Some(99_999_999));
    assert_eq!(amount_cents("5"), Some(500));
    assert_eq!(amount_cents("12.345"), None);
    assert_eq!(amount_cents("12.3450000"), None);
    assert_eq!(amount_cents("0.001"), None);
    assert_eq!(amount_cents("0"), None);
    assert_eq!(amount_cents("0.00"), None);
    assert_eq!(amount_cents("-0"), None);
    assert_eq!(amount_cents("-5.00"), None);
    assert_eq!(amount_cents("1000000"), None);
    assert_eq!(amount_cents("1e6"), None);
    assert_eq!(amount_cents("1e999999999999999999999"), None);
    assert_eq!(amount_cents("1e-999999999999999999999"), None);
    assert_eq!(amount_cents("0e999999999999999999999"), None);
}

#[test]
fn timestamps_parse_to_utc_milliseconds() {
    assert_eq!(parse_timestamp("2024-01-01T00:00:00Z"), Some(T0));
    assert_eq!(parse_timestamp("2024-01-01t00:00:00z"), Some(T0));
    assert_eq!(parse_timestamp("2024-01-01T00:00:00.1239Z"), Some(T0 + 123));
    assert_eq!(parse_timestamp("2024-01-01T00:00:00.5Z"), Some(T0 + 500));
    assert_eq!(parse_timestamp("2024-01-01T01:00:00+01:00"), Some(T0));
    assert_eq!(parse_timestamp("2023-12-31T23:30:00-00:30"), Some(T0));
    assert_eq!(
        parse_timestamp("2024-02-29T00:00:00Z"),
        Some(T0 + 59 * 86_400_000)
    );
    assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_timestamp("1969-12-31T23:59:59.9999Z"), Some(-1));
    for bad in [
        "2023-02-29T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-00-01T00:00:00Z",
        "2024-01-00T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:60:00Z",
        "2024-01-01T23:59:60Z",
        "2024-01-01 00:00:00Z",
        "2024-01-01T00:00:00",
        "2024-01-01T00:00:00+0100",
        "2024-01-01T00:00:00+24:00",
        "2024-01-01T00:00:00+01:60",
        "2024-01-01T00:00:00.Z",
        "2024-1-01T00:00:00Z",
        "2024-01-01T00:00Z",
        "2024-01-01T00:00:00Z ",
        "2024-01-01",
        "",
    ] {
        assert_eq!(parse_timestamp(bad), None, "{bad}");
    }
}

#[test]
fn json_checker() {
    assert!(matches!(
        parse_json(r#" {"a":[1,{"b":null}],"c":"\ud83d\ude00"} "#),
        Ok(Json::Object(_))
    ));
    assert_eq!(
        parse_json(r#"{"a":"\u0041\n"}"#),
        Ok(Json::Object(vec![("a".into(), Json::String("A\n".into()))]))
    );
    assert_eq!(
        parse_json(r#"{"a":1e400}"#),
        Ok(Json::Object(vec![(
            "a".into(),
            Json::Number("1e400".into())
        )]))
    );
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(200_000), "]".repeat(200_000));
    assert!(parse_json(&deep).is_ok());
    for bad in [
        "",
        " ",
        "{",
        "{}{}",
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"{'a':1}"#,
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":.5}"#,
        r#"{"a":+1}"#,
        r#"{"a":NaN}"#,
        r#"{"a":Infinity}"#,
        r#"{"a":"\ud800"}"#,
        r#"{"a":"\udc00"}"#,
        r#"{"a":"\ud800\u0041"}"#,
        r#"{"a":"\x"}"#,
        "{\"a\":\"\t\"}",
        r#"{"a":1,"a":2}"#,
        r#"{"a":1,"\u0061":2}"#,
        r#"{"x":{"a":1,"a":2}}"#,
        r#"{"x":[{"a":1,"a":2}]}"#,
        "\u{feff}{}",
    ] {
        assert_eq!(parse_json(bad), Err(()), "{bad:?}");
    }
}

#[test]
fn reject_reasons_and_precedence() {
    let ok = with_field("status", Some(r#""COMPLETED""#));
    assert_eq!(reason_of(ok.as_bytes()), "OK");

    // MALFORMED
    assert_eq!(reason_of(b""), "MALFORMED");
    assert_eq!(reason_of(b"[]"), "MALFORMED");
    assert_eq!(reason_of(b"\"x\""), "MALFORMED");
    assert_eq!(reason_of(format!("\u{feff}{ok}").as_bytes()), "MALFORMED");
    assert_eq!(
        reason_of(with_field("amount", Some("NaN")).as_bytes()),
        "MALFORMED"
    );
    assert_eq!(
        reason_of(with_field("merchant", Some(r#""\ud800""#)).as_bytes()),
        "MALFORMED"
    );
    assert_eq!(
        reason_of(format!("{},\"status\":\"X\"}}", &ok[..ok.len() - 1]).as_bytes()),
        "MALFORMED"
    );
    let mut bad_utf8 = ok.clone().into_bytes();
    bad_utf8[3] = 0xff;
    assert_eq!(reason_of(&bad_utf8), "MALFORMED");
    // Nesting: at most 128 containers deep, the record's object included
    // (docs/choices.md), though parse_json itself takes any depth.
    let nest = |k: usize| format!("{}{}", "[".repeat(k), "]".repeat(k));
    assert_eq!(
        reason_of(with_field("x", Some(&nest(127))).as_bytes()),
        "OK"
    );
    assert_eq!(
        reason_of(with_field("x", Some(&nest(128))).as_bytes()),
        "MALFORMED"
    );
    assert_eq!(
        reason_of(with_field("x", Some(r#""[[[[""#)).as_bytes()),
        "OK"
    );

    // MISSING_FIELD, ahead of later rules
    assert_eq!(
        reason_of(with_field("timestamp", None).as_bytes()),
        "MISSING_FIELD"
    );
    assert_eq!(
        reason_of(with_field("category", Some("null")).as_bytes()),
        "MISSING_FIELD"
    );
    let missing_and_bad =
        with_field("currency", Some(r#""usd""#)).replace(r#""status":"COMPLETED","#, "");
    assert_eq!(reason_of(missing_and_bad.as_bytes()), "MISSING_FIELD");

    // BAD_FIELD
    assert_eq!(
        reason_of(with_field("transaction_id", Some(r#""""#)).as_bytes()),
        "BAD_FIELD"
    );
    assert_eq!(
        reason_of(with_field("customer_id", Some("7")).as_bytes()),
        "BAD_FIELD"
    );
    let id128 = format!("\"{}\"", "é".repeat(64)); // 128 bytes
    let id130 = format!("\"{}\"", "é".repeat(65)); // 130 bytes
    assert_eq!(
        reason_of(with_field("transaction_id", Some(&id128)).as_bytes()),
        "OK"
    );
    assert_eq!(
        reason_of(with_field("transaction_id", Some(&id130)).as_bytes()),
        "BAD_FIELD"
    );
    assert_eq!(
        reason_of(with_field("merchant", Some(r#""""#)).as_bytes()),
        "OK"
    );
    assert_eq!(
        reason_of(with_field("merchant", Some("1")).as_bytes()),
        "BAD_FIELD"
    );
    assert_eq!(
        reason_of(with_field("metadata", Some(r#"{"a":1}"#)).as_bytes()),
        "BAD_FIELD"
    );
    assert_eq!(
        reason_of(with_field("metadata", Some(r#"["a"]"#)).as_bytes()),
        "BAD_FIELD"
    );
    assert_eq!(
        reason_of(with_field("metadata", Some("null")).as_bytes()),
        "OK"
    );
    // BAD_FIELD wins over BAD_AMOUNT
    let two = with_field("merchant", Some("1")).replace("12.50", "0");
    assert_eq!(reason_of(two.as_bytes()), "BAD_FIELD");

    // BAD_AMOUNT
    for a in [r#""12.50""#, "0", "-1", "1000000", "12.345", "true"] {
        assert_eq!(
            reason_of(with_field("amount", Some(a)).as_bytes()),
            "BAD_AMOUNT",
            "{a}"
        );
    }
    assert_eq!(
        reason_of(with_field("amount", Some("12.500")).as_bytes()),
        "OK"
    );
    // BAD_AMOUNT wins over BAD_CURRENCY
    let two = with_field("currency", Some(r#""usd""#)).replace("12.50", "0");
    assert_eq!(reason_of(two.as_bytes()), "BAD_AMOUNT");

    // BAD_CURRENCY, BAD_STATUS, BAD_TIMESTAMP
    assert_eq!(
        reason_of(with_field("currency", Some(r#""usd""#)).as_bytes()),
        "BAD_CURRENCY"
    );
    assert_eq!(
        reason_of(with_field("currency", Some("1")).as_bytes()),
        "BAD_CURRENCY"
    );
    assert_eq!(
        reason_of(with_field("currency", Some(r#""US\u0044""#)).as_bytes()),
        "OK"
    );
    assert_eq!(
        reason_of(with_field("status", Some(r#""completed""#)).as_bytes()),
        "BAD_STATUS"
    );
    let two = with_field("status", Some(r#""X""#))
        .replace("2024-01-01T00:00:00Z", "2024-02-30T00:00:00Z");
    assert_eq!(reason_of(two.as_bytes()), "BAD_STATUS");
    assert_eq!(
        reason_of(with_field("timestamp", Some(r#""2024-02-30T00:00:00Z""#)).as_bytes()),
        "BAD_TIMESTAMP"
    );
    assert_eq!(
        reason_of(with_field("timestamp", Some("1704067200000")).as_bytes()),
        "BAD_TIMESTAMP"
    );

    // Unknown extra fields are ignored, whatever they hold.
    assert_eq!(
        reason_of(with_field("extra", Some(r#"{"x":[1e999,{"y":null}]}"#)).as_bytes()),
        "OK"
    );
    // Surrounding JSON whitespace, including a trailing \r, is fine.
    assert_eq!(reason_of(format!(" {ok}\r").as_bytes()), "OK");
}

#[test]
fn too_large_is_first_and_exact_size_is_fine() {
    let ok = with_field("status", Some(r#""COMPLETED""#));
    let p = RefParams {
        max_record_bytes: ok.len(),
        ..RefParams::default()
    };
    assert_eq!(reason_with(ok.as_bytes(), &p), "OK");
    assert_eq!(reason_with(format!("{ok} ").as_bytes(), &p), "TOO_LARGE");
    let junk = "x".repeat(ok.len() + 1);
    assert_eq!(reason_with(junk.as_bytes(), &p), "TOO_LARGE");
}

#[test]
fn reject_rows_keep_raw_bytes() {
    let out = run(&[vec![], vec!["nope\r".to_string()]]);
    assert_eq!(out.rejects.len(), 1);
    let r = &out.rejects[0];
    assert_eq!(
        (
            r.raw.as_str(),
            r.raw_encoding.as_str(),
            r.reason.as_str(),
            r.source.as_str(),
            r.partition,
            r.offset
        ),
        ("nope\r", "utf8", "MALFORMED", "transactions", 1, 0)
    );
    let out = compute_records(&[vec![b"a\xffb".to_vec()]], &RefParams::default());
    assert_eq!(out.rejects[0].raw, "Yf9i");
    assert_eq!(out.rejects[0].raw_encoding, "base64");
}

#[test]
fn files_lines_and_partition_order() {
    let dir = tidemark_testkit::tempdir();
    let a = simple("a1", 0);
    let b = simple("b1", 0);
    // b.jsonl: CRLF lines, no final newline; the \r stays in each record.
    std::fs::write(
        dir.join("b.jsonl"),
        format!("{b}\r\nbroken\r\n{}", simple("b2", SEC)),
    )
    .unwrap();
    // a.jsonl.gz: final newline does not make a record, but a blank line does.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(
        &mut gz,
        format!("{a}\n\n{}\n", simple("a2", SEC)).as_bytes(),
    )
    .unwrap();
    std::fs::write(dir.join("a.jsonl.gz"), gz.finish().unwrap()).unwrap();

    let files = vec![dir.join("b.jsonl"), dir.join("a.jsonl.gz")];
    assert_eq!(reference::read_records(&files[0]).len(), 3);
    assert_eq!(reference::read_records(&files[1]).len(), 3);
    let out = compute(&files, &RefParams::default());
    let mut kept: Vec<(String, i32, i64)> = out
        .transactions
        .iter()
        .map(|t| (t.transaction_id.clone(), t.partition, t.offset))
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        vec![
            ("a1".to_string(), 0, 0),
            ("a2".to_string(), 0, 2),
            ("b1".to_string(), 1, 0),
            ("b2".to_string(), 1, 2)
        ]
    );
    let mut rejects: Vec<(i32, i64, String, String)> = out
        .rejects
        .iter()
        .map(|r| (r.partition, r.offset, r.raw.clone(), r.reason.clone()))
        .collect();
    rejects.sort();
    assert_eq!(
        rejects,
        vec![
            (0, 1, "".to_string(), "MALFORMED".to_string()),
            (1, 1, "broken\r".to_string(), "MALFORMED".to_string())
        ]
    );
}

// ---------------------------------------------------------------------------
// SPEC 5: transaction rows
// ---------------------------------------------------------------------------

#[test]
fn transaction_columns() {
    let line = r#"{"transaction_id":"t1","customer_id":"c1","amount":1234.5,"currency":"EUR","merchant":"m","category":"k","status":"PENDING","timestamp":"2024-01-07T23:30:00.250-01:00","metadata":{"z":"1","a":"q\"é\u0001"},"other":5}"#;
    let out = run(&[vec![line.to_string()]]);
    let t = &out.transactions[0];
    assert_eq!(t.amount, 123_450);
    assert_eq!(t.amount_cents, 123_450);
    assert_eq!(t.amount_category, "large");
    assert_eq!(t.currency, "EUR");
    assert_eq!(t.timestamp, "2024-01-07T23:30:00.250-01:00");
    // 2024-01-08T00:30:00.250Z, a Monday
    assert_eq!(t.event_time, T0 + 7 * 86_400_000 + 30 * MIN + 250);
    assert_eq!((t.hour_of_day, t.day_of_week), (0, 1));
    assert_eq!(t.metadata.as_deref(), Some(r#"{"a":"q\"é\u0001","z":"1"}"#));
    assert_eq!(
        (t.source.as_str(), t.partition, t.offset),
        ("transactions", 0, 0)
    );

    assert_eq!(reference::amount_category(9_999), "small");
    assert_eq!(reference::amount_category(10_000), "medium");
    assert_eq!(reference::amount_category(99_999), "medium");
    assert_eq!(reference::amount_category(100_000), "large");
    // 2024-01-07T12:00Z is a Sunday.
    assert_eq!(
        reference::hour_and_weekday(T0 + 6 * 86_400_000 + 12 * 3_600_000),
        (12, 7)
    );
    assert_eq!(reference::hour_and_weekday(-1), (23, 3)); // 1969-12-31, a Wednesday
}

// ---------------------------------------------------------------------------
// SPEC 3: lateness
// ---------------------------------------------------------------------------

#[test]
fn lateness_is_per_partition_and_rejects_do_not_move_max_ts() {
    let p0 = vec![
        simple("a", 100 * SEC),                           // max_ts 100 s, wm 90 s
        simple("b", 90 * SEC - 1),                        // below wm: LATE
        simple("c", 90 * SEC),                            // at wm: accepted
        rec("d", "c1", "10.00", "NOPE", "m1", 500 * SEC), // BAD_STATUS: max_ts stays
        simple("e", 95 * SEC),                            // accepted
        simple("a", 300 * SEC), // duplicate of a, but moves max_ts to 300 s
        simple("f", 290 * SEC - 1), // LATE
        simple("g", 290 * SEC), // accepted
    ];
    let p1 = vec![simple("h", 0)]; // its own partition: not late
    let out = run(&[p0, p1]);
    let mut rejects: Vec<(i32, i64, &str)> = out
        .rejects
        .iter()
        .map(|r| (r.partition, r.offset, r.reason.as_str()))
        .collect();
    rejects.sort();
    assert_eq!(
        rejects,
        vec![(0, 1, "LATE"), (0, 3, "BAD_STATUS"), (0, 6, "LATE")]
    );
    let mut kept: Vec<&str> = out
        .transactions
        .iter()
        .map(|t| t.transaction_id.as_str())
        .collect();
    kept.sort();
    assert_eq!(kept, vec!["a", "c", "e", "g", "h"]);
    assert_eq!(out.duplicates, 1);
}

// ---------------------------------------------------------------------------
// SPEC 4: dedup
// ---------------------------------------------------------------------------

#[test]
fn a_child_partition_continues_its_parents_lateness() {
    // Partition 0 ends at max_ts 100 s (wm 90 s); partition 2 continues it,
    // partition 1 does not and starts fresh.
    let parts: Vec<Vec<Vec<u8>>> = [
        vec![simple("a", 100 * SEC)],
        vec![simple("b", 50 * SEC)],
        vec![
            simple("c", 90 * SEC - 1), // late only through the inherited wm
            simple("d", 90 * SEC),     // at the inherited wm: accepted
        ],
    ]
    .iter()
    .map(|p| p.iter().map(|r| r.as_bytes().to_vec()).collect())
    .collect();
    let p = RefParams::default();
    let rejects = |out: &Outputs| -> Vec<(i32, i64, String)> {
        out.rejects
            .iter()
            .map(|r| (r.partition, r.offset, r.reason.clone()))
            .collect()
    };
    let out = compute_lineage(&parts, &[None, None, Some(0)], &p);
    assert_eq!(rejects(&out), vec![(2, 0, "LATE".to_owned())]);
    assert_eq!(out.transactions.len(), 3);
    // Without the lineage the same record is on time.
    assert!(rejects(&compute_lineage(&parts, &[None, None, None], &p)).is_empty());
}

#[test]
fn duplicates_within_and_beyond_the_horizon() {
    let p0 = vec![
        rec("d", "c1", "1.00", "COMPLETED", "first", 0),
        rec("e", "c1", "1.00", "COMPLETED", "e0", 0),
        rec("f", "c1", "1.00", "COMPLETED", "f0", 0),
        rec("d", "c1", "1.00", "COMPLETED", "third", 11 * MIN), // > 10 min after anchor 0: kept, new anchor
    ];
    let p1 = vec![
        rec("d", "c1", "1.00", "COMPLETED", "second", 5 * MIN), // duplicate of anchor 0
        rec("e", "c1", "1.00", "COMPLETED", "e1", 10 * MIN),    // exactly the horizon: duplicate
        rec("f", "c1", "1.00", "COMPLETED", "f1", 10 * MIN + 1), // just beyond: kept
        rec("d", "c1", "1.00", "COMPLETED", "fourth", 15 * MIN), // 4 min after anchor 11 min: duplicate
    ];
    let out = run(&[p0, p1]);
    let mut kept: Vec<(&str, &str, i32, i64)> = out
        .transactions
        .iter()
        .map(|t| {
            (
                t.transaction_id.as_str(),
                t.merchant.as_str(),
                t.partition,
                t.offset,
            )
        })
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        vec![
            ("d", "first", 0, 0),
            ("d", "third", 0, 3),
            ("e", "e0", 0, 1),
            ("f", "f0", 0, 2),
            ("f", "f1", 1, 2)
        ]
    );
    assert_eq!(out.duplicates, 3);
    assert!(out.rejects.is_empty());
}

#[test]
fn dedup_tie_break_is_partition_then_offset() {
    let at = 7 * SEC;
    let p0 = vec![
        simple("other", 0),
        rec("x", "c1", "1.00", "COMPLETED", "p0-o1", at),
        rec("x", "c1", "1.00", "COMPLETED", "p0-o2", at),
    ];
    let p1 = vec![rec("x", "c1", "1.00", "COMPLETED", "p1-o0", at)];
    // Partition 1's copy has the lower offset, but partition 0 wins; then offset 1 over 2.
    let out = run(&[p0, p1]);
    let x: Vec<_> = out
        .transactions
        .iter()
        .filter(|t| t.transaction_id == "x")
        .collect();
    assert_eq!(x.len(), 1);
    assert_eq!(
        (x[0].merchant.as_str(), x[0].partition, x[0].offset),
        ("p0-o1", 0, 1)
    );
    assert_eq!(out.duplicates, 2);
}

// ---------------------------------------------------------------------------
// SPEC 6: windows
// ---------------------------------------------------------------------------

fn windows_of<'a>(out: &'a Outputs, spec: &str) -> Vec<&'a WindowRow> {
    let mut w: Vec<&WindowRow> = out.windows.iter().filter(|w| w.window == spec).collect();
    w.sort_by(|a, b| (a.window_start, &a.group).cmp(&(b.window_start, &b.group)));
    w
}

fn group(field: &str, value: &str) -> Vec<(String, Option<String>)> {
    vec![(field.to_string(), Some(value.to_string()))]
}

#[test]
fn sliding_and_tumbling_membership() {
    let out = run(&[vec![
        rec("1", "c1", "10.00", "COMPLETED", "m", 3 * MIN + 30 * SEC),
        rec("2", "c1", "2.50", "FAILED", "m", 5 * MIN - 1),
    ]]);
    let got: Vec<(
        i64,
        i64,
        Option<i64>,
        Option<i64>,
        Option<f64>,
        Option<i64>,
        Option<i64>,
    )> = windows_of(&out, "merchant_5m")
        .iter()
        .map(|w| {
            assert_eq!(w.group, group("merchant", "m"));
            (
                w.window_start - T0,
                w.window_end - w.window_start,
                w.txn_count,
                w.sum_cents,
                w.avg_amount,
                w.min_cents,
                w.max_cents,
            )
        })
        .collect();
    let five = 5 * MIN;
    assert_eq!(
        got,
        vec![
            (
                -MIN,
                five,
                Some(1),
                Some(1000),
                Some(10.0),
                Some(1000),
                Some(1000)
            ),
            (
                0,
                five,
                Some(2),
                Some(1250),
                Some(6.25),
                Some(250),
                Some(1000)
            ),
            (
                MIN,
                five,
                Some(2),
                Some(1250),
                Some(6.25),
                Some(250),
                Some(1000)
            ),
            (
                2 * MIN,
                five,
                Some(2),
                Some(1250),
                Some(6.25),
                Some(250),
                Some(1000)
            ),
            (
                3 * MIN,
                five,
                Some(2),
                Some(1250),
                Some(6.25),
                Some(250),
                Some(1000)
            ),
            (
                4 * MIN,
                five,
                Some(1),
                Some(250),
                Some(2.5),
                Some(250),
                Some(250)
            ),
        ]
    );
    let tumbling: Vec<(i64, i64, Vec<(String, Option<String>)>, Option<i64>)> =
        windows_of(&out, "status_1m")
            .iter()
            .map(|w| {
                (
                    w.window_start - T0,
                    w.window_end - T0,
                    w.group.clone(),
                    w.sum_cents,
                )
            })
            .collect();
    assert_eq!(
        tumbling,
        vec![
            (3 * MIN, 4 * MIN, group("status", "COMPLETED"), Some(1000)),
            (4 * MIN, 5 * MIN, group("status", "FAILED"), Some(250)),
        ]
    );
}

#[test]
fn sessions_close_after_the_gap() {
    let gap = 30 * MIN;
    let out = run(&[
        vec![
            rec("1", "c", "1.00", "COMPLETED", "m", 0),
            rec("2", "c", "2.00", "COMPLETED", "m", 10 * MIN),
            rec("3", "c", "3.00", "COMPLETED", "m", 10 * MIN + gap), // exactly gap after the last: joins
            rec("4", "c", "4.00", "COMPLETED", "m", 10 * MIN + 2 * gap + 1), // more than gap: new session
        ],
        vec![rec("5", "d", "5.00", "COMPLETED", "m", 5 * MIN)],
    ]);
    let got: Vec<(
        i64,
        i64,
        Vec<(String, Option<String>)>,
        Option<i64>,
        Option<i64>,
    )> = windows_of(&out, "customer_session")
        .iter()
        .map(|w| {
            (
                w.window_start - T0,
                w.window_end - T0,
                w.group.clone(),
                w.txn_count,
                w.sum_cents,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                0,
                40 * MIN + gap,
                group("customer_id", "c"),
                Some(3),
                Some(600)
            ),
            (
                5 * MIN,
                5 * MIN + gap,
                group("customer_id", "d"),
                Some(1),
                Some(500)
            ),
            (
                70 * MIN + 1,
                70 * MIN + 1 + gap,
                group("customer_id", "c"),
                Some(1),
                Some(400)
            ),
        ]
    );
}

#[test]
fn configured_specs_with_several_keys_and_some_aggregates() {
    let spec = WindowSpec {
        name: "two_keys".to_string(),
        kind: WindowKind::Tumbling { size_ms: 10 * MIN },
        group_by: vec!["status".to_string(), "merchant".to_string()],
        aggregates: vec!["count".to_string(), "max".to_string()],
    };
    let p = RefParams {
        windows: vec![spec],
        window_z_spec: None,
        ..RefParams::default()
    };
    let out = run_with(
        &[vec![
            rec("1", "c", "1.00", "COMPLETED", "m", 0),
            rec("2", "c", "3.00", "COMPLETED", "m", 9 * MIN),
            rec("3", "c", "2.00", "COMPLETED", "n", 9 * MIN),
        ]],
        &p,
    );
    let rows = windows_of(&out, "two_keys");
    assert_eq!(rows.len(), 2);
    let w = rows[0];
    assert_eq!(
        w.group,
        vec![
            ("merchant".to_string(), Some("m".to_string())),
            ("status".to_string(), Some("COMPLETED".to_string()))
        ]
    );
    assert_eq!(
        (
            w.txn_count,
            w.sum_cents,
            w.avg_amount,
            w.min_cents,
            w.max_cents
        ),
        (Some(2), None, None, None, Some(300))
    );
}

// ---------------------------------------------------------------------------
// SPEC 7: anomalies
// ---------------------------------------------------------------------------

fn amounts_for(customer: &str, cents: &[i64], first: i64) -> Vec<String> {
    cents
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rec(
                &format!("{customer}-{i:02}"),
                customer,
                &format!("{}.{:02}", c / 100, c % 100),
                "COMPLETED",
                "m",
                first + i as i64 * MIN,
            )
        })
        .collect()
}

fn txn_anomalies(out: &Outputs) -> Vec<&AnomalyRow> {
    out.anomalies
        .iter()
        .filter(|a| a.kind == "transaction")
        .collect()
}

#[test]
fn transaction_z_score_needs_min_history() {
    // 9 earlier transactions, then an outlier: too little history.
    let m = amounts_for(
        "m",
        &[1000, 1200, 1000, 1200, 1000, 1200, 1000, 1200, 1000, 90_000],
        0,
    );
    // 10 earlier transactions (mean 11.00, stddev 1.00), then 20.00: z = 9;
    // then 11.00 with 11 earlier: z = (11·1100 − 13000)/√(11·16,200,000 − 13000²) ≈ −0.30.
    let z = amounts_for(
        "z",
        &[
            1000, 1200, 1000, 1200, 1000, 1200, 1000, 1200, 1000, 1200, 2000, 1100,
        ],
        0,
    );
    let out = run(&[m, z]);
    let got = txn_anomalies(&out);
    assert_eq!(got.len(), 1, "{got:?}");
    let a = got[0];
    assert_eq!(
        (
            a.key.as_str(),
            a.metric.as_str(),
            a.transaction_id.as_deref(),
            a.event_time,
            a.history_count
        ),
        ("z", "amount", Some("z-10"), T0 + 10 * MIN, 10)
    );
    assert_eq!((a.value, a.mean, a.stddev, a.z), (20.0, 11.0, 1.0, 9.0));
    assert_eq!(
        (a.window.as_deref(), a.window_start, a.window_end),
        (None, None, None)
    );
}

#[test]
fn transaction_z_score_zero_stddev_and_negative_z() {
    // Constant history: stddev 0, never an anomaly.
    let flat = amounts_for(
        "flat",
        &[1000; 10]
            .iter()
            .copied()
            .chain([50_000])
            .collect::<Vec<_>>(),
        0,
    );
    let out = run(&[flat]);
    assert!(txn_anomalies(&out).is_empty());

    // History 10.00/30.00 alternating, 10 values: mean 20.00, stddev 10.00; then 0.01:
    // z = −1.999, below the default threshold 3; with threshold 1.5 it is an anomaly.
    let cents = [
        1000, 3000, 1000, 3000, 1000, 3000, 1000, 3000, 1000, 3000, 1,
    ];
    let p = RefParams {
        txn_z_threshold: 1.5,
        ..RefParams::default()
    };
    let out = run_with(&[amounts_for("n", &cents, 0)], &p);
    let got = txn_anomalies(&out);
    assert_eq!(got.len(), 1);
    // n = 10, S = 20000, Q = 5·(1000² + 3000²) = 50,000,000, nQ − S² = 100,000,000
    // z = (10·1 − 20000) / 10000 = −1.999
    assert_eq!(
        (got[0].mean, got[0].stddev, got[0].value),
        (20.0, 10.0, 0.01)
    );
    assert!((got[0].z - (-1.999)).abs() < 1e-12, "{}", got[0].z);
}

#[test]
fn transaction_order_is_event_time_then_id() {
    // Same customer, same event time: "b" is evaluated after "a" (bytewise ids),
    // whatever the input order.
    let mut lines = amounts_for(
        "c",
        &[1000, 1200, 1000, 1200, 1000, 1200, 1000, 1200, 1000, 1200],
        0,
    );
    let at = 20 * MIN;
    lines.push(rec("b", "c", "20.00", "COMPLETED", "m", at));
    lines.push(rec("a", "c", "11.00", "COMPLETED", "m", at));
    let out = run(&[lines]);
    let got = txn_anomalies(&out);
    // "a" (11.00) first: z = 0; then "b" with 11 earlier: S = 12100, Q = 12,200,000 + 1,210,000,
    // n·Q − S² = 147,510,000 − 146,410,000 = 1,100,000; z = (11·2000 − 12100)/√1,100,000.
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].transaction_id.as_deref(), got[0].history_count),
        (Some("b"), 11)
    );
    let expected_z = 9900.0 / (1_100_000f64).sqrt();
    assert!((got[0].z - expected_z).abs() < 1e-12);
}

#[test]
fn window_z_scores_with_cooldown() {
    // status_1m for COMPLETED: per-minute counts 1,2,1,2,1,2,1,2,1,2, then 10, 10, 1, 30.
    // Every amount is 1.00, so sum_cents = 100 × count and both metrics alert together.
    let counts = [1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 10, 10, 1, 30];
    let mut lines = Vec::new();
    for (minute, &n) in counts.iter().enumerate() {
        for i in 0..n {
            let id = format!("w{minute}-{i}");
            lines.push(rec(
                &id,
                "c",
                "1.00",
                "COMPLETED",
                "m",
                minute as i64 * MIN + i * SEC,
            ));
        }
    }
    let p = RefParams {
        window_z_cooldown_ms: 3 * MIN,
        ..RefParams::default()
    };
    let out = run_with(&[lines], &p);
    let mut got: Vec<&AnomalyRow> = out
        .anomalies
        .iter()
        .filter(|a| a.kind == "window")
        .collect();
    got.sort_by(|a, b| (&a.metric, a.event_time).cmp(&(&b.metric, b.event_time)));
    // minute 10: history n=10, S=15, Q=25: mean 1.5, stddev 0.5, z = (100−15)/5 = 17 → alert (end 11m).
    // minute 11: n=11, S=25, Q=125: z = 85/√750 = 3.10 → suppressed (end 12m < 11m + 3m).
    // minute 12: z < 0, small. minute 13: n=13, S=36, Q=226: z = (390−36)/√1642 = 8.74,
    //   end 14m ≥ 11m + 3m → alert (the suppressed one did not restart the cooldown).
    assert_eq!(got.len(), 4, "{got:#?}");
    let z2 = 354.0 / 1642f64.sqrt();
    for (metric, unit, rows) in [
        ("sum_cents", 100.0, &got[0..2]),
        ("txn_count", 1.0, &got[2..4]),
    ] {
        let a = rows[0];
        assert_eq!(
            (a.metric.as_str(), a.key.as_str(), a.window.as_deref()),
            (metric, "COMPLETED", Some("status_1m"))
        );
        assert_eq!(
            (a.window_start, a.window_end, a.event_time, a.history_count),
            (Some(T0 + 10 * MIN), Some(T0 + 11 * MIN), T0 + 11 * MIN, 10)
        );
        assert_eq!(
            (a.value, a.mean, a.stddev, a.z),
            (10.0 * unit, 1.5 * unit, 0.5 * unit, 17.0)
        );
        assert_eq!(a.transaction_id, None);
        let b = rows[1];
        assert_eq!(
            (b.window_start, b.window_end, b.history_count),
            (Some(T0 + 13 * MIN), Some(T0 + 14 * MIN), 13)
        );
        assert_eq!(b.value, 30.0 * unit);
        assert!((b.mean - 36.0 / 13.0 * unit).abs() < 1e-9);
        assert!((b.stddev - 1642f64.sqrt() / 13.0 * unit).abs() < 1e-9);
        assert!((b.z - z2).abs() < 1e-12);
    }

    // With the default 30 min cooldown only the first alert of each metric remains.
    let mut lines = Vec::new();
    for (minute, &n) in counts.iter().enumerate() {
        for i in 0..n {
            lines.push(rec(
                &format!("w{minute}-{i}"),
                "c",
                "1.00",
                "COMPLETED",
                "m",
                minute as i64 * MIN + i * SEC,
            ));
        }
    }
    let out = run(&[lines]);
    assert_eq!(
        out.anomalies.iter().filter(|a| a.kind == "window").count(),
        2
    );
}

#[test]
fn window_z_history_is_a_ring_of_rows() {
    // History 3, min history 3: windows without rows are skipped, not zeros.
    // Counts at minutes 0, 1, 5 (gap), 6: 1, 2, 1, then 4 at minute 6.
    // Ring before minute 6 = [1, 2, 1]: n=3, S=4, Q=6, nQ−S²=2, z = (12−4)/√2 = 5.66.
    let mut lines = Vec::new();
    for (minute, n) in [(0i64, 1i64), (1, 2), (5, 1), (6, 4), (7, 1)] {
        for i in 0..n {
            lines.push(rec(
                &format!("r{minute}-{i}"),
                "c",
                "1.00",
                "COMPLETED",
                "m",
                minute * MIN + i * SEC,
            ));
        }
    }
    let p = RefParams {
        window_z_history: 3,
        window_min_history: 3,
        window_z_metrics: vec!["txn_count".to_string()],
        window_z_cooldown_ms: 0,
        ..RefParams::default()
    };
    let out = run_with(&[lines], &p);
    let got: Vec<&AnomalyRow> = out
        .anomalies
        .iter()
        .filter(|a| a.kind == "window")
        .collect();
    // minute 7: ring [2, 1, 4] (the 1 of minute 0 dropped): S=7, Q=21, nQ−S²=14, z=(3−7)/√14 = −1.07.
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        (got[0].window_start, got[0].history_count),
        (Some(T0 + 6 * MIN), 3)
    );
    assert!((got[0].z - 8.0 / 2f64.sqrt()).abs() < 1e-12);
}

// ---------------------------------------------------------------------------
// SPEC 9: enrichment with the merchants reference table
// ---------------------------------------------------------------------------

/// A valid merchants reference row.
fn mrow(merchant: &str, at: i64, category: &str, tier: &str, country: &str) -> String {
    format!(
        r#"{{"merchant":"{merchant}","valid_from":"{}","merchant_category":"{category}","risk_tier":"{tier}","country":"{country}"}}"#,
        ts(at)
    )
}

/// A valid reference row (merchant m1, valid from T0) with one field
/// replaced by raw JSON text (None removes it; a replaced or new field goes
/// last).
fn mrow_with(field: &str, value: Option<&str>) -> String {
    let mut fields: Vec<(String, String)> = [
        ("merchant", r#""m1""#),
        ("valid_from", r#""2024-01-01T00:00:00Z""#),
        ("merchant_category", r#""food""#),
        ("risk_tier", r#""LOW""#),
        ("country", r#""US""#),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    fields.retain(|(k, _)| k != field);
    if let Some(v) = value {
        fields.push((field.to_string(), v.to_string()));
    }
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

fn to_bytes(parts: &[Vec<String>]) -> Vec<Vec<Vec<u8>>> {
    parts
        .iter()
        .map(|lines| lines.iter().map(|l| l.as_bytes().to_vec()).collect())
        .collect()
}

fn run_enriched_with(txns: &[Vec<String>], refs: &[Vec<String>], p: &RefParams) -> Outputs {
    compute_enriched(&to_bytes(txns), &to_bytes(refs), p)
}

fn run_enriched(txns: &[Vec<String>], refs: &[Vec<String>]) -> Outputs {
    run_enriched_with(txns, refs, &RefParams::default())
}

/// (transaction_id, merchant_category, risk_tier, merchant_country) of every
/// kept transaction, sorted.
fn enrichment(out: &Outputs) -> Vec<(String, Option<String>, Option<String>, Option<String>)> {
    let mut v: Vec<_> = out
        .transactions
        .iter()
        .map(|t| {
            (
                t.transaction_id.clone(),
                t.merchant_category.clone(),
                t.risk_tier.clone(),
                t.merchant_country.clone(),
            )
        })
        .collect();
    v.sort();
    v
}

/// An expected `enrichment` entry; `None` for no match.
fn joined(
    id: &str,
    to: Option<(&str, &str, &str)>,
) -> (String, Option<String>, Option<String>, Option<String>) {
    match to {
        Some((c, t, k)) => (
            id.to_string(),
            Some(c.to_string()),
            Some(t.to_string()),
            Some(k.to_string()),
        ),
        None => (id.to_string(), None, None, None),
    }
}

/// (source, partition, offset, reason) of every reject, sorted.
fn reject_list(out: &Outputs) -> Vec<(String, i32, i64, String)> {
    let mut v: Vec<_> = out
        .rejects
        .iter()
        .map(|r| (r.source.clone(), r.partition, r.offset, r.reason.clone()))
        .collect();
    v.sort();
    v
}

fn rj(source: &str, partition: i32, offset: i64, reason: &str) -> (String, i32, i64, String) {
    (source.to_string(), partition, offset, reason.to_string())
}

#[test]
fn as_of_join_takes_the_latest_version_at_or_before_the_event_time() {
    let refs = vec![vec![
        mrow("m2", 0, "cat-m2", "HIGH", "DE"),
        mrow("m1", 10 * MIN, "cat-a", "LOW", "US"),
        mrow("m1", 20 * MIN, "cat-b", "MEDIUM", "GB"),
        mrow("m1", 30 * MIN, "cat-c", "HIGH", "FR"),
    ]];
    let txns = vec![
        vec![rec("d", "c", "1.00", "COMPLETED", "m1", 9 * MIN)], // kept copy: before v1
        vec![
            rec("t0", "c", "1.00", "COMPLETED", "m1", 5 * MIN), // before any version of m1
            rec("t1", "c", "1.00", "COMPLETED", "m1", 10 * MIN), // exactly v1's valid_from
            rec("t2", "c", "1.00", "COMPLETED", "m1", 15 * MIN), // between v1 and v2
            rec("t3", "c", "1.00", "COMPLETED", "m1", 20 * MIN - 1), // just before v2
            rec("t4", "c", "1.00", "COMPLETED", "m1", 20 * MIN), // exactly v2
            rec("t5", "c", "1.00", "COMPLETED", "m1", 40 * MIN), // after the last version
            rec("t6", "c", "1.00", "COMPLETED", "nobody", 40 * MIN), // merchant without rows
            rec("t7", "c", "1.00", "COMPLETED", "m2", 40 * MIN),
        ],
        // A duplicate of "d" 2 min later (after v1): dropped; the kept copy
        // at 9 min joins as of its own time.
        vec![rec("d", "c", "1.00", "COMPLETED", "m1", 11 * MIN)],
    ];
    let out = run_enriched(&txns, &refs);
    assert_eq!(out.duplicates, 1);
    assert!(out.rejects.is_empty(), "{:?}", out.rejects);
    assert_eq!(
        enrichment(&out),
        vec![
            joined("d", None),
            joined("t0", None),
            joined("t1", Some(("cat-a", "LOW", "US"))),
            joined("t2", Some(("cat-a", "LOW", "US"))),
            joined("t3", Some(("cat-a", "LOW", "US"))),
            joined("t4", Some(("cat-b", "MEDIUM", "GB"))),
            joined("t5", Some(("cat-c", "HIGH", "FR"))),
            joined("t6", None),
            joined("t7", Some(("cat-m2", "HIGH", "DE"))),
        ]
    );

    // A transaction before any version, on its own.
    let out = run_enriched(
        &[vec![rec(
            "early",
            "c",
            "1.00",
            "COMPLETED",
            "m1",
            10 * MIN - 1,
        )]],
        &refs,
    );
    assert_eq!(enrichment(&out), vec![joined("early", None)]);
}

#[test]
fn as_of_join_ties_go_to_the_later_row_in_partition_order() {
    let at = 10 * MIN;
    let refs = vec![
        vec![
            mrow("m1", at, "a0", "LOW", "P0"),
            mrow("m3", at, "c0", "LOW", "P0"),
            mrow("m3", at, "c1", "MEDIUM", "P0"), // same partition, higher offset: wins
            mrow("m1", at, "a3", "LOW", "P0"),
        ],
        vec![
            mrow("m1", at, "b0", "HIGH", "P1"), // higher partition beats partition 0's offset 3
            mrow("m2", at, "d0", "MEDIUM", "P1"),
        ],
        vec![
            mrow("m2", at - 1, "e0", "HIGH", "P2"), // higher partition, earlier valid_from: loses
        ],
    ];
    let txns = vec![vec![
        rec("x1", "c", "1.00", "COMPLETED", "m1", at),
        rec("x2", "c", "1.00", "COMPLETED", "m2", at),
        rec("x3", "c", "1.00", "COMPLETED", "m3", at),
        rec("y2", "c", "1.00", "COMPLETED", "m2", at + 5 * SEC),
    ]];
    let out = run_enriched(&txns, &refs);
    assert!(out.rejects.is_empty(), "{:?}", out.rejects);
    assert_eq!(
        enrichment(&out),
        vec![
            joined("x1", Some(("b0", "HIGH", "P1"))),
            joined("x2", Some(("d0", "MEDIUM", "P1"))),
            joined("x3", Some(("c1", "MEDIUM", "P0"))),
            joined("y2", Some(("d0", "MEDIUM", "P1"))),
        ]
    );

    // The later of two identical-time rows in one partition, and reference
    // rows are not deduplicated: the same row twice is fine.
    let refs = vec![vec![
        mrow("m1", at, "first", "LOW", "US"),
        mrow("m1", at, "second", "LOW", "US"),
        mrow("m1", at, "second", "LOW", "US"),
    ]];
    let out = run_enriched(&[vec![rec("x", "c", "1.00", "COMPLETED", "m1", at)]], &refs);
    assert!(out.rejects.is_empty());
    assert_eq!(
        enrichment(&out),
        vec![joined("x", Some(("second", "LOW", "US")))]
    );
}

#[test]
fn reference_rejects_reasons_and_precedence() {
    let base = mrow_with("risk_tier", Some(r#""LOW""#));
    let max = 300;
    assert!(base.len() < max);
    // Exactly max_record_bytes: fine. Pad the category to reach it.
    let pad = max - mrow_with("merchant_category", Some(r#""""#)).len();
    let exact = mrow_with(
        "merchant_category",
        Some(&format!("\"{}\"", "x".repeat(pad))),
    )
    .replace(r#""merchant":"m1""#, r#""merchant":"m3""#);
    assert_eq!(exact.len(), max);
    let mut bad_utf8 = base.clone().into_bytes();
    bad_utf8[3] = 0xff;

    let rows: Vec<Vec<u8>> = [
        // 0: accepted
        base.clone(),
        // 1: TOO_LARGE, one byte over
        format!("{exact} "),
        // 2: TOO_LARGE beats MALFORMED
        "x".repeat(max + 1),
        // 3-6: MALFORMED
        base[..base.len() - 1].to_string(),
        "[]".to_string(),
        format!("{},\"risk_tier\":\"HIGH\"}}", &base[..base.len() - 1]),
        String::new(),
        // 7: placeholder for the non-UTF-8 row
        String::new(),
        // 8-9: MISSING_FIELD, absent and null
        mrow_with("country", None),
        mrow_with("valid_from", Some("null")),
        // 10-14: BAD_FIELD
        mrow_with("risk_tier", Some(r#""CRITICAL""#)),
        mrow_with("risk_tier", Some(r#""low""#)),
        mrow_with("merchant", Some("7")),
        mrow_with("risk_tier", Some("1")),
        mrow_with("country", Some(r#"["US"]"#)),
        // 15-16: BAD_TIMESTAMP
        mrow_with("valid_from", Some(r#""2024-02-30T00:00:00Z""#)),
        mrow_with("valid_from", Some("1704067200000")),
        // 17: MISSING_FIELD beats a bad risk tier
        mrow_with("risk_tier", Some(r#""CRITICAL""#)).replace(r#","country":"US""#, ""),
        // 18: BAD_FIELD beats BAD_TIMESTAMP
        mrow_with("risk_tier", Some(r#""low""#))
            .replace("2024-01-01T00:00:00Z", "2024-01-01 00:00:00Z"),
        // 19: accepted: empty strings, any metadata, unknown keys
        mrow_with("metadata", Some(r#"[1,{"a":null}]"#))
            .replace(r#""merchant":"m1""#, r#""merchant":"m2""#)
            .replace(r#""merchant_category":"food""#, r#""merchant_category":"""#)
            .replace(r#""country":"US""#, r#""country":"""#),
        // 20: accepted at exactly max_record_bytes
        exact.clone(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let mut rows = rows;
    rows[7] = bad_utf8;

    let p = RefParams {
        max_record_bytes: max,
        ..RefParams::default()
    };
    let txns = vec![vec![
        rec("t1", "c", "1.00", "COMPLETED", "m1", 0),
        rec("t2", "c", "1.00", "COMPLETED", "m2", 0),
        rec("t3", "c", "1.00", "COMPLETED", "m3", 0),
    ]];
    let out = compute_enriched(&to_bytes(&txns), &[rows], &p);
    let m = |offset: i64, reason: &str| rj("merchants", 0, offset, reason);
    assert_eq!(
        reject_list(&out),
        vec![
            m(1, "TOO_LARGE"),
            m(2, "TOO_LARGE"),
            m(3, "MALFORMED"),
            m(4, "MALFORMED"),
            m(5, "MALFORMED"),
            m(6, "MALFORMED"),
            m(7, "MALFORMED"),
            m(8, "MISSING_FIELD"),
            m(9, "MISSING_FIELD"),
            m(10, "BAD_FIELD"),
            m(11, "BAD_FIELD"),
            m(12, "BAD_FIELD"),
            m(13, "BAD_FIELD"),
            m(14, "BAD_FIELD"),
            m(15, "BAD_TIMESTAMP"),
            m(16, "BAD_TIMESTAMP"),
            m(17, "MISSING_FIELD"),
            m(18, "BAD_FIELD"),
        ]
    );
    // Raw bytes are kept as for transactions.
    let raw_of = |offset: i64| {
        let r = out.rejects.iter().find(|r| r.offset == offset).unwrap();
        (r.raw.clone(), r.raw_encoding.clone())
    };
    assert_eq!(raw_of(4), ("[]".to_string(), "utf8".to_string()));
    assert_eq!(raw_of(7).1, "base64");
    // Rejected rows (such as offset 10, m1 "CRITICAL") enrich nothing.
    assert_eq!(
        enrichment(&out),
        vec![
            joined("t1", Some(("food", "LOW", "US"))),
            joined("t2", Some(("", "LOW", ""))),
            joined("t3", Some((&"x".repeat(pad), "LOW", "US"))),
        ]
    );
}

#[test]
fn reference_source_name_is_configurable() {
    let p = RefParams {
        reference_source: "shops".to_string(),
        ..RefParams::default()
    };
    let out = run_enriched_with(&[], &[vec![], vec!["nope".to_string()]], &p);
    assert_eq!(reject_list(&out), vec![rj("shops", 1, 0, "MALFORMED")]);
    assert!(out.transactions.is_empty());
}

#[test]
fn reference_lateness_is_per_reference_partition() {
    let refs = vec![
        vec![
            mrow("m1", 100 * SEC, "v100", "LOW", "US"), // max_ts 100 s, wm 90 s
            mrow("m1", 90 * SEC - 1, "late", "LOW", "US"), // below wm: LATE
            mrow("m1", 90 * SEC, "at-wm", "LOW", "US"), // at wm: accepted
            // BAD_FIELD: does not move max_ts
            mrow("m1", 500 * SEC, "bad", "CRITICAL", "US"),
            mrow("m1", 95 * SEC, "v95", "LOW", "US"), // accepted
        ],
        // Its own partition: not late although partition 0 is at 100 s.
        vec![mrow("m2", 0, "own", "HIGH", "GB")],
    ];
    let txns = vec![
        // Transaction partition 0 is far ahead; reference partition 0 is
        // judged on its own and transactions on theirs.
        vec![rec("far", "c", "1.00", "COMPLETED", "m2", 1000 * SEC)],
        vec![
            rec("x", "c", "1.00", "COMPLETED", "m1", 90 * SEC - 1), // only the late row would match
            rec("y", "c", "1.00", "COMPLETED", "m1", 92 * SEC),
            rec("z", "c", "1.00", "COMPLETED", "m1", 99 * SEC),
            rec("w", "c", "1.00", "COMPLETED", "m1", 100 * SEC),
        ],
    ];
    let out = run_enriched(&txns, &refs);
    assert_eq!(
        reject_list(&out),
        vec![
            rj("merchants", 0, 1, "LATE"),
            rj("merchants", 0, 3, "BAD_FIELD")
        ]
    );
    assert_eq!(
        enrichment(&out),
        vec![
            joined("far", Some(("own", "HIGH", "GB"))),
            joined("w", Some(("v100", "LOW", "US"))),
            joined("x", None),
            joined("y", Some(("at-wm", "LOW", "US"))),
            joined("z", Some(("v95", "LOW", "US"))),
        ]
    );
    // Transaction lateness does not see reference rows: a transaction far
    // below reference partition 0's watermark is on time.
    let out = run_enriched(
        &[vec![rec("t", "c", "1.00", "COMPLETED", "m1", 0)]],
        &[vec![mrow("m1", 1000 * SEC, "v", "LOW", "US")]],
    );
    assert!(out.rejects.is_empty());
    assert_eq!(enrichment(&out), vec![joined("t", None)]);
}

fn enriched_window_params() -> RefParams {
    RefParams {
        windows: vec![
            WindowSpec::new(
                "tier_1m",
                WindowKind::Tumbling { size_ms: MIN },
                &["risk_tier"],
            ),
            WindowSpec::new(
                "country_status_1m",
                WindowKind::Tumbling { size_ms: MIN },
                &["merchant_country", "status"],
            ),
        ],
        window_z_spec: None,
        ..RefParams::default()
    }
}

#[test]
fn windows_group_by_enriched_fields_with_null_groups() {
    let refs = vec![vec![
        mrow("m1", 0, "shop", "HIGH", "US"),
        mrow("m2", 0, "shop", "LOW", "GB"),
        mrow("m1", MIN + 30 * SEC, "shop", "LOW", "FR"), // m1 changes inside minute 1
    ]];
    let txns = vec![vec![
        rec("1", "c", "1.00", "COMPLETED", "m1", 10 * SEC), // HIGH, US
        rec("2", "c", "2.00", "COMPLETED", "m2", 20 * SEC), // LOW, GB
        rec("3", "c", "4.00", "FAILED", "m3", 30 * SEC),    // no row
        rec("4", "c", "8.00", "COMPLETED", "m1", MIN + 10 * SEC), // HIGH, US
        rec("5", "c", "16.00", "FAILED", "m1", MIN + 40 * SEC), // LOW, FR
        rec("6", "c", "32.00", "COMPLETED", "m9", MIN + 50 * SEC), // no row
    ]];
    let out = run_enriched_with(&txns, &refs, &enriched_window_params());

    let tier = |v: Option<&str>| vec![("risk_tier".to_string(), v.map(str::to_string))];
    let got: Vec<_> = windows_of(&out, "tier_1m")
        .iter()
        .map(|w| {
            (
                w.window_start - T0,
                w.window_end - T0,
                w.group.clone(),
                w.txn_count,
                w.sum_cents,
                w.avg_amount,
                w.min_cents,
                w.max_cents,
            )
        })
        .collect();
    let row = |start: i64, g, cents: i64| {
        (
            start,
            start + MIN,
            g,
            Some(1),
            Some(cents),
            Some(cents as f64 / 100.0),
            Some(cents),
            Some(cents),
        )
    };
    assert_eq!(
        got,
        vec![
            row(0, tier(None), 400),
            row(0, tier(Some("HIGH")), 100),
            row(0, tier(Some("LOW")), 200),
            row(MIN, tier(None), 3200),
            row(MIN, tier(Some("HIGH")), 800),
            row(MIN, tier(Some("LOW")), 1600),
        ]
    );

    let cs = |country: Option<&str>, status: &str| {
        vec![
            ("merchant_country".to_string(), country.map(str::to_string)),
            ("status".to_string(), Some(status.to_string())),
        ]
    };
    let got: Vec<_> = windows_of(&out, "country_status_1m")
        .iter()
        .map(|w| (w.window_start - T0, w.group.clone(), w.sum_cents))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, cs(None, "FAILED"), Some(400)),
            (0, cs(Some("GB"), "COMPLETED"), Some(200)),
            (0, cs(Some("US"), "COMPLETED"), Some(100)),
            (MIN, cs(None, "COMPLETED"), Some(3200)),
            (MIN, cs(Some("FR"), "FAILED"), Some(1600)),
            (MIN, cs(Some("US"), "COMPLETED"), Some(800)),
        ]
    );

    // The same transactions unenriched: every enriched group is null.
    let out = run_with(&txns, &enriched_window_params());
    let got: Vec<_> = windows_of(&out, "tier_1m")
        .iter()
        .map(|w| (w.window_start - T0, w.group.clone(), w.txn_count))
        .collect();
    assert_eq!(
        got,
        vec![(0, tier(None), Some(3)), (MIN, tier(None), Some(3))]
    );
}

#[test]
fn window_anomaly_keys_write_null_as_empty() {
    // Merchant "m9" has no row, "m1" has one (HIGH). Per-minute counts of
    // m9's FAILED transactions: 1, 2, 1, then 10 (m1 adds 1 COMPLETED each minute).
    // Ring [1, 2, 1]: n=3, S=4, Q=6, nQ−S²=2, z = (3·10 − 4)/√2 = 26/√2.
    let refs = vec![vec![mrow("m1", 0, "shop", "HIGH", "US")]];
    let mut lines = Vec::new();
    for (minute, n) in [(0i64, 1i64), (1, 2), (2, 1), (3, 10)] {
        lines.push(rec(
            &format!("k{minute}"),
            "c",
            "1.00",
            "COMPLETED",
            "m1",
            minute * MIN,
        ));
        for i in 0..n {
            lines.push(rec(
                &format!("n{minute}-{i}"),
                "c",
                "1.00",
                "FAILED",
                "m9",
                minute * MIN + (i + 1) * SEC,
            ));
        }
    }
    let txns = vec![lines];
    for (spec, key) in [("tier_1m", ""), ("country_status_1m", "|FAILED")] {
        let p = RefParams {
            window_z_spec: Some(spec.to_string()),
            window_z_metrics: vec!["txn_count".to_string()],
            window_min_history: 3,
            ..enriched_window_params()
        };
        let out = run_enriched_with(&txns, &refs, &p);
        let got: Vec<&AnomalyRow> = out
            .anomalies
            .iter()
            .filter(|a| a.kind == "window")
            .collect();
        // The HIGH / US|COMPLETED group has a flat history of 1s: stddev 0.
        assert_eq!(got.len(), 1, "{spec}: {got:#?}");
        let a = got[0];
        assert_eq!(
            (
                a.key.as_str(),
                a.window.as_deref(),
                a.window_start,
                a.history_count,
                a.value
            ),
            (key, Some(spec), Some(T0 + 3 * MIN), 3, 10.0)
        );
        assert!((a.z - 26.0 / 2f64.sqrt()).abs() < 1e-12, "{}", a.z);
    }
}

#[test]
fn unenriched_computations_have_null_enriched_fields() {
    let line = simple("t", 0);
    let none = |out: &Outputs| {
        assert_eq!(out.transactions.len(), 1);
        let t = &out.transactions[0];
        assert_eq!(
            (&t.merchant_category, &t.risk_tier, &t.merchant_country),
            (&None, &None, &None)
        );
    };
    none(&run(&[vec![line.clone()]]));
    let parts = to_bytes(&[vec![line.clone()]]);
    none(&compute_lineage(&parts, &[None], &RefParams::default()));
    let dir = tidemark_testkit::tempdir();
    let files = vec![dir.join("t.jsonl")];
    std::fs::write(&files[0], format!("{line}\n")).unwrap();
    none(&compute(&files, &RefParams::default()));
    // Enriched, but without any reference row.
    none(&compute_enriched(&parts, &[], &RefParams::default()));
    none(&compute_files_enriched(&files, &[], &RefParams::default()));
}

#[test]
fn enriched_files_are_partitions_in_sorted_path_order() {
    let dir = tidemark_testkit::tempdir();
    let at = 10 * MIN;
    // b.jsonl is reference partition 1 (sorted after a.jsonl.gz), so its
    // tying row wins; its broken line is a reject of partition 1, offset 1.
    std::fs::write(
        dir.join("b.jsonl"),
        format!("{}\nbroken\n", mrow("m1", at, "from-b", "HIGH", "GB")),
    )
    .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(
        &mut gz,
        format!("{}\n", mrow("m1", at, "from-a", "LOW", "US")).as_bytes(),
    )
    .unwrap();
    std::fs::write(dir.join("a.jsonl.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(
        dir.join("t.jsonl"),
        format!("{}\n", rec("x", "c", "1.00", "COMPLETED", "m1", at)),
    )
    .unwrap();

    let out = compute_files_enriched(
        &[dir.join("t.jsonl")],
        &[dir.join("b.jsonl"), dir.join("a.jsonl.gz")],
        &RefParams::default(),
    );
    assert_eq!(
        enrichment(&out),
        vec![joined("x", Some(("from-b", "HIGH", "GB")))]
    );
    assert_eq!(reject_list(&out), vec![rj("merchants", 1, 1, "MALFORMED")]);
    assert_eq!(out.rejects[0].raw, "broken");
}

// ---------------------------------------------------------------------------
// The end-to-end check
// ---------------------------------------------------------------------------

#[test]
fn reference_equals_replay() {
    let tmp = tidemark_testkit::tempdir();
    let input = tmp.join("in");
    let output = tmp.join("out");
    let pattern = generate(&input, 160_000, 8, 7, 100);
    run_ok(&[
        "replay",
        "--input",
        &pattern,
        "--output",
        output.to_str().unwrap(),
    ]);

    let files = jsonl_files(&input);
    assert_eq!(files.len(), 8, "generated files: {files:?}");
    let records: usize = files.iter().map(|f| reference::read_records(f).len()).sum();

    let expected = compute(&files, &RefParams::default());
    // The dataset must exercise every rule: every reject reason, duplicates,
    // and both detectors (27 minutes of event time hold failure bursts).
    for reason in [
        "TOO_LARGE",
        "MALFORMED",
        "MISSING_FIELD",
        "BAD_FIELD",
        "BAD_AMOUNT",
        "BAD_CURRENCY",
        "BAD_STATUS",
        "BAD_TIMESTAMP",
        "LATE",
    ] {
        assert!(
            expected.rejects.iter().any(|r| r.reason == reason),
            "the generated dataset has no {reason} reject"
        );
    }
    assert!(expected.duplicates > 0);
    assert!(expected.anomalies.iter().any(|a| a.kind == "window"));
    assert!(expected.anomalies.iter().any(|a| a.kind == "transaction"));
    let count = |kind: &str| expected.anomalies.iter().filter(|a| a.kind == kind).count();
    eprintln!(
        "reference: {records} records, {} transactions, {} duplicates, {} rejects, {} window rows, \
         {} transaction anomalies, {} window anomalies",
        expected.transactions.len(),
        expected.duplicates,
        expected.rejects.len(),
        expected.windows.len(),
        count("transaction"),
        count("window")
    );
    assert!(
        !expected.transactions.is_empty(),
        "the generated input has no valid transactions"
    );
    let actual = read_committed(&output);
    assert_same(&expected, &actual);

    let accounted = actual.transactions.len() + actual.duplicates as usize + actual.rejects.len();
    assert_eq!(
        records,
        accounted,
        "records in ({records}) != transactions ({}) + duplicates ({}) + rejects ({})",
        actual.transactions.len(),
        actual.duplicates,
        actual.rejects.len()
    );
}
