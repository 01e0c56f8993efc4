//! The nftables side of Services: the table of a topology (in the root namespace) or of a
//! fake node (in its own namespace), its Services' chains and rules, and their counters. See
//! "nftables" in the [`services`](super) documentation.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
};

use anyhow::{Context as _, Result};

use crate::{
    cmd::{run_del, run_input},
    run,
};

/// Where a Services table lives: a network namespace (`None`: the root one) and the table's
/// name (family `inet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    /// Name under `/run/netns`, or `None` for the root namespace.
    pub netns: Option<String>,
    /// The table's name.
    pub table: String,
}

/// The links whose traffic a root-namespace table handles: those named `<prefix>*`, put in
/// conntrack zone `zone` and confined to each other. A node's table has none: it handles
/// whatever arrives in its namespace, as kube-proxy does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Links<'a> {
    /// Prefix of the links' names (`fl<id>`).
    pub prefix: &'a str,
    /// Conntrack zone of their traffic.
    pub zone: u16,
}

/// One way in to a Service: an address pair and, for a node port, the destination ports
/// (else every port).
pub(crate) struct Door {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub ports: Option<RangeInclusive<u16>>,
}

/// One backend: its chain and its addresses.
pub(crate) struct Backend {
    pub chain: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// `nft ARGS...` in the namespace of `place` (through `ip netns exec`), with `input` on
/// its stdin if any.
fn nft(place: &Place, args: &[&str], input: Option<&str>) -> Result<String> {
    let (cmd, args) = match &place.netns {
        None => ("nft", args.to_vec()),
        Some(ns) => (
            "ip",
            [&["netns", "exec", ns.as_str(), "nft"], args].concat(),
        ),
    };
    match input {
        None => run(cmd, &args),
        Some(text) => run_input(cmd, &args, text),
    }
}

/// Runs an nft script (`nft -f -`) as one transaction in the namespace of `place`.
fn apply(place: &Place, script: &str) -> Result<()> {
    nft(place, &["-f", "-"], Some(script)).map(drop)
}

/// Creates the table of `place` with its base chains (see the module documentation): with
/// `links`, the zone and confinement chains for them and a `services` chain matching them;
/// without, the `services` chain alone.
pub(crate) fn create_table(place: &Place, links: Option<Links<'_>>) -> Result<()> {
    let t = format!("inet {}", place.table);
    let mut script = format!("add table {t}\n");
    if let Some(l) = links {
        script += &scope_chains(&t, l);
    }
    script += &format!(
        "add chain {t} services {{ type nat hook prerouting priority dstnat; policy accept; }}\n"
    );
    apply(place, &script).with_context(|| format!("creating nftables table {t}"))
}

/// The chains putting the traffic of `links` in its zone and confining it.
fn scope_chains(t: &str, l: Links<'_>) -> String {
    let (links, zone) = (format!("\"{}*\"", l.prefix), l.zone);
    format!(
        "add chain {t} zone_in {{ type filter hook prerouting priority raw; policy accept; }}
add rule {t} zone_in iifname {links} ct zone set {zone}
add chain {t} zone_out {{ type filter hook output priority raw; policy accept; }}
add rule {t} zone_out oifname {links} ct zone set {zone}
add chain {t} confine {{ type filter hook forward priority filter; policy accept; }}
add rule {t} confine iifname {links} oifname != {links} drop
add rule {t} confine oifname {links} iifname != {links} drop
"
    )
}

/// Adds one Service to the table of `place`: its backend chains, with several backends the
/// chain `chain` choosing among them, and the rules of its `doors`, matching what arrives on
/// `<prefix>*` (with `prefix`) or anything (without).
pub(crate) fn add_service(
    place: &Place,
    prefix: Option<&str>,
    chain: &str,
    backends: &[Backend],
    doors: &[Door],
) -> Result<()> {
    let t = format!("inet {}", place.table);
    let mut script: String = backends.iter().map(|b| backend_chain(&t, b)).collect();
    let target = match backends {
        [one] => one.chain.as_str(),
        _ => {
            script += &chooser(&t, chain, backends);
            chain
        }
    };
    for d in doors {
        script += &door_rules(&t, prefix, d, target);
    }
    apply(place, &script)
}

/// A backend's chain: count, then DNAT to its address (port unchanged).
fn backend_chain(t: &str, b: &Backend) -> String {
    let c = &b.chain;
    format!(
        "add chain {t} {c}
add rule {t} {c} counter
add rule {t} {c} meta nfproto ipv4 dnat ip to {}
add rule {t} {c} meta nfproto ipv6 dnat ip6 to {}
",
        b.v4, b.v6
    )
}

/// The chain `chain` sending each new connection to one of `backends` at random.
fn chooser(t: &str, chain: &str, backends: &[Backend]) -> String {
    let arms: Vec<String> = (backends.iter().enumerate())
        .map(|(i, b)| format!("{i} : goto {}", b.chain))
        .collect();
    format!(
        "add chain {t} {chain}\nadd rule {t} {chain} numgen random mod {} vmap {{ {} }}\n",
        backends.len(),
        arms.join(", ")
    )
}

/// The rules (IPv4 and IPv6) sending what arrives on the links `<prefix>*` (or anywhere,
/// without `prefix`) for door `d` to `target`.
fn door_rules(t: &str, prefix: Option<&str>, d: &Door, target: &str) -> String {
    let iif = prefix.map_or(String::new(), |p| format!(" iifname \"{p}*\""));
    let ports = (d.ports.as_ref()).map_or(String::new(), |p| {
        format!(" th dport {}-{}", p.start(), p.end())
    });
    [("ip", d.v4.to_string()), ("ip6", d.v6.to_string())]
        .iter()
        .map(|(fam, addr)| {
            format!(
                "add rule {t} services{iif} {fam} daddr {addr} \
                 meta l4proto {{ tcp, udp }}{ports} goto {target}\n"
            )
        })
        .collect()
}

/// Deletes the table of `place`; one that does not exist (or whose namespace is gone) is not
/// an error.
pub(crate) fn delete_table(place: &Place) -> Result<()> {
    if let Some(ns) = &place.netns
        && !std::path::Path::new(crate::netns::NETNS_DIR)
            .join(ns)
            .exists()
    {
        return Ok(());
    }
    match &place.netns {
        None => run_del("nft", &["delete", "table", "inet", &place.table]),
        Some(ns) => run_del(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "nft",
                "delete",
                "table",
                "inet",
                &place.table,
            ],
        ),
    }
}

