//! Garbage: data and state files of crashed runs. A file is garbage when
//! its name ([`crate::keys::file_name`]) says an older generation wrote it
//! and no manifest or commit names it. Files of the current generation and
//! newer (work in flight) and files with other names are never garbage.
//! Any manifest-shaped JSON protects what it names, even one that fails
//! verification.

use crate::keys::parse_file_name;
use serde::Deserialize;
use std::collections::HashSet;

/// Of the keys listed under the data and state folders, those an older
/// generation than `keep_generation` wrote.
pub fn candidates(keys: Vec<String>, keep_generation: u64) -> Vec<String> {
    keys.into_iter()
        .filter(|key| {
            let name = key.rsplit('/').next().unwrap_or(key);
            parse_file_name(name).is_some_and(|p| p.generation < keep_generation)
        })
        .collect()
}

/// Every path a manifest or commit names (data and state files), read
/// leniently: anything manifest-shaped protects what it names.
pub fn references(manifest_json: &[u8]) -> Result<Vec<String>, serde_json::Error> {
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
    let r: References = serde_json::from_slice(manifest_json)?;
    Ok(r.files
        .into_iter()
        .chain(r.job.state)
        .map(|f| f.path)
        .collect())
}

/// The candidates no manifest names: what to delete.
pub fn garbage(candidates: Vec<String>, referenced: &HashSet<String>) -> Vec<String> {
    candidates
        .into_iter()
        .filter(|k| !referenced.contains(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::file_name;

    #[test]
    fn only_unnamed_files_of_older_generations_are_garbage() {
        let k = |g: u64, dir: &str| format!("{dir}/{}", file_name(1000, g, 0, "parquet"));
        let keys = vec![
            k(1, "transactions/date=1970-01-01/hour=00"), // old, named: kept
            k(1, "rejects"),                              // old, unnamed: garbage
            k(2, "state"),                                // older than 3, unnamed: garbage
            k(3, "windows"),                              // current generation: in flight
            k(4, "windows"),                              // newer: another live job's
            "transactions/notes.txt".to_owned(),          // not ours
        ];
        let cands = candidates(keys.clone(), 3);
        assert_eq!(cands, keys[..3].to_vec());
        let manifest = format!(
            r#"{{"files":[{{"path":"{}"}}],"job":{{"state":[]}},"unknown":1}}"#,
            keys[0]
        );
        let referenced: HashSet<String> = references(manifest.as_bytes())
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(garbage(cands, &referenced), keys[1..3].to_vec());
        // State files protect too; bad JSON is an error the executor reports.
        let with_state = format!(r#"{{"job":{{"state":[{{"path":"{}"}}]}}}}"#, keys[2]);
        assert_eq!(
            references(with_state.as_bytes()).unwrap(),
            vec![keys[2].clone()]
        );
        assert!(references(b"{").is_err());
    }
}
