//! Faults across changes: pods added, removed and readdressed under a live fault; agent
//! restarts (SIGKILL, SIGTERM); cleanup by namespace; nothing left behind, also after a panic.
mod common;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use fault_api::FaultState;
use fault_testkit::{
    DynamoEnv, Family, StreamOpts,
    probe::udp_stream_background,
    serial,
    topology::{link_exists, netns_names},
};

fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            eprintln!("{what}: after {} ms", start.elapsed().as_millis());
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what}: not within {timeout:?}");
}

#[test]
fn inventory_changes_are_followed_without_touching_unaffected_faults() {
    let _s = serial();
    let mut env = DynamoEnv::start().unwrap();
    let p = env.pods.clone();
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
        ],
    );
    // A stream on the unaffected pair decode0 -> prefill must see no packet through while
    // the inventory changes around it.
    let opts = StreamOpts {
        count: u64::MAX,
        rate_pps: 1000,
        port: 41_000,
        ..Default::default()
    };
    let watch = udp_stream_background(&p.decode0, &p.prefill, Family::V4, &opts).unwrap();

    // A new decode pod is covered.
    let decode2 = env
        .topo
        .add_pod("dynamo", "vllm-decode-2", &[("app", "vllm-decode")])
        .unwrap();
    env.write_inventory().unwrap();
    eventually("new pod covered", Duration::from_secs(3), || {
        fault(&env.agent, &id).targets.len() == 3
    });
    assert!(blocked(&decode2, &p.prefill, Family::V4));
    assert!(blocked(&decode2, &p.prefill, Family::V6));

    // A removed pod's entries go.
    env.topo.remove_pod(&p.decode1).unwrap();
    env.write_inventory().unwrap();
    eventually("removed pod dropped", Duration::from_secs(3), || {
        fault(&env.agent, &id).targets.len() == 2
    });

    let r = watch.stop().unwrap();
    eprintln!("stream during pod changes: {r}");
    assert!(r.sent > 500, "{r}");
    assert_eq!(
        r.received, 0,
        "the unaffected pair's fault must never lapse: {r}"
    );

    // A readdressed peer is followed (no inventory change: the agent rescans namespaces).
    let prefill = env.topo.readdress(&p.prefill, 77).unwrap();
    eventually(
        "new peer address in the fault",
        Duration::from_secs(3),
        || {
            fault(&env.agent, &id)
                .peers
                .iter()
                .any(|r| r.ips.contains(&prefill.ip(Family::V4)))
        },
    );
    assert!(
        blocked(&p.decode0, &prefill, Family::V4),
        "the peer's new address is cut"
    );
    assert!(reaches(&p.frontend, &prefill, Family::V4));
    ctl(&env.agent, &["recover", &id]);
}

#[test]
fn a_broken_inventory_keeps_the_previous_pods_and_faults() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    let p = &env.pods;
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
    std::fs::write(
        env.inventory(),
        "pods:\n  - namespace: dynamo\n    name: [oops\n",
    )
    .unwrap();
    eventually("inventory error reported", Duration::from_secs(3), || {
        env.agent.client().get_json("/v1/pods").unwrap()["inventory_error"].is_string()
    });
    let v = env.agent.client().get_json("/v1/pods").unwrap();
    assert!(
        v["inventory_error"].as_str().unwrap().contains("inventory"),
        "{v}"
    );
    assert_eq!(v["pods"].as_array().unwrap().len(), 5, "previous pods kept");
    assert_eq!(fault(&env.agent, &id).state, FaultState::Active);
    assert!(
        blocked(&p.decode0, &p.prefill, Family::V4),
        "fault still acting"
    );
    env.write_inventory().unwrap();
    eventually("inventory error cleared", Duration::from_secs(3), || {
        env.agent.client().get_json("/v1/pods").unwrap()["inventory_error"].is_null()
    });
}

#[test]
fn restarts_keep_faults_and_sigterm_removes_everything() {
    let _s = serial();
    let mut env = DynamoEnv::start().unwrap();
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
    let opts = StreamOpts {
        count: u64::MAX,
        rate_pps: 1000,
        port: 41_001,
        ..Default::default()
    };
    let watch = udp_stream_background(&p.decode0, &p.prefill, Family::V4, &opts).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    // SIGKILL: the kernel keeps the fault; a new agent adopts pins and links with no gap.
    env.agent.kill().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    env.agent.restart().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fault(&env.agent, &id).state, FaultState::Active);
    let r = watch.stop().unwrap();
    assert_eq!(
        r.received, 0,
        "a packet passed during the crash and restart: {r}"
    );
    let links = bpf_links_on(&[p.decode0.host_ifname(), p.prefill.host_ifname()]);
    assert_eq!(links, 4, "one link per hook, none duplicated");

    // SIGTERM: programs, links and pins go; traffic flows.
    let status = env.agent.terminate().unwrap();
    assert!(status.success(), "{}", env.agent.log());
    assert!(!env.agent.bpffs().exists(), "pins removed");
    assert_eq!(bpf_links_on(&[p.decode0.host_ifname()]), 0, "links removed");
    assert!(reaches(&p.decode0, &p.prefill, Family::V4));

    // The fault lives in the state dir: a new agent applies it again.
    env.agent.restart().unwrap();
    assert_eq!(fault(&env.agent, &id).state, FaultState::Active);
    assert!(blocked(&p.decode0, &p.prefill, Family::V4));
}

