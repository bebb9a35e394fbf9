//! A sans-IO DL/T 645-2007 master (the gateway's side), shaped like [`Association`](crate::dlms::association):
//! no sockets, no clock. The caller submits a [`Request`], sends the bytes [`Client::poll_transmit`] returns,
//! feeds every frame its [`Framer`](super::Framer) produces to [`Client::handle_frame`], sleeps until
//! [`Client::poll_timeout`] and then calls [`Client::handle_timeout`] with the time it woke, and reads results
//! from [`Client::poll_event`].
//!
//! ## What happens inside
//!
//! * **Matching.** A frame answers the request in flight when it comes from the meter (control bit 7), carries the
//!   request's function (`91`/`B1`/`D1` answer `11`, `92`/`B2`/`D2` answer `12`, `93` answers `13`, `94`/`D4`
//!   answer `14`, `9C`/`DC` answer `1C`), comes from the addressed meter (any address for read-address and for
//!   requests to the wildcard `AAAAAAAAAAAA`), and for normal read replies carries the requested DI (and, for
//!   follow-up replies, the requested sequence number). Anything else is handed back as [`Event::Unmatched`]:
//!   frames from other meters on the bus, unsolicited frames, late replies to earlier requests or attempts. A
//!   reply from the wrong address therefore never completes a request; the request retries and times out.
//! * **Retries.** Each frame sent waits [`ClientConfig::response_timeout`] for its reply; without one it is sent
//!   again, at most [`ClientConfig::retries`] more times, then the request fails with
//!   [`TransportError::Timeout`]. Every request this client sends is idempotent (a read, a write of a value, a
//!   relay switch to a state), so a repeat is safe when only the reply was lost. The optional deadline of
//!   [`Client::request_until`] bounds the request as a whole ([`TransportError::Deadline`]).
//! * **Follow-up frames** (clause 7.2, "read follow-up data"): a read reply with the follow-up bit (`B1`) is
//!   followed by `12` requests carrying the DI and a frame sequence number `SEQ` counting from 1; each `92`/`B2`
//!   reply carries the DI, more value bytes and the `SEQ` it answers as its last byte, which is checked and
//!   stripped. The value bytes are concatenated in order; at most [`ClientConfig::max_follow_ups`] follow-ups
//!   are read, a meter announcing more fails the request ([`TransportError::TooManyFollowUps`]) instead of
//!   returning a silently truncated value.
//! * **Two-layer outcome** (as tokio-modbus): [`Outcome`] is `Result<Result<Response, MeterError>, TransportError>`.
//!   The inner error is the meter's own abnormal reply (`D1`, `D4`, `DC`...) with its decoded error bits; "no
//!   requested data" (bit 1) is its own variant ([`MeterError::NoRequestedData`]) because a driver treats it
//!   differently (the register does not exist on this meter: stop asking). The outer error is everything else:
//!   no reply, the deadline, a reply that does not fit, the connection ending.
//! * **Late replies.** DL/T 645 has no transaction id, and only read data carries something that ties a reply to
//!   its request (the DI, and `SEQ` for follow-ups). An error reply, an acknowledgement or an address reply could be
//!   the late answer to an earlier frame that timed out (or to an earlier attempt of a frame answered since). A
//!   meter answers frames in the order it receives them, so the client keeps count: every frame sent whose reply
//!   may still come (all attempts of a frame left unanswered, all but one of a frame answered after a retry) is
//!   remembered per meter and function for [`LATE_REPLY_WINDOWS`] response timeouts after it was sent. While
//!   such a frame is remembered, the next reply of that meter and function that carries no DI is taken as its late
//!   answer ([`Event::Unmatched`]) and the request keeps waiting for its own (retrying if need be); a reply later
//!   than that window is taken as lost. This is what stops a late "no requested data" for one register from being
//!   read as the answer for the next, or a late refusal of one relay command from failing the next.
//!
//! ## One client per connection, addresses explicit
//!
//! A connection may reach several meters (an RS-485 bus behind a DTU). The bus is half-duplex and meters answer
//! whatever is on it, so one exchange at a time is the rule per *connection*, not per meter: one `Client` serves
//! a connection, every [`Request`] names its meter's [`Address`], and a second request while one is in flight is
//! refused with [`SubmitError::Busy`] (the driver owns the queue and its policy). Frames from the other meters
//! arrive as [`Event::Unmatched`] for the driver to use (identification, unsolicited readings).
//!
//! ## Time
//!
//! Time is [`std::time::Instant`] passed in by the caller, as for the DLMS association (`tokio::time::Instant::
//! into_std` for a tokio driver); nothing here reads a clock. The reply timer of a frame starts when
//! [`Client::poll_transmit`] hands it out. [`Client::handle_timeout`] may be called early, late or repeatedly:
//! only what is due changes.

