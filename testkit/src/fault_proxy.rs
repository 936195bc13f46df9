//! A fault-injecting TCP proxy between the job and a test server (moto,
//! tansu, kinesalite): pass, hang, refuse, reset or delay, per direction,
//! switched at any moment; and, for HTTP servers, answer a share of
//! requests with `503 SlowDown` without forwarding them.
//!
//! - **Hang**: connections stay open and nothing is forwarded (in that
//!   direction); new connections are accepted and hang too. What a frozen
//!   server or a black-holed network looks like.
//! - **Refuse**: the listening port is closed (connects get RST) and open
//!   connections are reset. What a dead server looks like.
//! - **Reset**: new and open connections are reset (RST) as soon as they
//!   carry a byte.
//! - **Delay**: every chunk waits before it is forwarded.
//!
//! Faults apply to bytes not yet forwarded, so a fault switched on in the
//! middle of a response stops it there.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What the proxy does with bytes in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Hang,
    Reset,
    Delay(Duration),
}

/// Which way bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server (requests).
    Up,
    /// Server to client (responses).
    Down,
}

#[derive(Debug)]
struct Modes {
    up: Mode,
    down: Mode,
    refusing: bool,
    /// Answer this many of every 1000 HTTP requests with 503 SlowDown.
    slow_down_per_mille: u64,
}

struct State {
    modes: Mutex<Modes>,
    changed: Condvar,
    requests: AtomicU64,
    slowed: AtomicU64,
    connections: AtomicU64,
    /// Both ends of every open connection, to reset them on command.
    open: Mutex<Vec<TcpStream>>,
}

impl State {
    fn reset_open(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            reset(&s);
        }
    }
}

/// A running proxy (its threads live as long as the test process).
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<State>,
    listener: Mutex<Option<Arc<TcpListener>>>,
    /// Disconnected once the accept thread has ended (the port is closed).
    accepting: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl FaultProxy {
    /// Forwards `127.0.0.1:<new port>` to `target`, passing everything.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let addr = listener.local_addr().unwrap();
        let p = FaultProxy {
            addr,
            target,
            state: Arc::new(State {
                modes: Mutex::new(Modes {
                    up: Mode::Pass,
                    down: Mode::Pass,
                    refusing: false,
                    slow_down_per_mille: 0,
                }),
                changed: Condvar::new(),
                requests: AtomicU64::new(0),
                slowed: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                open: Mutex::new(Vec::new()),
            }),
            listener: Mutex::new(None),
            accepting: Mutex::new(None),
        };
        p.listen(listener);
        p
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets both directions.
    pub fn set(&self, mode: Mode) {
        self.set_direction(Direction::Up, mode);
        self.set_direction(Direction::Down, mode);
    }

    /// Sets one direction.
    pub fn set_direction(&self, d: Direction, mode: Mode) {
        let mut m = self.state.modes.lock().unwrap();
        match d {
            Direction::Up => m.up = mode,
            Direction::Down => m.down = mode,
        }
        self.state.changed.notify_all();
        drop(m);
        if mode == Mode::Reset {
            self.state.reset_open();
        }
    }

    /// Refuses connections (closes the port, resets open connections) until
    /// [`Self::accept`].
    pub fn refuse(&self) {
        self.state.modes.lock().unwrap().refusing = true;
        self.state.changed.notify_all();
        self.state.reset_open();
        // Dropping the last handle of the listener closes the port; the
        // accept thread holds one until its blocked accept returns, so wake
        // it with a connection of our own.
        if let Some(l) = self.listener.lock().unwrap().take() {
            drop(l);
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
            // The port is closed once the accept thread has let go of it.
            if let Some(ended) = self.accepting.lock().unwrap().take() {
                let _ = ended.recv_timeout(Duration::from_secs(5));
            }
        }
    }

    /// Accepts connections again on the same port, passing everything.
    pub fn accept(&self) {
        {
            let mut m = self.state.modes.lock().unwrap();
            m.refusing = false;
            m.up = Mode::Pass;
            m.down = Mode::Pass;
        }
        self.state.changed.notify_all();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("rebinding the proxy on {}: {e}", self.addr),
            }
        };
        self.listen(listener);
    }

    /// Passes everything again (after hang, reset or delay).
    pub fn heal(&self) {
        self.set(Mode::Pass);
    }

    /// Answers `share` (0.0–1.0) of HTTP requests with `503 SlowDown`
    /// (S3's throttling answer) instead of forwarding them, each request
    /// drawn independently from a fixed sequence so runs repeat.
    pub fn slow_down(&self, share: f64) {
        self.state.modes.lock().unwrap().slow_down_per_mille = (share * 1000.0).round() as u64;
    }

    /// HTTP requests seen, and how many were answered with 503.
    pub fn http_counts(&self) -> (u64, u64) {
        (
            self.state.requests.load(Ordering::SeqCst),
            self.state.slowed.load(Ordering::SeqCst),
        )
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    fn listen(&self, listener: TcpListener) {
        let listener = Arc::new(listener);
        *self.listener.lock().unwrap() = Some(listener.clone());
        let (alive, ended) = std::sync::mpsc::channel::<()>();
        *self.accepting.lock().unwrap() = Some(ended);
        let (st, target) = (self.state.clone(), self.target);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if st.modes.lock().unwrap().refusing {
                    reset(&client);
                    break;
                }
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                std::thread::spawn(move || connect(client, target, st));
            }
            // The port closes with the last handle; then `refuse` may return.
            drop(listener);
            drop(alive);
        });
    }
}

