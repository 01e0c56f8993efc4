//! The **implementation side** of the differential model: what `fault-ebpf` does with one
//! packet on one hook, over compiled [`Tables`] as they would sit in the kernel maps. Each step
//! follows the program line for line (`main.rs::classify`, `judge.rs`, `lookup.rs`, `act.rs`,
//! `parse.rs::Flow`), so that a difference between this and [`super::reference`] is a
//! difference between what the agent writes and what was asked, not between two readings of
//! the program. What the program does to a packet's bytes (corruption, departure times,
//! duplicates) is left out: only which faults act, whether the packet is dropped and the
//! evaluated mark, which decide what the next hook sees.
use std::net::IpAddr;

use fault_common::{
    Direction, FAULT_PARTITION, FAULT_PARTITION_CONNECTIONS, FAULT_PROTECT_DNS,
    FAULT_PROTECT_NATS_PORT, FaultParams, RULE_FIXED_BITS, RULE_VIRTUAL, Role, RuleValue,
    TARGET_HAS_PORT_RULES, TARGET_HAS_PROTO_RULES, TARGET_HAS_VIRTUAL_RULES, TargetKey,
    TargetValue, chance, gate_bit, gate_bits_of, gate_index, proto,
};

use crate::{compile::addr16, dataplane::Tables};

/// The hooks a packet between two pods can cross (`fault_ebpf::hook::Hook`; the pod-side
/// egress hook only sets departure times and is left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `fl_host_ingress`: tc ingress of the sender's host veth.
    HostIngress,
    /// `fl_host_egress`: tc egress of the receiver's host veth.
    HostEgress,
    /// `fl_uplink_egress`: tc egress of the sender's node uplink, after the node's NAT.
    Uplink,
}

impl Hook {
    /// The direction of the packets relative to the local pod (the program's entries).
    fn direction(self) -> Direction {
        match self {
            Hook::HostIngress | Hook::Uplink => Direction::Egress,
            Hook::HostEgress => Direction::Ingress,
        }
    }

    fn is_sender_side(self) -> bool {
        matches!(self, Hook::HostIngress | Hook::Uplink)
    }
}

/// A packet as a hook parses it. `proto` as rules name it (ICMPv6 is [`proto::ICMP`]); ports
/// are zero for ICMP; `icmp_type` zero for TCP and UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
}

/// The packet's circumstances the maps do not hold: the boot clock the program reads, whether
/// drop verdicts stop the packet (off: every fault on the path is run, to count them), and the
/// random number every `chance` draws (0: every nonzero probability fires).
#[derive(Clone, Copy, Debug)]
pub struct Env {
    pub now_ns: u64,
    pub drops: bool,
    pub rand: u32,
}

/// What one hook did to a packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Slots of the faults that acted (past their deadline and protection checks, where the
    /// program counts `matched`), in the order they ran.
    pub acted: Vec<u16>,
    /// The slot lists of the rules the lookups found, target role first.
    pub rules: Vec<Vec<u16>>,
    /// A fault dropped the packet (only with [`Env::drops`]).
    pub dropped: bool,
    /// The evaluated mark as the packet leaves the hook.
    pub mark: bool,
}

