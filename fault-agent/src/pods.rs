//! The agent's view of a pod, whatever told it about the pod (inventory file or Kubernetes).
use std::{collections::BTreeMap, net::IpAddr};

use fault_api::PodRef;
use serde::Serialize;

use crate::discover::HostIf;

/// A pod: identity and labels, and where its traffic can be caught.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Node it runs on (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub ips: Vec<IpAddr>,
    /// Host-side veths on this node; empty for pods of other nodes (peers only).
    pub host_ifs: Vec<HostIf>,
    /// The pod's network namespace (a file to open), for local pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<std::path::PathBuf>,
    /// The pod's own veths, inside `netns`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pod_ifs: Vec<HostIf>,
    /// Why the pod cannot be faulted here (netns missing, no veth...), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// On another node that runs an agent: that agent judges what the pod sends, so the
    /// programs here skip its packets when they arrive (`fault_common::MAP_REMOTE`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
}

impl Pod {
    /// Whether this node can act on the pod's traffic.
    pub fn is_local(&self) -> bool {
        !self.host_ifs.is_empty()
    }

    /// NATS, by the labels its charts set: `app.kubernetes.io/name=nats` or `app=nats`.
    pub fn is_nats(&self) -> bool {
        self.labels
            .get("app.kubernetes.io/name")
            .is_some_and(|v| v == "nats")
            || self.labels.get("app").is_some_and(|v| v == "nats")
    }

    pub fn to_ref(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            ips: self.ips.clone(),
            node: self.node.clone(),
        }
    }
}
