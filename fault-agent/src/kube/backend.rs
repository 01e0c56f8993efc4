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
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::reflector::{ObjectRef, Store},
};

use super::{
    crd::{NetworkFault, NetworkFaultSpec, Phase, RECOVERED_AT},
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

fn state_of(nf: &NetworkFault) -> FaultState {
    match nf.status.as_ref().and_then(|s| s.phase) {
        None | Some(Phase::Pending) => FaultState::Pending,
        Some(Phase::Active) => FaultState::Active,
        Some(Phase::Expired) => FaultState::Expired,
        Some(Phase::Recovered) => FaultState::Recovered,
        Some(Phase::Failed) => FaultState::Failed,
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

    fn find(&self, id: &str) -> Option<std::sync::Arc<NetworkFault>> {
        self.faults
            .state()
            .into_iter()
            .find(|f| f.metadata.name.as_deref() == Some(id))
    }

    async fn fetch(&self, id: &str) -> Result<NetworkFault, AgentError> {
        if let Some(f) = self.find(id) {
            return Ok((*f).clone());
        }
        let all: Api<NetworkFault> = Api::all(self.client.clone());
        let list = all
            .list(&ListParams::default().fields(&format!("metadata.name={id}")))
            .await
            .map_err(kube_error)?;
        list.items
            .into_iter()
            .next()
            .ok_or_else(|| AgentError::NotFound(id.to_owned()))
    }

    /// Nodes hosting the fault's target pods.
    fn target_nodes(&self, nf: &NetworkFault) -> BTreeSet<String> {
        let Ok(spec) = nf.fault_spec() else {
            return BTreeSet::new();
        };
        self.pods()
            .iter()
            .filter(|p| resolve::is_target(&spec, p))
            .filter_map(|p| p.node.clone())
            .collect()
    }

    /// Polls the watched object until `done` or `self.wait`.
    async fn wait_until(
        &self,
        ns: &str,
        id: &str,
        done: impl Fn(&NetworkFault, &BTreeSet<String>) -> bool,
    ) -> Option<NetworkFault> {
        let key = ObjectRef::<NetworkFault>::new(id).within(ns);
        let start = std::time::Instant::now();
        let mut last = None;
        while start.elapsed() < self.wait {
            if let Some(f) = self.faults.get(&key) {
                let nodes = self.target_nodes(&f);
                if done(&f, &nodes) {
                    return Some((*f).clone());
                }
                last = Some((*f).clone());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        last
    }

    pub async fn create(&self, spec: FaultSpec) -> Result<Fault, AgentError> {
        spec.validate().map_err(AgentError::Invalid)?;
        if let Some(d) = spec.duration
            && d.get() > self.max_duration
        {
            return Err(AgentError::Invalid(FieldError::new(
                "duration",
                format!(
                    "must be at most {} (the API's --max-duration), got {d}",
                    humantime::format_duration(self.max_duration)
                ),
            )));
        }
        let id = new_fault_id();
        let mut nf = NetworkFault::new(&id, NetworkFaultSpec::from_fault_spec(&spec));
        nf.metadata.namespace = Some(spec.namespace.clone());
        if !spec.labels.is_empty() {
            nf.metadata.labels = Some(spec.labels.clone());
        }
        let api: Api<NetworkFault> = Api::namespaced(self.client.clone(), &spec.namespace);
        let created = api
            .create(&PostParams::default(), &nf)
            .await
            .map_err(kube_error)?;
        let settled = self
            .wait_until(&spec.namespace, &id, |f, nodes| {
                let st = f.status.clone().unwrap_or_default();
                match st.phase {
                    None | Some(Phase::Pending) => false,
                    Some(Phase::Active) => nodes
                        .iter()
                        .all(|n| st.nodes.get(n).is_some_and(|s| s.applied)),
                    Some(_) => true,
                }
            })
            .await;
        Ok(self.view(&settled.unwrap_or(created)))
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
        Ok(v.iter().map(|f| self.view(f)).collect())
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
        let duration = spec.duration.map_or(self.max_duration, |d| d.get());
        let expires_at = st.expires_at.unwrap_or_else(|| {
            created
                .checked_add(SignedDuration::try_from(duration).unwrap_or(SignedDuration::ZERO))
                .unwrap_or(created)
        });
        let res = resolve::resolve(&spec, &self.pods());
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
            warnings: if state.is_live() {
                res.warnings
            } else {
                vec![]
            },
            spec,
        }
    }
}
