//! The DL/T 645 conversation of one connection: identification (first frame from a meter, or the read-address probe
//! after silence), several meters on one connection (RS-485 behind a DTU), polling with timeout and retries, and
//! commands. Everything on the wire is one exchange at a time: polls and commands never interleave.

use super::conn::{Conn, EndReason, ReadOutcome};
use super::driver::{self, Driver, Failure, Reads};
use super::poll::{self, PollTimer};
use super::{RelayConfirmation, RelayDetail, RelayMode, RelayState, TimeSet};
use crate::config::Parsed;
use crate::error::{ErrorCode, OpError};
use crate::metrics::PollOutcome;
use crate::model::{Reading, ReadingValue, Source, now_ms};
use crate::registers::Target;
use ivy_protocol::dlms::{AttributeDescriptor, Data};
use ivy_protocol::dlt645::control::function;
use ivy_protocol::dlt645::registers::{DecodedValue, RELAY_STATUS_DI};
use ivy_protocol::dlt645::{
    Address, ErrorFlags, Frame, Framer, FramerEvent, MeterDateTime, RelayAuth, RelayCommand, Reply,
};
use ivy_protocol::registration::MeterId;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Most follow-up frames read for one register.
const MAX_FOLLOW_UPS: u8 = 16;

struct Meter {
    id: MeterId,
    address: Address,
    timer: PollTimer,
    plan: Vec<u32>,
    /// DIs the meter said it does not have: not polled again on this connection.
    skip: HashSet<u32>,
}

/// What a reply must look like to answer a request.
#[derive(Debug, Clone, Copy)]
struct Expect {
    /// `None` for requests to the wildcard address.
    address: Option<Address>,
    function: u8,
    di: Option<u32>,
}

impl Expect {
    fn matches(&self, f: &Frame) -> bool {
        f.control.from_meter()
            && f.control.function() == self.function
            && self.address.is_none_or(|a| a == f.address)
            && (f.control.abnormal() || self.di.is_none() || f.data_id().map(u32::from) == self.di)
    }
}

/// Why an exchange produced no reply.
enum ExchangeError {
    Timeout,
    End(EndReason),
}

/// Why a register read failed.
enum ReadError {
    Meter(ErrorFlags),
    Timeout,
    End(EndReason),
}

struct Dlt645Driver<'a> {
    conn: &'a mut Conn,
    framer: Framer,
    meters: Vec<Meter>,
    probe_at: Instant,
}

