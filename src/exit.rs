//! How `tidemark` ends: the exit codes, and how an error or a panic becomes
//! one. The table is in the README; a supervisor can act on the code alone
//! (restart on 3 and 6, page a person on 4 and 5).

use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

use tidemark_checkpoint::committer::CommitFailure;
use tidemark_checkpoint::writer::WriteFailure;
use tidemark_dataflow::source::SourceFailure;
use tidemark_protocol::resume::Refusal;

// 0: the input ended and everything is committed, or the job stopped on
// request (a signal to any one process stops every process: after a
// commit, or with nothing new to commit).
/// A stop request found no commit within `job.stop_timeout`; `verify`
/// found damage.
pub const STOP_TIMEOUT_OR_DAMAGE: u8 = 1;
/// Bad configuration or command line, or an input or source that failed,
/// e.g. a truncated gzip file ([`SourceFailure`]: one line naming the file
/// and the cause; what was committed before stays, and a restart resumes
/// from the last commit).
pub const FAILED: u8 = 2;
/// Storage kept failing: a commit could not be made. Nothing committed is
/// lost; a restart resumes from the last commit.
pub const STORAGE_GAVE_UP: u8 = 3;
/// Another job extended the output root's commit log: two jobs share one
/// root. Restarting would fence the other job out in turn.
pub const FENCED: u8 = 4;
/// The root holds commits of another configuration or other inputs.
pub const RESUME_REFUSED: u8 = 5;
/// A process of the cluster went away; every process must restart.
pub const LOST_PEER: u8 = 6;
/// A bug: a panic.
pub const PANIC: u8 = 101;

/// The exit code of a command that failed.
pub fn code_of(e: &anyhow::Error) -> ExitCode {
    for c in e.chain() {
        if let Some(f) = c.downcast_ref::<CommitFailure>() {
            return ExitCode::from(match f {
                CommitFailure::Conflict { .. } => FENCED,
                CommitFailure::GaveUp { .. } => STORAGE_GAVE_UP,
            });
        }
        if c.is::<WriteFailure>() {
            return ExitCode::from(STORAGE_GAVE_UP);
        }
        if c.is::<Refusal>() {
            return ExitCode::from(RESUME_REFUSED);
        }
        if c.is::<SourceFailure>() {
            return ExitCode::from(FAILED);
        }
    }
    ExitCode::from(FAILED)
}

/// This process's place in its cluster, for naming a lost peer.
struct Cluster {
    process: usize,
    addresses: Vec<String>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
/// How many commits are in flight on this process's committer thread.
type InFlight = Box<dyn Fn() -> usize + Send + Sync>;
static IN_FLIGHT: OnceLock<InFlight> = OnceLock::new();
/// How long a lost peer's line waits for commits in flight, so that it
/// names the epoch a restart resumes from.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);
/// The newest committed epoch this process knows of (`i64::MIN`: none).
static LAST_EPOCH: AtomicI64 = AtomicI64::new(i64::MIN);

/// Records the cluster's addresses (one per process) and this process's index.
pub fn set_cluster(process: usize, addresses: Vec<String>) {
    let _ = CLUSTER.set(Cluster { process, addresses });
}

/// Tells how many commits are in flight (process 0: manifests handed to
/// the committer thread and not yet committed or failed).
pub fn set_in_flight(f: impl Fn() -> usize + Send + Sync + 'static) {
    let _ = IN_FLIGHT.set(Box::new(f));
}

/// Waits up to `limit` for the commits in flight; whether none is left.
fn settle(limit: std::time::Duration) -> bool {
    let Some(in_flight) = IN_FLIGHT.get() else {
        return true;
    };
    let deadline = std::time::Instant::now() + limit;
    while in_flight() > 0 {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

/// Records a committed epoch (at start, the one resumed from; on process 0,
/// each commit).
pub fn committed(epoch: i64) {
    LAST_EPOCH.fetch_max(epoch, Ordering::Relaxed);
}

/// A panicking worker would leave its peers waiting forever: the process
/// ends, so a supervisor sees the failure and the next start resumes from
/// the last commit. A panic of timely's connection threads is not a bug but
/// a peer that went away: it is named in one line, without a backtrace.
pub fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(line) = lost_peer(info) {
            eprintln!("error: {line}");
            std::process::exit(LOST_PEER.into());
        }
        default_hook(info);
        std::process::exit(PANIC.into());
    }));
}

/// The line naming the peer a connection thread lost, if this panic is one.
fn lost_peer(info: &std::panic::PanicHookInfo) -> Option<String> {
    let thread = std::thread::current();
    // timely names them `timely:send-<process>` and `timely:recv-<process>`.
    let remote: usize = thread
        .name()?
        .strip_prefix("timely:")?
        .split_once('-')?
        .1
        .parse()
        .ok()?;
    let cause = info
        .payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())
        .unwrap_or("");
    // A commit the committer thread is making now still counts: the peer
    // is gone, but the epoch is complete. Waiting for it makes the line
    // name the epoch a restart resumes from.
    let settled = settle(SETTLE);
    Some(lost_peer_line(remote, cause, settled))
}

