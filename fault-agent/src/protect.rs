//! Protected resources: namespaces, pods (`namespace/name-prefix`) and CIDRs that no fault may
//! target or cut off. A fault whose targets are protected is refused (422, naming the field
//! and the protection); protected pods and CIDRs among a fault's peers are carved out of them
//! (like NATS) and the fault says so. Pods that appear later are skipped the same way at
//! every resolution, in every mode (standalone, node agents, the cluster API and controller).
use std::{fmt, str::FromStr};

use fault_api::{FaultSpec, FieldError, spec::check_namespace};
use ipnet::IpNet;

use crate::pods::Pod;

/// Protected namespaces by default: the control plane and cluster DNS.
pub const DEFAULT_NAMESPACES: &[&str] = &["kube-system"];
/// Protected pods by default (`namespace/name-prefix`): the chaos framework seed's
/// monitoring, which must keep watching while faults act.
pub const DEFAULT_PODS: &[&str] = &["monitoring/prometheus", "monitoring/grafana"];

/// A protected pod: every pod of `namespace` whose name starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedPod {
    /// Kubernetes namespace (RFC 1123 label).
    pub namespace: String,
    /// Pod name prefix, 1 to 253 bytes.
    pub prefix: String,
}

impl FromStr for ProtectedPod {
    type Err = String;

    /// `namespace/name-prefix`, e.g. `monitoring/prometheus`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (ns, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("expected namespace/name-prefix, got {s:?}"))?;
        check_namespace("namespace", ns).map_err(|e| e.to_string())?;
        if prefix.is_empty() || prefix.len() > 253 {
            return Err(format!("the name prefix must be 1 to 253 bytes, got {s:?}"));
        }
        Ok(Self {
            namespace: ns.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

impl fmt::Display for ProtectedPod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.prefix)
    }
}

/// What is protected (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protection {
    /// Namespaces: no target there, their pods carved out of peers.
    pub namespaces: Vec<String>,
    /// Pods by namespace and name prefix.
    pub pods: Vec<ProtectedPod>,
    /// Address ranges (a pod with an address inside is protected; peer prefixes that
    /// overlap get them excluded).
    pub cidrs: Vec<IpNet>,
}

impl Protection {
    /// The defaults ([`DEFAULT_NAMESPACES`], [`DEFAULT_PODS`]) and the agent's own namespace
    /// (`own_namespace`, from `POD_NAMESPACE` in a cluster), plus what the flags add.
    pub fn with_defaults(
        own_namespace: Option<&str>,
        namespaces: &[String],
        pods: &[ProtectedPod],
        cidrs: &[IpNet],
    ) -> Self {
        let mut p = Self {
            namespaces: DEFAULT_NAMESPACES.iter().map(|s| s.to_string()).collect(),
            pods: DEFAULT_PODS.iter().filter_map(|s| s.parse().ok()).collect(),
            cidrs: cidrs.to_vec(),
        };
        p.namespaces.extend(own_namespace.map(str::to_owned));
        p.namespaces.extend(namespaces.iter().cloned());
        p.namespaces.sort();
        p.namespaces.dedup();
        p.pods.extend(pods.iter().cloned());
        p
    }

    /// Why `pod` is protected (`protected:namespace:<ns>`, `protected:pod:<ns>/<prefix>`,
    /// `protected:cidr:<cidr>`), or `None`.
    pub fn reason(&self, pod: &Pod) -> Option<String> {
        if self.namespaces.contains(&pod.namespace) {
            return Some(format!("protected:namespace:{}", pod.namespace));
        }
        if let Some(p) = self
            .pods
            .iter()
            .find(|p| p.namespace == pod.namespace && pod.name.starts_with(&p.prefix))
        {
            return Some(format!("protected:pod:{p}"));
        }
        self.cidrs
            .iter()
            .find(|c| pod.ips.iter().any(|ip| c.contains(ip)))
            .map(|c| format!("protected:cidr:{c}"))
    }

    /// Refuses a spec whose target namespace is protected (field `namespace`), or whose name
    /// prefix overlaps a protected pod's (field `pod_prefix`), whether or not such pods exist.
    pub fn check_spec(&self, spec: &FaultSpec) -> Result<(), FieldError> {
        if self.namespaces.contains(&spec.namespace) {
            return Err(FieldError::new(
                "namespace",
                format!(
                    "namespace {} is protected (--protected-namespace): no fault may target it",
                    spec.namespace
                ),
            ));
        }
        let Some(prefix) = spec.pod_prefix.as_deref() else {
            return Ok(());
        };
        match self.pods.iter().find(|p| {
            p.namespace == spec.namespace
                && (p.prefix.starts_with(prefix) || prefix.starts_with(&p.prefix))
        }) {
            Some(p) => Err(FieldError::new(
                "pod_prefix",
                format!(
                    "would target pods {p}*, which are protected (protected:pod:{p}); narrow the targets"
                ),
            )),
            None => Ok(()),
        }
    }

