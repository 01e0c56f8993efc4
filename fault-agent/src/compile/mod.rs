//! From resolved faults to the content of the kernel maps ([`Tables`]).
//!
//! Each local pod gets one table per (packets' direction, role) in which it plays a part
//! ([`views`]): as a fault's target its table names the fault's peers, as a fault's peer it
//! names the fault's local targets. A table holds one entry per (protocol, port) key its
//! faults name and per prefix they involve, with the slots of the faults that cover it; each
//! key's entries are the **closure** over less specific keys and every prefix (an excluded
//! address or a virtual range gets an entry of its own with the faults that still cover it).
//! So the program can stop at the first table that exists and at the longest prefix that
//! matches. Tables with identical content share a policy id ([`Interner`]).
mod interner;
mod views;

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
};

use fault_api::{FaultSpec, PartitionMode, Protocol};
use fault_common::{
    Direction, FAULT_PARTITION, FAULT_PARTITION_CONNECTIONS, FAULT_PROTECT_DNS,
    FAULT_PROTECT_NATS_PORT, FaultParams, MAX_FAULTS_PER_RULE, RULE_FIXED_BITS, RULE_VIRTUAL, Role,
    RuleKey, RuleValue, TARGET_HAS_PORT_RULES, TARGET_HAS_PROTO_RULES, TARGET_HAS_VIRTUAL_RULES,
    TARGET_TRACK_CONNECTIONS, TargetKey, TargetValue, proto,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use interner::Interner;

use crate::{dataplane::Tables, prefixes::PrefixSet};
use interner::PolicyContent;
use views::{At, ViewSpec, Views};

/// One fault, ready to compile.
#[derive(Debug, Clone)]
pub struct CompileInput {
    pub slot: u16,
    /// Creation order: the program evaluates faults of a rule oldest first.
    pub seq: u64,
    pub params: FaultParams,
    /// Addresses of the fault's target pods on this node.
    pub target_ips: Vec<IpAddr>,
    /// Addresses of all its target pods (every node): a target is no peer of its own ingress.
    pub all_target_ips: Vec<IpAddr>,
    /// Addresses of the pods on this node that are its peers (protected ones left out).
    pub peer_ips: Vec<IpAddr>,
    pub directions: Vec<Direction>,
    /// (protocol, peer port) keys; 0 is "any".
    pub l4: Vec<(u8, u16)>,
    /// Peer prefixes (pods as /32 and /128, CIDRs, or everything).
    pub includes: Vec<IpNet>,
    /// Prefixes never faulted (protected pods).
    pub excludes: Vec<IpNet>,
}

/// Why faults cannot all be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("more than {max} faults would act on pod {target} ({direction:?}, as {role:?}) for {peer}: {slots:?}", max = MAX_FAULTS_PER_RULE)]
pub struct TooManyFaults {
    /// The local pod's address.
    pub target: IpAddr,
    /// Direction of the packets relative to that pod.
    pub direction: Direction,
    pub role: Role,
    pub peer: IpNet,
    /// The slots involved, oldest first.
    pub slots: Vec<u16>,
}

/// The kernel parameters of a fault.
pub fn params(spec: &FaultSpec, deadline_ns: u64) -> FaultParams {
    let mut flags = 0;
    match spec.partition {
        Some(PartitionMode::Packets) => flags |= FAULT_PARTITION,
        Some(PartitionMode::Connections) => flags |= FAULT_PARTITION_CONNECTIONS,
        None => {}
    }
    if !spec.faults_dns() {
        flags |= FAULT_PROTECT_DNS;
    }
    if !spec.block_nats {
        flags |= FAULT_PROTECT_NATS_PORT;
    }
    FaultParams {
        deadline_ns,
        delay_ns: spec.delay.map_or(0, |d| d.get().as_nanos() as u64),
        jitter_ns: spec.jitter.map_or(0, |d| d.get().as_nanos() as u64),
        rate_bytes_per_sec: spec.rate.map_or(0, |r| r.bytes_per_sec()),
        flags,
        loss_ppm: spec.loss_percent.map_or(0, |p| p.ppm()),
        corrupt_ppm: spec.corrupt_percent.map_or(0, |p| p.ppm()),
        duplicate_ppm: spec.duplicate_percent.map_or(0, |p| p.ppm()),
    }
}

/// The (protocol, port) keys of a spec: a port without protocol means TCP and UDP.
pub fn l4_keys(spec: &FaultSpec) -> Vec<(u8, u16)> {
    let p = |p: Protocol| match p {
        Protocol::Tcp => proto::TCP,
        Protocol::Udp => proto::UDP,
        Protocol::Icmp => proto::ICMP,
    };
    match (spec.protocol, spec.port) {
        (None, None) => vec![(proto::ANY, 0)],
        (None, Some(port)) => vec![(proto::TCP, port), (proto::UDP, port)],
        (Some(pr), port) => vec![(p(pr), port.unwrap_or(0))],
    }
}

/// The directions of a spec, relative to the targets.
pub fn directions(spec: &FaultSpec) -> Vec<Direction> {
    let mut d = Vec::new();
    if spec.direction.includes_egress() {
        d.push(Direction::Egress);
    }
    if spec.direction.includes_ingress() {
        d.push(Direction::Ingress);
    }
    d
}

/// 16-byte form of an address (IPv4-mapped for IPv4).
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A prefix as (address bytes, prefix bits in IPv6 terms): IPv4 as IPv4-mapped, /n as /96+n.
pub fn prefix16(net: &IpNet) -> ([u8; 16], u32) {
    match net {
        IpNet::V4(n) => (
            n.network().to_ipv6_mapped().octets(),
            96 + n.prefix_len() as u32,
        ),
        IpNet::V6(n) => (n.network().octets(), n.prefix_len() as u32),
    }
}

/// Whether an IPv6 prefix holds the IPv4-mapped range `::ffff:0:0/96` (see [`prefix16`]).
fn holds_ipv4_mapped(net: &IpNet) -> bool {
    let mapped = Ipv6Net::new(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), 96).expect("a /96");
    matches!(net, IpNet::V6(n) if n.contains(&mapped))
}

