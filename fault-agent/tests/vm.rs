//! Delay, jitter, duplication and rate limits, measured on a kernel that has `sch_fq` and no
//! TCX: Debian's 6.1, in a VM under software emulation (`cargo xtask test` boots it and runs
//! this suite inside; the VM shares this machine's filesystem). On that kernel the agent also
//! takes the netlink/clsact attach path. Emulation is slow and noisy: tolerances are in
//! milliseconds, and every figure is compared with a baseline measured in the same run.
mod common;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use common::*;
use fault_testkit::{
    AgentProcess, DynamoEnv, Family, Mode, Pod, ServiceNet, StreamOpts, Topology,
    probe::{UdpEchoServer, udp_echo_stream, udp_stream},
    serial,
};

/// One-way latencies (ms) of a slow UDP stream: `count` datagrams, `pps` per second.
fn latencies_ms(from: &Pod, to: &Pod, count: u64, pps: u64, port: u16) -> Vec<f64> {
    let opts = StreamOpts {
        count,
        rate_pps: pps,
        port,
        drain: Duration::from_millis(1500),
        ..Default::default()
    };
    let r = udp_stream(from, to, Family::V4, &opts).unwrap();
    assert_eq!(r.received, r.sent, "slow streams must arrive whole: {r}");
    let mut v: Vec<f64> = r
        .arrivals
        .iter()
        .map(|a| a.latency_ns() as f64 / 1e6)
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Round-trip times (ms) of a slow UDP stream to an echo server (which must run at `to`).
fn round_trips_ms(from: &Pod, to: &Pod, count: u64, pps: u64, port: u16) -> Vec<f64> {
    let opts = StreamOpts {
        count,
        rate_pps: pps,
        port,
        drain: Duration::from_millis(1500),
        ..Default::default()
    };
    let r = udp_echo_stream(from, to, Family::V4, &opts).unwrap();
    assert_eq!(
        r.received, r.sent,
        "slow echo streams must come back whole: {r}"
    );
    let mut v: Vec<f64> = r
        .arrivals
        .iter()
        .map(|a| a.latency_ns() as f64 / 1e6)
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn tc_qdiscs(pod: &Pod) -> String {
    let host = std::process::Command::new("tc")
        .args(["qdisc", "show", "dev", pod.host_ifname()])
        .output()
        .unwrap();
    let inside = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            pod.netns_name(),
            "tc",
            "qdisc",
            "show",
            "dev",
            "eth0",
        ])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&host.stdout),
        String::from_utf8_lossy(&inside.stdout)
    )
}

/// Goodput of one TCP connection `from` -> `to:port` over `secs` seconds, in bit/s.
fn tcp_goodput_bps(from: &Pod, to: &Pod, port: u16, secs: f64) -> f64 {
    let listener = to
        .run(move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    let counter = std::thread::spawn(move || -> (u64, f64) {
        let (mut c, _) = listener.accept().unwrap();
        let start = Instant::now();
        let mut buf = vec![0u8; 65536];
        let mut total = 0u64;
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        (total, start.elapsed().as_secs_f64())
    });
    let addr = SocketAddr::new(to.ip(Family::V4), port);
    let mut s: TcpStream = from
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    let chunk = vec![0x5au8; 16 * 1024];
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        if s.write_all(&chunk).is_err() {
            break;
        }
    }
    drop(s);
    let (bytes, took) = counter.join().unwrap();
    bytes as f64 * 8.0 / took
}

fn needs_fq(env: &DynamoEnv) {
    let caps = env.agent.client().get_json("/v1/capabilities").unwrap();
    assert_eq!(
        caps["sch_fq"], true,
        "this suite runs on a kernel with sch_fq (the VM): {caps}"
    );
    eprintln!("kernel {} attach {}", caps["kernel"], caps["attach_mode"]);
}

