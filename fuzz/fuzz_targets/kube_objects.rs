//! Pods, Services and Nodes as the node agent's watches deliver them (JSON), to its pods and
//! virtual ranges.
//!
//! Properties: slimming an object before it enters the cache changes nothing the agent reads
//! from it (`from_kube`, `virtual_nets`); a pod's addresses are sorted and unique; a
//! host-network or finished pod is never a pod of ours; virtual ranges are sorted, unique,
//! and none lies inside a configured `--service-cidr`.
#![no_main]

use std::sync::Arc;

use fault_agent::kube::{pods, services};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use libfuzzer_sys::fuzz_target;

fn pod(mut p: Pod) {
    let before = pods::from_kube(&p);
    if let Some(ours) = &before {
        assert!(ours.ips.is_sorted() && ours.ips.windows(2).all(|w| w[0] != w[1]));
        let spec = p.spec.as_ref().expect("a pod without spec was converted");
        assert_ne!(
            spec.host_network,
            Some(true),
            "a host-network pod was converted"
        );
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        assert!(
            !matches!(phase, Some("Succeeded" | "Failed")),
            "a finished pod was converted"
        );
    }
    pods::slim(&mut p);
    assert_eq!(
        pods::from_kube(&p),
        before,
        "slim changed what the agent reads"
    );
}

fn nets(services: &[Arc<Service>], nodes: &[Arc<Node>]) -> Vec<IpNet> {
    let configured: Vec<IpNet> = vec![
        "198.19.0.0/16".parse().unwrap(),
        "fd00:19::/64".parse().unwrap(),
    ];
    let nets = services::virtual_nets(services, nodes, &configured);
    assert!(
        nets.is_sorted() && nets.windows(2).all(|w| w[0] != w[1]),
        "{nets:?}"
    );
    for n in &nets {
        assert!(
            configured.contains(n) || !configured.iter().any(|c| c.contains(n)),
            "{n} is inside a configured range"
        );
    }
    nets
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = serde_json::from_slice::<Pod>(data) {
        pod(p);
    }
    if let Ok(mut s) = serde_json::from_slice::<Service>(data) {
        let before = nets(&[Arc::new(s.clone())], &[]);
        services::slim_service(&mut s);
        assert_eq!(
            nets(&[Arc::new(s)], &[]),
            before,
            "slim_service changed the ranges"
        );
    }
    if let Ok(mut n) = serde_json::from_slice::<Node>(data) {
        let before = nets(&[], &[Arc::new(n.clone())]);
        services::slim_node(&mut n);
        assert_eq!(
            nets(&[], &[Arc::new(n)]),
            before,
            "slim_node changed the ranges"
        );
    }
});
