//! Faults and attachments in the state dir, so that they survive an agent restart or crash.
//!
//! ```text
//! <state-dir>/lock                 flock'ed by the agent (or `uninstall`) for its whole life; its pid
//! <state-dir>/faults/<id>.json     one file per fault not yet garbage-collected, with its slot
//! <state-dir>/attachments.json     what the agent attached where (for restart and uninstall)
//! <state-dir>/qdiscs.json          the fq root qdiscs it relies on (and whether it made them)
//! ```
//! - **One file per fault**: a change writes only the faults it changed (a create one file, a
//!   recover one, a cleanup of n faults n), and a damaged file loses one fault, not all. A
//!   live fault's file leaves out its resolution against the pods (recomputed at every
//!   reconcile), so pod changes write nothing. Ids are file names with any byte outside
//!   `[A-Za-z0-9_-]` written `%XX`. A `faults.json` of earlier versions is migrated at open.
//! - **Crash-safe writes** ([`write_files`]): each new content goes to a temporary file with a
//!   unique name in the same folder (`.<name>.tmp-<pid>-<n>`), which is fsynced, then renamed
//!   over the file; the folder is fsynced after the renames (and after removals). A crash
//!   leaves the old or the new content, never a mix; temporary files of a crashed agent are
//!   removed at the next open.
//! - **Damaged files** (truncated, garbage, a record that does not parse) do not stop the
//!   agent: each is moved aside to `<file>.corrupt-<unix seconds>` and logged with the parse
//!   error. A lost fault's kernel entries are cleared by the first reconcile (the maps are
//!   compared with the faults on record), since its deadline and id are unknown.
//! - **Lock** ([`StateLock`]): an exclusive `flock` on `<state-dir>/lock`, held for the life of
//!   the process (the kernel drops it when the process dies, however it dies). A second agent,
//!   or `uninstall` while an agent runs, is refused with the holder's pid.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::{self, File, OpenOptions},
    hash::{Hash as _, Hasher as _},
    io::{ErrorKind, Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use fault_api::{Counters, FaultSpec, FaultState};
use fault_common::MAX_FAULTS;
use jiff::Timestamp;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    dataplane::{AttachRecord, FqRecord},
    failpoint,
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
    /// The last resolution against the pods (recomputed at every reconcile while live, and not
    /// saved then; kept as it was at the end for ended faults).
    #[serde(default)]
    pub resolution: Resolution,
    /// The `metadata.uid` of the `NetworkFault` this record mirrors (cluster mode): a record of
    /// an object deleted and created again under the same name is not the new object's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_uid: Option<String>,
    /// The blast-radius choice made at creation (kept: the same pods after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<fault_api::BlastRadius>,
    /// What the fault says about itself for good (a duration cap), before its resolution's
    /// warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The schedule that created the fault (standalone `/v1/schedules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// Name of the lock file in the state dir.
pub const LOCK_FILE: &str = "lock";
/// Folder of the fault files in the state dir.
pub const FAULTS_DIR: &str = "faults";
/// The single fault file of earlier versions (migrated at open).
const LEGACY_FAULTS: &str = "faults.json";

/// Why the state dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the lock.
    #[error(
        "state dir {dir} is in use by fault-agent pid {pid} (it holds the lock {lock}); stop that agent first: two agents, or an agent and `uninstall`, on one state dir would undo each other's work"
    )]
    Held {
        dir: PathBuf,
        lock: PathBuf,
        /// The holder's pid as it wrote it ("unknown" if it had not yet).
        pid: String,
    },
    /// The lock file could not be created or locked.
    #[error("locking state dir {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The exclusive lock of a state dir, held until dropped (or the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Creates `dir` if needed and takes its lock without waiting; fails with
    /// [`LockError::Held`] (naming the holder's pid) if another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(e));
            }
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Held {
                dir: dir.to_owned(),
                lock: path,
                pid: if pid.is_empty() { "unknown" } else { pid }.to_owned(),
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// Counter that makes temporary names unique within the process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn is_tmp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Fsyncs a folder (so that renames and removals in it survive a power cut).
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing folder {}", dir.display()))
}

