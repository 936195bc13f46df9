//! What a starting worker takes from the newest committed epoch.

use std::collections::HashMap;

use anyhow::{Context, Result};
use tidemark_dataflow::event::owner_of_group;
use tidemark_dataflow::graph::Restored;

use crate::manifest::Manifest;
use crate::state_file;
use crate::storage::Storage;
use crate::writer::StateSnapshot;

/// This worker's key groups of every operator's state in `m`.
pub fn restore_state(
    st: &dyn Storage,
    m: &Manifest,
    tick_ms: i64,
    worker: usize,
    peers: usize,
) -> Result<Restored> {
    let mut state: HashMap<String, Vec<(u32, Vec<u8>)>> = HashMap::new();
    for f in &m.job.state {
        let bytes = st.get(&f.path)?.with_context(|| {
            format!(
                "state file {} named by epoch {} is missing",
                f.path, m.epoch
            )
        })?;
        let snapshot: StateSnapshot =
            state_file::decode(&bytes, |g| owner_of_group(g, peers) == worker as u64)
                .with_context(|| format!("decoding state file {}", f.path))?;
        for (op, groups) in snapshot {
            state.entry(op).or_default().extend(groups);
        }
    }
    Ok(Restored {
        boundary: Some(m.epoch / tick_ms),
        state,
    })
}
