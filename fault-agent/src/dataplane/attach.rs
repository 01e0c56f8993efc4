//! Attaching the programs: two to the two tc hooks of a pod's host-side veth, one to the egress
//! of a pod's own interface (departure times), one to the egress of each node uplink.
//!
//! - TCX (Linux >= 6.6): a BPF link per hook, placed **first** in the hook's chain so a CNI's
//!   redirect cannot skip us, pinned under `links/` so it outlives the agent. A new agent
//!   adopts a pinned link and swaps its program atomically (`bpf_link_update`): no gap.
//! - Older kernels: a cls_bpf filter (direct action) at priority [`NL_PRIORITY`], handle
//!   [`NL_HANDLE`] on the `clsact` qdisc, which is added when missing (and then removed with
//!   the last of our filters). A new agent replaces the filter's program in place.
use std::{
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
};
use fault_common::{PROG_HOST_EGRESS, PROG_HOST_INGRESS, PROG_POD_EGRESS, PROG_UPLINK_EGRESS};
use serde::{Deserialize, Serialize};

use super::pins::{Pins, remove_file};

/// Priority of our cls_bpf filters (lower runs first).
pub const NL_PRIORITY: u16 = 1;
/// Handle of our cls_bpf filters (`0:fa17`).
pub const NL_HANDLE: u32 = 0xfa17;

/// The hooks of a host veth: program name, tc hook, name in pins and records.
pub const HOOKS: [(&str, TcAttachType, &str); 2] = [
    (PROG_HOST_INGRESS, TcAttachType::Ingress, "ingress"),
    (PROG_HOST_EGRESS, TcAttachType::Egress, "egress"),
];

/// The hook of an uplink: program name, tc hook, name in pins and records.
pub const UPLINK_HOOKS: [(&str, TcAttachType, &str); 1] =
    [(PROG_UPLINK_EGRESS, TcAttachType::Egress, "uplink")];

/// How programs are attached on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Tcx,
    Netlink,
}

/// Which interface of a pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachKind {
    /// The host-side veth: [`PROG_HOST_INGRESS`] and [`PROG_HOST_EGRESS`].
    #[default]
    Host,
    /// The pod's own veth (in its namespace): [`PROG_POD_EGRESS`] on egress.
    Pod,
    /// A node uplink (in the agent's namespace): [`PROG_UPLINK_EGRESS`] on egress.
    Uplink,
}

impl AttachKind {
    /// The (program, tc hook, name) triples of an interface of this kind in the agent's
    /// namespace.
    fn hooks(self) -> &'static [(&'static str, TcAttachType, &'static str)] {
        match self {
            AttachKind::Host => &HOOKS,
            AttachKind::Uplink => &UPLINK_HOOKS,
            AttachKind::Pod => &[(PROG_POD_EGRESS, TcAttachType::Egress, "egress")],
        }
    }
}

/// What the agent made on one interface, persisted in the state dir so that `uninstall` (or
/// the next agent) can remove exactly that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRecord {
    pub ifname: String,
    pub ifindex: u32,
    #[serde(default)]
    pub kind: AttachKind,
    /// The network namespace of the interface (pod side); `None`: the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Inode of that namespace when attached: it names the link's pin
    /// (`podlinks/<ino>-<ifname>`), which is removed by it once the namespace is gone (many
    /// pods' interfaces share a name such as `eth0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_ino: Option<u64>,
    pub mode: AttachMode,
    /// The agent added the clsact qdisc (netlink mode) and removes it with its filters.
    #[serde(default)]
    pub clsact_created: bool,
    /// Netlink mode: whether the agent added the clsact qdisc is not known (a record written
    /// before the attach, see [`intent`], or adopted from one): it is removed if no filter is
    /// left on it once ours are gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clsact_maybe: bool,
}

/// The record of an attach about to be made, written before it (so that a crash in between
/// leaves nothing nobody knows of): everything of ours that may be there is removed by it,
/// and nothing else. `netns`: the interface's namespace (a pod's), `None` for the agent's.
pub fn intent(
    pins: &Pins,
    mode: AttachMode,
    ifname: &str,
    ifindex: u32,
    kind: AttachKind,
    netns: Option<&Path>,
) -> AttachRecord {
    AttachRecord {
        ifname: ifname.into(),
        ifindex,
        kind,
        netns: netns.map(Path::to_owned),
        netns_ino: netns.and_then(|ns| pins.netns_ino(ns).ok()),
        mode,
        clsact_created: false,
        clsact_maybe: mode == AttachMode::Netlink,
    }
}

