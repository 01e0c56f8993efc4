//! `fault-agent standalone`: the agent on a single host, pods listed in an inventory file.
//!
//! Tasks around the synchronous [`Core`]:
//! - inventory: reloads the file when it changes (inotify on its folder; only pods new to it
//!   are read then) and re-reads every pod's network namespace every `--rescan`, or ten times
//!   as long as the last full pass took if that is longer, so that discovery keeps to about a
//!   tenth of a core however many pods there are (addresses change without the file changing);
//! - expiry: sleeps until the nearest deadline (or a change) and reconciles;
//! - API: the HTTP server, until SIGTERM or SIGINT, after which everything the agent made in
//!   the kernel is removed.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use notify::Watcher as _;
use tokio::sync::Notify;

use crate::{
    api::{self, AppState, lock},
    core::{Core, CoreConfig},
    dataplane::{Capabilities, Dataplane, Pins, kernel},
    discover,
    failpoint::{self, Phase},
    inventory::Inventory,
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
    /// The `skb->mark` bit between a sender's and a receiver's veth (`--evaluated-mark`).
    pub evaluated_mark: u32,
    /// Addresses the host translates to pods (`--service-cidr`): see `Core::set_virtual_nets`.
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// Interfaces to other hosts (`--uplink`): see [`crate::uplinks`].
    pub uplinks: crate::uplinks::UplinkChoice,
    /// Bearer token file; without it the API only listens on loopback unless `insecure`.
    pub token_file: Option<PathBuf>,
    /// Serve without a token on a non-loopback address.
    pub insecure: bool,
    /// Serve HTTPS with this certificate and key (`--tls-cert-file`, `--tls-key-file`,
    /// `--tls-dir`); `None`: plain HTTP.
    pub tls: Option<api::tls::TlsFiles>,
    /// Request limits of the API.
    pub api_limits: api::limits::ApiLimits,
    /// `/healthz` fails once syncs have kept failing this long.
    pub liveness_threshold: Duration,
}

/// What the last pass read in each network namespace (by path), or why it could not.
type NetCache = std::collections::HashMap<PathBuf, Result<discover::PodNet, String>>;

/// The pods of `inv` with what their network namespaces hold. Namespaces in `cache` are not
/// read again (pass an empty cache for a full pass); a pod that cannot be read is kept with
/// the reason. Returns the pods and the cache of this pass.
fn discover_all(inv: &Inventory, cache: &NetCache) -> (Vec<Pod>, NetCache) {
    let paths: Vec<PathBuf> = inv.pods.iter().filter_map(|p| p.netns_path()).collect();
    let unread: Vec<PathBuf> = paths
        .iter()
        .filter(|p| !cache.contains_key(*p))
        .cloned()
        .collect();
    let mut fresh: NetCache = NetCache::new();
    if !unread.is_empty() {
        match discover::host_veths() {
            Ok(host) => {
                for (path, net) in unread.iter().zip(discover::pod_nets(&unread, &host)) {
                    fresh.insert(path.clone(), net.map_err(|e| format!("{e:#}")));
                }
            }
            Err(e) => {
                let e = format!("cannot list the agent's veths: {e:#}");
                tracing::error!(error = %e);
                fresh.extend(unread.iter().map(|p| (p.clone(), Err(e.clone()))));
            }
        }
    }
    let mut next = NetCache::new();
    let pods = inv
        .pods
        .iter()
        .map(|p| {
            let Some(path) = p.netns_path() else {
                return remote_pod(p);
            };
            let net = fresh
                .get(&path)
                .or_else(|| cache.get(&path))
                .cloned()
                .unwrap_or_else(|| Err("not read".into()));
            next.insert(path.clone(), net.clone());
            let (ips, host_ifs, pod_ifs, problem) = match net {
                Ok(net) => (net.ips, net.host_ifs, net.pod_ifs, None),
                Err(e) => (vec![], vec![], vec![], Some(e)),
            };
            Pod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                node: None,
                ips,
                host_ifs,
                netns: Some(path),
                pod_ifs,
                problem,
                remote: false,
            }
        })
        .collect();
    (pods, next)
}

