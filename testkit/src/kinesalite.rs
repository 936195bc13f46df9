//! A kinesalite server (Kinesis API on node) for the tests: in memory, a
//! free loopback port, started by PID and killed on drop (and with the test
//! process, via PDEATHSIG). Each test starts its own (ready in well under a
//! second), with the simulated stream-state delays turned off.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::launch::{dummy_aws_credentials, free_port, spawn_listening, tool};

/// `KINESALITE_CLI`, else
/// `$TIDEMARK_TOOLS/kinesalite/node_modules/kinesalite/cli.js` (default
/// `$HOME/.cache/tidemark-tools`). Missing: the test fails, never skips.
pub fn cli() -> PathBuf {
    tool(
        "kinesalite",
        "KINESALITE_CLI",
        "kinesalite/node_modules/kinesalite/cli.js",
        "scripts/kinesalite-install",
    )
}

/// A running server.
pub struct Kinesalite {
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Kinesalite {
    /// Starts a server; also sets the process's dummy AWS credentials
    /// ([`dummy_aws_credentials`]) for the clients the test makes.
    pub fn start() -> Kinesalite {
        dummy_aws_credentials();
        static N: AtomicU32 = AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "tidemark-kinesalite-{}-{}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let cli = cli();
        // The port may be taken between probing and binding: try a few.
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = launch(&cli, port, &log) {
                return Kinesalite {
                    port,
                    log,
                    child: Some(child),
                };
            }
        }
        panic!(
            "kinesalite did not start; see {} (is node installed? run scripts/kinesalite-install)",
            log.display()
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Starts the server on `port`; the child once it accepts connections.
fn launch(cli: &Path, port: u16, log: &Path) -> Option<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(cli)
        .args(["--port", &port.to_string()])
        .args(["--createStreamMs", "0"])
        .args(["--deleteStreamMs", "0"])
        .args(["--updateStreamMs", "0"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    spawn_listening(
        &mut cmd,
        port,
        "node for kinesalite (run scripts/kinesalite-install)",
    )
}

impl Drop for Kinesalite {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
