//! SPEC 9 end to end: transactions enriched as of their event time from a
//! changing merchants table, compared whole against the independent oracle
//! (`tidemark_testkit::reference::compute_files_enriched`) on several
//! cluster shapes and across crashes with reference updates in flight.
//!
//! The data (`tidemark_testkit::datasets::enriched`): `tidemark generate
//! --merchants` makes a version per merchant (every tenth merchant has
//! none), updates while the transactions run (hot merchants included,
//! sometimes twice in a minute), rows a little out of order, late rows and
//! malformed rows. A second reference file holds rows that tie with some of
//! the first file's on `valid_from` (the later partition must win), plus its
//! own late row.

use std::path::{Path, PathBuf};
use std::process::Command;

use tidemark_testkit::committed::{assert_same, manifests, read_committed};
use tidemark_testkit::datasets::{enriched, Enriched};
use tidemark_testkit::job::{self, finish};
use tidemark_testkit::reference::{
    compute_files_enriched, default_window_specs, read_records, Outputs, RefParams, WindowKind,
    WindowSpec,
};
use tidemark_testkit::{cluster, tempdir};

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

fn replay(data: &Enriched, out: &Path, config: &Path, extra: &[&str]) -> Command {
    let mut c = job::command(&["replay", "--input", &data.input]);
    c.args(["--reference", &data.reference])
        .args(["--output", out.to_str().unwrap()])
        .args(["--config", config.to_str().unwrap()])
        .args(extra);
    c
}

fn ok(mut c: Command) {
    let what = format!("{c:?}");
    finish(c.spawn().unwrap(), &what);
}

fn write_config(dir: &Path) -> PathBuf {
    tidemark_testkit::write(dir, "job.toml", CONFIG)
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
fn check_accounting(data: &Enriched, actual: &Outputs) {
    let lines = |files: &[PathBuf]| -> usize { files.iter().map(|f| read_records(f).len()).sum() };
    let rejects = |source: &str| actual.rejects.iter().filter(|r| r.source == source).count();
    assert_eq!(
        lines(&data.files),
        actual.transactions.len() + actual.duplicates as usize + rejects("transactions")
    );
    assert!(rejects("merchants") > 0 && rejects("merchants") < lines(&data.reference_files));
}

#[test]
fn enriched_outputs_equal_the_spec_on_every_shape() {
    let tmp = tempdir();
    let data = enriched(&tmp, 60_000, 31);
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
    cluster::run(&tmp, 2, 1, |args| replay(&data, &out, &config, args));
    assert_same(&expected, &read_committed(&out));
}

#[test]
fn kill_at_five_moments_with_reference_updates_in_flight() {
    let tmp = tempdir();
    let data = enriched(&tmp, 100_000, 37);
    let config = write_config(&tmp);
    let expected = compute_files_enriched(&data.files, &data.reference_files, &ref_params());
    check_coverage(&expected);

    let out = tmp.join("crashy");
    // Throttled, so the table's updates are read while the job runs and
    // commits; each restart resumes both sources and the table's state.
    job::kill_at_five_moments(
        || {
            replay(&data, &out, &config, &["-w", "2", "--rate", "15000"])
                .spawn()
                .unwrap()
        },
        || manifests(&out),
        || {},
    );
    ok(replay(&data, &out, &config, &["-w", "2"]));
    assert_same(&expected, &read_committed(&out));
}

#[test]
fn grouping_by_an_enriched_field_needs_a_reference_table() {
    let tmp = tempdir();
    let config = write_config(&tmp);
    let input = tmp.join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let o = Command::new(job::bin())
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
