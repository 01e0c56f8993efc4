//! The static bearer token of the API (`--token-file`): reading it, comparing it, and the
//! JSON refusals. The checks themselves are in [`super::access`]. Health endpoints stay open
//! (probes). 401: no token sent; 403: a token that is not the configured one (in cluster mode,
//! 401 for a token the Kubernetes API does not authenticate either). Bodies say which.
use std::sync::Arc;

use axum::{
    Json,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use fault_api::{ApiError, ErrorBody};

/// A JSON error answer; a 401 also asks for a bearer token (`WWW-Authenticate`).
pub(crate) fn deny(status: StatusCode, code: &str, message: &str) -> Response {
    let mut res = (
        status,
        Json(ErrorBody {
            error: ApiError::new(code, message),
        }),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    res
}

/// Compares without stopping at the first difference (no timing hint of the prefix).
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a token file: its first line, trimmed; empty is an error.
pub fn read_token(path: &std::path::Path) -> anyhow::Result<Arc<str>> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let t = text.lines().next().unwrap_or("").trim();
    anyhow::ensure!(!t.is_empty(), "token file {} is empty", path.display());
    Ok(Arc::from(t))
}
