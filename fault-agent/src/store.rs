//! Faults and attachments in the state dir, so that they survive an agent restart.
//!
//! ```text
//! <state-dir>/faults.json        every fault not yet garbage-collected, with its slot
//! <state-dir>/attachments.json   what the agent attached where (for restart and uninstall)
//! <state-dir>/qdiscs.json        the fq root qdiscs it relies on (and whether it made them)
//! ```
//! Files are replaced atomically (write to a temporary file, then rename).
use std::{
    collections::BTreeMap,
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use fault_api::{Counters, FaultSpec, FaultState};
use fault_common::MAX_FAULTS;
use jiff::Timestamp;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    dataplane::{AttachRecord, FqRecord},
    resolve::Resolution,
};

/// A fault as the agent keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRecord {
    pub id: String,
    pub spec: FaultSpec,
    pub state: FaultState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Deadline in `CLOCK_BOOTTIME` ns, valid for the boot `boot_id`.
    pub deadline_boot_ns: u64,
    pub boot_id: String,
    /// Kernel slot ([`fault_common::MAP_FAULTS`] index) while live.
    pub slot: u16,
    /// Creation order.
    pub seq: u64,
    /// Counters at the end (the slot's counters are reused by later faults).
    #[serde(default)]
    pub final_counters: Counters,
    /// The last resolution against the pods (recomputed at every reconcile while live; kept
    /// as it was at the end for ended faults).
    #[serde(default)]
    pub resolution: Resolution,
}

/// The faults of an agent.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    faults: BTreeMap<String, FaultRecord>,
    next_seq: u64,
    next_slot: u16,
}

fn read_json<T: DeserializeOwned + Default>(path: &Path) -> Result<T> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value)?;
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// Reads the attachment records of a state dir (empty when there are none).
pub fn load_attachments(dir: &Path) -> Result<Vec<AttachRecord>> {
    read_json(&dir.join("attachments.json"))
}

/// Replaces the attachment records of a state dir.
pub fn save_attachments(dir: &Path, records: &[AttachRecord]) -> Result<()> {
    write_json(&dir.join("attachments.json"), &records)
}

/// Reads the fq records of a state dir.
pub fn load_qdiscs(dir: &Path) -> Result<Vec<FqRecord>> {
    read_json(&dir.join("qdiscs.json"))
}

/// Replaces the fq records of a state dir.
pub fn save_qdiscs(dir: &Path, records: &[FqRecord]) -> Result<()> {
    write_json(&dir.join("qdiscs.json"), &records)
}

impl Store {
    /// Opens (creating) the state dir. Deadlines computed in another boot are recomputed from
    /// the wall-clock expiry (boottime restarts at every boot).
    pub fn open(dir: &Path, boot_id: &str, now_boot_ns: u64) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating state dir {}", dir.display()))?;
        let list: Vec<FaultRecord> = read_json(&dir.join("faults.json"))?;
        let now = Timestamp::now();
        let mut faults = BTreeMap::new();
        for mut f in list {
            if f.boot_id != boot_id {
                let left = f.expires_at.duration_since(now).as_nanos().max(0) as u64;
                f.deadline_boot_ns = now_boot_ns + left;
                f.boot_id = boot_id.to_owned();
            }
            faults.insert(f.id.clone(), f);
        }
        let next_seq = faults.values().map(|f| f.seq + 1).max().unwrap_or(0);
        Ok(Self {
            dir: dir.to_owned(),
            faults,
            next_seq,
            next_slot: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes faults.json.
    pub fn save(&self) -> Result<()> {
        let list: Vec<&FaultRecord> = self.faults.values().collect();
        write_json(&self.dir.join("faults.json"), &list)
    }

    pub fn get(&self, id: &str) -> Option<&FaultRecord> {
        self.faults.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut FaultRecord> {
        self.faults.get_mut(id)
    }

    pub fn all(&self) -> impl Iterator<Item = &FaultRecord> {
        self.faults.values()
    }

    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut FaultRecord> {
        self.faults.values_mut()
    }

    /// Faults that may act on packets.
    pub fn live(&self) -> impl Iterator<Item = &FaultRecord> {
        self.faults.values().filter(|f| f.state.is_live())
    }

    pub fn insert(&mut self, f: FaultRecord) {
        self.faults.insert(f.id.clone(), f);
    }

    pub fn remove(&mut self, id: &str) -> Option<FaultRecord> {
        self.faults.remove(id)
    }

    pub fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// A free slot, round-robin (a freed slot is reused as late as possible).
    pub fn alloc_slot(&mut self) -> Result<u16> {
        let used: std::collections::BTreeSet<u16> = self.live().map(|f| f.slot).collect();
        for i in 0..MAX_FAULTS as u16 {
            let slot = (self.next_slot + i) % MAX_FAULTS as u16;
            if !used.contains(&slot) {
                self.next_slot = (slot + 1) % MAX_FAULTS as u16;
                return Ok(slot);
            }
        }
        bail!("all {MAX_FAULTS} fault slots are in use")
    }

    /// Drops ended faults older than `retention`. Returns whether any went.
    pub fn gc(&mut self, now: Timestamp, retention: Duration) -> bool {
        let before = self.faults.len();
        self.faults.retain(|_, f| match f.ended_at {
            Some(end) if !f.state.is_live() => {
                now.duration_since(end).as_secs_f64() < retention.as_secs_f64()
            }
            _ => true,
        });
        before != self.faults.len()
    }
}
