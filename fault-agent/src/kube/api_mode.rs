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
use tokio::{net::TcpListener, sync::Notify};

use super::{backend::KubeBackend, controller, crd::NetworkFault, events::Events};
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
    let w1 = tokio::spawn(pods.for_each(|_| async {}));
    let w2 = tokio::spawn(faults.for_each(|_| async {}));
    pods_r.wait_until_ready().await.context("pod watch")?;
    faults_r
        .wait_until_ready()
        .await
        .context("networkfault watch")?;

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
    let backend = KubeBackend {
        client: client.clone(),
        pods: pods_r,
        faults: faults_r,
        max_duration: cfg.max_duration,
        wait: cfg.wait,
        recorder: recorder.clone(),
        protection: cfg.protection.clone(),
        kill_switch: cfg.kill_switch.clone(),
        guards: cfg.guards.clone(),
    };
    // With a static token, other bearer tokens are Kubernetes users (TokenReview) whose
    // every request is checked against RBAC (SubjectAccessReview).
    let reviewer = token
        .is_some()
        .then(|| api::access::review::Reviewer::new(client.clone()));
    let state = Arc::new(AppState {
        backend: Backend::Cluster(Arc::new(backend)),
        changed: Arc::new(Notify::new()),
        health: api::health::Health::ready_now(),
        inventory_error: Mutex::new(None),
        metrics: Arc::new(crate::metrics::Metrics::new(recorder, Some(source))),
    });
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "API listening (cluster mode)");
    let served = axum::serve(
        listener,
        api::router_reviewed(state, token, reviewer, cfg.api_limits)
            .into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await;
    for t in [w1, w2, ctl] {
        t.abort();
    }
    served.context("API server")
}
