//! Helpers shared by the integration tests (included with `mod common;`).
#![allow(dead_code)]

use std::time::Duration;

use fault_api::Fault;
use fault_testkit::{AgentProcess, Family, Pod, probe};

pub const SHORT: Duration = Duration::from_millis(300);
pub const LONG: Duration = Duration::from_secs(2);

/// `faultctl ARGS` against `agent`, which must succeed; returns its stdout.
pub fn ctl(agent: &AgentProcess, args: &[&str]) -> String {
    let out = agent.faultctl(args).expect("faultctl runs");
    assert!(
        out.status.success(),
        "faultctl {args:?} failed: {}\n--- agent log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `faultctl inject ARGS`; returns the new fault's id.
pub fn inject(agent: &AgentProcess, args: &[&str]) -> String {
    let mut all = vec!["inject"];
    all.extend_from_slice(args);
    ctl(agent, &all).trim().to_owned()
}

pub fn fault(agent: &AgentProcess, id: &str) -> Fault {
    agent.client().get_fault(id).expect("fault exists")
}

/// One-way UDP reachability; a blocked path gets a shorter wait.
pub fn reaches(from: &Pod, to: &Pod, fam: Family) -> bool {
    probe::udp_reachable(from, to, fam, 9000, LONG).expect("probe runs")
}

pub fn blocked(from: &Pod, to: &Pod, fam: Family) -> bool {
    !probe::udp_reachable(from, to, fam, 9000, SHORT).expect("probe runs")
}

/// (wall-clock, boottime) read together, to place a fault's wall-clock expiry on the
/// boottime axis of stream timestamps.
pub fn deadline_boot_ns(f: &Fault) -> u64 {
    let wall = jiff::Timestamp::now();
    let boot = fault_testkit::boottime_ns();
    let left = f.expires_at.duration_since(wall).as_nanos();
    (boot as i128 + left) as u64
}