#[test]
#[ignore = "needs a kernel with sch_fq: run by `cargo xtask test` inside the 6.1 VM"]
fn delay_50ms_each_direction_leaves_other_paths_alone() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    needs_fq(&env);
    let p = &env.pods;
    let before_qdiscs = (tc_qdiscs(&p.decode0), tc_qdiscs(&p.prefill));
    for (direction, target, peer_sel) in [
        ("egress", "vllm-decode-0", "app=vllm-prefill"),
        ("ingress", "vllm-prefill-0", "app=vllm-decode"),
    ] {
        let base = latencies_ms(&p.decode0, &p.prefill, 100, 50, 42_000);
        let base_other = latencies_ms(&p.decode0, &p.frontend, 100, 50, 42_001);
        let id = inject(
            &env.agent,
            &[
                "-n",
                "dynamo",
                "--pod-prefix",
                target,
                "--to-selector",
                peer_sel,
                "--direction",
                direction,
                "--delay",
                "50ms",
            ],
        );
        let got = latencies_ms(&p.decode0, &p.prefill, 100, 50, 42_002);
        let other = latencies_ms(&p.decode0, &p.frontend, 100, 50, 42_003);
        let f = fault(&env.agent, &id);
        ctl(&env.agent, &["recover", &id]);
        let added = pct(&got, 0.5) - pct(&base, 0.5);
        let other_shift = pct(&other, 0.5) - pct(&base_other, 0.5);
        eprintln!(
            "delay 50ms {direction}: baseline p50 {:.2} ms, faulted p50 {:.2} ms (added {added:.2} ms), other path p50 {:.2} -> {:.2} ms; counters {:?}",
            pct(&base, 0.5),
            pct(&got, 0.5),
            pct(&base_other, 0.5),
            pct(&other, 0.5),
            f.counters
        );
        assert!(
            (added - 50.0).abs() <= 5.0,
            "{direction}: added {added:.2} ms"
        );
        assert!(
            other_shift.abs() <= 2.0,
            "{direction}: the other path moved {other_shift:.2} ms"
        );
        assert!(f.counters.delayed > 0);
    }
    assert_eq!(
        (tc_qdiscs(&p.decode0), tc_qdiscs(&p.prefill)),
        before_qdiscs,
        "qdiscs restored exactly"
    );
}

