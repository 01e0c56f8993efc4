//! What a user asks for: [`FaultSpec`], the body of `POST /v1/faults`, built by `faultctl
//! inject` from its flags, and the spec of a `NetworkFault` object.
//!
//! Vocabulary: the **targets** are the pods the fault is applied to (namespace + pod-name
//! prefix and/or label selector); the **peers** are the other ends of the traffic (pods chosen
//! by label selectors and namespace, and CIDRs). The **direction** is relative to the targets:
//! `egress` is what they send to the peers, `ingress` what they receive from them.
use std::{collections::BTreeMap, fmt};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::{
    FaultDuration, FieldError, Percent, Rate, Selector,
    guards::{ProtectionOverride, TargetMode},
};

/// Transport protocol a fault is limited to.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "icmp" | "icmpv6" => Ok(Self::Icmp),
            _ => Err(format!("must be one of tcp, udp, icmp, got {s:?}")),
        }
    }
}

/// Direction relative to the target pods.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic the targets send to the peers (the default).
    #[default]
    Egress,
    /// Traffic the targets receive from the peers.
    Ingress,
    /// Both.
    Both,
}

impl Direction {
    pub fn includes_egress(self) -> bool {
        matches!(self, Self::Egress | Self::Both)
    }
    pub fn includes_ingress(self) -> bool {
        matches!(self, Self::Ingress | Self::Both)
    }
}

impl std::str::FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "egress" => Ok(Self::Egress),
            "ingress" => Ok(Self::Ingress),
            "both" => Ok(Self::Both),
            _ => Err(format!("must be one of egress, ingress, both, got {s:?}")),
        }
    }
}

/// How a partition cuts traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionMode {
    /// Every packet in the fault's direction is dropped (JSON `"packets"` or `true`).
    Packets,
    /// Kubernetes NetworkPolicy semantics: the side the fault blocks cannot open connections
    /// (TCP SYN, ICMP echo request, a UDP flow the other side has not used), but replies on
    /// connections the other side opened still flow (JSON `"connections"`).
    Connections,
}

impl std::str::FromStr for PartitionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "packets" | "true" => Ok(Self::Packets),
            "connections" => Ok(Self::Connections),
            _ => Err(format!("must be packets or connections, got {s:?}")),
        }
    }
}

impl fmt::Display for PartitionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Packets => "packets",
            Self::Connections => "connections",
        })
    }
}

impl Serialize for PartitionMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PartitionMode {
    /// `"packets"`, `"connections"`, or `true` (= packets).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match de_partition(d)? {
            Some(m) => Ok(m),
            None => Err(de::Error::custom("must be packets or connections")),
        }
    }
}

/// Deserializes `partition` from `true`/`false` or `"packets"`/`"connections"`; `false` is none.
fn de_partition<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PartitionMode>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Bool(bool),
        Str(String),
    }
    match Option::<Form>::deserialize(d)? {
        None | Some(Form::Bool(false)) => Ok(None),
        Some(Form::Bool(true)) => Ok(Some(PartitionMode::Packets)),
        Some(Form::Str(s)) => s.parse().map(Some).map_err(de::Error::custom),
    }
}

