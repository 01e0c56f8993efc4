//! From a fault's spec and the pods known now to concrete addresses: which pods are targets,
//! which prefixes are peers, which addresses are carved out of the peers (protected). Pure:
//! the same inputs give the same output, so the reconciler can run it at every change.
use std::{collections::BTreeMap, net::IpAddr};

use fault_api::{FaultSpec, PodRef};
use ipnet::{IpNet, Ipv4Net};

use crate::{
    pods::Pod,
    prefixes::{PrefixSet, covers_addr},
    protect::Protection,
};

/// What a fault means against the current pods.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resolution {
    /// Target pods (all nodes).
    pub targets: Vec<PodRef>,
    /// Addresses of the target pods this node can act on.
    pub local_target_ips: Vec<IpAddr>,
    /// Addresses of the pods this node can act on that are peers (not protected): where a
    /// target's traffic is caught after the node's NAT (Services).
    #[serde(default)]
    pub local_peer_ips: Vec<IpAddr>,
    /// Peer pods, when peers are chosen among pods.
    pub peers: Vec<PodRef>,
    /// Peer prefixes: the peer pods' addresses as /32 and /128, the CIDRs, or everything.
    pub includes: Vec<IpNet>,
    /// Prefixes never faulted by this fault (NATS, allowed namespaces), as /32 and /128.
    pub excludes: Vec<IpNet>,
    /// The excluded addresses by reason (`nats`, `namespace:<ns>`), for the API.
    pub protected: BTreeMap<String, Vec<IpAddr>>,
    pub warnings: Vec<String>,
}

