//! Capacity accounting: what the kernel maps and the agent's limits can hold, checked on the
//! compiled [`Tables`] **before** anything is written, so that a fault that does not fit is
//! refused whole (409) and a map is never half-written.
//!
//! A write goes from the tables the kernel holds to the desired ones in an order no packet can
//! see half-done ([`crate::dataplane::Diff`]): new entries are written before the old ones go.
//! So while a change is written, a map holds up to `|old ∪ new|` entries (every table whose
//! content changes gets a new policy id: its new rules sit next to its old ones for a moment).
//! Recovering a fault or its expiry rewrites every table it was in, and must never fail for
//! want of room. The budget that guarantees it: the faults may fill at most **half** of each
//! map (`MAX_* / 2`), so that any change between two admitted states, recover and expiry
//! included, peaks at `|old| + |new| <= MAX`. Each write is also checked against its own peak.
use std::collections::BTreeMap;

use fault_common::{MAX_FAULTS, MAX_REMOTE, MAX_RULES, MAX_TARGETS};

use crate::dataplane::Tables;

/// Limits of the agent on top of the maps' sizes (flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live faults at once (`--max-faults`; at most [`MAX_FAULTS`] slots).
    pub max_faults: usize,
    /// `FL_RULES` entries one fault may name (`--max-rules-per-fault`).
    pub max_rules_per_fault: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_faults: MAX_FAULTS as usize,
            max_rules_per_fault: DEFAULT_MAX_RULES_PER_FAULT,
        }
    }
}

/// Default of `--max-rules-per-fault`: a quarter of the rules the faults may use together.
pub const DEFAULT_MAX_RULES_PER_FAULT: usize = MAX_RULES as usize / 8;

/// A limit a fault (or a change of pods) would exceed: which one, the count it would reach,
/// and the limit. `Display` is the message the API answers with (409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} would be {count}, over the limit of {limit} ({why}); nothing was written")]
pub struct CapacityError {
    /// What is counted (`FL_RULES entries`, `live faults`...).
    pub what: String,
    pub count: usize,
    pub limit: usize,
    /// Where the limit comes from.
    pub why: String,
}

/// One map's entries: now, after the write, and at the write's peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    after: usize,
    peak: usize,
}

fn usage<K: Ord, V>(from: &BTreeMap<K, V>, to: &BTreeMap<K, V>) -> Usage {
    let added = to.keys().filter(|k| !from.contains_key(k)).count();
    Usage {
        after: to.len(),
        peak: from.len() + added,
    }
}

fn check_map(name: &str, max: u32, u: Usage) -> Result<(), CapacityError> {
    let max = max as usize;
    let budget = max / 2;
    if u.after > budget {
        return Err(CapacityError {
            what: format!("{name} entries"),
            count: u.after,
            limit: budget,
            why: format!(
                "half of the map's {max}: the other half is kept so that recovering or expiring a fault, which rewrites its tables, always fits"
            ),
        });
    }
    if u.peak > max {
        return Err(CapacityError {
            what: format!("{name} entries while the change is written"),
            count: u.peak,
            limit: max,
            why: "the map's size: new entries are written before old ones go".into(),
        });
    }
    Ok(())
}

/// Checks that writing `to` over `from` (what the kernel holds) fits every map, at the end and
/// at the write's peak (see the module docs).
pub fn check_maps(from: &Tables, to: &Tables) -> Result<(), CapacityError> {
    check_map(
        fault_common::MAP_TARGETS,
        MAX_TARGETS,
        usage(&from.targets, &to.targets),
    )?;
    check_map(
        fault_common::MAP_RULES,
        MAX_RULES,
        usage(&from.rules, &to.rules),
    )?;
    let remote_added = to.remote.difference(&from.remote).count();
    check_map(
        fault_common::MAP_REMOTE,
        MAX_REMOTE,
        Usage {
            after: to.remote.len(),
            peak: from.remote.len() + remote_added,
        },
    )?;
    if let Some(slot) = to.faults.keys().find(|s| u32::from(**s) >= MAX_FAULTS) {
        return Err(CapacityError {
            what: format!("fault slot {slot}"),
            count: usize::from(*slot) + 1,
            limit: MAX_FAULTS as usize,
            why: format!("{} has {MAX_FAULTS} entries", fault_common::MAP_FAULTS),
        });
    }
    Ok(())
}