enum Held {
    /// A TCX link; its pin keeps it attached.
    Tcx(FdLink),
    /// A netlink filter; dropping the handle removes the filter.
    Netlink(SchedClassifierLink),
}

/// Programs attached to one interface.
pub struct Attached {
    pub record: AttachRecord,
    held: Vec<Held>,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}

fn is_errno(e: &TcError, errno: i32) -> bool {
    match e {
        TcError::NetlinkError(n) => n.raw_os_error() == Some(errno),
        TcError::IoError(i) => i.raw_os_error() == Some(errno),
        _ => false,
    }
}

/// Attaches the programs of `kind` (a host veth's two, or an uplink's) to `ifname` of the
/// agent's namespace (adopting what a previous agent left there).
pub fn attach(
    ebpf: &mut Ebpf,
    pins: &Pins,
    mode: AttachMode,
    ifname: &str,
    ifindex: u32,
    kind: AttachKind,
) -> Result<Attached> {
    let mut record = AttachRecord {
        ifname: ifname.into(),
        ifindex,
        kind,
        netns: None,
        netns_ino: None,
        mode,
        clsact_created: false,
        clsact_maybe: false,
    };
    let mut held = Vec::new();
    if mode == AttachMode::Netlink {
        match tc::qdisc_add_clsact(ifname) {
            Ok(()) => record.clsact_created = true,
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("adding clsact to {ifname}")),
        }
    }
    for &(name, hook, hook_name) in kind.hooks() {
        let prog = program(ebpf, name)?;
        let h = match mode {
            AttachMode::Tcx => Held::Tcx(attach_tcx(
                prog,
                &pins.link(ifname, hook_name),
                ifname,
                hook,
                hook_name,
            )?),
            AttachMode::Netlink => {
                let (link, replaced) = attach_netlink(prog, ifname, hook)?;
                // A filter of ours was there: an earlier agent may have added the clsact too.
                record.clsact_maybe |= replaced && !record.clsact_created;
                Held::Netlink(link)
            }
        };
        held.push(h);
    }
    Ok(Attached { record, held })
}

/// Runs `f` on a scoped thread inside the network namespace `netns` (interface names and
/// indexes, and netlink sockets, are per namespace).
fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file =
        std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in {} panicked", netns.display()))?
    })
}

/// Attaches [`PROG_POD_EGRESS`] to the egress hook of the pod's own interface `ifname` in
/// `netns` (the place where a pod's outgoing packets can still be given a departure time).
pub fn attach_pod_egress(
    ebpf: &mut Ebpf,
    pins: &Pins,
    mode: AttachMode,
    netns: &Path,
    ifname: &str,
    ifindex: u32,
) -> Result<Attached> {
    let prog = program(ebpf, PROG_POD_EGRESS)?;
    let ino = pins.netns_ino(netns)?;
    let pin = pins.pod_link_of(ino, ifname);
    let (held, clsact_created, clsact_maybe) = in_netns(netns, || -> Result<(Held, bool, bool)> {
        match mode {
            AttachMode::Tcx => Ok((
                Held::Tcx(attach_tcx(
                    prog,
                    &pin,
                    ifname,
                    TcAttachType::Egress,
                    "egress",
                )?),
                false,
                false,
            )),
            AttachMode::Netlink => {
                let created = match tc::qdisc_add_clsact(ifname) {
                    Ok(()) => true,
                    Err(e) if is_errno(&e, libc::EEXIST) => false,
                    Err(e) => return Err(e).with_context(|| format!("adding clsact to {ifname}")),
                };
                let (link, replaced) = attach_netlink(prog, ifname, TcAttachType::Egress)?;
                Ok((Held::Netlink(link), created, replaced && !created))
            }
        }
    })?;
    let record = AttachRecord {
        ifname: ifname.into(),
        ifindex,
        kind: AttachKind::Pod,
        netns: Some(netns.to_owned()),
        netns_ino: Some(ino),
        mode,
        clsact_created,
        clsact_maybe,
    };
    Ok(Attached {
        record,
        held: vec![held],
    })
}

