//! Kubernetes Services on one host, the way kube-proxy makes them: in the root network
//! namespace, netfilter's prerouting DNATs a Service's front doors to a backend pod's address
//! (after the TC ingress hook of the client's host-side veth, before the TC egress hook of the
//! backend's), and conntrack un-NATs the replies. No SNAT: backends see the client's address.
//!
//! A [`ServiceNet`] prepares the host for the Services of one [`Topology`];
//! [`ServiceNet::service`] adds a [`Service`], whose [`Service::through`] hands probes a pod
//! whose address is the Service's, so every probe of [`crate::probe`] works through it
//! unchanged.
//!
//! # Addresses
//! VIPs `198.19.0.{10+k}` and `fd00:19::{10+k:x}`, external IPs `198.19.1.{10+k}` and
//! `fd00:19:1::{10+k:x}` for the `k`-th Service (at most [`MAX_SERVICES`]); node address
//! [`BRIDGED_NODE_V4`] / [`BRIDGED_NODE_V6`] (bridged: the pods' gateway) or
//! [`ROUTED_NODE_V4`] / [`ROUTED_NODE_V6`] (routed).
//!
//! # Host side
//! - Bridged: the bridge gets `198.18.0.1/16` (a /16, not a /24, so that pods past the 245th,
//!   `198.18.1.x`, are reachable too) and `fd00:fa::1/64`, IPv6 enabled with a link-local
//!   address (the kernel sends no neighbour solicitation without one) and no duplicate
//!   address detection, a fixed MAC (a bridge's own MAC otherwise follows its ports), and
//!   the bridge options `nf_call_iptables` / `nf_call_ip6tables` = 1: the per-bridge form of
//!   `net.bridge.bridge-nf-call-iptables` / `-ip6tables` (either one suffices), needed so
//!   that replies bridged from a backend straight to a client of the same segment pass
//!   conntrack and are un-NATed. Without it, they arrive from the backend's own address (on
//!   the reference machine the sysctls are built in and 1 anyway). Each pod gets routes to
//!   [`CLUSTER_NET_V4`], [`CLUSTER_NET_V6`] and [`EXTERNAL_NET_V6`] via the bridge.
//! - Routed: a veth pair `fl<id>nd` / `fl<id>nq` (the reference kernel has no `dummy`
//!   links) holds the node address; pods reach it by their default route. Rules `from <node
//!   address> lookup <topology table>` route the host's own answers from it (e.g. a reset
//!   for a port that is no node port) back to the pods.
//! - Both: IPv4 and IPv6 forwarding on (left on: other topologies may rely on it).
//!
//! # nftables
//! One table per topology, `inet fl<id>svc`:
//! - chains `zone_in` / `zone_out` (priority raw) put the topology's traffic (links
//!   `fl<id>*`) in a conntrack zone of its own, so that entries left by an earlier topology
//!   with the same addresses and ports never capture its connections;
//! - chain `confine` (forward) drops what would be forwarded between the topology's links and
//!   any other link: test traffic stays between the test's namespaces;
//! - chain `services` (nat, prerouting, priority dstnat): per front door and family
//!   `iifname "fl<id>*" ip daddr <door> meta l4proto { tcp, udp } [th dport <node ports>]
//!   goto <target>`; the target is the backend's chain, or with several backends
//!   `numgen random mod N vmap { 0 : goto <backend 0>, ... }` (kube-proxy's nftables mode);
//! - one chain per backend: a `counter`, then `dnat ip to` / `dnat ip6 to` its address, port
//!   unchanged. The nat hook sees the first packet of a connection only, so the counter
//!   counts new connections ([`Service::new_connections`]).
//!
//! # One at a time
//! One `ServiceNet` at a time on a machine (they share host addresses and routes): a second
//! one fails, naming the holder (an `flock` on [`LOCK_FILE`], released by the kernel when a
//! process dies); tests hold [`crate::serial`]. Dropping it removes everything it made (and
//! the conntrack entries of its zone, if the `conntrack` tool is installed); what a killed
//! process left is removed by [`crate::reap_stale`].
mod host;
pub(crate) mod nft;
mod service;

use std::{net::IpAddr, ops::RangeInclusive};

use anyhow::{Context as _, Result, bail, ensure};

pub use host::{BRIDGED_NODE_V4, BRIDGED_NODE_V6, ROUTED_NODE_V4, ROUTED_NODE_V6};
pub use service::{Service, ServiceOpts};

