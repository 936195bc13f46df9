//! A thread that takes work from the committer without ever blocking it:
//! Kafka calls block for tens of seconds when brokers are down, and worker
//! threads must keep the dataflow moving.

use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

pub struct Background<T> {
    tx: Mutex<Option<mpsc::Sender<T>>>,
    done: Mutex<mpsc::Receiver<()>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    name: String,
}

impl<T: Send + 'static> Background<T> {
    /// Runs `work` on every batch of items sent (all those waiting, in
    /// order) until [`Background::finish`].
    pub fn start(name: &str, mut work: impl FnMut(Vec<T>) + Send + 'static) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<T>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut items = vec![first];
                    items.extend(rx.try_iter());
                    work(items);
                }
                let _ = done_tx.send(());
            })
            .with_context(|| format!("starting the {name} thread"))?;
        Ok(Background {
            tx: Mutex::new(Some(tx)),
            done: Mutex::new(done),
            thread: Mutex::new(Some(thread)),
            name: name.to_owned(),
        })
    }

    pub fn send(&self, item: T) {
        if let Some(tx) = self.tx.lock().unwrap().as_ref() {
            let _ = tx.send(item);
        }
    }

    /// Lets the work sent so far finish, waiting at most `wait`.
    pub fn finish(&self, wait: Duration) {
        self.tx.lock().unwrap().take();
        if self.done.lock().unwrap().recv_timeout(wait).is_ok() {
            if let Some(t) = self.thread.lock().unwrap().take() {
                let _ = t.join();
            }
        } else {
            tracing::warn!(thread = %self.name, "background work did not finish in time; the next start resumes it");
        }
    }
}
