//! Steady-state checks of a fault, run by the agent (never by the user's test):
//! - [`preflight`]: before a fault is applied, its `preflight` checks (targets ready, enough
//!   ready targets, an HTTP probe); a failure refuses the create (412, `preflight_failed`).
//! - [`Supervisor`]: while a fault is live, its `abort` conditions, each on a task of its own
//!   that probes on a blocking thread and calls its [`Ender`] only to abort. A breach ends
//!   the fault through the recover path, state `aborted`, with a message naming the condition
//!   and the measured value. On a single host the ender is [`Core::abort`] (out of the kernel
//!   at once, [`Supervisor::watch`]); in cluster mode the controller's marks the
//!   `NetworkFault` recovered and aborted ([`crate::kube::abort`], [`Supervisor::watch_with`]).
//! - [`judge`] (pure): the sliding failure window and the `for` hold; [`probe`]: one HTTP GET
//!   or one Prometheus instant query.
pub mod judge;
pub mod preflight;
pub mod probe;
mod watch;

use std::{
    collections::HashMap,
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
};

use fault_api::{
    Fault,
    conditions::{AbortConditions, Measurement},
};
use jiff::Timestamp;

use crate::core::Core;

/// Ends a fault on a breach: called with (fault id, message naming the condition and the
/// measured value); done when the fault is out of the datapath (or the attempt was logged).
pub type Ender =
    Arc<dyn Fn(String, String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The single-host ender: [`Core::abort`] on a blocking thread.
fn core_ender(core: Arc<Mutex<Core>>) -> Ender {
    Arc::new(move |id: String, message: String| {
        let core = core.clone();
        Box::pin(async move {
            let i = id.clone();
            let done = tokio::task::spawn_blocking(move || {
                crate::api::lock(&core).abort(&i, &message).map(|f| f.state)
            })
            .await;
            match done {
                Ok(Ok(state)) => tracing::info!(fault = %id, %state, "abort done"),
                Ok(Err(e)) => tracing::error!(fault = %id, error = %e, "abort failed"),
                Err(e) => tracing::error!(fault = %id, error = %e, "abort task failed"),
            }
        })
    })
}

/// What [`Supervisor::watch_with`] checks: a live fault's conditions and deadline.
pub struct Watched {
    /// The fault's id (single host) or `namespace/name` (cluster).
    pub id: String,
    /// Its namespace (a label of the measurements' metric).
    pub namespace: String,
    /// Checks stop at this time.
    pub expires_at: Timestamp,
    pub abort: AbortConditions,
}

/// The abort-condition tasks of live faults and their last measurements. Cheap to clone
/// (shared).
#[derive(Clone, Default)]
pub struct Supervisor {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Tasks by fault id (one per condition), with the fault's namespace.
    tasks: HashMap<String, (String, Vec<tokio::task::AbortHandle>)>,
    /// The last measurement of each condition, by fault id (kept after the fault ends).
    last: HashMap<String, Vec<Measurement>>,
    /// Where measurements go as `faultline_abort_condition_value` (none: not served).
    recorder: Option<crate::metrics::Recorder>,
}

impl Supervisor {
    /// A supervisor whose measurements are also served as metrics by `recorder`.
    pub fn new(recorder: crate::metrics::Recorder) -> Self {
        let inner = Inner {
            recorder: Some(recorder),
            ..Default::default()
        };
        Self {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts checking `fault`'s abort conditions, one task per condition, until the fault's
    /// deadline, [`Supervisor::stop`] or an abort ([`Core::abort`]). `netns` is where the HTTP
    /// probe runs from (its `from_pod`'s namespace; `None`: the agent's). Nothing for a fault
    /// that is not live or has no conditions; a fault already watched is not watched twice.
    /// Call from within a tokio runtime.
    pub fn watch(&self, fault: &Fault, core: Arc<Mutex<Core>>, netns: Option<PathBuf>) {
        let Some(abort) = fault.spec.abort.clone() else {
            return;
        };
        if !fault.state.is_live() {
            return;
        }
        let w = Watched {
            id: fault.id.clone(),
            namespace: fault.spec.namespace.clone(),
            expires_at: fault.expires_at,
            abort,
        };
        self.watch_with(w, core_ender(core), netns);
    }

    /// Starts checking `w`'s conditions, one task per condition, until its deadline,
    /// [`Supervisor::stop`] or a breach, which calls `ender` once. Nothing when `w.id` is
    /// already watched. Call from within a tokio runtime.
    pub fn watch_with(&self, w: Watched, ender: Ender, netns: Option<PathBuf>) {
        // Held until the tasks are on record: a task that ends at once (a deadline already
        // passed) then finds them to remove, and no one starts them twice.
        let mut inner = self.inner();
        if inner.tasks.contains_key(&w.id) {
            return;
        }
        let ctx = watch::Ctx {
            id: w.id.clone(),
            expires_at: w.expires_at,
            ender,
            supervisor: self.clone(),
        };
        let mut handles = vec![];
        if let Some(h) = w.abort.http {
            handles.push(tokio::spawn(watch::http(ctx.clone(), h, netns)).abort_handle());
        }
        if let Some(p) = w.abort.prometheus {
            handles.push(tokio::spawn(watch::prometheus(ctx, p)).abort_handle());
        }
        tracing::info!(fault = %w.id, conditions = handles.len(), "checking abort conditions");
        inner.tasks.insert(w.id, (w.namespace, handles));
    }

    /// Whether `id`'s conditions are being checked now.
    pub fn is_watching(&self, id: &str) -> bool {
        self.inner().tasks.contains_key(id)
    }

    /// Forgets the last measurements of a fault that is gone (after [`Supervisor::stop`]).
    pub fn forget(&self, id: &str) {
        self.inner().last.remove(id);
    }

    /// Stops checking a fault (it ended). Its last measurements stay readable.
    pub fn stop(&self, id: &str) {
        let mut inner = self.inner();
        let Some((namespace, tasks)) = inner.tasks.remove(id) else {
            return;
        };
        tasks.iter().for_each(tokio::task::AbortHandle::abort);
        if let Some(r) = &inner.recorder {
            for condition in ["http", "prometheus"] {
                r.abort_measured(&labels(id, &namespace, condition), None);
            }
        }
    }

    /// Stops every check (agent shutdown: the tasks hold the core).
    pub fn stop_all(&self) {
        for (_, (_, tasks)) in self.inner().tasks.drain() {
            tasks.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }

    /// The last measurement of each of a fault's conditions (empty when none was made).
    pub fn measurements(&self, id: &str) -> Vec<Measurement> {
        self.inner().last.get(id).cloned().unwrap_or_default()
    }

    /// Records a measurement, replacing the previous one of the same condition.
    fn record(&self, id: &str, m: Measurement) {
        let mut inner = self.inner();
        if let (Some(r), Some((namespace, _))) = (&inner.recorder, inner.tasks.get(id)) {
            r.abort_measured(&labels(id, namespace, &m.condition), m.value);
        }
        let list = inner.last.entry(id.to_owned()).or_default();
        list.retain(|o| o.condition != m.condition);
        list.push(m);
        list.sort_by(|a, b| a.condition.cmp(&b.condition));
    }

    /// Faults watched now (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.inner().tasks.len()
    }
}

fn labels(id: &str, namespace: &str, condition: &str) -> crate::metrics::recorder::AbortLabels {
    crate::metrics::recorder::AbortLabels {
        fault_id: id.to_owned(),
        namespace: namespace.to_owned(),
        condition: condition.to_owned(),
    }
}

/// Resumes checking every live fault on record that has abort conditions (agent start).
pub async fn resume(supervisor: &Supervisor, core: &Arc<Mutex<Core>>) {
    let c = core.clone();
    let found = tokio::task::spawn_blocking(move || {
        let core = crate::api::lock(&c);
        core.list(None)
            .into_iter()
            .filter(|f| f.state.is_live() && f.spec.abort.is_some())
            .map(|f| {
                let netns = preflight::abort_netns(&f.spec, core.pods()).ok().flatten();
                (f, netns)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for (f, netns) in found {
        supervisor.watch(&f, core.clone(), netns);
    }
}
