//! The DLMS/COSEM conversation of one connection: heartbeats (identification and liveness), pushed
//! EventNotification/DataNotification, identification by logical device name when no heartbeat comes, active
//! polling (AARQ → GETs or GET-with-list → RLRQ) when enabled, and commands. The protocol logic is the sans-IO
//! [`Association`]; this module only moves bytes and time.

use super::conn::{Conn, EndReason, ReadOutcome};
use super::driver::{self, Driver, Failure, Reads};
use super::poll::{self, PollTimer};
use super::{RelayConfirmation, RelayDetail, RelayMode, RelayState, TimeSet};
use crate::error::{ErrorCode, ErrorDetails, OpError};
use crate::hub::HubEvent;
use crate::metrics::PollOutcome;
use crate::model::{MeterEvent, Reading, ReadingValue, Severity, Source, now_ms};
use crate::registers::{ObisTarget, Target};
use ivy_protocol::dlms::apdu::{
    Apdu, AttributeDescriptor, Conformance, DataAccessResult, GetDataResult, MethodDescriptor,
};
use ivy_protocol::dlms::association::{
    Association, AssociationFailure, ClientConfig, Event, Request, RequestError, RequestId, Response,
};
use ivy_protocol::dlms::json::{data_json, json_int};
use ivy_protocol::dlms::registry::{CLOCK, DISCONNECT_CONTROL, LOGICAL_DEVICE_NAME, SERIAL_NUMBER, apply_scaler};
use ivy_protocol::dlms::units::unit_symbol;
use ivy_protocol::dlms::{CosemDateTime, Data, Obis};
use ivy_protocol::registration::{MeterId, RuleMatch, match_any};
use ivy_protocol::wrapper::{Framer, FramerEvent, Packet, Ports};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
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
}

enum Never {}

