//! Fake nodes with no agent (but one smoke test): pods on the same node and on different
//! nodes reach each other in both families, through Service VIPs too (DNATed on the client's
//! node only, replies un-NATed there), a two-backend Service spreads connections over
//! backends on two nodes, a paced stream across nodes through a VIP arrives whole, and
//! nothing is left after a drop, a panic or a killed process. Needs root.
use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use fault_testkit::{
    Fabric, Family, NodeHandle, Pod, Service, StreamOpts,
    nodes::{FABRIC_V4, LOCK_FILE},
    probe::{
        TcpEchoServer, UdpEchoServer, tcp_connect, tcp_connect_each, tcp_echo_roundtrip,
        udp_echo_roundtrip, udp_reachable, udp_stream,
    },
    topology::{REGISTRY_DIR, names},
};

const WAIT: Duration = Duration::from_secs(2);
const UDP_PORT: u16 = 5_000;
const TCP_PORT: u16 = 7_000;
/// New TCP connections per family through the two-backend Service.
const SPREAD_CONNECTS: u16 = 500;
/// Environment variable that makes [`child_makes_a_fabric_and_waits`] run.
const CHILD_ENV: &str = "FAULTLINE_TESTKIT_NODES_CHILD";

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything of fabric `id` still on the machine: network namespaces and links named after
/// it, the root's fabric address, its registry entry.
fn traces(id: u32) -> Vec<String> {
    let p = names::prefix(id);
    let mut left: Vec<String> = sh("ip", &["netns", "list"])
        .lines()
        .chain(sh("ip", &["-o", "link", "show"]).lines())
        .filter(|l| l.split([' ', ':']).any(|w| w.starts_with(p.as_str())))
        .map(String::from)
        .collect();
    let addrs = sh("ip", &["-o", "addr", "show"]);
    left.extend(
        (addrs.lines())
            .filter(|l| l.contains(&format!("{FABRIC_V4}/")) || l.contains("fd00:fb::1/"))
            .map(String::from),
    );
    if sh("nft", &["list", "tables"]).contains(&names::fabric_bridge(id)) {
        left.push(format!("nftables table {}", names::fabric_bridge(id)));
    }
    let entry = format!("{REGISTRY_DIR}/{}", names::id_hex(id));
    if Path::new(&entry).exists() {
        left.push(entry);
    }
    left
}

/// Two nodes `n0`, `n1` (and more with `extra_nodes`).
fn fabric(hint: &str, nodes: usize) -> (Fabric, Vec<NodeHandle>) {
    let mut f = Fabric::new(hint).unwrap();
    let nodes = (0..nodes)
        .map(|k| f.add_node(&format!("n{k}")).unwrap())
        .collect();
    (f, nodes)
}

/// UDP one way and TCP echo from `a` to `b`.
fn check_direct(a: &Pod, b: &Pod, fam: Family) {
    let what = format!("{} -> {} {fam:?}", a.name(), b.name());
    assert!(
        udp_reachable(a, b, fam, UDP_PORT, WAIT).unwrap(),
        "UDP {what}"
    );
    let _echo = TcpEchoServer::start(b, fam, TCP_PORT).unwrap();
    assert!(
        tcp_echo_roundtrip(a, b, fam, TCP_PORT, WAIT).unwrap(),
        "TCP echo {what}"
    );
}

#[test]
fn pods_on_the_same_and_on_other_nodes_talk() {
    let _serial = fault_testkit::serial();
    let start = Instant::now();
    let (mut f, n) = fabric("nodes-talk", 3);
    let a0 = f.add_pod(&n[0], "ns", "a0", &[("app", "a")]).unwrap();
    let a1 = f.add_pod(&n[0], "ns", "a1", &[("app", "a")]).unwrap();
    let b0 = f.add_pod(&n[1], "ns", "b0", &[("app", "b")]).unwrap();
    let c0 = f.add_pod(&n[2], "ns", "c0", &[("app", "c")]).unwrap();
    assert_eq!(a1.ip(Family::V4).to_string(), "198.18.1.11");
    assert_eq!(b0.ip(Family::V6).to_string(), "fd00:fa:2::a");
    assert_eq!(c0.host_netns(), Some(n[2].netns_name()));
    assert_eq!(f.node_of(&b0), Some(&n[1]));
    eprintln!("3 nodes, 4 pods in {:?}", start.elapsed());
    for fam in Family::ALL {
        check_direct(&a0, &a1, fam);
        for (x, y) in [(&a0, &b0), (&b0, &a0), (&c0, &a1), (&b0, &c0)] {
            check_direct(x, y, fam);
        }
    }
    // The root namespace reaches every node's uplink (where agents listen).
    for node in &n {
        let ping = sh("ping", &["-c1", "-W2", &node.ip(Family::V4).to_string()]);
        assert!(ping.contains("1 received"), "{ping}");
    }
    eprintln!("in all {:?}", start.elapsed());
}

