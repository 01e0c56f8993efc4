//! The main job, end to end on real packets: an inference topology (frontend, two decode
//! workers, a prefill worker, NATS) as network namespaces, the agent attached to their veths,
//! faults injected with `faultctl`, and for each fault what was asked next to what was
//! measured on real traffic. Everything it creates is removed at the end.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use fault_testkit::{
    DynamoEnv, Family, Pod, Service, ServiceNet, StreamOpts,
    probe::{TcpEchoServer, tcp_echo_roundtrip, udp_reachable, udp_stream},
    topology::{link_exists, netns_names},
};

const WAIT: Duration = Duration::from_millis(500);

fn ctl(env: &DynamoEnv, args: &[&str]) -> Result<String> {
    let out = env.agent.faultctl(args)?;
    if !out.status.success() {
        bail!(
            "faultctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn yes(b: bool) -> &'static str {
    if b { "reachable" } else { "CUT" }
}

fn path(from: &Pod, to: &Pod) -> String {
    format!("{} -> {}", from.name(), to.name())
}

/// Runs the demo with the binaries in `bin_dir`.
pub fn run(bin_dir: &Path) -> Result<()> {
    // SAFETY: single-threaded at this point; the testkit reads it to find the binaries.
    unsafe { std::env::set_var("FAULTLINE_BIN_DIR", bin_dir) };
    let (namespaces, links, bpffs) = {
        let env = DynamoEnv::start_with(&["--service-cidr", "198.19.0.0/16"])
            .context("starting the topology and the agent")?;
        let mut net = ServiceNet::new(&env.topo).context("the host's Service DNAT")?;
        let prefill_svc = net.service("vllm-prefill", &[&env.pods.prefill])?;
        demo(&env, &prefill_svc)?;
        drop(net);
        let ns: Vec<String> = env
            .topo
            .pods()
            .iter()
            .map(|p| p.netns_name().to_owned())
            .collect();
        let links: Vec<String> = env
            .topo
            .pods()
            .iter()
            .map(|p| p.host_ifname().to_owned())
            .collect();
        (ns, links, env.agent.bpffs().to_owned())
    };
    let left = netns_names();
    ensure!(
        namespaces.iter().all(|n| !left.contains(n)),
        "namespaces left behind"
    );
    ensure!(links.iter().all(|l| !link_exists(l)), "links left behind");
    ensure!(!bpffs.exists(), "pins left behind in {}", bpffs.display());
    println!(
        "\nCleaned up: agent stopped (programs, links and pins removed), namespaces and veths deleted."
    );
    Ok(())
}

fn demo(env: &DynamoEnv, prefill_svc: &Service) -> Result<()> {
    let p = &env.pods;
    let caps = env.agent.client().get_json("/v1/capabilities")?;
    println!(
        "Faultline demo on kernel {} (attach: {})",
        caps["kernel"].as_str().unwrap_or("?"),
        caps["attach_mode"].as_str().unwrap_or("?")
    );
    println!("\nPods (namespace dynamo), one network namespace each, host-side veths on a bridge:");
    for pod in [&p.frontend, &p.decode0, &p.decode1, &p.prefill, &p.nats] {
        println!(
            "  {:<16} {:<14} {:<14} veth {}",
            pod.name(),
            pod.ipv4(),
            pod.ipv6(),
            pod.host_ifname()
        );
    }
    let _nats = TcpEchoServer::start(&p.nats, Family::V4, 4222)?;
    let prefill_via = prefill_svc.through(&p.prefill);
    println!(
        "  Service vllm-prefill: ClusterIP {} -> {} (DNAT in the host, as kube-proxy does)",
        prefill_svc.vip(Family::V4),
        p.prefill.ipv4()
    );

    // 1. Partition decode -> prefill.
    println!(
        "\n[1] faultctl inject -n dynamo --pod-prefix vllm-decode --to-selector app=vllm-prefill --partition --duration 5m"
    );
    let id = ctl(
        env,
        &[
            "inject",
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode",
            "--to-selector",
            "app=vllm-prefill",
            "--partition",
            "--duration",
            "5m",
        ],
    )?;
    println!("    fault {id}: asked: decode -> prefill cut (egress), everything else untouched");
    let checks = [
        (
            path(&p.decode0, &p.prefill),
            udp_reachable(&p.decode0, &p.prefill, Family::V4, 9000, WAIT)?,
            false,
        ),
        (
            path(&p.decode1, &p.prefill) + " (IPv6)",
            udp_reachable(&p.decode1, &p.prefill, Family::V6, 9000, WAIT)?,
            false,
        ),
        (
            format!("{} -> prefill's Service", p.decode0.name()),
            udp_reachable(&p.decode0, &prefill_via, Family::V4, 9000, WAIT)?,
            false,
        ),
        (
            format!("{} -> prefill's Service", p.frontend.name()),
            udp_reachable(&p.frontend, &prefill_via, Family::V4, 9000, WAIT)?,
            true,
        ),
        (
            path(&p.prefill, &p.decode0),
            udp_reachable(&p.prefill, &p.decode0, Family::V4, 9000, WAIT)?,
            true,
        ),
        (
            path(&p.frontend, &p.prefill),
            udp_reachable(&p.frontend, &p.prefill, Family::V4, 9000, WAIT)?,
            true,
        ),
        (
            path(&p.decode0, &p.nats) + " (TCP 4222)",
            tcp_echo_roundtrip(&p.decode0, &p.nats, Family::V4, 4222, WAIT)?,
            true,
        ),
    ];
    for (what, got, want) in &checks {
        println!(
            "    measured: {what:<34} {:<10} {}",
            yes(*got),
            if got == want {
                "as asked"
            } else {
                "NOT AS ASKED"
            }
        );
    }
    ensure!(
        checks.iter().all(|(_, got, want)| got == want),
        "the partition did not do what was asked"
    );
    ctl(env, &["recover", &id])?;
    let back = udp_reachable(&p.decode0, &p.prefill, Family::V4, 9000, WAIT)?;
    println!(
        "    faultctl recover {id}: {} {}",
        path(&p.decode0, &p.prefill),
        yes(back)
    );
    ensure!(back, "traffic not restored after recover");

    // 2. Loss and corruption, measured over 20,000 datagrams each.
    let streams = StreamOpts {
        count: 20_000,
        ..Default::default()
    };
    for (flag, asked, what) in [("--loss", 30.0, "loss"), ("--corrupt", 30.0, "corruption")] {
        let pct = format!("{asked}%");
        println!(
            "\n[{}] faultctl inject -n dynamo --pod-prefix vllm-decode-0 --to-selector app=vllm-prefill {flag} {pct}",
            if what == "loss" { 2 } else { 3 }
        );
        let id = ctl(
            env,
            &[
                "inject",
                "-n",
                "dynamo",
                "--pod-prefix",
                "vllm-decode-0",
                "--to-selector",
                "app=vllm-prefill",
                flag,
                &pct,
            ],
        )?;
        let r = udp_stream(&p.decode0, &p.prefill, Family::V4, &streams)?;
        let other = udp_stream(
            &p.frontend,
            &p.prefill,
            Family::V4,
            &StreamOpts {
                count: 5_000,
                port: 40_001,
                ..Default::default()
            },
        )?;
        let f = env.agent.client().get_fault(&id)?;
        ctl(env, &["recover", &id])?;
        let measured = if what == "loss" {
            r.loss_ratio()
        } else {
            r.corrupt_ratio()
        } * 100.0;
        // 99% binomial interval around what was asked.
        let n = if what == "loss" {
            r.sent
        } else {
            r.received + r.corrupted
        } as f64;
        let half = 2.576 * (asked / 100.0 * (1.0 - asked / 100.0) / n).sqrt() * 100.0;
        println!("    asked:    {what} {asked:.1}% on decode-0 -> prefill");
        println!(
            "    measured: {what} {measured:.2}% over {} datagrams (99% interval for {asked}%: +/- {half:.2}); {r}",
            r.sent
        );
        println!(
            "    kernel counters: matched {} dropped {} corrupted {}",
            f.counters.matched, f.counters.dropped, f.counters.corrupted
        );
        println!("    frontend -> prefill meanwhile: {other}");
        ensure!(
            (measured - asked).abs() <= half.max(1.5),
            "{what} measured {measured:.2}% for {asked}% asked"
        );
        ensure!(
            other.received == other.sent && other.corrupted == 0,
            "an unaffected path was affected"
        );
    }

    // 4. NATS stays reachable when a worker is cut from everything else.
    println!(
        "\n[4] faultctl inject -n dynamo --pod-prefix vllm-decode-0 --partition   (all peers; NATS and DNS protected)"
    );
    let id = ctl(
        env,
        &[
            "inject",
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--partition",
        ],
    )?;
    println!("    fault {id}");
    let to_prefill = udp_reachable(&p.decode0, &p.prefill, Family::V4, 9000, WAIT)?;
    let to_frontend = udp_reachable(&p.decode0, &p.frontend, Family::V4, 9000, WAIT)?;
    let to_nats = tcp_echo_roundtrip(&p.decode0, &p.nats, Family::V4, 4222, WAIT)?;
    println!(
        "    measured: decode-0 -> prefill {}, -> frontend {}, -> nats:4222 {}",
        yes(to_prefill),
        yes(to_frontend),
        yes(to_nats)
    );
    ensure!(
        !to_prefill && !to_frontend && to_nats,
        "isolation with NATS kept did not hold"
    );
    let out = ctl(env, &["cleanup", "--namespace", "dynamo"])?;
    println!(
        "    faultctl cleanup --namespace dynamo: {}",
        out.replace('\n', ", ")
    );
    println!("\nFaults:");
    println!("{}", ctl(env, &["list"])?);
    Ok(())
}
