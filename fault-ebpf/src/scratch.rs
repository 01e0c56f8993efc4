//! What the program knows about the packet it is classifying, kept in a per-CPU map rather
//! than on the 512-byte stack (a program runs to completion on one CPU, so one slot per CPU
//! is enough).
use crate::{
    hook::Hook,
    parse::{Flow, Packet},
};
use fault_common::{Direction, MAX_FAULTS_PER_RULE};

/// The packet, seen from the target of the faults being judged, and where the program runs.
#[derive(Clone, Copy)]
pub struct Scratch {
    pub pkt: Packet,
    pub flow: Flow,
    pub hook: Hook,
    pub direction: Direction,
    /// `CLOCK_BOOTTIME` ns when classification began (deadlines are checked against it).
    pub now: u64,
    /// The slots that acted in the target role (bit `i` of `ran_mask`: `ran[i]` is one), which
    /// the peer role skips: a fault in both directions among its own targets is in the rules
    /// of both roles of the sender (and of the receiver), and acts once.
    pub ran: [u16; MAX_FAULTS_PER_RULE],
    pub ran_mask: u8,
}

impl Scratch {
    /// Whether fault `slot` acted in the target role on this hook.
    #[inline(always)]
    pub fn ran(&self, slot: u16) -> bool {
        // Constant indexes: older verifiers lose the bound of a loop index into a map value.
        macro_rules! at {
            ($k:literal) => {
                self.ran_mask & (1 << $k) != 0 && self.ran[$k] == slot
            };
        }
        const _: () = assert!(MAX_FAULTS_PER_RULE == 8, "at! covers 8 slots");
        at!(0) || at!(1) || at!(2) || at!(3) || at!(4) || at!(5) || at!(6) || at!(7)
    }
}
