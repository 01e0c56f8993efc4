//! 5. Expiry precision: how late after its deadline a fault stops acting, with the agent alive
//!    and with the agent killed (SIGKILL) right after creating it: the kernel program checks each
//!    fault's deadline itself (`bpf_ktime_get_boot_ns`).
use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result};
use fault_testkit::{
    AgentProcess, Family, StreamOpts, Topology, boottime_ns, probe::udp_stream_background,
};

use super::{Dist, Options, Report, commands, inject_a_to_b};

/// The fault each cycle injects: a 1 s partition from a-0 to the pods labelled app=b.
const PARTITION_1S: &[&str] = &["--partition", "--duration", "1s"];

pub fn run(r: &mut Report, opts: &Options) -> Result<()> {
    let mut topo = Topology::named("bench-expiry")?;
    let a = topo.add_pod("bench", "a-0", &[("app", "a")])?;
    let b = topo.add_pod("bench", "b-0", &[("app", "b")])?;
    let dir = tempfile::tempdir()?;
    let inventory = dir.path().join("inventory.yaml");
    topo.write_inventory(&inventory)?;
    let cycles = if opts.quick { 5 } else { 20 };
    writeln!(r.out, "## 5. Expiry precision\n")?;
    writeln!(
        r.out,
        "A 1 s partition on a 20,000 datagram/s stream; lateness = send time of the first datagram through after the deadline, minus the deadline (negative: the stream's 50 us resolution and the placing of the wall-clock expiry on the boottime axis). {cycles} faults each way.\n"
    )?;
    writeln!(
        r.out,
        "| agent | faults | late p50 ms | late p99 ms | late max ms |"
    )?;
    writeln!(r.out, "| --- | --- | --- | --- | --- |")?;
    let mut lines = Vec::new();
    for killed in [false, true] {
        let mut late = Vec::new();
        let mut agent = AgentProcess::start(&inventory)?;
        if !killed {
            lines.push(format!("# the agent: {}", agent.command_line()));
            lines.push(agent.faultctl_line(&inject_a_to_b(PARTITION_1S)));
            lines.push("# killed: kill -KILL <agent pid> right after the inject returns; before the next fault the agent is uninstalled (fault-agent uninstall) and started again".into());
        }
        for _ in 0..cycles {
            if killed && agent.pid().is_none() {
                agent.uninstall()?;
                agent.restart()?;
            }
            let opts = StreamOpts {
                count: u64::MAX,
                rate_pps: 20_000,
                port: 46_000,
                ..Default::default()
            };
            let stream = udp_stream_background(&a, &b, Family::V4, &opts)?;
            std::thread::sleep(Duration::from_millis(50));
            let out_ = agent.faultctl(&inject_a_to_b(PARTITION_1S))?;
            anyhow::ensure!(
                out_.status.success(),
                "{}",
                String::from_utf8_lossy(&out_.stderr)
            );
            let id = String::from_utf8_lossy(&out_.stdout).trim().to_owned();
            let f = agent.client().get_fault(&id)?;
            let (wall, boot) = (jiff::Timestamp::now(), boottime_ns());
            let deadline = (boot as i128 + f.expires_at.duration_since(wall).as_nanos()) as u64;
            if killed {
                agent.kill()?;
            }
            std::thread::sleep(Duration::from_millis(1300));
            let r = stream.stop()?;
            let arrived = r.arrived();
            let first = r
                .send_ns
                .iter()
                .enumerate()
                .find(|(i, t)| {
                    **t + 200_000_000 >= deadline
                        && arrived[*i]
                        && **t >= deadline.saturating_sub(200_000_000)
                })
                .map(|(_, t)| *t)
                .context("no datagram after the deadline")?;
            late.push((first as f64 - deadline as f64) / 1e6);
        }
        let d = Dist(late);
        writeln!(
            r.out,
            "| {} | {} | {:.2} | {:.2} | {:.2} |",
            if killed { "killed (SIGKILL)" } else { "alive" },
            d.0.len(),
            d.median(),
            d.q(0.99),
            d.max()
        )?;
    }
    writeln!(r.out)?;
    writeln!(
        r.out,
        "Reading: a fault's deadline is in the kernel map with the fault (boot-time nanoseconds), and the program stops applying it at the first packet past the deadline, so the agent being alive or killed makes no difference; the agent's own timer only removes the spent entries afterwards. Chaos Mesh and Litmus lift a fault from a userspace process: if that process dies, the rules stay in the kernel until it, or someone, comes back to remove them.\n"
    )?;
    commands(&mut r.out, &lines)?;
    Ok(())
}
