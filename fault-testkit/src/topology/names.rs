//! Names of a topology's kernel objects. All derive from its random 24-bit id, so that
//! topologies of concurrent tests never collide and leftovers can be found by prefix:
//! bridge `fl<id>br`, namespaces `fl<id>-<index>`, host-side veths `fl<id>p<index>` (at most
//! 15 characters, the kernel's limit), with `<id>` as 6 lowercase hex digits. Routed
//! topologies add a routing table ([`route_table`]) and fixed MAC addresses ([`routed_macs`]);
//! their Services add an nftables table ([`svc_table`]) and, routed, a node link
//! ([`node_link`]). A [`Fabric`](crate::nodes::Fabric) of fake nodes claims an id the same
//! way and names its bridge [`fabric_bridge`], its nodes [`node_netns`] with uplinks
//! [`uplink`], and its pods [`node_pod_netns`] (host sides [`host_if`]).
use anyhow::Result;

/// Largest pod index: 4 digits in interface names (`fl<id>p<index>` fits in 15 characters).
pub const MAX_POD_INDEX: u32 = 9_999;

/// The addresses of pod `index`: IPv4 `198.18.{n / 250}.{10 + n % 250}` and IPv6
/// `fd00:fa::{10 + n:x}`, in `198.18.0.0/16` and `fd00:fa::/64`. The first 245 pods get
/// `198.18.0.10` to `198.18.0.254`.
pub fn addresses(index: u32) -> (std::net::Ipv4Addr, std::net::Ipv6Addr) {
    let v4 = std::net::Ipv4Addr::new(198, 18, (index / 250) as u8, (10 + index % 250) as u8);
    let v6 = std::net::Ipv6Addr::new(0xfd00, 0xfa, 0, 0, 0, 0, 0, (10 + index) as u16);
    (v4, v6)
}

/// A random 24-bit id.
pub(super) fn random_id() -> Result<u32> {
    Ok(crate::rand::u64()? as u32 & 0x00ff_ffff)
}

/// The id as 6 lowercase hex digits.
pub fn id_hex(id: u32) -> String {
    format!("{id:06x}")
}

/// The id of a registry file name (exactly 6 lowercase hex digits).
pub(super) fn parse_id_hex(s: &str) -> Option<u32> {
    let ok = s.len() == 6
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| u32::from_str_radix(s, 16).ok()).flatten()
}

/// Prefix of every object name of topology `id`: `fl<id>`.
pub fn prefix(id: u32) -> String {
    format!("fl{id:06x}")
}

/// The bridge: `fl<id>br`.
pub fn bridge(id: u32) -> String {
    format!("fl{id:06x}br")
}

/// Network namespace of pod `index`: `fl<id>-<index>`.
pub fn netns(id: u32, index: u32) -> String {
    format!("fl{id:06x}-{index}")
}

/// Host side of the veth of pod `index`: `fl<id>p<index>`.
pub fn host_if(id: u32, index: u32) -> String {
    format!("fl{id:06x}p{index}")
}

/// The pod index of host-side veth `name` of topology `id` (`fl<id>p<index>`).
pub(crate) fn host_if_index(id: u32, name: &str) -> Option<u32> {
    name.strip_prefix(&format!("fl{id:06x}p"))?.parse().ok()
}

/// First routing table number of routed topologies: topology `id` uses `ROUTE_TABLE_BASE + id`
/// (24-bit ids, so `0x4600_0000..=0x46ff_ffff`).
pub const ROUTE_TABLE_BASE: u32 = 0x4600_0000;

/// Preference of the policy-routing rules that send what routed pods send to their topology's
/// table (before `main`, 32766).
pub const RULE_PREF: u32 = 31_900;

/// The routing table of routed topology `id`: `0x4600_0000 + id`.
pub fn route_table(id: u32) -> u32 {
    ROUTE_TABLE_BASE + (id & 0x00ff_ffff)
}

/// The topology id of a routing table number, if it is one of [`route_table`]'s.
pub fn parse_route_table(table: u32) -> Option<u32> {
    (table & 0xff00_0000 == ROUTE_TABLE_BASE).then_some(table & 0x00ff_ffff)
}

