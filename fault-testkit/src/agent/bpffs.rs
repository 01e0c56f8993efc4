//! Making sure a BPF filesystem is mounted at `/sys/fs/bpf`, where agents pin their maps and
//! links.
use std::{path::Path, sync::Mutex};

use anyhow::{Context as _, Result, bail};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

/// Where the BPF filesystem is expected.
pub const BPFFS: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts a BPF filesystem at `/sys/fs/bpf` unless one is there (`statfs` magic
/// `BPF_FS_MAGIC`, 0xcafe4a11).
pub fn ensure_bpffs() -> Result<()> {
    // Tests of one process start agents concurrently: mount once.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let path = Path::new(BPFFS);
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {BPFFS}"))?;
    mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mount -t bpf bpf {BPFFS}"))?;
    if !is_bpffs(path) {
        bail!("{BPFFS} is still not a BPF filesystem after mounting one");
    }
    Ok(())
}
