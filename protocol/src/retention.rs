//! Retention: the commit log keeps its newest `keep` entries (never fewer
//! than one); older entries are deleted, then the state snapshots they
//! named. Public manifests and the data files they name are the output and
//! are never deleted.
//!
//! Order matters: the log entry goes first, so a crash in between leaves
//! state files no commit names, which garbage collection removes; the other
//! order could leave a commit naming state that is gone.

/// The log positions to delete, of `present`, when the newest is
/// `newest_seq` and `keep` are kept.
pub fn expired(present: &[u64], newest_seq: u64, keep: u64) -> Vec<u64> {
    let keep = keep.max(1);
    present
        .iter()
        .copied()
        .filter(|&seq| seq + keep <= newest_seq)
        .collect()
}

/// The keys to delete for one expired commit, in order.
pub fn deletions(log_key: String, state_paths: Vec<String>) -> Vec<String> {
    let mut keys = Vec::with_capacity(1 + state_paths.len());
    keys.push(log_key);
    keys.extend(state_paths);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_never_nothing() {
        // (present, newest, keep, expired): the boundary (seq + keep ==
        // newest + 1 is kept), keep 0 meaning 1, gaps in the log, commits
        // newer than `newest` (made since) untouched.
        let rows: &[(&[u64], u64, u64, &[u64])] = &[
            (&[1, 2, 3, 4, 5, 6], 6, 3, &[1, 2, 3]),
            (&[1, 2, 3, 4, 5, 6], 6, 0, &[1, 2, 3, 4, 5]),
            (&[1, 2, 3], 3, 5, &[]),
            (&[2, 5, 9], 9, 2, &[2, 5]),
            (&[4, 5, 6, 7], 5, 1, &[4]),
        ];
        for (present, newest, keep, want) in rows {
            assert_eq!(
                &expired(present, *newest, *keep),
                want,
                "{present:?} {newest} {keep}"
            );
        }
    }

    #[test]
    fn the_log_entry_goes_before_its_state() {
        assert_eq!(
            deletions(
                "_commits/1".into(),
                vec!["state/a".into(), "state/b".into()]
            ),
            vec!["_commits/1", "state/a", "state/b"]
        );
    }
}
