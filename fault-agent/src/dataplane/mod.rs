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

use anyhow::{Context as _, Result, anyhow};
use aya::{Ebpf, EbpfLoader, programs::SchedClassifier};
use fault_common::FaultStats;

pub use attach::{AttachMode, AttachRecord};
pub use kernel::Capabilities;
pub use pins::Pins;
pub use tables::{Diff, Tables};

use attach::{Attached, HOOKS};
use maps::Maps;

/// The eBPF object built by build.rs from `fault-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fault-ebpf"));

/// The loaded datapath of one agent instance.
pub struct Dataplane {
    ebpf: Ebpf,
    maps: Maps,
    pins: Pins,
    mode: AttachMode,
    attached: BTreeMap<String, Attached>,
    /// Interfaces a previous agent attached to, not yet re-adopted or removed.
    orphans: Vec<AttachRecord>,
    applied: Tables,
}

impl Dataplane {
    /// Loads the programs, reusing the maps pinned under `pins` (so faults in the kernel keep
    /// acting across an agent restart), and reads what those maps hold. `previous` are the
    /// attachments a previous agent recorded; the first [`Dataplane::sync_attachments`]
    /// adopts the ones still wanted and removes the others.
    pub fn open(pins: Pins, caps: &Capabilities, previous: Vec<AttachRecord>) -> Result<Self> {
        pins.ensure()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins.maps_dir())
            .load(OBJECT)
            .with_context(|| {
                format!(
                    "loading the eBPF object (maps pinned in {}; if they were made by another version, run `fault-agent uninstall`)",
                    pins.maps_dir().display()
                )
            })?;
        for (name, _, _) in HOOKS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing"))?
                .try_into()?;
            prog.load().with_context(|| format!("loading program {name} (verifier)"))?;
        }
        let maps = Maps::take(&mut ebpf)?;
        let applied = maps.read()?;
        let mode = caps.attach_mode;
        Ok(Self { ebpf, maps, pins, mode, attached: BTreeMap::new(), orphans: previous, applied })
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
                Ok(diff.len())
            }
            Err(e) => {
                self.applied = self.maps.read().context("re-reading the maps after a failed write")?;
                Err(e)
            }
        }
    }

    /// Attaches to every interface of `wanted` (name -> ifindex) not attached yet and detaches
    /// from the others. Returns the interfaces that failed, with why; the others are done.
    pub fn sync_attachments(&mut self, wanted: &BTreeMap<String, u32>) -> Vec<(String, anyhow::Error)> {
        let mut failed = Vec::new();
        // An interface re-created under the same name has a new index: attach again.
        let stale: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, a)| wanted.get(*name) != Some(&a.record.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(a) = self.attached.remove(&name) {
                if let Err(e) = attach::detach(a, &self.pins) {
                    failed.push((name, e));
                }
            }
        }
        for (name, index) in wanted {
            if self.attached.contains_key(name) {
                continue;
            }
            match attach::attach(&mut self.ebpf, &self.pins, self.mode, name, *index) {
                Ok(a) => {
                    tracing::debug!(ifname = %name, mode = ?self.mode, "attached");
                    self.attached.insert(name.clone(), a);
                }
                Err(e) => failed.push((name.clone(), e)),
            }
        }
        // What a previous agent left on interfaces nobody wants any more.
        let orphans = std::mem::take(&mut self.orphans);
        for rec in orphans {
            if self.attached.get(&rec.ifname).is_some_and(|a| a.record.ifindex == rec.ifindex) {
                // Adopted: keep the record's clsact ownership.
                if let Some(a) = self.attached.get_mut(&rec.ifname) {
                    a.record.clsact_created |= rec.clsact_created;
                }
                continue;
            }
            if let Err(e) = attach::detach_record(&rec, &self.pins) {
                failed.push((rec.ifname.clone(), e));
            }
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

    /// What is attached now, for the state dir.
    pub fn records(&self) -> Vec<AttachRecord> {
        self.attached.values().map(|a| a.record.clone()).chain(self.orphans.iter().cloned()).collect()
    }

    /// Counters of a fault slot, summed over CPUs.
    pub fn stats(&self, slot: u16) -> Result<FaultStats> {
        self.maps.stats(slot)
    }

    /// The loaded programs' kernel ids, for `bpftool prog show id N` and run-time stats.
    pub fn program_infos(&self) -> Vec<(String, aya::programs::ProgramInfo)> {
        HOOKS
            .iter()
            .filter_map(|(name, _, _)| {
                let prog: &SchedClassifier = self.ebpf.program(name)?.try_into().ok()?;
                Some((name.to_string(), prog.info().ok()?))
            })
            .collect()
    }

    /// Detaches everything and removes every pin: the kernel is left as before the agent.
    pub fn shutdown(mut self) -> Result<()> {
        let mut first_err = None;
        for (_, a) in std::mem::take(&mut self.attached) {
            if let Err(e) = attach::detach(a, &self.pins) {
                first_err.get_or_insert(e);
            }
        }
        for rec in std::mem::take(&mut self.orphans) {
            if let Err(e) = attach::detach_record(&rec, &self.pins) {
                first_err.get_or_insert(e);
            }
        }
        let pins = self.pins.clone();
        drop(self);
        if let Err(e) = pins.remove_all() {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Removes what an agent instance left (after a crash), from its records and pins alone:
/// `fault-agent uninstall`.
pub fn uninstall(pins: &Pins, records: &[AttachRecord]) -> Result<()> {
    for rec in records {
        attach::detach_record(rec, pins)?;
    }
    pins.remove_all()
}
