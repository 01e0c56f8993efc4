//! The schedule controller of the API pod: at each fire time of a `NetworkFaultSchedule`
//! ([`super::schedule_crd`]) it creates a `NetworkFault` from the template, like the CronJob
//! controller creates Jobs.
//!
//! Level-triggered: [`run`] wakes at the nearest fire time, at every change of a schedule or
//! a fault (`wake`), and at least every [`MAX_SLEEP`]; each pass ([`tick`]) looks at every
//! schedule and fault in the watch caches and acts on what is due:
//!
//! - **Fire** at the latest fire time at or before now that is after the last one acted on
//!   (`status.lastScheduleTime`, else the object's creation): after an API restart a missed
//!   fire time is made up at most once (only the latest), and not if more than
//!   `startingDeadline` has passed since it (the standalone scheduler's rule,
//!   [`fault_api::schedule`]).
//! - The fault is named `<schedule>-<fire time, Unix seconds>` (a second pass at the same fire
//!   time meets 409 and creates nothing), carries the label [`SCHEDULE_LABEL`] and a
//!   controller ownerReference to the schedule, and is created through
//!   [`KubeBackend::create_object`]: the same validation, protected resources and limits as
//!   `POST /v1/faults`. A refusal is the schedule's `status.message`.
//! - `concurrencyPolicy`: `Forbid` skips while a fault of the schedule is live; `Replace`
//!   recovers the live ones first as `POST /v1/faults/{id}/recover` does (and waits as it
//!   does); `Allow` creates anyway.
//! - **History**: ended faults beyond `historyLimit` are deleted, oldest end first.
//! - **Deleted schedules**: the cluster's garbage collector deletes a schedule's faults by
//!   their ownerReference; this controller does it too (faults labelled with a schedule whose
//!   owner uid is no longer there), so it holds without kube-controller-manager.
use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use fault_api::schedule::{ConcurrencyPolicy, CronSchedule, ScheduleSpec};
use jiff::Timestamp;
use kube::{
    Api, Client, Resource as _, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams},
    runtime::reflector::Store,
};
use tokio::sync::Notify;

use super::{
    backend::{KubeBackend, state_of},
    crd::{NetworkFault, NetworkFaultSpec},
    schedule_crd::{NetworkFaultSchedule, NetworkFaultScheduleStatus, SCHEDULE_LABEL},
};
use crate::error::AgentError;

/// Field manager of the schedules' status.
pub const MANAGER: &str = "faultline-schedules";
/// Longest sleep between passes (a wall-clock step is noticed within it).
pub const MAX_SLEEP: Duration = Duration::from_secs(30);

/// What the controller works with.
pub struct Context {
    pub client: Client,
    /// The `NetworkFaultSchedule` watch cache.
    pub schedules: Store<NetworkFaultSchedule>,
    /// The API's backend: the `NetworkFault` cache, and create/recover with every guard.
    pub backend: Arc<KubeBackend>,
    /// Notified at every change of a schedule or a fault.
    pub wake: Arc<Notify>,
}

/// Runs until aborted (see the module docs).
pub async fn run(ctx: Arc<Context>) {
    let ready = ctx.schedules.wait_until_ready();
    if tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .is_err()
    {
        tracing::warn!(
            "no NetworkFaultSchedule list yet (is its CRD installed? deploy/crd.yaml); schedules run once it is"
        );
        if ctx.schedules.wait_until_ready().await.is_err() {
            return;
        }
    }
    let mut memory = Memory::default();
    loop {
        let next = tick(&ctx, &mut memory, Timestamp::now()).await;
        let wait = next
            .map(|t| t.duration_since(Timestamp::now()).unsigned_abs())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.wake.notified() => {}
        }
    }
}

/// What the controller remembers per schedule uid between passes: the cache may not hold
/// its own status write yet at the next pass.
#[derive(Default)]
struct Memory {
    /// The fire time last acted on.
    acted: HashMap<String, Timestamp>,
    /// The status last written.
    written: HashMap<String, NetworkFaultScheduleStatus>,
}

