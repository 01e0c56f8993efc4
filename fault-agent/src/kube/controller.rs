//! The controller half of `fault-agent api`: level-triggered reconcile of each `NetworkFault`
//! (kube-runtime `Controller`). From the object, the pods and the clock it derives the status
//! it owns (phase, expiry, counts, applied nodes, conditions) and writes it with server-side
//! apply; it requeues at the expiry, and deletes ended faults after the retention period.
//! It also checks live faults' abort conditions ([`super::abort`]) and plans dry runs
//! (`spec.dryRun`: phase `DryRun`, `status.plan`, never applied).
use std::{collections::BTreeSet, sync::Arc, time::Duration};

use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::core::v1::Pod as KubePod,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{Controller, controller::Action, reflector::Store, watcher},
};

use super::{
    crd::{NetworkFault, NetworkFaultStatus, Phase},
    events::{self, Events},
    pods::from_kube,
};
use crate::{pods::Pod, resolve};

/// Field manager of the controller's part of the status.
pub const MANAGER: &str = "faultline-controller";

/// What reconcile needs.
pub struct Context {
    pub client: Client,
    pub pods: Store<KubePod>,
    pub max_duration: Duration,
    pub retention: Duration,
    /// What no fault may target or cut off.
    pub protection: crate::protect::Protection,
    /// Limits and the protection override ([`crate::guards`]).
    pub guards: crate::guards::Guards,
    /// `Recovered`, `Expired`, `Failed`, `Aborted`, `DryRun` and `NoTargets` events
    /// ([`events`]).
    pub events: Events,
    /// The abort-condition checks of live faults, keyed by `namespace/name`
    /// ([`super::abort`]).
    pub steady: crate::steady::Supervisor,
}

/// Why a reconcile failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

