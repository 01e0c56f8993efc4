//! Everything that touches the kernel's BPF side: the object and its maps ([`maps`]), where
//! they are pinned ([`pins`]), how programs attach ([`attach`]), what the kernel offers
//! ([`kernel`]). [`Dataplane`] ties them together for the reconciler: it holds what it last
//! wrote ([`Tables`]) and only ever writes the difference.
pub mod attach;
pub mod kernel;
pub mod maps;
pub mod pins;
pub mod qdisc;
pub mod tables;

use std::collections::{BTreeMap, BTreeSet};

use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use aya::{Ebpf, EbpfLoader, programs::SchedClassifier};
use fault_common::{EVALUATED_MARK_GLOBAL, FaultStats, PROG_POD_EGRESS, PROG_UPLINK_EGRESS};
use serde::{Deserialize, Serialize};

pub use attach::{AttachKind, AttachMode, AttachRecord};
pub use kernel::Capabilities;
pub use pins::Pins;
pub use tables::{Diff, TableSizes, Tables};

use attach::{Attached, HOOKS};
use maps::Maps;

/// The eBPF object built by build.rs from `fault-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fault-ebpf"));

/// Mark bits known to be used on Kubernetes nodes (kubelet `0x8000`, kube-proxy `0x4000`,
/// Cilium `0xFF00` and the upper half, Calico `0xFFFF0000`, AWS VPC CNI `0x80`).
const MARK_BITS_IN_USE: u32 = 0xFFFF_FF80;

/// Checks an `--evaluated-mark` value: a single bit, not one known to be used by others.
pub fn check_mark_bit(mark: u32) -> Result<u32, String> {
    if mark.count_ones() != 1 {
        return Err(format!(
            "must be a single bit of skb->mark (e.g. 0x40), got {mark:#x}"
        ));
    }
    if mark & MARK_BITS_IN_USE != 0 {
        return Err(format!(
            "{mark:#x} is a bit kubelet, kube-proxy or a CNI uses ({MARK_BITS_IN_USE:#x}); pick one of 0x1 to 0x40"
        ));
    }
    Ok(mark)
}

/// An interface, possibly in another network namespace (a pod's own).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Iface {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub ifindex: u32,
}

/// An `fq` root qdisc the agent relies on, and whether it made it (then it removes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FqRecord {
    pub iface: Iface,
    pub created: bool,
}

/// The loaded datapath of one agent instance.
pub struct Dataplane {
    ebpf: Ebpf,
    maps: Maps,
    pins: Pins,
    mode: AttachMode,
    attached: BTreeMap<String, Attached>,
    /// [`PROG_POD_EGRESS`] on pods' own interfaces (for egress delays and rates).
    pod_attached: BTreeMap<Iface, Attached>,
    /// fq root qdiscs in use.
    fq: BTreeMap<Iface, FqRecord>,
    /// fq qdiscs a previous agent recorded, not yet re-adopted or removed.
    fq_orphans: Vec<FqRecord>,
    /// Interfaces a previous agent attached to, not yet re-adopted or removed.
    orphans: Vec<AttachRecord>,
    applied: Tables,
    /// Targets of connection partitions at the last sweep of `FL_CT` ([`Dataplane::tidy`]);
    /// `None` before the first (the maps may hold a previous agent's flows).
    flow_targets: Option<BTreeSet<[u8; 16]>>,
    /// Fault slots cleared since the last [`Dataplane::tidy`], whose counters remain.
    freed_slots: BTreeSet<u16>,
}