#[test]
#[ignore = "needs a kernel with sch_fq: run by `cargo xtask test` inside the 6.1 VM"]
fn jitter_is_uniform_and_keeps_packets_in_order() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    needs_fq(&env);
    let p = &env.pods;
    let base = latencies_ms(&p.decode0, &p.prefill, 100, 20, 42_010);
    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--to-selector",
            "app=vllm-prefill",
            "--delay",
            "50ms",
            "--jitter",
            "20ms",
        ],
    );
    let opts = StreamOpts {
        count: 400,
        rate_pps: 20,
        port: 42_011,
        drain: Duration::from_millis(1500),
        ..Default::default()
    };
    let r = udp_stream(&p.decode0, &p.prefill, Family::V4, &opts).unwrap();
    // 5 ms apart, well within the 40 ms spread: fq alone (Linux >= 5.5) would send many of
    // these out of order; the program gives no packet an earlier time than its predecessor's.
    let dense = StreamOpts {
        count: 400,
        rate_pps: 200,
        port: 42_012,
        drain: Duration::from_millis(1500),
        ..Default::default()
    };
    let d = udp_stream(&p.decode0, &p.prefill, Family::V4, &dense).unwrap();
    ctl(&env.agent, &["recover", &id]);
    assert_eq!(r.received, r.sent, "{r}");
    assert_eq!(d.received, d.sent, "{d}");
    let out_of_order = d
        .arrivals
        .windows(2)
        .filter(|w| w[0].seq > w[1].seq)
        .count();
    let dense_min = d
        .arrivals
        .iter()
        .map(|a| a.latency_ns() as f64 / 1e6 - pct(&base, 0.5))
        .fold(f64::INFINITY, f64::min);
    eprintln!(
        "delay 50ms jitter 20ms at 200/s: {out_of_order} of {} datagrams arrived before their predecessor; min added {dense_min:.1} ms",
        d.received
    );
    // Before the program kept departures in order, 147 of 400 arrived before their
    // predecessor here; after, 0 or 1: past fq, two packets released by fq's timer on two CPUs
    // within microseconds can still swap in the CPUs' backlog queues (veth), rarely.
    assert!(
        out_of_order <= 4,
        "{out_of_order} of 400 reordered at 200/s (at most 1% allowed)"
    );
    assert!(dense_min >= 28.0, "min {dense_min:.1} ms at 200/s");
    let in_order = r
        .arrivals
        .windows(2)
        .filter(|w| w[0].seq > w[1].seq)
        .count()
        <= 1;
    let offset = pct(&base, 0.5);
    let mut lat: Vec<f64> = r
        .arrivals
        .iter()
        .map(|a| a.latency_ns() as f64 / 1e6 - offset)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |x| pct(&lat, x);
    eprintln!(
        "delay 50ms jitter 20ms over {} datagrams at 20/s (added latency, ms): min {:.1} p5 {:.1} p25 {:.1} p50 {:.1} p75 {:.1} p95 {:.1} max {:.1}; in order: {in_order}",
        lat.len(),
        q(0.0),
        q(0.05),
        q(0.25),
        q(0.5),
        q(0.75),
        q(0.95),
        q(1.0)
    );
    assert!(
        in_order,
        "no reordering (one swap past fq allowed, as above)"
    );
    // Uniform on [30, 70]: quartiles at 40, 50, 60; nothing outside (emulation adds a little:
    // on a quiet machine p95 69.7 and max 78.3 ms, where uniform gives 68 and 70; CI's busier
    // machine once went past the tighter bounds of an earlier version of this test).
    for (p_, want) in [(0.25, 40.0), (0.5, 50.0), (0.75, 60.0)] {
        assert!(
            (q(p_) - want).abs() <= 5.0,
            "p{} = {:.1} ms, want {want} +/- 5",
            p_ * 100.0,
            q(p_)
        );
    }
    // Never early (fq holds each packet until its stamp); late only by the emulated VM's timer
    // and scheduling hiccups, which hit single packets: the top 5% stays within the range.
    assert!(
        q(0.0) >= 28.0,
        "min {:.1} ms: a packet left before 50 - 20 ms",
        q(0.0)
    );
    assert!(
        q(0.95) <= 76.0 && q(1.0) <= 150.0,
        "p95 {:.1} ms, max {:.1} ms",
        q(0.95),
        q(1.0)
    );
}

#[test]
#[ignore = "needs a kernel with sch_fq: run by `cargo xtask test` inside the 6.1 VM"]
fn duplicate_50_percent_counted_at_the_receiver() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    needs_fq(&env);
    let p = &env.pods;
    for direction in ["egress", "ingress"] {
        let (target, peers) = if direction == "egress" {
            ("vllm-decode-0", "app=vllm-prefill")
        } else {
            ("vllm-prefill-0", "app=vllm-decode")
        };
        let id = inject(
            &env.agent,
            &[
                "-n",
                "dynamo",
                "--pod-prefix",
                target,
                "--to-selector",
                peers,
                "--direction",
                direction,
                "--duplicate",
                "50%",
            ],
        );
        let opts = StreamOpts {
            count: 5_000,
            rate_pps: 2_000,
            port: 42_020,
            ..Default::default()
        };
        let r = udp_stream(&p.decode0, &p.prefill, Family::V4, &opts).unwrap();
        let f = fault(&env.agent, &id);
        ctl(&env.agent, &["recover", &id]);
        let share = r.duplicates as f64 * 100.0 / r.received as f64;
        eprintln!(
            "duplicate 50% {direction}: {r}; duplicated share {share:.2}%; counters {:?}",
            f.counters
        );
        assert_eq!(r.received, r.sent);
        assert!((47.0..=53.0).contains(&share), "{direction}: {share:.2}%");
        assert_eq!(
            f.counters.duplicated, r.duplicates,
            "one copy per duplicated packet, no loop"
        );
    }
}

