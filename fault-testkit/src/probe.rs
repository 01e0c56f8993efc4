//! Real traffic between pods, measured at the receiver.
//!
//! A UDP stream carries in each datagram its sequence number, its send time (`CLOCK_BOOTTIME`
//! ns) and a pattern derived from both, so the receiver tells apart the datagrams that
//! arrived, arrived twice, or arrived with any bit changed. The sender paces itself so that the
//! stack never drops on its own (a veth's backlog holds 1,000 packets): with no fault, a stream
//! must arrive whole, and the testkit's own tests check that it does.
use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{boottime_ns, topology::Pod};

/// Address family of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn any(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

/// How a UDP stream is sent.
#[derive(Debug, Clone)]
pub struct StreamOpts {
    /// Datagrams to send (`u64::MAX` for a background stream that runs until stopped).
    pub count: u64,
    /// Sending rate, datagrams per second.
    pub rate_pps: u64,
    /// UDP payload size in bytes (at least 24).
    pub payload_len: usize,
    /// How long the receiver keeps listening after the last datagram was sent.
    pub drain: Duration,
    /// Destination port.
    pub port: u16,
}

impl Default for StreamOpts {
    fn default() -> Self {
        Self { count: 20_000, rate_pps: 20_000, payload_len: 64, drain: Duration::from_millis(300), port: 40_000 }
    }
}

/// One datagram that arrived intact.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub seq: u64,
    /// Send time, `CLOCK_BOOTTIME` ns.
    pub send_ns: u64,
    /// Receive time, `CLOCK_BOOTTIME` ns.
    pub recv_ns: u64,
}

/// What a stream measured.
#[derive(Debug, Clone, Default)]
pub struct StreamReport {
    /// Datagrams sent (accepted by the sender's stack).
    pub sent: u64,
    /// Distinct datagrams that arrived intact.
    pub received: u64,
    /// Intact datagrams that arrived more than once (extra copies).
    pub duplicates: u64,
    /// Datagrams that arrived with their content changed.
    pub corrupted: u64,
    /// Send time of each datagram, by sequence number (`CLOCK_BOOTTIME` ns).
    pub send_ns: Vec<u64>,
    /// Intact arrivals, in arrival order (duplicates included).
    pub arrivals: Vec<Arrival>,
}

impl StreamReport {
    /// Share of sent datagrams that did not arrive intact (corrupted ones count as lost here).
    pub fn loss_ratio(&self) -> f64 {
        if self.sent == 0 { 0.0 } else { 1.0 - self.received as f64 / self.sent as f64 }
    }

    /// Share of arriving datagrams that were corrupted.
    pub fn corrupt_ratio(&self) -> f64 {
        let total = self.received + self.corrupted;
        if total == 0 { 0.0 } else { self.corrupted as f64 / total as f64 }
    }

    /// Whether datagram `seq` arrived intact.
    pub fn arrived(&self) -> Vec<bool> {
        let mut got = vec![false; self.send_ns.len()];
        for a in &self.arrivals {
            if let Some(g) = got.get_mut(a.seq as usize) {
                *g = true;
            }
        }
        got
    }
}

impl std::fmt::Display for StreamReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let missing = self.sent.saturating_sub(self.received + self.corrupted);
        let pct = |n: u64| if self.sent == 0 { 0.0 } else { n as f64 * 100.0 / self.sent as f64 };
        write!(
            f,
            "sent {}: intact {}, lost {} ({:.2}%), corrupted {} ({:.2}%), duplicates {}",
            self.sent,
            self.received,
            missing,
            pct(missing),
            self.corrupted,
            self.corrupt_ratio() * 100.0,
            self.duplicates
        )
    }
}

const HEADER: usize = 16;

fn pattern(seq: u64, send_ns: u64, i: usize) -> u8 {
    let h = (seq ^ send_ns.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> ((i % 8) * 8)) as u8 ^ i as u8
}

fn encode(buf: &mut [u8], seq: u64, send_ns: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&send_ns.to_le_bytes());
    for (i, b) in buf.iter_mut().enumerate().skip(HEADER) {
        *b = pattern(seq, send_ns, i);
    }
}

/// `Some((seq, send_ns))` when the datagram is intact.
fn decode(buf: &[u8], payload_len: usize) -> Option<(u64, u64)> {
    if buf.len() != payload_len {
        return None;
    }
    let seq = u64::from_le_bytes(buf[..8].try_into().ok()?);
    let send_ns = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    buf.iter().enumerate().skip(HEADER).all(|(i, b)| *b == pattern(seq, send_ns, i)).then_some((seq, send_ns))
}

