//! Types shared by Faultline's kernel side (`fault-ebpf`) and user side (`fault-agent`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding, and its size is asserted
//! at compile time, so both sides agree byte for byte. Addresses are always 16 bytes:
//! IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`, RFC 4291 section 2.5.5.2), which
//! lets one LPM trie hold IPv4 and IPv6 prefixes without one ever covering the other.
//!
//! # How a packet finds its faults
//! A program on a pod's host-side veth sees the packets of one **local pod** (what it sends or
//! what it receives). That pod may play two [`Role`]s in a fault: its **target** (the fault's
//! own view: "this pod's egress to those peers"), or one of its **peers** (the mirrored view:
//! "that target's egress to this pod"). The mirrored view is what makes faults hold through
//! Services: a request sent to a Service's virtual address only carries the real peer address
//! after the node's DNAT, i.e. on the peer's veth (see `DEVELOPERS.md`).
//!
//! 0. [`MAP_GATE`] (array, inlined by the verifier) at [`gate_index`] of the local pod's
//!    address: no bit for the packet's direction (in either role) means no pod with that
//!    address suffix has anything here, and the packet leaves at once. This is the no-fault
//!    path; it spares the hash lookups below, which cost more than the program's entry.
//! 1. [`TargetKey`] `(pod address, direction, role)` in [`MAP_TARGETS`] (hash) gives a
//!    [`TargetValue`]: the pod's policy id in that role. A miss in both roles ends the lookup.
//! 2. [`RuleKey`] `(policy, protocol, peer port, remote address)` in [`MAP_RULES`] (LPM trie)
//!    gives a [`RuleValue`]: up to [`MAX_FAULTS_PER_RULE`] fault slots. The port is always the
//!    fault's **peer's** port; the address is the other end of the packet. The program looks
//!    up the exact `(protocol, port)` first, then `(protocol, any port)`, then `(any protocol,
//!    any port)`; the agent writes every table as a closure, so the first table that exists
//!    for the packet holds every fault that covers it.
//! 3. Each slot indexes [`MAP_FAULTS`] (array of [`FaultParams`]) and [`MAP_STATS`] (per-CPU
//!    array of [`FaultStats`]). The program itself checks each fault's deadline.
//! 4. A packet that passes two of these hooks on one node (the sender's veth, then the
//!    receiver's) is evaluated at the first one that sees its real addresses, which then sets
//!    [`EVALUATED_MARK`] so that the second does not apply the same faults again.
#![no_std]

pub mod ct;

/// Number of fault slots ([`MAP_FAULTS`] and [`MAP_STATS`] size): how many faults can be
/// active at once on one node.
pub const MAX_FAULTS: u32 = 1024;
/// Capacity of [`MAP_TARGETS`]: (pod address, direction) pairs on one node.
pub const MAX_TARGETS: u32 = 65_536;
/// Capacity of [`MAP_RULES`]: LPM entries (policy, protocol, port, peer prefix).
pub const MAX_RULES: u32 = 262_144;
/// How many faults may act on the same (target, peer prefix, protocol, port); the agent
/// refuses a fault that would exceed it.
pub const MAX_FAULTS_PER_RULE: usize = 8;

/// Pin and map name of the gate in front of [`MAP_TARGETS`] (array of [`GATE_ENTRIES`] `u8`):
/// entry [`gate_index`]`(addr)` has bit [`gate_bit`]`(direction, role)` set when some target
/// key with an address of that suffix exists for that direction and role. A superset of the targets (two addresses
/// can share an entry); the agent sets a bit before it writes a target and clears it after the
/// last target it stood for is gone.
pub const MAP_GATE: &str = "FL_GATE";
/// Number of [`MAP_GATE`] entries: one per value of an address's last two bytes.
pub const GATE_ENTRIES: u32 = 65_536;

/// The [`MAP_GATE`] entry of a 16-byte address (IPv6 or IPv4-mapped): its last two bytes, the
/// ones that differ most between the pods of a node.
#[inline(always)]
pub fn gate_index(addr: &[u8; 16]) -> u32 {
    gate_index_of([addr[14], addr[15]])
}

/// The [`MAP_GATE`] entry of an address from its last two bytes alone (an IPv4 address's last
/// two bytes are its IPv4-mapped form's), for a caller that has not built the 16-byte form.
#[inline(always)]
pub fn gate_index_of(last_two: [u8; 2]) -> u32 {
    u16::from_be_bytes(last_two) as u32
}

