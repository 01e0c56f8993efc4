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
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
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
    /// libFuzzer's random seed: fixed in `cargo xtask test`, so that a run of a given build
    /// explores the same inputs each time (a new find there is a change's, not luck's);
    /// random in `cargo xtask fuzz`.
    pub seed: Option<u64>,
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
    let v =
        output(Command::new("rustc").args(["+nightly", "-vV"])).context("rustc +nightly -vV")?;
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

/// What one target's run did (libFuzzer's final stats).
#[derive(Debug, Default)]
struct Stats {
    execs: u64,
    new_units: u64,
    peak_rss_mb: u64,
}

/// Runs libFuzzer with stderr read line by line: echoed, except its per-input progress lines
/// (`#123 NEW ...`, thousands of them), and its final stats kept.
fn libfuzzer(cmd: &mut Command) -> Result<(std::process::ExitStatus, Stats)> {
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let mut stats = Stats::default();
    for line in BufReader::new(child.stderr.take().context("stderr")?).lines() {
        let line = line?;
        let stat = |key: &str| {
            line.strip_prefix(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(n) = stat("stat::number_of_executed_units:") {
            stats.execs = n;
        } else if let Some(n) = stat("stat::new_units_added:") {
            stats.new_units = n;
        } else if let Some(n) = stat("stat::peak_rss_mb:") {
            stats.peak_rss_mb = n;
        }
        // `#1234<TAB>NEW    cov: ...`
        let progress = line.starts_with('#')
            && line
                .split_whitespace()
                .nth(1)
                .is_some_and(|w| ["NEW", "REDUCE", "pulse", "RELOAD"].contains(&w));
        if !progress {
            eprintln!("{line}");
        }
    }
    Ok((child.wait()?, stats))
}

fn run_target(bin: &Path, name: &str, opts: &Options) -> Result<Stats> {
    let target_dir = cargo::target_dir();
    let work = target_dir.join("fuzz/corpus").join(name);
    let found = target_dir.join("fuzz/artifacts").join(name);
    let seeds = fuzz_dir().join("corpus").join(name);
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&found)?;
    let before = artifacts(&found).len();
    let exe = bin.join(name);
    // libFuzzer first runs every input of both corpora (the committed seeds and what earlier
    // runs found), then mutates until max_total_time (counted from its start).
    let result = libfuzzer(
        Command::new(&exe)
            .arg(format!("-max_total_time={}", opts.seconds))
            .arg(format!("-timeout={}", opts.timeout))
            .arg("-rss_limit_mb=2048")
            .arg("-max_len=16384")
            .arg("-print_final_stats=1")
            .args(opts.seed.map(|s| format!("-seed={s}")))
            .arg(format!("-artifact_prefix={}/", found.display()))
            .arg(&work)
            .arg(&seeds)
            .current_dir(root()),
    );
    // The api target's pods and pins are removed by its exit handler; after a crash or a
    // hang the process had none: reap what it left.
    fault_testkit::reap_stale();
    let (status, stats) = result?;
    if !status.success() {
        let new = artifacts(&found);
        let input = new
            .first()
            .filter(|_| new.len() > before)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(no new artifact)".into());
        bail!(
            "fuzz target {name} failed ({status}) after {execs} inputs\n  input: {input}\n  reproduce: {exe} {input}\n  minimize: cargo +nightly fuzz tmin --sanitizer none --debug-assertions {name} {input}\n  then: a regression unit test in the crate that owns the parser, the fix, and the input copied to fuzz/corpus/{name}/ (DEVELOPERS.md, \"Fuzzing\")",
            execs = stats.execs,
            exe = exe.display()
        );
    }
    Ok(stats)
}

/// Builds the targets and runs each for `opts.seconds`; fails when one fails, after running
/// the others.
pub fn run_all(opts: &Options) -> Result<()> {
    for o in &opts.only {
        if !TARGETS.contains(&o.as_str()) {
            bail!(
                "--only {o}: no such fuzz target (there are {})",
                TARGETS.join(", ")
            );
        }
    }
    setup::core()?;
    setup::cargo_fuzz()?;
    let bin = build()?;
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for name in TARGETS
        .iter()
        .filter(|t| opts.only.is_empty() || opts.only.iter().any(|o| o == *t))
    {
        eprintln!("\n--- fuzz {name}: {} s ---", opts.seconds);
        let start = Instant::now();
        let result = run_target(&bin, name, opts);
        let took = start.elapsed().as_secs_f64();
        match result {
            Ok(st) => {
                eprintln!(
                    "--- fuzz {name}: no failure in {took:.0} s, {} inputs",
                    st.execs
                );
                summary.push(format!(
                    "{name:<14} {took:>6.0} s {:>10} inputs {:>9.0}/s {:>5} new {:>6} MB  ok",
                    st.execs,
                    st.execs as f64 / took.max(0.001),
                    st.new_units,
                    st.peak_rss_mb
                ));
            }
            Err(e) => {
                eprintln!("--- {e:#}");
                summary.push(format!("{name:<14} {took:>6.0} s  FAILED"));
                failed.push(*name);
            }
        }
    }
    eprintln!("\nfuzz summary (runs, new corpus entries, peak memory):");
    for l in &summary {
        eprintln!("  {l}");
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}
