//! Running a helper program (`ip`, `nft`, `ping`, ...) and turning its failure into an error
//! that carries its stderr.
use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd ARGS...`; returns its stdout, or fails with its stderr when it exits non-zero.
pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    check(cmd, args, out)
}

/// Runs `cmd ARGS...` with `input` on its stdin (e.g. `nft -f -` and a script); returns its
/// stdout, or fails with its stderr when it exits non-zero.
pub(crate) fn run_input(cmd: &str, args: &[&str], input: &str) -> Result<String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd}"))?;
    let written = child
        .stdin
        .take()
        .context("stdin of the child")?
        .write_all(input.as_bytes());
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {cmd}"))?;
    written.with_context(|| format!("writing to {cmd}"))?;
    check(cmd, args, out).with_context(|| format!("input was:\n{input}"))
}

fn check(cmd: &str, args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a deletion (`ip rule del ...`, `ip route del ...`): what is already gone ("No such
/// file or directory", "No such process", "Cannot find device") is not an error.
pub(crate) fn run_del(cmd: &str, args: &[&str]) -> Result<()> {
    match run(cmd, args) {
        Ok(_) => Ok(()),
        Err(e) => {
            let msg = format!("{e:#}");
            let gone = [
                "No such file or directory",
                "No such process",
                "Cannot find device",
            ]
            .iter()
            .any(|m| msg.contains(m));
            if gone { Ok(()) } else { Err(e) }
        }
    }
}
