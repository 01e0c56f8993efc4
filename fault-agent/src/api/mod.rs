//! The agent's HTTP API, served by axum: the native API ([`native`], `/v1`), the seed-compatible
//! Fault Injection API ([`seed`], `/api/v1`), health, bearer-token auth ([`auth`]), who may do
//! what and the audit of each change ([`access`]) and the web
//! dashboard's static files ([`ui`], `/ui`, outside auth: the page calls the API with the token).
//! Handlers are thin: parse, call the core on a blocking thread, map the result. Every error is
//! a JSON [`fault_api::ErrorBody`].
pub mod access;
pub mod auth;
pub mod backend;
pub mod health;
pub mod kill_switch;
pub mod limits;
pub mod metrics;
pub mod native;
pub mod openapi;
pub mod schedules;
pub mod seed;
pub mod serve;
pub mod tls;
pub mod ui;

use std::sync::{Arc, Mutex, MutexGuard};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use fault_api::ErrorBody;
use tokio::sync::Notify;

use crate::{core::Core, error::AgentError};

/// What the handlers share.
pub struct AppState {
    pub backend: backend::Backend,
    /// Woken when faults change, so the expiry timer re-arms.
    pub changed: Arc<Notify>,
    /// Readiness and liveness, from the syncs.
    pub health: health::Health,
    /// Why the last inventory reload failed, if it did.
    pub inventory_error: Mutex<Option<String>>,
    /// What `/metrics` serves.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Locks the core; a panic while it was held does not make it unusable.
pub fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (
            status,
            Json(ErrorBody {
                error: self.to_api(),
            }),
        )
            .into_response()
    }
}

/// The whole API: health, native, seed, metrics, behind the access guard ([`access`]: the
/// token when one is configured, and the audit) and the request limits ([`limits`]; health
/// endpoints and the dashboard's static files are outside both).
pub fn router(
    state: Arc<AppState>,
    token: Option<Arc<str>>,
    api_limits: limits::ApiLimits,
) -> Router {
    router_reviewed(state, token, None, api_limits)
}

/// [`router`], with Kubernetes tokens and permissions checked by `reviewer` (cluster mode).
pub fn router_reviewed(
    state: Arc<AppState>,
    token: Option<Arc<str>>,
    reviewer: Option<access::review::Reviewer>,
    api_limits: limits::ApiLimits,
) -> Router {
    let guard = Arc::new(access::Guard {
        token,
        reviewer,
        state: state.clone(),
    });
    let api = Router::new()
        .merge(native::router())
        .merge(schedules::router())
        .merge(seed::router())
        .merge(metrics::router())
        .merge(kill_switch::router())
        .fallback(|| async { AgentError::NotFound("(no such route)".into()) });
    let api = api.layer(axum::middleware::from_fn_with_state(guard, access::guard));
    let api = limits::apply(api, api_limits);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "healthy"})) }),
        )
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .merge(ui::router())
        .layer(axum::middleware::from_fn(limits::json_method_errors))
        .merge(api)
        .with_state(state)
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    match s.health.ready() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    match s.health.live() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}
