//! `faultctl verify`: the agent's probes, sent from inside the pods' network namespaces on real
//! veths, say `verified` for a partition and a loss that act, and `not verified` when the
//! target has no working network behind the agent's back (its silence is not the fault's).
mod common;

use std::process::Command;

use common::*;
use fault_api::{Outcome, Verification};
use fault_testkit::{DynamoEnv, serial};

/// `faultctl -o json verify ID`: the report, and whether faultctl exited 0.
fn verify(env: &DynamoEnv, id: &str) -> (Verification, bool) {
    let out = env
        .agent
        .faultctl(&["-o", "json", "verify", id])
        .expect("faultctl runs");
    let v: Verification = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    let ok = out.status.success();
    assert_eq!(
        ok,
        v.outcome == Outcome::Verified,
        "exit code follows the outcome"
    );
    assert!(ok || out.status.code() == Some(3), "{:?}", out.status);
    (v, ok)
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip runs");
    assert!(st.success(), "ip {args:?}");
}

#[test]
fn partitions_and_loss_that_act_are_verified() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = env.pods.clone();
    let target = ["-n", "dynamo", "--pod-prefix", "vllm-decode"];
    let to_prefill = ["--to-selector", "app=vllm-prefill"];
    let mut probes = 0;

    // Egress partition: both decode pods cannot reach prefill; the frontend is the control.
    let id = inject(
        &env.agent,
        &[&target[..], &to_prefill, &["--partition"]].concat(),
    );
    let (v, ok) = verify(&env, &id);
    probes += v.probe_packets;
    assert!(ok, "{v:?}");
    assert_eq!(v.pairs.len(), 2, "decode-0 and decode-1 to prefill");
    for pair in &v.pairs {
        assert_eq!(pair.to_ip, std::net::IpAddr::V4(p.prefill.ipv4()));
        assert_eq!(pair.control_ip, Some(p.frontend.ipv4().into()));
        assert!(!pair.measured.reachable, "{pair:?}");
        assert_eq!(pair.measured.control.as_deref(), Some("3/3"));
    }
    // 50 echoes, a SYN, two datagrams (the first got no answer) and 3 control echoes per
    // pair, every one marked.
    assert_eq!(v.probe_packets, 2 * 56);
    assert_eq!(v.probe_mark, 0xfa17_005e);
    assert!(v.took_ms < 5_000, "{} ms", v.took_ms);
    assert!(blocked(&p.decode0, &p.prefill, fault_testkit::Family::V4));
    ctl(&env.agent, &["recover", &id]);

    // Ingress partition of prefill: the probes go the faulted way, from the decode pods.
    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-prefill",
            "--to-selector",
            "app=vllm-decode",
            "--direction",
            "ingress",
            "--partition",
        ],
    );
    let (v, ok) = verify(&env, &id);
    probes += v.probe_packets;
    assert!(ok, "{v:?}");
    assert!(
        v.pairs
            .iter()
            .all(|x| x.from.starts_with("dynamo/vllm-decode"))
    );
    ctl(&env.agent, &["recover", &id]);

    // A TCP-only partition: the SYN goes unanswered, echoes and the UDP datagram get through.
    let id = inject(
        &env.agent,
        &[
            &target[..],
            &to_prefill,
            &["--protocol", "tcp", "--partition"],
        ]
        .concat(),
    );
    let (v, ok) = verify(&env, &id);
    probes += v.probe_packets;
    assert!(ok, "{v:?}");
    for pair in &v.pairs {
        let m = &pair.measured;
        assert_eq!(m.tcp_answered, Some(false), "{pair:?}");
        assert_eq!(m.udp_answered, Some(true), "{pair:?}");
        assert_eq!(m.echo_received, m.echo_sent, "{pair:?}");
    }
    ctl(&env.agent, &["recover", &id]);

    // 40% loss, created with --verify: the report comes with the fault.
    let mut args = vec!["-o", "json", "inject", "--verify"];
    args.extend([&target[..], &to_prefill, &["--loss", "40"]].concat());
    let created: fault_api::Fault = serde_json::from_str(&ctl(&env.agent, &args)).unwrap();
    let at_create = created.verification.expect("verification attached");
    eprintln!(
        "at creation: {}",
        serde_json::to_string(&at_create).unwrap()
    );
    let (v, ok) = verify(&env, &created.id);
    assert!(ok, "{v:?}");
    for pair in v.pairs.iter().chain(&at_create.pairs) {
        let loss = pair.measured.loss_percent;
        assert!(loss > 10.0 && loss < 70.0, "{loss}% of 40%");
    }

    // The probes are counted apart.
    let (_, text) = scrape_metrics(&env.agent.api_url(), None);
    let sent = metric_sample(&text, "faultline_verify_probes_total", &[]).expect("metric");
    assert_eq!(
        sent as u64,
        probes + v.probe_packets + at_create.probe_packets
    );
}

#[test]
fn a_target_without_network_is_not_verified() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = env.pods.clone();
    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--to-selector",
            "app=vllm-prefill",
            "--partition",
        ],
    );
    let (v, ok) = verify(&env, &id);
    assert!(ok, "{v:?}");

    // The host side down behind the agent's back: prefill is silent, but so is the control.
    ip(&["link", "set", "dev", p.decode0.host_ifname(), "down"]);
    let (v, ok) = verify(&env, &id);
    assert!(!ok);
    assert!(
        v.pairs
            .iter()
            .all(|x| x.reason.contains("control probe failed too")),
        "{v:?}"
    );

    // The veth removed: nothing to probe from, or probes that cannot leave: not verified.
    ip(&["link", "del", "dev", p.decode0.host_ifname()]);
    let (v, ok) = verify(&env, &id);
    assert!(!ok, "{v:?}");
}
