//! The parameters of the computation (SPEC 3–7), already validated.
//! Parsing and checking user configuration lives in the binary; this is the
//! shape the operators need.

use crate::event::{GroupField, Metric};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WindowKind {
    Tumbling { size_ms: i64 },
    Sliding { size_ms: i64, slide_ms: i64 },
    Session { gap_ms: i64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Aggregate {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub name: String,
    pub kind: WindowKind,
    pub group_by: Vec<GroupField>,
    pub aggregates: Vec<Aggregate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxnZParams {
    pub enabled: bool,
    pub min_history: u64,
    pub z_threshold: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowZParams {
    pub enabled: bool,
    /// Index into `Params::windows`.
    pub spec: usize,
    pub metrics: Vec<Metric>,
    pub history: usize,
    pub min_history: u64,
    pub z_threshold: f64,
    pub cooldown_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub tick_ms: i64,
    pub max_out_of_orderness_ms: i64,
    pub idle_timeout_ms: u64,
    pub max_record_bytes: usize,
    pub dedup_horizon_ms: i64,
    pub windows: Vec<WindowSpec>,
    pub txn_z: TxnZParams,
    pub window_z: WindowZParams,
    /// Epoch boundaries are multiples of this much event time.
    pub checkpoint_interval_ms: i64,
    /// Which outputs are computed and written. Left out of the recorded
    /// parameters when all are on, so older commits still match.
    #[serde(default, skip_serializing_if = "Outputs::all")]
    pub outputs: Outputs,
}

/// Each output can be switched off: not computed (where nothing else needs
/// it) and not written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    pub transactions: bool,
    pub windows: bool,
    /// Off: the detectors do not run either.
    pub anomalies: bool,
    pub rejects: bool,
}

impl Default for Outputs {
    fn default() -> Self {
        Outputs {
            transactions: true,
            windows: true,
            anomalies: true,
            rejects: true,
        }
    }
}

impl Outputs {
    pub fn all(&self) -> bool {
        *self == Outputs::default()
    }
}

impl Default for Params {
    fn default() -> Self {
        use Aggregate::*;
        let all = vec![Count, Sum, Avg, Min, Max];
        Params {
            tick_ms: 1_000,
            max_out_of_orderness_ms: 10_000,
            idle_timeout_ms: 30_000,
            max_record_bytes: 1_048_576,
            dedup_horizon_ms: 600_000,
            windows: vec![
                WindowSpec {
                    name: "status_1m".into(),
                    kind: WindowKind::Tumbling { size_ms: 60_000 },
                    group_by: vec![GroupField::Status],
                    aggregates: all.clone(),
                },
                WindowSpec {
                    name: "merchant_5m".into(),
                    kind: WindowKind::Sliding {
                        size_ms: 300_000,
                        slide_ms: 60_000,
                    },
                    group_by: vec![GroupField::Merchant],
                    aggregates: all.clone(),
                },
                WindowSpec {
                    name: "customer_session".into(),
                    kind: WindowKind::Session { gap_ms: 1_800_000 },
                    group_by: vec![GroupField::CustomerId],
                    aggregates: all,
                },
            ],
            txn_z: TxnZParams {
                enabled: true,
                min_history: 10,
                z_threshold: 3.0,
            },
            window_z: WindowZParams {
                enabled: true,
                spec: 0,
                metrics: vec![Metric::TxnCount, Metric::SumCents],
                history: 60,
                min_history: 10,
                z_threshold: 3.0,
                cooldown_ms: 1_800_000,
            },
            checkpoint_interval_ms: 10_000,
            outputs: Outputs::default(),
        }
    }
}

impl Params {
    /// The parameters as commits record them, for comparing a restart's
    /// with a commit's. The idle timeout decides when, not what, so it may
    /// change freely and is left out; the window detector names the spec it
    /// watches instead of its position in the list.
    pub fn recorded(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("params encode");
        if let Some(o) = v.as_object_mut() {
            o.remove("idle_timeout_ms");
        }
        if let Some(z) = v["window_z"].as_object_mut() {
            z.remove("spec");
            let watched = self.windows.get(self.window_z.spec).map(|w| w.name.clone());
            z.insert("window".into(), watched.unwrap_or_default().into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_form_names_the_watched_window_and_leaves_out_timing() {
        let p = Params::default();
        let v = p.recorded();
        assert!(v.get("idle_timeout_ms").is_none());
        assert!(v["window_z"].get("spec").is_none());
        assert_eq!(v["window_z"]["window"], p.windows[p.window_z.spec].name);
        // Reordering the specs (and pointing the detector at the same one)
        // records the same window set and the same watched window.
        let mut q = p.clone();
        q.windows.reverse();
        q.window_z.spec = q.windows.len() - 1 - p.window_z.spec;
        q.idle_timeout_ms += 1;
        let w = q.recorded();
        assert_eq!(w["window_z"], v["window_z"]);
        let names = |v: &serde_json::Value| {
            let mut n: Vec<String> = v["windows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.to_string())
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&w), names(&v));
    }
}
