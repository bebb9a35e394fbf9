//! What every session has, whatever the protocol: the socket, the request queue, the meters it holds, liveness,
//! and the identification/cleanup steps that publish status transitions exactly once.

use super::context::MeterContext;
use super::registry::{Claim, MeterInfo};
use super::transport::MeterStream;
use super::{CloseCause, MeterOp, QueuedRequest, SessionHandle, SessionRequest};
use crate::config::{DuplicateIdentity, ZeroAddressAction};
use crate::error::{ErrorCode, OpError};
use crate::hub::HubEvent;
use crate::lock::lock;
use crate::metrics::{ConflictOutcome, IdentityRefusal};
use crate::model::{MeterEvent, Severity, Source, StatusChange, now_ms};
use ivy_protocol::registration::{MeterId, Registration, ZeroAddressPolicy};
use serde_json::json;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
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
    /// The connection claimed a meter id it may not have (see [`Refusal`]).
    IdentityRefused(Refusal),
    /// Still unidentified when its source IP, penalised for misbehaving, opened a newer connection.
    Evicted,
}

/// Why a connection may not speak for a meter id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Another connection holds the id and kept it (it answered the probe, or the policy is `oldest_wins`).
    Contested,
    /// The connection already holds `meters.max_ids_per_connection` ids.
    TooManyIds,
    /// The source IP registered too many new ids in the last minute.
    NewIdRate,
    /// The id may not identify from this source address (`meters.allowed_sources_by_meter`).
    SourceNotAllowed,
    /// The connection's client certificate (TLS meter port) does not name the id.
    CertificateMismatch,
}

impl Refusal {
    /// The snake_case name.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Refusal::Contested => "contested",
            Refusal::TooManyIds => "too_many_ids",
            Refusal::NewIdRate => "new_id_rate",
            Refusal::SourceNotAllowed => "source_not_allowed",
            Refusal::CertificateMismatch => "certificate_mismatch",
        }
    }
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
            EndReason::IdentityRefused(r) => format!("identity_refused: {}", r.as_str()),
            EndReason::Evicted => "evicted_unidentified".into(),
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

/// Ids a connection looks up by scanning its list before it builds a set.
const LINEAR_LOOKUP: usize = 16;

/// The connection half of a session.
pub(crate) struct Conn {
    /// What every session shares.
    pub ctx: Arc<MeterContext>,
    /// Connection id (unique per process).
    pub conn_id: u64,
    /// The peer.
    pub peer: SocketAddr,
    stream: MeterStream,
    /// The meter ids this connection's client certificate names (TLS meter port); `None` on plain TCP, where
    /// nothing proves an id.
    certified: Option<Vec<String>>,
    /// The last bytes read.
    pub input: Vec<u8>,
    /// Handle given to the registry for the meters this connection holds.
    pub handle: SessionHandle,
    close: CancellationToken,
    /// Meters identified on this connection, in order.
    pub meters: Vec<MeterId>,
    /// The same ids for lookups, built only once a connection holds more than [`LINEAR_LOOKUP`] (a DTU with many
    /// meters behind it): almost every connection holds one meter, and an empty-but-used set kept ~150 bytes per
    /// connection of the 19,000 held.
    known: Option<HashSet<MeterId>>,
    /// When the meter last sent bytes.
    pub last_rx: Instant,
    /// Protocol family once known.
    pub protocol: Option<Source>,
    /// Ids claimed on this connection that its client certificate does not name.
    certificate_mismatches: usize,
}

/// What the probe of a contested id's holder found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeResult {
    /// The holder answered or sent bytes within the window.
    Answered,
    /// Nothing from the holder within the window.
    Silent,
    /// The policy decides without a probe.
    NotProbed,
    /// A client certificate decided: a connection whose certificate names the id wins over one without.
    Certificate,
}

impl ProbeResult {
    fn as_str(&self) -> &'static str {
        match self {
            ProbeResult::Answered => "answered",
            ProbeResult::Silent => "silent",
            ProbeResult::NotProbed => "not_probed",
            ProbeResult::Certificate => "certificate",
        }
    }
}

