//! The Kubernetes binaries: v1.20.2 built once from Debian's `kubernetes` source package
//! (`scripts/kube-build.sh`: ~6 min on 2 cores for the API server and the controller manager,
//! ~4 more for the kubelet, kube-proxy and kube-scheduler) and cached outside the repository,
//! in `~/.cache/faultline/kube-v1.20.2/bin`. The cluster tests start the API server themselves
//! (`fault_testkit::kube::KubeEnv`); `cargo xtask cluster` runs them all.
use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::{
    setup,
    util::{root, run},
};

/// The cache folder (the testkit reads the same default, or `FAULTLINE_KUBE_BIN`).
pub fn cache_dir() -> PathBuf {
    crate::cluster::layout::cache_root().join("kube-v1.20.2")
}

/// Builds the API server and the controller manager unless cached; installs etcd and the
/// build's packages.
pub fn build() -> Result<()> {
    build_binaries(&["kube-apiserver", "kube-controller-manager"])
}

/// Builds those of `binaries` that are not cached.
pub fn build_binaries(binaries: &[&str]) -> Result<()> {
    setup::apt(setup::KUBE_PACKAGES)?;
    let dir = cache_dir();
    if binaries.iter().all(|b| dir.join("bin").join(b).exists()) {
        eprintln!("setup: {} cached in {}", binaries.join(", "), dir.display());
        return Ok(());
    }
    run(Command::new("bash")
        .arg(root().join("xtask/scripts/kube-build.sh"))
        .arg(&dir)
        .args(binaries))
}
