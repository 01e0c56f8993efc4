//! Other kernels for the tests that need what this machine's kernel lacks (`sch_fq`, and the
//! netlink attach path of kernels without TCX), and for the kernels nodes run: Debian's 6.1
//! and 5.10 ([`Kernel`]) in a VM under software emulation, through virtme-ng. The VM shares
//! this machine's filesystem, so binaries built here run inside as they are.
mod kernels;

pub use kernels::Kernel;
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::setup;

/// Modules the suites need that Debian's kernels build as modules: sch_fq (delay and
/// rate), and br_netfilter (Service DNAT between pods of one bridge; absent on kernels that
/// build it in, hence optional).
const MODULES: &str = "modprobe sch_fq && (modprobe br_netfilter || true)";

/// The `vng` command that boots `kernel` and runs `script` as root inside it, after loading
/// [`MODULES`] and mounting bpffs (installs qemu and virtme-ng, and fetches the kernel, first).
fn vng(kernel: Kernel, script: &str) -> Result<Command> {
    setup::apt(setup::VM_PACKAGES)?;
    let venv = setup::virtme_venv()?;
    let kernel = kernel.image()?;
    let path = format!(
        "{}:{}",
        venv.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(venv.join("vng"));
    cmd.arg("--disable-kvm")
        .arg("--run")
        .arg(&kernel)
        .args(["--user", "root", "--memory", "2G", "--cpus", "2", "--"])
        .arg(format!(
            "{MODULES} && mount -t bpf bpf /sys/fs/bpf && {script}"
        ))
        .env("PATH", path);
    Ok(cmd)
}

/// Runs `command` (a shell command line) as root inside the VM booted with `kernel`; fails if
/// it fails. Boot takes ~30 s; everything inside is ~10x slower.
pub fn run_inside(kernel: Kernel, command: &str) -> Result<()> {
    run_piped(&mut vng(kernel, &format!("({command})"))?)
}

/// Runs `cmd` with its stdout and stderr copied through pipes to ours. QEMU opens the
/// guest's console as `/proc/self/fd/1` with truncation: handed our file directly, it would
/// erase what a caller redirecting to a log file had already written.
fn run_piped(cmd: &mut Command) -> Result<()> {
    use std::{io::copy, process::Stdio};
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting vng")?;
    let mut out = child.stdout.take().context("vng stdout")?;
    let mut err = child.stderr.take().context("vng stderr")?;
    let t_out = std::thread::spawn(move || copy(&mut out, &mut std::io::stdout()));
    let t_err = std::thread::spawn(move || copy(&mut err, &mut std::io::stderr()));
    let status = child.wait().context("waiting for vng")?;
    let _ = t_out.join();
    let _ = t_err.join();
    if !status.success() {
        bail!("the VM command failed ({status})");
    }
    Ok(())
}

/// A test executable to run in the VM, whether to run its ignored tests (the VM-only suites
/// are ignored elsewhere) or its normal ones, and which of them (exact names; all if empty).
pub struct TestRun<'a> {
    /// The test executable (`cargo test --no-run`'s output, run as it is inside the VM).
    pub binary: &'a Path,
    /// `--ignored`: the VM-only tests; otherwise the normal ones.
    pub ignored: bool,
    /// Exact test names (`--exact`); every test when empty.
    pub only: &'a [&'a str],
}

/// Runs the datapath suite and the VM suite in one boot of `kernel`, whole (about 27 minutes
/// for 5.10 under emulation) or, with `smoke`, only [`SMOKE`]'s tests (about 6.5 minutes).
pub fn kernel_suites(kernel: Kernel, bin_dir: &Path, smoke: bool) -> Result<()> {
    let datapath = crate::test::test_executable("fault-agent", "datapath")?;
    let vm_suite = crate::test::test_executable("fault-agent", "vm")?;
    let (d, v): (&[&str], &[&str]) = if smoke {
        (SMOKE.0, SMOKE.1)
    } else {
        (&[], &[])
    };
    let runs = [
        TestRun {
            binary: &datapath,
            ignored: false,
            only: d,
        },
        TestRun {
            binary: &vm_suite,
            ignored: true,
            only: v,
        },
    ];
    run_tests(kernel, &runs, bin_dir)
}

/// What `cargo xtask test` runs on the 5.10 kernel (about 6.5 minutes), as (datapath suite,
/// VM suite) test names: attach and a partition in both directions, the kernel's own deadline
/// with the agent killed, and a delay through fq in each direction.
pub const SMOKE: (&[&str], &[&str]) = (
    &[
        "partition_decode_to_prefill_one_way_then_both",
        "expiry_within_100ms_of_deadline_with_agent_killed",
    ],
    &["delay_50ms_each_direction_leaves_other_paths_alone"],
);

/// Runs test executables one after the other in one boot of `kernel`; fails if one fails
/// (the others still run).
pub fn run_tests(kernel: Kernel, runs: &[TestRun<'_>], bin_dir: &Path) -> Result<()> {
    let mut lines = Vec::new();
    for r in runs {
        if !r.binary.exists() {
            bail!("{} missing", r.binary.display());
        }
        let ignored = if r.ignored { "--ignored " } else { "" };
        let only = if r.only.is_empty() {
            String::new()
        } else {
            format!(" --exact {}", r.only.join(" "))
        };
        lines.push(format!(
            "FAULTLINE_BIN_DIR={} {} {ignored}--test-threads=1 --nocapture{only} || failed=1",
            bin_dir.display(),
            r.binary.display()
        ));
    }
    run_inside(
        kernel,
        &format!("failed=0; {}; exit $failed", lines.join("; ")),
    )
}

/// Like [`run_inside`], and returns what the command printed (stdout and stderr).
pub fn capture_inside(kernel: Kernel, command: &str) -> Result<String> {
    let out = vng(kernel, &format!("({command}) 2>&1"))?
        .output()
        .context("running vng")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
