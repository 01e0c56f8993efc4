//! The evaluated mark: a bit of `skb->mark` telling the program on the receiver's host veth
//! that the sender's host veth (same node) already applied the packet's faults with its real
//! addresses (see `fault_common::EVALUATED_MARK`). Set only on the host side, where the mark
//! survives forwarding and bridging; cleared again before the packet enters the pod (the
//! kernel would clear it there anyway, but a CNI program after ours on the same hook must not
//! see it).
use aya_ebpf::programs::TcContext;
use fault_common::EVALUATED_MARK;

/// The bit in use, set by the agent at load time (`fault_common::EVALUATED_MARK_GLOBAL`).
#[unsafe(no_mangle)]
static FL_EVALUATED_MARK: u32 = EVALUATED_MARK;

#[inline(always)]
fn bit() -> u32 {
    // SAFETY: a read of a global the loader may have rewritten; volatile so the compiler does
    // not fold in the default.
    unsafe { core::ptr::read_volatile(&FL_EVALUATED_MARK) }
}

#[inline(always)]
fn mark(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` points to the context the kernel passed; `mark` is readable by sched_cls.
    unsafe { (*ctx.skb.skb).mark }
}

/// Marks the packet as evaluated.
#[inline(always)]
pub fn set_evaluated(ctx: &TcContext) {
    ctx.set_mark(mark(ctx) | bit());
}

/// Whether the packet was marked as evaluated; clears the bit if so.
#[inline(always)]
pub fn take_evaluated(ctx: &TcContext) -> bool {
    let m = mark(ctx);
    let b = bit();
    if m & b == 0 {
        return false;
    }
    ctx.set_mark(m & !b);
    true
}

/// Sets the mark to exactly the evaluated bit (a duplicate made on the sender's hook, whose
/// original is evaluated there too).
#[inline(always)]
pub fn set_only_evaluated(ctx: &TcContext) {
    ctx.set_mark(bit());
}
