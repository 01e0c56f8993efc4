//! 1. Idle overhead: what unaffected traffic pays. TCP and UDP throughput (iperf3) and TCP
//!    request latency between two pods, with (a) nothing, (b) Faultline attached and no fault,
//!    (c) 1,000 and 10,000 rules for another pod, and (d) the incumbents' mechanisms holding the
//!    same kind of partition for other addresses: iptables + an ipset (Chaos Mesh), an nftables
//!    set, and tc u32 filters on an HTB root (Litmus-style classification; this kernel has no
//!    prio/netem/gact to copy Litmus exactly). Plus the kernel's per-packet cost of our programs.
use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use fault_api::{FaultSpec, PartitionMode};
use fault_testkit::{AgentProcess, Family, Pod, Topology, probe::TcpEchoServer};

use super::{Dist, Options, Report, commands, floor::EmptyProgram, other_prefixes, post_line, sh};

struct Sample {
    tcp_bps: f64,
    udp_bps: f64,
    rr_us: Vec<f64>,
    /// What the programs cost during the TCP run, when there are programs.
    cost: Option<Cost>,
}

/// ns per program run (the kernel's `run_time_ns / run_cnt`, `kernel.bpf_stats_enabled`).
#[derive(Clone, Copy)]
enum Cost {
    /// Faultline's `fl_host_ingress` and `fl_host_egress`.
    PerHook(f64, f64),
    /// The empty program: one program on both hooks.
    Shared(f64),
}

impl Cost {
    /// ns per run on the host veth's ingress hook.
    fn ingress(&self) -> f64 {
        match self {
            Cost::PerHook(x, _) | Cost::Shared(x) => *x,
        }
    }
    /// ns per run on the host veth's egress hook.
    fn egress(&self) -> f64 {
        match self {
            Cost::PerHook(_, x) | Cost::Shared(x) => *x,
        }
    }
}

/// ns per run between two `(run_time_ns, run_cnt)` readings.
fn per_run((t0, c0): (u64, u64), (t1, c1): (u64, u64)) -> f64 {
    t1.saturating_sub(t0) as f64 / c1.saturating_sub(c0).max(1) as f64
}

fn iperf(client: &Pod, server: &Pod, udp: bool, secs: u32) -> Result<f64> {
    let ip = server.ipv4().to_string();
    let mut args = vec![
        "-c".to_string(),
        ip,
        "-p".into(),
        "5201".into(),
        "-t".into(),
        secs.to_string(),
        "-J".into(),
    ];
    if udp {
        args.extend(["-u", "-b", "2G", "-l", "1400"].map(String::from));
    }
    let out = client
        .run(move || Command::new("iperf3").args(&args).output())?
        .context("iperf3")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    if udp {
        let sum = &v["end"]["sum"];
        let bps = sum["bits_per_second"]
            .as_f64()
            .context("UDP bits_per_second")?;
        let lost = sum["lost_percent"].as_f64().unwrap_or(0.0);
        Ok(bps * (1.0 - lost / 100.0))
    } else {
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("TCP bits_per_second")
    }
}

fn rr_latency_us(client: &Pod, server: &Pod, n: usize) -> Result<Vec<f64>> {
    let addr = SocketAddr::new(server.ip(Family::V4), 7000);
    client.run(move || -> Result<Vec<f64>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        let (msg, mut back) = ([7u8; 64], [0u8; 64]);
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut back)?;
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(v)
    })?
}