/// The bit of a [`Direction`] and a [`Role`] (as stored in [`TargetKey::direction`] and
/// [`TargetKey::role`]) in a [`MAP_GATE`] entry: bits 0 and 1 for the target role (egress,
/// ingress), bits 2 and 3 for the peer role.
#[inline(always)]
pub fn gate_bit(direction: u8, role: u8) -> u8 {
    1 << ((direction & 1) | ((role & 1) << 1))
}

/// The [`MAP_GATE`] bits of a direction in both roles: a packet whose gate entry has none of
/// them leaves at once.
#[inline(always)]
pub fn gate_bits_of(direction: u8) -> u8 {
    gate_bit(direction, Role::Target as u8) | gate_bit(direction, Role::Peer as u8)
}

/// Pin and map name of the target table (hash, [`TargetKey`] -> [`TargetValue`]).
pub const MAP_TARGETS: &str = "FL_TARGETS";
/// Pin and map name of the rule table (LPM trie, [`RuleKey`] -> [`RuleValue`]).
pub const MAP_RULES: &str = "FL_RULES";
/// Pin and map name of the fault parameters (array, slot -> [`FaultParams`]).
pub const MAP_FAULTS: &str = "FL_FAULTS";
/// Pin and map name of the per-fault counters (per-CPU array, slot -> [`FaultStats`]).
pub const MAP_STATS: &str = "FL_STATS";

/// Program for the tc **ingress** hook of a pod's host-side veth: it sees what the pod
/// sends, so it acts for faults in the pod's [`Direction::Egress`].
pub const PROG_HOST_INGRESS: &str = "fl_host_ingress";
/// Program for the tc **egress** hook of a pod's host-side veth: it sees what goes into the
/// pod, so it acts for faults in the pod's [`Direction::Ingress`].
pub const PROG_HOST_EGRESS: &str = "fl_host_egress";

/// Program for the tc **egress** hook of a pod's own interface (inside the pod's network
/// namespace): what the pod sends, before any qdisc, so that an `fq` root qdisc there can
/// enforce departure times. Only attached to pods that have an egress delay, rate limit or
/// duplication; it acts only for those (loss, corruption and partition act on the host side).
pub const PROG_POD_EGRESS: &str = "fl_pod_egress";

/// Program for the tc **egress** hook of the node's uplinks (the interfaces that carry traffic
/// to other nodes: the physical NIC, a tunnel device): what local pods send to other nodes,
/// after the node's NAT (a request sent to a Service's virtual address carries its real
/// backend address here). It judges what the sender's own veth could not (not yet marked
/// evaluated), as the sender's host veth would, except departure times (no fq on an uplink).
pub const PROG_UPLINK_EGRESS: &str = "fl_uplink_egress";

/// Pin and map name of the remote pods (hash, 16-byte address -> `u8` 1): pods on other nodes
/// whose own node agent judges the traffic they send, so that the programs here skip it when
/// it arrives (each packet is judged once, by the sender's node).
pub const MAP_REMOTE: &str = "FL_REMOTE";
/// Capacity of [`MAP_REMOTE`]: pod addresses on other nodes.
pub const MAX_REMOTE: u32 = 131_072;

/// Pin and map name of the rate limiters' and jitter's state (LRU hash, [`RateKey`] -> [`RateState`]).
pub const MAP_RATE: &str = "FL_RATE";
/// Capacity of [`MAP_RATE`].
pub const MAX_RATE: u32 = 65_536;

/// Pin and map name of the datapath's switches (array of [`CONTROL_ENTRIES`] `u32`, written
/// by the agent only). Entry [`CONTROL_KILL_SWITCH`]: nonzero while the kill switch is
/// engaged; the programs then pass every packet untouched before any fault can act, whatever
/// the other maps hold.
pub const MAP_CONTROL: &str = "FL_CONTROL";
/// Entries of [`MAP_CONTROL`].
pub const CONTROL_ENTRIES: u32 = 1;
/// [`MAP_CONTROL`] index of the kill switch.
pub const CONTROL_KILL_SWITCH: u32 = 0;