fn covers_key(f: &CompileInput, key: (u8, u16)) -> bool {
    f.l4.iter()
        .any(|&(p, q)| (p == proto::ANY || p == key.0) && (q == 0 || q == key.1))
}

/// The node's virtual ranges: as a set for coverage, as a list for entries.
struct Virtuals {
    set: PrefixSet,
    list: Vec<IpNet>,
}

/// The table of one local pod's views `specs` (oldest first), sorted; or the prefix and slots
/// of an entry that would hold too many faults.
fn table_of(specs: &[&ViewSpec], virtuals: &Virtuals) -> Result<PolicyContent, (IpNet, Vec<u16>)> {
    let keys: BTreeSet<(u8, u16)> = specs
        .iter()
        .flat_map(|s| s.fault.l4.iter().copied())
        .collect();
    let mut content: PolicyContent = Vec::new();
    for key in keys {
        let relevant: Vec<&ViewSpec> = specs
            .iter()
            .copied()
            .filter(|s| covers_key(s.fault, key))
            .collect();
        let mut prefixes: BTreeSet<IpNet> = relevant
            .iter()
            .flat_map(|s| s.prefixes.iter().copied())
            .collect();
        prefixes.extend(virtuals.list.iter().filter(|v| {
            relevant
                .iter()
                .any(|s| s.peers.includes.strictly_contains(v))
        }));
        // In the trie an IPv4 address is IPv4-mapped: an IPv6 prefix holding the whole mapped
        // range (`::/0`) would cover every IPv4 peer. IPv4 gets an entry of its own, with the
        // faults that cover it as IPv4.
        if prefixes.iter().any(holds_ipv4_mapped) {
            prefixes.insert(IpNet::V4(Ipv4Net::default()));
        }
        for x in prefixes {
            let slots: Vec<u16> = relevant
                .iter()
                .filter(|s| s.peers.covers(&x, &virtuals.set))
                .map(|s| s.fault.slot)
                .collect();
            if slots.len() > MAX_FAULTS_PER_RULE {
                return Err((x, slots));
            }
            let mut value = RuleValue {
                count: slots.len() as u8,
                flags: if virtuals.set.contains(&x) {
                    RULE_VIRTUAL
                } else {
                    0
                },
                _pad: [0; 2],
                slots: [0; MAX_FAULTS_PER_RULE],
            };
            value.slots[..slots.len()].copy_from_slice(&slots);
            let (peer, bits) = prefix16(&x);
            content.push(((key.0, key.1, peer, bits), value));
        }
    }
    content.sort_by_key(|a| a.0);
    Ok(content)
}

