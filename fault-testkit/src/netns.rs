//! Running code inside a network namespace: on a fresh thread that enters it, so the caller's
//! namespace never changes. Sockets opened there stay in that namespace wherever they are used.
use std::{any::Any, fs::File, path::Path};

use anyhow::{Context as _, Result, anyhow};
use nix::sched::{CloneFlags, setns};

/// Where `ip netns add` puts its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Runs `f` on a new thread that enters the network namespace of the file `netns` (e.g.
/// `/run/netns/NAME`) first, and returns what `f` returned. `f` may borrow from the caller
/// (the thread is scoped). Fails if the namespace cannot be entered or `f` panics. When
/// `netns` is the caller's own namespace it is not entered (no `CAP_SYS_ADMIN` needed: a
/// container's `fault-testenv serve` runs this way).
pub fn run_in<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt as _;
        a.dev() == b.dev() && a.ino() == b.ino()
    };
    let here = std::fs::metadata("/proc/thread-self/ns/net");
    let enter = !matches!((file.metadata(), here), (Ok(a), Ok(b)) if same(&a, &b));
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("testkit-netns".into())
            .spawn_scoped(scope, move || -> Result<T> {
                if enter {
                    setns(&file, CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")?;
                }
                Ok(f())
            })
            .context("spawning a thread to enter a network namespace")?;
        thread.join().map_err(|p| {
            anyhow!(
                "code run in {} panicked: {}",
                netns.display(),
                panic_message(&*p)
            )
        })?
    })
    .with_context(|| format!("in network namespace {}", netns.display()))
}

/// The message of a panic payload (`&str` or `String`), or a placeholder.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
