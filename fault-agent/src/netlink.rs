//! Running rtnetlink requests from the synchronous core, optionally inside another network
//! namespace: each call gets its own thread (which may `setns` without disturbing anyone) and a
//! small current-thread runtime. Netlink sockets belong to the namespace they were opened in.
use std::{fs::File, future::Future, path::Path};

use anyhow::{Context as _, Result, anyhow};
use nix::sched::{CloneFlags, setns};

/// Runs `f` with an rtnetlink handle opened in the network namespace at `netns` (a file like
/// `/run/netns/NAME` or `/proc/PID/ns/net`), or in the agent's own namespace for `None`.
pub fn run<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let ns = match netns {
        Some(p) => Some(File::open(p).with_context(|| format!("opening netns {}", p.display()))?),
        None => None,
    };
    std::thread::Builder::new()
        .name("netlink".into())
        .spawn(move || -> Result<T> {
            if let Some(ns) = ns {
                setns(&ns, CloneFlags::CLONE_NEWNET).context("setns")?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .context("netlink runtime")?;
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection().context("netlink socket")?;
                let conn = tokio::spawn(conn);
                let out = f(handle).await;
                conn.abort();
                out
            })
        })
        .context("spawning a netlink thread")?
        .join()
        .map_err(|_| anyhow!("netlink thread panicked"))?
}

/// Whether an rtnetlink error carries one of these errnos.
pub fn is_errno(e: &rtnetlink::Error, errnos: &[i32]) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(m) => errnos.contains(&m.raw_code().abs()),
        _ => false,
    }
}
