//! Which commit a starting job restores: the newest in the commit log whose
//! files all verify. Every newer entry — unreadable, or naming a file that
//! is missing or damaged — is passed over and quarantined, so the history
//! continues from the restored commit and readers never see an epoch the
//! job will compute again.

use crate::manifest::Manifest;

/// One commit log entry, as the executor read and checked it.
pub enum Entry {
    /// The bytes are not a manifest (the parse error).
    Unreadable(String),
    /// A manifest and the problems [`crate::verify::verify`] found.
    Checked {
        manifest: Box<Manifest>,
        problems: Vec<String>,
    },
}

/// What a start restores and what it sets aside.
#[derive(Debug, Default, PartialEq)]
pub struct Recovery {
    /// The newest commit whose files all verify; `None`: start fresh.
    pub newest: Option<Manifest>,
    /// Why newer commits were passed over.
    pub problems: Vec<String>,
    /// The commits passed over: (log position, epoch when readable).
    pub damaged: Vec<(u64, Option<i64>)>,
}

/// Walks `entries` newest first (the executor reads them lazily, so the
/// walk stops reading at the first good commit).
pub fn choose(entries: impl IntoIterator<Item = (u64, Entry)>) -> Recovery {
    let mut r = Recovery::default();
    for (seq, entry) in entries {
        match entry {
            Entry::Unreadable(e) => {
                r.problems.push(format!("commit {seq}: {e}"));
                r.damaged.push((seq, None));
            }
            Entry::Checked { manifest, problems } if problems.is_empty() => {
                r.newest = Some(*manifest);
                return r;
            }
            Entry::Checked { manifest, problems } => {
                r.problems
                    .extend(problems.into_iter().map(|p| format!("commit {seq}: {p}")));
                r.damaged.push((seq, Some(manifest.epoch)));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::JobSection;

    fn ok(epoch: i64) -> Entry {
        Entry::Checked {
            manifest: Box::new(Manifest::new(epoch, vec![], JobSection::default())),
            problems: vec![],
        }
    }
    fn damaged(epoch: i64) -> Entry {
        Entry::Checked {
            manifest: Box::new(Manifest::new(epoch, vec![], JobSection::default())),
            problems: vec![format!("manifest {epoch}: file x: missing")],
        }
    }

    #[test]
    fn the_newest_good_commit_wins_and_only_newer_ones_are_set_aside() {
        // (log newest first, restored epoch, damaged) — each row one rule a
        // plausible wrong walk breaks: taking the newest blindly, stopping at
        // the first damage, skipping unreadable entries without setting them
        // aside, quarantining older damage it never needed to look at.
        type Row = (Vec<(u64, Entry)>, Option<i64>, Vec<(u64, Option<i64>)>);
        let rows: Vec<Row> = vec![
            (vec![], None, vec![]),
            (vec![(3, ok(30)), (2, ok(20))], Some(30), vec![]),
            (
                vec![(3, damaged(30)), (2, ok(20))],
                Some(20),
                vec![(3, Some(30))],
            ),
            (
                vec![
                    (4, Entry::Unreadable("not JSON".into())),
                    (3, damaged(30)),
                    (2, ok(20)),
                ],
                Some(20),
                vec![(4, None), (3, Some(30))],
            ),
            (vec![(3, ok(30)), (2, damaged(20))], Some(30), vec![]),
            (
                vec![(2, damaged(20)), (1, damaged(10))],
                None,
                vec![(2, Some(20)), (1, Some(10))],
            ),
        ];
        for (i, (log, restored, set_aside)) in rows.into_iter().enumerate() {
            let r = choose(log);
            assert_eq!(r.newest.map(|m| m.epoch), restored, "row {i}");
            assert_eq!(r.damaged, set_aside, "row {i}");
            assert_eq!(
                r.problems.len(),
                set_aside.len(),
                "row {i}: {:?}",
                r.problems
            );
        }
    }

    #[test]
    fn the_walk_stops_at_the_first_good_commit() {
        let mut read = 0;
        let log = (1..=5u64).rev().map(|seq| {
            read += 1;
            (
                seq,
                if seq == 4 {
                    ok(40)
                } else {
                    damaged(seq as i64 * 10)
                },
            )
        });
        let r = choose(log);
        assert_eq!(r.newest.unwrap().epoch, 40);
        assert_eq!(read, 2, "entries older than the restored one are not read");
    }
}
