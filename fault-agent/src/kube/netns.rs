//! Finding a local pod's network namespace without relying on a CNI or a runtime: every
//! network namespace this node has is a candidate (the files container runtimes pin under
//! `/run/netns`, and, with `hostPID`, those of every process under `/proc`), and the one holding
//! the pod's address is the pod's. Candidates are deduplicated by inode; the index is rebuilt
//! only when a pod's address is not in it.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::discover;

/// Address -> network namespace file.
#[derive(Debug, Default)]
pub struct NetnsIndex {
    by_ip: BTreeMap<IpAddr, PathBuf>,
    built: Option<Instant>,
}

/// Rebuilding more often than this is pointless (pods take longer to get addresses).
const MIN_REBUILD: Duration = Duration::from_millis(200);

fn candidates() -> Vec<PathBuf> {
    let own = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut consider = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p)
            && Some(m.ino()) != own
            && seen.insert((m.dev(), m.ino()))
        {
            out.push(p);
        }
    };
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                consider(e.path());
            }
        }
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for e in procs.flatten() {
            if e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                consider(e.path().join("ns/net"));
            }
        }
    }
    out
}

impl NetnsIndex {
    /// The namespace holding `ip`, rebuilding the index once if it is unknown.
    pub fn find(&mut self, ip: IpAddr) -> Option<PathBuf> {
        if let Some(p) = self.by_ip.get(&ip).filter(|p| p.exists()) {
            return Some(p.clone());
        }
        if self.built.is_some_and(|t| t.elapsed() < MIN_REBUILD) {
            return None;
        }
        self.rebuild();
        self.by_ip.get(&ip).cloned()
    }

    fn rebuild(&mut self) {
        self.by_ip.clear();
        let all = candidates();
        for (ns, ips) in all.iter().zip(discover::addresses_of(&all)) {
            for ip in ips.into_iter().flatten() {
                self.by_ip.entry(ip).or_insert_with(|| ns.clone());
            }
        }
        self.built = Some(Instant::now());
    }
}
