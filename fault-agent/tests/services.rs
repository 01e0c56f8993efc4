//! Faults between pods hold when the pods talk through Services: the host DNATs a
//! ClusterIP-like VIP, an external IP and a node port to the backend (as kube-proxy does, in
//! the host's prerouting, after the client's veth), on bridged and on routed pods, IPv4 and
//! IPv6. Measured on real packets: partitions (packets and connections) in each direction,
//! loss and corruption shares, recovery and expiry, and the exact share of a Service with two
//! backends of which one is a peer. Needs root.
mod common;

use std::{
    ops::RangeInclusive,
    time::{Duration, Instant},
};

use common::*;
use fault_api::FaultState;
use fault_testkit::{
    AgentProcess, Dynamo, Family, Mode, Pod, Service, ServiceNet, ServiceOpts, StreamOpts,
    Topology,
    probe::{self, TcpEchoServer, UdpEchoServer, udp_echo_stream, udp_reachable, udp_stream},
    serial,
};

/// Node ports of the prefill Service; every probe port through it is one of them, so that
/// every front door carries it.
const NODE_PORTS: RangeInclusive<u16> = 30_000..=30_009;
const UDP_PORT: u16 = 30_001;
const TCP_PORT: u16 = 30_002;
const ECHO_PORT: u16 = 30_003;
const STREAM_PORT: u16 = 30_004;
/// Datagrams per measured share; +-1.5 points is more than 4 standard deviations at 30%.
const DATAGRAMS: u64 = 20_000;
const TOLERANCE: f64 = 0.015;
/// How long a TCP connect through a Service may take (one SYN: the first retransmission
/// comes after 1 s).
const CONNECT: Duration = Duration::from_millis(200);

/// The inference pods on `mode` pods, Services in front of prefill (with an external IP and
/// node ports), decode0 and NATS, and an agent that knows the virtual ranges. Dropped in field
/// order: the agent first, then the Services, then the pods.
struct Env {
    agent: AgentProcess,
    prefill_svc: Service,
    decode_svc: Service,
    nats_svc: Service,
    net: ServiceNet,
    pods: Dynamo,
    _topo: Topology,
    _dir: tempfile::TempDir,
}