pub(crate) fn condition(
    old: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    // An empty message would be written as null, which the API server refuses.
    let message = if message.is_empty() {
        reason.to_owned()
    } else {
        message
    };
    let status = if ok { "True" } else { "False" };
    // lastTransitionTime moves only when the status does.
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// The status the controller owns, from the object, the pods and `now`. Pure.
pub fn desired_status(
    nf: &NetworkFault,
    pods: &[Pod],
    now: Timestamp,
    max: Duration,
    protection: &crate::protect::Protection,
    guards: &crate::guards::Guards,
) -> NetworkFaultStatus {
    let old = nf.status.clone().unwrap_or_default();
    let generation = nf.metadata.generation;
    let created = nf
        .metadata
        .creation_timestamp
        .clone()
        .map(|t| t.0)
        .unwrap_or(now);
    let mut st = NetworkFaultStatus {
        observed_generation: generation,
        ..Default::default()
    };
    let spec = match nf.fault_spec() {
        Ok(s) => s,
        Err(e) => {
            st.phase = Some(Phase::Failed);
            st.ended_at = Some(old.ended_at.unwrap_or(now));
            st.message = Some(e.to_string());
            st.conditions = vec![condition(
                &old.conditions,
                "Valid",
                false,
                "InvalidSpec",
                e.to_string(),
                generation,
            )];
            return st;
        }
    };
    if nf.spec.dry_run {
        return dry_run(st, &old, &spec, pods, now, max, protection, guards);
    }
    if old.phase == Some(Phase::Failed)
        && old.conditions.iter().any(|c| c.reason == "TooManyTargets")
    {
        // Refused when it started: pods going away later do not revive it.
        return failed(
            st,
            &old,
            now,
            "TooManyTargets",
            old.message.clone().unwrap_or_default(),
        );
    }
    let deciding = old.expires_at.is_none() || (!spec.mode.is_all() && old.blast_radius.is_none());
    let (duration, blast_radius) = match judge(nf, &spec, pods, max, protection, guards, deciding) {
        Ok(d) => d,
        Err((reason, msg)) => return failed(st, &old, now, reason, msg),
    };
    st.blast_radius = old.blast_radius.clone().or(blast_radius);
    let expires = old.expires_at.unwrap_or_else(|| {
        created
            .checked_add(SignedDuration::try_from(duration).unwrap_or(SignedDuration::ZERO))
            .unwrap_or(created)
    });
    st.expires_at = Some(expires);
    let res = resolve::resolve_among(
        &spec,
        pods,
        &guards.protection_for(&spec, protection),
        st.blast_radius.as_ref().map(|b| b.chosen.as_slice()),
    );
    st.target_count = Some(res.targets.len() as u32);
    st.peer_count = if spec.all_peers() {
        None
    } else {
        Some((res.peers.len() + spec.to_cidrs.len()) as u32)
    };
    st.target_pods = res
        .targets
        .iter()
        .map(|t| format!("{}/{}", t.namespace, t.name))
        .collect();
    let applied: Vec<&String> = old
        .nodes
        .iter()
        .filter(|(_, n)| n.applied)
        .map(|(k, _)| k)
        .collect();
    st.applied_nodes = (!applied.is_empty()).then(|| {
        applied
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    });
    let target_nodes: BTreeSet<&str> = res
        .targets
        .iter()
        .filter_map(|t| t.node.as_deref())
        .collect();
    let applied_here = |n: &str| old.nodes.get(n).is_some_and(|s| s.applied);
    let (phase, ended, msg) = if let Some(at) = nf.recovered_at() {
        let (phase, msg) = match nf.aborted() {
            Some(why) => (Phase::Aborted, why.to_owned()),
            None => (Phase::Recovered, "recovered".to_owned()),
        };
        (phase, Some(old.ended_at.unwrap_or(at)), msg)
    } else if now >= expires {
        (
            Phase::Expired,
            Some(expires),
            "reached its deadline".to_owned(),
        )
    } else if target_nodes.iter().any(|n| applied_here(n)) {
        // Active only once a node hosting its targets has it in its datapath.
        let warning = res.warnings.first().cloned().unwrap_or_default();
        (Phase::Active, None, warning)
    } else {
        let why = old
            .nodes
            .iter()
            .filter(|(n, s)| target_nodes.contains(n.as_str()) && !s.applied)
            .filter_map(|(n, s)| s.message.as_ref().map(|m| format!("{n}: {m}")))
            .collect::<Vec<_>>();
        let msg = if !why.is_empty() {
            format!("not applied: {}", why.join("; "))
        } else if let Some(w) = res.warnings.first() {
            w.clone()
        } else {
            format!(
                "waiting for {} to apply it",
                target_nodes.iter().copied().collect::<Vec<_>>().join(", ")
            )
        };
        (Phase::Pending, None, msg)
    };
    st.phase = Some(phase);
    st.ended_at = ended;
    st.message = (!msg.is_empty()).then_some(msg);
    let waiting: Vec<&str> = target_nodes
        .iter()
        .copied()
        .filter(|n| !old.nodes.get(*n).is_some_and(|s| s.applied))
        .collect();
    let failing: Vec<String> = old
        .nodes
        .iter()
        .filter_map(|(n, s)| {
            s.message
                .as_ref()
                .filter(|_| !s.applied)
                .map(|m| format!("{n}: {m}"))
        })
        .collect();
    let applied_cond = match phase {
        Phase::Active | Phase::Pending if !failing.is_empty() => condition(
            &old.conditions,
            "Applied",
            false,
            "NodeFailed",
            failing.join("; "),
            generation,
        ),
        Phase::Active | Phase::Pending if res.targets.is_empty() => condition(
            &old.conditions,
            "Applied",
            false,
            "NoTargets",
            "no pod matches the targets yet".into(),
            generation,
        ),
        Phase::Active | Phase::Pending if !waiting.is_empty() => condition(
            &old.conditions,
            "Applied",
            false,
            "WaitingForNodes",
            format!("waiting for {}", waiting.join(", ")),
            generation,
        ),
        Phase::Active => condition(
            &old.conditions,
            "Applied",
            true,
            "AllNodesApplied",
            format!("applied on {}", target_nodes.len()),
            generation,
        ),
        Phase::Aborted => condition(
            &old.conditions,
            "Applied",
            false,
            "AbortConditionBreached",
            st.message.clone().unwrap_or_else(|| "aborted".into()),
            generation,
        ),
        _ => condition(
            &old.conditions,
            "Applied",
            false,
            "Ended",
            st.message.clone().unwrap_or_else(|| "ended".into()),
            generation,
        ),
    };
    st.conditions = vec![spec_valid(&old.conditions, generation), applied_cond];
    st
}

/// The `Valid` condition of a spec that converted and validated (reason `SpecValid`).
fn spec_valid(old: &[Condition], generation: Option<i64>) -> Condition {
    condition(
        old,
        "Valid",
        true,
        "SpecValid",
        "the spec is valid".into(),
        generation,
    )
}

/// The status of a dry run (`spec.dryRun`): planned once (phase `DryRun`, `status.plan`,
/// ended now so that it is deleted after the retention period), then left as it is.
#[allow(clippy::too_many_arguments)]
fn dry_run(
    mut st: NetworkFaultStatus,
    old: &NetworkFaultStatus,
    spec: &fault_api::FaultSpec,
    pods: &[Pod],
    now: Timestamp,
    max: Duration,
    protection: &crate::protect::Protection,
    guards: &crate::guards::Guards,
) -> NetworkFaultStatus {
    if old.phase == Some(Phase::DryRun) && old.plan.is_some() {
        return NetworkFaultStatus {
            nodes: Default::default(),
            ..old.clone()
        };
    }
    let verdict = guards.judge(spec, pods, protection, max);
    let plan = crate::plan::plan(spec, pods, &verdict, guards, protection).0;
    st.phase = Some(Phase::DryRun);
    st.ended_at = Some(now);
    st.target_count = Some(plan.targets.len() as u32);
    st.peer_count = (!spec.all_peers()).then(|| (plan.peers.len() + spec.to_cidrs.len()) as u32);
    st.target_pods = (plan.targets.iter())
        .map(|t| format!("{}/{}", t.namespace, t.name))
        .collect();
    let message = if plan.accepted {
        format!(
            "dry run: would act on {} target pods on {} nodes; nothing applied",
            plan.targets.len(),
            plan.nodes
                .values()
                .filter(|n| !n.targets.is_empty())
                .count()
        )
    } else {
        format!("dry run: would be refused: {}", plan.refusals.join("; "))
    };
    let generation = st.observed_generation;
    st.conditions = vec![
        spec_valid(&old.conditions, generation),
        condition(
            &old.conditions,
            "Applied",
            false,
            "DryRun",
            "spec.dryRun: planned, never applied".into(),
            generation,
        ),
    ];
    st.message = Some(message);
    st.plan = Some(super::crd::DryRunPlan::of(&plan));
    st
}

/// The status of a fault that failed a guard: `Failed`, with `reason` in the `Valid`
/// condition and `message` (the field in `spec.` form and the limit) in both.
fn failed(
    mut st: NetworkFaultStatus,
    old: &NetworkFaultStatus,
    now: Timestamp,
    reason: &str,
    message: String,
) -> NetworkFaultStatus {
    st.phase = Some(Phase::Failed);
    st.ended_at = Some(old.ended_at.unwrap_or(now));
    st.message = Some(message.clone());
    let generation = st.observed_generation;
    st.conditions = vec![condition(
        &old.conditions,
        "Valid",
        false,
        reason,
        message,
        generation,
    )];
    st
}

/// The guards on a `NetworkFault` ([`crate::guards`]): its duration (or the limit it is
/// capped at) and, at the `first` decision, the blast-radius choice; or the `Valid` reason and
/// message it fails with. The duration and protection are judged at every reconcile (a
/// kubectl edit cannot slip past them); the most targets and the choice only once, when
/// the fault starts (pods that appear later do not fail a running fault).
fn judge(
    nf: &NetworkFault,
    spec: &fault_api::FaultSpec,
    pods: &[Pod],
    max: Duration,
    protection: &crate::protect::Protection,
    guards: &crate::guards::Guards,
    first: bool,
) -> Result<(Duration, Option<fault_api::BlastRadius>), (&'static str, String)> {
    let v = guards.judge(spec, pods, protection, max);
    for e in &v.refusals {
        let why = match e.field.as_str() {
            "duration" => "DurationTooLong",
            "override_protection" => "OverrideNotAllowed",
            "mode" if !first => continue,
            "mode" if e.message.contains("--max-targets") => "TooManyTargets",
            // No pod to choose from yet: wait for one (Pending, NoTargets).
            "mode" => continue,
            // Protected pods among the targets now are skipped at every resolution; a spec
            // that names a protected namespace or pod prefix fails.
            _ => match protection.check_spec(spec) {
                Err(_) if v.override_used => continue,
                Err(_) => "Protected",
                Ok(()) => continue,
            },
        };
        return Err((why, format!("spec.{e}")));
    }
    if first && v.override_used && nf.status.as_ref().is_none_or(|s| s.expires_at.is_none()) {
        let who = crate::audit::Actor::internal(format!("NetworkFault {}", nf.key()));
        crate::guards::audit_override(spec, Some(&who), &nf.name_any(), &v.overridden);
    }
    let choice = first
        .then(|| crate::blast::choose(spec, &v.candidates, &mut crate::blast::os_draw))
        .flatten()
        .filter(|b| !b.chosen.is_empty());
    Ok((v.duration, choice))
}

async fn reconcile(nf: Arc<NetworkFault>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = Timestamp::now();
    let pods: Vec<Pod> = ctx
        .pods
        .state()
        .iter()
        .filter_map(|p| from_kube(p))
        .collect();
    let st = desired_status(
        &nf,
        &pods,
        now,
        ctx.max_duration,
        &ctx.protection,
        &ctx.guards,
    );
    let st = super::preflight::gate(&ctx.client, &nf, st, now).await;
    let st = super::abort::supervise(&ctx.steady, &ctx.client, &nf, st);
    let ns = nf.namespace().unwrap_or_default();
    let api: Api<NetworkFault> = Api::namespaced(ctx.client.clone(), &ns);
    let old = nf.status.clone().unwrap_or_default();
    let mine = |s: &NetworkFaultStatus| {
        let mut s = s.clone();
        s.nodes.clear();
        s
    };
    if mine(&old) != st {
        let patch = serde_json::json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "NetworkFault", "status": st});
        api.patch_status(
            &nf.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        transition_events(&ctx.events, &nf, &old, &st);
    }
    match (st.phase, st.ended_at, st.expires_at) {
        (Some(Phase::Active | Phase::Pending), _, Some(exp)) => {
            let left = exp.duration_since(now).as_secs_f64().max(0.0);
            // Pods come and go: refresh the counts every few seconds too, and the abort
            // conditions' measurements more often.
            let every = if ctx.steady.is_watching(&nf.key()) {
                2.0
            } else {
                5.0
            };
            Ok(Action::requeue(
                Duration::from_secs_f64(left.min(every)) + Duration::from_millis(5),
            ))
        }
        (_, Some(end), _) => {
            let age = now.duration_since(end).as_secs_f64();
            if age >= ctx.retention.as_secs_f64() {
                api.delete(&nf.name_any(), &DeleteParams::default()).await?;
                ctx.steady.forget(&nf.key());
                return Ok(Action::await_change());
            }
            Ok(Action::requeue(Duration::from_secs_f64(
                ctx.retention.as_secs_f64() - age,
            )))
        }
        _ => Ok(Action::requeue(Duration::from_secs(5))),
    }
}