use super::address::Address;
use super::control::{ErrorFlags, function};
use super::di::Di;
use super::frame::{BuildError, Frame, Reply};
use super::relay::{RelayAuth, RelayCommand};
use super::time::MeterDateTime;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// How long each frame waits for its reply (the gateway's `dlt645.timeout_ms`).
    pub response_timeout: Duration,
    /// How many times a frame without reply is sent again before the request fails (`dlt645.retries`).
    pub retries: u32,
    /// Most follow-up frames (`12`) read for one register.
    pub max_follow_ups: u8,
    /// `FE` wake-up bytes sent before every frame (`dlt645.wakeup_preamble`).
    pub wakeup_preamble: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig { response_timeout: Duration::from_secs(5), retries: 2, max_follow_ups: 16, wakeup_preamble: 0 }
    }
}

/// Identifies a submitted request in the events.
pub type RequestId = u64;

/// Work for a meter.
#[derive(Clone, PartialEq, Eq)]
pub enum Request {
    /// Read data (`11`) `di` from the meter at `address`, following up (`12`) while the meter says more follows.
    Read {
        /// The meter (the wildcard `AAAAAAAAAAAA` for whichever meter is on a point-to-point link).
        address: Address,
        /// What to read.
        di: Di,
    },
    /// Read communication address (`13` to `AAAAAAAAAAAA`); whichever meter answers.
    ReadAddress,
    /// Write data (`14`): `value` bytes (plain, least significant first) to `di`, with the password block.
    Write {
        /// The meter.
        address: Address,
        /// What to write.
        di: Di,
        /// Password level, password and operator code.
        auth: RelayAuth,
        /// Value bytes in the register's format.
        value: Vec<u8>,
    },
    /// Relay (trip/close) and alarm control (`1C`).
    RelayControl {
        /// The meter.
        address: Address,
        /// N1.
        command: RelayCommand,
        /// Password level, password and operator code.
        auth: RelayAuth,
        /// Until when the command is valid (meter local time).
        valid_until: MeterDateTime,
        /// AES-128-ECB key for meters that expect the block encrypted.
        aes_key: Option<[u8; 16]>,
    },
    /// Broadcast time (`08` to `999999999999`): no meter replies, so the request completes with
    /// [`Response::Sent`] when its frame is handed out.
    BroadcastTime(MeterDateTime),
}

impl fmt::Debug for Request {
    // Never print the AES key (the password block prints without secrets already).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Read { address, di } => f.debug_struct("Read").field("address", address).field("di", di).finish(),
            Request::ReadAddress => f.write_str("ReadAddress"),
            Request::Write { address, di, auth, value } => f
                .debug_struct("Write")
                .field("address", address)
                .field("di", di)
                .field("auth", auth)
                .field("value", &format_args!("{value:02x?}"))
                .finish(),
            Request::RelayControl { address, command, auth, valid_until, aes_key } => f
                .debug_struct("RelayControl")
                .field("address", address)
                .field("command", command)
                .field("auth", auth)
                .field("valid_until", valid_until)
                .field("aes", &aes_key.is_some())
                .finish(),
            Request::BroadcastTime(t) => f.debug_tuple("BroadcastTime").field(t).finish(),
        }
    }
}

