//! `fault-agent node`: one per node (DaemonSet). It watches every pod and every `NetworkFault`,
//! and the Services and Nodes for the addresses kube-proxy translates (kube-runtime
//! reflectors: list + watch, no polling), finds the network namespace and host veth of the
//! pods on its node, mirrors the faults into its core (the same reconciler as the single-host
//! agent) and writes its own entry of each fault's status.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use futures::{Stream, StreamExt as _};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod as KubePod, Service};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::sync::Notify;

use super::{
    crd::{NetworkFault, NodeFaultStatus, Phase},
    events::{self, Events},
    netns::{Netns, NetnsIndex},
    pods::from_kube,
    services::{slim_node, slim_service, virtual_nets},
};
use crate::{
    api::{self, AppState, backend::Backend, lock},
    core::{Core, CoreConfig, ExternalFault, NodeReport},
    dataplane::{Capabilities, Dataplane, Pins, kernel},
    discover::{self, HostIf},
    pods::Pod,
    standalone::shutdown_signal,
    store::{self, Store},
};

/// Settings of `fault-agent node`.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name (`spec.nodeName` of its pods; from the downward API).
    pub node: String,
    /// Read-only API and health (`/healthz`, `/readyz`, `/v1/pods`, `/v1/faults`...).
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub core: CoreConfig,
    pub force_netlink: bool,
    /// The `skb->mark` bit between a sender's and a receiver's veth (`--evaluated-mark`).
    pub evaluated_mark: u32,
    /// Virtual ranges on top of what the Service and Node watches give (`--service-cidr`).
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// Interfaces to other nodes (`--uplink`): see [`crate::uplinks`].
    pub uplinks: crate::uplinks::UplinkChoice,
    /// The agent's DaemonSet (namespace, name), checked at exit: only its removal uninstalls
    /// (`--daemonset`). `None`: every exit uninstalls.
    pub daemonset: Option<(String, String)>,
    /// How often counters are written to the status (changes of state are written at once).
    pub status_interval: Duration,
    /// Bearer token file of the read-only API (`--token-file`): every route but `/healthz`,
    /// `/readyz` and `/health` then needs it (`/metrics` too). `None`: open to anything that
    /// reaches `listen`.
    pub token_file: Option<PathBuf>,
    /// Request limits of the read-only API.
    pub api_limits: api::limits::ApiLimits,
    /// `/healthz` fails once syncs have kept failing this long.
    pub liveness_threshold: Duration,
    /// The kill switch's ConfigMap, followed at every change ([`super::kill_switch`]).
    pub kill_switch: super::kill_switch::Location,
}

/// Local pods' discovery, cached by (namespace/name, addresses).
#[derive(Default)]
struct Discovery {
    index: NetnsIndex,
    cache: HashMap<(String, Vec<std::net::IpAddr>), (Netns, discover::PodNet)>,
}

fn if_still_there(h: &HostIf) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", h.name))
        .is_ok_and(|s| s.trim() == h.index.to_string())
}

impl Discovery {
    /// Fills `host_ifs` of the pods of `node`, and marks the pods of other nodes remote.
    fn fill(&mut self, pods: &mut [Pod], node: &str) {
        for pod in pods.iter_mut() {
            // Scheduled elsewhere: that node's agent judges what the pod sends.
            pod.remote = pod.node.as_deref().is_some_and(|n| n != node);
        }
        for pod in pods.iter_mut().filter(|p| p.node.as_deref() == Some(node)) {
            let key = (format!("{}/{}", pod.namespace, pod.name), pod.ips.clone());
            if let Some((ns, net)) = self
                .cache
                .get(&key)
                .filter(|(ns, n)| ns.still_there() && n.host_ifs.iter().all(if_still_there))
            {
                pod.host_ifs = net.host_ifs.clone();
                pod.pod_ifs = net.pod_ifs.clone();
                pod.netns = Some(ns.path.clone());
                continue;
            }
            if pod.ips.is_empty() {
                continue;
            }
            let ns = match self.index.find(&pod.ips) {
                Ok(ns) => ns,
                Err(e) => {
                    pod.problem = Some(e.to_string());
                    continue;
                }
            };
            match discover::pod_net(&ns.path) {
                Ok(net) => {
                    pod.host_ifs = net.host_ifs.clone();
                    pod.pod_ifs = net.pod_ifs.clone();
                    pod.netns = Some(ns.path.clone());
                    self.cache.insert(key, (ns, net));
                }
                Err(e) => pod.problem = Some(format!("{e:#}")),
            }
        }
        let live: std::collections::HashSet<_> = pods
            .iter()
            .map(|p| (format!("{}/{}", p.namespace, p.name), p.ips.clone()))
            .collect();
        self.cache.retain(|k, _| live.contains(k));
    }
}

