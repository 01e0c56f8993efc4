//! Bad input gets a clear error naming the field, never a panic, never a half-applied fault.
mod common;

use common::*;
use fault_api::client::ClientError;
use fault_testkit::{AgentProcess, DynamoEnv, Topology, serial};
use serde_json::json;

fn stderr_of(agent: &AgentProcess, args: &[&str]) -> (i32, String) {
    let out = agent.faultctl(args).unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_rejects_bad_flags_naming_them() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let a = &env.agent;
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &[
                "inject",
                "-n",
                "dynamo",
                "--pod-prefix",
                "vllm",
                "--loss",
                "150",
            ],
            "--loss",
            "(0, 100]",
        ),
        (
            &[
                "inject",
                "-n",
                "dynamo",
                "--pod-prefix",
                "vllm",
                "--loss",
                "30",
                "--duration",
                "-3s",
            ],
            "--duration",
            "positive",
        ),
        (
            &[
                "inject",
                "-n",
                "dynamo",
                "--selector",
                "app in (a",
                "--partition",
            ],
            "--selector",
            "malformed label selector",
        ),
        (
            &[
                "inject",
                "-n",
                "dynamo",
                "--pod-prefix",
                "vllm",
                "--partition",
                "--loss",
                "3",
            ],
            "--partition",
            "cannot be combined",
        ),
        (
            &[
                "inject",
                "-n",
                "dynamo",
                "--pod-prefix",
                "vllm",
                "--to-cidr",
                "198.18.0.1/24",
                "--partition",
            ],
            "--to-cidr",
            "host bits",
        ),
        (
            &[
                "inject",
                "-n",
                "Dynamo!",
                "--pod-prefix",
                "vllm",
                "--partition",
            ],
            "--namespace",
            "RFC 1123",
        ),
    ];
    for (args, flag, reason) in cases {
        let (code, err) = stderr_of(a, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(flag) && err.contains(reason),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        a.client().list(None).unwrap().faults.is_empty(),
        "nothing created"
    );
}

#[test]
fn api_rejects_bad_bodies_naming_the_field_and_creates_nothing() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let c = env.agent.client();
    let cases = [
        (
            json!({"namespace": "dynamo", "pod_prefix": "vllm", "loss_percent": 150}),
            422,
            "loss_percent",
        ),
        (
            json!({"namespace": "dynamo", "pod_prefix": "vllm", "loss_percent": 5, "duration": "-3s"}),
            422,
            "duration",
        ),
        (
            json!({"namespace": "dynamo", "selector": "app=(", "partition": true}),
            422,
            "selector",
        ),
        (
            json!({"namespace": "dynamo", "pod_prefix": "vllm", "partition": true, "lossy": 1}),
            422,
            "lossy",
        ),
        (
            json!({"namespace": "dynamo", "pod_prefix": "vllm"}),
            422,
            "partition",
        ),
        (
            json!({"namespace": "dynamo", "pod_prefix": "vllm", "delay": "8s", "jitter": "3s"}),
            422,
            "delay",
        ),
        (
            json!({"namespace": "dynamo", "pod_prefix": "vllm", "partition": true, "duration": "2h"}),
            422,
            "duration",
        ),
        (
            json!({"pod_prefix": "vllm", "partition": true}),
            422,
            "namespace",
        ),
        (json!("just a string"), 400, "body"),
    ];
    for (body, status, field) in cases {
        match c.create_raw(&body) {
            Err(ClientError::Api { status: s, error }) => {
                assert_eq!(s, status, "{body}: {error:?}");
                assert_eq!(error.field.as_deref(), Some(field), "{body}: {error:?}");
            }
            other => panic!("{body}: expected an error, got {other:?}"),
        }
    }
    // Not JSON at all: 400.
    let raw = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-d",
            "{not json",
            &format!("{}/v1/faults", env.agent.api_url()),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&raw.stdout), "400");
    assert!(c.list(None).unwrap().faults.is_empty(), "nothing created");
    // The agent is still fine.
    assert!(c.ready());
}

#[test]
fn a_namespace_without_pods_gives_zero_targets_and_a_warning() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let out = env
        .agent
        .faultctl(&["inject", "-n", "empty", "--pod-prefix", "x", "--partition"])
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("no pod in namespace empty"),
        "{err}"
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let f = fault(&env.agent, &id);
    assert!(f.targets.is_empty());
    assert_eq!(f.warnings.len(), 1);
}

#[test]
fn an_unparsable_inventory_stops_the_agent_with_the_field_named() {
    let _s = serial();
    let topo = Topology::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inv.yaml");
    for (text, field) in [
        ("pods:\n  - namespace: dynamo\n    name: a\n", "netns"),
        (
            "pods:\n  - {namespace: Dynamo, name: a, netns: x}\n",
            "pods[0].namespace",
        ),
        ("pods: [\n", "inventory"),
        (
            "pods:\n  - {namespace: dynamo, name: a, node: host-b}\n",
            "pods[0].ips",
        ),
        (
            "pods:\n  - {namespace: dynamo, name: a, netns: x, node: host-b, ips: [198.18.2.1]}\n",
            "pods[0].node",
        ),
    ] {
        std::fs::write(&inv, text).unwrap();
        let err = match AgentProcess::start(&inv) {
            Ok(_) => panic!("agent started on {text:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(field), "{text:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    drop(topo);
}

#[test]
fn bad_datapath_flags_stop_the_agent_naming_the_flag_and_the_range() {
    let _s = serial();
    let topo = Topology::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inv.yaml");
    topo.write_inventory(&inv).unwrap();
    for (args, want) in [
        (&["--evaluated-mark", "0x4000"][..], "kube-proxy"),
        (&["--evaluated-mark", "0x3"][..], "single bit"),
        (&["--evaluated-mark", "lots"][..], "not a number"),
        (&["--service-cidr", "198.19.0.0/33"][..], "--service-cidr"),
        (&["--uplink", "eth0", "--uplink", "auto"][..], "stand alone"),
        (&["--uplink", "a/b"][..], "not an interface name"),
    ] {
        let err = match AgentProcess::start_with(&inv, args) {
            Ok(_) => panic!("agent started with {args:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
