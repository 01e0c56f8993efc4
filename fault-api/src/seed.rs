//! The Fault Injection API that users' pytest suites already speak (documented in the seed
//! documents "Network Partition Injection" and "Fault Injection API - User Guide"), mapped
//! onto [`FaultSpec`]: `POST /api/v1/faults/network/inject` with
//! `{partition_type, source, target, mode, duration, parameters: {...}}`.
//!
//! Both modes are served by Faultline's datapath; no NetworkPolicy or Chaos Mesh object is
//! created. What each field means here:
//!
//! | field | meaning |
//! | --- | --- |
//! | `partition_type` | `frontend_worker`, `worker_nats`, `worker_worker` or `custom`: recorded as a label; `worker_nats` makes `block_nats` default to true |
//! | `source` | namespace of the target pods when `parameters.namespace` is absent |
//! | `target` | namespace of the blocked pods chosen by `block_specific_pods` / `target_specific_pods` (default: the targets' namespace) |
//! | `mode` | `networkpolicy` (default): a **connection** partition, as a NetworkPolicy egress rule blocks; `chaos_mesh`: degradation |
//! | `duration` | seconds; absent or null: until recovered (bounded by the agent's maximum) |
//! | `parameters.namespace` | namespace of the target pods |
//! | `parameters.target_pod_prefix` | **required**: target pods by name prefix |
//! | `block_nats` | networkpolicy: also cut NATS (default false; `target_nats` is accepted as a synonym) |
//! | `block_all_egress` | networkpolicy: cut every peer (NATS, DNS and `allow_namespaces` stay unless asked) |
//! | `block_ingress` | networkpolicy: also refuse connections **from** the peers (direction both) |
//! | `block_specific_pods` | networkpolicy: peers by label maps (any of them); without it and without `block_all_egress`: every peer, or only NATS when `block_nats` is the sole choice |
//! | `allow_namespaces` | peers in these namespaces are never cut |
//! | `packet_loss_percent`, `corrupt_percent`, `duplicate_percent` | chaos_mesh: percent in [0, 100], 0 = off |
//! | `delay_ms`, `delay_jitter_ms` | chaos_mesh: one-way delay and jitter (needs the `fq` qdisc) |
//! | `bandwidth_limit` | chaos_mesh: tc rate (`1mbit`; `1mbps` is 1 MB/s as in tc) |
//! | `target_nats` | chaos_mesh: whether NATS traffic is degraded too (default **true**, as in the seed) |
//! | `target_specific_pods` | chaos_mesh: peers by label maps; without it every peer |
//!
//! A parameter of the other mode is refused, never ignored.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{
    Direction, Fault, FaultDuration, FaultSpec, FieldError, PartitionMode, Percent, Rate, Selector,
};

/// `partition_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartitionType {
    FrontendWorker,
    WorkerNats,
    WorkerWorker,
    Custom,
}

impl PartitionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FrontendWorker => "frontend_worker",
            Self::WorkerNats => "worker_nats",
            Self::WorkerWorker => "worker_worker",
            Self::Custom => "custom",
        }
    }
}

/// `mode`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Networkpolicy,
    ChaosMesh,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Networkpolicy => "networkpolicy",
            Self::ChaosMesh => "chaos_mesh",
        }
    }
}

/// `null` reads as the default (Python clients send `None` for fields they do not set).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `POST /api/v1/faults/network/inject` body.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    pub partition_type: PartitionType,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub mode: Mode,
    /// Seconds.
    #[serde(default)]
    pub duration: Option<f64>,
    pub parameters: Parameters,
}

/// `parameters` of an inject request.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    #[serde(default)]
    pub namespace: Option<String>,
    pub target_pod_prefix: String,
    #[serde(default)]
    pub block_nats: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub block_all_egress: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub block_ingress: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub block_specific_pods: Vec<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub allow_namespaces: Vec<String>,
    #[serde(default)]
    pub packet_loss_percent: Option<f64>,
    #[serde(default)]
    pub delay_ms: Option<f64>,
    #[serde(default)]
    pub delay_jitter_ms: Option<f64>,
    #[serde(default)]
    pub bandwidth_limit: Option<String>,
    #[serde(default)]
    pub corrupt_percent: Option<f64>,
    #[serde(default)]
    pub duplicate_percent: Option<f64>,
    #[serde(default)]
    pub target_nats: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub target_specific_pods: Vec<BTreeMap<String, String>>,
}