/// A successful result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A read's value: the bytes after the DI (offset removed, least significant first), follow-up frames
    /// concatenated without their sequence bytes.
    Data {
        /// The DI read.
        di: Di,
        /// The value bytes.
        value: Vec<u8>,
    },
    /// The address a meter gave to read-address.
    Address(Address),
    /// The meter accepted a write or a relay control (`94`, `9C`).
    Accepted,
    /// A broadcast frame was handed out for sending (no reply exists).
    Sent,
}

/// The meter answered with an abnormal reply (control bit 6): it understood and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MeterError {
    /// Error bit 1, "no requested data": the meter does not have this register.
    #[error("no requested data ({flags})")]
    NoRequestedData {
        /// The whole error byte.
        flags: ErrorFlags,
    },
    /// Any other error bits (password wrong or unauthorised, other error...).
    #[error("the meter refused: {flags}")]
    Refused {
        /// The error byte.
        flags: ErrorFlags,
    },
}

impl MeterError {
    /// From the error byte of an abnormal reply.
    pub fn from_flags(flags: ErrorFlags) -> Self {
        if flags.0 & NO_REQUESTED_DATA != 0 {
            MeterError::NoRequestedData { flags }
        } else {
            MeterError::Refused { flags }
        }
    }

    /// The error byte.
    pub fn flags(&self) -> ErrorFlags {
        match self {
            MeterError::NoRequestedData { flags } | MeterError::Refused { flags } => *flags,
        }
    }
}

/// Error bit 1 of an abnormal reply.
const NO_REQUESTED_DATA: u8 = 0x02;

/// How many response timeouts after a frame was sent its reply may still arrive (later than that it is lost).
pub const LATE_REPLY_WINDOWS: u32 = 2;

/// Most frames remembered as possibly answered late (the oldest are forgotten first).
const MAX_LATE: usize = 64;

/// Attempts of one frame whose send times are kept (more attempts than that count as sent at the last one kept).
const MAX_SENT_TIMES: usize = 16;

/// A frame sent whose reply may still arrive after its exchange ended.
#[derive(Debug, Clone, Copy)]
struct Late {
    /// `None` when any meter may answer (wildcard requests).
    address: Option<Address>,
    function: u8,
    /// After this the reply is taken as lost.
    until: Instant,
}

/// The exchange broke below the meter's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No matching reply to a frame after it was sent `attempts` times.
    #[error("no reply after {attempts} attempt(s)")]
    Timeout {
        /// Times the last frame was sent.
        attempts: u32,
    },
    /// The request's own deadline passed first.
    #[error("the request's deadline passed")]
    Deadline,
    /// A reply from the addressed meter, for this function, that does not fit the request.
    #[error("unexpected reply (control {control:#04x}): {reason}")]
    Unexpected {
        /// Its control byte.
        control: u8,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The meter kept announcing follow-up frames past [`ClientConfig::max_follow_ups`].
    #[error("more than {0} follow-up frames")]
    TooManyFollowUps(u8),
    /// The connection ended ([`Client::abort`]).
    #[error("the connection ended")]
    Aborted,
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Another request is in flight (one exchange at a time per connection).
    #[error("request {0} is still in flight on this connection")]
    Busy(RequestId),
    /// Its frame cannot be built (a write value over the standard's 200 data bytes).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A request that needs a reply addressed to `999999999999`, to which meters never reply.
    #[error("meters do not reply to the broadcast address")]
    BroadcastAddress,
}

/// A request's result: the meter's answer, or why there is none.
pub type Outcome = Result<Result<Response, MeterError>, TransportError>;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request finished (exactly once per accepted request).
    Done {
        /// Its id.
        id: RequestId,
        /// Its result.
        outcome: Outcome,
    },
    /// A frame that answers nothing in flight: another meter on the bus, an unsolicited frame, a late reply to an
    /// earlier request or attempt, an echo of a request. Boxed: a frame is ~200 bytes inline and this is the rare
    /// event; unboxed it made every slot of the event queue that size (~0.9 KB kept per connection).
    Unmatched(Box<Frame>),
}

