//! `cargo xtask cluster up | down | status`: a one-machine Kubernetes cluster from Debian's
//! packages and the `kubernetes` source package: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, containerd + runc, the kubelet, kube-proxy (iptables mode), the CNI
//! `bridge` + `host-local` (+ `portmap`, `loopback`) plugins. Pods get veths from the CNI and
//! addresses in 198.18.128.0/18; Services in 198.19.192.0/20; the node is 198.19.208.1 on a
//! address on `lo`. Images are built locally and imported (no registry).
//!
//! `up` is idempotent (a healthy cluster is left as it is; a partial one is removed and made
//! again) and cached (binaries in `~/.cache/faultline/kube-v1.20.2/bin`, images in
//! `~/.cache/faultline/images`); `down` removes every process, interface, route, netfilter
//! chain, mount, namespace and folder it made (see [`teardown`]).
mod components;
mod config;
mod host;
mod iptables;
pub mod layout;
mod pki;
mod procs;
mod teardown;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub use teardown::down;

use crate::{image, kube, setup, util::run_quiet};

/// Debian packages the cluster runs on.
pub const PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "containernetworking-plugins",
    "conntrack",
    "etcd-server",
    "iptables",
    "iproute2",
    "openssl",
    "curl",
];

/// The Kubernetes binaries the cluster runs.
pub const KUBE_BINARIES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

/// What `up` made that tests need: the kubeconfig and the images' names.
#[derive(Debug, Clone)]
pub struct Info {
    pub kubeconfig: std::path::PathBuf,
    pub workload_image: String,
    pub pause_image: String,
}

/// `kubectl` with the cluster's admin kubeconfig.
pub fn kubectl() -> Command {
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig").arg(layout::admin_kubeconfig());
    c
}

fn api_ready() -> bool {
    let token = admin_token().unwrap_or_default();
    Command::new("curl")
        .args(["-sf", "-m", "2", "--cacert"])
        .arg(layout::state("pki/ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{}/readyz", layout::api_url()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn admin_token() -> Option<String> {
    let text = std::fs::read_to_string(layout::admin_kubeconfig()).ok()?;
    let at = text.find("token: \"")? + 8;
    Some(text[at..].split('"').next()?.to_owned())
}

fn http_ok(url: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "-m", "2", "-o", "/dev/null", url])
        .status()
        .is_ok_and(|s| s.success())
}

fn node_ready() -> bool {
    crate::util::output(kubectl().args([
        "get",
        "node",
        layout::NODE_NAME,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]))
    .is_some_and(|s| s.trim() == "True")
}

/// Every component runs and the API server answers.
pub fn healthy() -> bool {
    layout::COMPONENTS.iter().all(|c| procs::pid(c).is_some()) && api_ready() && node_ready()
}

fn info() -> Result<Info> {
    let text = std::fs::read_to_string(layout::state("images.env"))
        .context("the cluster's images.env (is it up?)")?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
            .with_context(|| format!("{k} in images.env"))
    };
    Ok(Info {
        kubeconfig: layout::admin_kubeconfig(),
        workload_image: get("WORKLOAD_IMAGE")?,
        pause_image: get("PAUSE_IMAGE")?,
    })
}