/// A `NetworkFault` as the core mirrors it, keyed by `namespace/name`; `None` for a dry run
/// (`spec.dryRun`), while the controller has not set its expiry or when it failed validation
/// (the controller reports that). The kernel deadline is the status's `expiresAt`, but never later than the creation
/// plus the fault's duration and plus `max` (a status written by hand or by a controller with
/// a longer `--max-duration` cannot make a fault outlive what this node allows).
fn external(nf: &NetworkFault, max: Duration) -> Option<ExternalFault> {
    if nf.spec.dry_run {
        // A plan only, whatever its status says (also before the controller saw it).
        return None;
    }
    let st = nf.status.as_ref()?;
    if st.phase == Some(Phase::Failed) {
        return None;
    }
    let spec = nf.fault_spec().ok()?;
    if !spec.mode.is_all() && st.blast_radius.is_none() {
        // The controller has not chosen the pods yet: nothing to apply before it has.
        return None;
    }
    let created_at = nf
        .metadata
        .creation_timestamp
        .clone()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let longest = spec.duration.map_or(max, |d| d.get().min(max));
    let latest = jiff::SignedDuration::try_from(longest)
        .ok()
        .and_then(|d| created_at.checked_add(d).ok())
        .unwrap_or(created_at);
    let expires_at = st.expires_at?.min(latest);
    Some(ExternalFault {
        id: nf.key(),
        spec,
        created_at,
        expires_at,
        recovered: nf.recovered_at().is_some()
            || matches!(st.phase, Some(Phase::Recovered | Phase::Aborted)),
        uid: nf.metadata.uid.clone(),
        blast_radius: st.blast_radius.clone(),
    })
}

async fn drive<S, T, E>(stream: S, changed: Arc<Notify>, what: &'static str)
where
    S: Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        if let Err(e) = ev {
            tracing::warn!(what, error = %e, "watch error (retrying)");
        }
        changed.notify_one();
    }
}

