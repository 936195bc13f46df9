//! What a starting job finds in its output root: the commit to resume
//! from (or a fresh start), its generation, and what the protocol says of
//! resuming under this job's configuration and inputs.

use anyhow::Result;
use tidemark_checkpoint::commit_log;
use tidemark_checkpoint::manifest::{self, Manifest};
use tidemark_checkpoint::storage::Storage;
use tidemark_dataflow::params::Params;
use tidemark_protocol::resume;

use super::JobSpec;
use tidemark_connectors::adapters::SourceSpec;

/// Where a job starts.
pub(super) struct Start {
    /// The commit resumed from; `None` for a fresh start.
    pub resume: Option<Manifest>,
    pub generation: u64,
    pub fingerprint: String,
    /// Operators whose committed state no longer applies (restored empty).
    pub stale: Vec<String>,
}

/// Recovers the newest verifying commit, claims this run's generation and
/// checks the resume; process 0 also sets damaged commits aside and
/// collects files of crashed runs.
pub(super) fn open_root(st: &dyn Storage, spec: &mut JobSpec, process: usize) -> Result<Start> {
    let found = commit_log::newest_valid(st)?;
    for p in &found.problems {
        tracing::warn!(problem = %p, "skipping a damaged epoch");
    }
    if found.newest.is_none() {
        // Starting over is right only when the whole history was damaged;
        // when retention removed older commits, their epochs stay published
        // and a fresh start would compute them a second time.
        resume::fresh_start(&st.describe(), commit_log::list(st)?.first().copied())?;
    }
    let resume = found.newest.clone();
    let committed_generation = resume.as_ref().map_or(0, |m| m.job.generation);
    let generation =
        commit_log::claim_generation(st, committed_generation + 1, &format!("process {process}"))?;
    let fp = fingerprint(&spec.params);
    let stale = match &resume {
        Some(m) => check_resume(m, spec, &fp, &st.describe())?,
        None => Vec::new(),
    };
    if process == 0 {
        // Damaged commits make way for new commits of the same epochs.
        for moved in commit_log::discard(st, &found.damaged)? {
            tracing::warn!(to = %moved, "moved a damaged commit aside");
        }
        // Files of generations older than the newest committed one that no
        // manifest names are leftovers of crashed runs; newer ones may be
        // another job's work in flight and are left alone.
        let garbage = manifest::collect_garbage(st, committed_generation)?;
        if !garbage.is_empty() {
            tracing::info!(
                files = garbage.len(),
                "collected files of uncommitted epochs"
            );
        }
    }
    match &resume {
        Some(m) => tracing::info!(epoch = m.epoch, generation, "restoring"),
        None => tracing::info!(generation, "starting fresh"),
    }
    Ok(Start {
        resume,
        generation,
        fingerprint: fp,
        stale,
    })
}

/// The parameters that shape state and outputs; a restore under different
/// ones would mix two computations in one output.
pub(super) fn fingerprint(p: &Params) -> String {
    let mut p = p.clone();
    // The idle timeout decides when, not what: it may change across restarts.
    p.idle_timeout_ms = 0;
    manifest::sha256_hex(&serde_json::to_vec(&p).expect("params encode"))
}

/// Checks a resume against the commit (`protocol::resume`) and applies the
/// plan: the bounded ends the first start fixed are kept. Returns the
/// operators whose restored state is dropped (only with
/// `allow_config_change`).
fn check_resume(m: &Manifest, spec: &mut JobSpec, fp: &str, root: &str) -> Result<Vec<String>> {
    let params = spec.params.recorded();
    let inputs = spec.source.describe();
    let reference_inputs = spec.reference.as_ref().map(|r| r.source.describe());
    let names = spec.names();
    let plan = resume::plan(
        m,
        &resume::Job {
            root,
            params: &params,
            fingerprint: fp,
            allow_config_change: spec.allow_config_change,
            reference_name: &names.reference,
            inputs: &inputs,
            // Kinesis positions name shards, some of which may be trimmed away.
            partitions: (!matches!(spec.source, SourceSpec::Kinesis(_)))
                .then(|| spec.source.partitions()),
            reference_inputs: reference_inputs.as_deref(),
        },
    )?;
    if !plan.changes.is_empty() {
        tracing::warn!(changes = %plan.changes.join("; "), dropped = ?plan.stale, "restoring under a changed configuration");
    }
    spec.source.keep_ends(&plan.ends);
    if let Some(r) = &mut spec.reference {
        r.source.keep_ends(&plan.reference_ends);
    }
    Ok(plan.stale)
}
