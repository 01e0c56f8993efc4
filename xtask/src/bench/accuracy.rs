//! 3. Accuracy: loss and corruption at 1, 10, 30, 50 and 90% over 100,000 datagrams each,
//!    measured at the receiver, against the binomial 99% interval; delay error at 1, 10, 100 and
//!    1000 ms on Debian's 6.1 kernel (the VM: this kernel has no sch_fq).
use std::fmt::Write as _;

use anyhow::Result;
use fault_testkit::{AgentProcess, Family, StreamOpts, Topology, probe::udp_stream};

use super::{Options, Report, commands, inject_a_to_b};

pub fn run(r: &mut Report, opts: &Options) -> Result<()> {
    let mut topo = Topology::named("bench-accuracy")?;
    let a = topo.add_pod("bench", "a-0", &[("app", "a")])?;
    let b = topo.add_pod("bench", "b-0", &[("app", "b")])?;
    let dir = tempfile::tempdir()?;
    let inventory = dir.path().join("inventory.yaml");
    topo.write_inventory(&inventory)?;
    let agent = AgentProcess::start(&inventory)?;
    let count: u64 = if opts.quick { 20_000 } else { 100_000 };
    writeln!(r.out, "## 3. Accuracy\n")?;
    writeln!(
        r.out,
        "{count} datagrams of 64 bytes at 20,000/s from one pod to another for each level; measured at the receiver. The 99% interval is the binomial one for the level asked: `p +/- 2.576 sqrt(p(1-p)/n)`.\n"
    )?;
    writeln!(
        r.out,
        "| fault | asked % | measured % | 99% interval | within | kernel counter |"
    )?;
    writeln!(r.out, "| --- | --- | --- | --- | --- | --- |")?;
    let mut port = 45_000;
    let (mut loss_rows, mut loss_all_within) = (Vec::new(), true);
    for (flag, what) in [("--loss", "loss"), ("--corrupt", "corruption")] {
        for level in [1.0f64, 10.0, 30.0, 50.0, 90.0] {
            let out_ = agent.faultctl(&inject_a_to_b(&[flag, &format!("{level}%")]))?;
            anyhow::ensure!(
                out_.status.success(),
                "{}",
                String::from_utf8_lossy(&out_.stderr)
            );
            let id = String::from_utf8_lossy(&out_.stdout).trim().to_owned();
            let rep = udp_stream(
                &a,
                &b,
                Family::V4,
                &StreamOpts {
                    count,
                    port,
                    ..Default::default()
                },
            )?;
            port += 1;
            let f = agent.client().get_fault(&id)?;
            agent.client().recover(&id)?;
            let (measured, n, counter) = if what == "loss" {
                (
                    rep.loss_ratio() * 100.0,
                    rep.sent as f64,
                    f.counters.dropped,
                )
            } else {
                (
                    rep.corrupt_ratio() * 100.0,
                    (rep.received + rep.corrupted) as f64,
                    f.counters.corrupted,
                )
            };
            let p = level / 100.0;
            let half = 2.576 * (p * (1.0 - p) / n).sqrt() * 100.0;
            let within = (measured - level).abs() <= half;
            if what == "loss" {
                loss_rows.push(format!("{level}%: {measured:.2}%"));
                loss_all_within &= within;
            }
            writeln!(
                r.out,
                "| {what} | {level} | {measured:.3} | {:.3}-{:.3} | {} | {counter} |",
                level - half,
                level + half,
                if within { "yes" } else { "**no**" }
            )?;
        }
    }
    let lines = vec![
        format!("# the agent: {}", agent.command_line()),
        agent.faultctl_line(&inject_a_to_b(&["--loss", "<level>%"])),
        "# or --corrupt <level>% ; then: the probe (fault-testkit's udp_stream) sends the datagrams from a-0's netns to b-0's, then DELETE /v1/faults/<id>".into(),
    ];
    drop(agent);
    writeln!(r.out)?;
    writeln!(
        r.out,
        "Reading: each packet draws `bpf_get_prandom_u32()` against the level in parts per million, independently (no correlation asked), so the measured share is binomial around the level and the interval is the right yardstick; the kernel counter is the agent's own count of what it dropped or corrupted, and it matches the receiver's count. Corruption flips one bit of the payload and fixes the checksums, so the receiver sees the damage (netem leaves a bad checksum the receiving stack drops, which makes corruption look like loss).\n"
    )?;
    r.target(
        "loss within the binomial 99% interval at every level",
        loss_rows.join(", "),
        loss_all_within,
        "a level outside its 99% interval happens by chance about once in 100 levels; repeated outside one points at the random source or at losses elsewhere on the path (the receiver's socket buffer at high rates)",
    );
    commands(&mut r.out, &lines)?;
    if opts.with_vm {
        delay_in_vm(&mut r.out)?;
    } else {
        writeln!(
            r.out,
            "Delay error: not measured in this run (`--no-vm`).\n"
        )?;
    }
    Ok(())
}

/// Runs the VM suite's `added_latency_error_at_1_10_100_1000ms` and reports its lines.
fn delay_in_vm(out: &mut String) -> Result<()> {
    let exe = crate::test::test_executable("fault-agent", "vm")?;
    let bin = crate::cargo::target_dir().join("release");
    let inside = format!(
        "FAULTLINE_BIN_DIR={} {} --ignored --test-threads=1 --nocapture added_latency",
        bin.display(),
        exe.display()
    );
    let log = crate::vm::capture_inside(crate::vm::Kernel::Debian61, &inside)?;
    writeln!(
        out,
        "Delay error on Debian's 6.1 kernel (VM under software emulation, netlink attach, fq): 60 datagrams at 30/s, median one-way latency minus the median without the fault:\n"
    )?;
    writeln!(
        out,
        "| delay asked | added (median) | error | p5-p95 of the faulted path |"
    )?;
    writeln!(out, "| --- | --- | --- | --- |")?;
    let mut rows = 0;
    for line in log
        .lines()
        .filter(|l| l.starts_with("delay ") && l.contains("added p50"))
    {
        // "delay 10 ms: added p50 10.123 ms (error +0.123 ms), p5..p95 of the faulted path a..b ms"
        let asked = line.split_whitespace().nth(1).unwrap_or("?");
        let added = line
            .split("added p50 ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap_or("?");
        let error = line
            .split("(error ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap_or("?");
        let spread = line.split("faulted path ").nth(1).unwrap_or("?");
        writeln!(out, "| {asked} ms | {added} ms | {error} ms | {spread} |")?;
        rows += 1;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Reading: the program stamps each packet's departure time (`skb->tstamp`, earliest departure time) and `fq` holds it until then, so the error is the qdisc's timer slack plus the VM's: under software emulation (no KVM) timers fire late by a fraction of a millisecond to a few. The delay is a minimum: `fq` never releases a packet before its stamp. On this machine's kernel (no `sch_fq`) the agent refuses delay instead of pretending.\n"
    )?;
    commands(
        out,
        &[
            format!("cargo xtask vm '{inside}'"),
            "# inside the VM the test (fault-agent/tests/vm.rs) runs, for d in 1 10 100 1000: faultctl inject -n dynamo --pod-prefix vllm-decode-0 --to-selector app=vllm-prefill --delay <d>ms ; the probe ; faultctl recover <id>".into(),
        ],
    )?;
    anyhow::ensure!(
        rows == 4,
        "the VM run reported {rows} delays, not 4:\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}