fn program_stats(agent: &AgentProcess) -> Result<Vec<(String, u64, u64)>> {
    let caps = agent.client().get_json("/v1/capabilities")?;
    Ok(caps["programs"]
        .as_array()
        .context("programs")?
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_owned(),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_count"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

fn measure(client: &Pod, server: &Pod, held: &Held, secs: u32) -> Result<Sample> {
    let agent = match held {
        Held::Agent(a) => Some(a),
        _ => None,
    };
    let before = agent.map(program_stats).transpose()?;
    let empty_before = match held {
        Held::Empty(p) => Some(p.stats()?),
        _ => None,
    };
    let tcp_bps = iperf(client, server, false, secs)?;
    let after = agent.map(program_stats).transpose()?;
    let cost = match (before, after, held) {
        (_, _, Held::Empty(p)) => Some(Cost::Shared(per_run(
            empty_before.unwrap_or((0, 0)),
            p.stats()?,
        ))),
        (Some(b), Some(a), _) => {
            let reading = |stats: &[(String, u64, u64)], name: &str| {
                stats
                    .iter()
                    .find(|x| x.0 == name)
                    .map_or((0, 0), |x| (x.1, x.2))
            };
            let per = |name: &str| per_run(reading(&b, name), reading(&a, name));
            Some(Cost::PerHook(per("fl_host_ingress"), per("fl_host_egress")))
        }
        _ => None,
    };
    let udp_bps = iperf(client, server, true, secs)?;
    let rr_us = rr_latency_us(client, server, 2000)?;
    Ok(Sample {
        tcp_bps,
        udp_bps,
        rr_us,
        cost,
    })
}

/// What a scenario holds while it is measured; dropping it undoes it.
enum Held {
    Nothing,
    Agent(AgentProcess),
    Empty(EmptyProgram),
    Undo(String),
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Undo(script) = self
            && let Err(e) = sh(script)
        {
            eprintln!("bench: undoing a scenario: {e:#}");
        }
    }
}

struct Iperf(Child);
impl Drop for Iperf {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The (c) scenarios' fault: a partition of pod other-0 from `n` addresses that are not the
/// measured pods' (/32s from 198.19.128.0 on).
fn rules_for_other_pod(n: usize) -> FaultSpec {
    let mut spec = FaultSpec::new("bench");
    spec.pod_prefix = Some("other-0".into());
    spec.to_cidrs = other_prefixes(n);
    spec.partition = Some(PartitionMode::Packets);
    spec
}

pub fn run(r: &mut Report, opts: &Options) -> Result<()> {
    let mut topo = Topology::named("bench-overhead")?;
    let client = topo.add_pod("bench", "client-0", &[("app", "client")])?;
    let server = topo.add_pod("bench", "server-0", &[("app", "server")])?;
    topo.add_pod("bench", "other-0", &[("app", "other")])?;
    let dir = tempfile::tempdir()?;
    let inventory = dir.path().join("inventory.yaml");
    topo.write_inventory(&inventory)?;
    let _iperf = Iperf(server.run(|| {
        Command::new("iperf3")
            .args(["-s", "-p", "5201"])
            .stdout(Stdio::null())
            .spawn()
    })??);
    let _echo = TcpEchoServer::start(&server, Family::V4, 7000)?;
    std::thread::sleep(Duration::from_millis(300));
    let others: Vec<String> = other_prefixes(1000)
        .iter()
        .map(|n| n.addr().to_string())
        .collect();
    let cns = client.netns_name().to_owned();

    let agent_with_rules = |n: usize| -> Result<Held> {
        let agent = AgentProcess::start(&inventory)?;
        if n > 0 {
            agent.client().create(&rules_for_other_pod(n))?;
        }
        Ok(Held::Agent(agent))
    };
    type Setup<'a> = Box<dyn Fn() -> Result<Held> + 'a>;
    let scenarios: Vec<(&str, Setup)> = vec![
        ("(a) no programs", Box::new(|| Ok(Held::Nothing))),
        (
            "(a') an empty TC program on the same hooks",
            Box::new(|| {
                Ok(Held::Empty(EmptyProgram::attach(&[
                    client.host_ifname(),
                    server.host_ifname(),
                ])?))
            }),
        ),
        (
            "(b) Faultline attached, no fault",
            Box::new(|| agent_with_rules(0)),
        ),
        (
            "(c) Faultline, 1,000 rules for another pod",
            Box::new(|| agent_with_rules(1_000)),
        ),
        (
            "(c) Faultline, 10,000 rules for another pod",
            Box::new(|| agent_with_rules(10_000)),
        ),
        (
            "(d) iptables + ipset of 1,000 addresses (Chaos Mesh)",
            Box::new(|| {
                let mut restore = String::from("create flbench hash:ip\n");
                for a in &others {
                    restore.push_str(&format!("add flbench {a}\n"));
                }
                sh(&format!(
                    "ip netns exec {cns} ipset restore <<'EOF'\n{restore}EOF\nip netns exec {cns} iptables -A OUTPUT -m set --match-set flbench dst -j DROP"
                ))?;
                Ok(Held::Undo(format!(
                    "ip netns exec {cns} iptables -D OUTPUT -m set --match-set flbench dst -j DROP; ip netns exec {cns} ipset destroy flbench"
                )))
            }),
        ),
        (
            "(d) nftables set of 1,000 addresses",
            Box::new(|| {
                let set = others.join(", ");
                sh(&format!(
                    "ip netns exec {cns} nft -f - <<'EOF'\ntable inet flbench {{\n set blocked {{\n  type ipv4_addr\n  elements = {{ {set} }}\n }}\n chain out {{\n  type filter hook output priority 0; policy accept;\n  ip daddr @blocked drop\n }}\n}}\nEOF"
                ))?;
                Ok(Held::Undo(format!(
                    "ip netns exec {cns} nft delete table inet flbench"
                )))
            }),
        ),
        (
            "(d) tc HTB + 1,000 u32 filters (Litmus-style)",
            Box::new(|| {
                let mut batch = String::from(
                    "qdisc add dev eth0 root handle 1: htb default 1\nclass add dev eth0 parent 1: classid 1:1 htb rate 100gbit\nclass add dev eth0 parent 1: classid 1:2 htb rate 8bit\n",
                );
                for a in &others {
                    batch.push_str(&format!("filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst {a}/32 flowid 1:2\n"));
                }
                sh(&format!(
                    "ip netns exec {cns} tc -batch - <<'EOF'\n{batch}EOF"
                ))?;
                Ok(Held::Undo(format!(
                    "ip netns exec {cns} tc qdisc del dev eth0 root"
                )))
            }),
        ),
    ];
    let reps = if opts.quick { 1 } else { 5 };
    let secs = if opts.quick { 2 } else { 3 };
    let mut samples: Vec<Vec<Sample>> = scenarios.iter().map(|_| Vec::new()).collect();
    let mut agent_line = None;
    for rep in 0..reps {
        for (i, (name, setup)) in scenarios.iter().enumerate() {
            eprintln!("bench: overhead {name} (run {})", rep + 1);
            let held = setup()?;
            if let Held::Agent(a) = &held {
                agent_line.get_or_insert_with(|| a.command_line());
            }
            samples[i].push(measure(&client, &server, &held, secs)?);
            drop(held);
        }
    }
    let base_tcp = Dist(samples[0].iter().map(|s| s.tcp_bps).collect()).median();
    let base_udp = Dist(samples[0].iter().map(|s| s.udp_bps).collect()).median();
    writeln!(r.out, "## 1. Idle overhead: what unaffected traffic pays\n")?;
    writeln!(
        r.out,
        "`iperf3` TCP ({secs} s) and UDP (1,400-byte datagrams offered at 2 Gbit/s, received rate) between two pods, and 2,000 TCP request/response round trips of 64 bytes; {reps} run(s) per scenario, interleaved; median (min-max). The incumbents' rules match 1,000 addresses that are not the measured peer, as a partition of other pods would. Program cost: the kernel's `run_time_ns / run_cnt` for each program during the TCP run (`kernel.bpf_stats_enabled=1`); (a') is the floor any TC program pays here: two instructions (`return TCX_NEXT`) attached with TCX links to the same two host veths, both hooks.\n"
    )?;
    writeln!(
        r.out,
        "| scenario | TCP Gbit/s | vs (a) | UDP Mbit/s | vs (a) | RR p50 us | RR p99 us | ns/packet ingress / egress program |"
    )?;
    writeln!(r.out, "| --- | --- | --- | --- | --- | --- | --- | --- |")?;
    // (TCP % of (a), UDP % of (a), worst ns/packet of the two programs) per scenario.
    let mut ratios = Vec::new();
    for (i, (name, _)) in scenarios.iter().enumerate() {
        let tcp = Dist(samples[i].iter().map(|s| s.tcp_bps).collect());
        let udp = Dist(samples[i].iter().map(|s| s.udp_bps).collect());
        let rr = Dist(
            samples[i]
                .iter()
                .flat_map(|s| s.rr_us.iter().copied())
                .collect(),
        );
        let costs: Vec<Cost> = samples[i].iter().filter_map(|s| s.cost).collect();
        let (cost, worst) = match costs.first() {
            None => ("-".to_owned(), f64::NAN),
            Some(first) => {
                let ing = Dist(costs.iter().map(Cost::ingress).collect()).median();
                let eg = Dist(costs.iter().map(Cost::egress).collect()).median();
                let text = match first {
                    Cost::Shared(_) => format!("{ing:.0} (one program, both hooks)"),
                    Cost::PerHook(..) => format!("{ing:.0} / {eg:.0}"),
                };
                (text, ing.max(eg))
            }
        };
        ratios.push((
            tcp.median() / base_tcp * 100.0,
            udp.median() / base_udp * 100.0,
            worst,
        ));
        writeln!(
            r.out,
            "| {name} | {:.2} ({:.2}-{:.2}) | {:.1}% | {:.0} ({:.0}-{:.0}) | {:.1}% | {:.1} | {:.1} | {cost} |",
            tcp.median() / 1e9,
            tcp.min() / 1e9,
            tcp.max() / 1e9,
            tcp.median() / base_tcp * 100.0,
            udp.median() / 1e6,
            udp.min() / 1e6,
            udp.max() / 1e6,
            udp.median() / base_udp * 100.0,
            rr.median(),
            rr.q(0.99),
        )?;
    }
    let (empty, idle, k1, k10) = (ratios[1], ratios[2], ratios[3], ratios[4]);
    let (ipt, nft, u32f) = (ratios[5], ratios[6], ratios[7]);
    writeln!(r.out)?;
    writeln!(
        r.out,
        "Reading: an empty program costs {:.0} ns per packet here, and Faultline with no fault {:.0} ns: what our lookup adds is the difference, {:.0} ns. Attached with no fault, Faultline keeps {:.1}% of TCP and {:.1}% of UDP throughput (an empty program: {:.1}% / {:.1}%); with 1,000 and 10,000 rules for another pod, {:.1}% / {:.1}% and {:.1}% / {:.1}% (TCP / UDP). A packet of a pod without faults stops at the gate (one array entry per address suffix) and the rules are hash and LPM entries behind it, so their number does not change the cost of a packet that matches none (the ns/packet column stays level). The incumbents, holding 1,000 addresses: iptables + ipset {:.1}% / {:.1}%, an nftables set {:.1}% / {:.1}% (both hashed, like ours), tc u32 {:.1}% / {:.1}% (a linear list of filters every packet walks). TCP moves 64 KiB GSO segments, so a per-packet cost barely shows in it; 1,400-byte UDP datagrams and the request/response round trips are where a per-packet cost shows. Differences of a percent or two are within the run-to-run spread in parentheses.\n",
        empty.2,
        idle.2,
        idle.2 - empty.2,
        idle.0,
        idle.1,
        empty.0,
        empty.1,
        k1.0,
        k1.1,
        k10.0,
        k10.1,
        ipt.0,
        ipt.1,
        nft.0,
        nft.1,
        u32f.0,
        u32f.1
    )?;
    let (sns, sip) = (server.netns_name().to_owned(), server.ipv4().to_string());
    commands(
        &mut r.out,
        &[
            format!("ip netns exec {sns} iperf3 -s -p 5201"),
            format!("ip netns exec {cns} iperf3 -c {sip} -p 5201 -t {secs} -J"),
            format!("ip netns exec {cns} iperf3 -c {sip} -p 5201 -t {secs} -J -u -b 2G -l 1400"),
            "# (a') bpf(BPF_PROG_LOAD, sched_cls, {r0 = -1; exit}); bpf(BPF_LINK_CREATE, BPF_TCX_INGRESS and BPF_TCX_EGRESS) on both pods' host veths".into(),
            format!("# (b), (c): {}", agent_line.as_deref().unwrap_or("fault-agent standalone")),
            post_line(
                "(c), 1,000 rules (10,000 likewise)",
                "<agent>",
                &rules_for_other_pod(1_000),
            )?,
            format!("ip netns exec {cns} ipset restore   # create flbench hash:ip; add flbench <address> (x1,000)"),
            format!("ip netns exec {cns} iptables -A OUTPUT -m set --match-set flbench dst -j DROP"),
            format!("ip netns exec {cns} nft -f -   # table inet flbench {{ set blocked {{ type ipv4_addr; elements = {{ <1,000 addresses> }} }}; chain out {{ type filter hook output priority 0; policy accept; ip daddr @blocked drop }} }}"),
            format!("ip netns exec {cns} tc -batch -   # qdisc add dev eth0 root handle 1: htb default 1; class add dev eth0 parent 1: classid 1:1 htb rate 100gbit; class add dev eth0 parent 1: classid 1:2 htb rate 8bit; filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst <address>/32 flowid 1:2 (x1,000)"),
        ],
    )?;
    let idle_worst = idle.0.min(idle.1);
    // What the programs' own time is worth at (a)'s UDP packet rate: two runs per datagram
    // (the sender's host veth ingress, the receiver's host veth egress).
    let pps = base_udp / (1400.0 * 8.0);
    let core_share = |ns: f64| 2.0 * ns * pps / 1e9 * 100.0;
    let base_spread = {
        let tcp = Dist(samples[0].iter().map(|s| s.tcp_bps).collect());
        (tcp.min() / base_tcp * 100.0, tcp.max() / base_tcp * 100.0)
    };
    r.target(
        "idle throughput >= 99% of no programs",
        format!("TCP {:.1}%, UDP {:.1}%", idle.0, idle.1),
        idle_worst >= 99.0,
        format!(
            "a percent is below what this machine resolves: the runs of (a) itself span {:.1}-{:.1}% of their median (TCP), and an empty program (a') kept {:.1}% / {:.1}%. What any program costs is real, though: at (a)'s {:.0} thousand datagrams/s, two program runs per datagram take {:.1}% of a core for the floor alone ({:.0} ns) and {:.1}% with Faultline ({:.0} ns), from the same two cores the sender and receiver saturate",
            base_spread.0,
            base_spread.1,
            empty.0,
            empty.1,
            pps / 1e3,
            core_share(empty.2),
            empty.2,
            core_share(idle.2),
            idle.2
        ),
    );
    r.target(
        "<= 50 ns per packet (kernel run_time_ns / run_cnt)",
        format!(
            "{:.0} ns (worst of ingress, egress; no fault), of which {:.0} ns is the floor an empty program pays here",
            idle.2, empty.2
        ),
        idle.2 <= 50.0,
        "the floor: an empty TC program measured the same way costs what (a') shows, on this virtual machine, with the accounting itself included (kernel.bpf_stats_enabled takes two clock readings around every run); above it, a packet of a pod without faults costs the duplicate-mark check, the Ethernet and IP header reads and one array lookup that the verifier inlines (the gate, fl_host_* in fault-ebpf/src/main.rs): the difference in the reading of table 1",
    );
    r.target(
        "10,000 rules >= 97% of no programs",
        format!("TCP {:.1}%, UDP {:.1}%", k10.0, k10.1),
        k10.0.min(k10.1) >= 97.0,
        format!(
            "the programs cost {:.0} ns per packet with 10,000 rules and {:.0} ns with none (a packet of another pod stops at the gate and the rules sit behind it; their number changes neither lookup), so beyond that difference what separates the two rows is this machine's run-to-run spread (min-max in the table): two cores shared by iperf3's sender and receiver and the kernel",
            k10.2, idle.2
        ),
    );
    Ok(())
}
