//! The DLMS/COSEM conversation of one connection: heartbeats (identification and liveness), pushed
//! EventNotification/DataNotification, identification by logical device name when no heartbeat comes, active
//! polling (AARQ → GETs or GET-with-list → RLRQ) when enabled, and commands. The protocol logic is the sans-IO
//! [`Association`]; this module only moves bytes and time.

use super::conn::{Conn, EndReason, ReadOutcome};
use super::dlms_health::{AssociationChange, RejectionBackoff};
use super::dlms_values::{self, ValueContext};
use super::driver::{self, Driver, Failure, Reads, WARN_EVERY, WarnLimiter};
use super::poll::{self, PollTimer};
use super::{RelayConfirmation, RelayDetail, RelayMode, RelayState, TimeSet};
use crate::error::{ErrorCode, ErrorDetails, OpError};
use crate::hub::HubEvent;
use crate::metrics::PollOutcome;
use crate::model::{MeterEvent, Reading, Severity, Source, now_ms};
use crate::registers::{ObisTarget, Target};
use ivy_protocol::dlms::apdu::{
    Apdu, ApduError, AttributeDescriptor, Conformance, DataAccessResult, GetDataResult, MethodDescriptor,
};
use ivy_protocol::dlms::association::{
    Association, AssociationFailure, ClientConfig, Event, Request, RequestError, RequestId, Response,
};
use ivy_protocol::dlms::push::decode_notification;
use ivy_protocol::dlms::registry::{CLOCK, DISCONNECT_CONTROL, LOGICAL_DEVICE_NAME, SERIAL_NUMBER};
use ivy_protocol::dlms::{CosemDateTime, Data, MeterZone, Obis, ObisRegistry};
use ivy_protocol::registration::{MeterId, RuleMatch, match_any};
use ivy_protocol::wrapper::{Framer, FramerEvent, Packet, Ports};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Quiet time after which ambiguous bytes are framed with what is there.
const FLUSH_AFTER: Duration = Duration::from_millis(200);
/// Pushes kept while the meter is not identified yet.
const MAX_PENDING_PUSHES: usize = 32;

struct DlmsDriver<'a> {
    conn: &'a mut Conn,
    framer: Framer,
    assoc: Association,
    /// Most attributes per GET-with-list (the association's own limit).
    max_list_items: usize,
    ports: Ports,
    meter: Option<MeterId>,
    identify_at: Option<Instant>,
    flush_at: Option<Instant>,
    timer: PollTimer,
    plan: Vec<ObisTarget>,
    /// Objects the meter answered object-undefined: not asked again on this connection.
    undefined: HashSet<Obis>,
    /// scaler_unit read from the meter (scaler, unit code).
    scalers: HashMap<Obis, (i8, u8)>,
    /// Events for requests other than the one being awaited (cannot happen with one request at a time, kept for
    /// safety) and pushes before identification.
    pending_pushes: VecDeque<Apdu>,
    /// The zone of the meter's clock (from the configuration, once identified).
    zone: MeterZone,
    /// The meter's configured scaler table.
    scaler_table: Option<BTreeMap<Obis, i8>>,
    /// `dlms.push_objects`, parsed.
    positional: Vec<Obis>,
    /// Back-off after association rejections.
    backoff: RejectionBackoff,
    /// Warnings at most once a minute: unplaceable push elements, skewed capture times, and what malformed or
    /// missing replies cause (malformed APDUs, failed associations and polls share one: a meter answering garbage
    /// writes one line a minute, not one per frame or per poll).
    push_warn: WarnLimiter,
    clock_warn: WarnLimiter,
    parse_warn: WarnLimiter,
    /// A malformed reply to the request being awaited.
    malformed_reply: Option<ApduError>,
}

enum Never {}

/// The client settings (AARQ, invoke-id bits) from `[dlms]`.
pub(crate) fn client_config(cfg: &crate::config::DlmsConfig) -> ClientConfig {
    let mut aarq = ivy_protocol::dlms::apdu::Aarq {
        conformance: Conformance(cfg.conformance),
        max_pdu: cfg.max_pdu_size,
        ..Default::default()
    };
    if let Some(pw) = &cfg.lls_password {
        aarq = aarq.with_lls(pw.as_bytes());
    }
    ClientConfig {
        aarq,
        priority_high: cfg.priority_high,
        confirmed: cfg.service_class_confirmed,
        association_timeout: Duration::from_millis(cfg.association_timeout_ms),
        response_timeout: Duration::from_millis(cfg.response_timeout_ms),
        ..ClientConfig::default()
    }
}

