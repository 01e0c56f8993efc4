//! The agent's synchronous core: the faults, the pods, and the datapath, kept in step by one
//! level-triggered [`Core::reconcile`]: from (faults, pods, now) it computes what the kernel
//! maps must hold and writes only the difference. Running it twice changes nothing; running it
//! after a restart adopts what the kernel already holds. API calls go through the same path,
//! and either fully apply or leave everything as it was.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::{Context as _, Result};
use fault_api::{Counters, Fault, FaultSpec, FaultState, FieldError, fault::new_fault_id};
use fault_common::FaultStats;
use ipnet::IpNet;
use jiff::{SignedDuration, Timestamp};

use crate::{
    capacity::{self, Limits},
    compile::{self, CompileInput, Interner, TooManyFaults},
    dataplane::{AttachKind, AttachRecord, Capabilities, Dataplane, Iface, Tables, kernel},
    error::AgentError,
    failpoint::{self, Phase},
    pods::Pod,
    resolve,
    store::{self, FaultRecord, Store},
};

/// Limits of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Longest fault; also the deadline of faults asked without a duration.
    pub max_duration: Duration,
    /// How long ended faults stay listed.
    pub retention: Duration,
    /// Live faults and rules per fault (see [`crate::capacity`]).
    pub limits: Limits,
    /// What no fault may target or cut off ([`crate::protect`]).
    pub protection: crate::protect::Protection,
    /// Per-namespace durations, the most targets, the protection override ([`crate::guards`]).
    pub guards: crate::guards::Guards,
}

/// What a reconcile did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReconcileReport {
    /// Map writes.
    pub writes: usize,
    /// Faults that ended (deadline) during this reconcile.
    pub expired: usize,
}

/// A fault decided elsewhere (a `NetworkFault` object): the node agent mirrors these.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalFault {
    pub id: String,
    pub spec: FaultSpec,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// Recovered (or deleted) by the user.
    pub recovered: bool,
    /// The object's `metadata.uid`: a new object under an old name is a new fault.
    pub uid: Option<String>,
    /// The blast-radius choice the controller recorded in the status (`mode` other than all).
    pub blast_radius: Option<fault_api::BlastRadius>,
}

/// What this node did with one fault, for its status entry.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    pub id: String,
    /// Target pods of this node the fault is in the datapath for.
    pub local_targets: u32,
    pub applied: bool,
    pub counters: Counters,
    pub message: Option<String>,
    /// The spec's field this node's kernel cannot enforce, when that is why the fault failed
    /// here (e.g. `delay` without sch_fq): the API answers 422 naming it.
    pub unsupported: Option<String>,
}

/// The kernel maps against the faults ([`Core::check_tables`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TablesCheck {
    /// The kernel holds exactly what the faults and pods make.
    pub in_step: bool,
    /// Map writes that would bring the kernel there.
    pub writes: usize,
    /// Entries the kernel holds.
    pub kernel: crate::dataplane::TableSizes,
    /// Entries the faults and pods make.
    pub desired: crate::dataplane::TableSizes,
    /// Fault slots set in the kernel (`FL_FAULTS`), ascending.
    pub kernel_slots: Vec<u16>,
    /// Slots of the live faults on record, ascending.
    pub live_slots: BTreeSet<u16>,
    /// Flows recorded for connection partitions (`FL_CT`): none once no such fault acts.
    pub kernel_flows: usize,
}

/// See the module docs.
pub struct Core {
    store: Store,
    pods: Vec<Pod>,
    dataplane: Dataplane,
    interner: Interner,
    caps: Capabilities,
    config: CoreConfig,
    /// Interfaces that could not be attached, with why.
    attach_errors: BTreeMap<String, String>,
    saved_records: Vec<AttachRecord>,
    saved_fq: Vec<crate::dataplane::FqRecord>,
    /// Addresses the node translates to pod addresses after the programs' hooks (Service
    /// CIDRs, externalIPs, node addresses): never a peer of a broader prefix (see `compile`).
    virtual_nets: Vec<IpNet>,
    /// The node's uplinks (name -> ifindex): where what local pods send to other nodes is
    /// judged after the node's NAT.
    uplinks: BTreeMap<String, u32>,
    /// Cluster mode: faults with work on this node that are not in the datapath and have no
    /// record (no slot was free), with why; recomputed at every [`Core::sync_external`].
    problems: BTreeMap<String, String>,
    /// Cluster mode: the faults wanted without work on this node (no slot), by id, to say
    /// why when one of their target pods is scheduled here but was not found.
    elsewhere: BTreeMap<String, FaultSpec>,
    /// Where reconcile durations, expiry lateness, attach failures and fault durations are
    /// recorded (served at `/metrics`).
    recorder: crate::metrics::Recorder,
    /// When the last reconcile finished writing the maps.
    last_reconciled: Option<Timestamp>,
    /// The kill switch as recorded (see [`kill_switch`]).
    kill_switch: fault_api::kill_switch::KillSwitch,
}

/// A fault's resolution: against the protection its override allows, among its blast-radius
/// choice.
fn resolve_record(
    config: &CoreConfig,
    spec: &FaultSpec,
    pods: &[Pod],
    blast: Option<&fault_api::BlastRadius>,
) -> resolve::Resolution {
    let protection = config.guards.protection_for(spec, &config.protection);
    resolve::resolve_among(spec, pods, &protection, blast.map(|b| b.chosen.as_slice()))
}

