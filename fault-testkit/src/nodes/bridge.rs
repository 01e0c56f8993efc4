//! The fabric bridge `fl<id>fab` in the root namespace, the L2 network between the nodes,
//! with the root's addresses on it, and the nftables table `inet fl<id>fab` that keeps what
//! it bridges out of the root's connection tracking.
//!
//! `br_netfilter` (built in, `net.bridge.bridge-nf-call-iptables` = 1 on the reference
//! machine) passes every bridged IPv4 and IPv6 frame through the root's netfilter hooks, the
//! bridge as input device: without the table, the root's conntrack would track every flow
//! between nodes, mark some INVALID (a bad checksum, a segment out of window, exactly what
//! faults make) and any rule of the root dropping INVALID packets (kube-proxy's
//! `KUBE-FORWARD`, when a Kubernetes node runs on the machine) would drop them.
use std::net::IpAddr;

use anyhow::{Result, bail};

use super::{FABRIC_V4, FABRIC_V6};
use crate::{
    cmd::{run_del, run_input},
    run,
    topology::{delete_link, names, set_sysctl},
};

/// Fails if a root address of the fabric is already an address of the host (on any link).
fn check_free() -> Result<()> {
    for ip in [IpAddr::V4(FABRIC_V4), IpAddr::V6(FABRIC_V6)] {
        let fam = if ip.is_ipv4() { "-4" } else { "-6" };
        let held = run("ip", &["-o", fam, "addr", "show", "to", &ip.to_string()])?;
        if !held.trim().is_empty() {
            bail!("{ip} is already a host address: {}", held.trim());
        }
    }
    Ok(())
}

/// Makes the bridge of fabric `id`: no multicast snooping (every node sees every neighbour
/// solicitation), a fixed MAC (a bridge's own MAC otherwise follows its ports, and the nodes'
/// neighbour entries of the root's addresses would go stale as nodes are added), IPv6 on
/// without duplicate address detection, [`FABRIC_V4`]/24 and [`FABRIC_V6`]/64, up.
pub(super) fn make(id: u32) -> Result<()> {
    check_free()?;
    let br = names::fabric_bridge(id);
    let mac = format!(
        "02:{:02x}:{:02x}:{:02x}:fb:01",
        (id >> 16) & 0xff,
        (id >> 8) & 0xff,
        id & 0xff
    );
    run(
        "ip",
        &[
            "link",
            "add",
            &br,
            "address",
            &mac,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ],
    )?;
    set_sysctl(&format!("net/ipv6/conf/{br}/accept_dad"), "0")?;
    set_sysctl(&format!("net/ipv6/conf/{br}/disable_ipv6"), "0")?;
    run(
        "ip",
        &["addr", "add", &format!("{FABRIC_V4}/24"), "dev", &br],
    )?;
    let v6 = format!("{FABRIC_V6}/64");
    run("ip", &["addr", "add", &v6, "dev", &br, "nodad"])?;
    run("ip", &["link", "set", "dev", &br, "up"])?;
    untrack(&br)
}

/// Creates the table `inet <bridge>` whose chain (priority raw, before conntrack) sets
/// `notrack` on what arrives from the bridge for anyone but the root: frames between nodes.
/// The root's own connections to the nodes (agents' APIs) are tracked as usual.
fn untrack(br: &str) -> Result<()> {
    let t = format!("inet {br}");
    let script = format!(
        "add table {t}
add chain {t} untrack {{ type filter hook prerouting priority raw; policy accept; }}
add rule {t} untrack iifname \"{br}\" ip daddr != {FABRIC_V4} notrack
add rule {t} untrack iifname \"{br}\" ip6 daddr != {FABRIC_V6} notrack
"
    );
    run_input("nft", &["-f", "-"], &script).map(drop)
}

/// Deletes the bridge of fabric `id` (and so its addresses) and its table; what is gone is
/// not an error.
pub(super) fn delete(id: u32) -> Result<()> {
    delete_table(&names::fabric_bridge(id))?;
    delete_link(&names::fabric_bridge(id))
}

/// Deletes the table `inet <name>`; one that does not exist is not an error.
fn delete_table(name: &str) -> Result<()> {
    run_del("nft", &["delete", "table", "inet", name])
}

/// Deletes the fabric tables (`inet fl<id>fab`) whose id `is_live` does not claim (left by
/// killed processes; their bridges go with the registry's reaping). Failures are logged.
pub(super) fn reap_orphans(tables: &[String], is_live: impl Fn(u32) -> bool) {
    for t in tables {
        if names::parse_fabric_bridge(t).is_some_and(|id| !is_live(id))
            && let Err(e) = delete_table(t)
        {
            eprintln!("testkit: reaping nftables table {t}: {e:#}");
        }
    }
}
