//! A real S3 API server for tests: moto (`python3 -m moto.server`), started
//! on a free loopback port and killed on drop; [`bucket`] makes a store on
//! it and [`client_env`] points a child process at it.
//!
//! moto must be installed (`pip install 'moto[server]'`); when it is not, the
//! helper panics with that instruction: tests never skip silently.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tidemark_store::{S3Options, S3Storage};

use crate::launch::{dummy_aws_credentials, dummy_aws_env};

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    child: Child,
    /// moto exits when this pipe closes, so that a server held in a static
    /// (never dropped) or left by a killed test process does not outlive it.
    _lifeline: ChildStdin,
}

/// `python3 -m moto.server ARGS`, plus two things:
/// - a thread that exits the server when its stdin closes (the test process
///   ended, however it ended);
/// - one lock around moto's request handling. moto checks `If-None-Match: *`
///   and then writes, without a lock (check-then-act), so two racing
///   conditional creates can both succeed, where S3 lets exactly one win
///   (seen with CompleteMultipartUpload, which takes milliseconds between
///   its check and its write). Serialising requests makes each operation
///   atomic, as on S3; the race tests then test the client, not moto.
const LAUNCHER: &str = "import os, sys, threading\n\
def watch():\n    sys.stdin.read()\n    os._exit(0)\n\
threading.Thread(target=watch, daemon=True).start()\n\
from moto.moto_server.werkzeug_app import DomainDispatcherApplication as App\n\
lock = threading.Lock()\n\
unlocked = App.__call__\n\
def locked(self, environ, start_response):\n    with lock:\n        return unlocked(self, environ, start_response)\n\
App.__call__ = locked\n\
from moto.server import main\n\
main(sys.argv[1:])\n";

/// How long moto may take to answer after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Moto {
    /// Starts moto on a free port and waits until it answers HTTP.
    pub fn start() -> Moto {
        let probe = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run python3 ({e}); the S3 tests need moto: pip install 'moto[server]'"
                )
            });
        assert!(
            probe.status.success(),
            "python3 cannot import moto.server; install it with: pip install 'moto[server]'\n{}",
            String::from_utf8_lossy(&probe.stderr)
        );
        // Ask the OS for a free port, then hand it to moto. Another process
        // could take it in between: retry with a new port if moto exits.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("binding a probe socket")
                .port();
            let mut child = Command::new("python3")
                .args(["-c", LAUNCHER, "-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting python3 -m moto.server");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: the port was taken, try another
                }
                if answers_http(addr) {
                    let lifeline = child.stdin.take().expect("piped stdin");
                    return Moto {
                        endpoint: format!("http://127.0.0.1:{port}"),
                        child,
                        _lifeline: lifeline,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("moto did not answer on {addr} within {READY_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("moto exited at start five times (ports taken?)");
    }
}

/// One server for the whole test binary (each test uses its own bucket).
pub fn shared() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

/// A store at `url` (`s3://bucket/prefix`) on the moto server at
/// `endpoint` (path-style), with its bucket created; the test process's
/// dummy credentials are set first ([`dummy_aws_credentials`]).
pub fn bucket(endpoint: &str, url: &str) -> S3Storage {
    dummy_aws_credentials();
    let opts = S3Options {
        endpoint: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        path_style: Some(true),
    };
    let st = S3Storage::new(url, &opts).unwrap_or_else(|e| panic!("{url}: {e:#}"));
    st.create_bucket()
        .unwrap_or_else(|e| panic!("creating the bucket of {url}: {e:#}"));
    st
}

/// What a child process (`tidemark`, a reader script) needs to reach the
/// moto server at `endpoint` through the standard AWS environment: the
/// endpoint, dummy credentials, the region, and no profile.
pub fn client_env<'a>(cmd: &'a mut Command, endpoint: &str) -> &'a mut Command {
    dummy_aws_env(cmd)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
}

/// Whether an HTTP server answers `GET /` at `addr`.
fn answers_http(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
