//! Pods as the API server reports them, and handles on them for probes: the network namespace
//! of a pod is found by its address among those containerd's CNI pinned (`/run/netns/cni-*`),
//! the way the node agent finds it, never from the runtime's internals.
use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use super::Cluster;
use crate::Pod;

/// One pod of the cluster.
#[derive(Debug, Clone)]
pub struct KubePod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<Ipv4Addr>,
    /// The Ready condition is True.
    pub ready: bool,
    /// Being deleted (`metadata.deletionTimestamp` set).
    pub terminating: bool,
}

impl KubePod {
    /// Reads the fields of a Pod's JSON.
    pub fn from_json(p: &serde_json::Value) -> Self {
        let md = &p["metadata"];
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let ready = p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        KubePod {
            namespace: s(&md["namespace"]),
            name: s(&md["name"]),
            uid: s(&md["uid"]),
            labels: serde_json::from_value(md["labels"].clone()).unwrap_or_default(),
            ip: p["status"]["podIP"].as_str().and_then(|i| i.parse().ok()),
            ready,
            terminating: !md["deletionTimestamp"].is_null(),
        }
    }

    /// A probe handle on this pod (its namespace found by address).
    pub fn handle(&self) -> Result<Pod> {
        let ip = self
            .ip
            .with_context(|| format!("pod {}/{} has no address yet", self.namespace, self.name))?;
        let netns = netns_of(ip)?
            .with_context(|| format!("no /run/netns/cni-* holds {ip} (pod {})", self.name))?;
        Ok(Pod::existing(
            &self.namespace,
            &self.name,
            &netns.display().to_string(),
            ip,
            std::net::Ipv6Addr::UNSPECIFIED,
        ))
    }
}

impl Cluster {
    /// Pods of `namespace` matching `selector` (may be empty), sorted by name.
    pub fn pods(&self, namespace: &str, selector: &str) -> Result<Vec<KubePod>> {
        let mut args = vec!["-n", namespace, "get", "pods"];
        if !selector.is_empty() {
            args.extend(["-l", selector]);
        }
        let list = self.json(&args)?;
        let mut pods: Vec<KubePod> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(KubePod::from_json)
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pods)
    }

    /// The Ready, not terminating pods of `namespace` matching `selector`.
    pub fn ready_pods(&self, namespace: &str, selector: &str) -> Result<Vec<KubePod>> {
        Ok(self
            .pods(namespace, selector)?
            .into_iter()
            .filter(|p| p.ready && !p.terminating)
            .collect())
    }
}

/// The pod network namespace (`/run/netns/cni-*`) holding `ip`, if any.
pub fn netns_of(ip: Ipv4Addr) -> Result<Option<PathBuf>> {
    let want = format!(" {ip}/");
    for e in std::fs::read_dir("/run/netns")
        .context("reading /run/netns")?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("cni-") {
            continue;
        }
        let out = Command::new("ip")
            .args(["-n", &name, "-4", "-o", "addr", "show"])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).contains(&want) {
            return Ok(Some(e.path()));
        }
    }
    Ok(None)
}
