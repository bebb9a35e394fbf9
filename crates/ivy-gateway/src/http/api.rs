//! The REST handlers and the live stream.

use super::login::{self, Caller};
use super::state::{ApiError, HttpState, Operator};
use crate::commands::request::Method;
use crate::commands::router::Answer;
use crate::error::ErrorCode;
use crate::hub::HubEvent;
use crate::live::MeterView;
use crate::lock::lock;
use crate::meters::registry::MeterInfo;
use crate::model::{MeterEvent, Severity, now_ms};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ivy_protocol::registration::MeterId;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `GET /health`: 200 when every required part runs, 503 with the failing parts otherwise.
pub(crate) async fn health(State(s): State<HttpState>) -> impl IntoResponse {
    let mut failing: Vec<String> = Vec::new();
    let stopping = s.shutdown.is_cancelled();
    if stopping {
        failing.push("gateway is shutting down".into());
    } else {
        // A sink whose task ended means readings no longer reach MQTT, alarms or this API.
        failing.extend(s.hub.stopped_sinks().into_iter().map(|name| format!("{name} sink stopped")));
    }
    let degraded = store_degraded(&s);
    let status = if failing.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if !failing.is_empty() {
            if stopping { "stopping" } else { "failing" }
        } else if !degraded.is_empty() {
            "degraded"
        } else {
            "ok"
        },
        "degraded": degraded,
        "uptime": s.stats.uptime_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "meters": s.stats.meters(),
        "mqtt": {"clients": s.broker.snapshot().clients},
        "failing": failing,
    });
    (status, Json(body))
}

/// Readings the store lost so far: dropped at its full queue, or in a batch that could not be committed.
fn store_dropped(s: &HttpState, store: &crate::store::StoreHandle) -> u64 {
    let queue: u64 = s.hub.stats().iter().filter(|k| k.name == "store").map(|k| k.dropped_readings).sum();
    queue + store.status.lost.load(Ordering::Relaxed)
}

/// Why the store is degraded (the gateway still runs; history has gaps): writer behind, drops within the last
/// minute, failing commits.
fn store_degraded(s: &HttpState) -> Vec<String> {
    let Some(store) = &s.store else { return Vec::new() };
    let st = &store.status;
    let mut out = Vec::new();
    let dropped = store_dropped(s, store);
    let now = now_ms();
    if dropped > st.dropped_seen.swap(dropped, Ordering::Relaxed) {
        st.dropped_at.store(now, Ordering::Relaxed);
    }
    if st.behind() {
        out.push("store writer is behind (queue more than half full)".to_owned());
    }
    if st.dropped_at.load(Ordering::Relaxed) + 60_000 > now {
        out.push(format!("store dropped readings in the last minute ({dropped} since start)"));
    }
    if st.failing.load(Ordering::Relaxed) {
        out.push("store cannot commit".to_owned());
    }
    out
}

/// `GET /metrics`: Prometheus/OpenMetrics text.
pub(crate) async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let b = s.broker.snapshot();
    let m = &s.metrics;
    m.hub_dropped.set(s.hub.dropped() as i64);
    m.meters_online.set(s.registry.len() as i64);
    m.http_sessions.set(s.logins.len() as i64);
    m.http_stream_clients.set(s.live.stream_clients() as i64);
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
    sync(&m.mqtt_wills_refused, b.denied_wills);
    sync(&m.mqtt_sessions_refused, b.denied_sessions);
    sync(&m.mqtt_connections_refused, b.connections_refused);
    for ((user, client), n) in s.broker.session_drops() {
        sync(&m.mqtt_session_dropped.get_or_create(&crate::metrics::ClientLabel { user, client }), n);
    }
    let a = s.auth.counters();
    let plane = |p: &str| crate::metrics::PlaneLabel { plane: p.to_owned() };
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    sync(&m.auth_failures.get_or_create(&plane("mqtt")), load(&a.mqtt_failures));
    sync(&m.auth_failures.get_or_create(&plane("http")), load(&a.http_failures));
    sync(&m.auth_throttled.get_or_create(&plane("mqtt")), load(&a.mqtt_throttled));
    sync(&m.auth_throttled.get_or_create(&plane("http")), load(&a.http_throttled));
    if let Some(store) = &s.store {
        sync(&m.store_dropped, store_dropped(&s, store));
        sync(&m.store_written, store.status.readings_written.load(Ordering::Relaxed));
        m.store_queue.set(store.status.queued.load(Ordering::Relaxed) as i64);
        m.store_bytes.set(store.status.used_bytes.load(Ordering::Relaxed) as i64);
    }
    if let Some(up) = s.stats.upstream() {
        let f = up.outbox.figures(now_ms());
        m.outbox_depth.set(f.queued as i64);
        m.outbox_oldest_age_seconds.set(f.oldest_age_secs as i64);
        for (reason, n) in ["telemetry", "snapshot", "event"].iter().zip(f.dropped_by_class) {
            sync(&m.outbox_dropped.get_or_create(&crate::metrics::ReasonText { reason: (*reason).to_owned() }), n);
        }
        let c = &up.counters;
        m.upstream_connected.set(i64::from(c.connected.load(Ordering::Relaxed)));
        sync(&m.upstream_reconnects, load(&c.reconnects));
        sync(&m.upstream_published, load(&c.published));
        sync(&m.upstream_acked, load(&c.acked));
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode())
}

