//! What every session has, whatever the protocol: the socket, the request queue, the meters it holds, liveness,
//! and the identification/cleanup steps that publish status transitions exactly once.

use super::context::MeterContext;
use super::registry::{MeterInfo, Registered};
use super::{QueuedRequest, SessionHandle};
use crate::config::ZeroAddressAction;
use crate::error::{ErrorCode, OpError};
use crate::hub::HubEvent;
use crate::model::{MeterEvent, Severity, Source, StatusChange, now_ms};
use ivy_protocol::registration::{MeterId, Registration, ZeroAddressPolicy};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// The meter closed the connection.
    PeerClosed,
    /// Reading or writing failed.
    IoError(String),
    /// No bytes from the meter for the idle timeout.
    IdleTimeout,
    /// The meter reconnected on another connection.
    Replaced,
    /// The gateway is shutting down.
    Shutdown,
    /// The meter sent more than the buffer cap without a frame.
    BufferOverflow,
    /// The protocol could not be detected in time.
    DetectionFailed,
    /// The identification was refused (invalid id).
    Rejected(String),
}

impl EndReason {
    /// The `reason` of the offline status.
    pub(crate) fn as_str(&self) -> String {
        match self {
            EndReason::PeerClosed => "connection_closed".into(),
            EndReason::IoError(e) => format!("io_error: {e}"),
            EndReason::IdleTimeout => "idle_timeout".into(),
            EndReason::Replaced => "replaced".into(),
            EndReason::Shutdown => "gateway_shutdown".into(),
            EndReason::BufferOverflow => "buffer_overflow".into(),
            EndReason::DetectionFailed => "protocol_not_detected".into(),
            EndReason::Rejected(r) => format!("rejected: {r}"),
        }
    }
}

/// Result of one read.
#[derive(Debug)]
pub(crate) enum ReadOutcome {
    /// Bytes arrived (in [`Conn::input`]).
    Data,
    /// The session must end.
    End(EndReason),
}

/// The connection half of a session.
pub(crate) struct Conn {
    /// What every session shares.
    pub ctx: Arc<MeterContext>,
    /// Connection id (unique per process).
    pub conn_id: u64,
    /// The peer.
    pub peer: SocketAddr,
    stream: TcpStream,
    /// The last bytes read.
    pub input: Vec<u8>,
    /// Handle given to the registry for the meters this connection holds.
    pub handle: SessionHandle,
    close: CancellationToken,
    /// Meters identified on this connection, in order.
    pub meters: Vec<MeterId>,
    /// When the meter last sent bytes.
    pub last_rx: Instant,
    /// Protocol family once known.
    pub protocol: Option<Source>,
}

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 4096;

impl Conn {
    /// Wraps an accepted socket; also returns the receiving end of the session's request queue (kept apart so the
    /// session can wait on the socket and the queue at the same time).
    pub(crate) fn new(
        ctx: Arc<MeterContext>,
        conn_id: u64,
        peer: SocketAddr,
        stream: TcpStream,
    ) -> (Self, mpsc::Receiver<QueuedRequest>) {
        let (handle, requests, close) = SessionHandle::new(conn_id, ctx.config.commands.queue_depth);
        let conn = Conn {
            ctx,
            conn_id,
            peer,
            stream,
            input: Vec::new(),
            handle,
            close,
            meters: Vec::new(),
            last_rx: Instant::now(),
            protocol: None,
        };
        (conn, requests)
    }

    /// When the idle timeout fires.
    pub(crate) fn idle_deadline(&self) -> Instant {
        self.last_rx + Duration::from_secs(self.ctx.config.meters.idle_timeout_secs)
    }

    /// Completes when the session is told to close (replaced or shutdown); gives the reason.
    pub(crate) async fn closed(&self) -> EndReason {
        tokio::select! {
            _ = self.close.cancelled() => {
                if self.handle.was_replaced() { EndReason::Replaced } else { EndReason::Shutdown }
            }
            _ = self.ctx.shutdown.cancelled() => EndReason::Shutdown,
        }
    }

    /// Reads the next bytes into [`Conn::input`], or says why the session must end (closed, idle, shutdown).
    pub(crate) async fn read(&mut self) -> ReadOutcome {
        // A waiting connection holds no read buffer: most of a fleet waits most of the time, and 4 KiB per meter
        // was a third of the gateway's memory with 19,000 meters connected.
        self.input = Vec::new();
        let idle = self.idle_deadline();
        let close = self.close.clone();
        let shutdown = self.ctx.shutdown.clone();
        let replaced = self.handle.clone();
        loop {
            tokio::select! {
                r = self.stream.readable() => {
                    if let Err(e) = r {
                        return ReadOutcome::End(EndReason::IoError(e.kind().to_string()));
                    }
                    let mut buf = Vec::with_capacity(READ_CHUNK);
                    match self.stream.try_read_buf(&mut buf) {
                        Ok(0) => return ReadOutcome::End(EndReason::PeerClosed),
                        Ok(n) => {
                            self.input = buf;
                            self.last_rx = Instant::now();
                            self.ctx.metrics.bytes_received.inc_by(n as u64);
                            return ReadOutcome::Data;
                        }
                        // Readiness can be spurious.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return ReadOutcome::End(EndReason::IoError(e.kind().to_string())),
                    }
                },
                _ = tokio::time::sleep_until(idle) => return ReadOutcome::End(EndReason::IdleTimeout),
                _ = close.cancelled() => {
                    return ReadOutcome::End(if replaced.was_replaced() { EndReason::Replaced } else { EndReason::Shutdown });
                }
                _ = shutdown.cancelled() => return ReadOutcome::End(EndReason::Shutdown),
            }
        }
    }