/// `FL_RULES` entries that name fault `slot`.
pub fn rules_of(tables: &Tables, slot: u16) -> usize {
    tables
        .rules
        .values()
        .filter(|v| v.slots[..usize::from(v.count).min(v.slots.len())].contains(&slot))
        .count()
}

/// Checks a new fault (slot `slot`) against the per-fault limit of `limits`.
pub fn check_fault(tables: &Tables, slot: u16, limits: &Limits) -> Result<(), CapacityError> {
    let rules = rules_of(tables, slot);
    if rules > limits.max_rules_per_fault {
        return Err(CapacityError {
            what: format!("{} entries of this fault", fault_common::MAP_RULES),
            count: rules,
            limit: limits.max_rules_per_fault,
            why: "the agent's --max-rules-per-fault; fewer peers, CIDRs or ports need fewer".into(),
        });
    }
    Ok(())
}

/// Checks that one more fault fits `live` live ones.
pub fn check_live(live: usize, limits: &Limits) -> Result<(), CapacityError> {
    if live + 1 > limits.max_faults {
        return Err(CapacityError {
            what: "live faults".into(),
            count: live + 1,
            limit: limits.max_faults,
            why: format!(
                "the agent's --max-faults (at most {MAX_FAULTS}, the kernel's fault slots); recover or clean up faults first"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fault_common::{RuleKey, RuleValue, TargetKey, TargetValue};

    fn rule(policy: u32, last: u32, slots: &[u16]) -> ((u32, RuleKey), RuleValue) {
        let mut peer = [0u8; 16];
        peer[12..].copy_from_slice(&last.to_be_bytes());
        let mut value = RuleValue {
            count: slots.len() as u8,
            flags: 0,
            _pad: [0; 2],
            slots: [0; fault_common::MAX_FAULTS_PER_RULE],
        };
        value.slots[..slots.len()].copy_from_slice(slots);
        let key = RuleKey {
            policy: policy.to_be_bytes(),
            proto: 0,
            _pad: 0,
            port: [0; 2],
            peer,
        };
        ((192, key), value)
    }

    fn tables(policy: u32, rules: u32, slot: u16) -> Tables {
        let mut t = Tables::default();
        for i in 0..rules {
            let (k, v) = rule(policy, i, &[slot]);
            t.rules.insert(k, v);
        }
        t.targets.insert(
            TargetKey {
                addr: [0; 16],
                direction: 0,
                role: 0,
                _pad: [0; 2],
            },
            TargetValue { policy, flags: 0 },
        );
        t.faults.insert(slot, Default::default());
        t
    }

    #[test]
    fn a_change_is_checked_at_its_peak_and_against_half_the_map() {
        let half = MAX_RULES / 2;
        let empty = Tables::default();
        // Exactly half fits from empty; one more does not, and the message says why.
        assert!(check_maps(&empty, &tables(1, half, 0)).is_ok());
        let e = check_maps(&empty, &tables(1, half + 1, 0)).unwrap_err();
        assert_eq!((e.count, e.limit), (half as usize + 1, half as usize));
        assert!(e.to_string().contains("FL_RULES"), "{e}");
        // Rewriting a full half under a new policy id peaks at the whole map: fits.
        assert!(check_maps(&tables(1, half, 0), &tables(2, half, 0)).is_ok());
        // A kernel holding more than the budget (older agent) must not peak over the map.
        let e = check_maps(&tables(1, half + 10, 0), &tables(2, half, 0)).unwrap_err();
        assert_eq!(e.limit, MAX_RULES as usize);
        assert_eq!(e.count, (half + 10 + half) as usize);
    }

    #[test]
    fn rules_per_fault_count_the_entries_naming_the_slot() {
        let mut t = tables(1, 10, 3);
        let (k, v) = rule(1, 100, &[4, 3]);
        t.rules.insert(k, v);
        let (k, v) = rule(1, 101, &[4]);
        t.rules.insert(k, v);
        assert_eq!(rules_of(&t, 3), 11);
        assert_eq!(rules_of(&t, 4), 2);
        let limits = Limits {
            max_faults: 2,
            max_rules_per_fault: 10,
        };
        let e = check_fault(&t, 3, &limits).unwrap_err();
        assert_eq!((e.count, e.limit), (11, 10));
        assert!(check_fault(&t, 4, &limits).is_ok());
        assert!(check_live(1, &limits).is_ok());
        assert_eq!(check_live(2, &limits).unwrap_err().count, 3);
    }
}