fn applied_reason(st: &NetworkFaultStatus) -> Option<&str> {
    st.conditions
        .iter()
        .find(|c| c.type_ == "Applied")
        .map(|c| c.reason.as_str())
}

/// The events of a status change the controller just wrote (`old` to `new`): one per change
/// of phase, and `NoTargets` when the targets stop matching any pod.
fn transition_events(
    ev: &Events,
    nf: &NetworkFault,
    old: &NetworkFaultStatus,
    new: &NetworkFaultStatus,
) {
    let msg = new.message.clone().unwrap_or_default();
    if new.phase != old.phase {
        let mut counters = fault_api::Counters::default();
        old.nodes.values().for_each(|n| counters += n.counters);
        let counted = format!(
            "{} packets matched, {} dropped (as last reported by the nodes)",
            counters.matched, counters.dropped
        );
        let note = match new.phase {
            Some(Phase::Recovered) => Some(events::normal(
                "Recovered",
                "Recover",
                format!(
                    "recovered at {}; {counted}",
                    new.ended_at.map(|t| t.to_string()).unwrap_or_default()
                ),
            )),
            Some(Phase::Expired) => Some(events::normal(
                "Expired",
                "Expire",
                format!(
                    "reached its deadline {}; {counted}",
                    new.expires_at.map(|t| t.to_string()).unwrap_or_default()
                ),
            )),
            Some(Phase::Failed) => Some(events::warning("Failed", "Validate", msg.clone())),
            Some(Phase::Aborted) => Some(events::warning(
                "Aborted",
                "Abort",
                format!("{msg}; {counted}"),
            )),
            Some(Phase::DryRun) => Some(events::normal("DryRun", "Plan", msg.clone())),
            _ => None,
        };
        if let Some(note) = note {
            ev.on_fault(nf, note);
        }
    }
    let no_targets = |s| applied_reason(s) == Some("NoTargets");
    if no_targets(new) && !no_targets(old) {
        ev.on_fault(
            nf,
            events::warning(
                "NoTargets",
                "Resolve",
                "no pod matches the targets (podPrefix, selector) yet: nothing is applied".into(),
            ),
        );
    }
}

