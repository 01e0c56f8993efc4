//! 2. Time to apply and to lift: from the request to the first packet affected, and from the
//!    recover request to the first packet passing, measured on a 20,000 datagram/s stream into
//!    the target pod that gets its rule last (resolution: 50 us). Through the API, through
//!    `faultctl`, and the incumbents' way: entering each pod's network namespace and running
//!    `iptables` (as Chaos Mesh's daemon does), for 1 and for 100 target pods.
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use fault_api::{FaultSpec, PartitionMode};
use fault_testkit::{
    AgentProcess, Family, Pod, StreamOpts, Topology, boottime_ns, probe::udp_stream_background,
};

use super::{Dist, Options, Report, commands, post_line};

/// One way of applying and lifting the partition "targets refuse the peer's packets".
trait Mechanism {
    fn apply(&mut self) -> Result<()>;
    fn lift(&mut self) -> Result<()>;
}

struct Api<'a> {
    agent: &'a AgentProcess,
    spec: FaultSpec,
    id: Option<String>,
}

impl Mechanism for Api<'_> {
    fn apply(&mut self) -> Result<()> {
        self.id = Some(self.agent.client().create(&self.spec)?.id);
        Ok(())
    }
    fn lift(&mut self) -> Result<()> {
        let id = self.id.take().context("nothing applied")?;
        self.agent.client().recover(&id)?;
        Ok(())
    }
}

struct Cli<'a> {
    agent: &'a AgentProcess,
    id: Option<String>,
}

/// The partition `faultctl` applies: the same as the API's.
const INJECT: &[&str] = &[
    "inject",
    "-n",
    "bench",
    "--pod-prefix",
    "t-",
    "--to-selector",
    "app=peer",
    "--direction",
    "ingress",
    "--partition",
];

