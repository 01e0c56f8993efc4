//! Payload corruption: one random bit of one random 16-bit word of the L4 payload is flipped,
//! and the L4 checksum is kept consistent with it (`bpf_l4_csum_replace`, which leaves a
//! checksum still to be completed by offload alone). So the receiver's stack accepts the
//! packet and the **application receives the flipped bit**. netem differs: it flips a bit
//! anywhere in the frame after completing the checksum, so the receiver's stack usually drops
//! the packet on a checksum error and the application sees a loss instead.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_RECOMPUTE_CSUM},
    programs::TcContext,
};
use fault_common::proto;

use crate::{parse::Packet, rand::rand};

/// Size argument of `bpf_l4_csum_replace` for a 16-bit change (low bits of `flags`).
const CSUM_SIZE_16: u64 = 2;

/// Flips one payload bit. `false` when the packet has no payload word or no L4 checksum to
/// keep valid (not TCP, UDP or ICMP), or the skb could not be written.
#[inline(always)]
pub fn payload(ctx: &TcContext, pkt: &Packet) -> bool {
    if pkt.csum_off == 0 || pkt.end_off < pkt.payload_off + 2 {
        return false;
    }
    let words = (pkt.end_off - pkt.payload_off) / 2;
    let r = rand();
    // Even offsets from the L4 header keep the word aligned with the checksum's 16-bit sums.
    let Some(word) = ((r >> 4) as usize).checked_rem(words) else {
        return false;
    };
    let off = pkt.payload_off + word * 2;
    let Ok(old) = ctx.load::<[u8; 2]>(off) else {
        return false;
    };
    let old = u16::from_ne_bytes(old);
    let new = old ^ (1u16 << (r & 15));
    if ctx
        .store(off, &new.to_ne_bytes(), BPF_F_RECOMPUTE_CSUM as u64)
        .is_err()
    {
        return false;
    }
    let mut flags = CSUM_SIZE_16;
    if pkt.proto == proto::UDP {
        // A zero UDP checksum (IPv4: "none") stays zero.
        flags |= BPF_F_MARK_MANGLED_0 as u64;
    }
    ctx.l4_csum_replace(pkt.csum_off, old as u64, new as u64, flags)
        .is_ok()
}
