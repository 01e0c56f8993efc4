//! What a fault should do to the probes, and whether a measurement agrees: pure functions of
//! the spec, the kernel's capabilities and the counts measured.
use fault_api::{Direction, FaultSpec, Protocol};

/// Significance of the binomial test of a loss measurement: a correct fault is called
/// `not verified` by chance once in 1,000 verifications.
pub const LOSS_ALPHA: f64 = 0.001;

/// The probes a fault covers, given the probes' TCP/UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Covered {
    pub icmp: bool,
    pub tcp: bool,
    pub udp: bool,
}

/// Which probe kinds the fault acts on: its `protocol` (none = all) and `port` (ICMP has no
/// port, so a fault with a port never covers ICMP).
pub fn covered(spec: &FaultSpec, probe_port: u16) -> Covered {
    let proto = |p: Protocol| spec.protocol.is_none_or(|q| q == p);
    let port = spec.port.is_none_or(|p| p == probe_port);
    Covered {
        icmp: proto(Protocol::Icmp) && spec.port.is_none(),
        tcp: proto(Protocol::Tcp) && port,
        udp: proto(Protocol::Udp) && port,
    }
}

/// How many times an echo round trip crosses the faulted way: once for `egress` (the request
/// leaves the target) and `ingress` (the request, sent by the peer, enters the target), twice
/// for `both` (the reply crosses it too).
pub fn crossings(direction: Direction) -> u32 {
    match direction {
        Direction::Egress | Direction::Ingress => 1,
        Direction::Both => 2,
    }
}

/// The loss an echo round trip should see, as a fraction in [0, 1], for a per-packet loss
/// `p` (fraction) crossed `crossings` times.
pub fn round_trip_loss(p: f64, crossings: u32) -> f64 {
    1.0 - (1.0 - p).powi(crossings as i32)
}

/// P(X <= k) and P(X >= k) for X ~ Binomial(n, q), computed term by term in log space
/// (exact enough for n up to a few thousand).
pub fn binomial_tails(n: u32, k: u32, q: f64) -> (f64, f64) {
    let pmf = |i: u32| -> f64 {
        if q <= 0.0 {
            return if i == 0 { 1.0 } else { 0.0 };
        }
        if q >= 1.0 {
            return if i == n { 1.0 } else { 0.0 };
        }
        let ln_choose = ln_factorial(n) - ln_factorial(i) - ln_factorial(n - i);
        (ln_choose + f64::from(i) * q.ln() + f64::from(n - i) * (1.0 - q).ln()).exp()
    };
    let below: f64 = (0..=k.min(n)).map(pmf).sum();
    let above: f64 = (k.min(n)..=n).map(pmf).sum();
    (below.min(1.0), above.min(1.0))
}

fn ln_factorial(n: u32) -> f64 {
    (2..=n).map(|i| f64::from(i).ln()).sum()
}

/// Whether `lost` of `sent` echoes is consistent with an expected loss `q` (fraction): the
/// two-sided exact binomial test at [`LOSS_ALPHA`]. With 50 echoes and q = 0.3, 6 to 25
/// losses pass.
pub fn loss_consistent(sent: u32, lost: u32, q: f64) -> bool {
    let (below, above) = binomial_tails(sent, lost, q);
    below >= LOSS_ALPHA / 2.0 && above >= LOSS_ALPHA / 2.0
}

/// The smallest added round-trip time a delay `delay_ms` should cause, ms (once per crossing).
pub fn min_added_rtt_ms(delay_ms: f64, crossings: u32) -> f64 {
    delay_ms * f64::from(crossings)
}

