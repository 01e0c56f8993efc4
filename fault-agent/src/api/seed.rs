//! The seed-compatible Fault Injection API (`/api/v1`), the one users' pytest suites speak.
//! Requests are translated by [`fault_api::seed`] into the native model and go through the
//! same core path.
use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    routing::{get, post},
};
use bytes::Bytes;
use fault_api::{
    FieldError,
    seed::{CleanupResult, InjectRequest, SeedFault, SeedFaultList},
    spec::check_namespace,
};
use serde::Deserialize;

use super::{AppState, backend::body_error};
use crate::error::AgentError;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/faults", get(list))
        .route("/api/v1/faults/network/inject", post(inject))
        .route("/api/v1/faults/network/cleanup", post(cleanup))
        .route("/api/v1/faults/{fault_id}", get(get_one))
        .route("/api/v1/faults/{fault_id}/recover", post(recover))
}

async fn inject(
    State(s): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<SeedFault>, AgentError> {
    let req = InjectRequest::from_json(&body).map_err(body_error)?;
    let spec = req.to_spec().map_err(AgentError::Invalid)?;
    let fault = s.backend.create(spec).await.map_err(rename_fields)?;
    s.changed.notify_one();
    Ok(Json(fault.into()))
}

/// Errors of the shared path name native fields; say the seed's names instead.
fn rename_fields(e: AgentError) -> AgentError {
    let seed_name = |f: &str| -> String {
        match f {
            "loss_percent" => "parameters.packet_loss_percent".into(),
            "delay" => "parameters.delay_ms".into(),
            "jitter" => "parameters.delay_jitter_ms".into(),
            "rate" => "parameters.bandwidth_limit".into(),
            "duplicate_percent" | "corrupt_percent" => format!("parameters.{f}"),
            other => other.into(),
        }
    };
    match e {
        AgentError::Invalid(f) => {
            AgentError::Invalid(FieldError::new(seed_name(&f.field), f.message))
        }
        AgentError::Unsupported(f) => {
            AgentError::Unsupported(FieldError::new(seed_name(&f.field), f.message))
        }
        other => other,
    }
}

async fn list(State(s): State<Arc<AppState>>) -> Result<Json<SeedFaultList>, AgentError> {
    let faults: Vec<SeedFault> = s
        .backend
        .list(None)
        .await?
        .into_iter()
        .map(SeedFault::from)
        .collect();
    Ok(Json(SeedFaultList {
        count: faults.len(),
        faults,
    }))
}

async fn get_one(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<SeedFault>, AgentError> {
    Ok(Json(s.backend.get(id).await?.into()))
}

async fn recover(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<SeedFault>, AgentError> {
    let f = s.backend.recover(id).await?;
    s.changed.notify_one();
    Ok(Json(f.into()))
}

#[derive(Deserialize)]
struct CleanupQuery {
    namespace: Option<String>,
}

async fn cleanup(
    State(s): State<Arc<AppState>>,
    Query(q): Query<CleanupQuery>,
) -> Result<Json<CleanupResult>, AgentError> {
    let ns = q
        .namespace
        .ok_or_else(|| AgentError::Invalid(FieldError::new("namespace", "give ?namespace=NS")))?;
    check_namespace("namespace", &ns).map_err(AgentError::Invalid)?;
    let fault_ids = s.backend.cleanup(Some(ns.clone())).await?;
    s.changed.notify_one();
    Ok(Json(CleanupResult {
        namespace: ns,
        cleaned: fault_ids.len(),
        fault_ids,
    }))
}