impl Dataplane {
    /// Loads the programs, reusing the maps pinned under `pins` (so faults in the kernel keep
    /// acting across an agent restart), and reads what those maps hold. `previous` are the
    /// attachments a previous agent recorded; the first [`Dataplane::sync_attachments`]
    /// adopts the ones still wanted and removes the others. `evaluated_mark` is the `skb->mark`
    /// bit the programs use between a sender's and a receiver's veth
    /// ([`fault_common::EVALUATED_MARK`]; check it with [`check_mark_bit`]).
    pub fn open(
        pins: Pins,
        caps: &Capabilities,
        previous: Vec<AttachRecord>,
        previous_fq: Vec<FqRecord>,
        evaluated_mark: u32,
    ) -> Result<Self> {
        pins.ensure()?;
        let mut ebpf = EbpfLoader::new()
            .override_global(EVALUATED_MARK_GLOBAL, &evaluated_mark, true)
            .default_map_pin_directory(pins.maps_dir())
            .load(OBJECT)
            .with_context(|| {
                format!(
                    "loading the eBPF object (maps pinned in {}; if they were made by another version, run `fault-agent uninstall`)",
                    pins.maps_dir().display()
                )
            })?;
        for name in HOOKS
            .iter()
            .map(|(n, _, _)| *n)
            .chain([PROG_POD_EGRESS, PROG_UPLINK_EGRESS])
        {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        let maps = Maps::take(&mut ebpf)?;
        let applied = maps.read()?;
        crate::memory::trim();
        let mode = caps.attach_mode;
        Ok(Self {
            ebpf,
            maps,
            pins,
            mode,
            attached: BTreeMap::new(),
            pod_attached: BTreeMap::new(),
            fq: BTreeMap::new(),
            fq_orphans: previous_fq,
            orphans: previous,
            applied,
            flow_targets: None,
            freed_slots: BTreeSet::new(),
        })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// What the kernel maps hold (as last written or read).
    pub fn applied(&self) -> &Tables {
        &self.applied
    }

    /// Reads what the kernel maps hold now (not what was last written).
    pub fn read_kernel(&self) -> Result<Tables> {
        self.maps.read()
    }

    /// Makes the maps hold `desired`; returns the number of map writes. On a failed write the
    /// kernel state is read back, so the next call starts from the truth.
    pub fn write(&mut self, desired: &Tables) -> Result<usize> {
        let diff = Diff::between(&self.applied, desired);
        if diff.is_empty() {
            return Ok(0);
        }
        for slot in &diff.set_faults {
            if !self.applied.faults.contains_key(&slot.0) {
                self.maps.reset_stats(slot.0)?;
            }
        }
        match self.maps.apply(&diff) {
            Ok(()) => {
                self.applied = desired.clone();
                for slot in &diff.set_faults {
                    self.freed_slots.remove(&slot.0);
                }
                self.freed_slots.extend(
                    (diff.clear_faults.iter()).filter(|s| !desired.faults.contains_key(*s)),
                );
                Ok(diff.len())
            }
            Err(e) => {
                self.applied = self
                    .maps
                    .read()
                    .context("re-reading the maps after a failed write")?;
                Err(e)
            }
        }
    }

    /// What ended faults leave in maps the agent does not otherwise write, once their final
    /// counters are saved ([`crate::core::Core`] calls it after each write that can end
    /// faults):
    /// - the counters (`FL_STATS`) of slots freed since the last call go back to zero (a new
    ///   fault taking a slot zeroes it anyway; this makes an idle kernel hold nothing); at the
    ///   first call, every free slot's;
    /// - when the addresses that are targets of live connection partitions (`flow_targets`,
    ///   IPv6 or IPv4-mapped) changed since the last call (or at the first), the flows
    ///   recorded in `FL_CT` whose target is not among them are removed: nothing else empties
    ///   that LRU map (it only evicts when full).
    pub fn tidy(&mut self, flow_targets: &BTreeSet<[u8; 16]>) -> Result<()> {
        let mut freed = std::mem::take(&mut self.freed_slots);
        if self.flow_targets.is_none() {
            // The first call: a previous agent may have stopped before zeroing its ended
            // faults' slots (their counters were saved with them before the lift).
            freed.extend(
                (0..fault_common::MAX_FAULTS as u16)
                    .filter(|s| !self.applied.faults.contains_key(s)),
            );
        }
        for &slot in &freed {
            if !self.applied.faults.contains_key(&slot)
                && let Err(e) = self.maps.reset_stats(slot)
            {
                // Tried again at the next call.
                self.freed_slots.extend(freed.iter().copied());
                return Err(e);
            }
        }
        // Only when the targets changed (a connection partition ended, pods came or went): a
        // sweep walks the whole table, which a busy partition fills.
        if self.flow_targets.as_ref() != Some(flow_targets) {
            let n = self.maps.sweep_flows(flow_targets)?;
            if n > 0 {
                tracing::debug!(
                    flows = n,
                    "removed the recorded flows of ended connection partitions"
                );
            }
        }
        self.flow_targets = Some(flow_targets.clone());
        Ok(())
    }

    /// Entries of the connection table `FL_CT`.
    pub fn flow_count(&self) -> Result<usize> {
        self.maps.flow_count()
    }

    /// The records of the attaches [`Dataplane::sync_attachments`] would make for `wanted`
    /// ([`attach::intent`]), for the state dir before it runs.
    pub fn attach_intents(
        &self,
        wanted: &BTreeMap<String, (u32, AttachKind)>,
    ) -> Vec<AttachRecord> {
        wanted
            .iter()
            .filter(|(name, (index, kind))| {
                self.attached
                    .get(*name)
                    .is_none_or(|a| (a.record.ifindex, a.record.kind) != (*index, *kind))
            })
            .map(|(name, (index, kind))| {
                attach::intent(&self.pins, self.mode, name, *index, *kind, None)
            })
            .collect()
    }

    /// The records of what [`Dataplane::sync_shaping`] would add for `pod_progs` and `fq`, for
    /// the state dir before it runs: pod-side attaches ([`attach::intent`]) and fq qdiscs
    /// (recorded as the agent's: removal checks the handle, see [`qdisc::delete_our_fq`]).
    pub fn shaping_intents(
        &self,
        pod_progs: &BTreeSet<Iface>,
        fq: &BTreeSet<Iface>,
    ) -> (Vec<AttachRecord>, Vec<FqRecord>) {
        let progs = pod_progs
            .iter()
            .filter(|i| !self.pod_attached.contains_key(*i))
            .filter_map(|i| {
                let ns = i.netns.as_deref()?;
                Some(attach::intent(
                    &self.pins,
                    self.mode,
                    &i.ifname,
                    i.ifindex,
                    AttachKind::Pod,
                    Some(ns),
                ))
            })
            .collect();
        let fq = fq
            .iter()
            .filter(|i| {
                !self.fq.contains_key(*i) && !self.fq_orphans.iter().any(|r| &r.iface == *i)
            })
            .map(|i| FqRecord {
                iface: i.clone(),
                created: true,
            })
            .collect();
        (progs, fq)
    }

    /// Attaches to every interface of `wanted` (name -> ifindex and kind: a pod's host veth or
    /// an uplink) not attached yet and detaches from the others. Returns the interfaces that
    /// failed, with why; the others are done.
    pub fn sync_attachments(
        &mut self,
        wanted: &BTreeMap<String, (u32, AttachKind)>,
    ) -> Vec<(String, anyhow::Error)> {
        let mut failed = Vec::new();
        // An interface re-created under the same name has a new index: attach again.
        let stale: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, a)| wanted.get(*name) != Some(&(a.record.ifindex, a.record.kind)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(a) = self.attached.remove(&name) {
                if let Err(e) = attach::detach(a, &self.pins) {
                    failed.push((name, e));
                }
                crate::failpoint::hit("detach.one");
            }
        }
        for (name, (index, kind)) in wanted {
            if self.attached.contains_key(name) {
                continue;
            }
            match attach::attach(&mut self.ebpf, &self.pins, self.mode, name, *index, *kind) {
                Ok(a) => {
                    tracing::debug!(ifname = %name, mode = ?self.mode, "attached");
                    self.attached.insert(name.clone(), a);
                    crate::failpoint::hit("attach.one");
                }
                Err(e) => failed.push((name.clone(), e)),
            }
        }
        // What a previous agent left on interfaces nobody wants any more.
        let orphans = std::mem::take(&mut self.orphans);
        for rec in orphans {
            if self
                .attached
                .get(&rec.ifname)
                .is_some_and(|a| a.record.ifindex == rec.ifindex)
            {
                // Adopted: keep the record's clsact ownership (known or not).
                if let Some(a) = self.attached.get_mut(&rec.ifname) {
                    a.record.clsact_created |= rec.clsact_created;
                    a.record.clsact_maybe |= rec.clsact_maybe && !a.record.clsact_created;
                }
                continue;
            }
            if let Err(e) = attach::detach_record(&rec, &self.pins) {
                failed.push((rec.ifname.clone(), e));
            }
            crate::failpoint::hit("detach.one");
        }
        // TCX pins nobody accounts for (a crash between pinning and recording).
        if let Ok(pinned) = self.pins.pinned_links() {
            let live: BTreeSet<&String> = self.attached.keys().collect();
            for (ifname, _, path) in pinned {
                if !live.contains(&ifname) {
                    let _ = pins::remove_file(&path);
                }
            }
        }
        failed
    }

    /// Puts [`PROG_POD_EGRESS`] on `pod_progs` and fq root qdiscs on `fq` (what faults with a
    /// delay or rate need). With `remove`, also takes them off every other interface (fq only
    /// where the agent made it), restoring what was there; without, only adds. Returns the
    /// interfaces that failed, with why.
    pub fn sync_shaping(
        &mut self,
        pod_progs: &BTreeSet<Iface>,
        fq: &BTreeSet<Iface>,
        remove: bool,
    ) -> Vec<(Iface, anyhow::Error)> {
        let mut failed = Vec::new();
        for i in pod_progs {
            if self.pod_attached.contains_key(i) {
                continue;
            }
            let Some(ns) = i.netns.as_deref() else {
                continue;
            };
            match attach::attach_pod_egress(
                &mut self.ebpf,
                &self.pins,
                self.mode,
                ns,
                &i.ifname,
                i.ifindex,
            ) {
                Ok(a) => {
                    self.pod_attached.insert(i.clone(), a);
                    crate::failpoint::hit("attach.one");
                }
                Err(e) => failed.push((i.clone(), e)),
            }
        }
        for i in fq {
            if self.fq.contains_key(i) {
                continue;
            }
            // A previous agent's fq on the same interface: adopt it, and its ownership.
            if let Some(pos) = self.fq_orphans.iter().position(|r| &r.iface == i) {
                let r = self.fq_orphans.remove(pos);
                self.fq.insert(i.clone(), r);
                continue;
            }
            match qdisc::install_fq(i.netns.as_deref(), &i.ifname, i.ifindex) {
                Ok(created) => {
                    self.fq.insert(
                        i.clone(),
                        FqRecord {
                            iface: i.clone(),
                            created,
                        },
                    );
                    crate::failpoint::hit("fq.installed");
                }
                Err(e) => failed.push((i.clone(), e)),
            }
        }
        if !remove {
            return failed;
        }
        let stale: Vec<Iface> = self
            .pod_attached
            .keys()
            .filter(|i| !pod_progs.contains(*i))
            .cloned()
            .collect();
        for i in stale {
            if let Some(a) = self.pod_attached.remove(&i) {
                if let Err(e) = attach::detach(a, &self.pins) {
                    failed.push((i, e));
                }
                crate::failpoint::hit("detach.one");
            }
        }
        let stale: Vec<Iface> = self
            .fq
            .keys()
            .filter(|i| !fq.contains(*i))
            .cloned()
            .collect();
        for i in stale {
            if let Some(r) = self.fq.remove(&i)
                && let Err(e) = remove_fq(&r)
            {
                failed.push((i, e));
            }
        }
        for r in std::mem::take(&mut self.fq_orphans) {
            if let Err(e) = remove_fq(&r) {
                failed.push((r.iface.clone(), e));
            }
        }
        failed
    }

    /// fq qdiscs in use, for the state dir.
    pub fn fq_records(&self) -> Vec<FqRecord> {
        self.fq
            .values()
            .cloned()
            .chain(self.fq_orphans.iter().cloned())
            .collect()
    }

    /// What is attached now, for the state dir.
    pub fn records(&self) -> Vec<AttachRecord> {
        self.attached
            .values()
            .chain(self.pod_attached.values())
            .map(|a| a.record.clone())
            .chain(self.orphans.iter().cloned())
            .collect()
    }

    /// Whether the kernel's kill switch is engaged (`fault_common::MAP_CONTROL`).
    pub fn kill_switch(&self) -> Result<bool> {
        self.maps.kill_switch()
    }

    /// Engages or lifts the kernel's kill switch.
    pub fn set_kill_switch(&mut self, engaged: bool) -> Result<()> {
        self.maps.set_kill_switch(engaged)
    }

    /// Counters of a fault slot, summed over CPUs.
    pub fn stats(&self, slot: u16) -> Result<FaultStats> {
        self.maps.stats(slot)
    }

    /// The loaded programs' kernel ids, for `bpftool prog show id N` and run-time stats.
    pub fn program_infos(&self) -> Vec<(String, aya::programs::ProgramInfo)> {
        HOOKS
            .iter()
            .map(|(n, _, _)| *n)
            .chain([PROG_POD_EGRESS])
            .filter_map(|name| {
                let prog: &SchedClassifier = self.ebpf.program(name)?.try_into().ok()?;
                Some((name.to_string(), prog.info().ok()?))
            })
            .collect()
    }

    /// Detaches everything and removes every pin: the kernel is left as before the agent.
    pub fn shutdown(mut self) -> Result<()> {
        let mut first_err = None;
        let attached = std::mem::take(&mut self.attached)
            .into_values()
            .chain(std::mem::take(&mut self.pod_attached).into_values());
        for a in attached {
            if let Err(e) = attach::detach(a, &self.pins) {
                first_err.get_or_insert(e);
            }
            crate::failpoint::hit("detach.one");
        }
        let fq = std::mem::take(&mut self.fq)
            .into_values()
            .chain(std::mem::take(&mut self.fq_orphans));
        for r in fq {
            if let Err(e) = remove_fq(&r) {
                first_err.get_or_insert(e);
            }
        }
        for rec in std::mem::take(&mut self.orphans) {
            if let Err(e) = attach::detach_record(&rec, &self.pins) {
                first_err.get_or_insert(e);
            }
        }
        crate::failpoint::hit("shutdown.detached");
        let pins = self.pins.clone();
        drop(self);
        if let Err(e) = pins.remove_all() {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Dataplane {
    /// Exits leaving everything in the kernel (programs, links, filters, qdiscs, pinned maps)
    /// for the next agent on this node to adopt with no gap; the records in the state dir
    /// still say what to remove on uninstall.
    pub fn leave(mut self) {
        let attached = std::mem::take(&mut self.attached)
            .into_values()
            .chain(std::mem::take(&mut self.pod_attached).into_values());
        attached.for_each(attach::leave);
    }
}

/// Removes the fq root qdisc of a record if the agent made it (and it is still our fq: see
/// [`qdisc::delete_our_fq`]).
fn remove_fq(r: &FqRecord) -> Result<()> {
    if r.created {
        qdisc::delete_our_fq(r.iface.netns.as_deref(), r.iface.ifindex)?;
    }
    Ok(())
}

/// What [`uninstall`] could not remove.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Attachment records whose removal failed, with why (kept for a retry).
    pub records: Vec<(AttachRecord, anyhow::Error)>,
    /// fq records whose removal failed, with why.
    pub fq: Vec<(FqRecord, anyhow::Error)>,
    /// Removing the pins failed, with why.
    pub pins: Option<anyhow::Error>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.fq.is_empty() && self.pins.is_none()
    }
}

/// Removes what an agent instance left (after a crash), from its records and pins alone:
/// `fault-agent uninstall`. Goes on past a failure (each record is independent); returns
/// what failed. Records of things never made (written before an attach that did not
/// happen) or already gone count as done.
pub fn uninstall(pins: &Pins, records: &[AttachRecord], fq: &[FqRecord]) -> Leftovers {
    let mut left = Leftovers::default();
    for rec in records {
        if let Err(e) = attach::detach_record(rec, pins) {
            left.records.push((rec.clone(), e));
        }
        crate::failpoint::hit("uninstall.one");
    }
    for r in fq {
        if let Err(e) = remove_fq(r) {
            left.fq.push((r.clone(), e));
        }
    }
    if let Err(e) = pins.remove_all() {
        left.pins = Some(e);
    }
    left
}