/// Default `skb->mark` bit that the program on a sender's host veth sets on a packet whose
/// faults it evaluated with the packet's real addresses, so that the program on the receiver's
/// host veth (same node, same network namespace: the mark survives forwarding and bridging)
/// does not apply them a second time; that program clears the bit again. The kernel clears
/// the whole mark when a packet enters another network namespace (`skb_scrub_packet`), so it
/// never reaches a pod. `0x40` avoids the bits known to be used on Kubernetes nodes: kubelet
/// `0x8000`, kube-proxy `0x4000`, Cilium `0xFF00` and the upper 16 bits, Calico
/// `0xFFFF0000`, AWS VPC CNI `0x80`. The agent's `--evaluated-mark` sets another one at load
/// time (the program's global [`EVALUATED_MARK_GLOBAL`]).
pub const EVALUATED_MARK: u32 = 0x40;
/// Name of the program's global holding the evaluated mark bit (see [`EVALUATED_MARK`]).
pub const EVALUATED_MARK_GLOBAL: &str = "FL_EVALUATED_MARK";

/// `skb->mark` value a duplicate carries while it re-enters the hook it was cloned from
/// (`bpf_clone_redirect`), so that the program lets it through untouched. A whole 32-bit value
/// compared for equality (CNIs use mark bits; this exact value is unlikely to be one of
/// theirs); the program resets the copy's mark to 0 after recognizing it.
pub const DUPLICATE_MARK: u32 = 0xfa17_d0b1;

/// Key of [`MAP_RATE`]: one token bucket (as an EDT horizon) and one last departure time
/// (jitter) per fault, target and direction.
/// 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateKey {
    /// Target address, IPv6 or IPv4-mapped.
    pub addr: [u8; 16],
    /// Fault slot.
    pub slot: u16,
    /// [`Direction`] as u8.
    pub direction: u8,
    pub _pad: [u8; 5],
}

/// Value of [`MAP_RATE`]. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateState {
    /// Rate limit: earliest departure of the next packet, `CLOCK_MONOTONIC` ns (the clock of
    /// EDT); 0 without a rate.
    pub next_ns: u64,
    /// Jitter: departure time given to the last packet, `CLOCK_MONOTONIC` ns; a later packet
    /// never gets an earlier one (no reordering); 0 without jitter.
    pub last_ns: u64,
}

/// TC verdicts (`include/uapi/linux/pkt_cls.h`). With TCX (Linux >= 6.6) the same values mean
/// `TCX_NEXT` (-1), `TCX_PASS` (0) and `TCX_DROP` (2).
pub mod verdict {
    /// No verdict of ours: the next program (a CNI's) runs. `TC_ACT_UNSPEC` / `TCX_NEXT`.
    pub const NEXT: i32 = -1;
    /// Drop the packet. `TC_ACT_SHOT` / `TCX_DROP`.
    pub const DROP: i32 = 2;
}

/// Direction of traffic relative to the **target** pod.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Packets the target pod sends (seen on its host-side veth's tc ingress).
    Egress = 0,
    /// Packets the target pod receives (seen on its host-side veth's tc egress).
    Ingress = 1,
}

impl Direction {
    /// The other direction: a packet the target sends is one its peer receives.
    #[inline(always)]
    pub fn opposite(self) -> Self {
        match self {
            Direction::Egress => Direction::Ingress,
            Direction::Ingress => Direction::Egress,
        }
    }
}

/// IP protocol numbers used in [`RuleKey::proto`] (IANA "Assigned Internet Protocol Numbers").
pub mod proto {
    /// Wildcard: any protocol.
    pub const ANY: u8 = 0;
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6. Rules say [`ICMP`] for both families; the program maps 58 to 1.
    pub const ICMPV6: u8 = 58;
}

/// The part a local pod plays in a fault (see the crate docs).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The pod is the fault's target: its rules name the fault's peers.
    Target = 0,
    /// The pod is one of the fault's peers: its rules name the fault's targets, and a packet
    /// is judged as the target sees it (the fault's direction is the opposite of the pod's).
    Peer = 1,
}

/// Key of [`MAP_TARGETS`]: a local pod's address, the direction of the packets relative to
/// that pod, and the role it plays. 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    /// Pod address, IPv6 or IPv4-mapped, network byte order.
    pub addr: [u8; 16],
    /// [`Direction`] as u8, relative to the pod at `addr`.
    pub direction: u8,
    /// [`Role`] as u8.
    pub role: u8,
    pub _pad: [u8; 2],
}

