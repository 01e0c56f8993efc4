//! `/v1/schedules`: recurring experiments ([`fault_api::schedule`]) on the single-host agent.
//! The [`Scheduler`] comes as a request extension, which only `fault-agent standalone` adds;
//! elsewhere these routes answer 501.
use std::sync::Arc;

use axum::{
    Extension, Json, Router,
    extract::Path,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use fault_api::{
    ApiError, ErrorBody,
    schedule::{Schedule, ScheduleList, ScheduleSpec},
};

use super::{AppState, backend::body_error};
use crate::{
    error::AgentError,
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

fn scheduler(s: Sched) -> Result<Arc<Scheduler>, ScheduleError> {
    s.map(|Extension(s)| s).ok_or_else(|| {
        AgentError::NotHere(
            "schedules run on the standalone agent (`fault-agent standalone`); in a cluster create NetworkFaultSchedule objects".into(),
        )
        .into()
    })
}

async fn create(s: Sched, body: Bytes) -> Result<Response, ScheduleError> {
    let sched = scheduler(s)?;
    let spec = ScheduleSpec::from_json(&body).map_err(body_error)?;
    let created = sched.create(spec).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list(s: Sched) -> Result<Json<ScheduleList>, ScheduleError> {
    Ok(Json(ScheduleList {
        schedules: scheduler(s)?.list().await?,
    }))
}

async fn get_one(s: Sched, Path(name): Path<String>) -> Result<Json<Schedule>, ScheduleError> {
    Ok(Json(scheduler(s)?.get(&name).await?))
}

async fn delete(s: Sched, Path(name): Path<String>) -> Result<Json<Schedule>, ScheduleError> {
    Ok(Json(scheduler(s)?.delete(&name).await?))
}

async fn suspend(s: Sched, Path(name): Path<String>) -> Result<Json<Schedule>, ScheduleError> {
    Ok(Json(scheduler(s)?.set_suspend(&name, true).await?))
}

async fn resume(s: Sched, Path(name): Path<String>) -> Result<Json<Schedule>, ScheduleError> {
    Ok(Json(scheduler(s)?.set_suspend(&name, false).await?))
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
                    "Not the standalone agent (in a cluster: NetworkFaultSchedule objects)",
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
            "get": {"summary": "One schedule", "parameters": name.clone(), "responses": responses(json!({"200": ok("The schedule", one.clone())}), &missing)},
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
