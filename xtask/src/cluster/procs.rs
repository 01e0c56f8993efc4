//! The cluster's daemons: started detached (own session, stdin closed, output appended to
//! `<state>/logs/<name>.log`) so they outlive `cargo xtask cluster up`, each recorded in
//! `<run>/pids/<name>.pid` as "pid starttime" (the start time guards against a reused pid).
//! Only those recorded processes are ever signalled.
use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{sys::signal::Signal, unistd::Pid};

use super::layout;

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot), and whether the
/// process is a zombie.
fn stat(pid: i32) -> Option<(u64, bool)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: split after its closing parenthesis.
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = fields.first() == Some(&"Z");
    Some((fields.get(19)?.parse().ok()?, zombie))
}

/// Starts `cmd` as the daemon `name` and records it.
pub fn start(name: &str, cmd: &mut Command) -> Result<i32> {
    let log_path = layout::log_of(name);
    std::fs::create_dir_all(layout::state("logs"))?;
    std::fs::create_dir_all(layout::run("pids"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    let start = stat(pid).map(|s| s.0).unwrap_or(0);
    std::fs::write(layout::pid_of(name), format!("{pid} {start}\n"))?;
    eprintln!(
        "cluster: started {name} (pid {pid}), log {}",
        log_path.display()
    );
    Ok(pid)
}

/// The recorded pid of `name` if that process still runs (not a zombie, same start time).
pub fn pid(name: &str) -> Option<i32> {
    let text = std::fs::read_to_string(layout::pid_of(name)).ok()?;
    let mut it = text.split_whitespace();
    let pid: i32 = it.next()?.parse().ok()?;
    let start: u64 = it.next()?.parse().ok()?;
    let (now_start, zombie) = stat(pid)?;
    (now_start == start && !zombie).then_some(pid)
}

/// Stops `name`: SIGTERM, then SIGKILL after `grace`. Returns whether it was running.
pub fn stop(name: &str, grace: Duration) -> Result<bool> {
    let Some(pid) = pid(name) else {
        let _ = std::fs::remove_file(layout::pid_of(name));
        return Ok(false);
    };
    signal_and_wait(name, pid, grace)?;
    let _ = std::fs::remove_file(layout::pid_of(name));
    Ok(true)
}

/// SIGTERM `pid`, wait up to `grace` for it to go, then SIGKILL and wait again.
pub fn signal_and_wait(what: &str, pid: i32, grace: Duration) -> Result<()> {
    let gone = |pid| stat(pid).is_none_or(|(_, zombie)| zombie);
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
    let start = Instant::now();
    while !gone(pid) {
        if start.elapsed() > grace {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let killed = Instant::now();
            while !gone(pid) {
                if killed.elapsed() > Duration::from_secs(5) {
                    bail!("{what} (pid {pid}) survives SIGKILL");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("cluster: {what} (pid {pid}) killed after {grace:?}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The last `n` lines of a component's log.
pub fn log_tail(name: &str, n: usize) -> String {
    let text = std::fs::read_to_string(layout::log_of(name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until `ready()` holds, failing early (with its log) if `name` exits.
pub fn wait_ready(name: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    loop {
        if ready() {
            eprintln!(
                "cluster: {name} ready after {:.1} s",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if pid(name).is_none() {
            bail!("{name} exited; its log ends with:\n{}", log_tail(name, 30));
        }
        if start.elapsed() > timeout {
            bail!(
                "{name} not ready within {timeout:?}; its log ends with:\n{}",
                log_tail(name, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