/// The source address of the answer of the UDP echo server behind `via` to a datagram sent
/// from `client`: un-NATed, it is the address the client sent to.
fn reply_source(client: &Pod, via: &Pod, fam: Family, port: u16) -> Option<SocketAddr> {
    let dest = SocketAddr::new(via.ip(fam), port);
    client
        .run(move || {
            let s = UdpSocket::bind(SocketAddr::new(fam.unspecified(), 0)).ok()?;
            s.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
            let mut buf = [0u8; 64];
            (0..20).find_map(|_| {
                s.send_to(b"where from?", dest).ok()?;
                s.recv_from(&mut buf).ok().map(|(_, src)| src)
            })
        })
        .unwrap()
}

/// UDP one way, UDP echo with the answer from the VIP, TCP connect and echo from `client`
/// to `via` (a backend seen through a Service's VIP).
fn check_vip(client: &Pod, via: &Pod, fam: Family, what: &str) {
    let what = format!("{what}: {} -> {} {fam:?}", client.name(), via.ip(fam));
    assert!(
        udp_reachable(client, via, fam, UDP_PORT, WAIT).unwrap(),
        "UDP through {what}"
    );
    let _uecho = UdpEchoServer::start(via, fam, UDP_PORT).unwrap();
    assert!(
        udp_echo_roundtrip(client, via, fam, UDP_PORT, WAIT).unwrap(),
        "UDP echo through {what}"
    );
    assert_eq!(
        reply_source(client, via, fam, UDP_PORT),
        Some(SocketAddr::new(via.ip(fam), UDP_PORT)),
        "answer un-NATed through {what}"
    );
    let _techo = TcpEchoServer::start(via, fam, TCP_PORT).unwrap();
    assert!(
        tcp_connect(client, via, fam, TCP_PORT, WAIT).unwrap(),
        "TCP connect through {what}"
    );
    assert!(
        tcp_echo_roundtrip(client, via, fam, TCP_PORT, WAIT).unwrap(),
        "TCP echo through {what}"
    );
}

/// The packets counted so far by the chain of `svc`'s `j`-th backend on `node` (the first
/// packet of each connection DNATed there).
fn dnat_count(f: &Fabric, node: &NodeHandle, svc_index: usize, j: usize) -> u64 {
    let table = names::svc_table(f.id());
    let chain = format!("svc{svc_index}_be{j}");
    let out = sh(
        "ip",
        &[
            "netns",
            "exec",
            node.netns_name(),
            "nft",
            "list",
            "chain",
            "inet",
            &table,
            &chain,
        ],
    );
    let after = out.split("packets ").nth(1).expect("a counter");
    after.split_whitespace().next().unwrap().parse().unwrap()
}

/// Whether the root namespace's conntrack has an entry for a datagram sent from `client` to
/// `via` (UDP, a fresh source port); `None` if the `conntrack` tool is not installed.
fn root_tracks(client: &Pod, via: &Pod, fam: Family) -> Option<bool> {
    let dest = SocketAddr::new(via.ip(fam), UDP_PORT);
    let sport = client
        .run(move || {
            let s = UdpSocket::bind(SocketAddr::new(fam.unspecified(), 0)).unwrap();
            s.send_to(b"tracked?", dest).unwrap();
            s.local_addr().unwrap().port()
        })
        .unwrap();
    let fam_arg = if fam == Family::V4 { "ipv4" } else { "ipv6" };
    let src = client.ip(fam).to_string();
    let sport = sport.to_string();
    let args = [
        "-L", "-f", fam_arg, "-p", "udp", "-s", &src, "--sport", &sport,
    ];
    let out = Command::new("conntrack").args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).contains("dport="))
}

