//! [`Service`]: one Service's front doors (ClusterIP, optional external IP and node ports),
//! its backends, and pod handles that send through it.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};

use super::nft::{self, Place};
use crate::topology::{Family, Pod};

/// Which front doors a Service has besides its ClusterIP-like VIP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceOpts {
    /// Also DNAT a second address (`198.19.1.{10+k}` and `fd00:19:1::{10+k:x}`), like
    /// `externalIPs`. Default: no.
    pub external_ip: bool,
    /// Also DNAT these destination ports of the node address (see
    /// [`ServiceNet::node_ip`](super::ServiceNet::node_ip)) without SNAT, like a NodePort with
    /// `externalTrafficPolicy: Local`; ports are not translated. Must not overlap another
    /// Service's. Default: none.
    pub node_ports: Option<RangeInclusive<u16>>,
}

/// An address pair (IPv4, IPv6).
pub(crate) type Pair = (Ipv4Addr, Ipv6Addr);

/// A Service made by [`ServiceNet::service`](super::ServiceNet::service): TCP and UDP to any
/// port of its front doors go to its backends, port unchanged (DNAT in the host's prerouting,
/// replies un-NATed by conntrack). ICMP is not DNATed: like a kube-proxy ClusterIP, a VIP
/// answers no ping. It lives as long as the `ServiceNet` (or the
/// [`Fabric`](crate::nodes::Fabric), whose every node DNATs it); this handle only describes
/// it (cloning or dropping it changes nothing).
#[derive(Debug, Clone)]
pub struct Service {
    pub(super) name: String,
    /// Its position in its `ServiceNet` or `Fabric`, from 0 (`k` in the addresses).
    pub(super) index: usize,
    /// The tables holding its rules (one per node of a `Fabric`), shared by every clone so
    /// that a node added later is counted too.
    pub(super) places: Arc<Mutex<Vec<Place>>>,
    pub(super) vip: Pair,
    pub(super) external: Option<Pair>,
    pub(super) node: Option<(Pair, RangeInclusive<u16>)>,
    /// Backends with the name of their nftables chain.
    pub(super) backends: Vec<(Pod, String)>,
}

/// The `k`-th Service's VIP, `198.19.0.{10+k}` and `fd00:19::{10+k:x}` (`k` < 245).
fn vip_of(k: usize) -> Pair {
    let host = 10 + k as u8;
    (
        Ipv4Addr::new(198, 19, 0, host),
        Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, host.into()),
    )
}

/// The `k`-th Service's external IP, `198.19.1.{10+k}` and `fd00:19:1::{10+k:x}`.
fn external_of(k: usize) -> Pair {
    let host = 10 + k as u8;
    (
        Ipv4Addr::new(198, 19, 1, host),
        Ipv6Addr::new(0xfd00, 0x19, 1, 0, 0, 0, 0, host.into()),
    )
}

fn pick(pair: Pair, family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(pair.0),
        Family::V6 => IpAddr::V6(pair.1),
    }
}

impl Service {
    /// The `k`-th Service (addresses and chain names) of a `ServiceNet` or `Fabric`, not yet
    /// in any table: `node` is the node address if `opts` has node ports; `places` are the
    /// tables it will be in ([`Service::install`] it there).
    pub(crate) fn plan(
        k: usize,
        name: &str,
        backends: &[&Pod],
        opts: &ServiceOpts,
        node: Pair,
        places: Vec<Place>,
    ) -> Service {
        let backends = (backends.iter().enumerate())
            .map(|(j, p)| ((*p).clone(), format!("svc{k}_be{j}")))
            .collect();
        Service {
            name: name.to_owned(),
            index: k,
            places: Arc::new(Mutex::new(places)),
            vip: vip_of(k),
            external: opts.external_ip.then(|| external_of(k)),
            node: (opts.node_ports.clone()).map(|p| (node, p)),
            backends,
        }
    }

    /// Adds its chains and rules to the table of `place`, matching what arrives on the links
    /// `<prefix>*` (or anything, without `prefix`).
    pub(crate) fn install(&self, place: &Place, prefix: Option<&str>) -> Result<()> {
        let chains: Vec<nft::Backend> = (self.backends.iter())
            .map(|(p, chain)| nft::Backend {
                chain: chain.clone(),
                v4: p.ipv4(),
                v6: p.ipv6(),
            })
            .collect();
        let chooser = format!("svc{}", self.index);
        nft::add_service(place, prefix, &chooser, &chains, &self.doors())
            .with_context(|| format!("adding service {} to {place:?}", self.name))
    }

    /// Records that it is also in the table of `place` (for [`Service::new_connections`]).
    pub(crate) fn add_place(&self, place: Place) {
        self.places
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(place);
    }

