//! The commit protocol: a linear log of commits fenced by conditional creates.
//!
//! Readers use `manifests/<E>.json` (SPEC 8). The job's own truth is the log
//! `_commits/<seq>.json`: commit `n + 1` is claimed with a conditional create
//! by a job that restored from (or itself made) commit `n`, so two jobs on
//! one root can never both extend the same history — the second claim fails
//! and that job stops. Only after the claim is the public manifest written;
//! a crash in between is repaired by the next start, which republishes it.
//!
//! Every process also claims a generation number (`_generations/<g>`), so
//! the data files of two jobs never share a name, and garbage collection can
//! tell work in flight from leftovers.

use anyhow::{bail, Context, Result};

use crate::manifest::{self, manifest_key, parse, verify, Manifest, QUARANTINE_PREFIX};
use crate::storage::Storage;

pub const LOG_PREFIX: &str = "_commits/";
pub const GENERATIONS_PREFIX: &str = "_generations/";

pub fn log_key(seq: u64) -> String {
    format!("{LOG_PREFIX}{seq:020}.json")
}

fn parse_numbered(key: &str, prefix: &str) -> Option<u64> {
    let digits = key.strip_prefix(prefix)?.strip_suffix(".json")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// Claims a generation no other process has: one above the highest claimed
/// (or committed, for roots written before claims existed), by conditional
/// create, retrying past concurrent claims.
pub fn claim_generation(st: &dyn Storage, at_least: u64, who: &str) -> Result<u64> {
    let g = st
        .list(GENERATIONS_PREFIX)?
        .iter()
        .filter_map(|k| parse_numbered(k, GENERATIONS_PREFIX))
        .max()
        .unwrap_or(0)
        .max(at_least.saturating_sub(1))
        + 1;
    for candidate in g..g + 1000 {
        if st.put_if_absent(
            &format!("{GENERATIONS_PREFIX}{candidate:020}.json"),
            who.as_bytes(),
        )? {
            return Ok(candidate);
        }
    }
    bail!(
        "could not claim a generation in {}: too many concurrent starts",
        st.describe()
    )
}

/// Why a commit did not happen.
#[derive(Debug)]
pub enum CommitError {
    /// Another job extended the history first: this one must stop.
    Conflict {
        seq: u64,
        epoch: i64,
    },
    Storage(anyhow::Error),
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Conflict { seq, epoch } => write!(
                f,
                "commit {seq} (epoch {epoch}) was already made by another job writing to the same output root: \
                 two jobs are using one output root; this one stops without committing"
            ),
            CommitError::Storage(e) => write!(f, "{e:#}"),
        }
    }
}

/// Claims commit `m.job.seq`, then publishes `manifests/<E>.json`.
pub fn commit(st: &dyn Storage, m: &Manifest) -> Result<(), CommitError> {
    let bytes = m.to_bytes().map_err(CommitError::Storage)?;
    match st.put_if_absent(&log_key(m.job.seq), &bytes) {
        Ok(true) => {}
        Ok(false) => {
            return Err(CommitError::Conflict {
                seq: m.job.seq,
                epoch: m.epoch,
            })
        }
        Err(e) => return Err(CommitError::Storage(e)),
    }
    publish(st, m, &bytes).map_err(CommitError::Storage)
}

/// Makes `manifests/<E>.json` hold exactly `bytes`; a different object there
/// (a damaged copy) is moved to quarantine first.
fn publish(st: &dyn Storage, m: &Manifest, bytes: &[u8]) -> Result<()> {
    let key = manifest_key(m.epoch)?;
    if st.put_if_absent(&key, bytes)? {
        return Ok(());
    }
    if st.get(&key)?.as_deref() == Some(bytes) {
        return Ok(());
    }
    manifest::quarantine(st, m.epoch)?;
    if !st.put_if_absent(&key, bytes)? {
        bail!("manifest {key} changed while being republished");
    }
    Ok(())
}

/// What a starting job finds in the log.
#[derive(Default)]
pub struct Found {
    /// The newest commit whose files all verify.
    pub newest: Option<Manifest>,
    /// Why newer commits were passed over.
    pub problems: Vec<String>,
    /// The commits passed over: (log position, epoch when readable).
    pub damaged: Vec<(u64, Option<i64>)>,
}

/// The newest commit whose files all verify, walking back past damaged ones.
/// Its public manifest is republished if it is missing or damaged.
pub fn newest_valid(st: &dyn Storage) -> Result<Found> {
    let mut found = Found::default();
    let mut seqs: Vec<u64> = st
        .list(LOG_PREFIX)?
        .iter()
        .filter_map(|k| parse_numbered(k, LOG_PREFIX))
        .collect();
    seqs.sort_unstable();
    for seq in seqs.into_iter().rev() {
        let key = log_key(seq);
        let Some(bytes) = st.get(&key)? else { continue };
        match parse(&bytes, None) {
            Err(e) => {
                found.problems.push(format!("commit {seq}: {e:#}"));
                found.damaged.push((seq, None));
            }
            Ok(m) => {
                let p = verify(st, &m);
                if p.is_empty() {
                    publish(st, &m, &bytes)
                        .with_context(|| format!("republishing epoch {}", m.epoch))?;
                    found.newest = Some(m);
                    return Ok(found);
                }
                found
                    .problems
                    .extend(p.into_iter().map(|p| format!("commit {seq}: {p}")));
                found.damaged.push((seq, Some(m.epoch)));
            }
        }
    }
    Ok(found)
}

/// Moves damaged commits (log entries and their public manifests) to
/// quarantine, so the history continues from the newest valid commit and
/// readers never see an epoch the job will compute again. Commits made
/// since the log was read are not touched.
pub fn discard(st: &dyn Storage, damaged: &[(u64, Option<i64>)]) -> Result<Vec<String>> {
    let mut moved = Vec::new();
    for &(seq, epoch) in damaged {
        let key = log_key(seq);
        if let Some(bytes) = st.get(&key)? {
            let to = format!("{QUARANTINE_PREFIX}{}", key.replace('/', "-"));
            st.put(&to, &bytes)?;
            st.delete(&key)?;
            moved.push(to);
        }
        if let Some(e) = epoch {
            moved.extend(manifest::quarantine(st, e)?);
        }
    }
    Ok(moved)
}