/// Names of the `inet` tables of the root namespace now.
pub(crate) fn inet_tables() -> Result<Vec<String>> {
    let out = run("nft", &["-j", "list", "tables", "inet"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing nft -j output")?;
    Ok(items(&v, "table")
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect())
}

/// The packet counts of the `counter` rules of the table of `place`, summed by chain.
pub(crate) fn counters(place: &Place) -> Result<BTreeMap<String, u64>> {
    let out = nft(place, &["-j", "list", "table", "inet", &place.table], None)?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing nft -j output")?;
    Ok(sum_counters(&v))
}

/// The packet counts of the `counter` expressions of `nft -j` output, summed by chain.
fn sum_counters(v: &serde_json::Value) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for rule in items(v, "rule") {
        let Some(chain) = rule["chain"].as_str() else {
            continue;
        };
        let exprs = rule["expr"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for e in exprs {
            if let Some(n) = e["counter"]["packets"].as_u64() {
                *sums.entry(chain.to_owned()).or_insert(0) += n;
            }
        }
    }
    sums
}

/// The objects of kind `kind` (`table`, `rule`...) in `nft -j` output:
/// `{"nftables": [{"<kind>": {...}}, ...]}`.
fn items<'a>(
    v: &'a serde_json::Value,
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    let all = v["nftables"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    all.iter().filter_map(move |o| o.get(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_backend_service_chooses_at_random_and_counts() {
        let b = |j: u8| Backend {
            chain: format!("svc0_be{j}"),
            v4: Ipv4Addr::new(198, 18, 0, 10 + j),
            v6: Ipv6Addr::new(0xfd00, 0xfa, 0, 0, 0, 0, 0, 10 + u16::from(j)),
        };
        let t = "inet fl000001svc";
        assert_eq!(
            chooser(t, "svc0", &[b(0), b(1)]),
            "add chain inet fl000001svc svc0\nadd rule inet fl000001svc svc0 \
             numgen random mod 2 vmap { 0 : goto svc0_be0, 1 : goto svc0_be1 }\n"
        );
        let chain = backend_chain(t, &b(1));
        assert!(chain.contains("svc0_be1 counter\n"), "{chain}");
        assert!(chain.contains("dnat ip to 198.18.0.11\n"), "{chain}");
        assert!(chain.contains("dnat ip6 to fd00:fa::b\n"), "{chain}");
        let door = Door {
            v4: Ipv4Addr::new(198, 18, 0, 1),
            v6: Ipv6Addr::new(0xfd00, 0xfa, 0, 0, 0, 0, 0, 1),
            ports: Some(30_000..=30_009),
        };
        let rules = door_rules(t, Some("fl000001"), &door, "svc0");
        assert_eq!(rules.lines().count(), 2);
        assert!(
            rules.contains(
                "services iifname \"fl000001*\" ip6 daddr fd00:fa::1 meta l4proto { tcp, udp } \
                 th dport 30000-30009 goto svc0"
            ),
            "{rules}"
        );
        let anywhere = door_rules(t, None, &door, "svc0");
        assert!(
            anywhere.starts_with("add rule inet fl000001svc services ip daddr 198.18.0.1 meta"),
            "a node's rules match any link: {anywhere}"
        );
    }

    #[test]
    fn counters_are_summed_by_chain() {
        let json = r#"{"nftables": [{"metainfo": {"json_schema_version": 1}},
            {"table": {"family": "inet", "name": "t", "handle": 1}},
            {"rule": {"chain": "svc0_be0", "expr": [{"counter": {"packets": 3, "bytes": 9}}]}},
            {"rule": {"chain": "svc0_be0", "expr": [{"dnat": {}}]}},
            {"rule": {"chain": "svc0_be1", "expr": [{"counter": {"packets": 4, "bytes": 9}}]}}]}"#;
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let names: Vec<_> = items(&v, "table").map(|t| t["name"].clone()).collect();
        assert_eq!(names, vec![serde_json::json!("t")]);
        let sums = sum_counters(&v);
        assert_eq!(sums.get("svc0_be0"), Some(&3));
        assert_eq!(sums.get("svc0_be1"), Some(&4));
        assert_eq!(sums.len(), 2);
    }
}