impl Resolution {
    /// Addresses of every target pod (all nodes).
    pub fn all_target_ips(&self) -> Vec<IpAddr> {
        self.targets
            .iter()
            .flat_map(|t| t.ips.iter().copied())
            .collect()
    }
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// An IPv4-mapped IPv6 range (`::ffff:a.b.c.d/n`, `n >= 96`) stands for the IPv4 range
/// `a.b.c.d/(n - 96)`: the kernel's tables hold IPv4 addresses IPv4-mapped, so that is what it
/// covers there, and no IPv6 packet carries such an address.
pub fn ipv4_form(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => n
            .network()
            .to_ipv4_mapped()
            .and_then(|a| Ipv4Net::new(a, n.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        _ => net,
    }
}

/// The pods a spec's namespace, name prefix and selector match (protected ones included).
pub fn matches_target(spec: &FaultSpec, pod: &Pod) -> bool {
    pod.namespace == spec.namespace
        && spec
            .pod_prefix
            .as_deref()
            .is_none_or(|p| pod.name.starts_with(p))
        && spec
            .selector
            .as_ref()
            .is_none_or(|s| s.matches(&pod.labels))
}

fn is_peer_pod(spec: &FaultSpec, pod: &Pod) -> bool {
    let ns = spec.to_namespace.as_deref().unwrap_or(&spec.namespace);
    pod.namespace == ns
        && (spec.to_selectors.is_empty()
            || spec.to_selectors.iter().any(|s| s.matches(&pod.labels)))
}

/// Resolves `spec` against `pods`.
pub fn resolve(spec: &FaultSpec, pods: &[Pod], protection: &Protection) -> Resolution {
    resolve_among(spec, pods, protection, None)
}

/// Like [`resolve`], with the targets limited to `chosen` (`namespace/name`, a fault's
/// blast-radius choice) when given: other matching pods are left alone, and a chosen pod that
/// is gone is named in a warning (it is not replaced).
pub fn resolve_among(
    spec: &FaultSpec,
    pods: &[Pod],
    protection: &Protection,
    chosen: Option<&[String]>,
) -> Resolution {
    let mut r = Resolution::default();
    let is_chosen = |p: &Pod| {
        chosen.is_none_or(|c| {
            c.iter()
                .any(|n| n.split_once('/') == Some((&p.namespace, &p.name)))
        })
    };
    for pod in pods
        .iter()
        .filter(|p| matches_target(spec, p) && is_chosen(p))
    {
        if let Some(why) = protection.reason(pod) {
            r.warnings.push(format!(
                "target pod {}/{} is protected ({why}): not faulted",
                pod.namespace, pod.name
            ));
            continue;
        }
        r.targets.push(pod.to_ref());
        if pod.is_local() {
            r.local_target_ips.extend(pod.ips.iter().copied());
        }
        if pod.ips.is_empty() {
            r.warnings.push(format!(
                "target pod {}/{} has no address yet",
                pod.namespace, pod.name
            ));
        }
    }
    for gone in chosen.unwrap_or_default().iter().filter(|n| {
        !r.targets
            .iter()
            .any(|t| n.split_once('/') == Some((&t.namespace, &t.name)))
    }) {
        r.warnings.push(format!(
            "chosen pod {gone} is gone or no longer matches: not replaced (mode {} chose at creation)",
            spec.mode
        ));
    }
    if r.targets.is_empty() && chosen.is_none() {
        r.warnings.push(format!(
            "no pod in namespace {} matches the targets yet; the fault applies to matching pods as they appear",
            spec.namespace
        ));
    }
    if spec.all_peers() {
        r.includes.push("0.0.0.0/0".parse().expect("literal CIDR"));
        r.includes.push("::/0".parse().expect("literal CIDR"));
    } else {
        if spec.selects_peer_pods() {
            for pod in pods.iter().filter(|p| is_peer_pod(spec, p)) {
                if let Some(why) = protection.reason(pod) {
                    r.warnings.push(format!(
                        "peer pod {}/{} is protected ({why}): excluded",
                        pod.namespace, pod.name
                    ));
                    continue;
                }
                r.peers.push(pod.to_ref());
                r.includes.extend(pod.ips.iter().map(|ip| host_net(*ip)));
            }
            if r.peers.is_empty() {
                r.warnings.push("no pod matches the peers yet".into());
            }
        }
        r.includes
            .extend(spec.to_cidrs.iter().map(|c| ipv4_form(*c)));
    }
    for pod in pods {
        let reason = if !spec.block_nats && pod.is_nats() {
            "nats".to_owned()
        } else if spec.allow_namespaces.contains(&pod.namespace) {
            format!("namespace:{}", pod.namespace)
        } else if let Some(why) = protection
            .reason(pod)
            .filter(|_| covered_by(&r.includes, pod))
        {
            why
        } else {
            continue;
        };
        r.excludes.extend(pod.ips.iter().map(|ip| host_net(*ip)));
        r.protected
            .entry(reason)
            .or_default()
            .extend(pod.ips.iter().copied());
    }
    for cidr in protection.cidrs_within(&r.includes) {
        r.excludes.push(cidr);
        r.warnings.push(format!(
            "peers exclude {cidr}: protected (--protected-cidr)"
        ));
    }
    r.includes.sort();
    r.includes.dedup();
    r.excludes.sort();
    r.excludes.dedup();
    r.local_peer_ips = local_peers(pods, &r.includes, &r.excludes);
    r
}

/// Whether one of `pod`'s addresses is in one of `includes` (a peer CIDR, or everything).
fn covered_by(includes: &[IpNet], pod: &Pod) -> bool {
    includes.iter().any(|n| {
        pod.ips
            .iter()
            .any(|ip| n.contains(&ipv4_form(IpNet::from(*ip)).addr()))
    })
}

/// Addresses of the local pods that `includes` cover and `excludes` do not.
fn local_peers(pods: &[Pod], includes: &[IpNet], excludes: &[IpNet]) -> Vec<IpAddr> {
    let (inc, exc) = (
        PrefixSet::of(includes.iter().copied()),
        PrefixSet::of(excludes.iter().copied()),
    );
    pods.iter()
        .filter(|p| p.is_local())
        .flat_map(|p| p.ips.iter().copied())
        .filter(|ip| covers_addr(&inc, &exc, *ip))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fault_api::PartitionMode;

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ip: &str) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node: None,
            ips: vec![ip.parse().unwrap()],
            host_ifs: vec![crate::discover::HostIf {
                name: format!("h-{name}"),
                index: 1,
            }],
            netns: None,
            pod_ifs: vec![],
            problem: None,
            remote: false,
        }
    }

    fn pods() -> Vec<Pod> {
        vec![
            pod(
                "dynamo",
                "vllm-decode-0",
                &[("app", "vllm-decode")],
                "198.18.0.10",
            ),
            pod(
                "dynamo",
                "vllm-decode-1",
                &[("app", "vllm-decode")],
                "198.18.0.11",
            ),
            pod(
                "dynamo",
                "vllm-prefill-0",
                &[("app", "vllm-prefill")],
                "198.18.0.12",
            ),
            pod("dynamo", "nats-0", &[("app", "nats")], "198.18.0.13"),
            pod(
                "kube-system",
                "coredns-0",
                &[("k8s-app", "kube-dns")],
                "198.18.0.14",
            ),
        ]
    }

    fn spec() -> FaultSpec {
        let mut s = FaultSpec::new("dynamo");
        s.pod_prefix = Some("vllm-decode".into());
        s.partition = Some(PartitionMode::Packets);
        s
    }

    #[test]
    fn targets_by_prefix_peers_by_selector() {
        let mut s = spec();
        s.to_selectors = vec!["app=vllm-prefill".parse().unwrap()];
        let r = resolve(&s, &pods(), &Protection::default());
        assert_eq!(r.targets.len(), 2);
        assert_eq!(r.local_target_ips.len(), 2);
        assert_eq!(r.includes, vec!["198.18.0.12/32".parse::<IpNet>().unwrap()]);
        assert_eq!(r.excludes, vec!["198.18.0.13/32".parse::<IpNet>().unwrap()]);
        assert_eq!(
            r.local_peer_ips,
            vec!["198.18.0.12".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn all_peers_protects_nats_and_allowed_namespaces() {
        let mut s = spec();
        s.allow_namespaces = vec!["kube-system".into()];
        let r = resolve(&s, &pods(), &Protection::default());
        assert_eq!(r.includes.len(), 2, "0.0.0.0/0 and ::/0");
        assert_eq!(r.excludes.len(), 2);
        assert_eq!(
            r.local_peer_ips.len(),
            3,
            "every pod but NATS and kube-system's"
        );
        assert!(
            r.protected.contains_key("nats") && r.protected.contains_key("namespace:kube-system")
        );
        s.block_nats = true;
        let r = resolve(&s, &pods(), &Protection::default());
        assert!(!r.protected.contains_key("nats"));
    }

    #[test]
    fn ipv4_mapped_cidrs_are_their_ipv4_ranges() {
        let mut s = spec();
        s.to_cidrs = vec![
            "::ffff:198.18.0.0/124".parse().unwrap(),
            "::ffff:0:0/96".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ];
        let r = resolve(&s, &pods(), &Protection::default());
        let nets = |l: &[&str]| -> Vec<IpNet> { l.iter().map(|n| n.parse().unwrap()).collect() };
        assert_eq!(
            r.includes,
            nets(&["0.0.0.0/0", "198.18.0.0/28", "fd00::/8"])
        );
        assert_eq!(r.local_peer_ips.len(), 4, "every pod but NATS");
    }

    #[test]
    fn no_match_is_a_warning_not_an_error() {
        let mut s = spec();
        s.namespace = "empty".into();
        let r = resolve(&s, &pods(), &Protection::default());
        assert!(r.targets.is_empty());
        assert!(r.warnings[0].contains("no pod in namespace empty"));
    }
}
