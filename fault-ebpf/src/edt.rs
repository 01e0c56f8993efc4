//! Delay, jitter and rate limits with the Earliest Departure Time model: the program sets the
//! packet's departure time (`skb->tstamp`, `CLOCK_MONOTONIC` ns) and an `fq` qdisc on the
//! device holds the packet until then (fq: Linux >= 4.20 for EDT; on a device without fq the
//! time is ignored, which is why the agent installs fq where it needs it).
//!
//! - rate: a per (fault, target, direction) horizon: a packet leaves no earlier than the
//!   previous one plus its own transmission time at the rate (`len * 1e9 / rate` ns); a packet
//!   that would wait more than [`RATE_MAX_BACKLOG_NS`] behind the others is dropped instead,
//!   as a token bucket filter with 100 ms of latency would (tc-tbf `latency 100ms`);
//! - delay: added on top, plus a uniform jitter in `[-jitter, +jitter]` per packet.
//!
//! No reordering: a packet whose jittered time is earlier than its predecessor's (same fault,
//! target and direction) gets its predecessor's time instead ([`in_order`]), since `fq` would
//! send the earlier time first. At packet gaps smaller than the jitter the spread narrows
//! (netem would reorder instead).
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use fault_common::{Direction, FaultParams, RateKey, RateState};

use crate::{maps::FL_RATE, rand::rand};

/// Longest wait a rate limit queues a packet for (ns); beyond, the packet is dropped.
pub const RATE_MAX_BACKLOG_NS: u64 = 100_000_000;

/// What [`schedule`] did.
#[derive(PartialEq, Eq)]
pub enum Scheduled {
    /// The fault has no delay and no rate.
    Untouched,
    /// The departure time is set.
    Delayed,
    /// Over the rate limit's backlog: drop.
    Drop,
}

/// Sets the departure time of the packet for `fault`.
#[inline(always)]
pub fn schedule(
    ctx: &TcContext,
    fault: &FaultParams,
    slot: u16,
    target: &[u8; 16],
    direction: Direction,
) -> Scheduled {
    if fault.delay_ns == 0 && fault.rate_bytes_per_sec == 0 {
        return Scheduled::Untouched;
    }
    let skb = ctx.skb.skb;
    let now = unsafe { bpf_ktime_get_ns() };
    let current = unsafe { (*skb).tstamp };
    let mut t = if current > now { current } else { now };
    let key = RateKey {
        addr: *target,
        slot,
        direction: direction as u8,
        _pad: [0; 5],
    };
    // The horizon (rate) and the last departure (jitter) of this fault, target and direction.
    let keeps_state = fault.rate_bytes_per_sec != 0 || fault.jitter_ns != 0;
    let prev = if keeps_state {
        FL_RATE
            .get_ptr_mut(&key)
            .map_or(RateState::default(), |s| unsafe { *s })
    } else {
        RateState::default()
    };
    let mut state = prev;
    if fault.rate_bytes_per_sec != 0 {
        if prev.next_ns > t {
            t = prev.next_ns;
        }
        if t - now > RATE_MAX_BACKLOG_NS {
            return Scheduled::Drop;
        }
        let len = ctx.len() as u64;
        state.next_ns = t + len * 1_000_000_000 / fault.rate_bytes_per_sec;
    }
    if fault.delay_ns != 0 {
        t += fault.delay_ns;
        if fault.jitter_ns != 0 {
            let span = 2 * fault.jitter_ns + 1;
            let offset = ((rand() as u64) * span) >> 32;
            t = in_order(t + offset - fault.jitter_ns, prev.last_ns, fault.jitter_ns);
            state.last_ns = t;
        }
    }
    if keeps_state && state != prev {
        let _ = FL_RATE.insert(&key, &state, 0);
    }
    unsafe { (*skb).tstamp = t };
    Scheduled::Delayed
}

/// Departure time `t` moved to `last` (the previous packet's of the same fault, target and
/// direction) when it is earlier: `fq` queues a flow's packets by departure time (an rb-tree
/// per flow since Linux 5.5, "sch_fq: do not assume EDT packets are ordered"), so a jittered
/// time earlier than its predecessor's would reorder them. Two times of one fault differ by at
/// most `2 * jitter` (ns); a `last` further ahead is a stale entry (a fault that held the slot
/// before, with a longer delay) and is ignored.
#[inline(always)]
fn in_order(t: u64, last: u64, jitter: u64) -> u64 {
    if last > t && last - t <= 2 * jitter {
        last
    } else {
        t
    }
}
