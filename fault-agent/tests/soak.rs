//! What ended faults leave in the kernel (issue 13, item 3, the soak): nothing.

use std::{path::Path, process::Command};

use fault_testkit::{DynamoEnv, Family, Pod, StreamOpts, probe::udp_stream, serial};
use serde_json::{Value, json};

/// Entries of a pinned map: set entries of an array (all-zero values are its empty slots),
/// every entry of anything else.
fn map_entries(map: &Path) -> usize {
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

/// The (target, peer) addresses of the flows recorded in `FL_CT` (`bpftool map dump`).
fn recorded_flows(bpffs: &Path) -> Vec<([u8; 16], [u8; 16])> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(bpffs.join("maps/FL_CT"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let bytes: Vec<u8> = e["key"]
                .as_array()
                .expect("raw key bytes")
                .iter()
                .map(|b| {
                    u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                })
                .collect();
            (
                bytes[..16].try_into().unwrap(),
                bytes[16..32].try_into().unwrap(),
            )
        })
        .collect()
}

/// Regressions (found by the soak, whose 100 cycles left 6 flows and 30 counters): the flows
/// the programs record for connection partitions (`FL_CT`, an LRU map) stayed after the fault
/// ended, since nothing but LRU eviction removed them; and an ended fault's counters stayed in
/// its slot of `FL_STATS` until a new fault took the slot. The agent now removes a pod's flows
/// once no connection partition tracks it (keeping those of the partitions still acting), and
/// zeroes a slot's counters when its fault ends (they were saved with the fault).
#[test]
fn ended_faults_leave_no_recorded_flows_and_no_counters() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = env.pods.clone();
    let client = env.agent.client();
    let body = |prefix: &str| {
        json!({
            "namespace": "dynamo",
            "pod_prefix": prefix,
            "to_selectors": ["app=vllm-prefill"],
            "partition": "connections",
            "protocol": "udp",
        })
    };
    let f0 = client.create_raw(&body("vllm-decode-0")).unwrap();
    let f1 = client.create_raw(&body("vllm-decode-1")).unwrap();
    let opts = StreamOpts {
        count: 50,
        rate_pps: 1_000,
        port: 45_100,
        ..Default::default()
    };
    // The peer opens flows to both targets: they are recorded (and may pass).
    for d in [&p.decode0, &p.decode1] {
        let r = udp_stream(&p.prefill, d, Family::V4, &opts).unwrap();
        assert_eq!(r.received, r.sent, "the peer may open flows: {r}");
    }
    // decode-0 may not open one.
    let opens = StreamOpts {
        count: 20,
        port: 45_101,
        ..opts.clone()
    };
    let r = udp_stream(&p.decode0, &p.prefill, Family::V4, &opens).unwrap();
    assert_eq!(r.received, 0, "decode-0 opens no flow to prefill: {r}");
    let mapped = |pod: &Pod| pod.ipv4().to_ipv6_mapped().octets();
    let (d0, d1) = (mapped(&p.decode0), mapped(&p.decode1));
    let mentions = |flows: &[([u8; 16], [u8; 16])], a: [u8; 16]| {
        flows.iter().filter(|(t, q)| *t == a || *q == a).count()
    };
    let flows = recorded_flows(env.agent.bpffs());
    assert!(
        mentions(&flows, d0) > 0 && mentions(&flows, d1) > 0,
        "flows recorded for both targets: {flows:?}"
    );
    client.recover(&f0.id).unwrap();
    let flows = recorded_flows(env.agent.bpffs());
    assert_eq!(
        mentions(&flows, d0),
        0,
        "decode-0's flows went with its fault: {flows:?}"
    );
    assert!(mentions(&flows, d1) > 0, "decode-1's fault still acts");
    client.recover(&f1.id).unwrap();
    let flows = recorded_flows(env.agent.bpffs());
    assert!(flows.is_empty(), "no flow left: {flows:?}");
    let f = client.get_fault(&f0.id).unwrap();
    assert!(
        f.counters.matched > 0,
        "its counters were kept: {:?}",
        f.counters
    );
    let stats = map_entries(&env.agent.bpffs().join("maps/FL_STATS"));
    assert_eq!(stats, 0, "counters left in FL_STATS");
    let c = client.get_json("/v1/tables/check").unwrap();
    assert_eq!(c["kernel_flows"], 0, "{c}");
}