/// A pod of another host, as the inventory gives it.
fn remote_pod(p: &crate::inventory::InventoryPod) -> Pod {
    Pod {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        labels: p.labels.clone(),
        node: p.node.clone(),
        ips: p.ips.clone(),
        host_ifs: vec![],
        netns: None,
        pod_ifs: vec![],
        problem: None,
        remote: true,
    }
}

/// The host's virtual ranges: `--service-cidr` and its own addresses.
fn virtual_nets(cfg: &Config) -> Vec<ipnet::IpNet> {
    let mut nets = cfg.service_cidrs.clone();
    nets.extend(crate::uplinks::own_addresses());
    nets
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
    let dataplane = Dataplane::open(
        Pins::new(&cfg.bpffs),
        &caps,
        previous,
        previous_fq,
        cfg.evaluated_mark,
    )?;
    let core = Arc::new(Mutex::new(Core::new(
        store,
        dataplane,
        caps,
        cfg.core.clone(),
    )));
    let recorder = lock(&core).recorder().clone();
    let source = crate::metrics::Source::Local {
        core: core.clone(),
        node: crate::metrics::host_name(),
    };
    let steady = crate::steady::Supervisor::new(recorder.clone());
    let state = Arc::new(AppState {
        backend: api::backend::Backend::Local {
            core: core.clone(),
            read_only: false,
            recorder: recorder.clone(),
            node: crate::metrics::host_name(),
            steady: steady.clone(),
        },
        changed: Arc::new(Notify::new()),
        health: api::health::Health::new(cfg.liveness_threshold),
        inventory_error: Mutex::new(None),
        metrics: Arc::new(crate::metrics::Metrics::new(recorder, Some(source))),
    });

    let t = std::time::Instant::now();
    let pods =
        tokio::task::spawn_blocking(move || discover_all(&inventory, &NetCache::new()).0).await?;
    tracing::info!(
        pods = pods.len(),
        took_ms = t.elapsed().as_millis() as u64,
        "pods read"
    );
    let t = std::time::Instant::now();
    {
        let _phase = failpoint::phase(Phase::Start);
        let uplinks = crate::uplinks::of_pods(&cfg.uplinks, &pods);
        let mut c = lock(&core);
        c.set_pods(pods)?;
        c.set_virtual_nets(virtual_nets(&cfg))?;
        c.set_uplinks(uplinks)?;
        c.reconcile()?;
        state.health.sync_ok(c.datapath_problem());
    }
    crate::memory::trim();
    tracing::info!(
        took_ms = t.elapsed().as_millis() as u64,
        "programs attached and maps written"
    );

    crate::steady::resume(&steady, &core).await;
    let server = api::serve::Server::bind(cfg.listen, cfg.tls.clone()).await?;
    tracing::info!(url = %server.url(), "API listening");
    let scheduler = crate::schedule::Scheduler::open(
        &cfg.state_dir,
        state.backend.clone(),
        state.changed.clone(),
    )?;
    let inventory_task = tokio::spawn(watch_inventory(cfg.clone(), state.clone(), core.clone()));
    let expiry_task = tokio::spawn(expire_loop(core.clone(), state.clone()));
    let schedule_task = tokio::spawn(scheduler.clone().run());
    let served = server
        .run(
            api::router(state.clone(), token, cfg.api_limits)
                .layer(axum::Extension(scheduler.clone())),
            shutdown_signal(),
        )
        .await;
    inventory_task.abort();
    expiry_task.abort();
    schedule_task.abort();
    let _ = inventory_task.await;
    let _ = expiry_task.await;
    let _ = schedule_task.await;
    drop(scheduler);
    steady.stop_all();
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

/// Completes at the first SIGTERM or SIGINT (the graceful shutdown of every API server);
/// never, if the handlers cannot be installed (logged).
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
async fn watch_inventory(cfg: Config, state: Arc<AppState>, core: Arc<Mutex<Core>>) {
    let (path, rescan) = (cfg.inventory.clone(), cfg.rescan);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let name = path.file_name().map(|n| n.to_owned());
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && ev.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.send(());
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
    let mut cache = NetCache::new();
    // The inventory as last parsed, with the file's (modification time, length) then.
    type Stamp = Option<(Option<std::time::SystemTime>, u64)>;
    let mut parsed: Option<(Stamp, Inventory)> = None;
    // The pods were read at start.
    let mut next_full = tokio::time::Instant::now() + rescan;
    loop {
        let full = tokio::select! {
            Some(()) = rx.recv() => {
                // Editors write in several steps: let them finish.
                tokio::time::sleep(Duration::from_millis(30)).await;
                while rx.try_recv().is_ok() {}
                false
            }
            _ = tokio::time::sleep_until(next_full) => true,
        };
        // The file unchanged since the last read (a rescan tick): reuse what it said.
        let stamp = std::fs::metadata(&path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()));
        let loaded = match &parsed {
            Some((s, inv)) if stamp.is_some() && *s == stamp => Ok(inv.clone()),
            _ => Inventory::load(&path),
        };
        let inv = match loaded {
            Ok(inv) => {
                parsed = Some((stamp, inv.clone()));
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
                if full {
                    next_full = tokio::time::Instant::now() + rescan;
                }
                continue;
            }
        };
        let core = core.clone();
        let previous = if full {
            NetCache::new()
        } else {
            std::mem::take(&mut cache)
        };
        let started = tokio::time::Instant::now();
        let cfg = cfg.clone();
        let res = tokio::task::spawn_blocking(move || {
            let _phase = failpoint::phase(Phase::Inventory);
            let (pods, cache) = discover_all(&inv, &previous);
            let uplinks = crate::uplinks::of_pods(&cfg.uplinks, &pods);
            let virtuals = virtual_nets(&cfg);
            let mut c = lock(&core);
            let result = c.set_pods(pods).and_then(|pods_changed| {
                let uplinks_changed = c.set_uplinks(uplinks)?;
                let virtuals_changed = c.set_virtual_nets(virtuals)?;
                Ok(pods_changed.or(uplinks_changed).or(virtuals_changed))
            });
            let detached = c.datapath_problem();
            drop(c);
            crate::memory::trim();
            (result.map(|r| (r, detached)), cache)
        })
        .await;
        if full {
            next_full = tokio::time::Instant::now() + rescan.max(started.elapsed() * 10);
        }
        match res {
            Ok((result, fresh)) => {
                cache = fresh;
                match result {
                    Ok((changed, detached)) => {
                        // Unchanged pods ran no reconcile: that says nothing of the syncs.
                        if changed.is_some() {
                            state.health.sync_ok(detached);
                            state.changed.notify_one();
                        }
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        tracing::error!(error = %e, "reconcile after a pod change failed");
                        state.health.sync_failed(&e);
                        // The expiry loop re-arms, and retries within 5 s.
                        state.changed.notify_one();
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "pod discovery task failed"),
        }
    }
}

/// Reconciles at each deadline (the kernel already stopped the fault; this updates its state
/// and removes its entries), and at least every minute as a resync; records the outcome in
/// `state.health`. `state.changed` re-arms it.
pub async fn expire_loop(core: Arc<Mutex<Core>>, state: Arc<AppState>) {
    let changed = state.changed.clone();
    let mut retry_soon = false;
    loop {
        let c = core.clone();
        // After a failed reconcile (here or after a pod change), try again sooner than the
        // minute's resync.
        let longest = if retry_soon || state.health.failing() {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(60)
        };
        let wait = tokio::task::spawn_blocking(move || lock(&c).next_deadline())
            .await
            .ok()
            .flatten()
            .unwrap_or(longest)
            .min(longest);
        tokio::select! {
            _ = tokio::time::sleep(wait + Duration::from_millis(1)) => {
                let c = core.clone();
                let run = move || {
                    let _phase = failpoint::phase(Phase::Expiry);
                    let mut c = lock(&c);
                    c.reconcile().map(|_| c.datapath_problem())
                };
                let result = tokio::task::spawn_blocking(run).await;
                retry_soon = !matches!(result, Ok(Ok(_)));
                match result {
                    Ok(Ok(detached)) => state.health.sync_ok(detached),
                    Ok(Err(e)) => {
                        let e = format!("{e:#}");
                        tracing::error!(error = %e, "reconcile failed");
                        state.health.sync_failed(&e);
                    }
                    Err(e) => tracing::error!(error = %e, "reconcile task failed"),
                }
            }
            _ = changed.notified() => {}
        }
    }
}