/// Runs the DL/T 645 conversation until the connection ends.
pub(crate) async fn run(
    conn: &mut Conn,
    requests: &mut mpsc::Receiver<super::QueuedRequest>,
    leftover: Vec<u8>,
) -> EndReason {
    let probe_after = Duration::from_secs(conn.ctx.config.meters.identify_after_secs);
    let mut s =
        Dlt645Driver { conn, framer: Framer::new(), meters: Vec::new(), probe_at: Instant::now() + probe_after };
    s.framer.push(&leftover);
    match s.main_loop(requests).await {
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
                request = requests.recv() => {
                    if let Some(request) = request {
                        driver::execute(self, *request).await?;
                    }
                }
                _ = tokio::time::sleep_until(poll_due.unwrap_or(far)), if poll_due.is_some() => {
                    self.poll_due().await?;
                }
                _ = tokio::time::sleep_until(self.probe_at), if unidentified => {
                    // A silent connection: ask whoever is there for its address.
                    self.send(&Frame::read_address()).await?;
                    self.probe_at = Instant::now() + Duration::from_secs(self.conn.ctx.config.meters.identify_after_secs);
                }
            }
        }
    }

    /// Handles frames already buffered (identification, unsolicited readings).
    async fn drain_frames(&mut self) -> Result<(), EndReason> {
        while let Some(event) = self.framer.next_event() {
            match event {
                FramerEvent::Frame(f) => self.on_frame(&f),
                FramerEvent::Discarded { reason, .. } => self.on_discard(reason),
            }
        }
        if self.framer.buffered() > self.conn.ctx.config.meters.buffer_cap {
            return Err(EndReason::BufferOverflow);
        }
        Ok(())
    }

    fn on_discard(&self, reason: Option<ivy_protocol::dlt645::FrameError>) {
        self.conn.ctx.metrics.parse_error(reason.map(|r| r.kind()).unwrap_or("dlt645_garbage"));
    }

    /// A frame that answers nothing outstanding: identifies its meter, and publishes a reading if it carries one.
    fn on_frame(&mut self, f: &Frame) {
        self.conn.ctx.metrics.frame("dlt645");
        if !f.control.from_meter() {
            return;
        }
        let Some(index) = self.identify(f.address) else { return };
        if let Reply::Data { di, value, .. } = f.reply()
            && let Some(m) = self.meters.get(index)
            && let Some(reading) = self.decode(&m.id.clone(), di.into(), value)
        {
            let id = m.id.clone();
            driver::publish(self.conn, &id, Source::Dlt645, vec![reading]);
        }
    }

    /// Finds or registers the meter at `address`; `None` for addresses that cannot be meter ids.
    fn identify(&mut self, address: Address) -> Option<usize> {
        if let Some(i) = self.meters.iter().position(|m| m.address == address) {
            // A later frame from a meter this connection lost to a reconnect elsewhere is not ours any more.
            return self.meters.get(i).filter(|m| self.conn.holds(&m.id)).map(|_| i);
        }
        if !address.is_bcd() || address.is_special() {
            tracing::debug!(peer = %self.conn.peer, %address, "frame from an address that is not a meter id");
            return None;
        }
        let id = MeterId::new(address.to_string()).ok()?;
        self.conn.identify(&id, Source::Dlt645);
        let plan = self.conn.ctx.resolver.dlt_poll_plan(&id);
        let timer = PollTimer::start(&self.conn.ctx, &id, !plan.is_empty());
        self.meters.push(Meter { id, address, timer, plan, skip: HashSet::new() });
        Some(self.meters.len() - 1)
    }

    async fn send(&mut self, frame: &Frame) -> Result<(), EndReason> {
        let preamble = self.conn.ctx.config.dlt645.wakeup_preamble;
        self.conn.send(&frame.encode_with_preamble(preamble)).await
    }

    /// Sends `frame` and waits for the reply `expect` describes, handling anything else that arrives meanwhile.
    async fn exchange(&mut self, frame: &Frame, expect: Expect, deadline: Instant) -> Result<Frame, ExchangeError> {
        self.send(frame).await.map_err(ExchangeError::End)?;
        loop {
            while let Some(event) = self.framer.next_event() {
                match event {
                    FramerEvent::Frame(f) if expect.matches(&f) => {
                        self.conn.ctx.metrics.frame("dlt645");
                        // The reply also identifies (or confirms) the meter.
                        self.identify(f.address);
                        return Ok(f);
                    }
                    FramerEvent::Frame(f) => self.on_frame(&f),
                    FramerEvent::Discarded { reason, .. } => self.on_discard(reason),
                }
            }
            if self.framer.buffered() > self.conn.ctx.config.meters.buffer_cap {
                return Err(ExchangeError::End(EndReason::BufferOverflow));
            }
            tokio::select! {
                outcome = self.conn.read() => match outcome {
                    ReadOutcome::Data => self.framer.push(&self.conn.input),
                    ReadOutcome::End(reason) => return Err(ExchangeError::End(reason)),
                },
                _ = tokio::time::sleep_until(deadline) => return Err(ExchangeError::Timeout),
            }
        }
    }

    /// Reads one register (with retries and follow-up frames) before `deadline`; returns its value bytes.
    async fn read_register(&mut self, address: Address, di: u32, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        let cfg = &self.conn.ctx.config.dlt645;
        let per_try = Duration::from_millis(cfg.timeout_ms);
        let retries = cfg.retries;
        let expect = Expect { address: Some(address), function: function::READ, di: Some(di) };
        let mut reply = None;
        for _ in 0..=retries {
            let try_deadline = (Instant::now() + per_try).min(deadline);
            match self.exchange(&Frame::read(address, di.into()), expect, try_deadline).await {
                Ok(f) => {
                    reply = Some(f);
                    break;
                }
                Err(ExchangeError::End(r)) => return Err(ReadError::End(r)),
                Err(ExchangeError::Timeout) if Instant::now() >= deadline => return Err(ReadError::Timeout),
                Err(ExchangeError::Timeout) => {}
            }
        }
        let Some(frame) = reply else { return Err(ReadError::Timeout) };
        let (mut value, mut more) = match frame.reply() {
            Reply::Data { value, follow_up, .. } => (value.to_vec(), follow_up),
            Reply::Error { flags, .. } => return Err(ReadError::Meter(flags)),
            _ => return Err(ReadError::Meter(ErrorFlags(0))),
        };
        let mut seq = 1u8;
        while more && seq <= MAX_FOLLOW_UPS {
            let expect = Expect { address: Some(address), function: function::READ_FOLLOW_UP, di: Some(di) };
            let try_deadline = (Instant::now() + per_try).min(deadline);
            let f = match self.exchange(&Frame::read_follow_up(address, di.into(), seq), expect, try_deadline).await {
                Ok(f) => f,
                Err(ExchangeError::Timeout) => return Err(ReadError::Timeout),
                Err(ExchangeError::End(r)) => return Err(ReadError::End(r)),
            };
            match f.reply() {
                // Follow-up data: DI, the value bytes, then the sequence number.
                Reply::Data { value: v, follow_up, .. } => {
                    value.extend_from_slice(v.split_last().map(|(_, rest)| rest).unwrap_or(v));
                    more = follow_up;
                }
                Reply::Error { flags, .. } => return Err(ReadError::Meter(flags)),
                _ => return Err(ReadError::Meter(ErrorFlags(0))),
            }
            seq += 1;
        }
        Ok(value)
    }

    /// A normalised reading for `di`, or `None` (logged, counted) when the value does not decode.
    fn decode(&self, meter: &MeterId, di: u32, value: &[u8]) -> Option<Reading> {
        let catalogue = &self.conn.ctx.resolver.catalogue;
        let def = catalogue.by_di(di.into());
        let decoded = match catalogue.decode(di.into(), value) {
            Ok(v) => v,
            Err(e) => {
                self.conn.ctx.metrics.parse_error(e.kind());
                tracing::warn!(meter = %meter, di = format!("{di:08x}"), error = %e, "DL/T 645 value does not decode");
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
            register: def.map(|d| d.key.clone()).unwrap_or_else(|| format!("DI_{di:08X}")),
            data_id: format!("0x{di:08x}"),
            value,
            raw_value,
            unit: def.map(|d| d.unit.clone()).filter(|u| !u.is_empty()),
            quantity: def.map(|d| d.quantity).unwrap_or(ivy_protocol::Quantity::Other),
            ts: now_ms(),
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
        let plan: Vec<u32> = m.plan.iter().copied().filter(|di| !m.skip.contains(di)).collect();
        let started = Instant::now();
        let cfg = &self.conn.ctx.config.dlt645;
        let per_register = Duration::from_millis(cfg.timeout_ms) * (cfg.retries + 1);
        let mut readings = Vec::with_capacity(plan.len());
        let mut outcome = PollOutcome::Ok;
        for di in plan {
            match self.read_register(address, di, Instant::now() + per_register).await {
                Ok(value) => readings.extend(self.decode(&id, di, &value)),
                Err(ReadError::Meter(flags)) => {
                    outcome = PollOutcome::Partial;
                    // "No requested data": the meter does not have this register; stop asking until it reconnects.
                    if flags.0 & 0x02 != 0
                        && let Some(m) = self.meters.get_mut(index)
                    {
                        m.skip.insert(di);
                    }
                    tracing::debug!(meter = %id, di = format!("{di:08x}"), error = %flags, "meter refused a register");
                }
                Err(ReadError::Timeout) => {
                    // A meter that does not answer one register (after retries) will not answer the next ones.
                    outcome = PollOutcome::Timeout;
                    tracing::warn!(meter = %id, di = format!("{di:08x}"), "poll timed out");
                    break;
                }
                Err(ReadError::End(r)) => return Err(r),
            }
        }
        driver::publish(self.conn, &id, Source::Dlt645, readings);
        poll::count_cycle(self.conn, outcome, started);
        if let Some(m) = self.meters.get_mut(index) {
            m.timer.schedule_next(&self.conn.ctx.config.polling, started);
        }
        Ok(())
    }

    fn register_key(&self, di: u32) -> String {
        self.conn
            .ctx
            .resolver
            .catalogue
            .by_di(di.into())
            .map(|d| d.key.clone())
            .unwrap_or_else(|| format!("DI_{di:08X}"))
    }

    fn address_of(&self, meter: &MeterId) -> Result<Address, Failure> {
        self.meters
            .iter()
            .find(|m| &m.id == meter)
            .map(|m| m.address)
            .ok_or_else(|| Failure::Op(OpError::new(ErrorCode::MeterNotConnected, "meter is not on this connection")))
    }

    /// Sends `frame` and waits for the reply `expect` describes; a timeout is the operation's failure.
    async fn request(&mut self, frame: &Frame, expect: Expect, deadline: Instant) -> Result<Frame, Failure> {
        self.exchange(frame, expect, deadline).await.map_err(|e| match e {
            ExchangeError::Timeout => Failure::Op(driver::timeout()),
            ExchangeError::End(r) => Failure::End(r),
        })
    }

    /// Reads one register for a command: a meter refusal or a timeout is the operation's failure.
    async fn read_value(&mut self, address: Address, di: u32, deadline: Instant) -> Result<Vec<u8>, Failure> {
        self.read_register(address, di, deadline).await.map_err(|e| match e {
            ReadError::Meter(flags) => Failure::Op(meter_error(flags)),
            ReadError::Timeout => Failure::Op(driver::timeout()),
            ReadError::End(r) => Failure::End(r),
        })
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
        let mut reads = Reads::default();
        for target in targets {
            let Target::Dlt645(di) = target else {
                reads.stopped = Some(driver::unsupported("OBIS registers cannot be read from a DL/T 645 meter"));
                break;
            };
            let key = self.register_key(di);
            let result = match self.read_register(address, di, deadline).await {
                Ok(value) => self
                    .decode(meter, di, &value)
                    .ok_or_else(|| OpError::new(ErrorCode::MeterError, format!("the value of {key} does not decode"))),
                Err(ReadError::Meter(flags)) => Err(meter_error(flags)),
                Err(ReadError::Timeout) => {
                    reads.stopped = Some(Failure::Op(driver::timeout()));
                    break;
                }
                Err(ReadError::End(r)) => {
                    reads.stopped = Some(Failure::End(r));
                    break;
                }
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
        let frame = Frame::relay_control(address, command, &auth, &valid_until, key.as_ref());
        let expect = Expect { address: Some(address), function: function::RELAY_CONTROL, di: None };
        match self.request(&frame, expect, deadline).await?.reply() {
            Reply::Ack(_) => Ok(RelayConfirmation::Acknowledged(command.name())),
            Reply::Error { flags, .. } => Err(Failure::Op(meter_error(flags))),
            _ => Err(driver::unexpected(" to relay control")),
        }
    }

    async fn read_relay_state(&mut self, meter: &MeterId, deadline: Instant) -> Result<RelayDetail, Failure> {
        let address = self.address_of(meter)?;
        let value = self.read_value(address, RELAY_STATUS_DI.into(), deadline).await?;
        match value.as_slice() {
            [lo, hi, ..] => Ok(RelayDetail::Dlt645 { status_word_3: u16::from_le_bytes([*lo, *hi]) }),
            _ => Err(Failure::Op(OpError::new(ErrorCode::MeterError, "status word 3 is too short"))),
        }
    }

    async fn read_address(&mut self, _meter: &MeterId, deadline: Instant) -> Result<String, Failure> {
        let expect = Expect { address: None, function: function::READ_ADDRESS, di: None };
        match self.request(&Frame::read_address(), expect, deadline).await?.reply() {
            Reply::Address(a) => Ok(a.to_string()),
            Reply::Error { flags, .. } => Err(Failure::Op(meter_error(flags))),
            _ => Err(driver::unexpected(" to read address")),
        }
    }

    async fn sync_time(&mut self, _meter: &MeterId, unix_ms: i64, _deadline: Instant) -> Result<TimeSet, Failure> {
        let offset = i64::from(self.conn.ctx.config.meters.clock_utc_offset_minutes) * 60;
        let local = MeterDateTime::from_unix(unix_ms.div_euclid(1000) + offset)
            .map_err(|e| Failure::Op(OpError::new(ErrorCode::InvalidParams, e.to_string())))?;
        // Broadcast time has no reply by design: success means the frame was sent.
        self.send(&Frame::broadcast_time(&local)).await?;
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
}

fn meter_error(flags: ErrorFlags) -> OpError {
    OpError::new(ErrorCode::MeterError, format!("the meter refused: {flags}"))
        .with_details(json!({"error_flags": flags.names(), "error_code": flags.0}))
}
