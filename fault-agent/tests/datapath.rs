//! Faultline end to end on real packets: pods in network namespaces, the agent attached to
//! their host-side veths, faults injected with `faultctl` and through the API, traffic
//! measured at the receiving side.
mod common;

use std::time::Duration;

use common::*;
use fault_api::FaultState;
use fault_testkit::{
    DynamoEnv, Family, StreamOpts,
    probe::{self, TcpEchoServer, udp_stream, udp_stream_background},
    serial,
};

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

#[test]
fn partition_decode_to_prefill_one_way_then_both() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = &env.pods;
    let _nats = TcpEchoServer::start(&p.nats, Family::V4, 4222).unwrap();
    let _nats6 = TcpEchoServer::start(&p.nats, Family::V6, 4222).unwrap();
    for fam in FAMILIES {
        assert!(reaches(&p.decode0, &p.prefill, fam), "baseline {fam:?}");
    }

    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode",
            "--to-selector",
            "app=vllm-prefill",
            "--partition",
            "--duration",
            "2m",
        ],
    );
    let f = fault(&env.agent, &id);
    assert_eq!(f.state, FaultState::Active);
    assert_eq!(f.targets.len(), 2);
    assert_eq!(f.peers.len(), 1);
    for fam in FAMILIES {
        assert!(
            blocked(&p.decode0, &p.prefill, fam),
            "decode0 -> prefill must be cut ({fam:?})"
        );
        assert!(
            blocked(&p.decode1, &p.prefill, fam),
            "decode1 -> prefill must be cut ({fam:?})"
        );
        assert!(
            reaches(&p.prefill, &p.decode0, fam),
            "prefill -> decode0 must flow ({fam:?})"
        );
        assert!(
            reaches(&p.decode0, &p.nats, fam),
            "decode0 -> nats must flow ({fam:?})"
        );
        assert!(
            probe::tcp_echo_roundtrip(&p.decode0, &p.nats, fam, 4222, LONG).unwrap(),
            "NATS over TCP ({fam:?})"
        );
        assert!(
            reaches(&p.frontend, &p.prefill, fam),
            "frontend -> prefill must flow ({fam:?})"
        );
        assert!(
            reaches(&p.decode0, &p.decode1, fam),
            "decode0 -> decode1 must flow ({fam:?})"
        );
    }
    let f = fault(&env.agent, &id);
    assert!(
        f.counters.dropped > 0 && f.counters.dropped == f.counters.matched,
        "{:?}",
        f.counters
    );
    ctl(&env.agent, &["recover", &id]);
    assert_eq!(fault(&env.agent, &id).state, FaultState::Recovered);
    for fam in FAMILIES {
        assert!(
            reaches(&p.decode0, &p.prefill, fam),
            "after recover {fam:?}"
        );
    }

    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode",
            "--to-selector",
            "app=vllm-prefill",
            "--partition",
            "--direction",
            "both",
        ],
    );
    for fam in FAMILIES {
        assert!(
            blocked(&p.decode0, &p.prefill, fam),
            "both: decode0 -> prefill ({fam:?})"
        );
        assert!(
            blocked(&p.prefill, &p.decode0, fam),
            "both: prefill -> decode0 ({fam:?})"
        );
        assert!(
            reaches(&p.decode0, &p.nats, fam),
            "both: decode0 -> nats ({fam:?})"
        );
        assert!(
            reaches(&p.frontend, &p.decode0, fam),
            "both: frontend -> decode0 ({fam:?})"
        );
    }
    ctl(&env.agent, &["recover", &id]);
}