impl Conn {
    /// Wraps an accepted connection whose session `handle` (with its `close` token) the session created; the
    /// receiving end of the request queue stays with the session (so it can wait on the socket and the queue at
    /// the same time). `certified`: the meter ids its client certificate names (TLS), `None` on plain TCP.
    pub(crate) fn new(
        ctx: Arc<MeterContext>,
        peer: SocketAddr,
        stream: MeterStream,
        certified: Option<Vec<String>>,
        handle: SessionHandle,
        close: CancellationToken,
    ) -> Self {
        Conn {
            ctx,
            conn_id: handle.conn_id(),
            peer,
            stream,
            certified,
            input: Vec::new(),
            handle,
            close,
            meters: Vec::new(),
            known: None,
            last_rx: Instant::now(),
            protocol: None,
            certificate_mismatches: 0,
        }
    }

    /// Whether this connection claimed more ids its certificate does not name than a connection may hold: a
    /// DL/T 645 DTU that does is closed rather than heard out address by address.
    pub(crate) fn too_many_certificate_mismatches(&self) -> bool {
        self.certificate_mismatches > self.ctx.config.meters.max_ids_per_connection.get()
    }

    /// When the idle timeout fires.
    pub(crate) fn idle_deadline(&self) -> Instant {
        self.last_rx + Duration::from_secs(self.ctx.config.meters.idle_timeout_secs)
    }

    /// Completes when the session is told to close (replaced or shutdown); gives the reason.
    pub(crate) async fn closed(&self) -> EndReason {
        tokio::select! {
            _ = self.close.cancelled() => self.close_reason(),
            _ = self.ctx.shutdown.cancelled() => EndReason::Shutdown,
        }
    }