/// Label keys the seed API records on the faults it creates.
pub const LABEL_API: &str = "faultline.dev/api";
pub const LABEL_PARTITION_TYPE: &str = "faultline.dev/partition-type";
pub const LABEL_MODE: &str = "faultline.dev/mode";

fn field(name: &str) -> String {
    format!("parameters.{name}")
}

/// A percent parameter: 0 (or absent) is off, (0, 100] is on.
fn percent(name: &str, v: Option<f64>) -> Result<Option<Percent>, FieldError> {
    match v {
        None => Ok(None),
        Some(x) if x == 0.0 => Ok(None),
        Some(x) => Percent::new(x).map(Some).map_err(|_| {
            FieldError::new(
                field(name),
                format!(
                    "must be a percentage in [0, 100] (0 = off), at least 0.0001 when on, got {x}"
                ),
            )
        }),
    }
}

fn millis(name: &str, v: Option<f64>) -> Result<Option<FaultDuration>, FieldError> {
    match v {
        None => Ok(None),
        Some(x) if x == 0.0 => Ok(None),
        Some(x) if x.is_finite() && x > 0.0 && x.fract() == 0.0 => {
            FaultDuration::from_millis(x as u64)
                .map(Some)
                .map_err(|e| FieldError::new(field(name), e))
        }
        Some(x) => Err(FieldError::new(
            field(name),
            format!("must be a whole number of milliseconds >= 0, got {x}"),
        )),
    }
}

