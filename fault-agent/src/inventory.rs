//! The single-host inventory: which "pods" exist, with their labels and network namespace, and
//! optionally the pods of other hosts (peers only: each host's own agent judges what its pods
//! send, see `DEVELOPERS.md`).
//!
//! ```yaml
//! pods:
//!   - namespace: dynamo
//!     name: vllm-decode-0
//!     labels: {app: vllm-decode, nvidia.com/dynamo-component-type: worker}
//!     netns: decode0          # a name under /run/netns, or an absolute path to a netns file
//!   - namespace: dynamo
//!     name: vllm-prefill-0
//!     labels: {app: vllm-prefill}
//!     node: host-b            # on another host, whose agent runs with the same faults
//!     ips: [198.18.2.10, "fd00:fa:2::a"]
//! ```
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use fault_api::{FieldError, Selector, spec::check_namespace};
use serde::{Deserialize, Serialize};

/// One pod of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryPod {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A local pod: a name under `/run/netns`, or an absolute path to a network namespace file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// A pod of another host: that host's name (with `ips`, instead of `netns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The addresses of a pod of another host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
}

impl InventoryPod {
    /// The file to open to enter a local pod's network namespace; `None` for another host's.
    pub fn netns_path(&self) -> Option<PathBuf> {
        let netns = self.netns.as_deref()?;
        Some(if netns.starts_with('/') {
            PathBuf::from(netns)
        } else {
            Path::new("/run/netns").join(netns)
        })
    }
}

impl InventoryPod {
    /// A local pod has a `netns` (its addresses are read from it); another host's has a
    /// `node` and `ips`.
    fn validate_place(&self, f: &dyn Fn(&str) -> String) -> Result<(), FieldError> {
        match (&self.netns, &self.node) {
            (Some(netns), None) => {
                let ok = !netns.is_empty() && (netns.starts_with('/') || !netns.contains('/'));
                if !ok {
                    return Err(FieldError::new(
                        f("netns"),
                        format!(
                            "must be a name under /run/netns or an absolute path, got {netns:?}"
                        ),
                    ));
                }
                if !self.ips.is_empty() {
                    return Err(FieldError::new(
                        f("ips"),
                        "only for pods of another host (`node`): a local pod's addresses are read from its netns",
                    ));
                }
                Ok(())
            }
            (None, Some(node)) => {
                if node.is_empty() || node.len() > 253 {
                    return Err(FieldError::new(
                        f("node"),
                        "must be a host name (1-253 characters)",
                    ));
                }
                if self.ips.is_empty() {
                    return Err(FieldError::new(
                        f("ips"),
                        "a pod of another host (`node`) needs its addresses",
                    ));
                }
                Ok(())
            }
            (Some(_), Some(_)) => Err(FieldError::new(
                f("node"),
                "either `netns` (a local pod) or `node` with `ips` (another host's), not both",
            )),
            (None, None) => Err(FieldError::new(
                f("netns"),
                "missing: `netns` for a local pod, or `node` with `ips` for another host's",
            )),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub pods: Vec<InventoryPod>,
}

/// Why an inventory was refused: the field (`pods[2].netns`) when known, and the reason with
/// its line and column for YAML errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inventory {path}: {error}")]
pub struct InventoryError {
    pub path: String,
    pub error: FieldError,
}

impl Inventory {
    /// Parses and validates the YAML text of an inventory.
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        let inv: Inventory = serde_yaml::from_str(text).map_err(|e| {
            let field = e
                .to_string()
                .split(':')
                .next()
                .filter(|f| f.starts_with("pods"))
                .unwrap_or("pods")
                .to_owned();
            FieldError::new(field, format!("not a valid inventory: {e}"))
        })?;
        inv.validate()?;
        Ok(inv)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let wrap = |error| InventoryError {
            path: path.display().to_string(),
            error,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| wrap(FieldError::new("file", format!("cannot read: {e}"))))?;
        Self::parse(&text).map_err(wrap)
    }

    fn validate(&self) -> Result<(), FieldError> {
        let mut seen = BTreeSet::new();
        for (i, p) in self.pods.iter().enumerate() {
            let f = |name: &str| format!("pods[{i}].{name}");
            check_namespace(&f("namespace"), &p.namespace)?;
            let name_ok = !p.name.is_empty()
                && p.name.len() <= 253
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !name_ok {
                return Err(FieldError::new(
                    f("name"),
                    format!("must be a pod name (1-253 of [a-z0-9.-]), got {:?}", p.name),
                ));
            }
            Selector::from_labels(p.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(|e| FieldError::new(f("labels"), e))?;
            p.validate_place(&f)?;
            if !seen.insert((&p.namespace, &p.name)) {
                return Err(FieldError::new(
                    f("name"),
                    format!("pod {}/{} is listed twice", p.namespace, p.name),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let inv = Inventory::parse(
            "pods:\n  - namespace: dynamo\n    name: vllm-decode-0\n    labels: {app: vllm-decode, nvidia.com/dynamo-component-type: worker}\n    netns: decode0\n",
        )
        .unwrap();
        assert_eq!(
            inv.pods[0].netns_path(),
            Some(PathBuf::from("/run/netns/decode0"))
        );
        assert_eq!(inv.pods[0].labels["app"], "vllm-decode");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Inventory::parse("pods:\n  - namespace: a\n    name: b\n").unwrap_err();
        assert!(e.message.contains("netns"), "{e}");
        let e = Inventory::parse(
            "pods:\n  - {namespace: a, name: b, netns: x}\n  - {namespace: A, name: c, netns: y}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "pods[1].namespace");
        let e = Inventory::parse(
            "pods:\n  - {namespace: a, name: b, netns: x}\n  - {namespace: a, name: b, netns: y}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "pods[1].name");
        let e = Inventory::parse("pods: [ {namespace: a").unwrap_err();
        assert!(e.message.contains("not a valid inventory"), "{e}");
        let e = Inventory::parse("pods:\n  - {namespace: a, name: b, netns: x, color: red}\n")
            .unwrap_err();
        assert!(e.message.contains("color"), "{e}");
        let e = Inventory::parse("pods:\n  - {namespace: a, name: b, netns: x/y}\n").unwrap_err();
        assert_eq!(e.field, "pods[0].netns");
        let e = Inventory::parse("pods:\n  - {namespace: a, name: b, node: h}\n").unwrap_err();
        assert_eq!(e.field, "pods[0].ips");
        let e = Inventory::parse(
            "pods:\n  - {namespace: a, name: b, netns: x, node: h, ips: [198.18.2.1]}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "pods[0].node");
        let e =
            Inventory::parse("pods:\n  - {namespace: a, name: b, netns: x, ips: [198.18.2.1]}\n")
                .unwrap_err();
        assert_eq!(e.field, "pods[0].ips");
        let e = Inventory::parse("pods:\n  - {namespace: a, name: b, node: h, ips: [nope]}\n")
            .unwrap_err();
        assert!(e.field.starts_with("pods"), "{e}");
    }

    #[test]
    fn pods_of_other_hosts_need_a_node_and_addresses() {
        let inv = Inventory::parse(
            "pods:\n  - {namespace: a, name: b, node: host-b, ips: [198.18.2.10, \"fd00:fa:2::a\"]}\n",
        )
        .unwrap();
        assert_eq!(inv.pods[0].netns_path(), None);
        assert_eq!(inv.pods[0].ips.len(), 2);
    }
}