/// Where a read stands.
#[derive(Debug)]
struct ReadProgress {
    di: Di,
    value: Vec<u8>,
    /// Sequence number of the follow-up awaited (0 before the first reply).
    seq: u8,
}

#[derive(Debug)]
enum Kind {
    Read(ReadProgress),
    ReadAddress,
    /// Write (`14`) or relay control (`1C`): a bare acknowledgement.
    Acknowledged,
    Broadcast,
}

struct InFlight {
    id: RequestId,
    kind: Kind,
    /// `None` when any meter may answer.
    address: Option<Address>,
    /// The frame on the wire (wire bytes, preamble included): sent again on a retry.
    frame: Vec<u8>,
    /// Function code the reply must carry.
    function: u8,
    /// Times `frame` was handed out.
    attempts: u32,
    /// When it was handed out, oldest first (at most [`MAX_SENT_TIMES`]).
    sent: Vec<Instant>,
    /// When the current attempt stops waiting; `None` until it is handed out.
    reply_by: Option<Instant>,
    deadline: Option<Instant>,
}

impl fmt::Debug for InFlight {
    // The frame bytes are left out: a relay or write frame carries the password block.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("address", &self.address)
            .field("function", &format_args!("{:#04x}", self.function))
            .field("attempts", &self.attempts)
            .field("reply_by", &self.reply_by)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// The DL/T 645 client of one connection.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    in_flight: Option<InFlight>,
    /// Frames of finished exchanges whose replies may still arrive, oldest first.
    late: VecDeque<Late>,
    /// Whether the in-flight frame waits to be handed out.
    transmit_pending: bool,
    events: VecDeque<Event>,
    next_id: RequestId,
}

impl Client {
    /// An idle client.
    pub fn new(config: ClientConfig) -> Self {
        Client {
            config,
            in_flight: None,
            late: VecDeque::new(),
            transmit_pending: false,
            events: VecDeque::new(),
            next_id: 1,
        }
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The request in flight, if any.
    pub fn in_flight(&self) -> Option<RequestId> {
        self.in_flight.as_ref().map(|f| f.id)
    }

    /// Whether a new request would be accepted.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none()
    }

    /// Starts a request, bounded by the response timeout and retries of each frame only.
    pub fn request(&mut self, request: Request) -> Result<RequestId, SubmitError> {
        self.submit(request, None)
    }

    /// Starts a request that also fails with [`TransportError::Deadline`] once `deadline` has passed.
    pub fn request_until(&mut self, request: Request, deadline: Instant) -> Result<RequestId, SubmitError> {
        self.submit(request, Some(deadline))
    }

