//! The HTTP API (SPEC 7) against the real gateway: every endpoint, login and roles, the rate limit, the live
//! stream, security headers, the OpenAPI document and a strict parse of `/metrics`.

use crate::harness::*;
use ivy_protocol::dlt645::Address;
use ivy_sim::dlt645::{Dlt645Config, Dlt645Meter, Dlt645Sim};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const METER: &str = "000000004242";

struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    fn new(gw: &TestGateway) -> Self {
        let addr = gw.gw.addrs().http.expect("HTTP is on");
        Http {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str, auth: &Auth) -> (StatusCode, HeaderMap, Value) {
        let r = auth.apply(self.client.get(self.url(path))).send().await.unwrap();
        split(r).await
    }

    async fn post(&self, path: &str, auth: &Auth, body: Value) -> (StatusCode, HeaderMap, Value) {
        let r = auth.apply(self.client.post(self.url(path)).json(&body)).send().await.unwrap();
        split(r).await
    }

    /// Logs in; the session cookie.
    async fn login(&self, user: (&str, &str)) -> Auth {
        let r = self
            .client
            .post(self.url("/api/login"))
            .json(&json!({"username": user.0, "password": user.1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        assert!(cookie.contains("Path=/"), "{cookie}");
        Auth::Cookie(cookie.split(';').next().unwrap().to_owned())
    }
}

enum Auth {
    None,
    Cookie(String),
    Basic(&'static str, &'static str),
}

impl Auth {
    fn apply(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::None => rb,
            Auth::Cookie(c) => rb.header("cookie", c),
            Auth::Basic(u, p) => rb.basic_auth(u, Some(p)),
        }
    }
}

async fn split(r: reqwest::Response) -> (StatusCode, HeaderMap, Value) {
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
}

async fn meter_on(gw: &TestGateway, voltage: f64) -> (Dlt645Sim, Arc<Dlt645Meter>) {
    let meter = Arc::new(Dlt645Meter::new(METER.parse::<Address>().unwrap()));
    meter.set(0x0201_0100, voltage);
    let cfg = Dlt645Config::talk_first(vec![meter.clone()]);
    (Dlt645Sim::connect(gw.meters(), cfg).await.unwrap(), meter)
}

async fn wait_json(what: &str, secs: u64, mut probe: impl AsyncFnMut() -> Option<Value>) -> Value {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_endpoint_with_login_roles_and_errors() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.group = "all".into();
        c.polling.interval_ms = 1000;
    })
    .await;
    let http = Http::new(&gw);

    // Unauthenticated: health and metrics only.
    let (s, h, health) = http.get("/health", &Auth::None).await;
    assert_eq!(s, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "ok");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(!csp.contains("unsafe-inline") && !csp.contains("http:") && !csp.contains("https:"), "{csp}");
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    for path in ["/api/meters", "/api/info", "/api/me", "/api/alarms", "/api/events", "/api/stats", "/api/stream"] {
        let (s, _, body) = http.get(path, &Auth::None).await;
        assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let (s, _, body) = http.get(&format!("/api/meters/{METER}"), &Auth::Basic(VIEWER.0, "wrong")).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, _, body) = http.post("/api/login", &Auth::None, json!({"username": VIEWER.0, "password": "nope"})).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "invalid_credentials");
    let (s, _, body) = http.post("/api/login", &Auth::None, json!({"user": "x"})).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "invalid_json");

    let viewer = http.login(VIEWER).await;
    let operator = Auth::Basic(OPERATOR.0, OPERATOR.1);
    let (s, _, me) = http.get("/api/me", &viewer).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me, json!({"user": VIEWER.0, "role": "viewer", "canCommand": false}));
    let (_, _, me) = http.get("/api/me", &operator).await;
    assert_eq!(me["role"], "operator");
    let (s, _, info) = http.get("/api/info", &viewer).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["mqtt"]["topicPrefix"], "ivy/v1");

    // A meter over the overvoltage threshold.
    let (_sim, _meter) = meter_on(&gw, 260.0).await;
    let listed = wait_json("the meter listed online", 10, async || {
        let (_, _, list) = http.get("/api/meters?online=true", &viewer).await;
        let m = list["meters"].as_array()?.iter().find(|m| m["meterId"] == METER)?.clone();
        (m["online"] == true).then_some(m)
    })
    .await;
    assert_eq!(listed["protocol"], "dlt645");
    assert_eq!(listed["ip"], "127.0.0.1");
    let (_, _, none) = http.get("/api/meters?protocol=dlms", &viewer).await;
    assert_eq!(none["count"], 0, "{none}");
    let (_, _, found) = http.get("/api/meters?q=4242", &viewer).await;
    assert_eq!(found["count"], 1, "{found}");

    let detail = wait_json("readings and the alarm in the meter detail", 10, async || {
        let (_, _, d) = http.get(&format!("/api/meters/{METER}"), &viewer).await;
        (d["readings"]["VOLTAGE_A"]["value"] == 260.0 && d["alarms"].as_array().is_some_and(|a| !a.is_empty()))
            .then_some(d)
    })
    .await;
    assert_eq!(detail["readings"]["VOLTAGE_A"]["unit"], "V");
    assert_eq!(detail["readings"]["VOLTAGE_A"]["dataId"], "0x02010100");
    assert_eq!(detail["alarms"][0]["type"], "overvoltage");
    assert!(detail["readingsCount"].as_u64().unwrap() >= 9, "{detail}");

    let history = wait_json("two points of history", 10, async || {
        let (_, _, h) = http.get(&format!("/api/meters/{METER}/readings?register=voltage_a"), &viewer).await;
        (h["count"].as_u64()? >= 2).then_some(h)
    })
    .await;
    let points = history["points"].as_array().unwrap();
    assert!(points.iter().all(|p| p["register"] == "VOLTAGE_A" && p["value"] == 260.0 && p["unit"] == "V"));
    assert!(points.windows(2).all(|w| w[0]["ts"].as_u64() <= w[1]["ts"].as_u64()), "oldest first");
    let newest = points.last().unwrap()["ts"].as_u64().unwrap();
    let (_, _, window) =
        http.get(&format!("/api/meters/{METER}/readings?from={newest}&to={newest}&limit=5"), &viewer).await;
    assert!(window["points"].as_array().unwrap().iter().all(|p| p["ts"] == newest), "{window}");
    let (s, _, body) = http.get(&format!("/api/meters/{METER}/readings?from=10&to=5"), &viewer).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "invalid_params");

    // Unknown and malformed meter ids; HTML in an id comes back as JSON text, never as markup.
    let (s, _, body) = http.get("/api/meters/999999999999", &viewer).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "meter_not_found");
    let evil = "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E";
    let (s, h, body) = http.get(&format!("/api/meters/{evil}"), &viewer).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "invalid_meter_id");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let (s, _, body) = http.get(&format!("/api/meters/{evil}/readings"), &viewer).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "invalid_meter_id");

    // Commands: viewers may not; operators (HTTP Basic here) may; errors keep the command codes.
    let path = format!("/api/meters/{METER}/commands");
    let read = json!({"method": "read_register", "params": {"register": "VOLTAGE_A"}});
    let (s, _, body) = http.post(&path, &viewer, read.clone()).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
    let (s, _, answer) = http.post(&path, &operator, read.clone()).await;
    assert_eq!(s, StatusCode::OK, "{answer}");
    assert_eq!(answer["success"], true);
    assert_eq!(answer["result"]["value"], 260.0);
    assert!(answer["id"].as_str().unwrap().starts_with("http-"), "an id is made up when none is given");
    let (_, _, answer) = http.post(&path, &operator, json!({"id": 7, "method": "read_address"})).await;
    assert_eq!(answer["id"], 7);
    assert_eq!(answer["result"]["address"], METER, "{answer}");
    let (s, _, body) = http.post(&path, &operator, json!({"method": "fly"})).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "unknown_method");
    assert_eq!(body["success"], false);
    let (s, _, body) = http
        .post(
            &path,
            &operator,
            json!({"method": "read_obis", "params": {"obis": "1-0:1.8.0.255", "classId": 3, "attribute": 2}}),
        )
        .await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "unsupported_for_protocol");
    let (s, _, body) = http.post("/api/meters/000000000009/commands", &operator, read.clone()).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "meter_not_connected");
    let r = http
        .client
        .post(http.url(&path))
        .basic_auth(OPERATOR.0, Some(OPERATOR.1))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (s, _, body) = split(r).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "invalid_json");

    // Alarms: list, acknowledge (operators only), persisted, announced.
    let (_, _, alarms) = http.get("/api/alarms", &viewer).await;
    let alarm = alarms["alarms"].as_array().unwrap().iter().find(|a| a["meterId"] == METER).unwrap().clone();
    assert_eq!(alarm["acknowledged"], false);
    let alarm_id = alarm["id"].as_str().unwrap().to_owned();
    let ack = format!("/api/alarms/{alarm_id}/ack");
    let (s, _, body) = http.post(&ack, &viewer, json!({})).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "forbidden");
    let (s, _, body) = http.post(&ack, &operator, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["acknowledged"], true);
    let (s, _, body) = http.post("/api/alarms/nope:overvoltage:X/ack", &operator, json!({})).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "unknown_alarm");
    let (_, _, alarms) = http.get("/api/alarms", &viewer).await;
    assert!(alarms["alarms"].as_array().unwrap().iter().any(|a| a["id"] == alarm_id && a["acknowledged"] == true));
    // Persisted in the store before the 200.
    let acks = ivy_gateway::store::query::acknowledged_ids(&gw.gw.store().unwrap().reader().unwrap()).unwrap();
    assert!(acks.contains(&alarm_id), "{acks:?}");

    let events = wait_json("connected, alarm and acknowledgement events", 10, async || {
        let (_, _, e) = http.get(&format!("/api/events?meter={METER}&limit=50"), &viewer).await;
        let names: Vec<&str> = e["events"].as_array()?.iter().filter_map(|e| e["event"].as_str()).collect();
        (names.contains(&"meter_connected")
            && names.contains(&"alarm:overvoltage")
            && names.contains(&"alarm_acknowledged"))
        .then_some(e.clone())
    })
    .await;
    assert_eq!(events["events"][0]["event"], "alarm_acknowledged", "newest first: {events}");

    let (s, _, stats) = http.get("/api/stats", &viewer).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(stats["meters"]["online"], 1);
    assert!(stats["readingsPerMinute"].as_u64().unwrap() >= 9, "{stats}");
    assert_eq!(stats["alarms"]["active"], 1);

    // The OpenAPI document describes exactly the routes the router serves.
    let (s, _, doc) = http.get("/api/openapi.json", &Auth::None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut routes: Vec<(String, String)> =
        ivy_gateway::http::ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    routes.sort();
    assert_eq!(documented, routes);

    // Unknown endpoints answer JSON too; the dashboard and its assets are served from the binary.
    let (s, _, body) = http.get("/api/nothing", &viewer).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "not_found");
    let index = http.client.get(http.url("/")).send().await.unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    assert!(index.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = index.text().await.unwrap();
    assert!(!html.contains("<script>") && !html.contains("style="), "no inline script or style");
    assert!(!html.contains("http://") && !html.contains("https://"), "no external origin");
    for asset in ["/assets/app.js", "/assets/app.css", "/assets/favicon.svg"] {
        let r = http.client.get(http.url(asset)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
    }

    // Logout ends the session.
    let Auth::Cookie(cookie) = &viewer else { unreachable!() };
    let r = http.client.post(http.url("/api/logout")).header("cookie", cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let (s, _, body) = http.get("/api/me", &viewer).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let gw = start(|c| c.http.rate_limit_per_minute = 5).await;
    let http = Http::new(&gw);
    let operator = Auth::Basic(OPERATOR.0, OPERATOR.1);
    for n in 0..5 {
        let (s, _, body) = http.get("/api/me", &operator).await;
        assert_eq!(s, StatusCode::OK, "request {n}: {body}");
    }
    let (s, h, body) = http.get("/api/me", &operator).await;
    assert_error(s, &body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Liveness probes are not limited.
    let (s, _, _) = http.get("/health", &Auth::None).await;
    assert_eq!(s, StatusCode::OK);
    let metrics = http.client.get(http.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::TOO_MANY_REQUESTS, "everything else counts against the limit");
    assert_eq!(gw.gw.meters().metrics.http_rate_limited.get(), 2);
}

#[tokio::test]
async fn live_stream_sends_status_readings_and_events() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.interval_ms = 1000;
    })
    .await;
    let http = Http::new(&gw);
    let response = http
        .client
        .get(http.url("/api/stream"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], HeaderValue::from_static("text/event-stream"));
    let (_sim, _meter) = meter_on(&gw, 230.0).await;
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut seen = (false, false, false, false);
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    while !(seen.0 && seen.1 && seen.2 && seen.3) {
        let chunk = tokio::time::timeout_at(end, futures::StreamExt::next(&mut body))
            .await
            .unwrap_or_else(|_| panic!("stream so far:\n{text}"))
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        // One SSE message per blank-line-terminated block: `event: <name>` then `data: <json>`.
        for block in text.split("\n\n") {
            let event = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("message");
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
            match (event, v["type"].as_str()) {
                ("hello", _) => seen.0 = true,
                ("message", Some("status")) if v["meterId"] == METER && v["online"] == true => seen.1 = true,
                ("message", Some("readings")) if v["meterId"] == METER => {
                    assert!(v["readings"].as_array().unwrap().iter().any(|r| r["register"] == "VOLTAGE_A"));
                    seen.2 = true;
                }
                ("message", Some("event")) if v["event"] == "meter_connected" => seen.3 = true,
                _ => {}
            }
        }
    }
}

