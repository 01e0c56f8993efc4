//! What the program knows about the packet it is classifying, kept in a per-CPU map rather
//! than on the 512-byte stack (a program runs to completion on one CPU, so one slot per CPU
//! is enough).
use crate::{
    hook::Hook,
    parse::{Flow, Packet},
};
use fault_common::Direction;

/// The packet, seen from the target of the faults being judged, and where the program runs.
#[derive(Clone, Copy)]
pub struct Scratch {
    pub pkt: Packet,
    pub flow: Flow,
    pub hook: Hook,
    pub direction: Direction,
    /// `CLOCK_BOOTTIME` ns when classification began (deadlines are checked against it).
    pub now: u64,
}