/// The wrapped AARQ that probes a silent connection for a DLMS meter (its AARE makes the connection DLMS; the
/// driver then reads the logical device name).
pub(crate) fn association_probe(cfg: &crate::config::DlmsConfig) -> Option<Vec<u8>> {
    let aarq = Apdu::Aarq(client_config(cfg).aarq).encode();
    Ports { source: cfg.client_wport, destination: cfg.server_wport }.wrap(&aarq).ok()
}

/// Runs the DLMS conversation until the connection ends.
pub(crate) async fn run(
    conn: &mut Conn,
    requests: &mut mpsc::Receiver<super::QueuedRequest>,
    leftover: Vec<u8>,
) -> EndReason {
    let cfg = &conn.ctx.config.dlms;
    let client = client_config(cfg);
    let identify_after = Duration::from_secs(conn.ctx.config.meters.identify_after_secs);
    let meter = conn.meters.first().cloned();
    let mut s = DlmsDriver {
        framer: Framer::new(cfg.max_payload.get()),
        max_list_items: client.max_list_items.max(1),
        assoc: Association::new(client),
        ports: Ports { source: cfg.client_wport, destination: cfg.server_wport },
        identify_at: meter.is_none().then(|| Instant::now() + identify_after),
        meter: None,
        flush_at: None,
        timer: PollTimer::default(),
        plan: Vec::new(),
        undefined: HashSet::new(),
        scalers: HashMap::new(),
        pending_pushes: VecDeque::new(),
        zone: MeterZone::Fixed(conn.ctx.config.meters.clock_utc_offset_minutes),
        scaler_table: None,
        positional: cfg.push_objects.iter().filter_map(|c| c.get().copied()).collect(),
        backoff: RejectionBackoff::new(
            Duration::from_millis(cfg.rejection_backoff_initial_ms),
            Duration::from_millis(cfg.rejection_backoff_max_ms),
        ),
        push_warn: WarnLimiter::new(WARN_EVERY),
        clock_warn: WarnLimiter::new(WARN_EVERY),
        parse_warn: WarnLimiter::new(WARN_EVERY),
        malformed_reply: None,
        conn,
    };
    if let Some(id) = meter {
        s.on_identified(id);
    }
    s.framer.push(&leftover);
    let result = s.main_loop(requests).await;
    s.assoc.abort();
    match result {
        Ok(never) => match never {},
        Err(reason) => reason,
    }
}

