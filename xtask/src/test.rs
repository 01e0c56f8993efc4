//! `cargo xtask test`: every suite, then a summary. Each suite installs what it needs.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    cargo, fuzz, kube, setup,
    util::{path_with_cargo_bin, root, run as run_cmd},
    vm,
};

/// `cargo test --no-run` for one integration test target; returns its executable.
pub fn test_executable(package: &str, test: &str) -> Result<std::path::PathBuf> {
    let out = Command::new("cargo")
        .args([
            "test",
            "-p",
            package,
            "--test",
            test,
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root())
        .env("PATH", path_with_cargo_bin())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(m) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if m["reason"] == "compiler-artifact"
            && m["target"]["name"] == test
            && let Some(exe) = m["executable"].as_str()
        {
            return Ok(exe.into());
        }
    }
    bail!("no executable for test target {test}")
}

/// A suite that cannot run on this machine: it is reported as skipped with the reason, not
/// as passed or failed.
#[derive(Debug)]
pub struct Skipped(pub String);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl std::error::Error for Skipped {}

/// Seconds per fuzz target in the test run (`cargo xtask fuzz` runs 60 s each by default).
const FUZZ_SECONDS: u64 = 10;

struct Outcome {
    name: &'static str,
    took: Duration,
    result: Result<()>,
}

impl Outcome {
    fn skipped(&self) -> Option<&Skipped> {
        self.result.as_ref().err()?.downcast_ref::<Skipped>()
    }
    fn failed(&self) -> bool {
        self.result.is_err() && self.skipped().is_none()
    }
}

fn suite(name: &'static str, f: impl FnOnce() -> Result<()>) -> Outcome {
    eprintln!("\n=== {name} ===");
    let start = Instant::now();
    let result = f();
    match &result {
        Err(e) if e.downcast_ref::<Skipped>().is_some() => eprintln!("=== {name}: {e}"),
        Err(e) => eprintln!("=== {name}: FAILED: {e:#}"),
        Ok(()) => {}
    }
    Outcome {
        name,
        took: start.elapsed(),
        result,
    }
}

/// The suites' short names, in run order (for `--only`).
pub const SUITES: &[&str] = &["unit", "cluster", "node", "vm", "vm510", "fuzz", "pytest"];

/// Runs every suite (or those named in `only`); fails when one fails.
pub fn run(only: &[String]) -> Result<()> {
    if let Some(bad) = only.iter().find(|o| !SUITES.contains(&o.as_str())) {
        bail!("--only: no suite {bad:?} ({})", SUITES.join(", "));
    }
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    setup::core()?;
    let bin = cargo::build(false)?;
    let mut outcomes = Vec::new();
    if wanted("unit") {
        setup::apt(setup::TEST_PACKAGES)?;
        outcomes.push(suite(
            "cargo test: unit tests and datapath tests on real packets",
            || {
                run_cmd(
                    Command::new("cargo")
                        .args([
                            "test",
                            "--workspace",
                            "--exclude",
                            "fault-ebpf",
                            "--no-fail-fast",
                        ])
                        .current_dir(root())
                        .env("PATH", path_with_cargo_bin())
                        .env("FAULTLINE_BIN_DIR", &bin),
                )
            },
        ));
    }
    if wanted("cluster") {
        outcomes.push(suite(
            "cluster: node agents, API, CRD against a real kube-apiserver 1.20",
            || {
                kube::build()?;
                run_cmd(
                    Command::new("cargo")
                        .args([
                            "test",
                            "-p",
                            "fault-agent",
                            "--test",
                            "kube",
                            "--",
                            "--ignored",
                            "--test-threads=1",
                        ])
                        .current_dir(root())
                        .env("PATH", path_with_cargo_bin())
                        .env("FAULTLINE_BIN_DIR", &bin),
                )
            },
        ));
    }
    if wanted("node") {
        outcomes.push(suite(
            "node: real kubelet, containerd, CNI, kube-proxy; kubectl apply -k deploy/",
            || crate::node::run_suite(&bin),
        ));
    }
    if wanted("vm") {
        outcomes.push(suite(
            "kernel 6.1 VM: delay, jitter, duplication, rate, netlink attach",
            || {
                let exe = test_executable("fault-agent", "vm")?;
                let runs = [vm::TestRun {
                    binary: &exe,
                    ignored: true,
                    only: &[],
                }];
                vm::run_tests(vm::Kernel::Debian61, &runs, &bin)
            },
        ));
    }
    if wanted("vm510") {
        outcomes.push(suite(
            "kernel 5.10 VM: partition, kernel deadline, delay (cargo xtask kernels: all)",
            || vm::kernel_suites(vm::Kernel::Debian510, &bin, true),
        ));
    }
    if wanted("fuzz") {
        outcomes.push(suite(
            "fuzz: corpora replayed, then 10 s per target (10 targets)",
            || {
                fuzz::run_all(&fuzz::Options {
                    seconds: FUZZ_SECONDS,
                    only: vec![],
                    timeout: 10,
                    seed: Some(1),
                })
            },
        ));
    }
    if wanted("pytest") {
        outcomes.push(suite(
            "pytest: the Python client against a real agent (seed examples)",
            || {
                let client = root().join("clients/python");
                let py = setup::python_venv(&cargo::target_dir(), &client)?;
                run_cmd(
                    Command::new(py.join("pytest"))
                        .arg("-q")
                        .current_dir(&client)
                        .env("FAULTLINE_BIN_DIR", &bin),
                )
            },
        ));
    }
    eprintln!("\n{:<70} {:>8}  result", "suite", "time");
    for o in &outcomes {
        let verdict = match (o.skipped(), o.result.is_ok()) {
            (Some(s), _) => s.to_string(),
            (None, true) => "ok".into(),
            (None, false) => "FAILED".into(),
        };
        eprintln!("{:<70} {:>7.0}s  {verdict}", o.name, o.took.as_secs_f64());
    }
    let failed = outcomes.iter().filter(|o| o.failed()).count();
    if failed > 0 {
        bail!("{failed} suite(s) failed");
    }
    Ok(())
}
