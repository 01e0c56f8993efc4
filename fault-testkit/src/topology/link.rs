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
    set_sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1")
}

/// Writes `value` to `/proc/sys/<key>` (key with slashes, e.g. `net/ipv4/ip_forward`) of the
/// calling thread's network namespace.
pub(crate) fn set_sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))
}

/// Reads `/proc/sys/<key>`, trimmed.
pub(crate) fn get_sysctl(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{key}");
    Ok(fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_owned())
}

/// Turns IPv4 and IPv6 forwarding on in the root namespace (`net.ipv4.ip_forward = 1`,
/// `net.ipv6.conf.all.forwarding = 1`, which the kernel copies to every link and to
/// `default`), for routed pods and Services. Left on afterwards: other topologies of other
/// processes may rely on it, and the testkit does not know what the machine had before them.
/// Forwarding makes IPv6 ignore router advertisements on links with `accept_ra = 1`.
pub(crate) fn enable_forwarding() -> Result<()> {
    for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
        if get_sysctl(key)? != "1" {
            set_sysctl(key, "1")?;
        }
    }
    Ok(())
}

/// Waits until a new pod can carry traffic: its `eth0` is up with carrier, `v6` is there and no
/// address of `eth0` is tentative any more, and the host side of its veth (`host_if`, in
/// `host_netns` or the root namespace) is up and, if `bridged`, forwards on the bridge (port
/// state 3). Fails after `timeout` with what was still missing.
pub(crate) fn wait_pod_ready(
    netns: &str,
    host_netns: Option<&str>,
    host_if: &str,
    v6: Ipv6Addr,
    bridged: bool,
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let missing = pod_not_ready(netns, host_netns, host_if, v6, bridged)?;
        let Some(what) = missing else { return Ok(()) };
        if start.elapsed() > timeout {
            bail!("pod namespace {netns} not ready after {timeout:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `None` when ready, else what is still missing.
fn pod_not_ready(
    netns: &str,
    host_netns: Option<&str>,
    host_if: &str,
    v6: Ipv6Addr,
    bridged: bool,
) -> Result<Option<String>> {
    if let Some(missing) = pod_side_not_ready(netns, v6)? {
        return Ok(Some(missing));
    }
    if !bridged {
        return host_side_not_up(host_netns, host_if);
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

/// `None` when the pod's `eth0` has carrier and `v6`, and no tentative address.
fn pod_side_not_ready(netns: &str, v6: Ipv6Addr) -> Result<Option<String>> {
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
    Ok(None)
}

/// `None` when the host side of a routed pod's veth (in `host_netns`, or the root namespace)
/// is up with carrier.
fn host_side_not_up(host_netns: Option<&str>, host_if: &str) -> Result<Option<String>> {
    let state = match host_netns {
        None => {
            let file = format!("/sys/class/net/{host_if}/operstate");
            fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
        }
        Some(ns) => operstate_in(ns, host_if)?,
    };
    Ok((state.trim() != "up").then(|| format!("{host_if} is {}", state.trim())))
}

/// The operational state of link `ifname` of namespace `netns`, lowercase (`up`, `down`,
/// `lowerlayerdown`...). `/sys/class/net` shows the root namespace's links only.
fn operstate_in(netns: &str, ifname: &str) -> Result<String> {
    let out = run("ip", &["-n", netns, "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j link")?;
    let state = v[0]["operstate"].as_str().unwrap_or("unknown");
    Ok(state.to_ascii_lowercase())
}
