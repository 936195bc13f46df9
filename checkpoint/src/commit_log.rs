//! The commit protocol: a linear log of commits fenced by conditional creates.
//!
//! Readers use `manifests/<E>.json` (SPEC 8). The job's own truth is the log
//! `_commits/<seq>.json`: commit `n + 1` is claimed with a conditional create
//! by a job that restored from (or itself made) commit `n`, so two jobs on
//! one root can never both extend the same history — the second claim fails
//! and that job stops. Only after the claim is the public manifest written;
//! a crash in between is repaired by the next start, which republishes it.
//!
//! The log entry is the whole checkpoint (positions, state snapshot files);
//! the public manifest is the same without the state files, so that old
//! snapshots can be deleted ([`retain`]) while every public manifest — the
//! output record, never deleted — still verifies.
//!
//! Every process also claims a generation number (`_generations/<g>`), so
//! the data files of two jobs never share a name, and garbage collection can
//! tell work in flight from leftovers.

use anyhow::{bail, Context, Result};

use crate::manifest::{self, manifest_key, parse, verify, Manifest};
use crate::redshift;
use crate::storage::Storage;
use tidemark_protocol::keys::{generation_key, parse_generation_key, parse_log_key};
use tidemark_protocol::recovery::{self, Entry};
use tidemark_protocol::retention;

pub use tidemark_protocol::keys::{log_key, GENERATIONS_PREFIX, LOG_PREFIX};

/// Claims a generation no other process has: one above the highest claimed
/// (or committed, for roots written before claims existed), by conditional
/// create, retrying past concurrent claims.
pub fn claim_generation(st: &dyn Storage, at_least: u64, who: &str) -> Result<u64> {
    let g = st
        .list(GENERATIONS_PREFIX)?
        .iter()
        .filter_map(|k| parse_generation_key(k))
        .max()
        .unwrap_or(0)
        .max(at_least.saturating_sub(1))
        + 1;
    for candidate in g..g + 1000 {
        if st.put_if_absent(&generation_key(candidate), who.as_bytes())? {
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
    let bytes = m.to_bytes();
    match st.put_if_absent(&log_key(m.job.seq), &bytes) {
        Ok(true) => {}
        // Our own entry, from an attempt whose answer was lost, is ours.
        // Reading it back can fail too (storage is out): that is not a
        // conflict but a storage error, retried like any other.
        Ok(false) => match st.get(&log_key(m.job.seq)) {
            Ok(found) if found.as_deref() == Some(&bytes[..]) => {}
            Ok(_) => {
                return Err(CommitError::Conflict {
                    seq: m.job.seq,
                    epoch: m.epoch,
                })
            }
            Err(e) => return Err(CommitError::Storage(e.into())),
        },
        Err(e) => return Err(CommitError::Storage(e.into())),
    }
    publish(st, m).map_err(CommitError::Storage)
}

/// Makes `manifests/<E>.json` hold exactly the public form of the commit `m`
/// (a different object there, a damaged copy, is moved to quarantine first),
/// writing its Redshift COPY manifest before it: once the public manifest
/// exists, so does the COPY manifest.
fn publish(st: &dyn Storage, m: &Manifest) -> Result<()> {
    let key = manifest_key(m.epoch)?;
    let bytes = m.public().to_bytes();
    if st.get(&key)?.as_deref() == Some(&bytes[..]) {
        return Ok(());
    }
    redshift::write(st, m)?;
    if st.put_if_absent(&key, &bytes)? {
        return Ok(());
    }
    manifest::quarantine(st, m.epoch)?;
    if !st.put_if_absent(&key, &bytes)? {
        bail!("manifest {key} changed while being republished");
    }
    Ok(())
}

/// What a starting job finds in the log ([`recovery::choose`] decides).
pub type Found = recovery::Recovery;

/// The newest commit whose files all verify, walking back past damaged ones
/// (read lazily: nothing older than the restored commit is read). Its
/// public manifest is republished if it is missing or damaged.
pub fn newest_valid(st: &dyn Storage) -> Result<Found> {
    let seqs = list(st)?;
    let mut read_error = None;
    let entries = seqs
        .into_iter()
        .rev()
        .map_while(|seq| {
            let bytes = match st.get(&log_key(seq)) {
                Ok(b) => b?,
                Err(e) => {
                    read_error = Some(e);
                    return None;
                }
            };
            Some(Some(match parse(&bytes, None) {
                Err(e) => (seq, Entry::Unreadable(e.to_string())),
                Ok(m) => {
                    let problems = verify(st, &m);
                    (
                        seq,
                        Entry::Checked {
                            manifest: Box::new(m),
                            problems,
                        },
                    )
                }
            }))
        })
        .flatten();
    let found = recovery::choose(entries);
    if let Some(e) = read_error {
        return Err(e.into());
    }
    if let Some(m) = &found.newest {
        publish(st, m).with_context(|| format!("republishing epoch {}", m.epoch))?;
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
            let to = tidemark_protocol::keys::quarantine_log_key(seq);
            st.put(&to, &bytes)?;
            st.delete(&key)?;
            moved.push(to);
        }
        if let Some(e) = epoch {
            moved.extend(manifest::quarantine(st, e)?);
            st.delete(&redshift::key(e))?;
        }
    }
    Ok(moved)
}

/// Retention: keeps the newest `keep` commits of the log (at or below
/// `newest_seq`) and deletes older log entries, then the state snapshots they
/// named. Public manifests and the data files they name are the output and
/// are never touched. Returns the deleted keys.
///
/// The log entry goes first: a crash in between leaves state files no commit
/// names, which the next start's garbage collection removes.
pub fn retain(st: &dyn Storage, newest_seq: u64, keep: u64) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    for seq in retention::expired(&list(st)?, newest_seq, keep) {
        let key = log_key(seq);
        let state = match st.get(&key)? {
            Some(bytes) => parse(&bytes, None).map(|m| m.job.state).unwrap_or_default(),
            None => continue,
        };
        let paths = state.into_iter().map(|s| s.path).collect();
        for k in retention::deletions(key, paths) {
            st.delete(&k)?;
            deleted.push(k);
        }
    }
    Ok(deleted)
}

