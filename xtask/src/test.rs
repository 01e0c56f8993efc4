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

/// Seconds per fuzz target in the test run (`cargo xtask fuzz` runs longer).
const FUZZ_SECONDS: u64 = 20;

struct Outcome {
    name: &'static str,
    took: Duration,
    result: Result<()>,
}

fn suite(name: &'static str, f: impl FnOnce() -> Result<()>) -> Outcome {
    eprintln!("\n=== {name} ===");
    let start = Instant::now();
    let result = f();
    if let Err(e) = &result {
        eprintln!("=== {name}: FAILED: {e:#}");
    }
    Outcome {
        name,
        took: start.elapsed(),
        result,
    }
}

/// Runs every suite; fails when one fails.
pub fn run() -> Result<()> {
    setup::core()?;
    let bin = cargo::build(false)?;
    let mut outcomes = Vec::new();
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
    outcomes.push(suite(
        "kernel 6.1 VM: delay, jitter, duplication, rate, netlink attach",
        || {
            let exe = test_executable("fault-agent", "vm")?;
            vm::run_tests(&exe, &bin)
        },
    ));
    outcomes.push(suite(
        "fuzz: every input surface, 20 s per target (10 targets, ~4 min)",
        || {
            fuzz::run_all(&fuzz::Options {
                seconds: FUZZ_SECONDS,
                only: vec![],
                timeout: 10,
            })
        },
    ));
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
    eprintln!("\n{:<70} {:>8}  result", "suite", "time");
    for o in &outcomes {
        let verdict = if o.result.is_ok() { "ok" } else { "FAILED" };
        eprintln!("{:<70} {:>7.0}s  {verdict}", o.name, o.took.as_secs_f64());
    }
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    if failed > 0 {
        bail!("{failed} suite(s) failed");
    }
    Ok(())
}
