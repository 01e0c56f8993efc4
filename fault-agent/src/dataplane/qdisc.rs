//! qdisc operations aya does not offer, through rtnetlink: deleting `clsact`; reading,
//! installing (`fq`, for EDT delays and rates) and deleting root qdiscs.
use std::path::Path;

use anyhow::{Context as _, Result};
use netlink_packet_route::tc::{TcAttribute, TcHandle};

use crate::netlink;

/// `TC_H_CLSACT` (= `TC_H_INGRESS`), the parent of the clsact qdisc.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;

/// Deletes the `clsact` qdisc of interface `ifindex` (and so every filter on it). "No such
/// device" and "no such qdisc" count as done.
pub fn delete_clsact(netns: Option<&Path>, ifindex: u32) -> Result<()> {
    if netns.is_some_and(|p| !p.exists()) {
        return Ok(());
    }
    netlink::run(netns, move |handle| async move {
        let mut req = handle.qdisc().del(ifindex as i32);
        let msg = req.message_mut();
        msg.header.parent = TcHandle::from(TC_H_CLSACT);
        msg.header.handle = TcHandle::from(0xFFFF_0000u32);
        msg.attributes.push(TcAttribute::Kind("clsact".into()));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink::is_errno(&e, &[libc::ENODEV, libc::ENOENT, libc::EINVAL]) => Ok(()),
            Err(e) => {
                Err(anyhow::Error::from(e).context(format!("deleting clsact on ifindex {ifindex}")))
            }
        }
    })
}

/// `TC_H_ROOT`.
const TC_H_ROOT: u32 = 0xFFFF_FFFF;
/// fq `limit` (packets in the whole qdisc): room for a second of 10 Gbit/s of small packets.
pub const FQ_LIMIT: u32 = 100_000;
/// fq `flow_limit` (packets per flow): a flow delayed 1 s at 10,000 packets/s fits.
pub const FQ_FLOW_LIMIT: u32 = 10_000;
/// fq `horizon` in µs: departure times further out are dropped. Above the longest delay
/// plus jitter the API accepts (10 s).
pub const FQ_HORIZON_US: u32 = 12_000_000;
// fq's netlink attributes (include/uapi/linux/pkt_sched.h).
const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
const TCA_FQ_HORIZON: u16 = 14;

/// The root qdisc of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// The device's default (`noqueue` on a veth): nothing of anyone's.
    Default,
    /// An `fq`.
    Fq,
    /// Someone else's qdisc, by kind.
    Other(String),
}

/// Reads the root qdisc of `ifindex` in `netns` (the agent's own for `None`).
pub fn root(netns: Option<&Path>, ifindex: u32) -> Result<Root> {
    netlink::run(netns, move |handle| async move {
        use futures::TryStreamExt as _;
        let all: Vec<_> = handle
            .qdisc()
            .get()
            .index(ifindex as i32)
            .execute()
            .try_collect()
            .await?;
        let kind = all
            .iter()
            .filter(|m| m.header.index == ifindex as i32 && u32::from(m.header.parent) == TC_H_ROOT)
            .find_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                })
            });
        Ok(match kind.as_deref() {
            None | Some("noqueue") | Some("pfifo_fast") | Some("mq") => Root::Default,
            Some("fq") => Root::Fq,
            Some(other) => Root::Other(other.to_owned()),
        })
    })
}

/// Makes `fq` the root qdisc of `ifindex`, sized for EDT delays ([`FQ_LIMIT`],
/// [`FQ_FLOW_LIMIT`], [`FQ_HORIZON_US`]). Returns whether the agent created it (false: an fq
/// was already there and is used as it is). Refuses to replace another kind of qdisc.
pub fn install_fq(netns: Option<&Path>, ifname: &str, ifindex: u32) -> Result<bool> {
    match root(netns, ifindex)? {
        Root::Fq => return Ok(false),
        Root::Other(kind) => anyhow::bail!(
            "interface {ifname} has a {kind} root qdisc; delay and rate need fq there, and Faultline does not replace another qdisc"
        ),
        Root::Default => {}
    }
    netlink::run(netns, move |mut handle| async move {
        use futures::StreamExt as _;
        use netlink_packet_core::{
            DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
            NetlinkPayload,
        };
        use netlink_packet_route::{
            RouteNetlinkMessage,
            tc::{TcMessage, TcOption},
        };
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = TcHandle::from(TC_H_ROOT);
        msg.attributes.push(TcAttribute::Kind("fq".into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Other(DefaultNla::new(
                TCA_FQ_PLIMIT,
                FQ_LIMIT.to_ne_bytes().to_vec(),
            )),
            TcOption::Other(DefaultNla::new(
                TCA_FQ_FLOW_PLIMIT,
                FQ_FLOW_LIMIT.to_ne_bytes().to_vec(),
            )),
            TcOption::Other(DefaultNla::new(
                TCA_FQ_HORIZON,
                FQ_HORIZON_US.to_ne_bytes().to_vec(),
            )),
        ]));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let mut resp = handle.request(req)?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload
                && e.code.is_some()
            {
                return Err(anyhow::anyhow!("adding fq: {}", e.to_io()));
            }
        }
        Ok(())
    })
    .with_context(|| format!("installing fq on {ifname}"))?;
    Ok(true)
}

/// Deletes the root qdisc of `ifindex` (back to the device's default). Gone counts as done.
pub fn delete_root(netns: Option<&Path>, ifindex: u32) -> Result<()> {
    if netns.is_some_and(|p| !p.exists()) {
        return Ok(());
    }
    netlink::run(netns, move |handle| async move {
        let mut req = handle.qdisc().del(ifindex as i32);
        req.message_mut().header.parent = TcHandle::from(TC_H_ROOT);
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink::is_errno(&e, &[libc::ENODEV, libc::ENOENT, libc::EINVAL]) => Ok(()),
            Err(e) => Err(anyhow::Error::from(e)
                .context(format!("deleting the root qdisc of ifindex {ifindex}"))),
        }
    })
}