    /// Sends bytes to the meter (bounded by a write timeout so a meter that stops reading cannot wedge us).
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), EndReason> {
        let timeout = Duration::from_secs(10);
        match tokio::time::timeout(timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => {
                self.ctx.metrics.bytes_sent.inc_by(bytes.len() as u64);
                Ok(())
            }
            Ok(Err(e)) => Err(EndReason::IoError(e.kind().to_string())),
            Err(_) => Err(EndReason::IoError("write timed out".into())),
        }
    }

    /// Records that this connection speaks for `meter_id`: registers it, closes a previous connection of the
    /// same meter, and publishes the status/events of the transition exactly once. Returns false when this
    /// connection already held it (a liveness refresh).
    pub(crate) fn identify(&mut self, meter_id: &MeterId, protocol: Source) -> bool {
        self.protocol = Some(protocol);
        let connected_at = now_ms();
        let info = MeterInfo { protocol, ip: self.peer.ip().to_string(), port: self.peer.port(), connected_at };
        let outcome = self.ctx.registry.register(meter_id, self.handle.clone(), info);
        if !self.meters.contains(meter_id) {
            self.meters.push(meter_id.clone());
        }
        let ts = now_ms();
        match outcome {
            Registered::Refreshed => return false,
            Registered::New => {
                tracing::info!(meter = %meter_id, peer = %self.peer, protocol = protocol.as_str(), "meter online");
                self.ctx.metrics.meters_total.set(self.ctx.registry.seen_total() as i64);
                self.ctx.hub.publish(HubEvent::Status(StatusChange {
                    meter_id: meter_id.clone(),
                    online: true,
                    ip: Some(self.peer.ip().to_string()),
                    protocol: Some(protocol),
                    connected_at: Some(connected_at),
                    reason: None,
                    ts,
                }));
                self.ctx.hub.publish(HubEvent::Event(MeterEvent {
                    meter_id: meter_id.clone(),
                    event: "meter_connected".into(),
                    severity: Some(Severity::Info),
                    data: json!({"ip": self.peer.ip().to_string(), "port": self.peer.port(), "protocol": protocol.as_str()}),
                    ts,
                }));
            }
            Registered::Replaced(old) => {
                tracing::info!(meter = %meter_id, peer = %self.peer, old_conn = old.conn_id(), "meter reconnected; closing its previous connection");
                old.close_replaced();
                self.ctx.hub.publish(HubEvent::Event(MeterEvent {
                    meter_id: meter_id.clone(),
                    event: "meter_reconnected".into(),
                    severity: Some(Severity::Info),
                    data: json!({"ip": self.peer.ip().to_string(), "port": self.peer.port(), "protocol": protocol.as_str()}),
                    ts,
                }));
            }
        }
        self.ctx.metrics.meters_online.set(self.ctx.registry.len() as i64);
        true
    }

    /// Applies a registration packet: validates the id (it becomes a topic segment), identifies the meter and
    /// sends the rule's acknowledgement. An invalid id ends the connection; nothing is published under it.
    pub(crate) async fn apply_registration(
        &mut self,
        registration: &Registration,
        protocol: Source,
    ) -> Result<(), EndReason> {
        let policy = match self.ctx.config.meters.zero_address_action {
            ZeroAddressAction::Accept => ZeroAddressPolicy::Accept,
            ZeroAddressAction::UseIp => ZeroAddressPolicy::UseIp,
        };
        let ip = self.peer.ip().to_string();
        let meter_id = match registration.meter_id(policy, Some((&ip, self.peer.port()))) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(peer = %self.peer, id = ?registration.raw_id, error = %e, "registration packet with an invalid meter id; closing");
                self.ctx.metrics.parse_error("invalid_meter_id");
                return Err(EndReason::Rejected(e.to_string()));
            }
        };
        self.identify(&meter_id, protocol);
        if let Some(ack) = &registration.ack {
            self.send(ack).await?;
        }
        Ok(())
    }

    /// Whether this connection still holds `meter_id` (it may have been replaced).
    pub(crate) fn holds(&self, meter_id: &MeterId) -> bool {
        self.ctx.registry.is_held_by(meter_id, self.conn_id)
    }

    /// Ends the session: fails queued requests with `connection_closed`, unregisters the meters this connection
    /// still holds and publishes their offline status once.
    pub(crate) async fn finish(mut self, reason: EndReason, mut requests: mpsc::Receiver<QueuedRequest>) {
        requests.close();
        while let Ok(request) = requests.try_recv() {
            let _ = request.reply.send(Err(OpError::new(ErrorCode::ConnectionClosed, "the meter's connection closed")));
        }
        let _ = self.stream.shutdown().await;
        let ts = now_ms();
        for meter_id in &self.meters {
            if !self.ctx.registry.unregister(meter_id, self.conn_id) {
                continue;
            }
            tracing::info!(meter = %meter_id, peer = %self.peer, reason = %reason.as_str(), "meter offline");
            self.ctx.hub.publish(HubEvent::Status(StatusChange {
                meter_id: meter_id.clone(),
                online: false,
                ip: None,
                protocol: self.protocol,
                connected_at: None,
                reason: Some(reason.as_str()),
                ts,
            }));
            self.ctx.hub.publish(HubEvent::Event(MeterEvent {
                meter_id: meter_id.clone(),
                event: "meter_disconnected".into(),
                severity: Some(Severity::Info),
                data: json!({"reason": reason.as_str()}),
                ts,
            }));
        }
        self.ctx.metrics.meters_online.set(self.ctx.registry.len() as i64);
    }
}
