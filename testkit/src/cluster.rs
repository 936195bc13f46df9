//! The cluster launcher: one job as several real processes over loopback,
//! joined by a hostfile (`-n`, `-p`, `-h`), as `scripts/cluster` runs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::job::finish;

/// A hostfile of `n` free loopback ports in `dir` (`hosts-<n>.txt`).
pub fn hostfile(dir: &Path, n: usize) -> PathBuf {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let hosts: Vec<String> = listeners
        .iter()
        .map(|l| format!("127.0.0.1:{}\n", l.local_addr().unwrap().port()))
        .collect();
    let path = dir.join(format!("hosts-{n}.txt"));
    std::fs::write(&path, hosts.concat()).unwrap();
    path
}

/// Runs one job as `processes` processes of `workers` workers each, with a
/// hostfile in `dir`: `command(cluster_args)` is process i's command, to
/// which `cluster_args` (`-w W -n N -p i -h HOSTFILE`) are to be added.
/// Waits for all; each must exit 0 (its stderr, when piped, is reported).
pub fn run(dir: &Path, processes: usize, workers: usize, command: impl Fn(&[&str]) -> Command) {
    let hostfile = hostfile(dir, processes);
    let (w, n) = (workers.to_string(), processes.to_string());
    let children: Vec<Child> = (0..processes)
        .map(|i| {
            let p = i.to_string();
            command(&[
                "-w",
                &w,
                "-n",
                &n,
                "-p",
                &p,
                "-h",
                hostfile.to_str().unwrap(),
            ])
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        finish(c, &format!("process {i}"));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hostfile_names_n_distinct_loopback_ports() {
        let dir = crate::tempdir();
        let path = super::hostfile(&dir, 3);
        assert_eq!(path, dir.join("hosts-3.txt"));
        let text = std::fs::read_to_string(&path).unwrap();
        let hosts: std::collections::BTreeSet<&str> = text.lines().collect();
        assert_eq!(hosts.len(), 3, "{text}");
        assert!(hosts.iter().all(|h| h.starts_with("127.0.0.1:")), "{text}");
    }
}