/// Whether a fault has anything to do on this node: a local target, or a local peer of a
/// target somewhere (the peer view judges what that peer sends to the target).
pub fn has_local_work(r: &resolve::Resolution) -> bool {
    !r.local_target_ips.is_empty()
        || (!r.local_peer_ips.is_empty() && r.targets.iter().any(|t| !t.ips.is_empty()))
}

fn counters(s: FaultStats) -> Counters {
    Counters {
        matched: s.matched,
        dropped: s.dropped,
        corrupted: s.corrupted,
        duplicated: s.duplicated,
        delayed: s.delayed,
    }
}

/// Adds what a local pod needs for departure times: for what it `sends`, the program and fq
/// on its own interfaces; for what it `receives`, fq on its host veths.
fn shape(
    pod: &Pod,
    sends: bool,
    receives: bool,
    pod_progs: &mut BTreeSet<Iface>,
    fq: &mut BTreeSet<Iface>,
) {
    if receives {
        fq.extend(pod.host_ifs.iter().map(|h| Iface {
            netns: None,
            ifname: h.name.clone(),
            ifindex: h.index,
        }));
    }
    if sends && let Some(ns) = &pod.netns {
        for i in &pod.pod_ifs {
            let iface = Iface {
                netns: Some(ns.clone()),
                ifname: i.name.clone(),
                ifindex: i.index,
            };
            pod_progs.insert(iface.clone());
            fq.insert(iface);
        }
    }
}

impl Core {
    pub fn new(store: Store, dataplane: Dataplane, caps: Capabilities, config: CoreConfig) -> Self {
        let interner = Interner::from_tables(dataplane.applied());
        let kill_switch = kill_switch::load(&store);
        Self {
            store,
            pods: Vec::new(),
            dataplane,
            interner,
            caps,
            config,
            attach_errors: BTreeMap::new(),
            saved_records: Vec::new(),
            saved_fq: Vec::new(),
            virtual_nets: Vec::new(),
            uplinks: BTreeMap::new(),
            problems: BTreeMap::new(),
            elsewhere: BTreeMap::new(),
            recorder: crate::metrics::Recorder::default(),
            last_reconciled: None,
            kill_switch,
        }
    }

