//! Bridged pods (like the CNI `bridge` plugin): every pod's host-side veth is a port of the
//! topology's bridge, pods are on-link in `198.18.0.0/16` and `fd00:fa::/64`, and the host has
//! no address on the segment.
use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};

use super::{POD_READY_TIMEOUT, Pod, link};
use crate::run;

/// Makes the bridge `name`: up, no address, IPv6 disabled, no multicast snooping.
pub(super) fn make_bridge(name: &str) -> Result<()> {
    // No multicast snooping: with no querier on the segment, every pod sees every
    // neighbour solicitation, as on a plain switch.
    run(
        "ip",
        &["link", "add", name, "type", "bridge", "mcast_snooping", "0"],
    )?;
    link::disable_ipv6(name)?;
    run("ip", &["link", "set", "dev", name, "up"])?;
    Ok(())
}

/// Makes `pod`'s namespace and veth, the host side on `bridge`, and waits until it is ready.
pub(super) fn make_pod(bridge: &str, pod: &Pod) -> Result<()> {
    let (ns, host) = (pod.netns_name(), pod.host_ifname());
    run("ip", &["netns", "add", ns])?;
    run(
        "ip",
        &[
            "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    link::disable_ipv6(host)?;
    run("ip", &["link", "set", "dev", host, "master", bridge, "up"])?;
    // The link-local address skips duplicate address detection too, so that nothing on
    // eth0 is ever tentative.
    pod.run(|| std::fs::write("/proc/sys/net/ipv6/conf/eth0/accept_dad", "0"))?
        .context("disabling duplicate address detection on eth0")?;
    run("ip", &["-n", ns, "link", "set", "dev", "lo", "up"])?;
    run("ip", &["-n", ns, "link", "set", "dev", "eth0", "up"])?;
    let v4 = format!("{}/16", pod.ipv4());
    run("ip", &["-n", ns, "addr", "add", &v4, "dev", "eth0"])?;
    let v6 = format!("{}/64", pod.ipv6());
    run(
        "ip",
        &["-n", ns, "addr", "add", &v6, "dev", "eth0", "nodad"],
    )?;
    link::wait_pod_ready(ns, None, host, pod.ipv6(), true, POD_READY_TIMEOUT)
}

/// Replaces `pod`'s IPv4 address by `new` (prefix length 16). Routes of `eth0` go with the
/// old address (deleting a primary address deletes the secondaries of its subnet, so the old
/// one goes first).
pub(super) fn readdress(pod: &Pod, new: Ipv4Addr) -> Result<()> {
    let ns = pod.netns_name();
    let old = format!("{}/16", pod.ipv4());
    run("ip", &["-n", ns, "addr", "del", &old, "dev", "eth0"])?;
    let new = format!("{new}/16");
    run("ip", &["-n", ns, "addr", "add", &new, "dev", "eth0"])?;
    Ok(())
}