/// Login form.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginRequest {
    username: String,
    password: String,
}

/// `POST /api/login`: checks the user against the MQTT user store and sets the session cookie.
pub(crate) async fn login(
    State(s): State<HttpState>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form: LoginRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("expected {{username, password}}: {e}"))
    })?;
    let source = super::state::peer_ip(&extensions);
    let role = match s.auth.login(&form.username, form.password.as_bytes(), crate::auth::Plane::Http, source).await {
        Ok(role) => role,
        Err(refused) => {
            tracing::info!(user = %form.username, ?source, ?refused, "HTTP login refused");
            return Err(ApiError::login_refused(refused));
        }
    };
    let token = s.logins.create(Caller { user: form.username.clone(), role });
    let cookie = s.logins.set_cookie(&token);
    Ok(([(header::SET_COOKIE, cookie)], Json(json!({"user": form.username, "role": role}))).into_response())
}

/// `POST /api/logout`: ends the login and clears the cookie.
pub(crate) async fn logout(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    for token in login::tokens(&headers) {
        s.logins.remove(token);
    }
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, s.logins.clear_cookie())]).into_response()
}

/// `GET /api/me`: who is logged in.
pub(crate) async fn me(caller: Caller) -> Json<Value> {
    Json(json!({"user": caller.user, "role": caller.role, "canCommand": caller.role.can_command()}))
}

/// `GET /api/info`: the gateway's identity and configuration summary.
pub(crate) async fn info(State(s): State<HttpState>, _caller: Caller) -> Json<Value> {
    let c = &s.config;
    Json(json!({
        "name": c.gateway.name,
        "gatewayId": c.gateway.gateway_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": s.stats.uptime_secs(),
        "startedAt": s.stats.started_at_ms(),
        "protocols": ["dlt645", "dlms"],
        "mqtt": {"topicPrefix": c.mqtt.topic_prefix, "port": c.mqtt.port, "wsPort": c.mqtt.ws_port, "authEnabled": c.mqtt.auth_enabled},
        "meters": {"port": c.meters.port},
        "polling": {"enabled": c.polling.enabled, "intervalMs": c.polling.interval_ms, "group": c.polling.group},
        "alarms": {
            "enabled": c.alarms.enabled, "overvoltageV": c.alarms.overvoltage_v, "undervoltageV": c.alarms.undervoltage_v,
            "overcurrentA": c.alarms.overcurrent_a, "overloadKw": c.alarms.overload_kw,
            "lowPowerFactor": c.alarms.low_power_factor,
        },
        "store": {"enabled": c.store.enabled, "retentionDays": c.store.retention_days},
        "commandMethods": Method::ALL.map(|m| m.as_str()),
    }))
}

/// Filters of `GET /api/meters`.
#[derive(Debug, Deserialize)]
pub(crate) struct MeterFilter {
    /// Substring of the meter id (case-insensitive).
    q: Option<String>,
    /// Only online (`true`) or offline (`false`) meters.
    online: Option<bool>,
    /// `dlt645` or `dlms`.
    protocol: Option<String>,
}

fn active_alarm_counts(s: &HttpState) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for a in lock(&s.alarms).active() {
        *counts.entry(a.meter_id).or_insert(0) += 1;
    }
    counts
}

/// A meter as JSON: what the live view knows, with the connection taken from the registry (the truth for
/// commands) when the meter is online.
fn meter_json(view: &MeterView, online: Option<&MeterInfo>) -> serde_json::Map<String, Value> {
    let mut m = match serde_json::to_value(view) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    m.insert("online".into(), json!(online.is_some()));
    if let Some(info) = online {
        m.insert("ip".into(), json!(info.ip));
        m.insert("protocol".into(), json!(info.protocol));
        m.insert("connectedAt".into(), json!(info.connected_at));
    }
    m
}

