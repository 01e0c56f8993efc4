//! A pair's measurement against what the fault should do: pure, so every rule is unit-tested.
use std::time::Duration;

use fault_api::{
    Fault, FaultSpec, Outcome,
    verify::{Measured, PairReport},
};

use super::{expect, plan::PairPlan, probe::Echoes};
use crate::dataplane::Capabilities;

/// How long the control echoes wait for their replies.
pub const CONTROL_LINGER: Duration = Duration::from_millis(300);

/// How long the echoes wait for replies after the last request: 300 ms, plus twice the
/// fault's delay and jitter (capped at 2 s in all).
pub fn linger(spec: &FaultSpec) -> Duration {
    let added = spec.delay.map_or(Duration::ZERO, |d| d.get())
        + spec.jitter.map_or(Duration::ZERO, |d| d.get());
    (Duration::from_millis(300) + added * 2).min(Duration::from_secs(2))
}

/// The measurement of a pair from its probes.
pub fn measured(e: &Echoes, tcp: bool, udp: bool, control: Option<&Echoes>) -> Measured {
    let lost = e.sent.saturating_sub(e.received);
    Measured {
        echo_sent: e.sent,
        echo_received: e.received,
        loss_percent: if e.sent == 0 {
            0.0
        } else {
            100.0 * f64::from(lost) / f64::from(e.sent)
        },
        min_rtt_ms: e.min_rtt.map(|d| d.as_secs_f64() * 1000.0),
        tcp_answered: Some(tcp),
        udp_answered: Some(udp),
        reachable: e.received > 0 || tcp || udp,
        control: control.map(|c| format!("{}/{}", c.received, c.sent)),
    }
}

/// Probe packets a measurement sent, with one UDP datagram: the echoes, the SYN, the datagram
/// and the control echoes.
pub fn packets(m: &Measured) -> u64 {
    let control = m
        .control
        .as_deref()
        .and_then(|c| c.split_once('/'))
        .and_then(|(_, sent)| sent.parse::<u64>().ok())
        .unwrap_or(0);
    u64::from(m.echo_sent) + 2 + control
}

/// Whether the control probe got through (at least one reply).
fn control_ok(m: &Measured) -> Option<bool> {
    let (got, _) = m.control.as_deref()?.split_once('/')?;
    Some(got.parse::<u32>().is_ok_and(|n| n > 0))
}

/// The verdicts of each check that applies, as (passed, why).
fn checks(spec: &FaultSpec, port: u16, m: &Measured, caps: &Capabilities) -> Vec<(bool, String)> {
    let covered = expect::covered(spec, port);
    let crossings = expect::crossings(spec.direction);
    let mut out = vec![];
    if spec.partition.is_some() {
        out.push(partition_check(covered, m));
    }
    if let Some(p) = spec.loss_percent {
        out.push(loss_check(p.value() / 100.0, crossings, covered, m));
    }
    if let Some(d) = spec.delay {
        let min = expect::min_added_rtt_ms(d.get().as_secs_f64() * 1000.0, crossings);
        out.push(delay_check(min, covered, m, caps));
    }
    for (set, what) in [
        (spec.corrupt_percent.is_some(), "corrupt"),
        (spec.duplicate_percent.is_some(), "duplicate"),
        (spec.rate.is_some(), "rate"),
    ] {
        if set {
            out.push((false, format!("{what} is not verified by probes")));
        }
    }
    out
}

fn partition_check(c: expect::Covered, m: &Measured) -> (bool, String) {
    let mut through = vec![];
    if c.icmp && m.echo_received > 0 {
        through.push(format!("{} echo replies", m.echo_received));
    }
    if c.tcp && m.tcp_answered == Some(true) {
        through.push("tcp answered".into());
    }
    if c.udp && m.udp_answered == Some(true) {
        through.push("udp answered".into());
    }
    if !through.is_empty() {
        return (false, format!("reachable: {}", through.join(", ")));
    }
    match control_ok(m) {
        Some(true) => (true, "unreachable, control reachable".into()),
        Some(false) => (
            false,
            "unreachable, but the control probe failed too: the pod has no working network".into(),
        ),
        None => (
            false,
            "unreachable, but no control address outside the fault: cannot tell a partition from a pod without network".into(),
        ),
    }
}

