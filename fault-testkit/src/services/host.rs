//! What a [`ServiceNet`](super::ServiceNet) changes on the host besides nftables: the node
//! address (bridged: also the pods' gateway) and the pods' routes to the Service ranges. See
//! "Host side" in the [`services`](super) documentation.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result, bail};

use super::{CLUSTER_NET_V4, CLUSTER_NET_V6, EXTERNAL_NET_V6};
use crate::{
    Pod,
    cmd::run_del,
    run,
    topology::{Mode, link_exists, names, set_sysctl},
};

/// The node address of bridged topologies: the bridge's, the pods' gateway.
pub const BRIDGED_NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The IPv6 node address of bridged topologies.
pub const BRIDGED_NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xfa, 0, 0, 0, 0, 0, 1);
/// The node address of routed topologies (on `fl<id>nd`).
pub const ROUTED_NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);
/// The IPv6 node address of routed topologies.
pub const ROUTED_NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xfa, 0xff, 0, 0, 0, 0, 1);

/// The node addresses of a topology mode.
pub(super) fn node_addresses(mode: Mode) -> (Ipv4Addr, Ipv6Addr) {
    match mode {
        Mode::Bridged => (BRIDGED_NODE_V4, BRIDGED_NODE_V6),
        Mode::Routed => (ROUTED_NODE_V4, ROUTED_NODE_V6),
    }
}

/// Fails if a node address of `mode` is already an address of the host (on any link).
pub(super) fn check_free(mode: Mode) -> Result<()> {
    let (v4, v6) = node_addresses(mode);
    for ip in [IpAddr::V4(v4), IpAddr::V6(v6)] {
        let fam = if ip.is_ipv4() { "-4" } else { "-6" };
        let held = run("ip", &["-o", fam, "addr", "show", "to", &ip.to_string()])?;
        if !held.trim().is_empty() {
            bail!("{ip} is already a host address: {}", held.trim());
        }
    }
    Ok(())
}

/// Makes the host side of Services for topology `id` (see the module documentation).
pub(super) fn prepare(id: u32, mode: Mode, bridge: &str) -> Result<()> {
    match mode {
        Mode::Bridged => prepare_bridge(id, bridge),
        Mode::Routed => prepare_node_link(id),
    }
}

/// Removes what [`prepare`] made; what is gone already is not an error.
pub(super) fn teardown(id: u32, mode: Mode, bridge: &str) -> Result<()> {
    match mode {
        Mode::Bridged if link_exists(bridge) => teardown_bridge(bridge),
        Mode::Bridged => Ok(()),
        Mode::Routed => teardown_node_link(id),
    }
}

fn prepare_bridge(id: u32, bridge: &str) -> Result<()> {
    let mac = format!(
        "02:{:02x}:{:02x}:{:02x}:ff:ff",
        (id >> 16) & 0xff,
        (id >> 8) & 0xff,
        id & 0xff
    );
    run("ip", &["link", "set", "dev", bridge, "address", &mac])?;
    bridge_nf_calls(bridge, "1")?;
    set_sysctl(&format!("net/ipv6/conf/{bridge}/accept_dad"), "0")?;
    set_sysctl(&format!("net/ipv6/conf/{bridge}/disable_ipv6"), "0")?;
    let v4 = format!("{BRIDGED_NODE_V4}/16");
    run("ip", &["addr", "add", &v4, "dev", bridge])?;
    let v6 = format!("{BRIDGED_NODE_V6}/64");
    run("ip", &["addr", "add", &v6, "dev", bridge, "nodad"])?;
    Ok(())
}

fn bridge_nf_calls(bridge: &str, on: &str) -> Result<()> {
    run(
        "ip",
        &[
            "link",
            "set",
            "dev",
            bridge,
            "type",
            "bridge",
            "nf_call_iptables",
            on,
            "nf_call_ip6tables",
            on,
        ],
    )
    .map(drop)
}

fn teardown_bridge(bridge: &str) -> Result<()> {
    // Disabling IPv6 removes the IPv6 addresses.
    set_sysctl(&format!("net/ipv6/conf/{bridge}/disable_ipv6"), "1")?;
    run("ip", &["-4", "addr", "flush", "dev", bridge])?;
    bridge_nf_calls(bridge, "0")
}

fn prepare_node_link(id: u32) -> Result<()> {
    let (nd, nq) = names::node_link(id);
    run(
        "ip",
        &["link", "add", &nd, "type", "veth", "peer", "name", &nq],
    )?;
    set_sysctl(&format!("net/ipv6/conf/{nq}/disable_ipv6"), "1")?;
    set_sysctl(&format!("net/ipv6/conf/{nd}/accept_dad"), "0")?;
    set_sysctl(&format!("net/ipv6/conf/{nd}/disable_ipv6"), "0")?;
    for l in [&nd, &nq] {
        run("ip", &["link", "set", "dev", l, "up"])?;
    }
    run(
        "ip",
        &["addr", "add", &format!("{ROUTED_NODE_V4}/32"), "dev", &nd],
    )?;
    let v6 = format!("{ROUTED_NODE_V6}/128");
    run("ip", &["addr", "add", &v6, "dev", &nd, "nodad"])?;
    node_rules(id, "add", run_ok)
}

fn run_ok(cmd: &str, args: &[&str]) -> Result<()> {
    run(cmd, args).map(drop)
}

/// Adds or deletes the rules `from <node address> lookup <table of id>`.
fn node_rules(id: u32, verb: &str, exec: fn(&str, &[&str]) -> Result<()>) -> Result<()> {
    let table = names::route_table(id).to_string();
    let pref = names::RULE_PREF.to_string();
    for (fam, from) in [
        ("-4", ROUTED_NODE_V4.to_string()),
        ("-6", ROUTED_NODE_V6.to_string()),
    ] {
        exec(
            "ip",
            &[
                fam, "rule", verb, "from", &from, "table", &table, "pref", &pref,
            ],
        )?;
    }
    Ok(())
}

fn teardown_node_link(id: u32) -> Result<()> {
    node_rules(id, "del", run_del)?;
    crate::topology::delete_link(&names::node_link(id).0)
}

/// The routes a bridged pod needs to reach the Service ranges: `198.19.0.0/16`,
/// `fd00:19::/64` and `fd00:19:1::/64` via the bridge's addresses.
fn pod_routes() -> [(String, String); 3] {
    [
        (CLUSTER_NET_V4.to_owned(), BRIDGED_NODE_V4.to_string()),
        (CLUSTER_NET_V6.to_owned(), BRIDGED_NODE_V6.to_string()),
        (EXTERNAL_NET_V6.to_owned(), BRIDGED_NODE_V6.to_string()),
    ]
}

/// Gives bridged `pod` its routes to the Service ranges (replacing any).
pub(super) fn route_pod(pod: &Pod) -> Result<()> {
    let ns = pod.netns_name();
    for (net, via) in pod_routes() {
        run(
            "ip",
            &[
                "-n", ns, "route", "replace", &net, "via", &via, "dev", "eth0",
            ],
        )
        .with_context(|| format!("routing {net} in pod {}", pod.name()))?;
    }
    Ok(())
}

/// Removes [`route_pod`]'s routes; a pod or route that is gone already is not an error.
pub(super) fn unroute_pod(pod: &Pod) -> Result<()> {
    if !pod.netns_path().exists() {
        return Ok(());
    }
    for (net, _) in pod_routes() {
        run_del("ip", &["-n", pod.netns_name(), "route", "del", &net])?;
    }
    Ok(())
}