fn attach_tcx(
    prog: &mut SchedClassifier,
    pin: &Path,
    ifname: &str,
    hook: TcAttachType,
    hook_name: &str,
) -> Result<FdLink> {
    let adopted = match PinnedLink::from_pin(pin) {
        Ok(old) => {
            let link = SchedClassifierLink::try_from(FdLink::from(old));
            match link
                .map_err(anyhow::Error::from)
                .and_then(|l| prog.attach_to_link(l).map_err(Into::into))
            {
                Ok(id) => Some(id),
                Err(e) => {
                    // The interface it was on is gone (ENOLINK) or it is not ours: start afresh.
                    tracing::info!(ifname, hook = hook_name, error = %e, "pinned link not reusable, attaching anew");
                    remove_file(pin)?;
                    None
                }
            }
        }
        Err(_) => None,
    };
    let id = match adopted {
        Some(id) => id,
        None => prog
            .attach_with_options(ifname, hook, TcAttachOptions::TcxOrder(LinkOrder::first()))
            .with_context(|| format!("attaching {hook_name} program to {ifname} (TCX)"))?,
    };
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("TCX link as fd link")?;
    if pin.exists() {
        return Ok(link);
    }
    let pinned = link
        .pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(FdLink::from(pinned))
}

/// Attaches our cls_bpf filter; returns it and whether one of ours was already there (an
/// earlier agent's, whose program is replaced in place).
fn attach_netlink(
    prog: &mut SchedClassifier,
    ifname: &str,
    hook: TcAttachType,
) -> Result<(SchedClassifierLink, bool)> {
    let options = || NlOptions {
        priority: NL_PRIORITY,
        handle: TcHandle::from(NL_HANDLE),
        classid: None,
    };
    let mut replaced = false;
    let id = match prog.attach_with_options(ifname, hook, TcAttachOptions::Netlink(options())) {
        Ok(id) => id,
        Err(aya::programs::ProgramError::TcError(e)) if is_errno(&e, libc::EEXIST) => {
            // A filter of ours from a previous agent: replace its program in place.
            let old = SchedClassifierLink::attached(
                ifname,
                hook,
                NL_PRIORITY,
                TcHandle::from(NL_HANDLE),
                None,
            )?;
            replaced = true;
            prog.attach_to_link(old)
                .with_context(|| format!("replacing our filter on {ifname}"))?
        }
        Err(e) => return Err(e).with_context(|| format!("attaching to {ifname} (netlink)")),
    };
    Ok((prog.take_link(id)?, replaced))
}

/// Leaves what [`attach`] or [`attach_pod_egress`] made in the kernel for the next agent to
/// adopt: TCX links stay pinned, netlink filters stay (their handles are not dropped, which
/// would detach them).
pub fn leave(att: Attached) {
    std::mem::forget(att.held);
}

/// Detaches what [`attach`] or [`attach_pod_egress`] made.
pub fn detach(att: Attached, pins: &Pins) -> Result<()> {
    let Attached { record, held } = att;
    let netlink: Vec<SchedClassifierLink> = held
        .into_iter()
        .filter_map(|h| match h {
            Held::Tcx(link) => {
                drop(link);
                None
            }
            Held::Netlink(link) => Some(link),
        })
        .collect();
    if !netlink.is_empty() {
        let run = || -> Result<()> {
            for link in netlink {
                use aya::programs::links::Link as _;
                if let Err(e) = link.detach() {
                    tracing::debug!(ifname = %record.ifname, error = %e, "filter already gone");
                }
            }
            Ok(())
        };
        match &record.netns {
            Some(ns) if ns.exists() => in_netns(ns, run)?,
            Some(_) => {}
            None => run()?,
        }
    }
    detach_record(&record, pins)
}

