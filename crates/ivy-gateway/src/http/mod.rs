//! HTTP: health and metrics for now (the REST API and the dashboard build on this router).

use crate::gateway::Shared;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use std::sync::Arc;

/// State of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// Gateway state.
    pub shared: Arc<Shared>,
    /// Broker counters (MQTT side of the health check and metrics).
    pub broker: Arc<crate::mqtt::BrokerCounters>,
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new().route("/health", get(health)).route("/metrics", get(metrics)).with_state(state)
}

async fn health(State(s): State<HttpState>) -> impl IntoResponse {
    let shutting_down = s.shared.shutdown.is_cancelled();
    let status = if shutting_down { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = json!({
        "status": if shutting_down { "stopping" } else { "ok" },
        "uptime": s.shared.uptime_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "meters": {"online": s.shared.registry.len(), "total": s.shared.meters_total()},
        "mqtt": {"clients": s.broker.snapshot().clients},
        "failing": if shutting_down { vec!["gateway is shutting down"] } else { Vec::new() },
    });
    (status, axum::Json(body))
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let b = s.broker.snapshot();
    let m = &s.shared.metrics;
    m.hub_dropped.set(s.shared.hub.dropped() as i64);
    m.meters_online.set(s.shared.registry.len() as i64);
    // Broker counters live in the broker; mirror them into the registry's counters at scrape time.
    let sync = |c: &prometheus_client::metrics::counter::Counter, v: u64| {
        let cur = c.get();
        if v > cur {
            c.inc_by(v - cur);
        }
    };
    sync(&m.mqtt_published, b.published);
    sync(&m.mqtt_dropped, b.dropped);
    sync(&m.mqtt_denied, b.denied_publishes);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode())
}
