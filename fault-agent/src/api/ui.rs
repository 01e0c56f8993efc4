//! The web dashboard at `/ui`: a static page, its ES modules and the vendored Chart.js, compiled
//! into the binary (`fault-agent/ui/`), so it works offline.
//!
//! The assets carry no data and are served without a token; everything the page shows comes
//! from the API (`/v1/...`), which the page calls with the bearer token the user types (kept in
//! the tab's `sessionStorage`), behind the same auth layer as every other client.
use axum::{
    Router,
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};

/// One embedded file: its path under `/ui/`, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../../ui/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("charts.js", JS),
    asset!("pairs.js", JS),
    asset!("spec.js", JS),
    asset!("vendor/chart.min.js", JS),
];

/// Scripts and styles only from the agent itself; no inline script; API calls to the same origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn serve(asset: &Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        asset.body,
    )
        .into_response()
}

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

async fn index() -> Response {
    find("index.html").map_or_else(|| StatusCode::NOT_FOUND.into_response(), serve)
}

async fn file(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    match find(&path) {
        Some(a) => serve(a),
        None => (StatusCode::NOT_FOUND, "no such file in the dashboard").into_response(),
    }
}

/// `/ui` (redirects to `/ui/`), `/ui/` (the page) and `/ui/{file}` (its assets; 404 otherwise).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_loads_is_embedded() {
        let page = std::str::from_utf8(find("index.html").expect("index").body).expect("utf-8");
        for src in ["/ui/style.css", "/ui/vendor/chart.min.js", "/ui/app.js"] {
            assert!(page.contains(src), "{src}");
            assert!(find(&src["/ui/".len()..]).is_some(), "{src}");
        }
        let app = std::str::from_utf8(find("app.js").expect("app").body).expect("utf-8");
        for module in ["./api.js", "./charts.js", "./pairs.js", "./spec.js"] {
            assert!(app.contains(module), "{module}");
            assert!(find(&module[2..]).is_some(), "{module}");
        }
    }
}