#[test]
fn partition_from_everything_keeps_nats_dns_and_allowed_namespaces() {
    let _s = serial();
    let mut env = DynamoEnv::start().unwrap();
    let dns = env
        .topo
        .add_pod("kube-system", "coredns-0", &[("k8s-app", "kube-dns")])
        .unwrap();
    let cache = env
        .topo
        .add_pod("shared", "cache-0", &[("app", "cache")])
        .unwrap();
    env.write_inventory().unwrap();
    wait_for_pods(&env, 7);
    let p = env.pods.clone();
    let _nats = TcpEchoServer::start(&p.nats, Family::V4, 4222).unwrap();
    let _other = TcpEchoServer::start(&p.prefill, Family::V4, 4222).unwrap();

    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--partition",
            "--allow-namespace",
            "shared",
        ],
    );
    for fam in FAMILIES {
        assert!(blocked(&p.decode0, &p.prefill, fam), "{fam:?}");
        assert!(blocked(&p.decode0, &p.frontend, fam), "{fam:?}");
        assert!(
            reaches(&p.decode0, &p.nats, fam),
            "NATS pod stays reachable ({fam:?})"
        );
        assert!(
            reaches(&p.decode0, &cache, fam),
            "allowed namespace ({fam:?})"
        );
        assert!(
            reaches(&p.decode0, &dns, fam),
            "kube-system is protected by default ({fam:?})"
        );
        assert!(
            probe::udp_reachable(&p.decode0, &p.prefill, fam, 53, LONG).unwrap(),
            "DNS port ({fam:?})"
        );
    }
    // TCP 4222 is NATS's client port wherever it listens.
    assert!(probe::tcp_echo_roundtrip(&p.decode0, &p.prefill, Family::V4, 4222, LONG).unwrap());
    ctl(&env.agent, &["recover", &id]);

    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--partition",
            "--block-nats",
        ],
    );
    assert!(
        blocked(&p.decode0, &p.nats, Family::V4),
        "--block-nats cuts NATS"
    );
    assert!(!probe::tcp_connect(&p.decode0, &p.nats, Family::V4, 4222, SHORT).unwrap());
    assert!(
        blocked(&p.decode0, &cache, Family::V4),
        "no --allow-namespace this time"
    );
    assert!(
        reaches(&p.decode0, &dns, Family::V4),
        "kube-system stays protected with --block-nats"
    );
    ctl(&env.agent, &["recover", &id]);

    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--partition",
            "--port",
            "53",
        ],
    );
    assert!(
        !probe::udp_reachable(&p.decode0, &p.prefill, Family::V4, 53, SHORT).unwrap(),
        "explicit --port 53 faults DNS"
    );
    assert!(
        reaches(&p.decode0, &p.prefill, Family::V4),
        "other ports flow"
    );
    ctl(&env.agent, &["recover", &id]);
}

fn wait_for_pods(env: &DynamoEnv, n: usize) {
    for _ in 0..100 {
        let v = env.agent.client().get_json("/v1/pods").unwrap();
        let ready = v["pods"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|p| !p["host_ifs"].as_array().unwrap().is_empty())
                .count()
        });
        if ready == n {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("agent did not see {n} pods");
}

#[test]
fn loss_30_percent_over_20000_datagrams() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = &env.pods;
    for fam in FAMILIES {
        let base = udp_stream(&p.decode0, &p.prefill, fam, &StreamOpts::default()).unwrap();
        assert_eq!(
            base.received, base.sent,
            "baseline must be lossless: {base}"
        );
        let id = inject(
            &env.agent,
            &[
                "-n",
                "dynamo",
                "--pod-prefix",
                "vllm-decode-0",
                "--to-selector",
                "app=vllm-prefill",
                "--protocol",
                "udp",
                "--loss",
                "30%",
            ],
        );
        let r = udp_stream(&p.decode0, &p.prefill, fam, &StreamOpts::default()).unwrap();
        let f = fault(&env.agent, &id);
        ctl(&env.agent, &["recover", &id]);
        eprintln!("loss 30% {fam:?}: {r}; counters {:?}", f.counters);
        assert!(r.sent >= 20_000);
        let loss = r.loss_ratio() * 100.0;
        assert!(
            (28.5..=31.5).contains(&loss),
            "measured loss {loss:.2}% ({fam:?})"
        );
        assert_eq!(r.corrupted, 0);
        assert_eq!(
            f.counters.dropped,
            r.sent - r.received,
            "the kernel's count is what the receiver missed"
        );
    }
}

#[test]
fn corruption_share_measured_at_the_receiver() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = &env.pods;
    for fam in FAMILIES {
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
                "--corrupt",
                "30",
            ],
        );
        let r = udp_stream(&p.decode0, &p.prefill, fam, &StreamOpts::default()).unwrap();
        let f = fault(&env.agent, &id);
        ctl(&env.agent, &["recover", &id]);
        eprintln!("corrupt 30% {fam:?}: {r}; counters {:?}", f.counters);
        assert_eq!(
            r.received + r.corrupted,
            r.sent,
            "corrupted datagrams still arrive: {r}"
        );
        let share = r.corrupt_ratio() * 100.0;
        assert!(
            (28.5..=31.5).contains(&share),
            "corrupted share {share:.2}% ({fam:?})"
        );
        assert_eq!(f.counters.corrupted, r.corrupted);
    }
}

