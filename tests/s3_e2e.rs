//! The crash-and-damage suite with the output root on a real S3 API server
//! (moto on loopback): kills at five moments and a damaged newest manifest
//! still end in outputs equal to an uninterrupted local run.

mod common;
#[path = "../checkpoint/tests/support/moto.rs"]
mod moto;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::committed::{assert_same, read_committed};
use tidemark_checkpoint::s3::{S3Options, S3Storage};
use tidemark_checkpoint::storage::Storage;

const FAST_COMMITS: &str = "[checkpoint]\ninterval = \"1s\"\nmin_wall_interval = \"0\"\n";

fn s3_env(cmd: &mut Command, endpoint: &str) {
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE");
}

fn bucket(endpoint: &str, name: &str) -> Arc<S3Storage> {
    // The test process talks to moto with the same dummy credentials.
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    let opts = S3Options {
        endpoint: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        path_style: Some(true),
    };
    let st = S3Storage::new(&format!("s3://{name}/out"), &opts).unwrap();
    st.create_bucket().unwrap();
    Arc::new(st)
}

fn tidemark(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(common::tidemark_bin());
    c.args(args).env("TIDEMARK_LOG", "warn");
    s3_env(&mut c, endpoint);
    c
}

fn manifests(st: &dyn Storage) -> usize {
    st.list("manifests/")
        .unwrap()
        .iter()
        .filter(|k| k.ends_with(".json"))
        .count()
}

/// Copies the whole root to a local directory, to read it like a local one.
fn download(st: &dyn Storage, to: &Path) {
    for key in st.list("").unwrap() {
        let path = to.join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, st.get(&key).unwrap().unwrap()).unwrap();
    }
}

fn run_ok(mut c: Command) {
    let o = c.stdout(Stdio::null()).output().unwrap();
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn crashes_and_damage_on_s3_end_in_equal_outputs() {
    let endpoint = moto::shared().endpoint.clone();
    let tmp = common::tempdir();
    let input_dir = tmp.join("in");
    common::run_ok(&[
        "generate",
        "--output",
        input_dir.to_str().unwrap(),
        "--events",
        "80000",
        "--partitions",
        "4",
        "--seed",
        "3",
    ]);
    let input = format!("{}/*.jsonl", input_dir.display());
    let config = tmp.join("job.toml");
    std::fs::write(&config, FAST_COMMITS).unwrap();
    let config = config.to_str().unwrap();

    let clean = tmp.join("clean");
    let replay = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "replay", "--input", &input, "--output", out, "--config", config, "-w", "2",
        ];
        args.extend_from_slice(extra);
        tidemark(&endpoint, &args)
    };
    run_ok(replay(clean.to_str().unwrap(), &[]));
    let expected = read_committed(&clean);
    assert!(expected.transactions.len() > 70_000);

    let st = bucket(&endpoint, "tm-crash");
    let root = "s3://tm-crash/out";
    for new_epochs in 1..=5 {
        let start = manifests(&*st);
        let mut child = replay(root, &["--rate", "20000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the job finished before kill {new_epochs}"
            );
            if manifests(&*st) >= start + new_epochs || Instant::now() > deadline {
                child.kill().unwrap(); // SIGKILL
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.wait();
    }

    // Damage the newest manifest: verify reports it, a restart recovers.
    let newest = st
        .list("manifests/")
        .unwrap()
        .into_iter()
        .filter(|k| k.ends_with(".json"))
        .max()
        .unwrap();
    let text = st.get(&newest).unwrap().unwrap();
    st.put(&newest, &text[..text.len() / 2]).unwrap();
    let o = tidemark(&endpoint, &["verify", root]).output().unwrap();
    assert!(!o.status.success(), "verify missed the damaged manifest");
    assert!(String::from_utf8_lossy(&o.stdout).contains("DAMAGED"));

    run_ok(replay(root, &[]));
    run_ok(tidemark(&endpoint, &["verify", root]));
    let local = tmp.join("from-s3");
    download(&*st, &local);
    assert_same(&expected, &read_committed(&local));
}
