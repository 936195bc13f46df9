//! Test inputs made by `tidemark generate`, and what a plain file replay of
//! them commits.

use std::path::{Path, PathBuf};

use crate::committed::read_committed;
use crate::job::{run_ok, FAST_COMMITS};
use crate::reference::{parse_timestamp, Outputs};

/// `tidemark generate` into `dir`: `partitions` JSON Lines files of
/// `events` in all, `events_per_sec` of event time. Returns the glob of the
/// files.
pub fn generate(
    dir: &Path,
    events: u64,
    partitions: u32,
    seed: u64,
    events_per_sec: u64,
) -> String {
    generate_args(dir, events, partitions, seed, events_per_sec, &[])
}

/// [`generate`], and the merchants reference table those transactions
/// refer to, into the file `merchants` (`generate --merchants`).
pub fn generate_with_merchants(
    dir: &Path,
    events: u64,
    partitions: u32,
    seed: u64,
    events_per_sec: u64,
    merchants: &Path,
) -> String {
    let table = merchants.to_str().unwrap();
    let extra = ["--merchants", table];
    generate_args(dir, events, partitions, seed, events_per_sec, &extra)
}

fn generate_args(
    dir: &Path,
    events: u64,
    partitions: u32,
    seed: u64,
    events_per_sec: u64,
    extra: &[&str],
) -> String {
    let mut args = vec![
        "generate".to_owned(),
        "--output".to_owned(),
        dir.to_str().unwrap().to_owned(),
        "--events".to_owned(),
        events.to_string(),
        "--partitions".to_owned(),
        partitions.to_string(),
        "--seed".to_owned(),
        seed.to_string(),
        "--events-per-sec".to_owned(),
        events_per_sec.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    format!("{}/*.jsonl", dir.display())
}

/// The `.jsonl` files in `dir`, sorted by path: a replay's partitions in
/// order (file i is partition i).
pub fn jsonl_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".jsonl"))
        .collect();
    v.sort();
    v
}

/// Generates `partitions` files into `dir/in` ([`generate`]) and replays
/// them with [`FAST_COMMITS`] into `dir/from-files`: the files in partition
/// order, and the committed outputs, which a job reading the same records
/// from elsewhere (Kafka, Kinesis) must equal. `rate` is events per second
/// of event time.
pub fn replayed(
    dir: &Path,
    events: u64,
    partitions: u32,
    seed: u64,
    rate: u64,
) -> (Vec<PathBuf>, Outputs) {
    let input = dir.join("in");
    let pattern = generate(&input, events, partitions, seed, rate);
    let files = jsonl_files(&input);
    let config = crate::write(dir, "files.toml", FAST_COMMITS);
    let out = dir.join("from-files");
    run_ok(&[
        "replay",
        "--input",
        &pattern,
        "--output",
        out.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    (files, read_committed(&out))
}

/// Transactions and a merchants table in two files, made by [`enriched`].
pub struct Enriched {
    /// Glob of the transactions files.
    pub input: String,
    pub files: Vec<PathBuf>,
    /// Glob and files of the merchants reference table.
    pub reference: String,
    pub reference_files: Vec<PathBuf>,
}

/// SPEC 9's test data under `dir`: 4 partitions of transactions (`in/`,
/// 250 events per second of event time) and the merchants table
/// (`merchants/`). `tidemark generate --merchants` makes the first table
/// file: a version per merchant (every tenth merchant has none), updates
/// while the transactions run (hot merchants included, sometimes twice in
/// a minute), rows a little out of order, late rows and malformed rows.
/// The second file holds rows that tie with every fourth in-order update of
/// the first on `valid_from` (`country = "ZZ"`, `risk_tier = "HIGH"`,
/// `merchant_category = "tie-winner"`: the later partition must win), and
/// one row far behind its own maximum (LATE).
pub fn enriched(dir: &Path, events: u64, seed: u64) -> Enriched {
    let input = dir.join("in");
    let refs = dir.join("merchants");
    std::fs::create_dir_all(&refs).unwrap();
    let first = refs.join("m0.jsonl");
    let pattern = generate_with_merchants(&input, events, 4, seed, 250, &first);

    // The second file: ties with every fourth update of the first, in
    // valid_from order, then one row far behind its own maximum (LATE).
    let text = std::fs::read_to_string(&first).unwrap();
    let mut ties = Vec::new();
    let mut max_seen = i64::MIN;
    let mut updates = 0;
    for line in text.lines() {
        let Ok(serde_json::Value::Object(mut row)) = serde_json::from_str(line) else {
            continue;
        };
        let Some(at) = row
            .get("valid_from")
            .and_then(|v| v.as_str())
            .and_then(parse_timestamp)
        else {
            continue;
        };
        let tier_ok = matches!(
            row.get("risk_tier").and_then(|v| v.as_str()),
            Some("LOW" | "MEDIUM" | "HIGH")
        );
        if !tier_ok || at < max_seen {
            continue;
        }
        max_seen = at;
        updates += 1;
        if updates % 4 == 0 {
            row.insert("country".into(), "ZZ".into());
            row.insert("risk_tier".into(), "HIGH".into());
            row.insert("merchant_category".into(), "tie-winner".into());
            ties.push(serde_json::to_string(&row).unwrap());
        }
    }
    assert!(ties.len() > 20, "only {} tie rows", ties.len());
    let late = ties[0].replace("\"tie-winner\"", "\"late\"");
    ties.push(late);
    std::fs::write(refs.join("m1.jsonl"), ties.join("\n") + "\n").unwrap();

    Enriched {
        input: pattern,
        files: jsonl_files(&input),
        reference: format!("{}/*.jsonl", refs.display()),
        reference_files: jsonl_files(&refs),
    }
}
