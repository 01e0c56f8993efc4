//! Which pairs to probe for a fault: the pods to send from (the targets, or the peers for an
//! ingress fault), the addresses to probe, and a control address per sender that the fault
//! does not cover. Pure: built from the fault as the API shows it and the pods known.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use fault_api::{Direction, Fault, FieldError};

use crate::{error::AgentError, pods::Pod};

/// At most this many pairs are probed.
pub const MAX_PAIRS: usize = 8;

/// Port of the TCP and UDP probes when the fault names none: discard (9), never a protected
/// port (DNS 53, NATS 4222).
pub const DEFAULT_PROBE_PORT: u16 = 9;

/// Ports never probed: DNS and the NATS client port (see `compile::params`).
const PROTECTED_PORTS: [u16; 2] = [53, 4222];

/// One pair to probe.
#[derive(Debug, Clone, PartialEq)]
pub struct PairPlan {
    /// `namespace/name` of the sender.
    pub from: String,
    /// The sender's network namespace.
    pub netns: PathBuf,
    pub from_ip: Ipv4Addr,
    pub to_ip: Ipv4Addr,
    /// An address the fault does not cover, reached the same way (the sender's veth).
    pub control: Option<Ipv4Addr>,
}

/// The pairs and the probes' port.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub pairs: Vec<PairPlan>,
    pub port: u16,
}

fn v4(ips: &[IpAddr]) -> Option<Ipv4Addr> {
    ips.iter().find_map(|ip| match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    })
}

/// The probes' port: the fault's own, unless protected.
fn probe_port(fault: &Fault) -> Result<u16, AgentError> {
    match fault.spec.port {
        Some(p) if PROTECTED_PORTS.contains(&p) => Err(AgentError::Invalid(FieldError::new(
            "port",
            format!("the fault's port {p} is DNS or NATS, which verify never probes"),
        ))),
        Some(p) => Ok(p),
        None => Ok(DEFAULT_PROBE_PORT),
    }
}

/// Builds the plan of an active fault. Errors: the fault is not active (409).
pub fn plan(fault: &Fault, pods: &[Pod]) -> Result<Plan, AgentError> {
    if fault.state != fault_api::FaultState::Active {
        return Err(AgentError::Conflict(format!(
            "fault {} is {}: only an active fault can be verified",
            fault.id, fault.state
        )));
    }
    let port = probe_port(fault)?;
    let protected: BTreeSet<IpAddr> = fault.protected.values().flatten().copied().collect();
    let probeable = |p: &Pod| !p.is_nats() && !p.ips.iter().any(|ip| protected.contains(ip));
    let key = |ns: &str, name: &str| format!("{ns}/{name}");
    let targets: BTreeSet<String> = fault
        .targets
        .iter()
        .map(|t| key(&t.namespace, &t.name))
        .collect();
    let is_peer = |p: &Pod| {
        fault
            .peers
            .iter()
            .any(|r| r.namespace == p.namespace && r.name == p.name)
            || p.ips
                .iter()
                .any(|ip| fault.peer_cidrs.iter().any(|c| c.contains(ip)))
    };
    let is_target = |p: &Pod| targets.contains(&key(&p.namespace, &p.name));
    let ingress = fault.spec.direction == Direction::Ingress;
    let (senders, receivers): (Vec<&Pod>, Vec<&Pod>) = if ingress {
        (
            pods.iter()
                .filter(|p| is_peer(p) && !is_target(p))
                .collect(),
            pods.iter().filter(|p| is_target(p)).collect(),
        )
    } else {
        (
            pods.iter().filter(|p| is_target(p)).collect(),
            pods.iter()
                .filter(|p| is_peer(p) && !is_target(p))
                .collect(),
        )
    };
    // A control address: a pod neither the fault's peers nor its targets cover.
    let controls: Vec<Ipv4Addr> = pods
        .iter()
        .filter(|p| probeable(p) && !is_peer(p) && !is_target(p))
        .filter_map(|p| v4(&p.ips))
        .collect();
    let senders: Vec<(&Pod, PathBuf, Ipv4Addr)> = senders
        .into_iter()
        .filter(|p| p.is_local() && p.problem.is_none())
        .filter_map(|p| Some((p, p.netns.clone()?, v4(&p.ips)?)))
        .collect();
    let receivers: Vec<Ipv4Addr> = receivers
        .into_iter()
        .filter(|p| probeable(p))
        .filter_map(|p| v4(&p.ips))
        .collect();
    let mut pairs = vec![];
    'outer: for to_ip in &receivers {
        for (pod, netns, from_ip) in &senders {
            if pairs.len() >= MAX_PAIRS {
                break 'outer;
            }
            if from_ip == to_ip {
                continue;
            }
            pairs.push(PairPlan {
                from: key(&pod.namespace, &pod.name),
                netns: netns.clone(),
                from_ip: *from_ip,
                to_ip: *to_ip,
                control: controls.iter().copied().find(|c| c != from_ip),
            });
        }
    }
    Ok(Plan { pairs, port })
}