/// The meter list: every meter the live view knows, plus online meters it has no entry for (those without
/// readings are described by the registry alone).
fn meter_rows(s: &HttpState) -> Vec<Value> {
    let mut views = s.live.meters();
    let online: HashMap<String, MeterInfo> =
        s.registry.list().into_iter().map(|(id, info)| (id.as_str().to_owned(), info)).collect();
    let missing: Vec<&String> =
        online.keys().filter(|id| views.binary_search_by(|v| v.meter_id.as_str().cmp(id)).is_err()).collect();
    views.extend(missing.into_iter().map(|id| MeterView::new(id)));
    let alarms = active_alarm_counts(s);
    views
        .into_iter()
        .map(|v| {
            let info = online.get(&v.meter_id);
            let mut m = meter_json(&v, info);
            if let Some(info) = info.filter(|info| v.last_seen < info.connected_at) {
                m.insert("lastSeen".into(), json!(info.connected_at));
            }
            m.insert("activeAlarms".into(), json!(alarms.get(&v.meter_id).copied().unwrap_or(0)));
            Value::Object(m)
        })
        .collect()
}

/// `GET /api/meters`: every known meter (online or seen since start).
pub(crate) async fn meters(State(s): State<HttpState>, _caller: Caller, Query(f): Query<MeterFilter>) -> Json<Value> {
    let q = f.q.as_deref().map(str::to_ascii_lowercase);
    let rows: Vec<Value> = meter_rows(&s)
        .into_iter()
        .filter(|row| {
            let id = row["meterId"].as_str().unwrap_or_default().to_ascii_lowercase();
            q.as_deref().is_none_or(|q| id.contains(q))
                && f.online.is_none_or(|o| row["online"] == json!(o))
                && f.protocol.as_deref().is_none_or(|p| row["protocol"] == json!(p))
        })
        .collect();
    Json(json!({"count": rows.len(), "meters": rows}))
}

fn parse_meter_id(raw: &str) -> Result<MeterId, ApiError> {
    MeterId::new(raw).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_meter_id", e.to_string()))
}

fn meter_not_found(id: &MeterId) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "meter_not_found", format!("no meter '{id}' has been seen"))
}

/// `GET /api/meters/{id}`: status, protocol, ip, counters, latest readings and active alarms.
pub(crate) async fn meter(
    State(s): State<HttpState>,
    _caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_meter_id(&raw)?;
    let online = s.registry.get(&id).map(|(_, info)| info);
    let view = s.live.meter_view(id.as_str());
    if view.is_none() && online.is_none() {
        return Err(meter_not_found(&id));
    }
    let view = view.unwrap_or_else(|| MeterView::new(id.as_str()));
    let alarms: Vec<_> = lock(&s.alarms).active().into_iter().filter(|a| a.meter_id == id.as_str()).collect();
    let mut m = meter_json(&view, online.as_ref());
    if let Some(info) = &online {
        m.insert("port".into(), json!(info.port));
    }
    // DLMS association state: rejected (with the back-off) or ok.
    let rejection = s.registry.dlms_rejection(&id);
    let dlms_online = online.as_ref().is_some_and(|i| i.protocol == crate::model::Source::Dlms);
    if rejection.is_some() || dlms_online {
        let mut state = rejection.unwrap_or_else(|| json!({"association": "ok"}));
        if let Some(retry_at) = state.get("retryAt").and_then(Value::as_u64) {
            state["retryInMs"] = json!(retry_at.saturating_sub(crate::model::now_ms()));
        }
        m.insert("dlms".into(), state);
    }
    m.insert("readings".into(), json!(view.latest()));
    m.insert("alarms".into(), json!(alarms));
    Ok(Json(Value::Object(m)))
}

/// Query of `GET /api/meters/{id}/readings`.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    /// Register key (case-insensitive); all registers when absent.
    register: Option<String>,
    /// From (ms since epoch, inclusive).
    from: Option<u64>,
    /// To (ms since epoch, inclusive).
    to: Option<u64>,
    /// At most this many points or buckets (newest kept), default 1000, at most 10,000; CSV: no limit unless given.
    limit: Option<usize>,
    /// Bucket width (`1m`, `15m`, `1h`, `1d`): min/avg/max/last per bucket instead of raw points (store only).
    step: Option<String>,
    /// `csv` streams CSV with a header row (store only); `json` (default).
    format: Option<String>,
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "store query failed");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("the store cannot answer: {e}"))
}