use crate::topology::{Family, Mode, Pod, Topology, enable_forwarding, names, reap_stale};

/// Where bridged pods route to for VIPs and IPv4 external IPs.
pub const CLUSTER_NET_V4: &str = "198.19.0.0/16";
/// Where bridged pods route to for IPv6 VIPs.
pub const CLUSTER_NET_V6: &str = "fd00:19::/64";
/// Where bridged pods route to for IPv6 external IPs.
pub const EXTERNAL_NET_V6: &str = "fd00:19:1::/64";
/// The lock file of the one `ServiceNet` of the machine: `/run/faultline-testkit/services.lock`,
/// holding the pid and topology of the current holder (for the error message of the next one).
pub const LOCK_FILE: &str = "/run/faultline-testkit/services.lock";
/// Most Services per `ServiceNet`.
pub const MAX_SERVICES: usize = 245;

/// The host prepared for the Services of one topology (see the module documentation).
/// Removes what it made when dropped.
pub struct ServiceNet {
    id: u32,
    mode: Mode,
    prefix: String,
    bridge: String,
    table: String,
    /// Bridged pods given routes to the Service ranges.
    pods_with_routes: Vec<Pod>,
    /// Name and node ports of each Service made, in order.
    services: Vec<(String, Option<RangeInclusive<u16>>)>,
    _lock: crate::lock::Lock,
}

impl ServiceNet {
    /// Prepares the host for Services of `topo` (see the [module documentation](self)):
    /// reaps what dead processes left, takes the machine-wide lock, turns IPv4 and IPv6
    /// forwarding on (left on), creates the nftables table `fl<id>svc` and the host side;
    /// bridged, routes every current pod to the Service ranges (pods added later:
    /// [`ServiceNet::route_pod`]).
    /// Fails if another `ServiceNet` exists on the machine (naming its process and topology),
    /// or if a node address is already a host address.
    pub fn new(topo: &Topology) -> Result<Self> {
        reap_stale();
        let lock = crate::lock::acquire(
            LOCK_FILE,
            "ServiceNet",
            &topo.prefix(),
            "they share host addresses and routes",
        )?;
        host::check_free(topo.mode())?;
        let mut net = Self {
            id: topo.id(),
            mode: topo.mode(),
            prefix: topo.prefix(),
            bridge: topo.bridge().to_owned(),
            table: names::svc_table(topo.id()),
            pods_with_routes: Vec::new(),
            services: Vec::new(),
            _lock: lock,
        };
        net.build(&topo.pods())
            .with_context(|| format!("preparing Services for topology {}", net.prefix))?;
        Ok(net)
    }

    fn build(&mut self, pods: &[Pod]) -> Result<()> {
        enable_forwarding()?;
        let links = nft::Links {
            prefix: &self.prefix,
            zone: self.zone(),
        };
        nft::create_table(&self.place(), Some(links))?;
        host::prepare(self.id, self.mode, &self.bridge)?;
        pods.iter().try_for_each(|p| self.route_pod(p))
    }

    /// The conntrack zone of the topology's traffic: 1..=65535, from its id.
    fn zone(&self) -> u16 {
        (1 + self.id % 65_535) as u16
    }

    /// The nftables table (family `inet`): `fl<id>svc`.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The node address of `family`: the pods' gateway on the bridge (bridged) or the address
    /// of `fl<id>nd` (routed).
    pub fn node_ip(&self, family: Family) -> IpAddr {
        let (v4, v6) = host::node_addresses(self.mode);
        match family {
            Family::V4 => IpAddr::V4(v4),
            Family::V6 => IpAddr::V6(v6),
        }
    }

    /// Routes a pod of the topology added after [`ServiceNet::new`] (or readdressed, which
    /// loses its routes) to the Service ranges via the bridge: `198.19.0.0/16` via
    /// `198.18.0.1`, `fd00:19::/64` and `fd00:19:1::/64` via `fd00:fa::1`. Routed pods need
    /// nothing (their default route leads to the host): a no-op. Fails if `pod` is not of
    /// this topology.
    pub fn route_pod(&mut self, pod: &Pod) -> Result<()> {
        ensure!(
            pod.netns_name().starts_with(&format!("{}-", self.prefix)),
            "pod {}/{} is not of topology {}",
            pod.namespace(),
            pod.name(),
            self.prefix
        );
        if self.mode == Mode::Routed {
            return Ok(());
        }
        if !self
            .pods_with_routes
            .iter()
            .any(|p| p.netns_name() == pod.netns_name())
        {
            self.pods_with_routes.push(pod.clone());
        }
        host::route_pod(pod)
    }