fn selectors(name: &str, maps: &[BTreeMap<String, String>]) -> Result<Vec<Selector>, FieldError> {
    maps.iter()
        .enumerate()
        .map(|(i, m)| {
            if m.is_empty() {
                return Err(FieldError::new(
                    format!("{}[{i}]", field(name)),
                    "an empty label map would select every pod; list labels",
                ));
            }
            Selector::from_labels(m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(|e| FieldError::new(format!("{}[{i}]", field(name)), e))
        })
        .collect()
}

fn nats_selectors() -> Vec<Selector> {
    ["app.kubernetes.io/name=nats", "app=nats"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

impl InjectRequest {
    /// Parses a JSON body, naming the offending field on error.
    pub fn from_json(body: &[u8]) -> Result<Self, FieldError> {
        crate::error::parse_json(body)
    }

    /// The fault this request means (see the module docs), validated.
    pub fn to_spec(&self) -> Result<FaultSpec, FieldError> {
        let p = &self.parameters;
        let namespace = p
            .namespace
            .clone()
            .or_else(|| self.source.clone())
            .ok_or_else(|| {
                FieldError::new(field("namespace"), "give parameters.namespace or source")
            })?;
        if p.target_pod_prefix.is_empty() {
            return Err(FieldError::new(
                field("target_pod_prefix"),
                "must not be empty",
            ));
        }
        let mut spec = FaultSpec::new(namespace.clone());
        spec.pod_prefix = Some(p.target_pod_prefix.clone());
        spec.to_namespace = self.target.clone().filter(|t| *t != namespace);
        spec.allow_namespaces = p.allow_namespaces.clone();
        spec.duration = match self.duration {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 => Some(
                FaultDuration::new(std::time::Duration::from_secs_f64(s.min(1e9)))
                    .map_err(|e| FieldError::new("duration", e))?,
            ),
            Some(s) => {
                return Err(FieldError::new(
                    "duration",
                    format!("must be a positive number of seconds or null, got {s}"),
                ));
            }
        };
        spec.labels.insert(LABEL_API.into(), "seed".into());
        spec.labels.insert(
            LABEL_PARTITION_TYPE.into(),
            self.partition_type.as_str().into(),
        );
        spec.labels
            .insert(LABEL_MODE.into(), self.mode.as_str().into());
        match self.mode {
            Mode::Networkpolicy => self.networkpolicy(&mut spec)?,
            Mode::ChaosMesh => self.chaos_mesh(&mut spec)?,
        }
        spec.validate()
            .map_err(|e| FieldError::new(self.seed_field(&e.field), e.message))?;
        Ok(spec)
    }

    /// The request's name for a field of the spec it maps to (what an error must name).
    pub fn seed_field(&self, native: &str) -> String {
        match native {
            "namespace" if self.parameters.namespace.is_none() => "source".into(),
            "namespace" => field("namespace"),
            "pod_prefix" => field("target_pod_prefix"),
            "to_namespace" => "target".into(),
            "loss_percent" => field("packet_loss_percent"),
            "delay" => field("delay_ms"),
            "jitter" => field("delay_jitter_ms"),
            "rate" => field("bandwidth_limit"),
            "corrupt_percent" | "duplicate_percent" => field(native),
            f if f.starts_with("allow_namespaces") => field(f),
            other => other.into(),
        }
    }

    fn networkpolicy(&self, spec: &mut FaultSpec) -> Result<(), FieldError> {
        let p = &self.parameters;
        let chaos_only: [(&str, bool); 7] = [
            (
                "packet_loss_percent",
                p.packet_loss_percent.is_some_and(|v| v != 0.0),
            ),
            ("delay_ms", p.delay_ms.is_some_and(|v| v != 0.0)),
            (
                "delay_jitter_ms",
                p.delay_jitter_ms.is_some_and(|v| v != 0.0),
            ),
            (
                "bandwidth_limit",
                p.bandwidth_limit.as_deref().is_some_and(|v| !v.is_empty()),
            ),
            (
                "corrupt_percent",
                p.corrupt_percent.is_some_and(|v| v != 0.0),
            ),
            (
                "duplicate_percent",
                p.duplicate_percent.is_some_and(|v| v != 0.0),
            ),
            ("target_specific_pods", !p.target_specific_pods.is_empty()),
        ];
        if let Some((name, _)) = chaos_only.iter().find(|(_, set)| *set) {
            return Err(FieldError::new(
                field(name),
                "is a chaos_mesh parameter: mode networkpolicy partitions only",
            ));
        }
        let block_nats = p
            .block_nats
            .or(p.target_nats)
            .unwrap_or(self.partition_type == PartitionType::WorkerNats);
        spec.block_nats = block_nats;
        spec.partition = Some(PartitionMode::Connections);
        spec.direction = if p.block_ingress {
            Direction::Both
        } else {
            Direction::Egress
        };
        let specific = selectors("block_specific_pods", &p.block_specific_pods)?;
        if p.block_all_egress {
            // Every peer (spec with no peer selection).
        } else if !specific.is_empty() {
            spec.to_selectors = specific;
            if block_nats {
                spec.to_selectors.extend(nats_selectors());
            }
        } else if block_nats {
            spec.to_selectors = nats_selectors();
        }
        Ok(())
    }

    fn chaos_mesh(&self, spec: &mut FaultSpec) -> Result<(), FieldError> {
        let p = &self.parameters;
        let np_only: [(&str, bool); 3] = [
            ("block_all_egress", p.block_all_egress),
            ("block_ingress", p.block_ingress),
            ("block_specific_pods", !p.block_specific_pods.is_empty()),
        ];
        if let Some((name, _)) = np_only.iter().find(|(_, set)| *set) {
            return Err(FieldError::new(
                field(name),
                "is a networkpolicy parameter: mode chaos_mesh degrades only",
            ));
        }
        spec.loss_percent = percent("packet_loss_percent", p.packet_loss_percent)?;
        spec.corrupt_percent = percent("corrupt_percent", p.corrupt_percent)?;
        spec.duplicate_percent = percent("duplicate_percent", p.duplicate_percent)?;
        spec.delay = millis("delay_ms", p.delay_ms)?;
        spec.jitter = millis("delay_jitter_ms", p.delay_jitter_ms)?;
        if spec.jitter.is_some() && spec.delay.is_none() {
            return Err(FieldError::new(field("delay_jitter_ms"), "needs delay_ms"));
        }
        spec.rate = match p.bandwidth_limit.as_deref() {
            None | Some("") => None,
            Some(r) => Some(
                r.parse::<Rate>()
                    .map_err(|e| FieldError::new(field("bandwidth_limit"), e))?,
            ),
        };
        let degrades = spec.loss_percent.is_some()
            || spec.corrupt_percent.is_some()
            || spec.duplicate_percent.is_some()
            || spec.delay.is_some()
            || spec.rate.is_some();
        if !degrades {
            return Err(FieldError::new(
                field("packet_loss_percent"),
                "mode chaos_mesh needs one of packet_loss_percent, delay_ms, bandwidth_limit, corrupt_percent, duplicate_percent",
            ));
        }
        spec.block_nats = p.target_nats.or(p.block_nats).unwrap_or(true);
        spec.to_selectors = selectors("target_specific_pods", &p.target_specific_pods)?;
        Ok(())
    }
}

/// A fault as the seed API reports it: the seed's names first, the whole native view in
/// `details`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SeedFault {
    pub fault_id: String,
    /// `pending`, `active`, `expired`, `recovered`, `failed` or `aborted`.
    pub status: String,
    #[serde(default)]
    pub partition_type: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    pub namespace: String,
    #[serde(default)]
    pub target_pod_prefix: Option<String>,
    /// Names of the target pods.
    pub target_pods: Vec<String>,
    pub created_at: jiff::Timestamp,
    pub expires_at: jiff::Timestamp,
    #[serde(default)]
    pub ended_at: Option<jiff::Timestamp>,
    #[serde(default)]
    pub message: Option<String>,
    pub details: Fault,
}

impl From<Fault> for SeedFault {
    /// Keeps the seed's JSON as it was: `details` without the per-node counters.
    fn from(mut f: Fault) -> Self {
        f.nodes.clear();
        let label = |k: &str| f.spec.labels.get(k).cloned();
        SeedFault {
            fault_id: f.id.clone(),
            status: serde_json::to_value(f.state)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            partition_type: label(LABEL_PARTITION_TYPE),
            mode: label(LABEL_MODE),
            namespace: f.spec.namespace.clone(),
            target_pod_prefix: f.spec.pod_prefix.clone(),
            target_pods: f.targets.iter().map(|t| t.name.clone()).collect(),
            created_at: f.created_at,
            expires_at: f.expires_at,
            ended_at: f.ended_at,
            message: f.message.clone(),
            details: f,
        }
    }
}

/// `GET /api/v1/faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SeedFaultList {
    pub faults: Vec<SeedFault>,
    pub count: usize,
}

/// `POST /api/v1/faults/network/cleanup?namespace=NS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CleanupResult {
    pub namespace: String,
    pub cleaned: usize,
    pub fault_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: serde_json::Value) -> Result<FaultSpec, FieldError> {
        InjectRequest::from_json(v.to_string().as_bytes())?.to_spec()
    }

    #[test]
    fn the_seed_examples_map_onto_specs() {
        // "Example: Block Decode -> Prefill"
        let s = req(json!({"partition_type": "worker_worker", "source": "dynamo", "target": "dynamo", "mode": "networkpolicy",
            "parameters": {"namespace": "dynamo", "target_pod_prefix": "vllm-decode", "block_nats": false,
                "block_specific_pods": [{"nvidia.com/dynamo-component-type": "worker"}]}}))
        .unwrap();
        assert_eq!(s.partition, Some(PartitionMode::Connections));
        assert_eq!(
            s.to_selectors[0].to_string(),
            "nvidia.com/dynamo-component-type=worker"
        );
        assert!(!s.block_nats);
        // "Example: 50% Packet Loss"
        let s = req(json!({"partition_type": "worker_worker", "source": "dynamo", "target": "dynamo", "mode": "chaos_mesh", "duration": 120,
            "parameters": {"namespace": "dynamo", "target_pod_prefix": "vllm-decode", "packet_loss_percent": 50, "target_nats": false}}))
        .unwrap();
        assert_eq!(s.loss_percent.unwrap().ppm(), 500_000);
        assert_eq!(s.duration.unwrap().as_millis(), 120_000);
        assert!(!s.block_nats && s.all_peers());
        // Worker -> NATS partition.
        let s = req(json!({"partition_type": "frontend_worker", "source": "d", "target": "d", "mode": "networkpolicy", "duration": 60,
            "parameters": {"namespace": "d", "target_pod_prefix": "w", "block_nats": true}}))
        .unwrap();
        assert!(s.block_nats);
        assert_eq!(s.to_selectors.len(), 2);
        // The seed's Python helper: NetworkPolicy isolation with target_nats false.
        let s = req(json!({"partition_type": "worker_worker", "source": "d", "target": "d", "mode": "networkpolicy",
            "parameters": {"namespace": "d", "target_pod_prefix": "w", "target_nats": false}}))
        .unwrap();
        assert!(s.all_peers() && !s.block_nats);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let base = |params: serde_json::Value| json!({"partition_type": "custom", "source": "d", "mode": "chaos_mesh", "parameters": params});
        let cases = [
            (
                json!({"partition_type": "sideways", "parameters": {"target_pod_prefix": "w"}}),
                "partition_type",
            ),
            (
                json!({"partition_type": "custom", "source": "d", "parameters": {}}),
                "parameters.target_pod_prefix",
            ),
            (
                base(json!({"target_pod_prefix": "w", "packet_loss_percent": 150})),
                "parameters.packet_loss_percent",
            ),
            (
                base(json!({"target_pod_prefix": "w", "corrupt_percent": -1})),
                "parameters.corrupt_percent",
            ),
            (
                base(json!({"target_pod_prefix": "w"})),
                "parameters.packet_loss_percent",
            ),
            (
                base(
                    json!({"target_pod_prefix": "w", "packet_loss_percent": 5, "block_ingress": true}),
                ),
                "parameters.block_ingress",
            ),
            (
                json!({"partition_type": "custom", "source": "d", "parameters": {"target_pod_prefix": "w", "delay_ms": 100}}),
                "parameters.delay_ms",
            ),
            (
                json!({"partition_type": "custom", "source": "d", "mode": "teleport", "parameters": {"target_pod_prefix": "w"}}),
                "mode",
            ),
            (
                json!({"partition_type": "custom", "source": "d", "duration": -3, "parameters": {"target_pod_prefix": "w"}}),
                "duration",
            ),
            (
                json!({"partition_type": "custom", "parameters": {"target_pod_prefix": "w"}}),
                "parameters.namespace",
            ),
        ];
        for (body, f) in cases {
            let e = req(body.clone()).unwrap_err();
            assert_eq!(e.field, f, "{body}: {e}");
        }
    }

    /// Found by fuzzing (`seed_inject`): errors of the shared validation named the native
    /// fields (`jitter`, `delay`), and `parameters.namespace` for a bad `source`.
    #[test]
    fn validation_errors_name_the_seed_fields() {
        let chaos = |params: serde_json::Value| json!({"partition_type": "custom", "source": "d", "mode": "chaos_mesh", "parameters": params});
        let cases = [
            (
                chaos(json!({"target_pod_prefix": "w", "delay_ms": 10, "delay_jitter_ms": 20})),
                "parameters.delay_jitter_ms",
            ),
            (
                chaos(json!({"target_pod_prefix": "w", "delay_ms": 9000, "delay_jitter_ms": 2000})),
                "parameters.delay_ms",
            ),
            (
                json!({"partition_type": "custom", "source": "Bad_NS", "parameters": {"target_pod_prefix": "w"}}),
                "source",
            ),
            (
                json!({"partition_type": "custom", "source": "d", "target": "-x", "parameters": {"target_pod_prefix": "w"}}),
                "target",
            ),
        ];
        for (body, f) in cases {
            let e = req(body.clone()).unwrap_err();
            assert_eq!(e.field, f, "{body}: {e}");
        }
    }
}
