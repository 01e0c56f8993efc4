//! [`Pod`]: a handle on one pod of a topology (its identity, its network namespace, its
//! addresses) and the address [`Family`] probes choose between.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
};

use anyhow::Result;

use crate::netns;

/// Address family of a pod address or a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`198.18.0.0/16` in a topology).
    V4,
    /// IPv6 (`fd00:fa::/64` in a topology).
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The unspecified address of the family (`0.0.0.0` or `::`), to bind to any address.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }

    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Inner {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    netns: String,
    host_if: String,
    /// Where `host_if` lives: `None` for the root namespace, else a node's namespace.
    host_netns: Option<String>,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

/// One pod: a network namespace whose `eth0` is one end of a veth, the other end on the host
/// (on the topology's bridge, or routed to). A cheap handle (`Clone` copies a pointer); it does
/// not own the namespace, the [`Topology`](super::Topology) does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod(Arc<Inner>);

impl Pod {
    pub(crate) fn new(
        namespace: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        netns: String,
        host_if: String,
        v4: Ipv4Addr,
        v6: Ipv6Addr,
    ) -> Self {
        Pod(Arc::new(Inner {
            namespace: namespace.into(),
            name: name.into(),
            labels,
            netns,
            host_if,
            host_netns: None,
            v4,
            v6,
        }))
    }

    /// The same pod whose host side lives in network namespace `host_netns` (a node's).
    pub(crate) fn with_host_netns(&self, host_netns: &str) -> Self {
        let mut inner = Inner::clone(&self.0);
        inner.host_netns = Some(host_netns.to_owned());
        Pod(Arc::new(inner))
    }

    /// A handle on a pod made by another process (e.g. `fault-testenv up`), for probes. It
    /// has no labels and no host interface name.
    pub fn existing(namespace: &str, name: &str, netns: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Self {
        Pod::new(
            namespace,
            name,
            BTreeMap::new(),
            netns.into(),
            String::new(),
            v4,
            v6,
        )
    }

    /// The same pod with another IPv4 address.
    pub(super) fn with_ipv4(&self, v4: Ipv4Addr) -> Self {
        self.with_addresses(v4, self.0.v6)
    }

    /// The same pod (namespace, name, labels, network namespace, host interface) with other
    /// addresses: what probes send to. See [`Service::through`](crate::services::Service::through).
    pub(crate) fn with_addresses(&self, v4: Ipv4Addr, v6: Ipv6Addr) -> Self {
        let mut inner = Inner::clone(&self.0);
        (inner.v4, inner.v6) = (v4, v6);
        Pod(Arc::new(inner))
    }

    /// Kubernetes namespace of the pod (as written in the inventory).
    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    /// Pod name (as written in the inventory).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Pod labels (as written in the inventory).
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.0.labels
    }

    /// Name of the pod's network namespace under `/run/netns` (`fl<id>-<index>`).
    pub fn netns_name(&self) -> &str {
        &self.0.netns
    }

    /// Path of the pod's network namespace: `/run/netns/<netns_name>`.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(netns::NETNS_DIR).join(&self.0.netns)
    }

    /// Name of the host side of the pod's veth (`fl<id>p<index>`, in the root namespace, on
    /// the bridge if bridged, or in its node's namespace, see [`Pod::host_netns`]): where the
    /// agent attaches its programs. Empty for [`Pod::existing`].
    pub fn host_ifname(&self) -> &str {
        &self.0.host_if
    }

    /// The network namespace (name under `/run/netns`) holding the host side of the pod's
    /// veth: `None` for the root namespace (pods of a [`Topology`](super::Topology)), the
    /// node's namespace for pods of a [`Fabric`](crate::nodes::Fabric).
    pub fn host_netns(&self) -> Option<&str> {
        self.0.host_netns.as_deref()
    }

    /// IPv4 address of the pod's `eth0` (prefix length 16 bridged, 32 routed), or what a
    /// probe sends to (a Service's address, see
    /// [`Service::through`](crate::services::Service::through)).
    pub fn ipv4(&self) -> Ipv4Addr {
        self.0.v4
    }

    /// IPv6 address of the pod's `eth0` (prefix length 64 bridged, 128 routed), or what a
    /// probe sends to.
    pub fn ipv6(&self) -> Ipv6Addr {
        self.0.v6
    }

    /// The pod's address of `family`.
    pub fn ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.0.v4),
            Family::V6 => IpAddr::V6(self.0.v6),
        }
    }

    /// Runs `f` on a fresh thread that first enters the pod's network namespace, and returns
    /// its result. The caller's thread never changes namespace. Sockets created by `f` stay
    /// in the pod's namespace and may be used afterwards from any thread. Fails if the
    /// namespace cannot be entered or `f` panics.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        netns::run_in(&self.netns_path(), f)
    }
}
