//! The probes, sent from inside a pod's network namespace: ICMP echo (raw socket, answered by
//! the peer's kernel), a TCP SYN (answered by SYN-ACK or RST) and a UDP datagram (answered by
//! data or an ICMP port unreachable), so no listener is needed on the peer. Every socket
//! carries [`PROBE_MARK`] (SO_MARK).
use std::{
    fs::File,
    io::ErrorKind,
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The SO_MARK of every probe socket ("fa17" and 0x5e, "probe"): it tells probe packets apart
/// inside the pod (netfilter, tcpdump's `mark`). It never reaches the agent's programs: the
/// veth clears `skb->mark` when the packet leaves the pod's namespace; it avoids the bits the
/// programs use (`fault_common::EVALUATED_MARK`, `DUPLICATE_MARK`).
pub const PROBE_MARK: u32 = 0xfa17_005e;

/// How long a TCP or UDP probe waits for its answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(300);

/// UDP datagrams sent, one after the other, until one is answered.
pub const UDP_ATTEMPTS: usize = 2;

/// Gap between two echo requests of a pair.
pub const ECHO_GAP: Duration = Duration::from_millis(3);

/// The outcome of a series of echoes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Echoes {
    pub sent: u32,
    pub received: u32,
    /// Smallest round-trip time of the replies.
    pub min_rtt: Option<Duration>,
}

/// Runs `f` on a new thread that entered the network namespace `netns` first (setns acts on
/// the calling thread only: the caller's namespace, and tokio's threads, never change).
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("verify-netns".into())
            .spawn_scoped(scope, move || -> Result<T> {
                setns(&file, CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")?;
                Ok(f())
            })
            .context("spawning a probe thread")?
            .join()
            .map_err(|_| anyhow!("a probe thread panicked"))?
    })
    .with_context(|| format!("probing from {}", netns.display()))
}

fn marked(domain: Domain, ty: Type, proto: Protocol) -> Result<Socket> {
    let s = Socket::new(domain, ty, Some(proto)).context("creating a probe socket")?;
    s.set_mark(PROBE_MARK)
        .context("SO_MARK on a probe socket")?;
    Ok(s)
}

/// Whether a TCP SYN to `to` is answered within [`ANSWER_TIMEOUT`] (a refused connection is
/// an answer: the peer's RST).
pub fn tcp_answered(to: SocketAddrV4) -> Result<bool> {
    let s = marked(Domain::IPV4, Type::STREAM, Protocol::TCP)?;
    match s.connect_timeout(&SockAddr::from(SocketAddr::V4(to)), ANSWER_TIMEOUT) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(true),
        Err(_) => Ok(false),
    }
}

/// Whether a UDP datagram to `to` is answered within [`ANSWER_TIMEOUT`] (an ICMP port
/// unreachable shows as a refused receive).
pub fn udp_answered(to: SocketAddrV4) -> Result<(bool, u64)> {
    let s = marked(Domain::IPV4, Type::DGRAM, Protocol::UDP)?;
    s.connect(&SockAddr::from(SocketAddr::V4(to)))
        .context("connecting the UDP probe")?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 64];
    // A second datagram when the first got no answer: the peer's kernel may have held back its
    // port unreachable (ICMP errors are rate limited per destination, `icmp_ratelimit`).
    for sent in 1..=UDP_ATTEMPTS as u64 {
        s.send(b"faultline verify probe")
            .context("sending the UDP probe")?;
        match s.recv(&mut buf) {
            Ok(_) => return Ok((true, sent)),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok((true, sent)),
            Err(_) => {}
        }
    }
    Ok((false, UDP_ATTEMPTS as u64))
}

/// Sends `count` ICMP echo requests to `to`, [`ECHO_GAP`] apart, with identifier `ident`, and
/// collects the replies until `linger` after the last request.
pub fn echoes(to: Ipv4Addr, ident: u16, count: u16, linger: Duration) -> Result<Echoes> {
    let s = marked(Domain::IPV4, Type::RAW, Protocol::ICMPV4)?;
    let dest = SockAddr::from(SocketAddr::V4(SocketAddrV4::new(to, 0)));
    let start = Instant::now();
    let mut sent_at = vec![None; usize::from(count)];
    let mut out = Echoes::default();
    s.set_nonblocking(true)?;
    for seq in 0..count {
        sent_at[usize::from(seq)] = Some(Instant::now());
        s.send_to(&echo_request(ident, seq), &dest)
            .context("sending an echo request")?;
        out.sent += 1;
        drain(&s, to, ident, &sent_at, &mut out);
        std::thread::sleep(ECHO_GAP);
    }
    s.set_nonblocking(false)?;
    let end = Instant::now() + linger;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if left.is_zero() || out.received >= out.sent {
            break;
        }
        s.set_read_timeout(Some(left))?;
        if !recv_one(&s, to, ident, &sent_at, &mut out) {
            break;
        }
    }
    tracing::debug!(%to, ?out, took = ?start.elapsed(), "echo probes");
    Ok(out)
}

fn drain(s: &Socket, to: Ipv4Addr, ident: u16, sent_at: &[Option<Instant>], out: &mut Echoes) {
    while recv_one(s, to, ident, sent_at, out) {}
}

/// Reads one packet; counts it when it is a fresh reply of ours. False when nothing came.
fn recv_one(
    s: &Socket,
    to: Ipv4Addr,
    ident: u16,
    sent_at: &[Option<Instant>],
    out: &mut Echoes,
) -> bool {
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    let Ok((n, _)) = s.recv_from(&mut buf) else {
        return false;
    };
    // SAFETY: recv_from initialised the first n bytes.
    let pkt: Vec<u8> = buf[..n]
        .iter()
        .map(|b| unsafe { b.assume_init() })
        .collect();
    if let Some(seq) = parse_reply(&pkt, to, ident)
        && let Some(Some(t)) = sent_at.get(usize::from(seq))
    {
        out.received += 1;
        let rtt = t.elapsed();
        out.min_rtt = Some(out.min_rtt.map_or(rtt, |m| m.min(rtt)));
    }
    true
}

/// An ICMP echo request (type 8) with a 32-byte payload and its checksum.
pub fn echo_request(ident: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"faultline verify probe, no data.");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The sequence number of an echo reply (type 0) from `from` with identifier `ident`, in an
/// IPv4 packet as a raw socket reads it (IP header first); `None` for anything else.
pub fn parse_reply(pkt: &[u8], from: Ipv4Addr, ident: u16) -> Option<u16> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    let src = Ipv4Addr::new(*pkt.get(12)?, *pkt.get(13)?, *pkt.get(14)?, *pkt.get(15)?);
    let icmp = pkt.get(ihl..ihl + 8)?;
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    (src == from && icmp[0] == 0 && id == ident).then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero_and_replies_parse() {
        let req = echo_request(0x1234, 7);
        assert_eq!(checksum(&req), 0);
        // A reply as the raw socket reads it: a 20-byte IPv4 header, then the ICMP reply.
        let mut pkt = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 198, 18, 0, 2, 198, 18, 0, 1,
        ];
        let mut reply = req.clone();
        reply[0] = 0;
        pkt.extend_from_slice(&reply);
        let from = Ipv4Addr::new(198, 18, 0, 2);
        assert_eq!(parse_reply(&pkt, from, 0x1234), Some(7));
        assert_eq!(parse_reply(&pkt, from, 0x1235), None);
        assert_eq!(
            parse_reply(&pkt, Ipv4Addr::new(198, 18, 0, 3), 0x1234),
            None
        );
        assert_eq!(parse_reply(&pkt[..24], from, 0x1234), None);
    }
}
