//! `cargo xtask <task>`: everything around the code. Each task installs what it needs first
//! (idempotently), so a fresh Debian machine with rustup and apt needs nothing else:
//! - `setup`: toolchain parts, apt packages, bpffs;
//! - `build`: the agent (with its eBPF programs) and faultctl;
//! - `demo`: the main job end to end on real packets;
//! - `test`: every test suite;
//! - `cluster up|down|status`: a one-machine Kubernetes cluster (see [`cluster`]);
//! - `image`: Faultline's container image from `deploy/Containerfile`;
//! - `crash`: the agent killed at every step, 200 runs;
//! - `vm [--kernel 6.1|5.10] CMD`: a shell command as root in Debian's 6.1 or 5.10 kernel (VM);
//! - `kernels [--kernel 5.10|6.1]`: the datapath and VM suites whole on that kernel;
//! - `soak`: 1,000 inject/recover cycles under traffic and pod churn, then back to baseline;
//! - `fuzz`: the fuzz targets of `fuzz/`, each for a while.
mod bench;
mod cargo;
mod cluster;
mod crash;
mod demo;
mod fuzz;
mod image;
mod kube;
mod node;
mod setup;
mod soak;
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
    Test {
        /// Run only these suites (unit, cluster, node, vm, vm510, fuzz, pytest).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Fuzz every input surface (cargo-fuzz): each target for a while; see DEVELOPERS.md.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Run only these targets (units, selector, cidr, spec_json, seed_inject, crd,
        /// kube_objects, inventory, netlink, api).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Seconds one input may run before it counts as a hang.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Kill the agent at every step (failpoints), 200 runs, checking after each restart that
    /// the maps match the faults and nothing leaks (~15 minutes).
    Crash {
        /// Runs in all: every case once, then random ones.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Order of the random runs (printed by a run, to replay it).
        #[arg(long)]
        seed: Option<u64>,
        /// Only these failpoint rules, in order, e.g. `recover/end.saved:1,netlink:start/attach.one:2`
        /// (`netlink:` first: that attach mode for all).
        #[arg(long)]
        rules: Option<String>,
    },
    /// Soak: inject/recover cycles of mixed kinds on 20 pods under continuous traffic, pods
    /// added and removed meanwhile; then every map, link, pin, qdisc, the agent's RSS and fds
    /// must be back at the idle baseline, and the unaffected pair must have lost nothing.
    Soak {
        /// Inject/recover cycles.
        #[arg(long, default_value_t = 1000)]
        cycles: usize,
        /// The RNG's seed (printed by a run, to replay it).
        #[arg(long)]
        seed: Option<u64>,
        /// Write the figures there, as Markdown (a section of BENCHMARKS.md).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Build (once, cached) the kube-apiserver of the cluster tests.
    KubeBuild,
    /// A one-machine Kubernetes cluster (containerd, CNI bridge, kubelet, kube-proxy...).
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Build Faultline's image (deploy/Containerfile over static release binaries, with
    /// buildah); import it into the cluster when it runs.
    Image,
    /// Run the whole datapath suite and VM suite on another kernel (VM, software emulation;
    /// about 25 minutes): what a node running that kernel gets.
    Kernels {
        /// The kernel to boot.
        #[arg(long, default_value = "5.10")]
        kernel: vm::Kernel,
    },
    /// Run a shell command as root in Debian's 6.1 or 5.10 kernel (VM, software emulation).
    Vm {
        /// The kernel to boot (5.10 is downloaded once, into ~/.cache/faultline/kernel-5.10).
        #[arg(long, default_value = "6.1")]
        kernel: vm::Kernel,
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
        /// Run only these sections (overhead, services, apply, accuracy, scale, cluster, expiry, node), for
        /// working on one; the published file comes from a run of all.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Start it (idempotent; builds and caches what it needs first).
    Up,
    /// Stop it and remove everything it made.
    Down,
    /// What runs, and the kubeconfig's path.
    Status,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::core().and_then(|()| setup::cargo_fuzz()),
        Task::Build { release } => {
            setup::core()?;
            cargo::build(release).map(|_| ())
        }
        Task::Demo => {
            setup::core()?;
            let bin = cargo::build(true)?;
            demo::run(&bin)
        }
        Task::Test { only } => test::run(&only),
        Task::Fuzz {
            seconds,
            only,
            timeout,
        } => fuzz::run_all(&fuzz::Options {
            seconds,
            only,
            timeout,
            seed: None,
        }),
        Task::Crash { runs, seed, rules } => crash::run_all(&crash::Options { runs, seed, rules }),
        Task::Soak { cycles, seed, out } => soak::run_all(&soak::Options { cycles, seed, out }),
        Task::KubeBuild => kube::build(),
        Task::Cluster { action } => match action {
            ClusterAction::Up => cluster::up().map(|_| ()),
            ClusterAction::Down => cluster::down(),
            ClusterAction::Status => cluster::status(),
        },
        Task::Image => {
            setup::core()?;
            let img = image::faultline(&image::musl_binaries()?)?;
            println!(
                "{} ({:.1} MiB): {}",
                img.reference,
                img.size() as f64 / 1048576.0,
                img.archive.display()
            );
            if cluster::healthy() {
                cluster::import(&img)?;
            }
            let (name, tag) = img
                .reference
                .rsplit_once(':')
                .unwrap_or((&img.reference, ""));
            println!(
                "kustomize: images: [{{name: ghcr.io/faultline-dev/faultline, newName: {name}, newTag: \"{tag}\"}}]"
            );
            Ok(())
        }
        Task::Vm { kernel, command } => vm::run_inside(kernel, &command),
        Task::Kernels { kernel } => {
            setup::core()?;
            let bin = cargo::build(false)?;
            vm::kernel_suites(kernel, &bin, false)
        }
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
