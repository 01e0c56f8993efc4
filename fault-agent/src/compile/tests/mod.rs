//! The compiler checked the way the program looks packets up: [`datapath`] follows
//! `fault-ebpf`'s `classify` over the compiled tables, for one packet on one hook; [`reference`]
//! says what a packet should get from the faults alone, and a property test compares the two
//! over random faults, pods and packets.
use super::*;
use crate::prefixes::covers_addr;
use datapath::{Env, Hook, Packet};

mod datapath;
mod reference;

const DECODE0: &str = "198.18.0.10";
const DECODE1: &str = "198.18.0.11";
const PREFILL: &str = "198.18.0.12";
const NATS: &str = "198.18.0.13";
const FRONTEND: &str = "198.18.0.14";
const SERVICE_CIDR: &str = "198.19.0.0/16";
const VIP: &str = "198.19.0.10";

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// A fault of targets decode0 and decode1 (on this node), egress, peers `includes`; every
/// local pod covered by them is a local peer.
fn input(slot: u16, l4: Vec<(u8, u16)>, includes: &[&str], excludes: &[&str]) -> CompileInput {
    let includes: Vec<IpNet> = includes.iter().map(|s| s.parse().unwrap()).collect();
    let excludes: Vec<IpNet> = excludes.iter().map(|s| s.parse().unwrap()).collect();
    let (inc, exc) = (
        PrefixSet::of(includes.iter().copied()),
        PrefixSet::of(excludes.iter().copied()),
    );
    let peer_ips = ips(&[DECODE0, DECODE1, PREFILL, NATS, FRONTEND])
        .into_iter()
        .filter(|ip| covers_addr(&inc, &exc, *ip))
        .collect();
    CompileInput {
        slot,
        seq: slot as u64,
        params: FaultParams {
            deadline_ns: 1,
            ..Default::default()
        },
        target_ips: ips(&[DECODE0, DECODE1]),
        all_target_ips: ips(&[DECODE0, DECODE1]),
        peer_ips,
        directions: vec![Direction::Egress],
        l4,
        includes,
        excludes,
    }
}

fn node(virtuals: &[&str]) -> NodeView {
    NodeView {
        virtual_nets: virtuals.iter().map(|s| s.parse().unwrap()).collect(),
        remote_ips: vec![],
    }
}

fn compile_all(faults: &[CompileInput], virtuals: &[&str]) -> Tables {
    compile(faults, &node(virtuals), &mut Interner::default()).unwrap()
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
    Packet {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: proto::UDP,
        sport,
        dport,
        icmp_type: 0,
    }
}

/// What the program does with a packet on one host-veth hook: the slots it runs (target role
/// first) and whether it marks the packet as evaluated.
#[derive(Debug, PartialEq, Eq)]
struct Judgement {
    slots: Vec<u16>,
    evaluated: bool,
}

/// Every fault is live (deadline 1) at boot time 0; nothing is dropped.
const LIVE: Env = Env {
    now_ns: 0,
    drops: false,
    rand: 0,
};

/// `direction`: relative to the local pod (Egress: its host veth's ingress, it sends `pkt`).
fn judge(t: &Tables, direction: Direction, pkt: Packet) -> Judgement {
    let hook = match direction {
        Direction::Egress => Hook::HostIngress,
        Direction::Ingress => Hook::HostEgress,
    };
    let pass = datapath::classify(t, hook, &pkt, false, LIVE);
    Judgement {
        slots: pass.acted,
        evaluated: pass.mark,
    }
}

/// The slots a packet meets crossing one node: the sender's host veth, then (unless that one
/// marked it evaluated) the receiver's. `dnat`: the address the node translates `pkt.dst` to
/// in between, as kube-proxy does for a Service.
fn crossing(t: &Tables, pkt: Packet, dnat: Option<&str>) -> Vec<u16> {
    let sent = datapath::classify(t, Hook::HostIngress, &pkt, false, LIVE);
    let mut after = pkt;
    if let Some(d) = dnat {
        after.dst = d.parse().unwrap();
    }
    let received = datapath::classify(t, Hook::HostEgress, &after, sent.mark, LIVE);
    let mut slots = sent.acted;
    slots.extend(received.acted);
    slots
}

#[test]
fn targets_with_the_same_faults_share_one_policy() {
    let mut i = Interner::default();
    let f = [input(3, vec![(0, 0)], &["198.18.0.12/32"], &[])];
    let t = compile(&f, &node(&[]), &mut i).unwrap();
    // Two targets (egress, as targets) and the peer (ingress, as peer).
    assert_eq!(t.targets.len(), 3);
    let policies: BTreeSet<u32> = t.targets.values().map(|v| v.policy).collect();
    assert_eq!(policies.len(), 2, "one policy per role");
    // Recompiling the same faults gives the same ids.
    let again = compile(&f, &node(&[]), &mut i).unwrap();
    assert_eq!(t, again);
}

