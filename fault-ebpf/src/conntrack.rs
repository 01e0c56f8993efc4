//! The state behind connection-aware partitions (see `fault_common::ct` for the semantics).
use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use fault_common::{
    Direction,
    ct::{CT_UDP_TIMEOUT_NS, CtKey, CtValue},
    proto,
};

use crate::{
    maps::FL_CT,
    parse::{Flow, Packet, TCP_ACK, TCP_SYN},
};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

#[inline(always)]
fn key(pkt: &Packet, flow: &Flow, direction: Direction) -> CtKey {
    CtKey {
        target: flow.target,
        peer: flow.peer,
        target_port: flow.target_port,
        peer_port: flow.peer_port,
        proto: pkt.proto,
        direction: direction as u8,
        _pad: [0; 2],
    }
}

/// Records that a UDP packet of this flow was seen going in `direction`.
#[inline(always)]
pub fn record(pkt: &Packet, flow: &Flow, direction: Direction) {
    if pkt.proto != proto::UDP {
        return;
    }
    let value = CtValue {
        last_seen_ns: unsafe { bpf_ktime_get_boot_ns() },
    };
    let _ = FL_CT.insert(&key(pkt, flow, direction), &value, 0);
}

/// Whether this packet, going in `direction`, opens a connection (rather than belonging to one
/// the other side opened).
#[inline(always)]
pub fn opens_connection(pkt: &Packet, flow: &Flow, direction: Direction, now: u64) -> bool {
    match pkt.proto {
        proto::TCP => pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        proto::ICMP => pkt.icmp_type == ICMP_ECHO_REQUEST || pkt.icmp_type == ICMPV6_ECHO_REQUEST,
        proto::UDP => {
            let reverse = direction.opposite();
            // SAFETY: a plain integer read; a concurrent update gives an old or new time.
            match unsafe { FL_CT.get(&key(pkt, flow, reverse)) } {
                Some(seen) => now.saturating_sub(seen.last_seen_ns) >= CT_UDP_TIMEOUT_NS,
                None => true,
            }
        }
        _ => true,
    }
}
