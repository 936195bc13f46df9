//! What an output root must hold after a finished run with retention `K`,
//! checked from the stored objects alone (listing and JSON), independently
//! of the job's own garbage and retention code.

use std::collections::BTreeSet;

use tidemark_store::Storage;

fn json(st: &dyn Storage, key: &str) -> serde_json::Value {
    let bytes = st
        .get(key)
        .unwrap()
        .unwrap_or_else(|| panic!("{key} missing"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn paths(v: &serde_json::Value) -> impl Iterator<Item = String> + '_ {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|f| f["path"].as_str().unwrap().to_owned())
}

/// After a finished run with `checkpoint.retain = k`:
/// - every committed epoch still has its public manifest, one per commit;
/// - the commit log holds exactly the newest `k` commits;
/// - `state/` holds exactly the snapshots those `k` commits name;
/// - the data folders hold exactly the files the public manifests name;
/// - `redshift/` holds one COPY manifest per epoch with transactions files.
///
/// Returns the number of commits made over the root's history.
pub fn assert_retained(st: &dyn Storage, k: usize) -> usize {
    let manifests: Vec<String> = st.list("manifests/").unwrap();
    assert!(!manifests.is_empty());
    let mut data = BTreeSet::new();
    let mut redshift = BTreeSet::new();
    let mut newest_seq = 0;
    for key in &manifests {
        let m = json(st, key);
        assert!(
            m["job"]["state"].as_array().is_none_or(|s| s.is_empty()),
            "{key}: a public manifest names no state"
        );
        newest_seq = newest_seq.max(m["job"]["seq"].as_u64().unwrap());
        let files: Vec<&serde_json::Value> = m["files"].as_array().unwrap().iter().collect();
        for f in &files {
            assert!(data.insert(f["path"].as_str().unwrap().to_owned()));
        }
        if files.iter().any(|f| f["output"] == "transactions") {
            let epoch = m["epoch"].as_i64().unwrap();
            redshift.insert(format!("redshift/{epoch:020}.manifest"));
        }
    }
    assert_eq!(
        newest_seq as usize,
        manifests.len(),
        "one public manifest per commit (no epoch committed twice, none lost)"
    );

    let log: Vec<String> = st.list("_commits/").unwrap();
    let expected_log: Vec<String> = (newest_seq as usize + 1 - k.min(manifests.len())
        ..=newest_seq as usize)
        .map(|s| format!("_commits/{s:020}.json"))
        .collect();
    assert_eq!(log, expected_log, "the commit log keeps the newest {k}");
    let state: BTreeSet<String> = log
        .iter()
        .flat_map(|key| paths(&json(st, key)["job"]["state"]).collect::<Vec<_>>())
        .collect();
    assert!(!state.is_empty(), "the retained commits name state");
    let stored_state: BTreeSet<String> = st.list("state/").unwrap().into_iter().collect();
    assert_eq!(
        stored_state, state,
        "state/ holds exactly the retained snapshots"
    );

    let mut stored_data = BTreeSet::new();
    for prefix in ["transactions/", "windows/", "anomalies/", "rejects/"] {
        stored_data.extend(st.list(prefix).unwrap());
    }
    assert_eq!(
        stored_data, data,
        "the data folders hold exactly the committed files"
    );
    let stored_redshift: BTreeSet<String> = st.list("redshift/").unwrap().into_iter().collect();
    assert_eq!(stored_redshift, redshift);
    manifests.len()
}