/// Which rule tables a policy of these views has (`TARGET_HAS_*`).
fn table_flags(specs: &[&ViewSpec]) -> u32 {
    let mut flags = 0;
    for key in specs.iter().flat_map(|s| s.fault.l4.iter()) {
        if key.1 != 0 {
            flags |= TARGET_HAS_PORT_RULES;
        } else if key.0 != proto::ANY {
            flags |= TARGET_HAS_PROTO_RULES;
        }
    }
    flags
}

fn target_key((ip, direction, role): At) -> TargetKey {
    TargetKey {
        addr: addr16(ip),
        direction: direction as u8,
        role: role as u8,
        _pad: [0; 2],
    }
}

/// Where connection-aware partitions need flows recorded: the opposite direction of each of
/// their views (the other side's packets).
fn tracked(views: &Views) -> BTreeSet<At> {
    views
        .at
        .iter()
        .filter(|(_, indexes)| {
            indexes
                .iter()
                .any(|&i| views.specs[i].fault.params.flags & FAULT_PARTITION_CONNECTIONS != 0)
        })
        .map(|(&(ip, d, role), _)| (ip, d.opposite(), role))
        .collect()
}

/// What the compiler needs to know of the node besides the faults.
#[derive(Debug, Default, Clone)]
pub struct NodeView {
    /// Addresses the node translates to pod addresses after the programs' hooks (Service
    /// CIDRs, externalIPs, node addresses).
    pub virtual_nets: Vec<IpNet>,
    /// Addresses of pods on other nodes, whose agents judge what they send.
    pub remote_ips: Vec<IpAddr>,
}

/// Compiles the faults into map contents for a node seen as `node`.
pub fn compile(
    faults: &[CompileInput],
    node: &NodeView,
    interner: &mut Interner,
) -> Result<Tables, TooManyFaults> {
    let virtual_nets = &node.virtual_nets;
    let mut tables = Tables::default();
    for f in faults {
        tables.faults.insert(f.slot, f.params);
    }
    let virtuals = Virtuals {
        set: PrefixSet::of(virtual_nets.iter().copied()),
        list: virtual_nets.iter().map(|n| n.trunc()).collect(),
    };
    let views = Views::of(faults);
    let mut track = tracked(&views);
    // Pods with the same views have the same table: compile each set of views once.
    let mut compiled: HashMap<&[usize], (PolicyContent, u32)> = HashMap::new();
    let mut live = BTreeSet::new();
    for (&at, indexes) in &views.at {
        let specs: Vec<&ViewSpec> = indexes.iter().map(|&i| &views.specs[i]).collect();
        let (content, policy) = match compiled.get(indexes.as_slice()) {
            Some(c) => c.clone(),
            None => {
                let content =
                    table_of(&specs, &virtuals).map_err(|(peer, slots)| TooManyFaults {
                        target: at.0,
                        direction: at.1,
                        role: at.2,
                        peer,
                        slots,
                    })?;
                let policy = interner.intern(content.clone());
                compiled.insert(indexes, (content.clone(), policy));
                (content, policy)
            }
        };
        live.insert(policy);
        let virtuals_act = content
            .iter()
            .any(|(_, v)| v.flags & RULE_VIRTUAL != 0 && v.count > 0);
        for ((p, port, peer, bits), value) in content {
            let key = RuleKey {
                policy: policy.to_be_bytes(),
                proto: p,
                _pad: 0,
                port: port.to_be_bytes(),
                peer,
            };
            tables.rules.insert((RULE_FIXED_BITS + bits, key), value);
        }
        let mut flags = table_flags(&specs);
        if virtuals_act {
            flags |= TARGET_HAS_VIRTUAL_RULES;
        }
        if track.remove(&at) {
            flags |= TARGET_TRACK_CONNECTIONS;
        }
        tables
            .targets
            .insert(target_key(at), TargetValue { policy, flags });
    }
    for at in track {
        let value = TargetValue {
            policy: 0,
            flags: TARGET_TRACK_CONNECTIONS,
        };
        tables.targets.insert(target_key(at), value);
    }
    interner.retain(&live);
    tables.derive_gates();
    // Only read once a local pod has a table; none: nothing to skip.
    if !tables.targets.is_empty() {
        tables.remote = node.remote_ips.iter().map(|ip| addr16(*ip)).collect();
    }
    Ok(tables)
}

#[cfg(test)]
mod tests;
