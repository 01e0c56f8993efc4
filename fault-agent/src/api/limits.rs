//! Limits of the HTTP API, so that no client (or a hundred) can make the agent stall, swell or
//! queue without bound. Each refusal is the API's JSON error body with a documented status,
//! and each comes **before** the handler runs, so a refused request changed nothing:
//!
//! | limit | flag (default) | status, `error.code` |
//! | --- | --- | --- |
//! | request body size | `--max-body-bytes` (1 MiB) | 413 `too_large` |
//! | requests per second, all clients together (token bucket) | `--rate-limit` (500/s), `--rate-burst` (1000) | 429 `rate_limited`, `Retry-After` |
//! | requests being served at once | `--max-concurrent-requests` (512) | 503 `overloaded`, `Retry-After` |
//! | time to answer | `--request-timeout` (30 s) | 504 `timeout` |
//!
//! Health endpoints (`/healthz`, `/readyz`, `/health`) are outside every limit: probes must
//! answer under load. A request that times out while the core was writing is finished in the
//! background (the write is not cut halfway): list the faults to see the outcome.
use std::{convert::Infallible, num::NonZeroU32, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    error_handling::HandleErrorLayer,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use fault_api::{ApiError, ErrorBody};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock as _};
use tower::ServiceBuilder;

/// The API's limits (see the module docs). `rate_per_sec` 0 turns the rate limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    pub max_body_bytes: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub max_concurrent: usize,
    pub request_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            rate_per_sec: 500,
            rate_burst: 1000,
            max_concurrent: 512,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The JSON error response of a limit.
fn refuse(status: StatusCode, code: &str, message: String, retry_after: Option<u64>) -> Response {
    let mut res = (
        status,
        Json(ErrorBody {
            error: ApiError::new(code, message),
        }),
    )
        .into_response();
    if let Some(s) = retry_after
        && let Ok(v) = HeaderValue::from_str(&s.max(1).to_string())
    {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

/// Answers 429 when the token bucket is empty.
async fn rate_limit(
    State(limiter): State<Arc<DefaultDirectRateLimiter>>,
    req: Request,
    next: Next,
) -> Response {
    match limiter.check() {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more requests than the agent's --rate-limit allows; retry in {} ms",
                    wait.as_millis().max(1)
                ),
                Some(wait.as_secs_f64().ceil() as u64),
            )
        }
    }
}

/// axum's answer to a method a route does not have is empty; the API's errors are JSON (found
/// by fuzzing, `api`: `PUT /v1/faults`, then `GET`'s typo on `/healthz`). `Allow` is kept.
fn method_not_allowed(res: &Response) -> Response {
    let allow = res.headers().get(header::ALLOW).cloned();
    let mut out = refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        match allow.as_ref().and_then(|a| a.to_str().ok()) {
            Some(a) => format!("this path does not take this method; it takes {a}"),
            None => "this path does not take this method".to_owned(),
        },
        None,
    );
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}

/// The health and document routes' layer (they are outside the limits): a 405 gets the
/// API's JSON error body like every other route's.
pub async fn json_method_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    if res.status() == StatusCode::METHOD_NOT_ALLOWED {
        method_not_allowed(&res)
    } else {
        res
    }
}

/// Gives the plain-text answers of axum's and tower's layers (body too large, timeout) the
/// API's JSON error body, with the limit named.
async fn json_errors(State(limits): State<ApiLimits>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return res;
    }
    match res.status() {
        StatusCode::PAYLOAD_TOO_LARGE => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the request body is larger than the agent's --max-body-bytes ({} bytes)",
                limits.max_body_bytes
            ),
            None,
        ),
        StatusCode::GATEWAY_TIMEOUT => refuse(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "no answer within the agent's --request-timeout ({}); a write that had begun is finished in the background: list the faults to see it",
                humantime::format_duration(limits.request_timeout)
            ),
            None,
        ),
        StatusCode::METHOD_NOT_ALLOWED => method_not_allowed(&res),
        // axum's extractors refuse in plain text (`Failed to deserialize query string:
        // duplicate field`, found by fuzzing, `api`); the API's 400 and 422 are JSON naming
        // the field: `query` or `body`.
        s @ (StatusCode::BAD_REQUEST
        | StatusCode::UNPROCESSABLE_ENTITY
        | StatusCode::UNSUPPORTED_MEDIA_TYPE) => {
            let text = match axum::body::to_bytes(res.into_body(), 64 << 10).await {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => e.to_string(),
            };
            let field = if text.contains("query string") {
                "query"
            } else {
                "body"
            };
            let mut error = ApiError::new("invalid_field", text);
            error.field = Some(field.to_owned());
            (s, Json(ErrorBody { error })).into_response()
        }
        _ => res,
    }
}