/// Removes what a record says was made, without holding any handle (after a crash): TCX link
/// pins, our netlink filters, the clsact qdisc we added (or, for [`AttachRecord::clsact_maybe`],
/// may have added and nobody else uses). Tolerates what is already gone or was never made.
pub fn detach_record(record: &AttachRecord, pins: &Pins) -> Result<()> {
    let hooks: Vec<(TcAttachType, &str)> = record
        .kind
        .hooks()
        .iter()
        .map(|(_, h, n)| (*h, *n))
        .collect();
    let netns = record.netns.as_deref();
    // The pin of a pod's link, by the namespace it was made in.
    let pod_pin = |ns: &Path| -> Result<PathBuf> {
        match record.netns_ino {
            Some(ino) => Ok(pins.pod_link_of(ino, &record.ifname)),
            None => pins.pod_link(ns, &record.ifname),
        }
    };
    if let Some(ns) = netns.filter(|p| !p.exists()) {
        // The pod's namespace is gone, and everything in it; only our pin may remain. Without
        // the namespace's inode (a record of an earlier version) the pin cannot be told apart
        // from other pods' pins of the same interface name: it stays until uninstall.
        if record.netns_ino.is_some() {
            remove_file(&pod_pin(ns)?)?;
        }
        return Ok(());
    }
    for (hook, hook_name) in hooks {
        match record.mode {
            AttachMode::Tcx => match (record.kind, netns) {
                (AttachKind::Pod, Some(ns)) => remove_file(&pod_pin(ns)?)?,
                _ => remove_file(&pins.link(&record.ifname, hook_name))?,
            },
            AttachMode::Netlink => {
                let detach = || -> Result<()> {
                    match SchedClassifierLink::attached(
                        &record.ifname,
                        hook,
                        NL_PRIORITY,
                        TcHandle::from(NL_HANDLE),
                        None,
                    ) {
                        Ok(link) => {
                            use aya::programs::links::Link as _;
                            let _ = link.detach();
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                        Err(e) => {
                            tracing::debug!(ifname = %record.ifname, error = %e, "interface gone")
                        }
                    }
                    Ok(())
                };
                match netns {
                    Some(ns) => in_netns(ns, detach)?,
                    None => detach()?,
                }
            }
        }
    }
    if record.clsact_created {
        super::qdisc::delete_clsact(netns, record.ifindex)?;
    } else if record.clsact_maybe {
        super::qdisc::delete_clsact_if_unused(netns, record.ifindex)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: when a pod's namespace was gone, every pod-link pin of its interface name
    /// went (`eth0` for most pods), so the egress programs of live pods lost their pins (and
    /// were detached with them). Only the pin of that namespace (by the inode it was made in)
    /// goes.
    #[test]
    fn a_gone_namespace_removes_its_own_pod_link_pin_only() {
        // The layout only (plain files stand for pins): no bpffs needed.
        let tmp = tempfile::tempdir().unwrap();
        let pins = Pins::new(tmp.path());
        std::fs::create_dir_all(pins.pod_links_dir()).unwrap();
        let gone = pins.pod_link_of(111, "eth0");
        let live = pins.pod_link_of(222, "eth0");
        for p in [&gone, &live] {
            std::fs::write(p, b"").unwrap();
        }
        let record = AttachRecord {
            ifname: "eth0".into(),
            ifindex: 2,
            kind: AttachKind::Pod,
            netns: Some(tmp.path().join("gone-netns")),
            netns_ino: Some(111),
            mode: AttachMode::Tcx,
            clsact_created: false,
            clsact_maybe: false,
        };
        detach_record(&record, &pins).unwrap();
        assert!(!gone.exists(), "its own pin goes");
        assert!(live.exists(), "another pod's eth0 pin stays");
        // A record of an earlier version (no inode) removes none it cannot tell apart.
        let legacy = AttachRecord {
            netns_ino: None,
            ..record
        };
        detach_record(&legacy, &pins).unwrap();
        assert!(live.exists());
    }

    #[test]
    fn an_intent_record_names_the_namespace_inode_and_an_unknown_clsact() {
        let tmp = tempfile::tempdir().unwrap();
        let pins = Pins::new(tmp.path());
        let r = intent(
            &pins,
            AttachMode::Netlink,
            "eth0",
            2,
            AttachKind::Pod,
            Some(tmp.path()),
        );
        assert!(r.clsact_maybe && !r.clsact_created);
        assert_eq!(r.netns_ino, Some(pins.netns_ino(tmp.path()).unwrap()));
        let r = intent(&pins, AttachMode::Tcx, "veth1", 7, AttachKind::Host, None);
        assert!(!r.clsact_maybe && r.netns.is_none() && r.netns_ino.is_none());
    }
}
