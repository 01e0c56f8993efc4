//! Removing the netfilter chains the cluster's components made (kube-proxy's `KUBE-*`, the
//! kubelet's `KUBE-FIREWALL`, `KUBE-MARK-*` and canaries, the CNI plugins' `CNI-*`), in IPv4
//! and IPv6, from every table: jumps to them first, then the chains. Other chains and rules
//! are left alone.
use std::process::Command;

use crate::util::output;

const TABLES: &[&str] = &["filter", "nat", "mangle", "raw"];
const PREFIXES: &[&str] = &["KUBE-", "CNI-"];

/// Splits an `iptables -S` line into arguments (double quotes group words, as iptables
/// prints comments).
fn split(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn ours(chain: &str) -> bool {
    PREFIXES.iter().any(|p| chain.starts_with(p))
}

/// Chains of ours left in `table` (as listed by `bin -t table -S`).
fn chains(bin: &str, table: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let Some(text) = output(Command::new(bin).args(["-w", "-t", table, "-S"])) else {
        return (vec![], vec![]);
    };
    let mut chains = Vec::new();
    let mut rules = Vec::new();
    for line in text.lines() {
        let args = split(line);
        match args.first().map(String::as_str) {
            Some("-N") if args.get(1).is_some_and(|c| ours(c)) => chains.push(args[1].clone()),
            Some("-A") => rules.push(args),
            _ => {}
        }
    }
    (chains, rules)
}

/// Removes every chain of ours; returns how many chains were removed.
pub fn sweep() -> usize {
    let mut removed = 0;
    for bin in ["iptables", "ip6tables"] {
        for table in TABLES {
            let (chains, rules) = chains(bin, table);
            if chains.is_empty() {
                continue;
            }
            // Jumps from chains that are not ours (ours are flushed below).
            for r in rules.iter().filter(|r| !r.get(1).is_some_and(|c| ours(c))) {
                let jumps_to_ours = r
                    .windows(2)
                    .any(|w| (w[0] == "-j" || w[0] == "-g") && ours(&w[1]));
                if jumps_to_ours {
                    let mut del = r.clone();
                    del[0] = "-D".into();
                    let _ = output(Command::new(bin).args(["-w", "-t", table]).args(&del));
                }
            }
            for c in &chains {
                let _ = output(Command::new(bin).args(["-w", "-t", table, "-F", c]));
            }
            for c in &chains {
                if output(Command::new(bin).args(["-w", "-t", table, "-X", c])).is_some() {
                    removed += 1;
                } else {
                    eprintln!("cluster: cannot remove {bin} -t {table} chain {c}");
                }
            }
        }
    }
    removed
}

/// Chains of ours still present, as `iptables:nat:KUBE-...` (for `status` and checks).
pub fn remaining() -> Vec<String> {
    let mut left = Vec::new();
    for bin in ["iptables", "ip6tables"] {
        for table in TABLES {
            for c in chains(bin, table).0 {
                left.push(format!("{bin}:{table}:{c}"));
            }
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn iptables_lines_split_like_a_shell() {
        let l =
            r#"-A KUBE-SERVICES -m comment --comment "kubernetes service portals" -j KUBE-SVC-X"#;
        assert_eq!(
            split(l),
            [
                "-A",
                "KUBE-SERVICES",
                "-m",
                "comment",
                "--comment",
                "kubernetes service portals",
                "-j",
                "KUBE-SVC-X"
            ]
        );
        assert_eq!(split(r#"-A X --comment "" -j Y"#)[3], "");
    }
}
