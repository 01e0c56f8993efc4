//! One-shot UDP probes: one-way reachability ([`udp_reachable`]) and request/reply through
//! an echo server ([`UdpEchoServer`], [`udp_echo_roundtrip`]).
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{payload, sock};
use crate::topology::{Family, Pod};

/// Interval between the datagrams of a one-shot probe (20 ms).
const RETRY: Duration = Duration::from_millis(20);
/// Payload of a one-shot probe datagram (in bytes).
const PROBE_LEN: usize = 32;

/// Waits until `deadline` for a datagram on `sock` from port `from_port` that `accept`s.
fn recv_until(
    sock: &UdpSocket,
    from_port: u16,
    deadline: Instant,
    accept: impl Fn(&[u8]) -> bool,
) -> Result<bool> {
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        if let Ok((n, src)) = sock.recv_from(&mut buf)
            && src.port() == from_port
            && accept(&buf[..n])
        {
            return Ok(true);
        }
    }
}

/// Whether a datagram from `from` reaches `to` (its address of `family`, UDP `port`) within
/// `timeout`: one is sent every 20 ms until one arrives intact or time is up. Only this
/// probe's own datagrams count (a random nonce in each).
pub fn udp_reachable(
    from: &Pod,
    to: &Pod,
    family: Family,
    port: u16,
    timeout: Duration,
) -> Result<bool> {
    let rx = sock::udp_receiver(to, family, port)?;
    let tx = sock::udp_sender(from, family)?;
    let tx_port = tx.local_addr().context("sender address")?.port();
    let dest = SocketAddr::new(to.ip(family), port);
    // Sequence numbers start at a random nonce; 2^32 of them are this probe's.
    let nonce = crate::rand::u64()? & !0xffff_ffff;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; PROBE_LEN];
    let mut seq = nonce;
    loop {
        payload::encode(&mut buf, seq, sock::now_ns()?);
        seq += 1;
        // A send error (no route during a readdress) is a datagram that did not arrive.
        let _ = tx.send_to(&buf, dest);
        let until = (Instant::now() + RETRY).min(deadline);
        let mine =
            |d: &[u8]| payload::decode(d, PROBE_LEN).is_some_and(|(s, _)| s >= nonce && s < seq);
        if recv_until(&rx, tx_port, until, mine)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// A UDP echo server in a pod: answers each datagram with its content, to its sender. Stops
/// on drop.
pub struct UdpEchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEchoServer {
    /// Listens on UDP `port` of every address of `family` in `pod`.
    pub fn start(pod: &Pod, family: Family, port: u16) -> Result<Self> {
        let sock = sock::udp_receiver(pod, family, port)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("testkit-udp-echo".into())
            .spawn(move || {
                let mut buf = [0u8; 65_536];
                while !st.load(Ordering::Acquire) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            })
            .context("spawning the UDP echo server")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a datagram from `from` to a [`UdpEchoServer`] on `to:port` comes back within
/// `timeout` (one is sent every 20 ms until an answer arrives).
pub fn udp_echo_roundtrip(
    from: &Pod,
    to: &Pod,
    family: Family,
    port: u16,
    timeout: Duration,
) -> Result<bool> {
    let tx = sock::udp_sender(from, family)?;
    let dest = SocketAddr::new(to.ip(family), port);
    let nonce = crate::rand::u64()? & !0xffff_ffff;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; PROBE_LEN];
    let mut seq = nonce;
    loop {
        payload::encode(&mut buf, seq, sock::now_ns()?);
        seq += 1;
        let _ = tx.send_to(&buf, dest);
        let until = (Instant::now() + RETRY).min(deadline);
        let mine =
            |d: &[u8]| payload::decode(d, PROBE_LEN).is_some_and(|(s, _)| s >= nonce && s < seq);
        if recv_until(&tx, port, until, mine)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}
