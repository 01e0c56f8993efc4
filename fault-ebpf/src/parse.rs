//! Packet parsing in two steps, so that the no-fault path stays short:
//! 1. [`packet`]: Ethernet and IPv4 / IPv6 (fixed offsets, direct packet access) give the
//!    addresses the target lookup needs;
//! 2. [`l4`], only for packets of a target: IPv6 extension headers (up to four), then TCP, UDP,
//!    ICMP and ICMPv6, read with `bpf_skb_load_bytes` (their offsets vary, which direct access
//!    makes hard to prove safe to the verifier).
//! The offsets of the L4 checksum and payload are kept for the actions that rewrite the packet.
use aya_ebpf::programs::TcContext;
use core::mem::size_of;
use fault_common::{Direction, Role, TargetKey, gate_index_of, proto};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// Ethernet + IPv6: the headers read by direct packet access ([`local_addr`], [`packet`]);
/// everything past them is read with `bpf_skb_load_bytes`, which also reads paged data. Pulling
/// no further matters: a TCP segment's linear part usually ends with its TCP header, and pulling
/// past it would copy payload (and unclone the skb) on every packet.
const HEADERS_PULL: u32 = 14 + 40;
const IPV6_MAX_EXT_HEADERS: usize = 4;
/// ICMP header length (type, code, checksum, rest of header).
const ICMP_HDR_LEN: usize = 8;

/// What the lookup and the actions need from one packet.
#[derive(Clone, Copy)]
pub struct Packet {
    /// Source address, IPv6 or IPv4-mapped.
    pub src: [u8; 16],
    /// Destination address, IPv6 or IPv4-mapped.
    pub dst: [u8; 16],
    /// Protocol as rules name it: ICMPv6 is [`proto::ICMP`].
    pub proto: u8,
    /// Source and destination ports, network order; zero without an L4 header.
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN); 0 for other protocols.
    pub tcp_flags: u8,
    /// ICMP / ICMPv6 type; 0 for other protocols.
    pub icmp_type: u8,
    /// Offset of the L4 checksum field from the start of the frame; 0: none to keep valid.
    pub csum_off: usize,
    /// Offset of the L4 payload from the start of the frame.
    pub payload_off: usize,
    /// Offset of the end of the IP packet (from its length field; excludes link padding).
    pub end_off: usize,
    /// Offset of the L4 header (after [`l4`]: past IPv6 extension headers).
    pub l4_off: usize,
    /// Not a fragment, or the first one (the only one with an L4 header).
    pub first_fragment: bool,
    /// IPv6 (extension headers still to walk before [`l4`]).
    pub ipv6: bool,
}

/// TCP flag bits in [`Packet::tcp_flags`].
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// The packet seen from the target of a fault: who the target is and who the peer is.
#[derive(Clone, Copy)]
pub struct Flow {
    pub target: [u8; 16],
    pub peer: [u8; 16],
    pub target_port: [u8; 2],
    /// The peer's port: the destination port of what the target sends, the source port of
    /// what it receives.
    pub peer_port: [u8; 2],
}

