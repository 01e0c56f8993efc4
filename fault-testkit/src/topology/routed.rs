//! Routed pods (like Calico): no bridge. Each pod's `eth0` has `198.18.0.{10+i}/32` and
//! `fd00:fa::{10+i:x}/128` and a default route via a gateway address that nobody owns
//! ([`GATEWAY_V4`], [`GATEWAY_V6`]) but whose permanent neighbour entry is the host-side
//! veth's MAC; the host routes each pod address to its veth, with a permanent neighbour entry
//! for the pod's MAC. No proxy ARP or NDP is involved.
//!
//! The host's routes live in a routing table of the topology's own ([`names::route_table`]),
//! used for what arrives from its pods (one `iif` rule per pod and family, preference
//! [`names::RULE_PREF`]) and ending in a `blackhole` default: topologies of concurrent
//! processes, which use the same pod addresses, never see each other's routes, and nothing a
//! pod sends to an address outside its topology leaves the machine. Routes from the host
//! itself to routed pods use `main`, which has none: host-originated traffic does not reach
//! them (Services add a rule for their node address, see [`crate::services`]).
//!
//! The same pods can have their host sides in another namespace, a fake node's (see
//! [`crate::nodes`]): there the routes go to `main`, with no rules.
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result, bail};

use super::{POD_READY_TIMEOUT, Pod, link, names};
use crate::{cmd::run_del, run};

/// The pods' IPv4 gateway: reached through `eth0` (a link-scope route), never answered by
/// anyone (its neighbour entry is permanent).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 gateway (link-local, on `eth0`, permanent neighbour entry).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Prepares the host for routed topology `id`: forwarding on (and left on), and the
/// `blackhole` defaults of its routing table. Fails when `net.ipv4.conf.all.rp_filter` is 1:
/// strict reverse-path filtering looks pod addresses up in `main` (rules by `iif` do not
/// apply to it), finds them elsewhere, and drops.
pub(super) fn setup(id: u32) -> Result<()> {
    if link::get_sysctl("net/ipv4/conf/all/rp_filter")? == "1" {
        bail!(
            "net.ipv4.conf.all.rp_filter is 1 (strict): the host would drop what routed pods \
             send (their addresses are in the topology's own routing table); set it to 0 or 2"
        );
    }
    link::enable_forwarding()?;
    let table = names::route_table(id).to_string();
    for fam in ["-4", "-6"] {
        run(
            "ip",
            &[
                fam,
                "route",
                "replace",
                "blackhole",
                "default",
                "table",
                &table,
            ],
        )?;
    }
    Ok(())
}

/// Removes what [`setup`] and the pods made in the root namespace: the rules to the
/// topology's table and the table's routes.
pub(super) fn teardown(id: u32) -> Result<()> {
    let table = names::route_table(id);
    delete_rules_to(table)?;
    flush_table(table)
}

/// Where the host sides of routed pods live, and where the host's routes to them go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    /// The root namespace, for a [`Topology`](super::Topology) `id`: routes in the topology's
    /// own table ([`names::route_table`]), which `iif` rules select.
    Root {
        /// The topology's id.
        id: u32,
    },
    /// A node's namespace (see [`crate::nodes`]): routes in `main`, no rules (the namespace
    /// is the node's own).
    Node {
        /// The node's network namespace (name under `/run/netns`).
        netns: String,
    },
}

impl Host {
    /// The namespace of the host sides: `None` for the root one.
    pub(crate) fn netns(&self) -> Option<&str> {
        match self {
            Host::Root { .. } => None,
            Host::Node { netns } => Some(netns),
        }
    }

    /// `ip ARGS...` in the host's namespace.
    pub(crate) fn ip(&self, args: &[&str]) -> Result<String> {
        match self.netns() {
            None => run("ip", args),
            Some(ns) => run("ip", &[&["-n", ns], args].concat()),
        }
    }

    /// A deletion by `ip ARGS...` in the host's namespace (see [`run_del`]).
    fn ip_del(&self, args: &[&str]) -> Result<()> {
        match self.netns() {
            None => run_del("ip", args),
            Some(ns) => run_del("ip", &[&["-n", ns], args].concat()),
        }
    }

    /// Writes `/proc/sys/<key>` in the host's namespace.
    pub(crate) fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        match self.netns() {
            None => link::set_sysctl(key, value),
            Some(ns) => {
                let path = std::path::Path::new(crate::netns::NETNS_DIR).join(ns);
                crate::netns::run_in(&path, || link::set_sysctl(key, value))?
            }
        }
    }

    /// The routing table of the routes to the pods (`main` on a node).
    fn table(&self) -> String {
        match self {
            Host::Root { id } => names::route_table(*id).to_string(),
            Host::Node { .. } => "main".to_owned(),
        }
    }
}

