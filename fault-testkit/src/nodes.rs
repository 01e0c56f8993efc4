//! Several fake Kubernetes nodes on one machine, for faults between pods of different nodes
//! that talk through Services.
//!
//! A [`Fabric`] is the L2 network between the nodes: a bridge `fl<id>fab` in the root
//! network namespace, with the root's addresses [`FABRIC_V4`]/24 and [`FABRIC_V6`]/64 on it
//! (so that the test process reaches the agents' APIs on the nodes' uplink addresses). Each
//! node ([`Fabric::add_node`], a [`NodeHandle`]) is a network namespace `fl<id>-n<k>` that
//! plays the node's host network namespace:
//! - its uplink: a veth whose node side is `eth0`, with `198.18.250.{10+k}/24` and
//!   `fd00:fb::{10+k:x}/64` ([`uplink_addresses`]), and whose root side `fl<id>u<k>` is a port
//!   of the fabric bridge (IPv6 disabled there, so the root sends nothing on it);
//! - its pods ([`Fabric::add_pod`]), routed as [`Mode::Routed`](crate::Mode::Routed) makes
//!   them (see [`crate::topology::routed`]): `/32` and `/128` addresses, a default
//!   route via a gateway with permanent neighbour entries, and the host sides of their veths
//!   (`fl<id>p<g>`, `g` counting the fabric's pods) in the node's namespace, which routes
//!   each pod address to its veth in its `main` table. The `i`-th pod of node `k` gets
//!   [`pod_addresses`]`(k, i)`: `198.18.{k+1}.{10+i}` and `fd00:fa:{k+1}::{10+i:x}`, in the
//!   node's pod prefixes ([`pod_prefixes`]), and the network namespace `fl<id>-n<k>-<i>`;
//! - routes to every other node `j`'s pod prefixes via `j`'s uplink address (nothing else:
//!   no default route, so nothing a pod sends leaves the fabric);
//! - IPv4 and IPv6 forwarding on, reverse-path filtering off, no duplicate address
//!   detection, `lo` up;
//! - the Services ([`Fabric::service`]): kube-proxy-like DNAT in the node's own prerouting
//!   (nftables table `inet fl<id>svc` in the node's namespace, as in [`crate::services`]
//!   but matching whatever arrives, with no conntrack zone: the namespace is new). A client's
//!   packet to a VIP is DNATed on the client's node (before routing, so the VIP needs no
//!   route), then routed to the backend's node with the backend's own address as
//!   destination; the reply is un-NATed by the client node's conntrack;
//! - optionally its own `fault-agent` ([`NodeHandle::agent`], [`NodeHandle::start_agent`]),
//!   which reads its node's inventory ([`Fabric::write_inventory`]).
//!
//! Frames between nodes are bridged in the root namespace, where `br_netfilter` (built into
//! the reference kernel, `net.bridge.bridge-nf-call-iptables` = 1) shows them to the root's
//! netfilter (the bridge as input device): the table `inet fl<id>fab` sets `notrack` on
//! them, so the root's conntrack never judges (nor drops as INVALID) traffic between nodes;
//! the root's own connections to the nodes (agents' APIs) are tracked as usual.
//!
//! # Life cycle
//! The fabric claims an id in the topology registry ([`REGISTRY_DIR`](crate::topology::REGISTRY_DIR)),
//! so [`reap_stale`] removes what a killed process left: the namespaces `fl<id>-*` (nodes and
//! pods, with the Services' tables of the nodes), the links `fl<id>*` (the bridge, the
//! uplinks) and the root's table `inet fl<id>fab`. One `Fabric` at a time on a machine ([`LOCK_FILE`]; tests hold
//! [`crate::serial`]). Dropping it removes everything, also when a test panics: processes
//! still running in a node's namespace (agents not dropped yet: declare them after the fabric)
//! are terminated first, then the Services' tables, the pods, the nodes and the bridge go.
mod bridge;
mod node;
mod procs;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, Result, bail, ensure};

pub use node::{NodeHandle, UPLINK_ARGS};

use crate::{
    Dynamo, Pod, Service, ServiceOpts,
    lock::Lock,
    services::{MAX_SERVICES, nft},
    topology::{
        DYNAMO_NAMESPACE, InventoryEntry, claim_free_id, names, reap_stale, release_id, routed,
        write_inventory_entries,
    },
};

/// The root namespace's IPv4 address on the fabric bridge (prefix length 24).
pub const FABRIC_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
/// The root namespace's IPv6 address on the fabric bridge (prefix length 64).
pub const FABRIC_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xfb, 0, 0, 0, 0, 0, 1);
/// The lock file of the one `Fabric` of the machine, holding the holder's pid and prefix.
pub const LOCK_FILE: &str = "/run/faultline-testkit/fabric.lock";
/// Most nodes per fabric (uplink addresses `.10` to `.254`).
pub const MAX_NODES: usize = 245;
/// Most pods per node (addresses `.10` to `.254`).
pub const MAX_PODS_PER_NODE: usize = 245;

