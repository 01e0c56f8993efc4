//! Kubernetes events (events.k8s.io/v1) on `NetworkFault` objects and their target pods, so
//! that `kubectl describe nf NAME` tells a fault's story: which node applied it to how many
//! pods, when and why it ended, why it failed.
//!
//! Who says what (one event per transition, never one per reconcile):
//! - each node agent: `Applied` when its entry of the status turns applied (and `FaultApplied`
//!   on each of its target pods), `Failed` when it reports a new reason it cannot apply it;
//! - the controller (`fault-agent api`): `Recovered`, `Expired`, `Failed` (invalid spec, too
//!   long) when the phase changes, `NoTargets` when no pod matches.
//!
//! Publishing never blocks or fails reconciling: it runs on its own task with a 5 s bound;
//! a failure is logged and counted (`faultline_kube_event_failures_total`).
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client, Resource as _,
    runtime::events::{Event, EventType, Recorder as KubeRecorder, Reporter},
};

use super::crd::NetworkFault;
use crate::metrics::Recorder;

/// How long a publish may take before it is given up (and counted as failed).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes events as one reporting component (`faultline-node` with the node's name as
/// instance, or `faultline-controller`). Cheap to clone.
#[derive(Clone)]
pub struct Events {
    recorder: KubeRecorder,
    metrics: Recorder,
}

/// One event: its severity, `reason` (PascalCase, shown by `kubectl describe`), the human
/// `note`, and the `action` taken.
pub struct Note {
    pub type_: EventType,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

impl Events {
    /// `controller` names the component; `instance` tells replicas (nodes) apart.
    pub fn new(
        client: Client,
        controller: &str,
        instance: Option<String>,
        metrics: Recorder,
    ) -> Self {
        let reporter = Reporter {
            controller: controller.into(),
            instance,
        };
        Self {
            recorder: KubeRecorder::new(client, reporter),
            metrics,
        }
    }

    /// Publishes `note` about `regarding` on its own task and returns at once; a refusal or
    /// a publish slower than 5 s is logged and counted, never returned.
    pub fn publish(&self, regarding: ObjectReference, note: Note) {
        let (recorder, metrics) = (self.recorder.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let ev = Event {
                type_: note.type_,
                reason: note.reason.into(),
                // The API server refuses notes over 1 kB.
                note: Some(truncate(note.note, 1000)),
                action: note.action.into(),
                secondary: None,
            };
            let failed = match tokio::time::timeout(
                PUBLISH_TIMEOUT,
                recorder.publish(&ev, &regarding),
            )
            .await
            {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {PUBLISH_TIMEOUT:?}"),
            };
            metrics.event_failed();
            tracing::warn!(
                object = %regarding.name.unwrap_or_default(),
                reason = note.reason,
                error = %failed,
                "could not publish a Kubernetes event"
            );
        });
    }

    /// [`Events::publish`] about a `NetworkFault`.
    pub fn on_fault(&self, nf: &NetworkFault, note: Note) {
        self.publish(nf.object_ref(&()), note);
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A `Normal` note.
pub fn normal(reason: &'static str, action: &'static str, note: String) -> Note {
    Note {
        type_: EventType::Normal,
        reason,
        action,
        note,
    }
}

/// A `Warning` note.
pub fn warning(reason: &'static str, action: &'static str, note: String) -> Note {
    Note {
        type_: EventType::Warning,
        reason,
        action,
        note,
    }
}
