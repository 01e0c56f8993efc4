//! The kernel's floor for a TC program: an empty classifier (`r0 = TCX_NEXT; exit`), loaded and
//! attached with TCX links on the same hooks Faultline uses, so the bench can tell what our
//! programs add from what any program costs on this machine (entering the program, and the
//! two clock readings `kernel.bpf_stats_enabled` takes around every run).
//!
//! Loaded with the `bpf(2)` syscall directly (two instructions need no ELF object); the links
//! and the program are file descriptors, so dropping [`EmptyProgram`] detaches and frees them,
//! also when the bench fails.
use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `enum bpf_attach_type` values of TCX (Linux 6.6).
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// `union bpf_attr`, large enough for every command used here; unused bytes stay zero, which
/// the kernel requires.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32_at(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64_at(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> Result<i32> {
    // SAFETY: `attr` is a valid, writable, zero-padded `union bpf_attr` of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bpf(cmd {cmd})"));
    }
    Ok(r as i32)
}

/// An empty TC program attached to the ingress and egress of some interfaces.
pub struct EmptyProgram {
    prog: OwnedFd,
    _links: Vec<OwnedFd>,
}

impl EmptyProgram {
    /// Loads the program and attaches it (TCX, Linux >= 6.6) to both hooks of each interface.
    pub fn attach(ifnames: &[&str]) -> Result<Self> {
        // BPF_ALU64 | BPF_MOV | BPF_K: r0 = -1 (TCX_NEXT); then BPF_JMP | BPF_EXIT.
        let insns: [u64; 2] = [0xb7 | ((-1i32 as u32 as u64) << 32), 0x95];
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..8].copy_from_slice(b"fl_empty");
        let mut attr = Attr::new();
        attr.u32_at(0, BPF_PROG_TYPE_SCHED_CLS)
            .u32_at(4, insns.len() as u32)
            .u64_at(8, insns.as_ptr() as u64)
            .u64_at(16, license.as_ptr() as u64);
        attr.0[48..64].copy_from_slice(&name);
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading the empty TC program")?;
        // SAFETY: the kernel just returned this descriptor to us.
        let prog = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut links = Vec::new();
        for ifname in ifnames {
            let c = CString::new(*ifname)?;
            // SAFETY: a valid NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {ifname}");
            }
            for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
                let mut attr = Attr::new();
                attr.u32_at(0, prog.as_raw_fd() as u32)
                    .u32_at(4, ifindex)
                    .u32_at(8, attach_type);
                let fd = bpf(BPF_LINK_CREATE, &mut attr)
                    .with_context(|| format!("attaching the empty TC program to {ifname}"))?;
                // SAFETY: as above.
                links.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        Ok(EmptyProgram {
            prog,
            _links: links,
        })
    }

    /// The kernel's `(run_time_ns, run_cnt)` of the program, summed over every hook.
    pub fn stats(&self) -> Result<(u64, u64)> {
        // struct bpf_prog_info up to run_cnt: run_time_ns at byte 192, run_cnt at 200
        // (include/uapi/linux/bpf.h, since Linux 5.1).
        let mut info = [0u8; 232];
        let mut attr = Attr::new();
        attr.u32_at(0, self.prog.as_raw_fd() as u32)
            .u32_at(4, info.len() as u32)
            .u64_at(8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("reading the empty program's stats")?;
        let at = |off: usize| u64::from_ne_bytes(info[off..off + 8].try_into().unwrap_or([0; 8]));
        Ok((at(192), at(200)))
    }
}