/// Node `k`'s uplink addresses: `198.18.250.{10+k}` and `fd00:fb::{10+k:x}` (`k` <
/// [`MAX_NODES`]).
pub fn uplink_addresses(k: usize) -> (Ipv4Addr, Ipv6Addr) {
    let host = 10 + k as u16;
    let v6 = Ipv6Addr::new(0xfd00, 0xfb, 0, 0, 0, 0, 0, host);
    (Ipv4Addr::new(198, 18, 250, host as u8), v6)
}

/// The addresses of the `i`-th pod of node `k`: `198.18.{k+1}.{10+i}` and
/// `fd00:fa:{k+1}::{10+i:x}` (`i` < [`MAX_PODS_PER_NODE`]).
pub fn pod_addresses(k: usize, i: usize) -> (Ipv4Addr, Ipv6Addr) {
    let (net, host) = (k as u16 + 1, 10 + i as u16);
    let v6 = Ipv6Addr::new(0xfd00, 0xfa, net, 0, 0, 0, 0, host);
    (Ipv4Addr::new(198, 18, net as u8, host as u8), v6)
}

/// Node `k`'s pod prefixes, as `ip route` takes them: `198.18.{k+1}.0/24` and
/// `fd00:fa:{k+1}::/64`.
pub fn pod_prefixes(k: usize) -> (String, String) {
    (
        format!("198.18.{}.0/24", k + 1),
        format!("fd00:fa:{:x}::/64", k + 1),
    )
}

/// Removes the root-namespace tables of fabrics (among `tables`, the root's `inet` tables)
/// whose id `is_live` does not claim. Part of [`reap_stale`].
pub(crate) fn reap_orphans(tables: &[String], is_live: impl Fn(u32) -> bool) {
    bridge::reap_orphans(tables, is_live);
}

/// Fake nodes on a bridge, their routed pods and Services (see the [module
/// documentation](self)). Removes everything on drop.
pub struct Fabric {
    id: u32,
    name_hint: String,
    nodes: Vec<NodeHandle>,
    /// Pods in creation order, with their node's index. A pod is listed before its objects
    /// are made, so that a failure half-way is still cleaned up.
    pods: Vec<(usize, Pod)>,
    services: Vec<Service>,
    /// Taken right after the id; `None` only while [`Fabric::new`] runs.
    lock: Option<Lock>,
}

impl Fabric {
    /// A new fabric with no node: reaps what dead processes left ([`reap_stale`]), claims a
    /// free id in the registry with `name_hint` (a label for humans, e.g. the test's name),
    /// takes the machine-wide lock and makes the bridge `fl<id>fab` with the root's addresses
    /// [`FABRIC_V4`]/24 and [`FABRIC_V6`]/64. Fails if another `Fabric` exists on the machine
    /// (naming its process and prefix) or if a root address is already a host address.
    pub fn new(name_hint: &str) -> Result<Self> {
        reap_stale();
        let id = claim_free_id(name_hint)?;
        // From here on, dropping `fabric` removes whatever was made and gives the id up.
        let mut fabric = Self {
            id,
            name_hint: name_hint.to_owned(),
            nodes: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            lock: None,
        };
        let why = "they share the root's fabric addresses";
        let prefix = fabric.prefix();
        fabric.lock = Some(crate::lock::acquire(LOCK_FILE, "Fabric", &prefix, why)?);
        bridge::make(id).with_context(|| format!("making the fabric bridge of {prefix}"))?;
        Ok(fabric)
    }

    /// The random 24-bit id all names derive from.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The prefix of every kernel object name of this fabric: `fl<id as 6 hex digits>`.
    pub fn prefix(&self) -> String {
        names::prefix(self.id)
    }

    /// The name hint given to [`Fabric::new`].
    pub fn name_hint(&self) -> &str {
        &self.name_hint
    }

    /// The bridge between the nodes (root namespace): `fl<id>fab`.
    pub fn bridge(&self) -> String {
        names::fabric_bridge(self.id)
    }

    /// The nodes, in creation order (node `k` is `nodes()[k]`).
    pub fn nodes(&self) -> &[NodeHandle] {
        &self.nodes
    }

    /// The node named `name`, if any.
    pub fn node(&self, name: &str) -> Option<&NodeHandle> {
        self.nodes.iter().find(|n| n.name() == name)
    }

