//! The node's uplinks: the interfaces of the agent's network namespace that carry what local
//! pods send to other nodes. On them, after the node's NAT, a packet a pod sent to a Service's
//! virtual address carries its real backend address, so the sender's node can judge it there
//! (`fault_common::PROG_UPLINK_EGRESS`).
//!
//! Found automatically ([`auto`]) as the interfaces of the default routes (IPv4 and IPv6,
//! main table) and every overlay or tunnel device (VXLAN, Geneve, IP-in-IP, SIT, GRE,
//! WireGuard: what CNIs route other nodes' pod prefixes through), except the loopback, bridges
//! and the pods' own host veths; or named (`--uplink IFACE`).
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressScope},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    route::{RouteAttribute, RouteHeader, RouteMessage},
};

use crate::rtdump;

/// Which uplinks an agent uses (`--uplink`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkChoice {
    /// None: cross-node traffic to Services is not judged after the NAT.
    None,
    /// Found by [`auto`] at every pass.
    Auto,
    /// These interfaces (by name; one that does not exist is skipped until it does).
    Named(Vec<String>),
}

impl UplinkChoice {
    /// From the `--uplink` values: nothing means `default`; `auto`, `none`, or names.
    pub fn from_args(values: &[String], default: UplinkChoice) -> Result<Self, String> {
        match values {
            [] => Ok(default),
            [one] if one == "auto" => Ok(UplinkChoice::Auto),
            [one] if one == "none" => Ok(UplinkChoice::None),
            names if names.iter().any(|n| n == "auto" || n == "none") => {
                Err("--uplink: `auto` and `none` stand alone, not among interface names".into())
            }
            names => {
                for n in names {
                    if n.is_empty() || n.len() > 15 || n.contains('/') {
                        return Err(format!(
                            "--uplink: {n:?} is not an interface name (1-15 characters, no '/')"
                        ));
                    }
                }
                Ok(UplinkChoice::Named(names.to_vec()))
            }
        }
    }

    /// The uplinks now (name -> ifindex), leaving out `pod_host_ifs`.
    pub fn resolve(&self, pod_host_ifs: &BTreeSet<String>) -> Result<BTreeMap<String, u32>> {
        match self {
            UplinkChoice::None => Ok(BTreeMap::new()),
            UplinkChoice::Auto => auto(pod_host_ifs),
            UplinkChoice::Named(names) => {
                let links = links()?;
                Ok(links
                    .iter()
                    .filter_map(|l| Some((name_of(l)?, l.header.index)))
                    .filter(|(n, _)| names.contains(n) && !pod_host_ifs.contains(n))
                    .collect())
            }
        }
    }
}

/// The uplinks of `choice` for these pods (their host veths are never uplinks); an error is
/// logged and gives none, so that discovery trouble never stops the pods' own faults.
pub fn of_pods(choice: &UplinkChoice, pods: &[crate::pods::Pod]) -> BTreeMap<String, u32> {
    let host_ifs: BTreeSet<String> = pods
        .iter()
        .flat_map(|p| p.host_ifs.iter().map(|h| h.name.clone()))
        .collect();
    choice.resolve(&host_ifs).unwrap_or_else(|e| {
        tracing::warn!(error = %format!("{e:#}"), "cannot list the uplinks");
        BTreeMap::new()
    })
}

/// The node's own addresses (global scope, every interface of the agent's namespace: its
/// NICs, and the CNI bridge's gateway address, the source of the kubelet's probes), as /32
/// and /128 prefixes. They are never taken for a peer of a broader prefix: NetworkPolicy
/// always allows a node's own traffic with its pods, and so does a fault "from everything".
/// An error is logged and gives none.
pub fn own_addresses() -> Vec<ipnet::IpNet> {
    let dump = rtdump::Socket::open()
        .and_then(|s| s.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default())));
    let msgs = match dump {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot list the node's addresses");
            return vec![];
        }
    };
    msgs.into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => Some(a),
            _ => None,
        })
        .filter(|a| a.header.scope == AddressScope::Universe)
        .filter_map(|a| {
            a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(ip) => Some(ipnet::IpNet::from(*ip)),
                _ => None,
            })
        })
        .collect()
}

