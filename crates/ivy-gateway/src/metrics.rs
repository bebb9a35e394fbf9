//! Counters, gauges and histograms of the whole gateway, readable in-process (for `gateway/stats` and the API) and
//! exported in the Prometheus/OpenMetrics text format at `/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as Exposition;

/// Why a meter connection was refused.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RejectReason {
    /// `meters.max_connections` reached.
    MaxConnections,
    /// `meters.max_connections_per_ip` reached.
    PerIpLimit,
    /// An unidentified connection from an IP that misbehaved, closed to make room for a newer one
    /// (`meters.max_unidentified_per_penalised_ip`).
    RateLimited,
    /// The source address is outside `meters.allowed_sources`.
    SourceNotAllowed,
}

impl RejectReason {
    /// Every reason.
    pub const ALL: [RejectReason; 4] = [
        RejectReason::MaxConnections,
        RejectReason::PerIpLimit,
        RejectReason::RateLimited,
        RejectReason::SourceNotAllowed,
    ];
}

/// How a contest for a meter id ended (the `outcome` label of `ivy_identity_conflicts_total`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ConflictOutcome {
    /// The holder kept the id; the newcomer was refused and closed.
    Refused,
    /// The newcomer took the id over (the holder was silent, or the policy is `newest_wins`).
    TakenOver,
}

impl ConflictOutcome {
    /// Every outcome.
    pub const ALL: [ConflictOutcome; 2] = [ConflictOutcome::Refused, ConflictOutcome::TakenOver];

    /// The label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConflictOutcome::Refused => "refused",
            ConflictOutcome::TakenOver => "taken_over",
        }
    }
}

impl EncodeLabelValue for ConflictOutcome {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Label: the outcome of an identity contest.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConflictLabel {
    /// How it ended.
    pub outcome: ConflictOutcome,
}

/// Why an identification was refused without a contest (the `reason` label of `ivy_identities_refused_total`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum IdentityRefusal {
    /// The connection already holds `meters.max_ids_per_connection` ids.
    TooManyIds,
    /// The source IP registered `meters.max_new_ids_per_ip_per_minute` new ids in the last minute.
    NewIdRate,
    /// The meter's `meters.allowed_sources_by_meter` entry does not include the source address.
    SourceNotAllowed,
    /// The connection's client certificate (TLS meter port) does not name the meter id.
    CertificateMismatch,
}

impl IdentityRefusal {
    /// Every reason.
    pub const ALL: [IdentityRefusal; 4] = [
        IdentityRefusal::TooManyIds,
        IdentityRefusal::NewIdRate,
        IdentityRefusal::SourceNotAllowed,
        IdentityRefusal::CertificateMismatch,
    ];

    /// The label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            IdentityRefusal::TooManyIds => "too_many_ids",
            IdentityRefusal::NewIdRate => "new_id_rate",
            IdentityRefusal::SourceNotAllowed => "source_not_allowed",
            IdentityRefusal::CertificateMismatch => "certificate_mismatch",
        }
    }
}

impl EncodeLabelValue for IdentityRefusal {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Label: why an identification was refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabel {
    /// Why.
    pub reason: IdentityRefusal,
}

/// Label: why a TLS handshake on the meter port failed (`crate::tls::HandshakeFailure`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabel {
    /// `timeout`, `no_certificate`, `bad_certificate`, `protocol`, `io`.
    pub reason: String,
}

/// Label: reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: RejectReason,
}

/// Label: protocol.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    /// `dlt645` / `dlms`.
    pub protocol: String,
}

/// Label: kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Error kind.
    pub kind: String,
}

/// Labels: method and outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    /// Command method.
    pub method: String,
    /// `success` or the error code.
    pub outcome: String,
}

/// Label: method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// Command method.
    pub method: String,
}

/// Label: the outcome of a poll cycle.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The cycle's outcome.
    pub outcome: PollOutcome,
}

