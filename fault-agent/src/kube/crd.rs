//! The `NetworkFault` custom resource (`networkfaults.faultline.dev/v1alpha1`, namespaced).
//!
//! Its spec is the fault model of [`fault_api::FaultSpec`] in Kubernetes' camelCase, minus
//! `namespace` (the object's own). [`NetworkFault::fault_spec`] converts and validates it with
//! the same code as every other entry point; errors name the camelCase field. The schema
//! carries what a structural schema can check (types, enums, ranges, patterns), so the API
//! server rejects those mistakes at admission; the rest (selector syntax, CIDR host bits,
//! combinations) is reported in status as `Failed` with the reason.
//!
//! Fields with their own syntax are kept as the raw strings and numbers of the object (their
//! schemas are those of the parsed types): one object that does not parse must not stop the
//! watches of every agent; it fails alone, in its status.
use std::collections::BTreeMap;

use fault_api::{
    BlastRadius, Counters, Direction, FaultDuration, FaultSpec, FieldError, PartitionMode, Percent,
    ProtectionOverride, Protocol, Rate, Selector, TargetMode,
};
use ipnet::IpNet;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A network fault between pods. See the README's "What a fault means" for each field.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "faultline.dev",
    version = "v1alpha1",
    kind = "NetworkFault",
    namespaced,
    status = "NetworkFaultStatus",
    shortname = "nf",
    category = "faultline",
    doc = "A network fault (partition, loss, corruption...) between pods, applied by Faultline's node agents for a bounded time.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Targets", type_ = "integer", json_path = ".status.targetCount"),
    printcolumn(name = "Peers", type_ = "integer", json_path = ".status.peerCount"),
    printcolumn(name = "Nodes", type_ = "string", json_path = ".status.appliedNodes"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkFaultSpec {
    /// Target pods (in the object's namespace) whose name starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pod_prefix: Option<String>,
    /// Target pods matching this label selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Selector>")]
    pub selector: Option<String>,
    /// Peer pods matching any of these selectors (in `toNamespace`, else the object's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<Selector>")]
    pub to_selectors: Vec<String>,
    /// Peer pods in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_namespace: Option<String>,
    /// Peer CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub to_cidrs: Vec<String>,
    /// The peer's port (TCP and UDP unless `protocol`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Relative to the targets; default egress.
    #[serde(default)]
    pub direction: Direction,
    /// `packets` or `connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Percent>")]
    pub loss_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Percent>")]
    pub corrupt_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<FaultDuration>")]
    pub delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<FaultDuration>")]
    pub jitter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Percent>")]
    pub duplicate_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Rate>")]
    pub rate: Option<String>,
    /// The fault ends by itself this long after creation (default: the controller's maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<FaultDuration>")]
    pub duration: Option<String>,
    #[serde(default)]
    pub block_nats: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_namespaces: Vec<String>,
    /// Blast radius: `all` (default), `one`, `fixed`, `fixed-percent`, `random-max-percent`;
    /// the controller chooses the pods once and lists them in `status.blastRadius`.
    #[serde(default, skip_serializing_if = "TargetMode::is_all")]
    pub mode: TargetMode,
    /// `mode`'s value: pods for `fixed` (1-100000), a percent (1-100) for the percent modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub value: Option<u32>,
    /// Act on protected resources anyway (only with the agents' --allow-protection-override;
    /// audited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_protection: Option<ProtectionOverride>,
    /// Checks the controller runs before any node applies the fault (`targets_ready`: the
    /// target Pods' `Ready` condition; `min_ready_targets` with `workload`: its
    /// `readyReplicas`); a failure makes it `Failed`, reason `PreflightFailed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<fault_api::conditions::Preflight>,
    /// Conditions the controller checks while the fault is `Active` (from the API pod; so no
    /// `http.from_pod`); a breach recovers the fault at once, phase `Aborted`, the message
    /// naming the condition and the measured value. The last measurements are in
    /// `status.measurements`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<fault_api::conditions::AbortConditions>,
    /// Plan only: no node agent applies it; the controller writes the plan (targets and
    /// peers per node, blast radius, the guards it would trip) in `status.plan`, phase
    /// `DryRun`, and deletes it after the retention period like an ended fault.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Lifecycle of a `NetworkFault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    Pending,
    Active,
    Expired,
    Recovered,
    Failed,
    /// Ended by a breached abort condition.
    Aborted,
    /// `spec.dryRun`: planned (`status.plan`), never applied.
    DryRun,
}

/// What one node agent did with the fault (written by that agent only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFaultStatus {
    /// Target pods on this node the fault is in the datapath for.
    #[serde(default)]
    pub targets: u32,
    /// The fault is in this node's datapath.
    #[serde(default)]
    pub applied: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The spec field this node's kernel cannot enforce (e.g. `delay`: no sch_fq), when that is
    /// why the fault is not applied here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
    /// Packets acted on, on this node.
    #[serde(default)]
    pub counters: Counters,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
    /// This node's answer to the last verify request ([`VERIFY_REQUEST`]); written by the
    /// node under its own field manager, so the status writes above never remove it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<NodeVerification>,
    /// This node's plan of a dry run (`spec.dryRun`), with its own compiler; written by the
    /// node under its own field manager ([`super::dry_run`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<NodeDryRun>,
}

