//! Finding a local pod's network namespace without relying on a CNI or a runtime: every
//! network namespace this node has is a candidate (the files container runtimes pin under
//! `/run/netns`, and, with `hostPID`, those of every process under `/proc`), and the one holding
//! the pod's addresses is the pod's. Candidates are deduplicated by inode; the index is rebuilt
//! only when a pod's address is not in it.
//!
//! Two guards keep a pod from capturing another's faults:
//! - an address held by two namespaces is **ambiguous** (a pod may have added a victim's
//!   address to one of its interfaces): the pod is not attached, and its problem says so;
//!   so is a pod whose addresses are held by different namespaces;
//! - a namespace is remembered with its inode, and a path whose inode changed (a `/proc/<pid>`
//!   whose process exited and whose PID was reused) is dropped, never followed.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::discover;

/// A network namespace file and the namespace it named when it was indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// The namespace file (`/run/netns/<name>` or `/proc/<pid>/ns/net`).
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Netns {
    fn at(path: PathBuf) -> Option<Self> {
        let m = std::fs::metadata(&path).ok()?;
        Some(Self {
            path,
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Whether the path still names the same namespace.
    pub fn still_there(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == (self.dev, self.ino))
    }

    fn same(&self, o: &Self) -> bool {
        (self.dev, self.ino) == (o.dev, o.ino)
    }
}

/// Why a pod's namespace was not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetnsError {
    #[error("no network namespace of this node holds {0}")]
    NotFound(IpAddr),
    #[error(
        "{count} network namespaces of this node hold {ip}: ambiguous, not attached (a pod may have added another's address)"
    )]
    Ambiguous { ip: IpAddr, count: usize },
    #[error(
        "the pod's addresses {0} and {1} are held by different network namespaces: not attached"
    )]
    Split(IpAddr, IpAddr),
}

/// Address -> the network namespaces holding it.
#[derive(Debug, Default)]
pub struct NetnsIndex {
    by_ip: BTreeMap<IpAddr, Vec<Netns>>,
    built: Option<Instant>,
}

/// Rebuilding more often than this is pointless (pods take longer to get addresses).
const MIN_REBUILD: Duration = Duration::from_millis(200);

fn candidates() -> Vec<Netns> {
    let own = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut consider = |p: PathBuf| {
        if let Some(n) = Netns::at(p)
            && Some(n.ino) != own
            && seen.insert((n.dev, n.ino))
        {
            out.push(n);
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
    /// The one namespace holding every address of `ips` that any namespace holds (at least the
    /// first). When the index has no answer (an unknown address, a namespace gone, or an
    /// ambiguity that may have been resolved since), it is rebuilt once, at most every
    /// [`MIN_REBUILD`].
    pub fn find(&mut self, ips: &[IpAddr]) -> Result<Netns, NetnsError> {
        let found = self.choose(ips);
        if found.is_ok() || self.built.is_some_and(|t| t.elapsed() < MIN_REBUILD) {
            return found;
        }
        self.rebuild();
        self.choose(ips)
    }

    fn choose(&self, ips: &[IpAddr]) -> Result<Netns, NetnsError> {
        let mut chosen: Option<(IpAddr, &Netns)> = None;
        for (i, ip) in ips.iter().enumerate() {
            let held: Vec<&Netns> = self
                .by_ip
                .get(ip)
                .map(|v| v.iter().filter(|n| n.still_there()).collect())
                .unwrap_or_default();
            match (held.as_slice(), chosen) {
                ([], _) if i == 0 => return Err(NetnsError::NotFound(*ip)),
                ([], _) => {}
                ([one], None) => chosen = Some((*ip, one)),
                ([one], Some((first, c))) if !one.same(c) => {
                    return Err(NetnsError::Split(first, *ip));
                }
                ([_], Some(_)) => {}
                (many, _) => {
                    return Err(NetnsError::Ambiguous {
                        ip: *ip,
                        count: many.len(),
                    });
                }
            }
        }
        let first = ips.first().copied();
        chosen.map(|(_, n)| n.clone()).ok_or(NetnsError::NotFound(
            first.unwrap_or(IpAddr::from([0, 0, 0, 0])),
        ))
    }

    fn rebuild(&mut self) {
        let all = candidates();
        let paths: Vec<PathBuf> = all.iter().map(|n| n.path.clone()).collect();
        let held = all.into_iter().zip(discover::addresses_of(&paths));
        self.by_ip = index(held.map(|(n, ips)| (n, ips.unwrap_or_default())));
        self.built = Some(Instant::now());
    }
}

/// Address -> the namespaces holding it, in candidate order.
fn index(held: impl Iterator<Item = (Netns, Vec<IpAddr>)>) -> BTreeMap<IpAddr, Vec<Netns>> {
    let mut by_ip: BTreeMap<IpAddr, Vec<Netns>> = BTreeMap::new();
    for (ns, ips) in held {
        for ip in ips {
            let v = by_ip.entry(ip).or_default();
            if !v.iter().any(|n| n.same(&ns)) {
                v.push(ns.clone());
            }
        }
    }
    by_ip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(dir: &std::path::Path, name: &str) -> Netns {
        let p = dir.join(name);
        std::fs::write(&p, name).unwrap();
        Netns::at(p).unwrap()
    }

    #[test]
    fn a_shared_address_is_ambiguous_and_split_addresses_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (victim, thief) = (ns(dir.path(), "victim"), ns(dir.path(), "thief"));
        let v4: IpAddr = "198.18.0.10".parse().unwrap();
        let v6: IpAddr = "fd00::10".parse().unwrap();
        let other: IpAddr = "198.18.0.11".parse().unwrap();
        let mut idx = NetnsIndex {
            by_ip: index(
                [(victim.clone(), vec![v4, v6]), (thief.clone(), vec![other])].into_iter(),
            ),
            built: Some(Instant::now()),
        };
        assert_eq!(idx.choose(&[v4, v6]), Ok(victim.clone()));
        assert_eq!(
            idx.choose(&[other, v6]),
            Err(NetnsError::Split(other, v6)),
            "addresses of one pod in two namespaces"
        );
        idx.by_ip = index([(victim.clone(), vec![v4, v6]), (thief.clone(), vec![v4])].into_iter());
        let e = idx.choose(&[v4, v6]).unwrap_err();
        assert_eq!(e, NetnsError::Ambiguous { ip: v4, count: 2 });
        assert!(e.to_string().contains("ambiguous"), "{e}");
    }

    #[test]
    fn a_path_naming_another_namespace_now_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let n = ns(dir.path(), "pid-1234");
        assert!(n.still_there());
        // The process exited and another took its PID: the same path, another inode.
        // (Renamed, not removed: the old inode stays taken, so the new file has another.)
        std::fs::rename(&n.path, dir.path().join("exited")).unwrap();
        std::fs::write(&n.path, "new").unwrap();
        assert!(!n.still_there());
        let ip: IpAddr = "198.18.0.10".parse().unwrap();
        let idx = NetnsIndex {
            by_ip: index([(n, vec![ip])].into_iter()),
            built: Some(Instant::now()),
        };
        assert_eq!(idx.choose(&[ip]), Err(NetnsError::NotFound(ip)));
    }
}
