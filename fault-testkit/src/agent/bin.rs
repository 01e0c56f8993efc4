//! Finding the workspace's binaries (`fault-agent`, `faultctl`) and running `faultctl`.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// Environment variable naming the directory of the workspace binaries (e.g.
/// `target/release`); overrides the search next to the running executable.
pub const BIN_DIR_ENV: &str = "FAULTLINE_BIN_DIR";

/// Path of the workspace binary `name`: in `$FAULTLINE_BIN_DIR` if that is set, else in the
/// directory of the running executable or its parent (test executables live in
/// `target/<profile>/deps`, the binaries in `target/<profile>`). Fails, telling how to build
/// it, when it is not there.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    const HINT: &str = "run `cargo build -p fault-agent -p faultctl`";
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let p = Path::new(&dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "{name} not found in {BIN_DIR_ENV}={}: {HINT} (with the same profile)",
            p.display()
        );
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found next to {}: {HINT} (or set {BIN_DIR_ENV})",
        exe.display()
    )
}

/// Runs `faultctl --api <api_url> ARGS...` and returns its exit status and output.
pub fn faultctl(api_url: &str, args: &[&str]) -> Result<Output> {
    Command::new(bin_path("faultctl")?)
        .arg("--api")
        .arg(api_url)
        .args(args)
        .output()
        .with_context(|| format!("running faultctl {}", args.join(" ")))
}
