//! Kubernetes pods as the agent's [`Pod`]s.
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod as KubePod;

use crate::pods::Pod;

/// Drops what [`from_kube`] does not read, before a Pod enters a reflector's cache: the agents
/// hold every Pod of the cluster, and managed fields, annotations, containers, volumes and
/// container statuses are most of a Pod's size (a node agent holding 1,000 pods shrinks from
/// about 50 to about 30 MiB; see BENCHMARKS.md, "Scale in a cluster").
pub fn slim(p: &mut KubePod) {
    let md = &mut p.metadata;
    md.managed_fields = None;
    md.annotations = None;
    md.owner_references = None;
    md.finalizers = None;
    if let Some(spec) = p.spec.take() {
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: spec.node_name,
            host_network: spec.host_network,
            ..Default::default()
        });
    }
    if let Some(status) = p.status.take() {
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            pod_ips: status.pod_ips,
            ..Default::default()
        });
    }
}

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
        remote: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slim_keeps_what_from_kube_reads() {
        let mut p: KubePod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "n", "labels": {"app": "x"}, "annotations": {"big": "y"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"nodeName": "node-a", "hostNetwork": false, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "198.18.0.10", "podIPs": [{"ip": "198.18.0.10"}, {"ip": "fd00:fa::a"}],
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let before = from_kube(&p);
        slim(&mut p);
        assert_eq!(from_kube(&p), before);
        assert!(p.metadata.annotations.is_none() && p.metadata.managed_fields.is_none());
        assert!(p.spec.as_ref().unwrap().containers.is_empty());
        assert!(p.status.as_ref().unwrap().conditions.is_none());
    }
}
