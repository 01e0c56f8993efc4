//! Abort conditions in cluster mode: the controller in the API pod runs the same checks as
//! the single-host agent ([`crate::steady::Supervisor`], one task per condition) for every
//! `Active` `NetworkFault` with `spec.abort`, from the API pod's network. Level-triggered:
//! each reconcile starts the checks of a live fault not checked yet (so an API pod that
//! restarts resumes them) and stops those of an ended one. A breach ends the fault the way a
//! recover does: the [`RECOVERED_AT`] annotation (node agents remove it from their datapath at
//! once), with [`ABORTED`] holding the message the phase `Aborted` is reported with.
use std::time::Duration;

use jiff::Timestamp;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use super::crd::{ABORTED, NetworkFault, NetworkFaultStatus, Phase, RECOVERED_AT};
use crate::steady::{Ender, Supervisor, Watched};

/// How many times the abort annotation is tried (1 s apart) before giving up (logged).
const TRIES: u32 = 5;

/// Measurements in the status are replaced when this old (a status write wakes the
/// controller again: replacing them at every reconcile would write at the probe rate).
const REFRESH: Duration = Duration::from_millis(1_500);

/// `desired` with the last measurements of `nf`'s abort conditions, after starting or
/// stopping their checks as its phase asks: started when `Active` (and not aborted yet),
/// stopped once ended. The old status's are kept when this controller has measured nothing
/// (it restarted after the fault ended) or they are younger than [`REFRESH`] (unless a new
/// one is a breach). Call from within a tokio runtime.
pub fn supervise(
    steady: &Supervisor,
    client: &Client,
    nf: &NetworkFault,
    mut desired: NetworkFaultStatus,
) -> NetworkFaultStatus {
    let key = nf.key();
    let abort = nf.fault_spec().ok().and_then(|s| s.abort);
    let measured = steady.measurements(&key);
    let breached = measured.iter().any(|m| m.breached);
    match (desired.phase, desired.expires_at, abort) {
        (Some(Phase::Active), Some(expires_at), Some(abort))
            if !breached && nf.aborted().is_none() =>
        {
            let w = Watched {
                id: key.clone(),
                namespace: nf.metadata.namespace.clone().unwrap_or_default(),
                expires_at,
                abort,
            };
            steady.watch_with(w, ender(client.clone(), nf), None);
        }
        (Some(Phase::Active | Phase::Pending), _, Some(_)) => {}
        _ => steady.stop(&key),
    }
    let old = nf
        .status
        .as_ref()
        .map(|s| s.measurements.clone())
        .unwrap_or_default();
    desired.measurements = if measured.is_empty() || !(breached || stale(&old)) {
        old
    } else {
        measured
    };
    desired
}

/// Whether measurements shown in a status are due for replacement (none, or one older than
/// [`REFRESH`]).
fn stale(shown: &[fault_api::conditions::Measurement]) -> bool {
    let now = Timestamp::now();
    shown.is_empty()
        || shown
            .iter()
            .any(|m| now.duration_since(m.at).unsigned_abs().ge(&REFRESH))
}

/// Ends `nf` on a breach: the recover annotation and the abort message, merged into its
/// metadata (retried [`TRIES`] times).
fn ender(client: Client, nf: &NetworkFault) -> Ender {
    let namespace = nf.metadata.namespace.clone().unwrap_or_default();
    let name = nf.id();
    std::sync::Arc::new(move |key: String, message: String| {
        let api: Api<NetworkFault> = Api::namespaced(client.clone(), &namespace);
        let name = name.clone();
        Box::pin(async move {
            let patch = serde_json::json!({"metadata": {"annotations": {
                RECOVERED_AT: Timestamp::now().to_string(),
                ABORTED: message,
            }}});
            for attempt in 1..=TRIES {
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        tracing::warn!(fault = %key, %message, "fault aborted");
                        return;
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => return,
                    Err(e) => {
                        tracing::error!(fault = %key, attempt, error = %e, "marking the fault aborted failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    })
}
