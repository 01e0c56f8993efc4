//! Sockets of the probes, created inside a pod's network namespace (they stay there).
use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Protocol, Socket, Type};

use crate::topology::{Family, Pod};

/// Receive buffer asked for on receivers (in bytes): 16 MiB holds 20,000 datagrams of up to
/// ~400 B with the kernel's per-skb overhead, so that a receiver never drops on its own.
const RCVBUF: usize = 16 << 20;
/// Smallest receive buffer accepted (in bytes).
const MIN_RCVBUF: usize = 4 << 20;
/// How long a blocking receive waits before the receiver checks whether to stop (20 ms).
pub(super) const POLL: Duration = Duration::from_millis(20);

fn domain(family: Family) -> Domain {
    match family {
        Family::V4 => Domain::IPV4,
        Family::V6 => Domain::IPV6,
    }
}

fn new_socket(family: Family, ty: Type, proto: Protocol) -> Result<Socket> {
    let s = Socket::new(domain(family), ty, Some(proto)).context("socket")?;
    if family == Family::V6 {
        s.set_only_v6(true).context("IPV6_V6ONLY")?;
    }
    Ok(s)
}

/// Sets the receive buffer to [`RCVBUF`] bytes, beyond `net.core.rmem_max` (SO_RCVBUFFORCE
/// needs CAP_NET_ADMIN), and checks that at least [`MIN_RCVBUF`] bytes were granted.
fn grow_rcvbuf(s: &Socket) -> Result<()> {
    let size = RCVBUF as libc::c_int;
    // SAFETY: a valid socket fd, a pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        s.set_recv_buffer_size(RCVBUF).context("SO_RCVBUF")?;
    }
    let got = s.recv_buffer_size().context("reading SO_RCVBUF")?;
    if got < MIN_RCVBUF {
        bail!(
            "receive buffer of {got} B, want at least {MIN_RCVBUF} B (run as root or raise net.core.rmem_max)"
        );
    }
    Ok(())
}

/// A UDP socket in `pod` bound to `port` on every address of `family`, with a large receive
/// buffer and a read timeout of [`POLL`]. Not `SO_REUSEADDR`: two probes on one port would
/// steal each other's datagrams, so the second fails instead.
pub(super) fn udp_receiver(pod: &Pod, family: Family, port: u16) -> Result<UdpSocket> {
    let bind = SocketAddr::new(family.unspecified(), port);
    pod.run(move || -> Result<UdpSocket> {
        let s = new_socket(family, Type::DGRAM, Protocol::UDP)?;
        grow_rcvbuf(&s)?;
        s.bind(&bind.into())
            .with_context(|| format!("binding {bind}"))?;
        s.set_read_timeout(Some(POLL))?;
        Ok(s.into())
    })?
    .with_context(|| {
        format!(
            "UDP receiver on port {port} of {}/{}",
            pod.namespace(),
            pod.name()
        )
    })
}

/// An unconnected UDP socket in `pod` on an ephemeral port of `family` (unconnected, so that
/// ICMP errors caused by a fault never fail a later send).
pub(super) fn udp_sender(pod: &Pod, family: Family) -> Result<UdpSocket> {
    let bind = SocketAddr::new(family.unspecified(), 0);
    pod.run(move || -> Result<UdpSocket> {
        let s = new_socket(family, Type::DGRAM, Protocol::UDP)?;
        s.bind(&bind.into()).context("binding an ephemeral port")?;
        Ok(s.into())
    })?
    .with_context(|| format!("UDP sender in {}/{}", pod.namespace(), pod.name()))
}

/// A TCP listener in `pod` on `port` of every address of `family` (backlog 128).
pub(super) fn tcp_listener(pod: &Pod, family: Family, port: u16) -> Result<TcpListener> {
    let bind = SocketAddr::new(family.unspecified(), port);
    pod.run(move || -> Result<TcpListener> {
        let s = new_socket(family, Type::STREAM, Protocol::TCP)?;
        s.set_reuse_address(true).context("SO_REUSEADDR")?;
        s.bind(&bind.into())
            .with_context(|| format!("binding {bind}"))?;
        s.listen(128).context("listen")?;
        Ok(s.into())
    })?
    .with_context(|| {
        format!(
            "TCP listener on port {port} of {}/{}",
            pod.namespace(),
            pod.name()
        )
    })
}

/// A TCP socket in `pod` bound to source port `port` of `family` (not connected yet).
pub(super) fn tcp_client(pod: &Pod, family: Family, port: u16) -> Result<Socket> {
    let bind = SocketAddr::new(family.unspecified(), port);
    pod.run(move || -> Result<Socket> {
        let s = new_socket(family, Type::STREAM, Protocol::TCP)?;
        s.set_reuse_address(true).context("SO_REUSEADDR")?;
        s.bind(&bind.into())
            .with_context(|| format!("binding {bind}"))?;
        Ok(s)
    })?
    .with_context(|| format!("TCP client in {}/{}", pod.namespace(), pod.name()))
}

/// `CLOCK_BOOTTIME` now, in ns, or an error.
pub(super) fn now_ns() -> Result<u64> {
    crate::try_boottime_ns()
}