#[test]
#[ignore = "needs a kernel with sch_fq: run by `cargo xtask test` inside the 6.1 VM"]
fn rate_1mbit_on_a_tcp_flow_leaves_other_flows_alone() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    needs_fq(&env);
    let p = &env.pods;
    let before_qdiscs = tc_qdiscs(&p.decode0);
    let id = inject(
        &env.agent,
        &[
            "-n",
            "dynamo",
            "--pod-prefix",
            "vllm-decode-0",
            "--to-selector",
            "app=vllm-prefill",
            "--protocol",
            "tcp",
            "--rate",
            "1mbit",
        ],
    );
    let limited = tcp_goodput_bps(&p.decode0, &p.prefill, 43_000, 6.0);
    let other = tcp_goodput_bps(&p.frontend, &p.prefill, 43_001, 3.0);
    let f = fault(&env.agent, &id);
    ctl(&env.agent, &["recover", &id]);
    eprintln!(
        "rate 1mbit: limited flow {:.3} Mbit/s, other flow {:.1} Mbit/s; counters {:?}",
        limited / 1e6,
        other / 1e6,
        f.counters
    );
    assert!(
        (limited / 1e6 - 1.0).abs() <= 0.15,
        "goodput {:.3} Mbit/s",
        limited / 1e6
    );
    assert!(
        other > 5e6,
        "another flow must not be limited: {:.1} Mbit/s",
        other / 1e6
    );
    assert_eq!(
        tc_qdiscs(&p.decode0),
        before_qdiscs,
        "qdiscs restored exactly"
    );
}

#[test]
#[ignore = "needs a kernel with sch_fq: run by `cargo xtask test` inside the 6.1 VM"]
fn added_latency_error_at_1_10_100_1000ms() {
    let _s = serial();
    let env = DynamoEnv::start().unwrap();
    needs_fq(&env);
    let p = &env.pods;
    let base = latencies_ms(&p.decode0, &p.prefill, 60, 30, 42_030);
    let mut port = 42_031;
    for ms in [1u32, 10, 100, 1000] {
        let id = inject(
            &env.agent,
            &[
                "-n",
                "dynamo",
                "--pod-prefix",
                "vllm-decode-0",
                "--to-selector",
                "app=vllm-prefill",
                "--delay",
                &format!("{ms}ms"),
            ],
        );
        let got = latencies_ms(&p.decode0, &p.prefill, 60, 30, port);
        port += 1;
        ctl(&env.agent, &["recover", &id]);
        let added = pct(&got, 0.5) - pct(&base, 0.5);
        let error = added - ms as f64;
        eprintln!(
            "delay {ms} ms: added p50 {added:.3} ms (error {error:+.3} ms), p5..p95 of the faulted path {:.3}..{:.3} ms",
            pct(&got, 0.05),
            pct(&got, 0.95)
        );
        assert!(
            error.abs() <= 2.0 + ms as f64 * 0.02,
            "delay {ms} ms: error {error:+.3} ms"
        );
    }
}