#[test]
fn services_reach_backends_on_the_same_and_on_other_nodes() {
    let _serial = fault_testkit::serial();
    let start = Instant::now();
    let (mut f, n) = fabric("nodes-services", 2);
    let client = f.add_pod(&n[0], "ns", "client", &[]).unwrap();
    let near = f.add_pod(&n[0], "ns", "near", &[]).unwrap();
    let far = f.add_pod(&n[1], "ns", "far", &[]).unwrap();
    let svc_near = f.service("near", &[&near]).unwrap();
    let svc_far = f.service("far", &[&far]).unwrap();
    assert_eq!(svc_far.vip(Family::V4).to_string(), "198.19.0.11");
    assert!(f.service("far", &[&near]).is_err(), "name taken");
    let through = svc_near.through(&near);
    assert!(f.service("via", &[&through]).is_err(), "not a pod: a VIP");
    eprintln!("set up in {:?}", start.elapsed());
    for fam in Family::ALL {
        check_vip(&client, &svc_far.through(&far), fam, "other node");
        check_vip(&client, &svc_near.through(&near), fam, "same node");
        check_vip(&far, &svc_near.through(&near), fam, "other node, back");
    }
    // Each connection was DNATed on its client's node only: the packets crossed the fabric
    // with the backend's own address.
    let (far_on_n0, far_on_n1) = (dnat_count(&f, &n[0], 1, 0), dnat_count(&f, &n[1], 1, 0));
    assert!(far_on_n0 > 0 && far_on_n1 == 0, "{far_on_n0} {far_on_n1}");
    assert!(dnat_count(&f, &n[1], 0, 0) > 0, "far -> near DNATed on n1");
    let counts = svc_far.new_connections().unwrap();
    assert_eq!(counts, vec![("far".to_owned(), far_on_n0)]);
    // The root bridges those packets without tracking them.
    for fam in Family::ALL {
        let via = svc_far.through(&far);
        assert_ne!(root_tracks(&client, &via, fam), Some(true), "{fam:?}");
    }
    eprintln!("in all {:?}", start.elapsed());
}

#[test]
fn a_paced_stream_across_nodes_through_a_vip_arrives_whole() {
    let _serial = fault_testkit::serial();
    let (mut f, n) = fabric("nodes-stream", 2);
    let client = f.add_pod(&n[0], "ns", "client", &[]).unwrap();
    let backend = f.add_pod(&n[1], "ns", "backend", &[]).unwrap();
    let svc = f.service("s", &[&backend]).unwrap();
    let opts = StreamOpts {
        count: 5_000,
        port: UDP_PORT,
        ..Default::default()
    };
    for fam in Family::ALL {
        let r = udp_stream(&client, &svc.through(&backend), fam, &opts).unwrap();
        assert_eq!(
            (r.received, r.corrupted, r.duplicates, r.foreign),
            (5_000, 0, 0, 0),
            "stream through the VIP {fam:?}: {r}"
        );
    }
}

/// [`SPREAD_CONNECTS`] new TCP connections per family through `svc` (two backends
/// listening) from distinct source ports: all succeed, both backends get some in each
/// family, and the counters add up to the connections made.
fn check_spread(client: &Pod, svc: &Service) {
    let backends = svc.backends();
    let _servers: Vec<TcpEchoServer> = (backends.iter())
        .flat_map(|b| Family::ALL.map(|fam| TcpEchoServer::start(b, fam, TCP_PORT).unwrap()))
        .collect();
    let via = svc.through(&backends[0]);
    let (mut ok, mut before) = (0u64, vec![0u64; backends.len()]);
    for (fam, first_port) in [(Family::V4, 20_000), (Family::V6, 21_000)] {
        let ports = first_port..first_port + SPREAD_CONNECTS;
        ok += tcp_connect_each(client, &via, fam, TCP_PORT, ports, WAIT).unwrap();
        let counts = svc.new_connections().unwrap();
        eprintln!("{} after {fam:?}: {counts:?}", svc.name());
        for ((name, n), seen) in counts.iter().zip(&mut before) {
            assert!(
                *n > *seen,
                "no {fam:?} connection went to {name}: {counts:?}"
            );
            *seen = *n;
        }
    }
    assert_eq!(ok, 2 * u64::from(SPREAD_CONNECTS), "every connect succeeds");
    assert_eq!(
        before.iter().sum::<u64>(),
        ok,
        "counters add up: {before:?}"
    );
    for n in &before {
        // Binomial(1,000, 1/2): below 400 is more than 6 standard deviations away.
        assert!(*n > ok * 2 / 5, "uneven: {before:?}");
    }
}

