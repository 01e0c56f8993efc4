//! The API's faults as `NetworkFault` objects (`fault-agent api`). Creating one waits until
//! the node agents that host its targets report it applied (or a few seconds), and recovering
//! one waits until they report it removed, so the HTTP semantics match the single-host agent:
//! when the call returns, the datapath has changed.
use std::{collections::BTreeSet, time::Duration};

use fault_api::{Counters, Fault, FaultSpec, FaultState, FieldError, fault::new_fault_id};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::reflector::{ObjectRef, Store},
};

use super::{
    crd::{NetworkFault, NetworkFaultSpec, NetworkFaultStatus, Phase, RECOVERED_AT},
    pods::from_kube,
};
use crate::{error::AgentError, pods::Pod, resolve};

/// See the module docs.
pub struct KubeBackend {
    pub client: Client,
    pub pods: Store<KubePod>,
    pub faults: Store<NetworkFault>,
    /// Longest fault, and the duration of faults asked without one.
    pub max_duration: Duration,
    /// How long create and recover wait for the node agents.
    pub wait: Duration,
    /// Where the API's requests are recorded (`/metrics`).
    pub recorder: crate::metrics::Recorder,
    /// What no fault may target or cut off.
    pub protection: crate::protect::Protection,
    /// The ConfigMap every node agent follows for the kill switch.
    pub kill_switch: super::kill_switch::Location,
    /// Limits and the protection override ([`crate::guards`]).
    pub guards: crate::guards::Guards,
}

/// Maps a Kubernetes API error to ours; admission (schema) errors keep their message.
pub fn kube_error(e: kube::Error) -> AgentError {
    match e {
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
            AgentError::Invalid(FieldError::new("spec", s.message))
        }
        kube::Error::Api(s) if s.code == 404 => AgentError::NotFound(s.message),
        kube::Error::Api(s) if s.code == 409 => AgentError::Conflict(s.message),
        other => AgentError::Upstream(other.to_string()),
    }
}

/// The first node that reports a field of the spec its kernel cannot enforce, as the error
/// the API answers (422, naming that field).
fn unsupported_on(st: &NetworkFaultStatus) -> Option<FieldError> {
    st.nodes.iter().find_map(|(node, s)| {
        let field = s.unsupported.as_ref().filter(|_| !s.applied)?;
        let why = s.message.as_deref().unwrap_or("cannot be enforced");
        Some(FieldError::new(
            field.clone(),
            format!("node {node}: {why}"),
        ))
    })
}

/// The phase of a `NetworkFault` as the API reports it (no status yet: pending).
pub(crate) fn state_of(nf: &NetworkFault) -> FaultState {
    match nf.status.as_ref().and_then(|s| s.phase) {
        None | Some(Phase::Pending) => FaultState::Pending,
        Some(Phase::Active) => FaultState::Active,
        Some(Phase::Expired) => FaultState::Expired,
        Some(Phase::Recovered) => FaultState::Recovered,
        Some(Phase::Failed) => FaultState::Failed,
        Some(Phase::Aborted) => FaultState::Aborted,
        Some(Phase::DryRun) => FaultState::DryRun,
    }
}

