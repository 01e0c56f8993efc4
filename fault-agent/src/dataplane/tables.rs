//! The content of the datapath's maps as plain values: what the compiler produces and what the
//! kernel holds. Diffing two of them gives the writes that take one to the other.
use std::collections::BTreeMap;

use fault_common::{FaultParams, RuleKey, RuleValue, TargetKey, TargetValue};

/// An LPM key: prefix length in bits and the key data.
pub type RuleEntry = (u32, RuleKey);

/// Everything Faultline writes into the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub targets: BTreeMap<TargetKey, TargetValue>,
    pub rules: BTreeMap<RuleEntry, RuleValue>,
    /// Active fault slots; a slot absent here is zero (inactive) in the kernel.
    pub faults: BTreeMap<u16, FaultParams>,
}

impl Tables {
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.rules.is_empty() && self.faults.is_empty()
    }
}

/// The writes taking the kernel from one [`Tables`] to another, in the order that never lets
/// a packet see a half-written fault: fault parameters first, then the rules of new policies,
/// then the targets switch to them, then what nobody references any more goes.
#[derive(Debug, Default)]
pub struct Diff {
    pub set_faults: Vec<(u16, FaultParams)>,
    pub put_rules: Vec<(RuleEntry, RuleValue)>,
    pub put_targets: Vec<(TargetKey, TargetValue)>,
    pub del_targets: Vec<TargetKey>,
    pub del_rules: Vec<RuleEntry>,
    pub clear_faults: Vec<u16>,
}

impl Diff {
    pub fn between(from: &Tables, to: &Tables) -> Self {
        Diff {
            set_faults: changed(&from.faults, &to.faults),
            put_rules: changed(&from.rules, &to.rules),
            put_targets: changed(&from.targets, &to.targets),
            del_targets: removed(&from.targets, &to.targets),
            del_rules: removed(&from.rules, &to.rules),
            clear_faults: removed(&from.faults, &to.faults),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set_faults.is_empty()
            && self.put_rules.is_empty()
            && self.put_targets.is_empty()
            && self.del_targets.is_empty()
            && self.del_rules.is_empty()
            && self.clear_faults.is_empty()
    }

    /// Number of map writes.
    pub fn len(&self) -> usize {
        self.set_faults.len()
            + self.put_rules.len()
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
