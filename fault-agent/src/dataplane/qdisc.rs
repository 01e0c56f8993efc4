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

/// Handle of the fq root qdiscs the agent makes (`fa17:`): how [`delete_our_fq`] tells its
/// own from anyone else's fq.
pub const FQ_HANDLE: u32 = 0xFA17_0000;

/// The root qdisc of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// None, or `noqueue` (a veth's default): nothing queues there, nothing of anyone's.
    Default,
    /// An `fq`; `ours` when it has [`FQ_HANDLE`].
    Fq { ours: bool },
    /// Any other qdisc, by kind: someone's choice or the device's queueing default (`mq`,
    /// `pfifo_fast` on devices with a transmit queue), which Faultline does not replace.
    Other(String),
}

/// What a root qdisc of `kind` (absent: `None`) and `handle` is to Faultline.
pub fn classify_root(kind: Option<&str>, handle: u32) -> Root {
    match kind {
        None | Some("noqueue") => Root::Default,
        Some("fq") => Root::Fq {
            ours: handle == FQ_HANDLE,
        },
        Some(other) => Root::Other(other.to_owned()),
    }
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
        let root = all
            .iter()
            .filter(|m| m.header.index == ifindex as i32 && u32::from(m.header.parent) == TC_H_ROOT)
            .find_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some((k.clone(), u32::from(m.header.handle))),
                    _ => None,
                })
            });
        Ok(match root {
            Some((kind, handle)) => classify_root(Some(&kind), handle),
            None => classify_root(None, 0),
        })
    })
}

/// Makes `fq` (handle [`FQ_HANDLE`]) the root qdisc of `ifindex`, sized for EDT delays
/// ([`FQ_LIMIT`], [`FQ_FLOW_LIMIT`], [`FQ_HORIZON_US`]). Returns whether it is the agent's
/// (false: someone's fq was already there and is used as it is; true also for an fq of ours
/// a crashed agent left). Replaces only `noqueue` (a veth's default); refuses any other
/// qdisc, naming it (`mq`, `pfifo_fast`: the device queues, and replacing its qdisc would
/// change its traffic for everyone).
pub fn install_fq(netns: Option<&Path>, ifname: &str, ifindex: u32) -> Result<bool> {
    match root(netns, ifindex)? {
        Root::Fq { ours } => return Ok(ours),
        Root::Other(kind) => anyhow::bail!(
            "interface {ifname} has a {kind} root qdisc; delay and rate need fq there, and Faultline replaces only noqueue (a veth's default), never another qdisc"
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
        msg.header.handle = TcHandle::from(FQ_HANDLE);
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
        // NLM_F_REPLACE replaces noqueue; a qdisc that appeared since the check is
        // refused by the kernel unless it has our handle (then it is updated).
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

/// Deletes the root qdisc of `ifindex` if it is the fq the agent made (kind `fq`, handle
/// [`FQ_HANDLE`]; the kernel checks both in the same request), back to the device's default.
/// Anything else stays (someone replaced ours, or it never was ours). Returns whether it
/// deleted one; a gone interface or namespace counts as done.
pub fn delete_our_fq(netns: Option<&Path>, ifindex: u32) -> Result<bool> {
    if netns.is_some_and(|p| !p.exists()) {
        return Ok(false);
    }
    match root(netns, ifindex) {
        Ok(Root::Fq { ours: true }) => {}
        Ok(other) => {
            tracing::debug!(ifindex, root = ?other, "root qdisc is not our fq: left alone");
            return Ok(false);
        }
        Err(e) => {
            tracing::debug!(ifindex, error = %format!("{e:#}"), "no root qdisc to read (interface gone?)");
            return Ok(false);
        }
    }
    netlink::run(netns, move |handle| async move {
        let mut req = handle.qdisc().del(ifindex as i32);
        let msg = req.message_mut();
        msg.header.parent = TcHandle::from(TC_H_ROOT);
        msg.header.handle = TcHandle::from(FQ_HANDLE);
        msg.attributes.push(TcAttribute::Kind("fq".into()));
        match req.execute().await {
            Ok(()) => Ok(true),
            // EINVAL: the root is no longer our fq (kind or handle differ).
            Err(e) if netlink::is_errno(&e, &[libc::ENODEV, libc::ENOENT, libc::EINVAL]) => {
                Ok(false)
            }
            Err(e) => Err(anyhow::Error::from(e)
                .context(format!("deleting our fq root qdisc of ifindex {ifindex}"))),
        }
    })
}

/// Deletes the `clsact` qdisc of `ifindex` if no filter is left on either of its hooks (one
/// the agent may have added, see `AttachRecord::clsact_maybe`). Gone counts as done.
pub fn delete_clsact_if_unused(netns: Option<&Path>, ifindex: u32) -> Result<()> {
    if netns.is_some_and(|p| !p.exists()) {
        return Ok(());
    }
    let filters = netlink::run(netns, move |handle| async move {
        use futures::TryStreamExt as _;
        let mut n = 0;
        for egress in [false, true] {
            let mut tf = handle.traffic_filter(ifindex as i32);
            let req = if egress {
                tf.get().egress()
            } else {
                tf.get().ingress()
            };
            match req.execute().try_collect::<Vec<_>>().await {
                Ok(v) => n += v.len(),
                // No such device, or no clsact (nothing to delete).
                Err(e) if netlink::is_errno(&e, &[libc::ENODEV, libc::ENOENT, libc::EINVAL]) => {
                    return Ok(None);
                }
                Err(e) => return Err(anyhow::Error::from(e).context("listing filters")),
            }
        }
        Ok(Some(n))
    })?;
    match filters {
        Some(0) => delete_clsact(netns, ifindex),
        Some(n) => {
            tracing::debug!(ifindex, filters = n, "clsact still has filters: left alone");
            Ok(())
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_noqueue_is_replaceable_and_only_our_handle_is_ours() {
        assert_eq!(classify_root(None, 0), Root::Default);
        assert_eq!(classify_root(Some("noqueue"), 0), Root::Default);
        // Devices with a transmit queue: their traffic would change for everyone.
        for kind in ["mq", "pfifo_fast", "htb", "fq_codel"] {
            assert_eq!(classify_root(Some(kind), 0x10000), Root::Other(kind.into()));
        }
        assert_eq!(
            classify_root(Some("fq"), FQ_HANDLE),
            Root::Fq { ours: true }
        );
        assert_eq!(
            classify_root(Some("fq"), 0x8001_0000),
            Root::Fq { ours: false }
        );
    }
}
