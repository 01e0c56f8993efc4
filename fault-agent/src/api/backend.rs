//! Where the API's faults live: the local core (single host; read-only on a node agent), or
//! `NetworkFault` objects in the cluster. The handlers do not care which.
use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use fault_api::{Fault, FaultSpec, FieldError, Verification};

use super::lock;
use crate::{
    core::Core, error::AgentError, kube::backend::KubeBackend, metrics::Recorder, pods::Pod,
};

/// See the module docs.
#[derive(Clone)]
pub enum Backend {
    /// This agent's own core. A node agent's core follows the cluster: `read_only` refuses
    /// writes through its API.
    Local {
        core: Arc<Mutex<Core>>,
        read_only: bool,
        /// The core's own instruments ([`Core::recorder`]), reached without its lock.
        recorder: Recorder,
        /// This agent's node (host) name: the one entry of each fault's per-node counters.
        node: String,
        /// The faults' abort-condition checks ([`crate::steady`]).
        steady: crate::steady::Supervisor,
    },
    /// `NetworkFault` objects (the API deployment).
    Cluster(Arc<KubeBackend>),
}

fn read_only() -> AgentError {
    AgentError::ReadOnly(
        "this node agent's API is read-only: send faults to the Faultline API (`fault-agent api`) or create NetworkFault objects".into(),
    )
}

