//! `fault-agent standalone`: the agent on a single host, pods listed in an inventory file.
//!
//! Tasks around the synchronous [`Core`]:
//! - inventory: reloads the file when it changes (inotify on its folder) and re-reads every
//!   pod's network namespace every `--rescan` (addresses change without the file changing);
//! - expiry: sleeps until the nearest deadline (or a change) and reconciles;
//! - API: the HTTP server, until SIGTERM or SIGINT, after which everything the agent made in
//!   the kernel is removed.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};
use notify::Watcher as _;
use tokio::{net::TcpListener, sync::Notify};

use crate::{
    api::{self, AppState, lock},
    core::{Core, CoreConfig},
    dataplane::{Capabilities, Dataplane, Pins, kernel},
    discover,
    inventory::{Inventory, InventoryPod},
    pods::Pod,
    store::{self, Store},
};

/// Settings of `fault-agent standalone`.
#[derive(Debug, Clone)]
pub struct Config {
    pub inventory: PathBuf,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub core: CoreConfig,
    /// How often pods' network namespaces are re-read.
    pub rescan: Duration,
    /// Attach through netlink/clsact even where TCX exists.
    pub force_netlink: bool,
    /// Bearer token file; without it the API only listens on loopback unless `insecure`.
    pub token_file: Option<PathBuf>,
    /// Serve without a token on a non-loopback address.
    pub insecure: bool,
}

/// Reads a pod's network namespace; a pod that cannot be read is kept with the reason.
fn discover_pod(p: &InventoryPod, host: &discover::HostVeths) -> Pod {
    let (ips, host_ifs, pod_ifs, problem) = match discover::pod_net_with(&p.netns_path(), host) {
        Ok(net) => (net.ips, net.host_ifs, net.pod_ifs, None),
        Err(e) => (vec![], vec![], vec![], Some(format!("{e:#}"))),
    };
    Pod {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        labels: p.labels.clone(),
        node: None,
        ips,
        host_ifs,
        netns: Some(p.netns_path()),
        pod_ifs,
        problem,
    }
}

/// Pods read at once, each on its own thread (a namespace is entered per thread).
const DISCOVERY_PARALLELISM: usize = 16;

fn discover_all(inv: &Inventory) -> Vec<Pod> {
    let host = match discover::host_veths() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot list this namespace's veths");
            Default::default()
        }
    };
    let mut pods = Vec::with_capacity(inv.pods.len());
    for chunk in inv.pods.chunks(DISCOVERY_PARALLELISM) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|p| s.spawn(|| discover_pod(p, &host)))
                .collect();
            for (h, p) in handles.into_iter().zip(chunk) {
                pods.push(h.join().unwrap_or_else(|_| {
                    let mut pod = discover_pod_failed(p);
                    pod.problem = Some("discovery panicked".into());
                    pod
                }));
            }
        });
    }
    pods
}