/// One pass over every schedule at `now`; returns the nearest next fire time.
async fn tick(ctx: &Context, memory: &mut Memory, now: Timestamp) -> Option<Timestamp> {
    let schedules = ctx.schedules.state();
    let mut nearest: Option<Timestamp> = None;
    for s in &schedules {
        let next = reconcile(ctx, s, memory, now).await;
        nearest = match (nearest, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let uids: BTreeSet<String> = schedules.iter().filter_map(|s| s.uid()).collect();
    memory.acted.retain(|uid, _| uids.contains(uid));
    memory.written.retain(|uid, _| uids.contains(uid));
    delete_orphans(ctx, &uids).await;
    nearest
}

/// The faults of schedule `s` (by label and owner uid): (live, ended), oldest first (ended
/// ones by their end).
fn owned(ctx: &Context, s: &NetworkFaultSchedule) -> (Vec<NetworkFault>, Vec<NetworkFault>) {
    let uid = s.uid();
    let mut mine: Vec<NetworkFault> = ctx
        .backend
        .faults
        .state()
        .iter()
        .filter(|f| f.metadata.namespace == s.metadata.namespace)
        .filter(|f| f.labels().get(SCHEDULE_LABEL) == s.metadata.name.as_ref())
        .filter(|f| {
            f.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .map(|f| (**f).clone())
        .collect();
    mine.sort_by_key(|f| f.metadata.creation_timestamp.clone().map(|t| t.0));
    let (live, mut ended): (Vec<_>, Vec<_>) = mine.into_iter().partition(|f| state_of(f).is_live());
    ended.sort_by_key(|f| {
        let st = f.status.as_ref();
        st.and_then(|s| s.ended_at)
            .or(f.metadata.creation_timestamp.clone().map(|t| t.0))
    });
    (live, ended)
}

/// Brings one schedule up to `now`: fires what is due, trims its history, writes its status.
/// Returns its next fire time.
async fn reconcile(
    ctx: &Context,
    s: &NetworkFaultSchedule,
    memory: &mut Memory,
    now: Timestamp,
) -> Option<Timestamp> {
    let uid = s.uid().unwrap_or_default();
    let old =
        (memory.written.get(&uid).cloned()).unwrap_or_else(|| s.status.clone().unwrap_or_default());
    let mut st = old.clone();
    st.observed_generation = s.metadata.generation;
    let parsed = s
        .schedule_spec()
        .and_then(|spec| spec.cron_schedule().map(|c| (spec, c)));
    match parsed {
        Err(e) => {
            st.message = Some(e.to_string());
            st.next_schedule_time = None;
        }
        Ok((spec, cron)) => {
            let (live, ended) = owned(ctx, s);
            if !spec.suspend
                && let Some(t) = due(&cron, &st, memory.acted.get(&uid).copied(), s, now)
            {
                memory.acted.insert(uid.clone(), t);
                fire(ctx, s, &spec, t, now, &live, &mut st).await;
            }
            st.next_schedule_time = (!spec.suspend).then(|| cron.next_after(now)).flatten();
            let kept = trim_history(ctx, ended, spec.history_limit as usize).await;
            st.history = kept.iter().map(|f| f.name_any()).collect();
            let (live, _) = owned(ctx, s);
            let mut active: Vec<String> = live.iter().map(|f| f.name_any()).collect();
            // Just created: the cache may not hold it yet.
            if let Some(last) = st.last_fault.as_ref().filter(|_| st.created > old.created)
                && !active.contains(last)
            {
                active.push(last.clone());
            }
            st.active_count = active.len() as u32;
            st.active = active;
        }
    }
    if st != old {
        match write_status(&ctx.client, s, &st).await {
            Ok(()) => {
                memory.written.insert(uid, st.clone());
            }
            Err(e) => {
                tracing::warn!(schedule = %key(s), error = %e, "writing the schedule's status failed; the next pass retries")
            }
        }
    }
    st.next_schedule_time
}

/// `namespace/name` of a schedule, for logs.
fn key(s: &NetworkFaultSchedule) -> String {
    format!("{}/{}", s.namespace(), s.name_any())
}

/// The fire time to act on at `now`: the latest at or before it, if after the last one
/// acted on (`acted` in memory, or the status), else after the object's creation.
fn due(
    cron: &CronSchedule,
    st: &NetworkFaultScheduleStatus,
    acted: Option<Timestamp>,
    s: &NetworkFaultSchedule,
    now: Timestamp,
) -> Option<Timestamp> {
    let created = s.metadata.creation_timestamp.clone().map(|t| t.0);
    let since = st.last_schedule_time.max(acted).or(created)?;
    cron.latest_at_or_before(now).filter(|t| *t > since)
}

/// Acts on fire time `t` at `now`: the starting deadline, the concurrency policy, then the
/// fault. Records the outcome in `st`.
async fn fire(
    ctx: &Context,
    s: &NetworkFaultSchedule,
    spec: &ScheduleSpec,
    t: Timestamp,
    now: Timestamp,
    live: &[NetworkFault],
    st: &mut NetworkFaultScheduleStatus,
) {
    st.last_schedule_time = Some(t);
    let late = now.duration_since(t).unsigned_abs();
    if let Some(d) = spec.starting_deadline.filter(|d| late > d.get()) {
        let late = Duration::from_millis(late.as_millis() as u64);
        let why = format!(
            "missed fire time {t}: {} late, beyond startingDeadline {d}",
            humantime::format_duration(late)
        );
        return skip(s, st, why);
    }
    let names: Vec<String> = live.iter().map(|f| f.name_any()).collect();
    match spec.concurrency_policy {
        ConcurrencyPolicy::Forbid if !names.is_empty() => {
            let why = format!(
                "fire time {t} skipped (Forbid): NetworkFault {} still live",
                names.join(", ")
            );
            return skip(s, st, why);
        }
        ConcurrencyPolicy::Replace => {
            for n in &names {
                let id = format!("{}/{n}", s.namespace());
                if let Err(e) = ctx.backend.recover(&id).await {
                    tracing::warn!(schedule = %key(s), fault = %n, error = %e, "Replace: recover failed");
                }
            }
        }
        _ => {}
    }
    let name = fault_name(s, t);
    match create(ctx, s, spec, &name).await {
        Ok(()) => {
            tracing::info!(schedule = %key(s), fault = %name, fire_time = %t, late_ms = late.as_millis() as u64, "scheduled fault created");
            st.created += 1;
            st.last_fault = Some(name);
            st.message = None;
        }
        Err(AgentError::Conflict(_)) => {
            tracing::info!(schedule = %key(s), fault = %name, "fire time already acted on");
        }
        Err(e) => {
            tracing::warn!(schedule = %key(s), fire_time = %t, error = %e, "scheduled fault refused");
            st.message = Some(format!("fire time {t}: {e}"));
        }
    }
}

/// `<schedule>-<fire time in Unix seconds>`.
pub fn fault_name(s: &NetworkFaultSchedule, t: Timestamp) -> String {
    format!("{}-{}", s.name_any(), t.as_second())
}

fn skip(s: &NetworkFaultSchedule, st: &mut NetworkFaultScheduleStatus, why: String) {
    tracing::info!(schedule = %key(s), "{why}");
    st.skipped += 1;
    st.message = Some(why);
}

/// Creates the schedule's fault `name` from its template, owned by the schedule.
async fn create(
    ctx: &Context,
    s: &NetworkFaultSchedule,
    spec: &ScheduleSpec,
    name: &str,
) -> Result<(), AgentError> {
    let mut nf = NetworkFault::new(name, NetworkFaultSpec::from_fault_spec(&spec.template));
    let mut labels = spec.template.labels.clone();
    labels.insert(SCHEDULE_LABEL.into(), s.name_any());
    nf.metadata.labels = Some(labels);
    let owner = s
        .controller_owner_ref(&())
        .ok_or_else(|| AgentError::Internal(anyhow::anyhow!("schedule {} has no uid", key(s))))?;
    nf.metadata.owner_references = Some(vec![owner]);
    let by = crate::audit::Actor::internal(format!("NetworkFaultSchedule {}", key(s)));
    ctx.backend
        .create_object(&spec.template, nf, Some(&by))
        .await?;
    Ok(())
}

/// Deletes the ended faults beyond `limit` (oldest end first); returns those kept.
async fn trim_history(
    ctx: &Context,
    mut ended: Vec<NetworkFault>,
    limit: usize,
) -> Vec<NetworkFault> {
    let excess = ended.len().saturating_sub(limit);
    for f in ended.drain(..excess) {
        delete(&ctx.client, &f, "beyond the schedule's historyLimit").await;
    }
    ended
}

/// Deletes the faults labelled with a schedule whose owner (by uid) is not in `uids`.
async fn delete_orphans(ctx: &Context, uids: &BTreeSet<String>) {
    let orphans: Vec<NetworkFault> = ctx
        .backend
        .faults
        .state()
        .iter()
        .filter(|f| f.labels().contains_key(SCHEDULE_LABEL))
        .filter(|f| {
            let owners = f.owner_references();
            owners.iter().any(|o| o.kind == "NetworkFaultSchedule")
                && !owners.iter().any(|o| uids.contains(&o.uid))
        })
        .filter(|f| f.metadata.deletion_timestamp.is_none())
        .map(|f| (**f).clone())
        .collect();
    for f in &orphans {
        delete(&ctx.client, f, "its schedule was deleted").await;
    }
}

async fn delete(client: &Client, f: &NetworkFault, why: &str) {
    let ns = f.metadata.namespace.clone().unwrap_or_default();
    let api: Api<NetworkFault> = Api::namespaced(client.clone(), &ns);
    match api.delete(&f.name_any(), &DeleteParams::default()).await {
        Ok(_) => tracing::info!(fault = %f.key(), "deleted: {why}"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            tracing::warn!(fault = %f.key(), error = %e, "deleting failed ({why}); the next pass retries")
        }
    }
}

/// Writes the controller's part of a schedule's status (server-side apply).
async fn write_status(
    client: &Client,
    s: &NetworkFaultSchedule,
    st: &NetworkFaultScheduleStatus,
) -> Result<(), kube::Error> {
    let api: Api<NetworkFaultSchedule> = Api::namespaced(client.clone(), &s.namespace());
    let patch = serde_json::json!({
        "apiVersion": "faultline.dev/v1alpha1",
        "kind": "NetworkFaultSchedule",
        "status": st,
    });
    api.patch_status(
        &s.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
