//! The harness measures nothing of its own: with no agent, probes between pods succeed and
//! streams arrive whole; and what it creates is gone after it is dropped (also on panic, and
//! after its process died). Needs root.
use std::{net::IpAddr, process::Command, time::Duration};

use fault_testkit::{
    Family, Mode, StreamOpts, Topology,
    probe::{
        TcpEchoServer, UdpEchoServer, ping, tcp_connect, tcp_echo_roundtrip, udp_echo_roundtrip,
        udp_reachable, udp_stream, udp_stream_background,
    },
    topology::REGISTRY_DIR,
};

const WAIT: Duration = Duration::from_secs(2);

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of network namespaces (`ip netns list`) and links (`ip -o link show`) that start
/// with `prefix`.
fn leftovers(prefix: &str) -> Vec<String> {
    let netns = ip(&["netns", "list"]);
    let links = ip(&["-o", "link", "show"]);
    let link_names = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n));
    netns
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .chain(link_names)
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect()
}

#[test]
fn pods_talk_and_streams_arrive_whole_then_everything_goes() {
    let _serial = fault_testkit::serial();
    let mut topo = Topology::named("testkit-self-test").unwrap();
    let a = topo.add_pod("ns", "a", &[("app", "a")]).unwrap();
    let b = topo.add_pod("ns", "b", &[("app", "b")]).unwrap();
    let c = topo.add_pod("other", "c", &[]).unwrap();
    let prefix = topo.prefix();
    assert_eq!(
        leftovers(&prefix).len(),
        1 + 3 + 3,
        "bridge, 3 host veths, 3 namespaces: {:?}",
        leftovers(&prefix)
    );

    for fam in Family::ALL {
        for (from, to) in [(&a, &b), (&b, &a), (&a, &c), (&c, &b)] {
            assert!(
                udp_reachable(from, to, fam, 5000, WAIT).unwrap(),
                "UDP {} -> {} {fam:?}",
                from.name(),
                to.name()
            );
        }
        let _echo = TcpEchoServer::start(&b, fam, 7000).unwrap();
        assert!(
            tcp_echo_roundtrip(&a, &b, fam, 7000, WAIT).unwrap(),
            "TCP echo {fam:?}"
        );
        assert!(
            tcp_connect(&c, &b, fam, 7000, WAIT).unwrap(),
            "TCP connect {fam:?}"
        );
        assert!(
            !tcp_connect(&c, &b, fam, 7001, WAIT).unwrap(),
            "nothing listens on 7001: refused"
        );
        let _uecho = UdpEchoServer::start(&c, fam, 9100).unwrap();
        assert!(
            udp_echo_roundtrip(&a, &c, fam, 9100, WAIT).unwrap(),
            "UDP echo {fam:?}"
        );
    }

    // With no agent, nothing may be lost, changed or repeated.
    let opts = StreamOpts {
        count: 5_000,
        ..Default::default()
    };
    for (from, to, fam) in [(&a, &b, Family::V4), (&b, &a, Family::V6)] {
        let r = udp_stream(from, to, fam, &opts).unwrap();
        eprintln!("{} -> {} {fam:?}: {r}", from.name(), to.name());
        assert_eq!(
            (r.sent, r.received, r.corrupted, r.duplicates, r.foreign),
            (5_000, 5_000, 0, 0, 0),
            "{r}"
        );
        assert_eq!(r.loss_ratio(), 0.0);
        assert_eq!(r.corrupt_ratio(), 0.0);
        assert_eq!(r.arrivals.len(), 5_000);
        assert!(r.arrived().iter().all(|x| *x));
        assert!(r.first_send_ns > 0 && r.last_send_ns > r.first_send_ns);
        // Paced at 20,000/s: 5,000 datagrams take about 250 ms.
        let span_ms = (r.last_send_ns - r.first_send_ns) / 1_000_000;
        assert!((200..1_000).contains(&span_ms), "sent over {span_ms} ms");
        assert!(r.arrivals.iter().all(|x| x.recv_ns >= x.send_ns));
    }

    drop(topo);
    assert_eq!(leftovers(&prefix), Vec::<String>::new(), "left behind");
}

#[test]
fn a_background_stream_runs_until_stopped() {
    let _serial = fault_testkit::serial();
    let mut topo = Topology::named("testkit-background").unwrap();
    let a = topo.add_pod("ns", "a", &[]).unwrap();
    let b = topo.add_pod("ns", "b", &[]).unwrap();
    let opts = StreamOpts {
        count: u64::MAX,
        rate_pps: 1_000,
        drain: Duration::from_millis(100),
        ..Default::default()
    };
    let h = udp_stream_background(&a, &b, Family::V6, &opts).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(h.is_sending());
    let r = h.stop().unwrap();
    eprintln!("background: {r}");
    // One per ms for 500 ms.
    assert!((400..=600).contains(&r.sent), "{r}");
    assert_eq!(
        (r.received, r.corrupted, r.duplicates),
        (r.sent, 0, 0),
        "{r}"
    );
    // A stopped stream frees its port.
    let r = udp_stream(&a, &b, Family::V6, &StreamOpts { count: 100, ..opts }).unwrap();
    assert_eq!(r.received, 100, "{r}");
}

