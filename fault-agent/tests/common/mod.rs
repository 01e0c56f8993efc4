//! Helpers shared by the integration tests (included with `mod common;`).
#![allow(dead_code)]

use std::{path::Path, process::Command, time::Duration};

use fault_api::Fault;
use fault_testkit::{AgentProcess, Dynamo, Family, Pod, StreamReport, probe};
use serde_json::Value;

pub const SHORT: Duration = Duration::from_millis(300);
pub const LONG: Duration = Duration::from_secs(2);

/// `faultctl ARGS` against `agent`, which must succeed; returns its stdout.
pub fn ctl(agent: &AgentProcess, args: &[&str]) -> String {
    let out = agent.faultctl(args).expect("faultctl runs");
    assert!(
        out.status.success(),
        "faultctl {args:?} failed: {}\n--- agent log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `faultctl inject ARGS`; returns the new fault's id.
pub fn inject(agent: &AgentProcess, args: &[&str]) -> String {
    let mut all = vec!["inject"];
    all.extend_from_slice(args);
    ctl(agent, &all).trim().to_owned()
}

pub fn fault(agent: &AgentProcess, id: &str) -> Fault {
    agent.client().get_fault(id).expect("fault exists")
}

/// One-way UDP reachability; a blocked path gets a shorter wait.
pub fn reaches(from: &Pod, to: &Pod, fam: Family) -> bool {
    probe::udp_reachable(from, to, fam, 9000, LONG).expect("probe runs")
}

pub fn blocked(from: &Pod, to: &Pod, fam: Family) -> bool {
    !probe::udp_reachable(from, to, fam, 9000, SHORT).expect("probe runs")
}

/// (wall-clock, boottime) read together, to place a fault's wall-clock expiry on the
/// boottime axis of stream timestamps.
pub fn deadline_boot_ns(f: &Fault) -> u64 {
    let wall = jiff::Timestamp::now();
    let boot = fault_testkit::boottime_ns();
    let left = f.expires_at.duration_since(wall).as_nanos();
    (boot as i128 + left) as u64
}

/// `GET /metrics` of the agent at `url` (with a bearer token if given): (status, body).
pub fn scrape_metrics(url: &str, token: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(format!("{url}/metrics"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut res = req.call().expect("the agent answers");
    let status = res.status().as_u16();
    (status, res.body_mut().read_to_string().unwrap_or_default())
}

/// The value of the first sample of `name` whose labels hold every `key="value"` of `labels`.
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Entries of the pinned map at `map`, per `bpftool map dump`: the set entries of an array
/// (all-zero values, per CPU too, are its empty slots), every entry of anything else. Panics
/// when bpftool fails (a test helper).
pub fn pinned_map_entries(map: &Path) -> usize {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(map)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool map dump {}: {}",
        map.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let info = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(map)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap_or(Value::Null);
    let array = info["type"].as_str().is_some_and(|t| t.contains("array"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            // Raw bytes (`value`, per CPU `values`), else what BTF formats.
            let value = e
                .get("value")
                .or_else(|| e.get("values"))
                .or_else(|| e.get("formatted").and_then(|f| f.get("value")))
                .or_else(|| e.get("formatted").and_then(|f| f.get("values")));
            !array || value.is_some_and(nonzero)
        })
        .count()
}

fn nonzero(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => s
            .strip_prefix("0x")
            .is_none_or(|h| u64::from_str_radix(h, 16) != Ok(0)),
        Value::Array(a) => a.iter().any(nonzero),
        // Per-CPU values name their CPU: only the value counts.
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| k.as_str() != "cpu")
            .any(|(_, v)| nonzero(v)),
        Value::Bool(b) => *b,
        Value::Null => false,
    }
}

/// Datagrams sent in `[from, to)` (boot ns) and how many of them arrived.
pub fn window(r: &StreamReport, from: u64, to: u64) -> (u64, u64) {
    let arrived = r.arrived();
    let mut sent = 0;
    let mut got = 0;
    for (seq, t) in r.send_ns.iter().enumerate() {
        if (from..to).contains(t) {
            sent += 1;
            got += u64::from(arrived.get(seq).copied().unwrap_or(false));
        }
    }
    (sent, got)
}

/// After `from`, the send time from which every datagram until `to` arrived: how long the
/// stream took to be whole, in ns (`None`: it never was).
pub fn whole_after(r: &StreamReport, from: u64, to: u64) -> Option<u64> {
    let arrived = r.arrived();
    let last_lost = r
        .send_ns
        .iter()
        .enumerate()
        .filter(|(seq, t)| (from..to).contains(*t) && !arrived.get(*seq).copied().unwrap_or(false))
        .map(|(_, t)| *t)
        .max();
    match last_lost {
        None => Some(0),
        Some(t) if t + 50_000_000 < to => Some(t - from),
        Some(_) => None,
    }
}

/// Ten sender -> receiver pairs over the inference pods (the receiver's `app` label third), as
/// the kill switch tests stream them: every pod sends and receives.
pub fn ten_pairs(p: &Dynamo) -> [(&Pod, &Pod, &'static str); 10] {
    [
        (&p.decode0, &p.prefill, "vllm-prefill"),
        (&p.decode1, &p.prefill, "vllm-prefill"),
        (&p.frontend, &p.decode0, "vllm-decode"),
        (&p.frontend, &p.prefill, "vllm-prefill"),
        (&p.prefill, &p.decode1, "vllm-decode"),
        (&p.decode0, &p.frontend, "frontend"),
        (&p.decode1, &p.frontend, "frontend"),
        (&p.prefill, &p.frontend, "frontend"),
        (&p.frontend, &p.decode1, "vllm-decode"),
        (&p.nats, &p.prefill, "vllm-prefill"),
    ]
}

/// A 5-minute partition of what `from` sends to the pods of `app=to_app` on UDP `port`.
pub fn udp_partition(from: &Pod, to_app: &str, port: u16) -> fault_api::FaultSpec {
    let mut s = fault_api::FaultSpec::new(from.namespace());
    s.pod_prefix = Some(from.name().to_owned());
    s.to_selectors = vec![format!("app={to_app}").parse().expect("a selector")];
    s.protocol = Some(fault_api::Protocol::Udp);
    s.port = Some(port);
    s.partition = Some(fault_api::PartitionMode::Packets);
    s.duration = Some("5m".parse().expect("a duration"));
    s
}

/// The failure rate an abort message reports, percent (`... failed 62.5% of ...`).
pub fn failed_percent(message: &str) -> f64 {
    message
        .split("failed ")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no percentage in {message:?}"))
}

/// 2,000 datagrams at 10,000/s over IPv4 from `from` to `to`, all of which must arrive.
pub fn stream_is_whole(from: &Pod, to: &Pod) {
    let r = probe::udp_stream(
        from,
        to,
        Family::V4,
        &fault_testkit::StreamOpts {
            count: 2_000,
            rate_pps: 10_000,
            ..Default::default()
        },
    )
    .unwrap();
    eprintln!("stream: {r}");
    assert_eq!(r.received, r.sent, "the path must be whole: {r}");
}
