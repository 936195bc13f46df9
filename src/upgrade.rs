//! Restoring under a changed configuration: what changed since a commit,
//! named field by field, and which operators' state no longer applies.
//!
//! Each commit records the parameters that shape state and outputs
//! (`Params` as JSON). A restart under other parameters is refused with the
//! differences listed; with `--allow-config-change` the job restores what
//! still applies and starts the changed operators empty, as Flink does with
//! `--allowNonRestoredState`.

use serde_json::Value;
use tidemark_dataflow::params::Params;

/// The parameters as they are recorded in a commit. The idle timeout decides
/// when, not what, so it may change freely and is left out; the window
/// detector names the spec it watches instead of its position in the list.
pub fn recorded(p: &Params) -> Value {
    let mut v = serde_json::to_value(p).expect("params encode");
    if let Some(o) = v.as_object_mut() {
        o.remove("idle_timeout_ms");
    }
    if let Some(z) = v["window_z"].as_object_mut() {
        z.remove("spec");
        let watched = p.windows.get(p.window_z.spec).map(|w| w.name.clone());
        z.insert("window".into(), watched.unwrap_or_default().into());
    }
    v
}

/// Every difference between two recorded parameter sets, one line each:
/// `path: old → new`, `path: added` or `path: removed`. Window specs are
/// matched by name, so reordering them is not a difference.
pub fn differences(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff("", old, new, &mut out);
    out
}

fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    let at = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    Some(vb) => diff(&at(k), va, vb, out),
                    None => out.push(format!("{}: removed", at(k))),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{}: added", at(k)));
            }
        }
        (Value::Array(a), Value::Array(b)) if named(a) && named(b) => {
            let name = |v: &Value| v["name"].as_str().unwrap_or_default().to_string();
            for va in a {
                let n = name(va);
                match b.iter().find(|vb| name(vb) == n) {
                    Some(vb) => diff(&format!("{path}[{n}]"), va, vb, out),
                    None => out.push(format!("{path}[{n}]: removed")),
                }
            }
            for vb in b {
                let n = name(vb);
                if !a.iter().any(|va| name(va) == n) {
                    out.push(format!("{path}[{n}]: added"));
                }
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {a} → {b}")),
        _ => {}
    }
}

fn named(items: &[Value]) -> bool {
    items
        .iter()
        .all(|v| v.get("name").is_some_and(Value::is_string))
}

/// The operators whose restored state no longer applies under `new`
/// (named as in snapshots: `dedup`, `window:<name>`, `txn_z`, `window_z`),
/// or why nothing can be restored at all.
pub fn stale_operators(old: &Value, new: &Params) -> Result<Vec<String>, String> {
    let new_v = recorded(new);
    for field in ["tick_ms", "checkpoint_interval_ms"] {
        if old.get(field) != new_v.get(field) {
            return Err(format!(
                "{field} changed ({} → {}): every operator's state is kept in ticks between boundaries of the old one",
                old.get(field).unwrap_or(&Value::Null),
                new_v[field]
            ));
        }
    }
    let mut stale = Vec::new();
    if old.get("dedup_horizon_ms") != new_v.get("dedup_horizon_ms") {
        stale.push("dedup".to_string());
    }
    let old_window = |name: &str| {
        old.get("windows")
            .and_then(Value::as_array)
            .and_then(|ws| ws.iter().find(|w| w["name"] == name))
    };
    let mut changed_windows = Vec::new();
    for (w, v) in new
        .windows
        .iter()
        .zip(new_v["windows"].as_array().into_iter().flatten())
    {
        if old_window(&w.name) != Some(v) {
            stale.push(format!("window:{}", w.name));
            changed_windows.push(w.name.clone());
        }
    }
    if old.get("txn_z") != new_v.get("txn_z") {
        stale.push("txn_z".to_string());
    }
    // The window detector's history is of one spec's rows.
    let watched = new_v["window_z"]["window"].as_str().unwrap_or_default();
    if old.get("window_z") != new_v.get("window_z") || changed_windows.iter().any(|w| w == watched)
    {
        stale.push("window_z".to_string());
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_dataflow::params::WindowKind;

    #[test]
    fn differences_name_each_changed_field_and_match_windows_by_name() {
        let old = Params::default();
        let mut new = old.clone();
        assert!(differences(&recorded(&old), &recorded(&new)).is_empty());
        // Reordered specs are the same computation.
        new.windows.reverse();
        new.window_z.spec = new.windows.len() - 1 - old.window_z.spec;
        assert!(differences(&recorded(&old), &recorded(&new)).is_empty());
        new.idle_timeout_ms += 1;
        assert!(differences(&recorded(&old), &recorded(&new)).is_empty());

        let mut new = old.clone();
        new.dedup_horizon_ms = 300_000;
        let m5 = new
            .windows
            .iter_mut()
            .find(|w| w.name == "merchant_5m")
            .unwrap();
        m5.kind = WindowKind::Sliding {
            size_ms: 600_000,
            slide_ms: 60_000,
        };
        new.windows.retain(|w| w.name != "customer_session");
        let mut extra = new.windows[0].clone();
        extra.name = "status_2m".into();
        new.windows.push(extra);
        let d = differences(&recorded(&old), &recorded(&new));
        assert_eq!(
            d,
            [
                "dedup_horizon_ms: 600000 → 300000",
                "windows[merchant_5m].kind.Sliding.size_ms: 300000 → 600000",
                "windows[customer_session]: removed",
                "windows[status_2m]: added",
            ],
            "{d:#?}"
        );
    }

    #[test]
    fn only_operators_whose_own_configuration_changed_lose_their_state() {
        let old = Params::default();
        let old_v = recorded(&old);
        assert_eq!(stale_operators(&old_v, &old), Ok(vec![]));

        let mut new = old.clone();
        new.max_out_of_orderness_ms = 20_000;
        assert_eq!(stale_operators(&old_v, &new), Ok(vec![]));

        let status = new
            .windows
            .iter_mut()
            .find(|w| w.name == "status_1m")
            .unwrap();
        status.kind = WindowKind::Tumbling { size_ms: 120_000 };
        // status_1m is the spec the window detector watches.
        assert_eq!(
            stale_operators(&old_v, &new),
            Ok(vec!["window:status_1m".into(), "window_z".into()])
        );

        let mut new = old.clone();
        new.dedup_horizon_ms = 1;
        new.txn_z.z_threshold = 4.0;
        assert_eq!(
            stale_operators(&old_v, &new),
            Ok(vec!["dedup".into(), "txn_z".into()])
        );

        let mut new = old.clone();
        new.tick_ms = 500;
        let e = stale_operators(&old_v, &new).unwrap_err();
        assert!(e.starts_with("tick_ms changed (1000 → 500)"), "{e}");
    }
}