/// Runs the node agent until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<()> {
    let token = cfg
        .token_file
        .as_deref()
        .map(api::auth::read_token)
        .transpose()?;
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster, or KUBECONFIG)")?;
    let caps = Capabilities::probe(cfg.force_netlink);
    tracing::info!(node = %cfg.node, kernel = %caps.kernel, tcx = caps.tcx, sch_fq = caps.sch_fq, "node agent");
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

    let changed = Arc::new(Notify::new());
    let (watches, mut tasks) = Watches::start(&client, &changed);
    // Not among the watches waited for: without permission on that ConfigMap the faults are
    // still applied (the watch retries and logs).
    tasks.push(tokio::spawn(super::kill_switch::follow(
        client.clone(),
        cfg.kill_switch.clone(),
        core.clone(),
    )));
    watches.ready().await?;

    let recorder = lock(&core).recorder().clone();
    let source = crate::metrics::Source::Local {
        core: core.clone(),
        node: cfg.node.clone(),
    };
    let state = Arc::new(AppState {
        backend: Backend::Local {
            core: core.clone(),
            read_only: true,
            recorder: recorder.clone(),
            node: cfg.node.clone(),
            steady: Default::default(),
        },
        changed: changed.clone(),
        health: api::health::Health::new(cfg.liveness_threshold),
        inventory_error: Mutex::new(None),
        metrics: Arc::new(crate::metrics::Metrics::new(recorder.clone(), Some(source))),
    });
    let events = Events::new(
        client.clone(),
        "faultline-node",
        Some(cfg.node.clone()),
        recorder.clone(),
    );
    let sync = tokio::spawn(sync_loop(
        cfg.clone(),
        events,
        core.clone(),
        watches,
        client.clone(),
        state.clone(),
    ));
    let server = api::serve::Server::bind(cfg.listen, None).await?;
    tracing::info!(url = %server.url(), token = token.is_some(), "node agent API listening");
    let served = server
        .run(
            api::router(state.clone(), token, cfg.api_limits),
            shutdown_signal(),
        )
        .await;
    for t in tasks.into_iter().chain([sync]) {
        t.abort();
        let _ = t.await;
    }
    drop(state);
    let uninstall = match &cfg.daemonset {
        None => true,
        Some(ds) => daemonset_gone(&client, ds).await,
    };
    let mut core = core;
    let core = loop {
        match Arc::try_unwrap(core) {
            Ok(m) => break m.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(shared) => {
                core = shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let cleaned = if uninstall {
        tracing::info!("shutting down: removing programs, links, qdiscs and pins");
        tokio::task::spawn_blocking(move || core.shutdown()).await?
    } else {
        tracing::info!("exiting: the datapath stays for the next agent of this node");
        tokio::task::spawn_blocking(move || core.leave()).await?
    };
    served.context("API server")?;
    cleaned
}

/// Whether the agent's DaemonSet (`namespace/name`) is being removed: it or its namespace gone
/// or being deleted (`kubectl delete -k` deletes the namespace first, and the namespace
/// controller may stop the pods before it deletes the DaemonSet), or the agent's identity or
/// permissions gone with them (401, 403): an uninstall. A DaemonSet still there (a rolling
/// update, an eviction, a drain) or an API that does not answer is not: the datapath stays,
/// and the kernel ends each fault at its deadline meanwhile.
async fn daemonset_gone(client: &Client, ds: &(String, String)) -> bool {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), &ds.0);
    let ns = removing(namespaces.get_opt(&ds.0), |n| &n.metadata).await;
    let gone = match ns {
        Some(true) => true,
        _ => removing(daemonsets.get_opt(&ds.1), |d| &d.metadata).await == Some(true),
    };
    tracing::info!(daemonset = %format!("{}/{}", ds.0, ds.1), gone, "DaemonSet checked at exit");
    gone
}

/// Whether the object `get` returns is gone or being deleted; `None` when the API cannot tell
/// (no answer within 5 s, or an error other than 401/403).
async fn removing<T>(
    get: impl std::future::Future<Output = kube::Result<Option<T>>>,
    meta: impl Fn(&T) -> &kube::api::ObjectMeta,
) -> Option<bool> {
    match tokio::time::timeout(Duration::from_secs(5), get).await {
        Ok(Ok(Some(o))) => Some(meta(&o).deletion_timestamp.is_some()),
        Ok(Ok(None)) => Some(true),
        Ok(Err(kube::Error::Api(e))) if e.code == 401 || e.code == 403 => Some(true),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot tell whether Faultline is being removed; keeping the datapath");
            None
        }
        Err(_) => {
            tracing::warn!("the API did not answer within 5 s; keeping the datapath");
            None
        }
    }
}

/// The reflectors' caches the sync loop reads.
struct Watches {
    pods: reflector::Store<KubePod>,
    faults: reflector::Store<NetworkFault>,
    services: reflector::Store<Service>,
    nodes: reflector::Store<Node>,
}

impl Watches {
    /// Starts a reflector per kind (each change wakes `changed`); returns the stores and the
    /// tasks driving them.
    fn start(client: &Client, changed: &Arc<Notify>) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let (pods, pods_w) = reflector::store::<KubePod>();
        let (faults, faults_w) = reflector::store::<NetworkFault>();
        let (services, services_w) = reflector::store::<Service>();
        let (nodes, nodes_w) = reflector::store::<Node>();
        let cfg = watcher::Config::default;
        let pods_watch = watcher(Api::<KubePod>::all(client.clone()), cfg())
            .default_backoff()
            .modify(super::pods::slim);
        let faults_watch =
            watcher(Api::<NetworkFault>::all(client.clone()), cfg()).default_backoff();
        let services_watch = watcher(Api::<Service>::all(client.clone()), cfg())
            .default_backoff()
            .modify(slim_service);
        let nodes_watch = watcher(Api::<Node>::all(client.clone()), cfg())
            .default_backoff()
            .modify(slim_node);
        let tasks = vec![
            tokio::spawn(drive(
                reflector(pods_w, pods_watch),
                changed.clone(),
                "pods",
            )),
            tokio::spawn(drive(
                reflector(faults_w, faults_watch),
                changed.clone(),
                "networkfaults",
            )),
            tokio::spawn(drive(
                reflector(services_w, services_watch),
                changed.clone(),
                "services",
            )),
            tokio::spawn(drive(
                reflector(nodes_w, nodes_watch),
                changed.clone(),
                "nodes",
            )),
        ];
        let watches = Self {
            pods,
            faults,
            services,
            nodes,
        };
        (watches, tasks)
    }

    /// Waits for each reflector's first list.
    async fn ready(&self) -> Result<()> {
        self.pods.wait_until_ready().await.context("pod watch")?;
        self.faults
            .wait_until_ready()
            .await
            .context("networkfault watch")?;
        self.services
            .wait_until_ready()
            .await
            .context("service watch")?;
        self.nodes.wait_until_ready().await.context("node watch")
    }
}

