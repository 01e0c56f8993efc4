//! Policy ids by table content, kept across compilations so that an unchanged table keeps its
//! id (and the kernel sees no write). Id 0 is the empty policy.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use fault_common::{RULE_FIXED_BITS, RuleValue};

use crate::dataplane::Tables;

/// One rule table's content, without the policy id: ((proto, port, peer, bits) -> value).
pub type PolicyContent = Vec<((u8, u16, [u8; 16], u32), RuleValue)>;

/// See the module docs.
#[derive(Debug, Default)]
pub struct Interner {
    ids: HashMap<PolicyContent, u32>,
    next: u32,
}

impl Interner {
    /// Rebuilds the interner from tables read back from the kernel (after a restart).
    pub fn from_tables(t: &Tables) -> Self {
        let mut by_policy: BTreeMap<u32, PolicyContent> = BTreeMap::new();
        for ((bits, key), value) in &t.rules {
            let policy = u32::from_be_bytes(key.policy);
            by_policy.entry(policy).or_default().push((
                (
                    key.proto,
                    u16::from_be_bytes(key.port),
                    key.peer,
                    bits - RULE_FIXED_BITS,
                ),
                *value,
            ));
        }
        let next = by_policy.keys().max().map_or(1, |m| m + 1);
        let ids = by_policy.into_iter().map(|(id, mut c)| {
            c.sort_by_key(|a| a.0);
            (c, id)
        });
        Self {
            ids: ids.collect(),
            next,
        }
    }

    /// The id of a table with this content (a new one if no table has it).
    pub fn intern(&mut self, content: PolicyContent) -> u32 {
        if content.is_empty() {
            return 0;
        }
        if let Some(id) = self.ids.get(&content) {
            return *id;
        }
        let id = self.next.max(1);
        self.next = id + 1;
        self.ids.insert(content, id);
        id
    }

    /// Forgets the ids not in `live`.
    pub fn retain(&mut self, live: &BTreeSet<u32>) {
        self.ids.retain(|_, id| live.contains(id));
    }
}
