//! The gateway's figures: uptime, meters, connections, MQTT, polling, readings, hub and memory. One payload serves
//! the retained-free `gateway/stats` topic (every `stats_interval_secs`) and `GET /api/stats`.

use crate::config::Config;
use crate::hub::Hub;
use crate::meters::registry::Registry;
use crate::metrics::{Metrics, PollOutcome, ReasonLabel, RejectReason};
use crate::model::now_ms;
use crate::mqtt::outbox::UpstreamShared;
use crate::mqtt::topics::TopicPrefix;
use crate::mqtt::{BrokerCounters, OutboundMessage, Publisher, Qos};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Read-only handles on what the figures are computed from.
#[derive(Debug, Clone)]
pub struct Stats {
    config: Arc<Config>,
    registry: Arc<Registry>,
    hub: Hub,
    metrics: Arc<Metrics>,
    broker: Arc<BrokerCounters>,
    started: Instant,
    upstream: Option<UpstreamShared>,
}

impl Stats {
    /// Figures over these handles; the gateway started at `started`.
    pub fn new(
        config: Arc<Config>,
        registry: Arc<Registry>,
        hub: Hub,
        metrics: Arc<Metrics>,
        broker: Arc<BrokerCounters>,
        started: Instant,
    ) -> Self {
        Stats { config, registry, hub, metrics, broker, started, upstream: None }
    }

    /// Adds the figures of the upstream client and its outbox.
    pub fn with_upstream(mut self, upstream: UpstreamShared) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// The upstream client's and the outbox's handles, when upstream MQTT is on.
    pub fn upstream(&self) -> Option<&UpstreamShared> {
        self.upstream.as_ref()
    }

    /// The `outbox` figures: `{queued, dropped, oldestAgeSecs}` (all 0 without upstream MQTT), plus `bytes` and
    /// `droppedByClass`.
    pub fn outbox(&self) -> Value {
        let f = self.upstream.as_ref().map(|u| u.outbox.figures(now_ms())).unwrap_or_default();
        json!({
            "queued": f.queued,
            "dropped": f.dropped,
            "oldestAgeSecs": f.oldest_age_secs,
            "bytes": f.bytes,
            "droppedByClass": {
                "telemetry": f.dropped_by_class[0],
                "snapshot": f.dropped_by_class[1],
                "event": f.dropped_by_class[2],
            },
        })
    }

    /// The `upstream` figures (`null` without upstream MQTT).
    pub fn upstream_figures(&self) -> Value {
        let Some(u) = &self.upstream else { return Value::Null };
        let c = &u.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        json!({
            "connected": c.connected.load(std::sync::atomic::Ordering::Relaxed),
            "reconnects": load(&c.reconnects),
            "published": load(&c.published),
            "acked": load(&c.acked),
            "refused": load(&c.refused),
            "superseded": load(&c.superseded),
            "commands": load(&c.commands),
            "dropped": load(&c.dropped),
        })
    }

    /// Seconds since start.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// When the gateway started (ms since epoch).
    pub fn started_at_ms(&self) -> u64 {
        now_ms().saturating_sub(self.started.elapsed().as_millis() as u64)
    }

    /// Meters online now and meters seen since start.
    pub fn meters(&self) -> Value {
        json!({"online": self.registry.len(), "total": self.registry.seen_total()})
    }

    /// The `gateway/stats` payload (docs/MQTT.md).
    pub fn payload(&self) -> Value {
        let m = &self.metrics;
        let broker = self.broker.snapshot();
        let rejected: u64 = RejectReason::ALL
            .iter()
            .map(|r| m.connections_rejected.get_or_create(&ReasonLabel { reason: *r }).get())
            .sum();
        let poll_cycles: u64 = PollOutcome::ALL.iter().map(|o| m.poll_cycles(*o)).sum();
        json!({
            "ts": now_ms(),
            "uptime": self.uptime_secs(),
            "version": env!("CARGO_PKG_VERSION"),
            "meters": self.meters(),
            "connections": {
                "active": m.connections_active.get(),
                "total": m.connections_total.get(),
                "rejected": rejected,
                "unknownProtocol": m.connections_unknown_protocol.get(),
            },
            "mqtt": {
                "clients": broker.clients,
                "published": broker.published,
                "dropped": broker.dropped,
                "denied": broker.denied_publishes,
                "sessionDropped": broker.session_dropped,
            },
            "polling": {
                "enabled": self.config.polling.enabled,
                "intervalMs": self.config.polling.interval_ms,
                "group": self.config.polling.group,
                "cycles": poll_cycles,
            },
            "readings": m.readings.get(),
            "alarms": {"active": m.alarms_active.get()},
            "outbox": self.outbox(),
            "upstream": self.upstream_figures(),
            "hub": {
                "dropped": self.hub.dropped(),
                "readings": self.hub.published_readings(),
                "sinks": self.hub.stats().iter().map(|s| (s.name.to_owned(), json!({
                    "delivered": s.delivered, "dropped": s.dropped, "droppedReadings": s.dropped_readings,
                    "reserved": s.reserved,
                }))).collect::<Map<String, Value>>(),
            },
            "memory": {"rss": rss_bytes()},
        })
    }

    /// Publishes the payload to `gateway/stats` every `stats_interval_secs` until `shutdown`.
    pub async fn publish_loop(self, publisher: Publisher, prefix: TopicPrefix, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.gateway.stats_interval_secs.max(1)));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let _ = publisher.try_publish(OutboundMessage::json(
                prefix.gateway_stats(),
                &self.payload(),
                Qos::AtMostOnce,
                false,
            ));
        }
    }
}

/// Resident memory in bytes (Linux), for the stats.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
