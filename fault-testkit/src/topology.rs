//! Pods as network namespaces on one L2 segment, the way a node sees them: each pod has a
//! veth whose pod side is `eth0` (IPv4 `198.18.0.N/24`, IPv6 `fd00:fa::N/64`) and whose host
//! side sits on a bridge of the root namespace (the bridge has no address: the host takes no
//! part in the traffic). Names derive from a random id so that topologies never collide:
//! bridge `fl<id>br`, host veths `fl<id>p<i>`, namespaces `fl<id>-<i>`.
use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::{netns, probe::Family, run};

const REGISTRY: &str = "/run/faultline-testkit";

/// One pod. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    netns: String,
    host_if: String,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

impl Pod {
    /// A handle on a pod made by another process (e.g. `fault-testenv up`), for probes.
    pub fn existing(namespace: &str, name: &str, netns: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Self {
        Pod {
            namespace: namespace.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            netns: netns.into(),
            host_if: String::new(),
            v4,
            v6,
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
    /// Name under /run/netns.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
    /// The host side of the pod's veth (where the agent attaches).
    pub fn host_ifname(&self) -> &str {
        &self.host_if
    }
    pub fn ipv4(&self) -> Ipv4Addr {
        self.v4
    }
    pub fn ipv6(&self) -> Ipv6Addr {
        self.v6
    }
    pub fn ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.v4),
            Family::V6 => IpAddr::V6(self.v6),
        }
    }
    /// Runs `f` on a thread inside the pod's network namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        netns::run_in(&self.netns_path(), f)
    }
}

/// The standard inference topology (namespace `dynamo`), used by the demo and many tests.
#[derive(Debug, Clone)]
pub struct Dynamo {
    pub frontend: Pod,
    pub decode0: Pod,
    pub decode1: Pod,
    pub prefill: Pod,
    pub nats: Pod,
}

/// A set of pods and the bridge joining them; removes them all on drop.
pub struct Topology {
    id: u32,
    bridge: String,
    pods: Vec<Pod>,
    next: u32,
}

#[derive(Serialize)]
struct InventoryPod<'a> {
    namespace: &'a str,
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
    netns: &'a str,
}

#[derive(Serialize)]
struct Inventory<'a> {
    pods: Vec<InventoryPod<'a>>,
}

fn random_id() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b) & 0x00ff_ffff
}

fn set_sysctl(path: &str, value: &str) {
    if let Err(e) = fs::write(path, value) {
        eprintln!("testkit: {path}: {e}");
    }
}

impl Topology {
    /// A new empty topology (and its bridge). Reaps what dead test processes left first.
    pub fn new() -> Result<Self> {
        reap_stale();
        let id = random_id();
        let bridge = format!("fl{id:06x}br");
        fs::create_dir_all(REGISTRY).context("creating the testkit registry")?;
        fs::write(Path::new(REGISTRY).join(format!("{id:06x}")), std::process::id().to_string())?;
        let topo = Self { id, bridge: bridge.clone(), pods: vec![], next: 0 };
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        set_sysctl(&format!("/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6"), "1");
        run("ip", &["link", "set", &bridge, "up"])?;
        Ok(topo)
    }