#[test]
fn inventory_readdress_and_removal() {
    let mut topo = Topology::named("testkit-inventory").unwrap();
    let d = topo.dynamo().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.yaml");
    topo.write_inventory(&path).unwrap();
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let pods = doc["pods"].as_sequence().unwrap();
    assert_eq!(pods.len(), 5);
    assert_eq!(pods[1]["namespace"].as_str(), Some("dynamo"));
    assert_eq!(pods[1]["name"].as_str(), Some("vllm-decode-0"));
    assert_eq!(pods[1]["labels"]["app"].as_str(), Some("vllm-decode"));
    assert_eq!(
        pods[1]["labels"]["nvidia.com/dynamo-component-type"].as_str(),
        Some("worker")
    );
    assert_eq!(pods[1]["netns"].as_str(), Some(d.decode0.netns_name()));
    assert_eq!(
        pods[4]["labels"]["app.kubernetes.io/name"].as_str(),
        Some("nats")
    );
    assert!(d.decode0.netns_path().exists());
    assert_eq!(d.frontend.ipv4().to_string(), "198.18.0.10");
    assert_eq!(d.frontend.ipv6().to_string(), "fd00:fa::a");
    assert!(d.decode0.host_ifname().len() <= 15);

    // Pod::run may borrow: the closure sees the pod's own interfaces only.
    let want = d.prefill.ipv4();
    let addrs = d
        .prefill
        .run(|| ip(&["-o", "-4", "addr", "show", "dev", "eth0"]))
        .unwrap();
    assert!(addrs.contains(&format!("{want}/16")), "{addrs}");

    let moved = topo.readdress(&d.prefill, 77).unwrap();
    assert_eq!(moved.ip(Family::V4), IpAddr::from([198, 18, 0, 77]));
    assert!(udp_reachable(&d.frontend, &moved, Family::V4, 5000, WAIT).unwrap());
    assert!(
        !udp_reachable(
            &d.frontend,
            &d.prefill,
            Family::V4,
            5000,
            Duration::from_millis(200)
        )
        .unwrap(),
        "old address gone"
    );
    assert!(topo.readdress(&d.nats, 77).is_err(), "address taken");
    assert_eq!(
        topo.pod("dynamo", "vllm-prefill-0").unwrap().ipv4(),
        moved.ipv4()
    );

    topo.remove_pod(&d.decode1).unwrap();
    assert!(!d.decode1.netns_path().exists());
    assert!(!fault_testkit::topology::link_exists(
        d.decode1.host_ifname()
    ));
    topo.write_inventory(&path).unwrap();
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(doc["pods"].as_sequence().unwrap().len(), 4);
    assert!(topo.remove_pod(&d.decode1).is_err(), "removed already");
    assert!(
        topo.add_pod("dynamo", "nats-0", &[]).is_err(),
        "duplicate pod"
    );

    let p = ping(
        &d.frontend,
        d.nats.ip(Family::V6),
        3,
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!((p.transmitted, p.received), (3, 3));
}

/// Lines of `ip rule` (both families) and of the routes of every table that name `prefix`'s
/// links or routing table `table`.
fn routing_leftovers(prefix: &str, table: u32) -> Vec<String> {
    let mut left = Vec::new();
    for fam in ["-4", "-6"] {
        let rules = ip(&[fam, "rule", "show"]);
        let routes = ip(&[fam, "route", "show", "table", "all"]);
        left.extend(
            rules
                .lines()
                .chain(routes.lines())
                .filter(|l| {
                    l.contains(&format!("lookup {table}"))
                        || l.contains(&format!("table {table}"))
                        || l.contains(&format!("dev {prefix}"))
                        || l.contains(&format!("iif {prefix}"))
                })
                .map(String::from),
        );
    }
    left
}

#[test]
fn routed_pods_talk_readdress_and_go() {
    let _serial = fault_testkit::serial();
    let mut topo = Topology::routed("testkit-routed").unwrap();
    assert_eq!((topo.mode(), topo.bridge()), (Mode::Routed, ""));
    let table = topo.route_table().unwrap();
    let d = topo.dynamo().unwrap();
    let prefix = topo.prefix();
    assert_eq!(
        leftovers(&prefix).len(),
        5 + 5,
        "5 host veths, 5 namespaces, no bridge: {:?}",
        leftovers(&prefix)
    );
    let addrs = d
        .prefill
        .run(|| ip(&["-o", "addr", "show", "dev", "eth0"]))
        .unwrap();
    assert!(
        addrs.contains("198.18.0.13/32") && addrs.contains("fd00:fa::d/128"),
        "{addrs}"
    );

    // The agent finds routed pods exactly as bridged ones.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.yaml");
    topo.write_inventory(&path).unwrap();
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(doc["pods"][1]["name"].as_str(), Some("vllm-decode-0"));
    assert_eq!(
        doc["pods"][1]["netns"].as_str(),
        Some(d.decode0.netns_name())
    );
    assert_eq!(
        doc["pods"][1]["labels"]["app"].as_str(),
        Some("vllm-decode")
    );

    // A second routed topology, same addresses: neither sees the other's routes.
    let mut other = Topology::routed("testkit-routed-other").unwrap();
    let o0 = other.add_pod("ns", "o0", &[]).unwrap();
    let o1 = other.add_pod("ns", "o1", &[]).unwrap();
    for fam in Family::ALL {
        for (from, to) in [(&d.frontend, &d.decode0), (&d.decode0, &d.nats), (&o0, &o1)] {
            assert!(
                udp_reachable(from, to, fam, 5000, WAIT).unwrap(),
                "UDP {} -> {} {fam:?}",
                from.name(),
                to.name()
            );
        }
        let _echo = TcpEchoServer::start(&d.decode1, fam, 7000).unwrap();
        assert!(tcp_echo_roundtrip(&d.frontend, &d.decode1, fam, 7000, WAIT).unwrap());
    }
    drop(other);
    let opts = StreamOpts {
        count: 5_000,
        ..Default::default()
    };
    for fam in Family::ALL {
        let r = udp_stream(&d.frontend, &d.prefill, fam, &opts).unwrap();
        assert_eq!(
            (r.received, r.corrupted, r.duplicates),
            (5_000, 0, 0),
            "{fam:?}: {r}"
        );
    }

    let moved = topo.readdress(&d.prefill, 77).unwrap();
    assert!(udp_reachable(&d.frontend, &moved, Family::V4, 5000, WAIT).unwrap());
    assert!(udp_reachable(&moved, &d.frontend, Family::V4, 5000, WAIT).unwrap());
    let short = Duration::from_millis(200);
    assert!(
        !udp_reachable(&d.frontend, &d.prefill, Family::V4, 5000, short).unwrap(),
        "old address gone"
    );
    assert!(topo.readdress(&d.nats, 77).is_err(), "address taken");

    topo.remove_pod(&d.decode1).unwrap();
    assert!(!d.decode1.netns_path().exists());
    let rules = ip(&["rule", "show"]);
    assert!(!rules.contains(d.decode1.host_ifname()), "{rules}");
    assert!(udp_reachable(&d.frontend, &d.nats, Family::V6, 5000, WAIT).unwrap());

    drop(topo);
    assert_eq!(leftovers(&prefix), Vec::<String>::new(), "left behind");
    assert_eq!(routing_leftovers(&prefix, table), Vec::<String>::new());
}

#[test]
fn nothing_is_left_when_a_test_panics() {
    let prefix = std::sync::Mutex::new(String::new());
    for mode in [Mode::Bridged, Mode::Routed] {
        let result = std::panic::catch_unwind(|| {
            let mut topo = Topology::with_mode("testkit-panic", mode).unwrap();
            topo.add_pod("ns", "a", &[]).unwrap();
            *prefix.lock().unwrap() = topo.prefix();
            panic!("a test failing half-way");
        });
        assert!(result.is_err());
        let prefix = std::mem::take(&mut *prefix.lock().unwrap());
        assert!(!prefix.is_empty());
        assert_eq!(leftovers(&prefix), Vec::<String>::new());
        let id = u32::from_str_radix(&prefix[2..], 16).unwrap();
        let table = fault_testkit::topology::names::route_table(id);
        assert_eq!(routing_leftovers(&prefix, table), Vec::<String>::new());
    }
}

#[test]
fn objects_of_a_dead_process_are_reaped() {
    // A process that ran and is gone: its pid is dead.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let id = format!("fe0{:03x}", dead & 0xfff);
    let prefix = format!("fl{id}");
    let entry = format!("{REGISTRY_DIR}/{id}");
    assert!(
        !std::path::Path::new(&entry).exists() && leftovers(&prefix).is_empty(),
        "id {id} in use"
    );
    // Objects first: unregistered, no concurrent reaper touches them yet.
    ip(&["netns", "add", &format!("{prefix}-0")]);
    ip(&["link", "add", &format!("{prefix}br"), "type", "bridge"]);
    ip(&[
        "link",
        "add",
        &format!("{prefix}p0"),
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &format!("{prefix}-0"),
    ]);
    assert_eq!(leftovers(&prefix).len(), 3);
    std::fs::create_dir_all(REGISTRY_DIR).unwrap();
    std::fs::write(&entry, format!("{dead}\n")).unwrap();
    // A live process's topology is kept.
    let alive = Topology::named("testkit-alive").unwrap();
    fault_testkit::reap_stale();
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    assert!(!std::path::Path::new(&entry).exists());
    assert!(fault_testkit::topology::link_exists(alive.bridge()));
}