/// Programs attached through TCX to these interfaces (both hooks).
fn bpf_links_on(ifnames: &[&str]) -> usize {
    use aya::programs::{SchedClassifier, TcAttachType};
    ifnames
        .iter()
        .flat_map(|n| {
            [TcAttachType::Ingress, TcAttachType::Egress].map(|t| SchedClassifier::query_tcx(n, t))
        })
        .map(|r| r.map_or(0, |(_, progs)| progs.len()))
        .sum()
}

#[test]
fn cleanup_recovers_a_namespace_and_nothing_else() {
    let _s = serial();
    let mut env = DynamoEnv::start().unwrap();
    let other = env
        .topo
        .add_pod("data", "postgres-0", &[("app", "postgres")])
        .unwrap();
    let api = env
        .topo
        .add_pod("data", "api-0", &[("app", "api")])
        .unwrap();
    env.write_inventory().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let p = env.pods.clone();
    let a = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--partition",
        ],
    );
    let b = inject(
        &env.agent,
        &["-n", "dynamo", "--pod-prefix", "frontend", "--loss", "50"],
    );
    let c = inject(
        &env.agent,
        &[
            "-n",
            "data",
            "--pod-prefix",
            "api",
            "--to-selector",
            "app=postgres",
            "--partition",
        ],
    );
    assert!(blocked(&api, &other, Family::V4));
    let out = ctl(&env.agent, &["cleanup", "--namespace", "dynamo"]);
    assert!(
        out.contains(&a) && out.contains(&b) && !out.contains(&c),
        "{out}"
    );
    assert!(reaches(&p.decode0, &p.prefill, Family::V4));
    assert!(
        blocked(&api, &other, Family::V4),
        "other namespace untouched"
    );
    assert_eq!(fault(&env.agent, &c).state, FaultState::Active);
    ctl(&env.agent, &["cleanup", "--all"]);
    assert!(reaches(&api, &other, Family::V4));
}

#[test]
fn nothing_is_left_behind_even_when_a_test_panics() {
    let _s = serial();
    let seen: Arc<Mutex<Option<(Vec<String>, Vec<String>, PathBuf)>>> = Arc::default();
    let record = seen.clone();
    let result = std::panic::catch_unwind(move || {
        let env = DynamoEnv::start().unwrap();
        inject(
            &env.agent,
            &[
                "-n",
                "dynamo",
                "--pod-prefix",
                "vllm-decode",
                "--loss",
                "10",
            ],
        );
        *record.lock().unwrap() = Some((
            env.topo
                .pods()
                .iter()
                .map(|p| p.netns_name().to_owned())
                .collect(),
            env.topo
                .pods()
                .iter()
                .map(|p| p.host_ifname().to_owned())
                .collect(),
            env.agent.bpffs().to_owned(),
        ));
        panic!("a test failing half-way");
    });
    assert!(result.is_err());
    let (namespaces, links, bpffs) = seen.lock().unwrap().clone().unwrap();
    let left = netns_names();
    assert!(
        namespaces.iter().all(|n| !left.contains(n)),
        "namespaces left: {left:?}"
    );
    assert!(links.iter().all(|l| !link_exists(l)), "links left");
    assert!(!bpffs.exists(), "pins left in {}", bpffs.display());
}

fn tc(args: &[&str]) -> String {
    let out = std::process::Command::new("tc")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The attach path of kernels without TCX (< 6.6), forced on this one: a clsact qdisc and
/// cls_bpf filters, replaced in place by a restarted agent, removed on SIGTERM.
#[test]
fn netlink_clsact_attach_works_restarts_and_cleans_up() {
    let _s = serial();
    let mut env = DynamoEnv::start_with(&["--attach", "netlink"]).unwrap();
    let p = env.pods.clone();
    let dev = p.decode0.host_ifname().to_owned();
    assert!(
        tc(&["qdisc", "show", "dev", &dev]).contains("clsact"),
        "clsact added"
    );
    let filters = |hook: &str| {
        tc(&["filter", "show", "dev", &dev, hook])
            .matches("handle 0xfa17")
            .count()
    };
    assert_eq!((filters("ingress"), filters("egress")), (1, 1));
    let caps = env.agent.client().get_json("/v1/capabilities").unwrap();
    assert_eq!(caps["attach_mode"], "netlink");

    inject(
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
    assert!(blocked(&p.decode0, &p.prefill, Family::V6));
    assert!(reaches(&p.prefill, &p.decode0, Family::V4));

    env.agent.kill().unwrap();
    assert!(
        blocked(&p.decode0, &p.prefill, Family::V4),
        "filters outlive the agent"
    );
    env.agent.restart().unwrap();
    assert_eq!(
        (filters("ingress"), filters("egress")),
        (1, 1),
        "replaced in place, not added"
    );
    assert!(blocked(&p.decode0, &p.prefill, Family::V4));

    let status = env.agent.terminate().unwrap();
    assert!(
        status.success(),
        "agent exit {status}:\n{}",
        env.agent.log()
    );
    for pod in [&p.frontend, &p.decode0, &p.decode1, &p.prefill, &p.nats] {
        let q = tc(&["qdisc", "show", "dev", pod.host_ifname()]);
        assert!(
            !q.contains("clsact"),
            "clsact left on {}: {q}",
            pod.host_ifname()
        );
    }
    assert!(reaches(&p.decode0, &p.prefill, Family::V4));
}
