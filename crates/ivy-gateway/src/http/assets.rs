//! The dashboard and the OpenAPI document, compiled into the binary (no CDN, works offline).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An embedded file: name under `/assets/`, content type, bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/app.js"),
    },
    Asset { name: "app.css", content_type: "text/css; charset=utf-8", bytes: include_bytes!("../../assets/app.css") },
    Asset { name: "favicon.svg", content_type: "image/svg+xml", bytes: include_bytes!("../../assets/favicon.svg") },
];

const INDEX: &[u8] = include_bytes!("../../assets/index.html");
const OPENAPI: &[u8] = include_bytes!("../../assets/openapi.json");

fn respond(content_type: &'static str, bytes: &'static [u8]) -> Response {
    let mut r = bytes.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change with the binary; revalidating is cheap and avoids a stale dashboard after an upgrade.
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /`: the dashboard page.
pub(crate) async fn index() -> Response {
    respond("text/html; charset=utf-8", INDEX)
}

/// `GET /assets/{file}`.
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => respond(a.content_type, a.bytes),
        None => super::state::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such asset").into_response(),
    }
}

/// `GET /favicon.ico` (browsers ask for it whatever the page says).
pub(crate) async fn favicon() -> Response {
    asset(Path("favicon.svg".to_owned())).await
}

/// `GET /api/openapi.json`: the OpenAPI 3.1 description of the API.
pub(crate) async fn openapi() -> Response {
    respond("application/json", OPENAPI)
}
