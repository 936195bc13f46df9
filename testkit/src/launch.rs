//! What the server launchers share: where installed tools are found, free
//! loopback ports, a child process that dies with the test, and dummy AWS
//! credentials for clients of local AWS API servers.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Once;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The installed tool `what`: `$<env_var>` when set, else
/// `$TIDEMARK_TOOLS/<rel>` (default `$HOME/.cache/tidemark-tools`, where
/// `scripts/*-install` put them). Missing: the test fails naming `install`
/// (the command that installs it), never skips.
pub fn tool(what: &str, env_var: &str, rel: &str, install: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("TIDEMARK_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/tidemark-tools")
        });
    let path = tools.join(rel);
    assert!(
        path.is_file(),
        "{what} is not installed at {}: run {install} (or set {env_var})",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago (another process may take it
/// before the caller binds it: launchers retry with a new one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns `cmd` so that it dies with the test thread that started it (also
/// when the test process is killed), and waits until it accepts connections
/// on `port`: the child, or None if it exited or did not listen in time
/// (then it is killed). A spawn error panics with `what` and the error.
pub fn spawn_listening(cmd: &mut Command, port: u16, what: &str) -> Option<Child> {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let deadline = Instant::now() + READY_TIMEOUT;
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

/// The dummy AWS access key and secret the local AWS API servers accept.
const DUMMY_AWS_KEY: &str = "testing";

/// Dummy credentials through the AWS SDK's standard chain (the
/// environment), set once per test process, before any client exists: call
/// it first in every test that makes an S3 or Kinesis client, so that no
/// other thread reads the environment while it is written.
pub fn dummy_aws_credentials() {
    static ENV: Once = Once::new();
    ENV.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", DUMMY_AWS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", DUMMY_AWS_KEY);
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
}

/// The same dummy credentials for a child process (a job the test starts),
/// and no instance-metadata lookups.
pub fn dummy_aws_env(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", DUMMY_AWS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", DUMMY_AWS_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
}
