//! The content of the datapath's maps as plain values: what the compiler produces and what the
//! kernel holds. Diffing two of them gives the writes that take one to the other.
use std::collections::{BTreeMap, BTreeSet};

use fault_common::{FaultParams, RuleKey, RuleValue, TargetKey, TargetValue, gate_bit, gate_index};

/// An LPM key: prefix length in bits and the key data.
pub type RuleEntry = (u32, RuleKey);

/// Everything Faultline writes into the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub targets: BTreeMap<TargetKey, TargetValue>,
    pub rules: BTreeMap<RuleEntry, RuleValue>,
    /// Active fault slots; a slot absent here is zero (inactive) in the kernel.
    pub faults: BTreeMap<u16, FaultParams>,
    /// Nonzero entries of the gate (`fault_common::MAP_GATE`): [`gate_index`] -> direction and
    /// role bits. Derived from `targets` by [`Tables::derive_gates`] in what the compiler produces,
    /// but kept as its own field because what the kernel holds (read back at start or after a
    /// failed write) need not match its targets; an index absent here is zero.
    pub gates: BTreeMap<u16, u8>,
    /// Addresses of pods on other nodes (`fault_common::MAP_REMOTE`), 16-byte form.
    pub remote: BTreeSet<[u8; 16]>,
}

impl Tables {
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
            && self.rules.is_empty()
            && self.faults.is_empty()
            && self.gates.is_empty()
            && self.remote.is_empty()
    }

    /// Sets `gates` to what `targets` need: the bit of each target key's direction and role
    /// at its address's gate index.
    pub fn derive_gates(&mut self) {
        self.gates.clear();
        for key in self.targets.keys() {
            *self.gates.entry(gate_index(&key.addr) as u16).or_default() |=
                gate_bit(key.direction, key.role);
        }
    }
}

/// How many entries the kernel maps hold, by role (what the peer role adds is what faults
/// through Services cost).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableSizes {
    /// `FL_TARGETS` entries, both roles.
    pub targets: usize,
    /// Of which in the peer role.
    pub peer_targets: usize,
    /// `FL_RULES` entries.
    pub rules: usize,
    /// Of which in policies only the peer role uses.
    pub peer_rules: usize,
    /// Active fault slots (`FL_FAULTS`).
    pub faults: usize,
    /// Pods of other nodes (`FL_REMOTE`).
    pub remote: usize,
}

impl Tables {
    /// The sizes of these tables.
    pub fn sizes(&self) -> TableSizes {
        let by_role = |role: u8| -> BTreeSet<u32> {
            self.targets
                .iter()
                .filter(|(k, _)| k.role == role)
                .map(|(_, v)| v.policy)
                .collect()
        };
        let target_policies = by_role(fault_common::Role::Target as u8);
        let peer_only: BTreeSet<u32> = by_role(fault_common::Role::Peer as u8)
            .difference(&target_policies)
            .copied()
            .collect();
        TableSizes {
            targets: self.targets.len(),
            peer_targets: self
                .targets
                .keys()
                .filter(|k| k.role == fault_common::Role::Peer as u8)
                .count(),
            rules: self.rules.len(),
            peer_rules: self
                .rules
                .keys()
                .filter(|(_, k)| peer_only.contains(&u32::from_be_bytes(k.policy)))
                .count(),
            faults: self.faults.len(),
            remote: self.remote.len(),
        }
    }
}

/// The writes taking the kernel from one [`Tables`] to another, in the order that never lets
/// a packet see a half-written fault: fault parameters first, then the rules of new policies,
/// then the gate opens for new targets, then the targets switch to them, then what nobody
/// references any more goes (targets, then their gate bits, rules, slots). Remote pods are
/// independent of the rest: added first, removed last.
#[derive(Debug, Default)]
pub struct Diff {
    pub put_remote: Vec<[u8; 16]>,
    pub set_faults: Vec<(u16, FaultParams)>,
    pub put_rules: Vec<(RuleEntry, RuleValue)>,
    /// Gate entries gaining bits, written as old | new before any target needing them.
    pub widen_gates: Vec<(u16, u8)>,
    pub put_targets: Vec<(TargetKey, TargetValue)>,
    pub del_targets: Vec<TargetKey>,
    /// Gate entries losing bits, written as new (0 included) once their targets are gone.
    pub narrow_gates: Vec<(u16, u8)>,
    pub del_rules: Vec<RuleEntry>,
    pub clear_faults: Vec<u16>,
    pub del_remote: Vec<[u8; 16]>,
}

