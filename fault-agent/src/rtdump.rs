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

/// The text of a kernel `NLMSG_ERROR`, from its code alone: the crate's own `Display` negates
/// the code, which overflows (a panic with debug assertions) for `i32::MIN` (found by fuzzing,
/// `netlink`).
fn errno_text(e: &netlink_packet_core::ErrorMessage) -> String {
    match e.code {
        None => "an acknowledgement where the dump was expected".to_owned(),
        Some(c) => match i32::try_from(c.get().unsigned_abs()) {
            Ok(errno) => std::io::Error::from_raw_os_error(errno).to_string(),
            Err(_) => format!("error code {}", c.get()),
        },
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
                NetlinkPayload::Error(e) => bail!("netlink dump refused: {}", errno_text(&e)),
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

#[cfg(test)]
mod tests {
    use super::parse_dump_part;

    /// An `NLMSG_ERROR` message (type 2) of request `seq` with error code `code`.
    fn nlmsg_error(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes()); // length: header 16 + code 4 + request header 16
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        m.extend_from_slice(&0u16.to_ne_bytes()); // flags
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes()); // port
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]);
        m
    }

    /// Found by fuzzing (`netlink`): an error code of `i32::MIN` made the netlink crate's own
    /// `Display` negate it and overflow (a panic with debug assertions).
    #[test]
    fn an_error_code_of_i32_min_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        let e = parse_dump_part(&nlmsg_error(1, i32::MIN), 1, &mut out).unwrap_err();
        assert!(format!("{e:#}").contains("netlink dump refused"), "{e:#}");
        let e = parse_dump_part(&nlmsg_error(1, -1), 1, &mut out).unwrap_err();
        assert!(format!("{e:#}").contains("not permitted"), "{e:#}");
    }
}
