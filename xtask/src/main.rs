//! `cargo xtask <task>`: everything around the code. Each task installs what it needs first
//! (idempotently), so a fresh Debian machine with rustup and apt needs nothing else:
//! - `setup`: toolchain parts, apt packages, bpffs;
//! - `build`: the agent (with its eBPF programs) and faultctl;
//! - `demo`: the main job end to end on real packets;
//! - `test`: every test suite;
//! - `fuzz`: the fuzz targets of `fuzz/`, each for a while.
mod bench;
mod cargo;
mod demo;
mod fuzz;
mod kube;
mod setup;
mod test;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Faultline project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build fault-agent (with its eBPF programs) and faultctl.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the main job end to end on real packets: pods, agent, faults, measurements.
    Demo,
    /// Run every test suite (what CI runs).
    Test,
    /// Fuzz every input surface (cargo-fuzz): each target for a while; see DEVELOPERS.md.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// Run only these targets (units, selector, cidr, spec_json, seed_inject, crd,
        /// kube_objects, inventory, netlink, api).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Seconds one input may run before it counts as a hang.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Build (once, cached) the kube-apiserver of the cluster tests.
    KubeBuild,
    /// Run a shell command as root in Debian's 6.1 kernel (VM, software emulation).
    Vm {
        /// The command line.
        command: String,
    },
    /// Measure overhead, apply/lift times, accuracy, scale and expiry; write BENCHMARKS.md.
    Bench {
        /// Where to write the results.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: std::path::PathBuf,
        /// Fewer repetitions and cycles (a smoke run).
        #[arg(long)]
        quick: bool,
        /// Skip the delay figures (they need the 6.1 VM, ~2 minutes).
        #[arg(long)]
        no_vm: bool,
        /// Run only these sections (overhead, services, apply, accuracy, scale, cluster, expiry), for
        /// working on one; the published file comes from a run of all.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::core(),
        Task::Build { release } => {
            setup::core()?;
            cargo::build(release).map(|_| ())
        }
        Task::Demo => {
            setup::core()?;
            let bin = cargo::build(true)?;
            demo::run(&bin)
        }
        Task::Test => test::run(),
        Task::Fuzz {
            seconds,
            only,
            timeout,
        } => fuzz::run_all(&fuzz::Options {
            seconds,
            only,
            timeout,
        }),
        Task::KubeBuild => kube::build(),
        Task::Vm { command } => vm::run_inside(&command),
        Task::Bench {
            out,
            quick,
            no_vm,
            only,
        } => {
            setup::core()?;
            let bin = cargo::build(true)?;
            bench::run(
                &bin,
                &out,
                &bench::Options {
                    quick,
                    with_vm: !no_vm,
                    only,
                },
            )
        }
    }
}