fn udp_receiver(to: &Pod, family: Family, port: u16) -> Result<UdpSocket> {
    let bind = SocketAddr::new(family.any(), port);
    to.run(move || -> Result<UdpSocket> {
        let domain = if family == Family::V4 { Domain::IPV4 } else { Domain::IPV6 };
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if family == Family::V6 {
            s.set_only_v6(true)?;
        }
        s.set_reuse_address(true)?;
        // SO_RCVBUFFORCE: as root, beyond net.core.rmem_max.
        let size: libc::c_int = 16 << 20;
        unsafe {
            use std::os::fd::AsRawFd as _;
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        s.bind(&bind.into())?;
        s.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(s.into())
    })?
    .with_context(|| format!("UDP receiver on {}:{port}", to.name()))
}

fn udp_sender(from: &Pod, family: Family, to: SocketAddr) -> Result<UdpSocket> {
    from.run(move || -> Result<UdpSocket> {
        let s = UdpSocket::bind(SocketAddr::new(family.any(), 0))?;
        s.connect(to)?;
        Ok(s)
    })?
    .with_context(|| format!("UDP sender to {to}"))
}

/// A stream running in the background (see [`udp_stream_background`]).
pub struct StreamHandle {
    stop: Arc<AtomicBool>,
    sender: JoinHandle<Result<Vec<u64>>>,
    receiver: JoinHandle<(u64, u64, Vec<Arrival>)>,
    receiver_stop: Arc<AtomicBool>,
    drain: Duration,
}

impl StreamHandle {
    /// Stops sending, waits for the drain time, and returns what was measured.
    pub fn stop(self) -> Result<StreamReport> {
        self.stop.store(true, Ordering::Release);
        let send_ns = self.sender.join().map_err(|_| anyhow!("sender panicked"))??;
        std::thread::sleep(self.drain);
        self.receiver_stop.store(true, Ordering::Release);
        let (duplicates, corrupted, arrivals) = self.receiver.join().map_err(|_| anyhow!("receiver panicked"))?;
        let received = (arrivals.len() as u64).saturating_sub(duplicates);
        Ok(StreamReport { sent: send_ns.len() as u64, received, duplicates, corrupted, send_ns, arrivals })
    }
}

/// Starts a UDP stream from `from` to `to`; it sends `opts.count` datagrams or until
/// [`StreamHandle::stop`].
pub fn udp_stream_background(from: &Pod, to: &Pod, family: Family, opts: &StreamOpts) -> Result<StreamHandle> {
    let payload_len = opts.payload_len.max(HEADER + 8);
    let rx = udp_receiver(to, family, opts.port)?;
    let tx = udp_sender(from, family, SocketAddr::new(to.ip(family), opts.port))?;
    let receiver_stop = Arc::new(AtomicBool::new(false));
    let rstop = receiver_stop.clone();
    let receiver = std::thread::spawn(move || {
        let mut seen = std::collections::HashSet::new();
        let (mut dup, mut corrupt, mut arrivals) = (0u64, 0u64, Vec::new());
        let mut buf = vec![0u8; 65536];
        while !rstop.load(Ordering::Acquire) {
            match rx.recv(&mut buf) {
                Ok(n) => {
                    let recv_ns = boottime_ns();
                    match decode(&buf[..n], payload_len) {
                        Some((seq, send_ns)) => {
                            if !seen.insert(seq) {
                                dup += 1;
                            }
                            arrivals.push(Arrival { seq, send_ns, recv_ns });
                        }
                        None => corrupt += 1,
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        (dup, corrupt, arrivals)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sstop = stop.clone();
    let (count, rate) = (opts.count, opts.rate_pps.max(1));
    let sender = std::thread::spawn(move || -> Result<Vec<u64>> {
        let mut send_ns = Vec::with_capacity(count.min(1 << 20) as usize);
        let mut buf = vec![0u8; payload_len];
        let start = Instant::now();
        let mut seq = 0u64;
        while seq < count && !sstop.load(Ordering::Acquire) {
            let due = start + Duration::from_nanos(seq.saturating_mul(1_000_000_000) / rate);
            let now = Instant::now();
            if due > now + Duration::from_micros(200) {
                std::thread::sleep(due - now);
            }
            let t = boottime_ns();
            encode(&mut buf, seq, t);
            loop {
                match tx.send(&buf) {
                    Ok(_) => break,
                    // The local stack is full: wait, this is not a loss of the path.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(100))
                    }
                    Err(e) => return Err(e).context("sending"),
                }
            }
            send_ns.push(t);
            seq += 1;
        }
        Ok(send_ns)
    });
    Ok(StreamHandle { stop, sender, receiver, receiver_stop, drain: opts.drain })
}

/// Sends a whole stream and reports what arrived.
pub fn udp_stream(from: &Pod, to: &Pod, family: Family, opts: &StreamOpts) -> Result<StreamReport> {
    let h = udp_stream_background(from, to, family, opts)?;
    while !h.sender.is_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    h.stop()
}

/// Whether a datagram from `from` reaches `to` on `port` within `timeout` (one is sent every
/// 20 ms until one arrives or time is up).
pub fn udp_reachable(from: &Pod, to: &Pod, family: Family, port: u16, timeout: Duration) -> Result<bool> {
    let rx = udp_receiver(to, family, port)?;
    let tx = udp_sender(from, family, SocketAddr::new(to.ip(family), port))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    let mut seq = 0;
    while Instant::now() < deadline {
        encode(&mut buf[..32], seq, boottime_ns());
        seq += 1;
        let _ = tx.send(&buf[..32]);
        if let Ok(n) = rx.recv(&mut buf) {
            if decode(&buf[..n], 32).is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether a TCP connection from `from` to `to:port` is established within `timeout`.
pub fn tcp_connect(from: &Pod, to: &Pod, family: Family, port: u16, timeout: Duration) -> Result<bool> {
    let addr = SocketAddr::new(to.ip(family), port);
    from.run(move || TcpStream::connect_timeout(&addr, timeout).is_ok())
}

/// Connects, sends a message and reads it back: `true` when the whole round trip worked.
pub fn tcp_echo_roundtrip(from: &Pod, to: &Pod, family: Family, port: u16, timeout: Duration) -> Result<bool> {
    let addr = SocketAddr::new(to.ip(family), port);
    from.run(move || -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else { return false };
        let _ = s.set_read_timeout(Some(timeout));
        let msg = b"faultline echo probe";
        if s.write_all(msg).is_err() {
            return false;
        }
        let mut back = [0u8; 20];
        s.read_exact(&mut back).is_ok() && &back == msg
    })
}

/// A UDP echo server in a pod (answers each datagram to its sender); stops on drop.
pub struct UdpEchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEchoServer {
    pub fn start(pod: &Pod, family: Family, port: u16) -> Result<Self> {
        let sock = udp_receiver(pod, family, port)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Acquire) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Ok(Self { stop, thread: Some(thread) })
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

/// Sends a datagram from `from` to a [`UdpEchoServer`] on `to:port` (retrying every 50 ms) and
/// waits for the echo: `true` when the round trip completed within `timeout`.
pub fn udp_echo_roundtrip(from: &Pod, to: &Pod, family: Family, port: u16, timeout: Duration) -> Result<bool> {
    let tx = udp_sender(from, family, SocketAddr::new(to.ip(family), port))?;
    tx.set_read_timeout(Some(Duration::from_millis(50)))?;
    let deadline = Instant::now() + timeout;
    let msg = b"faultline udp echo probe";
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let _ = tx.send(msg);
        if let Ok(n) = tx.recv(&mut buf) {
            if &buf[..n] == msg {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A TCP echo server in a pod; stops on drop.
pub struct TcpEchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpEchoServer {
    /// Listens on `port` of the pod's address of `family`.
    pub fn start(pod: &Pod, family: Family, port: u16) -> Result<Self> {
        let bind = SocketAddr::new(family.any(), port);
        let listener = pod.run(move || -> Result<TcpListener> {
            let domain = if family == Family::V4 { Domain::IPV4 } else { Domain::IPV6 };
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            if family == Family::V6 {
                s.set_only_v6(true)?;
            }
            s.set_reuse_address(true)?;
            s.bind(&bind.into())?;
            s.listen(128)?;
            Ok(s.into())
        })??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = conn.read(&mut buf) {
                                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self { stop, thread: Some(thread) })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_bit_flip_is_detected() {
        let mut buf = vec![0u8; 64];
        encode(&mut buf, 42, 123_456_789);
        assert_eq!(decode(&buf, 64), Some((42, 123_456_789)));
        for byte in 0..64 {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert_eq!(decode(&b, 64), None, "flip at {byte}:{bit} undetected");
            }
        }
    }
}