/// Makes routed `pod` (see the module documentation), its veth's host side in `host` with
/// MAC addresses `macs` (host side, pod side; see [`names::routed_macs`]), and waits until it
/// is ready.
pub(crate) fn make_pod(host: &Host, macs: &(String, String), pod: &Pod) -> Result<()> {
    let (ns, host_if) = (pod.netns_name(), pod.host_ifname());
    let (host_mac, pod_mac) = macs;
    run("ip", &["netns", "add", ns])?;
    host.ip(&[
        "link", "add", host_if, "address", host_mac, "type", "veth", "peer", "name", "eth0",
        "address", pod_mac, "netns", ns,
    ])?;
    host_side(host, host_if)?;
    pod_side(pod, host_mac)?;
    host_routes(host, pod, pod_mac)?;
    link::wait_pod_ready(
        ns,
        host.netns(),
        host_if,
        pod.ipv6(),
        false,
        POD_READY_TIMEOUT,
    )
}

/// The host side: IPv6 on (routes and neighbours need it) without any address of its own,
/// loose reverse-path filtering off, up.
fn host_side(host: &Host, host_if: &str) -> Result<()> {
    host.ip(&["link", "set", "dev", host_if, "addrgenmode", "none"])?;
    host.sysctl(&format!("net/ipv6/conf/{host_if}/disable_ipv6"), "0")?;
    host.sysctl(&format!("net/ipv4/conf/{host_if}/rp_filter"), "0")?;
    host.ip(&["link", "set", "dev", host_if, "up"])?;
    Ok(())
}

/// The pod side: addresses as /32 and /128, gateways with permanent neighbour entries.
fn pod_side(pod: &Pod, host_mac: &str) -> Result<()> {
    let ns = pod.netns_name();
    pod.run(|| std::fs::write("/proc/sys/net/ipv6/conf/eth0/accept_dad", "0"))?
        .context("disabling duplicate address detection on eth0")?;
    let ip = |args: &[&str]| run("ip", &[&["-n", ns], args].concat());
    ip(&["link", "set", "dev", "lo", "up"])?;
    ip(&["link", "set", "dev", "eth0", "up"])?;
    ip(&["addr", "add", &format!("{}/32", pod.ipv4()), "dev", "eth0"])?;
    let v6 = format!("{}/128", pod.ipv6());
    ip(&["addr", "add", &v6, "dev", "eth0", "nodad"])?;
    let (gw4, gw6) = (GATEWAY_V4.to_string(), GATEWAY_V6.to_string());
    for gw in [&gw4, &gw6] {
        let neigh = ["neigh", "replace", gw, "lladdr", host_mac, "dev", "eth0"];
        ip(&[&neigh[..], &["nud", "permanent"]].concat())?;
    }
    ip(&["route", "add", &gw4, "dev", "eth0", "scope", "link"])?;
    ip(&["route", "add", "default", "via", &gw4, "dev", "eth0"])?;
    ip(&["-6", "route", "add", "default", "via", &gw6, "dev", "eth0"])?;
    Ok(())
}

/// The host's way to the pod: permanent neighbour entries and /32 and /128 routes in the
/// host's table; in the root namespace, also the rules sending what the pod sends to that
/// table.
fn host_routes(host: &Host, pod: &Pod, pod_mac: &str) -> Result<()> {
    let host_if = pod.host_ifname();
    for addr in [pod.ipv4().to_string(), pod.ipv6().to_string()] {
        add_host_route(host, host_if, &addr, pod_mac)?;
    }
    let Host::Root { id } = host else {
        return Ok(());
    };
    let table = names::route_table(*id).to_string();
    let pref = names::RULE_PREF.to_string();
    for fam in ["-4", "-6"] {
        run(
            "ip",
            &[
                fam, "rule", "add", "iif", host_if, "table", &table, "pref", &pref,
            ],
        )?;
    }
    Ok(())
}

/// Neighbour entry and host route of one pod address on `host_if`.
fn add_host_route(host: &Host, host_if: &str, addr: &str, pod_mac: &str) -> Result<()> {
    host.ip(&[
        "neigh",
        "replace",
        addr,
        "lladdr",
        pod_mac,
        "dev",
        host_if,
        "nud",
        "permanent",
    ])?;
    host.ip(&[
        "route",
        "replace",
        addr,
        "dev",
        host_if,
        "table",
        &host.table(),
    ])?;
    Ok(())
}