/// `fl_host_ingress`, `fl_host_egress` or `fl_uplink_egress` on a node holding `t`: the
/// packet arrives with the evaluated mark `mark`.
pub fn classify(t: &Tables, hook: Hook, pkt: &Packet, mark: bool, env: Env) -> Pass {
    let mut pass = Pass {
        mark,
        ..Pass::default()
    };
    // A packet the sender's veth on this node evaluated: the bit is cleared; on the uplink,
    // out; on the receiver's veth, only rules for virtual addresses remain.
    let judged = matches!(hook, Hook::HostEgress | Hook::Uplink) && mark;
    pass.mark &= !judged;
    if judged && hook == Hook::Uplink {
        return pass;
    }
    let direction = hook.direction();
    let local = match direction {
        Direction::Egress => pkt.src,
        Direction::Ingress => pkt.dst,
    };
    let local = addr16(local);
    let gate = t
        .gates
        .get(&(gate_index(&local) as u16))
        .copied()
        .unwrap_or(0);
    if gate & gate_bits_of(direction as u8) == 0 {
        return pass;
    }
    let in_role = |role: Role| {
        if gate & gate_bit(direction as u8, role as u8) == 0 {
            return None;
        }
        t.targets.get(&TargetKey {
            addr: local,
            direction: direction as u8,
            role: role as u8,
            _pad: [0; 2],
        })
    };
    let mut evaluated = false;
    // The faults that acted in the target role: the peer role skips them (a fault in both
    // directions among its own targets holds the packet in both of the local pod's roles).
    let mut ran = Vec::new();
    let roles = if judged {
        let virtuals = in_role(Role::Target).filter(|t| t.flags & TARGET_HAS_VIRTUAL_RULES != 0);
        if virtuals.is_none() {
            return pass;
        }
        [(Role::Target, virtuals), (Role::Peer, None)]
    } else {
        [
            (Role::Target, in_role(Role::Target)),
            (Role::Peer, in_role(Role::Peer)),
        ]
    };
    for (role, value) in roles {
        let Some(value) = value else { continue };
        // Sent by a pod on another node: that node's agent judged it.
        if hook == Hook::HostEgress && t.remote.contains(&addr16(pkt.src)) {
            return pass;
        }
        match judge(
            t,
            &mut pass,
            &mut ran,
            pkt,
            value,
            (hook, direction, role),
            judged,
            env,
        ) {
            Judged::Drop => {
                pass.dropped = true;
                return pass;
            }
            Judged::Evaluated => evaluated = true,
            Judged::Untouched => {}
        }
    }
    if evaluated && hook.is_sender_side() {
        pass.mark = true;
    }
    pass
}

enum Judged {
    Drop,
    Evaluated,
    Untouched,
}

/// The packet seen from a fault's target (`parse::Flow`).
struct Flow {
    target: IpAddr,
    peer: IpAddr,
    peer_port: u16,
}

fn flow_of(pkt: &Packet, direction: Direction) -> Flow {
    match direction {
        Direction::Egress => Flow {
            target: pkt.src,
            peer: pkt.dst,
            peer_port: pkt.dport,
        },
        Direction::Ingress => Flow {
            target: pkt.dst,
            peer: pkt.src,
            peer_port: pkt.sport,
        },
    }
}

/// `judge.rs::judge`.
#[allow(clippy::too_many_arguments)]
fn judge(
    t: &Tables,
    pass: &mut Pass,
    ran: &mut Vec<u16>,
    pkt: &Packet,
    target: &TargetValue,
    (hook, direction, role): (Hook, Direction, Role),
    virtual_only: bool,
    env: Env,
) -> Judged {
    let fault_direction = match role {
        Role::Target => direction,
        Role::Peer => direction.opposite(),
    };
    let flow = flow_of(pkt, fault_direction);
    let remote = match role {
        Role::Target => flow.peer,
        Role::Peer => flow.target,
    };
    let Some(rule) = rule(t, target, pkt.proto, flow.peer_port, remote) else {
        return Judged::Untouched;
    };
    let is_virtual = rule.flags & RULE_VIRTUAL != 0;
    if (virtual_only && !is_virtual) || (is_virtual && hook == Hook::Uplink) {
        return Judged::Untouched;
    }
    let slots = &rule.slots[..rule.count as usize];
    pass.rules.push(slots.to_vec());
    for &slot in slots {
        if role == Role::Peer && ran.contains(&slot) {
            continue;
        }
        match one(t, pass, pkt, &flow, slot, env) {
            Acted::Drop => return Judged::Drop,
            Acted::Kept if role == Role::Target => ran.push(slot),
            Acted::Kept | Acted::Skipped => {}
        }
    }
    if rule.count > 0 && !is_virtual {
        Judged::Evaluated
    } else {
        Judged::Untouched
    }
}