/// A fault stops at its deadline; `kill_agent` SIGKILLs the agent right after injecting.
fn deadline_case(kill_agent: bool) {
    let mut env = DynamoEnv::start().unwrap();
    let p = env.pods.clone();
    let opts = StreamOpts {
        count: u64::MAX,
        rate_pps: 2000,
        ..Default::default()
    };
    let stream = udp_stream_background(&p.decode0, &p.prefill, Family::V4, &opts).unwrap();
    std::thread::sleep(Duration::from_millis(200));
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
            "--duration",
            "3s",
        ],
    );
    let injected = fault_testkit::boottime_ns();
    let f = fault(&env.agent, &id);
    let deadline = deadline_boot_ns(&f);
    if kill_agent {
        env.agent.kill().unwrap();
    }
    std::thread::sleep(Duration::from_millis(3800));
    let r = stream.stop().unwrap();
    let arrived = r.arrived();
    let sent_during = |a: u64, b: u64| {
        r.send_ns
            .iter()
            .enumerate()
            .filter(move |(_, t)| **t >= a && **t < b)
            .map(|(i, _)| i)
    };
    let leaked = sent_during(injected, deadline - 20_000_000)
        .filter(|i| arrived[*i])
        .count();
    assert_eq!(leaked, 0, "packets passed while the fault was active");
    let first_after = sent_during(injected, u64::MAX)
        .find(|i| arrived[*i])
        .map(|i| r.send_ns[i])
        .expect("traffic came back after the deadline");
    // The fault ended between the last datagram it dropped and the first that got through.
    // The bound is checked on the dropped side: a sender that stalled around the deadline (a
    // loaded machine, software emulation) delays the first delivered datagram, not the end.
    let ms_after_deadline = |t: u64| (t as i64 - deadline as i64) as f64 / 1e6;
    let late_ms = sent_during(deadline - 20_000_000, u64::MAX)
        .filter(|i| !arrived[*i])
        .map(|i| ms_after_deadline(r.send_ns[i]))
        .fold(0.0, f64::max);
    eprintln!(
        "agent {}: fault stopped {late_ms:.1} ms after its deadline (last datagram dropped; first delivered sent {:.1} ms after it)",
        if kill_agent { "killed" } else { "alive" },
        ms_after_deadline(first_after)
    );
    assert!(
        late_ms <= 100.0,
        "stopped {late_ms:.1} ms after the deadline"
    );
    let lost_after = sent_during(deadline + 100_000_000, u64::MAX)
        .filter(|i| !arrived[*i])
        .count();
    assert_eq!(
        lost_after, 0,
        "packets lost more than 100 ms after the deadline"
    );
    if kill_agent {
        // The kernel kept enforcing alone; uninstall removes what the dead agent left.
        let out = env.agent.uninstall().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!env.agent.bpffs().exists(), "pins removed by uninstall");
    }
}

#[test]
fn expiry_within_100ms_of_deadline_with_agent_alive() {
    let _s = serial();
    deadline_case(false);
}

#[test]
fn expiry_within_100ms_of_deadline_with_agent_killed() {
    let _s = serial();
    deadline_case(true);
}

#[test]
fn recover_restores_traffic_within_50ms() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = &env.pods;
    for fam in FAMILIES {
        let opts = StreamOpts {
            count: u64::MAX,
            rate_pps: 2000,
            ..Default::default()
        };
        let stream = udp_stream_background(&p.decode0, &p.prefill, fam, &opts).unwrap();
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
        std::thread::sleep(Duration::from_millis(300));
        ctl(&env.agent, &["recover", &id]);
        let returned = fault_testkit::boottime_ns();
        std::thread::sleep(Duration::from_millis(300));
        let r = stream.stop().unwrap();
        let arrived = r.arrived();
        let lost_after: Vec<f64> = r
            .send_ns
            .iter()
            .enumerate()
            .filter(|(i, t)| **t >= returned + 50_000_000 && !arrived[*i])
            .map(|(_, t)| (*t as f64 - returned as f64) / 1e6)
            .collect();
        assert!(
            lost_after.is_empty(),
            "lost {} packets sent >= 50 ms after recover returned ({fam:?})",
            lost_after.len()
        );
        let first_ok = r
            .send_ns
            .iter()
            .enumerate()
            .find(|(i, t)| **t >= returned && arrived[*i])
            .map(|(_, t)| *t);
        eprintln!(
            "{fam:?}: first packet sent after recover returned arrived (sent {:.2} ms after)",
            first_ok.map_or(f64::NAN, |t| (t - returned) as f64 / 1e6)
        );
        assert!(
            r.send_ns
                .iter()
                .zip(&arrived)
                .any(|(t, a)| *t < returned && !*a),
            "the fault did cut traffic before"
        );
    }
}