/// How a poll cycle ended (the `outcome` label of `ivy_polls`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum PollOutcome {
    /// Every register answered.
    Ok,
    /// The meter refused some registers.
    Partial,
    /// The meter stopped answering.
    Timeout,
    /// The cycle failed otherwise (the meter refused the request or the association).
    Failed,
}

impl PollOutcome {
    /// Every outcome.
    pub const ALL: [PollOutcome; 4] =
        [PollOutcome::Ok, PollOutcome::Partial, PollOutcome::Timeout, PollOutcome::Failed];

    /// The label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            PollOutcome::Ok => "ok",
            PollOutcome::Partial => "partial",
            PollOutcome::Timeout => "timeout",
            PollOutcome::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for PollOutcome {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Every metric of the gateway.
#[derive(Debug)]
pub struct Metrics {
    /// Meters online now.
    pub meters_online: Gauge,
    /// Meters seen since start.
    pub meters_total: Gauge,
    /// Meter connections open now.
    pub connections_active: Gauge,
    /// Meter connections accepted.
    pub connections_total: Counter,
    /// Meter connections refused, by reason.
    pub connections_rejected: Family<ReasonLabel, Counter>,
    /// Connections whose protocol could not be detected.
    pub connections_unknown_protocol: Counter,
    /// Connections that ended without identifying a meter (strikes against their source IP).
    pub connections_unidentified: Counter,
    /// Contests for a meter id, by outcome.
    pub identity_conflicts: Family<ConflictLabel, Counter>,
    /// Identifications refused without a contest, by reason.
    pub identities_refused: Family<RefusalLabel, Counter>,
    /// Commands refused because they need a secret and the meter's identity was contested recently.
    pub secrets_withheld: Counter,
    /// TLS handshakes completed on the meter port (a client certificate of the configured CA was presented).
    pub meter_tls_handshakes: Counter,
    /// TLS handshakes on the meter port that failed, by reason (each a strike against the source IP).
    pub meter_tls_handshake_failures: Family<HandshakeLabel, Counter>,
    /// Bytes received from meters.
    pub bytes_received: Counter,
    /// Bytes sent to meters.
    pub bytes_sent: Counter,
    /// Frames/APDUs received, by protocol.
    pub frames: Family<ProtocolLabel, Counter>,
    /// Readings decoded.
    pub readings: Counter,
    /// DLMS pushes whose capture time was further from the gateway clock than the tolerance (wrong meter clock).
    pub dlms_capture_time_skewed: Counter,
    /// Parse errors and discarded bytes, by kind.
    pub parse_errors: Family<KindLabel, Counter>,
    /// Commands by method and outcome.
    pub commands: Family<CommandLabel, Counter>,
    /// Command latency in seconds, by method.
    pub command_duration: Family<MethodLabel, Histogram>,
    /// Poll cycles by outcome.
    pub polls: Family<OutcomeLabel, Counter>,
    /// Poll cycle duration in seconds.
    pub poll_duration: Histogram,
    /// MQTT messages published by the gateway.
    pub mqtt_published: Counter,
    /// MQTT messages the gateway dropped (queue full).
    pub mqtt_dropped: Counter,
    /// Client publishes refused by the ACL.
    pub mqtt_denied: Counter,
    /// Invalid command payloads.
    pub invalid_commands: Counter,
    /// Alarms active now.
    pub alarms_active: Gauge,
    /// Events dropped inside the hub (slow sinks).
    pub hub_dropped: Gauge,
    /// HTTP responses by status class (`2xx`, `4xx`, ...).
    pub http_requests: Family<StatusLabel, Counter>,
    /// HTTP requests refused by the per-IP rate limit.
    pub http_rate_limited: Counter,
    /// Content-security-policy violations reported by browsers.
    pub http_csp_reports: Counter,
    /// Dashboard/API sessions open now.
    pub http_sessions: Gauge,
    /// Live-stream (SSE) clients connected now.
    pub http_stream_clients: Gauge,
    /// Readings the store did not write: its queue was full (the writer fell behind) or the batch failed.
    pub store_dropped: Counter,
    /// Readings written to the store.
    pub store_written: Counter,
    /// Hub events waiting for the store writer.
    pub store_queue: Gauge,
    /// Bytes of live data in the database.
    pub store_bytes: Gauge,
    /// Messages in the upstream outbox, waiting for the broker's PUBACK.
    pub outbox_depth: Gauge,
    /// Age of the oldest message in the outbox, in seconds.
    pub outbox_oldest_age_seconds: Gauge,
    /// Messages dropped from the full outbox, by reason (the class dropped: `telemetry`, `snapshot`, `event`).
    pub outbox_dropped: Family<ReasonText, Counter>,
    /// Connected to the upstream broker now (0/1).
    pub upstream_connected: Gauge,
    /// Upstream connections lost and connection attempts that failed.
    pub upstream_reconnects: Counter,
    /// Messages published upstream (re-sends count again).
    pub upstream_published: Counter,
    /// Upstream messages acknowledged by the broker.
    pub upstream_acked: Counter,
    /// HTTP connections open now.
    pub http_connections_active: Gauge,
    /// HTTP connections closed at accept because `http.max_connections` were open.
    pub http_connections_refused: Counter,
    /// State-changing HTTP requests refused by the cross-site request checks, by reason.
    pub http_csrf_refused: Family<KindLabel, Counter>,
    /// Failed logins (wrong user or password), by plane (`mqtt`, `http`).
    pub auth_failures: Family<PlaneLabel, Counter>,
    /// Login attempts refused unchecked by the failed-login throttle, by plane.
    pub auth_throttled: Family<PlaneLabel, Counter>,
    /// MQTT connections refused because their will fails the publish ACL.
    pub mqtt_wills_refused: Counter,
    /// MQTT connections refused by `mqtt.max_sessions_per_user`.
    pub mqtt_sessions_refused: Counter,
    /// MQTT connections closed at accept because their listener had `mqtt.max_connections` open.
    pub mqtt_connections_refused: Counter,
    /// Messages dropped because a subscriber's session queue was full, by user and client id.
    pub mqtt_session_dropped: Family<ClientLabel, Counter>,
}

/// Label: a reason given as text.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonText {
    /// The reason.
    pub reason: String,
}

/// Label: plane.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlaneLabel {
    /// `mqtt` or `http`.
    pub plane: String,
}

