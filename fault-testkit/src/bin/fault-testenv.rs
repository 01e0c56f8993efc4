//! `fault-testenv`: the testkit for suites written in other languages (the Python client's
//! pytest suite), so they reuse the same topology and probes instead of copies.
//!
//! - `fault-testenv up --ready-file F`: builds the inference topology, starts an agent, starts
//!   echo servers (TCP 8000 on every pod, TCP 4222 on NATS, UDP 9100 on every pod), writes
//!   `F` (JSON: `api_url`, `pods: {name: {namespace, netns, ipv4, ipv6}}`) and runs until
//!   SIGTERM/SIGINT, then removes everything.
//! - `fault-testenv probe tcp|tcp-echo|udp-echo|udp-stream ...`: one measurement, printed as JSON.
//! - `fault-testenv serve [--tcp PORT].. [--udp PORT]..`: echo servers in the current network
//!   namespace (IPv4 and IPv6) until SIGTERM/SIGINT; what the node suite's workload pods run.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use fault_testkit::{
    DynamoEnv, Family, Pod, StreamOpts,
    probe::{
        TcpEchoServer, UdpEchoServer, tcp_connect, tcp_echo_roundtrip, udp_echo_roundtrip,
        udp_stream,
    },
};
use serde_json::json;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the topology and an agent; run until SIGTERM.
    Up {
        #[arg(long)]
        ready_file: PathBuf,
        /// Extra agent arguments.
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Echo servers in this process's network namespace until SIGTERM/SIGINT (default: TCP
    /// 8000, UDP 9100).
    Serve {
        /// TCP echo ports.
        #[arg(long, default_values_t = [8000])]
        tcp: Vec<u16>,
        /// UDP echo ports.
        #[arg(long, default_values_t = [9100])]
        udp: Vec<u16>,
    },
    /// One probe from the pod in network namespace `--from` to address `--to`.
    Probe {
        kind: ProbeKind,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: IpAddr,
        /// The destination pod's network namespace (udp-stream needs its receiver there).
        #[arg(long)]
        to_netns: Option<String>,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "1000")]
        timeout_ms: u64,
        #[arg(long, default_value = "10000")]
        count: u64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProbeKind {
    Tcp,
    TcpEcho,
    UdpEcho,
    UdpStream,
}

fn pod_at(netns: &str, ip: IpAddr) -> Pod {
    let (v4, v6) = match ip {
        IpAddr::V4(a) => (a, std::net::Ipv6Addr::UNSPECIFIED),
        IpAddr::V6(a) => (std::net::Ipv4Addr::UNSPECIFIED, a),
    };
    Pod::existing("", netns, netns, v4, v6)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Up {
            ready_file,
            agent_args,
        } => up(&ready_file, &agent_args),
        Cmd::Serve { tcp, udp } => serve(&tcp, &udp),
        Cmd::Probe {
            kind,
            from,
            to,
            to_netns,
            port,
            timeout_ms,
            count,
        } => {
            let fam = if to.is_ipv4() { Family::V4 } else { Family::V6 };
            let src = pod_at(&from, to);
            let dst = pod_at(to_netns.as_deref().unwrap_or(""), to);
            let timeout = Duration::from_millis(timeout_ms);
            let out = match kind {
                ProbeKind::Tcp => json!({"ok": tcp_connect(&src, &dst, fam, port, timeout)?}),
                ProbeKind::TcpEcho => {
                    json!({"ok": tcp_echo_roundtrip(&src, &dst, fam, port, timeout)?})
                }
                ProbeKind::UdpEcho => {
                    json!({"ok": udp_echo_roundtrip(&src, &dst, fam, port, timeout)?})
                }
                ProbeKind::UdpStream => {
                    to_netns.context("udp-stream needs --to-netns")?;
                    let r = udp_stream(
                        &src,
                        &dst,
                        fam,
                        &StreamOpts {
                            count,
                            port,
                            ..Default::default()
                        },
                    )?;
                    json!({"sent": r.sent, "received": r.received, "corrupted": r.corrupted,
                           "loss_ratio": r.loss_ratio(), "corrupt_ratio": r.corrupt_ratio()})
                }
            };
            println!("{out}");
            Ok(())
        }
    }
}

/// Whether IPv6 is enabled here (then the servers also listen on `::`).
fn has_ipv6() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

fn serve(tcp: &[u16], udp: &[u16]) -> Result<()> {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGINT);
    set.thread_block()?;
    let here = Pod::existing(
        "",
        "self",
        "/proc/self/ns/net",
        std::net::Ipv4Addr::UNSPECIFIED,
        std::net::Ipv6Addr::UNSPECIFIED,
    );
    let families: &[Family] = if has_ipv6() {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    let mut tcp_servers = Vec::new();
    let mut udp_servers = Vec::new();
    for &fam in families {
        for &port in tcp {
            tcp_servers.push(TcpEchoServer::start(&here, fam, port)?);
        }
        for &port in udp {
            udp_servers.push(UdpEchoServer::start(&here, fam, port)?);
        }
    }
    eprintln!("fault-testenv: echo on TCP {tcp:?}, UDP {udp:?} ({families:?})");
    let sig = set.wait()?;
    eprintln!("fault-testenv: {sig:?}, stopping");
    Ok(())
}

fn up(ready_file: &std::path::Path, agent_args: &[String]) -> Result<()> {
    // Block the signals before any thread exists (threads inherit the mask), so that only
    // the wait below receives them and the cleanup always runs.
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGINT);
    set.thread_block()?;
    let args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let env = DynamoEnv::start_with(&args)?;
    let p = &env.pods;
    let all = [&p.frontend, &p.decode0, &p.decode1, &p.prefill, &p.nats];
    let mut servers = Vec::new();
    let mut udp = Vec::new();
    for pod in all {
        for fam in [Family::V4, Family::V6] {
            servers.push(TcpEchoServer::start(pod, fam, 8000)?);
            udp.push(UdpEchoServer::start(pod, fam, 9100)?);
        }
    }
    servers.push(TcpEchoServer::start(&p.nats, Family::V4, 4222)?);
    servers.push(TcpEchoServer::start(&p.nats, Family::V6, 4222)?);
    let pods: serde_json::Map<String, serde_json::Value> = all
        .iter()
        .map(|pod| {
            (pod.name().to_owned(), json!({"namespace": pod.namespace(), "netns": pod.netns_name(),
                                           "ipv4": pod.ipv4().to_string(), "ipv6": pod.ipv6().to_string()}))
        })
        .collect();
    let ready = json!({"api_url": env.agent.api_url(), "inventory": env.inventory(), "pods": pods});
    std::fs::write(ready_file, ready.to_string())?;
    // Wait for SIGTERM or SIGINT, then drop everything (agent first, then pods).
    let sig = set.wait()?;
    eprintln!("fault-testenv: {sig:?}, cleaning up");
    drop(udp);
    drop(servers);
    drop(env);
    Ok(())
}