    /// Refuses a spec that targets protected pods now (field `pod_prefix`, or `selector`
    /// when the spec has no prefix), naming the first of them and its protection.
    pub fn check_targets(&self, spec: &FaultSpec, pods: &[Pod]) -> Result<(), FieldError> {
        self.check_spec(spec)?;
        let hit = pods
            .iter()
            .filter(|p| crate::resolve::matches_target(spec, p))
            .find_map(|p| self.reason(p).map(|r| (p, r)));
        match hit {
            None => Ok(()),
            Some((p, why)) => Err(FieldError::new(
                if spec.pod_prefix.is_some() || spec.selector.is_none() {
                    "pod_prefix"
                } else {
                    "selector"
                },
                format!(
                    "would target {}/{}, which is protected ({why}); narrow the targets",
                    p.namespace, p.name
                ),
            )),
        }
    }

    /// Protected CIDRs that overlap any of `includes` (to carve out of a fault's peers).
    pub fn cidrs_within(&self, includes: &[IpNet]) -> Vec<IpNet> {
        self.cidrs
            .iter()
            .filter(|c| includes.iter().any(|i| i.contains(*c) || c.contains(i)))
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, ip: &str) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: Default::default(),
            node: None,
            ips: vec![ip.parse().unwrap()],
            host_ifs: vec![],
            netns: None,
            pod_ifs: vec![],
            problem: None,
            remote: false,
        }
    }

    fn defaults() -> Protection {
        Protection::with_defaults(
            Some("faultline-system"),
            &["team-infra".into()],
            &["dynamo/nats".parse().unwrap()],
            &["198.18.200.0/24".parse().unwrap()],
        )
    }

    #[test]
    fn every_default_and_configured_protection_names_its_reason() {
        let p = defaults();
        for (pod, want) in [
            (
                pod("kube-system", "coredns-1", "198.18.0.2"),
                Some("protected:namespace:kube-system"),
            ),
            (
                pod("faultline-system", "faultline-api-0", "198.18.0.3"),
                Some("protected:namespace:faultline-system"),
            ),
            (
                pod("team-infra", "x", "198.18.0.4"),
                Some("protected:namespace:team-infra"),
            ),
            (
                pod("monitoring", "prometheus-k8s-0", "198.18.0.5"),
                Some("protected:pod:monitoring/prometheus"),
            ),
            (
                pod("monitoring", "grafana-7d9", "198.18.0.6"),
                Some("protected:pod:monitoring/grafana"),
            ),
            (
                pod("dynamo", "nats-0", "198.18.0.7"),
                Some("protected:pod:dynamo/nats"),
            ),
            (
                pod("dynamo", "api-0", "198.18.200.9"),
                Some("protected:cidr:198.18.200.0/24"),
            ),
            (pod("monitoring", "alertmanager-0", "198.18.0.8"), None),
            (pod("dynamo", "vllm-decode-0", "198.18.0.9"), None),
        ] {
            assert_eq!(
                p.reason(&pod).as_deref(),
                want,
                "{}/{}",
                pod.namespace,
                pod.name
            );
        }
    }

    #[test]
    fn a_protected_target_is_refused_naming_the_field_and_the_protection() {
        let p = defaults();
        let pods = [
            pod("monitoring", "prometheus-0", "198.18.0.5"),
            pod("monitoring", "alertmanager-0", "198.18.0.8"),
        ];
        let e = p.check_spec(&FaultSpec::new("kube-system")).unwrap_err();
        assert_eq!(e.field, "namespace");
        assert!(e.message.contains("kube-system is protected"), "{e}");
        let mut s = FaultSpec::new("monitoring");
        let e = p.check_targets(&s, &pods).unwrap_err();
        assert_eq!(e.field, "pod_prefix");
        assert!(
            e.message.contains("monitoring/prometheus-0")
                && e.message.contains("protected:pod:monitoring/prometheus"),
            "{e}"
        );
        s.selector = Some("app=alertmanager".parse().unwrap());
        let mut am = pods[1].clone();
        am.labels.insert("app".into(), "alertmanager".into());
        assert!(p.check_targets(&s, &[pods[0].clone(), am]).is_ok());
        s.pod_prefix = Some("alert".into());
        assert!(p.check_targets(&s, &pods).is_ok());
    }

    #[test]
    fn bad_protected_pods_are_refused() {
        assert!(
            "monitoring"
                .parse::<ProtectedPod>()
                .unwrap_err()
                .contains("namespace/name-prefix")
        );
        assert!("Bad_NS/x".parse::<ProtectedPod>().is_err());
        assert!("ns/".parse::<ProtectedPod>().is_err());
    }
}