    /// Adds node `k` = the number of nodes so far, named `name` (for humans and the
    /// inventories' `node:` field; unique in the fabric): its namespace `fl<id>-n<k>`, its
    /// uplink on the bridge, routes between it and every other node's pods, and the Services
    /// made so far. Returns once its uplink carries traffic. Fails with an empty or taken name
    /// or past [`MAX_NODES`].
    pub fn add_node(&mut self, name: &str) -> Result<NodeHandle> {
        let k = self.nodes.len();
        ensure!(k < MAX_NODES, "at most {MAX_NODES} nodes per fabric");
        ensure!(!name.is_empty(), "a node needs a name");
        ensure!(self.node(name).is_none(), "node {name} exists already");
        let node = NodeHandle::new(self.id, k, name);
        self.nodes.push(node.clone());
        self.build_node(&node)
            .with_context(|| format!("making node {name} ({})", node.netns_name()))?;
        Ok(node)
    }

    fn build_node(&self, node: &NodeHandle) -> Result<()> {
        node::make(node, &self.bridge())?;
        for other in self.nodes.iter().filter(|o| o.index() != node.index()) {
            node::route_pods_of(node, other)?;
            node::route_pods_of(other, node)?;
        }
        nft::create_table(&self.place(node), None)?;
        for svc in &self.services {
            svc.install(&self.place(node), None)?;
            svc.add_place(self.place(node));
        }
        Ok(())
    }

    /// Where node `node`'s Services table lives.
    fn place(&self, node: &NodeHandle) -> nft::Place {
        nft::Place {
            netns: Some(node.netns_name().to_owned()),
            table: names::svc_table(self.id),
        }
    }

    /// Fails unless `node` is a node of this fabric.
    fn check_node(&self, node: &NodeHandle) -> Result<()> {
        match self.nodes.get(node.index()) {
            Some(n) if n == node => Ok(()),
            _ => bail!("node {} is not of fabric {}", node.name(), self.prefix()),
        }
    }

