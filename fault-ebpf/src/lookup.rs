//! Finding a packet's target pod and the rules that apply (see `fault_common` for the tables).
use aya_ebpf::maps::lpm_trie::Key;
use fault_common::{
    Direction, RULE_FULL_BITS, RuleKey, RuleValue, TARGET_HAS_PORT_RULES, TARGET_HAS_PROTO_RULES,
    TargetKey, TargetValue, gate_bit, proto,
};

use crate::maps::{FL_GATE, FL_RULES, FL_TARGETS};

/// Whether a target may exist for an address with gate entry `index` (`gate_index`) and
/// `direction`: one array lookup, which the verifier inlines. `false` is certain; `true` only
/// means [`target`] must look.
#[inline(always)]
pub fn gated(index: u32, direction: Direction) -> bool {
    FL_GATE
        .get(index)
        .is_some_and(|bits| bits & gate_bit(direction as u8) != 0)
}

/// The target pod's policy, or `None` when Faultline has nothing for this address and
/// direction (the common case: one hash lookup and out).
#[inline(always)]
pub fn target(key: &TargetKey) -> Option<&'static TargetValue> {
    // SAFETY: values are plain integers; an entry replaced concurrently is read whole or not
    // at all (hash map values are updated in place only by the agent, atomically per entry).
    unsafe { FL_TARGETS.get(key) }
}

/// The faults for (protocol, peer port, peer address) in the target's policy: the table for the
/// exact port first, then the protocol's any-port table, then the any-protocol table. The agent
/// writes each table as a closure of the less specific ones, so the first hit is complete.
#[inline(always)]
pub fn rule(
    target: &TargetValue,
    proto: u8,
    peer_port: [u8; 2],
    peer: &[u8; 16],
) -> Option<&'static RuleValue> {
    let mut key = Key::new(
        RULE_FULL_BITS,
        RuleKey {
            policy: target.policy.to_be_bytes(),
            proto,
            _pad: 0,
            port: peer_port,
            peer: *peer,
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