    fn submit(&mut self, request: Request, deadline: Option<Instant>) -> Result<RequestId, SubmitError> {
        if let Some(f) = &self.in_flight {
            return Err(SubmitError::Busy(f.id));
        }
        let (frame, kind) = match request {
            Request::Read { address, di } => {
                (Frame::read(address, di), Kind::Read(ReadProgress { di, value: Vec::new(), seq: 0 }))
            }
            Request::ReadAddress => (Frame::read_address(), Kind::ReadAddress),
            Request::Write { address, di, auth, value } => {
                (Frame::write(address, di, &auth, &value)?, Kind::Acknowledged)
            }
            Request::RelayControl { address, command, auth, valid_until, aes_key } => {
                (Frame::relay_control(address, command, &auth, &valid_until, aes_key.as_ref()), Kind::Acknowledged)
            }
            Request::BroadcastTime(time) => (Frame::broadcast_time(&time), Kind::Broadcast),
        };
        let broadcast = matches!(kind, Kind::Broadcast);
        if frame.address == Address::BROADCAST && !broadcast {
            return Err(SubmitError::BroadcastAddress);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight = Some(InFlight {
            id,
            kind,
            address: (frame.address != Address::WILDCARD).then_some(frame.address),
            function: frame.control.function(),
            frame: frame.encode_with_preamble(self.config.wakeup_preamble),
            attempts: 0,
            sent: Vec::new(),
            reply_by: None,
            deadline,
        });
        self.transmit_pending = true;
        Ok(id)
    }

    /// The bytes to send next (preamble included); `now` is when they go out, which starts their reply timer.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.transmit_pending {
            return None;
        }
        self.transmit_pending = false;
        self.forget_late(now);
        let f = self.in_flight.as_mut()?;
        f.attempts += 1;
        if f.sent.len() < MAX_SENT_TIMES {
            f.sent.push(now);
        } else if let Some(last) = f.sent.last_mut() {
            *last = now;
        }
        // A clock too close to its end to add the timeout to: wait as long as the clock can express.
        f.reply_by = Some(now.checked_add(self.config.response_timeout).unwrap_or(now));
        let bytes = f.frame.clone();
        if matches!(f.kind, Kind::Broadcast) {
            self.finish(Ok(Ok(Response::Sent)));
        }
        Some(bytes)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Client::handle_timeout`] should be called next: the earlier of the current frame's reply timer and
    /// the request's deadline; `None` when nothing waits on time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let f = self.in_flight.as_ref()?;
        let reply_by = if self.transmit_pending { None } else { f.reply_by };
        reply_by.into_iter().chain(f.deadline).min()
    }

    /// Fires whatever is due at `now`: the request's deadline, or the reply timer of its frame (sent again while
    /// retries remain, else the request fails with [`TransportError::Timeout`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.forget_late(now);
        let Some(f) = self.in_flight.as_mut() else { return };
        if f.deadline.is_some_and(|d| d <= now) {
            self.finish(Err(TransportError::Deadline));
            return;
        }
        if self.transmit_pending || f.reply_by.is_none_or(|t| t > now) {
            return;
        }
        if f.attempts <= self.config.retries {
            f.reply_by = None;
            self.transmit_pending = true;
        } else {
            let attempts = f.attempts;
            self.finish(Err(TransportError::Timeout { attempts }));
        }
    }

    /// The connection ended: the request in flight fails with [`TransportError::Aborted`].
    pub fn abort(&mut self) {
        if self.in_flight.is_some() {
            self.finish(Err(TransportError::Aborted));
        }
        // A new connection carries no replies of this one.
        self.late.clear();
    }

    /// Consumes one frame from the meter side (from the [`Framer`](super::Framer)).
    pub fn handle_frame(&mut self, frame: Frame) {
        let Some(f) = self.in_flight.as_mut() else { return self.unmatched(frame) };
        let c = frame.control;
        let answers = c.from_meter()
            && c.function() == f.function
            && f.address.is_none_or(|a| a == frame.address)
            && !matches!(f.kind, Kind::Broadcast);
        if !answers {
            return self.unmatched(frame);
        }
        // Only read data names its request (by DI); anything else may be the late reply to an earlier frame.
        let carries_di = !c.abnormal() && matches!(f.kind, Kind::Read(_));
        if !carries_di && self.take_late(frame.address, c.function()) {
            return self.events.push_back(Event::Unmatched(Box::new(frame)));
        }
        let Some(f) = self.in_flight.as_mut() else { return };
        if c.abnormal() {
            let flags = ErrorFlags(frame.data().first().copied().unwrap_or(0));
            return self.finish(Ok(Err(MeterError::from_flags(flags))));
        }
        let unexpected = |reason| Err(TransportError::Unexpected { control: c.0, reason });
        match (&mut f.kind, frame.reply()) {
            (Kind::Read(read), Reply::Data { di, value, follow_up }) => {
                if di != read.di {
                    // A late reply for another register (an earlier request that timed out).
                    return self.unmatched(frame);
                }
                let chunk = if read.seq == 0 {
                    value
                } else {
                    // Follow-up data ends with the sequence number it answers.
                    match value.split_last() {
                        Some((seq, rest)) if *seq == read.seq => rest,
                        Some(_) => return self.unmatched(frame),
                        None => return self.finish(unexpected("follow-up reply without a sequence number")),
                    }
                };
                read.value.extend_from_slice(chunk);
                if !follow_up {
                    let response = Response::Data { di: read.di, value: std::mem::take(&mut read.value) };
                    return self.finish(Ok(Ok(response)));
                }
                if read.seq >= self.config.max_follow_ups {
                    let max = self.config.max_follow_ups;
                    return self.finish(Err(TransportError::TooManyFollowUps(max)));
                }
                read.seq += 1;
                let next = Frame::read_follow_up(frame.address, read.di, read.seq);
                let sent = std::mem::take(&mut f.sent);
                let (address, answered_function) = (f.address, f.function);
                f.frame = next.encode_with_preamble(self.config.wakeup_preamble);
                f.function = function::READ_FOLLOW_UP;
                f.attempts = 0;
                f.reply_by = None;
                self.transmit_pending = true;
                self.remember_late(address, answered_function, &sent, true);
            }
            (Kind::Read(_), _) => self.finish(unexpected("read reply without data identifier")),
            (Kind::ReadAddress, Reply::Address(a)) => self.finish(Ok(Ok(Response::Address(a)))),
            (Kind::ReadAddress, _) => self.finish(unexpected("read-address reply without an address")),
            (Kind::Acknowledged, Reply::Ack(_)) => self.finish(Ok(Ok(Response::Accepted))),
            (Kind::Acknowledged, _) => self.finish(unexpected("acknowledgement carrying data")),
            // Excluded above: nothing answers a broadcast.
            (Kind::Broadcast, _) => self.events.push_back(Event::Unmatched(Box::new(frame))),
        }
    }

    /// Hands a frame back to the driver; if it may be the late reply to a remembered frame, that frame is
    /// answered now (keeps the count exact for the next ambiguous reply).
    fn unmatched(&mut self, frame: Frame) {
        if frame.control.from_meter() {
            self.take_late(frame.address, frame.control.function());
        }
        self.events.push_back(Event::Unmatched(Box::new(frame)));
    }

    /// Removes the oldest remembered frame that a reply from `address` with `function` may answer.
    fn take_late(&mut self, address: Address, function: u8) -> bool {
        let found = self.late.iter().position(|l| l.function == function && l.address.is_none_or(|a| a == address));
        found.and_then(|i| self.late.remove(i)).is_some()
    }

    /// Remembers the attempts of a finished frame whose replies may still come: all of them when it went
    /// unanswered, all but the oldest when a reply was taken (it answered one of them, most likely the oldest).
    fn remember_late(&mut self, address: Option<Address>, function: u8, sent: &[Instant], answered: bool) {
        let outstanding = if answered { sent.get(1..).unwrap_or_default() } else { sent };
        let window = self.config.response_timeout.saturating_mul(LATE_REPLY_WINDOWS);
        for at in outstanding {
            if self.late.len() >= MAX_LATE {
                self.late.pop_front();
            }
            self.late.push_back(Late { address, function, until: at.checked_add(window).unwrap_or(*at) });
        }
    }

    fn forget_late(&mut self, now: Instant) {
        self.late.retain(|l| l.until > now);
    }

    fn finish(&mut self, outcome: Outcome) {
        self.transmit_pending = false;
        if let Some(f) = self.in_flight.take() {
            if !matches!(f.kind, Kind::Broadcast) {
                let answered = !matches!(
                    outcome,
                    Err(TransportError::Timeout { .. } | TransportError::Deadline | TransportError::Aborted)
                );
                self.remember_late(f.address, f.function, &f.sent, answered);
            }
            self.events.push_back(Event::Done { id: f.id, outcome });
        }
    }
}