fn loss_check(p: f64, crossings: u32, c: expect::Covered, m: &Measured) -> (bool, String) {
    if !c.icmp {
        return (
            false,
            "loss is measured with ICMP echo, which this fault does not cover".into(),
        );
    }
    let q = expect::round_trip_loss(p, crossings);
    let lost = m.echo_sent - m.echo_received;
    let ok = expect::loss_consistent(m.echo_sent, lost, q);
    let why = format!(
        "echo loss {lost}/{} ({:.0}%) {} {:.0}% (binomial test, alpha {})",
        m.echo_sent,
        m.loss_percent,
        if ok {
            "consistent with"
        } else {
            "inconsistent with"
        },
        q * 100.0,
        expect::LOSS_ALPHA
    );
    (ok, why)
}

fn delay_check(
    min_ms: f64,
    c: expect::Covered,
    m: &Measured,
    caps: &Capabilities,
) -> (bool, String) {
    if !caps.sch_fq {
        return (
            false,
            "cannot verify: delay not enforced on this kernel".into(),
        );
    }
    if !c.icmp {
        return (
            false,
            "delay is measured with ICMP echo, which this fault does not cover".into(),
        );
    }
    match m.min_rtt_ms {
        Some(rtt) if rtt >= min_ms => (true, format!("min rtt {rtt:.1} ms >= {min_ms:.0} ms")),
        Some(rtt) => (false, format!("min rtt {rtt:.1} ms < {min_ms:.0} ms")),
        None => (false, "no echo reply to time".into()),
    }
}

/// The report of one pair; a probe error makes it `not verified`.
pub fn pair(
    fault: &Fault,
    p: &PairPlan,
    port: u16,
    m: anyhow::Result<Measured>,
    caps: &Capabilities,
) -> PairReport {
    let spec = &fault.spec;
    let covered = expect::covered(spec, port);
    let q = spec
        .loss_percent
        .map(|l| expect::round_trip_loss(l.value() / 100.0, expect::crossings(spec.direction)));
    let (measured, outcome, reason) = match m {
        Err(e) => (
            Measured::default(),
            Outcome::NotVerified,
            format!("probes failed: {e:#}"),
        ),
        Ok(m) => {
            let checks = checks(spec, port, &m, caps);
            let ok = !checks.is_empty() && checks.iter().all(|(ok, _)| *ok);
            let why: Vec<String> = checks.into_iter().map(|(_, w)| w).collect();
            let outcome = if ok {
                Outcome::Verified
            } else {
                Outcome::NotVerified
            };
            (m, outcome, why.join("; "))
        }
    };
    PairReport {
        from: p.from.clone(),
        from_ip: p.from_ip.into(),
        to_ip: p.to_ip.into(),
        control_ip: p.control.map(Into::into),
        port,
        expected: expect::describe(spec, covered, q),
        measured,
        outcome,
        reason,
    }
}

