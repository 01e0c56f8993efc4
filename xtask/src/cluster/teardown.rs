//! `cargo xtask cluster down`: removes everything `up` made, also after a crash or a failed
//! test, in an order where nothing restarts what was removed: the kubelet first, then the
//! containers (through containerd while it runs, then any shim or container process left),
//! the control plane, what Faultline's node agent left, mounts and pod network namespaces,
//! interfaces, netfilter chains, kernel settings, folders. Each step tolerates that there is
//! nothing to do; problems are collected and reported at the end.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Result, bail};

use super::{
    host, iptables,
    layout::{self, BRIDGE, CNI_NETWORK, CTR_NAMESPACE, RUN, STATE},
    procs,
};
use crate::util::output;

/// The node agent's folders as `deploy/daemonset.yaml` mounts them.
const AGENT_STATE: &str = "/var/lib/faultline";
/// The node agent's bpffs folder.
const AGENT_BPFFS: &str = "/sys/fs/bpf/faultline";

fn ctr(args: &[&str]) -> Option<String> {
    output(
        Command::new("ctr")
            .arg("--address")
            .arg(layout::containerd_socket())
            .args(["--namespace", CTR_NAMESPACE])
            .args(args),
    )
}

/// Kills and deletes every task and container of the CRI namespace (containerd running).
fn remove_containers() {
    let Some(tasks) = ctr(&["tasks", "ls", "-q"]) else {
        return;
    };
    for id in tasks.split_whitespace() {
        let _ = ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", id]);
    }
    for id in tasks.split_whitespace() {
        let _ = ctr(&["tasks", "delete", "--force", id]);
    }
    for id in ctr(&["containers", "ls", "-q"])
        .unwrap_or_default()
        .split_whitespace()
    {
        let _ = ctr(&["containers", "delete", id]);
    }
}

/// Pids of processes whose command line holds `needle` as one argument.
fn pids_with_arg(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|a| a == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// containerd's shims of our containerd (they name its socket), and container processes in
/// the cgroups they made.
fn kill_leftover_processes(problems: &mut Vec<String>) {
    let sock = layout::containerd_socket().display().to_string();
    for pid in pids_with_arg(&sock) {
        if let Err(e) = procs::signal_and_wait("containerd shim", pid, Duration::from_secs(3)) {
            problems.push(format!("{e:#}"));
        }
    }
    for dir in cri_cgroups() {
        for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = procs::signal_and_wait("container process", pid, Duration::from_secs(1));
        }
    }
}

