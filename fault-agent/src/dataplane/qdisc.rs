//! qdisc operations aya does not offer (deleting `clsact`), through rtnetlink.
use anyhow::Result;
use netlink_packet_route::tc::{TcAttribute, TcHandle};

use crate::netlink;

/// `TC_H_CLSACT` (= `TC_H_INGRESS`), the parent of the clsact qdisc.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;

/// Deletes the `clsact` qdisc of interface `ifindex` (and so every filter on it). "No such
/// device" and "no such qdisc" count as done.
pub fn delete_clsact(ifindex: u32) -> Result<()> {
    netlink::run(None, move |handle| async move {
        let mut req = handle.qdisc().del(ifindex as i32);
        let msg = req.message_mut();
        msg.header.parent = TcHandle::from(TC_H_CLSACT);
        msg.header.handle = TcHandle::from(0xFFFF_0000u32);
        msg.attributes.push(TcAttribute::Kind("clsact".into()));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink::is_errno(&e, &[libc::ENODEV, libc::ENOENT, libc::EINVAL]) => Ok(()),
            Err(e) => Err(anyhow::Error::from(e).context(format!("deleting clsact on ifindex {ifindex}"))),
        }
    })
}
