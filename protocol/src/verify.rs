//! Whether a manifest's files are all there and intact: each data file
//! under its output's folder, listed once, with the size and SHA-256 the
//! manifest says. The executor fetches; this decides.

use crate::keys::OUTPUTS;
use crate::manifest::{sha256_hex, Manifest};
use std::collections::HashSet;

/// The problem with one named object, if any. `found` is what the store
/// answered: its bytes, `None` when missing, or the read's error.
pub fn check_object(
    what: &str,
    key: &str,
    bytes: u64,
    sha: &str,
    found: Result<Option<&[u8]>, String>,
) -> Option<String> {
    match found {
        Err(e) => Some(format!("{what} {key}: cannot read: {e}")),
        Ok(None) => Some(format!("{what} {key}: missing")),
        Ok(Some(data)) if data.len() as u64 != bytes => Some(format!(
            "{what} {key}: {} bytes, manifest says {bytes}",
            data.len()
        )),
        Ok(Some(data)) if !sha256_hex(data).eq_ignore_ascii_case(sha) => {
            Some(format!("{what} {key}: sha256 differs from the manifest"))
        }
        Ok(Some(_)) => None,
    }
}

/// Every problem with the files `m` names (data and state), each prefixed
/// with the manifest's epoch; empty when all verify. `fetch` reads one key.
pub fn verify(
    m: &Manifest,
    mut fetch: impl FnMut(&str) -> Result<Option<Vec<u8>>, String>,
) -> Vec<String> {
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
        let found = fetch(&f.path);
        problems.extend(check_object(
            "file",
            &f.path,
            f.bytes,
            &f.sha256,
            found.as_ref().map(|o| o.as_deref()).map_err(Clone::clone),
        ));
    }
    for s in &m.job.state {
        if !seen.insert(s.path.as_str()) {
            problems.push(format!("state {}: listed twice", s.path));
            continue;
        }
        let found = fetch(&s.path);
        problems.extend(check_object(
            "state",
            &s.path,
            s.bytes,
            &s.sha256,
            found.as_ref().map(|o| o.as_deref()).map_err(Clone::clone),
        ));
    }
    problems
        .into_iter()
        .map(|p| format!("manifest {}: {p}", m.epoch))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{FileEntry, JobSection, StateFile};
    use std::collections::HashMap;

    fn entry(output: &str, path: &str, data: &[u8]) -> FileEntry {
        FileEntry {
            output: output.into(),
            path: path.into(),
            rows: 1,
            bytes: data.len() as u64,
            sha256: sha256_hex(data),
        }
    }

    /// Each row damages one thing a plausible wrong check would miss.
    #[test]
    fn each_kind_of_damage_is_named() {
        let good = entry("transactions", "transactions/a.parquet", b"aaaa");
        let store: HashMap<&str, &[u8]> = [
            ("transactions/a.parquet", &b"aaaa"[..]),
            ("transactions/short.parquet", b"aaa"),
            ("transactions/flip.parquet", b"aaab"),
            ("windows/w.parquet", b"w"),
            ("state/s.bin", b"s"),
        ]
        .into_iter()
        .collect();
        let cases: Vec<(Vec<FileEntry>, Vec<StateFile>, &str)> = vec![
            (vec![good.clone()], vec![], ""),
            (
                vec![entry("transactions", "transactions/gone.parquet", b"x")],
                vec![],
                "missing",
            ),
            (
                vec![FileEntry {
                    path: "transactions/short.parquet".into(),
                    ..good.clone()
                }],
                vec![],
                "3 bytes, manifest says 4",
            ),
            // Same size, one byte flipped: only the hash tells.
            (
                vec![FileEntry {
                    path: "transactions/flip.parquet".into(),
                    ..good.clone()
                }],
                vec![],
                "sha256 differs",
            ),
            // Intact bytes, wrong folder for its output.
            (
                vec![entry("transactions", "windows/w.parquet", b"w")],
                vec![],
                "not under transactions/",
            ),
            (
                vec![entry("metrics", "metrics/m.parquet", b"m")],
                vec![],
                "unknown output",
            ),
            (vec![good.clone(), good.clone()], vec![], "listed twice"),
            (
                vec![],
                vec![StateFile {
                    path: "state/s.bin".into(),
                    bytes: 1,
                    sha256: sha256_hex(b"t"),
                    worker: 0,
                }],
                "state state/s.bin: sha256 differs",
            ),
        ];
        for (files, state, want) in cases {
            let m = Manifest::new(
                7,
                files,
                JobSection {
                    state,
                    ..Default::default()
                },
            );
            let problems = verify(&m, |k| Ok(store.get(k).map(|b| b.to_vec())));
            if want.is_empty() {
                assert!(problems.is_empty(), "{problems:?}");
            } else {
                assert!(
                    problems
                        .iter()
                        .any(|p| p.starts_with("manifest 7: ") && p.contains(want)),
                    "want {want:?} in {problems:?}"
                );
            }
        }
        let m = Manifest::new(7, vec![good], JobSection::default());
        let p = verify(&m, |_| Err("timeout".into()));
        assert_eq!(
            p,
            vec!["manifest 7: file transactions/a.parquet: cannot read: timeout"]
        );
    }
}
