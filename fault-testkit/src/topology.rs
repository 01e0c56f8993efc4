//! Pods as network namespaces on one L2 segment, the way a node sees them: each pod has a
//! veth whose pod side is `eth0` (IPv4 in `198.18.0.0/16`, IPv6 `fd00:fa::{10+i:x}/64`) and
//! whose host side sits on a bridge of the root namespace. The bridge and the host-side
//! veths have no address and IPv6 disabled: the host sends nothing on the segment.
//!
//! Names derive from a random 24-bit id (see [`names`]), and each topology is registered in
//! [`REGISTRY_DIR`] so that [`reap_stale`] removes what a killed process left. A
//! [`Topology`] removes everything it made when dropped, also when a test panics.
mod dynamo;
mod inventory;
mod link;
pub mod names;
mod pod;
mod registry;

use std::{
    net::Ipv4Addr,
    path::Path,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

pub use dynamo::{DYNAMO_NAMESPACE, Dynamo};
pub use inventory::render as render_inventory;
pub use link::{link_exists, link_names, netns_names};
pub use pod::{Family, Pod};
pub use registry::{REGISTRY_DIR, reap_stale};

use crate::run;

/// How long a new pod may take to carry traffic.
const POD_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// A set of pods and the bridge joining them. Removes them all on drop.
pub struct Topology {
    id: u32,
    name_hint: String,
    bridge: String,
    /// Pods in creation order, with their current addresses. A pod is listed before its
    /// objects are made, so that a failure half-way is still cleaned up.
    pods: Mutex<Vec<Pod>>,
    next_index: u32,
}

impl Topology {
    /// A new empty topology (its bridge only), with the name hint `topology`. See
    /// [`Topology::named`].
    pub fn new() -> Result<Self> {
        Self::named("topology")
    }

    /// A new empty topology: picks a free random id, registers it with `name_hint` (a label
    /// for humans looking at [`REGISTRY_DIR`], e.g. the test's name) and makes the bridge
    /// `fl<id>br`, up, with no address and IPv6 disabled. Reaps what dead processes left first
    /// ([`reap_stale`]).
    pub fn named(name_hint: &str) -> Result<Self> {
        reap_stale();
        let id = claim_free_id(name_hint)?;
        let topo = Self {
            id,
            name_hint: name_hint.to_owned(),
            bridge: names::bridge(id),
            pods: Mutex::new(Vec::new()),
            next_index: 0,
        };
        topo.make_bridge()
            .with_context(|| format!("creating bridge {}", topo.bridge))?;
        Ok(topo)
    }

    fn make_bridge(&self) -> Result<()> {
        // No multicast snooping: with no querier on the segment, every pod sees every
        // neighbour solicitation, as on a plain switch.
        run(
            "ip",
            &[
                "link",
                "add",
                &self.bridge,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        link::disable_ipv6(&self.bridge)?;
        run("ip", &["link", "set", "dev", &self.bridge, "up"])?;
        Ok(())
    }

    /// The random 24-bit id all names derive from.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The prefix of every kernel object name of this topology: `fl<id as 6 hex digits>`.
    pub fn prefix(&self) -> String {
        names::prefix(self.id)
    }

    /// The name hint given to [`Topology::named`].
    pub fn name_hint(&self) -> &str {
        &self.name_hint
    }

    /// Name of the bridge (in the root network namespace).
    pub fn bridge(&self) -> &str {
        &self.bridge
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
    /// `fl<id>p<i>` is on the bridge and up, whose pod side is `eth0` with `lo` up, IPv4
    /// [`names::addresses`] (`198.18.0.{10+i}/16` for the first 245) and IPv6
    /// `fd00:fa::{10+i:x}/64` (no duplicate address detection). Returns once the pod can carry
    /// traffic (addresses not tentative, bridge port forwarding). `i` counts the pods ever
    /// added, from 0; at most 10,000 per topology.
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
        let pod = Pod::new(
            namespace,
            name,
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            names::netns(self.id, index),
            names::host_if(self.id, index),
            v4,
            v6,
        );
        self.pods_mut().push(pod.clone());
        self.make_pod(&pod).with_context(|| {
            format!(
                "creating pod {namespace}/{name} (network namespace {})",
                pod.netns_name()
            )
        })?;
        Ok(pod)
    }

    fn make_pod(&self, pod: &Pod) -> Result<()> {
        let (ns, host) = (pod.netns_name(), pod.host_ifname());
        run("ip", &["netns", "add", ns])?;
        run(
            "ip",
            &[
                "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        link::disable_ipv6(host)?;
        run(
            "ip",
            &["link", "set", "dev", host, "master", &self.bridge, "up"],
        )?;
        // The link-local address skips duplicate address detection too, so that nothing on
        // eth0 is ever tentative.
        pod.run(|| std::fs::write("/proc/sys/net/ipv6/conf/eth0/accept_dad", "0"))?
            .context("disabling duplicate address detection on eth0")?;
        run("ip", &["-n", ns, "link", "set", "dev", "lo", "up"])?;
        run("ip", &["-n", ns, "link", "set", "dev", "eth0", "up"])?;
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/16", pod.ipv4()),
                "dev",
                "eth0",
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/64", pod.ipv6()),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        link::wait_pod_ready(ns, host, pod.ipv6(), POD_READY_TIMEOUT)
    }

    /// Deletes a pod of this topology: its veth (both ends) and its network namespace.
    pub fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        let pods = self.pods_mut();
        let pos = pods
            .iter()
            .position(|p| p.netns_name() == pod.netns_name())
            .with_context(|| {
                format!(
                    "pod {}/{} is not in this topology",
                    pod.namespace(),
                    pod.name()
                )
            })?;
        // The host side first: deleting it removes the pair at once, while the devices of a
        // deleted namespace go asynchronously.
        link::delete_link(pod.host_ifname())?;
        link::delete_netns(pod.netns_name())?;
        pods.remove(pos);
        Ok(())
    }

    /// Gives `pod` the IPv4 address `198.18.0.<new_v4_last_octet>/16` instead of its current
    /// one (its IPv6 address stays). Returns the pod's new handle; the old one keeps the old
    /// address. Fails if another pod of the topology has that address.
    pub fn readdress(&self, pod: &Pod, new_v4_last_octet: u8) -> Result<Pod> {
        if !(1..=254).contains(&new_v4_last_octet) {
            bail!("198.18.0.{new_v4_last_octet} is not a host address of 198.18.0.0/24");
        }
        let new = Ipv4Addr::new(198, 18, 0, new_v4_last_octet);
        let mut pods = self.lock();
        let pos = pods
            .iter()
            .position(|p| p.netns_name() == pod.netns_name())
            .with_context(|| {
                format!(
                    "pod {}/{} is not in this topology",
                    pod.namespace(),
                    pod.name()
                )
            })?;
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
        let ns = current.netns_name();
        // Deleting a primary address deletes the secondaries of its subnet: delete, then add.
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "del",
                &format!("{}/16", current.ipv4()),
                "dev",
                "eth0",
            ],
        )?;
        run(
            "ip",
            &["-n", ns, "addr", "add", &format!("{new}/16"), "dev", "eth0"],
        )?;
        let moved = current.with_ipv4(new);
        pods[pos] = moved.clone();
        Ok(moved)
    }

    /// Writes the agent's inventory YAML for the current pods to `path` (atomically replaced).
    pub fn write_inventory(&self, path: &Path) -> Result<()> {
        inventory::write(path, &self.pods())
    }
}

/// Picks a random id whose names are free and claims it in the registry.
fn claim_free_id(name_hint: &str) -> Result<u32> {
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
            if let Err(e) = link::delete_link(p.host_ifname()) {
                eprintln!("testkit: deleting {}: {e:#}", p.host_ifname());
            }
            if let Err(e) = link::delete_netns(p.netns_name()) {
                eprintln!("testkit: deleting namespace {}: {e:#}", p.netns_name());
            }
        }
        if let Err(e) = link::delete_link(&self.bridge) {
            eprintln!("testkit: deleting {}: {e:#}", self.bridge);
        }
        registry::release(self.id);
    }
}
