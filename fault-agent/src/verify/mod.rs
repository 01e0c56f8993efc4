//! `POST /v1/faults/{id}/verify`: probes sent from inside the pods' network namespaces show
//! whether an active fault does what its spec says ([`fault_api::Verification`]).
//!
//! - [`plan`]: which pairs to probe (at most [`plan::MAX_PAIRS`]) and a control address each;
//! - [`probe`]: ICMP echo, TCP SYN and UDP probes from a thread that entered the netns;
//! - [`expect`]: what the fault should do to them, and the binomial test of a loss;
//! - [`judge`]: a pair's measurement against the expectation.
//!
//! IPv4 only for now: a pod without an IPv4 address is not probed.
pub mod expect;
pub mod judge;
pub mod plan;
pub mod probe;

use std::{net::SocketAddrV4, time::Instant};

use fault_api::{Fault, Outcome, Verification, verify::Measured};

use crate::dataplane::Capabilities;

/// Echo requests per pair.
pub const ECHOES_PER_PAIR: u16 = 50;
/// Echo requests of a control probe.
pub const CONTROL_ECHOES: u16 = 3;

/// Probes every pair of `plan` (in parallel, one thread per pair) and judges them. Blocks for
/// about a second (more for a long delay): call it off the async runtime.
pub fn run(fault: &Fault, plan: &plan::Plan, caps: &Capabilities) -> Verification {
    let start = Instant::now();
    let linger = judge::linger(&fault.spec);
    let measured: Vec<anyhow::Result<(Measured, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .pairs
            .iter()
            .enumerate()
            .map(|(i, p)| s.spawn(move || measure(p, plan.port, i as u16, linger)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("probe thread panicked")))
            })
            .collect()
    });
    let mut packets = 0u64;
    let pairs: Vec<_> = plan
        .pairs
        .iter()
        .zip(measured)
        .map(|(p, m)| {
            if let Ok((_, sent)) = &m {
                packets += sent;
            }
            judge::pair(fault, p, plan.port, m.map(|(m, _)| m), caps)
        })
        .collect();
    let (outcome, reason) = judge::overall(&pairs);
    Verification {
        fault_id: fault.id.clone(),
        outcome,
        reason,
        pairs,
        probe_packets: packets,
        probe_mark: probe::PROBE_MARK,
        took_ms: start.elapsed().as_millis() as u64,
    }
}

/// The probes of one pair: echoes, a TCP SYN, one or two UDP datagrams, and the control
/// echoes; and how many packets they were.
fn measure(
    p: &plan::PairPlan,
    port: u16,
    index: u16,
    linger: std::time::Duration,
) -> anyhow::Result<(Measured, u64)> {
    let ident = (std::process::id() as u16) ^ index.wrapping_mul(0x9e37);
    probe::in_netns(&p.netns, || -> anyhow::Result<(Measured, u64)> {
        // UDP first: the peer's kernel answers it with an ICMP error, which its global ICMP
        // rate limit (`net.ipv4.icmp_msgs_burst`) may refuse once echo replies to every pair
        // have used the burst.
        let (udp, udp_sent) = probe::udp_answered(SocketAddrV4::new(p.to_ip, port))?;
        let tcp = probe::tcp_answered(SocketAddrV4::new(p.to_ip, port))?;
        let e = probe::echoes(p.to_ip, ident, ECHOES_PER_PAIR, linger)?;
        let control = match p.control {
            Some(c) => Some(probe::echoes(
                c,
                ident ^ 0x8000,
                CONTROL_ECHOES,
                judge::CONTROL_LINGER,
            )?),
            None => None,
        };
        let m = judge::measured(&e, tcp, udp, control.as_ref());
        let sent = judge::packets(&m) - 1 + udp_sent;
        Ok((m, sent))
    })?
}

/// Whether the fault is verified as a whole.
pub fn is_verified(v: &Verification) -> bool {
    v.outcome == Outcome::Verified
}
