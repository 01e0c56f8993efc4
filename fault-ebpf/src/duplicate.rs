//! Duplication: `bpf_clone_redirect` sends a copy of the packet through the same device and
//! hook again (into the device's ingress for a packet seen on ingress, `BPF_F_INGRESS`; out of
//! its egress otherwise). The copy re-enters the hook marked with `DUPLICATE_MARK`, and the
//! program lets it through untouched: no loop, one copy. The copy keeps the departure time
//! already set, so it leaves right after the original; it leaves with mark 0, or with the
//! evaluated mark when it was made on the sender's host veth (like its original, it must not
//! be judged again on the receiver's).
use aya_ebpf::programs::TcContext;
use fault_common::DUPLICATE_MARK;

use crate::{hook::Hook, mark};

/// Whether this packet is a copy made by [`duplicate`]; resets its mark if so.
#[inline(always)]
pub fn is_copy(ctx: &TcContext, hook: Hook) -> bool {
    // SAFETY: `skb` points to the context the kernel passed; `mark` is readable by sched_cls.
    if unsafe { (*ctx.skb.skb).mark } != DUPLICATE_MARK {
        return false;
    }
    if hook.is_sender_side() {
        mark::set_only_evaluated(ctx);
    } else {
        ctx.set_mark(0);
    }
    true
}

/// `bpf_clone_redirect` flag: to the device's ingress.
const BPF_F_INGRESS: u64 = 1;

/// Sends one copy of the packet through the same hook of the same device.
#[inline(always)]
pub fn duplicate(ctx: &TcContext, ingress: bool) -> bool {
    let skb = ctx.skb.skb;
    let (mark, ifindex) = unsafe { ((*skb).mark, (*skb).ifindex) };
    ctx.set_mark(DUPLICATE_MARK);
    let ok = ctx
        .clone_redirect(ifindex, if ingress { BPF_F_INGRESS } else { 0 })
        .is_ok();
    ctx.set_mark(mark);
    ok
}