fn error_policy(nf: Arc<NetworkFault>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(fault = %nf.name_any(), error = %e, "reconcile failed");
    Action::requeue(Duration::from_secs(1))
}

/// Runs the controller until the stream ends.
pub async fn run(ctx: Arc<Context>) {
    let faults: Api<NetworkFault> = Api::all(ctx.client.clone());
    Controller::new(faults, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{ABORTED, RECOVERED_AT};

    fn pod(name: &str, app: &str, node: &str, ip: &str) -> Pod {
        Pod {
            namespace: "d".into(),
            name: name.into(),
            labels: [("app".to_owned(), app.to_owned())].into(),
            node: Some(node.into()),
            ips: vec![ip.parse().unwrap()],
            host_ifs: vec![],
            netns: None,
            pod_ifs: vec![],
            problem: None,
            remote: false,
        }
    }

    fn object(spec: serde_json::Value) -> NetworkFault {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "faultline.dev/v1alpha1", "kind": "NetworkFault",
            "metadata": {"name": "f", "namespace": "d", "creationTimestamp": "2026-12-01T00:00:00Z"},
            "spec": spec
        }))
        .unwrap()
    }

    fn status(nf: &NetworkFault, pods: &[Pod], now: Timestamp) -> NetworkFaultStatus {
        let (p, g) = (Default::default(), Default::default());
        desired_status(nf, pods, now, Duration::from_secs(3600), &p, &g)
    }

    #[test]
    fn the_abort_annotation_ends_the_fault_aborted_with_its_message() {
        let mut nf = object(serde_json::json!({"podPrefix": "a", "partition": "packets"}));
        let now: Timestamp = "2026-12-01T00:00:05Z".parse().unwrap();
        let msg = "aborted: http probe http://x/ failed 80.0% of 10 probes over 1s, above 50%";
        nf.metadata.annotations = Some(
            [
                (RECOVERED_AT.to_owned(), "2026-12-01T00:00:04Z".to_owned()),
                (ABORTED.to_owned(), msg.to_owned()),
            ]
            .into(),
        );
        let st = status(&nf, &[pod("a-0", "a", "n1", "198.18.0.10")], now);
        assert_eq!(st.phase, Some(Phase::Aborted));
        assert_eq!(st.message.as_deref(), Some(msg));
        assert_eq!(st.ended_at, Some("2026-12-01T00:00:04Z".parse().unwrap()));
        let applied = st.conditions.iter().find(|c| c.type_ == "Applied").unwrap();
        assert_eq!(
            (applied.reason.as_str(), applied.message.as_str()),
            ("AbortConditionBreached", msg)
        );
    }

    #[test]
    fn a_dry_run_is_planned_once_per_node_and_then_left_as_it_is() {
        let nf = object(
            serde_json::json!({"podPrefix": "a", "toSelectors": ["app=b"],
            "partition": "packets", "duration": "1m", "dryRun": true}),
        );
        let pods = [
            pod("a-0", "a", "n1", "198.18.0.10"),
            pod("a-1", "a", "n2", "198.18.0.11"),
            pod("b-0", "b", "n2", "198.18.0.12"),
        ];
        let now: Timestamp = "2026-12-01T00:00:01Z".parse().unwrap();
        let st = status(&nf, &pods, now);
        assert_eq!(st.phase, Some(Phase::DryRun));
        assert_eq!((st.ended_at, st.expires_at), (Some(now), None));
        let plan = st.plan.clone().unwrap();
        assert!(plan.accepted);
        assert_eq!(plan.nodes["n1"].targets, ["d/a-0"]);
        assert_eq!(plan.nodes["n2"].targets, ["d/a-1"]);
        assert_eq!(plan.nodes["n2"].peers, ["d/b-0"]);
        assert_eq!(plan.duration, "1m");
        assert_eq!((st.target_count, st.peer_count), (Some(2), Some(1)));
        // Pods that come later change nothing: the plan was made once.
        let mut later = nf.clone();
        later.status = Some(st.clone());
        let more = [pods.to_vec(), vec![pod("a-2", "a", "n1", "198.18.0.13")]].concat();
        assert_eq!(status(&later, &more, now), st);
    }
}
