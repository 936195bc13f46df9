//! Whether a starting job may resume from a commit, and how: the resume
//! plan, or a typed refusal that names what differs and what to do.
//!
//! A resume must not mix two computations in one output root. So it is
//! refused when the parameters that shape state and outputs changed (unless
//! the operator allowed it, as Flink's `--allowNonRestoredState`: then the
//! operators whose own configuration changed start empty), when an input
//! partition is not what the commit read, or when the commit has positions
//! for partitions the input no longer has.
//!
//! Parameters are compared as the JSON each commit records
//! (`JobSection::params`): this module does not know the job's parameter
//! type, only its recorded shape (`tick_ms`, `checkpoint_interval_ms`,
//! `dedup_horizon_ms`, `windows` named by `name`, `txn_z`, `window_z` with
//! the `window` it watches).

use serde_json::Value;
use thiserror::Error;

use crate::manifest::{Manifest, Position};

/// The starting job, as a resume is checked against it.
#[derive(Clone, Debug)]
pub struct Job<'a> {
    /// The output root, for messages.
    pub root: &'a str,
    /// The parameters as commits record them.
    pub params: &'a Value,
    /// Their fingerprint (older commits record only this).
    pub fingerprint: &'a str,
    /// `--allow-config-change`.
    pub allow_config_change: bool,
    /// The reference source's name: positions under it are the reference's.
    pub reference_name: &'a str,
    /// What each main input partition is.
    pub inputs: &'a [String],
    /// The main input's partition count, where a commit may not name more;
    /// `None` for a source whose partitions come and go (Kinesis shards).
    pub partitions: Option<u32>,
    /// What each reference partition is, when the job has a reference.
    pub reference_inputs: Option<&'a [String]>,
}

/// How to resume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Operators whose restored state is dropped (they start empty).
    pub stale: Vec<String>,
    /// The configuration differences accepted (`--allow-config-change`).
    pub changes: Vec<String>,
    /// Where each main partition ends, as the first start fixed it: a
    /// bounded run keeps its ends across restarts.
    pub ends: Vec<Option<u64>>,
    pub reference_ends: Vec<Option<u64>>,
}

/// Why a job must not resume from what the root holds.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(
        "the configuration that shapes state and outputs changed since epoch {epoch} was committed to {root}: {}. \
         Restore with the same configuration, write to a new output root, or pass --allow-config-change to keep the state that still applies (the changed operators start empty)",
        changes.join("; ")
    )]
    ConfigChanged {
        epoch: i64,
        root: String,
        changes: Vec<String>,
    },
    #[error(
        "--allow-config-change: epoch {epoch} does not record its configuration, so which state still applies is unknown; write to a new output root"
    )]
    ConfigUnrecorded { epoch: i64 },
    #[error(
        "--allow-config-change cannot restore epoch {epoch}: {why}; write to a new output root"
    )]
    CannotUpgrade { epoch: i64, why: String },
    #[error(
        "the {what} changed since epoch {epoch} was committed to {root}: partition {partition} was {was}, now {}; \
         resume with the same {hint}, or write to a new output root",
        now.as_deref().unwrap_or("missing"),
        what = if *reference { "reference input" } else { "inputs" },
        hint = if *reference { "reference input" } else { "inputs (the same files, or the same topics in the same order)" }
    )]
    InputChanged {
        reference: bool,
        epoch: i64,
        root: String,
        partition: u32,
        was: String,
        now: Option<String>,
    },
    #[error(
        "epoch {epoch} has positions for {positions} partitions but the input has {partitions}: resume with the same inputs"
    )]
    TooManyPositions {
        epoch: i64,
        positions: u32,
        partitions: u32,
    },
    #[error(
        "none of the retained commits in {root} verifies (commits {first} and later; older ones were removed by checkpoint.retain), \
         so the job cannot resume; `tidemark verify` lists the damage. Repair the files, or write to a new output root"
    )]
    NothingVerifies { root: String, first: u64 },
}

/// Resumes from `m`, or refuses.
pub fn plan(m: &Manifest, job: &Job) -> Result<Plan, Refusal> {
    let (stale, changes) = check_params(m, job)?;
    let is_reference = |p: &Position| p.source == job.reference_name;
    let main: Vec<&Position> = m
        .job
        .positions
        .iter()
        .filter(|p| !is_reference(p))
        .collect();
    input_unchanged(m, job, false, &main, &m.job.inputs, job.inputs)?;
    if let Some(now) = job.reference_inputs {
        let reference: Vec<&Position> =
            m.job.positions.iter().filter(|p| is_reference(p)).collect();
        input_unchanged(m, job, true, &reference, &m.job.reference_inputs, now)?;
    }
    if let Some(partitions) = job.partitions {
        let positions = main.len() as u32;
        if positions > partitions {
            return Err(Refusal::TooManyPositions {
                epoch: m.epoch,
                positions,
                partitions,
            });
        }
    }
    Ok(Plan {
        stale,
        changes,
        ends: m.job.ends.clone(),
        reference_ends: m.job.reference_ends.clone(),
    })
}

