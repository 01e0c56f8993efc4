//! The scrape-time collector: takes a [`Snapshot`] of the live state and writes its series.
//! Nothing is registered per fault, so nothing has to be unregistered when one ends.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use fault_api::Counters;
use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::runtime::reflector::Store;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::{labels, snapshot::Snapshot};
use crate::{api::lock, core::Core, kube::crd::NetworkFault};

/// Where a scrape reads the live state.
#[derive(Clone)]
pub enum Source {
    /// The agent's own core (standalone, node); `node` labels the per-fault series.
    Local {
        core: Arc<Mutex<Core>>,
        node: String,
    },
    /// The cluster's objects (the cluster API).
    Cluster {
        faults: Store<NetworkFault>,
        pods: Store<KubePod>,
    },
    /// A fixed snapshot (unit tests of the encoding).
    #[cfg(test)]
    Fixed(Snapshot),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Local { .. } => "Source::Local",
            Self::Cluster { .. } => "Source::Cluster",
            #[cfg(test)]
            Self::Fixed(_) => "Source::Fixed",
        })
    }
}

impl Source {
    /// What the state holds now. Takes the core's lock for the time of reading it (one counter
    /// read per live fault).
    pub fn snapshot(&self) -> Snapshot {
        match self {
            Self::Local { core, node } => Snapshot::local(&lock(core), node),
            Self::Cluster { faults, pods } => {
                Snapshot::cluster(&faults.state(), pods.state().len())
            }
            #[cfg(test)]
            Self::Fixed(s) => s.clone(),
        }
    }
}

/// A per-fault counter family: name (without `_total`), help, and which counter.
type CounterFamily = (&'static str, &'static str, fn(&Counters) -> u64);

/// The per-fault counter families.
const FAULT_COUNTERS: [CounterFamily; 5] = [
    (
        "faultline_fault_matched_packets",
        "Packets a live fault's rules matched (protected traffic excluded), from the kernel's per-CPU counters",
        |c| c.matched,
    ),
    (
        "faultline_fault_dropped_packets",
        "Packets a live fault dropped (partition or loss)",
        |c| c.dropped,
    ),
    (
        "faultline_fault_corrupted_packets",
        "Packets whose payload a live fault corrupted",
        |c| c.corrupted,
    ),
    (
        "faultline_fault_duplicated_packets",
        "Packets a live fault duplicated",
        |c| c.duplicated,
    ),
    (
        "faultline_fault_delayed_packets",
        "Packets a live fault gave a departure time (delay, jitter, rate)",
        |c| c.delayed,
    ),
];

/// See the module docs.
#[derive(Debug)]
pub struct StateCollector {
    source: Source,
}

impl StateCollector {
    pub fn new(source: Source) -> Self {
        Self { source }
    }
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Vec<(&str, &str)>, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    if let [(labels, value)] = series
        && labels.is_empty()
    {
        // One sample without labels: `name 3`, not `name{} 3`.
        return ConstGauge::new(*value).encode(m);
    }
    for (labels, value) in series {
        ConstGauge::new(*value).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.source.snapshot();
        fault_counters(&mut enc, &snap)?;
        fault_deadlines(&mut enc, &snap)?;
        phases(&mut enc, &snap)?;
        datapath(&mut enc, &snap)
    }
}

