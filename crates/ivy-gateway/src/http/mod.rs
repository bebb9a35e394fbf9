//! HTTP (SPEC 7): health, Prometheus metrics, the REST API, the server-sent-events live stream, login, and the
//! dashboard served from the binary.
//!
//! Every response carries security headers and a CSP without `unsafe-inline` or any external origin; every
//! request except `/health` counts against a per-IP rate limit; API errors are JSON `{error, code}`.

pub mod api;
pub mod assets;
pub mod live;
pub mod ratelimit;
pub mod session;

use crate::auth::{Authenticator, Role};
use crate::gateway::Shared;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use session::{Caller, Sessions};
use std::net::SocketAddr;
use std::sync::Arc;

/// State of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// Gateway state.
    pub shared: Arc<Shared>,
    /// Broker counters (MQTT side of the health check and metrics).
    pub broker: Arc<crate::mqtt::BrokerCounters>,
    /// Users and passwords (the MQTT ones).
    pub auth: Arc<Authenticator>,
    /// Logged-in sessions.
    pub sessions: Arc<Sessions>,
    /// The alarm engine (list, acknowledge).
    pub alarms: crate::alarms::SharedAlarms,
    /// Where acknowledgements are persisted.
    pub acks_file: std::path::PathBuf,
    /// Latest readings, history, events, live stream.
    pub live: Arc<live::LiveStore>,
    /// The command path shared with MQTT.
    pub commands: crate::commands::router::CommandRouter,
    /// Per-IP request limit.
    pub limiter: Arc<ratelimit::RateLimiter>,
}

/// The content security policy of every response: same-origin only, no inline script or style, violations
/// reported to the gateway (counted in `/metrics`).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
    form-action 'self'; report-uri /api/csp-report";

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
pub fn router(state: HttpState) -> Router {
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
        .layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_and_secure))
        .with_state(state)
}

/// An API error: HTTP status, stable code, message; rendered as `{error, code}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    /// 401: no or bad credentials.
    pub fn unauthorized() -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "log in first (session cookie or HTTP Basic)")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message, "code": self.code}))).into_response()
    }
}

impl FromRequestParts<HttpState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, Self::Rejection> {
        if !state.auth.enabled() {
            return Ok(Caller { user: "anonymous".into(), role: Role::Admin });
        }
        if let Some(caller) = session::tokens(&parts.headers).find_map(|t| state.sessions.get(t)) {
            return Ok(caller);
        }
        if let Some((user, password)) =
            parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(session::basic_credentials)
            && let Some(role) = state.auth.verify(&user, &password).await
        {
            return Ok(Caller { user, role });
        }
        Err(ApiError::unauthorized())
    }
}

/// A caller allowed to change things (send commands, acknowledge alarms).
pub struct Operator(pub Caller);

impl FromRequestParts<HttpState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.role.can_command() {
            Ok(Operator(caller))
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("user '{}' is a viewer", caller.user)))
        }
    }
}

async fn rate_limit(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let ip = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if let Some(ip) = ip
        && let Err(retry) = state.limiter.check(ip, std::time::Instant::now())
    {
        state.shared.metrics.http_rate_limited.inc();
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
    state.shared.metrics.http_request(response.status().as_u16());
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    h.insert("permissions-policy", HeaderValue::from_static("camera=(), microphone=(), geolocation=()"));
    if is_api && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
