//! The processes still running in a node's namespace when its fabric is dropped (agents not
//! dropped yet): found by their `/proc/<pid>/ns/net`, asked to stop, then killed.
use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{agent::TERMINATE_TIMEOUT, netns::NETNS_DIR};

/// The pids of the processes whose network namespace is `netns` (a name under
/// `/run/netns`), this process aside.
fn pids_in(netns: &str) -> Vec<i32> {
    let Ok(target) = std::fs::metadata(Path::new(NETNS_DIR).join(netns)) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    (entries.flatten())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        })
        .collect()
}

/// Sends SIGTERM to every process in `netns` and waits up to [`TERMINATE_TIMEOUT`] for them
/// to leave it (an agent removes what it made first); SIGKILL for those left. Logged to
/// stderr, since a test should drop its agents before their fabric.
pub(super) fn terminate_in(netns: &str) {
    let pids = pids_in(netns);
    if pids.is_empty() {
        return;
    }
    eprintln!("testkit: terminating {pids:?}, still running in node namespace {netns}");
    signal_all(&pids, Signal::SIGTERM);
    let deadline = Instant::now() + TERMINATE_TIMEOUT;
    while !pids_in(netns).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_all(&pids_in(netns), Signal::SIGKILL);
}

fn signal_all(pids: &[i32], signal: Signal) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}