/// Labels: an MQTT client.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabel {
    /// User name (empty when anonymous).
    pub user: String,
    /// Client id (`_other` past the first 1000 clients).
    pub client: String,
}

/// Label: HTTP status class.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    pub class: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0])
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Metrics::empty();
        // Series that exist from the start read 0 instead of missing (queries and alerts on absent series are
        // error-prone).
        for reason in RejectReason::ALL {
            drop(metrics.connections_rejected.get_or_create(&ReasonLabel { reason }));
        }
        for outcome in ConflictOutcome::ALL {
            drop(metrics.identity_conflicts.get_or_create(&ConflictLabel { outcome }));
        }
        for reason in IdentityRefusal::ALL {
            drop(metrics.identities_refused.get_or_create(&RefusalLabel { reason }));
        }
        // The names of `tls::HandshakeFailure` (tls sits on this module's layer, so they are written out).
        for reason in ["timeout", "no_certificate", "bad_certificate", "protocol", "io"] {
            drop(metrics.meter_tls_handshake_failures.get_or_create(&HandshakeLabel { reason: reason.to_owned() }));
        }
        for plane in ["mqtt", "http"] {
            drop(metrics.auth_failures.get_or_create(&PlaneLabel { plane: plane.to_owned() }));
            drop(metrics.auth_throttled.get_or_create(&PlaneLabel { plane: plane.to_owned() }));
        }
        for reason in ["telemetry", "snapshot", "event"] {
            drop(metrics.outbox_dropped.get_or_create(&ReasonText { reason: reason.to_owned() }));
        }
        for kind in ["dlt645_garbage", "dlms_unmatched", "invalid_meter_id"] {
            drop(metrics.parse_errors.get_or_create(&KindLabel { kind: kind.to_owned() }));
        }
        metrics
    }
}

