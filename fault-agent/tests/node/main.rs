//! The `node` suite: Faultline on a real Kubernetes node (`cargo xtask cluster up`: kubelet,
//! containerd + runc, CNI bridge, kube-proxy), installed with `kubectl apply -k` of `deploy/`,
//! its image built locally; the inference workload as StatefulSets and a Deployment whose
//! pods got their veths from the CNI. Traffic runs between those pods (from their network
//! namespaces to the echo servers their containers run), and is measured.
//!
//! Run through `cargo xtask test` (it builds and starts the cluster, builds and imports the
//! images, sets `FAULTLINE_NODE_*`, and removes the cluster after); by hand, with a cluster up
//! and those variables set: `cargo test -p fault-agent --test node -- --ignored --test-threads=1`.
mod env;
mod host;

use std::time::{Duration, Instant};

use env::{Cleanup, Node, boot_ns_of, node, unique};
use fault_testkit::{
    Family, Pod, boottime_ns, probe,
    real_node::{deploy::SYSTEM_NS, measure, pods::KubePod, watch::PodWatch, workload::NS},
};
use serde_json::json;

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(2);
/// A new pod must be covered this soon after it becomes Ready.
const COVERAGE_LIMIT_MS: f64 = 2000.0;
/// The CNI bridge of `cargo xtask cluster` (its pods' host veths are its ports).
const BRIDGE: &str = "fln-br0";

fn h(p: &KubePod) -> Pod {
    p.handle()
        .unwrap_or_else(|e| panic!("pod {}: {e:#}", p.name))
}

/// A TCP connection from `from` to `to`'s echo server (a container of the pod) and back.
fn tcp(from: &Pod, to: &Pod, port: u16, timeout: Duration) -> bool {
    probe::tcp_echo_roundtrip(from, to, Family::V4, port, timeout).expect("probe runs")
}