/// Runs the DLMS conversation until the connection ends.
pub(crate) async fn run(
    conn: &mut Conn,
    requests: &mut mpsc::Receiver<super::QueuedRequest>,
    leftover: Vec<u8>,
) -> EndReason {
    let cfg = &conn.ctx.config.dlms;
    let mut aarq = ivy_protocol::dlms::apdu::Aarq {
        conformance: Conformance(cfg.conformance),
        max_pdu: cfg.max_pdu_size,
        ..Default::default()
    };
    if let Some(pw) = &cfg.lls_password {
        aarq = aarq.with_lls(pw.as_bytes());
    }
    let client = ClientConfig {
        aarq,
        priority_high: cfg.priority_high,
        confirmed: cfg.service_class_confirmed,
        association_timeout: Duration::from_millis(cfg.association_timeout_ms),
        response_timeout: Duration::from_millis(cfg.response_timeout_ms),
        ..ClientConfig::default()
    };
    let identify_after = Duration::from_secs(conn.ctx.config.meters.identify_after_secs);
    let meter = conn.meters.first().cloned();
    let mut s = DlmsDriver {
        framer: Framer::new(cfg.max_payload),
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
                request = requests.recv() => {
                    if let Some(request) = request {
                        driver::execute(self, *request).await?;
                    }
                }
                _ = tokio::time::sleep_until(self.flush_at.unwrap_or(far)), if self.flush_at.is_some() => {
                    self.flush_at = None;
                    self.framer.flush();
                }
                _ = tokio::time::sleep_until(self.timer.due_at().unwrap_or(far)), if self.timer.due_at().is_some() => {
                    let _permit = poll::permit(self.conn).await?;
                    self.poll().await?;
                }
                _ = tokio::time::sleep_until(self.identify_at.unwrap_or(far)), if self.identify_at.is_some() => {
                    self.identify_by_name().await?;
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
        if self.framer.buffered() > self.conn.ctx.config.meters.buffer_cap {
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
                    tracing::debug!(peer = %self.conn.peer, error = %e, "malformed DLMS APDU");
                }
                Event::AssociationFailed(f) => {
                    tracing::warn!(peer = %self.conn.peer, failure = %f, "DLMS association failed");
                    if let Some(m) = &self.meter {
                        self.conn.ctx.hub.publish(HubEvent::Event(MeterEvent {
                            meter_id: m.clone(),
                            event: "dlms-error".into(),
                            severity: Some(Severity::Warning),
                            data: json!({"error": f.to_string()}),
                            ts: now_ms(),
                        }));
                    }
                }
                Event::Associated(_) | Event::Released => {}
            }
        }
        found
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
        let id = self.assoc.request_until(request, deadline.into_std());
        loop {
            self.transmit().await?;
            if let Some(result) = self.drain_events(Some(id)) {
                return result.map_err(|e| Failure::Op(op_error(e)));
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

    /// A pushed EventNotification or DataNotification: one reading per value.
    fn on_push(&mut self, apdu: &Apdu) {
        let Some(meter) = self.meter.clone() else {
            if self.pending_pushes.len() < MAX_PENDING_PUSHES {
                self.pending_pushes.push_back(apdu.clone());
            } else {
                self.conn.ctx.metrics.parse_error("push_before_identification_dropped");
            }
            return;
        };
        let mut readings = Vec::new();
        match apdu {
            Apdu::EventNotification(e) => {
                readings.extend(self.reading(&meter, &e.attribute, &e.value));
            }
            Apdu::DataNotification(d) => {
                for (attribute, value) in self.push_items(&d.body) {
                    readings.extend(self.reading(&meter, &attribute, &value));
                }
            }
            _ => {}
        }
        driver::publish(self.conn, &meter, Source::Dlms, readings);
    }

    /// The values of a DataNotification body: `(OBIS octet-string, value)` pairs (flat or as 2-element structures)
    /// are self-describing; anything else is mapped by position to `dlms.push_objects`, or named `PUSH_<n>`.
    fn push_items(&self, body: &Data) -> Vec<(AttributeDescriptor, Data)> {
        let items: Vec<Data> = match body {
            Data::Structure(v) | Data::Array(v) => v.clone(),
            other => vec![other.clone()],
        };
        let obis_of = |d: &Data| match d {
            Data::OctetString(b) => Obis::from_slice(b),
            _ => None,
        };
        let resolver = self.conn.ctx.resolver.get();
        let class_of = |o: &Obis| resolver.obis.get(o).map(|d| d.class_id).unwrap_or(3);
        // Nested pairs: [{obis, value}, ...].
        let nested: Option<Vec<_>> = items
            .iter()
            .map(|i| match i {
                Data::Structure(p) => match p.as_slice() {
                    [o, v] => obis_of(o).map(|o| (AttributeDescriptor::new(class_of(&o), o, 2), v.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        if let Some(pairs) = nested.filter(|p| !p.is_empty()) {
            return pairs;
        }
        // Flat pairs: [obis, value, obis, value, ...].
        if items.len().is_multiple_of(2) && !items.is_empty() {
            let flat: Option<Vec<_>> = items
                .chunks(2)
                .map(|c| match c {
                    [o, v] => obis_of(o).map(|o| (AttributeDescriptor::new(class_of(&o), o, 2), v.clone())),
                    _ => None,
                })
                .collect();
            if let Some(pairs) = flat {
                return pairs;
            }
        }
        let configured = &self.conn.ctx.config.dlms.push_objects;
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let obis = configured
                    .get(i)
                    .and_then(|c| c.get().copied())
                    // Unnamed values get a private OBIS code (A=0, B=128, C=128 + position) so they stay distinct.
                    .unwrap_or(Obis::new(0, 128, 128, 0, i as u8, 255));
                (AttributeDescriptor::new(class_of(&obis), obis, 2), v)
            })
            .collect()
    }

    /// A normalised reading for `value` of `attribute` (scaled by the meter's scaler_unit, else the registry's).
    fn reading(&self, meter: &MeterId, attribute: &AttributeDescriptor, value: &Data) -> Option<Reading> {
        let resolver = self.conn.ctx.resolver.get();
        let registry = &resolver.obis;
        let def = registry.get(&attribute.obis);
        let base_key = def.map(|d| d.key.clone()).unwrap_or_else(|| obis_key(&attribute.obis));
        let key = if attribute.attribute == 2 { base_key } else { format!("{base_key}_ATTR{}", attribute.attribute) };
        let quantity = def.map(|d| d.quantity).unwrap_or(ivy_protocol::Quantity::Other);
        let meter_scaler = self.scalers.get(&attribute.obis).copied();
        let registry_unit = def.map(|d| d.unit.clone()).filter(|u| !u.is_empty());
        let (reading_value, raw_value, unit) = match value {
            Data::Float32(_) | Data::Float64(_) => {
                (ReadingValue::Number(value.as_f64()?), json!(value.as_f64()), registry_unit)
            }
            v if v.as_i128().is_some() && !matches!(v, Data::Boolean(_) | Data::Enum(_)) => {
                let raw = v.as_i128()?;
                let (scaler, unit) = match meter_scaler {
                    Some((s, code)) => {
                        let meter_unit = unit_symbol(code).filter(|u| !u.is_empty()).map(str::to_owned);
                        normalise_unit(s, meter_unit, registry_unit)
                    }
                    None => (def.and_then(|d| d.default_scaler).unwrap_or(0), registry_unit),
                };
                (ReadingValue::Number(apply_scaler(raw, scaler)), json_int(raw), unit)
            }
            Data::Boolean(b) => (ReadingValue::Number(f64::from(u8::from(*b))), json!(b), None),
            Data::Enum(e) => (ReadingValue::Number(f64::from(*e)), json!(e), None),
            Data::OctetString(b) if b.len() == 12 && attribute.obis == CLOCK || matches!(value, Data::DateTime(_)) => {
                let bytes: [u8; 12] = match value {
                    Data::DateTime(b) => *b,
                    Data::OctetString(b) => b.as_slice().try_into().ok()?,
                    _ => return None,
                };
                let t = CosemDateTime::from_bytes(&bytes);
                (ReadingValue::Text(t.iso().unwrap_or_default()), json!(hex::encode(bytes)), None)
            }
            other => match other.as_text() {
                Some(text) => (ReadingValue::Text(text), json!(other.as_bytes().map(hex::encode)), None),
                None => (ReadingValue::Json(Value::Object(data_json(other))), Value::Null, None),
            },
        };
        self.conn.ctx.metrics.readings.inc();
        Some(Reading {
            meter_id: meter.clone(),
            source: Source::Dlms,
            register: key,
            data_id: attribute.obis.to_string(),
            value: reading_value,
            raw_value,
            unit,
            quantity,
            ts: now_ms(),
            meta: Default::default(),
        })
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
                tracing::warn!(meter = %meter, error = %e, "DLMS poll failed");
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
        self.conn.ctx.resolver.get().obis.get(obis).map(|d| d.key.clone()).unwrap_or_else(|| obis_key(obis))
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
        let offset_min = self.conn.ctx.config.meters.clock_utc_offset_minutes;
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

/// `OBIS_1_0_12_7_0_255` for codes the registry does not name.
fn obis_key(o: &Obis) -> String {
    let [a, b, c, d, e, f] = o.bytes();
    format!("OBIS_{a}_{b}_{c}_{d}_{e}_{f}")
}

/// The meter's scaler and unit, converted to the registry's unit when it is the same unit with a `k` prefix
/// (Wh → kWh): the published unit stays the one clients expect.
fn normalise_unit(scaler: i8, meter_unit: Option<String>, registry_unit: Option<String>) -> (i8, Option<String>) {
    match (meter_unit, registry_unit) {
        (Some(m), Some(r)) if r == format!("k{m}") => (scaler.saturating_sub(3), Some(r)),
        (Some(m), _) => (scaler, Some(m)),
        (None, r) => (scaler, r),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_normalised_to_the_registry() {
        assert_eq!(normalise_unit(0, Some("Wh".into()), Some("kWh".into())), (-3, Some("kWh".into())));
        assert_eq!(normalise_unit(-2, Some("V".into()), Some("V".into())), (-2, Some("V".into())));
        assert_eq!(normalise_unit(1, None, Some("W".into())), (1, Some("W".into())));
        assert_eq!(obis_key(&Obis::new(1, 0, 99, 1, 0, 255)), "OBIS_1_0_99_1_0_255");
    }
}
