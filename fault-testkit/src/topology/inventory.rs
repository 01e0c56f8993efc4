//! The agent's inventory file: the pods of a topology, each with its namespace, name, labels
//! and network namespace (name under `/run/netns`).
//!
//! ```yaml
//! pods:
//!   - namespace: dynamo
//!     name: vllm-decode-0
//!     labels: {app: vllm-decode, nvidia.com/dynamo-component-type: worker}
//!     netns: fl1a2b3c-0
//! ```
use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::Pod;

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

/// The inventory YAML of `pods`.
pub fn render(pods: &[Pod]) -> Result<String> {
    let inv = Inventory {
        pods: pods
            .iter()
            .map(|p| InventoryPod {
                namespace: p.namespace(),
                name: p.name(),
                labels: p.labels(),
                netns: p.netns_name(),
            })
            .collect(),
    };
    serde_yaml::to_string(&inv).context("serializing the inventory")
}

/// Writes the inventory of `pods` to `path`, replacing it atomically (written aside in the
/// same directory, then renamed), as an operator's tooling would, so that a watching agent
/// never reads half a file.
pub fn write(path: &Path, pods: &[Pod]) -> Result<()> {
    let yaml = render(pods)?;
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