impl Flow {
    #[inline(always)]
    pub fn of(pkt: &Packet, direction: Direction) -> Self {
        match direction {
            Direction::Egress => Flow {
                target: pkt.src,
                peer: pkt.dst,
                target_port: pkt.src_port,
                peer_port: pkt.dst_port,
            },
            Direction::Ingress => Flow {
                target: pkt.dst,
                peer: pkt.src,
                target_port: pkt.dst_port,
                peer_port: pkt.src_port,
            },
        }
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn mapped_v4(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// Makes the headers a lookup needs linear (they nearly always are already).
#[inline(always)]
pub fn pull_headers(ctx: &TcContext) -> Option<()> {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < HEADERS_PULL && ctx.len() > linear {
        let want = if ctx.len() < HEADERS_PULL {
            ctx.len()
        } else {
            HEADERS_PULL
        };
        ctx.pull_data(want).ok()?;
    }
    Some(())
}

/// Where the local pod's address is in a packet: its source on the pod's egress, its
/// destination on the pod's ingress. An IPv6 address stays in the packet until
/// [`LocalAddr::key`]: the no-fault path reads two bytes of it for the gate and copies nothing.
pub enum LocalAddr {
    /// An IPv4 address, copied (4 bytes, network order).
    V4([u8; 4]),
    /// An IPv6 address, where it is in the packet's linear data (16 bytes, network order).
    V6(*const [u8; 16]),
}

impl LocalAddr {
    /// The address's entry in the gate (`fault_common::gate_index_of` its last two bytes).
    #[inline(always)]
    pub fn gate_index(&self) -> u32 {
        gate_index_of(match self {
            LocalAddr::V4(a) => [a[2], a[3]],
            // SAFETY: points into the packet, bounds checked by `local_addr`.
            LocalAddr::V6(p) => unsafe { [(**p)[14], (**p)[15]] },
        })
    }

    /// The target map key of this address, the packets' `direction` relative to the pod, and
    /// the `role` it plays.
    #[inline(always)]
    pub fn key(&self, direction: Direction, role: Role) -> TargetKey {
        TargetKey {
            addr: match self {
                LocalAddr::V4(a) => mapped_v4(*a),
                // SAFETY: as above.
                LocalAddr::V6(p) => unsafe { **p },
            },
            direction: direction as u8,
            role: role as u8,
            _pad: [0; 2],
        }
    }
}

/// The local pod's address in a packet going in `direction` relative to it (see
/// [`LocalAddr`]); `None` for what is not IP.
#[inline(always)]
pub fn local_addr(ctx: &TcContext, direction: Direction) -> Option<LocalAddr> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type == ETH_P_IP {
        let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
        // SAFETY: `ptr_at` checked the header is within the linear data.
        Some(LocalAddr::V4(match direction {
            Direction::Egress => unsafe { (*ip).src_addr },
            Direction::Ingress => unsafe { (*ip).dst_addr },
        }))
    } else if ether_type == ETH_P_IPV6 {
        let ip: *const Ipv6Hdr = ptr_at(ctx, EthHdr::LEN)?;
        // SAFETY: as above; only the field's address is taken here.
        Some(LocalAddr::V6(match direction {
            Direction::Egress => unsafe { core::ptr::addr_of!((*ip).src_addr) },
            Direction::Ingress => unsafe { core::ptr::addr_of!((*ip).dst_addr) },
        }))
    } else {
        None
    }
}

/// Parses the L2 and L3 headers of `ctx`, or `None` for what Faultline never acts on (not IP,
/// truncated). The L4 fields stay zero until [`l4`].
#[inline(always)]
pub fn packet(ctx: &TcContext, pkt: &mut Packet) -> Option<()> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    *pkt = Packet {
        src: [0; 16],
        dst: [0; 16],
        proto: 0,
        src_port: [0; 2],
        dst_port: [0; 2],
        tcp_flags: 0,
        icmp_type: 0,
        csum_off: 0,
        payload_off: 0,
        end_off: 0,
        l4_off: 0,
        first_fragment: true,
        ipv6: false,
    };
    if ether_type == ETH_P_IP {
        let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
        let ip = unsafe { &*ip };
        let ihl = ((ip.vihl & 0x0f) as usize) * 4;
        if ihl < Ipv4Hdr::LEN {
            return None;
        }
        pkt.src = mapped_v4(ip.src_addr);
        pkt.dst = mapped_v4(ip.dst_addr);
        pkt.proto = ip.proto;
        pkt.end_off = EthHdr::LEN + u16::from_be_bytes(ip.tot_len) as usize;
        // Only the first fragment carries the L4 header.
        pkt.first_fragment = u16::from_be_bytes(ip.frags) & 0x1fff == 0;
        pkt.l4_off = EthHdr::LEN + ihl;
    } else if ether_type == ETH_P_IPV6 {
        let ip: *const Ipv6Hdr = ptr_at(ctx, EthHdr::LEN)?;
        let ip = unsafe { &*ip };
        pkt.src = ip.src_addr;
        pkt.dst = ip.dst_addr;
        pkt.end_off = EthHdr::LEN + Ipv6Hdr::LEN + u16::from_be_bytes(ip.payload_len) as usize;
        pkt.proto = ip.next_hdr;
        pkt.l4_off = EthHdr::LEN + Ipv6Hdr::LEN;
        pkt.ipv6 = true;
    } else {
        return None;
    }
    Some(())
}

/// Fills the L4 fields of `pkt` (ports, TCP flags, ICMP type, checksum and payload offsets).
/// Leaves them zero for non-first fragments and protocols without ports.
#[inline(always)]
pub fn l4(ctx: &TcContext, pkt: &mut Packet) {
    if pkt.ipv6 {
        let Some((next, off, first_fragment)) = skip_ipv6_extensions(ctx, pkt.proto) else {
            return;
        };
        pkt.proto = if next == proto::ICMPV6 {
            proto::ICMP
        } else {
            next
        };
        pkt.l4_off = off;
        pkt.first_fragment = first_fragment;
    }
    if pkt.first_fragment {
        parse_l4(ctx, pkt, pkt.l4_off);
    }
}

/// Walks IPv6 extension headers (hop-by-hop, routing, fragment, destination options, AH).
/// Returns the upper-layer protocol, its offset, and whether this is a first fragment.
#[inline(always)]
fn skip_ipv6_extensions(ctx: &TcContext, first: u8) -> Option<(u8, usize, bool)> {
    let mut next = first;
    let mut off = EthHdr::LEN + Ipv6Hdr::LEN;
    let mut first_fragment = true;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        let hdr: [u8; 4] = match next {
            0 | 43 | 44 | 51 | 60 => ctx.load(off).ok()?,
            _ => return Some((next, off, first_fragment)),
        };
        let len = match next {
            44 => {
                first_fragment = u16::from_be_bytes([hdr[2], hdr[3]]) & 0xfff8 == 0;
                8
            }
            51 => (hdr[1] as usize + 2) * 4,
            _ => (hdr[1] as usize + 1) * 8,
        };
        next = hdr[0];
        off += len;
    }
    Some((next, off, first_fragment))
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, pkt: &mut Packet, l4_off: usize) {
    match pkt.proto {
        proto::TCP => {
            let Ok(tcp) = ctx.load::<TcpHdr>(l4_off) else {
                return;
            };
            pkt.src_port = tcp.source;
            pkt.dst_port = tcp.dest;
            // Byte 13 of the TCP header holds the flags, byte 12 the data offset.
            let Ok(bytes) = ctx.load::<[u8; 2]>(l4_off + 12) else {
                return;
            };
            pkt.tcp_flags = bytes[1];
            pkt.csum_off = l4_off + 16;
            pkt.payload_off = l4_off + (bytes[0] >> 4) as usize * 4;
        }
        proto::UDP => {
            let Ok(udp) = ctx.load::<UdpHdr>(l4_off) else {
                return;
            };
            pkt.src_port = udp.src;
            pkt.dst_port = udp.dst;
            pkt.csum_off = l4_off + 6;
            pkt.payload_off = l4_off + UdpHdr::LEN;
        }
        proto::ICMP => {
            let Ok(ty) = ctx.load::<u8>(l4_off) else {
                return;
            };
            pkt.icmp_type = ty;
            pkt.csum_off = l4_off + 2;
            pkt.payload_off = l4_off + ICMP_HDR_LEN;
        }
        _ => {}
    }
}
