//! Faults between pods on **different nodes**, through Services too: fake nodes on one host
//! (`fault_testkit::Fabric`: each node a network namespace with its pods' host veths, its own
//! kube-proxy-like DNAT and an uplink to the others), one agent per node with the same faults
//! (as node agents mirror the same NetworkFaults). Each packet is judged once, on its sender's
//! node: at the sender's veth, or at the node's uplink after the DNAT; the receiving node skips
//! packets from the other nodes' pods. Measured on real packets: partitions both ways,
//! NetworkPolicy-like connection partitions, protected NATS through its Service, loss exactly
//! once (not twice) across nodes, and the exact share of a two-backend Service. Needs root.
mod common;

use std::{path::Path, time::Duration};

use common::*;
use fault_testkit::{
    AgentProcess, Dynamo, Fabric, Family, NodeHandle, Pod, Service, StreamOpts,
    probe::{self, TcpEchoServer, UdpEchoServer, udp_reachable, udp_stream},
    serial,
};

const UDP_PORT: u16 = 30_001;
const TCP_PORT: u16 = 30_002;
const ECHO_PORT: u16 = 30_003;
const STREAM_PORT: u16 = 30_004;
const CONNECT: Duration = Duration::from_millis(200);

/// decode0, frontend on node n0; decode1, prefill and NATS on n1; Services in front of
/// prefill, decode0 and NATS; an agent on each node. Dropped in field order: agents first.
struct Env {
    agents: Vec<AgentProcess>,
    prefill_svc: Service,
    decode_svc: Service,
    nats_svc: Service,
    pods: Dynamo,
    fabric: Fabric,
    _nodes: Vec<NodeHandle>,
    _dir: tempfile::TempDir,
}

fn placement(name: &str) -> usize {
    match name {
        "vllm-decode-0" | "frontend-0" => 0,
        _ => 1,
    }
}

impl Env {
    fn start() -> Self {
        let mut fabric = Fabric::new("faults-across-nodes").unwrap();
        let nodes: Vec<NodeHandle> = (0..2)
            .map(|k| fabric.add_node(&format!("n{k}")).unwrap())
            .collect();
        let pods = fabric.dynamo_on(placement).unwrap();
        let prefill_svc = fabric.service("prefill", &[&pods.prefill]).unwrap();
        let decode_svc = fabric.service("decode", &[&pods.decode0]).unwrap();
        let nats_svc = fabric.service("nats", &[&pods.nats]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let agents = nodes
            .iter()
            .map(|n| {
                let inventory = dir.path().join(format!("{}.yaml", n.name()));
                fabric.write_inventory(n, &inventory).unwrap();
                start_agent(n, &inventory)
            })
            .collect();
        Env {
            agents,
            prefill_svc,
            decode_svc,
            nats_svc,
            pods,
            fabric,
            _nodes: nodes,
            _dir: dir,
        }
    }

    /// The same fault on every node; the ids, node by node.
    fn inject(&self, args: &[&str]) -> Vec<String> {
        self.agents.iter().map(|a| inject(a, args)).collect()
    }

    fn recover(&self, ids: &[String]) {
        for (a, id) in self.agents.iter().zip(ids) {
            ctl(a, &["recover", id]);
        }
    }
}

fn start_agent(node: &NodeHandle, inventory: &Path) -> AgentProcess {
    node.start_agent(
        inventory,
        &[
            "--service-cidr",
            "198.19.0.0/16",
            "--service-cidr",
            "fd00:19::/48",
        ],
    )
    .unwrap()
}

fn reaches_on(from: &Pod, to: &Pod, fam: Family) -> bool {
    udp_reachable(from, to, fam, UDP_PORT, LONG).unwrap()
}

fn blocked_on(from: &Pod, to: &Pod, fam: Family) -> bool {
    !udp_reachable(from, to, fam, UDP_PORT, SHORT).unwrap()
}

const DECODE_TO_PREFILL: [&str; 6] = [
    "-n",
    "dynamo",
    "--pod-prefix",
    "vllm-decode",
    "--to-selector",
    "app=vllm-prefill",
];

fn decode_to_prefill<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = DECODE_TO_PREFILL.to_vec();
    v.extend_from_slice(extra);
    v
}