/// What a sync gives the status writer: this node's reports, the nearest deadline, why
/// the datapath is not attached (if it is not), and what its events name.
type SyncOutcome = (Vec<NodeReport>, Option<Duration>, Option<String>, Story);

/// What this node's events say beyond its reports, by fault key.
#[derive(Default)]
struct Story {
    /// `(namespace, name)` of this node's target pods of each applied fault.
    local: BTreeMap<String, Vec<(String, String)>>,
    /// Faults this node failed to apply (refused by the core, or failed in it); an ended
    /// fault's message ("recovered", ...) is not a failure.
    failing: std::collections::BTreeSet<String>,
}

impl Story {
    fn of(core: &Core, reports: &[NodeReport], node: &str) -> Self {
        let mut story = Story::default();
        for r in reports {
            let fault = core.get(&r.id).ok();
            if r.applied
                && let Some(f) = &fault
            {
                let pods = f
                    .targets
                    .iter()
                    .filter(|t| t.node.as_deref() == Some(node))
                    .map(|t| (t.namespace.clone(), t.name.clone()))
                    .collect();
                story.local.insert(r.id.clone(), pods);
            }
            let failed = fault
                .as_ref()
                .is_none_or(|f| f.state.is_live() || f.state == fault_api::FaultState::Failed);
            if !r.applied && r.message.is_some() && failed {
                story.failing.insert(r.id.clone());
            }
        }
        story
    }
}