/// Metric families the issue requires, by the name Prometheus sees.
const REQUIRED_FAMILIES: &[&str] = &[
    "ivy_meters_online",
    "ivy_meters_total",
    "ivy_connections_active",
    "ivy_connections",
    "ivy_connections_rejected",
    "ivy_bytes_received",
    "ivy_bytes_sent",
    "ivy_frames",
    "ivy_readings",
    "ivy_parse_errors",
    "ivy_commands",
    "ivy_command_duration_seconds",
    "ivy_polls",
    "ivy_poll_cycle_duration_seconds",
    "ivy_mqtt_published",
    "ivy_mqtt_dropped",
    "ivy_alarms_active",
    "ivy_http_requests",
];

#[tokio::test]
async fn metrics_are_valid_prometheus_text() {
    let gw = start(|c| {
        c.polling.enabled = true;
        c.polling.interval_ms = 1000;
    })
    .await;
    let http = Http::new(&gw);
    let (_sim, _meter) = meter_on(&gw, 230.0).await;
    let path = format!("/api/meters/{METER}/commands");
    let operator = Auth::Basic(OPERATOR.0, OPERATOR.1);
    wait_json("a successful command", 10, async || {
        let (s, _, a) = http.post(&path, &operator, json!({"method": "read_address"})).await;
        (s == StatusCode::OK).then_some(a)
    })
    .await;
    // A connection that is refused as garbage, for the parse-error and unknown-protocol counters.
    let mut garbage = tokio::net::TcpStream::connect(gw.meters()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let unknown = &gw.gw.meters().metrics.connections_unknown_protocol;
    wait_json("the garbage connection counted", 15, async || (unknown.get() >= 1).then_some(Value::Null)).await;
    let r = http.client.get(http.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = r.text().await.unwrap();

    // Strict line grammar first (the parser crate below is lenient about what it skips).
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let mut typed = std::collections::HashMap::new();
    let mut sampled = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram", "summary", "info", "unknown"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_owned(), kind.to_owned()).is_none(), "type declared twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN", "{line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "{line}"
        );
        let family = typed.keys().filter(|f| name.starts_with(f.as_str())).max_by_key(|f| f.len());
        assert!(family.is_some(), "a sample before its TYPE: {line}");
        let labels = series.strip_prefix(name).unwrap_or_default();
        assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
        sampled.insert(name.to_owned());
    }
    // The documented names are the scraped ones (counters with `_total`; histograms by their family name).
    let registered =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs")).unwrap();
    for doc in ["API.md", "MQTT.md"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs").join(doc);
        let text = std::fs::read_to_string(&path).unwrap();
        let names = text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("ivy_"));
        let mut checked = 0;
        for name in names.filter(|n| *n != "ivy_session") {
            let histogram = typed.get(name).is_some_and(|k| k == "histogram");
            // A labelled counter family with no label set yet (per-client drops before the first drop) has no line in
            // the exposition: it must then be registered under that name in the metrics module.
            let declared_counter = name
                .strip_suffix("_total")
                .and_then(|f| f.strip_prefix("ivy_"))
                .is_some_and(|f| registered.contains(&format!("\"{f}\",")));
            assert!(
                sampled.contains(name) || histogram || declared_counter,
                "docs/{doc} names {name}, which /metrics does not expose"
            );
            checked += 1;
        }
        assert!(checked > 0 || doc == "MQTT.md", "no metric names found in docs/{doc}");
    }
    for family in REQUIRED_FAMILIES {
        assert!(typed.contains_key(*family), "missing metric family {family}");
    }

    // Then the Prometheus text-format parser.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(value("ivy_meters_online", None), 1.0);
    assert!(value("ivy_readings_total", None) >= 9.0);
    assert!(value("ivy_frames_total", Some(("protocol", "dlt645"))) >= 9.0);
    assert!(value("ivy_bytes_received_total", None) > 0.0);
    assert_eq!(value("ivy_commands_total", Some(("method", "read_address"))), 1.0);
    assert!(value("ivy_polls_total", Some(("outcome", "ok"))) >= 1.0);
    assert!(value("ivy_connections_unknown_protocol_total", None) >= 1.0);
    assert!(value("ivy_http_requests_total", Some(("class", "2xx"))) >= 1.0);
    let histogram = scrape.samples.iter().find(|s| s.metric == "ivy_command_duration_seconds").expect("histogram");
    assert!(matches!(histogram.value, prometheus_parse::Value::Histogram(_)), "{:?}", histogram.value);
}
