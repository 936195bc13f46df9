//! Redshift COPY manifests: one per committed epoch that has `transactions`
//! files, at `redshift/<E:020>.manifest`, naming exactly those files.
//!
//! A manifest makes COPY load a fixed file set; it does not make a reload
//! idempotent. The load that is (docs/reading-outputs.md, "Loading into Redshift") copies
//! into a staging table and replaces rows by `transaction_id` in one
//! transaction.

use anyhow::Result;
use serde_json::json;

use crate::manifest::Manifest;
use crate::storage::Storage;

pub use tidemark_protocol::keys::{redshift_key as key, REDSHIFT_PREFIX as PREFIX};

/// The COPY manifest of `m`'s `transactions` files; `None` when it has none
/// (COPY refuses a manifest without entries).
pub fn manifest_bytes(st: &dyn Storage, m: &Manifest) -> Option<Vec<u8>> {
    let entries: Vec<_> = m
        .files
        .iter()
        .filter(|f| f.output == "transactions")
        .map(|f| {
            json!({
                "url": st.url(&f.path),
                "mandatory": true,
                "meta": {"content_length": f.bytes},
            })
        })
        .collect();
    if entries.is_empty() {
        return None;
    }
    let mut v = serde_json::to_vec_pretty(&json!({ "entries": entries })).expect("json");
    v.push(b'\n');
    Some(v)
}

/// Writes (or rewrites: the content is a function of the commit) the COPY
/// manifest of a committed epoch.
pub fn write(st: &dyn Storage, m: &Manifest) -> Result<()> {
    match manifest_bytes(st, m) {
        Some(bytes) => Ok(st.put(&key(m.epoch), &bytes)?),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{FileEntry, JobSection};
    use crate::storage::TempDir;

    fn entry(output: &str, path: &str, bytes: u64) -> FileEntry {
        FileEntry {
            output: output.into(),
            path: path.into(),
            rows: 1,
            bytes,
            sha256: String::new(),
        }
    }

    #[test]
    fn names_only_transactions_files_with_their_sizes() {
        let dir = TempDir::new("redshift");
        let st = dir.storage();
        let m = Manifest::new(
            60_000,
            vec![
                entry(
                    "transactions",
                    "transactions/date=2024-01-01/hour=00/a.parquet",
                    10,
                ),
                entry("windows", "windows/window=w/b.parquet", 20),
                entry(
                    "transactions",
                    "transactions/date=2024-01-01/hour=01/c.parquet",
                    30,
                ),
            ],
            JobSection::default(),
        );
        write(&st, &m).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&st.get(&key(60_000)).unwrap().unwrap()).unwrap();
        let root = std::path::absolute(st.root()).unwrap();
        let expected = json!({"entries": [
            {"url": root.join("transactions/date=2024-01-01/hour=00/a.parquet").display().to_string(),
             "mandatory": true, "meta": {"content_length": 10}},
            {"url": root.join("transactions/date=2024-01-01/hour=01/c.parquet").display().to_string(),
             "mandatory": true, "meta": {"content_length": 30}},
        ]});
        assert_eq!(v, expected);
        assert_eq!(key(60_000), "redshift/00000000000000060000.manifest");

        let none = Manifest::new(
            120_000,
            vec![entry("rejects", "rejects/x.parquet", 5)],
            JobSection::default(),
        );
        write(&st, &none).unwrap();
        assert!(st.get(&key(120_000)).unwrap().is_none());
    }
}
