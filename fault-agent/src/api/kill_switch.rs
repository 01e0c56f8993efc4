//! `/v1/kill-switch`: engage (`POST`), lift (`DELETE`), read (`GET`) the switch that makes the
//! datapath pass all traffic (see `core::kill_switch`). Each change is logged under the
//! `audit` target with who, why and the caller's address.
use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{ConnectInfo, FromRequestParts, State},
    http::request::Parts,
    routing::get,
};
use bytes::Bytes;
use fault_api::{
    FieldError,
    kill_switch::{KillSwitch, KillSwitchRequest},
};

use super::AppState;
use crate::error::AgentError;

/// The routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/v1/kill-switch", get(read).post(engage).delete(lift))
}

/// The caller's address (`ip:port`), when the server records it.
pub struct Caller(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.to_string()),
        ))
    }
}

fn request(body: &Bytes) -> Result<KillSwitchRequest, AgentError> {
    let req: KillSwitchRequest = serde_json::from_slice(body)
        .map_err(|e| AgentError::Malformed(FieldError::new("body", e.to_string())))?;
    req.validate().map_err(AgentError::Invalid)?;
    Ok(req)
}

async fn read(State(s): State<Arc<AppState>>) -> Result<Json<KillSwitch>, AgentError> {
    Ok(Json(s.backend.kill_switch().await?))
}

async fn engage(
    State(s): State<Arc<AppState>>,
    Caller(from): Caller,
    body: Bytes,
) -> Result<Json<KillSwitch>, AgentError> {
    let req = request(&body)?;
    Ok(Json(s.backend.set_kill_switch(true, req, from).await?))
}

async fn lift(
    State(s): State<Arc<AppState>>,
    Caller(from): Caller,
    body: Bytes,
) -> Result<Json<KillSwitch>, AgentError> {
    let req = request(&body)?;
    let ks = s.backend.set_kill_switch(false, req, from).await?;
    // Faults act again: the expiry timer re-arms on what is live.
    s.changed.notify_one();
    Ok(Json(ks))
}