    /// The id all names derive from.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Adds a pod with the next addresses (`198.18.0.{10+i}`, `fd00:fa::{10+i}`).
    pub fn add_pod(&mut self, namespace: &str, name: &str, labels: &[(&str, &str)]) -> Result<Pod> {
        let i = self.next;
        if i >= 240 {
            bail!("at most 240 pods per topology");
        }
        self.next += 1;
        let netns = format!("fl{:06x}-{i}", self.id);
        let host_if = format!("fl{:06x}p{i}", self.id);
        let host_octet = 10 + i as u8;
        let pod = Pod {
            namespace: namespace.into(),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            netns: netns.clone(),
            host_if: host_if.clone(),
            v4: Ipv4Addr::new(198, 18, 0, host_octet),
            v6: Ipv6Addr::new(0xfd00, 0xfa, 0, 0, 0, 0, 0, host_octet as u16),
        };
        // Registered before it exists, so a failure half-way is still cleaned up.
        self.pods.push(pod.clone());
        run("ip", &["netns", "add", &netns])?;
        run("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        set_sysctl(&format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"), "1");
        run("ip", &["link", "set", &host_if, "master", &self.bridge, "up"])?;
        run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &netns, "addr", "add", &format!("{}/24", pod.v4), "dev", "eth0"])?;
        run("ip", &["-n", &netns, "addr", "add", &format!("{}/64", pod.v6), "dev", "eth0", "nodad"])?;
        Ok(pod)
    }

    /// The inference topology: frontend, two decode workers, a prefill worker, NATS.
    pub fn dynamo(&mut self) -> Result<Dynamo> {
        let worker = ("nvidia.com/dynamo-component-type", "worker");
        Ok(Dynamo {
            frontend: self.add_pod("dynamo", "frontend-0", &[("app", "frontend"), ("nvidia.com/dynamo-component-type", "frontend")])?,
            decode0: self.add_pod("dynamo", "vllm-decode-0", &[("app", "vllm-decode"), worker])?,
            decode1: self.add_pod("dynamo", "vllm-decode-1", &[("app", "vllm-decode"), worker])?,
            prefill: self.add_pod("dynamo", "vllm-prefill-0", &[("app", "vllm-prefill"), worker])?,
            nats: self.add_pod("dynamo", "nats-0", &[("app.kubernetes.io/name", "nats"), ("app", "nats")])?,
        })
    }

    /// Deletes a pod (its namespace, and with it both ends of its veth).
    pub fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        run("ip", &["link", "del", &pod.host_if])?;
        run("ip", &["netns", "del", &pod.netns])?;
        self.pods.retain(|p| p.netns != pod.netns);
        Ok(())
    }

    /// Gives `pod` the IPv4 address `198.18.0.<last_octet>` instead of its current one.
    pub fn readdress(&mut self, pod: &Pod, last_octet: u8) -> Result<Pod> {
        let new = Ipv4Addr::new(198, 18, 0, last_octet);
        // Deleting a primary address deletes the secondaries of its subnet: delete, then add.
        run("ip", &["-n", &pod.netns, "addr", "del", &format!("{}/24", pod.v4), "dev", "eth0"])?;
        run("ip", &["-n", &pod.netns, "addr", "add", &format!("{new}/24"), "dev", "eth0"])?;
        let mut moved = pod.clone();
        moved.v4 = new;
        for p in &mut self.pods {
            if p.netns == pod.netns {
                *p = moved.clone();
            }
        }
        Ok(moved)
    }

    /// Writes the agent's inventory YAML for the current pods.
    pub fn write_inventory(&self, path: &Path) -> Result<()> {
        let inv = Inventory {
            pods: self
                .pods
                .iter()
                .map(|p| InventoryPod { namespace: &p.namespace, name: &p.name, labels: &p.labels, netns: &p.netns })
                .collect(),
        };
        let yaml = serde_yaml::to_string(&inv)?;
        // Replace atomically, as an operator's tooling would.
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, yaml)?;
        fs::rename(&tmp, path)?;
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for p in &self.pods {
            // Deleting the host side first removes the pair now; a namespace's own devices
            // go asynchronously after `netns del`.
            let _ = run("ip", &["link", "del", &p.host_if]);
            if let Err(e) = run("ip", &["netns", "del", &p.netns]) {
                if !e.to_string().contains("No such file") {
                    eprintln!("testkit: {e}");
                }
            }
        }
        if let Err(e) = run("ip", &["link", "del", &self.bridge]) {
            eprintln!("testkit: {e}");
        }
        let _ = fs::remove_file(Path::new(REGISTRY).join(format!("{:06x}", self.id)));
    }
}

/// Removes the namespaces and links of topologies whose process is dead.
pub fn reap_stale() {
    let Ok(entries) = fs::read_dir(REGISTRY) else { return };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let alive = fs::read_to_string(e.path())
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if alive {
            continue;
        }
        if let Ok(list) = run("ip", &["netns", "list"]) {
            for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
                if ns.starts_with(&format!("fl{id}-")) {
                    let _ = run("ip", &["netns", "del", ns]);
                }
            }
        }
        if let Ok(list) = run("ip", &["-o", "link", "show"]) {
            for name in list.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n)) {
                if name.starts_with(&format!("fl{id}")) {
                    let _ = run("ip", &["link", "del", name]);
                }
            }
        }
        let _ = fs::remove_file(e.path());
    }
}

/// Names of the network namespaces that exist now.
pub fn netns_names() -> Vec<String> {
    run("ip", &["netns", "list"])
        .map(|l| l.lines().filter_map(|x| x.split_whitespace().next()).map(String::from).collect())
        .unwrap_or_default()
}

/// Whether a link of that name exists in the root namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}
