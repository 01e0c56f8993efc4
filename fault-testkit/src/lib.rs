//! Faultline's test harness, shared by the integration tests, `cargo xtask demo` and
//! `cargo xtask bench`:
//! - [`topology`]: "pods" as network namespaces, each with a veth whose host side is in the
//!   root namespace (as on a node), either on a bridge (like the CNI `bridge` plugin) or
//!   routed by the host (like Calico), and an inventory file describing them;
//! - [`services`]: Kubernetes Services as kube-proxy makes them (DNAT of VIPs, external IPs
//!   and node ports to backend pods in the host's prerouting, nftables), and pod handles that
//!   send every probe through a Service;
//! - [`nodes`]: several fake nodes on one machine ([`Fabric`]): each node a network namespace
//!   holding its routed pods' host sides, its uplink on a bridge between the nodes, its own
//!   kube-proxy-like DNAT of every Service, and optionally its own agent; per-node
//!   inventories list the node's pods and, by node and addresses, the other nodes' pods;
//! - [`probe`]: real traffic between pods, measured (UDP streams with sequence numbers and
//!   send times, TCP connects and echoes);
//! - [`agent`]: a real `fault-agent` process (in the root namespace or a node's) and the
//!   `faultctl` binary;
//! - [`env`](mod@env): the inference topology with an agent in front of it;
//! - [`kube`]: a real Kubernetes API server for the cluster-mode tests;
//! - [`real_node`]: a real node (`cargo xtask cluster up`) reached with kubectl, for the node suite.
//!
//! Everything it creates is removed on `Drop`, also when a test panics; objects left by a
//! killed process are reaped by the next [`topology::Topology::new`],
//! [`services::ServiceNet::new`] or [`nodes::Fabric::new`] ([`reap_stale`]). It needs root.
pub mod agent;
mod cmd;
pub mod env;
pub mod kube;
mod lock;
pub mod netns;
pub mod nodes;
pub mod probe;
mod rand;
pub mod real_node;
pub mod services;
pub mod tls;
pub mod topology;

pub use agent::{AgentBuilder, AgentProcess, bin_path, faultctl};
pub(crate) use cmd::run;
pub use env::DynamoEnv;
pub use nodes::{Fabric, NodeHandle};
pub use probe::{StreamHandle, StreamOpts, StreamReport};
pub use services::{Service, ServiceNet, ServiceOpts};
pub use topology::{Dynamo, Family, Mode, Pod, Topology, reap_stale};

/// Serializes the tests that measure rates or timings, so that two of them never share the
/// cores of a test machine. Poisoning (a failed test) does not block the others.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// `CLOCK_BOOTTIME` now, in ns: the clock of the agent's deadlines and of stream timestamps
/// (it keeps counting during suspend, unlike `CLOCK_MONOTONIC`).
pub fn try_boottime_ns() -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .context("clock_gettime(CLOCK_BOOTTIME)")?;
    let secs = u64::try_from(ts.tv_sec()).context("negative CLOCK_BOOTTIME")?;
    let nanos = u64::try_from(ts.tv_nsec()).context("negative CLOCK_BOOTTIME")?;
    Ok(secs * 1_000_000_000 + nanos)
}

/// `CLOCK_BOOTTIME` now, in ns (see [`try_boottime_ns`]).
///
/// # Panics
/// If the kernel has no `CLOCK_BOOTTIME` (Linux < 2.6.39), which the agent needs anyway.
pub fn boottime_ns() -> u64 {
    match try_boottime_ns() {
        Ok(ns) => ns,
        Err(e) => panic!("{e:#}"),
    }
}
