//! The DL/T 645 conversation of one connection: identification (first frame from a meter, or the read-address probe
//! after silence), several meters on one connection (RS-485 behind a DTU), polling and commands. The exchanges
//! (retries, follow-up frames, matching, late replies, two-layer outcomes) are the sans-IO [`Client`]; this module
//! moves bytes and time, and normalises values. One exchange at a time: polls and commands never interleave.

use super::conn::{Conn, EndReason, ReadOutcome};
use super::driver::{self, Driver, Failure, Reads, WARN_EVERY, WarnLimiter};
use super::poll::{self, PollTimer};
use super::{RelayConfirmation, RelayDetail, RelayMode, RelayState, TimeSet};
use crate::config::Parsed;
use crate::error::{ErrorCode, ErrorDetails, OpError};
use crate::metrics::PollOutcome;
use crate::model::{Reading, ReadingValue, Source, now_ms};
use crate::registers::Target;
use ivy_protocol::dlms::{AttributeDescriptor, Data};
use ivy_protocol::dlt645::client::{
    Client, ClientConfig, Event, MeterError, Outcome, Request, Response, TransportError,
};
use ivy_protocol::dlt645::registers::{DecodedValue, RELAY_STATUS_DI};
use ivy_protocol::dlt645::{
    Address, Di, ErrorFlags, Frame, Framer, FramerEvent, MeterDateTime, RelayAuth, RelayCommand, Reply,
};
use ivy_protocol::registration::MeterId;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

struct Meter {
    id: MeterId,
    address: Address,
    timer: PollTimer,
    plan: Vec<Di>,
    /// DIs the meter said it does not have: not polled again on this connection.
    skip: HashSet<Di>,
    /// What this meter's replies (or their absence) keep triggering is logged at most once a minute.
    warn: WarnLimiter,
}

struct Dlt645Driver<'a> {
    conn: &'a mut Conn,
    framer: Framer,
    client: Client,
    meters: Vec<Meter>,
    probe_at: Instant,
    /// Addresses whose identification was refused, and when: not tried again for [`RETRY_REFUSED`].
    refused: HashMap<Address, Instant>,
}

/// How long a refused address is ignored before its identification is tried again.
const RETRY_REFUSED: Duration = Duration::from_secs(60);

/// The communication address register (DL/T 645-2007 appendix A, DI 04000401): a read any meter answers, used to
/// probe whether a meter is still on a connection.
const COMMUNICATION_ADDRESS_DI: Di = Di::new(0x0400_0401);

/// Runs the DL/T 645 conversation until the connection ends.
pub(crate) async fn run(
    conn: &mut Conn,
    requests: &mut mpsc::Receiver<super::QueuedRequest>,
    leftover: Vec<u8>,
) -> EndReason {
    let probe_after = Duration::from_secs(conn.ctx.config.meters.identify_after_secs);
    let cfg = &conn.ctx.config.dlt645;
    let client = Client::new(ClientConfig {
        response_timeout: Duration::from_millis(cfg.timeout_ms),
        retries: cfg.retries,
        wakeup_preamble: cfg.wakeup_preamble,
        ..ClientConfig::default()
    });
    let mut s = Dlt645Driver {
        conn,
        framer: Framer::new(),
        client,
        meters: Vec::new(),
        probe_at: Instant::now() + probe_after,
        refused: HashMap::new(),
    };
    s.framer.push(&leftover);
    let result = s.main_loop(requests).await;
    s.client.abort();
    match result {
        Ok(never) => match never {},
        Err(reason) => reason,
    }
}

enum Never {}