impl KubeBackend {
    /// Every pod, as the agent sees pods.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods
            .state()
            .iter()
            .filter_map(|p| from_kube(p))
            .collect()
    }

    /// The one object an API id names (`namespace/name`, or a name alone when only one
    /// namespace has an object of that name), from `objects`.
    fn pick(id: &str, objects: Vec<NetworkFault>) -> Result<NetworkFault, AgentError> {
        let mut objects = objects;
        match objects.len() {
            0 => Err(AgentError::NotFound(id.to_owned())),
            1 => Ok(objects.remove(0)),
            n => {
                let namespaces: Vec<String> = objects
                    .iter()
                    .filter_map(|f| f.metadata.namespace.clone())
                    .collect();
                Err(AgentError::Conflict(format!(
                    "{n} NetworkFaults are named {id} (in namespaces {}): name one as namespace/name ({}%2F{id} in a URL path)",
                    namespaces.join(", "),
                    namespaces.first().map_or("NAMESPACE", String::as_str),
                )))
            }
        }
    }

    /// Splits an API id into (namespace, name); `None` if it cannot name an object.
    fn parse_id(id: &str) -> Option<(Option<&str>, &str)> {
        let (ns, name) = match id.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, id),
        };
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        (ok(name) && ns.is_none_or(ok)).then_some((ns, name))
    }

    async fn fetch(&self, id: &str) -> Result<NetworkFault, AgentError> {
        let (ns, name) = Self::parse_id(id).ok_or_else(|| AgentError::NotFound(id.to_owned()))?;
        let cached: Vec<NetworkFault> = self
            .faults
            .state()
            .into_iter()
            .filter(|f| f.metadata.name.as_deref() == Some(name))
            .filter(|f| ns.is_none_or(|ns| f.metadata.namespace.as_deref() == Some(ns)))
            .map(|f| (*f).clone())
            .collect();
        if !cached.is_empty() {
            return Self::pick(id, cached);
        }
        let mut fields = format!("metadata.name={name}");
        if let Some(ns) = ns {
            fields.push_str(&format!(",metadata.namespace={ns}"));
        }
        let all: Api<NetworkFault> = Api::all(self.client.clone());
        let list = all
            .list(&ListParams::default().fields(&fields))
            .await
            .map_err(kube_error)?;
        Self::pick(id, list.items)
    }

    /// Nodes hosting the fault's target pods (only the Pods of its namespace are read).
    fn target_nodes(&self, nf: &NetworkFault) -> BTreeSet<String> {
        let Ok(spec) = nf.fault_spec() else {
            return BTreeSet::new();
        };
        self.pods
            .state()
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(spec.namespace.as_str()))
            .filter_map(|p| from_kube(p))
            .filter(|p| resolve::matches_target(&spec, p))
            .filter(|p| {
                let chosen = nf.status.as_ref().and_then(|s| s.blast_radius.as_ref());
                chosen.is_none_or(|b| b.chosen.contains(&format!("{}/{}", p.namespace, p.name)))
            })
            .filter_map(|p| p.node)
            .collect()
    }

    /// Polls the watched object until `done` or `self.wait`. `done` is evaluated (and the
    /// target nodes computed) only when the object changed: a poll costs one cache lookup.
    async fn wait_until(
        &self,
        ns: &str,
        id: &str,
        done: impl Fn(&NetworkFault, &BTreeSet<String>) -> bool,
    ) -> Option<NetworkFault> {
        let key = ObjectRef::<NetworkFault>::new(id).within(ns);
        let start = std::time::Instant::now();
        let mut last: Option<std::sync::Arc<NetworkFault>> = None;
        while start.elapsed() < self.wait {
            if let Some(f) = self.faults.get(&key) {
                let changed = last
                    .as_ref()
                    .is_none_or(|l| l.metadata.resource_version != f.metadata.resource_version);
                if changed {
                    let nodes = self.target_nodes(&f);
                    if done(&f, &nodes) {
                        return Some((*f).clone());
                    }
                    last = Some(f);
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        last.map(|f| (*f).clone())
    }

    /// Creates a `NetworkFault`; see [`KubeBackend::create_by`].
    pub async fn create(&self, spec: FaultSpec) -> Result<Fault, AgentError> {
        self.create_by(spec, None).await
    }

    /// Creates a `NetworkFault` for the caller `by` once the guards pass (422 naming the
    /// first one tripped; an honoured protection override is audited), and waits for the
    /// node agents. The controller makes the blast-radius choice.
    pub async fn create_by(
        &self,
        spec: FaultSpec,
        by: Option<&crate::audit::Actor>,
    ) -> Result<Fault, AgentError> {
        let id = new_fault_id();
        let mut nf = NetworkFault::new(&id, NetworkFaultSpec::from_fault_spec(&spec));
        if !spec.labels.is_empty() {
            nf.metadata.labels = Some(spec.labels.clone());
        }
        let created = self.create_object(&spec, nf, by).await?;
        let api: Api<NetworkFault> = Api::namespaced(self.client.clone(), &spec.namespace);
        // Until every node hosting a target applied it, or one of them said why it cannot, or
        // there is no target yet (the status then says so).
        let settled = self
            .wait_until(&spec.namespace, &id, |f, nodes| {
                let st = f.status.clone().unwrap_or_default();
                let failing = nodes.iter().any(|n| {
                    st.nodes
                        .get(n)
                        .is_some_and(|s| !s.applied && s.message.is_some())
                });
                if unsupported_on(&st).is_some() {
                    return true;
                }
                match st.phase {
                    None => false,
                    Some(Phase::Pending) => {
                        st.expires_at.is_some() && (nodes.is_empty() || failing)
                    }
                    Some(Phase::Active) => nodes
                        .iter()
                        .all(|n| st.nodes.get(n).is_some_and(|s| s.applied)),
                    Some(_) => true,
                }
            })
            .await;
        let settled = settled.unwrap_or(created);
        if let Some(e) = settled.status.as_ref().and_then(unsupported_on) {
            // A node cannot enforce it: like the single-host agent, refuse it whole rather
            // than leave it applied on some nodes only.
            let _ = api.delete(&id, &DeleteParams::default()).await;
            return Err(AgentError::Unsupported(e));
        }
        Ok(self.view(&settled))
    }

    /// Creates `nf` (named, with its labels and owners; placed in `spec`'s namespace) for
    /// `spec` once `spec` validates and passes the guards: 422 naming the field or the first
    /// guard tripped or a field cluster mode cannot honour, 409 for a name in use. An honoured protection
    /// override is audited as `by`'s. Does not wait for the node agents.
    pub async fn create_object(
        &self,
        spec: &FaultSpec,
        mut nf: NetworkFault,
        by: Option<&crate::audit::Actor>,
    ) -> Result<NetworkFault, AgentError> {
        spec.validate().map_err(AgentError::Invalid)?;
        super::crd::cluster_supported(spec).map_err(AgentError::Invalid)?;
        let pods = self.pods();
        let verdict = self
            .guards
            .judge(spec, &pods, &self.protection, self.max_duration);
        if let Some(e) = verdict.refusals.into_iter().next() {
            return Err(AgentError::Invalid(e));
        }
        nf.metadata.namespace = Some(spec.namespace.clone());
        let api: Api<NetworkFault> = Api::namespaced(self.client.clone(), &spec.namespace);
        let created = api
            .create(&PostParams::default(), &nf)
            .await
            .map_err(kube_error)?;
        if verdict.override_used {
            crate::guards::audit_override(
                spec,
                by,
                created.metadata.name.as_deref().unwrap_or_default(),
                &verdict.overridden,
            );
        }
        Ok(created)
    }

    /// A dry run of `spec` against the cluster's pods: targets and peers per node, the
    /// guards it would trip, a blast-radius choice drawn now (not kept). No rule count: each
    /// node agent compiles its own (a `spec.dryRun` NetworkFault gets theirs,
    /// [`super::dry_run`]).
    pub fn plan(&self, spec: &FaultSpec) -> Result<fault_api::FaultPlan, AgentError> {
        spec.validate().map_err(AgentError::Invalid)?;
        let pods = self.pods();
        let verdict = self
            .guards
            .judge(spec, &pods, &self.protection, self.max_duration);
        let mut plan = crate::plan::plan(spec, &pods, &verdict, &self.guards, &self.protection).0;
        if let Err(e) = super::crd::cluster_supported(spec) {
            plan.refusals.push(crate::plan::reason(&e));
            plan.accepted = false;
        }
        Ok(plan)
    }

    pub async fn get(&self, id: &str) -> Result<Fault, AgentError> {
        Ok(self.view(&self.fetch(id).await?))
    }

    pub async fn list(&self, namespace: Option<&str>) -> Result<Vec<Fault>, AgentError> {
        let mut v: Vec<_> = self
            .faults
            .state()
            .into_iter()
            .filter(|f| namespace.is_none_or(|ns| f.metadata.namespace.as_deref() == Some(ns)))
            .collect();
        v.sort_by_key(|f| std::cmp::Reverse(f.metadata.creation_timestamp.clone().map(|t| t.0)));
        // The Pods converted once for the whole list, not once per fault.
        let pods = self.pods();
        Ok(v.iter().map(|f| self.view_with(f, &pods)).collect())
    }

    async fn mark_recovered(&self, nf: &NetworkFault) -> Result<(), AgentError> {
        let ns = nf.metadata.namespace.clone().unwrap_or_default();
        let api: Api<NetworkFault> = Api::namespaced(self.client.clone(), &ns);
        let patch = serde_json::json!({"metadata": {"annotations": {RECOVERED_AT: Timestamp::now().to_string()}}});
        api.patch(&nf.id(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_error)?;
        Ok(())
    }

    async fn wait_removed(&self, nf: &NetworkFault) -> Option<NetworkFault> {
        let ns = nf.metadata.namespace.clone().unwrap_or_default();
        self.wait_until(&ns, &nf.id(), |f, _| {
            let st = f.status.clone().unwrap_or_default();
            f.recovered_at().is_some()
                && matches!(st.phase, Some(Phase::Recovered))
                && st.nodes.values().all(|n| !n.applied)
        })
        .await
    }

    /// Asks the node agents to probe an active fault and merges their reports
    /// ([`super::verify`]). 409 for a fault that is not active.
    pub async fn verify(&self, id: &str) -> Result<fault_api::Verification, AgentError> {
        let nf = self.fetch(id).await?;
        let state = state_of(&nf);
        if state != FaultState::Active {
            return Err(AgentError::Conflict(format!(
                "fault {id} is {state}: only an active fault can be verified"
            )));
        }
        super::verify::request(&self.client, &nf, id).await
    }

    pub async fn recover(&self, id: &str) -> Result<Fault, AgentError> {
        let nf = self.fetch(id).await?;
        if !state_of(&nf).is_live() {
            return Ok(self.view(&nf));
        }
        self.mark_recovered(&nf).await?;
        let done = self.wait_removed(&nf).await;
        Ok(self.view(&done.unwrap_or(nf)))
    }

    pub async fn cleanup(&self, namespace: Option<&str>) -> Result<Vec<String>, AgentError> {
        let live: Vec<NetworkFault> = self
            .faults
            .state()
            .into_iter()
            .filter(|f| namespace.is_none_or(|ns| f.metadata.namespace.as_deref() == Some(ns)))
            .filter(|f| state_of(f).is_live() && f.recovered_at().is_none())
            .map(|f| (*f).clone())
            .collect();
        for f in &live {
            self.mark_recovered(f).await?;
        }
        for f in &live {
            self.wait_removed(f).await;
        }
        Ok(live.iter().map(NetworkFault::id).collect())
    }

    /// The API's view of an object.
    pub fn view(&self, nf: &NetworkFault) -> Fault {
        self.view_with(nf, &self.pods())
    }

    /// The API's view of an object, resolved against `pods`.
    fn view_with(&self, nf: &NetworkFault, pods: &[Pod]) -> Fault {
        let ns = nf.metadata.namespace.clone().unwrap_or_default();
        let st = nf.status.clone().unwrap_or_default();
        let created = nf
            .metadata
            .creation_timestamp
            .clone()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        let (spec, mut message) = match nf.fault_spec() {
            Ok(s) => (s, st.message.clone()),
            Err(e) => (FaultSpec::new(ns.clone()), Some(e.to_string())),
        };
        let (limit, _) = self
            .guards
            .duration_limit(self.max_duration, &spec.namespace);
        let duration = spec.duration.map_or(limit, |d| d.get());
        let expires_at = st.expires_at.unwrap_or_else(|| {
            created
                .checked_add(SignedDuration::try_from(duration).unwrap_or(SignedDuration::ZERO))
                .unwrap_or(created)
        });
        let protection = self.guards.protection_for(&spec, &self.protection);
        let chosen = st.blast_radius.as_ref().map(|b| b.chosen.as_slice());
        let res = resolve::resolve_among(&spec, pods, &protection, chosen);
        let mut counters = Counters::default();
        for n in st.nodes.values() {
            counters += n.counters;
        }
        let state = state_of(nf);
        if state == FaultState::Failed && message.is_none() {
            message = Some("failed".into());
        }
        let peer_cidrs = if spec.all_peers() {
            vec![
                "0.0.0.0/0".parse().expect("literal"),
                "::/0".parse().expect("literal"),
            ]
        } else {
            spec.to_cidrs.clone()
        };
        Fault {
            id: nf.id(),
            state,
            message,
            created_at: created,
            expires_at,
            ended_at: st.ended_at,
            targets: res.targets,
            peers: res.peers,
            peer_cidrs,
            protected: res.protected,
            counters,
            nodes: st
                .nodes
                .iter()
                .map(|(n, s)| (n.clone(), s.counters))
                .collect(),
            warnings: if state.is_live() {
                res.warnings
            } else {
                vec![]
            },
            verification: None,
            blast_radius: st.blast_radius.clone(),
            schedule: None,
            steady: st.measurements.clone(),
            spec,
        }
    }
}
