//! From resolved faults to the content of the kernel maps ([`Tables`]).
//!
//! For each (target address, direction) the compiler builds the target's rule tables: one
//! per (protocol, port) key any of its faults names, each holding every peer prefix of the
//! faults that cover that key, with the slots of the faults that cover that prefix (an
//! excluded address gets an entry of its own with the faults that do not exclude it). This
//! closure is what lets the program stop at the first table that exists and at the longest
//! prefix that matches. Targets with identical tables share a policy id.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use fault_api::{FaultSpec, PartitionMode, Protocol};
use fault_common::{
    Direction, FAULT_PARTITION, FAULT_PARTITION_CONNECTIONS, FAULT_PROTECT_DNS,
    FAULT_PROTECT_NATS_PORT, FaultParams, MAX_FAULTS_PER_RULE, RULE_FIXED_BITS, RuleKey, RuleValue,
    TARGET_HAS_PORT_RULES, TARGET_HAS_PROTO_RULES, TARGET_TRACK_CONNECTIONS, TargetKey,
    TargetValue, proto,
};
use ipnet::IpNet;

use crate::dataplane::Tables;

/// One fault, ready to compile.
#[derive(Debug, Clone)]
pub struct CompileInput {
    pub slot: u16,
    /// Creation order: the program evaluates faults of a rule oldest first.
    pub seq: u64,
    pub params: FaultParams,
    pub target_ips: Vec<IpAddr>,
    pub directions: Vec<Direction>,
    /// (protocol, peer port) keys; 0 is "any".
    pub l4: Vec<(u8, u16)>,
    pub includes: Vec<IpNet>,
    pub excludes: Vec<IpNet>,
}

/// Why faults cannot all be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("more than {max} faults would act on target {target} ({direction:?}) for peers {peer}: {slots:?}", max = MAX_FAULTS_PER_RULE)]
pub struct TooManyFaults {
    pub target: IpAddr,
    pub direction: Direction,
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

/// A prefix as (address bytes, prefix bits in IPv6 terms).
fn prefix16(net: &IpNet) -> ([u8; 16], u32) {
    match net {
        IpNet::V4(n) => (
            n.network().to_ipv6_mapped().octets(),
            96 + n.prefix_len() as u32,
        ),
        IpNet::V6(n) => (n.network().octets(), n.prefix_len() as u32),
    }
}

/// One rule table content, without the policy id: ((proto, port, peer, bits) -> value).
type PolicyContent = Vec<((u8, u16, [u8; 16], u32), RuleValue)>;

/// Policy ids by content, kept across compilations so that an unchanged table keeps its id
/// (and the kernel sees no write). Id 0 is the empty policy.
#[derive(Debug, Default)]
pub struct Interner {
    ids: HashMap<PolicyContent, u32>,
    next: u32,
}

impl Interner {
    /// Rebuilds the interner from tables read back from the kernel (after a restart).
    pub fn from_tables(t: &Tables) -> Self {
        let mut by_policy: BTreeMap<u32, PolicyContent> = BTreeMap::new();
        for ((bits, key), value) in &t.rules {
            let policy = u32::from_be_bytes(key.policy);
            by_policy.entry(policy).or_default().push((
                (
                    key.proto,
                    u16::from_be_bytes(key.port),
                    key.peer,
                    bits - RULE_FIXED_BITS,
                ),
                *value,
            ));
        }
        let next = by_policy.keys().max().map_or(1, |m| m + 1);
        let ids = by_policy.into_iter().map(|(id, mut c)| {
            c.sort_by_key(|a| a.0);
            (c, id)
        });
        Self {
            ids: ids.collect(),
            next,
        }
    }

    fn intern(&mut self, content: PolicyContent) -> u32 {
        if content.is_empty() {
            return 0;
        }
        if let Some(id) = self.ids.get(&content) {
            return *id;
        }
        let id = self.next.max(1);
        self.next = id + 1;
        self.ids.insert(content, id);
        id
    }

    fn retain(&mut self, live: &BTreeSet<u32>) {
        self.ids.retain(|_, id| live.contains(id));
    }
}

fn covers_key(f: &CompileInput, key: (u8, u16)) -> bool {
    f.l4.iter()
        .any(|&(p, q)| (p == proto::ANY || p == key.0) && (q == 0 || q == key.1))
}

/// A fault's prefixes as sets, so that "does some prefix of the fault contain x" is one set
/// lookup per prefix length of `x` (at most 129), not a scan of every prefix.
struct PrefixSets {
    includes: HashSet<IpNet>,
    excludes: HashSet<IpNet>,
}

impl PrefixSets {
    fn of(f: &CompileInput) -> Self {
        Self {
            includes: f.includes.iter().copied().collect(),
            excludes: f.excludes.iter().copied().collect(),
        }
    }

    fn contains(set: &HashSet<IpNet>, x: &IpNet) -> bool {
        (0..=x.prefix_len()).any(|len| {
            IpNet::new(x.addr(), len)
                .map(|n| set.contains(&n.trunc()))
                .unwrap_or(false)
        })
    }

