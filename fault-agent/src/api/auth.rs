//! Bearer-token auth for the API (`--token-file`). Health endpoints stay open (probes).
//! 401: no token sent; 403: a token that is not the configured one. Bodies say which.
use std::sync::Arc;

use axum::{
    Json,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use fault_api::{ApiError, ErrorBody};

fn deny(status: StatusCode, code: &str, message: &str) -> Response {
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
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: requires `Authorization: Bearer <token>`.
pub async fn require_token(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let sent = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match sent.and_then(|v| v.strip_prefix("Bearer ")) {
        None => deny(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this API needs a bearer token: send `Authorization: Bearer <token>`",
        ),
        Some(t) if same(t.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => deny(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the bearer token sent is not the one this agent accepts",
        ),
    }
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
