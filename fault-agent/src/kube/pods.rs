//! Kubernetes pods as the agent's [`Pod`]s.
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod as KubePod;

use crate::pods::Pod;

/// The pod, when it has addresses of its own (host-network pods share the node's address:
/// faulting them would fault the node, so they are left out).
pub fn from_kube(p: &KubePod) -> Option<Pod> {
    let spec = p.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = p.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|i| i.ip.parse().ok())
        .chain(status.pod_ip.as_deref().and_then(|i| i.parse().ok()))
        .collect();
    ips.sort();
    ips.dedup();
    Some(Pod {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        node: spec.node_name.clone(),
        ips,
        host_ifs: vec![],
        netns: None,
        pod_ifs: vec![],
        problem: None,
    })
}
