//! Idempotent installation of what the project needs. Each step checks first and says when
//! there is nothing to do.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{output, path_with_cargo_bin, run};

/// Debian packages the datapath tests, the demo and the benchmarks use.
pub const CORE_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "iputils-ping",
    "curl",
    "iperf3",
    "nftables",
    "iptables",
    "ipset",
];

/// What `cargo test` needs beyond [`CORE_PACKAGES`]: a real Prometheus for the metrics test
/// (`fault-agent/tests/metrics.rs`; it runs the binary itself, the package's service is not used),
/// and a headless Chromium with its WebDriver for the dashboard test (`tests/dashboard.rs`).
pub const TEST_PACKAGES: &[&str] = &["prometheus", "chromium", "chromium-driver"];

/// What building and running the Kubernetes test environment needs.
pub const KUBE_PACKAGES: &[&str] = &[
    "etcd-server",
    "golang-go",
    "golang-github-modern-go-reflect2-dev",
    "dpkg-dev",
    "openssl",
];

/// What the 6.1 VM needs: qemu, Debian's 6.1 kernel, busybox (virtme-ng's init), and a venv
/// for virtme-ng.
pub const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "linux-image-amd64",
    "busybox-static",
    "python3-venv",
];

/// Installs the Debian packages of `pkgs` that are missing.
pub fn apt(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        eprintln!("setup: apt packages present ({})", pkgs.join(" "));
        return Ok(());
    }
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// nightly's rust-src (the eBPF crate is built with `-Z build-std=core`).
fn rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "the nightly toolchain is missing: `rustup toolchain install nightly` (the eBPF programs need it)"
        );
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: nightly rust-src present");
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker, linked against nightly rustc's own LLVM (the one that emits our bitcode).
fn bpf_linker() -> Result<()> {
    let path = path_with_cargo_bin();
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot")?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    // bpf-linker needs nightly's libLLVM by its soname; rustc puts the sysroot's lib folder
    // on the library path when it runs a linker, so check it the same way.
    if output(
        Command::new("bpf-linker")
            .arg("--version")
            .env("PATH", &path)
            .env("LD_LIBRARY_PATH", &lib_dir),
    )
    .is_some()
    {
        eprintln!("setup: bpf-linker present");
        return Ok(());
    }
    let llvm = std::fs::read_dir(&lib_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let major = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split('.').next())
        .context("LLVM version")?
        .to_owned();
    // The prefix must stay: bpf-linker keeps an rpath to it.
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let prefix = Path::new(&home).join(format!(".cache/bpf-linker-llvm{major}"));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .env("PATH", &path))
}

/// bpffs at /sys/fs/bpf (the agent pins its maps and links there).
fn bpffs() -> Result<()> {
    let st = nix::sys::statfs::statfs("/sys/fs/bpf").context("statfs /sys/fs/bpf")?;
    if st.filesystem_type().0 as i64 == 0xcafe4a11 {
        eprintln!("setup: bpffs mounted");
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// cargo-fuzz (the fuzz targets' driver, `cargo xtask fuzz`), from crates.io when `cargo fuzz`
/// does not run. It drives nightly (`cargo +nightly fuzz`), which [`core`] checks for.
pub fn cargo_fuzz() -> Result<()> {
    let path = path_with_cargo_bin();
    if output(
        Command::new("cargo")
            .args(["fuzz", "--version"])
            .env("PATH", &path),
    )
    .is_some()
    {
        eprintln!("setup: cargo-fuzz present");
        return Ok(());
    }
    run(Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .env("PATH", &path))
}

/// What building, the demo and the datapath tests need.
pub fn core() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "Faultline's tasks load eBPF programs and create network namespaces: run them as root"
        );
    }
    apt(CORE_PACKAGES)?;
    rust_src()?;
    bpf_linker()?;
    bpffs()
}

/// A Python 3 with venv for the Python client's suite; returns the venv's interpreter folder
/// (`target/pyenv/bin`) with the client installed in it (editable, with its test extras).
pub fn python_venv(target: &Path, client: &Path) -> Result<std::path::PathBuf> {
    let usable = output(Command::new("python3").args(["-c", "import venv, ensurepip"])).is_some();
    if !usable {
        apt(&["python3", "python3-venv", "python3-pip"])?;
    }
    let venv = target.join("pyenv");
    let bin = venv.join("bin");
    if !bin.join("python").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let installed = output(
        Command::new(bin.join("python"))
            .args(["-c", "import fault_injection_client, pytest, httpx"]),
    )
    .is_some();
    if installed {
        eprintln!("setup: Python venv ready ({})", venv.display());
    } else {
        run(Command::new(bin.join("pip"))
            .args(["install", "--quiet", "-e"])
            .arg(format!("{}[test]", client.display())))?;
    }
    Ok(bin)
}

/// virtme-ng in its own venv (`~/.cache/faultline/venv`); returns the venv's bin folder.
pub fn virtme_venv() -> Result<std::path::PathBuf> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let venv = Path::new(&home).join(".cache/faultline/venv");
    let bin = venv.join("bin");
    if output(Command::new(bin.join("vng")).arg("--version")).is_some() {
        eprintln!("setup: virtme-ng present");
        return Ok(bin);
    }
    if !bin.join("python").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(bin.join("pip")).args(["install", "--quiet", "virtme-ng"]))?;
    Ok(bin)
}
