//! Shared helpers of the end-to-end tests: the reference implementation (the
//! oracle), the manifest reader, and ways to run the `tidemark` binary.
#![allow(dead_code)]

pub mod committed;
pub mod layout;
pub mod reference;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The `tidemark` binary cargo built for these tests.
pub fn tidemark_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tidemark"))
}

/// Runs `tidemark <args>`; panics with its stderr when it exits non-zero.
/// Returns its stdout.
pub fn run_ok(args: &[&str]) -> String {
    let output = Command::new(tidemark_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not start tidemark {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        panic!(
            "tidemark {args:?} failed with {}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            stdout
        );
    }
    stdout
}

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
