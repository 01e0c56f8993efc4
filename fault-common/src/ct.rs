//! Connection tracking for the connection-aware partition ([`crate::FAULT_PARTITION_CONNECTIONS`]).
//!
//! Kubernetes NetworkPolicy is enforced on connections: an egress block stops a pod from
//! opening connections to the blocked peers, while the replies on connections those peers
//! opened still flow. To emulate that, the program records, for each target that has such a
//! fault, the flows whose first packet came **from the peer** ([`MAP_CT`]); a packet the target
//! sends to a peer is let through when it belongs to such a flow.

/// Pin and map name of the connection table (LRU hash, [`CtKey`] -> [`CtValue`]).
pub const MAP_CT: &str = "FL_CT";
/// Capacity of [`MAP_CT`]; the least recently used flows are evicted first.
pub const MAX_CT: u32 = 65_536;

/// A flow as the target sees it (its own address and port, the peer's, the protocol) and the
/// direction, relative to the target, in which a packet of it was seen. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Target pod address (IPv6 or IPv4-mapped).
    pub target: [u8; 16],
    /// Peer address (IPv6 or IPv4-mapped).
    pub peer: [u8; 16],
    /// Target's L4 port, network byte order.
    pub target_port: [u8; 2],
    /// Peer's L4 port, network byte order.
    pub peer_port: [u8; 2],
    /// IP protocol (UDP: TCP and ICMP need no table, see [`MAP_CT`]).
    pub proto: u8,
    /// [`crate::Direction`] of the packets recorded.
    pub direction: u8,
    pub _pad: [u8; 2],
}

/// Value of [`MAP_CT`]. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// When a packet of this flow was last seen in this direction, `CLOCK_BOOTTIME` ns.
    pub last_seen_ns: u64,
}

/// A UDP flow is forgotten this long (ns) after its last recorded packet.
pub const CT_UDP_TIMEOUT_NS: u64 = 30_000_000_000;

const _: () = {
    assert!(core::mem::size_of::<CtKey>() == 40);
    assert!(core::mem::size_of::<CtValue>() == 8);
};
