//! Helpers shared by the record tests: a valid record and ways to vary it.

use super::parse_record;
use crate::event::{RejectReason, Txn};

pub(super) const MAX: usize = 1_048_576;

pub(super) const GOOD: &str = r#"{"transaction_id":"tx-1","customer_id":"c-9","amount":12.5,"currency":"USD","merchant":"Acme","category":"books","status":"COMPLETED","timestamp":"2024-01-01T00:00:00Z"}"#;

pub(super) fn parse(s: &str) -> Result<Txn, RejectReason> {
    parse_record(s.as_bytes(), MAX, 0, 0)
}

pub(super) fn reason(s: &str) -> RejectReason {
    match parse(s) {
        Ok(t) => panic!("expected a reject for {s:?}, got {t:?}"),
        Err(r) => r,
    }
}

/// A valid record with `field`'s value replaced by the raw JSON `value`
/// (or removed when `value` is `None`).
pub(super) fn with(field: &str, value: Option<&str>) -> String {
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
pub(super) fn with_all(changes: &[(&str, Option<&str>)]) -> String {
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

pub(super) fn amount(lit: &str) -> Result<i64, RejectReason> {
    parse(&with("amount", Some(lit))).map(|t| t.amount_cents)
}