    /// A Service named `name` (for humans; unique in this `ServiceNet`) with a VIP only: TCP
    /// and UDP to any port of it go to `backends` (one: plain DNAT; several: a random one per
    /// new connection). See [`ServiceNet::service_with`].
    pub fn service(&mut self, name: &str, backends: &[&Pod]) -> Result<Service> {
        self.service_with(name, backends, &ServiceOpts::default())
    }

    /// A Service like [`ServiceNet::service`] with the extra front doors of `opts`. The
    /// backends' current addresses are used (a backend readdressed later is not followed).
    /// Fails with no backend, a backend of another topology, a name in use, node ports that
    /// are empty, include port 0 or overlap another Service's, or after [`MAX_SERVICES`].
    pub fn service_with(
        &mut self,
        name: &str,
        backends: &[&Pod],
        opts: &ServiceOpts,
    ) -> Result<Service> {
        self.check_new(name, backends, opts)?;
        let k = self.services.len();
        let node = host::node_addresses(self.mode);
        let svc = Service::plan(k, name, backends, opts, node, vec![self.place()]);
        svc.install(&self.place(), Some(&self.prefix))?;
        self.services
            .push((name.to_owned(), opts.node_ports.clone()));
        Ok(svc)
    }

    /// Where its table lives: the root namespace.
    fn place(&self) -> nft::Place {
        nft::Place {
            netns: None,
            table: self.table.clone(),
        }
    }

    fn check_new(&self, name: &str, backends: &[&Pod], opts: &ServiceOpts) -> Result<()> {
        ensure!(!backends.is_empty(), "service {name} has no backend");
        ensure!(
            self.services.len() < MAX_SERVICES,
            "at most {MAX_SERVICES} services"
        );
        ensure!(
            !self.services.iter().any(|(n, _)| n == name),
            "service {name} exists already"
        );
        for b in backends {
            ensure!(
                b.netns_name().starts_with(&format!("{}-", self.prefix)),
                "backend {}/{} is not of topology {}",
                b.namespace(),
                b.name(),
                self.prefix
            );
        }
        let Some(ports) = &opts.node_ports else {
            return Ok(());
        };
        ensure!(
            !ports.is_empty() && *ports.start() > 0,
            "node ports {ports:?}: empty or include port 0"
        );
        for (other, theirs) in &self.services {
            if let Some(t) = theirs
                && ports.start() <= t.end()
                && t.start() <= ports.end()
            {
                bail!("node ports {ports:?} overlap those of service {other} ({t:?})");
            }
        }
        Ok(())
    }
}

impl Drop for ServiceNet {
    fn drop(&mut self) {
        for p in &self.pods_with_routes {
            if let Err(e) = host::unroute_pod(p) {
                eprintln!(
                    "testkit: removing the service routes of {}: {e:#}",
                    p.name()
                );
            }
        }
        if let Err(e) = nft::delete_table(&self.place()) {
            eprintln!("testkit: deleting nftables table {}: {e:#}", self.table);
        }
        if let Err(e) = host::teardown(self.id, self.mode, &self.bridge) {
            eprintln!("testkit: removing the services' host side: {e:#}");
        }
        forget_connections(self.zone());
    }
}

/// Deletes the conntrack entries of `zone` (their NAT bindings outlive the table), if the
/// `conntrack` tool is installed; best effort.
fn forget_connections(zone: u16) {
    let _ = std::process::Command::new("conntrack")
        .args(["-D", "-w", &zone.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Deletes the Services' nftables tables (and the fabrics', see [`crate::nodes`]) of the
/// root namespace whose id `is_live` does not claim (left by killed processes). Failures are
/// logged to stderr. Part of [`reap_stale`].
pub(crate) fn reap_orphans(is_live: impl Fn(u32) -> bool + Copy) {
    let Ok(tables) = nft::inet_tables() else {
        return;
    };
    for t in &tables {
        if names::parse_svc_table(t).is_some_and(|id| !is_live(id))
            && let Err(e) = nft::delete_table(&nft::Place {
                netns: None,
                table: t.clone(),
            })
        {
            eprintln!("testkit: reaping nftables table {t}: {e:#}");
        }
    }
    crate::nodes::reap_orphans(&tables, is_live);
}
