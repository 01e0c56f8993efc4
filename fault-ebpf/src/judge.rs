//! Judging a packet for the local pod in one [`Role`]: as the target of faults (their own
//! view) or as their peer (the mirrored view). Either way the packet is seen from the fault's
//! **target** ([`Flow`]): in the peer role the fault's direction is the opposite of the local
//! pod's, the target is the remote end, and the rule's port is the local pod's own.
use aya_ebpf::programs::TcContext;
use fault_common::{
    Direction, MAX_FAULTS_PER_RULE, RULE_VIRTUAL, Role, TARGET_TRACK_CONNECTIONS, TargetValue,
};

use crate::{
    act::{self, Acted},
    conntrack,
    hook::Hook,
    lookup,
    parse::Flow,
    scratch::Scratch,
};

/// What judging a packet in one role came to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// A fault dropped it.
    Drop,
    /// Faults matched it by its real addresses and left it (maybe changed): it is evaluated.
    Evaluated,
    /// No fault matched, or only faults naming a virtual address (the packet's real
    /// destination is not known yet).
    Untouched,
}

/// Judges the packet in `s` for the local pod's policy `target` in `role`; `direction` is the
/// packets' direction relative to the local pod. `virtual_only`: the packet was evaluated by
/// its real addresses already (the sender's veth marked it); only a rule for a virtual
/// address acts. The target role is judged first: the peer role skips the faults that acted
/// there.
#[inline(always)]
pub fn judge(
    ctx: &TcContext,
    s: &mut Scratch,
    target: &TargetValue,
    direction: Direction,
    role: Role,
    virtual_only: bool,
) -> Judged {
    let fault_direction = match role {
        Role::Target => direction,
        Role::Peer => direction.opposite(),
    };
    s.flow = Flow::of(&s.pkt, fault_direction);
    s.direction = fault_direction;
    if target.flags & TARGET_TRACK_CONNECTIONS != 0 && s.hook != Hook::PodEgress {
        conntrack::record(&s.pkt, &s.flow, fault_direction);
    }
    let remote = match role {
        Role::Target => s.flow.peer,
        Role::Peer => s.flow.target,
    };
    let Some(rule) = lookup::rule(target, s.pkt.proto, s.flow.peer_port, &remote) else {
        return Judged::Untouched;
    };
    // A rule for a virtual address acts where the packet first carries it: the sender's veth
    // (on the uplink, a destination still virtual is one the veth saw untranslated), or the
    // receiver's for a reply translated back after the sender's veth judged it (`virtual_only`).
    let is_virtual = rule.flags & RULE_VIRTUAL != 0;
    if (virtual_only && !is_virtual) || (is_virtual && s.hook == Hook::Uplink) {
        return Judged::Untouched;
    }
    // Each fault of the rule, oldest first. Written out with constant indexes: older
    // verifiers (6.1) lose the bound of a loop index into the map value.
    let (count, slots) = (rule.count, rule.slots);
    macro_rules! run_slot {
        ($i:literal) => {
            if count > $i {
                let slot = slots[$i];
                // Once per hook: a fault in both roles' rules acted in the target role.
                if role == Role::Target || !s.ran(slot) {
                    match act::one(ctx, s, slot as u32) {
                        Acted::Drop => return Judged::Drop,
                        Acted::Kept if role == Role::Target => {
                            s.ran[$i] = slot;
                            s.ran_mask |= 1 << $i;
                        }
                        Acted::Kept | Acted::Skipped => {}
                    }
                }
            }
        };
    }
    run_slot!(0);
    run_slot!(1);
    run_slot!(2);
    run_slot!(3);
    run_slot!(4);
    run_slot!(5);
    run_slot!(6);
    run_slot!(7);
    const _: () = assert!(MAX_FAULTS_PER_RULE == 8, "run_slot! covers 8 slots");
    if count > 0 && !is_virtual {
        Judged::Evaluated
    } else {
        Judged::Untouched
    }
}
