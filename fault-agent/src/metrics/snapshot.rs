//! What a scrape shows, read at scrape time from the live state (the core, or the cluster's
//! `NetworkFault` objects): a fault that ended, or was garbage-collected, is simply not in
//! the next snapshot, so its per-fault series disappear with it.
use fault_api::{Counters, Fault, FaultState};
use fault_common::{
    MAP_FAULTS, MAP_REMOTE, MAP_RULES, MAP_TARGETS, MAX_FAULTS, MAX_REMOTE, MAX_RULES, MAX_TARGETS,
};

use super::labels;
use crate::{core::Core, kube::crd::NetworkFault};

/// The kernel's counters of one live fault on one node.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultCounters {
    pub fault_id: String,
    pub namespace: String,
    /// [`labels::kind`].
    pub kind: String,
    /// [`labels::direction`].
    pub direction: &'static str,
    pub node: String,
    /// Packets, summed over CPUs.
    pub counters: Counters,
    /// When the fault's deadline is, Unix seconds (`0` when a cluster object has no
    /// `status.expiresAt` yet).
    pub expires_at: i64,
}

/// A fault on record, for the counts by phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultPhase {
    pub state: FaultState,
    /// [`labels::experiment_type`].
    pub experiment_type: &'static str,
}

/// One kernel map's fill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

/// See the module docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Live faults only.
    pub counters: Vec<FaultCounters>,
    /// Every fault on record (live, and ended within the retention).
    pub phases: Vec<FaultPhase>,
    /// Empty without a datapath (cluster API).
    pub maps: Vec<MapFill>,
    /// Pods known, by scope (`local`, `remote`, `unresolved`; `cluster` on the cluster API).
    pub pods: Vec<(&'static str, u64)>,
    /// Interfaces that could not be attached now; `None` without a datapath.
    pub unattached: Option<u64>,
    /// When the last reconcile wrote the maps, Unix seconds; `None` without a datapath or
    /// before the first one.
    pub last_reconcile: Option<i64>,
    /// Whether the kill switch is engaged; `None` without a datapath.
    pub kill_switch: Option<bool>,
}

fn phase_of(f: &Fault) -> FaultPhase {
    FaultPhase {
        state: f.state,
        experiment_type: labels::experiment_type(&f.spec),
    }
}

impl Snapshot {
    /// From the agent's own core; `node` labels its counters.
    pub fn local(core: &Core, node: &str) -> Self {
        let faults = core.list(None);
        let counters = faults
            .iter()
            .filter(|f| f.state.is_live())
            .map(|f| FaultCounters {
                fault_id: labels::fault_id(&f.id, &f.spec.namespace).to_owned(),
                namespace: f.spec.namespace.clone(),
                kind: labels::kind(&f.spec),
                direction: labels::direction(f.spec.direction),
                node: node.to_owned(),
                counters: f.counters,
                expires_at: f.expires_at.as_second(),
            })
            .collect();
        let sizes = core.table_sizes();
        let fill = |map, entries: usize, capacity: u32| MapFill {
            map,
            entries: entries as u64,
            capacity: capacity.into(),
        };
        let (mut local, mut remote, mut unresolved) = (0, 0, 0);
        for p in core.pods() {
            match (p.remote, p.is_local()) {
                (true, _) => remote += 1,
                (false, true) => local += 1,
                (false, false) => unresolved += 1,
            }
        }
        Self {
            counters,
            phases: faults.iter().map(phase_of).collect(),
            maps: vec![
                fill(MAP_TARGETS, sizes.targets, MAX_TARGETS),
                fill(MAP_RULES, sizes.rules, MAX_RULES),
                fill(MAP_FAULTS, sizes.faults, MAX_FAULTS),
                fill(MAP_REMOTE, sizes.remote, MAX_REMOTE),
            ],
            pods: vec![
                ("local", local),
                ("remote", remote),
                ("unresolved", unresolved),
            ],
            unattached: Some(core.attach_errors().len() as u64),
            last_reconcile: core.last_reconciled().map(|t| t.as_second()),
            kill_switch: Some(core.kill_switch().engaged),
        }
    }

    /// From the cluster's `NetworkFault` objects (the cluster API): each live fault's counters
    /// as each node reported them in `status.nodes`.
    pub fn cluster(objects: &[std::sync::Arc<NetworkFault>], pods: usize) -> Self {
        let mut snap = Self {
            pods: vec![("cluster", pods as u64)],
            ..Self::default()
        };
        for nf in objects {
            let state = crate::kube::backend::state_of(nf);
            let experiment_type = if nf.spec.partition.is_some() {
                "network_partition"
            } else {
                "network_degradation"
            };
            snap.phases.push(FaultPhase {
                state,
                experiment_type,
            });
            let (Ok(spec), Some(status)) = (nf.fault_spec(), nf.status.as_ref()) else {
                continue;
            };
            if !state.is_live() {
                continue;
            }
            let expires_at = status.expires_at.map_or(0, |t| t.as_second());
            for (node, st) in &status.nodes {
                snap.counters.push(FaultCounters {
                    fault_id: nf.id(),
                    namespace: spec.namespace.clone(),
                    kind: labels::kind(&spec),
                    direction: labels::direction(spec.direction),
                    node: node.clone(),
                    counters: st.counters,
                    expires_at,
                });
            }
        }
        snap
    }
}
