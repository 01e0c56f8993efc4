//! Measurements on a stream between two real pods: when a fault took hold (the first
//! datagram lost after an instant), when it let go (the first datagram through after an
//! instant), when a pod became covered (after its last datagram through), and the API's
//! request-to-first-packet time over repeated cycles.
use std::time::Duration;

use anyhow::{Context as _, Result};
use fault_api::{FaultSpec, PartitionMode, client::Client};

use crate::{Family, Pod, StreamHandle, StreamOpts, StreamReport, probe::udp_stream_background};

/// A UDP stream from `from` to `to` at `rate_pps` until stopped (receiver in `to`'s
/// namespace on `port`).
pub fn stream(from: &Pod, to: &Pod, rate_pps: u64, port: u16) -> Result<StreamHandle> {
    let opts = StreamOpts {
        count: u64::MAX,
        rate_pps,
        port,
        ..Default::default()
    };
    udp_stream_background(from, to, Family::V4, &opts)
}

/// Send time of the first datagram sent at or after `t_ns` that was lost.
pub fn first_lost_after(r: &StreamReport, t_ns: u64) -> Option<u64> {
    let arrived = r.arrived();
    r.send_ns
        .iter()
        .zip(&arrived)
        .find(|(t, ok)| **t >= t_ns && !**ok)
        .map(|(t, _)| *t)
}

/// Send time of the first datagram sent at or after `t_ns` that arrived.
pub fn first_arrived_after(r: &StreamReport, t_ns: u64) -> Option<u64> {
    let arrived = r.arrived();
    r.send_ns
        .iter()
        .zip(&arrived)
        .find(|(t, ok)| **t >= t_ns && **ok)
        .map(|(t, _)| *t)
}

/// Datagrams sent in `[from_ns, to_ns)`: (sent, arrived).
pub fn counts_between(r: &StreamReport, from_ns: u64, to_ns: u64) -> (u64, u64) {
    let arrived = r.arrived();
    let mut out = (0, 0);
    for (t, ok) in r.send_ns.iter().zip(&arrived) {
        if *t >= from_ns && *t < to_ns {
            out.0 += 1;
            out.1 += u64::from(*ok);
        }
    }
    out
}

/// The instant the stream was cut for good: the send time of the datagram after the last one
/// that arrived (`None` if the last one arrived, or none was sent).
pub fn cut_from(r: &StreamReport) -> Option<u64> {
    let arrived = r.arrived();
    match arrived.iter().rposition(|ok| *ok) {
        Some(i) => r.send_ns.get(i + 1).copied(),
        None => r.send_ns.first().copied(),
    }
}

/// Apply and lift times of one cycle, in ms.
#[derive(Debug, Clone, Copy)]
pub struct Cycle {
    pub apply_ms: f64,
    pub lift_ms: f64,
}

/// `n` cycles of: `POST /v1/faults` (partition: `target`'s egress to `peer`'s app) through
/// `api`, then `DELETE`, while a stream flows from `target` to `peer` at `rate_pps`. Each
/// cycle's apply time runs from the start of the request to the first datagram lost, its lift
/// time from the start of the recover request to the first datagram through.
pub fn api_cycles(
    api: &Client,
    namespace: &str,
    target: &Pod,
    peer: &Pod,
    peer_selector: &str,
    n: usize,
    rate_pps: u64,
) -> Result<Vec<Cycle>> {
    let mut spec = FaultSpec::new(namespace);
    spec.pod_prefix = Some(target.name().to_owned());
    spec.to_selectors = vec![peer_selector.parse().map_err(anyhow::Error::msg)?];
    spec.partition = Some(PartitionMode::Packets);
    spec.duration = Some("5m".parse().map_err(anyhow::Error::msg)?);
    let s = stream(target, peer, rate_pps, 44_100)?;
    std::thread::sleep(Duration::from_millis(100));
    let mut marks = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = crate::boottime_ns();
        let id = api.create(&spec).context("POST /v1/faults")?.id;
        std::thread::sleep(Duration::from_millis(30));
        let t1 = crate::boottime_ns();
        api.recover(&id).context("DELETE /v1/faults/{id}")?;
        std::thread::sleep(Duration::from_millis(30));
        marks.push((t0, t1));
    }
    let r = s.stop()?;
    Ok(marks
        .into_iter()
        .filter_map(|(t0, t1)| {
            let a = first_lost_after(&r, t0)?;
            let b = first_arrived_after(&r, t1)?;
            Some(Cycle {
                apply_ms: (a - t0) as f64 / 1e6,
                lift_ms: (b - t1) as f64 / 1e6,
            })
        })
        .collect())
}

/// The `p` quantile (0..=1, nearest rank) of `v`.
pub fn quantile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() - 1) as f64 * p).round() as usize]
}
