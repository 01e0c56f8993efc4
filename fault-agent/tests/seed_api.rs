//! The seed's Fault Injection API, sent as the seed documents write it (only the host
//! changed), with its effect checked on real traffic.
mod common;

use std::{process::Command, time::Duration};

use common::*;
use fault_testkit::{
    DynamoEnv, Family, StreamOpts,
    probe::{
        TcpEchoServer, UdpEchoServer, tcp_connect, tcp_echo_roundtrip, udp_echo_roundtrip,
        udp_stream,
    },
    serial,
};
use serde_json::{Value, json};

/// `curl -X POST URL -H "Content-Type: application/json" -d BODY`: (HTTP status, JSON body).
fn curl_post(url: &str, body: Option<&str>, extra: &[&str]) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "-X", "POST", url]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    cmd.args(extra);
    let out = cmd.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn inject_url(env: &DynamoEnv) -> String {
    format!("{}/api/v1/faults/network/inject", env.agent.api_url())
}

/// "Example: Block Decode → Prefill", as written in network-partition-injection.md.
const BLOCK_DECODE_PREFILL: &str = r#"{
    "partition_type": "worker_worker",
    "source": "dynamo",
    "target": "dynamo",
    "mode": "networkpolicy",
    "parameters": {
      "namespace": "dynamo",
      "target_pod_prefix": "vllm-decode",
      "block_nats": false,
      "block_specific_pods": [{"nvidia.com/dynamo-component-type": "worker"}]
    }
  }"#;

/// "Example: 50% Packet Loss".
const LOSS_50: &str = r#"{
    "partition_type": "worker_worker",
    "source": "dynamo",
    "target": "dynamo",
    "mode": "chaos_mesh",
    "duration": 120,
    "parameters": {
      "namespace": "dynamo",
      "target_pod_prefix": "vllm-decode",
      "packet_loss_percent": 50,
      "target_nats": false
    }
  }"#;

/// "Example: High Latency Simulation".
const HIGH_LATENCY: &str = r#"{
    "partition_type": "worker_worker",
    "source": "dynamo",
    "target": "dynamo",
    "mode": "chaos_mesh",
    "parameters": {
      "namespace": "dynamo",
      "target_pod_prefix": "vllm-prefill",
      "delay_ms": 500,
      "delay_jitter_ms": 100,
      "target_nats": false
    }
  }"#;

#[test]
fn networkpolicy_example_blocks_new_connections_only_and_recovers() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = &env.pods;
    let _servers = [&p.prefill, &p.decode0, &p.decode1, &p.nats, &p.frontend]
        .map(|pod| TcpEchoServer::start(pod, Family::V4, 8000).unwrap());
    let _nats = TcpEchoServer::start(&p.nats, Family::V4, 4222).unwrap();
    let _udp =
        [&p.prefill, &p.decode0].map(|pod| UdpEchoServer::start(pod, Family::V4, 9100).unwrap());

    let (code, body) = curl_post(&inject_url(&env), Some(BLOCK_DECODE_PREFILL), &[]);
    assert_eq!(code, 200, "{body}");
    let id = body["fault_id"].as_str().unwrap().to_owned();
    assert_eq!(body["status"], "active");
    assert_eq!(body["target_pods"].as_array().unwrap().len(), 2);

    // decode cannot open connections to workers...
    assert!(
        !tcp_connect(&p.decode0, &p.prefill, Family::V4, 8000, SHORT).unwrap(),
        "decode -> prefill TCP"
    );
    assert!(
        !tcp_connect(&p.decode0, &p.decode1, Family::V4, 8000, SHORT).unwrap(),
        "decode -> decode TCP"
    );
    assert!(
        !udp_echo_roundtrip(&p.decode0, &p.prefill, Family::V4, 9100, SHORT).unwrap(),
        "decode -> prefill UDP"
    );
    // ...but workers can open connections to decode and get replies (NetworkPolicy semantics)...
    assert!(
        tcp_echo_roundtrip(&p.prefill, &p.decode0, Family::V4, 8000, LONG).unwrap(),
        "prefill -> decode TCP with replies"
    );
    assert!(
        udp_echo_roundtrip(&p.prefill, &p.decode0, Family::V4, 9100, LONG).unwrap(),
        "prefill -> decode UDP with replies"
    );
    // ...and NATS and the frontend stay reachable.
    assert!(tcp_echo_roundtrip(&p.decode0, &p.nats, Family::V4, 4222, LONG).unwrap());
    assert!(tcp_echo_roundtrip(&p.decode0, &p.frontend, Family::V4, 8000, LONG).unwrap());

    // curl -X POST http://fault-injection-api:8080/api/v1/faults/{fault_id}/recover
    let (code, body) = curl_post(
        &format!("{}/api/v1/faults/{id}/recover", env.agent.api_url()),
        None,
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "recovered");
    assert!(
        tcp_echo_roundtrip(&p.decode0, &p.prefill, Family::V4, 8000, LONG).unwrap(),
        "recovered"
    );
}

