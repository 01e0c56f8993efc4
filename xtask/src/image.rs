//! Container images without a registry or a base image: each is a `FROM scratch` recipe over a
//! folder of static binaries, built with buildah (Debian's package; vfs storage in a temporary
//! folder, so nothing lands in /var/lib/containers) into a docker-archive file cached under
//! `~/.cache/faultline/images/`, named by a hash of the recipe and the files. `ctr images
//! import` loads such a file into containerd.
//!
//! - Faultline's image: `deploy/Containerfile` over the musl release builds of `fault-agent`
//!   and `faultctl` (what users build);
//! - the sandbox ("pause") image: `xtask/images/pause` (a C program, built with musl-gcc);
//! - the node suite's workload image: `xtask/images/workload` (busybox and `fault-testenv`).
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cargo, setup,
    util::{path_with_cargo_bin, root, run, run_quiet},
};

/// The Rust target of the image binaries.
pub const MUSL: &str = "x86_64-unknown-linux-musl";
/// Registry part of the images' names (never pulled: imported, and `IfNotPresent`).
pub const REPO: &str = "docker.io/faultline-node";

/// What building images needs: buildah, musl-gcc (the sandbox program, and ring's C code in
/// the musl builds), busybox.
pub const PACKAGES: &[&str] = &["buildah", "musl-tools", "busybox-static"];

/// A built image: its full name and its archive.
#[derive(Debug, Clone)]
pub struct Image {
    /// `docker.io/faultline-node/<name>:<hash>`.
    pub reference: String,
    pub archive: PathBuf,
}

impl Image {
    /// The archive's size in bytes.
    pub fn size(&self) -> u64 {
        std::fs::metadata(&self.archive).map_or(0, |m| m.len())
    }
}

fn cache() -> PathBuf {
    crate::cluster::layout::cache_root().join("images")
}

/// sha256 of the recipe and of every file of the context (names and contents), 12 hex digits.
fn content_hash(containerfile: &Path, context: &Path) -> Result<String> {
    let mut files = vec![containerfile.to_owned()];
    let mut stack = vec![context.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    files.sort();
    let mut listing = String::new();
    for f in &files {
        let rel = f.strip_prefix(context).unwrap_or(f).display().to_string();
        let sum = if f.is_symlink() {
            std::fs::read_link(f)?.display().to_string()
        } else {
            let out = run_quiet(Command::new("sha256sum").arg(f))?;
            out.split_whitespace().next().unwrap_or_default().to_owned()
        };
        listing.push_str(&format!("{rel} {sum}\n"));
    }
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("sha256sum stdin")?
        .write_all(listing.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout)[..12].to_owned())
}

/// Builds `name` from `containerfile` over `context` unless the archive for this content is
/// cached.
pub fn build(name: &str, containerfile: &Path, context: &Path) -> Result<Image> {
    let tag = content_hash(containerfile, context)?;
    let reference = format!("{REPO}/{name}:{tag}");
    std::fs::create_dir_all(cache())?;
    let archive = cache().join(format!("{name}-{tag}.tar"));
    let image = Image { reference, archive };
    if image.archive.exists() {
        eprintln!(
            "image: {} cached ({})",
            image.reference,
            image.archive.display()
        );
        return Ok(image);
    }
    let store = tempfile::Builder::new()
        .prefix("faultline-buildah-")
        .tempdir()?;
    let storage = |c: &mut Command| {
        c.arg("--root")
            .arg(store.path().join("root"))
            .arg("--runroot")
            .arg(store.path().join("runroot"))
            .args(["--storage-driver", "vfs"]);
    };
    let mut bud = Command::new("buildah");
    storage(&mut bud);
    bud.args(["bud", "--format", "docker", "--layers=false", "-f"])
        .arg(containerfile)
        .args(["-t", &image.reference])
        .arg(context);
    run(&mut bud)?;
    let tmp = image.archive.with_extension("tar.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut push = Command::new("buildah");
    storage(&mut push);
    push.arg("push").arg(&image.reference).arg(format!(
        "docker-archive:{}:{}",
        tmp.display(),
        image.reference
    ));
    run_quiet(&mut push)?;
    std::fs::rename(&tmp, &image.archive)?;
    eprintln!(
        "image: built {} ({:.1} MiB)",
        image.reference,
        image.size() as f64 / 1048576.0
    );
    Ok(image)
}

/// The musl release builds of fault-agent, faultctl and fault-testenv; returns their folder.
pub fn musl_binaries() -> Result<PathBuf> {
    setup::apt(PACKAGES)?;
    let targets = run_quiet(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !targets.lines().any(|l| l.trim() == MUSL) {
        run(Command::new("rustup").args(["target", "add", MUSL]))?;
    }
    run(Command::new("cargo")
        .args(["build", "--release", "--target", MUSL])
        .args(cargo::BINARIES)
        .current_dir(root())
        .env("PATH", path_with_cargo_bin()))?;
    Ok(cargo::target_dir().join(MUSL).join("release"))
}

/// A fresh context folder under the target dir holding `files` (copied; symlinks as
/// `(name, target)`).
fn context(name: &str, files: &[(&str, &Path)], links: &[(&str, &str)]) -> Result<PathBuf> {
    let dir = cargo::target_dir().join("image").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    for (rel, src) in files {
        let dst = dir.join(rel);
        std::fs::create_dir_all(dst.parent().context("no parent")?)?;
        std::fs::copy(src, &dst)
            .with_context(|| format!("copying {} into the image", src.display()))?;
    }
    for (rel, target) in links {
        std::os::unix::fs::symlink(target, dir.join(rel))?;
    }
    Ok(dir)
}

/// Faultline's image from `deploy/Containerfile`.
pub fn faultline(bin: &Path) -> Result<Image> {
    let ctx = context(
        "faultline",
        &[
            ("fault-agent", &bin.join("fault-agent")),
            ("faultctl", &bin.join("faultctl")),
        ],
        &[],
    )?;
    build("faultline", &root().join("deploy/Containerfile"), &ctx)
}

/// The sandbox image: `pause.c` compiled static with musl-gcc.
pub fn pause() -> Result<Image> {
    setup::apt(PACKAGES)?;
    let src = root().join("xtask/images/pause");
    let ctx = cargo::target_dir().join("image/pause");
    std::fs::create_dir_all(&ctx)?;
    run_quiet(
        Command::new("musl-gcc")
            .args(["-Os", "-static", "-s", "-Wall", "-Wextra", "-o"])
            .arg(ctx.join("pause"))
            .arg(src.join("pause.c")),
    )?;
    build("pause", &src.join("Containerfile"), &ctx)
}

/// The workload image: busybox and fault-testenv.
pub fn workload(bin: &Path) -> Result<Image> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox missing (Debian package busybox-static)");
    }
    let ctx = context(
        "workload",
        &[
            ("bin/busybox", busybox),
            ("bin/fault-testenv", &bin.join("fault-testenv")),
        ],
        &[("bin/sh", "busybox"), ("bin/sleep", "busybox")],
    )?;
    build(
        "workload",
        &root().join("xtask/images/workload/Containerfile"),
        &ctx,
    )
}
