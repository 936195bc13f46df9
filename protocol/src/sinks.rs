//! Publishing committed outputs to Kafka sinks: which epochs are due, the
//! deterministic key of each published row, and the progress record.
//!
//! Only committed epochs are published, in order. After an epoch's rows are
//! produced and flushed, the progress record ([`crate::keys::KAFKA_SINKS_PROGRESS`])
//! names it; a start publishes every committed epoch after the recorded one.
//! A crash between producing and recording republishes that epoch under the
//! same keys: at least once, duplicates recognisable by key.

use serde_json::{Map, Value};

/// Where a committed output's rows go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// Anomalies, to the alerts topic.
    Alerts,
    /// Rejects, to the dead-letter topic.
    DeadLetters,
}

impl Topic {
    /// The topic of an output's rows; other outputs are not published.
    pub fn of(output: &str) -> Option<Topic> {
        match output {
            "anomalies" => Some(Topic::Alerts),
            "rejects" => Some(Topic::DeadLetters),
            _ => None,
        }
    }

    /// The key a row is published under.
    pub fn key(self, row: &Map<String, Value>) -> String {
        match self {
            Topic::Alerts => anomaly_key(row),
            Topic::DeadLetters => reject_key(row),
        }
    }
}

/// The key of an anomaly: `transaction/<id>` or
/// `window/<window>/<key>/<window_start>/<metric>`.
pub fn anomaly_key(row: &Map<String, Value>) -> String {
    let s = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("");
    if s("kind") == "transaction" {
        format!("transaction/{}", s("transaction_id"))
    } else {
        format!(
            "window/{}/{}/{}/{}",
            s("window"),
            s("key"),
            s("window_start"),
            s("metric")
        )
    }
}

/// The key of a reject: its source coordinates `<source>/<partition>/<offset>`.
pub fn reject_key(row: &Map<String, Value>) -> String {
    format!(
        "{}/{}/{}",
        row.get("source").and_then(Value::as_str).unwrap_or(""),
        row.get("partition").unwrap_or(&Value::Null),
        row.get("offset").unwrap_or(&Value::Null)
    )
}

/// The progress record naming the last epoch published.
pub fn progress(epoch: i64) -> Vec<u8> {
    serde_json::json!({ "epoch": epoch })
        .to_string()
        .into_bytes()
}

/// The last epoch published, from a progress record (`None`: unreadable,
/// so everything committed is published again, under the same keys).
pub fn parse_progress(bytes: &[u8]) -> Option<i64> {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v["epoch"].as_i64())
}

/// Whether a committed epoch still has to be published.
pub fn due(epoch: i64, published: Option<i64>) -> bool {
    published.is_none_or(|p| epoch > p)
}

/// The committed epochs a start publishes before new ones, in order.
pub fn backlog(committed: &[i64], published: Option<i64>) -> Vec<i64> {
    let mut b: Vec<i64> = committed
        .iter()
        .copied()
        .filter(|e| due(*e, published))
        .collect();
    b.sort_unstable();
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn each_row_has_one_key_however_often_it_is_published() {
        // A key that used the row's position in its file, or its JSON,
        // would change between a publish and its republish after a crash.
        let rows = [
            (
                Topic::Alerts,
                json!({"kind": "transaction", "transaction_id": "t-1", "window": null, "z": 4.1}),
                "transaction/t-1",
            ),
            (
                Topic::Alerts,
                json!({"kind": "window", "window": "status_1m", "key": "FAILED",
                       "window_start": "2026-01-01T00:01:00Z", "metric": "txn_count"}),
                "window/status_1m/FAILED/2026-01-01T00:01:00Z/txn_count",
            ),
            (
                Topic::Alerts,
                json!({"kind": "window", "window": "status_1m", "key": null,
                       "window_start": "2026-01-01T00:01:00Z", "metric": "sum"}),
                "window/status_1m//2026-01-01T00:01:00Z/sum",
            ),
            (
                Topic::DeadLetters,
                json!({"source": "payments", "partition": 3, "offset": 1042, "reason": "BAD_JSON"}),
                "payments/3/1042",
            ),
        ];
        for (topic, r, want) in rows {
            assert_eq!(topic.key(&row(r)), want);
        }
        assert_eq!(Topic::of("anomalies"), Some(Topic::Alerts));
        assert_eq!(Topic::of("rejects"), Some(Topic::DeadLetters));
        assert_eq!(Topic::of("windows"), None);
        assert_eq!(Topic::of("transactions"), None);
    }

    #[test]
    fn a_start_publishes_every_committed_epoch_after_the_recorded_one() {
        // (committed, progress record, backlog). Wrong rules: republishing
        // the recorded epoch, skipping everything on an unreadable record.
        type Row<'a> = (&'a [i64], Option<&'a [u8]>, &'a [i64]);
        let rows: [Row; 5] = [
            (&[10, 20, 30], None, &[10, 20, 30]),
            (&[30, 10, 20], Some(br#"{"epoch":20}"#), &[30]),
            (&[10, 20], Some(br#"{"epoch":20}"#), &[]),
            (&[10, 20], Some(b"garbage"), &[10, 20]),
            (&[10, 20], Some(&progress(10)), &[20]),
        ];
        for (i, (committed, record, want)) in rows.into_iter().enumerate() {
            let published = record.and_then(parse_progress);
            assert_eq!(backlog(committed, published), want, "row {i}");
        }
        assert!(!due(20, Some(20)));
        assert!(due(21, Some(20)));
    }
}