fn discover_pod_failed(p: &InventoryPod) -> Pod {
    Pod {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        labels: p.labels.clone(),
        node: None,
        ips: vec![],
        host_ifs: vec![],
        netns: Some(p.netns_path()),
        pod_ifs: vec![],
        problem: None,
    }
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<()> {
    let token = cfg
        .token_file
        .as_deref()
        .map(api::auth::read_token)
        .transpose()?;
    if token.is_none() && !cfg.listen.ip().is_loopback() && !cfg.insecure {
        anyhow::bail!(
            "--listen {}: without --token-file the API only listens on loopback; pass --insecure-no-auth to serve it unauthenticated",
            cfg.listen
        );
    }
    let caps = Capabilities::probe(cfg.force_netlink);
    tracing::info!(kernel = %caps.kernel, tcx = caps.tcx, sch_fq = caps.sch_fq, attach = ?caps.attach_mode, "kernel capabilities");
    let inventory = Inventory::load(&cfg.inventory)?;
    let store = Store::open(&cfg.state_dir, &kernel::boot_id(), kernel::boottime_ns()?)?;
    let previous = store::load_attachments(&cfg.state_dir)?;
    let previous_fq = store::load_qdiscs(&cfg.state_dir)?;
    let dataplane = Dataplane::open(Pins::new(&cfg.bpffs), &caps, previous, previous_fq)?;
    let core = Arc::new(Mutex::new(Core::new(
        store,
        dataplane,
        caps,
        cfg.core.clone(),
    )));
    let state = Arc::new(AppState {
        backend: api::backend::Backend::Local {
            core: core.clone(),
            read_only: false,
        },
        changed: Arc::new(Notify::new()),
        ready: false.into(),
        inventory_error: Mutex::new(None),
    });

    let pods = tokio::task::spawn_blocking(move || discover_all(&inventory)).await?;
    {
        let mut c = lock(&core);
        c.set_pods(pods)?;
        c.reconcile()?;
    }
    state.ready.store(true, Ordering::Release);

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "API listening");
    let inventory_task = tokio::spawn(watch_inventory(
        cfg.inventory.clone(),
        cfg.rescan,
        state.clone(),
        core.clone(),
    ));
    let expiry_task = tokio::spawn(expire_loop(core.clone(), state.changed.clone()));
    let served = axum::serve(listener, api::router(state.clone(), token))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    inventory_task.abort();
    expiry_task.abort();
    let _ = inventory_task.await;
    let _ = expiry_task.await;
    drop(state);
    tracing::info!("shutting down: removing programs, links, qdiscs and pins");
    // A blocking task that was running when its async task was aborted still holds a
    // reference for a moment: wait for it.
    let mut core = core;
    let mut waited = Duration::ZERO;
    let core = loop {
        match Arc::try_unwrap(core) {
            Ok(m) => break m.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(shared) if waited < Duration::from_secs(10) => {
                core = shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
                waited += Duration::from_millis(10);
            }
            Err(_) => anyhow::bail!("the core is still in use 10 s after shutdown began"),
        }
    };
    let cleaned = tokio::task::spawn_blocking(move || core.shutdown()).await?;
    served.context("API server")?;
    cleaned
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

/// Reloads the inventory on change and rescans the pods' namespaces periodically.
async fn watch_inventory(
    path: PathBuf,
    rescan: Duration,
    state: Arc<AppState>,
    core: Arc<Mutex<Core>>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let name = path.file_name().map(|n| n.to_owned());
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if ev.paths.iter().any(|p| p.file_name() == name.as_deref()) {
                let _ = tx.send(());
            }
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(error = %e, "cannot watch the inventory; relying on the rescan interval");
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; relying on the rescan interval");
            None
        }
    };
    let mut tick = tokio::time::interval(rescan);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                // Editors write in several steps: let them finish.
                tokio::time::sleep(Duration::from_millis(30)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
        }
        let inv = match Inventory::load(&path) {
            Ok(inv) => {
                *state
                    .inventory_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                inv
            }
            Err(e) => {
                let msg = e.to_string();
                let mut slot = state
                    .inventory_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if slot.as_deref() != Some(msg.as_str()) {
                    tracing::error!(error = %msg, "inventory refused; keeping the previous pods");
                    *slot = Some(msg);
                }
                continue;
            }
        };
        let core = core.clone();
        let res = tokio::task::spawn_blocking(move || {
            let pods = discover_all(&inv);
            lock(&core).set_pods(pods)
        })
        .await;
        match res {
            Ok(Ok(Some(_))) => state.changed.notify_one(),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "reconcile after a pod change failed")
            }
            Err(e) => tracing::error!(error = %e, "pod discovery task failed"),
        }
    }
}

/// Reconciles at each deadline (the kernel already stopped the fault; this updates its state
/// and removes its entries), and at least every minute as a resync. `changed` re-arms it.
pub async fn expire_loop(core: Arc<Mutex<Core>>, changed: Arc<Notify>) {
    loop {
        let c = core.clone();
        let wait = tokio::task::spawn_blocking(move || lock(&c).next_deadline())
            .await
            .ok()
            .flatten()
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait + Duration::from_millis(1)) => {
                let c = core.clone();
                match tokio::task::spawn_blocking(move || lock(&c).reconcile()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "reconcile failed"),
                    Err(e) => tracing::error!(error = %e, "reconcile task failed"),
                }
            }
            _ = changed.notified() => {}
        }
    }
}
