//! A full disk under a local output root (a small tmpfs, mounted by the
//! test: CI runs as root). Ridden out: the job warns naming the path and
//! finishes once space is freed. Given up (`[checkpoint] give_up_after`):
//! one clear error naming the path, exit 3, no panic; a restart after space
//! is freed commits exactly what an undisturbed run does.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tidemark_testkit::committed::{assert_same, read_committed};
use tidemark_testkit::datasets::generate;
use tidemark_testkit::job::{self, FAST_COMMITS};
use tidemark_testkit::{tempdir, write};

/// A tmpfs of `size` at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills `dir` until fewer than `leave` bytes are free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let ballast = dir.join("ballast");
    let mut f = std::fs::File::create(&ballast).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        let free = free_bytes(dir);
        if free < leave {
            break;
        }
        let n = (free - leave).min(chunk.len() as u64) as usize;
        if std::io::Write::write_all(&mut f, &chunk[..n.max(1)]).is_err() {
            break;
        }
    }
    ballast
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

fn replay(input: &str, out: &Path, config: &Path) -> Command {
    let mut c = job::replay_command(input, out, config, &["-w", "2", "--rate", "5000"]);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// Starts a replay onto `disk` and fills the disk once the first epoch is
/// committed: the job and the ballast file.
fn fill_mid_run(input: &str, disk: &Path, config: &Path) -> (std::process::Child, PathBuf) {
    let out = disk.join("out");
    let job = replay(input, &out, config).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(out.join("manifests")).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < deadline, "no first commit");
        std::thread::sleep(Duration::from_millis(20));
    }
    (job, fill(disk, 64 * 1024))
}

#[test]
fn a_full_disk_is_ridden_out_or_given_up_with_a_clear_error_and_a_restart_is_exact() {
    if unsafe { libc::geteuid() } != 0 {
        // Mounting a tmpfs needs root; CI runs the suite as root.
        eprintln!("needs root to mount a tmpfs: not run");
        return;
    }
    let tmp = tempdir();
    let input = generate(&tmp.join("in"), 60_000, 4, 23, 1000);
    let config = write(&tmp, "job.toml", FAST_COMMITS);
    let clean = tmp.join("clean");
    job::finish(
        replay(&input, &clean, &config).spawn().unwrap(),
        "undisturbed run",
    );
    let expected = read_committed(&clean);

    // Ridden out: the disk fills mid-run, the job warns naming the path,
    // and finishes when space is freed.
    let disk = Tmpfs::mount(&tmp.join("disk1"), "64m").expect("mounting a tmpfs as root");
    let out = disk.0.join("out");
    let (mut job, ballast) = fill_mid_run(&input, &disk.0, &config);
    let stderr = BufReader::new(job.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut warned = None;
    let mut lines = stderr.lines();
    while warned.is_none() {
        assert!(Instant::now() < deadline, "no warning about the full disk");
        let Some(Ok(l)) = lines.next() else {
            panic!("the job ended before the disk was freed: {:?}", job.wait());
        };
        if l.contains("WARN") && l.contains("No space left on device") {
            warned = Some(l);
        }
    }
    let warning = warned.unwrap();
    assert!(warning.contains(out.to_str().unwrap()), "{warning}");
    std::fs::remove_file(&ballast).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = job.wait().unwrap();
    assert!(
        status.success(),
        "exit {:?}: {}",
        status.code(),
        rest.join("\n")
    );
    assert_same(&expected, &read_committed(&out));

    // Given up: one clear error naming the path, exit 3; a restart after
    // freeing space is exact.
    let disk = Tmpfs::mount(&tmp.join("disk2"), "64m").expect("mounting a tmpfs as root");
    let out = disk.0.join("out");
    let give_up = write(
        &tmp,
        "give-up.toml",
        &format!("{FAST_COMMITS}give_up_after = \"3s\"\n"),
    );
    let (job, ballast) = fill_mid_run(&input, &disk.0, &give_up);
    let o = job.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ")
            && last.contains(out.to_str().unwrap())
            && last.contains("No space left on device"),
        "{last}"
    );
    std::fs::remove_file(&ballast).unwrap();
    job::finish(
        replay(&input, &out, &config).spawn().unwrap(),
        "restart after freeing space",
    );
    assert_same(&expected, &read_committed(&out));
}
