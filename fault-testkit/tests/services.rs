//! Services as kube-proxy makes them, with no agent: on bridged and routed pods, in both
//! families, clients reach backends directly and through every front door of a Service (VIP,
//! external IP, node port) with UDP and TCP, replies come back from the address the client
//! sent to, streams through a VIP arrive whole, a two-backend Service spreads new connections over both, and nothing is left
//! after a drop, a panic, or a killed process. Needs root.
use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, UdpSocket},
    ops::RangeInclusive,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use fault_testkit::{
    Family, Mode, Pod, Service, ServiceNet, ServiceOpts, StreamOpts, Topology,
    probe::{
        TcpEchoServer, UdpEchoServer, tcp_connect, tcp_echo_roundtrip, udp_echo_roundtrip,
        udp_reachable, udp_stream,
    },
    topology::names,
};

const WAIT: Duration = Duration::from_secs(2);
const NODE_PORTS: RangeInclusive<u16> = 30_000..=30_009;
/// Ports of the probes through a Service: in [`NODE_PORTS`], so they work through every door.
const UDP_PORT: u16 = 30_001;
const TCP_PORT: u16 = 30_002;
/// New TCP connections per family through the two-backend Service.
const SPREAD_CONNECTS: usize = 1_000;
/// Environment variable that makes [`child_makes_services_and_waits`] run (its value: the
/// mode, `Bridged` or `Routed`).
const CHILD_ENV: &str = "FAULTLINE_TESTKIT_SERVICES_CHILD";

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names of a topology's kernel objects, to look for leftovers.
#[derive(Debug, Clone)]
struct Names {
    prefix: String,
    svc_table: String,
    route_table: u32,
}

impl Names {
    fn of(id: u32) -> Self {
        Self {
            prefix: names::prefix(id),
            svc_table: names::svc_table(id),
            route_table: names::route_table(id),
        }
    }

    /// Everything of the topology and its Services still on the machine: network namespaces,
    /// links (and so their addresses), the nftables table, rules and routes naming its links or
    /// its routing table.
    fn traces(&self) -> Vec<String> {
        let p = &self.prefix;
        let table = format!("table {}", self.route_table);
        let mut left: Vec<String> = sh("ip", &["netns", "list"])
            .lines()
            .chain(sh("ip", &["-o", "link", "show"]).lines())
            .chain(sh("ip", &["-o", "addr", "show"]).lines())
            .filter(|l| l.split([' ', ':']).any(|w| w.starts_with(p.as_str())))
            .map(String::from)
            .collect();
        if sh("nft", &["list", "tables"]).contains(&self.svc_table) {
            left.push(format!("nftables table {}", self.svc_table));
        }
        for fam in ["-4", "-6"] {
            let rules = sh("ip", &[fam, "rule", "show"]);
            let routes = sh("ip", &[fam, "route", "show", "table", "all"]);
            let mine = |l: &&str| {
                l.contains(&format!("lookup {}", self.route_table))
                    || l.contains(&table)
                    || l.contains(&format!("dev {p}"))
                    || l.contains(&format!("iif {p}"))
            };
            left.extend(
                rules
                    .lines()
                    .chain(routes.lines())
                    .filter(mine)
                    .map(String::from),
            );
        }
        left
    }
}