/// Replaces the files `writes` (name -> content) and removes the files `removes`, all in
/// `dir`: each content is written to a uniquely named temporary file in `dir` and fsynced,
/// then renamed over its file; `dir` is fsynced once at the end. Each file holds its old or
/// its new content whatever happens; on an error the temporary files are removed.
pub fn write_files(dir: &Path, writes: &[(String, Vec<u8>)], removes: &[String]) -> Result<()> {
    if writes.is_empty() && removes.is_empty() {
        return Ok(());
    }
    let mut tmps: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(writes.len());
    let staged = (|| -> Result<()> {
        for (name, bytes) in writes {
            let tmp = dir.join(format!(
                ".{name}.tmp-{}-{}",
                std::process::id(),
                TMP_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            tmps.push((tmp.clone(), dir.join(name)));
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        Ok(())
    })();
    if let Err(e) = staged {
        for (tmp, _) in &tmps {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    failpoint::hit("store.tmp");
    for (i, (tmp, path)) in tmps.iter().enumerate() {
        if let Err(e) = fs::rename(tmp, path) {
            for (tmp, _) in &tmps[i..] {
                let _ = fs::remove_file(tmp);
            }
            return Err(e).with_context(|| format!("replacing {}", path.display()));
        }
        failpoint::hit("store.rename");
    }
    for name in removes {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    sync_dir(dir)
}

/// Moves a damaged state file aside (`<file>.corrupt-<unix seconds>`) and logs why, naming
/// both files and what is lost. Returns where it went.
fn quarantine(path: &Path, why: &str, lost: &str) -> PathBuf {
    let secs = Timestamp::now().as_second();
    let mut dest = PathBuf::from(format!("{}.corrupt-{secs}", path.display()));
    let mut n = 1;
    while dest.exists() {
        dest = PathBuf::from(format!("{}.corrupt-{secs}-{n}", path.display()));
        n += 1;
    }
    match fs::rename(path, &dest) {
        Ok(()) => tracing::error!(
            file = %path.display(),
            moved_to = %dest.display(),
            error = why,
            "damaged state file moved aside; {lost}"
        ),
        Err(e) => tracing::error!(
            file = %path.display(),
            error = why,
            rename_error = %e,
            "damaged state file (could not be moved aside); {lost}"
        ),
    }
    if let Some(dir) = path.parent() {
        let _ = sync_dir(dir);
    }
    dest
}

/// Reads a JSON state file: `None` when missing; a damaged one is moved aside (see
/// [`quarantine`]) and read as missing. I/O errors (other than not found) are errors.
fn read_json<T: DeserializeOwned>(path: &Path, lost: &str) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                let why = if bytes.is_empty() {
                    "empty file (truncated)".to_owned()
                } else {
                    format!("not valid JSON of the expected shape: {e}")
                };
                quarantine(path, &why, lost);
                Ok(None)
            }
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (d, n.to_string_lossy().into_owned()),
        _ => bail!("{} is not a file path", path.display()),
    };
    let bytes = serde_json::to_vec_pretty(value)?;
    write_files(dir, &[(name, bytes)], &[])
}

/// Reads the attachment records of a state dir (empty when there are none, or when the file
/// is damaged: then it is moved aside with an error in the log).
pub fn load_attachments(dir: &Path) -> Result<Vec<AttachRecord>> {
    Ok(read_json(
        &dir.join("attachments.json"),
        "what earlier agents attached is unknown: TCX links are still found by their pins, netlink filters stay until replaced",
    )?
    .unwrap_or_default())
}

/// Replaces the attachment records of a state dir.
pub fn save_attachments(dir: &Path, records: &[AttachRecord]) -> Result<()> {
    write_json(&dir.join("attachments.json"), &records)
}

/// Reads the fq records of a state dir (empty when none or damaged, as
/// [`load_attachments`]).
pub fn load_qdiscs(dir: &Path) -> Result<Vec<FqRecord>> {
    Ok(read_json(
        &dir.join("qdiscs.json"),
        "fq qdiscs earlier agents made are unknown and stay",
    )?
    .unwrap_or_default())
}

/// Replaces the fq records of a state dir.
pub fn save_qdiscs(dir: &Path, records: &[FqRecord]) -> Result<()> {
    write_json(&dir.join("qdiscs.json"), &records)
}

/// Reads the kill switch's record of a state dir (lifted, with no history, when there is
/// none; a damaged file is moved aside like [`load_attachments`]'s, and the switch reads as
/// lifted: the pinned map's own flag still holds what the kernel does).
pub fn load_kill_switch(dir: &Path) -> Result<fault_api::kill_switch::KillSwitch> {
    Ok(read_json(
        &dir.join("kill-switch.json"),
        "who engaged or lifted the kill switch is unknown",
    )?
    .unwrap_or_default())
}

/// Replaces the kill switch's record of a state dir.
pub fn save_kill_switch(dir: &Path, ks: &fault_api::kill_switch::KillSwitch) -> Result<()> {
    write_json(&dir.join("kill-switch.json"), ks)
}

/// File name of a fault id: `[A-Za-z0-9_-]` as is, any other byte `%XX`, then `.json`.
pub fn fault_file_name(id: &str) -> String {
    let mut s = String::with_capacity(id.len() + 5);
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.push_str(".json");
    s
}

/// What a fault's file holds: a live fault without its resolution (recomputed anyway).
fn persisted_bytes(f: &FaultRecord) -> Result<Vec<u8>> {
    let bytes = if f.state.is_live() && f.resolution != Resolution::default() {
        let mut bare = f.clone();
        bare.resolution = Resolution::default();
        serde_json::to_vec_pretty(&bare)
    } else {
        serde_json::to_vec_pretty(f)
    };
    bytes.with_context(|| format!("serializing fault {}", f.id))
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The faults of an agent.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    faults: BTreeMap<String, FaultRecord>,
    /// Digest of each fault file's content as last read or written, by id.
    on_disk: HashMap<String, u64>,
    /// Ids that may differ from their file (handed out mutably, inserted or removed).
    touched: BTreeSet<String>,
    next_seq: u64,
    next_slot: u16,
    _lock: StateLock,
}

impl Store {
    /// Opens (creating) the state dir and takes its lock ([`StateLock`]); fails if another
    /// agent holds it. Damaged fault files are moved aside and logged (see the module docs).
    /// Deadlines computed in another boot are recomputed from the wall-clock expiry
    /// (boottime restarts at every boot).
    pub fn open(dir: &Path, boot_id: &str, now_boot_ns: u64) -> Result<Self> {
        let lock = StateLock::acquire(dir)?;
        let fdir = dir.join(FAULTS_DIR);
        fs::create_dir_all(&fdir).with_context(|| format!("creating {}", fdir.display()))?;
        remove_tmp_files(dir)?;
        remove_tmp_files(&fdir)?;
        let mut faults = BTreeMap::new();
        let mut on_disk = HashMap::new();
        for (path, name) in fault_files(&fdir)? {
            let Some(f) = read_json::<FaultRecord>(
                &path,
                "the fault it held is lost; its kernel entries are cleared at the first reconcile",
            )?
            else {
                continue;
            };
            if fault_file_name(&f.id) != name {
                quarantine(
                    &path,
                    &format!(
                        "holds fault {:?}, whose file is {}",
                        f.id,
                        fault_file_name(&f.id)
                    ),
                    "the fault it held is lost; its kernel entries are cleared at the first reconcile",
                );
                continue;
            }
            on_disk.insert(f.id.clone(), digest(&persisted_bytes(&f)?));
            faults.insert(f.id.clone(), f);
        }
        let mut store = Self {
            dir: dir.to_owned(),
            faults,
            on_disk,
            touched: BTreeSet::new(),
            next_seq: 0,
            next_slot: 0,
            _lock: lock,
        };
        store.migrate_legacy()?;
        let now = Timestamp::now();
        for f in store.faults.values_mut() {
            if f.boot_id != boot_id {
                let left = f.expires_at.duration_since(now).as_nanos().max(0) as u64;
                f.deadline_boot_ns = now_boot_ns + left;
                f.boot_id = boot_id.to_owned();
                store.touched.insert(f.id.clone());
            }
        }
        store.next_seq = store.faults.values().map(|f| f.seq + 1).max().unwrap_or(0);
        Ok(store)
    }

    /// Moves the faults of an earlier version's single `faults.json` into their own files (a
    /// fault file already there wins), then removes it; a damaged one is moved aside.
    fn migrate_legacy(&mut self) -> Result<()> {
        let legacy = self.dir.join(LEGACY_FAULTS);
        let Some(list) = read_json::<Vec<FaultRecord>>(
            &legacy,
            "every fault it held is lost; their kernel entries are cleared at the first reconcile",
        )?
        else {
            return Ok(());
        };
        for f in list {
            if !self.faults.contains_key(&f.id) {
                self.touched.insert(f.id.clone());
                self.faults.insert(f.id.clone(), f);
            }
        }
        self.save()?;
        write_files(&self.dir, &[], &[LEGACY_FAULTS.to_owned()])?;
        tracing::info!(
            faults = self.faults.len(),
            "migrated {} to one file per fault",
            legacy.display()
        );
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the fault files that changed since they were last read or written (and removes
    /// those of faults that went), crash-safely ([`write_files`]). On an error the changes
    /// stay pending for the next save.
    pub fn save(&mut self) -> Result<()> {
        let mut writes = Vec::new();
        let mut digests = Vec::new();
        let mut removes = Vec::new();
        for id in &self.touched {
            match self.faults.get(id) {
                Some(f) => {
                    let bytes = persisted_bytes(f)?;
                    let d = digest(&bytes);
                    if self.on_disk.get(id) != Some(&d) {
                        writes.push((fault_file_name(id), bytes));
                        digests.push((id.clone(), d));
                    }
                }
                // Also when this process never wrote it: a failed save may have.
                None => removes.push(id.clone()),
            }
        }
        let names: Vec<String> = removes.iter().map(|id| fault_file_name(id)).collect();
        if let Err(e) = write_files(&self.dir.join(FAULTS_DIR), &writes, &names) {
            // Some files may hold the new content: compare with nothing next time.
            for (id, _) in &digests {
                self.on_disk.remove(id);
            }
            return Err(e);
        }
        self.on_disk.extend(digests);
        for id in &removes {
            self.on_disk.remove(id);
        }
        self.touched.clear();
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<&FaultRecord> {
        self.faults.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut FaultRecord> {
        let f = self.faults.get_mut(id)?;
        self.touched.insert(id.to_owned());
        Some(f)
    }

    pub fn all(&self) -> impl Iterator<Item = &FaultRecord> {
        self.faults.values()
    }

    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut FaultRecord> {
        self.touched.extend(self.faults.keys().cloned());
        self.faults.values_mut()
    }

    /// The live faults, mutably (only those may be saved again).
    pub fn live_mut(&mut self) -> impl Iterator<Item = &mut FaultRecord> {
        self.touched.extend(
            self.faults
                .values()
                .filter(|f| f.state.is_live())
                .map(|f| f.id.clone()),
        );
        self.faults.values_mut().filter(|f| f.state.is_live())
    }

    /// Faults that may act on packets.
    pub fn live(&self) -> impl Iterator<Item = &FaultRecord> {
        self.faults.values().filter(|f| f.state.is_live())
    }

    pub fn insert(&mut self, f: FaultRecord) {
        self.touched.insert(f.id.clone());
        self.faults.insert(f.id.clone(), f);
    }

    pub fn remove(&mut self, id: &str) -> Option<FaultRecord> {
        self.touched.insert(id.to_owned());
        self.faults.remove(id)
    }

    pub fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// A free slot, round-robin (a freed slot is reused as late as possible).
    pub fn alloc_slot(&mut self) -> Result<u16> {
        let used: BTreeSet<u16> = self.live().map(|f| f.slot).collect();
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
        let gone: Vec<String> = self
            .faults
            .values()
            .filter(|f| match f.ended_at {
                Some(end) if !f.state.is_live() => {
                    now.duration_since(end).as_secs_f64() >= retention.as_secs_f64()
                }
                _ => false,
            })
            .map(|f| f.id.clone())
            .collect();
        for id in &gone {
            self.remove(id);
        }
        !gone.is_empty()
    }
}

/// The `*.json` files of the faults folder: (path, file name).
fn fault_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !name.starts_with('.') {
            out.push((e.path(), name));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes the temporary files a crashed writer left in `dir`.
fn remove_tmp_files(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let Ok(e) = e else { continue };
        if is_tmp_name(&e.file_name().to_string_lossy()) {
            tracing::info!(file = %e.path().display(), "removing a temporary file of an earlier agent");
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
