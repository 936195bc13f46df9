//! Outputs read the way downstream tools read them: DuckDB (an independent
//! Parquet reader from PyPI, driven by `tests/readback/read_outputs.py`)
//! through the Redshift COPY manifests and the Hive-style `date=/hour=` and
//! `window=` folders, on a local root and on an S3 root (moto), must count
//! exactly what `tidemark inspect` reports.

use std::path::Path;
use std::process::Command;

use tidemark_testkit::datasets::generate;
use tidemark_testkit::{job, moto, tempdir};

/// Many epochs with transactions: 40 s of event time, a short dedup horizon.
const CONFIG: &str =
    "[checkpoint]\ninterval = \"2s\"\nmin_wall_interval = \"0\"\n\n[dedup]\nhorizon = \"5s\"\n";

fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        o.status.success(),
        "{c:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn check(root: &str, endpoint: &str) {
    let inspect: serde_json::Value = serde_json::from_str(&ok(moto::client_env(
        Command::new(job::bin()).args(["inspect", root, "--json"]),
        endpoint,
    )))
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readback/read_outputs.py");
    let read: serde_json::Value = serde_json::from_str(&ok(moto::client_env(
        Command::new("python3").arg(&script).arg(root),
        endpoint,
    )))
    .unwrap();
    let totals = &inspect["totals"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    assert!(n(&totals["transactions"]) > 30_000, "{inspect}");
    assert!(n(&totals["windows"]) > 0 && n(&totals["rejects"]) > 0);
    assert!(n(&read["redshift_manifests"]) > 10, "{read}");
    assert_eq!(
        n(&read["transactions_via_redshift"]),
        n(&totals["transactions"])
    );
    assert_eq!(
        n(&read["transactions_via_hive"]),
        n(&totals["transactions"])
    );
    for output in ["windows", "anomalies", "rejects"] {
        assert_eq!(
            n(&read[output]),
            n(&totals[output]),
            "{output}: {read} vs {inspect}"
        );
    }
}

#[test]
fn duckdb_reads_what_inspect_counts_locally_and_on_s3() {
    let endpoint = moto::shared().endpoint.clone();
    let tmp = tempdir();
    let input = tmp.join("in");
    let input = generate(&input, 40_000, 4, 17, 1000);
    let config = tmp.join("job.toml");
    std::fs::write(&config, CONFIG).unwrap();

    let s3 = "s3://tm-readback/out".to_owned();
    moto::bucket(&endpoint, &s3);
    let local = tmp.join("out").to_str().unwrap().to_owned();
    for root in [local, s3] {
        ok(moto::client_env(
            Command::new(job::bin())
                .args(["replay", "--input", &input, "--output", &root, "-w", "2"])
                .args(["--rate", "20000"])
                .args(["--config", config.to_str().unwrap()])
                .env("TIDEMARK_LOG", "warn"),
            &endpoint,
        ));
        check(&root, &endpoint);
    }
}
