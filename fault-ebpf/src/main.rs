//! Faultline's datapath: two TC classifier programs for the host-side veth of every pod.
//!
//! Read top to bottom: [`fl_host_ingress`] / [`fl_host_egress`] are thin entries; [`classify`]
//! parses the packet ([`parse`]), finds the target pod and its rules ([`lookup`]), and asks
//! each matching fault what to do ([`act`]). A packet that matches nothing leaves with
//! [`verdict::NEXT`] (`TCX_NEXT` / `TC_ACT_UNSPEC`), untouched, so a CNI's own programs still
//! run after ours; so does a packet that matched and survived.
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
mod lookup;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod scratch;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, macros::classifier, programs::TcContext};
    use fault_common::{Direction, MAX_FAULTS_PER_RULE, TARGET_TRACK_CONNECTIONS, verdict};

    use crate::{
        act::{self, Hook},
        conntrack, duplicate, lookup,
        maps::FL_SCRATCH,
        parse,
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

    #[inline(always)]
    fn classify(ctx: &TcContext, hook: Hook, direction: Direction) -> i32 {
        // A duplicate we made is on its second pass: let it go as it is.
        if duplicate::is_copy(ctx) {
            return verdict::NEXT;
        }
        // The no-fault path: the target's address into a key, one array lookup (the gate), out.
        if parse::pull_headers(ctx).is_none() {
            return verdict::NEXT;
        }
        let Some(addr) = parse::target_addr(ctx, direction) else {
            return verdict::NEXT;
        };
        if !lookup::gated(addr.gate_index(), direction) {
            return verdict::NEXT;
        }
        let Some(target) = lookup::target(&addr.key(direction)) else {
            return verdict::NEXT;
        };
        // A fault may apply: parse the rest, into this CPU's scratch space.
        let Some(s) = FL_SCRATCH.get_ptr_mut(0) else {
            return verdict::NEXT;
        };
        // SAFETY: this CPU's slot; nothing else uses it while this program runs.
        let s = unsafe { &mut *s };
        if parse::packet(ctx, &mut s.pkt).is_none() {
            return verdict::NEXT;
        }
        parse::l4(ctx, &mut s.pkt);
        s.flow = parse::Flow::of(&s.pkt, direction);
        s.hook = hook;
        s.direction = direction;
        s.now = unsafe { bpf_ktime_get_boot_ns() };
        if target.flags & TARGET_TRACK_CONNECTIONS != 0 && hook != Hook::PodEgress {
            conntrack::record(&s.pkt, &s.flow, direction);
        }
        let Some(rule) = lookup::rule(target, s.pkt.proto, s.flow.peer_port, &s.flow.peer) else {
            return verdict::NEXT;
        };
        // Each fault of the rule, oldest first. Written out with constant indexes: older
        // verifiers (6.1) lose the bound of a loop index into the map value.
        let (count, slots) = (rule.count, rule.slots);
        macro_rules! run_slot {
            ($i:literal) => {
                if count > $i && act::one(ctx, s, slots[$i] as u32) == verdict::DROP {
                    return verdict::DROP;
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
        verdict::NEXT
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