impl Env {
    fn start(mode: Mode) -> Self {
        let mut topo = Topology::with_mode(&format!("faults-svc-{mode:?}"), mode).unwrap();
        let pods = topo.dynamo().unwrap();
        let mut net = ServiceNet::new(&topo).unwrap();
        let doors = ServiceOpts {
            external_ip: true,
            node_ports: Some(NODE_PORTS),
        };
        let prefill_svc = net
            .service_with("prefill", &[&pods.prefill], &doors)
            .unwrap();
        let decode_svc = net.service("decode", &[&pods.decode0]).unwrap();
        let nats_svc = net.service("nats", &[&pods.nats]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let inventory = dir.path().join("inventory.yaml");
        topo.write_inventory(&inventory).unwrap();
        let mut args = vec![
            "--service-cidr".to_owned(),
            "198.19.0.0/16".to_owned(),
            "--service-cidr".to_owned(),
            "fd00:19::/48".to_owned(),
        ];
        for fam in Family::ALL {
            args.push("--service-cidr".into());
            args.push(net.node_ip(fam).to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = AgentProcess::start_with(&inventory, &args).unwrap();
        Env {
            agent,
            prefill_svc,
            decode_svc,
            nats_svc,
            net,
            pods,
            _topo: topo,
            _dir: dir,
        }
    }

    /// Prefill as reached directly and through each front door of its Service.
    fn prefill_doors(&self) -> [(&'static str, Pod); 4] {
        let p = &self.pods.prefill;
        [
            ("pod IP", p.clone()),
            ("ClusterIP", self.prefill_svc.through(p)),
            ("external IP", self.prefill_svc.through_external(p)),
            ("node port", self.prefill_svc.through_node_port(p)),
        ]
    }
}

fn reaches_on(from: &Pod, to: &Pod, fam: Family, port: u16) -> bool {
    udp_reachable(from, to, fam, port, LONG).unwrap()
}

fn blocked_on(from: &Pod, to: &Pod, fam: Family, port: u16) -> bool {
    !udp_reachable(from, to, fam, port, SHORT).unwrap()
}

fn echoes(from: &Pod, to: &Pod, fam: Family, timeout: Duration) -> bool {
    probe::udp_echo_roundtrip(from, to, fam, ECHO_PORT, timeout).unwrap()
}

const DECODE_TO_PREFILL: [&str; 6] = [
    "-n",
    "dynamo",
    "--pod-prefix",
    "vllm-decode",
    "--to-selector",
    "app=vllm-prefill",
];

fn inject_with(env: &Env, extra: &[&str]) -> String {
    let mut args = DECODE_TO_PREFILL.to_vec();
    args.extend_from_slice(extra);
    inject(&env.agent, &args)
}

fn packet_partition_both_families(env: &Env) {
    let p = &env.pods;
    let id = inject_with(env, &["--partition", "--duration", "2m"]);
    for fam in Family::ALL {
        for (door, prefill) in env.prefill_doors() {
            assert!(
                blocked_on(&p.decode0, &prefill, fam, UDP_PORT),
                "decode0 -> prefill by {door} must be cut ({fam:?})"
            );
            assert!(
                blocked_on(&p.decode1, &prefill, fam, UDP_PORT),
                "decode1 -> prefill by {door} must be cut ({fam:?})"
            );
        }
        let via = env.prefill_svc.through(&p.prefill);
        assert!(
            !probe::tcp_connect(&p.decode0, &via, fam, TCP_PORT, SHORT).unwrap(),
            "no TCP connection through the ClusterIP ({fam:?})"
        );
        assert!(
            reaches_on(&p.frontend, &via, fam, UDP_PORT),
            "frontend -> the same Service is unaffected ({fam:?})"
        );
        let decode_via = env.decode_svc.through(&p.decode0);
        assert!(
            reaches_on(&p.prefill, &decode_via, fam, UDP_PORT),
            "prefill -> decode's Service: not the fault's direction ({fam:?})"
        );
    }
    let f = fault(&env.agent, &id);
    assert!(f.counters.dropped > 0, "{:?}", f.counters);
    ctl(&env.agent, &["recover", &id]);
    for fam in Family::ALL {
        for (door, prefill) in env.prefill_doors() {
            assert!(
                reaches_on(&p.decode0, &prefill, fam, UDP_PORT),
                "after recover, by {door} ({fam:?})"
            );
        }
    }
}

/// decode0 cut from everything but NATS: NATS stays reachable through its own Service (a
/// virtual address is no peer of 0.0.0.0/0; after the DNAT, NATS is protected).
fn isolation_keeps_nats_through_its_service(env: &Env) {
    let p = &env.pods;
    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--partition",
        ],
    );
    let nats_via = env.nats_svc.through(&p.nats);
    let prefill_via = env.prefill_svc.through(&p.prefill);
    for fam in Family::ALL {
        assert!(
            blocked_on(&p.decode0, &prefill_via, fam, UDP_PORT),
            "{fam:?}"
        );
        assert!(
            reaches_on(&p.decode0, &nats_via, fam, UDP_PORT),
            "NATS through its Service ({fam:?})"
        );
        assert!(
            reaches_on(&p.decode1, &prefill_via, fam, UDP_PORT),
            "{fam:?}"
        );
    }
    ctl(&env.agent, &["recover", &id]);
}

/// decode's ingress from prefill: prefill cannot reach decode0's Service, and the replies to
/// decode0's own requests through prefill's Service are dropped on prefill's veth (decode0's
/// veth sees them from the virtual address, after the un-NAT).
fn ingress_partition(env: &Env) {
    let p = &env.pods;
    let _echo: Vec<UdpEchoServer> = Family::ALL
        .map(|fam| UdpEchoServer::start(&p.prefill, fam, ECHO_PORT).unwrap())
        .into();
    let prefill_via = env.prefill_svc.through(&p.prefill);
    let decode_via = env.decode_svc.through(&p.decode0);
    for fam in Family::ALL {
        assert!(
            echoes(&p.decode0, &prefill_via, fam, LONG),
            "baseline {fam:?}"
        );
    }
    let id = inject_with(env, &["--partition", "--direction", "ingress"]);
    for fam in Family::ALL {
        assert!(
            blocked_on(&p.prefill, &decode_via, fam, UDP_PORT),
            "prefill -> decode0's Service ({fam:?})"
        );
        assert!(
            reaches_on(&p.decode0, &prefill_via, fam, UDP_PORT),
            "decode0's requests still arrive ({fam:?})"
        );
        assert!(
            !echoes(&p.decode0, &prefill_via, fam, SHORT),
            "the replies through the Service are cut ({fam:?})"
        );
        assert!(
            echoes(&p.frontend, &prefill_via, fam, LONG),
            "frontend's are not ({fam:?})"
        );
    }
    ctl(&env.agent, &["recover", &id]);
    for fam in Family::ALL {
        assert!(
            echoes(&p.decode0, &prefill_via, fam, LONG),
            "recovered {fam:?}"
        );
    }
}

/// NetworkPolicy semantics through Services: decode cannot open connections to prefill's
/// Service; prefill's connections to decode0's Service are answered.
fn connection_partition(env: &Env) {
    let p = &env.pods;
    let _servers: Vec<TcpEchoServer> = Family::ALL
        .iter()
        .flat_map(|&fam| {
            [
                TcpEchoServer::start(&p.prefill, fam, TCP_PORT).unwrap(),
                TcpEchoServer::start(&p.decode0, fam, TCP_PORT).unwrap(),
            ]
        })
        .collect();
    let _echo: Vec<UdpEchoServer> = Family::ALL
        .map(|fam| UdpEchoServer::start(&p.decode0, fam, ECHO_PORT).unwrap())
        .into();
    let prefill_via = env.prefill_svc.through(&p.prefill);
    let decode_via = env.decode_svc.through(&p.decode0);
    let id = inject_with(env, &["--partition=connections"]);
    for fam in Family::ALL {
        assert!(
            !probe::tcp_connect(&p.decode0, &prefill_via, fam, TCP_PORT, SHORT).unwrap(),
            "decode0 opens no connection through prefill's Service ({fam:?})"
        );
        assert!(
            probe::tcp_echo_roundtrip(&p.prefill, &decode_via, fam, TCP_PORT, LONG).unwrap(),
            "prefill's connection through decode0's Service is answered ({fam:?})"
        );
        assert!(
            echoes(&p.prefill, &decode_via, fam, LONG),
            "prefill's UDP flow through decode0's Service is answered ({fam:?})"
        );
        assert!(
            blocked_on(&p.decode0, &prefill_via, fam, UDP_PORT),
            "decode0 opens no UDP flow through prefill's Service ({fam:?})"
        );
        assert!(
            probe::tcp_echo_roundtrip(&p.frontend, &prefill_via, fam, TCP_PORT, LONG).unwrap(),
            "frontend -> prefill's Service ({fam:?})"
        );
    }
    ctl(&env.agent, &["recover", &id]);
    for fam in Family::ALL {
        assert!(
            probe::tcp_echo_roundtrip(&p.decode0, &prefill_via, fam, TCP_PORT, LONG).unwrap(),
            "recovered {fam:?}"
        );
    }
}

fn expiry_restores_the_service(env: &Env) {
    let p = &env.pods;
    let via = env.prefill_svc.through(&p.prefill);
    let id = inject_with(env, &["--partition", "--duration", "2s"]);
    assert!(blocked_on(&p.decode0, &via, Family::V4, UDP_PORT));
    let f = fault(&env.agent, &id);
    let left = f.expires_at.duration_since(jiff::Timestamp::now());
    std::thread::sleep(Duration::try_from(left).unwrap_or_default() + Duration::from_millis(100));
    for fam in Family::ALL {
        assert!(
            reaches_on(&p.decode0, &via, fam, UDP_PORT),
            "after expiry ({fam:?})"
        );
    }
    assert_eq!(fault(&env.agent, &id).state, FaultState::Expired);
}

fn partitions_hold_through_services(mode: Mode) {
    let _s = serial();
    let env = Env::start(mode);
    let p = &env.pods;
    for fam in Family::ALL {
        for (door, prefill) in env.prefill_doors() {
            assert!(
                reaches_on(&p.decode0, &prefill, fam, UDP_PORT),
                "baseline by {door} ({fam:?})"
            );
        }
    }
    packet_partition_both_families(&env);
    isolation_keeps_nats_through_its_service(&env);
    ingress_partition(&env);
    connection_partition(&env);
    expiry_restores_the_service(&env);
}

#[test]
fn partitions_hold_through_services_on_bridged_pods() {
    partitions_hold_through_services(Mode::Bridged);
}

#[test]
fn partitions_hold_through_services_on_routed_pods() {
    partitions_hold_through_services(Mode::Routed);
}

fn stream(count: u64) -> StreamOpts {
    StreamOpts {
        count,
        port: STREAM_PORT,
        ..StreamOpts::default()
    }
}

fn assert_share(what: &str, measured: f64, want: f64) {
    eprintln!(
        "{what}: {:.2}% (asked {:.0}%)",
        measured * 100.0,
        want * 100.0
    );
    assert!(
        (measured - want).abs() <= TOLERANCE,
        "{what}: measured {:.2}%, asked {:.0}% (+-{:.1} points)",
        measured * 100.0,
        want * 100.0,
        TOLERANCE * 100.0
    );
}

/// Loss and corruption of 30% through prefill's ClusterIP: decode's egress measured at
/// prefill, decode's ingress measured on the echoes of decode0's requests (only the replies
/// are faulted), frontend's traffic through the same Service whole.
fn loss_and_corruption_hold_through_a_service(mode: Mode) {
    let _s = serial();
    let env = Env::start(mode);
    let p = &env.pods;
    let via = env.prefill_svc.through(&p.prefill);
    for (kind, flag) in [("loss", "--loss"), ("corruption", "--corrupt")] {
        let id = inject_with(&env, &[flag, "30%", "--protocol", "udp"]);
        for fam in Family::ALL {
            let r = udp_stream(&p.decode0, &via, fam, &stream(DATAGRAMS)).unwrap();
            let share = if kind == "loss" {
                r.loss_ratio()
            } else {
                r.corrupt_ratio()
            };
            assert_share(
                &format!("{kind} decode0 -> ClusterIP {fam:?} ({mode:?})"),
                share,
                0.30,
            );
            let other = udp_stream(&p.frontend, &via, fam, &stream(2_000)).unwrap();
            assert_eq!(
                (other.missing(), other.corrupted),
                (0, 0),
                "frontend -> the same Service is whole ({fam:?})"
            );
        }
        ctl(&env.agent, &["recover", &id]);
        let id = inject_with(
            &env,
            &[flag, "30%", "--protocol", "udp", "--direction", "ingress"],
        );
        let _echo = UdpEchoServer::start(&p.prefill, Family::V4, STREAM_PORT).unwrap();
        let r = udp_echo_stream(&p.decode0, &via, Family::V4, &stream(DATAGRAMS)).unwrap();
        let share = if kind == "loss" {
            r.loss_ratio()
        } else {
            r.corrupt_ratio()
        };
        assert_share(
            &format!("{kind} of the replies prefill -> decode0 through the ClusterIP ({mode:?})"),
            share,
            0.30,
        );
        ctl(&env.agent, &["recover", &id]);
        let whole = udp_echo_stream(&p.decode0, &via, Family::V4, &stream(2_000)).unwrap();
        assert_eq!((whole.missing(), whole.corrupted), (0, 0), "after recover");
    }
}

#[test]
fn loss_and_corruption_hold_through_a_service_on_bridged_pods() {
    loss_and_corruption_hold_through_a_service(Mode::Bridged);
}

#[test]
fn loss_and_corruption_hold_through_a_service_on_routed_pods() {
    loss_and_corruption_hold_through_a_service(Mode::Routed);
}

/// A Service whose two backends are prefill (a peer of the fault) and frontend (not one):
/// over 2,000 new connections per family, exactly those the Service sent to prefill fail,
/// and every one it sent to frontend succeeds (the host's own per-backend counters say which
/// went where).
#[test]
fn a_service_with_two_backends_loses_exactly_the_peers_share() {
    let _s = serial();
    let mut env = Env::start(Mode::Bridged);
    let p = env.pods.clone();
    let svc = env
        .net
        .service("prefill-or-frontend", &[&p.prefill, &p.frontend])
        .unwrap();
    let _servers: Vec<TcpEchoServer> = [&p.prefill, &p.frontend]
        .iter()
        .flat_map(|b| Family::ALL.map(|fam| TcpEchoServer::start(b, fam, TCP_PORT).unwrap()))
        .collect();
    let id = inject_with(&env, &["--partition"]);
    let mut before = svc.new_connections().unwrap();
    for fam in Family::ALL {
        let start = Instant::now();
        let via = svc.through(&p.prefill);
        let ports = match fam {
            Family::V4 => 20_000..22_000,
            Family::V6 => 22_000..24_000,
        };
        let ok = probe::tcp_connect_each(&p.decode0, &via, fam, TCP_PORT, ports, CONNECT).unwrap();
        let after = svc.new_connections().unwrap();
        let count = |name: &str, list: &[(String, u64)]| {
            list.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c)
        };
        let to_prefill = count("vllm-prefill-0", &after) - count("vllm-prefill-0", &before);
        let to_frontend = count("frontend-0", &after) - count("frontend-0", &before);
        eprintln!(
            "{fam:?}: 2,000 connects in {:?}: {ok} established; the Service sent {to_prefill} to prefill (a peer), {to_frontend} to frontend",
            start.elapsed()
        );
        assert_eq!(
            to_prefill + to_frontend,
            2_000,
            "every connect is counted once"
        );
        assert!(
            to_prefill > 800 && to_frontend > 800,
            "both backends chosen"
        );
        assert_eq!(
            ok, to_frontend,
            "exactly the frontend's share succeeds ({fam:?})"
        );
        before = after;
    }
    ctl(&env.agent, &["recover", &id]);
}