/// What the fault should do to the probes, in words.
pub fn describe(spec: &FaultSpec, covered: Covered, q_loss: Option<f64>) -> String {
    let mut parts = vec![];
    let kinds = [
        (covered.icmp, "icmp"),
        (covered.tcp, "tcp"),
        (covered.udp, "udp"),
    ]
    .iter()
    .filter(|(c, _)| *c)
    .map(|(_, n)| *n)
    .collect::<Vec<_>>()
    .join("+");
    if let Some(mode) = spec.partition {
        parts.push(format!("{kinds} unreachable ({mode} partition)"));
    }
    if let Some(q) = q_loss {
        parts.push(format!("echo loss ~{:.0}%", q * 100.0));
    }
    if let Some(d) = spec.delay {
        let ms = d.get().as_secs_f64() * 1000.0;
        let min = min_added_rtt_ms(ms, crossings(spec.direction));
        parts.push(format!("echo rtt >= {min:.0} ms"));
    }
    for (set, what) in [
        (spec.corrupt_percent.is_some(), "corrupt"),
        (spec.duplicate_percent.is_some(), "duplicate"),
        (spec.rate.is_some(), "rate"),
        (spec.jitter.is_some(), "jitter"),
    ] {
        if set {
            parts.push(format!("{what}: not measured"));
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tails_sum_over_the_point() {
        let (b, a) = binomial_tails(50, 15, 0.3);
        let (b14, _) = binomial_tails(50, 14, 0.3);
        // P(X <= 15) + P(X >= 16) = 1, and P(X >= 15) = 1 - P(X <= 14).
        assert!((a - (1.0 - b14)).abs() < 1e-9, "{a} {b14}");
        assert!(b > 0.5 && a > 0.4, "{b} {a}");
    }

    #[test]
    fn loss_bounds_follow_the_sample() {
        // 30% of 50: the expected 15 passes, so do moderate deviations; none and all do not.
        assert!(loss_consistent(50, 15, 0.3));
        assert!(loss_consistent(50, 7, 0.3));
        assert!(loss_consistent(50, 25, 0.3));
        assert!(!loss_consistent(50, 0, 0.3));
        assert!(!loss_consistent(50, 50, 0.3));
        assert!(!loss_consistent(50, 35, 0.3));
        // A fixed tolerance would be wrong both ways: with 5 echoes, 3 losses of 30% pass.
        assert!(loss_consistent(5, 3, 0.3));
        // Certain outcomes: 100% loss must lose every echo.
        assert!(loss_consistent(50, 50, 1.0));
        assert!(!loss_consistent(50, 49, 1.0));
    }

    #[test]
    fn round_trips_cross_the_fault_once_or_twice() {
        assert_eq!(crossings(Direction::Egress), 1);
        assert_eq!(crossings(Direction::Ingress), 1);
        assert_eq!(crossings(Direction::Both), 2);
        assert!((round_trip_loss(0.5, 2) - 0.75).abs() < 1e-12);
        assert!((round_trip_loss(0.3, 1) - 0.3).abs() < 1e-12);
        assert_eq!(min_added_rtt_ms(20.0, 2), 40.0);
    }

    fn spec(json: &str) -> FaultSpec {
        FaultSpec::from_json(json.as_bytes()).expect("valid spec")
    }

    #[test]
    fn protocol_and_port_narrow_the_covered_probes() {
        let all = spec(r#"{"namespace":"a","partition":true}"#);
        assert_eq!(
            covered(&all, 9),
            Covered {
                icmp: true,
                tcp: true,
                udp: true
            }
        );
        let tcp = spec(r#"{"namespace":"a","partition":true,"protocol":"tcp"}"#);
        assert_eq!(
            covered(&tcp, 9),
            Covered {
                icmp: false,
                tcp: true,
                udp: false
            }
        );
        let port = spec(r#"{"namespace":"a","partition":true,"port":8000}"#);
        let c = covered(&port, 8000);
        assert!(!c.icmp && c.tcp && c.udp);
        assert!(!covered(&port, 9).tcp);
        let d = describe(&port, c, None);
        assert_eq!(d, "tcp+udp unreachable (packets partition)");
    }
}
