//! SPEC 9 end to end: transactions enriched as of their event time from a
//! changing merchants table, compared whole against the independent oracle
//! (`common::reference::compute_files_enriched`) on several cluster shapes
//! and across crashes with reference updates in flight.
//!
//! The data: `tidemark generate --merchants` makes a version per merchant
//! (every tenth merchant has none), updates while the transactions run
//! (hot merchants included, sometimes twice in a minute), rows a little out
//! of order, late rows and malformed rows. The test adds a second
//! reference file whose rows tie with some of the first file's on
//! `valid_from` (the later partition must win), plus its own late row.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::committed::{assert_same, read_committed};
use common::reference::{
    compute_files_enriched, default_window_specs, Outputs, RefParams, WindowKind, WindowSpec,
};

/// Many small epochs, and the enriched window specs.
const CONFIG: &str = r#"
[checkpoint]
interval = "1s"
min_wall_interval = "0"

[[windows]]
name = "status_1m"
kind = "tumbling"
size = "1m"
group_by = ["status"]

[[windows]]
name = "merchant_5m"
kind = "sliding"
size = "5m"
slide = "1m"
group_by = ["merchant"]

[[windows]]
name = "customer_session"
kind = "session"
gap = "30m"
group_by = ["customer_id"]

[[windows]]
name = "risk_tier_1m"
kind = "tumbling"
size = "1m"
group_by = ["risk_tier"]

[[windows]]
name = "country_status_2m"
kind = "sliding"
size = "2m"
slide = "1m"
group_by = ["merchant_country", "status"]
aggregates = ["count", "sum"]
"#;

fn ref_params() -> RefParams {
    let mut windows = default_window_specs();
    windows.push(WindowSpec::new(
        "risk_tier_1m",
        WindowKind::Tumbling { size_ms: 60_000 },
        &["risk_tier"],
    ));
    let mut w = WindowSpec::new(
        "country_status_2m",
        WindowKind::Sliding {
            size_ms: 120_000,
            slide_ms: 60_000,
        },
        &["merchant_country", "status"],
    );
    w.aggregates = vec!["count".into(), "sum".into()];
    windows.push(w);
    RefParams {
        windows,
        ..RefParams::default()
    }
}

struct Data {
    /// Glob of the transactions files.
    input: String,
    files: Vec<PathBuf>,
    /// Glob and files of the merchants reference table.
    reference: String,
    reference_files: Vec<PathBuf>,
}

fn jsonl_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".jsonl"))
        .collect();
    v.sort();
    v
}

/// Transactions and both reference files under `dir`.
fn dataset(dir: &Path, events: u64, seed: u64) -> Data {
    let input = dir.join("in");
    let refs = dir.join("merchants");
    std::fs::create_dir_all(&refs).unwrap();
    let first = refs.join("m0.jsonl");
    common::run_ok(&[
        "generate",
        "--output",
        input.to_str().unwrap(),
        "--events",
        &events.to_string(),
        "--partitions",
        "4",
        "--seed",
        &seed.to_string(),
        "--events-per-sec",
        "250",
        "--merchants",
        first.to_str().unwrap(),
    ]);

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
            .and_then(common::reference::parse_timestamp)
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

    Data {
        input: format!("{}/*.jsonl", input.display()),
        files: jsonl_in(&input),
        reference: format!("{}/*.jsonl", refs.display()),
        reference_files: jsonl_in(&refs),
    }
}

