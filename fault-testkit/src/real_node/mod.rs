//! A real Kubernetes node for the `node` suite and the benchmarks: the one-machine cluster of
//! `cargo xtask cluster up` (a real kubelet, containerd, CNI bridge and kube-proxy), reached
//! with `kubectl` as users reach it. This module does not start the cluster; it reads where it
//! is from the environment that `cargo xtask test` sets ([`Cluster::from_env`]):
//! - `FAULTLINE_NODE_KUBECONFIG`: the admin kubeconfig;
//! - `FAULTLINE_NODE_IMAGE`: Faultline's image, imported into the node's containerd;
//! - `FAULTLINE_NODE_WORKLOAD_IMAGE`: the workload image (busybox + `fault-testenv serve`).
//!
//! - [`deploy`]: Faultline from `deploy/` (`kubectl apply -k` of an overlay that only sets the
//!   image), the API token Secret, readiness, the API's Service address;
//! - [`workload`]: the inference topology as StatefulSets and a Deployment with Services;
//! - [`pods`]: the pods as the API reports them, and each one's network namespace (found by
//!   its address, as the agent does) for probes;
//! - [`watch`]: pod events with the instant each was seen (for coverage times);
//! - [`measure`]: apply, lift and coverage instants on streams between pods; API cycles.
pub mod deploy;
pub mod measure;
pub mod pods;
pub mod watch;
pub mod workload;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The cluster a suite runs against.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Faultline's image (`repo/name:tag`).
    pub faultline_image: String,
    /// The workload image.
    pub workload_image: String,
}

impl Cluster {
    /// The cluster named by the environment, or `None` when `FAULTLINE_NODE_KUBECONFIG` is
    /// unset (no cluster: the suite is skipped).
    pub fn from_env() -> Result<Option<Self>> {
        let Some(kubeconfig) = std::env::var_os("FAULTLINE_NODE_KUBECONFIG") else {
            return Ok(None);
        };
        let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
        Ok(Some(Self {
            kubeconfig: kubeconfig.into(),
            faultline_image: var("FAULTLINE_NODE_IMAGE")?,
            workload_image: var("FAULTLINE_NODE_WORKLOAD_IMAGE")?,
        }))
    }

    /// `kubectl` with this cluster's kubeconfig.
    pub fn command(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// Runs kubectl; returns its stdout, or fails with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl with `input` on its stdin (`apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let mut child = self
            .command()
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        if let Some(text) = input {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl ... -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.kubectl(&a)?;
        serde_json::from_str(&text).with_context(|| format!("kubectl {}: not JSON", a.join(" ")))
    }
}

/// The repository's `deploy/` folder.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("deploy"))
        .unwrap_or_else(|| PathBuf::from("deploy"))
}
