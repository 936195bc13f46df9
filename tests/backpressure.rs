//! Back-pressure (`[checkpoint] max_pending_epochs` and
//! `max_pending_bytes`): while S3 hangs (moto behind a fault proxy), the
//! job's sources stop reading within the bound, the bytes waiting for
//! storage stay within the byte bound plus one epoch, and the metrics say
//! which bound holds them; once S3 is back the waiting epochs commit and
//! the outputs equal the independent reference's exactly.

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_checkpoint::manifest::{list_manifests, load};
use tidemark_checkpoint::storage::Storage;
use tidemark_testkit::committed::{assert_same, download, manifests, read_committed};
use tidemark_testkit::datasets::{generate, jsonl_files};
use tidemark_testkit::fault_proxy::{FaultProxy, Mode};
use tidemark_testkit::reference::{self, RefParams};
use tidemark_testkit::scrape::{get, scrape, sum, Sample};
use tidemark_testkit::{free_port, job, moto, tempdir};

/// Events per second of event time in the inputs, and read per second of
/// wall time (`--rate`): three seconds of event time a second, so a run
/// is still reading long after the outage begins.
const EVENTS_PER_SEC: u64 = 1000;
const RATE: u64 = 3000;
const EVENTS: u64 = 30_000;
/// How long S3 hangs.
const OUTAGE: Duration = Duration::from_secs(8);

/// What was seen of a run whose S3 hung for [`OUTAGE`].
struct Seen {
    /// Records read when the outage began, and (time into the outage,
    /// records read) every 100 ms of it.
    read_at_hang: f64,
    read: Vec<(Duration, f64)>,
    /// The largest `tidemark_backpressure_pending_bytes` scraped.
    max_pending: f64,
    /// The last scrape of the outage.
    last: Vec<Sample>,
    /// The largest epoch committed (files and state snapshots), bytes.
    largest_epoch: u64,
}

impl Seen {
    /// Records read during the outage.
    fn read_during(&self) -> f64 {
        self.read.last().map_or(0.0, |r| r.1) - self.read_at_hang
    }

    /// Records read in the outage's second half: none, once paused.
    fn read_late(&self) -> f64 {
        let half = self
            .read
            .iter()
            .find(|(at, _)| *at >= OUTAGE / 2)
            .map_or(0.0, |r| r.1);
        self.read.last().map_or(0.0, |r| r.1) - half
    }

    fn paused(&self, bound: &str) -> f64 {
        sum(
            &self.last,
            "tidemark_backpressure_paused",
            &[("bound", bound)],
        )
    }
}

