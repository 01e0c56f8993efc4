//! Finding a pod's addresses and its host-side veth from its network namespace, without
//! relying on a CNI: inside the pod, every veth's peer index (`IFLA_LINK`) names the peer in
//! the agent's namespace; the host-side candidate must be a veth whose own peer index is the
//! pod-side interface, both ways, before it is trusted.
use std::{net::IpAddr, path::Path};

use anyhow::{Result, bail};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressScope},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
};
use serde::Serialize;

use crate::netlink;

/// The host side of one pod veth, in the agent's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct HostIf {
    pub name: String,
    pub index: u32,
}

/// What a pod's network namespace says about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodNet {
    /// Global-scope addresses of the pod's veths (link-local and tentative ones excluded).
    pub ips: Vec<IpAddr>,
    /// Host-side peers of the pod's veths.
    pub host_ifs: Vec<HostIf>,
    /// The pod's own veths (in its namespace), where egress delays are set.
    pub pod_ifs: Vec<HostIf>,
}

#[derive(Debug)]
struct Veth {
    index: u32,
    peer_index: u32,
    name: String,
}

fn veth_of(msg: &LinkMessage) -> Option<Veth> {
    let is_veth = msg.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    });
    let peer = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    });
    match (is_veth, peer) {
        (true, Some(peer_index)) if peer_index != 0 => Some(Veth {
            index: msg.header.index,
            peer_index,
            name: name_of(msg).unwrap_or_default(),
        }),
        _ => None,
    }
}

fn name_of(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// The veths of a network namespace and their usable addresses.
fn pod_side(netns: &Path) -> Result<(Vec<Veth>, Vec<IpAddr>)> {
    netlink::run(Some(netns), |handle| async move {
        let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
        let veths: Vec<Veth> = links.iter().filter_map(veth_of).collect();
        let addrs: Vec<_> = handle.address().get().execute().try_collect().await?;
        let mut ips = Vec::new();
        for a in addrs {
            if !veths.iter().any(|v| v.index == a.header.index)
                || a.header.scope != AddressScope::Universe
            {
                continue;
            }
            let unusable = a.attributes.iter().any(|at| match at {
                AddressAttribute::Flags(f) => {
                    f.contains(AddressFlags::Tentative) || f.contains(AddressFlags::Dadfailed)
                }
                _ => false,
            });
            let ip = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let (Some(ip), false) = (ip, unusable) {
                ips.push(ip);
            }
        }
        ips.sort();
        ips.dedup();
        Ok((veths, ips))
    })
}

/// The usable addresses of the veths of a network namespace.
pub fn addresses(netns: &Path) -> Result<Vec<IpAddr>> {
    Ok(pod_side(netns)?.1)
}

/// The veths of the agent's own namespace: index -> (name, peer index).
pub type HostVeths = std::collections::HashMap<u32, (String, u32)>;

/// Dumps the agent namespace's veths once (for many pods).
pub fn host_veths() -> Result<HostVeths> {
    netlink::run(None, |handle| async move {
        let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
        Ok(links
            .iter()
            .filter_map(|m| Some((veth_of(m)?, name_of(m)?)))
            .map(|(v, name)| (v.index, (name, v.peer_index)))
            .collect())
    })
}

/// Reads the pod's veths and addresses from `netns`, and finds their host-side peers in
/// `host` (from [`host_veths`]).
pub fn pod_net_with(netns: &Path, host: &HostVeths) -> Result<PodNet> {
    let (veths, ips) = pod_side(netns)?;
    if veths.is_empty() {
        bail!("no veth in network namespace {}", netns.display());
    }
    let pod_ifs: Vec<HostIf> = veths
        .iter()
        .map(|v| HostIf {
            name: v.name.clone(),
            index: v.index,
        })
        .collect();
    let host_ifs: Vec<HostIf> = veths
        .iter()
        .filter_map(|v| {
            let (name, peer) = host.get(&v.peer_index)?;
            (*peer == v.index).then(|| HostIf {
                name: name.clone(),
                index: v.peer_index,
            })
        })
        .collect();
    if host_ifs.is_empty() {
        bail!(
            "the veth peers of network namespace {} are not in the agent's network namespace",
            netns.display()
        );
    }
    Ok(PodNet {
        ips,
        host_ifs,
        pod_ifs,
    })
}

/// [`pod_net_with`] for one pod.
pub fn pod_net(netns: &Path) -> Result<PodNet> {
    pod_net_with(netns, &host_veths()?)
}