/// Verified when there are pairs and every one is; otherwise why not.
pub fn overall(pairs: &[PairReport]) -> (Outcome, Option<String>) {
    if pairs.is_empty() {
        return (
            Outcome::NotVerified,
            Some("no pair to probe: no local target (or peer, for ingress) with an IPv4 address and a network namespace, or no peer to reach".into()),
        );
    }
    let bad = pairs
        .iter()
        .filter(|p| p.outcome != Outcome::Verified)
        .count();
    if bad == 0 {
        (Outcome::Verified, None)
    } else {
        (
            Outcome::NotVerified,
            Some(format!("{bad} of {} pairs not verified", pairs.len())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> FaultSpec {
        FaultSpec::from_json(json.as_bytes()).expect("valid spec")
    }

    fn m(sent: u32, got: u32, tcp: bool, udp: bool, control: Option<(u32, u32)>) -> Measured {
        let e = Echoes {
            sent,
            received: got,
            min_rtt: (got > 0).then(|| Duration::from_millis(1)),
        };
        let c = control.map(|(r, s)| Echoes {
            sent: s,
            received: r,
            min_rtt: None,
        });
        measured(&e, tcp, udp, c.as_ref())
    }

    fn caps(sch_fq: bool) -> Capabilities {
        Capabilities {
            sch_fq,
            ..Capabilities::probe(true)
        }
    }

    fn verdict(spec: &FaultSpec, m: &Measured, fq: bool) -> bool {
        let c = checks(spec, 9, m, &caps(fq));
        !c.is_empty() && c.iter().all(|(ok, _)| *ok)
    }

    #[test]
    fn a_partition_needs_silence_and_a_working_control() {
        let s = spec(r#"{"namespace":"a","partition":true}"#);
        assert!(verdict(&s, &m(50, 0, false, false, Some((3, 3))), true));
        // Silence because the pod has no network at all: not verified.
        assert!(!verdict(&s, &m(50, 0, false, false, Some((0, 3))), true));
        assert!(!verdict(&s, &m(50, 0, false, false, None), true));
        // Anything through: not verified.
        assert!(!verdict(&s, &m(50, 0, true, false, Some((3, 3))), true));
        assert!(!verdict(&s, &m(50, 2, false, false, Some((3, 3))), true));
        // A TCP-only partition lets echoes and UDP through.
        let tcp = spec(r#"{"namespace":"a","partition":true,"protocol":"tcp"}"#);
        assert!(verdict(&tcp, &m(50, 50, false, true, Some((3, 3))), true));
    }

    #[test]
    fn loss_is_judged_by_the_binomial_test() {
        let s = spec(r#"{"namespace":"a","loss_percent":40}"#);
        assert!(verdict(&s, &m(50, 30, true, true, Some((3, 3))), true));
        assert!(!verdict(&s, &m(50, 50, true, true, Some((3, 3))), true));
        assert!(!verdict(&s, &m(50, 0, false, false, Some((0, 3))), true));
        // Both ways: 1 - 0.6^2 = 64% round-trip loss.
        let both = spec(r#"{"namespace":"a","loss_percent":40,"direction":"both"}"#);
        assert!(verdict(&both, &m(50, 18, true, true, None), true));
        assert!(!verdict(&both, &m(50, 30, true, true, None), true));
    }

    #[test]
    fn delay_needs_fq_and_the_added_rtt() {
        let s = spec(r#"{"namespace":"a","delay":"50ms"}"#);
        let mut slow = m(50, 50, true, true, None);
        slow.min_rtt_ms = Some(51.0);
        assert!(verdict(&s, &slow, true));
        assert!(!verdict(&s, &slow, false));
        let fast = m(50, 50, true, true, None);
        assert!(!verdict(&s, &fast, true));
        let c = checks(&s, 9, &slow, &caps(false));
        assert_eq!(c[0].1, "cannot verify: delay not enforced on this kernel");
    }

    #[test]
    fn unmeasured_kinds_are_said_plainly() {
        let s = spec(r#"{"namespace":"a","corrupt_percent":10}"#);
        let c = checks(&s, 9, &m(50, 45, true, true, None), &caps(true));
        assert_eq!(c, vec![(false, "corrupt is not verified by probes".into())]);
        assert_eq!(packets(&m(50, 45, true, true, Some((3, 3)))), 55);
        assert_eq!(
            linger(&spec(r#"{"namespace":"a","delay":"5s"}"#)),
            Duration::from_secs(2)
        );
    }
}
