//! SIGTERM and SIGINT. The first asks the job to stop: the next commit
//! boundary the frontier passes commits at once (without waiting for
//! `min_wall_interval`), open windows stay in its snapshot unflushed, and
//! the process exits 0. In a cluster the request travels through the
//! dataflow (`tidemark_dataflow::stop`): signalling any one process stops
//! every process, each of which sets its own stop flag when it learns of
//! it. A second signal to the same process ends it at once; either way a
//! restart resumes from the last commit, exactly once.
//!
//! Sources keep reading until then: holding them at a boundary above their
//! watermarks would mark records they have not read yet as committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};

/// Installs the handlers. The returned flag turns true at the first
/// signal, or when the job sets it (a stop requested on another process);
/// `job.stop_timeout` counts from then.
pub fn install(timeout: Duration) -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    // Signals to this process only: a stop learned from another process
    // does not make this process's first signal its second.
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        // Registered first, so it sees the flag as it was before this
        // signal: set means this is the second one.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, signalled.clone())
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, signalled.clone())
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let watched = stop.clone();
    std::thread::Builder::new()
        .name("stop-timeout".into())
        .spawn(move || {
            while !watched.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            tracing::info!(
                timeout_ms = timeout.as_millis() as u64,
                "stop requested: committing the current epoch, then exiting (a second signal exits at once)"
            );
            std::thread::sleep(timeout);
            eprintln!(
                "error: the job did not commit within job.stop_timeout ({timeout:?}) of the stop signal; \
                 exiting without it (a restart resumes from the last commit)"
            );
            std::process::exit(crate::exit::STOP_TIMEOUT_OR_DAMAGE.into());
        })
        .context("starting the stop watcher")?;
    Ok(stop)
}