#[test]
fn exclusions_carve_holes_and_ports_close_over_wildcards() {
    let all = input(1, vec![(0, 0)], &["0.0.0.0/0"], &["198.18.0.13/32"]);
    let port = input(2, vec![(proto::TCP, 80)], &["198.18.0.12/32"], &[]);
    let t = compile_all(&[all, port], &[]);
    let tcp = |dst: &str, dport| Packet {
        proto: proto::TCP,
        ..udp(DECODE0, dst, 40_000, dport)
    };
    assert_eq!(
        judge(&t, Direction::Egress, udp(DECODE0, PREFILL, 40_000, 53)).slots,
        vec![1]
    );
    assert_eq!(
        judge(&t, Direction::Egress, tcp(PREFILL, 80)).slots,
        vec![1, 2]
    );
    assert_eq!(
        judge(&t, Direction::Egress, tcp("198.18.0.99", 80)).slots,
        vec![1]
    );
    assert!(judge(&t, Direction::Egress, tcp(NATS, 80)).slots.is_empty());
    // Not the faults' direction; not a target; IPv4 prefixes never cover IPv6 peers.
    let back = udp(PREFILL, DECODE0, 80, 40_000);
    assert!(judge(&t, Direction::Ingress, back).slots.is_empty());
    let other = udp("198.18.0.99", PREFILL, 40_000, 80);
    assert!(judge(&t, Direction::Egress, other).slots.is_empty());
    let v6 = Packet {
        dst: "fd00::1".parse().unwrap(),
        ..udp(DECODE0, PREFILL, 1, 1)
    };
    assert!(judge(&t, Direction::Egress, v6).slots.is_empty());
}

#[test]
fn too_many_overlapping_faults_are_refused() {
    let mut i = Interner::default();
    let fs: Vec<_> = (0..=MAX_FAULTS_PER_RULE as u16)
        .map(|s| input(s, vec![(0, 0)], &["0.0.0.0/0"], &[]))
        .collect();
    let e = compile(&fs, &node(&[]), &mut i).unwrap_err();
    assert_eq!(e.slots.len(), MAX_FAULTS_PER_RULE + 1);
}

#[test]
fn connection_partitions_track_the_opposite_direction_in_both_roles() {
    let mut f = input(1, vec![(0, 0)], &["198.18.0.12/32"], &[]);
    f.params.flags |= FAULT_PARTITION_CONNECTIONS;
    let t = compile_all(&[f], &[]);
    let tracking = TargetValue {
        policy: 0,
        flags: TARGET_TRACK_CONNECTIONS,
    };
    let at = |ip: &str, d, role| target_key((ip.parse().unwrap(), d, role));
    assert_eq!(
        t.targets[&at(DECODE0, Direction::Ingress, Role::Target)],
        tracking
    );
    // The peer's view of decode's egress is prefill's ingress: prefill's egress is tracked.
    assert_eq!(
        t.targets[&at(PREFILL, Direction::Egress, Role::Peer)],
        tracking
    );
}

#[test]
fn a_fault_holds_through_a_service_exactly_once() {
    let t = compile_all(
        &[input(1, vec![(0, 0)], &["198.18.0.12/32"], &[])],
        &[SERVICE_CIDR],
    );
    // Pod to pod: judged on the sender's veth, which marks it; the receiver's skips it.
    let direct = udp(DECODE0, PREFILL, 40_000, 8080);
    assert_eq!(
        judge(&t, Direction::Egress, direct),
        Judgement {
            slots: vec![1],
            evaluated: true
        }
    );
    assert_eq!(crossing(&t, direct, None), vec![1]);
    // Through the Service: the sender's veth sees the virtual address, the receiver's sees
    // decode after the DNAT, and judges it as prefill's peer view.
    let via = udp(DECODE0, VIP, 40_000, 8080);
    assert_eq!(judge(&t, Direction::Egress, via).slots, Vec::<u16>::new());
    assert_eq!(crossing(&t, via, Some(PREFILL)), vec![1]);
    // Replies (prefill -> decode) are not the fault's direction; frontend is no target.
    assert!(crossing(&t, udp(PREFILL, DECODE0, 8080, 40_000), None).is_empty());
    assert!(crossing(&t, udp(FRONTEND, VIP, 40_000, 8080), Some(PREFILL)).is_empty());
}

#[test]
fn replies_to_a_target_that_used_a_service_are_caught_on_the_peers_veth() {
    let mut f = input(1, vec![(0, 0)], &["198.18.0.12/32"], &[]);
    f.directions = vec![Direction::Ingress];
    let t = compile_all(&[f], &[SERVICE_CIDR]);
    // prefill's reply to decode, un-NATed to the virtual address before decode's veth: the
    // sender's veth (prefill, as decode's peer) judges it with the real addresses.
    let reply = udp(PREFILL, DECODE0, 8080, 40_000);
    let sent = judge(&t, Direction::Egress, reply);
    assert_eq!(
        sent,
        Judgement {
            slots: vec![1],
            evaluated: true
        }
    );
    let unnatted = udp(VIP, DECODE0, 8080, 40_000);
    assert!(judge(&t, Direction::Ingress, unnatted).slots.is_empty());
    // A request to decode's own address is its ingress as the target sees it.
    assert_eq!(crossing(&t, udp(PREFILL, DECODE0, 1, 2), None), vec![1]);
}

