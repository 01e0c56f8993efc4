//! Names of a topology's kernel objects. All derive from its random 24-bit id, so that
//! topologies of concurrent tests never collide and leftovers can be found by prefix:
//! bridge `fl<id>br`, namespaces `fl<id>-<index>`, host-side veths `fl<id>p<index>` (at most
//! 15 characters, the kernel's limit), with `<id>` as 6 lowercase hex digits.
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
    }
}
