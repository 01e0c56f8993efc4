//! Typed handles on the pinned maps: read their whole content, apply a [`Diff`], read counters.
use std::collections::BTreeSet;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData, PerCpuArray, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
    },
    util::nr_cpus,
};
use fault_common::{
    CONTROL_KILL_SWITCH, FaultParams, FaultStats, GATE_ENTRIES, MAP_CONTROL, MAP_FAULTS, MAP_GATE,
    MAP_REMOTE, MAP_RULES, MAP_STATS, MAP_TARGETS, MAX_FAULTS, RuleKey, RuleValue, TargetKey,
    TargetValue,
    ct::{CtKey, CtValue, MAP_CT},
};

use super::tables::{Diff, Tables};

/// The maps Faultline writes.
pub struct Maps {
    gate: Array<MapData, u8>,
    targets: HashMap<MapData, TargetKey, TargetValue>,
    rules: LpmTrie<MapData, RuleKey, RuleValue>,
    faults: Array<MapData, FaultParams>,
    stats: PerCpuArray<MapData, FaultStats>,
    remote: HashMap<MapData, [u8; 16], u8>,
    /// The flows connection partitions record (an LRU hash the programs write); the agent
    /// only removes what no connection partition needs any more ([`Maps::sweep_flows`]).
    ct: HashMap<MapData, CtKey, CtValue>,
    /// The datapath's switches (`fault_common::MAP_CONTROL`).
    control: Array<MapData, u32>,
    cpus: usize,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Maps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let cpus = nr_cpus().map_err(|(_, e)| anyhow!("counting possible CPUs: {e}"))?;
        Ok(Self {
            gate: take(ebpf, MAP_GATE)?,
            targets: take(ebpf, MAP_TARGETS)?,
            rules: take(ebpf, MAP_RULES)?,
            faults: take(ebpf, MAP_FAULTS)?,
            stats: take(ebpf, MAP_STATS)?,
            remote: take(ebpf, MAP_REMOTE)?,
            ct: take(ebpf, MAP_CT)?,
            control: take(ebpf, MAP_CONTROL)?,
            cpus,
        })
    }

    /// Reads what the kernel holds now (used at start, and to resync after a failed write).
    pub fn read(&self) -> Result<Tables> {
        let mut t = Tables::default();
        for kv in self.targets.iter() {
            let (k, v) = kv.context("reading FL_TARGETS")?;
            t.targets.insert(k, v);
        }
        for kv in self.rules.iter() {
            let (k, v) = kv.context("reading FL_RULES")?;
            t.rules.insert((k.prefix_len(), k.data()), v);
        }
        for slot in 0..MAX_FAULTS {
            let p = self.faults.get(&slot, 0).context("reading FL_FAULTS")?;
            if p != FaultParams::default() {
                t.faults.insert(slot as u16, p);
            }
        }
        for k in self.remote.keys() {
            t.remote.insert(k.context("reading FL_REMOTE")?);
        }
        // One lookup per entry (65,536): only at start and after a failed write.
        for i in 0..GATE_ENTRIES {
            let bits = self.gate.get(&i, 0).context("reading FL_GATE")?;
            if bits != 0 {
                t.gates.insert(i as u16, bits);
            }
        }
        Ok(t)
    }

    /// Applies `diff` in its order. Stops at the first error: the caller resyncs with [`Maps::read`].
    pub fn apply(&mut self, diff: &Diff) -> Result<()> {
        for addr in &diff.put_remote {
            self.remote
                .insert(addr, 1, 0)
                .context("writing a remote pod")?;
        }
        for (slot, params) in &diff.set_faults {
            self.faults
                .set(*slot as u32, params, 0)
                .with_context(|| format!("writing fault slot {slot}"))?;
        }
        for ((len, key), value) in &diff.put_rules {
            self.rules
                .insert(&Key::new(*len, *key), value, 0)
                .context("writing a rule")?;
        }
        crate::failpoint::hit("maps.rules");
        for (i, bits) in &diff.widen_gates {
            self.gate
                .set(*i as u32, bits, 0)
                .with_context(|| format!("opening gate entry {i}"))?;
        }
        for (key, value) in &diff.put_targets {
            self.targets
                .insert(key, value, 0)
                .context("writing a target")?;
        }
        crate::failpoint::hit("maps.targets");
        for key in &diff.del_targets {
            ignore_missing(self.targets.remove(key)).context("removing a target")?;
        }
        for (i, bits) in &diff.narrow_gates {
            self.gate
                .set(*i as u32, bits, 0)
                .with_context(|| format!("closing gate entry {i}"))?;
        }
        for (len, key) in &diff.del_rules {
            ignore_missing(self.rules.remove(&Key::new(*len, *key))).context("removing a rule")?;
        }
        for slot in &diff.clear_faults {
            self.faults
                .set(*slot as u32, FaultParams::default(), 0)
                .with_context(|| format!("clearing fault slot {slot}"))?;
        }
        for addr in &diff.del_remote {
            ignore_missing(self.remote.remove(addr)).context("removing a remote pod")?;
        }
        Ok(())
    }

    /// Whether the kernel's kill switch is engaged.
    pub fn kill_switch(&self) -> Result<bool> {
        let v = self
            .control
            .get(&CONTROL_KILL_SWITCH, 0)
            .context("reading FL_CONTROL")?;
        Ok(v != 0)
    }

    /// Engages (`true`) or lifts the kill switch: from the next packet on, the programs pass
    /// everything (or act again).
    pub fn set_kill_switch(&mut self, engaged: bool) -> Result<()> {
        self.control
            .set(CONTROL_KILL_SWITCH, u32::from(engaged), 0)
            .context("writing FL_CONTROL")
    }

    /// The counters of `slot`, summed over CPUs.
    pub fn stats(&self, slot: u16) -> Result<FaultStats> {
        let per_cpu = self
            .stats
            .get(&(slot as u32), 0)
            .context("reading FL_STATS")?;
        let mut sum = FaultStats::default();
        for s in per_cpu.iter() {
            sum.matched += s.matched;
            sum.dropped += s.dropped;
            sum.corrupted += s.corrupted;
            sum.duplicated += s.duplicated;
            sum.delayed += s.delayed;
        }
        Ok(sum)
    }

    /// Removes the recorded flows (`FL_CT`) whose target (the fault's side of the flow) is not
    /// in `targets`; with `targets` empty the table is emptied. Returns how many went.
    pub fn sweep_flows(&mut self, targets: &BTreeSet<[u8; 16]>) -> Result<usize> {
        // Keys first: deleting while walking a hash restarts the walk.
        let mut stale = Vec::new();
        for k in self.ct.keys() {
            let k = k.context("reading FL_CT")?;
            if !targets.contains(&k.target) {
                stale.push(k);
            }
        }
        for k in &stale {
            ignore_missing(self.ct.remove(k)).context("removing a flow from FL_CT")?;
        }
        Ok(stale.len())
    }

    /// Entries of `FL_CT` (for tests and checks).
    pub fn flow_count(&self) -> Result<usize> {
        let mut n = 0;
        for k in self.ct.keys() {
            k.context("reading FL_CT")?;
            n += 1;
        }
        Ok(n)
    }

    /// Zeroes the counters of `slot` (once its fault ended and before a new fault takes it).
    pub fn reset_stats(&mut self, slot: u16) -> Result<()> {
        let zeros = PerCpuValues::try_from(vec![FaultStats::default(); self.cpus])
            .map_err(|e| anyhow!("building per-CPU zeros: {e}"))?;
        self.stats
            .set(slot as u32, zeros, 0)
            .context("zeroing FL_STATS")
    }
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}