/// MAC addresses of the veth of routed pod `index` as `aa:bb:..` text: (host side, pod side),
/// `02:<id>:<index>` and `06:<id>:<index>` (locally administered, unicast), so that the
/// permanent neighbour entries need not read them back.
pub fn routed_macs(id: u32, index: u32) -> (String, String) {
    let tail = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        (id >> 16) & 0xff,
        (id >> 8) & 0xff,
        id & 0xff,
        (index >> 8) & 0xff,
        index & 0xff
    );
    (format!("02:{tail}"), format!("06:{tail}"))
}

/// The nftables table (family `inet`) of topology `id`'s Services: `fl<id>svc`.
pub fn svc_table(id: u32) -> String {
    format!("fl{id:06x}svc")
}

/// The topology id of a [`svc_table`] name.
pub fn parse_svc_table(name: &str) -> Option<u32> {
    let hex = name.strip_prefix("fl")?.strip_suffix("svc")?;
    parse_id_hex(hex)
}

/// The link holding the node address of routed topology `id`'s Services, `fl<id>nd`, and its
/// veth peer `fl<id>nq`.
pub fn node_link(id: u32) -> (String, String) {
    (format!("fl{id:06x}nd"), format!("fl{id:06x}nq"))
}

/// The bridge between the nodes of fabric `id` (root namespace): `fl<id>fab`.
pub fn fabric_bridge(id: u32) -> String {
    format!("fl{id:06x}fab")
}

/// The fabric id of a [`fabric_bridge`] name (also its nftables table's name).
pub fn parse_fabric_bridge(name: &str) -> Option<u32> {
    let hex = name.strip_prefix("fl")?.strip_suffix("fab")?;
    parse_id_hex(hex)
}

/// Network namespace of node `k` of fabric `id`: `fl<id>-n<k>`.
pub fn node_netns(id: u32, k: usize) -> String {
    format!("fl{id:06x}-n{k}")
}

/// Root-namespace side of node `k`'s uplink veth (a port of the fabric bridge): `fl<id>u<k>`.
pub fn uplink(id: u32, k: usize) -> String {
    format!("fl{id:06x}u{k}")
}

/// Network namespace of the `i`-th pod of node `k` of fabric `id`: `fl<id>-n<k>-<i>`.
pub fn node_pod_netns(id: u32, k: usize, i: usize) -> String {
    format!("fl{id:06x}-n{k}-{i}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_parse_back() {
        let id = 0x00ab_cdef;
        assert_eq!(bridge(id), "flabcdefbr");
        assert_eq!(netns(id, 3), "flabcdef-3");
        assert!(host_if(id, MAX_POD_INDEX).len() <= 15);
        assert_eq!(parse_id_hex(&id_hex(id)), Some(id));
        assert_eq!(parse_id_hex("ABCDEF"), None);
        assert_eq!(parse_id_hex(".new-abcdef-1"), None);
        assert_eq!(parse_route_table(route_table(id)), Some(id));
        assert_eq!(parse_route_table(254), None);
        assert_eq!(host_if_index(id, &host_if(id, 42)), Some(42));
        assert_eq!(parse_svc_table(&svc_table(id)), Some(id));
        assert_eq!(parse_svc_table("flabcdefbr"), None);
        assert!(node_link(id).0.len() <= 15);
        assert_eq!(fabric_bridge(id), "flabcdeffab");
        assert_eq!(parse_fabric_bridge(&fabric_bridge(id)), Some(id));
        assert_eq!(parse_fabric_bridge(&svc_table(id)), None);
        assert_eq!(node_netns(id, 2), "flabcdef-n2");
        assert_eq!(node_pod_netns(id, 2, 7), "flabcdef-n2-7");
        assert!(uplink(id, 999).len() <= 15);
        assert_eq!(
            routed_macs(id, 0x0102),
            ("02:ab:cd:ef:01:02".into(), "06:ab:cd:ef:01:02".into())
        );
    }
}
