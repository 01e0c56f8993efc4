//! What the faults that match a packet do to it, in slot order: the first drop wins;
//! corruption, delay, rate and duplication do not stop the faults after them. Which actions a
//! hook takes depends on where it sits ([`Hook`]).
//!
//! [`one`] runs one fault on the packet. It is a BPF subprogram (`inline(never)`): the
//! verifier explores its branches inside it, and the caller only sees its verdict, so the
//! checking cost grows with the number of faults per rule, not with their product.
use aya_ebpf::programs::TcContext;
use fault_common::{
    Direction, FAULT_PARTITION, FAULT_PARTITION_CONNECTIONS, FAULT_PROTECT_DNS,
    FAULT_PROTECT_NATS_PORT, FaultParams, chance, proto,
};

use crate::{
    conntrack, corrupt, duplicate, edt,
    hook::Hook,
    maps::{FL_FAULTS, FL_STATS},
    parse::{Flow, Packet},
    rand::rand,
    scratch::Scratch,
};

const DNS_PORT: [u8; 2] = 53u16.to_be_bytes();
const NATS_CLIENT_PORT: [u8; 2] = 4222u16.to_be_bytes();
/// ICMPv6 router/neighbour discovery (RFC 4861: types 133 to 137). Never faulted: without it
/// the pod loses its IPv6 neighbours, and with them every peer, not just the faulted ones.
const ICMPV6_ND_FIRST: u8 = 133;
const ICMPV6_ND_LAST: u8 = 137;

/// What [`one`] did with the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Acted {
    /// Nothing: the fault is past its deadline, or the traffic is protected.
    Skipped = 0,
    /// The fault acted (counted as matched) and the packet goes on.
    Kept = 1,
    /// The fault dropped the packet.
    Drop = 2,
}

/// Runs fault `slot` on the packet described by `s`.
#[inline(never)]
pub fn one(ctx: &TcContext, s: &Scratch, slot: u32) -> Acted {
    let Some(fault) = FL_FAULTS.get(slot) else {
        return Acted::Skipped;
    };
    // The deadline is enforced here, so an expired fault stops even if the agent is dead.
    if s.now >= fault.deadline_ns || protected(fault.flags, &s.pkt, &s.flow) {
        return Acted::Skipped;
    }
    let Some(stats) = FL_STATS.get_ptr_mut(slot) else {
        return Acted::Skipped;
    };
    // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
    let stats = unsafe { &mut *stats };
    if s.hook != Hook::PodEgress {
        stats.matched += 1;
        if drops(fault, &s.pkt, &s.flow, s.direction, s.now) {
            stats.dropped += 1;
            return Acted::Drop;
        }
        if fault.corrupt_ppm != 0
            && chance(rand(), fault.corrupt_ppm)
            && corrupt::payload(ctx, &s.pkt)
        {
            stats.corrupted += 1;
        }
    }
    if s.hook.sets_departure() {
        match edt::schedule(ctx, fault, slot as u16, &s.flow.target, s.direction) {
            edt::Scheduled::Untouched => {}
            edt::Scheduled::Delayed => stats.delayed += 1,
            edt::Scheduled::Drop => {
                stats.dropped += 1;
                return Acted::Drop;
            }
        }
    }
    if s.hook != Hook::PodEgress
        && fault.duplicate_ppm != 0
        && chance(rand(), fault.duplicate_ppm)
        && duplicate::duplicate(ctx, s.hook == Hook::HostIngress)
    {
        stats.duplicated += 1;
    }
    Acted::Kept
}

/// Traffic a fault leaves alone unless asked: DNS, NATS's client port, IPv6 neighbour discovery.
#[inline(always)]
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
        // ICMPv6 only: IPv4's types 133-137 are no neighbour discovery.
        proto::ICMP => {
            pkt.ipv6 && pkt.icmp_type >= ICMPV6_ND_FIRST && pkt.icmp_type <= ICMPV6_ND_LAST
        }
        _ => false,
    }
}

#[inline(always)]
fn drops(fault: &FaultParams, pkt: &Packet, flow: &Flow, direction: Direction, now: u64) -> bool {
    if fault.flags & FAULT_PARTITION != 0 {
        return true;
    }
    if fault.flags & FAULT_PARTITION_CONNECTIONS != 0
        && conntrack::opens_connection(pkt, flow, direction, now)
    {
        return true;
    }
    fault.loss_ppm != 0 && chance(rand(), fault.loss_ppm)
}