fn wants_csv(q: &HistoryQuery, headers: &HeaderMap) -> Result<bool, ApiError> {
    match q.format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_params",
            format!("format '{other}' is not csv or json"),
        )),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.split(',').any(|t| t.trim().starts_with("text/csv")))),
    }
}

/// `GET /api/meters/{id}/readings`: numeric history, oldest first; from the store when it is enabled
/// (`source: store`; `step` aggregates, CSV), else from the in-memory ring (`source: memory`).
pub(crate) async fn readings(
    State(s): State<HttpState>,
    _caller: Caller,
    Path(raw): Path<String>,
    Query(q): Query<HistoryQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_meter_id(&raw)?;
    if let (Some(from), Some(to)) = (q.from, q.to)
        && from > to
    {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_params", "'from' is after 'to'"));
    }
    let step = match q.step.as_deref() {
        Some(text) => Some(crate::store::query::parse_step(text).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_params",
                format!("step '{text}' is not a duration like 1m, 15m, 1h or 1d (1 s to 366 d)"),
            )
        })?),
        None => None,
    };
    let csv = wants_csv(&q, &headers)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let Some(store) = s.store.clone() else {
        if step.is_some() || csv {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "store_disabled",
                "step and CSV need the store (store.enabled = true)",
            ));
        }
        let points = s
            .live
            .history(id.as_str(), q.register.as_deref(), q.from, q.to, limit)
            .ok_or_else(|| meter_not_found(&id))?;
        return Ok(Json(json!({
            "meterId": id.as_str(),
            "register": q.register,
            "from": q.from,
            "to": q.to,
            "source": "memory",
            "count": points.len(),
            "points": points,
        }))
        .into_response());
    };
    let from = q.from.unwrap_or(0);
    let to = q.to.unwrap_or(u64::MAX);
    let meter = id.as_str().to_owned();
    let register = q.register.clone();
    let series = store
        .read(move |c| crate::store::query::series(c, Some(&meter), register.as_deref()))
        .await
        .map_err(store_error)?
        .ok_or_else(|| meter_not_found(&id))?;
    if csv {
        return Ok(csv_response(store, id, series, from, to, step, q.limit));
    }
    let body = match step {
        Some(step) => {
            let buckets = store
                .read(move |c| crate::store::query::buckets(c, &series, from, to, step, limit))
                .await
                .map_err(store_error)?;
            json!({
                "meterId": id.as_str(), "register": q.register, "from": q.from, "to": q.to, "step": step,
                "source": "store", "count": buckets.len(), "buckets": buckets,
            })
        }
        None => {
            let points = store
                .read(move |c| crate::store::query::points(c, &series, from, to, limit))
                .await
                .map_err(store_error)?;
            json!({
                "meterId": id.as_str(), "register": q.register, "from": q.from, "to": q.to,
                "source": "store", "count": points.len(), "points": points,
            })
        }
    };
    Ok(Json(body).into_response())
}