/// Direct traffic between pods of the topology, both ways.
fn check_direct(a: &Pod, b: &Pod, fam: Family) {
    for (from, to) in [(a, b), (b, a)] {
        assert!(
            udp_reachable(from, to, fam, 5_000, WAIT).unwrap(),
            "UDP {} -> {} {fam:?}",
            from.name(),
            to.name()
        );
    }
    let _echo = TcpEchoServer::start(b, fam, 7_000).unwrap();
    assert!(
        tcp_echo_roundtrip(a, b, fam, 7_000, WAIT).unwrap(),
        "TCP echo direct {fam:?}"
    );
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

/// UDP one-way, UDP echo (and where the answer comes from), TCP connect and echo from
/// `client` to `via` (a backend seen through one door of a Service).
fn check_door(client: &Pod, via: &Pod, fam: Family, door: &str) {
    let what = format!("{door} {} {fam:?}", via.ip(fam));
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

/// [`SPREAD_CONNECTS`] new TCP connections per family through `svc` (two backends listening):
/// all succeed, both backends get some, the counters add up to the connections made.
fn check_spread(client: &Pod, svc: &Service) {
    let backends = svc.backends();
    let _servers: Vec<TcpEchoServer> = (backends.iter())
        .flat_map(|b| Family::ALL.map(|fam| TcpEchoServer::start(b, fam, TCP_PORT).unwrap()))
        .collect();
    let via = svc.through(&backends[0]);
    let (mut ok, mut before) = (0u64, vec![0u64; backends.len()]);
    for fam in Family::ALL {
        for _ in 0..SPREAD_CONNECTS {
            ok += u64::from(tcp_connect(client, &via, fam, TCP_PORT, WAIT).unwrap());
        }
        let counts = svc.new_connections().unwrap();
        eprintln!("{} new connections after {fam:?}: {counts:?}", svc.name());
        for ((name, n), seen) in counts.iter().zip(&mut before) {
            assert!(
                *n - *seen > 0,
                "no {fam:?} connection went to {name}: {counts:?}"
            );
            *seen = *n;
        }
    }
    assert_eq!(ok, 2 * SPREAD_CONNECTS as u64, "every connect succeeds");
    assert_eq!(
        before.iter().sum::<u64>(),
        ok,
        "counters add up to the connects"
    );
    for n in &before {
        // Binomial(2,000, 1/2): below 800 is 9 standard deviations away.
        assert!(*n > ok * 2 / 5, "uneven: {before:?}");
    }
}

fn services_work(mode: Mode) {
    let _serial = fault_testkit::serial();
    let start = Instant::now();
    let mut topo = Topology::with_mode(&format!("svc-{mode:?}"), mode).unwrap();
    let client = topo.add_pod("ns", "client", &[("app", "client")]).unwrap();
    let b1 = topo
        .add_pod("ns", "backend-1", &[("app", "backend")])
        .unwrap();
    let mut net = ServiceNet::new(&topo).unwrap();
    // A pod added after the ServiceNet.
    let b2 = topo
        .add_pod("ns", "backend-2", &[("app", "backend")])
        .unwrap();
    net.route_pod(&b2).unwrap();
    let opts = ServiceOpts {
        external_ip: true,
        node_ports: Some(NODE_PORTS),
    };
    let one = net.service_with("one", &[&b1], &opts).unwrap();
    let two = net.service("two", &[&b1, &b2]).unwrap();
    assert_eq!(one.addresses().len(), 6);
    assert_eq!(one.node_ip(Family::V4), Some(net.node_ip(Family::V4)));
    assert!(net.service("one", &[&b2]).is_err(), "name taken");
    let overlap = ServiceOpts {
        node_ports: Some(30_009..=30_010),
        ..Default::default()
    };
    assert!(
        net.service_with("three", &[&b2], &overlap).is_err(),
        "ports taken"
    );
    let names = Names::of(topo.id());
    eprintln!("{mode:?}: set up in {:?}", start.elapsed());

    let t = Instant::now();
    for fam in Family::ALL {
        check_direct(&client, &b1, fam);
        check_direct(&client, &b2, fam);
        check_door(&client, &one.through(&b1), fam, "VIP");
        check_door(&client, &one.through_external(&b1), fam, "external IP");
        check_door(&client, &one.through_node_port(&b1), fam, "node port");
    }
    // A paced stream through the VIP arrives whole, as between pods.
    let opts = StreamOpts {
        count: 5_000,
        port: UDP_PORT,
        ..Default::default()
    };
    for fam in Family::ALL {
        let r = udp_stream(&client, &one.through(&b1), fam, &opts).unwrap();
        assert_eq!(
            (r.received, r.corrupted, r.duplicates, r.foreign),
            (5_000, 0, 0, 0),
            "stream through the VIP {fam:?}: {r}"
        );
    }
    let first = one.new_connections().unwrap();
    assert_eq!(first.len(), 1);
    assert!(first[0].1 > 0, "{first:?}");
    eprintln!("{mode:?}: direct and front doors in {:?}", t.elapsed());

    let t = Instant::now();
    check_spread(&client, &two);
    eprintln!(
        "{mode:?}: {} connects in {:?}",
        2 * SPREAD_CONNECTS,
        t.elapsed()
    );

    drop(net);
    let left = names.traces();
    assert!(
        !left
            .iter()
            .any(|l| l.contains(&names.svc_table) || l.contains("198.18.255.1")),
        "{left:?}"
    );
    if mode == Mode::Bridged {
        let addrs = sh("ip", &["-o", "addr", "show", "dev", topo.bridge()]);
        assert!(
            !addrs.contains("198.18.0.1/") && !addrs.contains("fd00:fa::1/"),
            "{addrs}"
        );
    }
    check_direct(&client, &b2, Family::V6);
    drop(topo);
    assert_eq!(names.traces(), Vec::<String>::new(), "left behind");
    eprintln!("{mode:?}: {:?} in all", start.elapsed());
}

#[test]
fn bridged_pods_reach_backends_through_services() {
    services_work(Mode::Bridged);
}

#[test]
fn routed_pods_reach_backends_through_services() {
    services_work(Mode::Routed);
}

#[test]
fn a_second_service_net_is_refused() {
    let _serial = fault_testkit::serial();
    let a = Topology::named("svc-second-a").unwrap();
    let b = Topology::routed("svc-second-b").unwrap();
    let net = ServiceNet::new(&a).unwrap();
    for other in [&b, &a] {
        let err = format!("{:#}", ServiceNet::new(other).err().expect("refused"));
        assert!(err.contains("another ServiceNet"), "{err}");
        assert!(err.contains(&a.prefix()), "names the holder: {err}");
    }
    drop(net);
    let net = ServiceNet::new(&b).unwrap();
    assert_eq!(net.table(), names::svc_table(b.id()));
}

#[test]
fn through_a_pod_that_is_no_backend_panics() {
    let _serial = fault_testkit::serial();
    let mut topo = Topology::routed("svc-through").unwrap();
    let a = topo.add_pod("ns", "a", &[]).unwrap();
    let b = topo.add_pod("ns", "b", &[]).unwrap();
    let mut net = ServiceNet::new(&topo).unwrap();
    let svc = net.service("s", &[&b]).unwrap();
    assert_eq!(svc.through(&b).netns_name(), b.netns_name());
    assert_eq!(svc.through(&b).ip(Family::V6), svc.vip(Family::V6));
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let not_backend = std::panic::catch_unwind(|| svc.through(&a));
    let no_external = std::panic::catch_unwind(|| svc.through_external(&b));
    std::panic::set_hook(quiet);
    assert!(not_backend.is_err() && no_external.is_err());
}

#[test]
fn nothing_is_left_when_a_service_test_panics() {
    let _serial = fault_testkit::serial();
    for mode in [Mode::Bridged, Mode::Routed] {
        let names = Mutex::new(None);
        let result = std::panic::catch_unwind(|| {
            let mut topo = Topology::with_mode("svc-panic", mode).unwrap();
            let a = topo.add_pod("ns", "a", &[]).unwrap();
            let mut net = ServiceNet::new(&topo).unwrap();
            let opts = ServiceOpts {
                external_ip: true,
                node_ports: Some(NODE_PORTS),
            };
            net.service_with("s", &[&a], &opts).unwrap();
            let n = Names::of(topo.id());
            assert!(n.traces().len() > 3, "{:?}", n.traces());
            *names.lock().unwrap() = Some(n);
            panic!("a test failing half-way");
        });
        assert!(result.is_err());
        let names = names.into_inner().unwrap().expect("got that far");
        assert_eq!(names.traces(), Vec::<String>::new(), "{mode:?}");
    }
}

/// Run by [`a_killed_process_leaves_nothing_after_reaping`] in a child process: makes a
/// topology of the mode in [`CHILD_ENV`] with a Service, prints `READY <id>`, and waits to be
/// killed.
#[test]
#[ignore = "run in a child process by a_killed_process_leaves_nothing_after_reaping"]
fn child_makes_services_and_waits() {
    let Some(mode) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mode = if mode == "Routed" {
        Mode::Routed
    } else {
        Mode::Bridged
    };
    let mut topo = Topology::with_mode("svc-killed", mode).unwrap();
    let a = topo.add_pod("ns", "a", &[]).unwrap();
    let mut net = ServiceNet::new(&topo).unwrap();
    let opts = ServiceOpts {
        external_ip: true,
        node_ports: Some(NODE_PORTS),
    };
    net.service_with("s", &[&a], &opts).unwrap();
    println!("READY {}", topo.id());
    std::thread::sleep(Duration::from_secs(60));
}

/// Starts [`child_makes_services_and_waits`] in a child process; returns it and its topology id.
fn start_child(mode: Mode) -> (std::process::Child, u32) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_makes_services_and_waits",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, format!("{mode:?}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        if let Some(id) = line.unwrap().strip_prefix("READY ") {
            return (child, id.trim().parse().unwrap());
        }
    }
    panic!("the child exited before it was ready: {:?}", child.wait());
}

#[test]
fn a_killed_process_leaves_nothing_after_reaping() {
    let _serial = fault_testkit::serial();
    let other = Topology::named("svc-other").unwrap();
    for mode in [Mode::Bridged, Mode::Routed] {
        let (mut child, id) = start_child(mode);
        let names = Names::of(id);
        let before = names.traces();
        assert!(
            before.iter().any(|l| l.contains(&names.svc_table)),
            "{before:?}"
        );
        let err = format!(
            "{:#}",
            ServiceNet::new(&other).err().expect("held by the child")
        );
        assert!(err.contains(&format!("pid {}", child.id())), "{err}");
        // Reaping spares a live process's objects.
        fault_testkit::reap_stale();
        assert_eq!(names.traces(), before);
        child.kill().unwrap();
        child.wait().unwrap();
        fault_testkit::reap_stale();
        assert_eq!(names.traces(), Vec::<String>::new(), "{mode:?}");
    }
    // The lock died with the child.
    drop(ServiceNet::new(&other).unwrap());
}
