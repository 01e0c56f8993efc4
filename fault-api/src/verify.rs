//! What `POST /v1/faults/{id}/verify` answers: per probed pair, what the fault should do,
//! what the probes measured, and whether the two agree.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The outcome of a pair, or of a whole verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The measurement agrees with what the fault should do.
    Verified,
    /// It does not, or the probes could not tell (the reason says which).
    NotVerified,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Verified => "verified",
            Self::NotVerified => "not verified",
        })
    }
}

/// What the probes of one pair measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Measured {
    /// ICMP echo requests sent, and replies received.
    pub echo_sent: u32,
    pub echo_received: u32,
    /// Share of echo requests without a reply, percent (0-100).
    pub loss_percent: f64,
    /// Smallest round-trip time of the replies, ms; `None` without reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rtt_ms: Option<f64>,
    /// Whether a TCP SYN to `port` was answered (SYN-ACK or RST); `None` when not probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_answered: Option<bool>,
    /// Whether a UDP datagram to `port` was answered (data or ICMP port unreachable); `None`
    /// when not probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_answered: Option<bool>,
    /// Whether the peer answered anything at all.
    pub reachable: bool,
    /// The control probe (to an address the fault does not cover): echo replies received of
    /// the requests sent, as `received/sent`; `None` when there was no control address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
}

/// One probed pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PairReport {
    /// The pod the probes were sent from (`namespace/name`): the target, or the peer for an
    /// ingress fault.
    pub from: String,
    /// Source address of the probes.
    pub from_ip: IpAddr,
    /// The address probed.
    pub to_ip: IpAddr,
    /// The control address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_ip: Option<IpAddr>,
    /// TCP and UDP destination port of the probes.
    pub port: u16,
    /// What the fault should do to these probes, in words.
    pub expected: String,
    pub measured: Measured,
    pub outcome: Outcome,
    /// Why, in words.
    pub reason: String,
}

/// `POST /v1/faults/{id}/verify`: the pairs probed and the overall outcome (`verified` only
/// when there was at least one pair and every pair was verified).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Verification {
    pub fault_id: String,
    pub outcome: Outcome,
    /// Why, when not verified as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub pairs: Vec<PairReport>,
    /// Probe packets sent (ICMP, TCP SYN, UDP), all marked with `probe_mark` (SO_MARK).
    pub probe_packets: u64,
    /// The SO_MARK of the probe sockets.
    pub probe_mark: u32,
    /// Wall time of the probes, ms.
    pub took_ms: u64,
}