    /// Why someone else told this session to close.
    fn close_reason(&self) -> EndReason {
        match self.handle.close_cause() {
            CloseCause::Replaced => EndReason::Replaced,
            CloseCause::Evicted => EndReason::Evicted,
            CloseCause::Shutdown => EndReason::Shutdown,
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
        tokio::select! {
            r = self.stream.read_some() => match r {
                Ok(buf) if buf.is_empty() => ReadOutcome::End(EndReason::PeerClosed),
                Ok(buf) => {
                    self.ctx.metrics.bytes_received.inc_by(buf.len() as u64);
                    self.input = buf;
                    self.last_rx = Instant::now();
                    self.handle.note_read();
                    ReadOutcome::Data
                }
                Err(e) => ReadOutcome::End(EndReason::IoError(e.kind().to_string())),
            },
            _ = tokio::time::sleep_until(idle) => ReadOutcome::End(EndReason::IdleTimeout),
            _ = close.cancelled() => ReadOutcome::End(self.close_reason()),
            _ = shutdown.cancelled() => ReadOutcome::End(EndReason::Shutdown),
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

    /// Records that this connection speaks for `meter_id`: checks the identity limits, settles a contest with
    /// the connection that holds the id (`meters.duplicate_identity`), registers it, closes a replaced connection,
    /// and publishes the status/events of the transition exactly once. `Ok(false)` when this connection already
    /// held it (a liveness refresh); a refusal changes nothing for the id (the caller decides whether the
    /// connection ends).
    pub(crate) async fn identify(&mut self, meter_id: &MeterId, protocol: Source) -> Result<bool, Refusal> {
        let ip = self.peer.ip();
        let m = &self.ctx.config.meters;
        if let Some(names) = &self.certified
            && !names.iter().any(|n| n == meter_id.as_str())
        {
            self.refuse_uncertified(meter_id, names);
            self.certificate_mismatches += 1;
            return Err(Refusal::CertificateMismatch);
        }
        let refusal = if !self.identified_here(meter_id) && self.meters.len() >= m.max_ids_per_connection.get() {
            Some((Refusal::TooManyIds, IdentityRefusal::TooManyIds))
        } else if !self.ctx.meter_source_allowed(meter_id.as_str(), ip) {
            Some((Refusal::SourceNotAllowed, IdentityRefusal::SourceNotAllowed))
        } else if self.ctx.registry.get(meter_id).is_none()
            && !lock(&self.ctx.admission).allow_new_id(ip, std::time::Instant::now())
        {
            Some((Refusal::NewIdRate, IdentityRefusal::NewIdRate))
        } else {
            None
        };
        if let Some((refusal, counted)) = refusal {
            self.ctx.metrics.identity_refused(counted);
            if lock(&self.ctx.admission).should_log(ip, std::time::Instant::now()) {
                tracing::warn!(meter = %meter_id, peer = %self.peer, reason = refusal.as_str(), "meter identification refused (logged once per IP per minute)");
            }
            return Err(refusal);
        }
        self.protocol = Some(protocol);
        let connected_at = now_ms();
        let certified = self.certified.is_some();
        let info = MeterInfo { protocol, ip: ip.to_string(), port: self.peer.port(), connected_at, certified };
        let ts = now_ms();
        match self.ctx.registry.claim(meter_id, self.handle.clone(), info.clone()) {
            Claim::Refreshed => {
                self.note_held(meter_id);
                return Ok(false);
            }
            Claim::New => {
                tracing::info!(meter = %meter_id, peer = %self.peer, protocol = protocol.as_str(), "meter online");
                self.ctx.metrics.meters_total.set(self.ctx.registry.seen_total() as i64);
                self.publish_online(meter_id, protocol, connected_at, ts);
                self.ctx.hub.publish(HubEvent::Event(MeterEvent {
                    meter_id: meter_id.clone(),
                    event: "meter_connected".into(),
                    severity: Some(Severity::Info),
                    data: json!({"ip": ip.to_string(), "port": self.peer.port(), "protocol": protocol.as_str()}),
                    ts,
                }));
            }
            Claim::Replaced(old) => {
                // The previous connection's session had already ended: an ordinary reconnect, nothing contested.
                tracing::info!(meter = %meter_id, peer = %self.peer, old_conn = old.conn_id(), "meter reconnected");
                old.close_replaced();
                self.publish_reconnected(meter_id, protocol, connected_at, ts);
            }
            Claim::Held(holder, holder_info) => {
                let policy = m.duplicate_identity;
                // A certificate proves the id and a plain connection proves nothing: where exactly one side has
                // one, it decides (an impostor that got in first over plain TCP cannot keep out the real meter,
                // and cannot take an id a certified meter holds). Otherwise the policy decides.
                let probe = if holder_info.certified != certified {
                    ProbeResult::Certificate
                } else {
                    match policy {
                        DuplicateIdentity::NewestWins => ProbeResult::NotProbed,
                        DuplicateIdentity::OldestWins => ProbeResult::NotProbed,
                        DuplicateIdentity::Probe => self.probe(&holder, meter_id).await,
                    }
                };
                let holder_keeps = match (probe, policy) {
                    (ProbeResult::Certificate, _) => holder_info.certified,
                    (_, DuplicateIdentity::NewestWins) => false,
                    (_, DuplicateIdentity::OldestWins) => true,
                    (_, DuplicateIdentity::Probe) => probe == ProbeResult::Answered,
                };
                let taken = if holder_keeps {
                    None
                } else {
                    self.ctx.registry.take_over(meter_id, self.handle.clone(), info, holder.conn_id()).ok()
                };
                let outcome = if taken.is_some() { ConflictOutcome::TakenOver } else { ConflictOutcome::Refused };
                self.publish_conflict(meter_id, &holder_info, holder.conn_id(), policy, probe, outcome);
                let Some(old) = taken else {
                    self.ctx.registry.mark_contested(meter_id, holder.conn_id());
                    return Err(Refusal::Contested);
                };
                if let Some(old) = old {
                    old.close_replaced();
                }
                self.publish_reconnected(meter_id, protocol, connected_at, ts);
            }
        }
        self.note_held(meter_id);
        lock(&self.ctx.admission).identified(ip, self.conn_id);
        self.ctx.metrics.meters_online.set(self.ctx.registry.len() as i64);
        Ok(true)
    }

    /// Whether `meter_id` was identified on this connection (held now or not).
    fn identified_here(&self, meter_id: &MeterId) -> bool {
        match &self.known {
            Some(set) => set.contains(meter_id),
            None => self.meters.contains(meter_id),
        }
    }

    fn note_held(&mut self, meter_id: &MeterId) {
        if self.identified_here(meter_id) {
            return;
        }
        self.meters.push(meter_id.clone());
        match &mut self.known {
            Some(set) => {
                set.insert(meter_id.clone());
            }
            None if self.meters.len() > LINEAR_LOOKUP => self.known = Some(self.meters.iter().cloned().collect()),
            None => {}
        }
    }

    /// The online status of this connection.
    fn publish_online(&self, meter_id: &MeterId, protocol: Source, connected_at: u64, ts: u64) {
        self.ctx.hub.publish(HubEvent::Status(StatusChange {
            meter_id: meter_id.clone(),
            online: true,
            ip: Some(self.peer.ip().to_string()),
            protocol: Some(protocol),
            connected_at: Some(connected_at),
            gateway_id: self.ctx.config.gateway.gateway_id.clone(),
            reason: None,
            ts,
        }));
    }

    /// A meter moved to this connection while it stayed online. A lone gateway publishes no new status (the meter
    /// never went offline). With `gateway.gateway_id` set (several gateways on one broker) the status names the
    /// connection, so the new one is published: another gateway may hold, and announce, a connection of the same
    /// meter that is newer than the one this gateway announced last, and only a status carrying this connection's
    /// `connectedAt` outranks it.
    fn publish_reconnected(&self, meter_id: &MeterId, protocol: Source, connected_at: u64, ts: u64) {
        if self.ctx.config.gateway.gateway_id.is_some() {
            self.publish_online(meter_id, protocol, connected_at, ts);
        }
        self.ctx.hub.publish(HubEvent::Event(MeterEvent {
            meter_id: meter_id.clone(),
            event: "meter_reconnected".into(),
            severity: Some(Severity::Info),
            data: json!({"ip": self.peer.ip().to_string(), "port": self.peer.port(), "protocol": protocol.as_str()}),
            ts,
        }));
    }

    /// Asks the connection holding `meter_id` to show it is alive within `meters.identity_probe_timeout_ms`:
    /// it answers the probe request, or any bytes arrive on it meanwhile (a heartbeat, a push, a late reply).
    /// A holder too busy to take the request is judged by its traffic alone.
    async fn probe(&self, holder: &SessionHandle, meter_id: &MeterId) -> ProbeResult {
        let window = Duration::from_millis(self.ctx.config.meters.identity_probe_timeout_ms);
        let deadline = Instant::now() + window;
        let reads_before = holder.reads();
        let (reply, answer) = oneshot::channel();
        let request = SessionRequest { meter_id: meter_id.clone(), op: MeterOp::Probe, deadline, reply };
        let answered = match holder.submit(request) {
            Ok(()) => matches!(tokio::time::timeout_at(deadline, answer).await, Ok(Ok(Ok(_)))),
            Err(_) => false,
        };
        if !answered && !holder.is_closed() {
            // Traffic counts until the end of the window, even if the request failed early.
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = async {
                    while holder.reads() == reads_before && !holder.is_closed() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                } => {}
            }
        }
        if (answered || holder.reads() > reads_before) && !holder.is_closed() {
            ProbeResult::Answered
        } else {
            ProbeResult::Silent
        }
    }

    /// A claim of `meter_id` that this connection's client certificate does not name: counted, logged, and an
    /// `identity_conflict` security event on the id's events topic (someone holding a certificate of the
    /// gateway's CA claimed a meter it was not issued for).
    fn refuse_uncertified(&self, meter_id: &MeterId, names: &[String]) {
        self.ctx.metrics.identity_refused(IdentityRefusal::CertificateMismatch);
        if lock(&self.ctx.admission).should_log(self.peer.ip(), std::time::Instant::now()) {
            tracing::warn!(
                meter = %meter_id,
                peer = %self.peer,
                certificate = ?names,
                "identity_conflict: a TLS meter claimed an id its client certificate does not name; refused (logged once per IP per minute)"
            );
        }
        self.ctx.hub.publish(HubEvent::Event(MeterEvent {
            meter_id: meter_id.clone(),
            event: "identity_conflict".into(),
            severity: Some(Severity::Warning),
            data: json!({
                "policy": "certificate",
                "probe": ProbeResult::Certificate.as_str(),
                "outcome": ConflictOutcome::Refused.as_str(),
                "reason": Refusal::CertificateMismatch.as_str(),
                "certificate": names,
                "newcomer": {"ip": self.peer.ip().to_string(), "port": self.peer.port(), "conn": self.conn_id},
            }),
            ts: now_ms(),
        }));
    }

    /// The `identity_conflict` security event (MQTT events topic, log, counter).
    fn publish_conflict(
        &self,
        meter_id: &MeterId,
        holder: &MeterInfo,
        holder_conn: u64,
        policy: DuplicateIdentity,
        probe: ProbeResult,
        outcome: ConflictOutcome,
    ) {
        self.ctx.metrics.identity_conflict(outcome);
        tracing::warn!(
            meter = %meter_id,
            newcomer = %self.peer,
            holder = %format!("{}:{}", holder.ip, holder.port),
            policy = policy.as_str(),
            probe = probe.as_str(),
            outcome = outcome.as_str(),
            "identity_conflict: a second connection claimed an online meter id"
        );
        self.ctx.hub.publish(HubEvent::Event(MeterEvent {
            meter_id: meter_id.clone(),
            event: "identity_conflict".into(),
            severity: Some(Severity::Warning),
            data: json!({
                "policy": policy.as_str(),
                "probe": probe.as_str(),
                "outcome": outcome.as_str(),
                "holder": {"ip": holder.ip, "port": holder.port, "conn": holder_conn, "connectedAt": holder.connected_at},
                "newcomer": {"ip": self.peer.ip().to_string(), "port": self.peer.port(), "conn": self.conn_id},
            }),
            ts: now_ms(),
        }));
    }

    /// Fails with `identity_contested` when `meter_id` was contested within `meters.secrets_quiet_secs`: call it
    /// before sending a password, an operator code or a key to the meter.
    /// A connection whose client certificate names the id (TLS meter port) has proven it: secrets go to it.
    pub(crate) fn secrets_allowed(&self, meter_id: &MeterId) -> Result<(), OpError> {
        let quiet = self.ctx.config.meters.secrets_quiet_secs;
        if quiet > 0
            && self.certified.is_none()
            && self.ctx.registry.contested_within(meter_id, Duration::from_secs(quiet))
        {
            self.ctx.metrics.secrets_withheld.inc();
            tracing::warn!(meter = %meter_id, peer = %self.peer, "secret withheld: the meter's identity was contested recently");
            return Err(OpError::new(
                ErrorCode::IdentityContested,
                format!(
                    "another connection claimed this meter's id less than {quiet} s ago; passwords and keys are not sent until then"
                ),
            ));
        }
        Ok(())
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
        self.identify(&meter_id, protocol).await.map_err(EndReason::IdentityRefused)?;
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
        self.stream.shutdown().await;
        record_end(&self.ctx, self.peer, self.conn_id, !self.meters.is_empty());
        let ts = now_ms();
        for meter_id in &self.meters {
            let Some(ended) = self.ctx.registry.unregister(meter_id, self.conn_id) else { continue };
            tracing::info!(meter = %meter_id, peer = %self.peer, reason = %reason.as_str(), "meter offline");
            self.ctx.hub.publish(HubEvent::Status(StatusChange {
                meter_id: meter_id.clone(),
                online: false,
                ip: None,
                protocol: self.protocol,
                connected_at: Some(ended.connected_at),
                gateway_id: self.ctx.config.gateway.gateway_id.clone(),
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

/// Books the end of connection `conn_id` from `peer` with the admission limits: one that never identified a meter
/// (silence, garbage, a failed TLS handshake, a refused identification) is a strike against its source IP.
pub(crate) fn record_end(ctx: &MeterContext, peer: SocketAddr, conn_id: u64, identified: bool) {
    if !identified {
        ctx.metrics.connections_unidentified.inc();
    }
    let penalised = lock(&ctx.admission).ended(peer.ip(), conn_id, identified, std::time::Instant::now());
    if penalised {
        tracing::warn!(ip = %peer.ip(), "source penalised: too many connections without a meter; its unidentified connections are now capped");
    }
}
