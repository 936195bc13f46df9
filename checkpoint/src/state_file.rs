//! The byte format of a worker's state file: exactly bincode 1's encoding
//! of a [`StateSnapshot`] (so files written by earlier versions still
//! restore), written and read by hand because serde walks `Vec<u8>` one
//! byte at a time, which made large snapshots cost more than the job.

use anyhow::{bail, Result};

use crate::writer::StateSnapshot;

/// Encodes into one allocation of the exact size.
pub fn encode(state: &StateSnapshot) -> Vec<u8> {
    let mut size = 8;
    for (op, groups) in state {
        size += 8 + op.len() + 8;
        for (_, bytes) in groups {
            size += 4 + 8 + bytes.len();
        }
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    for (op, groups) in state {
        out.extend_from_slice(&(op.len() as u64).to_le_bytes());
        out.extend_from_slice(op.as_bytes());
        out.extend_from_slice(&(groups.len() as u64).to_le_bytes());
        for (g, bytes) in groups {
            out.extend_from_slice(&g.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
    debug_assert_eq!(out.len(), size);
    out
}

/// Decodes, keeping only the key groups `keep` accepts (the rest are
/// skipped without copying).
pub fn decode(bytes: &[u8], keep: impl Fn(u32) -> bool) -> Result<StateSnapshot> {
    let mut r = Reader { bytes, at: 0 };
    let ops = r.len()?;
    let mut state = Vec::with_capacity(ops.min(1024));
    for _ in 0..ops {
        let n = r.len()?;
        let op = std::str::from_utf8(r.take(n)?)
            .map_err(|_| anyhow::anyhow!("an operator name is not UTF-8"))?
            .to_owned();
        let count = r.len()?;
        let mut groups = Vec::new();
        for _ in 0..count {
            let g = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
            let n = r.len()?;
            let data = r.take(n)?;
            if keep(g) {
                groups.push((g, data.to_vec()));
            }
        }
        state.push((op, groups));
    }
    if r.at != bytes.len() {
        bail!("{} bytes after the state", bytes.len() - r.at);
    }
    Ok(state)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.bytes.get(self.at..self.at.saturating_add(n)) {
            Some(s) => {
                self.at += n;
                Ok(s)
            }
            None => bail!("the state ends early, at byte {}", self.at),
        }
    }
    fn len(&mut self) -> Result<usize> {
        let v = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
        usize::try_from(v).map_err(|_| anyhow::anyhow!("a length of {v} bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateSnapshot {
        vec![
            ("dedup".into(), vec![(0, vec![1, 2, 3]), (7, vec![])]),
            ("window:é".into(), vec![(255, (0..=255).collect())]),
            ("empty".into(), vec![]),
        ]
    }

    #[test]
    fn bytes_are_bincodes() {
        let s = sample();
        assert_eq!(encode(&s), bincode::serialize(&s).unwrap());
        assert_eq!(decode(&encode(&s), |_| true).unwrap(), s);
        let old = bincode::serialize(&s).unwrap();
        let mine = decode(&old, |g| g == 7).unwrap();
        assert_eq!(mine[0].1, vec![(7, vec![])]);
        assert!(mine[1].1.is_empty());
    }

    #[test]
    fn damage_is_an_error() {
        let bytes = encode(&sample());
        for cut in [0, 5, 20, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], |_| true).is_err(), "{cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode(&long, |_| true).is_err());
    }
}
