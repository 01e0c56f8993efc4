//! What the cluster changes on the machine outside its own folders, recorded before `up` so
//! that `down` puts it back: kernel settings the kubelet, kube-proxy and the bridge plugin
//! write, and which shared folders existed (the kubelet's `/var/log/pods`, libcni's cache,
//! containerd's shim sockets). Also the node's address.
use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::layout::{self, HOST_IF, NODE_IP};
use crate::util::run_quiet;

/// Kernel settings written by the components: the bridge plugin (`ip_forward`), kube-proxy
/// (`route_localnet`, bridge netfilter) and the kubelet (its "kernel defaults").
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Shared folders the components create when missing; removed by `down` only if they did not
/// exist before `up` (otherwise only our entries are removed). The kubelet 1.20 keeps its
/// device-plugin socket in `/var/lib/kubelet/device-plugins` whatever its root dir;
/// `/var/lib/faultline` is the node agent's state (a hostPath of `deploy/daemonset.yaml`).
pub const SHARED_DIRS: &[&str] = &[
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/run/containerd",
    "/var/lib/kubelet",
    "/var/lib/faultline",
];

/// Mount points that must propagate mounts into containers (`mountPropagation:
/// HostToContainer` in `deploy/daemonset.yaml`; containerd refuses a private source): bpffs,
/// and the folder where runtimes pin network namespaces. systemd makes every mount shared on
/// a usual node; without systemd, `up` makes these two shared (and `down` puts back what it
/// changed).
pub const SHARED_MOUNTS: &[&str] = &["/sys/fs/bpf", "/run/netns"];

/// The mountinfo line's optional fields of the mount at exactly `path`, if it is a mount point
/// (e.g. `["shared:5"]`; empty when private).
fn propagation(path: &str) -> Option<Vec<String>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&path)).then(|| {
            f[6..]
                .iter()
                .take_while(|x| **x != "-")
                .map(|x| (*x).to_owned())
                .collect()
        })
    })
}

/// Makes [`SHARED_MOUNTS`] shared mount points (a folder that is not a mount point is bound
/// onto itself first, as `ip netns add` does for /run/netns); records what it changed in
/// `<state>/mounts-made.json` for [`restore_mounts`].
pub fn share_mounts() -> Result<()> {
    let mut made = Vec::new();
    for m in SHARED_MOUNTS {
        std::fs::create_dir_all(m)?;
        match propagation(m) {
            Some(tags) if tags.iter().any(|t| t.starts_with("shared:")) => continue,
            Some(_) => {
                run_quiet(Command::new("mount").args(["--make-shared", m]))?;
                made.push(json!({"path": m, "was": "private"}));
            }
            None => {
                run_quiet(Command::new("mount").args(["--bind", m, m]))?;
                run_quiet(Command::new("mount").args(["--make-shared", m]))?;
                made.push(json!({"path": m, "was": "not a mount point"}));
            }
        }
    }
    std::fs::write(
        layout::state("mounts-made.json"),
        serde_json::to_vec(&made)?,
    )?;
    Ok(())
}

/// Puts back what [`share_mounts`] changed: private again, or the self-bind unmounted when
/// nothing is mounted below it any more.
pub fn restore_mounts() {
    let Ok(bytes) = std::fs::read(layout::state("mounts-made.json")) else {
        return;
    };
    let made: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap_or_default();
    for m in made {
        let (Some(path), Some(was)) = (m["path"].as_str(), m["was"].as_str()) else {
            continue;
        };
        if was == "private" {
            let _ = run_quiet(Command::new("mount").args(["--make-private", path]));
        } else if std::fs::read_dir(path).map_or(0, |d| d.count()) == 0 {
            let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn record_path() -> std::path::PathBuf {
    layout::state("host-before.json")
}

/// Records the settings and folders, unless a record exists (a second `up` after a partial
/// one must not record the cluster's own changes as the original state).
pub fn record() -> Result<()> {
    if record_path().exists() {
        return Ok(());
    }
    let sysctls: BTreeMap<&str, String> = SYSCTLS
        .iter()
        .filter_map(|k| {
            let v = std::fs::read_to_string(Path::new("/proc/sys").join(k)).ok()?;
            Some((*k, v.trim().to_owned()))
        })
        .collect();
    let dirs: BTreeMap<&str, Vec<String>> = SHARED_DIRS
        .iter()
        .filter_map(|d| Some((*d, list(d)?)))
        .collect();
    std::fs::create_dir_all(layout::STATE)?;
    std::fs::write(
        record_path(),
        serde_json::to_vec_pretty(&json!({"sysctls": sysctls, "dirs": dirs}))?,
    )
    .context("recording the host's state")
}

fn list(dir: &str) -> Option<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Some(names)
}

/// What [`record`] wrote, if anything.
pub struct Before {
    pub sysctls: BTreeMap<String, String>,
    /// Folder -> its entries before `up`; a folder missing here did not exist.
    pub dirs: BTreeMap<String, Vec<String>>,
}

/// Reads the record.
pub fn before() -> Option<Before> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(record_path()).ok()?).ok()?;
    Some(Before {
        sysctls: serde_json::from_value(v["sysctls"].clone()).ok()?,
        dirs: serde_json::from_value(v["dirs"].clone()).ok()?,
    })
}

/// Writes back the recorded kernel settings that changed.
pub fn restore_sysctls(b: &Before) {
    for (k, v) in &b.sysctls {
        let p = Path::new("/proc/sys").join(k);
        let now = std::fs::read_to_string(&p).unwrap_or_default();
        if now.trim() != v {
            match std::fs::write(&p, v) {
                Ok(()) => eprintln!("cluster: restored {k} = {v} (was {})", now.trim()),
                Err(e) => eprintln!("cluster: cannot restore {k} = {v}: {e}"),
            }
        }
    }
}

/// The node's address on `lo` (idempotent).
pub fn add_node_address() -> Result<()> {
    run_quiet(Command::new("ip").args([
        "addr",
        "replace",
        &format!("{NODE_IP}/32"),
        "dev",
        "lo",
        "label",
        HOST_IF,
    ]))?;
    Ok(())
}

/// Removes the node's address from `lo`; whether it was there.
pub fn remove_node_address() -> bool {
    crate::util::output(Command::new("ip").args([
        "addr",
        "del",
        &format!("{NODE_IP}/32"),
        "dev",
        "lo",
    ]))
    .is_some()
}