/// Replays [`EVENTS`] to `s3://<bucket>/out` through a fault proxy with
/// `bounds` in `[checkpoint]` (epochs of one second of event time, no
/// wall-time floor); after two commits S3 hangs for [`OUTAGE`], watched
/// through the metrics endpoint, then comes back. The job must end with
/// exit 0 and exactly the reference's outputs.
fn ride_out_a_hang(bucket: &str, bounds: &str) -> Seen {
    let moto_endpoint = moto::shared().endpoint.clone();
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), EVENTS, 4, 21, EVENTS_PER_SEC);
    let port = free_port();
    let config = tidemark_testkit::write(
        &tmp,
        "job.toml",
        &format!(
            "{}{bounds}\n[metrics]\nport = \"{port}\"\naddress = \"127.0.0.1\"\n",
            job::FAST_COMMITS
        ),
    );
    let url = format!("s3://{bucket}/out");
    let st: Arc<dyn Storage> = Arc::new(moto::bucket(&moto_endpoint, &url));
    let proxy = FaultProxy::start(
        moto_endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("moto listens on an IP address"),
    );
    let rate = RATE.to_string();
    let log = tmp.join("stderr.log");
    let mut cmd = job::command(&["replay", "--input", &input, "--output", &url]);
    cmd.args([
        "--config",
        config.to_str().unwrap(),
        "-w",
        "2",
        "--rate",
        &rate,
    ])
    // Its log goes to a file: nothing has to drain it during the outage.
    .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    moto::client_env(&mut cmd, &proxy.endpoint());
    let mut child = cmd.spawn().unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while manifests(&*st) < 2 || get(port, "/metrics").is_none() {
        assert_running(&mut child, "before the outage", &log);
        assert!(Instant::now() < deadline, "no two commits in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.set(Mode::Hang);
    let away = Instant::now();
    let records = |s: &[Sample]| sum(s, "tidemark_records_read_total", &[]);
    let pending = |s: &[Sample]| sum(s, "tidemark_backpressure_pending_bytes", &[]);
    let first = scrape(port);
    let mut seen = Seen {
        read_at_hang: records(&first),
        read: Vec::new(),
        max_pending: pending(&first),
        last: first,
        largest_epoch: 0,
    };
    while away.elapsed() < OUTAGE {
        assert_running(&mut child, "during the outage", &log);
        let s = scrape(port);
        seen.read.push((away.elapsed(), records(&s)));
        seen.max_pending = seen.max_pending.max(pending(&s));
        seen.last = s;
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.heal();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the replay after the outage: {status}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    seen.largest_epoch = list_manifests(&*st)
        .unwrap()
        .into_iter()
        .map(|e| {
            let m = load(&*st, e).unwrap();
            m.files.iter().map(|f| f.bytes).sum::<u64>()
                + m.job.state.iter().map(|s| s.bytes).sum::<u64>()
        })
        .max()
        .unwrap_or(0);
    let local = tmp.join("downloaded");
    download(&*st, &local);
    job::verify_ok(&local);
    let expected = reference::compute(&jsonl_files(&tmp.join("in")), &RefParams::default());
    assert_same(&expected, &read_committed(&local));
    eprintln!(
        "{bucket}: {} records read during the outage ({} in its second half), \
         at most {} bytes pending, largest epoch {} bytes",
        seen.read_during(),
        seen.read_late(),
        seen.max_pending,
        seen.largest_epoch
    );
    seen
}

fn assert_running(child: &mut Child, when: &str, log: &std::path::Path) {
    if let Some(status) = child.try_wait().unwrap() {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        panic!("the job ended {when}: {status}: {log}");
    }
}

/// Two epochs of one second: the sources stop within three seconds of
/// event time past the first epoch that cannot be written (that epoch and
/// the two pending), plus what one poll of every partition reads.
#[test]
fn the_epoch_bound_stops_reading_while_s3_hangs() {
    let seen = ride_out_a_hang(
        "tm-bp-epochs",
        "max_pending_epochs = 2\nmax_pending_bytes = \"1GiB\"\n",
    );
    // Event time past the stuck epoch: the epoch itself, two pending, and
    // one more tick while the probe catches up with the capability.
    let bound = (2 + 2) * EVENTS_PER_SEC + 4 * 1024;
    assert!(
        seen.read_during() <= bound as f64,
        "{} records read during the outage; the bound allows {bound}",
        seen.read_during()
    );
    assert_eq!(seen.read_late(), 0.0, "still reading late in the outage");
    assert_eq!(seen.paused("epochs"), 1.0, "not paused for the epoch bound");
}

/// One MiB and no epoch bound to speak of: the sources stop once the
/// finished epochs waiting for S3 hold more than a MiB, so what waits
/// never passes the bound by more than one epoch.
#[test]
fn the_byte_bound_stops_reading_while_s3_hangs() {
    let seen = ride_out_a_hang(
        "tm-bp-bytes",
        "max_pending_epochs = 1000\nmax_pending_bytes = \"1MiB\"\n",
    );
    assert!(seen.read_during() < (EVENTS / 2) as f64);
    assert_eq!(seen.read_late(), 0.0, "still reading late in the outage");
    assert_eq!(seen.paused("bytes"), 1.0, "not paused for the byte bound");
    assert!(
        seen.max_pending <= ((1 << 20) + seen.largest_epoch) as f64,
        "{} bytes pending: more than a MiB and one epoch ({} bytes)",
        seen.max_pending,
        seen.largest_epoch
    );
}