#[test]
fn a_two_backend_service_spreads_connections_over_two_nodes() {
    let _serial = fault_testkit::serial();
    let start = Instant::now();
    let (mut f, n) = fabric("nodes-spread", 2);
    let client = f.add_pod(&n[0], "ns", "client", &[]).unwrap();
    let b0 = f.add_pod(&n[0], "ns", "backend-0", &[]).unwrap();
    let b1 = f.add_pod(&n[1], "ns", "backend-1", &[]).unwrap();
    let svc = f.service("two", &[&b0, &b1]).unwrap();
    check_spread(&client, &svc);
    eprintln!("in all {:?}", start.elapsed());
}

#[test]
fn inventories_list_own_pods_by_netns_and_others_by_node_and_ips() {
    let _serial = fault_testkit::serial();
    let (mut f, n) = fabric("nodes-inventory", 2);
    let d = f
        .dynamo_on(|pod| usize::from(pod.starts_with("vllm-prefill") || pod == "nats-0"))
        .unwrap();
    assert_eq!(f.node_of(&d.prefill).map(NodeHandle::name), Some("n1"));
    assert_eq!(d.prefill.ipv4().to_string(), "198.18.2.10");
    assert!(f.dynamo_on(|_| 7).is_err(), "no node 7");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n0.yaml");
    f.write_inventory(&n[0], &path).unwrap();
    let yaml = std::fs::read_to_string(&path).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let pods = v["pods"].as_sequence().unwrap();
    let names: Vec<&str> = pods.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "frontend-0",
            "vllm-decode-0",
            "vllm-decode-1",
            "vllm-prefill-0",
            "nats-0"
        ]
    );
    assert_eq!(pods[0]["netns"].as_str(), Some(d.frontend.netns_name()));
    assert_eq!(pods[3]["node"].as_str(), Some("n1"), "{yaml}");
    assert_eq!(pods[3]["labels"]["app"].as_str(), Some("vllm-prefill"));
    let ips: Vec<&str> = (pods[3]["ips"].as_sequence().unwrap().iter())
        .map(|ip| ip.as_str().unwrap())
        .collect();
    assert_eq!(ips, ["198.18.2.10", "fd00:fa:2::a"], "{yaml}");
    assert!(pods[3].get("netns").is_none(), "{yaml}");
}

#[test]
fn nothing_is_left_after_a_drop_or_a_panic() {
    let _serial = fault_testkit::serial();
    let (mut f, n) = fabric("nodes-drop", 2);
    let a = f.add_pod(&n[0], "ns", "a", &[]).unwrap();
    let b = f.add_pod(&n[1], "ns", "b", &[]).unwrap();
    f.service("s", &[&a, &b]).unwrap();
    let id = f.id();
    assert!(traces(id).len() >= 8, "{:?}", traces(id));
    let err = format!("{:#}", Fabric::new("nodes-second").err().expect("refused"));
    assert!(
        err.contains("another Fabric") && err.contains(&f.prefix()),
        "{err}"
    );
    drop(f);
    assert_eq!(traces(id), Vec::<String>::new(), "after a drop");

    let seen = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let (mut f, n) = fabric("nodes-panic", 2);
        let a = f.add_pod(&n[0], "ns", "a", &[]).unwrap();
        f.service("s", &[&a]).unwrap();
        *seen.lock().unwrap() = Some(f.id());
        panic!("a test failing half-way");
    });
    assert!(result.is_err());
    let id = seen.into_inner().unwrap().expect("got that far");
    assert_eq!(traces(id), Vec::<String>::new(), "after a panic");
}

