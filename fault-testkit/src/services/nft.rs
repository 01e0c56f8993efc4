//! The nftables side of Services: the table of a topology, its Services' chains and rules,
//! and their counters. See "nftables" in the [`services`](super) documentation.
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

/// One way in to a Service: an address pair and, for a node port, the destination ports
/// (else every port).
pub(super) struct Door {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub ports: Option<RangeInclusive<u16>>,
}

/// One backend: its chain and its addresses.
pub(super) struct Backend {
    pub chain: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// Runs an nft script (`nft -f -`) as one transaction.
fn apply(script: &str) -> Result<()> {
    run_input("nft", &["-f", "-"], script).map(drop)
}

/// Creates `table` with its base chains (see the module documentation) for the links named
/// `<prefix>*` and conntrack zone `zone`.
pub(super) fn create_table(table: &str, prefix: &str, zone: u16) -> Result<()> {
    let t = format!("inet {table}");
    let links = format!("\"{prefix}*\"");
    apply(&format!(
        "add table {t}
add chain {t} zone_in {{ type filter hook prerouting priority raw; policy accept; }}
add rule {t} zone_in iifname {links} ct zone set {zone}
add chain {t} zone_out {{ type filter hook output priority raw; policy accept; }}
add rule {t} zone_out oifname {links} ct zone set {zone}
add chain {t} confine {{ type filter hook forward priority filter; policy accept; }}
add rule {t} confine iifname {links} oifname != {links} drop
add rule {t} confine oifname {links} iifname != {links} drop
add chain {t} services {{ type nat hook prerouting priority dstnat; policy accept; }}
"
    ))
    .with_context(|| format!("creating nftables table {t}"))
}

/// Adds one Service to `table`: its backend chains, with several backends the chain `chain`
/// choosing among them, and the rules of its `doors`, matching what arrives on `<prefix>*`.
pub(super) fn add_service(
    table: &str,
    prefix: &str,
    chain: &str,
    backends: &[Backend],
    doors: &[Door],
) -> Result<()> {
    let t = format!("inet {table}");
    let mut script = String::new();
    for b in backends {
        let c = &b.chain;
        script += &format!(
            "add chain {t} {c}
add rule {t} {c} counter
add rule {t} {c} meta nfproto ipv4 dnat ip to {}
add rule {t} {c} meta nfproto ipv6 dnat ip6 to {}
",
            b.v4, b.v6
        );
    }
    let target = match backends {
        [one] => one.chain.clone(),
        _ => {
            let arms: Vec<String> = (backends.iter().enumerate())
                .map(|(i, b)| format!("{i} : goto {}", b.chain))
                .collect();
            let n = backends.len();
            script += &format!(
                "add chain {t} {chain}\nadd rule {t} {chain} numgen random mod {n} vmap {{ {} }}\n",
                arms.join(", ")
            );
            chain.to_owned()
        }
    };
    for d in doors {
        let ports = (d.ports.as_ref()).map_or(String::new(), |p| {
            format!(" th dport {}-{}", p.start(), p.end())
        });
        for (fam, addr) in [("ip", d.v4.to_string()), ("ip6", d.v6.to_string())] {
            script += &format!(
                "add rule {t} services iifname \"{prefix}*\" {fam} daddr {addr} \
                 meta l4proto {{ tcp, udp }}{ports} goto {target}\n"
            );
        }
    }
    apply(&script)
}

/// Deletes `table` (family `inet`); one that does not exist is not an error.
pub(super) fn delete_table(table: &str) -> Result<()> {
    run_del("nft", &["delete", "table", "inet", table])
}

/// Names of the `inet` tables now.
pub(super) fn inet_tables() -> Result<Vec<String>> {
    let out = run("nft", &["-j", "list", "tables", "inet"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing nft -j output")?;
    Ok(items(&v, "table")
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect())
}

/// The packet counts of the `counter` rules of `table`, summed by chain.
pub(super) fn counters(table: &str) -> Result<BTreeMap<String, u64>> {
    let out = run("nft", &["-j", "list", "table", "inet", table])?;
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