impl DlmsDriver<'_> {
    async fn main_loop(&mut self, requests: &mut mpsc::Receiver<super::QueuedRequest>) -> Result<Never, EndReason> {
        loop {
            self.drain_packets().await?;
            self.drain_events(None);
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                biased;
                outcome = self.conn.read() => match outcome {
                    ReadOutcome::Data => self.received(),
                    ReadOutcome::End(reason) => return Err(reason),
                },
                // Commands, poll cycles and the identification read are boxed for their duration: inline, their
                // state would make every connection's task as large as the largest of them for its whole life.
                request = requests.recv() => {
                    if let Some(request) = request {
                        Box::pin(driver::execute(self, *request)).await?;
                    }
                }
                _ = tokio::time::sleep_until(self.flush_at.unwrap_or(far)), if self.flush_at.is_some() => {
                    self.flush_at = None;
                    self.framer.flush();
                }
                _ = tokio::time::sleep_until(self.timer.due_at().unwrap_or(far)), if self.timer.due_at().is_some() => {
                    let _permit = poll::permit(self.conn).await?;
                    Box::pin(self.poll()).await?;
                }
                _ = tokio::time::sleep_until(self.identify_at.unwrap_or(far)), if self.identify_at.is_some() => {
                    Box::pin(self.identify_by_name()).await?;
                }
            }
        }
    }

    /// Bytes arrived: frame them; arm the quiet-time flush if something is left undecided.
    fn received(&mut self) {
        self.framer.push(&self.conn.input);
        self.flush_at = Some(Instant::now() + FLUSH_AFTER);
    }

    async fn drain_packets(&mut self) -> Result<(), EndReason> {
        while let Some(event) = self.framer.next_event() {
            match event {
                FramerEvent::Packet(p) => self.on_packet(p).await?,
                FramerEvent::Discarded { reason, .. } => self.conn.ctx.metrics.parse_error(reason.kind()),
            }
        }
        if self.framer.buffered() > self.conn.ctx.config.meters.buffer_cap.get() {
            return Err(EndReason::BufferOverflow);
        }
        Ok(())
    }

    async fn on_packet(&mut self, packet: Packet) -> Result<(), EndReason> {
        self.conn.ctx.metrics.frame("dlms");
        if packet.header.is_some()
            && let RuleMatch::Matched(registration) = match_any(&self.conn.ctx.rules, &packet.to_bytes())
        {
            // Heartbeat: liveness (already counted by the read), identification if new.
            let known = self.meter.as_ref().is_some_and(|m| m.as_str() == registration.raw_id);
            if !known {
                self.conn.apply_registration(&registration, Source::Dlms).await?;
                if let Some(id) = self.conn.meters.last().cloned() {
                    self.on_identified(id);
                }
            } else if let Some(ack) = &registration.ack {
                self.conn.send(ack).await?;
            }
            return Ok(());
        }
        self.assoc.handle_apdu(&packet.payload);
        Ok(())
    }

    fn on_identified(&mut self, id: MeterId) {
        self.identify_at = None;
        let ctx = &self.conn.ctx;
        self.plan = ctx.resolver.get().dlms_poll_plan(&id);
        self.timer = PollTimer::start(ctx, &id, !ctx.config.dlms.passive_only && !self.plan.is_empty());
        self.zone = super::meter_time::zone_for(&ctx.config.meters, id.as_str());
        self.scaler_table = dlms_values::scaler_table(&ctx.config.dlms.scaler_tables, id.as_str());
        if let Some(status) = ctx.registry.dlms_rejection(&id) {
            self.backoff.resume(&status, Instant::now(), now_ms());
        }
        self.meter = Some(id);
        while let Some(apdu) = self.pending_pushes.pop_front() {
            self.on_push(&apdu);
        }
    }

    /// Handles association events; returns the response to `awaited` when it arrives.
    fn drain_events(&mut self, awaited: Option<RequestId>) -> Option<Result<Response, RequestError>> {
        let mut found = None;
        while let Some(event) = self.assoc.poll_event() {
            match event {
                Event::Response { id, result } if Some(id) == awaited => found = Some(result),
                Event::Response { id, .. } => tracing::debug!(request = id, "response to a request nobody awaits"),
                Event::Notification(apdu) => self.on_push(&apdu),
                Event::Unmatched(apdu) => {
                    self.conn.ctx.metrics.parse_error("dlms_unmatched");
                    tracing::debug!(peer = %self.conn.peer, apdu = apdu.name(), "reply that matches no request");
                }
                Event::Malformed(e) => {
                    self.conn.ctx.metrics.parse_error(e.kind_name());
                    if let Some(held_back) = self.parse_warn.allow(Instant::now()) {
                        tracing::warn!(peer = %self.conn.peer, meter = ?self.meter.as_ref().map(MeterId::as_str),
                            error = %e, kind = e.kind_name(), held_back, "malformed DLMS APDU");
                    }
                    // With one request on the wire, a malformed reply is its answer: fail it now, not at the timeout.
                    if awaited.is_some() && is_reply_tag(e.tag) && self.assoc.awaiting_reply() {
                        self.malformed_reply = Some(e);
                    }
                }
                Event::AssociationFailed(f) => self.on_association_failed(&f),
                Event::Associated(_) => {
                    if let Some(AssociationChange::Restored { rejections }) = self.backoff.on_associated() {
                        self.publish_rejection_state();
                        self.publish_event(
                            "dlms-association-restored",
                            Severity::Info,
                            json!({"rejections": rejections}),
                        );
                    }
                }
                Event::Released => {}
            }
        }
        found
    }

    /// An association failed: rejections enter (or continue) the back-off, with one event when it starts; other
    /// failures (no AARE, a refusal) are reported each time.
    fn on_association_failed(&mut self, f: &AssociationFailure) {
        match f {
            AssociationFailure::Rejected { diagnostic, .. } => {
                let change = self.backoff.on_rejected(Instant::now(), now_ms(), diagnostic);
                self.publish_rejection_state();
                let retry_ms = self.backoff.retry_in(Instant::now()).map_or(0, |d| d.as_millis() as u64);
                if change.is_some() {
                    tracing::warn!(peer = %self.conn.peer, failure = %f, retry_ms, "DLMS association rejected; backing off");
                    self.publish_event(
                        "dlms-error",
                        Severity::Warning,
                        json!({"error": f.to_string(), "state": "rejected", "retryInMs": retry_ms}),
                    );
                } else {
                    tracing::debug!(peer = %self.conn.peer, failure = %f, retry_ms, "DLMS association rejected again");
                }
            }
            other => {
                if let Some(held_back) = self.parse_warn.allow(Instant::now()) {
                    tracing::warn!(peer = %self.conn.peer, failure = %other, held_back, "DLMS association failed");
                }
                self.publish_event("dlms-error", Severity::Warning, json!({"error": other.to_string()}));
            }
        }
    }

    fn publish_event(&self, event: &str, severity: Severity, data: Value) {
        if let Some(m) = &self.meter {
            self.conn.ctx.hub.publish(HubEvent::Event(MeterEvent {
                meter_id: m.clone(),
                event: event.into(),
                severity: Some(severity),
                data,
                ts: now_ms(),
            }));
        }
    }

    /// Shows the back-off state in `/api/meters/{id}`.
    fn publish_rejection_state(&self) {
        if let Some(m) = &self.meter {
            self.conn.ctx.registry.set_dlms_rejection(m, self.backoff.status(Instant::now(), now_ms()));
        }
    }

    /// While the meter rejects associations, no AARQ before the back-off allows one.
    fn backoff_refusal(&self) -> Option<OpError> {
        if self.assoc.is_associated() || self.backoff.may_attempt(Instant::now()) {
            return None;
        }
        let wait = self.backoff.retry_in(Instant::now()).unwrap_or_default();
        Some(OpError::new(
            ErrorCode::AssociationRejected,
            format!(
                "the meter rejects associations ({}); next attempt in {} s",
                self.backoff.diagnostic().unwrap_or("rejected"),
                wait.as_secs_f64().ceil()
            ),
        ))
    }

    /// When a malformed reply arrived for request `id`: ends the exchange (as its timeout would) and names the
    /// parse error, so the caller hears at once why instead of a timeout later.
    fn fail_on_malformed(&mut self, id: RequestId) -> Option<Failure> {
        let e = self.malformed_reply.take()?;
        // Fire the exchange's own timer now.
        let due = self.assoc.poll_timeout().unwrap_or_else(|| Instant::now().into_std());
        self.assoc.handle_timeout(due);
        let _ = self.drain_events(Some(id));
        self.malformed_reply = None;
        Some(Failure::Op(
            OpError::new(ErrorCode::MeterError, format!("malformed reply from the meter ({}): {e}", e.kind_name()))
                .with_details(ErrorDetails::Malformed { parse_error: e.kind_name(), apdu: e.apdu }),
        ))
    }

    /// Sends what the association wants to send.
    async fn transmit(&mut self) -> Result<(), EndReason> {
        while let Some(apdu) = self.assoc.poll_transmit(Instant::now().into_std()) {
            let bytes = self.ports.wrap(&apdu).map_err(|e| EndReason::IoError(e.to_string()))?;
            self.conn.send(&bytes).await?;
        }
        Ok(())
    }

    /// Runs one request to completion (association opened as needed); the deadline bounds the whole call.
    async fn call(&mut self, request: Request, deadline: Instant) -> Result<Response, Failure> {
        // Opening an association sends the LLS password, a secret.
        if self.conn.ctx.config.dlms.lls_password.is_some()
            && !self.assoc.is_associated()
            && let Some(meter) = &self.meter
        {
            self.conn.secrets_allowed(meter)?;
        }
        if let Some(refusal) = self.backoff_refusal() {
            return Err(Failure::Op(refusal));
        }
        self.malformed_reply = None;
        let id = self.assoc.request_until(request, deadline.into_std());
        loop {
            self.transmit().await?;
            if let Some(result) = self.drain_events(Some(id)) {
                return result.map_err(|e| Failure::Op(op_error(e)));
            }
            if let Some(failure) = self.fail_on_malformed(id) {
                return Err(failure);
            }
            // The association's next timer: its association or response timeout, or the request's deadline.
            let wake = self.assoc.poll_timeout().map_or(deadline, Instant::from_std);
            tokio::select! {
                outcome = self.conn.read() => match outcome {
                    ReadOutcome::Data => {
                        self.received();
                        self.drain_packets().await?;
                    }
                    ReadOutcome::End(reason) => return Err(Failure::End(reason)),
                },
                _ = tokio::time::sleep_until(wake) => {
                    // Raw bytes waiting on a flush could be the answer: frame them first.
                    self.framer.flush();
                    self.drain_packets().await?;
                    if let Some(result) = self.drain_events(Some(id)) {
                        return result.map_err(|e| Failure::Op(op_error(e)));
                    }
                    self.assoc.handle_timeout(Instant::now().into_std());
                }
            }
        }
    }

    /// Releases the association (unless configured to keep it), waiting briefly for the RLRE.
    async fn finish_association(&mut self) -> Result<(), EndReason> {
        if self.conn.ctx.config.dlms.keep_association || !self.assoc.is_associated() {
            return Ok(());
        }
        self.assoc.release();
        self.transmit().await?;
        let deadline = Instant::now() + Duration::from_millis(self.conn.ctx.config.dlms.response_timeout_ms);
        while self.assoc.awaiting_reply() {
            tokio::select! {
                outcome = self.conn.read() => match outcome {
                    ReadOutcome::Data => {
                        self.received();
                        self.drain_packets().await?;
                        self.drain_events(None);
                    }
                    ReadOutcome::End(reason) => return Err(reason),
                },
                _ = tokio::time::sleep_until(self.assoc.poll_timeout().map_or(deadline, Instant::from_std)) => {
                    self.assoc.handle_timeout(Instant::now().into_std());
                    self.drain_events(None);
                    if self.assoc.poll_timeout().is_none() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// No heartbeat identified the meter: ask for its logical device name, then its serial number.
    async fn identify_by_name(&mut self) -> Result<(), EndReason> {
        let retry = Duration::from_secs(self.conn.ctx.config.meters.identify_after_secs * 3);
        self.identify_at = Some(Instant::now() + retry);
        let deadline = Instant::now() + Duration::from_millis(self.conn.ctx.config.commands.timeout_ms);
        for obis in [LOGICAL_DEVICE_NAME, SERIAL_NUMBER] {
            match self.call(Request::Get(AttributeDescriptor::new(1, obis, 2)), deadline).await {
                Ok(Response::Data(d)) => {
                    let text = d.as_text().or_else(|| d.as_bytes().map(hex::encode)).unwrap_or_default();
                    match MeterId::new(text.trim().to_owned()) {
                        Ok(id) => {
                            self.finish_association().await?;
                            self.conn.identify(&id, Source::Dlms).await.map_err(EndReason::IdentityRefused)?;
                            self.on_identified(id);
                            return Ok(());
                        }
                        Err(e) => {
                            tracing::warn!(peer = %self.conn.peer, id = %text, error = %e, "meter name is not a valid id")
                        }
                    }
                }
                Ok(_) => {}
                Err(Failure::Op(e)) => {
                    tracing::debug!(peer = %self.conn.peer, error = %e, "identification read failed")
                }
                Err(Failure::End(r)) => return Err(r),
            }
        }
        self.finish_association().await
    }

    /// A pushed EventNotification or DataNotification: one reading per value the push names, stamped with its
    /// capture time when it has one; elements that cannot be placed are counted and warned about (rate-limited).
    fn on_push(&mut self, apdu: &Apdu) {
        let Some(meter) = self.meter.clone() else {
            if self.pending_pushes.len() < MAX_PENDING_PUSHES {
                self.pending_pushes.push_back(apdu.clone());
            } else {
                self.conn.ctx.metrics.parse_error("push_before_identification_dropped");
            }
            return;
        };
        let Some(push) = decode_notification(apdu, &self.positional) else { return };
        if let Some(first) = push.skipped.first() {
            for _ in &push.skipped {
                self.conn.ctx.metrics.parse_error("push_element_skipped");
            }
            if let Some(held_back) = self.push_warn.allow(Instant::now()) {
                tracing::warn!(meter = %meter, skipped = push.skipped.len(), element = first.index, reason = %first.reason,
                    value = %first.value, held_back, "push elements that cannot be placed were skipped");
            }
        }
        let tolerance_ms = self.conn.ctx.config.meters.capture_time_tolerance_secs.saturating_mul(1000);
        let resolver = self.conn.ctx.resolver.get();
        let readings = dlms_values::push_readings(&self.values(&resolver.obis), &meter, &push, now_ms(), tolerance_ms);
        if readings.first().is_some_and(|r| r.meta.ts_skewed) {
            self.conn.ctx.metrics.dlms_capture_time_skewed.inc();
            if let Some(held_back) = self.clock_warn.allow(Instant::now()) {
                tracing::warn!(meter = %meter, capture_ts = readings.first().map_or(0, |r| r.ts), held_back,
                    "capture time far from the gateway clock: the meter's clock or zone is wrong");
            }
        }
        self.conn.ctx.metrics.readings.inc_by(readings.len() as u64);
        driver::publish(self.conn, &meter, Source::Dlms, readings);
    }

    /// What the normaliser needs to know about this meter.
    fn values<'a>(&'a self, registry: &'a ObisRegistry) -> ValueContext<'a> {
        ValueContext { registry, meter_scalers: &self.scalers, table: self.scaler_table.as_ref(), zone: &self.zone }
    }

    /// A normalised reading, stamped now, of a value read from the meter.
    fn reading(&self, meter: &MeterId, attribute: &AttributeDescriptor, value: &Data) -> Option<Reading> {
        let resolver = self.conn.ctx.resolver.get();
        let r = dlms_values::reading(
            &self.values(&resolver.obis),
            meter,
            attribute,
            value,
            None,
            now_ms(),
            Default::default(),
        );
        if r.is_some() {
            self.conn.ctx.metrics.readings.inc();
        }
        r
    }

    /// One active poll cycle: the plan's values (and the scaler_units not known yet), then release.
    async fn poll(&mut self) -> Result<(), EndReason> {
        let Some(meter) = self.meter.clone() else { return Ok(()) };
        if !self.conn.holds(&meter) {
            self.timer.stop();
            return Ok(());
        }
        // Poll groups may have been reloaded (SIGHUP) since the last cycle: poll what is configured now.
        self.plan = self.conn.ctx.resolver.get().dlms_poll_plan(&meter);
        if !self.timer.refresh(&self.conn.ctx, &meter, !self.plan.is_empty()) {
            return Ok(());
        }
        let started = Instant::now();
        // A meter that rejects associations is left alone until its back-off allows the next AARQ.
        if self.backoff_refusal().is_some() {
            self.timer.schedule_next(&self.conn.ctx.config.polling, started);
            return Ok(());
        }
        let targets: Vec<ObisTarget> =
            self.plan.iter().filter(|t| !self.undefined.contains(&t.attribute.obis)).cloned().collect();
        let deadline = started + Duration::from_millis(self.conn.ctx.config.commands.timeout_ms);
        let outcome = match self.read_targets(&meter, &targets, deadline).await {
            Ok(per_target) => {
                let readings = per_target.into_iter().filter_map(Result::ok).collect();
                driver::publish(self.conn, &meter, Source::Dlms, readings);
                PollOutcome::Ok
            }
            Err(Failure::Op(e)) => {
                if let Some(held_back) = self.parse_warn.allow(Instant::now()) {
                    tracing::warn!(meter = %meter, error = %e, held_back, "DLMS poll failed");
                }
                if e.code == ErrorCode::Timeout { PollOutcome::Timeout } else { PollOutcome::Failed }
            }
            Err(Failure::End(r)) => return Err(r),
        };
        self.finish_association().await?;
        poll::count_cycle(self.conn, outcome, started);
        self.timer.schedule_next(&self.conn.ctx.config.polling, started);
        Ok(())
    }

    /// Reads `targets` (plus unknown scaler_units), in lists of at most `max_list_items`. Returns, per target, the reading or the
    /// error.
    async fn read_targets(
        &mut self,
        meter: &MeterId,
        targets: &[ObisTarget],
        deadline: Instant,
    ) -> Result<Vec<Result<Reading, OpError>>, Failure> {
        let resolver = self.conn.ctx.resolver.get();
        let registry = &resolver.obis;
        let scaler_reads: Vec<AttributeDescriptor> = targets
            .iter()
            .filter(|t| t.attribute.attribute == 2 && matches!(t.attribute.class_id, 3 | 4))
            .filter(|t| !self.scalers.contains_key(&t.attribute.obis))
            .filter(|t| registry.get(&t.attribute.obis).is_none_or(|d| d.has_scaler_unit()))
            .map(|t| AttributeDescriptor::new(t.attribute.class_id, t.attribute.obis, 3))
            .collect();
        let attributes: Vec<AttributeDescriptor> =
            scaler_reads.iter().copied().chain(targets.iter().map(|t| t.attribute)).collect();
        let mut results: Vec<GetDataResult> = Vec::with_capacity(attributes.len());
        for chunk in attributes.chunks(self.max_list_items) {
            match self.call(Request::GetList(chunk.to_vec()), deadline).await? {
                Response::List(r) => results.extend(r),
                Response::Data(d) => results.push(Ok(d)),
                _ => return Err(driver::unexpected(" to GET")),
            }
        }
        let (scaler_results, value_results) = results.split_at(scaler_reads.len().min(results.len()));
        for (a, r) in scaler_reads.iter().zip(scaler_results) {
            if let Ok(d) = r
                && let Some(su) = d.as_scaler_unit()
            {
                self.scalers.insert(a.obis, su);
            }
        }
        let mut per_target = Vec::with_capacity(targets.len());
        for (t, r) in targets.iter().zip(value_results) {
            match r {
                Ok(d) => per_target.push(
                    self.reading(meter, &t.attribute, d)
                        .ok_or_else(|| OpError::new(ErrorCode::MeterError, "value cannot be read as a number")),
                ),
                Err(dar) => {
                    if *dar == DataAccessResult::OBJECT_UNDEFINED {
                        self.undefined.insert(t.attribute.obis);
                    }
                    per_target.push(Err(dar_error(*dar)));
                }
            }
        }
        Ok(per_target)
    }

    /// The key of a register in a `read_all` answer: the registry's, else one made of the code.
    fn register_key(&self, obis: &Obis) -> String {
        self.conn
            .ctx
            .resolver
            .get()
            .obis
            .get_any_channel(obis)
            .map(|d| d.key.clone())
            .unwrap_or_else(|| dlms_values::obis_key(obis))
    }
}

impl Driver for DlmsDriver<'_> {
    const SOURCE: Source = Source::Dlms;

    fn conn(&self) -> &Conn {
        &*self.conn
    }

    fn serves(&self, meter: &MeterId) -> bool {
        self.meter.as_ref() == Some(meter)
    }

    async fn read(&mut self, meter: &MeterId, targets: Vec<Target>, deadline: Instant) -> Reads {
        let mut obis_targets = Vec::with_capacity(targets.len());
        for t in targets {
            match t {
                Target::Dlms(o) => obis_targets.push(o),
                Target::Dlt645(_) => {
                    return Reads::stopped(driver::unsupported("DL/T 645 registers cannot be read from a DLMS meter"));
                }
            }
        }
        match self.read_targets(meter, &obis_targets, deadline).await {
            Ok(per_target) => Reads {
                results: obis_targets.iter().map(|t| self.register_key(&t.attribute.obis)).zip(per_target).collect(),
                stopped: None,
            },
            Err(failure) => Reads::stopped(failure),
        }
    }

    async fn switch_relay(
        &mut self,
        _meter: &MeterId,
        state: RelayState,
        _mode: RelayMode,
        deadline: Instant,
    ) -> Result<RelayConfirmation, Failure> {
        let method = if state == RelayState::Open { 1 } else { 2 };
        let parameter = self.conn.ctx.config.dlms.disconnect_integer_parameter.then_some(Data::Integer(0));
        let m = MethodDescriptor { class_id: 70, obis: DISCONNECT_CONTROL, method };
        self.call(Request::Action(m, parameter), deadline).await?;
        let output =
            self.call(Request::Get(AttributeDescriptor::new(70, DISCONNECT_CONTROL, 2)), deadline).await.ok().and_then(
                |r| match r {
                    Response::Data(Data::Boolean(b)) => Some(b),
                    _ => None,
                },
            );
        Ok(RelayConfirmation::OutputState(output))
    }

    async fn read_relay_state(&mut self, _meter: &MeterId, deadline: Instant) -> Result<RelayDetail, Failure> {
        let attrs = vec![
            AttributeDescriptor::new(70, DISCONNECT_CONTROL, 2),
            AttributeDescriptor::new(70, DISCONNECT_CONTROL, 3),
        ];
        let results = match self.call(Request::GetList(attrs), deadline).await? {
            Response::List(r) => r,
            _ => return Err(driver::unexpected("")),
        };
        let output_state = match results.first() {
            Some(Ok(Data::Boolean(b))) => *b,
            Some(Err(dar)) => return Err(Failure::Op(dar_error(*dar))),
            _ => return Err(Failure::Op(OpError::new(ErrorCode::MeterError, "output_state is not a boolean"))),
        };
        let control_state = match results.get(1) {
            Some(Ok(Data::Enum(e))) => Some(*e),
            _ => None,
        };
        Ok(RelayDetail::Dlms { output_state, control_state })
    }

    async fn read_address(&mut self, _meter: &MeterId, deadline: Instant) -> Result<String, Failure> {
        match self.call(Request::Get(AttributeDescriptor::new(1, SERIAL_NUMBER, 2)), deadline).await? {
            Response::Data(d) => Ok(d.as_text().or_else(|| d.as_bytes().map(hex::encode)).unwrap_or_default()),
            _ => Err(driver::unexpected("")),
        }
    }

    async fn sync_time(&mut self, _meter: &MeterId, unix_ms: i64, deadline: Instant) -> Result<TimeSet, Failure> {
        // The offset the meter's zone has at that instant (DST included).
        let offset_min = self.zone.offset_at(unix_ms);
        let mut t = CosemDateTime::from_unix_utc(unix_ms.div_euclid(1000) + i64::from(offset_min) * 60);
        // Blue Book sign: UTC = local + deviation.
        t.deviation = Some(i16::try_from(-offset_min).unwrap_or(0));
        let value = Data::OctetString(t.to_bytes().to_vec());
        self.call(Request::Set(AttributeDescriptor::new(8, CLOCK, 2), value), deadline).await?;
        Ok(TimeSet { time: t.iso(), broadcast: false })
    }

    async fn read_attribute(
        &mut self,
        _meter: &MeterId,
        attribute: AttributeDescriptor,
        deadline: Instant,
    ) -> Result<Data, Failure> {
        match self.call(Request::Get(attribute), deadline).await? {
            Response::Data(d) => Ok(d),
            _ => Err(driver::unexpected("")),
        }
    }

    /// Reads the logical device name; any answer, even a refusal, shows the meter is there. With an LLS password
    /// configured nothing is sent (associating would hand the password to a connection whose identity is being
    /// contested): the prober then judges this connection by its traffic alone.
    async fn probe(&mut self, _meter: &MeterId, deadline: Instant) -> Result<(), Failure> {
        if self.conn.ctx.config.dlms.lls_password.is_some() && !self.assoc.is_associated() {
            return Err(Failure::Op(OpError::new(
                ErrorCode::IdentityContested,
                "not probed: an association would send the LLS password",
            )));
        }
        match self.call(Request::Get(AttributeDescriptor::new(1, LOGICAL_DEVICE_NAME, 2)), deadline).await {
            Ok(_) => Ok(()),
            // A refusal or a reply out of place is an answer; silence or a closed connection is not.
            Err(Failure::Op(e)) if !matches!(e.code, ErrorCode::Timeout | ErrorCode::ConnectionClosed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn settle(&mut self) -> Result<(), EndReason> {
        self.finish_association().await
    }
}

fn dar_error(dar: DataAccessResult) -> OpError {
    OpError::new(ErrorCode::MeterError, format!("meter error: {dar}"))
        .with_details(ErrorDetails::DataAccess { code: dar.0, name: dar.name() })
}

fn op_error(e: RequestError) -> OpError {
    match e {
        RequestError::Timeout => OpError::new(ErrorCode::Timeout, "the meter did not answer in time"),
        RequestError::DataAccess(dar) => dar_error(dar),
        RequestError::Action(code) => OpError::new(ErrorCode::MeterError, e.to_string())
            .with_details(ErrorDetails::Action { code, name: ivy_protocol::dlms::apdu::action_result_name(code) }),
        RequestError::NotAssociated(AssociationFailure::Timeout) => {
            OpError::new(ErrorCode::Timeout, "the meter did not answer the association request in time")
        }
        RequestError::NotAssociated(f) => OpError::new(ErrorCode::AssociationRejected, f.to_string()),
        RequestError::Aborted => OpError::new(ErrorCode::ConnectionClosed, "the meter's connection closed"),
        other => OpError::new(ErrorCode::MeterError, other.to_string()),
    }
}

/// Tags of the APDUs a meter sends in answer to a request (AARE, RLRE, GET/SET/ACTION.response, ExceptionResponse,
/// ConfirmedServiceError).
fn is_reply_tag(tag: u8) -> bool {
    matches!(tag, 0x61 | 0x63 | 0xC4 | 0xC5 | 0xC7 | 0xD8 | 0x0E)
}