/// A fault as asked. Unknown fields are rejected (a typo must not silently widen a fault).
///
/// At least one action is required: `partition`, `loss_percent`, `corrupt_percent`, `delay`,
/// `duplicate_percent` or `rate`. A partition drops (or refuses) everything it matches, so it
/// cannot be combined with the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Namespace of the target pods. Required.
    pub namespace: String,
    /// Target pods whose name starts with this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_prefix: Option<String>,
    /// Target pods matching this label selector (ANDed with `pod_prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,

    /// Peer pods matching any of these selectors (in `to_namespace`, else the targets'
    /// namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_selectors: Vec<Selector>,
    /// Peer pods in this namespace (all of them unless `to_selectors` narrows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_namespace: Option<String>,
    /// Peer address ranges (IPv4 or IPv6 CIDRs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub to_cidrs: Vec<IpNet>,
    /// The peer's L4 port (1-65535). Without `protocol`, TCP and UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Limit to one protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Relative to the targets; default egress.
    #[serde(default)]
    pub direction: Direction,

    /// Cut traffic: `true`/`"packets"` or `"connections"`.
    #[serde(
        default,
        deserialize_with = "de_partition",
        skip_serializing_if = "Option::is_none"
    )]
    pub partition: Option<PartitionMode>,
    /// Drop this share of packets, percent in (0, 100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_percent: Option<Percent>,
    /// Flip one payload bit in this share of packets, percent in (0, 100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt_percent: Option<Percent>,
    /// Added one-way delay (needs the `fq` qdisc: see the agent's capabilities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDuration>,
    /// Delay jitter: uniform in +/- jitter around `delay`; at most `delay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<FaultDuration>,
    /// Duplicate this share of packets, percent in (0, 100].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_percent: Option<Percent>,
    /// Bandwidth limit (tc units: `1mbit`, `1mbps` = 1 MB/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,

    /// The fault ends by itself after this long. Without it, it lasts until recovered, bounded
    /// by the agent's `--max-duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<FaultDuration>,
    /// Also fault NATS (pods labelled `app.kubernetes.io/name=nats` or `app=nats`, and TCP
    /// 4222). Default false: NATS stays reachable.
    #[serde(default)]
    pub block_nats: bool,
    /// Peers in these namespaces are never faulted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_namespaces: Vec<String>,
    /// Free-form labels kept with the fault (the seed API records its `partition_type` and
    /// `mode` here). Keys and values follow the Kubernetes label syntax.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Blast radius: how many of the matching pods are targets (`all`, `one`, `fixed`,
    /// `fixed-percent`, `random-max-percent`; default `all`), chosen once at creation.
    #[serde(default, skip_serializing_if = "TargetMode::is_all")]
    pub mode: TargetMode,
    /// `mode`'s value: a pod count in [1, 100000] for `fixed`, a percent in [1, 100] for
    /// `fixed-percent` and `random-max-percent`; none for `all` and `one`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
    /// Act on protected resources anyway (only on an agent started with
    /// `--allow-protection-override`; audited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_protection: Option<ProtectionOverride>,
    /// Checks that must hold before the fault is applied (else it is refused, naming the
    /// check and what it measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<crate::conditions::Preflight>,
    /// Conditions that end the fault at once (state `aborted`) when breached while it is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<crate::conditions::AbortConditions>,
}

/// The port DNS is protected on unless asked for explicitly.
pub const DNS_PORT: u16 = 53;
/// NATS's client port, protected unless `block_nats`.
pub const NATS_CLIENT_PORT: u16 = 4222;

/// Kubernetes namespace name rules (RFC 1123 label).
pub fn check_namespace(field: &str, ns: &str) -> Result<(), FieldError> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("must be a namespace name (RFC 1123 label: 1-63 of [a-z0-9-]), got {ns:?}"),
        ))
    }
}

