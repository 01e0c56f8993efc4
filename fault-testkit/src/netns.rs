//! Running code inside a network namespace: on a fresh thread that enters it, so the caller's
//! namespace never changes. Sockets opened there stay in that namespace wherever they are used.
use std::{fs::File, path::Path};

use anyhow::{Context as _, Result, anyhow};
use nix::sched::{CloneFlags, setns};

/// Runs `f` in the network namespace of the file `netns` (e.g. `/run/netns/NAME`).
pub fn run_in<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
            Ok(f())
        })
        .context("spawning a netns thread")?
        .join()
        .map_err(|_| anyhow!("thread in {} panicked", netns.display()))?
}