impl Diff {
    pub fn between(from: &Tables, to: &Tables) -> Self {
        let (mut widen_gates, mut narrow_gates) = (Vec::new(), Vec::new());
        let indexes: std::collections::BTreeSet<u16> =
            from.gates.keys().chain(to.gates.keys()).copied().collect();
        for i in indexes {
            let old = from.gates.get(&i).copied().unwrap_or(0);
            let new = to.gates.get(&i).copied().unwrap_or(0);
            if old | new != old {
                widen_gates.push((i, old | new));
            }
            if new != old | new {
                narrow_gates.push((i, new));
            }
        }
        Diff {
            put_remote: to.remote.difference(&from.remote).copied().collect(),
            del_remote: from.remote.difference(&to.remote).copied().collect(),
            set_faults: changed(&from.faults, &to.faults),
            put_rules: changed(&from.rules, &to.rules),
            widen_gates,
            put_targets: changed(&from.targets, &to.targets),
            del_targets: removed(&from.targets, &to.targets),
            narrow_gates,
            del_rules: removed(&from.rules, &to.rules),
            clear_faults: removed(&from.faults, &to.faults),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of map writes.
    pub fn len(&self) -> usize {
        self.put_remote.len()
            + self.del_remote.len()
            + self.set_faults.len()
            + self.put_rules.len()
            + self.widen_gates.len()
            + self.narrow_gates.len()
            + self.put_targets.len()
            + self.del_targets.len()
            + self.del_rules.len()
            + self.clear_faults.len()
    }
}

fn changed<K: Ord + Copy, V: PartialEq + Copy>(
    from: &BTreeMap<K, V>,
    to: &BTreeMap<K, V>,
) -> Vec<(K, V)> {
    to.iter()
        .filter(|(k, v)| from.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect()
}

fn removed<K: Ord + Copy, V>(from: &BTreeMap<K, V>, to: &BTreeMap<K, V>) -> Vec<K> {
    from.keys()
        .filter(|k| !to.contains_key(k))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(last: [u8; 2], direction: u8) -> TargetKey {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12] = 198;
        addr[13] = 18;
        addr[14] = last[0];
        addr[15] = last[1];
        TargetKey {
            addr,
            direction,
            role: 0,
            _pad: [0; 2],
        }
    }

    fn tables(keys: &[TargetKey]) -> Tables {
        let mut t = Tables::default();
        for k in keys {
            t.targets.insert(
                *k,
                TargetValue {
                    policy: 1,
                    flags: 0,
                },
            );
        }
        t.derive_gates();
        t
    }

    #[test]
    fn gates_open_before_targets_and_close_after_them() {
        let a_egress = target([0, 10], 0);
        let a_ingress = target([0, 10], 1);
        let b = target([1, 7], 0);
        let from = tables(&[a_egress, b]);
        assert_eq!(from.gates.get(&10), Some(&0b01));
        assert_eq!(from.gates.get(&(256 + 7)), Some(&0b01));
        let to = tables(&[a_ingress]);
        let d = Diff::between(&from, &to);
        // a gains ingress (widened to both while a's egress target may still be there)...
        assert_eq!(d.widen_gates, vec![(10, 0b11)]);
        // ...and loses egress, b goes: narrowed once the targets are deleted.
        assert_eq!(d.narrow_gates, vec![(10, 0b10), (256 + 7, 0)]);
        assert_eq!(d.put_targets.len(), 1);
        assert_eq!(d.del_targets.len(), 2);
        assert!(Diff::between(&to, &to).is_empty());
    }

    #[test]
    fn addresses_sharing_a_gate_entry_keep_it_open() {
        // 198.18.0.10 and fd00::a share the entry of their last two bytes.
        let v4 = target([0, 10], 0);
        let mut v6 = target([0, 10], 0);
        v6.addr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10];
        let from = tables(&[v4, v6]);
        let to = tables(&[v6]);
        let d = Diff::between(&from, &to);
        assert!(d.widen_gates.is_empty() && d.narrow_gates.is_empty());
        assert_eq!(d.del_targets, vec![v4]);
    }
}