impl FaultSpec {
    /// An empty spec for `namespace`; set the rest field by field.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            pod_prefix: None,
            selector: None,
            to_selectors: vec![],
            to_namespace: None,
            to_cidrs: vec![],
            port: None,
            protocol: None,
            direction: Direction::Egress,
            partition: None,
            loss_percent: None,
            corrupt_percent: None,
            delay: None,
            jitter: None,
            duplicate_percent: None,
            rate: None,
            duration: None,
            block_nats: false,
            allow_namespaces: vec![],
            labels: BTreeMap::new(),
            mode: TargetMode::All,
            value: None,
            override_protection: None,
            preflight: None,
            abort: None,
        }
    }

    /// Checks every rule a spec must follow; the error names the first offending field.
    /// Ranges of single values are already enforced by their types when parsed.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_namespace("namespace", &self.namespace)?;
        if let Some(p) = &self.pod_prefix
            && (p.is_empty() || p.len() > 253)
        {
            return Err(FieldError::new("pod_prefix", "must be 1-253 characters"));
        }
        if self.pod_prefix.is_none() && self.selector.is_none() {
            return Err(FieldError::new(
                "pod_prefix",
                "choose the target pods: give pod_prefix, selector, or both",
            ));
        }
        if let Some(ns) = &self.to_namespace {
            check_namespace("to_namespace", ns)?;
        }
        for (i, ns) in self.allow_namespaces.iter().enumerate() {
            check_namespace(&format!("allow_namespaces[{i}]"), ns)?;
        }
        for (i, net) in self.to_cidrs.iter().enumerate() {
            if net.trunc() != *net {
                return Err(FieldError::new(
                    format!("to_cidrs[{i}]"),
                    format!("{net} has host bits set; did you mean {}?", net.trunc()),
                ));
            }
        }
        if self.port == Some(0) {
            return Err(FieldError::new("port", "must be a port in 1-65535, got 0"));
        }
        if self.port.is_some() && self.protocol == Some(Protocol::Icmp) {
            return Err(FieldError::new(
                "port",
                "ICMP has no ports: drop port or protocol",
            ));
        }
        let degrades = self.loss_percent.is_some()
            || self.corrupt_percent.is_some()
            || self.delay.is_some()
            || self.duplicate_percent.is_some()
            || self.rate.is_some();
        if self.partition.is_none() && !degrades {
            return Err(FieldError::new(
                "partition",
                "no action: give partition, loss_percent, corrupt_percent, delay, duplicate_percent or rate",
            ));
        }
        if self.partition.is_some() && degrades {
            return Err(FieldError::new(
                "partition",
                "a partition cuts all matching traffic; it cannot be combined with loss, corrupt, delay, duplicate or rate",
            ));
        }
        if let Some(j) = self.jitter {
            match self.delay {
                None => return Err(FieldError::new("jitter", "needs a delay")),
                Some(d) if j > d => {
                    return Err(FieldError::new(
                        "jitter",
                        format!("must be at most the delay ({d}), got {j}"),
                    ));
                }
                _ => {}
            }
        }
        self.validate_guards()?;
        Selector::from_labels(self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| FieldError::new("labels", e))?;
        if let Some(d) = self.delay {
            let total = d.get() + self.jitter.map_or(std::time::Duration::ZERO, |j| j.get());
            if total > std::time::Duration::from_secs(10) {
                return Err(FieldError::new(
                    "delay",
                    format!(
                        "delay plus jitter must be at most 10s (the fq horizon is 12s), got {}",
                        humantime::format_duration(total)
                    ),
                ));
            }
        }
        self.validate_conditions()
    }

    /// The pre-flight and abort conditions' fields.
    fn validate_conditions(&self) -> Result<(), FieldError> {
        if let Some(p) = &self.preflight {
            p.validate()?;
        }
        if let Some(a) = &self.abort {
            a.validate()?;
        }
        Ok(())
    }

    /// The blast radius and the protection override ([`crate::guards`]).
    fn validate_guards(&self) -> Result<(), FieldError> {
        crate::guards::check_blast_radius(self.mode, self.value)?;
        self.override_protection
            .as_ref()
            .map_or(Ok(()), ProtectionOverride::validate)
    }

    /// Whether the fault also acts on DNS: only when the user named port 53.
    pub fn faults_dns(&self) -> bool {
        self.port == Some(DNS_PORT)
    }

    /// Whether the fault needs an EDT-enforcing qdisc (`fq`): delay or rate.
    pub fn needs_fq(&self) -> bool {
        self.delay.is_some() || self.rate.is_some()
    }

    /// Whether peers are chosen among pods (selectors or namespace), as opposed to only CIDRs
    /// or everything.
    pub fn selects_peer_pods(&self) -> bool {
        !self.to_selectors.is_empty() || self.to_namespace.is_some()
    }

    /// Whether the fault applies to every peer (no selector, namespace or CIDR given).
    pub fn all_peers(&self) -> bool {
        !self.selects_peer_pods() && self.to_cidrs.is_empty()
    }

    /// Parses a JSON body, naming the offending field on error.
    pub fn from_json(body: &[u8]) -> Result<Self, FieldError> {
        crate::error::parse_json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> FaultSpec {
        let mut s = FaultSpec::new("dynamo");
        s.pod_prefix = Some("vllm-decode".into());
        s.partition = Some(PartitionMode::Packets);
        s
    }

    #[test]
    fn valid_specs_pass() {
        base().validate().unwrap();
        let mut s = base();
        s.partition = None;
        s.loss_percent = Some("30".parse().unwrap());
        s.corrupt_percent = Some("5%".parse().unwrap());
        s.validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(&str, Box<dyn Fn(&mut FaultSpec)>)> = vec![
            ("namespace", Box::new(|s| s.namespace = "Bad_NS".into())),
            ("pod_prefix", Box::new(|s| s.pod_prefix = None)),
            ("partition", Box::new(|s| s.partition = None)),
            (
                "partition",
                Box::new(|s| s.loss_percent = Some("3".parse().unwrap())),
            ),
            ("port", Box::new(|s| s.port = Some(0))),
            (
                "to_cidrs[0]",
                Box::new(|s| s.to_cidrs = vec!["198.18.0.1/24".parse().unwrap()]),
            ),
            (
                "allow_namespaces[1]",
                Box::new(|s| s.allow_namespaces = vec!["ok".into(), "NO".into()]),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = base();
            mutate(&mut s);
            assert_eq!(s.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = FaultSpec::from_json(br#"{"namespace":"a","pod_prefix":"p","loss_percent":150}"#)
            .unwrap_err();
        assert_eq!(e.field, "loss_percent");
        assert!(e.message.contains("(0, 100]"), "{}", e.message);
        let e = FaultSpec::from_json(br#"{"namespace":"a","pod_prefix":"p","duration":"-3s"}"#)
            .unwrap_err();
        assert_eq!(e.field, "duration");
        let e = FaultSpec::from_json(br#"{"pod_prefix":"p"}"#).unwrap_err();
        assert_eq!(e.field, "namespace");
        let e = FaultSpec::from_json(br#"{"namespace":"a","lossy":1}"#).unwrap_err();
        assert_eq!(e.field, "lossy");
        let e = FaultSpec::from_json(br#"{"namespace":"a","selector":"app=(x"}"#).unwrap_err();
        assert_eq!(e.field, "selector");
        let e = FaultSpec::from_json(br#"{"namespace":"a","to_selectors":["ok=1","bad=a b"]}"#)
            .unwrap_err();
        assert_eq!(e.field, "to_selectors[1]");
        let e = FaultSpec::from_json(b"{not json").unwrap_err();
        assert_eq!(e.field, "body");
    }

    #[test]
    fn blast_radius_and_override_errors_name_the_field() {
        let e = FaultSpec::from_json(br#"{"namespace":"a","pod_prefix":"p","mode":"half"}"#)
            .unwrap_err();
        assert_eq!(e.field, "mode");
        assert!(e.message.contains("fixed-percent"), "{}", e.message);
        let mut s = base();
        s.mode = TargetMode::FixedPercent;
        let e = s.validate().unwrap_err();
        assert_eq!(e.field, "value");
        assert!(e.message.contains("[1, 100]"), "{}", e.message);
        s.value = Some(30);
        s.validate().unwrap();
        s.override_protection = Some(ProtectionOverride { reason: "".into() });
        assert_eq!(
            s.validate().unwrap_err().field,
            "override_protection.reason"
        );
        // Absent fields keep the JSON of existing clients as it was.
        let json = serde_json::to_value(base()).unwrap();
        assert!(json.get("mode").is_none() && json.get("value").is_none());
    }

    #[test]
    fn partition_accepts_bool_or_mode() {
        let s = FaultSpec::from_json(br#"{"namespace":"a","pod_prefix":"p","partition":true}"#)
            .unwrap();
        assert_eq!(s.partition, Some(PartitionMode::Packets));
        let s = FaultSpec::from_json(
            br#"{"namespace":"a","pod_prefix":"p","partition":"connections"}"#,
        )
        .unwrap();
        assert_eq!(s.partition, Some(PartitionMode::Connections));
        let s = FaultSpec::from_json(br#"{"namespace":"a","pod_prefix":"p","partition":false}"#)
            .unwrap();
        assert_eq!(s.partition, None);
    }
}
