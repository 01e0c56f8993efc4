//! Synchronous rtnetlink dumps (`RTM_GETLINK`, `RTM_GETADDR` with `NLM_F_DUMP`) on a socket of
//! the calling thread's network namespace: what discovery needs many times a second, without
//! a thread and an async runtime per namespace (the `rtnetlink` crate's model, kept for
//! changes in [`crate::netlink`]).
use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{SocketAddr, protocols::NETLINK_ROUTE};

/// A `NETLINK_ROUTE` socket, bound to the namespace of the thread that opened it.
pub struct Socket {
    sock: netlink_sys::Socket,
    seq: std::cell::Cell<u32>,
}

impl Socket {
    /// Opens and connects a socket to the kernel.
    pub fn open() -> Result<Self> {
        let mut sock = netlink_sys::Socket::new(NETLINK_ROUTE).context("netlink socket")?;
        sock.bind_auto().context("binding the netlink socket")?;
        sock.connect(&SocketAddr::new(0, 0))
            .context("connecting the netlink socket")?;
        Ok(Self {
            sock,
            seq: std::cell::Cell::new(1),
        })
    }

    /// Sends `request` as a dump and returns every message of the answer (all parts, up to
    /// `NLMSG_DONE`). Errors: the socket's, a kernel `NLMSG_ERROR`, or an answer that does not
    /// parse.
    pub fn dump(&self, request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(request));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.sock
            .send(&buf, 0)
            .context("sending a netlink dump request")?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self
                .sock
                .recv_from_full()
                .context("reading a netlink dump")?;
            if parse_dump_part(&data, seq, &mut out)? {
                return Ok(out);
            }
        }
    }
}

/// Parses one datagram of a dump's answer (a run of netlink messages, each padded to 4
/// bytes): appends the route messages of request `seq` to `out`, skips other requests'
/// messages. `Ok(true)` once `NLMSG_DONE` of `seq` is reached (what follows it is ignored).
/// Errors: a kernel `NLMSG_ERROR` for `seq`, or bytes that are not netlink messages.
pub fn parse_dump_part(data: &[u8], seq: u32, out: &mut Vec<RouteNetlinkMessage>) -> Result<bool> {
    let mut off = 0;
    while off < data.len() {
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
            .context("parsing a netlink message")?;
        let len = m.header.length as usize;
        if m.header.sequence_number == seq {
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Error(e) => bail!("netlink dump refused: {e}"),
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
        }
        if len == 0 {
            bail!("netlink message of length 0");
        }
        off += len.next_multiple_of(4);
    }
    Ok(false)
}
