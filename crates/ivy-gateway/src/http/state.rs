//! What the HTTP handlers share: narrow handles on the gateway (registry, hub, counters, figures, the command
//! path, alarms, the live view), the API error type, and the caller extractors (session cookie or HTTP Basic).

use super::login::{self, Caller, Logins};
use super::ratelimit::RateLimiter;
use crate::alarms::SharedAlarms;
use crate::auth::{Authenticator, Role};
use crate::commands::router::CommandRouter;
use crate::config::Config;
use crate::hub::Hub;
use crate::live::LiveView;
use crate::meters::registry::Registry;
use crate::metrics::Metrics;
use crate::mqtt::BrokerCounters;
use crate::stats::Stats;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// State of the HTTP handlers.
#[derive(Clone)]
pub(crate) struct HttpState {
    /// The configuration.
    pub config: Arc<Config>,
    /// Meter id → session (who is online, and how).
    pub registry: Arc<Registry>,
    /// Where acknowledgement events are published.
    pub hub: Hub,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The gateway's figures (uptime, `/api/stats`).
    pub stats: Stats,
    /// Cancelled when the gateway stops (ends live streams, fails the health check).
    pub shutdown: CancellationToken,
    /// Broker counters (MQTT side of the health check and metrics).
    pub broker: Arc<BrokerCounters>,
    /// Users and passwords (the MQTT ones).
    pub auth: Arc<Authenticator>,
    /// Logged-in users (login cookies).
    pub logins: Arc<Logins>,
    /// The alarm engine (list, acknowledge).
    pub alarms: SharedAlarms,
    /// Where acknowledgements are persisted.
    pub acks_file: std::path::PathBuf,
    /// Latest readings, history, events, live stream.
    pub live: Arc<LiveView>,
    /// The command path shared with MQTT.
    pub commands: CommandRouter,
    /// Per-IP request limit.
    pub limiter: Arc<RateLimiter>,
    /// The SQLite store, when enabled (history, events and alarms are served from it).
    pub store: Option<crate::store::StoreHandle>,
}

/// An API error: HTTP status, stable code, message; rendered as `{error, code}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    /// 401: no or bad credentials.
    pub(crate) fn unauthorized() -> Self {
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
        if let Some(caller) = login::tokens(&parts.headers).find_map(|t| state.logins.get(t)) {
            return Ok(caller);
        }
        if let Some((user, password)) =
            parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(login::basic_credentials)
            && let Some(role) = state.auth.verify(&user, &password).await
        {
            return Ok(Caller { user, role });
        }
        Err(ApiError::unauthorized())
    }
}

/// A caller allowed to change things (send commands, acknowledge alarms).
pub(crate) struct Operator(pub Caller);

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
