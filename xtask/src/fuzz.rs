//! `cargo xtask fuzz`: the fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer), each for a fixed
//! time. Installs cargo-fuzz when it is missing; builds every target once (nightly, with
//! overflow checks and debug assertions, no sanitizer: the code under test is safe Rust);
//! runs each target's binary directly so that where it writes is ours:
//!
//! - `fuzz/corpus/<target>/`: the committed seeds (read only here);
//! - `<target dir>/fuzz/corpus/<target>/`: what the runs found, kept between runs;
//! - `<target dir>/fuzz/artifacts/<target>/`: the input of a crash, a hang or a leak.
//!
//! A target fails on a panic, a broken property (an assertion in the target), an input that
//! runs longer than [`Options::timeout`] (a hang), or more than 2 GB of memory. The report
//! says how to reproduce and minimize the input; DEVELOPERS.md ("Fuzzing") what to do next.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cargo, setup,
    util::{output, path_with_cargo_bin, root, run},
};

/// Every target, in the order they run (see each `fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: &[&str] = &[
    "units",
    "selector",
    "cidr",
    "spec_json",
    "seed_inject",
    "crd",
    "kube_objects",
    "inventory",
    "netlink",
    "api",
];

/// How long and which.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds per target.
    pub seconds: u64,
    /// Only these targets (all when empty).
    pub only: Vec<String>,
    /// Seconds one input may take before it counts as a hang.
    pub timeout: u64,
}

/// `cargo fuzz` works once installed; installs it from crates.io when it does not.
fn ensure_cargo_fuzz() -> Result<()> {
    let works = output(
        Command::new("cargo")
            .args(["fuzz", "--version"])
            .env("PATH", path_with_cargo_bin()),
    )
    .is_some();
    if works {
        eprintln!("setup: cargo-fuzz present");
        return Ok(());
    }
    run(Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .env("PATH", path_with_cargo_bin()))
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// Builds every target; returns the folder of their binaries.
fn build() -> Result<PathBuf> {
    let target_dir = cargo::target_dir();
    run(Command::new("cargo")
        .args([
            "+nightly",
            "fuzz",
            "build",
            "--sanitizer",
            "none",
            "--debug-assertions",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(root())
        .env("PATH", path_with_cargo_bin()))?;
    Ok(target_dir.join(host_triple()?).join("release"))
}

fn host_triple() -> Result<String> {
    let v = output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("rustc +nightly -vV")?;
    v.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("no host triple in rustc -vV")
}

/// The artifacts a failed run left, newest first.
fn artifacts(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().rev().map(|(_, p)| p).collect()
}

fn run_target(bin: &Path, name: &str, opts: &Options) -> Result<()> {
    let target_dir = cargo::target_dir();
    let work = target_dir.join("fuzz/corpus").join(name);
    let found = target_dir.join("fuzz/artifacts").join(name);
    let seeds = fuzz_dir().join("corpus").join(name);
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&found)?;
    let before = artifacts(&found).len();
    let exe = bin.join(name);
    let result = run(Command::new(&exe)
        .arg(format!("-max_total_time={}", opts.seconds))
        .arg(format!("-timeout={}", opts.timeout))
        .arg("-rss_limit_mb=2048")
        .arg("-max_len=16384")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", found.display()))
        .arg(&work)
        .arg(&seeds)
        .current_dir(root()));
    // The api target's pods and pins are removed by its exit handler; after a crash or a
    // hang the process had none: reap what it left.
    fault_testkit::reap_stale();
    if let Err(e) = result {
        let new = artifacts(&found);
        let input = new
            .first()
            .filter(|_| new.len() > before)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(no new artifact)".into());
        bail!(
            "fuzz target {name} failed: {e:#}\n  input: {input}\n  reproduce: {exe} {input}\n  minimize: cargo +nightly fuzz tmin --sanitizer none --debug-assertions {name} {input}\n  then: a regression unit test in the crate that owns the parser, the fix, and the input copied to fuzz/corpus/{name}/ (DEVELOPERS.md, \"Fuzzing\")",
            exe = exe.display()
        );
    }
    Ok(())
}

/// Builds the targets and runs each for `opts.seconds`; fails when one fails, after running
/// the others.
pub fn run_all(opts: &Options) -> Result<()> {
    for o in &opts.only {
        if !TARGETS.contains(&o.as_str()) {
            bail!("--only {o}: no such fuzz target (there are {})", TARGETS.join(", "));
        }
    }
    setup::core()?;
    ensure_cargo_fuzz()?;
    let bin = build()?;
    let mut failed = Vec::new();
    for name in TARGETS
        .iter()
        .filter(|t| opts.only.is_empty() || opts.only.iter().any(|o| o == *t))
    {
        eprintln!("\n--- fuzz {name}: {} s ---", opts.seconds);
        let start = Instant::now();
        match run_target(&bin, name, opts) {
            Ok(()) => eprintln!(
                "--- fuzz {name}: no failure in {:.0} s",
                start.elapsed().as_secs_f64()
            ),
            Err(e) => {
                eprintln!("--- {e:#}");
                failed.push(*name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}