/// [`TargetValue::flags`]: the policy has tables keyed by a specific port.
pub const TARGET_HAS_PORT_RULES: u32 = 1 << 0;
/// [`TargetValue::flags`]: the policy has tables keyed by a protocol with any port.
pub const TARGET_HAS_PROTO_RULES: u32 = 1 << 1;
/// [`TargetValue::flags`]: record connections the peer opens towards this pod (for a
/// connection-aware partition in the opposite direction).
pub const TARGET_TRACK_CONNECTIONS: u32 = 1 << 2;
/// [`TargetValue::flags`]: the policy has entries for virtual addresses ([`RULE_VIRTUAL`]), so
/// the receiver's veth judges a packet the sender's veth marked evaluated ([`EVALUATED_MARK`])
/// in this policy still, for those entries alone: a reply from a Service's backend reaches its
/// client from the Service's address, translated back after the sender's veth judged it.
pub const TARGET_HAS_VIRTUAL_RULES: u32 = 1 << 3;

/// Value of [`MAP_TARGETS`]. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TargetValue {
    /// Policy id: the first field of every [`RuleKey`] of this target's rules. Targets with
    /// the same faults share one policy.
    pub policy: u32,
    /// `TARGET_*` flags: which rule tables exist, so the program skips lookups that must miss.
    pub flags: u32,
}

/// Key of [`MAP_RULES`] (the data part of an LPM trie key). 24 bytes, 192 bits.
///
/// The prefix length of an entry is [`RULE_FIXED_BITS`] plus the peer prefix length in
/// IPv6 terms (an IPv4 /24 is 96 + 24 bits of the mapped address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// Policy id, big-endian so that it sorts as a prefix (LPM tries compare bytes in order).
    pub policy: [u8; 4],
    /// [`proto`] number; [`proto::ANY`] for any protocol.
    pub proto: u8,
    pub _pad: u8,
    /// The fault's **peer's** L4 port, network byte order; 0 for any port. For a target's
    /// egress that is the destination port, for its ingress the source port; in the
    /// [`Role::Peer`] tables it is the local pod's own port.
    pub port: [u8; 2],
    /// The other end of the packet, IPv6 or IPv4-mapped, network byte order: a peer prefix in
    /// the [`Role::Target`] tables, a target address in the [`Role::Peer`] tables.
    pub peer: [u8; 16],
}

/// Bits of a [`RuleKey`] before the peer address: policy, protocol, padding, port.
pub const RULE_FIXED_BITS: u32 = 64;
/// Prefix length of a lookup key (all 192 bits significant).
pub const RULE_FULL_BITS: u32 = 192;

/// [`RuleValue::flags`]: the entry's prefix is a virtual address (a Service's ClusterIP,
/// externalIP or a node address, which the node translates to pod addresses after this hook).
/// Its faults name it explicitly; acting on it does not count as having evaluated the packet
/// with its real addresses, so the program does not set [`EVALUATED_MARK`].
pub const RULE_VIRTUAL: u8 = 1 << 0;

/// Value of [`MAP_RULES`]: the fault slots that act on packets matching the key. 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleValue {
    /// How many entries of `slots` are used (at most [`MAX_FAULTS_PER_RULE`]).
    pub count: u8,
    /// `RULE_*` flags.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Fault slots ([`MAP_FAULTS`] indices), in the order the program evaluates them.
    pub slots: [u16; MAX_FAULTS_PER_RULE],
}

/// [`FaultParams::flags`]: drop every matching packet (packet-level partition).
pub const FAULT_PARTITION: u32 = 1 << 0;
/// [`FaultParams::flags`]: never act on DNS (peer port 53, TCP or UDP).
pub const FAULT_PROTECT_DNS: u32 = 1 << 1;
/// [`FaultParams::flags`]: never act on NATS client traffic (peer TCP port 4222).
pub const FAULT_PROTECT_NATS_PORT: u32 = 1 << 2;
/// [`FaultParams::flags`]: connection-aware partition: drop the packets of connections the
/// target opens towards the peer, let through those of connections the peer opened
/// (Kubernetes NetworkPolicy semantics). See [`ct`].
pub const FAULT_PARTITION_CONNECTIONS: u32 = 1 << 3;