/// Streams the readings as CSV from a blocking reader: rows go out as they are read, a few hundred KB at most
/// are buffered (the channel bound), and a client that goes away stops the query.
fn csv_response(
    store: crate::store::StoreHandle,
    id: MeterId,
    series: Vec<crate::store::query::Series>,
    from: u64,
    to: u64,
    step: Option<u64>,
    limit: Option<usize>,
) -> Response {
    use crate::store::query;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let filename = format!("{}-readings.csv", id.as_str());
    tokio::task::spawn_blocking(move || {
        let mut chunk = String::with_capacity(64 * 1024);
        let flush = |chunk: &mut String| tx.blocking_send(Ok(Bytes::from(std::mem::take(chunk)))).is_ok();
        let result = (|| -> Result<(), crate::store::StoreError> {
            let conn = store.reader()?;
            match step {
                Some(step) => {
                    chunk.push_str(query::CSV_BUCKET_HEADER);
                    let buckets = query::buckets(&conn, &series, from, to, step, limit.unwrap_or(usize::MAX >> 1))?;
                    for b in &buckets {
                        chunk.push_str(&query::csv_bucket(id.as_str(), b));
                        if chunk.len() > 60_000 && !flush(&mut chunk) {
                            return Ok(());
                        }
                    }
                }
                None => {
                    chunk.push_str(query::CSV_HEADER);
                    let mut open = true;
                    query::csv_rows(&conn, &series, from, to, limit, |line| {
                        chunk.push_str(&line);
                        if chunk.len() > 60_000 {
                            open = flush(&mut chunk);
                        }
                        open
                    })?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if !chunk.is_empty() {
                    flush(&mut chunk);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "CSV export failed");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

static HTTP_COMMAND_IDS: AtomicU64 = AtomicU64::new(1);

fn status_for(code: Option<ErrorCode>) -> StatusCode {
    match code {
        None => StatusCode::OK,
        Some(
            ErrorCode::InvalidJson
            | ErrorCode::MissingId
            | ErrorCode::MissingMethod
            | ErrorCode::UnknownMethod
            | ErrorCode::InvalidParams
            | ErrorCode::UnknownRegister,
        ) => StatusCode::BAD_REQUEST,
        Some(ErrorCode::MeterNotConnected) => StatusCode::NOT_FOUND,
        Some(ErrorCode::UnsupportedForProtocol) => StatusCode::UNPROCESSABLE_ENTITY,
        Some(ErrorCode::Timeout) => StatusCode::GATEWAY_TIMEOUT,
        Some(ErrorCode::MeterError | ErrorCode::AssociationRejected | ErrorCode::ConnectionClosed) => {
            StatusCode::BAD_GATEWAY
        }
        Some(ErrorCode::Busy | ErrorCode::ShuttingDown) => StatusCode::SERVICE_UNAVAILABLE,
        Some(ErrorCode::IdentityContested) => StatusCode::CONFLICT,
    }
}

/// `POST /api/meters/{id}/commands`: the MQTT command path; the body is a command request (`id` optional here),
/// the answer is the command response payload.
pub(crate) async fn command(
    State(s): State<HttpState>,
    Operator(caller): Operator,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_meter_id(&raw)?;
    // Scripts need not invent request ids over HTTP: the answer is the response to this request.
    let payload = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut m)) if !m.contains_key("id") && !m.contains_key("requestId") => {
            m.insert("id".into(), json!(format!("http-{}", HTTP_COMMAND_IDS.fetch_add(1, Ordering::Relaxed))));
            Bytes::from(Value::Object(m).to_string())
        }
        _ => body,
    };
    tracing::info!(meter = %id, user = %caller.user, "HTTP command");
    match s.commands.execute(&id, &payload).await {
        Some(Answer { payload, code, .. }) => Ok((status_for(code), Json(payload)).into_response()),
        None => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "the body is not a JSON command request")),
    }
}

/// Query of `GET /api/alarms`.
#[derive(Debug, Deserialize)]
pub(crate) struct AlarmQuery {
    /// `active` (default): alarms raised now; `all`: every occurrence in the store, newest first, with when it
    /// was cleared and who acknowledged it.
    state: Option<String>,
    /// At most this many (`all` only; default 500, at most 10,000).
    limit: Option<usize>,
}

/// `GET /api/alarms`: active alarms, oldest first; or (`state=all`) the alarm history from the store.
pub(crate) async fn alarms(
    State(s): State<HttpState>,
    _caller: Caller,
    Query(q): Query<AlarmQuery>,
) -> Result<Json<Value>, ApiError> {
    match q.state.as_deref().unwrap_or("active") {
        "active" => {
            let active = lock(&s.alarms).active();
            Ok(Json(json!({"count": active.len(), "alarms": active})))
        }
        "all" => {
            let store = s
                .store
                .clone()
                .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "store_disabled", "state=all needs the store"))?;
            let limit = q.limit.unwrap_or(500).clamp(1, 10_000);
            let all = store.read(move |c| crate::store::query::alarms(c, false, limit)).await.map_err(store_error)?;
            Ok(Json(json!({"count": all.len(), "source": "store", "alarms": all})))
        }
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_params",
            format!("state '{other}' is not active or all"),
        )),
    }
}

