//! A TCP proxy in front of a test server that can cut one connection in the
//! middle of a response, to test how clients resume interrupted reads.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A running proxy (its threads live as long as the test process).
pub struct CutProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    /// Cut the next connection whose response passes this many bytes.
    cut_at: Mutex<Option<u64>>,
    /// After a cut, hold requests (unforwarded) until released.
    hold_after_cut: Mutex<bool>,
    held: Mutex<bool>,
    released: Condvar,
    cuts: AtomicU64,
}

impl CutProxy {
    /// Forwards `127.0.0.1:<new port>` to `target`.
    pub fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let st = st.clone();
                std::thread::spawn(move || forward(client, server, st));
            }
        });
        CutProxy { endpoint, state }
    }

    /// Cuts the next connection whose response passes `bytes` bytes; with
    /// `hold`, requests sent after the cut wait for [`Self::release`].
    pub fn cut_once_after(&self, bytes: u64, hold: bool) {
        *self.state.hold_after_cut.lock().unwrap() = hold;
        *self.state.cut_at.lock().unwrap() = Some(bytes);
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.state.cuts.load(Ordering::SeqCst)
    }

    /// Waits until a connection has been cut.
    pub fn wait_for_cut(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.cuts() == 0 {
            assert!(Instant::now() < deadline, "no connection was cut");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets held connections through.
    pub fn release(&self) {
        *self.state.held.lock().unwrap() = false;
        self.state.released.notify_all();
    }
}

impl State {
    fn wait_while_held(&self) {
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.released.wait(held).unwrap();
        }
    }
}

fn forward(client: TcpStream, server: TcpStream, st: Arc<State>) {
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = st.clone();
    std::thread::spawn(move || {
        // Requests wait while the proxy holds (also on connections opened
        // before the cut, such as ones a client pool keeps ready).
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match c_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            up.wait_while_held();
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent: u64 = 0;
    loop {
        let n = match s_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if c_write.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        let mut cut_at = st.cut_at.lock().unwrap();
        if cut_at.is_some_and(|at| sent >= at) {
            *cut_at = None;
            if *st.hold_after_cut.lock().unwrap() {
                *st.held.lock().unwrap() = true;
            }
            st.cuts.fetch_add(1, Ordering::SeqCst);
            let _ = c_write.shutdown(Shutdown::Both);
            let _ = s_read.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = c_write.shutdown(Shutdown::Write);
}
