//! A tansu broker (Kafka protocol) for the tests: sqlite storage in a temp
//! dir, a free loopback port, started by PID and killed on drop. Each test
//! starts its own (ready in well under a second), so a test that kills its
//! broker disturbs no other.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::fault_proxy::FaultProxy;
use crate::launch::{free_port, spawn_listening, tool};

/// `TANSU_BIN`, else `$TIDEMARK_TOOLS/tansu/bin/tansu` (default
/// `$HOME/.cache/tidemark-tools`). Missing: the test fails, never skips.
pub fn binary() -> PathBuf {
    tool(
        "the tansu broker",
        "TANSU_BIN",
        "tansu/bin/tansu",
        "scripts/tansu-install",
    )
}

/// A running broker.
pub struct Tansu {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    /// Where clients are told to connect (metadata), when not `port`.
    advertised: Option<SocketAddr>,
    child: Option<Child>,
}

impl Tansu {
    pub fn start() -> Tansu {
        Self::start_new(false).0
    }

    /// A broker every client reaches through a [`FaultProxy`]: it
    /// advertises the proxy's address, so the connections a client opens
    /// after bootstrap (to the partition leaders) pass the proxy too, and a
    /// fault there is an outage of the whole broker. [`Self::brokers`] is the
    /// proxy's address; topics are created on the broker's own port.
    pub fn start_behind_proxy() -> (Tansu, FaultProxy) {
        let (t, p) = Self::start_new(true);
        (t, p.expect("started behind a proxy"))
    }

    fn start_new(behind_proxy: bool) -> (Tansu, Option<FaultProxy>) {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tidemark-tansu-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = Tansu {
            bin: binary(),
            dir,
            port: 0,
            advertised: None,
            child: None,
        };
        // The port may be taken between probing and binding: try a few.
        for _ in 0..5 {
            t.port = free_port();
            let proxy =
                behind_proxy.then(|| FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], t.port))));
            t.advertised = proxy.as_ref().map(FaultProxy::addr);
            if t.launch() {
                return (t, proxy);
            }
        }
        panic!("tansu did not start; see {}", t.log().display());
    }

    pub fn brokers(&self) -> String {
        match self.advertised {
            Some(a) => a.to_string(),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("tansu.log")
    }

    /// Starts the broker on `self.port`; true once it accepts connections.
    fn launch(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(self.url())
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{}", self.brokers()))
            // tansu reads `sqlite:///abs/path` as relative to its working
            // directory: run it in the temp dir with a relative path.
            .arg("--storage-engine")
            .arg("sqlite://tansu.db")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        match spawn_listening(&mut cmd, self.port, "tansu") {
            Some(child) => {
                self.child = Some(child);
                true
            }
            None => false,
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the broker hangs — connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`pause`](Self::pause): it answers again, state intact.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("tansu is running").id();
        assert_eq!(
            unsafe { libc::kill(pid as libc::pid_t, sig) },
            0,
            "kill({pid}, {sig})"
        );
    }

    /// Same sqlite file, same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.launch() {
            assert!(
                Instant::now() < deadline,
                "tansu did not restart on port {}; see {}",
                self.port,
                self.log().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.create_topic_with(name, partitions, &[]);
    }

    /// With topic configs such as `cleanup.policy=compact`.
    pub fn create_topic_with(&self, name: &str, partitions: u32, configs: &[&str]) {
        let mut c = Command::new(&self.bin);
        c.args(["topic", "create", "--broker", &self.url(), "--partitions"])
            .arg(partitions.to_string());
        for config in configs {
            c.args(["--config", config]);
        }
        let out = c.arg(name).output().expect("running tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        // A paused broker cannot die of SIGKILL until it runs again.
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