/// Level-triggered: at every change of pods, faults, Services or Nodes (and at each deadline),
/// mirror the whole picture into the core, then write what changed in this node's status
/// entries.
async fn sync_loop(
    cfg: Config,
    events: Events,
    core: Arc<Mutex<Core>>,
    watches: Watches,
    client: Client,
    state: Arc<AppState>,
) {
    let discovery = Arc::new(Mutex::new(Discovery::default()));
    let mut written: BTreeMap<(String, String), (NodeFaultStatus, Instant)> = BTreeMap::new();
    let mut answered = super::verify::Answered::default();
    let mut planned = super::dry_run::Answered::default();
    loop {
        let objects = watches.faults.state();
        let mut pods: Vec<Pod> = watches
            .pods
            .state()
            .iter()
            .filter_map(|p| from_kube(p))
            .collect();
        let max = cfg.core.max_duration;
        let faults: Vec<ExternalFault> = objects.iter().filter_map(|f| external(f, max)).collect();
        let mut virtuals = virtual_nets(
            &watches.services.state(),
            &watches.nodes.state(),
            &cfg.service_cidrs,
        );
        let (c, d, node) = (core.clone(), discovery.clone(), cfg.node.clone());
        let choice = cfg.uplinks.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<SyncOutcome> {
            d.lock()
                .unwrap_or_else(|p| p.into_inner())
                .fill(&mut pods, &node);
            let uplinks = crate::uplinks::of_pods(&choice, &pods);
            virtuals.extend(crate::uplinks::own_addresses());
            let mut core = lock(&c);
            core.set_pods(pods)?;
            core.set_virtual_nets(virtuals)?;
            core.set_uplinks(uplinks)?;
            core.sync_external(&faults)?;
            let reports = core.node_reports(&node);
            let story = Story::of(&core, &reports, &node);
            let out = (
                reports,
                core.next_deadline(),
                core.datapath_problem(),
                story,
            );
            drop(core);
            // Each pass converts every Pod of the cluster: give that back.
            crate::memory::trim();
            Ok(out)
        })
        .await;
        // Counters change with no watch event: wake at least every --status-interval.
        let mut next = Duration::from_secs(5).min(cfg.status_interval);
        match res {
            Ok(Ok((reports, deadline, detached, story))) => {
                state.health.sync_ok(detached);
                if let Some(d) = deadline {
                    next = next.min(d + Duration::from_millis(1));
                }
                let told = Told {
                    events: &events,
                    pods: &watches.pods,
                    story: &story,
                };
                write_status(&client, &cfg, &objects, &reports, &mut written, &told).await;
                super::verify::answer(&client, &cfg.node, &core, &objects, &reports, &mut answered);
                super::dry_run::answer(&client, &cfg.node, &core, &objects, &mut planned).await;
            }
            Ok(Err(e)) => {
                let e = format!("{e:#}");
                tracing::error!(error = %e, "sync failed");
                state.health.sync_failed(&e);
            }
            Err(e) => {
                tracing::error!(error = %e, "sync task failed");
                state.health.sync_failed(&e.to_string());
            }
        }
        tokio::select! {
            _ = state.changed.notified() => tokio::time::sleep(Duration::from_millis(10)).await,
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// What the status writer needs to publish events of this node's transitions.
struct Told<'a> {
    events: &'a Events,
    pods: &'a reflector::Store<KubePod>,
    story: &'a Story,
}

impl Told<'_> {
    /// Events of this node's entry of `nf` changing from `before` to `now` (just written):
    /// `Applied` (and `FaultApplied` on each local target pod) when it turns applied,
    /// `Failed` when it reports a new reason it cannot apply the fault.
    fn transition(
        &self,
        node: &str,
        nf: &NetworkFault,
        before: Option<&NodeFaultStatus>,
        now: &NodeFaultStatus,
    ) {
        if now.applied && !before.is_some_and(|b| b.applied) {
            let pods = self.story.local.get(&nf.key()).cloned().unwrap_or_default();
            let names: Vec<String> = pods.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
            let note = if names.is_empty() {
                format!("node {node} applied it for its peer pods (no target pod on this node)")
            } else {
                format!(
                    "node {node} applied it to {} target pod(s): {}",
                    now.targets,
                    names.join(", ")
                )
            };
            self.events
                .on_fault(nf, events::normal("Applied", "Apply", note));
            for (ns, name) in &pods {
                let key = reflector::ObjectRef::<KubePod>::new(name).within(ns);
                if let Some(pod) = self.pods.get(&key) {
                    self.events.publish(
                        kube::Resource::object_ref(pod.as_ref(), &()),
                        events::normal(
                            "FaultApplied",
                            "Apply",
                            format!("NetworkFault {} applied by node {node}", nf.key()),
                        ),
                    );
                }
            }
        }
        let new_reason = now.message.is_some() && before.is_none_or(|b| b.message != now.message);
        if !now.applied && new_reason && self.story.failing.contains(&nf.key()) {
            let field = now
                .unsupported
                .as_ref()
                .map(|f| format!(" (field {f} is not supported by this node's kernel)"))
                .unwrap_or_default();
            self.events.on_fault(
                nf,
                events::warning(
                    "Failed",
                    "Apply",
                    format!(
                        "node {node}: {}{field}",
                        now.message.clone().unwrap_or_default()
                    ),
                ),
            );
        }
    }
}

