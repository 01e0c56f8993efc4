//! The agent's inventory file: the pods of a topology, each with its namespace, name, labels
//! and network namespace (name under `/run/netns`); for an agent on a fake node (see
//! [`crate::nodes`]) also the pods of the other nodes, each with its node's name and its
//! addresses instead of a network namespace.
//!
//! ```yaml
//! pods:
//!   - namespace: dynamo
//!     name: vllm-decode-0
//!     labels: {app: vllm-decode, nvidia.com/dynamo-component-type: worker}
//!     netns: fl1a2b3c-n0-1
//!   - namespace: dynamo
//!     name: vllm-prefill-0
//!     labels: {app: vllm-prefill, nvidia.com/dynamo-component-type: worker}
//!     node: n1
//!     ips: [198.18.2.12, "fd00:fa:2::c"]
//! ```
//! (the file uses YAML's block style for labels and addresses; the content is the same).
use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::Pod;

#[derive(Serialize)]
struct InventoryPod<'a> {
    namespace: &'a str,
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ips: Vec<String>,
}

/// One pod of an inventory.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Entry<'a> {
    /// A pod of the agent's own host: with its network namespace.
    Local(&'a Pod),
    /// A pod of another node (named `node`): with its addresses.
    Remote {
        /// The pod.
        pod: &'a Pod,
        /// Its node's name.
        node: &'a str,
    },
}

impl<'a> Entry<'a> {
    fn yaml(self) -> InventoryPod<'a> {
        let pod = match self {
            Entry::Local(p) | Entry::Remote { pod: p, .. } => p,
        };
        let (netns, node, ips) = match self {
            Entry::Local(p) => (Some(p.netns_name()), None, Vec::new()),
            Entry::Remote { pod: p, node } => (
                None,
                Some(node),
                vec![p.ipv4().to_string(), p.ipv6().to_string()],
            ),
        };
        InventoryPod {
            namespace: pod.namespace(),
            name: pod.name(),
            labels: pod.labels(),
            netns,
            node,
            ips,
        }
    }
}

#[derive(Serialize)]
struct Inventory<'a> {
    pods: Vec<InventoryPod<'a>>,
}

/// The inventory YAML of `pods` (all local).
pub fn render(pods: &[Pod]) -> Result<String> {
    let entries: Vec<Entry<'_>> = pods.iter().map(Entry::Local).collect();
    render_entries(&entries)
}

/// The inventory YAML of `entries`, in order.
pub(crate) fn render_entries(entries: &[Entry<'_>]) -> Result<String> {
    let inv = Inventory {
        pods: entries.iter().map(|e| e.yaml()).collect(),
    };
    serde_yaml::to_string(&inv).context("serializing the inventory")
}

/// Writes the inventory of `pods` to `path`, replacing it atomically (written aside in the
/// same directory, then renamed), as an operator's tooling would, so that a watching agent
/// never reads half a file.
pub fn write(path: &Path, pods: &[Pod]) -> Result<()> {
    let entries: Vec<Entry<'_>> = pods.iter().map(Entry::Local).collect();
    write_entries(path, &entries)
}

/// Writes the inventory of `entries` to `path`, replacing it atomically (see [`write`]).
pub(crate) fn write_entries(path: &Path, entries: &[Entry<'_>]) -> Result<()> {
    let yaml = render_entries(entries)?;
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let aside = path.with_file_name(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    fs::write(&aside, yaml).with_context(|| format!("writing {}", aside.display()))?;
    fs::rename(&aside, path)
        .with_context(|| format!("renaming {} to {}", aside.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn local_pods_name_their_netns_and_remote_ones_their_node_and_addresses() {
        let labels = BTreeMap::from([("app".to_owned(), "vllm-prefill".to_owned())]);
        let pod = |name: &str, netns: &str, v4, v6| {
            Pod::new(
                "dynamo",
                name,
                labels.clone(),
                netns.into(),
                "h".into(),
                v4,
                v6,
            )
        };
        let local = pod(
            "frontend-0",
            "fl000001-n0-0",
            Ipv4Addr::new(198, 18, 1, 10),
            Ipv6Addr::new(0xfd00, 0xfa, 1, 0, 0, 0, 0, 10),
        );
        let remote = pod(
            "vllm-prefill-0",
            "fl000001-n1-2",
            Ipv4Addr::new(198, 18, 2, 12),
            Ipv6Addr::new(0xfd00, 0xfa, 2, 0, 0, 0, 0, 12),
        );
        let yaml = render_entries(&[
            Entry::Local(&local),
            Entry::Remote {
                pod: &remote,
                node: "n1",
            },
        ])
        .unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let pods = v["pods"].as_sequence().unwrap();
        assert_eq!(pods[0]["netns"].as_str(), Some("fl000001-n0-0"), "{yaml}");
        assert!(pods[0].get("node").is_none() && pods[0].get("ips").is_none());
        assert_eq!(pods[1]["name"].as_str(), Some("vllm-prefill-0"));
        assert_eq!(pods[1]["labels"]["app"].as_str(), Some("vllm-prefill"));
        assert_eq!(pods[1]["node"].as_str(), Some("n1"));
        let ips: Vec<&str> = (pods[1]["ips"].as_sequence().unwrap().iter())
            .map(|ip| ip.as_str().unwrap())
            .collect();
        assert_eq!(ips, ["198.18.2.12", "fd00:fa:2::c"], "{yaml}");
        assert!(pods[1].get("netns").is_none(), "{yaml}");
    }
}
