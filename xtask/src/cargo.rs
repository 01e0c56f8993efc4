//! Building the project's binaries.
use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::util::{path_with_cargo_bin, root, run};

/// Builds fault-agent (its build.rs compiles the eBPF programs with nightly and bpf-linker),
/// faultctl and the testkit's `fault-testenv`. Returns the folder holding the binaries.
/// The packages whose binaries the tests, the demo and the image use, as `cargo build` args.
pub const BINARIES: &[&str] = &[
    "-p",
    "fault-agent",
    "-p",
    "faultctl",
    "-p",
    "fault-testkit",
    "--bins",
];

pub fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.arg("build")
        .args(BINARIES)
        .current_dir(root())
        .env("PATH", path_with_cargo_bin());
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(target_dir().join(if release { "release" } else { "debug" }))
}

/// The cargo target folder (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// `cargo test -p fault-agent --test <test> -- --ignored --nocapture --exact <name>`: one
/// long ignored test, with the binaries of `bin` (`FAULTLINE_BIN_DIR`), run from the
/// workspace root; the caller adds the test's own environment and runs it.
pub fn long_test(test: &str, name: &str, bin: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("cargo");
    cmd.args(["test", "-p", "fault-agent", "--test", test, "--"])
        .args(["--ignored", "--nocapture", "--exact", name])
        .current_dir(crate::util::root())
        .env("PATH", crate::util::path_with_cargo_bin())
        .env("FAULTLINE_BIN_DIR", bin);
    cmd
}
