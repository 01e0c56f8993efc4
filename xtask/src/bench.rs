//! `cargo xtask bench`: measurements written to BENCHMARKS.md. Each figure is measured in the
//! same run as its baseline.
//!
//! Section "datapath cost": the kernel's own accounting of our programs
//! (`kernel.bpf_stats_enabled=1`: `run_time_ns / run_cnt` of each program) while a UDP stream
//! crosses one pod pair, with no fault, with rules for other pods, and with the stream's own
//! pair behind a 1,000-prefix rule table.
use std::{fmt::Write as _, fs, path::Path, time::Instant};

use anyhow::{Context as _, Result};
use fault_api::FaultSpec;
use fault_testkit::{DynamoEnv, Family, StreamOpts, probe::udp_stream};

/// Per-program run time and count, from the agent's capabilities endpoint.
fn program_stats(env: &DynamoEnv) -> Result<Vec<(String, u64, u64)>> {
    let caps = env.agent.client().get_json("/v1/capabilities")?;
    Ok(caps["programs"]
        .as_array()
        .context("programs")?
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("?").to_owned(),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_count"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// /32 prefixes in 100.64.0.0/10 (never a pod of ours).
fn cidrs(n: usize) -> Vec<ipnet::IpNet> {
    (0..n)
        .map(|i| {
            let a = 0x6440_0000u32 + i as u32;
            ipnet::IpNet::from(std::net::IpAddr::V4(std::net::Ipv4Addr::from(a)))
        })
        .collect()
}

struct CostRow {
    scenario: String,
    packets: u64,
    ns: Vec<(String, f64)>,
}

fn measure(env: &DynamoEnv, scenario: &str) -> Result<CostRow> {
    let p = &env.pods;
    // Warm up (ARP, caches), then measure.
    udp_stream(&p.decode0, &p.prefill, Family::V4, &StreamOpts { count: 2_000, ..Default::default() })?;
    let before = program_stats(env)?;
    let opts = StreamOpts { count: 100_000, rate_pps: 50_000, ..Default::default() };
    let r = udp_stream(&p.decode0, &p.prefill, Family::V4, &opts)?;
    let after = program_stats(env)?;
    let ns = before
        .iter()
        .zip(&after)
        .map(|((name, t0, c0), (_, t1, c1))| (name.clone(), (t1 - t0) as f64 / (c1 - c0).max(1) as f64))
        .collect();
    Ok(CostRow { scenario: scenario.into(), packets: r.sent, ns })
}

fn datapath_cost(out: &mut String) -> Result<()> {
    let stats_path = "/proc/sys/kernel/bpf_stats_enabled";
    let old = fs::read_to_string(stats_path).unwrap_or_else(|_| "0".into());
    fs::write(stats_path, "1").context("enabling kernel.bpf_stats_enabled")?;
    let result = (|| -> Result<Vec<CostRow>> {
        let env = DynamoEnv::start()?;
        let client = env.agent.client();
        let mut rows = vec![measure(&env, "attached, no fault")?];
        for n in [1_000usize, 10_000] {
            let mut spec = FaultSpec::new("dynamo");
            spec.pod_prefix = Some("frontend".into());
            spec.to_cidrs = cidrs(n);
            spec.partition = Some(fault_api::PartitionMode::Packets);
            let f = client.create(&spec)?;
            rows.push(measure(&env, &format!("{n} rules for another pod"))?);
            client.recover(&f.id)?;
        }
        let mut spec = FaultSpec::new("dynamo");
        spec.pod_prefix = Some("vllm-decode-0".into());
        let mut peers = cidrs(999);
        peers.push(ipnet::IpNet::from(env.pods.prefill.ip(Family::V4)));
        spec.to_cidrs = peers;
        spec.loss_percent = Some("0.0001".parse().map_err(anyhow::Error::msg)?);
        let f = client.create(&spec)?;
        rows.push(measure(&env, "1,000 rules on this pod, the stream matches one (loss 1 ppm)")?);
        client.recover(&f.id)?;
        Ok(rows)
    })();
    let _ = fs::write(stats_path, old.trim());
    let rows = result?;
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    writeln!(out, "## Datapath cost per packet\n")?;
    writeln!(out, "Kernel {kernel}. The kernel's own accounting (`kernel.bpf_stats_enabled=1`): run time / runs of each program while 100,000 UDP datagrams (64-byte payload, 50,000/s) go from one pod to another; `fl_host_ingress` runs on the sender's host veth, `fl_host_egress` on the receiver's.\n")?;
    writeln!(out, "| scenario | datagrams | fl_host_ingress ns/run | fl_host_egress ns/run |")?;
    writeln!(out, "| --- | --- | --- | --- |")?;
    for r in &rows {
        let get = |n: &str| r.ns.iter().find(|(x, _)| x == n).map_or(f64::NAN, |(_, v)| *v);
        writeln!(out, "| {} | {} | {:.1} | {:.1} |", r.scenario, r.packets, get("fl_host_ingress"), get("fl_host_egress"))?;
    }
    writeln!(out)?;
    Ok(())
}

/// Runs the benchmarks and writes `file`.
pub fn run(bin_dir: &Path, file: &Path) -> Result<()> {
    // SAFETY: single-threaded at this point; the testkit reads it to find the binaries.
    unsafe { std::env::set_var("FAULTLINE_BIN_DIR", bin_dir) };
    let started = Instant::now();
    let mut out = String::new();
    writeln!(out, "# Faultline benchmarks\n")?;
    writeln!(out, "Written by `cargo xtask bench` on {} ({} CPUs). Release build.\n", jiff::Timestamp::now(), std::thread::available_parallelism().map_or(0, |n| n.get()))?;
    datapath_cost(&mut out)?;
    writeln!(out, "Took {:.0} s.", started.elapsed().as_secs_f64())?;
    fs::write(file, &out).with_context(|| format!("writing {}", file.display()))?;
    println!("{out}");
    Ok(())
}
