//! The Kubernetes test environment's binaries: kube-apiserver v1.20.2 built once from Debian's
//! `kubernetes` source package (`scripts/kube-build.sh`, ~6 min on 2 cores) and cached outside
//! the repository, in `~/.cache/faultline/kube-v1.20.2/bin`. The tests start the server
//! themselves (`fault_testkit::kube::KubeEnv`).
use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::{
    setup,
    util::{root, run},
};

/// The cache folder (the testkit reads the same default, or `FAULTLINE_KUBE_BIN`).
pub fn cache_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/faultline/kube-v1.20.2")
}

/// Builds the binaries unless cached; installs etcd and the build's packages.
pub fn build() -> Result<()> {
    setup::apt(setup::KUBE_PACKAGES)?;
    let dir = cache_dir();
    if dir.join("bin/kube-apiserver").exists() {
        eprintln!("setup: kube-apiserver cached in {}", dir.display());
        return Ok(());
    }
    run(Command::new("bash")
        .arg(root().join("xtask/scripts/kube-build.sh"))
        .arg(&dir))
}
