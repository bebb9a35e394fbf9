//! What the HTTP handlers share: narrow handles on the gateway (registry, hub, counters, figures, the command
//! path, alarms, the live view), the API error type, and the caller extractors (session cookie or HTTP Basic).

use super::login::{self, Caller, Logins};
use super::ratelimit::RateLimiter;
use crate::alarms::SharedAlarms;
use crate::auth::{Authenticator, LoginRefused, Plane, Role};
use crate::commands::router::CommandRouter;
use crate::config::Config;
use crate::hub::Hub;
use crate::live::LiveView;
use crate::meters::registry::Registry;
use crate::metrics::Metrics;
use crate::mqtt::BrokerCounters;
use crate::stats::Stats;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
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
    /// Where acknowledgements are persisted (one writer at a time).
    pub acks: Arc<crate::alarms::AckStore>,
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
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A new error.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    /// 401: no or bad credentials.
    pub(crate) fn unauthorized() -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "log in first (session cookie or HTTP Basic)")
    }

    /// 401 for wrong credentials, 429 with `Retry-After` while failed logins are throttled.
    pub(crate) fn login_refused(refused: LoginRefused) -> Self {
        match refused {
            LoginRefused::BadCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "wrong user name or password")
            }
            LoginRefused::Throttled(wait) => ApiError {
                retry_after: Some(wait.as_secs().max(1)),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "login_throttled",
                    format!("too many failed logins; retry in {} s", wait.as_secs().max(1)),
                )
            },
        }
    }
}

/// The client's address, when the server recorded it.
pub(crate) fn peer_ip(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(json!({"error": self.message, "code": self.code}))).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
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
        {
            return match state.auth.login(&user, &password, Plane::Http, peer_ip(&parts.extensions)).await {
                Ok(role) => Ok(Caller { user, role }),
                Err(refused) => {
                    tracing::info!(%user, ?refused, "HTTP Basic credentials refused");
                    Err(match refused {
                        LoginRefused::BadCredentials => ApiError::unauthorized(),
                        throttled => ApiError::login_refused(throttled),
                    })
                }
            };
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