/// `POST /api/alarms/{id}/ack`: acknowledges an active alarm (persisted; announced as an `alarm_acknowledged`
/// event).
pub(crate) async fn acknowledge(
    State(s): State<HttpState>,
    Operator(caller): Operator,
    Path(alarm_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, "unknown_alarm", format!("no active alarm '{alarm_id}'"));
    // 200 means durable: answer only once the acknowledgement is stored.
    let alarm = match &s.store {
        Some(store) => {
            let alarm = lock(&s.alarms).acknowledge(&alarm_id).ok_or_else(unknown)?;
            store.acknowledge(alarm_id.clone(), caller.user.clone(), now_ms()).await.map_err(|e| {
                tracing::error!(error = %e, "could not persist the alarm acknowledgement");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_persisted",
                    "the acknowledgement could not be stored",
                )
            })?;
            alarm
        }
        None => match crate::alarms::acknowledge_persisted(&s.alarms, &alarm_id, &s.acks).await {
            Ok(Some(alarm)) => alarm,
            Ok(None) => return Err(unknown()),
            Err(e) => {
                tracing::error!(error = %e, file = %s.acks.path().display(), "could not persist the alarm acknowledgement");
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "not_persisted",
                    format!("the acknowledgement could not be stored: {e}"),
                ));
            }
        },
    };
    if let Ok(meter_id) = MeterId::new(&alarm.meter_id) {
        s.hub.publish(HubEvent::Event(MeterEvent {
            meter_id,
            event: "alarm_acknowledged".into(),
            severity: Some(Severity::Info),
            data: json!({"id": alarm_id, "by": caller.user}),
            ts: now_ms(),
        }));
    }
    Ok(Json(json!({"id": alarm_id, "acknowledged": true, "by": caller.user})))
}

/// Query of `GET /api/events`.
#[derive(Debug, Deserialize)]
pub(crate) struct EventQuery {
    /// Only this meter's events.
    meter: Option<String>,
    /// From (ms, inclusive; store only).
    from: Option<u64>,
    /// To (ms, inclusive; store only).
    to: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

/// `GET /api/events`: events newest first, from the store when it is enabled (`source: store`), else the recent
/// ones kept in memory.
pub(crate) async fn events(
    State(s): State<HttpState>,
    _caller: Caller,
    Query(q): Query<EventQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let Some(store) = s.store.clone() else {
        let events = s.live.events(q.meter.as_deref(), limit);
        return Ok(Json(json!({"count": events.len(), "source": "memory", "events": events})));
    };
    let (from, to) = (q.from.unwrap_or(0), q.to.unwrap_or(u64::MAX));
    if from > to {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_params", "'from' is after 'to'"));
    }
    let meter = q.meter.clone();
    let events = store
        .read(move |c| crate::store::query::events(c, from, to, meter.as_deref(), limit))
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"count": events.len(), "source": "store", "events": events})))
}

/// `GET /api/stats`: the `gateway/stats` payload plus what the dashboard's cards show.
pub(crate) async fn stats(State(s): State<HttpState>, _caller: Caller) -> Json<Value> {
    let mut stats = s.stats.payload();
    if let Value::Object(m) = &mut stats {
        m.insert("readingsPerMinute".into(), json!(s.live.readings_per_minute()));
        m.insert(
            "http".into(),
            json!({
                "sessions": s.logins.len(),
                "streamClients": s.live.stream_clients(),
                "droppedMeters": s.live.dropped_meters(),
            }),
        );
    }
    Json(stats)
}

/// `GET /api/stream`: server-sent events — `hello` first, then `readings`, `status` and `event` messages as they
/// happen; `lagged` when this client fell behind (it should reload its lists). Ends when the gateway stops.
pub(crate) async fn stream(State(s): State<HttpState>, _caller: Caller) -> impl IntoResponse {
    let rx = s.live.subscribe();
    let shutdown = s.shutdown.clone();
    let hello = Event::default().event("hello").data(json!({"ts": now_ms()}).to_string());
    let live = futures::stream::unfold((rx, shutdown), |(mut rx, shutdown)| async move {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return None,
            msg = rx.recv() => match msg {
                Ok(text) => Event::default().event("message").data(text.as_ref()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    Event::default().event("lagged").data(json!({"missed": missed}).to_string())
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            },
        };
        Some((Ok::<Event, Infallible>(event), (rx, shutdown)))
    });
    let all = futures::StreamExt::chain(futures::stream::once(async move { Ok(hello) }), live);
    Sse::new(all).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `POST /api/csp-report`: browsers report CSP violations here; counted and logged (the dashboard should cause
/// none).
pub(crate) async fn csp_report(State(s): State<HttpState>, body: Bytes) -> StatusCode {
    s.metrics.http_csp_reports.inc();
    let text = String::from_utf8_lossy(body.get(..2048).unwrap_or(&body)).into_owned();
    tracing::warn!(report = %text, "content security policy violation reported by a browser");
    StatusCode::NO_CONTENT
}

/// Unknown paths.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}
