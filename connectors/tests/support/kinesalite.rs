//! A kinesalite server (Kinesis API on node) for the tests: in memory, a
//! free loopback port, started by PID and killed on drop (and with the test
//! process, via PDEATHSIG). Each test starts its own (ready in well under a
//! second), with the simulated stream-state delays turned off.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

/// `KINESALITE_CLI`, else
/// `$TIDEMARK_TOOLS/kinesalite/node_modules/kinesalite/cli.js` (default
/// `$HOME/.cache/tidemark-tools`). Missing: the test fails, never skips.
pub fn cli() -> PathBuf {
    if let Some(c) = std::env::var_os("KINESALITE_CLI") {
        return PathBuf::from(c);
    }
    let tools = std::env::var_os("TIDEMARK_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/tidemark-tools")
        });
    let cli = tools.join("kinesalite/node_modules/kinesalite/cli.js");
    assert!(
        cli.is_file(),
        "kinesalite is not installed at {}: run scripts/kinesalite-install (or set KINESALITE_CLI)",
        cli.display()
    );
    cli
}

/// Dummy credentials through the SDK's standard chain (environment), set
/// once before any client exists: every test starts a server first, so no
/// other thread reads the environment while it is written.
fn credentials() {
    static ENV: Once = Once::new();
    ENV.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
}

pub struct Kinesalite {
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Kinesalite {
    pub fn start() -> Kinesalite {
        credentials();
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
fn launch(cli: &PathBuf, port: u16, log: &PathBuf) -> Option<Child> {
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
    // The server dies with the test thread that started it, even when the
    // test process is killed.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("spawning node for kinesalite: {e}; run scripts/kinesalite-install")
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
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
