//! Manifests on a store: listing, loading, verifying, quarantining and
//! collecting garbage. The manifest types, keys and every decision are
//! pure and live in `tidemark-protocol`; this module runs them against a
//! [`Storage`] (re-exported here under the paths the job always used).

use crate::storage::Storage;
use anyhow::{anyhow, Context, Result};
use std::collections::HashSet;
use tidemark_dataflow::source::REFERENCE_BASE;
use tidemark_protocol::gc;
pub use tidemark_protocol::keys::{
    file_name, parse_file_name, parse_manifest_key, FileNameParts, GARBAGE_PREFIXES, LOG_PREFIX,
    MANIFESTS_PREFIX, OUTPUTS, QUARANTINE_PREFIX, STATE_PREFIX,
};
pub use tidemark_protocol::manifest::{
    parse, sha256_hex, Counts, FileEntry, JobSection, Manifest, Position, StateFile, FORMAT,
};

/// `manifests/<E:020>.json`; a negative epoch is refused with an error.
pub fn manifest_key(epoch: i64) -> Result<String> {
    Ok(tidemark_protocol::keys::manifest_key(epoch)?)
}

/// The logical names of the job's two sources, which positions and
/// rejects carry: partitions at or above [`REFERENCE_BASE`] inside the
/// dataflow are the reference source's, numbered from 0 in outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceNames {
    pub main: String,
    pub reference: String,
}

impl SourceNames {
    /// The source name and its own partition index of a dataflow partition.
    pub fn name_of(&self, partition: u32) -> (&str, u32) {
        match partition.checked_sub(REFERENCE_BASE) {
            Some(local) => (&self.reference, local),
            None => (&self.main, partition),
        }
    }

    /// The dataflow partition of a manifest position.
    pub fn dataflow_partition(&self, p: &Position) -> u32 {
        if p.source == self.reference {
            REFERENCE_BASE + p.partition
        } else {
            p.partition
        }
    }
}

/// The epochs of all manifests in storage, ascending; other keys are ignored.
pub fn list_manifests(st: &dyn Storage) -> Result<Vec<i64>> {
    let mut epochs: Vec<i64> = st
        .list(MANIFESTS_PREFIX)?
        .iter()
        .filter_map(|k| parse_manifest_key(k))
        .collect();
    epochs.sort_unstable();
    epochs.dedup();
    Ok(epochs)
}

/// Reads and parses the manifest of `epoch`.
pub fn load(st: &dyn Storage, epoch: i64) -> Result<Manifest> {
    let key = manifest_key(epoch)?;
    let bytes = st
        .get(&key)?
        .ok_or_else(|| anyhow!("manifest {key} not found"))?;
    parse(&bytes, Some(epoch)).with_context(|| format!("manifest {key}"))
}

/// Check every file the manifest names (data and state): present, size and
/// sha256 equal, and each data file under its output's folder. Returns the
/// problems found, each prefixed with the manifest's epoch (empty = ok).
pub fn verify(st: &dyn Storage, m: &Manifest) -> Vec<String> {
    tidemark_protocol::verify::verify(m, |key| st.get(key).map_err(|e| format!("{e:#}")))
}

/// Deletes every key under `transactions/ windows/ anomalies/ rejects/
/// state/` that no manifest under `manifests/` or `_commits/` names, whose
/// name is a [`file_name`] of a generation `< keep_generation`
/// ([`tidemark_protocol::gc`] decides). Returns the deleted keys.
///
/// Data keys are listed before manifests are read, so a file that an
/// older process commits while this runs is either seen as referenced or not
/// seen at all. A manifest that cannot be read (I/O error, not bad JSON)
/// aborts the collection.
pub fn collect_garbage(st: &dyn Storage, keep_generation: u64) -> Result<Vec<String>> {
    let mut listed = Vec::new();
    for prefix in GARBAGE_PREFIXES {
        listed.extend(st.list(prefix)?);
    }
    let candidates = gc::candidates(listed, keep_generation);
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut referenced = HashSet::new();
    let mut manifests = st.list(MANIFESTS_PREFIX)?;
    manifests.retain(|k| parse_manifest_key(k).is_some());
    let mut log = st.list(LOG_PREFIX)?;
    log.retain(|k| k.ends_with(".json"));
    for key in manifests.into_iter().chain(log) {
        let Some(bytes) = st.get(&key)? else { continue };
        match gc::references(&bytes) {
            Ok(paths) => referenced.extend(paths),
            Err(e) => {
                tracing::warn!(manifest = %key, error = %e, "garbage collection: manifest does not parse; it protects nothing");
            }
        }
    }
    let deleted = gc::garbage(candidates, &referenced);
    for key in &deleted {
        st.delete(key)?;
    }
    Ok(deleted)
}

