//! The registry of live topologies, `/run/faultline-testkit/<id>` (one file per topology,
//! holding the creating process's pid, its start time and the topology's name hint), and the
//! reaping of what dead processes left behind (a test killed before its `Drop` ran).
use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use super::{
    link::{delete_link, delete_netns, link_names, netns_names},
    names,
};

/// Directory of the registry files.
pub const REGISTRY_DIR: &str = "/run/faultline-testkit";

fn entry(id: u32) -> PathBuf {
    Path::new(REGISTRY_DIR).join(names::id_hex(id))
}

/// Claims `id` for this process. `Ok(false)` when another topology holds it already. The file
/// appears with its whole content at once (written aside, then hard-linked into place), so a
/// concurrent [`reap_stale`] never sees it empty.
pub(super) fn claim(id: u32, name_hint: &str) -> Result<bool> {
    fs::create_dir_all(REGISTRY_DIR).with_context(|| format!("creating {REGISTRY_DIR}"))?;
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or_default();
    let aside = Path::new(REGISTRY_DIR).join(format!(".new-{}-{pid}", names::id_hex(id)));
    let hint: String = name_hint.chars().filter(|c| !c.is_control()).collect();
    fs::write(&aside, format!("{pid}\n{start}\n{hint}\n"))
        .with_context(|| format!("writing {}", aside.display()))?;
    let linked = fs::hard_link(&aside, entry(id));
    let _ = fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("registering {}", entry(id).display())),
    }
}

/// Gives `id` up (its objects are gone).
pub(crate) fn release(id: u32) {
    if let Err(e) = fs::remove_file(entry(id))
        && e.kind() != ErrorKind::NotFound
    {
        eprintln!("testkit: removing {}: {e}", entry(id).display());
    }
}

/// Whether `id` is claimed by any process, alive or not.
pub(super) fn is_claimed(id: u32) -> bool {
    entry(id).exists()
}

/// Start time of a process, in clock ticks after boot (field 22 of `/proc/PID/stat`): with the
/// pid, it names a process uniquely even when pids are reused.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that wrote a registry file still runs.
fn owner_alive(content: &str) -> bool {
    let mut lines = content.lines();
    let Some(pid) = lines.next().and_then(|l| l.trim().parse::<u32>().ok()) else {
        return false;
    };
    let recorded: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_default();
    match start_time(pid) {
        None => false,
        Some(now) => recorded == 0 || now == recorded,
    }
}

/// Whether `id` is claimed by a process that still runs.
pub(crate) fn is_live(id: u32) -> bool {
    fs::read_to_string(entry(id)).is_ok_and(|c| owner_alive(&c))
}

/// For each topology of the registry whose process is dead: deletes its links (`fl<id>*`)
/// and network namespaces (`fl<id>-*`), then its registry file. Failures are logged to stderr.
/// Part of [`reap_stale`](super::reap_stale).
pub(super) fn reap_dead() {
    let Ok(entries) = fs::read_dir(REGISTRY_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(id) = names::parse_id_hex(&file) else {
            continue;
        };
        let content = match fs::read_to_string(e.path()) {
            Ok(c) => c,
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => {
                eprintln!("testkit: reading {}: {err}", e.path().display());
                continue;
            }
        };
        if owner_alive(&content) {
            continue;
        }
        reap(id);
        release(id);
    }
}

/// Deletes every link and namespace named after `id`.
fn reap(id: u32) {
    let prefix = names::prefix(id);
    for link in link_names().into_iter().filter(|l| l.starts_with(&prefix)) {
        if let Err(e) = delete_link(&link) {
            eprintln!("testkit: reaping link {link}: {e:#}");
        }
    }
    let ns_prefix = format!("{prefix}-");
    for ns in netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&ns_prefix))
    {
        if let Err(e) = delete_netns(&ns) {
            eprintln!("testkit: reaping namespace {ns}: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_pid_and_start_time() {
        let me = std::process::id();
        let start = start_time(me).expect("own /proc/self/stat");
        assert!(owner_alive(&format!("{me}\n{start}\nhint\n")));
        assert!(owner_alive(&format!("{me}\n")), "old format: pid only");
        assert!(
            !owner_alive(&format!("{me}\n{}\n", start + 1)),
            "pid reused by another process"
        );
        assert!(!owner_alive("garbage"));
        assert!(!owner_alive(&format!("{}\n", u32::MAX)));
    }
}
