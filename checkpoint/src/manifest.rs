//! Manifests: the commit record of an epoch (SPEC 8, docs/outputs.md).
//!
//! `manifests/<E:020>.json` names every data file new in epoch `E` (the
//! public part: `format`, `epoch`, `files`) and the job's own resume
//! information (`job`: generation, source positions, state snapshot files,
//! counters). A file that no committed manifest names does not exist for
//! readers; it is garbage once no process that could still commit it is alive.
//!
//! Data and state file names are `e<E:020>-g<generation>-w<worker:04>.<ext>`
//! ([`file_name`]), so that garbage collection can tell which generation wrote
//! a file without opening anything.

use crate::storage::Storage;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use tidemark_dataflow::source::REFERENCE_BASE;

/// The value of `"format"` in every manifest this version writes and reads.
pub const FORMAT: &str = "tidemark-manifest/1";

/// The outputs a manifest's `files` may name; each lives under `<output>/`.
pub const OUTPUTS: [&str; 4] = ["transactions", "windows", "anomalies", "rejects"];

/// Where manifests live.
pub const MANIFESTS_PREFIX: &str = "manifests/";
/// Where [`quarantine`] moves manifests aside.
pub const QUARANTINE_PREFIX: &str = "quarantine/";
/// Where state snapshots live.
pub const STATE_PREFIX: &str = "state/";
/// The commit log (`crate::commit_log`): full checkpoints, state included.
pub const LOG_PREFIX: &str = "_commits/";

/// The folders [`collect_garbage`] cleans.
const GARBAGE_PREFIXES: [&str; 5] = [
    "transactions/",
    "windows/",
    "anomalies/",
    "rejects/",
    STATE_PREFIX,
];

/// One data file of the public format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// `transactions` | `windows` | `anomalies` | `rejects`.
    pub output: String,
    /// Storage key, relative to the output root.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// One committed epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The epoch's event time boundary, Unix ms: everything with time `< epoch`.
    pub epoch: i64,
    /// The data files new in this epoch.
    pub files: Vec<FileEntry>,
    /// tidemark's own part; not a public format.
    pub job: JobSection,
}

impl Manifest {
    /// A manifest of the current [`FORMAT`].
    pub fn new(epoch: i64, files: Vec<FileEntry>, job: JobSection) -> Manifest {
        Manifest {
            format: FORMAT.to_owned(),
            epoch,
            files,
            job,
        }
    }

    /// The form readers see at `manifests/<E>.json`: without the state
    /// snapshot files, which retention deletes ([`crate::commit_log::retain`]);
    /// the commit log keeps them.
    pub fn public(&self) -> Manifest {
        let mut m = self.clone();
        m.job.state.clear();
        m
    }

    /// The manifest as stored: pretty-printed JSON.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self).context("serialising manifest")?;
        v.push(b'\n');
        Ok(v)
    }
}

/// The job's resume information.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobSection {
    /// The committing process's generation, claimed at its start.
    pub generation: u64,
    /// Position in the commit log (`_commits/<seq>.json`), 1 for the first commit.
    #[serde(default)]
    pub seq: u64,
    /// The epoch committed before this one by the job, if any.
    #[serde(default)]
    pub previous_epoch: Option<i64>,
    /// Where each source partition resumes.
    #[serde(default)]
    pub positions: Vec<Position>,
    /// The state snapshot of this epoch.
    #[serde(default)]
    pub state: Vec<StateFile>,
    /// Counters of this epoch (not cumulative).
    #[serde(default)]
    pub counts: Counts,
    /// Fingerprint of the computation parameters the state was built with.
    #[serde(default)]
    pub params_fingerprint: String,
    /// What each source partition is, by partition number (`file:<name>`,
    /// `kafka:<topic>/<partition>`): a restart checks that positions still
    /// mean the same partitions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// Where each partition of a bounded run ends (exclusive offset), as
    /// fixed at the run's first start: restarts stop at the same place even
    /// when the end was given as `latest`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ends: Vec<Option<u64>>,
    /// `inputs` and `ends` of the reference source (SPEC 9), if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_inputs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_ends: Vec<Option<u64>>,
    /// The parameters that shape state and outputs, as JSON: a restart
    /// under other ones names what changed (absent in older commits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
}

