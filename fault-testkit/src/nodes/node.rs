//! [`NodeHandle`]: one fake node (its namespace, uplink and addresses), how it is made and
//! removed, and the agent that runs on it.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::Result;

use super::{pod_prefixes, uplink_addresses};
use crate::{
    AgentBuilder, AgentProcess, Family, Pod,
    cmd::run_del,
    netns::{self, NETNS_DIR},
    run,
    topology::{
        POD_READY_TIMEOUT, delete_link, delete_netns, disable_ipv6, names, set_sysctl,
        wait_pod_ready,
    },
};

/// The agent arguments naming a node's uplink, which [`NodeHandle::start_agent`] passes:
/// `--uplink eth0`.
pub const UPLINK_ARGS: [&str; 2] = ["--uplink", "eth0"];

/// One node of a [`Fabric`](super::Fabric): a cheap handle (`Clone` copies names and
/// addresses) that owns nothing; the fabric removes the node when dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHandle {
    name: String,
    index: usize,
    netns: String,
    uplink: String,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

impl NodeHandle {
    /// Node `k` of fabric `id`, named `name`.
    pub(super) fn new(id: u32, k: usize, name: &str) -> Self {
        let (v4, v6) = uplink_addresses(k);
        Self {
            name: name.to_owned(),
            index: k,
            netns: names::node_netns(id, k),
            uplink: names::uplink(id, k),
            v4,
            v6,
        }
    }

    /// The name given to [`Fabric::add_node`](super::Fabric::add_node) (the inventories'
    /// `node:` field).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its index `k` in the fabric, from 0 (its addresses derive from it).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Name of its network namespace under `/run/netns`: `fl<id>-n<k>`.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// Path of its network namespace: `/run/netns/fl<id>-n<k>`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// Name of the root-namespace side of its uplink veth, a port of the fabric bridge:
    /// `fl<id>u<k>` (the node side is `eth0` in the node's namespace).
    pub fn uplink_host_ifname(&self) -> &str {
        &self.uplink
    }

    /// Its uplink address of `family` (on its `eth0`): `198.18.250.{10+k}` or
    /// `fd00:fb::{10+k:x}`.
    pub fn ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.v4),
            Family::V6 => IpAddr::V6(self.v6),
        }
    }

    /// Its pod prefixes, `198.18.{k+1}.0/24` and `fd00:fa:{k+1}::/64` (see
    /// [`pod_prefixes`]).
    pub fn pod_prefixes(&self) -> (String, String) {
        pod_prefixes(self.index)
    }

    /// Runs `f` on a fresh thread that first enters the node's network namespace (as
    /// [`Pod::run`] does for a pod), and returns its result. Fails if the namespace cannot
    /// be entered or `f` panics.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        netns::run_in(&self.netns_path(), f)
    }

    /// A builder of `fault-agent standalone --inventory <inventory>` on this node: in its
    /// network namespace, `--listen <uplink IPv4>:<free port>` (reachable from the root
    /// namespace through the fabric bridge), `--insecure-no-auth` (the API is not on
    /// loopback), and its own state dir and bpffs folder as any
    /// [`AgentProcess`]. Add arguments with [`AgentBuilder::args`]; this does not add
    /// [`UPLINK_ARGS`] (see [`NodeHandle::start_agent`]).
    pub fn agent(&self, inventory: &Path) -> AgentBuilder {
        AgentBuilder::standalone(inventory)
            .in_netns(&self.netns)
            .listen(SocketAddr::from((self.v4, 0)))
            .arg("--insecure-no-auth")
    }

    /// Starts `fault-agent standalone` on this node (see [`NodeHandle::agent`]) with
    /// [`UPLINK_ARGS`] (`--uplink eth0`) and then `extra`, and waits until it is ready. The
    /// returned [`AgentProcess`] is used from the root namespace as any other (`client()`,
    /// `faultctl(..)` against `http://198.18.250.{10+k}:<port>`, `kill()`, `restart()`,
    /// `uninstall()` in the node's namespace...). Drop it before the fabric. Fails as
    /// [`AgentBuilder::start`] does (e.g. an agent that does not know `--uplink`).
    pub fn start_agent(&self, inventory: &Path, extra: &[&str]) -> Result<AgentProcess> {
        (self.agent(inventory))
            .args(UPLINK_ARGS)
            .args(extra.iter().copied())
            .start()
    }
}

/// Makes `node`'s namespace and its uplink on `bridge`, and waits until the uplink carries
/// traffic (see the [module documentation](super)).
pub(super) fn make(node: &NodeHandle, bridge: &str) -> Result<()> {
    let ns = node.netns_name();
    run("ip", &["netns", "add", ns])?;
    node.run(node_sysctls)??;
    let up = node.uplink_host_ifname();
    run(
        "ip",
        &[
            "link", "add", up, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    disable_ipv6(up)?;
    run("ip", &["link", "set", "dev", up, "master", bridge, "up"])?;
    let ip = |args: &[&str]| run("ip", &[&["-n", ns], args].concat());
    ip(&["link", "set", "dev", "lo", "up"])?;
    ip(&["addr", "add", &format!("{}/24", node.v4), "dev", "eth0"])?;
    let v6 = format!("{}/64", node.v6);
    ip(&["addr", "add", &v6, "dev", "eth0", "nodad"])?;
    ip(&["link", "set", "dev", "eth0", "up"])?;
    // The node side is `eth0` like a pod's, the root side a bridge port: the same wait.
    wait_pod_ready(ns, None, up, node.v6, true, POD_READY_TIMEOUT)
}

/// The calling thread's namespace (a new node's) as a node's: forwarding on in both
/// families, reverse-path filtering off and no duplicate address detection, for every link
/// made afterwards too (`default`).
fn node_sysctls() -> Result<()> {
    for (key, value) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv6/conf/all/forwarding", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
        ("net/ipv6/conf/all/accept_dad", "0"),
        ("net/ipv6/conf/default/accept_dad", "0"),
    ] {
        set_sysctl(key, value)?;
    }
    Ok(())
}

/// Routes, on `node`, `other`'s pod prefixes via `other`'s uplink addresses.
pub(super) fn route_pods_of(node: &NodeHandle, other: &NodeHandle) -> Result<()> {
    let (p4, p6) = other.pod_prefixes();
    let (via4, via6) = (other.v4.to_string(), other.v6.to_string());
    for (prefix, via) in [(p4, via4), (p6, via6)] {
        let args = ["route", "replace", &prefix, "via", &via, "dev", "eth0"];
        run("ip", &[&["-n", node.netns_name()], &args[..]].concat())?;
    }
    Ok(())
}

/// Deletes `pod` of `node`: the host side of its veth (which takes the pod side, its routes
/// and neighbour entries with it), then its namespace. What is gone is not an error.
pub(super) fn delete_pod(node: &NodeHandle, pod: &Pod) -> Result<()> {
    if node.netns_path().exists() {
        let link = [
            "-n",
            node.netns_name(),
            "link",
            "del",
            "dev",
            pod.host_ifname(),
        ];
        run_del("ip", &link)?;
    }
    delete_netns(pod.netns_name())
}

/// Deletes `node`: its uplink (from the root side), then its namespace. What is gone is not
/// an error.
pub(super) fn delete(node: &NodeHandle) -> Result<()> {
    delete_link(node.uplink_host_ifname())?;
    delete_netns(node.netns_name())
}