impl Dlt645Driver<'_> {
    async fn main_loop(&mut self, requests: &mut mpsc::Receiver<super::QueuedRequest>) -> Result<Never, EndReason> {
        loop {
            self.drain_frames().await?;
            let poll_due = self.meters.iter().filter_map(|m| m.timer.due_at()).min();
            let far = Instant::now() + Duration::from_secs(3600);
            let unidentified = self.meters.is_empty();
            tokio::select! {
                biased;
                outcome = self.conn.read() => match outcome {
                    ReadOutcome::Data => self.framer.push(&self.conn.input),
                    ReadOutcome::End(reason) => return Err(reason),
                },
                // A command or a poll cycle is boxed for its duration: inline, its state would make every
                // connection's task as large as the largest of them for its whole life, waiting or not.
                request = requests.recv() => {
                    if let Some(request) = request {
                        Box::pin(driver::execute(self, *request)).await?;
                    }
                }
                _ = tokio::time::sleep_until(poll_due.unwrap_or(far)), if poll_due.is_some() => {
                    Box::pin(self.poll_due()).await?;
                }
                _ = tokio::time::sleep_until(self.probe_at), if unidentified => {
                    // A silent connection: ask whoever is there for its address.
                    self.send(&Frame::read_address()).await?;
                    self.probe_at = Instant::now() + Duration::from_secs(self.conn.ctx.config.meters.identify_after_secs);
                }
            }
        }
    }

    /// Hands the frames buffered so far to the client, and what answers nothing in flight (identification,
    /// unsolicited readings, other meters on the bus, late replies) to [`Self::on_frame`].
    async fn drain_frames(&mut self) -> Result<(), EndReason> {
        self.drain_frames_into_client()?;
        self.drain_unmatched().await?;
        Ok(())
    }

    /// Frames the client did not match; a request's outcome is left for [`Self::call`].
    async fn drain_unmatched(&mut self) -> Result<Option<(u64, Outcome)>, EndReason> {
        let mut done = None;
        while let Some(event) = self.client.poll_event() {
            match event {
                Event::Unmatched(f) => self.on_frame(&f).await?,
                Event::Done { id, outcome } => done = Some((id, outcome)),
            }
        }
        Ok(done)
    }

    fn on_discard(&self, reason: Option<ivy_protocol::dlt645::FrameError>) {
        self.conn.ctx.metrics.parse_error(reason.map(|r| r.kind()).unwrap_or("dlt645_garbage"));
    }

    /// A frame that answers nothing outstanding: identifies its meter, and publishes a reading if it carries one.
    async fn on_frame(&mut self, f: &Frame) -> Result<(), EndReason> {
        if !f.control.from_meter() {
            return Ok(());
        }
        let Some(index) = self.identify(f.address).await? else { return Ok(()) };
        if let Reply::Data { di, value, .. } = f.reply()
            && let Some(reading) = self.decode(index, di, value)
            && let Some(id) = self.meters.get(index).map(|m| m.id.clone())
        {
            driver::publish(self.conn, &id, Source::Dlt645, vec![reading]);
        }
        Ok(())
    }

    /// Finds or registers the meter at `address`; `None` for addresses that cannot be meter ids, that this
    /// connection lost to another, or whose identification was refused. A refusal ends a connection that holds no
    /// other meter (one DTU may hold several; the others keep working), and a TLS connection that claimed more ids
    /// its certificate does not name than `meters.max_ids_per_connection`.
    async fn identify(&mut self, address: Address) -> Result<Option<usize>, EndReason> {
        if let Some(i) = self.meters.iter().position(|m| m.address == address) {
            // A later frame from a meter this connection lost to a reconnect elsewhere is not ours any more.
            return Ok(self.meters.get(i).filter(|m| self.conn.holds(&m.id)).map(|_| i));
        }
        if !address.is_bcd() || address.is_special() {
            tracing::debug!(peer = %self.conn.peer, %address, "frame from an address that is not a meter id");
            return Ok(None);
        }
        if self.refused.get(&address).is_some_and(|t| t.elapsed() < RETRY_REFUSED) {
            return Ok(None);
        }
        let Ok(id) = MeterId::new(address.to_string()) else { return Ok(None) };
        if let Err(refusal) = self.conn.identify(&id, Source::Dlt645).await {
            if self.meters.is_empty() || self.conn.too_many_certificate_mismatches() {
                return Err(EndReason::IdentityRefused(refusal));
            }
            // Bounded like the ids themselves.
            if self.refused.len() < self.conn.ctx.config.meters.max_ids_per_connection.get() {
                self.refused.insert(address, Instant::now());
            }
            return Ok(None);
        }
        let plan = self.conn.ctx.resolver.get().dlt_poll_plan(&id);
        let timer = PollTimer::start(&self.conn.ctx, &id, !plan.is_empty());
        self.meters.push(Meter { id, address, timer, plan, skip: HashSet::new(), warn: WarnLimiter::new(WARN_EVERY) });
        Ok(Some(self.meters.len() - 1))
    }

    async fn send(&mut self, frame: &Frame) -> Result<(), EndReason> {
        let preamble = self.conn.ctx.config.dlt645.wakeup_preamble;
        self.conn.send(&frame.encode_with_preamble(preamble)).await
    }

    /// Runs one client request to its outcome (bounded by `deadline`): sends what the client hands out, feeds it
    /// every frame, sleeps until its next timer. `Err` only when the connection ended.
    async fn call(&mut self, request: Request, deadline: Instant) -> Result<Outcome, EndReason> {
        let id = match self.client.request_until(request, deadline.into_std()) {
            Ok(id) => id,
            Err(e) => {
                return Ok(Err(TransportError::Unexpected { control: 0, reason: submit_problem(&e) }));
            }
        };
        loop {
            while let Some(bytes) = self.client.poll_transmit(Instant::now().into_std()) {
                self.conn.send(&bytes).await?;
            }
            if let Some((done, outcome)) = self.drain_unmatched().await?
                && done == id
            {
                return Ok(outcome);
            }
            let wake = self.client.poll_timeout().map_or(deadline, Instant::from_std);
            tokio::select! {
                outcome = self.conn.read() => match outcome {
                    ReadOutcome::Data => {
                        self.framer.push(&self.conn.input);
                        self.drain_frames_into_client()?;
                    }
                    ReadOutcome::End(reason) => return Err(reason),
                },
                _ = tokio::time::sleep_until(wake) => self.client.handle_timeout(Instant::now().into_std()),
            }
        }
    }

    /// Feeds buffered frames to the client without consuming its events (the caller waits for one).
    fn drain_frames_into_client(&mut self) -> Result<(), EndReason> {
        while let Some(event) = self.framer.next_event() {
            match event {
                FramerEvent::Frame(f) => {
                    self.conn.ctx.metrics.frame("dlt645");
                    self.client.handle_frame(f);
                }
                FramerEvent::Discarded { reason, .. } => self.on_discard(reason),
            }
        }
        if self.framer.buffered() > self.conn.ctx.config.meters.buffer_cap.get() {
            return Err(EndReason::BufferOverflow);
        }
        Ok(())
    }

    /// Runs a request whose answer is one operation's: the meter's refusal and the transport's failures are the
    /// operation's failure; the connection's end is the session's.
    async fn request(&mut self, request: Request, deadline: Instant) -> Result<Response, Failure> {
        match self.call(request, deadline).await? {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(refused)) => Err(Failure::Op(meter_error(refused.flags()))),
            Err(e) => Err(transport_failure(e)),
        }
    }

    /// Reads one register's value bytes (follow-up frames joined) for an operation.
    async fn read_value(&mut self, address: Address, di: Di, deadline: Instant) -> Result<Vec<u8>, Failure> {
        match self.request(Request::Read { address, di }, deadline).await? {
            Response::Data { value, .. } => Ok(value),
            _ => Err(driver::unexpected(" to read data")),
        }
    }

    /// A normalised reading for `di` of meter `index`, or `None` when the value does not decode (counted; logged
    /// at most once a minute per meter).
    fn decode(&mut self, index: usize, di: Di, value: &[u8]) -> Option<Reading> {
        let meter = &self.meters.get(index)?.id.clone();
        let resolver = self.conn.ctx.resolver.get();
        let catalogue = &resolver.catalogue;
        let def = catalogue.by_di(di);
        let decoded = match catalogue.decode(di, value) {
            Ok(v) => v,
            Err(e) => {
                self.conn.ctx.metrics.parse_error(e.kind());
                if let Some(held_back) = self.warn(index) {
                    tracing::warn!(meter = %meter, di = %di, error = %e, held_back, "DL/T 645 value does not decode");
                }
                return None;
            }
        };
        self.conn.ctx.metrics.readings.inc();
        let (value, raw_value) = match &decoded {
            DecodedValue::Number { value, raw, .. } => (ReadingValue::Number(*value), json!(raw)),
            DecodedValue::Status(s) => (ReadingValue::Number(f64::from(*s)), json!(format!("{s:04x}"))),
            DecodedValue::Raw { number: Some(n), hex } => (ReadingValue::Number(*n as f64), json!(hex)),
            other => (ReadingValue::Text(other.to_text()), json!(hex::encode(value))),
        };
        Some(Reading {
            meter_id: meter.clone(),
            source: Source::Dlt645,
            register: def.map(|d| d.key.clone()).unwrap_or_else(|| unnamed_key(di)),
            data_id: di.to_string(),
            value,
            raw_value,
            unit: def.map(|d| d.unit.clone()).filter(|u| !u.is_empty()),
            quantity: def.map(|d| d.quantity).unwrap_or(ivy_protocol::Quantity::Other),
            ts: now_ms(),
            meta: Default::default(),
        })
    }

    /// Polls every meter whose time has come.
    async fn poll_due(&mut self) -> Result<(), EndReason> {
        let now = Instant::now();
        let due: Vec<usize> =
            self.meters.iter().enumerate().filter(|(_, m)| m.timer.is_due(now)).map(|(i, _)| i).collect();
        for index in due {
            let _permit = poll::permit(self.conn).await?;
            self.poll_meter(index).await?;
        }
        Ok(())
    }

    async fn poll_meter(&mut self, index: usize) -> Result<(), EndReason> {
        let Some(m) = self.meters.get(index) else { return Ok(()) };
        if !self.conn.holds(&m.id) {
            // Replaced by a newer connection of the same meter: stop polling it here.
            if let Some(m) = self.meters.get_mut(index) {
                m.timer.stop();
            }
            return Ok(());
        }
        let (id, address) = (m.id.clone(), m.address);
        // Poll groups may have been reloaded (SIGHUP) since the last cycle: poll what is configured now.
        let fresh = self.conn.ctx.resolver.get().dlt_poll_plan(&id);
        let Some(m) = self.meters.get_mut(index) else { return Ok(()) };
        if !m.timer.refresh(&self.conn.ctx, &id, !fresh.is_empty()) {
            return Ok(());
        }
        m.plan = fresh;
        let plan: Vec<Di> = m.plan.iter().copied().filter(|di| !m.skip.contains(di)).collect();
        let started = Instant::now();
        let cfg = &self.conn.ctx.config.dlt645;
        let per_register = Duration::from_millis(cfg.timeout_ms) * (cfg.retries + 1);
        let mut readings = Vec::with_capacity(plan.len());
        let mut outcome = PollOutcome::Ok;
        for di in plan {
            match self.call(Request::Read { address, di }, Instant::now() + per_register).await? {
                Ok(Ok(Response::Data { value, .. })) => readings.extend(self.decode(index, di, &value)),
                Ok(Ok(_)) => outcome = PollOutcome::Partial,
                Ok(Err(refused)) => {
                    outcome = PollOutcome::Partial;
                    // "No requested data": the meter does not have this register; stop asking until it reconnects.
                    if let MeterError::NoRequestedData { .. } = refused
                        && let Some(m) = self.meters.get_mut(index)
                    {
                        m.skip.insert(di);
                    }
                    tracing::debug!(meter = %id, di = %di, error = %refused, "meter refused a register");
                }
                Err(TransportError::Timeout { .. } | TransportError::Deadline) => {
                    // A meter that does not answer one register (after retries) will not answer the next ones.
                    outcome = PollOutcome::Timeout;
                    if let Some(held_back) = self.warn(index) {
                        tracing::warn!(meter = %id, di = %di, held_back, "poll timed out");
                    }
                    break;
                }
                Err(e) => {
                    outcome = PollOutcome::Partial;
                    tracing::debug!(meter = %id, di = %di, error = %e, "unusable reply to a register read");
                }
            }
        }
        driver::publish(self.conn, &id, Source::Dlt645, readings);
        poll::count_cycle(self.conn, outcome, started);
        if let Some(m) = self.meters.get_mut(index) {
            m.timer.schedule_next(&self.conn.ctx.config.polling, started);
        }
        Ok(())
    }

    /// `Some(lines held back)` when meter `index` may log a warning now (see [`WarnLimiter`]).
    fn warn(&mut self, index: usize) -> Option<u64> {
        self.meters.get_mut(index).and_then(|m| m.warn.allow(Instant::now()))
    }

    fn register_key(&self, di: Di) -> String {
        self.conn.ctx.resolver.get().catalogue.by_di(di).map(|d| d.key.clone()).unwrap_or_else(|| unnamed_key(di))
    }

    fn address_of(&self, meter: &MeterId) -> Result<Address, Failure> {
        self.meters
            .iter()
            .find(|m| &m.id == meter)
            .map(|m| m.address)
            .ok_or_else(|| Failure::Op(OpError::new(ErrorCode::MeterNotConnected, "meter is not on this connection")))
    }
}