/// What the load-shedding layer says when `max_concurrent` requests are in flight.
async fn overloaded(limits: ApiLimits, e: tower::BoxError) -> Result<Response, Infallible> {
    if e.is::<tower::load_shed::error::Overloaded>() {
        return Ok(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "{} requests are being served (the agent's --max-concurrent-requests); retry shortly",
                limits.max_concurrent
            ),
            Some(1),
        ));
    }
    Ok(refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("request failed: {e}"),
        None,
    ))
}

/// Puts the limits around `api` (every route but health).
pub fn apply<S: Clone + Send + Sync + 'static>(api: Router<S>, limits: ApiLimits) -> Router<S> {
    // The announced length is refused before the body is read (tower-http); a body without
    // one is cut where it passes the limit (axum's extractor).
    let api = api
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            limits.max_body_bytes,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            limits.request_timeout,
        ))
        // One semaphore for every route (`Router::layer` wraps each route on its own).
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(move |e| overloaded(limits, e)))
                .load_shed()
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    limits.max_concurrent.max(1),
                )),
        );
    let api = match (
        NonZeroU32::new(limits.rate_per_sec),
        NonZeroU32::new(limits.rate_burst.max(1)),
    ) {
        (Some(rate), Some(burst)) => {
            let limiter = Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ));
            api.layer(middleware::from_fn_with_state(limiter, rate_limit))
        }
        _ => api,
    };
    api.layer(middleware::from_fn_with_state(limits, json_errors))
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::HeaderMap, routing::get};
    use tower::ServiceExt as _;

    use super::*;

    /// Sends `method uri` (no body) through `router`; the answer's status, headers and JSON
    /// error body.
    fn send(router: Router, method: &str, uri: &str) -> (StatusCode, HeaderMap, ErrorBody) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let res = rt.block_on(router.oneshot(req)).unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let body = rt
            .block_on(axum::body::to_bytes(res.into_body(), 1 << 16))
            .unwrap();
        (status, headers, serde_json::from_slice(&body).unwrap())
    }

    /// Found by fuzzing (`api`): `PUT /v1/faults` was answered 405 with an empty body, not
    /// the API's JSON error.
    #[test]
    fn a_method_a_route_lacks_is_a_json_error_with_allow() {
        let api = apply(
            Router::new().route("/v1/faults", get(|| async { "[]" })),
            ApiLimits::default(),
        );
        let (status, headers, e) = send(api, "PUT", "/v1/faults");
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let allow = headers.get(header::ALLOW).unwrap().to_str().unwrap();
        assert!(allow.contains("GET"), "{allow}");
        assert_eq!(e.error.code, "method_not_allowed");
    }

    /// Found by fuzzing (`api`): an unknown method on a health path (`GfaultsET /healthz`),
    /// outside the limits' layers, was answered 405 with an empty body.
    #[test]
    fn a_method_a_health_route_lacks_is_a_json_error_too() {
        let health = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .layer(middleware::from_fn(json_method_errors));
        let (status, headers, e) = send(health, "GfaultsET", "/healthz");
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(headers.get(header::ALLOW).is_some());
        assert_eq!(e.error.code, "method_not_allowed");
    }

    /// Found by fuzzing (`api`): `?namespace=a&namespace=b` was refused by axum's `Query`
    /// in plain text, not the API's JSON error naming the field.
    #[test]
    fn an_extractor_refusal_is_a_json_error_naming_the_query() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Q {
            namespace: String,
        }
        let api = apply(
            Router::new().route(
                "/c",
                axum::routing::post(|_: axum::extract::Query<Q>| async { "ok" }),
            ),
            ApiLimits::default(),
        );
        let (status, _, e) = send(api, "POST", "/c?namespace=a&namespace=b");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(e.error.field.as_deref(), Some("query"), "{e:?}");
        assert!(e.error.message.contains("duplicate field"), "{e:?}");
    }
}