fn replay(data: &Data, out: &Path, config: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(common::tidemark_bin());
    c.args(["replay", "--input", &data.input])
        .args(["--reference", &data.reference])
        .args(["--output", out.to_str().unwrap()])
        .args(["--config", config.to_str().unwrap()])
        .args(extra)
        .env("TIDEMARK_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn ok(mut c: Command) {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn write_config(dir: &Path) -> PathBuf {
    let p = dir.join("job.toml");
    std::fs::write(&p, CONFIG).unwrap();
    p
}

/// What the oracle must show for the data to test anything.
fn check_coverage(expected: &Outputs) {
    let tiers = |t: Option<&str>| {
        expected
            .transactions
            .iter()
            .filter(|x| x.risk_tier.as_deref() == t)
            .count()
    };
    for t in [Some("LOW"), Some("MEDIUM"), Some("HIGH"), None] {
        assert!(
            tiers(t) > 100,
            "only {} transactions of tier {t:?}",
            tiers(t)
        );
    }
    assert!(
        expected
            .transactions
            .iter()
            .any(|x| x.merchant_category.as_deref() == Some("tie-winner")),
        "no transaction took a tie-winning version"
    );
    for reason in ["LATE", "BAD_FIELD", "MALFORMED"] {
        assert!(
            expected
                .rejects
                .iter()
                .any(|r| r.source == "merchants" && r.reason == reason),
            "no merchants reject {reason}"
        );
    }
    // A merchant whose version changes inside one risk_tier_1m window.
    let mut seen = std::collections::BTreeMap::new();
    for t in &expected.transactions {
        if let Some(tier) = &t.risk_tier {
            seen.entry((t.merchant.clone(), t.event_time.div_euclid(60_000)))
                .or_insert_with(std::collections::BTreeSet::new)
                .insert(tier.clone());
        }
    }
    assert!(
        seen.values().any(|tiers| tiers.len() > 1),
        "no merchant changed tier within a minute"
    );
    assert!(
        expected
            .windows
            .iter()
            .any(|w| w.window == "risk_tier_1m" && w.group[0].1.is_none()),
        "no risk_tier_1m group of transactions without a row"
    );
}

/// Records in = kept + duplicates + rejects, per source.
fn check_accounting(data: &Data, actual: &Outputs) {
    let lines = |files: &[PathBuf]| -> usize {
        files
            .iter()
            .map(|f| common::reference::read_records(f).len())
            .sum()
    };
    let rejects = |source: &str| actual.rejects.iter().filter(|r| r.source == source).count();
    assert_eq!(
        lines(&data.files),
        actual.transactions.len() + actual.duplicates as usize + rejects("transactions")
    );
    assert!(rejects("merchants") > 0 && rejects("merchants") < lines(&data.reference_files));
}

#[test]
fn enriched_outputs_equal_the_spec_on_every_shape() {
    let tmp = common::tempdir();
    let data = dataset(&tmp, 60_000, 31);
    let config = write_config(&tmp);
    let expected = compute_files_enriched(&data.files, &data.reference_files, &ref_params());
    check_coverage(&expected);

    let one = tmp.join("1x2");
    ok(replay(&data, &one, &config, &["-w", "2"]));
    let actual = read_committed(&one);
    assert_same(&expected, &actual);
    check_accounting(&data, &actual);

    // Two processes: every worker holds the whole table.
    let out = tmp.join("2x1");
    let hostfile = common::hostfile(&tmp, 2);
    let children: Vec<_> = (0..2)
        .map(|i| {
            let p = i.to_string();
            replay(
                &data,
                &out,
                &config,
                &[
                    "-w",
                    "1",
                    "-n",
                    "2",
                    "-p",
                    &p,
                    "-h",
                    hostfile.to_str().unwrap(),
                ],
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_same(&expected, &read_committed(&out));
}

#[test]
fn kill_at_five_moments_with_reference_updates_in_flight() {
    let tmp = common::tempdir();
    let data = dataset(&tmp, 100_000, 37);
    let config = write_config(&tmp);
    let expected = compute_files_enriched(&data.files, &data.reference_files, &ref_params());
    check_coverage(&expected);

    let out = tmp.join("crashy");
    let commits = || std::fs::read_dir(out.join("manifests")).map_or(0, |d| d.count());
    // Throttled, so the table's updates are read while the job runs and
    // commits; each restart resumes both sources and the table's state.
    common::kill_at_five_moments(
        || {
            replay(&data, &out, &config, &["-w", "2", "--rate", "15000"])
                .spawn()
                .unwrap()
        },
        commits,
        || {},
    );
    ok(replay(&data, &out, &config, &["-w", "2"]));
    assert_same(&expected, &read_committed(&out));
}

#[test]
fn grouping_by_an_enriched_field_needs_a_reference_table() {
    let tmp = common::tempdir();
    let config = write_config(&tmp);
    let input = tmp.join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let o = Command::new(common::tidemark_bin())
        .args(["replay", "--input", input.to_str().unwrap()])
        .args(["--output", tmp.join("out").to_str().unwrap()])
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("risk_tier_1m") && err.contains("--reference"),
        "{err}"
    );
    assert!(
        !tmp.join("out").join("manifests").exists(),
        "nothing may be committed"
    );
}