/// Loads an image archive into the cluster's containerd (CRI namespace).
pub fn import(img: &image::Image) -> Result<()> {
    let t = Instant::now();
    run_quiet(
        Command::new("ctr")
            .arg("--address")
            .arg(layout::containerd_socket())
            .args(["--namespace", layout::CTR_NAMESPACE, "images", "import"])
            .arg(&img.archive),
    )?;
    eprintln!(
        "cluster: imported {} in {:.1} s",
        img.reference,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Installs and builds what the cluster needs (packages, binaries, images).
fn prerequisites() -> Result<(image::Image, image::Image)> {
    setup::core()?;
    setup::apt(PACKAGES)?;
    kube::build_binaries(KUBE_BINARIES)?;
    let bin = image::musl_binaries()?;
    Ok((image::pause()?, image::workload(&bin)?))
}

/// Brings the cluster up (see the module doc); returns what tests need.
pub fn up() -> Result<Info> {
    let (pause, workload) = prerequisites()?;
    if healthy() && info().is_ok_and(|i| i.workload_image == workload.reference) {
        eprintln!("cluster: already up");
        return info();
    }
    if std::path::Path::new(layout::STATE).exists() || std::path::Path::new(layout::RUN).exists() {
        eprintln!("cluster: removing a previous or partial cluster first");
        down()?;
    }
    let t = Instant::now();
    if let Err(e) = start_all(&pause, &workload) {
        eprintln!("cluster: up failed, removing what was made: {e:#}");
        if let Err(d) = down() {
            eprintln!("{d:#}");
        }
        return Err(e);
    }
    eprintln!("cluster: up in {:.1} s", t.elapsed().as_secs_f64());
    status()?;
    info()
}

fn start_all(pause: &image::Image, workload: &image::Image) -> Result<()> {
    host::record()?;
    host::share_mounts()?;
    host::add_node_address()?;
    pki::create()?;
    let containerd_cfg = config::write(&pause.reference)?;
    std::fs::write(
        layout::state("images.env"),
        format!(
            "PAUSE_IMAGE={}\nWORKLOAD_IMAGE={}\n",
            pause.reference, workload.reference
        ),
    )?;
    let long = Duration::from_secs(60);
    procs::start("etcd", &mut components::etcd())?;
    let etcd_health = format!("http://{}:{}/health", layout::NODE_IP, layout::ETCD_PORTS.0);
    procs::wait_ready("etcd", long, || http_ok(&etcd_health))?;
    procs::start("kube-apiserver", &mut components::apiserver())?;
    procs::wait_ready("kube-apiserver", long, api_ready)?;
    procs::start(
        "kube-controller-manager",
        &mut components::controller_manager(),
    )?;
    procs::start("kube-scheduler", &mut components::scheduler())?;
    procs::start("containerd", &mut components::containerd(&containerd_cfg))?;
    procs::wait_ready("containerd", long, || {
        crate::util::output(
            Command::new("ctr")
                .arg("--address")
                .arg(layout::containerd_socket())
                .arg("version"),
        )
        .is_some()
    })?;
    import(pause)?;
    import(workload)?;
    procs::start("kubelet", &mut components::kubelet())?;
    procs::wait_ready("kubelet", long, node_ready)?;
    procs::start("kube-proxy", &mut components::kube_proxy())?;
    let proxy_health = format!("http://{}:10256/healthz", layout::NODE_IP);
    procs::wait_ready("kube-proxy", long, || http_ok(&proxy_health))?;
    procs::wait_ready("kube-controller-manager", long, || {
        crate::util::output(kubectl().args(["get", "serviceaccount", "default"])).is_some()
    })?;
    for c in layout::COMPONENTS {
        if procs::pid(c).is_none() {
            bail!("{c} exited; its log ends with:\n{}", procs::log_tail(c, 30));
        }
    }
    Ok(())
}

/// Prints what runs, the kubeconfig's path and the images.
pub fn status() -> Result<()> {
    println!("{:<26} state", "component");
    for c in layout::COMPONENTS {
        match procs::pid(c) {
            Some(pid) => println!(
                "{c:<26} running (pid {pid}), log {}",
                layout::log_of(c).display()
            ),
            None => println!("{c:<26} not running"),
        }
    }
    let api = api_ready();
    println!(
        "{:<26} {}",
        "API server",
        if api {
            layout::api_url()
        } else {
            "not ready".into()
        }
    );
    if api {
        let node = if node_ready() { "Ready" } else { "not Ready" };
        println!("{:<26} {node}", format!("node {}", layout::NODE_NAME));
    }
    if let Ok(i) = info() {
        println!("{:<26} {}", "sandbox image", i.pause_image);
        println!("{:<26} {}", "workload image", i.workload_image);
    }
    if layout::admin_kubeconfig().exists() {
        println!("kubeconfig: {}", layout::admin_kubeconfig().display());
        println!("export KUBECONFIG={}", layout::admin_kubeconfig().display());
    } else {
        println!("no cluster (cargo xtask cluster up)");
    }
    Ok(())
}
