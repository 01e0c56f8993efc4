//! Paced UDP streams between two pods, measured at the receiver: [`udp_stream`] sends a
//! fixed number of datagrams and reports; [`udp_stream_background`] runs until stopped, for
//! measuring when a fault starts or stops acting while the caller injects or recovers.
//!
//! The sender paces itself in small bursts and sleeps, never more than [`MAX_BURST`]
//! datagrams back to back, so the stack never drops on its own (a veth's backlog holds 1,000
//! packets): with no fault, a stream arrives whole, which the testkit's own tests check.
use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};

use super::{
    payload,
    report::{Arrival, RecvLog, StreamReport},
    sock,
};
use crate::topology::{Family, Pod};

/// Most datagrams the sender sends back to back when it is late (after being descheduled).
pub const MAX_BURST: u64 = 64;

/// How a UDP stream is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOpts {
    /// Datagrams to send; `u64::MAX` for a background stream that runs until stopped.
    /// Default 20,000.
    pub count: u64,
    /// Sending rate, datagrams per second. Default 20,000 (1,000 is one per ms).
    pub rate_pps: u64,
    /// UDP payload size in bytes, 24..=1452. Default 64.
    pub payload_len: usize,
    /// How long the receiver keeps listening after the sender finished. Default 300 ms.
    pub drain: Duration,
    /// Destination UDP port. Default 40,000.
    pub port: u16,
}

impl Default for StreamOpts {
    fn default() -> Self {
        Self {
            count: 20_000,
            rate_pps: 20_000,
            payload_len: 64,
            drain: Duration::from_millis(300),
            port: 40_000,
        }
    }
}

/// A stream running in the background (see [`udp_stream_background`]). Dropping it stops
/// both ends without a report.
pub struct StreamHandle {
    stop_sending: Arc<AtomicBool>,
    stop_receiving: Arc<AtomicBool>,
    sender: Option<JoinHandle<Result<Vec<u64>>>>,
    receiver: Option<JoinHandle<Result<RecvLog>>>,
    drain: Duration,
}

impl StreamHandle {
    /// Stops sending now, lets the receiver drain for `opts.drain`, and reports.
    pub fn stop(mut self) -> Result<StreamReport> {
        self.stop_sending.store(true, Ordering::Release);
        self.finish()
    }

    /// Waits until all `opts.count` datagrams are sent, lets the receiver drain, and reports.
    /// With `count: u64::MAX` this never returns; use [`StreamHandle::stop`].
    pub fn wait(mut self) -> Result<StreamReport> {
        self.finish()
    }

    /// Whether the sender still sends.
    pub fn is_sending(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| !s.is_finished())
    }

    fn finish(&mut self) -> Result<StreamReport> {
        let sender = self.sender.take().context("stream already finished")?;
        let sent = sender
            .join()
            .map_err(|_| anyhow!("the stream's sender panicked"));
        std::thread::sleep(self.drain);
        self.stop_receiving.store(true, Ordering::Release);
        let receiver = self.receiver.take().context("stream already finished")?;
        let log = receiver
            .join()
            .map_err(|_| anyhow!("the stream's receiver panicked"))??;
        Ok(StreamReport::build(sent??, log))
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.stop_sending.store(true, Ordering::Release);
        self.stop_receiving.store(true, Ordering::Release);
        if let Some(s) = self.sender.take() {
            let _ = s.join();
        }
        if let Some(r) = self.receiver.take() {
            let _ = r.join();
        }
    }
}

/// Sends `opts.count` datagrams from `from` to `to` (its address of `family`, port
/// `opts.port`) at `opts.rate_pps`, and reports what arrived within `opts.drain` of the last.
pub fn udp_stream(from: &Pod, to: &Pod, family: Family, opts: &StreamOpts) -> Result<StreamReport> {
    udp_stream_background(from, to, family, opts)?.wait()
}

/// Starts the stream of [`udp_stream`] and returns at once; it runs until `opts.count`
/// datagrams are sent or [`StreamHandle::stop`]. The receiver is bound before the first
/// datagram leaves.
pub fn udp_stream_background(
    from: &Pod,
    to: &Pod,
    family: Family,
    opts: &StreamOpts,
) -> Result<StreamHandle> {
    payload::check_len(opts.payload_len)?;
    let rx = sock::udp_receiver(to, family, opts.port)?;
    let tx = sock::udp_sender(from, family)?;
    let sender_port = tx.local_addr().context("sender address")?.port();
    let dest = SocketAddr::new(to.ip(family), opts.port);
    start(tx, rx, sender_port, dest, opts)
}

