//! TCP probes: connection establishment ([`tcp_connect`]) and a round trip through an echo
//! server ([`TcpEchoServer`], [`tcp_echo_roundtrip`]).
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::sock;
use crate::topology::{Family, Pod};

/// Whether a TCP connection from `from` to `to` (its address of `family`, `port`) is
/// established within `timeout`. Refused, reset or timed out: `false`.
pub fn tcp_connect(
    from: &Pod,
    to: &Pod,
    family: Family,
    port: u16,
    timeout: Duration,
) -> Result<bool> {
    let addr = SocketAddr::new(to.ip(family), port);
    let timeout = timeout.max(Duration::from_millis(1));
    from.run(move || TcpStream::connect_timeout(&addr, timeout).is_ok())
}

/// Opens one new TCP connection from `from` to `to` (its address of `family`, `port`) from
/// each source port of `source_ports`, 64 at a time, each given `timeout`, and closes them:
/// how many were established. Distinct source ports make each a new flow for the host's
/// connection tracking (so a Service's load balancing chooses anew for each), which a
/// kernel-chosen port does not promise: it may reuse the port of a failed attempt whose entry
/// still waits.
pub fn tcp_connect_each(
    from: &Pod,
    to: &Pod,
    family: Family,
    port: u16,
    source_ports: std::ops::Range<u16>,
    timeout: Duration,
) -> Result<u64> {
    const PARALLEL: u16 = 64;
    let dest = SocketAddr::new(to.ip(family), port);
    let timeout = timeout.max(Duration::from_millis(1));
    let ports: Vec<u16> = source_ports.collect();
    let mut ok = 0;
    for chunk in ports.chunks(PARALLEL as usize) {
        let made: Vec<Result<bool>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&sport| scope.spawn(move || connect_from(from, family, sport, dest, timeout)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("connect thread panicked"))?
                })
                .collect()
        });
        for m in made {
            ok += u64::from(m?);
        }
    }
    Ok(ok)
}

/// One connection attempt from source port `sport` of `from`.
fn connect_from(
    from: &Pod,
    family: Family,
    sport: u16,
    dest: SocketAddr,
    timeout: Duration,
) -> Result<bool> {
    let s = sock::tcp_client(from, family, sport)?;
    Ok(s.connect_timeout(&dest.into(), timeout).is_ok())
}

/// Connects from `from` to a [`TcpEchoServer`] on `to:port`, sends a random 32-byte message
/// and reads it back: `true` when the whole round trip completed within `timeout`.
pub fn tcp_echo_roundtrip(
    from: &Pod,
    to: &Pod,
    family: Family,
    port: u16,
    timeout: Duration,
) -> Result<bool> {
    let addr = SocketAddr::new(to.ip(family), port);
    let mut msg = [0u8; 32];
    crate::rand::fill(&mut msg)?;
    let deadline = Instant::now() + timeout;
    from.run(move || -> bool {
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let Ok(mut s) = TcpStream::connect_timeout(&addr, left()) else {
            return false;
        };
        if s.set_write_timeout(Some(left())).is_err() || s.write_all(&msg).is_err() {
            return false;
        }
        let mut back = [0u8; 32];
        s.set_read_timeout(Some(left())).is_ok() && s.read_exact(&mut back).is_ok() && back == msg
    })
}

/// A TCP echo server in a pod: sends back whatever each connection sends. Stops (closing every
/// connection) on drop.
pub struct TcpEchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    port: u16,
}

impl TcpEchoServer {
    /// Listens on TCP `port` of every address of `family` in `pod`.
    pub fn start(pod: &Pod, family: Family, port: u16) -> Result<Self> {
        let listener = sock::tcp_listener(pod, family, port)?;
        listener
            .set_nonblocking(true)
            .context("non-blocking listener")?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("testkit-tcp-echo".into())
            .spawn(move || accept_loop(&listener, &st))
            .context("spawning the TCP echo server")?;
        Ok(Self {
            stop,
            thread: Some(thread),
            port,
        })
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Accepts connections until `stop`, one echo thread each; joins them before returning.
fn accept_loop(listener: &TcpListener, stop: &Arc<AtomicBool>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((conn, _)) => {
                let st = stop.clone();
                if let Ok(h) = std::thread::Builder::new()
                    .name("testkit-tcp-conn".into())
                    .spawn(move || echo(conn, &st))
                {
                    conns.push(h);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
        conns.retain(|h| !h.is_finished());
    }
    for h in conns {
        let _ = h.join();
    }
}

/// Echoes one connection until it closes, fails, or `stop`.
fn echo(mut conn: TcpStream, stop: &AtomicBool) {
    if conn.set_nonblocking(false).is_err()
        || conn
            .set_read_timeout(Some(Duration::from_millis(50)))
            .is_err()
    {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Acquire) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for TcpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
