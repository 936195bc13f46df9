//! Everything tidemark's tests share, for tests only (`publish = false`; a
//! dev-dependency of every crate with tests, never a dependency of the job).
//! No test includes another's files: what two tests need lives here.
//!
//! Test servers on loopback, each started by the test that needs it:
//! - [`moto`]: a real S3 API server (moto, from PyPI).
//! - [`tansu`]: a Kafka-protocol broker (tansu), with kill, restart, pause.
//! - [`kinesalite`]: a Kinesis API server (kinesalite on node).
//! - [`launch`]: what they share: where installed tools are, free ports, a
//!   child that dies with the test, dummy AWS credentials.
//! - [`cut_proxy`]: a TCP proxy that cuts a connection mid-response.
//! - [`fault_proxy`]: a TCP proxy that hangs, refuses, resets or delays,
//!   per direction, and answers a share of HTTP requests with 503 SlowDown.
//!
//! Running the job and checking what it commits:
//! - [`job`]: the `tidemark` binary under test, commands, kill drills, runs
//!   with their stderr lines timed ([`job::Logged`]), waiting for commits.
//! - [`cluster`]: one job as several processes over loopback (hostfile).
//! - [`datasets`]: generated inputs, and what a file replay of them commits.
//! - [`reference`]: the independent reference implementation (the oracle).
//! - [`committed`]: the committed-output reader and `assert_same`.
//! - [`layout`]: what an output root holds under retention.
//! - [`scrape`]: reading the job's Prometheus endpoint.
//!
//! The reference is independent of the code under test: it computes from
//! the SPEC with std and general crates only (base64, flate2, serde_json to
//! write `metadata`), never with a tidemark crate, so a bug in the job
//! cannot hide in its expectations. The other modules use `tidemark-store`
//! only for the `Storage` trait (listing and reading roots on S3), and
//! Arrow/Parquet only to read committed files.
//!
//! Test servers never skip: a missing server fails the test with the
//! command that installs it.

pub mod cluster;
pub mod committed;
pub mod cut_proxy;
pub mod datasets;
pub mod fault_proxy;
pub mod job;
pub mod kinesalite;
pub mod launch;
pub mod layout;
pub mod moto;
pub mod reference;
pub mod scrape;
pub mod tansu;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use launch::free_port;

/// A fresh, empty, unique directory under the system temp dir (not removed).
pub fn tempdir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("tidemark-test-{}-{nanos}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("creating {}: {e}", dir.display()),
        }
    }
}

/// Writes `text` to `dir/name` (a job config, say); returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