impl Metrics {
    fn empty() -> Self {
        Metrics {
            meters_online: Gauge::default(),
            meters_total: Gauge::default(),
            connections_active: Gauge::default(),
            connections_total: Counter::default(),
            connections_rejected: Family::default(),
            connections_unknown_protocol: Counter::default(),
            connections_unidentified: Counter::default(),
            identity_conflicts: Family::default(),
            identities_refused: Family::default(),
            secrets_withheld: Counter::default(),
            meter_tls_handshakes: Counter::default(),
            meter_tls_handshake_failures: Family::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            frames: Family::default(),
            readings: Counter::default(),
            dlms_capture_time_skewed: Counter::default(),
            parse_errors: Family::default(),
            commands: Family::default(),
            command_duration: Family::new_with_constructor(latency_histogram),
            polls: Family::default(),
            poll_duration: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            mqtt_published: Counter::default(),
            mqtt_dropped: Counter::default(),
            mqtt_denied: Counter::default(),
            invalid_commands: Counter::default(),
            alarms_active: Gauge::default(),
            hub_dropped: Gauge::default(),
            http_requests: Family::default(),
            http_rate_limited: Counter::default(),
            http_csp_reports: Counter::default(),
            http_sessions: Gauge::default(),
            http_stream_clients: Gauge::default(),
            http_connections_active: Gauge::default(),
            http_connections_refused: Counter::default(),
            http_csrf_refused: Family::default(),
            auth_failures: Family::default(),
            auth_throttled: Family::default(),
            mqtt_wills_refused: Counter::default(),
            mqtt_sessions_refused: Counter::default(),
            mqtt_connections_refused: Counter::default(),
            mqtt_session_dropped: Family::default(),
            store_dropped: Counter::default(),
            store_written: Counter::default(),
            store_queue: Gauge::default(),
            store_bytes: Gauge::default(),
            outbox_depth: Gauge::default(),
            outbox_oldest_age_seconds: Gauge::default(),
            outbox_dropped: Family::default(),
            upstream_connected: Gauge::default(),
            upstream_reconnects: Counter::default(),
            upstream_published: Counter::default(),
            upstream_acked: Counter::default(),
        }
    }
}

impl Metrics {
    /// Counts a frame of `protocol`.
    pub fn frame(&self, protocol: &str) {
        self.frames.get_or_create(&ProtocolLabel { protocol: protocol.to_owned() }).inc();
    }

    /// Counts a parse error of `kind`.
    pub fn parse_error(&self, kind: &str) {
        self.parse_errors.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
    }