    /// Adds a routed pod on `node` (see the [module documentation](self)): the `i`-th pod of
    /// node `k` gets [`pod_addresses`]`(k, i)` and network namespace `fl<id>-n<k>-<i>`; the
    /// host side `fl<id>p<g>` of its veth is in the node's namespace. Returns once it can
    /// carry traffic. Fails if `node` is not of this fabric, the pod exists already, or past
    /// [`MAX_PODS_PER_NODE`] pods on the node.
    pub fn add_pod(
        &mut self,
        node: &NodeHandle,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<Pod> {
        self.check_node(node)?;
        ensure!(
            self.pod(namespace, name).is_none(),
            "pod {namespace}/{name} exists already"
        );
        let (k, g) = (node.index(), self.pods.len() as u32);
        let i = self.pods.iter().filter(|(n, _)| *n == k).count();
        ensure!(
            i < MAX_PODS_PER_NODE,
            "at most {MAX_PODS_PER_NODE} pods per node"
        );
        ensure!(g <= names::MAX_POD_INDEX, "too many pods in the fabric");
        let pod = self.new_pod(node, i, g, namespace, name, labels);
        self.pods.push((k, pod.clone()));
        let host = routed::Host::Node {
            netns: node.netns_name().to_owned(),
        };
        routed::make_pod(&host, &names::routed_macs(self.id, g), &pod).with_context(|| {
            format!(
                "creating pod {namespace}/{name} on node {} (network namespace {})",
                node.name(),
                pod.netns_name()
            )
        })?;
        Ok(pod)
    }

    /// The handle of the `i`-th pod of `node`, the `g`-th of the fabric.
    fn new_pod(
        &self,
        node: &NodeHandle,
        i: usize,
        g: u32,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Pod {
        let (v4, v6) = pod_addresses(node.index(), i);
        let labels = (labels.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let netns = names::node_pod_netns(self.id, node.index(), i);
        let host_if = names::host_if(self.id, g);
        Pod::new(namespace, name, labels, netns, host_if, v4, v6).with_host_netns(node.netns_name())
    }

    /// Adds the inference pods (see [`Dynamo`], namespace `dynamo`, same labels as
    /// [`Topology::dynamo`](crate::Topology::dynamo)), each on node `placement(pod name)`
    /// (an index into [`Fabric::nodes`]), in the order frontend, decode0, decode1, prefill,
    /// nats. Fails if `placement` names no node.
    pub fn dynamo_on(&mut self, placement: impl Fn(&str) -> usize) -> Result<Dynamo> {
        Dynamo::build(|name, labels| {
            let k = placement(name);
            let node = (self.nodes.get(k).cloned())
                .with_context(|| format!("placement puts {name} on node {k}, which is none"))?;
            self.add_pod(&node, DYNAMO_NAMESPACE, name, labels)
        })
    }

    /// The pods, in creation order.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods.iter().map(|(_, p)| p.clone()).collect()
    }

    /// The pods of `node`, in creation order.
    pub fn pods_on(&self, node: &NodeHandle) -> Vec<Pod> {
        (self.pods.iter())
            .filter(|(k, _)| *k == node.index())
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// The pod of that Kubernetes namespace and name, if any.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        (self.pods.iter())
            .find(|(_, p)| p.namespace() == namespace && p.name() == name)
            .map(|(_, p)| p.clone())
    }

    /// The node of `pod` (a pod of this fabric, or a handle on one such as
    /// [`Service::through`]'s), if any.
    pub fn node_of(&self, pod: &Pod) -> Option<&NodeHandle> {
        (self.pods.iter())
            .find(|(_, p)| p.netns_name() == pod.netns_name())
            .map(|(k, _)| &self.nodes[*k])
    }

    /// A Service named `name` (for humans; unique in the fabric): TCP and UDP to any port of
    /// its VIP (`198.19.0.{10+k}`, `fd00:19::{10+k:x}` for the `k`-th) go to `backends`
    /// (one: plain DNAT; several: a random one per new connection, counted per backend, see
    /// [`Service::new_connections`]), DNATed in every node's prerouting, also on nodes added
    /// later. [`Service::through`] hands probes a pod whose address is the VIP. Fails with no
    /// backend, a backend that is not a pod of this fabric (e.g. a handle through a Service),
    /// a name in use, or after [`MAX_SERVICES`].
    pub fn service(&mut self, name: &str, backends: &[&Pod]) -> Result<Service> {
        self.check_service(name, backends)?;
        let places: Vec<nft::Place> = self.nodes.iter().map(|n| self.place(n)).collect();
        let none = (Ipv4Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED);
        let opts = ServiceOpts::default();
        let svc = Service::plan(self.services.len(), name, backends, &opts, none, places);
        for node in &self.nodes {
            svc.install(&self.place(node), None)?;
        }
        self.services.push(svc.clone());
        Ok(svc)
    }

    fn check_service(&self, name: &str, backends: &[&Pod]) -> Result<()> {
        ensure!(!backends.is_empty(), "service {name} has no backend");
        ensure!(
            self.services.len() < MAX_SERVICES,
            "at most {MAX_SERVICES} services"
        );
        ensure!(
            !self.services.iter().any(|s| s.name() == name),
            "service {name} exists already"
        );
        for b in backends {
            // The pod itself, not a handle through a Service (whose address is a VIP).
            ensure!(
                self.pods.iter().any(|(_, p)| p == *b),
                "backend {}/{} is not a pod of fabric {}",
                b.namespace(),
                b.name(),
                self.prefix()
            );
        }
        Ok(())
    }

    /// The Services, in creation order.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// Writes the inventory of `node`'s agent to `path` (atomically replaced): its own pods
    /// as [`Topology::write_inventory`](crate::Topology::write_inventory) does (namespace,
    /// name, labels, `netns`), then every pod of the other nodes with `node: <node name>` and
    /// `ips: [<IPv4>, <IPv6>]` instead of `netns` (see
    /// [`render_inventory`](crate::topology::render_inventory) for the format). Fails if
    /// `node` is not of this fabric or the file cannot be written.
    pub fn write_inventory(&self, node: &NodeHandle, path: &Path) -> Result<()> {
        self.check_node(node)?;
        let local = (self.pods.iter())
            .filter(|(k, _)| *k == node.index())
            .map(|(_, p)| InventoryEntry::Local(p));
        let remote = (self.pods.iter())
            .filter(|(k, _)| *k != node.index())
            .map(|(k, p)| InventoryEntry::Remote {
                pod: p,
                node: self.nodes[*k].name(),
            });
        let entries: Vec<InventoryEntry<'_>> = local.chain(remote).collect();
        write_inventory_entries(path, &entries)
    }

    /// Removes the Services' tables, the pods, the nodes and the bridge, logging failures.
    fn teardown(&self) {
        for node in &self.nodes {
            procs::terminate_in(node.netns_name());
        }
        for node in &self.nodes {
            if let Err(e) = nft::delete_table(&self.place(node)) {
                eprintln!("testkit: deleting the Services of {}: {e:#}", node.name());
            }
        }
        for (k, pod) in &self.pods {
            if let Err(e) = node::delete_pod(&self.nodes[*k], pod) {
                eprintln!("testkit: deleting pod {}: {e:#}", pod.netns_name());
            }
        }
        for node in &self.nodes {
            if let Err(e) = node::delete(node) {
                eprintln!("testkit: deleting node {}: {e:#}", node.netns_name());
            }
        }
        if let Err(e) = bridge::delete(self.id) {
            eprintln!("testkit: deleting the fabric bridge: {e:#}");
        }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        // Without the lock, another process's fabric may hold the addresses: nothing of this
        // one was made but its registry entry.
        if self.lock.is_some() {
            self.teardown();
        }
        release_id(self.id);
    }
}