impl Driver for Dlt645Driver<'_> {
    const SOURCE: Source = Source::Dlt645;

    fn conn(&self) -> &Conn {
        &*self.conn
    }

    fn serves(&self, meter: &MeterId) -> bool {
        self.meters.iter().any(|m| &m.id == meter)
    }

    async fn read(&mut self, meter: &MeterId, targets: Vec<Target>, deadline: Instant) -> Reads {
        let address = match self.address_of(meter) {
            Ok(a) => a,
            Err(f) => return Reads::stopped(f),
        };
        let index = self.meters.iter().position(|m| &m.id == meter).unwrap_or(usize::MAX);
        let mut reads = Reads::default();
        for target in targets {
            let Target::Dlt645(di) = target else {
                reads.stopped = Some(driver::unsupported("OBIS registers cannot be read from a DL/T 645 meter"));
                break;
            };
            let key = self.register_key(di);
            let outcome = match self.call(Request::Read { address, di }, deadline).await {
                Ok(outcome) => outcome,
                Err(reason) => {
                    reads.stopped = Some(Failure::End(reason));
                    break;
                }
            };
            let result = match outcome {
                Ok(Ok(Response::Data { value, .. })) => self
                    .decode(index, di, &value)
                    .ok_or_else(|| OpError::new(ErrorCode::MeterError, format!("the value of {key} does not decode"))),
                Ok(Ok(_)) => Err(OpError::new(ErrorCode::MeterError, "unexpected reply to read data")),
                Ok(Err(refused)) => Err(meter_error(refused.flags())),
                Err(TransportError::Timeout { .. } | TransportError::Deadline) => {
                    reads.stopped = Some(Failure::Op(driver::timeout()));
                    break;
                }
                Err(e) => Err(OpError::new(ErrorCode::MeterError, e.to_string())),
            };
            reads.results.push((key, result));
        }
        reads
    }

    async fn switch_relay(
        &mut self,
        meter: &MeterId,
        state: RelayState,
        mode: RelayMode,
        deadline: Instant,
    ) -> Result<RelayConfirmation, Failure> {
        let address = self.address_of(meter)?;
        // The relay frame carries the password level, password and operator code (and may be AES-encrypted).
        self.conn.secrets_allowed(meter)?;
        let cfg = &self.conn.ctx.config;
        let o = cfg.dlt645.meter_overrides.get(meter.as_str());
        let level = o.and_then(|o| o.password_level).unwrap_or(cfg.dlt645.password_level);
        let password = o.and_then(|o| o.password.clone()).unwrap_or_else(|| cfg.dlt645.password.clone());
        let operator = o.and_then(|o| o.operator_code.clone()).unwrap_or_else(|| cfg.dlt645.operator_code.clone());
        let auth = RelayAuth::new(level, &password, &operator)
            .map_err(|e| Failure::Op(OpError::new(ErrorCode::InvalidParams, format!("relay credentials: {e}"))))?;
        let use_aes = o.and_then(|o| o.relay_aes).unwrap_or(cfg.dlt645.relay_aes_enabled);
        let configured = o.and_then(|o| o.relay_aes_key.as_ref()).or(cfg.dlt645.relay_aes_key.as_ref());
        let key: Option<[u8; 16]> = configured.and_then(Parsed::get).filter(|_| use_aes).map(|k| k.0);
        let offset = i64::from(cfg.meters.clock_utc_offset_minutes) * 60;
        let until_secs = (now_ms() / 1000) as i64 + offset + i64::from(cfg.dlt645.relay_validity_minutes) * 60;
        let valid_until = MeterDateTime::from_unix(until_secs)
            .map_err(|e| Failure::Op(OpError::new(ErrorCode::InvalidParams, e.to_string())))?;
        let command = match (state, mode) {
            (RelayState::Open, _) => RelayCommand::Trip,
            (RelayState::Close, RelayMode::Direct) => RelayCommand::CloseDirect,
            (RelayState::Close, RelayMode::Allow) => RelayCommand::CloseAllowed,
        };
        let request = Request::RelayControl { address, command, auth, valid_until, aes_key: key };
        match self.request(request, deadline).await? {
            Response::Accepted => Ok(RelayConfirmation::Acknowledged(command.name())),
            _ => Err(driver::unexpected(" to relay control")),
        }
    }

    async fn read_relay_state(&mut self, meter: &MeterId, deadline: Instant) -> Result<RelayDetail, Failure> {
        let address = self.address_of(meter)?;
        let value = self.read_value(address, RELAY_STATUS_DI, deadline).await?;
        match value.as_slice() {
            [lo, hi, ..] => Ok(RelayDetail::Dlt645 { status_word_3: u16::from_le_bytes([*lo, *hi]) }),
            _ => Err(Failure::Op(OpError::new(ErrorCode::MeterError, "status word 3 is too short"))),
        }
    }

    async fn read_address(&mut self, _meter: &MeterId, deadline: Instant) -> Result<String, Failure> {
        match self.request(Request::ReadAddress, deadline).await? {
            Response::Address(a) => {
                // The reply also identifies (or confirms) the meter that sent it.
                self.identify(a).await?;
                Ok(a.to_string())
            }
            _ => Err(driver::unexpected(" to read address")),
        }
    }

    async fn sync_time(&mut self, _meter: &MeterId, unix_ms: i64, deadline: Instant) -> Result<TimeSet, Failure> {
        let offset = i64::from(self.conn.ctx.config.meters.clock_utc_offset_minutes) * 60;
        let local = MeterDateTime::from_unix(unix_ms.div_euclid(1000) + offset)
            .map_err(|e| Failure::Op(OpError::new(ErrorCode::InvalidParams, e.to_string())))?;
        // Broadcast time has no reply by design: success means the frame was sent.
        self.request(Request::BroadcastTime(local), deadline).await?;
        Ok(TimeSet { time: Some(local.to_iso()), broadcast: true })
    }

    async fn read_attribute(
        &mut self,
        _meter: &MeterId,
        _attribute: AttributeDescriptor,
        _deadline: Instant,
    ) -> Result<Data, Failure> {
        Err(driver::unsupported("read_obis is a DLMS method; this meter speaks DL/T 645"))
    }

    /// Reads the communication address register at the meter's address; an error reply is an answer too.
    async fn probe(&mut self, meter: &MeterId, deadline: Instant) -> Result<(), Failure> {
        let address = self.address_of(meter)?;
        match self.read_value(address, COMMUNICATION_ADDRESS_DI, deadline).await {
            Ok(_) => Ok(()),
            // A refusal or a reply out of place is an answer; silence or a closed connection is not.
            Err(Failure::Op(e)) if !matches!(e.code, ErrorCode::Timeout | ErrorCode::ConnectionClosed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn meter_error(flags: ErrorFlags) -> OpError {
    OpError::new(ErrorCode::MeterError, format!("the meter refused: {flags}"))
        .with_details(ErrorDetails::Dlt645 { code: flags.0, flags: flags.names() })
}

/// `DI_04000101` for data identifiers the catalogue does not name.
fn unnamed_key(di: Di) -> String {
    format!("DI_{:08X}", di.value())
}

/// What a transport failure means for an operation.
fn transport_failure(e: TransportError) -> Failure {
    match e {
        TransportError::Timeout { .. } | TransportError::Deadline => Failure::Op(driver::timeout()),
        TransportError::Aborted => Failure::Op(driver::connection_closed()),
        other => Failure::Op(OpError::new(ErrorCode::MeterError, other.to_string())),
    }
}

/// Why the client refused to send a request (none of this driver's requests should be refused).
fn submit_problem(e: &ivy_protocol::dlt645::client::SubmitError) -> &'static str {
    match e {
        ivy_protocol::dlt645::client::SubmitError::Busy(_) => "another request is in flight",
        ivy_protocol::dlt645::client::SubmitError::Build(_) => "the frame cannot be built",
        ivy_protocol::dlt645::client::SubmitError::BroadcastAddress => "meters do not reply to the broadcast address",
    }
}
