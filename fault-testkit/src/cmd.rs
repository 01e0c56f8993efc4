//! Running a helper program (`ip`, `ping`, ...) and turning its failure into an error that
//! carries its stderr.
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Runs `cmd ARGS...`; returns its stdout, or fails with its stderr when it exits non-zero.
pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
