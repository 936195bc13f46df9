//! `tidemark inspect` and `tidemark verify`: reading an output root through
//! its manifests.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;
use tidemark_checkpoint::storage;
use tidemark_checkpoint::{commit_log, manifest};

const OUTPUTS: [&str; 4] = ["transactions", "windows", "anomalies", "rejects"];

pub fn inspect(root: &str, json: bool) -> Result<ExitCode> {
    let st = storage::open(root)?;
    let epochs = manifest::list_manifests(&*st)?;
    let mut rows = Vec::new();
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    let mut duplicates = 0;
    for e in &epochs {
        match manifest::load(&*st, *e) {
            Ok(m) => {
                let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
                for f in &m.files {
                    if let Some(o) = OUTPUTS.iter().find(|o| **o == f.output) {
                        *counts.entry(o).or_default() += f.rows;
                        *totals.entry(o).or_default() += f.rows;
                    }
                }
                duplicates += m.job.counts.duplicates;
                rows.push((
                    *e,
                    Some((counts, m.job.counts.duplicates, m.job.generation)),
                ));
            }
            Err(_) => rows.push((*e, None)),
        }
    }
    if json {
        let epochs_json: Vec<_> = rows
            .iter()
            .map(|(e, r)| match r {
                Some((c, d, g)) => {
                    serde_json::json!({"epoch": e, "generation": g, "rows": c, "duplicates": d})
                }
                None => serde_json::json!({"epoch": e, "damaged": true}),
            })
            .collect();
        let out =
            serde_json::json!({"epochs": epochs_json, "totals": totals, "duplicates": duplicates});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>20}  {:>4}  {:>12} {:>9} {:>9} {:>9} {:>10}",
        "epoch", "gen", "transactions", "windows", "anomalies", "rejects", "duplicates"
    );
    for (e, r) in &rows {
        match r {
            Some((c, d, g)) => println!(
                "{e:>20}  {g:>4}  {:>12} {:>9} {:>9} {:>9} {d:>10}",
                c.get("transactions").unwrap_or(&0),
                c.get("windows").unwrap_or(&0),
                c.get("anomalies").unwrap_or(&0),
                c.get("rejects").unwrap_or(&0),
            ),
            None => println!("{e:>20}  damaged manifest (unreadable)"),
        }
    }
    println!(
        "{:>20}  {:>4}  {:>12} {:>9} {:>9} {:>9} {duplicates:>10}",
        format!("total ({} epochs)", rows.len()),
        "",
        totals.get("transactions").unwrap_or(&0),
        totals.get("windows").unwrap_or(&0),
        totals.get("anomalies").unwrap_or(&0),
        totals.get("rejects").unwrap_or(&0),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn verify(root: &str) -> Result<ExitCode> {
    let st = storage::open(root)?;
    let epochs = manifest::list_manifests(&*st)?;
    let mut problems = Vec::new();
    let mut files = 0;
    for e in &epochs {
        match manifest::load(&*st, *e) {
            Ok(m) => {
                files += m.files.len() + m.job.state.len();
                problems.extend(manifest::verify(&*st, &m));
            }
            Err(err) => problems.push(format!("manifest {e}: {err:#}")),
        }
    }
    // The retained commits: their state snapshots (their data files are
    // the public manifests' and were checked above).
    let commits = commit_log::list(&*st)?;
    for seq in &commits {
        let key = commit_log::log_key(*seq);
        let Some(bytes) = st.get(&key)? else { continue };
        match manifest::parse(&bytes, None) {
            Ok(mut m) => {
                m.files.clear();
                files += m.job.state.len();
                problems.extend(
                    manifest::verify(&*st, &m)
                        .into_iter()
                        .map(|p| format!("commit {seq}: {p}")),
                );
            }
            Err(err) => problems.push(format!("commit {seq}: {err:#}")),
        }
    }
    if problems.is_empty() {
        println!(
            "ok: {} manifests, {} retained commits, {files} files verified",
            epochs.len(),
            commits.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            println!("DAMAGED: {p}");
        }
        println!("{} problems in {} manifests", problems.len(), epochs.len());
        Ok(ExitCode::from(crate::exit::STOP_TIMEOUT_OR_DAMAGE))
    }
}
