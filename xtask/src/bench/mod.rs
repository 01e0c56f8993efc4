//! `cargo xtask bench`: what Faultline costs, how fast it applies and lifts faults, how exact
//! they are, and the same for the mechanisms incumbents use, measured side by side in one
//! run; written to BENCHMARKS.md. Every figure is compared with a baseline measured in the
//! same run, and repeated runs report median and spread. The topology, probes and agent
//! processes are the testkit's (the tests' own), not copies.
mod accuracy;
mod apply;
mod cluster;
mod expiry;
mod floor;
mod load;
mod node;
mod overhead;
mod scale;
mod services;

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

/// What the sections write: the Markdown of their tables and readings, and the targets they
/// checked.
#[derive(Default)]
pub struct Report {
    pub out: String,
    targets: Vec<Target>,
}

/// One of the issue's targets, as measured in this run.
struct Target {
    what: &'static str,
    measured: String,
    met: bool,
    /// What stands in the way when it is not met.
    obstacle: String,
}

impl Report {
    /// Records whether a target was met; `obstacle` is printed only when it was not.
    pub fn target(
        &mut self,
        what: &'static str,
        measured: String,
        met: bool,
        obstacle: impl Into<String>,
    ) {
        self.targets.push(Target {
            what,
            measured,
            met,
            obstacle: obstacle.into(),
        });
    }

    fn targets_table(&self) -> String {
        let mut t = String::from(
            "## Targets\n\n| target | measured in this run | met | what stands in the way |\n| --- | --- | --- | --- |\n",
        );
        for x in &self.targets {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} |",
                x.what,
                x.measured,
                if x.met { "yes" } else { "**no**" },
                if x.met { "" } else { x.obstacle.as_str() }
            );
        }
        t.push('\n');
        t
    }
}

/// Writes the command lines a section ran, as a shell block (`# ...` lines are comments;
/// `<...>` stands for a list too long to print).
pub fn commands(out: &mut String, lines: &[String]) -> Result<()> {
    writeln!(out, "Command lines of this run:\n\n```sh")?;
    for l in lines {
        writeln!(out, "{l}")?;
    }
    writeln!(out, "```\n")?;
    Ok(())
}

/// A command-line comment showing the API request that created `spec`: `# {what}: POST
/// {api_url}/v1/faults {body}`; a long `to_cidrs` list is cut to its first entry, with a note.
pub fn post_line(what: &str, api_url: &str, spec: &fault_api::FaultSpec) -> Result<String> {
    let mut shown = spec.clone();
    let cidrs = shown.to_cidrs.len();
    shown.to_cidrs.truncate(1);
    let note = if cidrs > 1 {
        format!(" (to_cidrs: {cidrs} prefixes; the first shown)")
    } else {
        String::new()
    };
    Ok(format!(
        "# {what}: POST {api_url}/v1/faults {}{note}",
        serde_json::to_string(&shown)?
    ))
}

/// `faultctl` arguments of a fault from pod `a-0` to the pods labelled `app=b` in namespace
/// `bench` (the accuracy and expiry topologies), followed by `action` (`--loss 30%`...).
pub fn inject_a_to_b<'a>(action: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "inject",
        "-n",
        "bench",
        "--pod-prefix",
        "a-0",
        "--to-selector",
        "app=b",
    ];
    args.extend_from_slice(action);
    args
}

/// Runs a shell command line (for incumbents' tools and stdin-fed batches).
pub fn sh(script: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .context("sh")?;
    anyhow::ensure!(
        out.status.success(),
        "`{}`: {}",
        script.lines().next().unwrap_or(""),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `n` (at most 32,768) /32 prefixes from 198.19.128.0 (never a pod of ours, no traffic).
pub fn other_prefixes(n: usize) -> Vec<ipnet::IpNet> {
    (0..n)
        .map(|i| {
            ipnet::IpNet::from(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                0xc613_8000u32 + i as u32,
            )))
        })
        .collect()
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
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
    /// Sections to run; all when empty.
    pub only: Vec<String>,
}

/// Runs the benchmarks and writes `file` (after each section, so a failure keeps what came
/// before).
pub fn run(bin_dir: &Path, file: &Path, opts: &Options) -> Result<()> {
    // SAFETY: single-threaded at this point; the testkit reads it to find the binaries.
    unsafe { std::env::set_var("FAULTLINE_BIN_DIR", bin_dir) };
    let started = Instant::now();
    let mut head = String::new();
    let only = if opts.only.is_empty() {
        String::new()
    } else {
        format!(" --only {}", opts.only.join(","))
    };
    let command = format!(
        "cargo xtask bench{}{}{only}",
        if opts.quick { " --quick" } else { "" },
        if opts.with_vm { "" } else { " --no-vm" }
    );
    writeln!(head, "# Faultline benchmarks\n")?;
    writeln!(
        head,
        "Written by `{command}` on {}. Release build. Every table below comes from that one run.\n",
        machine()
    )?;
    writeln!(
        head,
        "Method: pods are network namespaces with veths on a bridge (the tests' own topology and probes, from `fault-testkit`); traffic is real and measured at the receiver; each comparison is made in the same run as its baseline, and repeated runs give the median and the spread. Two cores are shared by senders, receivers, the agent and the kernel, so absolute figures are modest; the ratios are the point.\n"
    )?;
    let stats_path = "/proc/sys/kernel/bpf_stats_enabled";
    let old_stats = fs::read_to_string(stats_path).unwrap_or_else(|_| "0".into());
    fs::write(stats_path, "1").context("enabling kernel.bpf_stats_enabled")?;
    type Section = Box<dyn Fn(&mut Report, &Options) -> Result<()>>;
    let sections: Vec<(&str, Section)> = vec![
        ("overhead", Box::new(overhead::run)),
        ("services", Box::new(services::run)),
        ("apply", Box::new(apply::run)),
        ("accuracy", Box::new(accuracy::run)),
        ("scale", Box::new(scale::run)),
        (
            "cluster",
            Box::new(|r: &mut Report, opts: &Options| {
                crate::kube::build()?;
                cluster::run(r, opts)
            }),
        ),
        ("expiry", Box::new(expiry::run)),
        ("load", Box::new(load::run)),
        ("node", Box::new(node::run)),
    ];
    let mut report = Report::default();
    let write = |report: &Report, tail: &str| -> Result<()> {
        let text = format!("{head}{}{}{tail}", report.targets_table(), report.out);
        fs::write(file, text).with_context(|| format!("writing {}", file.display()))
    };
    if let Some(unknown) = opts
        .only
        .iter()
        .find(|o| !sections.iter().any(|(n, _)| n == o))
    {
        anyhow::bail!(
            "--only: no section {unknown:?} (overhead, services, apply, accuracy, scale, cluster, expiry, load, node)"
        );
    }
    for (name, section) in sections {
        if !opts.only.is_empty() && !opts.only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("bench: {name}");
        let t = Instant::now();
        if let Err(e) = section(&mut report, opts) {
            writeln!(report.out, "\n**Section {name} failed:** {e:#}\n")?;
            eprintln!("bench: {name} failed: {e:#}");
        }
        eprintln!("bench: {name} took {:.0} s", t.elapsed().as_secs_f64());
        write(&report, "")?;
    }
    let _ = fs::write(stats_path, old_stats.trim());
    write(
        &report,
        &format!(
            "\nThe whole run took {:.0} s.\n",
            started.elapsed().as_secs_f64()
        ),
    )?;
    println!("wrote {}", file.display());
    Ok(())
}
