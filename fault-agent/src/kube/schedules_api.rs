//! `/v1/schedules` on the cluster API: the native schedule calls backed by
//! `NetworkFaultSchedule` objects ([`super::schedule_crd`]). A schedule lives in its
//! template's namespace; its id is `namespace/name`, or its name alone when only one namespace
//! has a schedule of that name (as for faults). Firing is the controller's
//! ([`super::schedules`]).
use fault_api::schedule::{Schedule, ScheduleSpec};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};

use super::{
    backend::{KubeBackend, kube_error, state_of},
    schedule_crd::{NetworkFaultSchedule, SCHEDULE_LABEL},
};
use crate::{error::AgentError, schedule::ScheduleError};

/// `POST /v1/schedules`: 422 naming the field if invalid, 409 if the name is taken in the
/// template's namespace. The first fire time is the first after the object's creation.
pub async fn create(b: &KubeBackend, spec: ScheduleSpec) -> Result<Schedule, ScheduleError> {
    spec.validate().map_err(AgentError::Invalid)?;
    let o = NetworkFaultSchedule::from_schedule_spec(&spec);
    let api: Api<NetworkFaultSchedule> = Api::namespaced(b.client.clone(), &o.namespace());
    let created = api
        .create(&PostParams::default(), &o)
        .await
        .map_err(kube_error)?;
    let mut view = created.view();
    let cron = spec.cron_schedule().map_err(AgentError::Invalid)?;
    view.status.next_schedule_time = (!spec.suspend)
        .then(|| cron.next_after(jiff::Timestamp::now()))
        .flatten();
    Ok(view)
}

/// `GET /v1/schedules`: every schedule the API can read, by namespace and name.
pub async fn list(b: &KubeBackend) -> Result<Vec<Schedule>, ScheduleError> {
    let api: Api<NetworkFaultSchedule> = Api::all(b.client.clone());
    let items = api
        .list(&ListParams::default())
        .await
        .map_err(kube_error)?
        .items;
    Ok(items.iter().map(NetworkFaultSchedule::view).collect())
}

/// The object `id` names (`namespace/name` or a name alone): 404 if none, 409 if a name
/// alone is used in several namespaces.
pub async fn fetch(b: &KubeBackend, id: &str) -> Result<NetworkFaultSchedule, ScheduleError> {
    let (ns, name) = match id.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, id),
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
    };
    if !valid(name) || !ns.is_none_or(valid) {
        return Err(ScheduleError::NotFound(id.to_owned()));
    }
    let mut fields = format!("metadata.name={name}");
    if let Some(ns) = ns {
        fields.push_str(&format!(",metadata.namespace={ns}"));
    }
    let api: Api<NetworkFaultSchedule> = Api::all(b.client.clone());
    let mut items = api
        .list(&ListParams::default().fields(&fields))
        .await
        .map_err(kube_error)?
        .items;
    match items.len() {
        0 => Err(ScheduleError::NotFound(id.to_owned())),
        1 => Ok(items.remove(0)),
        n => {
            let namespaces: Vec<String> = items.iter().map(|s| s.namespace()).collect();
            Err(AgentError::Conflict(format!(
                "{n} NetworkFaultSchedules are named {id} (in namespaces {}): name one as namespace/name ({}%2F{id} in a URL path)",
                namespaces.join(", "),
                namespaces[0],
            ))
            .into())
        }
    }
}

/// `GET /v1/schedules/{id}`.
pub async fn get(b: &KubeBackend, id: &str) -> Result<Schedule, ScheduleError> {
    Ok(fetch(b, id).await?.view())
}

/// `DELETE /v1/schedules/{id}`: its live faults are recovered (waiting as
/// `POST /v1/faults/{id}/recover` does), then the object is deleted (its faults go with it:
/// ownerReferences). Returns the schedule as it was last.
pub async fn delete(b: &KubeBackend, id: &str) -> Result<Schedule, ScheduleError> {
    let o = fetch(b, id).await?;
    let ns = o.namespace();
    let live: Vec<String> = b
        .faults
        .state()
        .iter()
        .filter(|f| f.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|f| f.labels().get(SCHEDULE_LABEL) == o.metadata.name.as_ref())
        .filter(|f| state_of(f).is_live())
        .map(|f| f.key())
        .collect();
    for key in &live {
        b.recover(key).await?;
    }
    let api: Api<NetworkFaultSchedule> = Api::namespaced(b.client.clone(), &ns);
    api.delete(&o.name_any(), &DeleteParams::background())
        .await
        .map_err(kube_error)?;
    Ok(o.view())
}

/// `POST /v1/schedules/{id}/suspend` and `/resume`: sets `spec.suspend`.
pub async fn set_suspend(
    b: &KubeBackend,
    id: &str,
    suspend: bool,
) -> Result<Schedule, ScheduleError> {
    let o = fetch(b, id).await?;
    let api: Api<NetworkFaultSchedule> = Api::namespaced(b.client.clone(), &o.namespace());
    let patch = serde_json::json!({"spec": {"suspend": suspend}});
    let o = api
        .patch(
            &o.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(kube_error)?;
    Ok(o.view())
}