/// Delay holds through a Service (the host DNATs a VIP to prefill): decode's egress delay is
/// applied on prefill's veth after the DNAT (fq there), decode's ingress delay on the replies
/// of its own requests is applied on prefill's interface before the un-NAT; frontend's
/// traffic through the same Service is not delayed.
#[test]
#[ignore = "needs a kernel with sch_fq: run by `cargo xtask test` inside the 6.1 VM"]
fn delay_holds_through_a_service() {
    let _s = serial();
    let mut topo = Topology::with_mode("vm-svc", Mode::Bridged).unwrap();
    let p = topo.dynamo().unwrap();
    let mut net = ServiceNet::new(&topo).unwrap();
    let svc = net.service("prefill", &[&p.prefill]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.yaml");
    topo.write_inventory(&inventory).unwrap();
    let agent = AgentProcess::start_with(&inventory, &["--service-cidr", "198.19.0.0/16"]).unwrap();
    let via = svc.through(&p.prefill);
    let delay = |direction: &str| {
        inject(
            &agent,
            &[
                "-n",
                "dynamo",
                "--pod-prefix",
                "vllm-decode-0",
                "--to-selector",
                "app=vllm-prefill",
                "--direction",
                direction,
                "--delay",
                "50ms",
            ],
        )
    };

    let base = latencies_ms(&p.decode0, &via, 100, 50, 42_100);
    let base_other = latencies_ms(&p.frontend, &via, 100, 50, 42_101);
    let id = delay("egress");
    let got = latencies_ms(&p.decode0, &via, 100, 50, 42_102);
    let other = latencies_ms(&p.frontend, &via, 100, 50, 42_103);
    let counters = fault(&agent, &id).counters;
    ctl(&agent, &["recover", &id]);
    let added = pct(&got, 0.5) - pct(&base, 0.5);
    let other_shift = pct(&other, 0.5) - pct(&base_other, 0.5);
    eprintln!(
        "delay 50ms through a ClusterIP, egress: added {added:.2} ms, frontend's path moved {other_shift:.2} ms; {counters:?}"
    );
    assert!(
        (added - 50.0).abs() <= 5.0,
        "egress through the Service: added {added:.2} ms"
    );
    assert!(
        other_shift.abs() <= 2.0,
        "frontend's path moved {other_shift:.2} ms"
    );
    assert!(counters.delayed > 0);

    let _echo = UdpEchoServer::start(&p.prefill, Family::V4, 42_104).unwrap();
    let base = round_trips_ms(&p.decode0, &via, 100, 50, 42_104);
    let id = delay("ingress");
    let got = round_trips_ms(&p.decode0, &via, 100, 50, 42_104);
    ctl(&agent, &["recover", &id]);
    let added = pct(&got, 0.5) - pct(&base, 0.5);
    eprintln!(
        "delay 50ms through a ClusterIP, ingress (replies): added {added:.2} ms to the round trip"
    );
    assert!(
        (added - 50.0).abs() <= 5.0,
        "ingress through the Service: added {added:.2} ms"
    );
    drop(agent);
    drop(net);
}

/// The fq a delay needs is recorded before it is installed (and only an fq with the agent's
/// handle is ever deleted): an agent killed right after installing it, before its final
/// records, leaves nothing once restarted; one killed with the delay acting leaves nothing
/// after `fault-agent uninstall`.
#[test]
#[ignore = "needs a kernel with sch_fq: run by `cargo xtask test` inside the 6.1 VM"]
fn fq_of_an_agent_killed_while_installing_it_is_removed() {
    let _s = serial();
    let mut env = DynamoEnv::start().unwrap();
    needs_fq(&env);
    let p = env.pods.clone();
    let before = (tc_qdiscs(&p.decode0), tc_qdiscs(&p.prefill));
    let delay = [
        "-n",
        "dynamo",
        "--pod-prefix",
        "vllm-decode-0",
        "--to-selector",
        "app=vllm-prefill",
        "--direction",
        "both",
        "--delay",
        "50ms",
    ];
    let mut args = vec!["inject"];
    args.extend_from_slice(&delay);

    env.agent.kill().unwrap();
    env.agent
        .set_env("FAULTLINE_FAILPOINTS", Some("create/fq.installed:1"));
    env.agent.restart().unwrap();
    let out = env.agent.faultctl(&args).unwrap();
    assert!(!out.status.success(), "the agent dies in the create");
    let status = env.agent.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.is_some(), "{}", env.agent.log_tail(20));
    let fq = |pod: &Pod| tc_qdiscs(pod).contains("qdisc fq ");
    assert!(
        fq(&p.decode0) || fq(&p.prefill),
        "an fq was installed before the kill"
    );
    env.agent.set_env("FAULTLINE_FAILPOINTS", None);
    env.agent.restart().unwrap();
    let live = env.agent.client().list(None).unwrap().faults;
    assert!(live.iter().all(|f| !f.state.is_live()), "{live:?}");
    assert_eq!(
        (tc_qdiscs(&p.decode0), tc_qdiscs(&p.prefill)),
        before,
        "the orphan fq went at the restart"
    );

    inject(&env.agent, &delay);
    assert!(fq(&p.decode0), "fq for the delay");
    env.agent.kill().unwrap();
    let out = env.agent.uninstall().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for pod in [&p.decode0, &p.prefill] {
        let q = tc_qdiscs(pod);
        assert!(
            !q.contains("qdisc fq ") && !q.contains("clsact"),
            "uninstall removed the fq and clsact: {q}"
        );
    }
    env.agent.restart().unwrap();
    ctl(&env.agent, &["cleanup", "--all"]);
}