/// Server-side applies this node's entry of each fault's status when it changed (counters at
/// most every `status_interval`). Only faults this node has (or had) a part in are written.
async fn write_status(
    client: &Client,
    cfg: &Config,
    objects: &[Arc<NetworkFault>],
    reports: &[NodeReport],
    written: &mut BTreeMap<(String, String), (NodeFaultStatus, Instant)>,
    told: &Told<'_>,
) {
    let manager = format!("faultline-node-{}", cfg.node);
    let by_key: BTreeMap<&str, &NodeReport> = reports.iter().map(|r| (r.id.as_str(), r)).collect();
    for nf in objects {
        let ns = nf.metadata.namespace.clone().unwrap_or_default();
        let key = (ns.clone(), nf.id());
        let in_object = nf.status.as_ref().and_then(|s| s.nodes.get(&cfg.node));
        let mut status = match by_key.get(nf.key().as_str()) {
            Some(r) => NodeFaultStatus {
                targets: r.local_targets,
                applied: r.applied,
                message: r.message.clone(),
                unsupported: r.unsupported.clone(),
                counters: r.counters,
                updated_at: None,
                verification: None,
                dry_run: None,
            },
            // Nothing of it on this node (any more): say so where it was said otherwise.
            None if in_object.is_some_and(|o| o.applied) || written.contains_key(&key) => {
                NodeFaultStatus::default()
            }
            None => continue,
        };
        let due = match written.get(&key) {
            Some((last, at)) => {
                let same = |a: &NodeFaultStatus, b: &NodeFaultStatus| {
                    a.targets == b.targets && a.applied == b.applied && a.message == b.message
                };
                !same(last, &status)
                    || (last.counters != status.counters && at.elapsed() >= cfg.status_interval)
                    || in_object.is_none_or(|o| !same(o, &status))
            }
            None => {
                status.applied || status.message.is_some() || in_object.is_some_and(|o| o.applied)
            }
        };
        if !due {
            continue;
        }
        status.updated_at = Some(Timestamp::now());
        let before = written
            .get(&key)
            .map(|(s, _)| s.clone())
            .or_else(|| in_object.cloned());
        let api: Api<NetworkFault> = Api::namespaced(client.clone(), &ns);
        let patch = serde_json::json!({
            "apiVersion": "faultline.dev/v1alpha1", "kind": "NetworkFault",
            "status": {"nodes": {cfg.node.clone(): status}}
        });
        match api
            .patch_status(
                &key.1,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                told.transition(&cfg.node, nf, before.as_ref(), &status);
                written.insert(key, (status, Instant::now()));
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                written.remove(&key);
            }
            Err(e) => tracing::warn!(fault = %key.1, error = %e, "status write failed (retrying)"),
        }
    }
    written.retain(|k, _| {
        objects
            .iter()
            .any(|o| o.metadata.namespace.as_deref() == Some(k.0.as_str()) && o.id() == k.1)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{NetworkFaultSpec, NetworkFaultStatus};

    fn object(ns: &str, name: &str, duration: Option<&str>, expires_in_s: i64) -> NetworkFault {
        let mut spec = NetworkFaultSpec::from_fault_spec(&fault_api::FaultSpec::new(ns));
        spec.pod_prefix = Some("vllm".into());
        spec.partition = Some(fault_api::PartitionMode::Packets);
        spec.duration = duration.map(str::to_owned);
        let mut nf = NetworkFault::new(name, spec);
        nf.metadata.namespace = Some(ns.into());
        let created = Timestamp::now();
        nf.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created),
        );
        nf.status = Some(NetworkFaultStatus {
            phase: Some(Phase::Active),
            expires_at: Some(created + jiff::SignedDuration::from_secs(expires_in_s)),
            ..Default::default()
        });
        nf
    }

    #[test]
    fn the_kernel_deadline_is_clamped_to_creation_plus_the_duration_and_the_maximum() {
        let hour = Duration::from_secs(3600);
        // A status that says a year: the node's --max-duration (1 h) wins.
        let nf = object("dynamo", "cut", None, 365 * 24 * 3600);
        let f = external(&nf, hour).unwrap();
        let created = f.created_at;
        assert_eq!(
            f.expires_at,
            created + jiff::SignedDuration::from_secs(3600)
        );
        // The spec's own duration is shorter: it wins.
        let nf = object("dynamo", "cut", Some("30s"), 3000);
        let f = external(&nf, hour).unwrap();
        assert_eq!(
            f.expires_at,
            f.created_at + jiff::SignedDuration::from_secs(30)
        );
        // A status expiring earlier than both is kept as it is.
        let nf = object("dynamo", "cut", Some("10m"), 20);
        let f = external(&nf, hour).unwrap();
        assert_eq!(
            f.expires_at,
            f.created_at + jiff::SignedDuration::from_secs(20)
        );
    }

    #[test]
    fn faults_of_the_same_name_in_two_namespaces_have_two_keys() {
        let a = external(
            &object("dynamo", "cut", None, 60),
            Duration::from_secs(3600),
        )
        .unwrap();
        let b = external(
            &object("storage", "cut", None, 60),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(a.id, "dynamo/cut");
        assert_eq!(b.id, "storage/cut");
    }
}
