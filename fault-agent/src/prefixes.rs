//! Peer prefixes and the question the resolver and the compiler ask of them: does a view of a
//! fault cover a prefix, or an address? Coverage is by the **longest** matching prefix: an excluded address (NATS, an
//! allowed namespace, a target seen from its own ingress) beats any include of the same or
//! shorter length, and a virtual range (a Service CIDR, an externalIP, a node address) is cut
//! out of every include broader than it, but not out of one that names it or lies within it.
use std::{collections::HashSet, net::IpAddr};

use ipnet::IpNet;

/// A set of prefixes with a longest-match query: one set lookup per prefix length present in
/// the set (of the queried prefix's family, at most its length), not a scan of every prefix
/// nor a probe of every length (a miss in a set of /32s is one lookup, not 33).
#[derive(Debug, Default, Clone)]
pub struct PrefixSet {
    nets: HashSet<IpNet>,
    /// Prefix lengths present, longest first: IPv4, IPv6.
    lens: [Vec<u8>; 2],
}

impl PrefixSet {
    pub fn of(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let nets: HashSet<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
        let mut lens: [Vec<u8>; 2] = Default::default();
        for n in &nets {
            lens[Self::family(n)].push(n.prefix_len());
        }
        for l in &mut lens {
            l.sort_unstable_by(|a, b| b.cmp(a));
            l.dedup();
        }
        Self { nets, lens }
    }

    fn family(n: &IpNet) -> usize {
        match n {
            IpNet::V4(_) => 0,
            IpNet::V6(_) => 1,
        }
    }

    /// The length of the longest prefix of the set that contains `x`.
    pub fn longest(&self, x: &IpNet) -> Option<u8> {
        self.lens[Self::family(x)]
            .iter()
            .copied()
            .filter(|&len| len <= x.prefix_len())
            .find(|&len| {
                IpNet::new(x.addr(), len)
                    .map(|n| self.nets.contains(&n.trunc()))
                    .unwrap_or(false)
            })
    }

    /// Whether some prefix of the set contains `x`.
    pub fn contains(&self, x: &IpNet) -> bool {
        self.longest(x).is_some()
    }

    /// Whether some prefix of the set contains the address `ip`.
    pub fn contains_addr(&self, ip: IpAddr) -> bool {
        self.contains(&IpNet::from(ip))
    }

    /// Whether some prefix of the set strictly contains `x` (is shorter and contains it).
    pub fn strictly_contains(&self, x: &IpNet) -> bool {
        x.prefix_len() > 0
            && IpNet::new(x.addr(), x.prefix_len() - 1)
                .ok()
                .is_some_and(|parent| self.contains(&parent))
    }
}

/// The peers of one view of a fault: what it includes and what it carves out.
#[derive(Debug, Default, Clone)]
pub struct Peers {
    pub includes: PrefixSet,
    pub excludes: PrefixSet,
}

impl Peers {
    /// Whether these peers cover prefix `x` when `virtuals` are the node's virtual ranges.
    pub fn covers(&self, x: &IpNet, virtuals: &PrefixSet) -> bool {
        let Some(include) = self.includes.longest(x) else {
            return false;
        };
        let excluded = self.excludes.longest(x).is_some_and(|e| e >= include);
        let behind_nat = virtuals.longest(x).is_some_and(|v| v > include);
        !excluded && !behind_nat
    }
}

/// Whether peers with these includes and excludes cover the address `ip` (no virtual ranges:
/// a pod address is never one).
pub fn covers_addr(includes: &PrefixSet, excludes: &PrefixSet, ip: IpAddr) -> bool {
    let x = IpNet::from(ip);
    match includes.longest(&x) {
        Some(i) => excludes.longest(&x).is_none_or(|e| e < i),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> PrefixSet {
        PrefixSet::of(nets.iter().map(|s| s.parse().unwrap()))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn excludes_win_ties_and_virtual_ranges_leave_only_what_names_them() {
        let virtuals = set(&["198.19.0.0/16"]);
        let all = Peers {
            includes: set(&["0.0.0.0/0", "198.19.0.10/32"]),
            excludes: set(&["198.18.0.13/32"]),
        };
        assert!(all.covers(&net("198.18.0.12/32"), &virtuals));
        assert!(!all.covers(&net("198.18.0.13/32"), &virtuals), "excluded");
        assert!(
            !all.covers(&net("198.19.0.11/32"), &virtuals),
            "a virtual address is not a peer of 0.0.0.0/0"
        );
        assert!(
            all.covers(&net("198.19.0.10/32"), &virtuals),
            "one the fault names is"
        );
        let named = Peers {
            includes: set(&["198.19.0.0/16"]),
            excludes: PrefixSet::default(),
        };
        assert!(named.covers(&net("198.19.3.4/32"), &virtuals));
        let same = Peers {
            includes: set(&["198.18.0.13/32"]),
            excludes: set(&["198.18.0.13/32"]),
        };
        assert!(!same.covers(&net("198.18.0.13/32"), &virtuals));
        assert!(!covers_addr(
            &same.includes,
            &same.excludes,
            "198.18.0.13".parse().unwrap()
        ));
    }

    #[test]
    fn strict_containment() {
        let s = set(&["198.19.0.0/16"]);
        assert!(s.strictly_contains(&net("198.19.0.10/32")));
        assert!(!s.strictly_contains(&net("198.19.0.0/16")));
        assert!(!s.strictly_contains(&net("0.0.0.0/0")));
    }
}
