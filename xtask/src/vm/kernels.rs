//! The kernels the VM boots: Debian bookworm's 6.1 (the machine's own apt sources install it
//! in `/boot`) and Debian bullseye's 5.10, downloaded once into
//! `~/.cache/faultline/kernel-5.10` through a private apt folder (the system's apt sources and
//! dpkg database stay untouched).
//!
//! The VM shares this machine's root filesystem, so `modprobe` inside looks for the guest
//! kernel's modules in `/lib/modules/<version>`: for 5.10 that is a symlink into the cache
//! (made here, idempotently; a real directory of that name is left alone).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::run_quiet;

/// A kernel for the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    /// Debian bookworm's 6.1 (`linux-image-amd64`): no TCX (netlink clsact attach), sch_fq.
    #[value(name = "6.1")]
    Debian61,
    /// Debian bullseye's 5.10 (`linux-image-5.10.0-*-amd64`): no TCX, sch_fq, BTF.
    #[value(name = "5.10")]
    Debian510,
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kernel::Debian61 => "6.1",
            Kernel::Debian510 => "5.10",
        })
    }
}

impl Kernel {
    /// The kernel image to boot, fetched first when it is not there yet.
    pub fn image(self) -> Result<PathBuf> {
        match self {
            Kernel::Debian61 => newest_in(Path::new("/boot"), "vmlinuz-6.1.")
                .context("no /boot/vmlinuz-6.1.* (apt package linux-image-amd64)"),
            Kernel::Debian510 => bullseye(),
        }
    }
}

/// The last (by name) file of `dir` whose name starts with `prefix`.
fn newest_in(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    found.sort();
    found.pop()
}

fn cache() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/faultline/kernel-5.10")
}

/// Bullseye's kernel image, downloaded and unpacked on first use, its modules indexed
/// (`depmod`) and linked into `/lib/modules`.
fn bullseye() -> Result<PathBuf> {
    let dir = cache();
    let unpacked = dir.join("root");
    let image = match newest_in(&unpacked.join("boot"), "vmlinuz-5.10.") {
        Some(i) => i,
        None => {
            download(&dir, &unpacked)?;
            newest_in(&unpacked.join("boot"), "vmlinuz-5.10.")
                .context("the bullseye kernel package has no boot/vmlinuz-5.10.*")?
        }
    };
    let version = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("kernel image name")?
        .to_owned();
    link_modules(&unpacked, &version)?;
    Ok(image)
}

/// `apt-get download` of bullseye's `linux-image-5.10.0-*-amd64` (the one its
/// `linux-image-amd64` depends on) into `dir`, unpacked into `unpacked`.
fn download(dir: &Path, unpacked: &Path) -> Result<()> {
    eprintln!("setup: downloading Debian bullseye's 5.10 kernel for the VM (~56 MB)");
    for d in [
        "apt/parts",
        "apt/lists/partial",
        "apt/cache/archives/partial",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let mirror = mirror().unwrap_or_else(|| "http://deb.debian.org/debian".into());
    std::fs::write(
        dir.join("apt/parts/bullseye.sources"),
        format!(
            "Types: deb\nURIs: {mirror}\nSuites: bullseye\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )?;
    let opts: Vec<String> = [
        ("Dir::Etc::SourceList", "/dev/null".to_owned()),
        ("Dir::Etc::SourceParts", path(dir, "apt/parts")),
        ("Dir::State::Lists", path(dir, "apt/lists")),
        ("Dir::Cache", path(dir, "apt/cache")),
        ("Dir::State::status", "/dev/null".to_owned()),
        ("APT::Sandbox::User", "root".to_owned()),
    ]
    .iter()
    .flat_map(|(k, v)| ["-o".to_owned(), format!("{k}={v}")])
    .collect();
    run_quiet(Command::new("apt-get").args(&opts).arg("update"))?;
    let deps = run_quiet(
        Command::new("apt-cache")
            .args(&opts)
            .args(["depends", "linux-image-amd64"]),
    )?;
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-5.10."))
        .with_context(|| format!("bullseye's linux-image-amd64 depends on no 5.10 image:\n{deps}"))?
        .to_owned();
    run_quiet(
        Command::new("apt-get")
            .args(&opts)
            .args(["download", &package])
            .current_dir(dir),
    )?;
    let deb = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .with_context(|| format!("{package}'s .deb not in {}", dir.display()))?;
    let tmp = dir.join("root.partial");
    let _ = std::fs::remove_dir_all(&tmp);
    run_quiet(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp))?;
    let version = package.trim_start_matches("linux-image-");
    run_quiet(Command::new("depmod").arg("-b").arg(&tmp).arg(version))?;
    std::fs::rename(&tmp, unpacked).context("moving the unpacked kernel in place")?;
    let _ = std::fs::remove_file(&deb);
    Ok(())
}

fn path(dir: &Path, sub: &str) -> String {
    dir.join(sub).display().to_string()
}

/// The machine's own Debian mirror (deb822 sources, else sources.list).
fn mirror() -> Option<String> {
    let deb822 = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").ok();
    if let Some(uri) = deb822
        .as_deref()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("URIs:")))
        .and_then(|u| u.split_whitespace().next())
    {
        return Some(uri.to_owned());
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").ok()?;
    list.lines()
        .find_map(|l| l.strip_prefix("deb "))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http")))
        .map(str::to_owned)
}

/// `/lib/modules/<version>` -> the unpacked modules (idempotent).
fn link_modules(unpacked: &Path, version: &str) -> Result<()> {
    let target = unpacked.join("lib/modules").join(version);
    let link = Path::new("/lib/modules").join(version);
    match std::fs::read_link(&link) {
        Ok(t) if t == target => return Ok(()),
        Ok(_) => std::fs::remove_file(&link)?,
        Err(_) if link.exists() => {
            // A real install of this kernel: its own modules serve as well.
            return Ok(());
        }
        Err(_) => {}
    }
    if !target.is_dir() {
        bail!("{} missing", target.display());
    }
    std::os::unix::fs::symlink(&target, &link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}