/// The log positions present, ascending.
pub fn list(st: &dyn Storage) -> Result<Vec<u64>> {
    let mut seqs: Vec<u64> = st
        .list(LOG_PREFIX)?
        .iter()
        .filter_map(|k| parse_log_key(k))
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::{data, state};
    use crate::manifest::{file_name, list_manifests, JobSection};
    use crate::storage::TempDir;

    /// Commits `seq` (epoch `seq * 1000`) with a transactions file, a
    /// rejects file and a state file.
    fn commit_seq(st: &crate::storage::LocalStorage, seq: u64) -> Manifest {
        let e = seq as i64 * 1000;
        let files = vec![
            data(
                st,
                "transactions",
                &format!(
                    "transactions/date=1970-01-01/hour=00/{}",
                    file_name(e, 1, 0, "parquet")
                ),
                format!("t{seq}").as_bytes(),
            ),
            data(
                st,
                "rejects",
                &format!("rejects/{}", file_name(e, 1, 0, "parquet")),
                b"r",
            ),
        ];
        let s = state(
            st,
            &format!("state/{}", file_name(e, 1, 0, "bin")),
            format!("s{seq}").as_bytes(),
        );
        let m = Manifest::new(
            e,
            files,
            JobSection {
                generation: 1,
                seq,
                state: vec![s],
                ..Default::default()
            },
        );
        commit(st, &m).unwrap();
        m
    }

    #[test]
    fn public_manifest_omits_state_and_redshift_manifest_comes_with_it() {
        let d = TempDir::new("publish");
        let st = d.storage();
        let m = commit_seq(&st, 1);
        let public = manifest::load(&st, 1000).unwrap();
        assert!(public.job.state.is_empty());
        assert_eq!(public.files, m.files);
        let log = parse(&st.get(&log_key(1)).unwrap().unwrap(), None).unwrap();
        assert_eq!(log, m);
        let rs: serde_json::Value =
            serde_json::from_slice(&st.get(&redshift::key(1000)).unwrap().unwrap()).unwrap();
        assert_eq!(rs["entries"].as_array().unwrap().len(), 1);
        // The same commit again (a retry whose answer was lost) is ours;
        // another job's commit of the same position is a conflict.
        commit(&st, &m).unwrap();
        let mut other = m.clone();
        other.job.generation += 1;
        assert!(matches!(
            commit(&st, &other),
            Err(CommitError::Conflict { seq: 1, .. })
        ));
    }

    #[test]
    fn retain_keeps_the_newest_commits_and_their_state_only() {
        let d = TempDir::new("retain");
        let st = d.storage();
        let all: Vec<Manifest> = (1..=6).map(|s| commit_seq(&st, s)).collect();
        let deleted = retain(&st, 6, 3).unwrap();
        assert_eq!(
            deleted.len(),
            6,
            "three log entries and their state: {deleted:?}"
        );
        assert_eq!(list(&st).unwrap(), vec![4, 5, 6]);
        let state: Vec<String> = st.list("state/").unwrap();
        let kept: Vec<String> = all[3..]
            .iter()
            .map(|m| m.job.state[0].path.clone())
            .collect();
        assert_eq!(state, kept);
        // The output is untouched: every public manifest verifies.
        assert_eq!(
            list_manifests(&st).unwrap(),
            vec![1000, 2000, 3000, 4000, 5000, 6000]
        );
        for m in &all {
            assert!(verify(&st, &manifest::load(&st, m.epoch).unwrap()).is_empty());
        }
        // The kept state is protected from garbage collection; nothing else is left.
        assert!(manifest::collect_garbage(&st, 2).unwrap().is_empty());
        // Idempotent, and the newest commit is always kept.
        assert!(retain(&st, 6, 3).unwrap().is_empty());
        retain(&st, 6, 0).unwrap();
        assert_eq!(list(&st).unwrap(), vec![6]);
        assert_eq!(newest_valid(&st).unwrap().newest.unwrap(), all[5]);
    }

    #[test]
    fn discard_removes_the_redshift_manifest_of_a_damaged_epoch() {
        let d = TempDir::new("discard");
        let st = d.storage();
        commit_seq(&st, 1);
        let m2 = commit_seq(&st, 2);
        st.put(&m2.files[0].path, b"damaged").unwrap();
        let found = newest_valid(&st).unwrap();
        assert_eq!(found.newest.unwrap().job.seq, 1);
        assert_eq!(found.damaged, vec![(2, Some(2000))]);
        discard(&st, &found.damaged).unwrap();
        assert!(st.get(&redshift::key(2000)).unwrap().is_none());
        assert!(st.get(&redshift::key(1000)).unwrap().is_some());
        assert_eq!(list_manifests(&st).unwrap(), vec![1000]);
    }
}
