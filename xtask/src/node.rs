//! The `node` suite of `cargo xtask test`: brings the one-machine cluster up ([`cluster`]),
//! builds Faultline's image from `deploy/Containerfile` and imports it, runs
//! `fault-agent/tests/node` (which installs Faultline with `kubectl apply -k` and runs the
//! workload), then removes the cluster, also when a test failed. The cluster's logs are kept
//! in `target/node-logs/` for a look after a failure.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::{
    cargo, cluster, image, setup,
    test::Skipped,
    util::{path_with_cargo_bin, root, run},
};

/// Why this machine cannot run the cluster, if it cannot (checked before building anything).
fn cannot_run() -> Option<String> {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.contains("overlay") {
        return Some(
            "the kernel has no overlay filesystem (containerd's overlayfs snapshotter)".into(),
        );
    }
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
    let have = |c: &str| {
        Path::new("/sys/fs/cgroup").join(c).is_dir()
            || std::fs::read_to_string(v2).is_ok_and(|s| s.split_whitespace().any(|x| x == c))
    };
    let missing: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !have(c))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "cgroup controllers {missing:?} are missing (the kubelet and runc need them)"
        ));
    }
    None
}

fn save_logs() -> PathBuf {
    let to = cargo::target_dir().join("node-logs");
    let _ = std::fs::remove_dir_all(&to);
    let from = cluster::layout::state("logs");
    if std::fs::create_dir_all(&to).is_ok() {
        for e in std::fs::read_dir(&from).into_iter().flatten().flatten() {
            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
        }
    }
    to
}

/// Runs the suite; the cluster is removed whatever happens.
pub fn run_suite(bin: &Path) -> Result<()> {
    if let Some(why) = cannot_run() {
        return Err(Skipped(why).into());
    }
    let t = Instant::now();
    let info = cluster::up().context("cluster up")?;
    eprintln!("node: cluster up ({:.0} s)", t.elapsed().as_secs_f64());
    let result = tests(bin, &info);
    let logs = save_logs();
    eprintln!("node: cluster logs copied to {}", logs.display());
    let down = cluster::down();
    result.and(down)
}

fn tests(bin: &Path, info: &cluster::Info) -> Result<()> {
    let t = Instant::now();
    let img = image::faultline(&image::musl_binaries()?)?;
    cluster::import(&img)?;
    eprintln!(
        "node: Faultline's image {} is {:.1} MiB ({:.0} s)",
        img.reference,
        img.size() as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    let client = root().join("clients/python");
    let py = setup::python_venv(&cargo::target_dir(), &client)?;
    run(Command::new("cargo")
        .args(["test", "-p", "fault-agent", "--test", "node", "--"])
        .args(["--ignored", "--test-threads=1", "--nocapture"])
        .current_dir(root())
        .env("PATH", path_with_cargo_bin())
        .env("FAULTLINE_BIN_DIR", bin)
        .env("FAULTLINE_NODE_KUBECONFIG", &info.kubeconfig)
        .env("FAULTLINE_NODE_IMAGE", &img.reference)
        .env("FAULTLINE_NODE_WORKLOAD_IMAGE", &info.workload_image)
        .env("FAULTLINE_PYTEST", py.join("pytest")))
}
