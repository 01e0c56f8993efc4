//! The views of the faults at this node's pods: for each fault and direction, the **target
//! view** (its local targets, looking at its peers) and the **peer view** (its local peers,
//! looking at its targets, on every node: what catches a target's traffic after the node's
//! NAT, and what a peer sends to a target of another node). A local pod gets the views in
//! which it plays a part, keyed by (its address, the packets' direction relative to it, its
//! role); the compiler turns each key's views into a table.
//!
//! One packet from `a` to `b` belongs to a fault either as `a`'s egress (a target, b a peer)
//! or as `b`'s ingress (b a target, a a peer), each with its own peer port and protection;
//! either is enough. Both can hold (a fault in both directions whose targets are also its
//! peers): every hook that judges the packet with its real addresses then finds the fault in
//! both of the local pod's roles (its own view and its view as the other's peer), and the
//! program runs it once, skipping in the peer role what acted in the target role
//! (`fault-ebpf` `judge.rs`). Leaving the targets out of one of the views instead would lose
//! the packets only that view covers (a reply from a peer's port, a peer protected as such).
use std::{collections::BTreeMap, net::IpAddr};

use fault_common::{Direction, Role};
use ipnet::IpNet;

use super::CompileInput;
use crate::prefixes::{Peers, PrefixSet};

/// One view of one fault (in one direction, for one role): the remote ends it covers.
#[derive(Debug)]
pub struct ViewSpec<'a> {
    pub fault: &'a CompileInput,
    pub peers: Peers,
    /// The prefixes of `peers`, includes and excludes, for the table's entries.
    pub prefixes: Vec<IpNet>,
}

/// Where a local pod plays a part: (address, packets' direction relative to it, role).
pub type At = (IpAddr, Direction, Role);

/// Every view of the faults, and which of them each local pod holds.
#[derive(Debug, Default)]
pub struct Views<'a> {
    pub specs: Vec<ViewSpec<'a>>,
    /// Indexes into `specs`, oldest fault first.
    pub at: BTreeMap<At, Vec<usize>>,
}

fn host_nets(ips: &[IpAddr]) -> impl Iterator<Item = IpNet> + '_ {
    ips.iter().map(|ip| IpNet::from(*ip))
}

impl<'a> Views<'a> {
    fn push(&mut self, spec: ViewSpec<'a>, at: impl IntoIterator<Item = At>) {
        let index = self.specs.len();
        self.specs.push(spec);
        for key in at {
            self.at.entry(key).or_default().push(index);
        }
    }

    /// The views of `faults`.
    pub fn of(faults: &'a [CompileInput]) -> Self {
        let mut views = Views::default();
        for f in faults {
            for &d in &f.directions {
                views.push_target_view(f, d);
                views.push_peer_view(f, d);
            }
        }
        for indexes in views.at.values_mut() {
            indexes.sort_by_key(|&i| views.specs[i].fault.seq);
        }
        views
    }

    fn push_target_view(&mut self, f: &'a CompileInput, d: Direction) {
        let prefixes = f.includes.iter().chain(&f.excludes).copied().collect();
        let spec = ViewSpec {
            fault: f,
            peers: Peers {
                includes: PrefixSet::of(f.includes.iter().copied()),
                excludes: PrefixSet::of(f.excludes.iter().copied()),
            },
            prefixes,
        };
        let at = f.target_ips.iter().map(move |ip| (*ip, d, Role::Target));
        self.push(spec, at);
    }

    fn push_peer_view(&mut self, f: &'a CompileInput, d: Direction) {
        if f.all_target_ips.is_empty() || f.peer_ips.is_empty() {
            return;
        }
        let prefixes: Vec<IpNet> = host_nets(&f.all_target_ips).collect();
        let spec = ViewSpec {
            fault: f,
            peers: Peers {
                includes: PrefixSet::of(prefixes.iter().copied()),
                excludes: PrefixSet::default(),
            },
            prefixes,
        };
        let at = f
            .peer_ips
            .iter()
            .map(move |ip| (*ip, d.opposite(), Role::Peer));
        self.push(spec, at);
    }
}
