//! The addresses kube-proxy translates to pod addresses, from the Services and Nodes of the
//! cluster: ClusterIPs, externalIPs and load-balancer IPs (iptables, IPVS and nftables modes
//! DNAT them), and the nodes' addresses (NodePorts). The node agent hands them to the core as
//! virtual ranges (`Core::set_virtual_nets`): a packet addressed to one of them is judged by
//! its real peer after the DNAT, not as a packet to that address.
use std::{net::IpAddr, sync::Arc};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, NodeStatus, Service, ServiceSpec, ServiceStatus};

/// Drops what [`virtual_nets`] does not read, before a Service enters a reflector's cache.
pub fn slim_service(s: &mut Service) {
    s.metadata.managed_fields = None;
    s.metadata.annotations = None;
    s.metadata.labels = None;
    if let Some(spec) = s.spec.take() {
        s.spec = Some(ServiceSpec {
            cluster_ip: spec.cluster_ip,
            cluster_ips: spec.cluster_ips,
            external_ips: spec.external_ips,
            ..Default::default()
        });
    }
    if let Some(status) = s.status.take() {
        s.status = Some(ServiceStatus {
            load_balancer: status.load_balancer,
            ..Default::default()
        });
    }
}

/// Drops what [`virtual_nets`] does not read, before a Node enters a reflector's cache.
pub fn slim_node(n: &mut Node) {
    n.metadata.managed_fields = None;
    n.metadata.annotations = None;
    n.metadata.labels = None;
    n.spec = None;
    if let Some(status) = n.status.take() {
        n.status = Some(NodeStatus {
            addresses: status.addresses,
            ..Default::default()
        });
    }
}

fn service_addresses(s: &Service) -> impl Iterator<Item = &str> {
    let spec = s.spec.as_ref();
    let cluster = spec
        .and_then(|sp| sp.cluster_ip.as_deref())
        .into_iter()
        .chain(
            spec.and_then(|sp| sp.cluster_ips.as_deref())
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
    let external = spec
        .and_then(|sp| sp.external_ips.as_deref())
        .into_iter()
        .flatten()
        .map(String::as_str);
    let balancer = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref());
    cluster.chain(external).chain(balancer)
}

fn node_addresses(n: &Node) -> impl Iterator<Item = &str> {
    n.status
        .as_ref()
        .and_then(|st| st.addresses.as_deref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .map(|a| a.address.as_str())
}

/// Every such address as a /32 or /128, plus `configured` (the `--service-cidr` ranges);
/// addresses inside a configured range are left to it. Sorted, without duplicates. A headless
/// Service (`None`) or an address that does not parse is skipped.
pub fn virtual_nets(
    services: &[Arc<Service>],
    nodes: &[Arc<Node>],
    configured: &[IpNet],
) -> Vec<IpNet> {
    let found = services
        .iter()
        .flat_map(|s| service_addresses(s).collect::<Vec<_>>())
        .chain(
            nodes
                .iter()
                .flat_map(|n| node_addresses(n).collect::<Vec<_>>()),
        )
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(IpNet::from)
        .filter(|n| !configured.iter().any(|c| c.contains(n)));
    let mut nets: Vec<IpNet> = configured.iter().copied().chain(found).collect();
    nets.sort();
    nets.dedup();
    nets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_external_balancer_and_node_addresses() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "spec": {"clusterIP": "198.19.192.10", "clusterIPs": ["198.19.192.10", "fd00:19::a"],
                     "externalIPs": ["198.19.250.1"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.19.251.1"}, {"hostname": "lb"}]}}
        }))
        .unwrap();
        let headless: Service =
            serde_json::from_value(serde_json::json!({"spec": {"clusterIP": "None"}})).unwrap();
        let node: Node = serde_json::from_value(serde_json::json!({
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.255.1"},
                                     {"type": "Hostname", "address": "node-a"}]}
        }))
        .unwrap();
        let configured: Vec<IpNet> = vec!["198.19.250.0/24".parse().unwrap()];
        let nets = virtual_nets(
            &[Arc::new(svc), Arc::new(headless)],
            &[Arc::new(node)],
            &configured,
        );
        let want: Vec<IpNet> = [
            "198.18.255.1/32",
            "198.19.192.10/32",
            "198.19.250.0/24",
            "198.19.251.1/32",
            "fd00:19::a/128",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(nets, want);
    }
}
