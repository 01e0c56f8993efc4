//! What Faultline leaves on the node, read from the kernel: programs, TCX links, pins, qdiscs.
use std::{path::Path, process::Command};

/// The node agent's bpffs folder (`deploy/daemonset.yaml`).
pub const AGENT_BPFFS: &str = "/sys/fs/bpf/faultline";

const PROGRAMS: &[&str] = &["fl_host_ingress", "fl_host_egress", "fl_pod_egress"];

fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool runs");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Array(vec![]))
}

/// Program id -> the processes holding a file descriptor of it (`/proc/*/fdinfo`).
fn holders() -> std::collections::HashMap<u64, Vec<u32>> {
    let mut out: std::collections::HashMap<u64, Vec<u32>> = Default::default();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        for fd in std::fs::read_dir(p.path().join("fdinfo"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
            {
                out.entry(id).or_default().push(pid);
            }
        }
    }
    out
}

/// Whether `pid` is the DaemonSet's agent (its bpffs folder on its command line).
fn is_our_agent(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .any(|a| a == AGENT_BPFFS.as_bytes())
}

/// Ids and names of loaded programs of ours: Faultline's programs that no other process holds
/// (the machine's other tests run agents of their own, with their own programs).
pub fn programs() -> Vec<(u64, String)> {
    let held = holders();
    bpftool_json(&["prog", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            let id = p["id"].as_u64()?;
            let named = PROGRAMS
                .iter()
                .any(|n| n.starts_with(name) || name.starts_with(n));
            let foreign = held
                .get(&id)
                .is_some_and(|pids| pids.iter().all(|pid| !is_our_agent(*pid)));
            (named && !foreign).then(|| (id, name.to_owned()))
        })
        .collect()
}

/// Links (TCX and others) to programs of ours.
pub fn links() -> Vec<serde_json::Value> {
    let ours: Vec<u64> = programs().into_iter().map(|(id, _)| id).collect();
    bpftool_json(&["link", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| ours.contains(&id)))
        .cloned()
        .collect()
}

/// Files left under the agent's bpffs folder.
pub fn pins() -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![Path::new(AGENT_BPFFS).to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

/// `clsact` or `fq` qdiscs on the pods' host veths (the CNI leaves `noqueue` there).
pub fn qdiscs_on(ifaces: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for i in ifaces {
        let o = Command::new("tc")
            .args(["qdisc", "show", "dev", i])
            .output()
            .expect("tc runs");
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if line.contains("clsact") || line.starts_with("qdisc fq ") {
                out.push(format!("{i}: {line}"));
            }
        }
    }
    out
}

/// The host veths on the CNI bridge.
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    let o = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}
