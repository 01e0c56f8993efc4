//! A fault as the agent reports it.
use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::FaultSpec;

/// Lifecycle of a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FaultState {
    /// Accepted, not yet in the datapath (cluster mode, before a node agent applied it).
    Pending,
    /// In the datapath until `expires_at`.
    Active,
    /// Reached its deadline.
    Expired,
    /// Ended by a recover or a cleanup.
    Recovered,
    /// Could not be applied; `message` says why.
    Failed,
    /// Ended by a breached abort condition; `message` names it and the measured value.
    Aborted,
    /// A plan only, never applied (cluster mode: a `NetworkFault` with `spec.dryRun`).
    DryRun,
}

impl FaultState {
    /// Whether the fault may still act on packets.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Pending | Self::Active)
    }
}

impl std::fmt::Display for FaultState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pending => "Pending",
            Self::Active => "Active",
            Self::Expired => "Expired",
            Self::Recovered => "Recovered",
            Self::Failed => "Failed",
            Self::Aborted => "Aborted",
            Self::DryRun => "DryRun",
        })
    }
}

/// A pod a fault resolved to.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// The pod's addresses when the fault was last reconciled.
    pub ips: Vec<IpAddr>,
    /// Node the pod runs on (cluster mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Packets the fault acted on, summed over CPUs (and nodes in cluster mode). Counts skbs: a
/// TCP segmentation-offload super-packet counts once.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Counters {
    /// Packets that matched while the fault was active (protected traffic excluded).
    pub matched: u64,
    /// Dropped by the partition or the loss.
    pub dropped: u64,
    /// Payload corrupted.
    pub corrupted: u64,
    /// Duplicated.
    pub duplicated: u64,
    /// Given a departure time (delay, rate).
    pub delayed: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Self) {
        self.matched += o.matched;
        self.dropped += o.dropped;
        self.corrupted += o.corrupted;
        self.duplicated += o.duplicated;
        self.delayed += o.delayed;
    }
}

/// A fault: its spec, where it stands, and what it resolved to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Fault {
    /// Stable id, `f-` and 10 characters of `[a-z0-9]`.
    pub id: String,
    pub spec: FaultSpec,
    pub state: FaultState,
    /// Why the fault is in its state (set for `failed`, and for ended faults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub created_at: Timestamp,
    /// When the datapath stops applying it (its `duration`, or the agent's maximum).
    pub expires_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Target pods with their addresses.
    pub targets: Vec<PodRef>,
    /// Peer pods (when chosen by selector or namespace).
    pub peers: Vec<PodRef>,
    /// Peer CIDRs as written in the datapath (the `to_cidrs`, or everything).
    #[schemars(with = "Vec<String>")]
    pub peer_cidrs: Vec<IpNet>,
    /// Addresses carved out of the peers (NATS, allowed namespaces), with the reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub protected: BTreeMap<String, Vec<IpAddr>>,
    pub counters: Counters,
    /// The same counters per node, by node name (cluster mode: each node agent's
    /// `status.nodes.<node>.counters`; single host: one entry named after the agent's host).
    /// Empty from agents older than this field, and in the seed API's `details`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, Counters>,
    /// Things the user should know (no pod matched, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The probes' report, when the fault was created with `?verify=true` (only in that
    /// answer; `POST /v1/faults/{id}/verify` probes again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<crate::Verification>,
    /// The blast-radius choice (`mode` other than `all`): the pods chosen at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<crate::BlastRadius>,
    /// The schedule that created the fault (`POST /v1/schedules`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The last measurement of each abort condition, while the agent checks them (and the
    /// last ones after an abort, until the agent restarts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steady: Vec<crate::conditions::Measurement>,
}

/// `GET /v1/faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FaultList {
    pub faults: Vec<Fault>,
}

/// `POST /v1/faults/cleanup` body: a namespace, or `all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub all: bool,
}

/// `POST /v1/faults/cleanup` answer: the ids of the faults it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CleanupResponse {
    pub recovered: Vec<String>,
}

/// A new fault id: `f-` and 10 random characters of `[a-z0-9]` (~51 bits).
pub fn new_fault_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = [0u8; 10];
    // The OS RNG failing is not recoverable in any useful way; fall back to time bits.
    if getrandom::fill(&mut raw).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for (i, b) in raw.iter_mut().enumerate() {
            *b = (t >> (i * 6)) as u8;
        }
    }
    let mut id = String::from("f-");
    id.extend(
        raw.iter()
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char),
    );
    id
}