impl Backend {
    async fn local<T: Send + 'static>(
        core: &Arc<Mutex<Core>>,
        f: impl FnOnce(&mut Core) -> Result<T, AgentError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let core = core.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&core)))
            .await
            .map_err(|e| AgentError::Internal(anyhow::anyhow!("core task: {e}")))?
    }

    /// The local core, when there is one.
    pub fn core(&self) -> Option<&Arc<Mutex<Core>>> {
        match self {
            Backend::Local { core, .. } => Some(core),
            Backend::Cluster(_) => None,
        }
    }

    /// A local fault with its counters as this node's one entry of [`Fault::nodes`] (the
    /// cluster backend fills it from each node's status).
    fn per_node(&self, mut f: Fault) -> Fault {
        if let Backend::Local { node, steady, .. } = self {
            f.nodes = [(node.clone(), f.counters)].into();
            f.steady = steady.measurements(&f.id);
        }
        f
    }

    /// Creates a fault on the local core after its pre-flight checks, then starts checking
    /// its abort conditions ([`crate::steady`]).
    async fn create_local(
        core: &Arc<Mutex<Core>>,
        steady: &crate::steady::Supervisor,
        spec: FaultSpec,
        make: impl FnOnce(&mut Core, FaultSpec) -> Result<Fault, AgentError> + Send + 'static,
    ) -> Result<Fault, AgentError> {
        let netns = crate::steady::preflight::prepare(&spec, core).await?;
        let f = Self::local(core, move |c| make(c, spec)).await?;
        steady.watch(&f, core.clone(), netns);
        Ok(f)
    }

    /// Stops the abort-condition checks of faults that ended.
    fn stop_checks<'a>(&self, ids: impl IntoIterator<Item = &'a String>) {
        if let Backend::Local { steady, .. } = self {
            ids.into_iter().for_each(|id| steady.stop(id));
        }
    }

    /// Where requests' durations and created faults are recorded.
    pub fn recorder(&self) -> &Recorder {
        match self {
            Backend::Local { recorder, .. } => recorder,
            Backend::Cluster(k) => &k.recorder,
        }
    }

    /// Creates a fault; returns when it is in the datapath (cluster: when the nodes report
    /// it, or after `--wait`). Records the time taken and the fault created.
    pub async fn create(&self, spec: FaultSpec) -> Result<Fault, AgentError> {
        self.create_by(spec, None).await
    }

    /// [`Backend::create`] for the caller `by` (named in the audit record when the fault
    /// overrides protection).
    pub async fn create_by(
        &self,
        spec: FaultSpec,
        by: Option<crate::audit::Actor>,
    ) -> Result<Fault, AgentError> {
        let started = Instant::now();
        let created = match self {
            Backend::Local {
                read_only: true, ..
            } => Err(read_only()),
            Backend::Local { core, steady, .. } => {
                Self::create_local(core, steady, spec, move |c, s| c.create_by(s, by.as_ref()))
                    .await
            }
            Backend::Cluster(k) => k.create_by(spec, by.as_ref()).await,
        }
        .map(|f| self.per_node(f));
        if let Ok(f) = &created {
            self.recorder().applied(started.elapsed());
            self.recorder().created(&f.spec);
        }
        created
    }

    /// A dry run of `spec` ([`fault_api::FaultPlan`]): nothing is applied or stored. Pods of
    /// this host are listed under its node name.
    pub async fn plan(&self, spec: FaultSpec) -> Result<fault_api::FaultPlan, AgentError> {
        match self {
            Backend::Local { core, node, .. } => {
                let mut plan = Self::local(core, move |c| c.plan(&spec)).await?;
                if let Some(here) = plan.nodes.remove("") {
                    plan.nodes.insert(node.clone(), here);
                }
                Ok(plan)
            }
            Backend::Cluster(k) => k.plan(&spec),
        }
    }

    /// [`Backend::create`] for a schedule's fire time: the fault is tagged with `schedule`
    /// ([`Core::create_scheduled`]). The local core only: 501 on the cluster API (its
    /// schedules are `NetworkFaultSchedule` objects), 405 on a node agent.
    pub async fn create_scheduled(
        &self,
        spec: FaultSpec,
        schedule: String,
    ) -> Result<Fault, AgentError> {
        let started = Instant::now();
        let created = match self {
            Backend::Local {
                read_only: true, ..
            } => Err(read_only()),
            Backend::Local { core, steady, .. } => {
                Self::create_local(core, steady, spec, move |c, s| {
                    c.create_scheduled(s, &schedule)
                })
                .await
            }
            Backend::Cluster(_) => Err(AgentError::NotHere(
                "schedules run on the standalone agent; in a cluster create NetworkFaultSchedule objects".into(),
            )),
        }
        .map(|f| self.per_node(f));
        if let Ok(f) = &created {
            self.recorder().applied(started.elapsed());
            self.recorder().created(&f.spec);
        }
        created
    }

    /// After a recover or cleanup that took since `started`: records it, and on the cluster
    /// API (where no core sees the end) how long each ended fault lasted.
    fn record_lift(&self, started: Instant, ended: &[Fault]) {
        self.recorder().lifted(started.elapsed());
        if let Backend::Cluster(_) = self {
            ended.iter().for_each(|f| self.recorder().ended_fault(f));
        }
    }

    pub async fn get(&self, id: String) -> Result<Fault, AgentError> {
        match self {
            Backend::Local { core, .. } => Self::local(core, move |c| c.get(&id)).await,
            Backend::Cluster(k) => k.get(&id).await,
        }
        .map(|f| self.per_node(f))
    }

    pub async fn list(&self, namespace: Option<String>) -> Result<Vec<Fault>, AgentError> {
        match self {
            Backend::Local { core, .. } => {
                Self::local(core, move |c| Ok(c.list(namespace.as_deref()))).await
            }
            Backend::Cluster(k) => k.list(namespace.as_deref()).await,
        }
        .map(|l| l.into_iter().map(|f| self.per_node(f)).collect())
    }

    /// Recovers a fault; returns when it is out of the datapath. Records the time taken
    /// when this call ended it (not for a fault that had ended before).
    pub async fn recover(&self, id: String) -> Result<Fault, AgentError> {
        let (started, since) = (Instant::now(), jiff::Timestamp::now());
        let recovered = match self {
            Backend::Local {
                read_only: true, ..
            } => Err(read_only()),
            Backend::Local { core, .. } => Self::local(core, move |c| c.recover(&id)).await,
            Backend::Cluster(k) => k.recover(&id).await,
        }
        .map(|f| self.per_node(f));
        if let Ok(f) = &recovered {
            self.stop_checks([&f.id]);
        }
        if let Ok(f) = &recovered
            && f.ended_at.is_some_and(|t| t >= since)
        {
            self.record_lift(started, std::slice::from_ref(f));
        }
        recovered
    }

    /// Recovers every live fault of `namespace` (all for `None`); returns their ids.
    pub async fn cleanup(&self, namespace: Option<String>) -> Result<Vec<String>, AgentError> {
        let started = Instant::now();
        let cleaned = match self {
            Backend::Local {
                read_only: true, ..
            } => Err(read_only()),
            Backend::Local { core, .. } => {
                Self::local(core, move |c| c.cleanup(namespace.as_deref())).await
            }
            Backend::Cluster(k) => k.cleanup(namespace.as_deref()).await,
        };
        if let Ok(ids) = &cleaned {
            self.stop_checks(ids);
        }
        if let Ok(ids) = &cleaned
            && !ids.is_empty()
        {
            self.record_lift(started, &[]);
        }
        cleaned
    }

    /// The pods known, and interfaces that could not be attached.
    pub async fn pods(
        &self,
    ) -> Result<(Vec<Pod>, std::collections::BTreeMap<String, String>), AgentError> {
        match self {
            Backend::Local { core, .. } => {
                Self::local(core, |c| Ok((c.pods().to_vec(), c.attach_errors().clone()))).await
            }
            Backend::Cluster(k) => Ok((k.pods(), Default::default())),
        }
    }

    /// The kill switch as recorded (the cluster API: as its ConfigMap holds it).
    pub async fn kill_switch(&self) -> Result<fault_api::kill_switch::KillSwitch, AgentError> {
        match self {
            Backend::Cluster(k) => crate::kube::kill_switch::read(&k.client, &k.kill_switch).await,
            Backend::Local { .. } => self.with_core(|c| Ok(c.kill_switch().clone())).await,
        }
    }

    /// Engages (`engage`) or lifts the kill switch, recording `req` and the caller's address
    /// `from`. A node agent's read-only API refuses (405); the cluster API writes the
    /// ConfigMap every node agent follows ([`crate::kube::kill_switch`]).
    pub async fn set_kill_switch(
        &self,
        engage: bool,
        req: fault_api::kill_switch::KillSwitchRequest,
        from: Option<String>,
    ) -> Result<fault_api::kill_switch::KillSwitch, AgentError> {
        match self {
            Backend::Local {
                read_only: true, ..
            } => Err(read_only()),
            Backend::Local { core, .. } => {
                Self::local(core, move |c| match engage {
                    true => c.engage_kill_switch(&req, from),
                    false => c.lift_kill_switch(&req, from),
                })
                .await
            }
            Backend::Cluster(k) => {
                crate::kube::kill_switch::set(&k.client, &k.kill_switch, engage, &req, from).await
            }
        }
    }

    /// Probes an active fault from its pods' network namespaces ([`crate::verify`]); blocks a
    /// blocking thread for about a second, never the core (its lock is held only to plan).
    /// 409 for a fault that is not active. On the cluster API the node agents probe
    /// ([`crate::kube::verify`]).
    pub async fn verify(&self, id: String) -> Result<Verification, AgentError> {
        let core = match self {
            Backend::Local { core, .. } => core,
            Backend::Cluster(k) => return k.verify(&id).await,
        };
        let (fault, plan, caps) = Self::local(core, move |c| {
            let fault = c.get(&id)?;
            let plan = crate::verify::plan::plan(&fault, c.pods())?;
            Ok((fault, plan, c.capabilities().clone()))
        })
        .await?;
        let v = tokio::task::spawn_blocking(move || crate::verify::run(&fault, &plan, &caps))
            .await
            .map_err(|e| AgentError::Internal(anyhow::anyhow!("verify task: {e}")))?;
        self.recorder().verify_probes(v.probe_packets);
        Ok(v)
    }

    /// Runs `f` on the local core (capabilities, tables); 501 on the cluster API.
    pub async fn with_core<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<T, AgentError> + Send + 'static,
    ) -> Result<T, AgentError> {
        match self {
            Backend::Local { core, .. } => Self::local(core, f).await,
            Backend::Cluster(_) => Err(AgentError::NotHere(
                "the cluster API has no datapath: ask a node agent (each serves this path on 127.0.0.1:9464 of its node, by default); a fault a node cannot enforce is refused with 422 naming the field".into(),
            )),
        }
    }
}

/// `FieldError` for request bodies that are not what the endpoint expects.
pub fn body_error(e: FieldError) -> AgentError {
    if e.field == "body" {
        AgentError::Malformed(e)
    } else {
        AgentError::Invalid(e)
    }
}
