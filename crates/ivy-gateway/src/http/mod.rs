//! HTTP (SPEC 7): health, Prometheus metrics, the REST API, the server-sent-events live stream, login, and the
//! dashboard served from the binary.
//!
//! Every response carries security headers and a CSP without `unsafe-inline` or any external origin; every
//! request except `/health` counts against a per-IP rate limit; API errors are JSON `{error, code}`.

pub(crate) mod api;
pub(crate) mod assets;
pub(crate) mod csrf;
pub(crate) mod login;
pub(crate) mod ratelimit;
pub(crate) mod server;

pub(crate) mod state;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use state::{ApiError, HttpState};
use std::net::SocketAddr;

/// The content security policy of every response: same-origin only, no inline script or style, violations
/// reported to the gateway (counted in `/metrics`).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
    form-action 'self'; report-uri /api/csp-report";

/// The `Strict-Transport-Security` value sent when the gateway serves HTTPS (one year; no subdomains, the
/// gateway does not speak for other hosts).
pub const HSTS: &str = "max-age=31536000";

/// Request bodies larger than this are refused (commands and logins are small).
const MAX_BODY: usize = 64 * 1024;

/// Every route: (method, path). The OpenAPI document is checked against this list by a test.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/metrics"),
    ("post", "/api/login"),
    ("post", "/api/logout"),
    ("get", "/api/me"),
    ("get", "/api/info"),
    ("get", "/api/meters"),
    ("get", "/api/meters/{id}"),
    ("get", "/api/meters/{id}/readings"),
    ("post", "/api/meters/{id}/commands"),
    ("get", "/api/alarms"),
    ("post", "/api/alarms/{id}/ack"),
    ("get", "/api/events"),
    ("get", "/api/stats"),
    ("get", "/api/stream"),
    ("get", "/api/openapi.json"),
    ("post", "/api/csp-report"),
];

/// The router.
pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .route("/api/login", post(api::login))
        .route("/api/logout", post(api::logout))
        .route("/api/me", get(api::me))
        .route("/api/info", get(api::info))
        .route("/api/meters", get(api::meters))
        .route("/api/meters/{id}", get(api::meter))
        .route("/api/meters/{id}/readings", get(api::readings))
        .route("/api/meters/{id}/commands", post(api::command))
        .route("/api/alarms", get(api::alarms))
        .route("/api/alarms/{id}/ack", post(api::acknowledge))
        .route("/api/events", get(api::events))
        .route("/api/stats", get(api::stats))
        .route("/api/stream", get(api::stream))
        .route("/api/openapi.json", get(assets::openapi))
        .route("/api/csp-report", post(api::csp_report))
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::asset))
        .route("/favicon.ico", get(assets::favicon))
        .fallback(api::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), csrf::refuse_cross_site))
        .layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_and_secure))
        .with_state(state)
}

async fn rate_limit(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let ip = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if let Some(ip) = ip
        && let Err(retry) = state.limiter.check(ip, std::time::Instant::now())
    {
        state.metrics.http_rate_limited.inc();
        let secs = retry.as_secs().max(1);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry in {secs} s"),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    next.run(request).await
}

async fn count_and_secure(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let is_api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    state.metrics.http_request(response.status().as_u16());
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    h.insert("permissions-policy", HeaderValue::from_static("camera=(), microphone=(), geolocation=()"));
    if state.config.http.tls().is_some() {
        // Served over HTTPS: browsers must not fall back to plain HTTP for this host for a year.
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    }
    if is_api && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
