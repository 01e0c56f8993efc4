//! The native API (`/v1`): faults as [`fault_api::FaultSpec`] and [`fault_api::Fault`].
use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use fault_api::{
    FaultList, FaultSpec, FieldError,
    fault::{CleanupRequest, CleanupResponse},
    spec::check_namespace,
};
use serde::{Deserialize, Serialize};

use super::{AppState, backend::body_error};
use crate::{error::AgentError, pods::Pod};

/// The router of the native API.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/faults", get(list).post(create))
        .route("/v1/faults/cleanup", post(cleanup))
        .route("/v1/faults/{id}", get(get_one).delete(recover))
        .route("/v1/faults/{id}/recover", post(recover))
        .route("/v1/faults/{id}/verify", post(verify))
        .route("/v1/pods", get(pods))
        .route("/v1/capabilities", get(capabilities))
        .route("/v1/tables", get(tables))
        .route("/v1/tables/check", get(tables_check))
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

async fn list(
    State(s): State<Arc<AppState>>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Json<FaultList>, AgentError> {
    Ok(Json(FaultList {
        faults: s.backend.list(q.namespace).await?,
    }))
}

/// A boolean query parameter `name` of `POST /v1/faults` (`true`/`1`, `false`/`0`; absent is
/// false): `verify` probes the fault once applied, `dryRun` answers the plan
/// ([`fault_api::FaultPlan`], 200) and applies nothing. Errors: 422 naming `name` and the
/// accepted values.
fn bool_param(query: Option<&str>, name: &str) -> Result<bool, AgentError> {
    let prefix = format!("{name}=");
    let Some(value) = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix(prefix.as_str()))
    else {
        return Ok(false);
    };
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(AgentError::Invalid(FieldError::new(
            name,
            format!("must be true or false, got {other:?}"),
        ))),
    }
}

async fn create(
    State(s): State<Arc<AppState>>,
    by: crate::audit::Actor,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, AgentError> {
    let verify = bool_param(query.as_deref(), "verify")?;
    let dry_run = bool_param(query.as_deref(), "dryRun")?;
    let spec = FaultSpec::from_json(&body).map_err(body_error)?;
    if dry_run {
        return Ok(Json(s.backend.plan(spec).await?).into_response());
    }
    let mut fault = s.backend.create_by(spec, Some(by)).await?;
    s.changed.notify_one();
    if verify {
        // The fault is in; a verify that cannot run is a warning, not a failed create.
        match s.backend.verify(fault.id.clone()).await {
            Ok(v) => fault.verification = Some(v),
            Err(e) => fault.warnings.push(format!("verify: {e}")),
        }
    }
    Ok((StatusCode::CREATED, Json(fault)).into_response())
}

/// `POST /v1/faults/{id}/verify`: [`fault_api::Verification`].
async fn verify(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<fault_api::Verification>, AgentError> {
    Ok(Json(s.backend.verify(id).await?))
}

async fn get_one(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, AgentError> {
    let fault = s.backend.get(id).await?;
    Ok(Json(fault).into_response())
}

async fn recover(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, AgentError> {
    let fault = s.backend.recover(id).await?;
    s.changed.notify_one();
    Ok(Json(fault).into_response())
}

async fn cleanup(
    State(s): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<CleanupResponse>, AgentError> {
    let req: CleanupRequest = serde_json::from_slice(&body)
        .map_err(|e| AgentError::Malformed(FieldError::new("body", e.to_string())))?;
    match (&req.namespace, req.all) {
        (Some(ns), false) => check_namespace("namespace", ns).map_err(AgentError::Invalid)?,
        (None, true) => {}
        _ => {
            return Err(AgentError::Invalid(FieldError::new(
                "namespace",
                "give exactly one of namespace or all=true",
            )));
        }
    }
    let recovered = s.backend.cleanup(req.namespace).await?;
    s.changed.notify_one();
    Ok(Json(CleanupResponse { recovered }))
}

/// `GET /v1/pods`.
#[derive(Serialize)]
struct PodsView {
    pods: Vec<Pod>,
    attach_errors: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inventory_error: Option<String>,
}

async fn pods(State(s): State<Arc<AppState>>) -> Result<Json<PodsView>, AgentError> {
    let inventory_error = s
        .inventory_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (pods, attach_errors) = s.backend.pods().await?;
    Ok(Json(PodsView {
        pods,
        attach_errors,
        inventory_error,
    }))
}

/// `GET /v1/capabilities`: the kernel probe and the loaded programs with their run-time stats.
#[derive(Serialize)]
struct CapabilitiesView {
    #[serde(flatten)]
    caps: crate::dataplane::Capabilities,
    programs: Vec<ProgramView>,
}

#[derive(Serialize)]
struct ProgramView {
    name: String,
    id: u32,
    /// Total run time in ns (counted while `kernel.bpf_stats_enabled=1`).
    run_time_ns: u64,
    run_count: u64,
}

async fn capabilities(
    State(s): State<Arc<AppState>>,
) -> Result<Json<CapabilitiesView>, AgentError> {
    s.backend
        .with_core(|c| {
            let programs = c
                .dataplane()
                .program_infos()
                .into_iter()
                .map(|(name, info)| ProgramView {
                    name,
                    id: info.id(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                    run_count: info.run_count(),
                })
                .collect();
            Ok(Json(CapabilitiesView {
                caps: c.capabilities().clone(),
                programs,
            }))
        })
        .await
}

/// `GET /v1/tables/check`: the kernel maps read back against what the faults make now
/// ([`crate::core::TablesCheck`]).
async fn tables_check(
    State(s): State<Arc<AppState>>,
) -> Result<Json<crate::core::TablesCheck>, AgentError> {
    s.backend
        .with_core(|c| c.check_tables().map(Json).map_err(AgentError::Internal))
        .await
}

/// `GET /v1/tables`: how many entries the kernel maps hold ([`crate::dataplane::TableSizes`]).
async fn tables(
    State(s): State<Arc<AppState>>,
) -> Result<Json<crate::dataplane::TableSizes>, AgentError> {
    s.backend.with_core(|c| Ok(Json(c.table_sizes()))).await
}

#[cfg(test)]
mod tests {
    use super::bool_param;

    #[test]
    fn the_verify_parameter_takes_booleans_only() {
        assert!(!bool_param(None, "verify").unwrap());
        assert!(!bool_param(Some("namespace=a"), "verify").unwrap());
        assert!(bool_param(Some("verify=true"), "verify").unwrap());
        assert!(bool_param(Some("a=b&verify=1"), "verify").unwrap());
        assert!(!bool_param(Some("verify=false"), "verify").unwrap());
        let e = bool_param(Some("verify=yes"), "verify").unwrap_err();
        assert_eq!(e.to_api().field.as_deref(), Some("verify"));
    }
}