    fn covers(&self, x: &IpNet) -> bool {
        Self::contains(&self.includes, x) && !Self::contains(&self.excludes, x)
    }
}

/// The rule tables of one target and direction with faults `fs` (oldest first), sorted; or
/// the prefix and slots of an entry that would hold too many faults.
fn tables_of(
    fs: &[&CompileInput],
    sets: &HashMap<u16, PrefixSets>,
) -> Result<PolicyContent, (IpNet, Vec<u16>)> {
    let keys: BTreeSet<(u8, u16)> = fs.iter().flat_map(|f| f.l4.iter().copied()).collect();
    let mut content: PolicyContent = Vec::new();
    for key in keys {
        let relevant: Vec<&CompileInput> =
            fs.iter().copied().filter(|f| covers_key(f, key)).collect();
        let prefixes: BTreeSet<IpNet> = relevant
            .iter()
            .flat_map(|f| f.includes.iter().chain(f.excludes.iter()).copied())
            .collect();
        for x in prefixes {
            let slots: Vec<u16> = relevant
                .iter()
                .filter(|f| sets.get(&f.slot).is_some_and(|s| s.covers(&x)))
                .map(|f| f.slot)
                .collect();
            if slots.len() > MAX_FAULTS_PER_RULE {
                return Err((x, slots));
            }
            let mut value = RuleValue {
                count: slots.len() as u32,
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

/// Compiles the faults into map contents.
pub fn compile(faults: &[CompileInput], interner: &mut Interner) -> Result<Tables, TooManyFaults> {
    let mut tables = Tables::default();
    let mut by_target: BTreeMap<(IpAddr, Direction), Vec<&CompileInput>> = BTreeMap::new();
    let mut track: BTreeSet<(IpAddr, Direction)> = BTreeSet::new();
    for f in faults {
        tables.faults.insert(f.slot, f.params);
        for ip in &f.target_ips {
            for d in &f.directions {
                by_target.entry((*ip, *d)).or_default().push(f);
                if f.params.flags & FAULT_PARTITION_CONNECTIONS != 0 {
                    let opposite = match d {
                        Direction::Egress => Direction::Ingress,
                        Direction::Ingress => Direction::Egress,
                    };
                    track.insert((*ip, opposite));
                }
            }
        }
    }
    let sets: HashMap<u16, PrefixSets> =
        faults.iter().map(|f| (f.slot, PrefixSets::of(f))).collect();
    // Targets with the same faults have the same tables: compile each set of faults once.
    let mut compiled: HashMap<Vec<u16>, (PolicyContent, u32)> = HashMap::new();
    let mut live = BTreeSet::new();
    for ((ip, direction), mut fs) in by_target {
        fs.sort_by_key(|f| f.seq);
        let mut flags = 0;
        for key in fs.iter().flat_map(|f| f.l4.iter()) {
            if key.1 != 0 {
                flags |= TARGET_HAS_PORT_RULES;
            } else if key.0 != proto::ANY {
                flags |= TARGET_HAS_PROTO_RULES;
            }
        }
        let slots_key: Vec<u16> = fs.iter().map(|f| f.slot).collect();
        let (content, policy) = match compiled.get(&slots_key) {
            Some(c) => c.clone(),
            None => {
                let content = tables_of(&fs, &sets).map_err(|(peer, slots)| TooManyFaults {
                    target: ip,
                    direction,
                    peer,
                    slots,
                })?;
                let policy = interner.intern(content.clone());
                compiled.insert(slots_key, (content.clone(), policy));
                (content, policy)
            }
        };
        live.insert(policy);
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
        let key = TargetKey {
            addr: addr16(ip),
            direction: direction as u8,
            _pad: [0; 3],
        };
        if track.remove(&(ip, direction)) {
            flags |= TARGET_TRACK_CONNECTIONS;
        }
        tables.targets.insert(key, TargetValue { policy, flags });
    }
    for (ip, direction) in track {
        let key = TargetKey {
            addr: addr16(ip),
            direction: direction as u8,
            _pad: [0; 3],
        };
        tables.targets.insert(
            key,
            TargetValue {
                policy: 0,
                flags: TARGET_TRACK_CONNECTIONS,
            },
        );
    }
    interner.retain(&live);
    tables.derive_gates();
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(slot: u16, l4: Vec<(u8, u16)>, includes: &[&str], excludes: &[&str]) -> CompileInput {
        CompileInput {
            slot,
            seq: slot as u64,
            params: FaultParams {
                deadline_ns: 1,
                ..Default::default()
            },
            target_ips: vec![
                "198.18.0.10".parse().unwrap(),
                "198.18.0.11".parse().unwrap(),
            ],
            directions: vec![Direction::Egress],
            l4,
            includes: includes.iter().map(|s| s.parse().unwrap()).collect(),
            excludes: excludes.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    /// Looks a packet up the way the program does.
    fn lookup(t: &Tables, target: &str, dir: Direction, p: u8, port: u16, peer: &str) -> Vec<u16> {
        let tk = TargetKey {
            addr: addr16(target.parse().unwrap()),
            direction: dir as u8,
            _pad: [0; 3],
        };
        let Some(tv) = t.targets.get(&tk) else {
            return vec![];
        };
        let peer = addr16(peer.parse().unwrap());
        let find = |p: u8, port: u16| {
            t.rules
                .iter()
                .filter(|((bits, k), _)| {
                    u32::from_be_bytes(k.policy) == tv.policy
                        && k.proto == p
                        && u16::from_be_bytes(k.port) == port
                        && prefix_match(&k.peer, &peer, bits - RULE_FIXED_BITS)
                })
                .max_by_key(|((bits, _), _)| *bits)
                .map(|(_, v)| v.slots[..v.count as usize].to_vec())
        };
        if tv.flags & TARGET_HAS_PORT_RULES != 0
            && port != 0
            && let Some(s) = find(p, port)
        {
            return s;
        }
        if tv.flags & TARGET_HAS_PROTO_RULES != 0
            && let Some(s) = find(p, 0)
        {
            return s;
        }
        find(0, 0).unwrap_or_default()
    }

    fn prefix_match(a: &[u8; 16], b: &[u8; 16], bits: u32) -> bool {
        let (a, b) = (u128::from_be_bytes(*a), u128::from_be_bytes(*b));
        bits == 0 || (a ^ b) >> (128 - bits) == 0
    }

    #[test]
    fn targets_with_the_same_faults_share_one_policy() {
        let mut i = Interner::default();
        let t = compile(&[input(3, vec![(0, 0)], &["198.18.0.12/32"], &[])], &mut i).unwrap();
        assert_eq!(t.targets.len(), 2);
        assert_eq!(t.rules.len(), 1);
        let policies: BTreeSet<u32> = t.targets.values().map(|v| v.policy).collect();
        assert_eq!(policies.len(), 1);
        // Recompiling the same faults gives the same ids.
        let again = compile(&[input(3, vec![(0, 0)], &["198.18.0.12/32"], &[])], &mut i).unwrap();
        assert_eq!(t, again);
    }

    #[test]
    fn exclusions_carve_holes_and_ports_close_over_wildcards() {
        let mut i = Interner::default();
        let all = input(1, vec![(0, 0)], &["0.0.0.0/0"], &["198.18.0.13/32"]);
        let port = input(2, vec![(proto::TCP, 80)], &["198.18.0.12/32"], &[]);
        let t = compile(&[all, port], &mut i).unwrap();
        let tgt = "198.18.0.10";
        assert_eq!(
            lookup(&t, tgt, Direction::Egress, proto::UDP, 53, "198.18.0.12"),
            vec![1]
        );
        assert_eq!(
            lookup(&t, tgt, Direction::Egress, proto::TCP, 80, "198.18.0.12"),
            vec![1, 2]
        );
        assert_eq!(
            lookup(&t, tgt, Direction::Egress, proto::TCP, 80, "198.18.0.99"),
            vec![1]
        );
        assert!(lookup(&t, tgt, Direction::Egress, proto::TCP, 80, "198.18.0.13").is_empty());
        assert!(lookup(&t, tgt, Direction::Ingress, proto::TCP, 80, "198.18.0.12").is_empty());
        assert!(
            lookup(
                &t,
                "198.18.0.99",
                Direction::Egress,
                proto::TCP,
                80,
                "198.18.0.12"
            )
            .is_empty()
        );
        // IPv4 prefixes never cover IPv6 peers.
        assert!(lookup(&t, tgt, Direction::Egress, proto::UDP, 1, "fd00::1").is_empty());
    }

    #[test]
    fn too_many_overlapping_faults_are_refused() {
        let mut i = Interner::default();
        let fs: Vec<_> = (0..=MAX_FAULTS_PER_RULE as u16)
            .map(|s| input(s, vec![(0, 0)], &["0.0.0.0/0"], &[]))
            .collect();
        let e = compile(&fs, &mut i).unwrap_err();
        assert_eq!(e.slots.len(), MAX_FAULTS_PER_RULE + 1);
    }

    #[test]
    fn connection_partitions_track_the_opposite_direction() {
        let mut i = Interner::default();
        let mut f = input(1, vec![(0, 0)], &["198.18.0.12/32"], &[]);
        f.params.flags |= FAULT_PARTITION_CONNECTIONS;
        let t = compile(&[f], &mut i).unwrap();
        let ingress = TargetKey {
            addr: addr16("198.18.0.10".parse().unwrap()),
            direction: Direction::Ingress as u8,
            _pad: [0; 3],
        };
        assert_eq!(
            t.targets[&ingress],
            TargetValue {
                policy: 0,
                flags: TARGET_TRACK_CONNECTIONS
            }
        );
    }
}