/// What one node agent would install for a dry run (`spec.dryRun`): the same plan as
/// `faultline inject --dry-run` on a single host ([`crate::core::Core::plan`]), with the
/// rules of this node's compiler for the targets and peers on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeDryRun {
    /// The object's `metadata.generation` this plan is of.
    pub generation: i64,
    /// Rules (BPF map entries) this node would install for the fault; none when its
    /// compiler refuses the fault (the reason is in `refusals`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<u32>,
    /// What this node would refuse (its kernel's support, its capacity), as `field: message`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<String>,
}

/// Annotation by which the API asks the node agents to verify a fault: its value names the
/// request, and each node agent that applied the fault answers once per value in
/// `status.nodes.<node>.verification`.
pub const VERIFY_REQUEST: &str = "faultline.dev/verify-request";

/// A node agent's probes of a fault, sent from the senders on that node
/// ([`crate::verify`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeVerification {
    /// The request answered (the value of [`VERIFY_REQUEST`]).
    pub request: String,
    /// The pairs this node probed (none when no sender of the fault is on this node).
    pub report: fault_api::Verification,
    /// Why this node could not probe (the fault not active here, a probe that failed to
    /// run); the report is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Status: the controller writes the phase, expiry, counts and conditions; each node agent
/// writes its own entry of `nodes` (server-side apply, one field manager each).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkFaultStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// When the datapath stops applying the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Target pods the fault resolved to (all nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_count: Option<u32>,
    /// Peer pods (and CIDRs) it resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_count: Option<u32>,
    /// Target pods, `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_pods: Vec<String>,
    /// Nodes where the fault is in the datapath, comma-separated (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_nodes: Option<String>,
    /// Per node, written by that node's agent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, NodeFaultStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The blast-radius choice (`mode` other than `all`), made once by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<BlastRadius>,
    /// The last measurement of each abort condition (`spec.abort`), refreshed by the
    /// controller every few seconds while the fault is checked; after an abort, the breach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<fault_api::conditions::Measurement>,
    /// What a `dryRun` fault would do (written once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<DryRunPlan>,
}

/// The plan of a `dryRun` fault: what it would resolve to, and every guard it would trip.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRunPlan {
    /// Whether it would be applied without `dryRun` (`refusals` is empty).
    pub accepted: bool,
    /// Every guard it would trip (protection, limits, a disallowed override), each as
    /// `field: reason`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<String>,
    /// Targets and peers per node (`""`: pods of no known node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, fault_api::guards::NodePlan>,
    /// Peer CIDRs as the datapath would hold them (all addresses when peers are not chosen).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_cidrs: Vec<String>,
    /// Addresses carved out of the peers, by reason (`nats`, `namespace:<ns>`...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub protected: BTreeMap<String, Vec<String>>,
    /// The blast-radius choice a fault would make now (random modes draw anew each time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<BlastRadius>,
    /// How long it would last (its duration, or the limit it is capped at), e.g. `1h`.
    pub duration: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl DryRunPlan {
    /// The status form of a [`fault_api::FaultPlan`].
    pub fn of(p: &fault_api::FaultPlan) -> Self {
        Self {
            accepted: p.accepted,
            refusals: p.refusals.clone(),
            nodes: p.nodes.clone(),
            peer_cidrs: p.peer_cidrs.iter().map(ToString::to_string).collect(),
            protected: (p.protected.iter())
                .map(|(k, v)| (k.clone(), v.iter().map(ToString::to_string).collect()))
                .collect(),
            blast_radius: p.blast_radius.clone(),
            duration: p.duration.clone(),
            warnings: p.warnings.clone(),
        }
    }
}