#[test]
fn the_peers_port_is_the_local_port_in_the_peer_view() {
    let t = compile_all(
        &[input(1, vec![(proto::TCP, 8080)], &["198.18.0.12/32"], &[])],
        &[SERVICE_CIDR],
    );
    let tcp = |sport, dport| Packet {
        proto: proto::TCP,
        ..udp(DECODE0, PREFILL, sport, dport)
    };
    assert_eq!(
        judge(&t, Direction::Ingress, tcp(40_000, 8080)).slots,
        vec![1]
    );
    assert!(
        judge(&t, Direction::Ingress, tcp(8080, 40_000))
            .slots
            .is_empty()
    );
}

#[test]
fn protected_pods_stay_reachable_through_their_service() {
    // Decode isolated from everything but NATS: a request to NATS's Service is no peer's at
    // the sender (virtual address), and NATS holds no peer view after the DNAT.
    let all = input(1, vec![(0, 0)], &["0.0.0.0/0", "::/0"], &["198.18.0.13/32"]);
    let t = compile_all(&[all], &[SERVICE_CIDR]);
    assert!(crossing(&t, udp(DECODE0, VIP, 40_000, 4222), Some(NATS)).is_empty());
    assert_eq!(
        crossing(&t, udp(DECODE0, VIP, 40_000, 8080), Some(PREFILL)),
        vec![1]
    );
    assert_eq!(
        crossing(&t, udp(DECODE0, "203.0.113.9", 1, 2), None),
        vec![1],
        "an address outside the virtual ranges is a peer of 0.0.0.0/0"
    );
}

#[test]
fn a_fault_naming_a_virtual_address_acts_there_without_marking() {
    let named = input(1, vec![(0, 0)], &["198.19.0.10/32"], &[]);
    let t = compile_all(&[named], &[SERVICE_CIDR]);
    assert_eq!(
        judge(&t, Direction::Egress, udp(DECODE0, VIP, 1, 2)),
        Judgement {
            slots: vec![1],
            evaluated: false
        }
    );
}

#[test]
fn a_fault_both_ways_among_its_own_targets_acts_once_per_packet() {
    let mut f = input(1, vec![(0, 0)], &["198.18.0.10/32", "198.18.0.11/32"], &[]);
    f.directions = vec![Direction::Egress, Direction::Ingress];
    let t = compile_all(&[f], &[SERVICE_CIDR]);
    for pkt in [udp(DECODE0, DECODE1, 1, 2), udp(DECODE1, DECODE0, 2, 1)] {
        assert_eq!(crossing(&t, pkt, None), vec![1]);
        // Both of the sender's roles hold the fault (its egress, and the receiver's ingress
        // seen as its peer): the program runs it in the first only.
        let sent = datapath::classify(&t, Hook::HostIngress, &pkt, false, LIVE);
        assert_eq!(sent.rules, vec![vec![1], vec![1]]);
        assert_eq!(sent.acted, vec![1]);
    }
    assert_eq!(
        crossing(&t, udp(DECODE0, VIP, 1, 2), Some(DECODE1)),
        vec![1]
    );
}

#[test]
fn a_fault_both_ways_among_its_targets_acts_on_replies_from_its_port() {
    // Targets decode0 and decode1, both ways among them, peer port 80: a reply from decode1's
    // port 80 is decode0's ingress from its peer's port 80, though not decode1's egress to
    // port 80. It used to be lost: the ingress views left the fault's own targets out.
    let mut f = input(
        1,
        vec![(proto::UDP, 80)],
        &["198.18.0.10/32", "198.18.0.11/32"],
        &[],
    );
    f.directions = vec![Direction::Egress, Direction::Ingress];
    let t = compile_all(&[f], &[SERVICE_CIDR]);
    assert_eq!(
        crossing(&t, udp(DECODE0, DECODE1, 40_000, 80), None),
        vec![1]
    );
    assert_eq!(
        crossing(&t, udp(DECODE1, DECODE0, 80, 40_000), None),
        vec![1]
    );
    assert_eq!(crossing(&t, udp(DECODE1, DECODE0, 80, 80), None), vec![1]);
    assert!(crossing(&t, udp(DECODE1, DECODE0, 81, 40_000), None).is_empty());
    // Through a Service, judged on the receiver's veth: once.
    assert_eq!(
        crossing(&t, udp(DECODE0, VIP, 40_000, 80), Some(DECODE1)),
        vec![1]
    );
}
