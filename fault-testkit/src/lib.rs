//! Faultline's test harness, shared by the integration tests, `cargo xtask demo` and
//! `cargo xtask bench`:
//! - [`topology`]: "pods" as network namespaces, each with a veth whose host side is on a
//!   bridge of the root namespace (as on a node), and an inventory file describing them;
//! - [`probe`]: real traffic between pods, measured (UDP streams with sequence numbers and
//!   send times, TCP connects and echoes);
//! - [`agent`]: a real `fault-agent` process and the `faultctl` binary.
//!
//! Everything it creates is removed on `Drop`, also when a test panics; objects left by a
//! killed process are reaped by the next [`topology::Topology::new`].
pub mod agent;
pub mod env;
pub mod netns;
pub mod probe;
pub mod topology;

pub use agent::{AgentProcess, bin_path, faultctl};
pub use env::DynamoEnv;
pub use probe::{Family, StreamOpts, StreamReport};
pub use topology::{Dynamo, Pod, Topology};

/// Serializes the tests that measure rates or timings, so that two of them never share the
/// two cores of a test machine. Poisoning (a failed test) does not block the others.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a command and fails with its stderr when it fails.
pub(crate) fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let out = std::process::Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        anyhow::bail!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `CLOCK_BOOTTIME` now, in ns (the clock of the agent's deadlines and of stream timestamps).
pub fn boottime_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64,
        Err(_) => 0,
    }
}