/// Annotation the API sets to recover a fault at once (value: RFC 3339 time).
pub const RECOVERED_AT: &str = "faultline.dev/recovered-at";

/// Annotation the controller sets with [`RECOVERED_AT`] when an abort condition is breached
/// (value: the message naming the condition and the measured value); the phase is then
/// `Aborted`.
pub const ABORTED: &str = "faultline.dev/aborted";

fn camel(field: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in field.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// What cluster mode cannot honour of a valid spec: `abort.http.from_pod` (the controller
/// probes from the API pod; it cannot enter another pod's network namespace). Errors name the
/// field in the model's form.
pub fn cluster_supported(s: &FaultSpec) -> Result<(), FieldError> {
    match s.abort.as_ref().and_then(|a| a.http.as_ref()) {
        Some(h) if h.from_pod.is_some() => Err(FieldError::new(
            "abort.http.from_pod",
            "not supported in cluster mode: the controller probes from the API pod; leave it out and use a URL the API pod can reach",
        )),
        _ => Ok(()),
    }
}

impl NetworkFaultSpec {
    /// From the model (the API creates objects from native requests).
    pub fn from_fault_spec(s: &FaultSpec) -> Self {
        let text = |v: &dyn std::fmt::Display| v.to_string();
        Self {
            pod_prefix: s.pod_prefix.clone(),
            selector: s.selector.as_ref().map(|v| text(v)),
            to_selectors: s.to_selectors.iter().map(|v| text(v)).collect(),
            to_namespace: s.to_namespace.clone(),
            to_cidrs: s.to_cidrs.iter().map(|v| text(v)).collect(),
            port: s.port,
            protocol: s.protocol,
            direction: s.direction,
            partition: s.partition,
            loss_percent: s.loss_percent.map(Percent::value),
            corrupt_percent: s.corrupt_percent.map(Percent::value),
            delay: s.delay.map(|v| text(&v)),
            jitter: s.jitter.map(|v| text(&v)),
            duplicate_percent: s.duplicate_percent.map(Percent::value),
            rate: s.rate.map(|v| text(&v)),
            duration: s.duration.map(|v| text(&v)),
            block_nats: s.block_nats,
            allow_namespaces: s.allow_namespaces.clone(),
            mode: s.mode,
            value: s.value,
            override_protection: s.override_protection.clone(),
            preflight: s.preflight.clone(),
            abort: s.abort.clone(),
            dry_run: false,
        }
    }
}

impl NetworkFault {
    /// The fault model of this object, validated; errors name the `spec.` field in camelCase.
    pub fn fault_spec(&self) -> Result<FaultSpec, FieldError> {
        let namespace = self.metadata.namespace.clone().unwrap_or_default();
        let s = &self.spec;
        fn parse<T: std::str::FromStr<Err = String>>(
            field: &str,
            v: &Option<String>,
        ) -> Result<Option<T>, FieldError> {
            v.as_deref()
                .map(|t| {
                    t.parse()
                        .map_err(|e| FieldError::new(format!("spec.{field}"), e))
                })
                .transpose()
        }
        fn percent(field: &str, v: Option<f64>) -> Result<Option<Percent>, FieldError> {
            v.map(|x| Percent::new(x).map_err(|e| FieldError::new(format!("spec.{field}"), e)))
                .transpose()
        }
        let mut f = FaultSpec::new(namespace);
        f.pod_prefix = s.pod_prefix.clone();
        f.selector = parse::<Selector>("selector", &s.selector)?;
        f.to_selectors = s
            .to_selectors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.parse()
                    .map_err(|e| FieldError::new(format!("spec.toSelectors[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        f.to_namespace = s.to_namespace.clone();
        f.to_cidrs = s
            .to_cidrs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.parse::<IpNet>().map_err(|e| {
                    FieldError::new(
                        format!("spec.toCidrs[{i}]"),
                        format!("not a CIDR ({e}): {t:?}"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        f.port = s.port;
        f.protocol = s.protocol;
        f.direction = s.direction;
        f.partition = s.partition;
        f.loss_percent = percent("lossPercent", s.loss_percent)?;
        f.corrupt_percent = percent("corruptPercent", s.corrupt_percent)?;
        f.delay = parse::<FaultDuration>("delay", &s.delay)?;
        f.jitter = parse::<FaultDuration>("jitter", &s.jitter)?;
        f.duplicate_percent = percent("duplicatePercent", s.duplicate_percent)?;
        f.rate = parse::<Rate>("rate", &s.rate)?;
        f.duration = parse::<FaultDuration>("duration", &s.duration)?;
        f.block_nats = s.block_nats;
        f.allow_namespaces = s.allow_namespaces.clone();
        f.mode = s.mode;
        f.value = s.value;
        f.override_protection = s.override_protection.clone();
        f.preflight = s.preflight.clone();
        f.abort = s.abort.clone();
        f.labels = self
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, v)| Selector::from_labels([(k.as_str(), v.as_str())]).is_ok())
            .collect();
        f.validate()
            .and_then(|()| cluster_supported(&f))
            .map_err(|e| FieldError::new(format!("spec.{}", camel(&e.field)), e.message))?;
        Ok(f)
    }

    /// The fault's id in the API: the object's name (the API names the objects it creates
    /// with unique random ids; objects written by hand may share a name across namespaces:
    /// the API then takes `namespace/name`).
    pub fn id(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }

    /// What identifies the object everywhere a fault is kept or matched (node agents' faults,
    /// status reports): `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// The message of a breached abort condition, when the controller aborted it.
    pub fn aborted(&self) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()?
            .get(ABORTED)
            .map(String::as_str)
    }

    /// Whether the API (or a user) asked to recover it.
    pub fn recovered_at(&self) -> Option<Timestamp> {
        self.metadata
            .annotations
            .as_ref()?
            .get(RECOVERED_AT)?
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_crd_yaml_matches_the_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crd.yaml");
        let generated = crate::kube::crd_yaml();
        let kept = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            kept == generated,
            "deploy/crd.yaml is stale: regenerate it with `cargo run -p fault-agent -- crd > deploy/crd.yaml`"
        );
    }

    #[test]
    fn spec_errors_name_camel_case_fields() {
        let mut nf = NetworkFault::new(
            "f-1",
            NetworkFaultSpec::from_fault_spec(&FaultSpec::new("dynamo")),
        );
        nf.metadata.namespace = Some("dynamo".into());
        nf.spec.pod_prefix = Some("vllm".into());
        nf.spec.to_cidrs = vec!["198.18.0.1/24".into()];
        nf.spec.partition = Some(PartitionMode::Packets);
        assert_eq!(nf.fault_spec().unwrap_err().field, "spec.toCidrs[0]");
        nf.spec.to_cidrs = vec![];
        nf.spec.selector = Some("app in (x".into());
        let e = nf.fault_spec().unwrap_err();
        assert_eq!(e.field, "spec.selector");
        // A malformed object still deserializes: it must not break the watches.
        let raw = serde_json::json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "NetworkFault",
            "metadata": {"name": "x", "namespace": "d"}, "spec": {"selector": "app in (x", "duration": "0s", "rate": "0mbit"}});
        let nf: NetworkFault = serde_json::from_value(raw).unwrap();
        assert!(nf.fault_spec().is_err());
        assert!(crate::kube::crd().spec.versions[0].subresources.is_some());
        let yaml = crate::kube::crd_yaml();
        assert!(
            !yaml.contains("- null"),
            "no null in enums (API servers before 1.21 refuse them)"
        );
    }
}