/// A TCP echo from `from` to `ip:port` (a Service's cluster IP).
fn tcp_to(from: &Pod, ip: std::net::Ipv4Addr, port: u16, timeout: Duration) -> bool {
    let to = Pod::existing(NS, "service", "", ip, std::net::Ipv6Addr::UNSPECIFIED);
    probe::tcp_echo_roundtrip(from, &to, Family::V4, port, timeout).expect("probe runs")
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

fn partition(pod_prefix: &str, to: &str, duration: &str) -> serde_json::Value {
    json!({"podPrefix": pod_prefix, "toSelectors": [to], "partition": "packets", "duration": duration})
}

#[test]
#[ignore = "needs the one-machine cluster: run through `cargo xtask test`"]
fn deploy_applies_unchanged_and_the_agent_and_api_become_ready() {
    let n = node();
    let ds = n
        .cluster
        .json(&["-n", SYSTEM_NS, "get", "daemonset", "faultline-node"])
        .unwrap();
    assert_eq!(ds["status"]["numberReady"], 1, "{}", ds["status"]);
    let image = &ds["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(
        image,
        n.cluster.faultline_image.as_str(),
        "kustomize set the image"
    );
    let api = n
        .cluster
        .json(&["-n", SYSTEM_NS, "get", "deployment", "faultline-api"])
        .unwrap();
    assert_eq!(api["status"]["readyReplicas"], 1, "{}", api["status"]);
    // Through the Service: authenticated, refused without the token.
    let listed = n.api().list(None);
    assert!(listed.is_ok(), "GET /v1/faults with the token: {listed:?}");
    let anonymous = fault_api::client::Client::new(&n.faultline.api_url).list(None);
    match anonymous {
        Err(fault_api::client::ClientError::Api { status, .. }) => assert_eq!(status, 401),
        other => panic!("without a token: {other:?}"),
    }
    let caps = n.api().get_json("/v1/capabilities");
    eprintln!(
        "node: in-cluster API at {} answers; capabilities: {caps:?}",
        n.faultline.api_url
    );
}

#[test]
#[ignore = "needs the one-machine cluster: run through `cargo xtask test`"]
fn networkfault_partitions_decode_from_prefill_then_recovers_and_expires() {
    let n = node();
    n.delete_all_faults();
    let _cleanup = Cleanup(&n);
    let t = n.topo();
    let (d0, d1, p, f, nats) = (
        h(&t.decode[0]),
        h(&t.decode[1]),
        h(&t.prefill[0]),
        h(&t.frontend),
        h(&t.nats),
    );
    assert!(
        tcp(&d0, &p, 8000, LONG),
        "decode-0 -> prefill before the fault"
    );
    let s = measure::stream(&d0, &p, 2000, 44_200).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = boottime_ns();
    let cut_name = unique("decode-prefill-cut");
    n.apply_fault(
        &cut_name,
        partition("vllm-decode", "app=vllm-prefill", "2m"),
    );
    let st = n.wait_phase(&cut_name, "Active", Duration::from_secs(10));
    assert_eq!(st["targetCount"], 2, "{st}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!tcp(&d0, &p, 8000, SHORT), "decode-0 -> prefill cut");
    assert!(!tcp(&d1, &p, 8000, SHORT), "decode-1 -> prefill cut");
    assert!(tcp(&f, &p, 8000, LONG), "frontend -> prefill untouched");
    assert!(tcp(&d0, &nats, 4222, LONG), "decode -> NATS untouched");
    assert!(
        probe::udp_reachable(&p, &d0, Family::V4, 9000, LONG).unwrap(),
        "prefill -> decode (one way) untouched"
    );
    let t1 = boottime_ns();
    n.delete_fault(&cut_name);
    std::thread::sleep(Duration::from_millis(1500));
    let r = s.stop().unwrap();
    let applied = measure::first_lost_after(&r, t0).expect("a datagram was lost");
    let lifted = measure::first_arrived_after(&r, t1).expect("datagrams pass again");
    let (sent, through) = measure::counts_between(&r, applied, t1);
    assert_eq!(
        through, 0,
        "{through} of {sent} datagrams passed while the fault was active"
    );
    eprintln!(
        "node: NetworkFault applied {:.0} ms after `kubectl apply` (2000 datagrams/s decode-0 -> prefill), lifted {:.0} ms after `kubectl delete`",
        ms(applied as i128 - t0 as i128),
        ms(lifted as i128 - t1 as i128)
    );
    assert!(
        tcp(&d0, &p, 8000, LONG),
        "decode-0 -> prefill after recovery"
    );

    // Expiry: the kernel program stops applying it at its deadline.
    let s = measure::stream(&d0, &p, 2000, 44_201).unwrap();
    let short = unique("decode-prefill-3s");
    n.apply_fault(&short, partition("vllm-decode-0", "app=vllm-prefill", "3s"));
    let st = n.wait_phase(&short, "Active", Duration::from_secs(10));
    let expires = boot_ns_of(st["expiresAt"].as_str().expect("expiresAt"));
    let st = n.wait_phase(&short, "Expired", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let r = s.stop().unwrap();
    let cut = measure::first_lost_after(&r, 0).expect("the fault acted");
    let back = measure::first_arrived_after(&r, cut).expect("traffic back after expiry");
    let late = ms(back as i128 - expires as i128);
    eprintln!(
        "node: 3 s fault: traffic back {late:.1} ms after status.expiresAt ({}; ended {})",
        st["expiresAt"], st["endedAt"]
    );
    assert!(
        (-50.0..=500.0).contains(&late),
        "traffic back {late:.1} ms from the deadline"
    );
}

#[test]
#[ignore = "needs the one-machine cluster: run through `cargo xtask test`"]
fn python_suite_against_the_in_cluster_api_through_its_service() {
    let n = node();
    n.delete_all_faults();
    let Some(pytest) = std::env::var_os("FAULTLINE_PYTEST") else {
        panic!("FAULTLINE_PYTEST (the venv's pytest) is unset: run through `cargo xtask test`");
    };
    let t = n.topo();
    let entry = |key: &str, p: &KubePod| {
        let handle = h(p);
        (
            key.to_owned(),
            json!({"namespace": NS, "netns": handle.netns_path(), "ipv4": p.ip.map(|i| i.to_string()),
                   "ipv6": null, "pod": p.name}),
        )
    };
    let pods: serde_json::Map<_, _> = [
        entry("frontend-0", &t.frontend),
        entry("vllm-decode-0", &t.decode[0]),
        entry("vllm-decode-1", &t.decode[1]),
        entry("vllm-prefill-0", &t.prefill[0]),
        entry("nats-0", &t.nats),
    ]
    .into_iter()
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let doc = json!({"api_url": n.faultline.api_url, "token": n.faultline.token, "pods": pods,
                     "mode": "cluster"});
    std::fs::write(&ready, doc.to_string()).unwrap();
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
    let st = std::process::Command::new(pytest)
        .args(["-q", "-p", "no:cacheprovider"])
        .current_dir(&client)
        .env("FAULTLINE_TESTENV_READY", &ready)
        .status()
        .expect("pytest runs");
    n.delete_all_faults();
    assert!(
        st.success(),
        "the Python client's suite against {}",
        n.faultline.api_url
    );
}

/// Streams watching one new prefill pod: as a target (it sends to decode-1) and as a peer
/// (decode-0 sends to it).
struct Watched {
    name: String,
    as_target: fault_testkit::StreamHandle,
    as_peer: fault_testkit::StreamHandle,
}

/// Starts the streams of each pod of `names` as soon as it has an address and a namespace.
fn watch_new_pods(w: &PodWatch, names: &[String], decode: &[Pod], port: u16) -> Vec<Watched> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        w.wait_for("new pod addressed", Duration::from_secs(60), |_| {
            w.first_addressed().contains_key(name)
        })
        .unwrap();
        let pod = w.first_addressed()[name].pod.clone();
        let start = Instant::now();
        let handle = loop {
            match pod.handle() {
                Ok(h) => break h,
                Err(e) if start.elapsed() > Duration::from_secs(10) => panic!("{e:#}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let p = port + 2 * i as u16;
        out.push(Watched {
            name: name.clone(),
            as_target: measure::stream(&handle, &decode[1], 1000, p).unwrap(),
            as_peer: measure::stream(&decode[0], &handle, 1000, p + 1).unwrap(),
        });
    }
    out
}

/// Each watched pod's coverage, in ms after it became Ready (negative: before), as target and
/// as peer; asserts both streams were cut for good within the limit.
fn coverage(w: &PodWatch, watched: Vec<Watched>) -> Vec<(String, f64, f64)> {
    let (ready, addressed) = (w.first_ready(), w.first_addressed());
    let mut out = Vec::new();
    for x in watched {
        let at = ready
            .get(&x.name)
            .unwrap_or_else(|| panic!("{} never Ready", x.name))
            .at_ns as i128;
        let ip_at = addressed[&x.name].at_ns as i128;
        let (rt, rp) = (x.as_target.stop().unwrap(), x.as_peer.stop().unwrap());
        let ct =
            measure::cut_from(&rt).unwrap_or_else(|| panic!("{}: target stream never cut", x.name));
        let cp =
            measure::cut_from(&rp).unwrap_or_else(|| panic!("{}: peer stream never cut", x.name));
        let (t_ms, p_ms) = (ms(ct as i128 - at), ms(cp as i128 - at));
        // With no datagram through, the pod was covered before the first one: the figure is
        // then an upper bound (the stream starts once the address is known).
        let how = |r: &fault_testkit::StreamReport| {
            if r.received == 0 {
                "at the latest".to_owned()
            } else {
                format!("after {} datagrams passed", r.received)
            }
        };
        eprintln!(
            "node: {} covered {t_ms:.0} ms after Ready as target ({}), {p_ms:.0} ms as peer ({}); \
             {:.0} / {:.0} ms after its address was reported",
            x.name,
            how(&rt),
            how(&rp),
            ms(ct as i128 - ip_at),
            ms(cp as i128 - ip_at),
        );
        out.push((x.name, t_ms, p_ms));
    }
    out
}

#[test]
#[ignore = "needs the one-machine cluster: run through `cargo xtask test`"]
fn new_and_recreated_prefill_pods_are_covered_within_2s_of_ready() {
    let n = node();
    n.delete_all_faults();
    let _cleanup = Cleanup(&n);
    let t = n.topo();
    let decode: Vec<Pod> = t.decode.iter().map(h).collect();
    for (name, spec) in [
        (
            unique("prefill-to-decode"),
            partition("vllm-prefill", "app=vllm-decode", "10m"),
        ),
        (
            unique("decode0-to-prefill"),
            partition("vllm-decode-0", "app=vllm-prefill", "10m"),
        ),
    ] {
        n.apply_fault(&name, spec);
        let st = n.wait_phase(&name, "Active", Duration::from_secs(10));
        assert_eq!(st["appliedNodes"], "faultline-node", "{name}: {st}");
    }
    let before: Vec<String> = n
        .cluster
        .pods(NS, "app=vllm-prefill")
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    let w = PodWatch::start(&n.cluster, NS, "app=vllm-prefill").unwrap();

    // Scale 1 -> 3.
    n.cluster
        .kubectl(&["-n", NS, "scale", "deployment/vllm-prefill", "--replicas=3"])
        .unwrap();
    w.wait_for("two new pods", Duration::from_secs(30), |_| {
        w.first_addressed()
            .keys()
            .filter(|k| !before.contains(k))
            .count()
            >= 2
    })
    .unwrap();
    let new: Vec<String> = w
        .first_addressed()
        .into_keys()
        .filter(|k| !before.contains(k))
        .collect();
    let watched = watch_new_pods(&w, &new, &decode, 44_300);
    w.wait_for("new pods Ready", Duration::from_secs(60), |_| {
        let r = w.first_ready();
        new.iter().all(|p| r.contains_key(p))
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut figures = coverage(&w, watched);

    // Delete the first pod: the Deployment makes another, with a new address.
    let old = t.prefill[0].clone();
    let seen: Vec<String> = w.first_addressed().into_keys().collect();
    n.cluster
        .kubectl(&["-n", NS, "delete", "pod", &old.name, "--wait=false"])
        .unwrap();
    w.wait_for("a replacement pod", Duration::from_secs(30), |_| {
        w.first_addressed().keys().any(|k| !seen.contains(k))
    })
    .unwrap();
    let repl: Vec<String> = w
        .first_addressed()
        .into_keys()
        .filter(|k| !seen.contains(k))
        .collect();
    let watched = watch_new_pods(&w, &repl, &decode, 44_320);
    w.wait_for("replacement Ready", Duration::from_secs(60), |_| {
        w.first_ready().contains_key(&repl[0])
    })
    .unwrap();
    let new_ip = w.first_addressed()[&repl[0]].pod.ip;
    assert_ne!(new_ip, old.ip, "the replacement has a new address");
    std::thread::sleep(Duration::from_secs(3));
    figures.extend(coverage(&w, watched));

    n.cluster
        .kubectl(&["-n", NS, "scale", "deployment/vllm-prefill", "--replicas=1"])
        .unwrap();
    let worst = figures
        .iter()
        .map(|(_, a, b)| a.max(*b))
        .fold(f64::MIN, f64::max);
    eprintln!(
        "node: worst coverage after Ready over {} pods: {worst:.0} ms",
        figures.len()
    );
    for (name, a, b) in &figures {
        assert!(
            *a <= COVERAGE_LIMIT_MS && *b <= COVERAGE_LIMIT_MS,
            "{name}: covered {a:.0} / {b:.0} ms after Ready (limit {COVERAGE_LIMIT_MS} ms)"
        );
    }
}

/// Waits until the DaemonSet's pod is Ready and differs from `old_uid`; returns its uid.
fn wait_new_agent(n: &Node, old_uid: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let pods = n
            .cluster
            .ready_pods(SYSTEM_NS, "app.kubernetes.io/name=faultline-node")
            .unwrap();
        if let Some(p) = pods.iter().find(|p| p.uid != old_uid) {
            eprintln!(
                "node: new agent pod {} Ready {} ms after the old one was asked to go",
                p.name,
                start.elapsed().as_millis()
            );
            return p.uid.clone();
        }
        assert!(
            start.elapsed() < timeout,
            "no new agent pod within {timeout:?}\n{}",
            env::diagnose(&n.cluster)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn agent_uid(n: &Node) -> String {
    n.cluster
        .ready_pods(SYSTEM_NS, "app.kubernetes.io/name=faultline-node")
        .unwrap()
        .first()
        .map(|p| p.uid.clone())
        .expect("an agent pod")
}

#[test]
#[ignore = "needs the one-machine cluster: run through `cargo xtask test`"]
fn the_fault_acts_with_no_gap_while_the_agent_pod_is_replaced() {
    let n = node();
    n.delete_all_faults();
    let _cleanup = Cleanup(&n);
    let t = n.topo();
    let (d0, p, f) = (h(&t.decode[0]), h(&t.prefill[0]), h(&t.frontend));
    let name = unique("while-replaced");
    n.apply_fault(&name, partition("vllm-decode-0", "app=vllm-prefill", "10m"));
    n.wait_phase(&name, "Active", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    let cut = measure::stream(&d0, &p, 2000, 44_400).unwrap();
    let control = measure::stream(&f, &p, 2000, 44_401).unwrap();
    let t0 = boottime_ns();

    let uid = agent_uid(&n);
    n.cluster
        .kubectl(&[
            "-n",
            SYSTEM_NS,
            "delete",
            "pod",
            "-l",
            "app.kubernetes.io/name=faultline-node",
            "--wait=false",
        ])
        .unwrap();
    let uid = wait_new_agent(&n, &uid, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(2));
    n.cluster
        .kubectl(&[
            "-n",
            SYSTEM_NS,
            "rollout",
            "restart",
            "daemonset/faultline-node",
        ])
        .unwrap();
    wait_new_agent(&n, &uid, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(2));

    let (r, rc) = (cut.stop().unwrap(), control.stop().unwrap());
    let t_end = boottime_ns();
    let (sent, through) = measure::counts_between(&r, t0, t_end);
    let (csent, carrived) = measure::counts_between(&rc, t0, t_end);
    eprintln!(
        "node: agent pod deleted, then the DaemonSet rolled: {through} of {sent} faulted datagrams passed; control stream {carrived} of {csent} arrived"
    );
    if through > 0 {
        let first = measure::first_arrived_after(&r, t0).unwrap();
        eprintln!(
            "node: the fault stopped acting {:.0} ms after the pod deletion",
            ms(first as i128 - t0 as i128)
        );
    }
    n.delete_all_faults();
    assert!(
        carrived * 1000 >= csent * 999,
        "control stream lost packets"
    );
    assert_eq!(
        through, 0,
        "the fault had a gap while the agent pod was replaced"
    );
}

/// Whether the DaemonSet's agent process runs on this node (`fault-agent node` with the
/// manifest's bpffs folder; the cluster tests' agents use other folders).
fn agent_process_runs() -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let args: Vec<Vec<u8>> = std::fs::read(e.path().join("cmdline"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .map(<[u8]>::to_vec)
                .collect();
            args.first().is_some_and(|a| a.ends_with(b"fault-agent"))
                && args.get(1).is_some_and(|a| a == b"node")
                && args.iter().any(|a| a == host::AGENT_BPFFS.as_bytes())
        })
}

/// Takes the agent off the node (the DaemonSet selects no node) and puts it back on drop,
/// also when the test fails.
struct NoAgent<'a>(&'a Node);

impl<'a> NoAgent<'a> {
    fn start(n: &'a Node) -> Self {
        let patch =
            r#"{"spec":{"template":{"spec":{"nodeSelector":{"faultline.dev/no-node":"true"}}}}}"#;
        n.cluster
            .kubectl(&[
                "-n",
                SYSTEM_NS,
                "patch",
                "daemonset/faultline-node",
                "-p",
                patch,
            ])
            .unwrap();
        NoAgent(n)
    }
}

impl Drop for NoAgent<'_> {
    fn drop(&mut self) {
        let restore = r#"[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]"#;
        let _ = self.0.cluster.kubectl(&[
            "-n",
            SYSTEM_NS,
            "patch",
            "daemonset/faultline-node",
            "--type=json",
            "-p",
            restore,
        ]);
    }
}

#[test]
#[ignore = "needs the one-machine cluster: run through `cargo xtask test`"]
fn a_deadline_passing_while_no_agent_runs_stops_the_fault_on_time() {
    let n = node();
    n.delete_all_faults();
    let _cleanup = Cleanup(&n);
    let t = n.topo();
    let (d0, p) = (h(&t.decode[0]), h(&t.prefill[0]));
    let s = measure::stream(&d0, &p, 2000, 44_500).unwrap();
    let name = unique("no-agent");
    // Long enough for the agent pod to go (the kubelet reports a pod gone up to ~10 s late).
    n.apply_fault(&name, partition("vllm-decode-0", "app=vllm-prefill", "25s"));
    let st = n.wait_phase(&name, "Active", Duration::from_secs(10));
    let expires = boot_ns_of(st["expiresAt"].as_str().expect("expiresAt"));
    let no_agent = NoAgent::start(&n);
    let start = Instant::now();
    while agent_process_runs() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the agent still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone = boottime_ns();
    assert!(
        gone + 2_000_000_000 < expires,
        "the agent left too late for the test to mean anything"
    );
    let wait = Duration::from_nanos(expires.saturating_sub(boottime_ns())) + LONG;
    std::thread::sleep(wait);
    assert!(!agent_process_runs(), "an agent came back during the test");
    let r = s.stop().unwrap();
    drop(no_agent);
    let (sent, through) = measure::counts_between(&r, gone, expires - 20_000_000);
    let back = measure::first_arrived_after(&r, gone).expect("traffic back");
    let late = ms(back as i128 - expires as i128);
    eprintln!(
        "node: no agent process from {:.1} s before the deadline: {through} of {sent} datagrams passed before it; traffic back {late:.1} ms after it",
        ms(expires as i128 - gone as i128) / 1000.0
    );
    assert_eq!(
        through, 0,
        "the fault stopped acting when the agent left, before its deadline"
    );
    assert!(
        (-20.0..=200.0).contains(&late),
        "traffic back {late:.1} ms from the deadline"
    );
}

#[test]
#[ignore = "needs the one-machine cluster: run through `cargo xtask test`"]
fn kubectl_delete_k_leaves_no_program_link_pin_qdisc_or_fault() {
    let n = node();
    n.delete_all_faults();
    let _cleanup = Cleanup(&n);
    let t = n.topo();
    let (d0, p) = (h(&t.decode[0]), h(&t.prefill[0]));
    let name = unique("left-active");
    n.apply_fault(&name, partition("vllm-decode-0", "app=vllm-prefill", "10m"));
    n.wait_phase(&name, "Active", Duration::from_secs(10));
    assert!(
        !tcp(&d0, &p, 8000, SHORT),
        "the fault acts before the uninstall"
    );
    assert!(
        !host::programs().is_empty(),
        "programs are loaded while installed"
    );
    let start = Instant::now();
    n.cluster
        .delete_faultline(Duration::from_secs(120))
        .unwrap();
    eprintln!(
        "node: kubectl delete -k took {} ms",
        start.elapsed().as_millis()
    );
    let left_pods = n.cluster.pods(SYSTEM_NS, "").unwrap_or_default();
    assert!(left_pods.is_empty(), "pods left: {left_pods:?}");
    let ports = host::bridge_ports(BRIDGE);
    let (progs, links, pins, qdiscs) = (
        host::programs(),
        host::links(),
        host::pins(),
        host::qdiscs_on(&ports),
    );
    let acting = !tcp(&d0, &p, 8000, LONG);
    assert!(
        progs.is_empty() && links.is_empty() && pins.is_empty() && qdiscs.is_empty() && !acting,
        "left after kubectl delete -k: programs {progs:?}, links {links:?}, pins {pins:?}, qdiscs {qdiscs:?}, fault acting: {acting}"
    );
}

#[test]
#[ignore = "needs the one-machine cluster: run through `cargo xtask test`"]
fn api_request_through_the_service_to_first_packet() {
    let n = node();
    n.delete_all_faults();
    let _cleanup = Cleanup(&n);
    let t = n.topo();
    let (d0, p) = (h(&t.decode[0]), h(&t.prefill[0]));
    let cycles = measure::api_cycles(&n.api(), NS, &d0, &p, "app=vllm-prefill", 50, 2000).unwrap();
    assert!(
        cycles.len() >= 45,
        "only {} of 50 cycles measured",
        cycles.len()
    );
    let apply: Vec<f64> = cycles.iter().map(|c| c.apply_ms).collect();
    let lift: Vec<f64> = cycles.iter().map(|c| c.lift_ms).collect();
    let (a50, a99) = (
        measure::quantile(&apply, 0.5),
        measure::quantile(&apply, 0.99),
    );
    let (l50, l99) = (
        measure::quantile(&lift, 0.5),
        measure::quantile(&lift, 0.99),
    );
    eprintln!(
        "node: API (Service) request -> first packet affected over {} cycles: p50 {a50:.0} ms, p99 {a99:.0} ms; recover -> first packet through: p50 {l50:.0} ms, p99 {l99:.0} ms",
        cycles.len()
    );
    assert!(
        a99 < 5000.0 && l99 < 5000.0,
        "apply p99 {a99:.0} ms, lift p99 {l99:.0} ms"
    );
}

#[test]
#[ignore = "needs the one-machine cluster: run through `cargo xtask test`"]
fn a_networkfault_recreated_under_the_same_name_is_applied_again() {
    let n = node();
    n.delete_all_faults();
    let _cleanup = Cleanup(&n);
    let t = n.topo();
    let (d0, p) = (h(&t.decode[0]), h(&t.prefill[0]));
    let name = unique("same-name");
    for round in ["first", "second"] {
        n.apply_fault(&name, partition("vllm-decode-0", "app=vllm-prefill", "5m"));
        let st = n.wait_phase(&name, "Active", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(500));
        let cut = !tcp(&d0, &p, 8000, SHORT);
        eprintln!(
            "node: {round} `kubectl apply` of {name}: cut {cut}, node status {}",
            st["nodes"]
        );
        assert!(
            cut,
            "{round} apply of {name}: decode-0 -> prefill not cut; status {st}"
        );
        n.delete_fault(&name);
        let start = Instant::now();
        while n
            .cluster
            .json(&["-n", NS, "get", "networkfault", &name])
            .is_ok()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name} not deleted"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            tcp(&d0, &p, 8000, LONG),
            "{round}: decode-0 -> prefill after the delete"
        );
    }
}

#[test]
#[ignore = "needs the one-machine cluster: run through `cargo xtask test`"]
fn a_partition_covers_traffic_through_a_service() {
    let n = node();
    n.delete_all_faults();
    let _cleanup = Cleanup(&n);
    let t = n.topo();
    let d0 = h(&t.decode[0]);
    let vip = n.service_ip("vllm-prefill");
    assert!(
        tcp_to(&d0, vip, 8000, LONG),
        "decode-0 -> Service vllm-prefill before"
    );
    let name = unique("via-service");
    n.apply_fault(&name, partition("vllm-decode-0", "app=vllm-prefill", "5m"));
    n.wait_phase(&name, "Active", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !tcp(&d0, &h(&t.prefill[0]), 8000, SHORT),
        "decode-0 -> prefill's pod IP is cut"
    );
    let through = tcp_to(&d0, vip, 8000, SHORT);
    assert!(
        !through,
        "decode-0 -> Service vllm-prefill ({vip}, kube-proxy DNAT to the same pod) still passes"
    );
}

/// Seconds of the Ready condition's last transition, and whether it is True.
fn ready_condition(n: &Node, pod: &str) -> (bool, String) {
    let p = n.cluster.json(&["-n", NS, "get", "pod", pod]).unwrap();
    let c = p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    (
        c["status"] == "True",
        c["lastTransitionTime"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[test]
#[ignore = "needs the one-machine cluster: run through `cargo xtask test`"]
fn a_fault_on_every_peer_leaves_the_kubelets_probes_alone() {
    let n = node();
    n.delete_all_faults();
    let _cleanup = Cleanup(&n);
    let t = n.topo();
    let pod = t.decode[0].name.clone();
    let before = ready_condition(&n, &pod);
    assert!(before.0, "{pod} Ready before");
    let name = unique("every-peer");
    // No peers named: every peer, as the seed API's worker isolation asks.
    n.apply_fault(
        &name,
        json!({"podPrefix": pod, "partition": "packets", "duration": "1m"}),
    );
    n.wait_phase(&name, "Active", Duration::from_secs(10));
    // The workload's readiness probe: every second, three failures make the pod NotReady.
    std::thread::sleep(Duration::from_secs(6));
    let during = ready_condition(&n, &pod);
    n.delete_fault(&name);
    eprintln!(
        "node: {pod} Ready before {before:?}, after 6 s of a partition from every peer {during:?}"
    );
    assert!(
        during.0 && during.1 == before.1,
        "the kubelet's readiness probe of {pod} (from the node's address) was cut: Ready {during:?}"
    );
}

/// Removes the kill switch's ConfigMap, also when the test fails.
struct LiftKillSwitch<'a>(&'a Node);

impl Drop for LiftKillSwitch<'_> {
    fn drop(&mut self) {
        let _ = self.0.cluster.kubectl(&[
            "-n",
            SYSTEM_NS,
            "delete",
            "configmap",
            "faultline-kill-switch",
            "--ignore-not-found",
        ]);
    }
}

#[test]
#[ignore = "needs the one-machine cluster: run through `cargo xtask test`"]
fn the_kill_switch_configmap_from_kubectl_passes_traffic_and_its_deletion_restores_the_fault() {
    let n = node();
    n.delete_all_faults();
    let _cleanup = Cleanup(&n);
    let _lift = LiftKillSwitch(&n);
    let t = n.topo();
    let (d0, p) = (h(&t.decode[0]), h(&t.prefill[0]));
    let name = unique("kill-switch-cut");
    n.apply_fault(&name, partition("vllm-decode-0", "app=vllm-prefill", "2m"));
    n.wait_phase(&name, "Active", Duration::from_secs(10));
    std::thread::sleep(SHORT);
    assert!(!tcp(&d0, &p, 8000, SHORT), "decode-0 -> prefill cut");
    let s = measure::stream(&d0, &p, 2000, 44_210).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The README's commands, with the deployed RBAC (the node agent's Role reads ConfigMaps).
    let t0 = boottime_ns();
    n.cluster
        .kubectl(&[
            "-n",
            SYSTEM_NS,
            "create",
            "configmap",
            "faultline-kill-switch",
            "--from-literal=engaged=true",
            "--from-literal=by=node-test",
            "--from-literal=reason=checkout is down",
        ])
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let ks = n.api().kill_switch().unwrap();
    assert!(ks.engaged, "the API reads the ConfigMap: {ks:?}");
    assert_eq!(
        ks.engaged_by.as_ref().map(|a| a.by.as_str()),
        Some("node-test")
    );
    let t1 = boottime_ns();
    n.cluster
        .kubectl(&[
            "-n",
            SYSTEM_NS,
            "delete",
            "configmap",
            "faultline-kill-switch",
        ])
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let r = s.stop().unwrap();
    let passed = measure::first_arrived_after(&r, t0).expect("datagrams pass once engaged");
    let (sent, through) = measure::counts_between(&r, t0 + 1_000_000_000, t1);
    assert!(
        sent > 500 && through == sent,
        "whole while engaged: {through}/{sent}"
    );
    let cut = measure::first_lost_after(&r, t1).expect("the fault acts again after the deletion");
    let (sent, through) = measure::counts_between(&r, t1 + 1_000_000_000, u64::MAX);
    assert!(sent > 300 && through == 0, "cut again: {through}/{sent}");
    eprintln!(
        "node: kill switch ConfigMap: traffic passed {:.0} ms after `kubectl create`, cut again {:.0} ms after `kubectl delete`",
        ms(passed as i128 - t0 as i128),
        ms(cut as i128 - t1 as i128)
    );
    assert_eq!(
        n.api().get_fault(&name).map(|f| f.state).ok(),
        Some(fault_api::FaultState::Active),
        "the switch does not end the fault"
    );
}
