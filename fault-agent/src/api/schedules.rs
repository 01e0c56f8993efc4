//! `/v1/schedules`: recurring experiments ([`fault_api::schedule`]). On the single-host agent
//! the [`Scheduler`] comes as a request extension (`fault-agent standalone` adds it); on the
//! cluster API they are `NetworkFaultSchedule` objects ([`crate::kube::schedules_api`]); a
//! node agent answers 501.
use std::sync::Arc;

use axum::{
    Extension, Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use fault_api::{
    ApiError, ErrorBody,
    schedule::{Schedule, ScheduleList, ScheduleSpec},
};

use super::{
    AppState,
    backend::{Backend, body_error},
};
use crate::{
    error::AgentError,
    kube::{backend::KubeBackend, schedules_api as kube_schedules},
    schedule::{ScheduleError, Scheduler},
};

/// The routes of `/v1/schedules`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/schedules", get(list).post(create))
        .route("/v1/schedules/{name}", get(get_one).delete(delete))
        .route("/v1/schedules/{name}/suspend", post(suspend))
        .route("/v1/schedules/{name}/resume", post(resume))
}

type Sched = Option<Extension<Arc<Scheduler>>>;

impl IntoResponse for ScheduleError {
    fn into_response(self) -> Response {
        match self {
            ScheduleError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                Json(ErrorBody {
                    error: ApiError::new("not_found", self.to_string()),
                }),
            )
                .into_response(),
            ScheduleError::Agent(e) => e.into_response(),
        }
    }
}

/// Where the schedules are: the standalone agent's scheduler, or `NetworkFaultSchedule`
/// objects on the cluster API.
enum Schedules {
    Local(Arc<Scheduler>),
    Cluster(Arc<KubeBackend>),
}

fn schedules(st: &AppState, s: Sched) -> Result<Schedules, ScheduleError> {
    if let Some(Extension(s)) = s {
        return Ok(Schedules::Local(s));
    }
    match &st.backend {
        Backend::Cluster(b) => Ok(Schedules::Cluster(b.clone())),
        _ => Err(AgentError::NotHere(
            "schedules run on the standalone agent (`fault-agent standalone`) and the cluster API (`fault-agent api`), not on a node agent".into(),
        )
        .into()),
    }
}

type St = State<Arc<AppState>>;

async fn create(State(st): St, s: Sched, body: Bytes) -> Result<Response, ScheduleError> {
    let where_ = schedules(&st, s)?;
    let spec = ScheduleSpec::from_json(&body).map_err(body_error)?;
    let created = match where_ {
        Schedules::Local(s) => s.create(spec).await?,
        Schedules::Cluster(b) => kube_schedules::create(&b, spec).await?,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list(State(st): St, s: Sched) -> Result<Json<ScheduleList>, ScheduleError> {
    let schedules = match schedules(&st, s)? {
        Schedules::Local(s) => s.list().await?,
        Schedules::Cluster(b) => kube_schedules::list(&b).await?,
    };
    Ok(Json(ScheduleList { schedules }))
}

async fn get_one(
    State(st): St,
    s: Sched,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ScheduleError> {
    Ok(Json(match schedules(&st, s)? {
        Schedules::Local(s) => s.get(&name).await?,
        Schedules::Cluster(b) => kube_schedules::get(&b, &name).await?,
    }))
}

async fn delete(
    State(st): St,
    s: Sched,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ScheduleError> {
    Ok(Json(match schedules(&st, s)? {
        Schedules::Local(s) => s.delete(&name).await?,
        Schedules::Cluster(b) => kube_schedules::delete(&b, &name).await?,
    }))
}

async fn set_suspend(
    st: &AppState,
    s: Sched,
    name: &str,
    suspend: bool,
) -> Result<Json<Schedule>, ScheduleError> {
    Ok(Json(match schedules(st, s)? {
        Schedules::Local(s) => s.set_suspend(name, suspend).await?,
        Schedules::Cluster(b) => kube_schedules::set_suspend(&b, name, suspend).await?,
    }))
}

async fn suspend(
    State(st): St,
    s: Sched,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ScheduleError> {
    set_suspend(&st, s, &name, true).await
}

async fn resume(
    State(st): St,
    s: Sched,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ScheduleError> {
    set_suspend(&st, s, &name, false).await
}

/// The OpenAPI paths of `/v1/schedules`; `limited` are the request limits' error responses
/// (merged into each), `error` the error body's schema.
pub fn openapi_paths(
    g: &mut schemars::SchemaGenerator,
    limited: &serde_json::Value,
    error: &serde_json::Value,
) -> serde_json::Value {
    use serde_json::json;

    use super::openapi::{body, ok, schema};
    let spec = schema::<ScheduleSpec>(g);
    let one = schema::<Schedule>(g);
    let list = schema::<ScheduleList>(g);
    let responses = |good: serde_json::Value, codes: &[(&str, &str)]| {
        let mut r = good;
        if let (Some(r), Some(l)) = (r.as_object_mut(), limited.as_object()) {
            r.extend(l.clone());
            for (c, d) in codes {
                r.insert(c.to_string(), ok(d, error.clone()));
            }
            r.insert(
                "501".into(),
                ok(
                    "A node agent (schedules are on the standalone agent and the cluster API)",
                    error.clone(),
                ),
            );
        }
        r
    };
    let name =
        json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let missing = [("404", "No such schedule")];
    json!({
        "/v1/schedules": {
            "get": {"summary": "List schedules with their live and remembered faults", "responses": responses(json!({"200": ok("Schedules", list)}), &[])},
            "post": {"summary": "Create a schedule: a fault from `template` at each fire time of `cron` in `time_zone` (like a CronJob); each fault is created as by POST /v1/faults (every guard applies) and tagged with the schedule's name",
                     "requestBody": body(spec),
                     "responses": responses(json!({"201": ok("Created, with its first next_schedule_time", one.clone())}), &[("400", "Malformed body (field `body`)"), ("422", "Invalid field (named in `error.field`: cron, time_zone, template.<field>, ...)"), ("409", "A schedule of that name exists")])}
        },
        "/v1/schedules/{name}": {
            "get": {"summary": "One schedule (on the cluster API `namespace/name`, or the name alone when unique)", "parameters": name.clone(), "responses": responses(json!({"200": ok("The schedule", one.clone())}), &missing)},
            "delete": {"summary": "Delete a schedule: no new faults; its live faults are recovered before this answers", "parameters": name.clone(),
                       "responses": responses(json!({"200": ok("The schedule as it was last (`active`: the faults recovered)", one.clone())}), &missing)}
        },
        "/v1/schedules/{name}/suspend": {
            "post": {"summary": "Suspend a schedule (live faults run on)", "parameters": name.clone(), "responses": responses(json!({"200": ok("The schedule", one.clone())}), &missing)}
        },
        "/v1/schedules/{name}/resume": {
            "post": {"summary": "Resume a schedule (the latest fire time missed meanwhile is made up once, within starting_deadline if set)", "parameters": name, "responses": responses(json!({"200": ok("The schedule", one)}), &missing)}
        }
    })
}
