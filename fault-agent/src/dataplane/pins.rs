//! The one place that knows the bpffs layout of an agent instance:
//!
//! ```text
//! <root>/                      --bpffs, default /sys/fs/bpf/faultline
//!   maps/FL_TARGETS ...        maps, pinned by name (aya's default_map_pin_directory)
//!   links/<hook>-<ifname>      TCX links (Linux >= 6.6), one per hook of each host veth
//!                              (bpffs refuses '.' in names: a '.' of ifname is written %2E)
//!   podlinks/<ns>-<ifname>     TCX links on pods' own interfaces (egress), by the inode of
//!                              the pod's network namespace
//! ```
//! Pinned maps and links outlive the agent: after a crash the programs keep enforcing the
//! faults (and their deadlines) until an agent adopts them again or `fault-agent uninstall`
//! removes them.
use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// `statfs` magic of bpffs (`include/uapi/linux/magic.h`).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Where an agent instance pins its objects.
#[derive(Debug, Clone)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    /// Layout under `root`, which must be on a bpffs (see [`Pins::ensure`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Folder of the pinned maps.
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    /// Folder of the pinned TCX links.
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Folder of the pinned TCX links of pods' own interfaces.
    pub fn pod_links_dir(&self) -> PathBuf {
        self.root.join("podlinks")
    }

    /// Inode of the network namespace at `netns` (what names its pod-link pins).
    pub fn netns_ino(&self, netns: &Path) -> Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(fs::metadata(netns)
            .with_context(|| format!("stat {}", netns.display()))?
            .ino())
    }

    /// Pin of the egress link on the pod interface `ifname` of the namespace `netns`.
    pub fn pod_link(&self, netns: &Path, ifname: &str) -> Result<PathBuf> {
        Ok(self.pod_link_of(self.netns_ino(netns)?, ifname))
    }

    /// Pin of the egress link on the pod interface `ifname` of the namespace whose inode is
    /// `ino` (which may be gone).
    pub fn pod_link_of(&self, ino: u64, ifname: &str) -> PathBuf {
        self.pod_links_dir()
            .join(format!("{ino}-{}", ifname.replace('.', "%2E")))
    }

    /// Pin of the link of `hook` (`ingress`/`egress`) on `ifname`.
    pub fn link(&self, ifname: &str, hook: &str) -> PathBuf {
        self.links_dir()
            .join(format!("{hook}-{}", ifname.replace('.', "%2E")))
    }

    /// Mounts bpffs on the nearest missing mount point if needed, then creates the folders.
    /// Errors when the root's filesystem is not bpffs and cannot be made so.
    pub fn ensure(&self) -> Result<()> {
        ensure_bpffs(Path::new("/sys/fs/bpf"))?;
        if let Some(parent) = self.root.parent()
            && parent.exists()
            && !is_bpffs(parent)?
        {
            bail!(
                "{} is not on a bpf filesystem: choose a --bpffs under /sys/fs/bpf",
                self.root.display()
            );
        }
        for dir in [self.maps_dir(), self.links_dir(), self.pod_links_dir()] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// The TCX link pins present now: `(ifname, hook, path)`.
    pub fn pinned_links(&self) -> Result<Vec<(String, String, PathBuf)>> {
        let mut out = Vec::new();
        let dir = match fs::read_dir(self.links_dir()) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).context("reading the links folder"),
        };
        for entry in dir {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((hook, ifname)) = name.split_once('-') {
                out.push((ifname.replace("%2E", "."), hook.to_owned(), entry.path()));
            }
        }
        Ok(out)
    }

    /// Removes every pin (maps and links) and the folders. Unpinning a link whose fd nobody
    /// holds detaches it; unpinning a map frees it once no program uses it.
    pub fn remove_all(&self) -> Result<()> {
        for dir in [self.links_dir(), self.pod_links_dir(), self.maps_dir()] {
            match fs::read_dir(&dir) {
                Ok(entries) => {
                    for e in entries.flatten() {
                        remove_file(&e.path())?;
                    }
                    remove_dir(&dir)?;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
            }
        }
        remove_dir(&self.root)
    }
}

/// Removes a file, "not found" included.
pub fn remove_file(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

fn remove_dir(p: &Path) -> Result<()> {
    match fs::remove_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

fn is_bpffs(p: &Path) -> Result<bool> {
    let st = nix::sys::statfs::statfs(p).with_context(|| format!("statfs {}", p.display()))?;
    Ok(st.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

/// Mounts bpffs at `mount_point` unless it is one already.
pub fn ensure_bpffs(mount_point: &Path) -> Result<()> {
    if is_bpffs(mount_point)? {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        mount_point,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {}", mount_point.display()))?;
    tracing::info!(path = %mount_point.display(), "mounted bpffs");
    Ok(())
}