fn prefix_match(a: &[u8; 16], b: &[u8; 16], bits: u32) -> bool {
    let (a, b) = (u128::from_be_bytes(*a), u128::from_be_bytes(*b));
    bits == 0 || (a ^ b) >> (128 - bits) == 0
}

/// The longest prefix of `FL_RULES` matching a full key (`BPF_MAP_TYPE_LPM_TRIE`): every entry
/// is at least [`RULE_FIXED_BITS`] long, so policy, protocol and port match exactly.
fn lpm(t: &Tables, policy: u32, p: u8, port: u16, remote: &[u8; 16]) -> Option<RuleValue> {
    t.rules
        .iter()
        .filter(|((bits, k), _)| {
            u32::from_be_bytes(k.policy) == policy
                && k.proto == p
                && k._pad == 0
                && u16::from_be_bytes(k.port) == port
                && prefix_match(&k.peer, remote, bits - RULE_FIXED_BITS)
        })
        .max_by_key(|((bits, _), _)| *bits)
        .map(|(_, v)| *v)
}

/// `lookup.rs::rule`: the exact port's table, then the protocol's any-port table, then the
/// any-protocol table.
pub fn rule(
    t: &Tables,
    target: &TargetValue,
    p: u8,
    peer_port: u16,
    remote: IpAddr,
) -> Option<RuleValue> {
    let remote = addr16(remote);
    if target.flags & TARGET_HAS_PORT_RULES != 0
        && peer_port != 0
        && let Some(r) = lpm(t, target.policy, p, peer_port, &remote)
    {
        return Some(r);
    }
    if target.flags & TARGET_HAS_PROTO_RULES != 0
        && p != proto::ANY
        && let Some(r) = lpm(t, target.policy, p, 0, &remote)
    {
        return Some(r);
    }
    lpm(t, target.policy, proto::ANY, 0, &remote)
}

const DNS_PORT: u16 = 53;
const NATS_CLIENT_PORT: u16 = 4222;

/// `act.rs::protected`.
fn protected(flags: u32, pkt: &Packet, flow: &Flow) -> bool {
    match pkt.proto {
        proto::TCP | proto::UDP if flags & FAULT_PROTECT_DNS != 0 && flow.peer_port == DNS_PORT => {
            true
        }
        proto::TCP
            if flags & FAULT_PROTECT_NATS_PORT != 0 && flow.peer_port == NATS_CLIENT_PORT =>
        {
            true
        }
        proto::ICMP => pkt.src.is_ipv6() && (133..=137).contains(&pkt.icmp_type),
        _ => false,
    }
}

/// What [`one`] did (`act.rs::Acted`).
enum Acted {
    /// Past its deadline, or protected traffic.
    Skipped,
    /// Acted and let the packet go on.
    Kept,
    Drop,
}

/// `act.rs::one`, as far as the verdict goes. A connection-aware partition counts as dropping
/// (as for a packet that opens a connection).
fn one(t: &Tables, pass: &mut Pass, pkt: &Packet, flow: &Flow, slot: u16, env: Env) -> Acted {
    if u32::from(slot) >= fault_common::MAX_FAULTS {
        return Acted::Skipped;
    }
    // An array: a slot the agent never wrote reads as zero (deadline 0: inactive).
    let fault: FaultParams = t.faults.get(&slot).copied().unwrap_or_default();
    if env.now_ns >= fault.deadline_ns || protected(fault.flags, pkt, flow) {
        return Acted::Skipped;
    }
    pass.acted.push(slot);
    let drops = fault.flags & (FAULT_PARTITION | FAULT_PARTITION_CONNECTIONS) != 0
        || (fault.loss_ppm != 0 && chance(env.rand, fault.loss_ppm));
    if drops && env.drops {
        Acted::Drop
    } else {
        Acted::Kept
    }
}