/// Sends `opts.count` datagrams from `from` to a [`UdpEchoServer`](super::UdpEchoServer) on
/// `to` (its address of `family`, port `opts.port`) at `opts.rate_pps`, and reports what
/// **came back** to the sender within `opts.drain` of the last: a fault on either path shows
/// (a loss or corruption of the echo only, when the fault acts on replies alone). The echo
/// server must be running.
pub fn udp_echo_stream(
    from: &Pod,
    to: &Pod,
    family: Family,
    opts: &StreamOpts,
) -> Result<StreamReport> {
    payload::check_len(opts.payload_len)?;
    let tx = sock::udp_sender(from, family)?;
    let rx = tx.try_clone().context("cloning the sender socket")?;
    rx.set_read_timeout(Some(sock::POLL))?;
    let dest = SocketAddr::new(to.ip(family), opts.port);
    start(tx, rx, opts.port, dest, opts)?.wait()
}

/// Runs a sender of `opts` on `tx` to `dest` and a receiver on `rx` of what comes from port
/// `from_port`.
fn start(
    tx: UdpSocket,
    rx: UdpSocket,
    from_port: u16,
    dest: SocketAddr,
    opts: &StreamOpts,
) -> Result<StreamHandle> {
    anyhow::ensure!(opts.rate_pps > 0, "rate_pps must be positive");
    let stop_receiving = Arc::new(AtomicBool::new(false));
    let stop = stop_receiving.clone();
    let len = opts.payload_len;
    let receiver = std::thread::Builder::new()
        .name("testkit-stream-rx".into())
        .spawn(move || receive(&rx, from_port, len, &stop))
        .context("spawning the stream receiver")?;

    let stop_sending = Arc::new(AtomicBool::new(false));
    let stop = stop_sending.clone();
    let (count, rate) = (opts.count, opts.rate_pps);
    let sender = std::thread::Builder::new()
        .name("testkit-stream-tx".into())
        .spawn(move || send(&tx, dest, count, rate, len, &stop));
    let sender = match sender {
        Ok(s) => s,
        Err(e) => {
            stop_receiving.store(true, Ordering::Release);
            let _ = receiver.join();
            return Err(e).context("spawning the stream sender");
        }
    };
    Ok(StreamHandle {
        stop_sending,
        stop_receiving,
        sender: Some(sender),
        receiver: Some(receiver),
        drain: opts.drain,
    })
}

/// The receiver: records every datagram from port `from_port` until `stop`, judging only its
/// pattern (the sender's record is not known yet).
fn receive(rx: &UdpSocket, from_port: u16, len: usize, stop: &AtomicBool) -> Result<RecvLog> {
    let mut log = RecvLog::default();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Acquire) {
        match rx.recv_from(&mut buf) {
            Ok((n, src)) => {
                let recv_ns = sock::now_ns()?;
                if src.port() != from_port {
                    log.foreign += 1;
                    continue;
                }
                match payload::decode(&buf[..n], len) {
                    Some((seq, send_ns)) => log.valid.push(Arrival {
                        seq,
                        send_ns,
                        recv_ns,
                    }),
                    None => log.malformed += 1,
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("receiving"),
        }
    }
    Ok(log)
}

/// The sender: `count` datagrams at `rate` per second, or until `stop`. Returns the send time
/// of each (`CLOCK_BOOTTIME` ns), by sequence number.
fn send(
    tx: &UdpSocket,
    dest: SocketAddr,
    count: u64,
    rate: u64,
    len: usize,
    stop: &AtomicBool,
) -> Result<Vec<u64>> {
    let mut send_ns = Vec::with_capacity(count.min(1 << 20) as usize);
    let mut buf = vec![0u8; len];
    let interval_ns = (1_000_000_000 / rate).max(1);
    let max_lag = Duration::from_nanos(interval_ns.saturating_mul(MAX_BURST));
    // Datagram `k` after `origin` is due at `origin + k * interval`.
    let (mut origin, mut k) = (Instant::now(), 0u64);
    let mut seq = 0u64;
    while seq < count && !stop.load(Ordering::Acquire) {
        let due = origin + Duration::from_nanos(k.saturating_mul(1_000_000_000) / rate);
        let now = Instant::now();
        if due > now + Duration::from_micros(200) {
            // Ahead of time: sleep (in slices, to notice `stop` on slow streams).
            std::thread::sleep((due - now).min(Duration::from_millis(10)));
            continue;
        }
        if now > due + max_lag {
            // Far behind (descheduled): restart the schedule instead of a long burst.
            (origin, k) = (now, 0);
        }
        let t = sock::now_ns()?;
        payload::encode(&mut buf, seq, t);
        if !send_one(tx, &buf, dest, stop)? {
            break;
        }
        send_ns.push(t);
        seq += 1;
        k += 1;
    }
    Ok(send_ns)
}

/// Sends one datagram, waiting while the local stack has no room (not a loss of the path).
/// `Ok(false)` when told to stop before the datagram could leave.
fn send_one(tx: &UdpSocket, buf: &[u8], dest: SocketAddr, stop: &AtomicBool) -> Result<bool> {
    loop {
        match tx.send_to(buf, dest) {
            Ok(_) => return Ok(true),
            Err(e)
                if e.raw_os_error() == Some(libc::ENOBUFS)
                    || matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
            {
                if stop.load(Ordering::Acquire) {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => return Err(e).with_context(|| format!("sending to {dest}")),
        }
    }
}