    /// Counts a refused connection.
    pub fn rejected(&self, reason: RejectReason) {
        self.connections_rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a contest for a meter id.
    pub fn identity_conflict(&self, outcome: ConflictOutcome) {
        self.identity_conflicts.get_or_create(&ConflictLabel { outcome }).inc();
    }

    /// Contests for a meter id that ended with `outcome` since start.
    pub fn identity_conflicts(&self, outcome: ConflictOutcome) -> u64 {
        self.identity_conflicts.get_or_create(&ConflictLabel { outcome }).get()
    }

    /// Counts a refused identification.
    pub fn identity_refused(&self, reason: IdentityRefusal) {
        self.identities_refused.get_or_create(&RefusalLabel { reason }).inc();
    }

    /// Identifications refused for `reason` since start.
    pub fn identities_refused(&self, reason: IdentityRefusal) -> u64 {
        self.identities_refused.get_or_create(&RefusalLabel { reason }).get()
    }

    /// Counts a failed TLS handshake on the meter port (`reason`: a `tls::HandshakeFailure` name).
    pub fn meter_tls_failed(&self, reason: &str) {
        self.meter_tls_handshake_failures.get_or_create(&HandshakeLabel { reason: reason.to_owned() }).inc();
    }

    /// Failed TLS handshakes on the meter port for `reason` since start.
    pub fn meter_tls_failures(&self, reason: &str) -> u64 {
        self.meter_tls_handshake_failures.get_or_create(&HandshakeLabel { reason: reason.to_owned() }).get()
    }

    /// Records a finished command.
    pub fn command(&self, method: &str, outcome: &str, seconds: f64) {
        self.commands.get_or_create(&CommandLabel { method: method.to_owned(), outcome: outcome.to_owned() }).inc();
        self.command_duration.get_or_create(&MethodLabel { method: method.to_owned() }).observe(seconds);
    }

    /// Records a poll cycle.
    pub fn poll(&self, outcome: PollOutcome, seconds: f64) {
        self.polls.get_or_create(&OutcomeLabel { outcome }).inc();
        self.poll_duration.observe(seconds);
    }

    /// Poll cycles that ended with `outcome` since start.
    pub fn poll_cycles(&self, outcome: PollOutcome) -> u64 {
        self.polls.get_or_create(&OutcomeLabel { outcome }).get()
    }

    /// Counts an HTTP response.
    pub fn http_request(&self, status: u16) {
        let class = format!("{}xx", status / 100);
        self.http_requests.get_or_create(&StatusLabel { class }).inc();
    }

    /// Every metric, registered for the OpenMetrics text encoding.
    pub fn exposition(self: &std::sync::Arc<Self>) -> Exposition {
        let mut r = Exposition::with_prefix("ivy");
        let m = self.as_ref();
        r.register("meters_online", "Meters online now", m.meters_online.clone());
        r.register("meters_total", "Meters seen since start", m.meters_total.clone());
        r.register("connections_active", "Meter connections open now", m.connections_active.clone());
        r.register("connections", "Meter connections accepted", m.connections_total.clone());
        r.register("connections_rejected", "Meter connections refused, by reason", m.connections_rejected.clone());
        r.register(
            "connections_unknown_protocol",
            "Connections whose protocol could not be detected",
            m.connections_unknown_protocol.clone(),
        );
        r.register(
            "connections_unidentified",
            "Meter connections that ended without identifying a meter",
            m.connections_unidentified.clone(),
        );
        r.register("identity_conflicts", "Contests for an online meter id, by outcome", m.identity_conflicts.clone());
        r.register(
            "identities_refused",
            "Meter identifications refused without a contest, by reason",
            m.identities_refused.clone(),
        );
        r.register(
            "secrets_withheld",
            "Commands refused because the meter's identity was contested recently",
            m.secrets_withheld.clone(),
        );
        r.register(
            "meter_tls_handshakes",
            "TLS handshakes completed on the meter port",
            m.meter_tls_handshakes.clone(),
        );
        r.register(
            "meter_tls_handshake_failures",
            "TLS handshakes on the meter port that failed, by reason",
            m.meter_tls_handshake_failures.clone(),
        );
        r.register("bytes_received", "Bytes received from meters", m.bytes_received.clone());
        r.register("bytes_sent", "Bytes sent to meters", m.bytes_sent.clone());
        r.register("frames", "Frames and APDUs received, by protocol", m.frames.clone());
        r.register("readings", "Readings decoded", m.readings.clone());
        r.register(
            "dlms_capture_time_skewed",
            "DLMS pushes whose capture time was far from the gateway clock",
            m.dlms_capture_time_skewed.clone(),
        );
        r.register("parse_errors", "Parse errors and discarded bytes, by kind", m.parse_errors.clone());
        r.register("commands", "Commands by method and outcome", m.commands.clone());
        r.register("command_duration_seconds", "Command latency", m.command_duration.clone());
        r.register("polls", "Poll cycles by outcome", m.polls.clone());
        r.register("poll_cycle_duration_seconds", "Poll cycle duration", m.poll_duration.clone());
        r.register("mqtt_published", "MQTT messages published by the gateway", m.mqtt_published.clone());
        r.register("mqtt_dropped", "MQTT messages dropped because a queue was full", m.mqtt_dropped.clone());
        r.register("mqtt_denied", "Client publishes refused by the ACL", m.mqtt_denied.clone());
        r.register("invalid_commands", "Command payloads that could not be used", m.invalid_commands.clone());
        r.register("alarms_active", "Alarms active now", m.alarms_active.clone());
        r.register("hub_dropped", "Events dropped by slow hub sinks", m.hub_dropped.clone());
        r.register("http_requests", "HTTP responses by status class", m.http_requests.clone());
        r.register("http_rate_limited", "HTTP requests refused by the per-IP rate limit", m.http_rate_limited.clone());
        r.register("http_csp_reports", "CSP violations reported by browsers", m.http_csp_reports.clone());
        r.register("http_sessions", "Dashboard and API sessions open now", m.http_sessions.clone());
        r.register("http_stream_clients", "Live-stream clients connected now", m.http_stream_clients.clone());
        r.register("http_connections_active", "HTTP connections open now", m.http_connections_active.clone());
        r.register(
            "http_connections_refused",
            "HTTP connections closed at accept because http.max_connections were open",
            m.http_connections_refused.clone(),
        );
        r.register(
            "http_csrf_refused",
            "State-changing HTTP requests refused by the cross-site checks, by reason",
            m.http_csrf_refused.clone(),
        );
        r.register("auth_failures", "Failed logins, by plane", m.auth_failures.clone());
        r.register("auth_throttled", "Logins refused unchecked by the failed-login throttle", m.auth_throttled.clone());
        r.register("mqtt_wills_refused", "MQTT connections refused: will fails the ACL", m.mqtt_wills_refused.clone());
        r.register(
            "mqtt_sessions_refused",
            "MQTT connections refused by the per-user session cap",
            m.mqtt_sessions_refused.clone(),
        );
        r.register(
            "mqtt_connections_refused",
            "MQTT connections closed at accept: their listener had max_connections open",
            m.mqtt_connections_refused.clone(),
        );
        r.register(
            "mqtt_session_dropped",
            "Messages dropped because a subscriber's queue was full, by user and client",
            m.mqtt_session_dropped.clone(),
        );
        r.register("store_dropped", "Readings not stored (writer queue full or batch failed)", m.store_dropped.clone());
        r.register("store_written", "Readings written to the store", m.store_written.clone());
        r.register("store_queue", "Hub events waiting for the store writer", m.store_queue.clone());
        r.register("store_bytes", "Bytes of live data in the store", m.store_bytes.clone());
        r.register("outbox_depth", "Messages in the upstream outbox waiting for PUBACK", m.outbox_depth.clone());
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest message in the upstream outbox",
            m.outbox_oldest_age_seconds.clone(),
        );
        r.register("outbox_dropped", "Messages dropped from the full outbox, by class", m.outbox_dropped.clone());
        r.register("upstream_connected", "Connected to the upstream broker (0/1)", m.upstream_connected.clone());
        r.register(
            "upstream_reconnects",
            "Upstream connections lost and connection attempts that failed",
            m.upstream_reconnects.clone(),
        );
        r.register("upstream_published", "Messages published upstream", m.upstream_published.clone());
        r.register("upstream_acked", "Upstream messages acknowledged by the broker", m.upstream_acked.clone());
        r
    }

    /// The metrics in the OpenMetrics text format (which Prometheus scrapes).
    pub fn encode(self: &std::sync::Arc<Self>) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.exposition());
        out
    }
}