#[test]
fn nats_stays_reachable_unless_block_nats() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = &env.pods;
    let _nats = TcpEchoServer::start(&p.nats, Family::V4, 4222).unwrap();
    let _other = TcpEchoServer::start(&p.prefill, Family::V4, 8000).unwrap();
    let isolate = |block_nats: bool| {
        json!({"partition_type": "worker_nats", "source": "dynamo", "target": "dynamo", "mode": "networkpolicy",
               "parameters": {"namespace": "dynamo", "target_pod_prefix": "vllm-decode-0", "block_nats": block_nats,
                              "block_all_egress": true}})
        .to_string()
    };
    let (code, body) = curl_post(&inject_url(&env), Some(&isolate(false)), &[]);
    assert_eq!(code, 200, "{body}");
    assert!(
        !tcp_connect(&p.decode0, &p.prefill, Family::V4, 8000, SHORT).unwrap(),
        "worker isolated"
    );
    assert!(
        tcp_echo_roundtrip(&p.decode0, &p.nats, Family::V4, 4222, LONG).unwrap(),
        "block_nats false: NATS reachable"
    );
    let (code, _) = curl_post(
        &format!(
            "{}/api/v1/faults/network/cleanup?namespace=dynamo",
            env.agent.api_url()
        ),
        None,
        &[],
    );
    assert_eq!(code, 200);

    let (code, body) = curl_post(&inject_url(&env), Some(&isolate(true)), &[]);
    assert_eq!(code, 200, "{body}");
    assert!(
        !tcp_connect(&p.decode0, &p.nats, Family::V4, 4222, SHORT).unwrap(),
        "block_nats true: NATS cut"
    );
    // Worker -> NATS only (no block_all_egress): the seed's "Worker→NATS Partition".
    curl_post(
        &format!(
            "{}/api/v1/faults/network/cleanup?namespace=dynamo",
            env.agent.api_url()
        ),
        None,
        &[],
    );
    let only_nats = json!({"partition_type": "frontend_worker", "source": "dynamo", "target": "dynamo", "mode": "networkpolicy", "duration": 60,
        "parameters": {"namespace": "dynamo", "target_pod_prefix": "vllm-decode-0", "block_nats": true}});
    let (code, body) = curl_post(&inject_url(&env), Some(&only_nats.to_string()), &[]);
    assert_eq!(code, 200, "{body}");
    assert!(
        !tcp_connect(&p.decode0, &p.nats, Family::V4, 4222, SHORT).unwrap(),
        "worker -> NATS cut"
    );
    assert!(
        tcp_connect(&p.decode0, &p.prefill, Family::V4, 8000, LONG).unwrap(),
        "the rest flows"
    );
}