/// Run by [`a_killed_process_leaves_nothing_after_reaping`] in a child process: makes a
/// fabric with two nodes, a pod each and a Service, prints `READY <id>`, and waits to be
/// killed.
#[test]
#[ignore = "run in a child process by a_killed_process_leaves_nothing_after_reaping"]
fn child_makes_a_fabric_and_waits() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let (mut f, n) = fabric("nodes-killed", 2);
    let a = f.add_pod(&n[0], "ns", "a", &[]).unwrap();
    let b = f.add_pod(&n[1], "ns", "b", &[]).unwrap();
    f.service("s", &[&a, &b]).unwrap();
    println!("READY {}", f.id());
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_process_leaves_nothing_after_reaping() {
    let _serial = fault_testkit::serial();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_makes_a_fabric_and_waits",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let id: u32 = (out.lines())
        .find_map(|l| {
            l.unwrap()
                .strip_prefix("READY ")
                .map(|id| id.parse().unwrap())
        })
        .expect("the child got ready");
    let before = traces(id);
    assert!(before.len() >= 8, "{before:?}");
    let err = format!("{:#}", Fabric::new("nodes-other").err().expect("held"));
    assert!(err.contains(&format!("pid {}", child.id())), "{err}");
    fault_testkit::reap_stale();
    assert_eq!(traces(id), before, "a live process's fabric is kept");
    child.kill().unwrap();
    child.wait().unwrap();
    fault_testkit::reap_stale();
    assert_eq!(traces(id), Vec::<String>::new());
    // The lock died with the child.
    drop(Fabric::new("nodes-after").unwrap());
    assert!(Path::new(LOCK_FILE).exists());
}

/// Whether the workspace binaries are there; without them (and without
/// `FAULTLINE_BIN_DIR`, which CI sets) the agent smoke test is skipped.
fn have_agent_binaries() -> bool {
    let found = ["fault-agent", "faultctl"]
        .iter()
        .all(|b| fault_testkit::bin_path(b).is_ok());
    if !found && std::env::var_os(fault_testkit::agent::BIN_DIR_ENV).is_none() {
        eprintln!("skipped: run `cargo build -p fault-agent -p faultctl` first");
        return false;
    }
    true
}

#[test]
fn an_agent_on_a_node_answers_the_root_namespace() {
    let _serial = fault_testkit::serial();
    if !have_agent_binaries() {
        return;
    }
    let (mut f, n) = fabric("nodes-agent", 2);
    // Every inventory pod on n0: the agent does not read other nodes' pods yet.
    let d = f.dynamo_on(|_| 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("n0.yaml");
    f.write_inventory(&n[0], &inventory).unwrap();
    let peer = f.add_pod(&n[1], "ns", "peer", &[]).unwrap();
    // No `--uplink`: the agent does not know it yet.
    let mut agent = n[0].agent(&inventory).max_duration("10m").start().unwrap();
    assert_eq!(agent.netns(), Some(n[0].netns_name()));
    assert_eq!(agent.listen_addr().ip(), n[0].ip(Family::V4));
    assert!(agent.client().ready(), "{}", agent.log_tail(20));
    let out = agent.faultctl(&["list"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.kill().unwrap();
    agent.restart().unwrap();
    assert!(agent.client().ready());
    let status = agent.terminate().unwrap();
    assert!(status.success(), "exit {status}:\n{}", agent.log_tail(40));
    let un = agent.uninstall().unwrap();
    assert!(
        un.status.success(),
        "{}",
        String::from_utf8_lossy(&un.stderr)
    );
    // Pods still talk across nodes once the agent is gone.
    for fam in Family::ALL {
        check_direct(&d.frontend, &peer, fam);
    }
    // A fabric dropped before its agent stops it first; the agent's own drop still works
    // (its namespace stays open until then).
    agent.restart().unwrap();
    let id = f.id();
    drop(f);
    assert!(!agent.is_running(), "{}", agent.log_tail(20));
    assert_eq!(traces(id), Vec::<String>::new());
    let bpffs = agent.bpffs().to_owned();
    drop(agent);
    assert!(!bpffs.exists(), "{}", bpffs.display());
}
