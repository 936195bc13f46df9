//! Cluster flags (timely's meanings) and the timely configuration built from
//! them. We build `CommunicationConfig` ourselves so `-w/--workers` and
//! timely's `--threads` spelling coexist with the rest of the CLI.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use timely::{CommunicationConfig, WorkerConfig};

use crate::config::ClusterSection;

#[derive(Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Worker threads per process.
    #[arg(short = 'w', long = "workers", visible_alias = "threads")]
    pub workers: Option<usize>,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long = "processes")]
    pub processes: Option<usize>,
    /// This process's index, 0 to n-1.
    #[arg(short = 'p', long = "process")]
    pub process: Option<usize>,
    /// File of "host:port" lines, one per process in index order.
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
}

pub fn timely_config(args: &ClusterArgs, file: &ClusterSection) -> Result<timely::Config> {
    let workers = args.workers.or(file.workers).unwrap_or(1);
    let processes = args.processes.or(file.processes).unwrap_or(1);
    let process = args.process.or(file.process).unwrap_or(0);
    if workers == 0 {
        bail!("--workers (cluster.workers) must be at least 1");
    }
    if processes == 0 {
        bail!("--processes (cluster.processes) must be at least 1");
    }
    if process >= processes {
        bail!(
            "--process {process} is out of range: with --processes {processes} use 0 to {}",
            processes - 1
        );
    }
    let communication = if processes == 1 {
        if workers == 1 {
            CommunicationConfig::Thread
        } else {
            CommunicationConfig::Process(workers)
        }
    } else {
        let addresses = match args.hostfile.as_ref().or(file.hostfile.as_ref()) {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("reading hostfile {} (--hostfile / cluster.hostfile): create it with one host:port per process", path.display())
                })?;
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect()
            }
            None if !file.hosts.is_empty() => file.hosts.clone(),
            None => (0..processes)
                .map(|i| format!("localhost:{}", 2101 + i))
                .collect::<Vec<_>>(),
        };
        if addresses.len() < processes {
            bail!(
                "the hostfile lists {} addresses but --processes is {processes}: list one host:port per process",
                addresses.len()
            );
        }
        CommunicationConfig::Cluster {
            threads: workers,
            process,
            addresses,
            report: false,
            zerocopy: false,
        }
    };
    Ok(timely::Config {
        communication,
        worker: WorkerConfig::default(),
    })
}

/// The number of processes of the cluster.
pub fn processes(cfg: &timely::Config) -> usize {
    match &cfg.communication {
        CommunicationConfig::Cluster { addresses, .. } => addresses.len(),
        _ => 1,
    }
}

/// Each process's `host:port` (none for a single process).
pub fn addresses(cfg: &timely::Config) -> Vec<String> {
    match &cfg.communication {
        CommunicationConfig::Cluster { addresses, .. } => addresses.clone(),
        _ => Vec::new(),
    }
}

/// Total workers and this process's index, from a timely configuration.
pub fn shape(cfg: &timely::Config) -> (usize, usize) {
    match &cfg.communication {
        CommunicationConfig::Thread => (1, 0),
        CommunicationConfig::Process(n) | CommunicationConfig::ProcessBinary(n) => (*n, 0),
        CommunicationConfig::Cluster {
            threads,
            process,
            addresses,
            ..
        } => (threads * addresses.len(), *process),
    }
}
