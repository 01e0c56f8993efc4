//! Real traffic between pods, measured at the receiver. Every probe takes the pods and the
//! address family explicitly and uses ordinary sockets created inside the right network
//! namespace (through [`Pod::run`](crate::Pod::run)); nothing is estimated or simulated.
//!
//! - [`udp_stream`] / [`udp_stream_background`]: paced UDP streams whose datagrams carry
//!   their sequence number, send time (`CLOCK_BOOTTIME` ns) and a pattern, so the receiver
//!   tells apart datagrams that arrived, arrived twice, or arrived with any bit changed
//!   ([`StreamReport`]).
//! - [`udp_echo_stream`]: the same stream sent to an echo server, measured where it comes
//!   back (for faults that act on replies).
//! - [`udp_reachable`], [`udp_echo_roundtrip`] and [`UdpEchoServer`]: one-shot UDP checks.
//! - [`tcp_connect`], [`tcp_echo_roundtrip`] and [`TcpEchoServer`]: TCP checks.
//! - [`ping`]: ICMP echo with the system's `ping`.
mod payload;
mod ping;
mod report;
mod sock;
mod stream;
mod tcp;
mod udp;

pub use payload::{MAX_PAYLOAD_LEN, MIN_PAYLOAD_LEN};
pub use ping::{PingReport, ping};
pub use report::{Arrival, StreamReport};
pub use stream::{
    MAX_BURST, StreamHandle, StreamOpts, udp_echo_stream, udp_stream, udp_stream_background,
};
pub use tcp::{TcpEchoServer, tcp_connect, tcp_connect_each, tcp_echo_roundtrip};
pub use udp::{UdpEchoServer, udp_echo_roundtrip, udp_reachable};

pub use crate::topology::Family;