fn partitions_hold_across_nodes(env: &Env) {
    let p = &env.pods;
    let prefill_via = env.prefill_svc.through(&p.prefill);
    let decode_via = env.decode_svc.through(&p.decode0);
    for fam in Family::ALL {
        assert!(
            reaches_on(&p.decode0, &prefill_via, fam),
            "baseline {fam:?}"
        );
    }
    let ids = env.inject(&decode_to_prefill(&["--partition"]));
    for fam in Family::ALL {
        assert!(
            blocked_on(&p.decode0, &prefill_via, fam),
            "decode0 (n0) -> prefill's Service (prefill on n1): judged at n0's uplink ({fam:?})"
        );
        assert!(
            blocked_on(&p.decode0, &p.prefill, fam),
            "decode0 (n0) -> prefill's address ({fam:?})"
        );
        assert!(
            blocked_on(&p.decode1, &prefill_via, fam),
            "decode1 (n1) -> prefill's Service on the same node ({fam:?})"
        );
        assert!(
            reaches_on(&p.frontend, &prefill_via, fam),
            "frontend (n0) -> prefill's Service ({fam:?})"
        );
        assert!(
            reaches_on(&p.prefill, &decode_via, fam),
            "prefill -> decode0's Service: not the fault's direction ({fam:?})"
        );
    }
    env.recover(&ids);

    // decode's ingress from prefill: prefill (n1) cannot reach decode0's Service (judged at
    // n1's uplink, in prefill's peer view of a target on another node), and the replies to
    // decode0's own requests are dropped on prefill's veth.
    let _echo: Vec<UdpEchoServer> = Family::ALL
        .map(|fam| UdpEchoServer::start(&p.prefill, fam, ECHO_PORT).unwrap())
        .into();
    let ids = env.inject(&decode_to_prefill(&[
        "--partition",
        "--direction",
        "ingress",
    ]));
    for fam in Family::ALL {
        assert!(
            blocked_on(&p.prefill, &decode_via, fam),
            "prefill (n1) -> decode0's Service (decode0 on n0) ({fam:?})"
        );
        assert!(
            reaches_on(&p.decode0, &prefill_via, fam),
            "requests arrive ({fam:?})"
        );
        assert!(
            !probe::udp_echo_roundtrip(&p.decode0, &prefill_via, fam, ECHO_PORT, SHORT).unwrap(),
            "the replies through the Service are cut ({fam:?})"
        );
        assert!(
            probe::udp_echo_roundtrip(&p.frontend, &prefill_via, fam, ECHO_PORT, LONG).unwrap(),
            "frontend's are not ({fam:?})"
        );
    }
    env.recover(&ids);
    for fam in Family::ALL {
        assert!(
            reaches_on(&p.prefill, &decode_via, fam),
            "recovered {fam:?}"
        );
    }
}

/// NetworkPolicy semantics across nodes: decode0 cannot open a connection through prefill's
/// Service; prefill's connection through decode0's Service is answered.
fn connection_partition_across_nodes(env: &Env) {
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
    let prefill_via = env.prefill_svc.through(&p.prefill);
    let decode_via = env.decode_svc.through(&p.decode0);
    let ids = env.inject(&decode_to_prefill(&["--partition=connections"]));
    for fam in Family::ALL {
        assert!(
            !probe::tcp_connect(&p.decode0, &prefill_via, fam, TCP_PORT, SHORT).unwrap(),
            "decode0 opens no connection through prefill's Service ({fam:?})"
        );
        assert!(
            probe::tcp_echo_roundtrip(&p.prefill, &decode_via, fam, TCP_PORT, LONG).unwrap(),
            "prefill's connection through decode0's Service is answered ({fam:?})"
        );
    }
    env.recover(&ids);
}