/// A start with no verifying commit: fresh only when nothing was ever
/// removed by retention (the first retained commit is the first). When
/// retention removed older commits, their epochs stay published and a fresh
/// start would compute them a second time.
pub fn fresh_start(root: &str, first_retained: Option<u64>) -> Result<(), Refusal> {
    match first_retained {
        Some(first) if first > 1 => Err(Refusal::NothingVerifies {
            root: root.to_owned(),
            first,
        }),
        _ => Ok(()),
    }
}

/// Every committed position must be of the same input partition now.
fn input_unchanged(
    m: &Manifest,
    job: &Job,
    reference: bool,
    positions: &[&Position],
    was: &[String],
    now: &[String],
) -> Result<(), Refusal> {
    for p in positions {
        let i = p.partition as usize;
        let Some(was) = was.get(i) else { continue };
        if now.get(i) != Some(was) {
            return Err(Refusal::InputChanged {
                reference,
                epoch: m.epoch,
                root: job.root.to_owned(),
                partition: p.partition,
                was: was.clone(),
                now: now.get(i).cloned(),
            });
        }
    }
    Ok(())
}

/// The parameter differences, refused unless allowed; then the operators
/// that start empty.
fn check_params(m: &Manifest, job: &Job) -> Result<(Vec<String>, Vec<String>), Refusal> {
    let changes = match &m.job.params {
        Some(old) => differences(old, job.params),
        // Older commits record only the fingerprint.
        None if !m.job.params_fingerprint.is_empty()
            && m.job.params_fingerprint != job.fingerprint =>
        {
            vec!["(this commit records only a fingerprint of its configuration)".to_string()]
        }
        None => Vec::new(),
    };
    if changes.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    if !job.allow_config_change {
        return Err(Refusal::ConfigChanged {
            epoch: m.epoch,
            root: job.root.to_owned(),
            changes,
        });
    }
    let Some(old) = &m.job.params else {
        return Err(Refusal::ConfigUnrecorded { epoch: m.epoch });
    };
    let stale = stale_operators(old, job.params).map_err(|why| Refusal::CannotUpgrade {
        epoch: m.epoch,
        why,
    })?;
    Ok((stale, changes))
}

/// Every difference between two recorded parameter sets, one line each:
/// `path: old → new`, `path: added` or `path: removed`. Lists of objects
/// that all have a `name` (window specs) are matched by name, so reordering
/// them is not a difference.
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

fn name(v: &Value) -> &str {
    v["name"].as_str().unwrap_or_default()
}

fn named(items: &[Value]) -> bool {
    items
        .iter()
        .all(|v| v.get("name").is_some_and(Value::is_string))
}

/// The operators whose restored state no longer applies under `new` (named
/// as in snapshots: `dedup`, `window:<name>`, `txn_z`, `window_z`), or why
/// nothing can be restored at all.
pub fn stale_operators(old: &Value, new: &Value) -> Result<Vec<String>, String> {
    for field in ["tick_ms", "checkpoint_interval_ms"] {
        if old.get(field) != new.get(field) {
            return Err(format!(
                "{field} changed ({} → {}): every operator's state is kept in ticks between boundaries of the old one",
                old.get(field).unwrap_or(&Value::Null),
                new.get(field).unwrap_or(&Value::Null)
            ));
        }
    }
    let mut stale = Vec::new();
    if old.get("dedup_horizon_ms") != new.get("dedup_horizon_ms") {
        stale.push("dedup".to_string());
    }
    let old_window = |n: &str| {
        old.get("windows")
            .and_then(Value::as_array)
            .and_then(|ws| ws.iter().find(|w| name(w) == n))
    };
    let mut changed_windows = Vec::new();
    for w in new["windows"].as_array().into_iter().flatten() {
        if old_window(name(w)) != Some(w) {
            stale.push(format!("window:{}", name(w)));
            changed_windows.push(name(w));
        }
    }
    if old.get("txn_z") != new.get("txn_z") {
        stale.push("txn_z".to_string());
    }
    // The window detector's history is of one spec's rows.
    let watched = new["window_z"]["window"].as_str().unwrap_or_default();
    if old.get("window_z") != new.get("window_z") || changed_windows.contains(&watched) {
        stale.push("window_z".to_string());
    }
    Ok(stale)
}

#[cfg(test)]
mod tests;