/// `settled`: no commit of this process is in flight, so the last epoch
/// it committed is the one a restart resumes from (on process 0, which
/// commits).
fn lost_peer_line(remote: usize, cause: &str, settled: bool) -> String {
    let cluster = CLUSTER.get();
    let address = cluster
        .and_then(|c| c.addresses.get(remote))
        .map_or_else(String::new, |a| format!(" ({a})"));
    let epoch = LAST_EPOCH.load(Ordering::Relaxed);
    let exact = settled && cluster.is_some_and(|c| c.process == 0);
    // Only process 0 commits, so only it knows the last epoch exactly; the
    // others know the one they resumed from.
    let resume = match (epoch, exact) {
        (i64::MIN, true) => "from the start (nothing was committed)".to_owned(),
        (i64::MIN, false) => "from the last commit".to_owned(),
        (e, true) => format!("from epoch {e}"),
        (e, false) => format!("from the last committed epoch ({e} or later)"),
    };
    format!(
        "process {remote}{address} went away ({cause}); restart every process to resume {resume}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use std::sync::Arc;

    #[test]
    fn each_failure_has_its_own_code_wherever_it_is_in_the_chain() {
        let conflict = CommitFailure::Conflict {
            root: "local:/out".into(),
            seq: 7,
            epoch: 1_700_000_010_000,
        };
        let e = anyhow::Error::new(conflict.clone());
        assert_eq!(code_of(&e), ExitCode::from(FENCED));
        // What `main` prints: `error: <root>: <why>`, nothing added.
        assert_eq!(
            format!("error: {e:#}"),
            "error: local:/out: commit 7 (epoch 1700000010000) was already made by another job \
             writing to the same output root: two jobs are using one output root; this one \
             stops without committing"
        );
        let wrapped = Err::<(), _>(conflict)
            .context("running the job")
            .unwrap_err();
        assert_eq!(code_of(&wrapped), ExitCode::from(FENCED));

        let gave_up = anyhow::Error::new(CommitFailure::GaveUp {
            root: "s3://b/p".into(),
            epoch: 5000,
            attempts: 5,
            error: Arc::new(anyhow::anyhow!("timeout").context("PutObject _commits/x")),
        });
        assert_eq!(code_of(&gave_up), ExitCode::from(STORAGE_GAVE_UP));
        let write = WriteFailure::GaveUp {
            root: "s3://b/p".into(),
            key: "state/x.bin".into(),
            epoch: Some(5000),
            attempts: 9,
            error: Arc::new(anyhow::anyhow!("timeout")),
        };
        let e = Err::<(), _>(write).context("running the job").unwrap_err();
        assert_eq!(code_of(&e), ExitCode::from(STORAGE_GAVE_UP));
        assert_eq!(
            format!("error: {gave_up:#}"),
            "error: s3://b/p: PutObject _commits/x: timeout"
        );

        let refused = Err::<(), _>(Refusal::ConfigUnrecorded { epoch: 5000 })
            .context("opening the output root")
            .unwrap_err();
        assert_eq!(code_of(&refused), ExitCode::from(RESUME_REFUSED));

        let source = Err::<(), _>(SourceFailure {
            partition: 2,
            what: "reading in/part-00002.jsonl.gz: incomplete deflate stream".into(),
        })
        .context("worker 1")
        .unwrap_err();
        assert_eq!(code_of(&source), ExitCode::from(FAILED));
        let source = anyhow::Error::new(SourceFailure {
            partition: 2,
            what: "reading in/part-00002.jsonl.gz: incomplete deflate stream".into(),
        });
        assert_eq!(
            format!("error: {source:#}"),
            "error: input partition 2: reading in/part-00002.jsonl.gz: incomplete deflate stream"
        );
        let reference = anyhow::Error::new(SourceFailure {
            partition: tidemark_dataflow::source::REFERENCE_BASE + 1,
            what: "reading m/b.jsonl: Is a directory (os error 21)".into(),
        });
        assert_eq!(
            format!("{reference:#}"),
            "reference input partition 1: reading m/b.jsonl: Is a directory (os error 21)"
        );

        assert_eq!(
            code_of(&anyhow::anyhow!("bad config")),
            ExitCode::from(FAILED)
        );
    }

    #[test]
    fn a_lost_peer_is_named_with_its_address_and_where_to_resume() {
        // Not process 0 (or not known to be): it does not see the commits.
        assert_eq!(
            lost_peer_line(0, "socket closed", true),
            "process 0 went away (socket closed); restart every process to resume from the last commit"
        );
        set_cluster(0, vec!["127.0.0.1:2100".into(), "127.0.0.1:2101".into()]);
        committed(60_000);
        committed(50_000);
        assert_eq!(
            lost_peer_line(1, "timely communication error: reading data: socket closed", true),
            "process 1 (127.0.0.1:2101) went away (timely communication error: reading data: socket closed); \
             restart every process to resume from epoch 60000"
        );
        // A commit still in flight after the wait: the epoch is a floor.
        assert!(lost_peer_line(1, "socket closed", true).ends_with("resume from epoch 60000"));
        assert!(lost_peer_line(1, "socket closed", false)
            .ends_with("resume from the last committed epoch (60000 or later)"));
    }
}
