//! 4. Scale: the agent with 100 and 1,000 pods (real network namespaces and veths): time to
//!    be ready, resident memory, the time to write a fault over every pod, the time to write
//!    10,000 rules, and how long a new matching pod waits to be covered.
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use fault_api::{FaultSpec, PartitionMode};
use fault_testkit::{AgentProcess, Family, Topology, probe::udp_reachable};

use super::{Options, Report, commands, other_prefixes, post_line};

pub fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb / 1024.0)
}

pub fn run(r: &mut Report, opts: &Options) -> Result<()> {
    writeln!(r.out, "## 4. Scale\n")?;
    writeln!(
        r.out,
        "Pods are real network namespaces with veths on one bridge; the single-host agent reads each one. Ready: from start to `/readyz` (programs loaded and attached to every pod). Fault over all pods: API request to response (the maps are written before it answers). 10,000 rules: a fault on one pod with 10,000 peer CIDRs. New pod: from the inventory file naming it to its traffic being cut by a fault that already covers its name prefix.\n"
    )?;
    writeln!(
        r.out,
        "| pods | topology build s | agent ready s | RSS MiB | fault over all pods ms | RSS MiB after | 10,000 rules ms | RSS MiB after | new pod covered ms |"
    )?;
    writeln!(
        r.out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )?;
    let sizes: &[usize] = if opts.quick { &[100] } else { &[100, 1000] };
    let mut lines = Vec::new();
    for &n in sizes {
        let t = Instant::now();
        let mut topo = Topology::named("bench-scale")?;
        let peer = topo.add_pod("bench", "peer-0", &[("app", "peer")])?;
        for i in 0..n {
            topo.add_pod("bench", &format!("t-{i}"), &[("app", "target")])?;
        }
        let build = t.elapsed().as_secs_f64();
        let dir = tempfile::tempdir()?;
        let inventory = dir.path().join("inventory.yaml");
        topo.write_inventory(&inventory)?;
        let t = Instant::now();
        let agent = AgentProcess::builder(&inventory)
            .ready_timeout(Duration::from_secs(600))
            .start()?;
        let ready = t.elapsed().as_secs_f64();
        let pid = agent.pid().context("agent pid")?;
        let rss0 = rss_mib(pid)?;
        let mut spec = FaultSpec::new("bench");
        spec.pod_prefix = Some("t-".into());
        spec.to_selectors = vec!["app=peer".parse().map_err(anyhow::Error::msg)?];
        spec.partition = Some(PartitionMode::Packets);
        let t = Instant::now();
        agent.client().create(&spec)?;
        let all = t.elapsed().as_secs_f64() * 1e3;
        let rss1 = rss_mib(pid)?;
        let mut rules = FaultSpec::new("bench");
        rules.pod_prefix = Some("peer-0".into());
        rules.to_cidrs = other_prefixes(10_000);
        rules.loss_percent = Some("1".parse().map_err(anyhow::Error::msg)?);
        let t = Instant::now();
        agent.client().create(&rules)?;
        let ten_k = t.elapsed().as_secs_f64() * 1e3;
        if lines.is_empty() {
            lines = vec![
                format!("# the agent (rebuilt for each size): {}", agent.command_line()),
                post_line("fault over all pods", &agent.api_url(), &spec)?,
                post_line("10,000 rules", &agent.api_url(), &rules)?,
                "# new pod: the testkit adds netns t-new with its veth, rewrites the inventory file, and probes UDP from it to peer-0 every 20 ms".into(),
            ];
        }
        let rss2 = rss_mib(pid)?;
        let newcomer = topo.add_pod("bench", "t-new", &[("app", "target")])?;
        let t = Instant::now();
        topo.write_inventory(&inventory)?;
        let mut covered = f64::NAN;
        while t.elapsed() < Duration::from_secs(30) {
            if !udp_reachable(
                &newcomer,
                &peer,
                Family::V4,
                9000,
                Duration::from_millis(20),
            )? {
                covered = t.elapsed().as_secs_f64() * 1e3;
                break;
            }
        }
        if n == 1000 {
            let worst = rss0.max(rss1).max(rss2);
            r.target(
                "agent RSS <= 30 MiB with 1,000 pods",
                format!("{rss0:.1} MiB ready, {worst:.1} MiB at most (after 10,000 rules)"),
                worst <= 30.0,
                "the agent keeps each pod's discovered interfaces and the compiled tables (what it last wrote, to write only differences); 10,000 CIDRs are held as compiled prefixes per slot",
            );
        }
        writeln!(
            r.out,
            "| {n} | {build:.1} | {ready:.1} | {rss0:.1} | {all:.1} | {rss1:.1} | {ten_k:.1} | {rss2:.1} | {covered:.0} |"
        )?;
        drop(agent);
        drop(topo);
    }
    writeln!(
        r.out,
        "\nReading: the time to be ready grows with the pods because each pod's host veth gets two TCX links, made one after another, and the kernel takes 8-19 ms to create each one here (`BPF_LINK_CREATE` under strace: it waits for readers of the interface's program list); a cluster node with its usual tens of pods is ready in seconds. Memory: the agent reads every pod's namespace with one netlink socket per namespace from two threads and gives the memory of each pass back (`malloc_trim`), so its RSS follows what it holds, not its peaks. 10,000 rules cost one compile and one batch of map writes. 10,000 pods are not built on one host (a Linux bridge takes at most 1,024 ports, and a kubelet runs at most 110 pods by default): a node agent sees 10,000 pods as Pod objects of a cluster, measured in 4b.\n"
    )?;
    commands(&mut r.out, &lines)?;
    Ok(())
}