/// The resume position of one source partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub source: String,
    pub partition: u32,
    /// The next offset to read.
    pub offset: u64,
    /// The partition's largest accepted event time before `offset`.
    #[serde(default)]
    pub max_ts: Option<i64>,
    /// The connector's resume token at `offset` (Kinesis: the sequence
    /// number of the last record before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
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

/// One state snapshot file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    /// The worker that wrote it.
    pub worker: u32,
}

/// Counters of one epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Duplicate copies (SPEC 4) decided in this epoch.
    pub duplicates: u64,
    /// Records read in this epoch.
    pub records_in: u64,
}

/// `manifests/<E:020>.json`. Epochs are event times and are `>= 0` in
/// practice; a negative epoch has no name that sorts in epoch order under
/// SPEC 8's zero padding, so it is refused with an error.
pub fn manifest_key(epoch: i64) -> Result<String> {
    if epoch < 0 {
        bail!("epoch {epoch} is negative: manifests name epochs >= 0 only");
    }
    Ok(format!("{MANIFESTS_PREFIX}{epoch:020}.json"))
}

/// The epoch of a manifest key, `None` for any other key.
pub fn parse_manifest_key(key: &str) -> Option<i64> {
    let digits = key.strip_prefix(MANIFESTS_PREFIX)?.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `e<E:020>-g<generation>-w<worker:04>.<ext>`. (A negative epoch is written
/// with its sign, `e-000…`; [`parse_file_name`] reads it back.)
pub fn file_name(epoch: i64, generation: u64, worker: u32, ext: &str) -> String {
    format!("e{epoch:020}-g{generation}-w{worker:04}.{ext}")
}

/// The parts of a name made by [`file_name`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileNameParts<'a> {
    pub epoch: i64,
    pub generation: u64,
    pub worker: u32,
    pub ext: &'a str,
}

/// Parses a file name (the last segment of a key) made by [`file_name`];
/// `None` for anything else.
pub fn parse_file_name(name: &str) -> Option<FileNameParts<'_>> {
    fn digits(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    }
    let rest = name.strip_prefix('e')?;
    let (epoch, rest) = rest.split_at(rest.find("-g")?);
    let rest = &rest[2..];
    let (generation, rest) = rest.split_at(rest.find("-w")?);
    let rest = &rest[2..];
    let (worker, ext) = rest.split_at(rest.find('.')?);
    let ext = &ext[1..];
    let unsigned = epoch.strip_prefix('-').unwrap_or(epoch);
    if !digits(unsigned) || !digits(generation) || !digits(worker) || ext.is_empty() {
        return None;
    }
    Some(FileNameParts {
        epoch: epoch.parse().ok()?,
        generation: generation.parse().ok()?,
        worker: worker.parse().ok()?,
        ext,
    })
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

/// Parses a manifest's bytes and checks its format and (when given) epoch.
pub fn parse(bytes: &[u8], expected_epoch: Option<i64>) -> Result<Manifest> {
    let m: Manifest = serde_json::from_slice(bytes).context("manifest is not valid JSON")?;
    if m.format != FORMAT {
        bail!("manifest format {:?}, expected {FORMAT:?}", m.format);
    }
    if let Some(e) = expected_epoch {
        if m.epoch != e {
            bail!("manifest says epoch {}, its name says {e}", m.epoch);
        }
    }
    Ok(m)
}

/// Reads and parses the manifest of `epoch`.
pub fn load(st: &dyn Storage, epoch: i64) -> Result<Manifest> {
    let key = manifest_key(epoch)?;
    let bytes = st
        .get(&key)?
        .ok_or_else(|| anyhow!("manifest {key} not found"))?;
    parse(&bytes, Some(epoch)).with_context(|| format!("manifest {key}"))
}

/// Writes `m` at its key unless a manifest of that epoch already exists
/// (conditional create). Returns `false` when one did.
pub fn commit(st: &dyn Storage, m: &Manifest) -> Result<bool> {
    Ok(st.put_if_absent(&manifest_key(m.epoch)?, &m.to_bytes()?)?)
}

fn check_object(
    st: &dyn Storage,
    what: &str,
    key: &str,
    bytes: u64,
    sha: &str,
    problems: &mut Vec<String>,
) {
    match st.get(key) {
        Err(e) => problems.push(format!("{what} {key}: cannot read: {e:#}")),
        Ok(None) => problems.push(format!("{what} {key}: missing")),
        Ok(Some(data)) => {
            if data.len() as u64 != bytes {
                problems.push(format!(
                    "{what} {key}: {} bytes, manifest says {bytes}",
                    data.len()
                ));
            } else if !sha256_hex(&data).eq_ignore_ascii_case(sha) {
                problems.push(format!("{what} {key}: sha256 differs from the manifest"));
            }
        }
    }
}

/// Check every file the manifest names (data and state): present, size and
/// sha256 equal, and each data file under its output's folder. Returns the
/// problems found, each prefixed with the manifest's epoch (empty = ok).
pub fn verify(st: &dyn Storage, m: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for f in &m.files {
        if !OUTPUTS.contains(&f.output.as_str()) {
            problems.push(format!("file {}: unknown output {:?}", f.path, f.output));
        } else if !f
            .path
            .strip_prefix(f.output.as_str())
            .is_some_and(|r| r.starts_with('/'))
        {
            problems.push(format!("file {}: not under {}/", f.path, f.output));
        }
        if !seen.insert(f.path.as_str()) {
            problems.push(format!("file {}: listed twice", f.path));
            continue;
        }
        check_object(st, "file", &f.path, f.bytes, &f.sha256, &mut problems);
    }
    for s in &m.job.state {
        if !seen.insert(s.path.as_str()) {
            problems.push(format!("state {}: listed twice", s.path));
            continue;
        }
        check_object(st, "state", &s.path, s.bytes, &s.sha256, &mut problems);
    }
    problems
        .into_iter()
        .map(|p| format!("manifest {}: {p}", m.epoch))
        .collect()
}

/// The newest manifest that parses and verifies, walking back past damaged
/// ones; returns it (or `None` when there is none) plus the problems found in
/// the newer manifests it skipped. Errors only when storage cannot be listed.
pub fn newest_valid(st: &dyn Storage) -> Result<(Option<Manifest>, Vec<String>)> {
    let mut problems = Vec::new();
    for epoch in list_manifests(st)?.into_iter().rev() {
        match load(st, epoch) {
            Err(e) => problems.push(format!("manifest {epoch}: {e:#}")),
            Ok(m) => {
                let p = verify(st, &m);
                if p.is_empty() {
                    return Ok((Some(m), problems));
                }
                problems.extend(p);
            }
        }
    }
    Ok((None, problems))
}

/// Just the file references of a manifest, parsed leniently: whatever
/// manifest-shaped JSON names is protected from garbage collection.
#[derive(Deserialize, Default)]
#[serde(default)]
struct References {
    files: Vec<PathOnly>,
    job: JobReferences,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JobReferences {
    state: Vec<PathOnly>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PathOnly {
    path: String,
}

/// Deletes every key under `transactions/ windows/ anomalies/ rejects/
/// state/` that no manifest under `manifests/` or `_commits/` names (any manifest whose JSON
/// parses protects what it names, even one that fails verification), whose
/// name is a [`file_name`] of a generation `< keep_generation`. Files of
/// generation `keep_generation` and newer (work in flight) and files with
/// other names are left alone. Returns the deleted keys.
///
/// Data keys are listed before manifests are read, so a file that an
/// older process commits while this runs is either seen as referenced or not
/// seen at all. A manifest that cannot be read (I/O error, not bad JSON)
/// aborts the collection.
pub fn collect_garbage(st: &dyn Storage, keep_generation: u64) -> Result<Vec<String>> {
    let mut candidates = Vec::new();
    for prefix in GARBAGE_PREFIXES {
        for key in st.list(prefix)? {
            let name = key.rsplit('/').next().unwrap_or(&key);
            if parse_file_name(name).is_some_and(|p| p.generation < keep_generation) {
                candidates.push(key);
            }
        }
    }
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
        match serde_json::from_slice::<References>(&bytes) {
            Ok(r) => {
                referenced.extend(r.files.into_iter().map(|f| f.path));
                referenced.extend(r.job.state.into_iter().map(|f| f.path));
            }
            Err(e) => {
                tracing::warn!(manifest = %key, error = %e, "garbage collection: manifest does not parse; it protects nothing");
            }
        }
    }
    let mut deleted = Vec::new();
    for key in candidates {
        if !referenced.contains(&key) {
            st.delete(&key)?;
            deleted.push(key);
        }
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
    let base = format!("{QUARANTINE_PREFIX}{epoch:020}.json-{now_ms}");
    let mut qkey = base.clone();
    let mut n = 0;
    while !st.put_if_absent(&qkey, &bytes)? {
        n += 1;
        qkey = format!("{base}-{n}");
    }
    st.delete(&key)?;
    tracing::warn!(manifest = %key, to = %qkey, "manifest quarantined");
    Ok(Some(qkey))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::{LocalStorage, TempDir};

    #[test]
    fn names() {
        assert_eq!(
            manifest_key(1_700_000_010_000).unwrap(),
            "manifests/00000001700000010000.json"
        );
        assert_eq!(
            manifest_key(0).unwrap(),
            "manifests/00000000000000000000.json"
        );
        assert!(manifest_key(-1).is_err());
        assert_eq!(
            parse_manifest_key("manifests/00000001700000010000.json"),
            Some(1_700_000_010_000)
        );
        for bad in [
            "manifests/1700000010000.json",
            "manifests/00000001700000010000.json.bak",
            "manifests/x0000001700000010000.json",
            "quarantine/00000001700000010000.json",
            "manifests/sub/00000001700000010000.json",
        ] {
            assert_eq!(parse_manifest_key(bad), None, "{bad}");
        }
        let n = file_name(1_700_000_010_000, 3, 7, "parquet");
        assert_eq!(n, "e00000001700000010000-g3-w0007.parquet");
        assert_eq!(
            parse_file_name(&n),
            Some(FileNameParts {
                epoch: 1_700_000_010_000,
                generation: 3,
                worker: 7,
                ext: "parquet"
            })
        );
        let neg = file_name(-5, 12, 12345, "bin");
        assert_eq!(parse_file_name(&neg).unwrap().epoch, -5);
        assert_eq!(parse_file_name(&neg).unwrap().worker, 12345);
        for bad in [
            "",
            "e1-g2-w3",
            "x1-g2-w3.p",
            "e1-g-w3.p",
            "e1-g2-wx.p",
            "e1-g2-w3.",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn sha_is_lower_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn json_shape_and_defaults() {
        let m = Manifest::new(
            10_000,
            vec![FileEntry {
                output: "rejects".into(),
                path: "rejects/x.parquet".into(),
                rows: 1,
                bytes: 2,
                sha256: "ab".into(),
            }],
            JobSection {
                generation: 2,
                seq: 7,
                previous_epoch: Some(0),
                positions: vec![Position {
                    source: "transactions".into(),
                    partition: 1,
                    offset: 99,
                    max_ts: Some(-4),
                    token: Some("49590338271490256608559692538361571095921575989136588898".into()),
                }],
                state: vec![],
                counts: Counts {
                    duplicates: 3,
                    records_in: 100,
                },
                params_fingerprint: "fp".into(),
                inputs: vec!["file:a.jsonl".into(), "file:b.jsonl".into()],
                ends: vec![Some(120), None],
                reference_inputs: vec!["file:merchants.jsonl".into()],
                reference_ends: Vec::new(),
                params: None,
            },
        );
        let bytes = m.to_bytes().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["format"], "tidemark-manifest/1");
        assert_eq!(v["epoch"], 10_000);
        assert_eq!(v["files"][0]["output"], "rejects");
        assert_eq!(v["files"][0]["rows"], 1);
        assert_eq!(v["job"]["counts"]["duplicates"], 3);
        assert_eq!(parse(&bytes, Some(10_000)).unwrap(), m);
        assert!(parse(&bytes, Some(20_000)).is_err());

        // Missing optional job fields default; unknown fields are ignored.
        let minimal = br#"{"format":"tidemark-manifest/1","epoch":5,"files":[],
            "job":{"generation":1,"counts":{"duplicates":4},"extra":true},"more":1}"#;
        let m = parse(minimal, Some(5)).unwrap();
        assert_eq!(
            m.job.counts,
            Counts {
                duplicates: 4,
                records_in: 0
            }
        );
        assert_eq!(m.job.previous_epoch, None);
        assert!(m.job.positions.is_empty());
        let other =
            br#"{"format":"tidemark-manifest/2","epoch":5,"files":[],"job":{"generation":1}}"#;
        assert!(parse(other, None).is_err());
    }

    /// Stores `bytes` under `path` and returns its entry.
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
        assert!(commit(st, &m).unwrap());
        assert!(
            !commit(st, &m).unwrap(),
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
    fn newest_valid_walks_back_past_damage() {
        let d = TempDir::new("newest");
        let st = d.storage();
        assert_eq!(newest_valid(&st).unwrap(), (None, vec![]));

        let m1 = committed(&st, 10_000, 1);
        let m2 = committed(&st, 20_000, 1);
        let m3 = committed(&st, 30_000, 1);
        st.put("manifests/notes.txt", b"unrelated").unwrap();
        assert_eq!(list_manifests(&st).unwrap(), vec![10_000, 20_000, 30_000]);
        let (m, p) = newest_valid(&st).unwrap();
        assert_eq!(m.as_ref(), Some(&m3));
        assert!(p.is_empty());

        // Newest manifest corrupt (truncated JSON): fall back to 20000.
        let k3 = manifest_key(30_000).unwrap();
        let b3 = st.get(&k3).unwrap().unwrap();
        st.put(&k3, &b3[..b3.len() / 2]).unwrap();
        let (m, p) = newest_valid(&st).unwrap();
        assert_eq!(m.as_ref(), Some(&m2));
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("30000"), "{p:?}");

        // And 20000's data file damaged: fall back to 10000.
        st.put(&m2.files[0].path, b"garbage").unwrap();
        let (m, p) = newest_valid(&st).unwrap();
        assert_eq!(m.as_ref(), Some(&m1));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[1].starts_with("manifest 20000: file "), "{p:?}");

        // Nothing valid at all.
        st.delete(&m1.job.state[0].path).unwrap();
        let (m, p) = newest_valid(&st).unwrap();
        assert_eq!(m, None);
        assert_eq!(p.len(), 3, "{p:?}");
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
        assert!(commit(&st, &m5).unwrap());
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
        assert!(commit(&st, &m).unwrap());
        let q2 = quarantine(&st, 30_000).unwrap().unwrap();
        assert_ne!(q, q2);
        assert_eq!(st.list(QUARANTINE_PREFIX).unwrap().len(), 2);
    }
}
