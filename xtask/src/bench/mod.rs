//! `cargo xtask bench`: what Faultline costs, how fast it applies and lifts faults, how exact
//! they are, and the same for the mechanisms incumbents use, measured side by side in one
//! run; written to BENCHMARKS.md. Every figure is compared with a baseline measured in the
//! same run, and repeated runs report median and spread. The topology, probes and agent
//! processes are the testkit's (the tests' own), not copies.
mod accuracy;
mod apply;
mod expiry;
mod overhead;
mod scale;

use std::{fmt::Write as _, fs, path::Path, process::Command, time::Instant};

use anyhow::{Context as _, Result};

/// Values of one measured quantity.
pub struct Dist(pub Vec<f64>);

impl Dist {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
    /// The `p` quantile (0..=1), nearest rank.
    pub fn q(&self, p: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    pub fn median(&self) -> f64 {
        self.q(0.5)
    }
    pub fn min(&self) -> f64 {
        self.q(0.0)
    }
    pub fn max(&self) -> f64 {
        self.q(1.0)
    }
}

/// Runs a shell command line (for incumbents' tools and stdin-fed batches).
pub fn sh(script: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(script).output().context("sh")?;
    anyhow::ensure!(out.status.success(), "`{}`: {}", script.lines().next().unwrap_or(""), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// /32 prefixes in 100.64.0.0/10 (never a pod of ours).
pub fn other_prefixes(n: usize) -> Vec<ipnet::IpNet> {
    (0..n).map(|i| ipnet::IpNet::from(std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x6440_0000u32 + i as u32)))).collect()
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let commit = sh("git rev-parse --short HEAD").unwrap_or_default();
    format!(
        "{} CPUs ({cpu}), kernel {kernel}, commit {}, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        commit.trim(),
        jiff::Timestamp::now()
    )
}

/// Which sections to run.
pub struct Options {
    pub quick: bool,
    pub with_vm: bool,
}

/// Runs the benchmarks and writes `file`.
pub fn run(bin_dir: &Path, file: &Path, opts: &Options) -> Result<()> {
    // SAFETY: single-threaded at this point; the testkit reads it to find the binaries.
    unsafe { std::env::set_var("FAULTLINE_BIN_DIR", bin_dir) };
    let started = Instant::now();
    let mut out = String::new();
    writeln!(out, "# Faultline benchmarks\n")?;
    writeln!(out, "Written by `cargo xtask bench{}` on {}. Release build.\n", if opts.quick { " --quick" } else { "" }, machine())?;
    writeln!(out, "Method: pods are network namespaces on a bridge (the tests' topology); traffic is real and measured at the receiver; each comparison is made in the same run as its baseline. Two cores are shared by senders, receivers and the kernel, so absolute figures are modest; the ratios are the point.\n")?;
    let stats_path = "/proc/sys/kernel/bpf_stats_enabled";
    let old_stats = fs::read_to_string(stats_path).unwrap_or_else(|_| "0".into());
    fs::write(stats_path, "1").context("enabling kernel.bpf_stats_enabled")?;
    let sections: Vec<(&str, Box<dyn Fn(&mut String, &Options) -> Result<()>>)> = vec![
        ("overhead", Box::new(overhead::run)),
        ("apply", Box::new(apply::run)),
        ("accuracy", Box::new(accuracy::run)),
        ("scale", Box::new(scale::run)),
        ("expiry", Box::new(expiry::run)),
    ];
    for (name, section) in sections {
        eprintln!("bench: {name}");
        let t = Instant::now();
        if let Err(e) = section(&mut out, opts) {
            writeln!(out, "\n**Section {name} failed:** {e:#}\n")?;
            eprintln!("bench: {name} failed: {e:#}");
        }
        eprintln!("bench: {name} took {:.0} s", t.elapsed().as_secs_f64());
        fs::write(file, &out).with_context(|| format!("writing {}", file.display()))?;
    }
    let _ = fs::write(stats_path, old_stats.trim());
    writeln!(out, "\nThe whole run took {:.0} s.", started.elapsed().as_secs_f64())?;
    fs::write(file, &out).with_context(|| format!("writing {}", file.display()))?;
    println!("{out}");
    Ok(())
}