/// Deletes the rules of a routed pod (its veth goes with its routes and neighbours). Rules
/// already gone are not an error.
pub(super) fn delete_pod_rules(id: u32, pod: &Pod) -> Result<()> {
    let table = names::route_table(id).to_string();
    let pref = names::RULE_PREF.to_string();
    for fam in ["-4", "-6"] {
        run_del(
            "ip",
            &[
                fam,
                "rule",
                "del",
                "iif",
                pod.host_ifname(),
                "table",
                &table,
                "pref",
                &pref,
            ],
        )?;
    }
    Ok(())
}

/// Gives routed `pod` (number `index` of topology `id`) the IPv4 address `new` instead of its
/// current one: the new /32 is added before the old one goes, so its routes stay; the host's
/// neighbour entry and route follow.
pub(super) fn readdress(id: u32, index: u32, pod: &Pod, new: Ipv4Addr) -> Result<()> {
    let (ns, host_if) = (pod.netns_name(), pod.host_ifname());
    let (old, new) = (pod.ipv4().to_string(), new.to_string());
    run(
        "ip",
        &["-n", ns, "addr", "add", &format!("{new}/32"), "dev", "eth0"],
    )?;
    run(
        "ip",
        &["-n", ns, "addr", "del", &format!("{old}/32"), "dev", "eth0"],
    )?;
    let host = Host::Root { id };
    add_host_route(&host, host_if, &new, &names::routed_macs(id, index).1)?;
    let table = host.table();
    host.ip_del(&["route", "del", &old, "dev", host_if, "table", &table])?;
    host.ip_del(&["neigh", "del", &old, "dev", host_if])
}

/// Deletes every rule (both families) that looks up `table`.
fn delete_rules_to(table: u32) -> Result<()> {
    let t = table.to_string();
    for fam in ["-4", "-6"] {
        let count = rules(fam)?.iter().filter(|r| **r == table).count();
        for _ in 0..count {
            run_del("ip", &[fam, "rule", "del", "table", &t])?;
        }
    }
    Ok(())
}

/// Flushes `table` in both families (a table that does not exist is not an error).
fn flush_table(table: u32) -> Result<()> {
    let t = table.to_string();
    for fam in ["-4", "-6"] {
        // Flushing an empty or missing table fails on some iproute2 versions: check after.
        let _ = run("ip", &[fam, "route", "flush", "table", &t]);
        if !routes_in(fam, table)?.is_empty() {
            bail!("routes left in table {t} ({fam}) after a flush");
        }
    }
    Ok(())
}

/// The tables the rules of family `fam` (`-4` or `-6`) look up, one entry per rule.
fn rules(fam: &str) -> Result<Vec<u32>> {
    let out = run("ip", &["-j", fam, "rule", "show"])?;
    Ok(json_tables(&out))
}

/// The routes of `table` in family `fam` (their destinations, as `ip` prints them).
fn routes_in(fam: &str, table: u32) -> Result<Vec<String>> {
    let out = run("ip", &["-j", fam, "route", "show", "table", "all"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j route")?;
    let all = v.as_array().cloned().unwrap_or_default();
    Ok(all
        .iter()
        .filter(|r| table_of(r) == Some(table))
        .map(|r| r["dst"].as_str().unwrap_or("?").to_owned())
        .collect())
}

/// The table numbers in `ip -j rule show` or `ip -j route show table all` output.
fn json_tables(out: &str) -> Vec<u32> {
    let v: serde_json::Value = serde_json::from_str(out).unwrap_or_default();
    let all = v.as_array().cloned().unwrap_or_default();
    all.iter().filter_map(table_of).collect()
}

/// The `table` of one JSON rule or route (a number or a numeric string; `main` etc. are
/// `None`).
fn table_of(entry: &serde_json::Value) -> Option<u32> {
    match &entry["table"] {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    }
}

/// Removes the rules and routes of routed topologies whose id `is_live` does not claim (left
/// by killed processes). Failures are logged to stderr.
pub(super) fn reap_orphans(is_live: impl Fn(u32) -> bool) {
    let mut dead: Vec<u32> = Vec::new();
    for fam in ["-4", "-6"] {
        let tables = rules(fam).unwrap_or_default().into_iter().chain(
            run("ip", &["-j", fam, "route", "show", "table", "all"])
                .map(|o| json_tables(&o))
                .unwrap_or_default(),
        );
        for t in tables {
            if let Some(id) = names::parse_route_table(t)
                && !is_live(id)
                && !dead.contains(&t)
            {
                dead.push(t);
            }
        }
    }
    for t in dead {
        if let Err(e) = delete_rules_to(t).and_then(|()| flush_table(t)) {
            eprintln!("testkit: reaping routing table {t}: {e:#}");
        }
    }
}