fn links() -> Result<Vec<LinkMessage>> {
    let msgs = rtdump::Socket::open()?
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .context("listing links")?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .collect())
}

fn name_of(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn kind_of(l: &LinkMessage) -> Option<&InfoKind> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

fn is_overlay(kind: &InfoKind) -> bool {
    matches!(
        kind,
        InfoKind::Vxlan
            | InfoKind::Geneve
            | InfoKind::IpIp
            | InfoKind::SitTun
            | InfoKind::Ip6Tnl
            | InfoKind::GreTun
            | InfoKind::GreTun6
            | InfoKind::Wireguard
    )
}

/// Interfaces of the default routes of the main table, both families.
fn default_route_ifs() -> Result<BTreeSet<u32>> {
    let sock = rtdump::Socket::open()?;
    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        routes.extend(
            sock.dump(RouteNetlinkMessage::GetRoute(req))
                .context("listing routes")?,
        );
    }
    Ok(default_route_ifs_from(&routes))
}

/// The output interfaces (`RTA_OIF`) of the default routes (prefix length 0) of the main
/// table in a route dump.
pub fn default_route_ifs_from(routes: &[RouteNetlinkMessage]) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for m in routes {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        let main = r.header.table == RouteHeader::RT_TABLE_MAIN
            || r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Table(254)));
        if r.header.destination_prefix_length != 0 || !main {
            continue;
        }
        out.extend(r.attributes.iter().filter_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        }));
    }
    out
}

/// The uplinks found automatically (see the module docs), name -> ifindex.
pub fn auto(pod_host_ifs: &BTreeSet<String>) -> Result<BTreeMap<String, u32>> {
    let default_ifs = default_route_ifs()?;
    Ok(auto_from(&links()?, &default_ifs, pod_host_ifs))
}

/// [`auto`]'s choice among `links` (a link dump), given the default routes' interfaces: up,
/// not loopback, not a bridge, a default route's interface or an overlay, named, not a pod's
/// host veth.
pub fn auto_from(
    links: &[LinkMessage],
    default_ifs: &BTreeSet<u32>,
    pod_host_ifs: &BTreeSet<String>,
) -> BTreeMap<String, u32> {
    links
        .iter()
        .filter(|l| l.header.flags.contains(LinkFlags::Up))
        .filter(|l| !l.header.flags.contains(LinkFlags::Loopback))
        .filter(|l| kind_of(l) != Some(&InfoKind::Bridge))
        .filter(|l| default_ifs.contains(&l.header.index) || kind_of(l).is_some_and(is_overlay))
        .filter_map(|l| Some((name_of(l)?, l.header.index)))
        .filter(|(n, _)| !pod_host_ifs.contains(n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn choices_from_arguments() {
        let d = UplinkChoice::None;
        assert_eq!(
            UplinkChoice::from_args(&[], d.clone()),
            Ok(UplinkChoice::None)
        );
        assert_eq!(
            UplinkChoice::from_args(&strings(&["auto"]), d.clone()),
            Ok(UplinkChoice::Auto)
        );
        assert_eq!(
            UplinkChoice::from_args(&strings(&["eth0", "vxlan0"]), d.clone()),
            Ok(UplinkChoice::Named(strings(&["eth0", "vxlan0"])))
        );
        assert!(UplinkChoice::from_args(&strings(&["eth0", "auto"]), d.clone()).is_err());
        let e = UplinkChoice::from_args(&strings(&["a/b"]), d).unwrap_err();
        assert!(e.contains("--uplink"), "{e}");
    }

    #[test]
    fn auto_finds_the_default_route_interface_and_never_loopback() {
        let found = auto(&BTreeSet::new()).unwrap();
        assert!(!found.contains_key("lo"));
        let defaults = default_route_ifs().unwrap();
        for index in defaults {
            assert!(found.values().any(|i| *i == index), "{found:?}");
        }
    }
}