#[test]
fn chaos_mesh_loss_example_measured_then_cleanup_and_expiry() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = &env.pods;
    let (code, body) = curl_post(&inject_url(&env), Some(LOSS_50), &[]);
    assert_eq!(code, 200, "{body}");
    let r = udp_stream(&p.decode0, &p.prefill, Family::V4, &StreamOpts::default()).unwrap();
    let loss = r.loss_ratio() * 100.0;
    eprintln!("seed 50% loss example: {r}");
    assert!((48.5..=51.5).contains(&loss), "measured {loss:.2}%");
    let to_nats = udp_stream(
        &p.decode0,
        &p.nats,
        Family::V4,
        &StreamOpts {
            count: 2_000,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        to_nats.received, to_nats.sent,
        "target_nats false: NATS untouched: {to_nats}"
    );

    // curl -X POST "http://fault-injection-api:8080/api/v1/faults/network/cleanup?namespace=dynamo"
    let (code, body) = curl_post(
        &format!(
            "{}/api/v1/faults/network/cleanup?namespace=dynamo",
            env.agent.api_url()
        ),
        None,
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["cleaned"], 1);
    let r = udp_stream(
        &p.decode0,
        &p.prefill,
        Family::V4,
        &StreamOpts {
            count: 2_000,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.received, r.sent, "after cleanup: {r}");

    // duration expires the fault.
    let short = LOSS_50.replace("\"duration\": 120", "\"duration\": 1");
    let (code, body) = curl_post(&inject_url(&env), Some(&short), &[]);
    assert_eq!(code, 200, "{body}");
    let id = body["fault_id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(1300));
    let r = udp_stream(
        &p.decode0,
        &p.prefill,
        Family::V4,
        &StreamOpts {
            count: 2_000,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.received, r.sent, "after expiry: {r}");
    let got: Value = env
        .agent
        .client()
        .get_json(&format!("/api/v1/faults/{id}"))
        .unwrap();
    assert_eq!(got["status"], "expired");
    let list = env.agent.client().get_json("/api/v1/faults").unwrap();
    assert_eq!(list["count"], 2);
}

#[test]
fn what_this_kernel_cannot_do_is_refused_not_ignored() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let caps = env.agent.client().get_json("/v1/capabilities").unwrap();
    if caps["sch_fq"] == true {
        eprintln!("this kernel has sch_fq: delays are accepted here (the VM suite measures them)");
        return;
    }
    let qdiscs = |pod: &fault_testkit::Pod| {
        let o = Command::new("tc")
            .args(["qdisc", "show", "dev", pod.host_ifname()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let before = qdiscs(&env.pods.prefill);
    let (code, body) = curl_post(&inject_url(&env), Some(HIGH_LATENCY), &[]);
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["error"]["field"], "parameters.delay_ms", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("fq"),
        "{body}"
    );
    assert_eq!(
        env.agent.client().get_json("/api/v1/faults").unwrap()["count"],
        0
    );
    assert_eq!(qdiscs(&env.pods.prefill), before, "nothing half-applied");
    // The native API and the CLI say the same.
    let out = env
        .agent
        .faultctl(&[
            "inject",
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-prefill",
            "--delay",
            "50ms",
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sch_fq") && err.contains("delay"), "{err}");
}

#[test]
fn bad_seed_requests_get_400_or_422_naming_the_field() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let url = inject_url(&env);
    let cases: [(&str, u16, &str); 5] = [
        ("{\"partition_type\": ", 400, "body"),
        (
            r#"{"partition_type": "sideways", "source": "dynamo", "parameters": {"target_pod_prefix": "vllm"}}"#,
            422,
            "partition_type",
        ),
        (
            r#"{"partition_type": "custom", "source": "dynamo", "mode": "chaos_mesh", "parameters": {"target_pod_prefix": "vllm", "packet_loss_percent": 150}}"#,
            422,
            "parameters.packet_loss_percent",
        ),
        (
            r#"{"partition_type": "custom", "source": "dynamo", "parameters": {"namespace": "dynamo"}}"#,
            422,
            "parameters.target_pod_prefix",
        ),
        (
            r#"{"partition_type": "custom", "source": "dynamo", "mode": "networkpolicy", "parameters": {"target_pod_prefix": "vllm", "corrupt_percent": 5}}"#,
            422,
            "parameters.corrupt_percent",
        ),
    ];
    for (body, status, field) in cases {
        let (code, resp) = curl_post(&url, Some(body), &[]);
        assert_eq!(code, status, "{body}: {resp}");
        assert_eq!(resp["error"]["field"], field, "{body}: {resp}");
    }
    assert_eq!(
        env.agent.client().get_json("/api/v1/faults").unwrap()["count"],
        0,
        "nothing created"
    );
}

#[test]
fn a_token_guards_the_api_and_401_403_say_why() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let audit_log = dir.path().join("audit.jsonl");
    let env = DynamoEnv::start_with(&[
        "--token-file",
        token_file.to_str().unwrap(),
        "--audit-log",
        audit_log.to_str().unwrap(),
    ])
    .unwrap();
    let url = inject_url(&env);
    let (code, body) = curl_post(&url, Some(LOSS_50), &[]);
    assert_eq!(code, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bearer token"),
        "{body}"
    );
    let (code, body) = curl_post(&url, Some(LOSS_50), &["-H", "Authorization: Bearer wrong"]);
    assert_eq!(code, 403, "{body}");
    let (code, body) = curl_post(
        &url,
        Some(LOSS_50),
        &["-H", "Authorization: Bearer s3cret-token"],
    );
    assert_eq!(code, 200, "{body}");
    let health = Command::new("curl")
        .args(["-s", &format!("{}/health", env.agent.api_url())])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&health.stdout).contains("healthy"),
        "health stays open"
    );
    let out = env
        .agent
        .faultctl(&["--token", "s3cret-token", "list"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The audit log has the two refused attempts and the inject, in order.
    let audit: Vec<Value> = std::fs::read_to_string(&audit_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(&str, &str, u64)> = audit
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap(),
                r["path"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let inject = "/api/v1/faults/network/inject";
    assert_eq!(
        seen,
        [
            ("anonymous", inject, 401),
            ("anonymous", inject, 403),
            ("static-token", inject, 200)
        ],
        "{audit:?}"
    );
    assert_eq!(audit[2]["namespace"], "dynamo", "{audit:?}");
    assert!(audit[2]["fault_id"].is_string(), "{audit:?}");

    // Without a token the agent refuses a non-loopback address.
    let out = Command::new(fault_testkit::bin_path("fault-agent").unwrap())
        .args(["standalone", "--listen", "0.0.0.0:0", "--inventory"])
        .arg(env.inventory())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--bpffs", "/sys/fs/bpf/faultline-never-created"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without --token-file"), "{err}");
    assert!(!std::path::Path::new("/sys/fs/bpf/faultline-never-created").exists());
}