/// Value of [`MAP_FAULTS`]: what one fault does. 48 bytes. A zero value is an inactive slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FaultParams {
    /// Deadline, `CLOCK_BOOTTIME` in ns (`bpf_ktime_get_boot_ns`, Linux >= 5.8). The program
    /// ignores the fault from this instant on, whether or not the agent is alive. 0: inactive.
    pub deadline_ns: u64,
    /// Added delay in ns (EDT: `skb->tstamp`, enforced by an `fq` qdisc). At most 10 s.
    pub delay_ns: u64,
    /// Delay jitter in ns: uniform in `[-jitter, +jitter]` around `delay_ns` (at most
    /// `delay_ns`), independently per packet; a flow's packets still leave in order (fq).
    pub jitter_ns: u64,
    /// Rate limit in bytes per second (EDT pacing); 0: none.
    pub rate_bytes_per_sec: u64,
    /// `FAULT_*` flags.
    pub flags: u32,
    /// Loss probability in parts per million (0..=1_000_000).
    pub loss_ppm: u32,
    /// Corruption probability in parts per million (0..=1_000_000).
    pub corrupt_ppm: u32,
    /// Duplication probability in parts per million (0..=1_000_000).
    pub duplicate_ppm: u32,
}

/// Value of [`MAP_STATS`] (per CPU; the agent sums the CPUs). Counts packets (skbs). 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FaultStats {
    /// Packets the fault's rules matched while it was active (protected ports excluded).
    pub matched: u64,
    /// Packets dropped (partition or loss).
    pub dropped: u64,
    /// Packets whose payload was corrupted.
    pub corrupted: u64,
    /// Packets duplicated.
    pub duplicated: u64,
    /// Packets given a departure time (delay or rate).
    pub delayed: u64,
}

/// `true` when a uniform 32-bit random number `rand` falls within a probability of `ppm`
/// parts per million. Exact: the threshold is `ppm * 2^32 / 10^6` computed without rounding
/// or modulo bias, so 0 ppm never fires and 1_000_000 ppm always does.
#[inline(always)]
pub fn chance(rand: u32, ppm: u32) -> bool {
    (rand as u64) * 1_000_000 < (ppm as u64) << 32
}

const _: () = {
    assert!(core::mem::size_of::<TargetKey>() == 20);
    assert!(core::mem::size_of::<TargetValue>() == 8);
    assert!(core::mem::size_of::<RuleKey>() == 24);
    assert!(core::mem::size_of::<RuleValue>() == 20);
    assert!(core::mem::size_of::<FaultParams>() == 48);
    assert!(core::mem::size_of::<FaultStats>() == 40);
    assert!(RULE_FIXED_BITS + 128 == RULE_FULL_BITS);
    assert!(core::mem::size_of::<RateKey>() == 24);
    assert!(core::mem::size_of::<RateState>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made of integers and byte arrays with explicit
    // padding, so every bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for super::TargetKey {}
    unsafe impl aya::Pod for super::TargetValue {}
    unsafe impl aya::Pod for super::RuleKey {}
    unsafe impl aya::Pod for super::RuleValue {}
    unsafe impl aya::Pod for super::FaultParams {}
    unsafe impl aya::Pod for super::FaultStats {}
    unsafe impl aya::Pod for super::ct::CtKey {}
    unsafe impl aya::Pod for super::RateKey {}
    unsafe impl aya::Pod for super::RateState {}
    unsafe impl aya::Pod for super::ct::CtValue {}
}

#[cfg(test)]
mod tests {
    use super::chance;

    #[test]
    fn gate_index_of_the_last_two_bytes_is_that_of_the_16_byte_form() {
        // 198.18.1.10 IPv4-mapped, and fd00:fa::10a.
        let v4 = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 1, 10];
        let v6 = [0xfd, 0, 0, 0xfa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 10];
        assert_eq!(super::gate_index(&v4), 266);
        assert_eq!(super::gate_index(&v6), 266);
        assert_eq!(super::gate_index_of([1, 10]), 266);
        assert_eq!(super::gate_bit(0, 0), 1);
        assert_eq!(super::gate_bit(1, 0), 2);
        assert_eq!(super::gate_bit(0, 1), 4);
        assert_eq!(super::gate_bit(1, 1), 8);
        assert_eq!(super::gate_bits_of(1), 0b1010);
    }

    #[test]
    fn chance_bounds_are_exact() {
        assert!(!chance(0, 0));
        assert!(!chance(u32::MAX, 0));
        assert!(chance(0, 1_000_000));
        assert!(chance(u32::MAX, 1_000_000));
        // 50%: exactly the lower half of the u32 range fires.
        assert!(chance((1u32 << 31) - 1, 500_000));
        assert!(!chance(1u32 << 31, 500_000));
    }
}