/// The cgroups under `k8s.io` (containerd's CRI namespace) in every hierarchy, deepest first.
fn cri_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    roots.push("/sys/fs/cgroup".into());
    for r in roots {
        let base = r.join(CTR_NAMESPACE);
        if base.is_dir() {
            collect_dirs(&base, &mut found);
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn collect_dirs(d: &Path, out: &mut Vec<PathBuf>) {
    out.push(d.to_owned());
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

/// Mount points under our folders and the pods' network namespaces, deepest first.
fn our_mounts() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|m| {
            m.starts_with(&format!("{STATE}/"))
                || m == STATE
                || m.starts_with(&format!("{RUN}/"))
                || m == RUN
                || m.starts_with("/run/netns/cni-")
        })
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    points
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unmount_all(problems: &mut Vec<String>) {
    // A mount can hide others below it: repeat until none is left (bounded).
    for _ in 0..5 {
        let points = our_mounts();
        if points.is_empty() {
            return;
        }
        for m in points {
            if let Err(e) = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH) {
                problems.push(format!("umount {m}: {e}"));
            }
        }
    }
}

/// The pods' network namespaces (containerd's CNI names them `cni-<uuid>`).
fn remove_pod_netns() {
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("cni-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Interfaces on the CNI bridge, the bridge, the node's address.
fn remove_links(problems: &mut Vec<String>) {
    let ports = output(Command::new("ip").args(["-o", "link", "show", "master", BRIDGE]))
        .unwrap_or_default();
    for line in ports.lines() {
        if let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) {
            let _ = output(Command::new("ip").args(["link", "del", name]));
        }
    }
    if link_exists(BRIDGE) && output(Command::new("ip").args(["link", "del", BRIDGE])).is_none() {
        problems.push(format!("cannot delete interface {BRIDGE}"));
    }
    host::remove_node_address();
}

/// `fault-agent uninstall` for what the DaemonSet's agent left (programs, links, qdiscs,
/// pins), with the binary the image was built from.
fn uninstall_agent(problems: &mut Vec<String>) {
    let pins = Path::new(AGENT_BPFFS);
    let records = Path::new(AGENT_STATE).join("attachments.json");
    if !pins.exists() && !records.exists() {
        return;
    }
    let bin = crate::cargo::target_dir()
        .join(crate::image::MUSL)
        .join("release/fault-agent");
    eprintln!("cluster: the node agent left state: fault-agent uninstall");
    let ok = Command::new(&bin)
        .args([
            "uninstall",
            "--state-dir",
            AGENT_STATE,
            "--bpffs",
            AGENT_BPFFS,
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        problems.push(format!(
            "{} uninstall failed: {AGENT_BPFFS} and {AGENT_STATE} may hold the agent's pins",
            bin.display()
        ));
    }
}

/// Our entries of shared folders (all of a folder that did not exist before `up`).
fn clean_shared_dirs(before: Option<&host::Before>) {
    for dir in host::SHARED_DIRS {
        let Some(b) = before else { break };
        match b.dirs.get(*dir) {
            None => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Some(entries) => {
                for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !entries.contains(&name) {
                        let _ = std::fs::remove_dir_all(e.path())
                            .or_else(|_| std::fs::remove_file(e.path()));
                    }
                }
            }
        }
    }
    // libcni's cache of our network's results, when /var/lib/cni existed before.
    for e in std::fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(CNI_NETWORK) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn remove_cgroups() {
    for d in cri_cgroups() {
        let _ = std::fs::remove_dir(&d);
    }
}

/// Removes everything; fails listing what could not be removed.
pub fn down() -> Result<()> {
    let mut problems = Vec::new();
    let grace = Duration::from_secs(10);
    for c in [
        "kubelet",
        "kube-proxy",
        "kube-scheduler",
        "kube-controller-manager",
    ] {
        if let Err(e) = procs::stop(c, grace) {
            problems.push(format!("{e:#}"));
        }
    }
    if procs::pid("containerd").is_some() {
        remove_containers();
    }
    if let Err(e) = procs::stop("containerd", grace) {
        problems.push(format!("{e:#}"));
    }
    kill_leftover_processes(&mut problems);
    for c in ["kube-apiserver", "etcd"] {
        if let Err(e) = procs::stop(c, grace) {
            problems.push(format!("{e:#}"));
        }
    }
    uninstall_agent(&mut problems);
    unmount_all(&mut problems);
    remove_pod_netns();
    remove_links(&mut problems);
    let proxy = super::components::kube_bin("kube-proxy");
    if proxy.exists() {
        let _ = output(Command::new(&proxy).arg("--cleanup"));
    }
    let removed = iptables::sweep();
    if removed > 0 {
        eprintln!("cluster: removed {removed} netfilter chains");
    }
    problems.extend(
        iptables::remaining()
            .into_iter()
            .map(|c| format!("chain {c} left")),
    );
    let before = host::before();
    if let Some(b) = &before {
        host::restore_sysctls(b);
    }
    clean_shared_dirs(before.as_ref());
    host::restore_mounts();
    remove_cgroups();
    for d in [RUN, STATE] {
        if let Err(e) = std::fs::remove_dir_all(d)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("removing {d}: {e}"));
        }
    }
    if !problems.is_empty() {
        bail!("cluster down left:\n  {}", problems.join("\n  "));
    }
    eprintln!("cluster: down (nothing left)");
    Ok(())
}