/// Moves `manifests/<E:020>.json` to `quarantine/<E:020>.json-<unix-ms>`
/// (copy, then delete), so that a damaged manifest is kept as evidence and
/// the epoch can be committed again. Returns the quarantine key, or `None`
/// when there was no manifest of that epoch.
pub fn quarantine(st: &dyn Storage, epoch: i64) -> Result<Option<String>> {
    let key = manifest_key(epoch)?;
    let Some(bytes) = st.get(&key)? else {
        return Ok(None);
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut attempt = 0;
    let mut qkey = tidemark_protocol::keys::quarantine_manifest_key(epoch, now_ms, attempt);
    while !st.put_if_absent(&qkey, &bytes)? {
        attempt += 1;
        qkey = tidemark_protocol::keys::quarantine_manifest_key(epoch, now_ms, attempt);
    }
    st.delete(&key)?;
    tracing::warn!(manifest = %key, to = %qkey, "manifest quarantined");
    Ok(Some(qkey))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::{LocalStorage, TempDir};

    pub(crate) fn data(st: &LocalStorage, output: &str, path: &str, bytes: &[u8]) -> FileEntry {
        st.put(path, bytes).unwrap();
        FileEntry {
            output: output.into(),
            path: path.into(),
            rows: 1,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        }
    }

    pub(crate) fn state(st: &LocalStorage, path: &str, bytes: &[u8]) -> StateFile {
        st.put(path, bytes).unwrap();
        StateFile {
            path: path.into(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            worker: 0,
        }
    }

    /// A committed manifest of `epoch` with one transactions file and one state file.
    fn committed(st: &LocalStorage, epoch: i64, generation: u64) -> Manifest {
        let f = data(
            st,
            "transactions",
            &format!(
                "transactions/date=1970-01-01/hour=00/{}",
                file_name(epoch, generation, 0, "parquet")
            ),
            format!("data of {epoch}").as_bytes(),
        );
        let s = state(
            st,
            &format!("state/{}", file_name(epoch, generation, 0, "bin")),
            format!("state of {epoch}").as_bytes(),
        );
        let m = Manifest::new(
            epoch,
            vec![f],
            JobSection {
                generation,
                state: vec![s],
                ..Default::default()
            },
        );
        assert!(st
            .put_if_absent(&manifest_key(m.epoch).unwrap(), &m.to_bytes())
            .unwrap());
        assert!(
            !st.put_if_absent(&manifest_key(m.epoch).unwrap(), &m.to_bytes())
                .unwrap(),
            "a second commit of an epoch fails"
        );
        m
    }

    #[test]
    fn verify_detects_damage() {
        let d = TempDir::new("verify");
        let st = d.storage();
        let m = committed(&st, 10_000, 1);
        assert_eq!(load(&st, 10_000).unwrap(), m);
        assert!(verify(&st, &m).is_empty());

        let path = m.files[0].path.clone();
        let good = st.get(&path).unwrap().unwrap();

        // One modified byte, same size.
        let mut bad = good.clone();
        bad[3] ^= 1;
        st.put(&path, &bad).unwrap();
        let p = verify(&st, &m);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("sha256") && p[0].contains(&path), "{p:?}");

        // Truncated.
        st.put(&path, &good[..good.len() - 1]).unwrap();
        let p = verify(&st, &m);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("bytes"), "{p:?}");

        // Missing.
        st.delete(&path).unwrap();
        let p = verify(&st, &m);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("missing"), "{p:?}");

        // Restored; then a damaged state file.
        st.put(&path, &good).unwrap();
        assert!(verify(&st, &m).is_empty());
        st.put(&m.job.state[0].path, b"other state").unwrap();
        let p = verify(&st, &m);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("manifest 10000: state "), "{p:?}");

        // A file outside its output's folder, or of an unknown output.
        let mut odd = m.clone();
        odd.job.state.clear();
        odd.files[0].output = "windows".into();
        assert_eq!(verify(&st, &odd).len(), 1);
        odd.files[0].output = "other".into();
        assert_eq!(verify(&st, &odd).len(), 1);
    }

    #[test]
    fn garbage_is_unreferenced_old_generation_files() {
        let d = TempDir::new("gc");
        let st = d.storage();
        let m1 = committed(&st, 10_000, 1);
        // Generation 1 also wrote files for an epoch it never committed.
        let orphan_data = format!(
            "windows/window=status_1m/{}",
            file_name(20_000, 1, 1, "parquet")
        );
        let orphan_state = format!("state/{}", file_name(20_000, 1, 1, "bin"));
        let orphan_anom = format!("anomalies/{}", file_name(20_000, 1, 0, "parquet"));
        for k in [&orphan_data, &orphan_state, &orphan_anom] {
            st.put(k, b"x").unwrap();
        }
        // Generation 2 (running) has work in flight; someone left other files.
        let inflight = format!("rejects/{}", file_name(20_000, 2, 0, "parquet"));
        st.put(&inflight, b"x").unwrap();
        st.put("rejects/README.txt", b"not ours").unwrap();
        st.put("quarantine/00000000000000030000.json-1", b"{}")
            .unwrap();
        // A damaged (unparseable) manifest protects nothing; a parseable but
        // failing one still protects what it names.
        st.put(&manifest_key(40_000).unwrap(), b"{ broken").unwrap();
        let named = format!(
            "transactions/date=1970-01-01/hour=00/{}",
            file_name(50_000, 1, 3, "parquet")
        );
        let m5 = Manifest::new(
            50_000,
            vec![FileEntry {
                output: "transactions".into(),
                path: named.clone(),
                rows: 1,
                bytes: 99,
                sha256: "00".into(),
            }],
            JobSection::default(),
        );
        assert!(st
            .put_if_absent(&manifest_key(m5.epoch).unwrap(), &m5.to_bytes())
            .unwrap());
        st.put(&named, b"short").unwrap();

        let mut deleted = collect_garbage(&st, 2).unwrap();
        deleted.sort();
        let mut expect = vec![
            orphan_anom.clone(),
            orphan_data.clone(),
            orphan_state.clone(),
        ];
        expect.sort();
        assert_eq!(deleted, expect);
        for k in [&orphan_data, &orphan_state, &orphan_anom] {
            assert_eq!(st.get(k).unwrap(), None);
        }
        // Kept: everything committed, in-flight work, foreign files.
        assert!(verify(&st, &m1).is_empty());
        assert!(st.get(&named).unwrap().is_some());
        assert!(st.get(&inflight).unwrap().is_some());
        assert!(st.get("rejects/README.txt").unwrap().is_some());
        assert!(st
            .get("quarantine/00000000000000030000.json-1")
            .unwrap()
            .is_some());
        // Nothing more to do; and generation 1 itself would keep its own files.
        assert!(collect_garbage(&st, 2).unwrap().is_empty());
        assert!(collect_garbage(&st, 1).unwrap().is_empty());
        assert_eq!(st.get(&inflight).unwrap().as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn quarantine_moves_aside_and_frees_the_epoch() {
        let d = TempDir::new("quar");
        let st = d.storage();
        assert_eq!(quarantine(&st, 30_000).unwrap(), None);
        let k = manifest_key(30_000).unwrap();
        st.put(&k, b"{ damaged").unwrap();
        let q = quarantine(&st, 30_000).unwrap().unwrap();
        assert!(
            q.starts_with("quarantine/00000000000000030000.json-"),
            "{q}"
        );
        assert_eq!(st.get(&q).unwrap().as_deref(), Some(&b"{ damaged"[..]));
        assert_eq!(st.get(&k).unwrap(), None);
        assert!(list_manifests(&st).unwrap().is_empty());
        // The epoch can be committed again; a second quarantine in the same
        // millisecond gets a distinct key.
        let m = Manifest::new(30_000, vec![], JobSection::default());
        assert!(st
            .put_if_absent(&manifest_key(m.epoch).unwrap(), &m.to_bytes())
            .unwrap());
        let q2 = quarantine(&st, 30_000).unwrap().unwrap();
        assert_ne!(q, q2);
        assert_eq!(st.list(QUARANTINE_PREFIX).unwrap().len(), 2);
    }
}