/// Closes with RST rather than FIN.
fn reset(s: &TcpStream) {
    let _ = socket_linger_zero(s);
    let _ = s.shutdown(Shutdown::Both);
}

fn socket_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this process owns, with a valid struct.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn connect(client: TcpStream, target: SocketAddr, st: Arc<State>) {
    let Ok(server) = TcpStream::connect(target) else {
        reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    {
        let mut open = st.open.lock().unwrap();
        open.retain(|s| s.peer_addr().is_ok());
        open.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
    }
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let st2 = st.clone();
    let up = std::thread::spawn(move || pump_requests(client, server, st2));
    pump(s2, c2, Direction::Down, &st);
    let _ = up.join();
}

/// Waits while this direction hangs; false when the connection must end
/// (reset or refused).
fn wait_to_forward(d: Direction, st: &State) -> Option<Duration> {
    let mut m = st.modes.lock().unwrap();
    loop {
        if m.refusing {
            return None;
        }
        let mode = match d {
            Direction::Up => m.up,
            Direction::Down => m.down,
        };
        match mode {
            Mode::Pass => return Some(Duration::ZERO),
            Mode::Delay(t) => return Some(t),
            Mode::Reset => return None,
            Mode::Hang => m = st.changed.wait(m).unwrap(),
        }
    }
}

/// Forwards `from` → `to` under the direction's mode.
fn pump(mut from: TcpStream, mut to: TcpStream, d: Direction, st: &State) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match wait_to_forward(d, st) {
            None => {
                reset(&from);
                reset(&to);
                return;
            }
            Some(t) if !t.is_zero() => std::thread::sleep(t),
            Some(_) => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Forwards requests, answering a share of HTTP requests with 503 itself.
/// Requests are framed by their headers and `Content-Length`; anything else
/// (no HTTP, chunked bodies) is forwarded as it comes.
fn pump_requests(mut from: TcpStream, mut to: TcpStream, st: Arc<State>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut reply = from.try_clone().unwrap();
    loop {
        // Whole requests at the front of `pending` are decided one by one.
        while let Some(len) = http_request_len(&pending) {
            let n = st.requests.fetch_add(1, Ordering::SeqCst);
            let per_mille = st.modes.lock().unwrap().slow_down_per_mille;
            // Independent draws from a fixed sequence: runs repeat, and a
            // retry is as likely to be slowed as the first attempt (a strict
            // alternation would let every retry through).
            let slow = per_mille > 0 && mix(n) % 1000 < per_mille;
            let request: Vec<u8> = pending.drain(..len).collect();
            if slow {
                st.slowed.fetch_add(1, Ordering::SeqCst);
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                            <Message>Please reduce your request rate.</Message></Error>";
                let answer = format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = reply.write_all(answer.as_bytes());
                let _ = reply.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            if !forward(&mut to, &request, &st, &from) {
                return;
            }
        }
        if !pending.is_empty() && !looks_like_http(&pending) {
            let chunk = std::mem::take(&mut pending);
            if !forward(&mut to, &chunk, &st, &from) {
                return;
            }
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        if pending.len() > 64 * 1024 * 1024 {
            // Not a request we can frame: pass it on.
            let chunk = std::mem::take(&mut pending);
            if !forward(&mut to, &chunk, &st, &from) {
                return;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn forward(to: &mut TcpStream, bytes: &[u8], st: &State, from: &TcpStream) -> bool {
    match wait_to_forward(Direction::Up, st) {
        None => {
            reset(from);
            reset(to);
            false
        }
        Some(t) => {
            if !t.is_zero() {
                std::thread::sleep(t);
            }
            to.write_all(bytes).is_ok()
        }
    }
}

/// SplitMix64: a well-spread hash of the request number.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn looks_like_http(b: &[u8]) -> bool {
    const METHODS: [&[u8]; 6] = [b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ", b"PATCH "];
    METHODS
        .iter()
        .any(|m| b.starts_with(m) || m.starts_with(&b[..b.len().min(m.len())]))
}

/// The length of the whole HTTP request at the front of `b`, once all of it
/// is there (headers and a `Content-Length` body); `None` if incomplete or
/// not framable (chunked).
fn http_request_len(b: &[u8]) -> Option<usize> {
    if !looks_like_http(b) {
        return None;
    }
    let end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&b[..end]).ok()?;
    let mut body = 0usize;
    for line in head.split("\r\n").skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        if k == "content-length" {
            body = v.trim().parse().ok()?;
        } else if k == "transfer-encoding" {
            return None;
        }
    }
    (b.len() >= end + body).then_some(end + body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: answers every request line with itself.
    fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        a
    }

    fn round_trip(addr: SocketAddr, timeout: Duration) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        Ok(buf.to_vec())
    }

    #[test]
    fn each_fault_does_what_it_says_and_heals() {
        let p = FaultProxy::start(echo());
        let t = Duration::from_millis(300);
        assert_eq!(round_trip(p.addr(), t).unwrap(), b"ping");
        p.set_direction(Direction::Down, Mode::Hang);
        let e = round_trip(p.addr(), t).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e:?}"
        );
        p.heal();
        assert_eq!(round_trip(p.addr(), t).unwrap(), b"ping");
        p.set(Mode::Reset);
        assert!(round_trip(p.addr(), t).is_err());
        p.heal();
        p.refuse();
        let e = TcpStream::connect_timeout(&p.addr(), t)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e:?}");
        p.accept();
        assert_eq!(round_trip(p.addr(), t).unwrap(), b"ping");
        p.set(Mode::Delay(Duration::from_millis(150)));
        let started = std::time::Instant::now();
        assert_eq!(
            round_trip(p.addr(), Duration::from_secs(2)).unwrap(),
            b"ping"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn http_requests_are_framed_and_a_share_slowed_down() {
        assert_eq!(
            http_request_len(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(27)
        );
        assert_eq!(
            http_request_len(b"PUT /k HTTP/1.1\r\nContent-Length: 3\r\n\r\nab"),
            None
        );
        assert_eq!(
            http_request_len(b"PUT /k HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET"),
            Some(41)
        );
        assert_eq!(
            http_request_len(b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            None
        );
        let p = FaultProxy::start(echo());
        p.slow_down(0.5);
        let mut slowed = 0;
        for _ in 0..200 {
            let mut s = TcpStream::connect(p.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.starts_with(b"GET") && got.len() >= 27 {
                    break;
                }
            }
            if got.starts_with(b"HTTP/1.1 503") {
                slowed += 1;
            } else {
                assert!(got.starts_with(b"GET / HTTP/1.1"), "{got:?}");
            }
        }
        assert!((70..=130).contains(&slowed), "{slowed} of 200");
        assert_eq!(p.http_counts(), (200, slowed));
    }
}