impl Mechanism for Cli<'_> {
    fn apply(&mut self) -> Result<()> {
        let out = self.agent.faultctl(INJECT)?;
        if !out.status.success() {
            bail!("faultctl: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.id = Some(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        Ok(())
    }
    fn lift(&mut self) -> Result<()> {
        let id = self.id.take().context("nothing applied")?;
        let out = self.agent.faultctl(&["recover", &id])?;
        if !out.status.success() {
            bail!("faultctl: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

/// `ip netns exec <pod> iptables -A INPUT -s <peer> -j DROP` in each target, in turn.
struct Iptables {
    targets: Vec<String>,
    peer: String,
}

impl Iptables {
    fn each(&self, op: &str) -> Result<()> {
        for ns in &self.targets {
            let st = std::process::Command::new("ip")
                .args([
                    "netns", "exec", ns, "iptables", op, "INPUT", "-s", &self.peer, "-j", "DROP",
                ])
                .status()?;
            if !st.success() {
                bail!("iptables {op} in {ns}");
            }
        }
        Ok(())
    }
}

impl Mechanism for Iptables {
    fn apply(&mut self) -> Result<()> {
        self.each("-A")
    }
    fn lift(&mut self) -> Result<()> {
        self.each("-D")
    }
}

/// Runs `cycles` apply/lift cycles while a stream flows from `peer` to `watched`; returns the
/// apply and lift latencies in ms.
fn cycles(peer: &Pod, watched: &Pod, m: &mut dyn Mechanism, n: usize) -> Result<(Dist, Dist)> {
    let opts = StreamOpts {
        count: u64::MAX,
        rate_pps: 20_000,
        port: 44_000,
        ..Default::default()
    };
    let stream = udp_stream_background(peer, watched, Family::V4, &opts)?;
    std::thread::sleep(Duration::from_millis(100));
    let mut marks = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = boottime_ns();
        m.apply()?;
        std::thread::sleep(Duration::from_millis(15));
        let t1 = boottime_ns();
        m.lift()?;
        std::thread::sleep(Duration::from_millis(15));
        marks.push((t0, t1));
    }
    let r = stream.stop()?;
    let arrived = r.arrived();
    let (mut apply, mut lift) = (Vec::new(), Vec::new());
    for (t0, t1) in marks {
        let first_lost = r
            .send_ns
            .iter()
            .enumerate()
            .find(|(i, t)| **t >= t0 && !arrived[*i])
            .map(|(_, t)| *t);
        let first_back = r
            .send_ns
            .iter()
            .enumerate()
            .find(|(i, t)| **t >= t1 && arrived[*i])
            .map(|(_, t)| *t);
        if let (Some(a), Some(b)) = (first_lost, first_back) {
            apply.push((a - t0) as f64 / 1e6);
            lift.push((b - t1) as f64 / 1e6);
        }
    }
    Ok((Dist(apply), Dist(lift)))
}

pub fn run(r: &mut Report, opts: &Options) -> Result<()> {
    writeln!(r.out, "## 2. Time to apply and to lift a partition\n")?;
    writeln!(
        r.out,
        "From the start of the request to the first datagram dropped, and from the start of the recover request to the first datagram through, on a 20,000/s stream from the peer into the target that gets its rule last (50 us resolution); the partition is on the targets' ingress from the peer. API: the native HTTP API from a client in this process. faultctl: the CLI process, start to exit. iptables: `ip netns exec <pod> iptables -A/-D INPUT -s <peer> -j DROP` for each target in turn, as an incumbent's daemon does per pod.\n"
    )?;
    writeln!(
        r.out,
        "| mechanism | targets | cycles | apply p50 ms | apply p99 ms | lift p50 ms | lift p99 ms |"
    )?;
    writeln!(r.out, "| --- | --- | --- | --- | --- | --- | --- |")?;
    let (mut api_p50, mut ipt_p50) = (Vec::new(), Vec::new());
    let mut lines = Vec::new();
    for targets in [1usize, 100] {
        let mut topo = Topology::named("bench-apply")?;
        let peer = topo.add_pod("bench", "peer-0", &[("app", "peer")])?;
        let mut pods = Vec::new();
        for i in 0..targets {
            pods.push(topo.add_pod("bench", &format!("t-{i}"), &[("app", "target")])?);
        }
        let watched = pods
            .iter()
            .max_by_key(|p| p.ipv4())
            .context("no target")?
            .clone();
        let dir = tempfile::tempdir()?;
        let inventory = dir.path().join("inventory.yaml");
        topo.write_inventory(&inventory)?;
        let n = if opts.quick { 30 } else { 200 };
        let agent = AgentProcess::start(&inventory)?;
        let mut spec = FaultSpec::new("bench");
        spec.pod_prefix = Some("t-".into());
        spec.to_selectors = vec!["app=peer".parse().map_err(anyhow::Error::msg)?];
        spec.direction = fault_api::Direction::Ingress;
        spec.partition = Some(PartitionMode::Packets);
        if targets > 1 {
            lines.push(format!("# the agent: {}", agent.command_line()));
            lines.push(post_line("API, apply", &agent.api_url(), &spec)?);
            lines.push(format!(
                "# API, lift: DELETE {}/v1/faults/<id>",
                agent.api_url()
            ));
            lines.push(agent.faultctl_line(INJECT));
            lines.push(agent.faultctl_line(&["recover", "<id>"]));
        }
        let t = Instant::now();
        let (a, l) = cycles(
            &peer,
            &watched,
            &mut Api {
                agent: &agent,
                spec,
                id: None,
            },
            n,
        )?;
        eprintln!("bench: API x{targets}: {:.0} s", t.elapsed().as_secs_f64());
        row(&mut r.out, "Faultline API", targets, &a, &l)?;
        let (limit, what) = if targets == 1 {
            (
                5.0,
                "apply and lift p99 <= 5 ms, one pod (API request to packet)",
            )
        } else {
            (
                10.0,
                "apply and lift p99 <= 10 ms, 100 pods (API request to packet)",
            )
        };
        r.target(
            what,
            format!("apply {:.2} ms, lift {:.2} ms", a.q(0.99), l.q(0.99)),
            a.q(0.99) <= limit && l.q(0.99) <= limit,
            "the HTTP round trip, the agent's reconcile (resolve, compile, write the maps) and the scheduling of the agent's threads on two cores busy with a 20,000 datagram/s stream; the tail is scheduling, the median is well under",
        );
        api_p50.push((a.median(), l.median()));
        let (a, l) = cycles(
            &peer,
            &watched,
            &mut Cli {
                agent: &agent,
                id: None,
            },
            n,
        )?;
        row(&mut r.out, "faultctl", targets, &a, &l)?;
        drop(agent);
        let n_ipt = if targets > 1 { n / 10 } else { n };
        let mut ipt = Iptables {
            targets: pods.iter().map(|p| p.netns_name().to_owned()).collect(),
            peer: peer.ipv4().to_string(),
        };
        if targets > 1 {
            lines.push(format!(
                "# incumbent, for each target pod <ns> in turn: ip netns exec <ns> iptables -A INPUT -s {} -j DROP ; ip netns exec <ns> iptables -D INPUT -s {} -j DROP",
                ipt.peer, ipt.peer
            ));
        }
        let (a, l) = cycles(&peer, &watched, &mut ipt, n_ipt)?;
        row(&mut r.out, "iptables per pod (incumbent)", targets, &a, &l)?;
        ipt_p50.push((a.median(), l.median()));
    }
    writeln!(r.out)?;
    if let ([a1, a100], [i1, i100]) = (&api_p50[..], &ipt_p50[..]) {
        writeln!(
            r.out,
            "Reading: one request changes hash-map entries for every target at once, so 100 targets cost the API {:.2} / {:.2} ms (apply / lift, p50) against {:.2} / {:.2} ms for one; the incumbents' way runs a process per pod, {:.2} / {:.2} ms for one and {:.0} / {:.0} ms for 100, growing with the pods. `faultctl` adds its own process start to the API's time. The first packet dropped or passed is the one sent right after the map write: no rule reload, no qdisc change, no connection reset.\n",
            a100.0, a100.1, a1.0, a1.1, i1.0, i1.1, i100.0, i100.1
        )?;
    }
    commands(&mut r.out, &lines)?;
    Ok(())
}

fn row(out: &mut String, name: &str, targets: usize, a: &Dist, l: &Dist) -> Result<()> {
    writeln!(
        out,
        "| {name} | {targets} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        a.0.len(),
        a.median(),
        a.q(0.99),
        l.median(),
        l.q(0.99)
    )?;
    Ok(())
}
