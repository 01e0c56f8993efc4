//! `GET /metrics`: the agent's Prometheus metrics ([`crate::metrics`]), OpenMetrics text.
//! Behind the token and the request limits like the rest of the API (Prometheus sends the
//! token with `authorization: {credentials_file: ...}` in its scrape config).
use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};

use super::AppState;
use crate::error::AgentError;

/// The route.
pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let m = s.metrics.clone();
    // A local scrape reads the kernel's counters under the core's lock: not on the runtime.
    match tokio::task::spawn_blocking(move || m.encode()).await {
        Ok(Ok(text)) => {
            ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
        }
        Ok(Err(e)) => {
            AgentError::Internal(anyhow::anyhow!("encoding metrics: {e}")).into_response()
        }
        Err(e) => AgentError::Internal(anyhow::anyhow!("metrics task: {e}")).into_response(),
    }
}
