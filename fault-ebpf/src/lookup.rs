//! Finding a packet's local pod and the rules that apply (see `fault_common` for the tables).
use aya_ebpf::maps::lpm_trie::Key;
use fault_common::{
    CONTROL_KILL_SWITCH, RULE_FULL_BITS, RuleKey, RuleValue, TARGET_HAS_PORT_RULES,
    TARGET_HAS_PROTO_RULES, TargetKey, TargetValue, proto,
};

use crate::maps::{FL_CONTROL, FL_GATE, FL_REMOTE, FL_RULES, FL_TARGETS};

/// Whether the kill switch is engaged (`fault_common::MAP_CONTROL`): every packet passes.
#[inline(always)]
pub fn kill_switch_engaged() -> bool {
    FL_CONTROL.get(CONTROL_KILL_SWITCH).is_some_and(|v| *v != 0)
}

/// The gate bits of an address with gate entry `index` (`gate_index`): one array lookup,
/// which the verifier inlines. A zero bit is certain; a set bit only means [`target`] must
/// look.
#[inline(always)]
pub fn gate(index: u32) -> u8 {
    FL_GATE.get(index).copied().unwrap_or(0)
}

/// The local pod's policy for the key's direction and role, or `None` when Faultline has
/// nothing for it (one hash lookup and out).
#[inline(always)]
pub fn target(key: &TargetKey) -> Option<&'static TargetValue> {
    // SAFETY: values are plain integers; an entry replaced concurrently is read whole or not
    // at all (hash map values are updated in place only by the agent, atomically per entry).
    unsafe { FL_TARGETS.get(key) }
}

/// Whether `addr` is a pod on another node, whose own agent judged what it sent.
#[inline(always)]
pub fn is_remote_pod(addr: &[u8; 16]) -> bool {
    // SAFETY: a read of a plain byte; only its presence matters.
    unsafe { FL_REMOTE.get(addr).is_some() }
}

/// The faults for (protocol, peer port, remote address) in the local pod's policy: the table
/// for the exact port first, then the protocol's any-port table, then the any-protocol table.
/// The agent writes each table as a closure of the less specific ones, so the first hit is
/// complete.
#[inline(always)]
pub fn rule(
    target: &TargetValue,
    proto: u8,
    peer_port: [u8; 2],
    remote: &[u8; 16],
) -> Option<&'static RuleValue> {
    let mut key = Key::new(
        RULE_FULL_BITS,
        RuleKey {
            policy: target.policy.to_be_bytes(),
            proto,
            _pad: 0,
            port: peer_port,
            peer: *remote,
        },
    );
    if target.flags & TARGET_HAS_PORT_RULES != 0 && peer_port != [0, 0] {
        if let Some(rule) = FL_RULES.get(&key) {
            return Some(rule);
        }
    }
    if target.flags & TARGET_HAS_PROTO_RULES != 0 && proto != proto::ANY {
        key.data.port = [0, 0];
        if let Some(rule) = FL_RULES.get(&key) {
            return Some(rule);
        }
    }
    key.data.port = [0, 0];
    key.data.proto = proto::ANY;
    FL_RULES.get(&key)
}
