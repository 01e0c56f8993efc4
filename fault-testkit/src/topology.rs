//! Pods as network namespaces, the way a node sees them: each pod has a veth whose pod side is
//! `eth0` (IPv4 `198.18.0.{10+i}`, IPv6 `fd00:fa::{10+i:x}`) and whose host side
//! `fl<id>p<i>` is in the root namespace. Two ways to join them ([`Mode`]):
//! - bridged ([`Topology::named`]): the host sides are ports of a bridge,
//!   pods are on-link in `198.18.0.0/16` and `fd00:fa::/64`; the bridge and the host-side
//!   veths have no address and IPv6 disabled, the host sends nothing on the segment;
//! - routed ([`Topology::routed`], see [`routed`]): no bridge, `/32` and `/128` pod
//!   addresses, default routes via the host, which routes each pod address to its veth.
//!
//! Names derive from a random 24-bit id (see [`names`]), and each topology is registered in
//! [`REGISTRY_DIR`] so that [`reap_stale`] removes what a killed process left. A
//! [`Topology`] removes everything it made when dropped, also when a test panics.
mod bridged;
mod dynamo;
mod inventory;
mod link;
pub mod names;
mod pod;
mod registry;
pub mod routed;

use std::{
    net::Ipv4Addr,
    path::Path,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

pub use dynamo::{DYNAMO_NAMESPACE, Dynamo};
pub use inventory::render as render_inventory;
pub(crate) use inventory::{Entry as InventoryEntry, write_entries as write_inventory_entries};
pub(crate) use link::{
    delete_link, delete_netns, disable_ipv6, enable_forwarding, set_sysctl, wait_pod_ready,
};
pub use link::{link_exists, link_names, netns_names};
pub use pod::{Family, Pod};
pub use registry::REGISTRY_DIR;
pub(crate) use registry::release as release_id;

/// How long a new pod may take to carry traffic.
pub(crate) const POD_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How a topology joins its pods to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Pods on one L2 segment: host-side veths on a bridge `fl<id>br` (like the CNI `bridge`
    /// plugin).
    Bridged,
    /// Pods routed by the host: `/32` and `/128` addresses, a default route via the host-side
    /// veth, no bridge (like Calico). See [`routed`].
    Routed,
}

/// A set of pods and what joins them (a bridge, or the host's routes). Removes them all on
/// drop.
pub struct Topology {
    id: u32,
    name_hint: String,
    mode: Mode,
    /// The bridge's name; empty for a routed topology.
    bridge: String,
    /// Pods in creation order, with their current addresses. A pod is listed before its
    /// objects are made, so that a failure half-way is still cleaned up.
    pods: Mutex<Vec<Pod>>,
    next_index: u32,
}

impl Topology {
    /// A new empty bridged topology (its bridge only), with the name hint `topology`. See
    /// [`Topology::named`].
    pub fn new() -> Result<Self> {
        Self::named("topology")
    }

    /// A new empty bridged topology: picks a free random id, registers it with `name_hint` (a
    /// label for humans looking at [`REGISTRY_DIR`], e.g. the test's name) and makes the
    /// bridge `fl<id>br`, up, with no address and IPv6 disabled. Reaps what dead processes
    /// left first ([`reap_stale`]).
    pub fn named(name_hint: &str) -> Result<Self> {
        Self::with_mode(name_hint, Mode::Bridged)
    }

    /// A new empty routed topology (see [`routed`]): like [`Topology::named`], but instead
    /// of a bridge it prepares its routing table (a `blackhole` default in both families) and
    /// turns IPv4 and IPv6 forwarding on (left on). Fails when strict reverse-path filtering
    /// is on for all links (`net.ipv4.conf.all.rp_filter = 1`).
    pub fn routed(name_hint: &str) -> Result<Self> {
        Self::with_mode(name_hint, Mode::Routed)
    }

    /// A new empty topology of `mode`: [`Topology::named`] or [`Topology::routed`].
    pub fn with_mode(name_hint: &str, mode: Mode) -> Result<Self> {
        reap_stale();
        let id = claim_free_id(name_hint)?;
        let topo = Self {
            id,
            name_hint: name_hint.to_owned(),
            mode,
            bridge: match mode {
                Mode::Bridged => names::bridge(id),
                Mode::Routed => String::new(),
            },
            pods: Mutex::new(Vec::new()),
            next_index: 0,
        };
        match mode {
            Mode::Bridged => bridged::make_bridge(&topo.bridge)
                .with_context(|| format!("creating bridge {}", topo.bridge)),
            Mode::Routed => routed::setup(id).context("preparing the host for routed pods"),
        }?;
        Ok(topo)
    }

    /// The random 24-bit id all names derive from.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// How the pods are joined: bridged or routed.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The prefix of every kernel object name of this topology: `fl<id as 6 hex digits>`.
    pub fn prefix(&self) -> String {
        names::prefix(self.id)
    }

    /// The name hint given to [`Topology::named`].
    pub fn name_hint(&self) -> &str {
        &self.name_hint
    }

    /// Name of the bridge (in the root network namespace); empty for a routed topology.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The routing table of a routed topology's host routes ([`names::route_table`]);
    /// `None` for a bridged one.
    pub fn route_table(&self) -> Option<u32> {
        (self.mode == Mode::Routed).then(|| names::route_table(self.id))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Pod>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pods_mut(&mut self) -> &mut Vec<Pod> {
        self.pods.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// The pods, in creation order, with their current addresses.
    pub fn pods(&self) -> Vec<Pod> {
        self.lock().clone()
    }

    /// The pod of that Kubernetes namespace and name, if any.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.lock()
            .iter()
            .find(|p| p.namespace() == namespace && p.name() == name)
            .cloned()
    }

    /// Adds a pod: network namespace `fl<id>-<i>` (`ip netns add`), a veth whose host side
    /// is `fl<id>p<i>` and whose pod side is `eth0` with `lo` up, IPv4
    /// [`names::addresses`] (`198.18.0.{10+i}` for the first 245) and IPv6
    /// `fd00:fa::{10+i:x}` (no duplicate address detection). Bridged: the host side is on the
    /// bridge, the addresses are `/16` and `/64`. Routed: `/32` and `/128`, see [`routed`].
    /// Returns once the pod can carry traffic (addresses not tentative, host side up, bridge
    /// port forwarding). `i` counts the pods ever added, from 0; at most 10,000 per topology.
    pub fn add_pod(&mut self, namespace: &str, name: &str, labels: &[(&str, &str)]) -> Result<Pod> {
        let index = self.next_index;
        if index > names::MAX_POD_INDEX {
            bail!("at most {} pods per topology", names::MAX_POD_INDEX + 1);
        }
        if self.pod(namespace, name).is_some() {
            bail!("pod {namespace}/{name} exists already");
        }
        self.next_index += 1;
        let (v4, v6) = names::addresses(index);
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (netns, host_if) = (names::netns(self.id, index), names::host_if(self.id, index));
        let pod = Pod::new(namespace, name, labels, netns, host_if, v4, v6);
        self.pods_mut().push(pod.clone());
        match self.mode {
            Mode::Bridged => bridged::make_pod(&self.bridge, &pod),
            Mode::Routed => routed::make_pod(
                &routed::Host::Root { id: self.id },
                &names::routed_macs(self.id, index),
                &pod,
            ),
        }
        .with_context(|| {
            format!(
                "creating pod {namespace}/{name} (network namespace {})",
                pod.netns_name()
            )
        })?;
        Ok(pod)
    }

    /// Deletes a pod of this topology: its veth (both ends), its network namespace and, routed,
    /// its rules (its routes and neighbour entries go with the veth).
    pub fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        let pos = self.position(pod)?;
        self.delete_pod(pod)?;
        self.pods_mut().remove(pos);
        Ok(())
    }

    fn position(&self, pod: &Pod) -> Result<usize> {
        self.lock()
            .iter()
            .position(|p| p.netns_name() == pod.netns_name())
            .with_context(|| {
                format!(
                    "pod {}/{} is not in this topology",
                    pod.namespace(),
                    pod.name()
                )
            })
    }

    fn delete_pod(&self, pod: &Pod) -> Result<()> {
        if self.mode == Mode::Routed {
            routed::delete_pod_rules(self.id, pod)?;
        }
        // The host side first: deleting it removes the pair at once, while the devices of a
        // deleted namespace go asynchronously.
        link::delete_link(pod.host_ifname())?;
        link::delete_netns(pod.netns_name())
    }

    /// Gives `pod` the IPv4 address `198.18.0.<new_v4_last_octet>` instead of its current one
    /// (its IPv6 address stays). Returns the pod's new handle; the old one keeps the old
    /// address. Fails if another pod of the topology has that address (with a bridged
    /// [`ServiceNet`](crate::services::ServiceNet), `1` is the bridge's). Bridged, the pod's
    /// routes through a gateway go with the old address (call
    /// [`ServiceNet::route_pod`](crate::services::ServiceNet::route_pod) again); routed, the
    /// new address is added before the old one goes, and the host's route follows.
    pub fn readdress(&self, pod: &Pod, new_v4_last_octet: u8) -> Result<Pod> {
        if !(1..=254).contains(&new_v4_last_octet) {
            bail!("198.18.0.{new_v4_last_octet} is not a host address of 198.18.0.0/24");
        }
        let new = Ipv4Addr::new(198, 18, 0, new_v4_last_octet);
        let pos = self.position(pod)?;
        let mut pods = self.lock();
        if let Some(other) = pods
            .iter()
            .find(|p| p.ipv4() == new && p.netns_name() != pod.netns_name())
        {
            bail!(
                "{new} belongs to pod {}/{}",
                other.namespace(),
                other.name()
            );
        }
        let current = pods[pos].clone();
        if current.ipv4() == new {
            return Ok(current);
        }
        match self.mode {
            Mode::Bridged => bridged::readdress(&current, new),
            Mode::Routed => {
                let index = names::host_if_index(self.id, current.host_ifname())
                    .context("host interface name of a routed pod")?;
                routed::readdress(self.id, index, &current, new)
            }
        }?;
        let moved = current.with_ipv4(new);
        pods[pos] = moved.clone();
        Ok(moved)
    }

    /// Writes the agent's inventory YAML for the current pods to `path` (atomically replaced).
    /// The same for bridged and routed pods.
    pub fn write_inventory(&self, path: &Path) -> Result<()> {
        inventory::write(path, &self.pods())
    }
}

/// For each topology whose process is dead: deletes its links (`fl<id>*`), network namespaces
/// (`fl<id>-*`) and registry file (a [`Fabric`](crate::nodes::Fabric)'s too: its bridge,
/// uplinks, nodes and pods); then the routing rules and tables of routed topologies, the
/// Services' nftables tables ([`crate::services`]) and the fabrics' (`inet fl<id>fab`) whose
/// id no live process claims.
/// Failures are logged to stderr. [`Topology::new`] and
/// [`ServiceNet::new`](crate::services::ServiceNet::new) call it first.
pub fn reap_stale() {
    registry::reap_dead();
    routed::reap_orphans(registry::is_live);
    crate::services::reap_orphans(registry::is_live);
}

/// Picks a random id whose names are free and claims it in the registry (with `name_hint`,
/// see [`Topology::named`]); give it up with [`release_id`].
pub(crate) fn claim_free_id(name_hint: &str) -> Result<u32> {
    let (links, namespaces) = (link_names(), netns_names());
    for _ in 0..64 {
        let id = names::random_id()?;
        let prefix = names::prefix(id);
        let taken = registry::is_claimed(id)
            || links.iter().any(|l| l.starts_with(&prefix))
            || namespaces.iter().any(|n| n.starts_with(&prefix));
        if !taken && registry::claim(id, name_hint)? {
            return Ok(id);
        }
    }
    bail!("no free topology id found in {REGISTRY_DIR}")
}

impl Drop for Topology {
    fn drop(&mut self) {
        let pods = std::mem::take(self.pods_mut());
        for p in &pods {
            if let Err(e) = self.delete_pod(p) {
                eprintln!("testkit: deleting pod {}: {e:#}", p.netns_name());
            }
        }
        let done = match self.mode {
            Mode::Bridged => link::delete_link(&self.bridge),
            Mode::Routed => routed::teardown(self.id),
        };
        if let Err(e) = done {
            eprintln!("testkit: deleting topology {}: {e:#}", self.prefix());
        }
        registry::release(self.id);
    }
}
