//! The controller's pre-flight checks of a `NetworkFault` (cluster mode): run once, before the
//! controller first writes `expiresAt` (node agents apply a fault only once it is set, so no
//! node applies a fault whose pre-flight failed). A failure is final: phase `Failed`, the
//! `Valid` condition `False` with reason `PreflightFailed`, the message naming the check and
//! what it measured.
use fault_api::{
    FaultSpec,
    conditions::{Preflight, parse_workload},
};
use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::Pod as KubePod,
};
use kube::{Api, Client, api::ListParams};

use super::crd::{NetworkFault, NetworkFaultStatus, Phase};

/// The reason of a failed pre-flight.
pub const REASON: &str = "PreflightFailed";

/// `desired` as it may be written: unchanged unless the fault has a pre-flight that has not
/// passed yet (the first time the fault would be accepted) and fails now, or failed before.
pub async fn gate(
    client: &Client,
    nf: &NetworkFault,
    desired: NetworkFaultStatus,
    now: Timestamp,
) -> NetworkFaultStatus {
    let old = nf.status.clone().unwrap_or_default();
    let failed_before = old
        .conditions
        .iter()
        .any(|c| c.type_ == "Valid" && c.reason == REASON);
    if failed_before {
        return NetworkFaultStatus {
            nodes: Default::default(),
            ..old
        };
    }
    let first =
        old.expires_at.is_none() && matches!(desired.phase, Some(Phase::Pending | Phase::Active));
    let spec = match nf.fault_spec() {
        Ok(s) if first => s,
        _ => return desired,
    };
    let Some(p) = &spec.preflight else {
        return desired;
    };
    match check(client, &spec, p).await {
        Ok(()) => desired,
        Err(why) => failed(&old, desired, why, now),
    }
}

fn failed(
    old: &NetworkFaultStatus,
    mut st: NetworkFaultStatus,
    why: String,
    now: Timestamp,
) -> NetworkFaultStatus {
    tracing::warn!(reason = %why, "pre-flight failed");
    let generation = st.observed_generation;
    st.phase = Some(Phase::Failed);
    st.expires_at = None;
    st.ended_at = Some(now);
    st.message = Some(why.clone());
    st.conditions = vec![super::controller::condition(
        &old.conditions,
        "Valid",
        false,
        REASON,
        why,
        generation,
    )];
    st
}

/// The checks, in order: targets ready, enough ready targets (or workload replicas), HTTP.
async fn check(client: &Client, spec: &FaultSpec, p: &Preflight) -> Result<(), String> {
    let failed = |check: &str, what: String| format!("pre-flight check {check} failed: {what}");
    if p.targets_ready || (p.min_ready_targets.is_some() && p.workload.is_none()) {
        let (ready, total) = ready_targets(client, spec).await?;
        if p.targets_ready && (total == 0 || ready < total) {
            return Err(failed(
                "targets_ready",
                format!("{ready} of {total} target pods have condition Ready=True"),
            ));
        }
        if let Some(min) = p.min_ready_targets
            && p.workload.is_none()
            && ready < min
        {
            return Err(failed(
                "min_ready_targets",
                format!("{ready} of {total} target pods ready, need {min}"),
            ));
        }
    }
    if let (Some(w), Some(min)) = (&p.workload, p.min_ready_targets) {
        let ready = ready_replicas(client, &spec.namespace, w).await?;
        if ready < min {
            return Err(failed(
                "min_ready_targets",
                format!("{w} has {ready} ready replicas, need {min}"),
            ));
        }
    }
    if let Some(h) = p.http.clone() {
        if h.from_pod.is_some() {
            return Err(failed(
                "http",
                "from_pod is for the single-host agent; the cluster API probes from its own pod"
                    .into(),
            ));
        }
        let url = h.url.clone();
        let res = tokio::task::spawn_blocking(move || crate::steady::probe::http_ok(&h, None))
            .await
            .map_err(|e| format!("pre-flight task: {e}"))?;
        if let Err(e) = res {
            return Err(failed("http", format!("GET {url}: {e}")));
        }
    }
    Ok(())
}

/// (target Pods with `Ready=True`, target Pods), read from the API server.
async fn ready_targets(client: &Client, spec: &FaultSpec) -> Result<(u32, u32), String> {
    let api: Api<KubePod> = Api::namespaced(client.clone(), &spec.namespace);
    let mut lp = ListParams::default();
    if let Some(s) = &spec.selector {
        lp = lp.labels(&s.to_string());
    }
    let pods = api
        .list(&lp)
        .await
        .map_err(|e| format!("pre-flight: listing the target pods: {e}"))?;
    let targets: Vec<&KubePod> = pods
        .items
        .iter()
        .filter(|p| {
            let name = p.metadata.name.as_deref().unwrap_or_default();
            spec.pod_prefix
                .as_deref()
                .is_none_or(|x| name.starts_with(x))
        })
        .collect();
    let ready = targets
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    Ok((ready as u32, targets.len() as u32))
}

/// `status.readyReplicas` of `deployment/NAME` or `statefulset/NAME` in `namespace`.
async fn ready_replicas(client: &Client, namespace: &str, workload: &str) -> Result<u32, String> {
    let (kind, name) = parse_workload(workload).map_err(|e| e.to_string())?;
    let ready = match kind {
        "deployment" => Api::<Deployment>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .map(|d| d.status.and_then(|s| s.ready_replicas)),
        _ => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .map(|s| s.status.and_then(|s| s.ready_replicas)),
    }
    .map_err(|e| format!("pre-flight check min_ready_targets failed: reading {workload}: {e}"))?;
    Ok(ready.unwrap_or(0).max(0) as u32)
}
