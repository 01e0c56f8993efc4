//! The programs' source of randomness.

/// A uniform 32-bit random number (`bpf_get_prandom_u32`, a per-CPU PRNG; Linux >= 4.1).
#[inline(always)]
pub fn rand() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() }
}
