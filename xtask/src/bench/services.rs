//! 1b. What faults through Services cost: the map entries and kernel memory of the peer role
//! (the views that catch a target's traffic on its peers' veths, after the node's DNAT) next
//! to the target role's (all the maps held before it existed), for typical fault sets on the
//! inference topology with a Service in front of prefill and NATS; and what a packet pays
//! when its pod is a peer of a fault that does not concern it (the gate lets it in).
use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use fault_api::{FaultSpec, PartitionMode, Selector};
use fault_testkit::{AgentProcess, Mode, ServiceNet, Topology};

use super::{Options, Report, commands, other_prefixes, post_line, sh};

/// Kernel memory of one pinned map, from `bpftool map show` (`bytes_memlock`: since Linux 6.4
/// the map's own accounting of what it uses).
fn memlock(agent: &AgentProcess, map: &str) -> Result<u64> {
    let pin = agent.bpffs().join("maps").join(map);
    let out = sh(&format!("bpftool -j map show pinned {}", pin.display()))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("bpftool's JSON")?;
    v["bytes_memlock"].as_u64().context("bytes_memlock")
}

fn selector(s: &str) -> Result<Selector> {
    s.parse().map_err(|e| anyhow::anyhow!("{s}: {e}"))
}

/// The fault sets measured, cumulative: (label, spec).
fn fault_sets() -> Result<Vec<(&'static str, FaultSpec)>> {
    let mut cut = FaultSpec::new("dynamo");
    cut.pod_prefix = Some("vllm-decode".into());
    cut.to_selectors = vec![selector("app=vllm-prefill")?];
    cut.partition = Some(PartitionMode::Packets);
    let mut isolate = FaultSpec::new("dynamo");
    isolate.pod_prefix = Some("vllm-decode-0".into());
    isolate.partition = Some(PartitionMode::Packets);
    let mut wide = FaultSpec::new("dynamo");
    wide.pod_prefix = Some("frontend-0".into());
    wide.to_cidrs = other_prefixes(1_000);
    wide.partition = Some(PartitionMode::Packets);
    Ok(vec![
        ("+ decode -> prefill partition", cut),
        ("+ decode-0 cut from everything but NATS", isolate),
        ("+ frontend cut from 1,000 /32 CIDRs", wide),
    ])
}

pub fn run(r: &mut Report, _opts: &Options) -> Result<()> {
    let mut topo = Topology::with_mode("bench-services", Mode::Bridged)?;
    let pods = topo.dynamo()?;
    let mut net = ServiceNet::new(&topo)?;
    net.service("prefill", &[&pods.prefill])?;
    net.service("nats", &[&pods.nats])?;
    let dir = tempfile::tempdir()?;
    let inventory = dir.path().join("inventory.yaml");
    topo.write_inventory(&inventory)?;
    let agent = AgentProcess::start_with(&inventory, &["--service-cidr", "198.19.0.0/16"])?;
    writeln!(r.out, "## 1b. What faults through Services cost\n")?;
    writeln!(
        r.out,
        "The inference topology on one host, with a Service (DNAT) in front of prefill and NATS. Faults are added one after the other; after each, the entries the agent wrote (`GET /v1/tables`) and the kernel memory of the rule and target maps (`bpftool map show`, `bytes_memlock`). Entries of the target role are what the maps held before faults held through Services; the peer role's are what that adds (its own tables, where a peer's veth catches a target's traffic after the DNAT). `FL_TARGETS` is preallocated (its memory does not follow its entries); `FL_RULES` (an LPM trie) and `FL_REMOTE` are not.\n"
    )?;
    writeln!(
        r.out,
        "| fault set | targets (of which peer role) | rules (of which peer role only) | FL_RULES KiB | FL_TARGETS KiB | FL_REMOTE KiB |"
    )?;
    writeln!(r.out, "| --- | --- | --- | --- | --- | --- |")?;
    let mut lines = vec![agent.command_line()];
    let row = |label: &str, r: &mut Report| -> Result<()> {
        let t = agent.client().get_json("/v1/tables")?;
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        writeln!(
            r.out,
            "| {label} | {} ({}) | {} ({}) | {:.1} | {:.1} | {:.1} |",
            n("targets"),
            n("peer_targets"),
            n("rules"),
            n("peer_rules"),
            memlock(&agent, "FL_RULES")? as f64 / 1024.0,
            memlock(&agent, "FL_TARGETS")? as f64 / 1024.0,
            memlock(&agent, "FL_REMOTE")? as f64 / 1024.0,
        )?;
        Ok(())
    };
    row("no fault", r)?;
    for (label, spec) in fault_sets()? {
        agent.client().create(&spec)?;
        lines.push(post_line(label, &agent.api_url(), &spec)?);
        row(label, r)?;
    }
    writeln!(r.out)?;
    writeln!(
        r.out,
        "The no-fault path is unchanged in shape (one gate lookup, now of 4 bits: direction and role); its cost is scenario (b) of section 1 (before this change, at 972ba34: 97 / 88 ns per packet for the ingress / egress program on this machine).\n"
    )?;
    commands(&mut r.out, &lines)?;
    drop(agent);
    drop(net);
    Ok(())
}
