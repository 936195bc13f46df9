//! Every storage key the job writes, relative to the output root. Numbers
//! are zero-padded to 20 digits so that name order is numeric order.
//!
//! - `manifests/<E>.json`: the public manifest of epoch `E` (docs/spec.md 8).
//! - `_commits/<seq>.json`: the commit log, the job's own truth.
//! - `_generations/<g>.json`: one claim per process start.
//! - `quarantine/…`: damaged manifests and commits, kept as evidence.
//! - `state/…`, `transactions/…` …: files named by [`file_name`].
//! - `redshift/<E>.manifest`: Redshift COPY manifests.
//! - `_sinks/kafka.json`: the last epoch published to the Kafka sinks.

/// Where public manifests live.
pub const MANIFESTS_PREFIX: &str = "manifests/";
/// Where damaged manifests and commits are moved aside.
pub const QUARANTINE_PREFIX: &str = "quarantine/";
/// Where state snapshots live.
pub const STATE_PREFIX: &str = "state/";
/// The commit log: full checkpoints, state included.
pub const LOG_PREFIX: &str = "_commits/";
/// Generation claims.
pub const GENERATIONS_PREFIX: &str = "_generations/";
/// Redshift COPY manifests.
pub const REDSHIFT_PREFIX: &str = "redshift/";
/// The Kafka sinks' progress record.
pub const KAFKA_SINKS_PROGRESS: &str = "_sinks/kafka.json";

/// The outputs a manifest's `files` may name; each lives under `<output>/`.
pub const OUTPUTS: [&str; 4] = ["transactions", "windows", "anomalies", "rejects"];

/// The folders garbage collection cleans: data and state files.
pub const GARBAGE_PREFIXES: [&str; 5] = [
    "transactions/",
    "windows/",
    "anomalies/",
    "rejects/",
    STATE_PREFIX,
];

/// A negative epoch has no name that sorts in epoch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("epoch {0} is negative: manifests name epochs >= 0 only")]
pub struct NegativeEpoch(pub i64);

/// `manifests/<E:020>.json`.
pub fn manifest_key(epoch: i64) -> Result<String, NegativeEpoch> {
    if epoch < 0 {
        return Err(NegativeEpoch(epoch));
    }
    Ok(format!("{MANIFESTS_PREFIX}{epoch:020}.json"))
}

/// The epoch of a manifest key, `None` for any other key.
pub fn parse_manifest_key(key: &str) -> Option<i64> {
    parse_numbered(key, MANIFESTS_PREFIX, ".json").and_then(|n| i64::try_from(n).ok())
}

/// `_commits/<seq:020>.json`.
pub fn log_key(seq: u64) -> String {
    format!("{LOG_PREFIX}{seq:020}.json")
}

/// The position of a commit log key, `None` for any other key.
pub fn parse_log_key(key: &str) -> Option<u64> {
    parse_numbered(key, LOG_PREFIX, ".json")
}

/// `_generations/<g:020>.json`.
pub fn generation_key(generation: u64) -> String {
    format!("{GENERATIONS_PREFIX}{generation:020}.json")
}

/// The generation of a claim key, `None` for any other key.
pub fn parse_generation_key(key: &str) -> Option<u64> {
    parse_numbered(key, GENERATIONS_PREFIX, ".json")
}

/// `redshift/<E:020>.manifest`.
pub fn redshift_key(epoch: i64) -> String {
    format!("{REDSHIFT_PREFIX}{epoch:020}.manifest")
}

/// Where a damaged manifest of `epoch` is kept: `quarantine/<E:020>.json-<ms>`,
/// then `-1`, `-2` … while those are taken (`attempt`).
pub fn quarantine_manifest_key(epoch: i64, now_ms: u128, attempt: u32) -> String {
    let base = format!("{QUARANTINE_PREFIX}{epoch:020}.json-{now_ms}");
    match attempt {
        0 => base,
        n => format!("{base}-{n}"),
    }
}

/// Where a damaged commit log entry is kept: its key with `/` as `-`.
pub fn quarantine_log_key(seq: u64) -> String {
    format!("{QUARANTINE_PREFIX}{}", log_key(seq).replace('/', "-"))
}

/// `<prefix><20 digits><suffix>` → the number.
fn parse_numbered(key: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = key.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Data and state file names: `e<E:020>-g<generation>-w<worker:04>.<ext>`,
/// so garbage collection can tell which generation wrote a file without
/// opening anything. (A negative epoch is written with its sign.)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_keys_round_trip_and_nothing_else_parses() {
        assert_eq!(
            manifest_key(1_700_000_010_000).unwrap(),
            "manifests/00000001700000010000.json"
        );
        assert_eq!(
            manifest_key(0).unwrap(),
            "manifests/00000000000000000000.json"
        );
        assert_eq!(manifest_key(-1), Err(NegativeEpoch(-1)));
        assert_eq!(log_key(7), "_commits/00000000000000000007.json");
        assert_eq!(parse_log_key(&log_key(7)), Some(7));
        assert_eq!(parse_generation_key(&generation_key(3)), Some(3));
        assert_eq!(
            parse_manifest_key("manifests/00000001700000010000.json"),
            Some(1_700_000_010_000)
        );
        // Each a plausible near miss: unpadded, suffixed, non-digit,
        // another folder, nested, signed.
        for bad in [
            "manifests/1700000010000.json",
            "manifests/00000001700000010000.json.bak",
            "manifests/x0000001700000010000.json",
            "quarantine/00000001700000010000.json",
            "manifests/sub/00000001700000010000.json",
            "manifests/+0000001700000010000.json",
        ] {
            assert_eq!(parse_manifest_key(bad), None, "{bad}");
        }
        assert_eq!(
            parse_log_key("_commits/00000000000000000007.json.tmp"),
            None
        );
        assert_eq!(
            quarantine_manifest_key(5, 99, 0),
            "quarantine/00000000000000000005.json-99"
        );
        assert_eq!(
            quarantine_manifest_key(5, 99, 2),
            "quarantine/00000000000000000005.json-99-2"
        );
        assert_eq!(
            quarantine_log_key(7),
            "quarantine/_commits-00000000000000000007.json"
        );
        assert_eq!(redshift_key(5), "redshift/00000000000000000005.manifest");
    }

    #[test]
    fn file_names_round_trip() {
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
}
