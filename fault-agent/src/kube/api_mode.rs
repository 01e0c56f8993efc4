//! `fault-agent api`: the HTTP API (native and seed) stored as `NetworkFault` objects, and the
//! controller that owns their status. Runs as a Deployment behind a Service.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::sync::Notify;

use super::{
    backend::KubeBackend, controller, crd::NetworkFault, events::Events,
    schedule_crd::NetworkFaultSchedule, schedules,
};
use crate::{
    api::{self, AppState, backend::Backend},
    standalone::shutdown_signal,
};

/// Settings of `fault-agent api`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub max_duration: Duration,
    pub retention: Duration,
    pub token_file: Option<std::path::PathBuf>,
    pub insecure: bool,
    /// Serve HTTPS with this certificate and key; `None`: plain HTTP.
    pub tls: Option<api::tls::TlsFiles>,
    /// How long create/recover wait for the node agents.
    pub wait: Duration,
    /// Request limits of the API.
    pub api_limits: api::limits::ApiLimits,
    /// What no fault may target or cut off.
    pub protection: crate::protect::Protection,
    /// The kill switch's ConfigMap.
    pub kill_switch: super::kill_switch::Location,
    /// Limits and the protection override ([`crate::guards`]).
    pub guards: crate::guards::Guards,
}

/// Runs until SIGTERM/SIGINT.
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
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster, or KUBECONFIG)")?;
    let (pods_r, pods_w) = reflector::store::<KubePod>();
    let (faults_r, faults_w) = reflector::store::<NetworkFault>();
    let pods = reflector(
        pods_w,
        watcher(
            Api::<KubePod>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(super::pods::slim),
    );
    let faults = reflector(
        faults_w,
        watcher(
            Api::<NetworkFault>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let (schedules_r, schedules_w) = reflector::store::<NetworkFaultSchedule>();
    let schedules_watch = reflector(
        schedules_w,
        watcher(
            Api::<NetworkFaultSchedule>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    // The schedule controller wakes at every change of a schedule or a fault.
    let wake = Arc::new(Notify::new());
    let w1 = tokio::spawn(pods.for_each(|_| async {}));
    let w2 = tokio::spawn(notify_each(faults, wake.clone()));
    let w3 = tokio::spawn(notify_each(schedules_watch, wake.clone()));
    pods_r.wait_until_ready().await.context("pod watch")?;
    faults_r
        .wait_until_ready()
        .await
        .context("networkfault watch")?;
    // Not waited for: without the NetworkFaultSchedule CRD the API serves faults, and the
    // schedule controller waits (logged) until the CRD appears.

    let recorder = crate::metrics::Recorder::default();
    let ctx = Arc::new(controller::Context {
        client: client.clone(),
        pods: pods_r.clone(),
        max_duration: cfg.max_duration,
        retention: cfg.retention,
        protection: cfg.protection.clone(),
        guards: cfg.guards.clone(),
        events: Events::new(client.clone(), controller::MANAGER, None, recorder.clone()),
        steady: crate::steady::Supervisor::new(recorder.clone()),
    });
    let ctl = tokio::spawn(controller::run(ctx));
    let source = crate::metrics::Source::Cluster {
        faults: faults_r.clone(),
        pods: pods_r.clone(),
    };
    let backend = Arc::new(KubeBackend {
        client: client.clone(),
        pods: pods_r,
        faults: faults_r,
        max_duration: cfg.max_duration,
        wait: cfg.wait,
        recorder: recorder.clone(),
        protection: cfg.protection.clone(),
        kill_switch: cfg.kill_switch.clone(),
        guards: cfg.guards.clone(),
    });
    let sched = tokio::spawn(schedules::run(Arc::new(schedules::Context {
        client: client.clone(),
        schedules: schedules_r,
        backend: backend.clone(),
        wake,
    })));
    // With a static token, other bearer tokens are Kubernetes users (TokenReview) whose
    // every request is checked against RBAC (SubjectAccessReview).
    let reviewer = token
        .is_some()
        .then(|| api::access::review::Reviewer::new(client.clone()));
    let state = Arc::new(AppState {
        backend: Backend::Cluster(backend),
        changed: Arc::new(Notify::new()),
        health: api::health::Health::ready_now(),
        inventory_error: Mutex::new(None),
        metrics: Arc::new(crate::metrics::Metrics::new(recorder, Some(source))),
    });
    let server = api::serve::Server::bind(cfg.listen, cfg.tls.clone()).await?;
    tracing::info!(url = %server.url(), "API listening (cluster mode)");
    let served = server
        .run(
            api::router_reviewed(state, token, reviewer, cfg.api_limits),
            shutdown_signal(),
        )
        .await;
    for t in [w1, w2, w3, ctl, sched] {
        t.abort();
    }
    served.context("API server")
}

/// Drives a watch stream, notifying `wake` at each event.
async fn notify_each<T>(stream: impl futures::Stream<Item = T>, wake: Arc<Notify>) {
    stream
        .for_each(|_| {
            wake.notify_one();
            async {}
        })
        .await
}