    /// The instruments this core records into (clones share them).
    pub fn recorder(&self) -> &crate::metrics::Recorder {
        &self.recorder
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// When the last reconcile finished writing the maps (`None` before the first).
    pub fn last_reconciled(&self) -> Option<Timestamp> {
        self.last_reconciled
    }

    pub fn attach_errors(&self) -> &BTreeMap<String, String> {
        &self.attach_errors
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// Why the datapath is not attached, when no local pod's host veth could be attached
    /// (for readiness); `None` when at least one is, or there is none.
    pub fn datapath_problem(&self) -> Option<String> {
        let veths: Vec<&str> = self
            .pods
            .iter()
            .flat_map(|p| p.host_ifs.iter().map(|h| h.name.as_str()))
            .collect();
        if veths.is_empty() || !veths.iter().all(|v| self.attach_errors.contains_key(*v)) {
            return None;
        }
        let first = veths.first().and_then(|v| self.attach_errors.get(*v));
        Some(format!(
            "none of the {} pod interfaces could be attached ({}: {})",
            veths.len(),
            veths[0],
            first.map_or("", String::as_str)
        ))
    }

    /// Replaces the pods and reconciles when they changed.
    pub fn set_pods(&mut self, pods: Vec<Pod>) -> Result<Option<ReconcileReport>> {
        if pods == self.pods {
            return Ok(None);
        }
        self.pods = pods;
        self.reconcile().map(Some)
    }

    /// Replaces the virtual address ranges (see [`Core`]'s field) and reconciles when they
    /// changed.
    pub fn set_virtual_nets(&mut self, mut nets: Vec<IpNet>) -> Result<Option<ReconcileReport>> {
        nets.iter_mut().for_each(|n| *n = n.trunc());
        nets.sort();
        nets.dedup();
        if nets == self.virtual_nets {
            return Ok(None);
        }
        tracing::info!(count = nets.len(), "virtual address ranges changed");
        self.virtual_nets = nets;
        self.reconcile().map(Some)
    }

    /// Replaces the uplinks (name -> ifindex) and reconciles when they changed.
    pub fn set_uplinks(
        &mut self,
        uplinks: BTreeMap<String, u32>,
    ) -> Result<Option<ReconcileReport>> {
        if uplinks == self.uplinks {
            return Ok(None);
        }
        tracing::info!(uplinks = ?uplinks.keys().collect::<Vec<_>>(), "uplinks changed");
        self.uplinks = uplinks;
        self.reconcile().map(Some)
    }

    /// The virtual address ranges in use, sorted.
    pub fn virtual_nets(&self) -> &[IpNet] {
        &self.virtual_nets
    }

    /// Time until the nearest deadline of a live fault.
    pub fn next_deadline(&self) -> Option<Duration> {
        let now = kernel::boottime_ns().ok()?;
        self.store
            .live()
            .map(|f| Duration::from_nanos(f.deadline_boot_ns.saturating_sub(now)))
            .min()
    }

    /// Brings the kernel in line with the faults and pods (see the module docs).
    pub fn reconcile(&mut self) -> Result<ReconcileReport> {
        /// A reconcile that wrote this many map entries allocated enough to be worth giving
        /// back (see [`crate::memory`]); smaller ones skip the trim, which would only add to
        /// the time until a fault acts.
        const TRIM_AFTER_WRITES: usize = 1024;
        let started = std::time::Instant::now();
        let now = Timestamp::now();
        let now_boot = kernel::boottime_ns()?;
        let mut report = ReconcileReport::default();
        self.sync_kill_switch()?;
        let ending: Vec<String> = self
            .store
            .live()
            .filter(|f| f.deadline_boot_ns <= now_boot)
            .map(|f| f.id.clone())
            .collect();
        for id in &ending {
            if let Some(f) = self.store.get_mut(id) {
                f.state = FaultState::Expired;
                f.ended_at = Some(f.expires_at);
                f.message = Some("reached its deadline".into());
                self.recorder.expired_late(Duration::from_nanos(
                    now_boot.saturating_sub(f.deadline_boot_ns),
                ));
                let lasted = f.expires_at.duration_since(f.created_at).unsigned_abs();
                self.recorder.ended(&f.spec, lasted);
            }
        }
        report.expired = ending.len();
        let gc = self.store.gc(now, self.config.retention);
        self.sync_attachments()?;
        failpoint::hit("reconcile.attached");
        let (tables, failed) = self.desired_fitting()?;
        // Final counters before the slots go (a later fault resets them).
        self.snapshot_counters(&ending);
        // Ended faults are on record before the maps stop holding them. Everything saved
        // here is recomputed at a restart anyway (deadlines, overflows), so a failed save
        // does not hold back the maps; it is reported after them.
        let saved = if !ending.is_empty() || gc || failed {
            self.store.save()
        } else {
            Ok(())
        };
        failpoint::hit("reconcile.saved");
        self.sync_shaping(false)?;
        report.writes = self.dataplane.write(&tables)?;
        self.tidy();
        failpoint::hit("reconcile.written");
        self.sync_shaping(true)?;
        saved?;
        if report.writes > 0 || report.expired > 0 {
            tracing::info!(
                writes = report.writes,
                expired = report.expired,
                "reconciled"
            );
        }
        if report.writes >= TRIM_AFTER_WRITES {
            crate::memory::trim();
        }
        self.recorder.reconcile_took(started.elapsed());
        self.last_reconciled = Some(now);
        Ok(report)
    }

    fn sync_attachments(&mut self) -> Result<()> {
        let mut wanted: BTreeMap<String, (u32, AttachKind)> = self
            .pods
            .iter()
            .flat_map(|p| p.host_ifs.iter())
            .map(|h| (h.name.clone(), (h.index, AttachKind::Host)))
            .collect();
        for (name, index) in &self.uplinks {
            wanted
                .entry(name.clone())
                .or_insert((*index, AttachKind::Uplink));
        }
        // Intent first: a crash while attaching leaves records of everything it may have made.
        let intents = self.dataplane.attach_intents(&wanted);
        if !intents.is_empty() {
            let mut records = self.dataplane.records();
            records.extend(intents);
            store::save_attachments(self.store.dir(), &records)?;
            self.saved_records = records;
            failpoint::hit("attach.intent");
        }
        let failed = self.dataplane.sync_attachments(&wanted);
        self.recorder.attach_failed(failed.len());
        self.attach_errors.clear();
        for (ifname, e) in failed {
            tracing::warn!(%ifname, error = %format!("{e:#}"), "attach failed");
            self.attach_errors.insert(ifname, format!("{e:#}"));
        }
        self.sync_records()
    }

    /// Where live faults with a delay or rate need the pod-side program and fq: for what a
    /// local pod sends (a target's egress, a peer's view of a target's ingress), its own
    /// interfaces; for what it receives, its host veths.
    fn shaping_wanted(&self) -> (BTreeSet<Iface>, BTreeSet<Iface>) {
        let (mut pod_progs, mut fq) = (BTreeSet::new(), BTreeSet::new());
        let local: BTreeMap<std::net::IpAddr, &Pod> = self
            .pods
            .iter()
            .filter(|p| p.is_local())
            .flat_map(|p| p.ips.iter().map(move |ip| (*ip, p)))
            .collect();
        for f in self.store.live().filter(|f| f.spec.needs_fq()) {
            let r = &f.resolution;
            let (egress, ingress) = (
                f.spec.direction.includes_egress(),
                f.spec.direction.includes_ingress(),
            );
            let targets = r.local_target_ips.iter().filter_map(|ip| local.get(ip));
            for pod in targets {
                shape(pod, egress, ingress, &mut pod_progs, &mut fq);
            }
            let all_targets = r.all_target_ips();
            if all_targets.is_empty() {
                continue;
            }
            for ip in &r.local_peer_ips {
                let Some(pod) = local.get(ip) else { continue };
                // A peer receives what a target sends, and sends what a target receives
                // (not the ingress view of a target that is a peer too: see `compile`).
                let sends = ingress && !(egress && all_targets.contains(ip));
                shape(pod, sends, egress, &mut pod_progs, &mut fq);
            }
        }
        (pod_progs, fq)
    }

    /// Brings the pod-side programs and fq qdiscs in line; `remove` also takes away what is no
    /// longer needed (after the maps stopped referring to it).
    fn sync_shaping(&mut self, remove: bool) -> Result<Vec<String>> {
        let (pod_progs, fq) = self.shaping_wanted();
        if pod_progs.is_empty() && fq.is_empty() && !remove {
            return Ok(vec![]);
        }
        // Intent first, as for the host veths: records of what may be made before making it.
        let (prog_intents, fq_intents) = self.dataplane.shaping_intents(&pod_progs, &fq);
        let intents = !fq_intents.is_empty() || !prog_intents.is_empty();
        if !fq_intents.is_empty() {
            let mut records = self.dataplane.fq_records();
            records.extend(fq_intents);
            store::save_qdiscs(self.store.dir(), &records)?;
            self.saved_fq = records;
        }
        if !prog_intents.is_empty() {
            let mut records = self.dataplane.records();
            records.extend(prog_intents);
            store::save_attachments(self.store.dir(), &records)?;
            self.saved_records = records;
        }
        if intents {
            failpoint::hit("attach.intent");
        }
        let failed = self.dataplane.sync_shaping(&pod_progs, &fq, remove);
        let mut errors = Vec::new();
        for (iface, e) in failed {
            let msg = format!("{e:#}");
            tracing::warn!(ifname = %iface.ifname, error = %msg, "delay/rate set-up failed");
            self.attach_errors.insert(iface.ifname.clone(), msg.clone());
            errors.push(msg);
        }
        let fq_records = self.dataplane.fq_records();
        if fq_records != self.saved_fq {
            store::save_qdiscs(self.store.dir(), &fq_records)?;
            self.saved_fq = fq_records;
        }
        self.sync_records()?;
        Ok(errors)
    }

    fn sync_records(&mut self) -> Result<()> {
        let records = self.dataplane.records();
        if records != self.saved_records {
            store::save_attachments(self.store.dir(), &records)?;
            self.saved_records = records;
        }
        Ok(())
    }

    fn inputs(&mut self) -> Vec<CompileInput> {
        let pods = &self.pods;
        let mut inputs = Vec::new();
        for f in self.store.live_mut() {
            f.resolution = resolve_record(&self.config, &f.spec, pods, f.blast_radius.as_ref());
            let r = &f.resolution;
            inputs.push(CompileInput {
                slot: f.slot,
                seq: f.seq,
                params: compile::params(&f.spec, f.deadline_boot_ns),
                target_ips: r.local_target_ips.clone(),
                all_target_ips: r.all_target_ips(),
                peer_ips: r.local_peer_ips.clone(),
                directions: compile::directions(&f.spec),
                l4: compile::l4_keys(&f.spec),
                includes: r.includes.clone(),
                excludes: r.excludes.clone(),
            });
        }
        inputs
    }

    fn desired(&mut self) -> Result<Tables, TooManyFaults> {
        let inputs = self.inputs();
        let node = compile::NodeView {
            virtual_nets: self.virtual_nets.clone(),
            remote_ips: self
                .pods
                .iter()
                .filter(|p| p.remote)
                .flat_map(|p| p.ips.iter().copied())
                .collect(),
        };
        compile::compile(&inputs, &node, &mut self.interner)
    }

    /// Like `desired`, but a fault that pushes a rule over the limit (pods changed under it)
    /// fails instead of the whole reconcile: the newest of the faults involved goes. Errors
    /// (and nothing may be written) when the overflow names no live fault: empty tables
    /// would wipe every fault's entries.
    fn desired_tolerant(&mut self) -> Result<(Tables, bool)> {
        let mut failed_any = false;
        loop {
            match self.desired() {
                Ok(t) => return Ok((t, failed_any)),
                Err(e) => {
                    fail_newest(&mut self.store, &e)?;
                    failed_any = true;
                }
            }
        }
    }

    /// Like `desired_tolerant`, and within the maps' capacity ([`capacity::check_maps`]):
    /// while the tables would not fit (pods changed under the faults), the newest live fault
    /// with entries fails, alone, with the limit in its message.
    fn desired_fitting(&mut self) -> Result<(Tables, bool)> {
        let (mut tables, mut failed_any) = self.desired_tolerant()?;
        while let Err(e) = capacity::check_maps(self.dataplane.applied(), &tables) {
            let newest = self
                .store
                .live()
                .filter(|f| tables.faults.contains_key(&f.slot))
                .max_by_key(|f| f.seq)
                .map(|f| f.id.clone());
            let Some(id) = newest else {
                break;
            };
            tracing::warn!(fault = %id, error = %e, "fault failed: over capacity");
            if let Some(f) = self.store.get_mut(&id) {
                f.state = FaultState::Failed;
                f.ended_at = Some(Timestamp::now());
                f.message = Some(e.to_string());
            }
            failed_any = true;
            let (t, failed) = self.desired_tolerant()?;
            tables = t;
            failed_any |= failed;
        }
        Ok((tables, failed_any))
    }

    /// Puts the interner back in line with what the kernel holds, after a compiled change was
    /// not written (it forgot the ids of tables that are still in the kernel).
    fn forget_unwritten(&mut self) {
        self.interner = Interner::from_tables(self.dataplane.applied());
    }

    /// After a write that can end faults, once their counters are saved: zeroes their
    /// slots' counters and removes the flows only ended connection partitions needed
    /// ([`Dataplane::tidy`]). A failure is logged: it leaves state no fault acts on, and the
    /// next call retries.
    fn tidy(&mut self) {
        let flow_targets: BTreeSet<[u8; 16]> = self
            .store
            .live()
            .filter(|f| f.spec.partition == Some(fault_api::PartitionMode::Connections))
            .flat_map(|f| f.resolution.all_target_ips())
            .map(compile::addr16)
            .collect();
        if let Err(e) = self.dataplane.tidy(&flow_targets) {
            tracing::warn!(error = %format!("{e:#}"), "clearing what ended faults left in the maps failed; the next write retries");
        }
    }

    fn snapshot_counters(&mut self, ids: &[String]) {
        for id in ids {
            let Some(slot) = self.store.get(id).map(|f| f.slot) else {
                continue;
            };
            let c = self.dataplane.stats(slot).map(counters).unwrap_or_default();
            if let Some(f) = self.store.get_mut(id) {
                f.final_counters = c;
            }
        }
    }

    fn check_supported(&self, spec: &FaultSpec) -> Result<(), AgentError> {
        let field = if spec.delay.is_some() {
            "delay"
        } else {
            "rate"
        };
        if spec.needs_fq() && !self.caps.sch_fq {
            return Err(AgentError::Unsupported(FieldError::new(
                field,
                format!(
                    "needs the fq qdisc (sch_fq) to enforce departure times, and kernel {} has none; nothing was applied",
                    self.caps.kernel
                ),
            )));
        }
        Ok(())
    }

    /// Makes the live faults exactly those of `faults` that have work on this node (cluster
    /// mode): a target or a peer among the local pods ([`has_local_work`]). Only those get a
    /// slot: every other node's faults cost nothing here. New ones get a slot and a kernel
    /// deadline from their expiry, changed ones are updated, missing or recovered ones end,
    /// ones that lost their local work leave the datapath; then reconciles. A fault this
    /// kernel cannot apply, or that finds no free slot or no room in the maps, fails alone
    /// with why ([`Core::node_reports`]); those over capacity are tried again at every sync.
    pub fn sync_external(&mut self, faults: &[ExternalFault]) -> Result<ReconcileReport> {
        let now = Timestamp::now();
        let now_boot = kernel::boottime_ns()?;
        let mut dirty = false;
        self.problems.clear();
        let wanted: BTreeMap<&str, &ExternalFault> = faults
            .iter()
            .filter(|f| !f.recovered)
            .map(|f| (f.id.as_str(), f))
            .collect();
        let pods = &self.pods;
        let local: BTreeMap<&str, &ExternalFault> = wanted
            .iter()
            .filter(|(_, f)| {
                has_local_work(&resolve_record(
                    &self.config,
                    &f.spec,
                    pods,
                    f.blast_radius.as_ref(),
                ))
            })
            .map(|(id, f)| (*id, *f))
            .collect();
        self.elsewhere = wanted
            .iter()
            .filter(|(id, _)| !local.contains_key(*id))
            .map(|(id, f)| (id.to_string(), f.spec.clone()))
            .collect();
        let known: Vec<(String, FaultState, Option<String>)> = self
            .store
            .all()
            .map(|f| (f.id.clone(), f.state, f.source_uid.clone()))
            .collect();
        for (id, state, uid) in known {
            let replaced = wanted.get(id.as_str()).is_some_and(
                |ext| matches!((&uid, &ext.uid), (Some(old), Some(new)) if old != new),
            );
            if replaced {
                // Deleted and created again under the same name: the old record (ended, or
                // live if both happened between two passes) makes way for the new object's.
                self.store.remove(&id);
                dirty = true;
            } else if state.is_live() && !wanted.contains_key(id.as_str()) {
                if let Some(f) = self.store.get_mut(&id) {
                    f.state = FaultState::Recovered;
                    f.ended_at = Some(now);
                    f.message = Some("recovered".into());
                    let lasted = now.duration_since(f.created_at).unsigned_abs();
                    self.recorder.ended(&f.spec, lasted);
                    dirty = true;
                }
            } else if wanted.contains_key(id.as_str()) && !local.contains_key(id.as_str()) {
                // Nothing of it here (any more): out of the datapath and of this node's view;
                // it comes back with a slot if a pod of this node becomes its target or peer.
                self.store.remove(&id);
                dirty = true;
            } else if state == FaultState::Failed
                && local
                    .get(id.as_str())
                    .is_some_and(|ext| self.check_supported(&ext.spec).is_ok())
            {
                // Failed for want of room (slots, maps, rules per entry): try again.
                self.store.remove(&id);
            }
        }
        for ext in local.values() {
            let left = ext.expires_at.duration_since(now).as_nanos().max(0) as u64;
            let deadline = now_boot + left;
            if let Some(f) = self.store.get_mut(&ext.id) {
                if f.state.is_live()
                    && (f.spec != ext.spec
                        || f.expires_at != ext.expires_at
                        || f.blast_radius != ext.blast_radius)
                {
                    f.spec = ext.spec.clone();
                    f.expires_at = ext.expires_at;
                    f.blast_radius = ext.blast_radius.clone();
                    f.deadline_boot_ns = deadline;
                    dirty = true;
                }
                continue;
            }
            if left == 0 {
                continue;
            }
            let (state, message) = match self.check_supported(&ext.spec) {
                Ok(()) => (FaultState::Active, None),
                Err(e) => (FaultState::Failed, Some(e.to_string())),
            };
            let slot = if state == FaultState::Active {
                match self.store.alloc_slot() {
                    Ok(slot) => slot,
                    Err(e) => {
                        // This fault alone waits for a slot; the others are applied.
                        self.problems.insert(ext.id.clone(), format!("{e:#}"));
                        continue;
                    }
                }
            } else {
                0
            };
            let seq = self.store.next_seq();
            self.store.insert(FaultRecord {
                id: ext.id.clone(),
                spec: ext.spec.clone(),
                state,
                message,
                created_at: ext.created_at,
                expires_at: ext.expires_at,
                ended_at: if state == FaultState::Failed {
                    Some(now)
                } else {
                    None
                },
                deadline_boot_ns: deadline,
                boot_id: kernel::boot_id(),
                slot,
                seq,
                final_counters: Counters::default(),
                resolution: Default::default(),
                source_uid: ext.uid.clone(),
                blast_radius: ext.blast_radius.clone(),
                notes: vec![],
                schedule: None,
            });
            dirty = true;
        }
        if !self.problems.is_empty() {
            tracing::warn!(
                faults = self.problems.len(),
                "faults with work on this node wait for a free slot"
            );
        }
        if dirty {
            self.store.save()?;
        }
        self.reconcile()
    }

    /// What this node does with each fault it knows, for the `NetworkFault` status: applied
    /// when the fault is in its datapath (a local target or peer); otherwise why not (failed,
    /// no free slot, a local target pod whose interfaces were not found).
    pub fn node_reports(&self, node: &str) -> Vec<NodeReport> {
        let mut reports: Vec<NodeReport> = self
            .store
            .all()
            .map(|f| {
                let live = f.state.is_live();
                let local = f
                    .resolution
                    .targets
                    .iter()
                    .filter(|t| t.node.as_deref() == Some(node))
                    .count() as u32;
                let applied = live && has_local_work(&f.resolution);
                let message = f.message.clone().or_else(|| {
                    live.then(|| self.unreachable_targets(&f.spec, node))
                        .flatten()
                });
                let unsupported = match (f.state, self.check_supported(&f.spec)) {
                    (FaultState::Failed, Err(AgentError::Unsupported(e))) => Some(e.field),
                    _ => None,
                };
                NodeReport {
                    id: f.id.clone(),
                    unsupported,
                    local_targets: if live { local } else { 0 },
                    applied,
                    counters: if live {
                        self.dataplane
                            .stats(f.slot)
                            .map(counters)
                            .unwrap_or_default()
                    } else {
                        f.final_counters
                    },
                    message,
                }
            })
            .collect();
        reports.extend(self.problems.iter().map(|(id, why)| NodeReport {
            id: id.clone(),
            local_targets: 0,
            applied: false,
            counters: Counters::default(),
            message: Some(why.clone()),
            unsupported: None,
        }));
        // Target pods scheduled here that are not in the datapath: say why.
        reports.extend(self.elsewhere.iter().filter_map(|(id, spec)| {
            let why = self.unreachable_targets(spec, node)?;
            Some(NodeReport {
                id: id.clone(),
                local_targets: 0,
                applied: false,
                counters: Counters::default(),
                message: Some(why),
                unsupported: None,
            })
        }));
        reports
    }

    /// Why target pods of `spec` scheduled on `node` are not in this node's datapath (their
    /// network namespace or veth was not found), if any are not.
    fn unreachable_targets(&self, spec: &FaultSpec, node: &str) -> Option<String> {
        let why: Vec<String> = self
            .pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(node) && !p.is_local())
            .filter(|p| resolve::matches_target(spec, p))
            .map(|p| {
                let problem = p.problem.as_deref().unwrap_or("not found on this node yet");
                format!("target pod {}/{}: {problem}", p.namespace, p.name)
            })
            .collect();
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Entries in the kernel maps, by role: for checks that nothing is duplicated or leaked,
    /// and for what the peer role costs.
    pub fn table_sizes(&self) -> crate::dataplane::TableSizes {
        self.dataplane.applied().sizes()
    }

    /// Reads the kernel maps back and compares them with what the faults and pods make now
    /// (compiled afresh): `GET /v1/tables/check`, for tests that the kernel is in step after
    /// a crash and restart.
    pub fn check_tables(&mut self) -> Result<TablesCheck> {
        let kernel = self.dataplane.read_kernel()?;
        let desired = self
            .desired()
            .map_err(|e| anyhow::anyhow!("compiling the faults: {e}"))?;
        let writes = crate::dataplane::Diff::between(&kernel, &desired).len();
        Ok(TablesCheck {
            in_step: writes == 0,
            writes,
            kernel: kernel.sizes(),
            desired: desired.sizes(),
            kernel_slots: kernel.faults.keys().copied().collect(),
            live_slots: self.store.live().map(|f| f.slot).collect(),
            kernel_flows: self.dataplane.flow_count()?,
        })
    }

    /// Creates a fault: validated, written to the kernel and to the state dir, or nothing at all.
    pub fn create(&mut self, spec: FaultSpec) -> Result<Fault, AgentError> {
        self.create_by(spec, None)
    }

    /// [`Core::create`] for the caller `by` (named in the audit record when the fault
    /// overrides protection). Refused (422) when a guard trips ([`crate::guards`]).
    pub fn create_by(
        &mut self,
        spec: FaultSpec,
        by: Option<&crate::audit::Actor>,
    ) -> Result<Fault, AgentError> {
        let _phase = failpoint::phase(Phase::Create);
        spec.validate().map_err(AgentError::Invalid)?;
        let verdict = self.config.guards.judge(
            &spec,
            &self.pods,
            &self.config.protection,
            self.config.max_duration,
        );
        if let Some(e) = verdict.refusals.into_iter().next() {
            return Err(AgentError::Invalid(e));
        }
        self.check_supported(&spec)?;
        let duration = verdict.duration;
        let blast_radius =
            crate::blast::choose(&spec, &verdict.candidates, &mut crate::blast::os_draw);
        let overridden = verdict.override_used.then_some(verdict.overridden);
        let notes = verdict.notes;
        let now = Timestamp::now();
        let now_boot = kernel::boottime_ns()?;
        capacity::check_live(self.store.live().count(), &self.config.limits)?;
        let slot = self
            .store
            .alloc_slot()
            .map_err(|e| AgentError::Conflict(e.to_string()))?;
        let signed = SignedDuration::try_from(duration).context("duration")?;
        let record = FaultRecord {
            id: new_fault_id(),
            spec,
            state: FaultState::Active,
            message: None,
            created_at: now,
            expires_at: now.checked_add(signed).context("expiry time")?,
            ended_at: None,
            deadline_boot_ns: now_boot + duration.as_nanos() as u64,
            boot_id: kernel::boot_id(),
            slot,
            seq: self.store.next_seq(),
            final_counters: Counters::default(),
            resolution: Default::default(),
            source_uid: None,
            blast_radius,
            notes,
            schedule: None,
        };
        let id = record.id.clone();
        let spec_needs_delay = record.spec.delay.is_some();
        self.store.insert(record);
        let tables = match self.desired() {
            Ok(t) => t,
            Err(e) => {
                self.store.remove(&id);
                return Err(AgentError::Conflict(format!(
                    "{e}; recover one of them first"
                )));
            }
        };
        // Counted before anything is written: a fault that does not fit is refused whole.
        let fits = capacity::check_fault(&tables, slot, &self.config.limits)
            .and_then(|()| capacity::check_maps(self.dataplane.applied(), &tables));
        if let Err(e) = fits {
            self.store.remove(&id);
            self.forget_unwritten();
            return Err(AgentError::Capacity(e));
        }
        // Delay and rate need fq (and, for egress, the pod-side program) before they act.
        match self.sync_shaping(false) {
            Ok(errors) if errors.is_empty() => {}
            Ok(errors) => {
                self.store.remove(&id);
                self.rollback();
                let field = if spec_needs_delay { "delay" } else { "rate" };
                return Err(AgentError::Unsupported(FieldError::new(
                    field,
                    errors.join("; "),
                )));
            }
            Err(e) => {
                self.store.remove(&id);
                self.rollback();
                return Err(AgentError::Internal(e));
            }
        }
        failpoint::hit("create.shaped");
        // Maps, then record: a crash in between leaves a fault in the maps that no record
        // names, which the next start removes (the create did not return: fully absent).
        let written = self.dataplane.write(&tables).and_then(|_| {
            failpoint::hit("create.written");
            self.store.save()
        });
        if let Err(e) = written {
            self.store.remove(&id);
            self.rollback();
            return Err(AgentError::Internal(e));
        }
        failpoint::hit("create.saved");
        if let Err(e) = self.sync_shaping(true) {
            tracing::warn!(error = %format!("{e:#}"), "removing unused qdiscs failed; the next reconcile retries");
        }
        tracing::info!(fault = %id, slot, "fault created");
        if let Some(overridden) = overridden {
            let spec = self.store.get(&id).map(|f| f.spec.clone());
            spec.inspect(|s| crate::guards::audit_override(s, by, &id, &overridden));
        }
        self.get(&id)
    }

    /// After a failed write: put the kernel and the state dir back in line with the faults.
    fn rollback(&mut self) {
        if let Err(e) = self.reconcile().and_then(|_| self.store.save()) {
            tracing::error!(error = %format!("{e:#}"), "rollback failed; the next reconcile retries");
        }
    }

    /// Ends live faults at once (recover, cleanup). Returns their ids. The ended state is
    /// saved **before** the maps change: once it is, a crash can only complete the recover
    /// (the next start lifts what the record says ended), never bring the fault back.
    fn end(&mut self, ids: Vec<String>) -> Result<Vec<String>, AgentError> {
        self.end_as(ids, FaultState::Recovered, "recovered")
    }

    /// [`Core::end`] with the ended state and message to record.
    fn end_as(
        &mut self,
        ids: Vec<String>,
        state: FaultState,
        message: &str,
    ) -> Result<Vec<String>, AgentError> {
        let _phase = failpoint::phase(Phase::Recover);
        let now = Timestamp::now();
        let before: Vec<FaultRecord> = ids
            .iter()
            .filter_map(|id| self.store.get(id).cloned())
            .collect();
        for id in &ids {
            if let Some(f) = self.store.get_mut(id) {
                f.state = state;
                f.ended_at = Some(now);
                f.message = Some(message.to_owned());
            }
        }
        self.snapshot_counters(&ids);
        if let Err(e) = self.store.save() {
            for f in before {
                self.store.insert(f);
            }
            return Err(AgentError::Internal(
                e.context("saving the recovered state; nothing was changed"),
            ));
        }
        failpoint::hit("end.saved");
        for f in &before {
            let lasted = now.duration_since(f.created_at).unsigned_abs();
            self.recorder.ended(&f.spec, lasted);
        }
        let result = self
            .desired()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .and_then(|t| self.dataplane.write(&t))
            .and_then(|_| {
                failpoint::hit("end.lifted");
                // What only the ended faults needed (fq, pod-side programs) goes too.
                self.sync_shaping(true).map(|_| 0)
            });
        if let Err(e) = result {
            // On record as recovered: the kernel follows at the next reconcile.
            self.rollback();
            return Err(AgentError::Internal(e.context(
                "recorded as recovered, but removing it from the kernel failed; the next reconcile retries",
            )));
        }
        // Counters up to the lift.
        self.snapshot_counters(&ids);
        self.tidy();
        if let Err(e) = self.store.save() {
            tracing::warn!(error = %format!("{e:#}"), "saving final counters failed; the next save retries");
        }
        Ok(ids)
    }

    /// Recovers one fault: its entries leave the kernel before this returns. Recovering an
    /// ended fault is a no-op that returns it.
    pub fn recover(&mut self, id: &str) -> Result<Fault, AgentError> {
        let f = self
            .store
            .get(id)
            .ok_or_else(|| AgentError::NotFound(id.to_owned()))?;
        if f.state.is_live() {
            self.end(vec![id.to_owned()])?;
            tracing::info!(fault = %id, "fault recovered");
        }
        self.get(id)
    }

    /// Aborts a live fault (a breached abort condition): recovered like [`Core::recover`],
    /// its entries out of the kernel before this returns, state `Aborted` with `message`.
    /// A fault that has ended meanwhile is returned unchanged.
    pub fn abort(&mut self, id: &str, message: &str) -> Result<Fault, AgentError> {
        let f = self
            .store
            .get(id)
            .ok_or_else(|| AgentError::NotFound(id.to_owned()))?;
        if f.state.is_live() {
            self.end_as(vec![id.to_owned()], FaultState::Aborted, message)?;
            tracing::warn!(fault = %id, message, "fault aborted");
        }
        self.get(id)
    }

    /// Recovers every live fault of `namespace` (every live fault for `None`).
    pub fn cleanup(&mut self, namespace: Option<&str>) -> Result<Vec<String>, AgentError> {
        let ids: Vec<String> = self
            .store
            .live()
            .filter(|f| namespace.is_none_or(|ns| f.spec.namespace == ns))
            .map(|f| f.id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        let ids = self.end(ids)?;
        tracing::info!(
            count = ids.len(),
            namespace = namespace.unwrap_or("*"),
            "cleanup"
        );
        Ok(ids)
    }

    fn view(&self, f: &FaultRecord) -> Fault {
        let counters = if f.state.is_live() {
            self.dataplane
                .stats(f.slot)
                .map(counters)
                .unwrap_or_default()
        } else {
            f.final_counters
        };
        let peer_cidrs = if f.spec.all_peers() {
            vec![
                "0.0.0.0/0".parse().expect("literal"),
                "::/0".parse().expect("literal"),
            ]
        } else {
            f.spec.to_cidrs.clone()
        };
        Fault {
            id: f.id.clone(),
            spec: f.spec.clone(),
            state: f.state,
            message: f.message.clone(),
            created_at: f.created_at,
            expires_at: f.expires_at,
            ended_at: f.ended_at,
            targets: f.resolution.targets.clone(),
            peers: f.resolution.peers.clone(),
            peer_cidrs,
            protected: f.resolution.protected.clone(),
            counters,
            nodes: Default::default(),
            warnings: if f.state.is_live() {
                let mut w = f.notes.clone();
                w.extend(f.resolution.warnings.iter().cloned());
                w
            } else {
                vec![]
            },
            verification: None,
            blast_radius: f.blast_radius.clone(),
            schedule: f.schedule.clone(),
            steady: vec![],
        }
    }

    /// One fault.
    pub fn get(&self, id: &str) -> Result<Fault, AgentError> {
        self.store
            .get(id)
            .map(|f| self.view(f))
            .ok_or_else(|| AgentError::NotFound(id.to_owned()))
    }

    /// Every fault (of a namespace), newest first.
    pub fn list(&self, namespace: Option<&str>) -> Vec<Fault> {
        let mut v: Vec<&FaultRecord> = self
            .store
            .all()
            .filter(|f| namespace.is_none_or(|ns| f.spec.namespace == ns))
            .collect();
        v.sort_by_key(|f| std::cmp::Reverse(f.seq));
        v.into_iter().map(|f| self.view(f)).collect()
    }

    /// Exits leaving the datapath as it is (faults keep acting, and end at their kernel
    /// deadlines), for the next agent to adopt: a restart or rolling update, not an uninstall.
    pub fn leave(mut self) -> Result<()> {
        let _phase = failpoint::phase(Phase::Leave);
        self.store.save()?;
        self.sync_records_now()?;
        self.dataplane.leave();
        Ok(())
    }

    fn sync_records_now(&self) -> Result<()> {
        store::save_attachments(self.store.dir(), &self.dataplane.records())?;
        store::save_qdiscs(self.store.dir(), &self.dataplane.fq_records())
    }

    /// Removes everything the agent made in the kernel; faults stay in the state dir. The
    /// records are cleared last (a crash before leaves them for the next agent or
    /// `uninstall`); the state dir's lock is held to the end.
    pub fn shutdown(mut self) -> Result<()> {
        let _phase = failpoint::phase(Phase::Shutdown);
        self.store.save()?;
        failpoint::hit("shutdown.saved");
        let Core {
            store, dataplane, ..
        } = self;
        dataplane.shutdown()?;
        failpoint::hit("shutdown.unpinned");
        store::save_attachments(store.dir(), &[])?;
        store::save_qdiscs(store.dir(), &[])?;
        drop(store);
        Ok(())
    }
}

/// Fails the newest live fault among those an overflow names (state Failed, with why), so
/// that the others fit. Errors, touching nothing, when it names no live fault: then no fault
/// can be dropped to make the tables fit, and the caller must write nothing.
fn fail_newest(store: &mut Store, e: &TooManyFaults) -> Result<String> {
    let newest = store
        .live()
        .filter(|f| e.slots.contains(&f.slot))
        .max_by_key(|f| f.seq)
        .map(|f| f.id.clone());
    let Some(id) = newest else {
        anyhow::bail!(
            "{e}, and none of slots {:?} belongs to a live fault: the maps are left as they are",
            e.slots
        );
    };
    tracing::warn!(fault = %id, error = %e, "fault failed");
    if let Some(f) = store.get_mut(&id) {
        f.state = FaultState::Failed;
        f.ended_at = Some(Timestamp::now());
        f.message = Some(e.to_string());
    }
    Ok(id)
}

mod kill_switch;
mod plan;
mod schedule;
#[cfg(test)]
mod tests;
