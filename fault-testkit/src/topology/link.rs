//! Kernel objects of a topology, by name: network namespaces, links and their sysctls, and
//! the wait until a new pod's interface can carry traffic.
use std::{
    fs,
    net::Ipv6Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{netns::NETNS_DIR, run};

/// Names of the network namespaces under `/run/netns` now.
pub fn netns_names() -> Vec<String> {
    dir_names(Path::new(NETNS_DIR))
}

/// Names of the links of the root network namespace now (from `/sys/class/net`).
pub fn link_names() -> Vec<String> {
    dir_names(Path::new("/sys/class/net"))
}

/// Whether a link of that name exists in the root network namespace.
pub fn link_exists(name: &str) -> bool {
    !name.is_empty() && Path::new("/sys/class/net").join(name).exists()
}

fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Deletes a link of the root namespace (a veth takes its peer with it). A link that does not
/// exist is not an error.
pub(crate) fn delete_link(name: &str) -> Result<()> {
    if !link_exists(name) {
        return Ok(());
    }
    match run("ip", &["link", "del", "dev", name]) {
        Err(_) if !link_exists(name) => Ok(()),
        other => other.map(drop),
    }
}

/// Deletes a network namespace made by `ip netns add` (its own links go with it). A namespace
/// that does not exist is not an error.
pub(crate) fn delete_netns(name: &str) -> Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    if !path.exists() {
        return Ok(());
    }
    match run("ip", &["netns", "del", name]) {
        Err(_) if !path.exists() => Ok(()),
        other => other.map(drop),
    }
}

/// Sets `net.ipv6.conf.<ifname>.disable_ipv6 = 1` for a link of the root namespace, so that it
/// sends nothing of its own (no link-local address, no router or neighbour solicitation).
pub(crate) fn disable_ipv6(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    fs::write(&path, "1").with_context(|| format!("writing {path}"))
}

/// Waits until a new pod can carry traffic: its `eth0` is up with carrier, `v6` is there and no
/// address of `eth0` is tentative any more, and the host side of its veth (`host_if`) forwards
/// on the bridge (port state 3). Fails after `timeout` with what was still missing.
pub(crate) fn wait_pod_ready(
    netns: &str,
    host_if: &str,
    v6: Ipv6Addr,
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let missing = pod_not_ready(netns, host_if, v6)?;
        let Some(what) = missing else { return Ok(()) };
        if start.elapsed() > timeout {
            bail!("pod namespace {netns} not ready after {timeout:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `None` when ready, else what is still missing.
fn pod_not_ready(netns: &str, host_if: &str, v6: Ipv6Addr) -> Result<Option<String>> {
    let link = run("ip", &["-n", netns, "-o", "link", "show", "dev", "eth0"])?;
    if !link.contains("LOWER_UP") {
        return Ok(Some("eth0 has no carrier".into()));
    }
    let addrs = run(
        "ip",
        &["-n", netns, "-o", "-6", "addr", "show", "dev", "eth0"],
    )?;
    if addrs.contains("dadfailed") {
        bail!("duplicate address detection failed on eth0 of {netns}: {addrs}");
    }
    if !addrs
        .split_whitespace()
        .any(|w| w.split('/').next() == Some(v6.to_string().as_str()))
    {
        return Ok(Some(format!("{v6} not on eth0")));
    }
    if addrs.contains("tentative") {
        return Ok(Some("an IPv6 address of eth0 is tentative".into()));
    }
    let state_file = format!("/sys/class/net/{host_if}/brport/state");
    let state = fs::read_to_string(&state_file).with_context(|| format!("reading {state_file}"))?;
    if state.trim() != "3" {
        return Ok(Some(format!(
            "bridge port {host_if} in state {} (not forwarding)",
            state.trim()
        )));
    }
    Ok(None)
}