    /// Its front doors, for nftables.
    fn doors(&self) -> Vec<nft::Door> {
        let door = |(v4, v6): Pair, ports| nft::Door { v4, v6, ports };
        let mut doors = vec![door(self.vip, None)];
        doors.extend(self.external.map(|p| door(p, None)));
        doors.extend((self.node.clone()).map(|(p, ports)| door(p, Some(ports))));
        doors
    }

    /// The name given at creation (for humans only).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ClusterIP-like VIP of `family`: `198.19.0.{10+k}` or `fd00:19::{10+k:x}` for the
    /// `k`-th Service of its `ServiceNet`.
    pub fn vip(&self, family: Family) -> IpAddr {
        pick(self.vip, family)
    }

    /// The external IP of `family` (`198.19.1.{10+k}`, `fd00:19:1::{10+k:x}`), if the Service
    /// has one ([`ServiceOpts::external_ip`]).
    pub fn external_ip(&self, family: Family) -> Option<IpAddr> {
        self.external.map(|p| pick(p, family))
    }

    /// The node address of `family`, if the Service has node ports.
    pub fn node_ip(&self, family: Family) -> Option<IpAddr> {
        self.node.as_ref().map(|(p, _)| pick(*p, family))
    }

    /// The node ports (destination ports of the node address that lead to this Service).
    pub fn node_ports(&self) -> Option<RangeInclusive<u16>> {
        self.node.as_ref().map(|(_, ports)| ports.clone())
    }

    /// Every front-door address, IPv4 then IPv6 of each: VIP, then external IP, then node
    /// address (which leads here on the node ports only).
    pub fn addresses(&self) -> Vec<IpAddr> {
        let pairs = [
            Some(self.vip),
            self.external,
            self.node.as_ref().map(|n| n.0),
        ];
        pairs
            .into_iter()
            .flatten()
            .flat_map(|p| [IpAddr::V4(p.0), IpAddr::V6(p.1)])
            .collect()
    }

    /// The backends, in the order given at creation.
    pub fn backends(&self) -> Vec<Pod> {
        self.backends.iter().map(|(p, _)| p.clone()).collect()
    }

    /// How many new connections (TCP and UDP, both families, all front doors) went to each
    /// backend so far, from the nftables counters (summed over the nodes of a `Fabric`: each
    /// connection is DNATed on its client's node only): `(backend pod name, count)` in
    /// backend order. Fails once the `ServiceNet` or `Fabric` is dropped.
    pub fn new_connections(&self) -> Result<Vec<(String, u64)>> {
        let places = self
            .places
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut counts = vec![0u64; self.backends.len()];
        for place in &places {
            let sums = nft::counters(place)
                .with_context(|| format!("reading the counters of service {}", self.name))?;
            for ((_, chain), n) in self.backends.iter().zip(&mut counts) {
                *n += sums.get(chain).copied().unwrap_or(0);
            }
        }
        Ok((self.backends.iter().zip(counts))
            .map(|((pod, _), n)| (pod.name().to_owned(), n))
            .collect())
    }

    /// A handle on `backend` whose address is the Service's VIP: probes sending to it go
    /// through the Service, and receive or answer in `backend`'s namespace (e.g.
    /// `probe::udp_stream(&client, &svc.through(&backend), family, &opts)`). With several
    /// backends each new connection goes to any of them, so a probe receiving in one may miss.
    ///
    /// # Panics
    /// If `backend` is not a backend of this Service.
    pub fn through(&self, backend: &Pod) -> Pod {
        self.via(backend, self.vip)
    }

    /// Like [`Service::through`], through the external IP.
    ///
    /// # Panics
    /// If the Service has no external IP, or `backend` is not one of its backends.
    pub fn through_external(&self, backend: &Pod) -> Pod {
        let pair = self.external.unwrap_or_else(|| {
            panic!(
                "service {} has no external IP (ServiceOpts::external_ip)",
                self.name
            )
        });
        self.via(backend, pair)
    }

    /// Like [`Service::through`], through the node address; probes must use a port of
    /// [`Service::node_ports`].
    ///
    /// # Panics
    /// If the Service has no node ports, or `backend` is not one of its backends.
    pub fn through_node_port(&self, backend: &Pod) -> Pod {
        let (pair, _) = self.node.clone().unwrap_or_else(|| {
            panic!(
                "service {} has no node ports (ServiceOpts::node_ports)",
                self.name
            )
        });
        self.via(backend, pair)
    }

    fn via(&self, backend: &Pod, pair: Pair) -> Pod {
        let known = (self.backends.iter()).any(|(p, _)| p.netns_name() == backend.netns_name());
        assert!(
            known,
            "pod {}/{} is not a backend of service {}",
            backend.namespace(),
            backend.name(),
            self.name
        );
        backend.with_addresses(pair.0, pair.1)
    }
}