/// The labels of a live fault's series.
fn fault_labels(f: &super::snapshot::FaultCounters) -> [(&'static str, &str); 5] {
    [
        ("fault_id", f.fault_id.as_str()),
        ("namespace", f.namespace.as_str()),
        ("kind", f.kind.as_str()),
        ("direction", f.direction),
        ("node", f.node.as_str()),
    ]
}

/// The kernel's counters of each live fault.
fn fault_counters(enc: &mut DescriptorEncoder, snap: &Snapshot) -> Result<(), std::fmt::Error> {
    for (name, help, get) in FAULT_COUNTERS {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for f in &snap.counters {
            ConstCounter::new(get(&f.counters)).encode(m.encode_family(&fault_labels(f))?)?;
        }
    }
    Ok(())
}

/// Each live fault's deadline, so that an alert can see a fault still on record past it.
fn fault_deadlines(enc: &mut DescriptorEncoder, snap: &Snapshot) -> Result<(), std::fmt::Error> {
    let series: Vec<_> = snap
        .counters
        .iter()
        .map(|f| (fault_labels(f).to_vec(), f.expires_at))
        .collect();
    gauge(
        enc,
        "faultline_fault_expiry_timestamp_seconds",
        "When each live fault's deadline is, Unix seconds",
        &series,
    )
}

/// Faults by phase, under our name and the seed's.
fn phases(enc: &mut DescriptorEncoder, snap: &Snapshot) -> Result<(), std::fmt::Error> {
    // Every phase (and type) is written, 0 included: a dashboard's series never vanish.
    let mut by_phase: BTreeMap<&str, u64> = labels::PHASES
        .iter()
        .map(|p| (labels::phase(*p), 0))
        .collect();
    let mut by_type: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for t in ["network_partition", "network_degradation"] {
        for p in labels::PHASES {
            by_type.insert((t, labels::phase(p)), 0);
        }
    }
    for f in &snap.phases {
        *by_phase.entry(labels::phase(f.state)).or_default() += 1;
        *by_type
            .entry((f.experiment_type, labels::phase(f.state)))
            .or_default() += 1;
    }
    let phases: Vec<_> = by_phase
        .iter()
        .map(|(p, n)| (vec![("phase", *p)], count(*n)))
        .collect();
    gauge(
        enc,
        "faultline_faults",
        "Faults on record by phase (ended ones stay for --retention)",
        &phases,
    )?;
    let status: Vec<_> = by_type
        .iter()
        .map(|((t, p), n)| (vec![("experiment_type", *t), ("status", *p)], count(*n)))
        .collect();
    gauge(
        enc,
        "chaos_experiment_status",
        "Faults on record by experiment type and phase (seed framework name)",
        &status,
    )
}

/// Map fill, pods, interfaces left unattached.
fn datapath(enc: &mut DescriptorEncoder, snap: &Snapshot) -> Result<(), std::fmt::Error> {
    let entries: Vec<_> = snap
        .maps
        .iter()
        .map(|m| (vec![("map", m.map)], count(m.entries)))
        .collect();
    let capacity: Vec<_> = snap
        .maps
        .iter()
        .map(|m| (vec![("map", m.map)], count(m.capacity)))
        .collect();
    if !snap.maps.is_empty() {
        gauge(
            enc,
            "faultline_map_entries",
            "Entries the agent holds in each kernel map",
            &entries,
        )?;
        gauge(
            enc,
            "faultline_map_capacity_entries",
            "Size of each kernel map, in entries (the agent budgets half of it: DEVELOPERS.md, Capacity)",
            &capacity,
        )?;
    }
    let pods: Vec<_> = snap
        .pods
        .iter()
        .map(|(scope, n)| (vec![("scope", *scope)], count(*n)))
        .collect();
    gauge(
        enc,
        "faultline_pods",
        "Pods the agent knows: local (veth found), remote (another node's), unresolved (namespace or veth not found); cluster on the cluster API",
        &pods,
    )?;
    if let Some(on) = snap.kill_switch {
        gauge(
            enc,
            "faultline_kill_switch_engaged",
            "1 while the kill switch is engaged (the datapath passes every packet), else 0",
            &[(vec![], i64::from(on))],
        )?;
    }
    if let Some(t) = snap.last_reconcile {
        gauge(
            enc,
            "faultline_last_reconcile_timestamp_seconds",
            "When the last reconcile wrote the maps, Unix seconds (at least every minute standalone, every 5 s on a node)",
            &[(vec![], t)],
        )?;
    }
    if let Some(n) = snap.unattached {
        gauge(
            enc,
            "faultline_interfaces_unattached",
            "Interfaces the agent could not attach its programs to, at the last sync",
            &[(vec![], count(n))],
        )?;
    }
    Ok(())
}
