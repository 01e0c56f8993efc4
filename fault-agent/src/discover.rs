//! Finding a pod's addresses and its host-side veth from its network namespace, without
//! relying on a CNI: inside the pod, every veth's peer index (`IFLA_LINK`) names the peer in
//! the agent's namespace; the host-side candidate must be a veth whose own peer index is the
//! pod-side interface, both ways, before it is trusted.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope},
    link::{InfoKind, LinkAttribute, LinkExtentMask, LinkInfo, LinkMessage},
};
use serde::Serialize;

use crate::rtdump;

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

/// A veth of a link dump: its index, its peer's index (`IFLA_LINK`, never 0), its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    pub index: u32,
    pub peer_index: u32,
    pub name: String,
}

/// The veth a link message describes, if it is one with a peer.
pub fn veth_of(msg: &LinkMessage) -> Option<Veth> {
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

/// A link dump request without statistics (`RTEXT_FILTER_SKIP_STATS`, Linux 4.13): the
/// per-interface counters are most of what the kernel computes and sends per link.
fn get_links() -> RouteNetlinkMessage {
    let mut req = LinkMessage::default();
    req.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    RouteNetlinkMessage::GetLink(req)
}

/// The veths of the current thread's network namespace and their usable addresses.
fn pod_side_here() -> Result<(Vec<Veth>, Vec<IpAddr>)> {
    let sock = rtdump::Socket::open()?;
    let links = sock.dump(get_links())?;
    let addrs = sock.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
    Ok(pod_side_from(&links, &addrs))
}

/// From a namespace's link and address dumps: its veths, and the global-scope addresses on
/// them that are usable (neither tentative nor failed DAD), sorted, without duplicates.
pub fn pod_side_from(
    links: &[RouteNetlinkMessage],
    addrs: &[RouteNetlinkMessage],
) -> (Vec<Veth>, Vec<IpAddr>) {
    let veths: Vec<Veth> = links
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => veth_of(l),
            _ => None,
        })
        .collect();
    let mut ips = Vec::new();
    for a in addrs.iter().filter_map(|m| match m {
        RouteNetlinkMessage::NewAddress(a) => Some(a),
        _ => None,
    }) {
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
    (veths, ips)
}

/// Threads that read namespaces (each enters one namespace after another; a thread is
/// cheap next to the `setns(2)` and the two dumps it serves, and two keep both cores busy).
const READERS: usize = 2;

/// Reads many network namespaces: `f` runs in each (on a reader thread that entered it with
/// `setns(2)`), results in the order of `paths`. A reader thread is never returned to a pool
/// in a foreign namespace: it ends with its batch.
pub fn in_each_netns<T: Send>(
    paths: &[PathBuf],
    f: impl Fn() -> Result<T> + Sync,
) -> Vec<Result<T>> {
    if paths.is_empty() {
        return Vec::new();
    }
    let per = paths.len().div_ceil(READERS);
    std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(per)
            .map(|chunk| {
                let f = &f;
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|p| {
                            let file = std::fs::File::open(p)
                                .with_context(|| format!("opening {}", p.display()))?;
                            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                                .with_context(|| format!("entering {}", p.display()))?;
                            f()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(paths.chunks(per))
            .flat_map(|(h, chunk)| {
                h.join().unwrap_or_else(|_| {
                    chunk
                        .iter()
                        .map(|p| Err(anyhow!("reading {} panicked", p.display())))
                        .collect()
                })
            })
            .collect()
    })
}

/// The usable addresses of the veths of each network namespace of `paths`.
pub fn addresses_of(paths: &[PathBuf]) -> Vec<Result<Vec<IpAddr>>> {
    in_each_netns(paths, || Ok(pod_side_here()?.1))
}

/// The veths of the agent's own namespace: index -> (name, peer index).
pub type HostVeths = std::collections::HashMap<u32, (String, u32)>;

/// Dumps the agent namespace's veths once (for many pods).
pub fn host_veths() -> Result<HostVeths> {
    Ok(host_veths_from(&rtdump::Socket::open()?.dump(get_links())?))
}

/// The named veths of a link dump of the agent's namespace.
pub fn host_veths_from(links: &[RouteNetlinkMessage]) -> HostVeths {
    links
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .filter_map(|m| Some((veth_of(m)?, name_of(m)?)))
        .map(|(v, name)| (v.index, (name, v.peer_index)))
        .collect()
}

/// Reads each pod's veths and addresses from its network namespace (`paths`), and finds their
/// host-side peers in `host` (from [`host_veths`]); results in the order of `paths`.
pub fn pod_nets(paths: &[PathBuf], host: &HostVeths) -> Vec<Result<PodNet>> {
    in_each_netns(paths, pod_side_here)
        .into_iter()
        .zip(paths)
        .map(|(side, netns)| pod_net_from(side?, netns, host))
        .collect()
}

/// A pod's [`PodNet`] from what its namespace holds ([`pod_side_from`]) and the agent's
/// veths: only host-side veths whose peer is the pod's veth, both ways. Errors: no veth in
/// the namespace, or none of its peers in the agent's namespace.
pub fn pod_net_from(
    (veths, ips): (Vec<Veth>, Vec<IpAddr>),
    netns: &Path,
    host: &HostVeths,
) -> Result<PodNet> {
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

/// [`pod_nets`] for one pod.
pub fn pod_net(netns: &Path) -> Result<PodNet> {
    let host = host_veths()?;
    pod_nets(&[netns.to_path_buf()], &host)
        .pop()
        .unwrap_or_else(|| Err(anyhow!("no result for {}", netns.display())))
}