/// decode0 cut from everything but NATS: NATS on the other node stays reachable through its
/// Service (after the DNAT on n0, NATS is protected).
fn isolation_keeps_nats_across_nodes(env: &Env) {
    let p = &env.pods;
    let ids = env.inject(&[
        "-n",
        "dynamo",
        "--pod-prefix",
        "vllm-decode-0",
        "--partition",
    ]);
    let nats_via = env.nats_svc.through(&p.nats);
    let prefill_via = env.prefill_svc.through(&p.prefill);
    for fam in Family::ALL {
        assert!(blocked_on(&p.decode0, &prefill_via, fam), "{fam:?}");
        assert!(
            reaches_on(&p.decode0, &nats_via, fam),
            "NATS's Service ({fam:?})"
        );
    }
    env.recover(&ids);
}

/// 30% loss across nodes acts once, not twice (49%): by the pod address and by the Service.
fn loss_acts_once_across_nodes(env: &Env) {
    let p = &env.pods;
    let ids = env.inject(&decode_to_prefill(&["--loss", "30%", "--protocol", "udp"]));
    let opts = StreamOpts {
        port: STREAM_PORT,
        ..StreamOpts::default()
    };
    for (door, to) in [
        ("pod IP", p.prefill.clone()),
        ("ClusterIP", env.prefill_svc.through(&p.prefill)),
    ] {
        let r = udp_stream(&p.decode0, &to, Family::V4, &opts).unwrap();
        let loss = r.loss_ratio();
        eprintln!(
            "loss 30% decode0 (n0) -> prefill (n1) by {door}: {:.2}%",
            loss * 100.0
        );
        assert!(
            (loss - 0.30).abs() <= 0.015,
            "by {door}: measured {:.2}%, asked 30% (once, not twice)",
            loss * 100.0
        );
    }
    env.recover(&ids);
}

#[test]
fn faults_hold_across_nodes_and_through_their_services() {
    let _s = serial();
    let env = Env::start();
    partitions_hold_across_nodes(&env);
    connection_partition_across_nodes(&env);
    isolation_keeps_nats_across_nodes(&env);
    loss_acts_once_across_nodes(&env);
}

/// A Service with backends on two nodes, prefill (a peer, on n1) and frontend (not one, on
/// n0), used from decode0 (n0): exactly the connections it sent to prefill fail.
#[test]
fn a_service_with_backends_on_two_nodes_loses_exactly_the_peers_share() {
    let _s = serial();
    let mut env = Env::start();
    let p = env.pods.clone();
    let svc = env
        .fabric
        .service("prefill-or-frontend", &[&p.prefill, &p.frontend])
        .unwrap();
    let _servers: Vec<TcpEchoServer> = [&p.prefill, &p.frontend]
        .iter()
        .flat_map(|b| Family::ALL.map(|fam| TcpEchoServer::start(b, fam, TCP_PORT).unwrap()))
        .collect();
    let ids = env.inject(&decode_to_prefill(&["--partition"]));
    let count = |list: &[(String, u64)], name: &str| {
        list.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c)
    };
    let mut before = svc.new_connections().unwrap();
    for (fam, ports) in [(Family::V4, 20_000..21_000), (Family::V6, 21_000..22_000)] {
        let via = svc.through(&p.prefill);
        let ok = probe::tcp_connect_each(&p.decode0, &via, fam, TCP_PORT, ports, CONNECT).unwrap();
        let after = svc.new_connections().unwrap();
        let to_prefill = count(&after, "vllm-prefill-0") - count(&before, "vllm-prefill-0");
        let to_frontend = count(&after, "frontend-0") - count(&before, "frontend-0");
        eprintln!(
            "{fam:?}: {ok} of 1,000 established; the Service sent {to_prefill} to prefill (n1, a peer), {to_frontend} to frontend (n0)"
        );
        assert_eq!(to_prefill + to_frontend, 1_000);
        assert!(
            to_prefill > 400 && to_frontend > 400,
            "both backends chosen"
        );
        assert_eq!(
            ok, to_frontend,
            "exactly the frontend's share succeeds ({fam:?})"
        );
        before = after;
    }
    env.recover(&ids);
}
