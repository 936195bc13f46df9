//! Manifests: the commit record of an epoch (docs/spec.md section 8,
//! docs/outputs.md).
//!
//! `manifests/<E:020>.json` names every data file new in epoch `E` (the
//! public part: `format`, `epoch`, `files`) and the job's own resume
//! information (`job`: generation, source positions, state snapshot files,
//! counters). A file that no committed manifest names does not exist for
//! readers. The commit log (`_commits/<seq>.json`) holds the same record
//! with the state files; the public manifest is [`Manifest::public`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The value of `"format"` in every manifest this version writes and reads.
pub const FORMAT: &str = "tidemark-manifest/1";

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
    /// snapshot files, which retention deletes ([`crate::retention`]);
    /// the commit log keeps them.
    pub fn public(&self) -> Manifest {
        let mut m = self.clone();
        m.job.state.clear();
        m
    }

    /// The manifest as stored: pretty-printed JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest serialises");
        v.push(b'\n');
        v
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

/// Why bytes are not a manifest of this version.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("manifest is not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("manifest format {found:?}, expected {FORMAT:?}")]
    Format { found: String },
    #[error("manifest says epoch {says}, its name says {named}")]
    Epoch { says: i64, named: i64 },
}

/// Parses a manifest's bytes and checks its format and (when given) epoch.
pub fn parse(bytes: &[u8], expected_epoch: Option<i64>) -> Result<Manifest, ParseError> {
    let m: Manifest = serde_json::from_slice(bytes)?;
    if m.format != FORMAT {
        return Err(ParseError::Format { found: m.format });
    }
    if let Some(e) = expected_epoch {
        if m.epoch != e {
            return Err(ParseError::Epoch {
                says: m.epoch,
                named: e,
            });
        }
    }
    Ok(m)
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let bytes = m.to_bytes();
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

    #[test]
    fn parse_refuses_other_formats_and_epochs() {
        let m = Manifest::new(5, vec![], JobSection::default());
        let bytes = m.to_bytes();
        assert_eq!(parse(&bytes, Some(5)).unwrap(), m);
        assert!(matches!(
            parse(&bytes, Some(6)),
            Err(ParseError::Epoch { says: 5, named: 6 })
        ));
        let other = String::from_utf8(bytes)
            .unwrap()
            .replace(FORMAT, "tidemark-manifest/2");
        assert!(matches!(
            parse(other.as_bytes(), None),
            Err(ParseError::Format { .. })
        ));
        assert!(matches!(parse(b"{", None), Err(ParseError::NotJson(_))));
    }
}
