//! Faultline's datapath: TC classifier programs for the host-side veth of every pod (and the
//! pod's own interface, for departure times).
//!
//! Read top to bottom: [`fl_host_ingress`] / [`fl_host_egress`] / [`fl_pod_egress`] are thin
//! entries; [`classify`] finds the local pod's address ([`parse`]) and its policies in both
//! roles ([`lookup`]: as the target of faults, and as their peer), parses the rest, and
//! [`judge`]s the packet in each role, where each matching fault says what to do ([`act`]).
//! A packet that matches nothing leaves with [`verdict::NEXT`] (`TCX_NEXT` /
//! `TC_ACT_UNSPEC`), untouched, so a CNI's own programs still run after ours; so does a packet
//! that matched and survived. The sender's host veth marks what it judged ([`mark`]) so the
//! receiver's does not judge it again.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod act;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod corrupt;
#[cfg(target_arch = "bpf")]
mod duplicate;
#[cfg(target_arch = "bpf")]
mod edt;
#[cfg(target_arch = "bpf")]
mod hook;
#[cfg(target_arch = "bpf")]
mod judge;
#[cfg(target_arch = "bpf")]
mod lookup;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod mark;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod rand;
#[cfg(target_arch = "bpf")]
mod scratch;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, macros::classifier, programs::TcContext};
    use fault_common::{
        Direction, Role, TARGET_HAS_VIRTUAL_RULES, gate_bit, gate_bits_of, verdict,
    };

    use crate::{
        duplicate,
        hook::Hook,
        judge::{Judged, judge},
        lookup,
        maps::FL_SCRATCH,
        mark, parse,
        scratch::Scratch,
    };

    /// tc ingress of a pod's host-side veth: what the pod sends, i.e. its **egress**.
    #[classifier]
    pub fn fl_host_ingress(ctx: TcContext) -> i32 {
        classify(&ctx, Hook::HostIngress, Direction::Egress)
    }

    /// tc egress of a pod's host-side veth: what the pod receives, i.e. its **ingress**.
    #[classifier]
    pub fn fl_host_egress(ctx: TcContext) -> i32 {
        classify(&ctx, Hook::HostEgress, Direction::Ingress)
    }

    /// tc egress of the pod's own interface: departure times of what the pod sends.
    #[classifier]
    pub fn fl_pod_egress(ctx: TcContext) -> i32 {
        classify(&ctx, Hook::PodEgress, Direction::Egress)
    }

    /// tc egress of a node uplink: what local pods send to other nodes, after the node's NAT.
    #[classifier]
    pub fn fl_uplink_egress(ctx: TcContext) -> i32 {
        classify(&ctx, Hook::Uplink, Direction::Egress)
    }

    /// `direction`: of the packets relative to the local pod, whose veth `hook` is on.
    #[inline(always)]
    fn classify(ctx: &TcContext, hook: Hook, direction: Direction) -> i32 {
        // A duplicate we made is on its second pass: let it go as it is.
        if duplicate::is_copy(ctx, hook) {
            return verdict::NEXT;
        }
        // The sender's veth on this node judged it with its real addresses: not twice. Only
        // faults naming a virtual address remain, on the receiver's veth: a reply from a
        // Service's backend arrives from the Service's address (translated after the sender).
        let judged = matches!(hook, Hook::HostEgress | Hook::Uplink) && mark::take_evaluated(ctx);
        if judged && hook == Hook::Uplink {
            return verdict::NEXT;
        }
        // The no-fault path: the local pod's address, one array lookup (the gate), out.
        if parse::pull_headers(ctx).is_none() {
            return verdict::NEXT;
        }
        let Some(addr) = parse::local_addr(ctx, direction) else {
            return verdict::NEXT;
        };
        let gate = lookup::gate(addr.gate_index());
        if gate & gate_bits_of(direction as u8) == 0 {
            return verdict::NEXT;
        }
        let in_role = |role: Role| {
            if gate & gate_bit(direction as u8, role as u8) == 0 {
                return None;
            }
            lookup::target(&addr.key(direction, role))
        };
        let (as_target, as_peer) = if judged {
            let virtuals =
                in_role(Role::Target).filter(|t| t.flags & TARGET_HAS_VIRTUAL_RULES != 0);
            if virtuals.is_none() {
                return verdict::NEXT;
            }
            (virtuals, None)
        } else {
            (in_role(Role::Target), in_role(Role::Peer))
        };
        // A fault may apply: the rest is parsed once, into this CPU's scratch space, by the
        // first role found (the two are not tested together: the verifier refuses the OR of
        // two map value pointers the compiler would make of it).
        let mut scratch: Option<&mut Scratch> = None;
        let mut evaluated = false;
        macro_rules! judge_as {
            ($policy:expr, $role:expr) => {
                if let Some(policy) = $policy {
                    if scratch.is_none() {
                        scratch = prepare(ctx, hook);
                    }
                    let Some(s) = scratch.as_deref_mut() else {
                        return verdict::NEXT;
                    };
                    // Sent by a pod on another node: that node's agent judged it.
                    if hook == Hook::HostEgress && lookup::is_remote_pod(&s.pkt.src) {
                        return verdict::NEXT;
                    }
                    match judge(ctx, s, policy, direction, $role, judged) {
                        Judged::Drop => return verdict::DROP,
                        Judged::Evaluated => evaluated = true,
                        Judged::Untouched => {}
                    }
                }
            };
        }
        // Both roles, written out (no loop for older verifiers to unroll).
        judge_as!(as_target, Role::Target);
        judge_as!(as_peer, Role::Peer);
        if evaluated && hook.is_sender_side() {
            mark::set_evaluated(ctx);
        }
        verdict::NEXT
    }

    /// This CPU's scratch space with the packet parsed, or `None` for what Faultline does not
    /// act on: everything while the kill switch is engaged, truncated headers.
    #[inline(always)]
    fn prepare(ctx: &TcContext, hook: Hook) -> Option<&'static mut Scratch> {
        // The kill switch: every packet passes, whatever the maps hold.
        if lookup::kill_switch_engaged() {
            return None;
        }
        let s = FL_SCRATCH.get_ptr_mut(0)?;
        // SAFETY: this CPU's slot; nothing else uses it while this program runs.
        let s = unsafe { &mut *s };
        parse::packet(ctx, &mut s.pkt)?;
        parse::l4(ctx, &mut s.pkt);
        s.hook = hook;
        s.ran_mask = 0;
        s.now = unsafe { bpf_ktime_get_boot_ns() };
        Some(s)
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel requires a GPL-compatible license for some of the helpers used here.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("fault-ebpf is built for bpfel-unknown-none by fault-agent's build.rs");
}
