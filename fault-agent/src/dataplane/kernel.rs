//! What the running kernel offers, and its clocks.
use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use aya::util::KernelVersion;
use serde::Serialize;

use super::AttachMode;

/// Kernel features the agent relies on or reports, probed once at start.
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    /// `uname -r`.
    pub kernel: String,
    /// TCX hooks (Linux >= 6.6, commit e420bed02507): programs attach through BPF links and
    /// chain with `TCX_NEXT`. Otherwise the agent attaches through netlink to a `clsact` qdisc.
    pub tcx: bool,
    /// The `fq` qdisc (sch_fq), built in or as a module: needed to enforce EDT departure times
    /// (`skb->tstamp`), hence for delay, jitter and rate limits.
    pub sch_fq: bool,
    /// `kernel.bpf_stats_enabled`: the kernel counts program run time and runs.
    pub bpf_stats_enabled: bool,
    /// How programs are attached: TCX when the kernel has it, unless told otherwise.
    pub attach_mode: AttachMode,
}

impl Capabilities {
    /// Probes the running kernel. `force_netlink` attaches through netlink and clsact even
    /// where TCX exists (the path of kernels < 6.6, exercised on newer ones).
    pub fn probe(force_netlink: bool) -> Self {
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        Self {
            sch_fq: sch_fq_available(&kernel),
            bpf_stats_enabled: fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
                .is_ok_and(|s| s.trim() == "1"),
            attach_mode: if tcx && !force_netlink {
                AttachMode::Tcx
            } else {
                AttachMode::Netlink
            },
            tcx,
            kernel,
        }
    }
}

/// sch_fq is there when it is built in (its symbols are in /proc/kallsyms) or loaded, or when
/// its module file exists for this kernel (the kernel loads it on first use).
fn sch_fq_available(release: &str) -> bool {
    if Path::new("/sys/module/sch_fq").exists() {
        return true;
    }
    if fs::read_to_string("/proc/kallsyms").is_ok_and(|k| {
        k.lines()
            .any(|l| l.ends_with(" fq_enqueue") || l.contains(" fq_enqueue\t"))
    }) {
        return true;
    }
    fs::read_to_string(format!("/lib/modules/{release}/modules.dep"))
        .is_ok_and(|deps| deps.lines().any(|l| l.contains("/sch_fq.ko")))
}

/// `CLOCK_BOOTTIME` in ns: the clock of `bpf_ktime_get_boot_ns`, used for deadlines.
pub fn boottime_ns() -> Result<u64> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .context("clock_gettime(CLOCK_BOOTTIME)")?;
    Ok(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): boottime deadlines are only valid in
/// the boot that computed them.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
