//! A sans-IO DLMS client association, in the style of quinn-proto: no sockets, no clock. The caller queues work
//! with [`Association::request`] (or [`Association::request_until`] with a deadline), sends what
//! [`Association::poll_transmit`] returns (wrapping it as it likes), feeds received APDUs to
//! [`Association::handle_apdu`], reads results from [`Association::poll_event`], and keeps one timer: it sleeps
//! until [`Association::poll_timeout`] and then calls [`Association::handle_timeout`] with the time it woke.
//!
//! ## Time
//!
//! Time is passed in as [`std::time::Instant`] values (the caller's clock; `tokio::time::Instant::into_std` for a
//! tokio driver) and never read here. Three timers exist, one at a time, armed when [`Association::poll_transmit`]
//! hands out the APDU that starts the wait: the AARQ waits [`ClientConfig::association_timeout`] for its AARE, every
//! other request APDU (GET, next data block, SET, ACTION) waits [`ClientConfig::response_timeout`], and an RLRQ
//! waits [`ClientConfig::response_timeout`] for its RLRE. A request's own deadline (from
//! [`Association::request_until`]) bounds it as a whole, wherever it is (queued, waiting for the association, or
//! between data blocks). [`Association::poll_timeout`] answers the earliest of these.
//!
//! One request is on the wire at a time (meters are half-duplex); replies are matched by invoke id (cycling
//! 1..=15), never by "the next reply". Block transfer (GET with data blocks) is followed to the end, bounded by
//! [`ClientConfig::max_response_bytes`]. A multi-attribute read uses GET-with-list when the meter negotiated
//! multiple-references, one GET per attribute otherwise.

use super::apdu::{
    Aarq, ActionRequest, Apdu, ApduError, AttributeDescriptor, ConfirmedServiceError, DataAccessResult,
    ExceptionResponse, GetDataResult, GetRequest, GetResponse, InitiateResponse, InvokeIdAndPriority, MethodDescriptor,
    Release, SetRequest, SetResponse, action_result_name,
};
use super::axdr::{Data, decode_length};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The AARQ to send (application context, conformance, max PDU, authentication).
    pub aarq: Aarq,
    /// Set the priority bit of invoke-id-and-priority (off for the EM114070).
    pub priority_high: bool,
    /// Set the confirmed service-class bit (off for the EM114070).
    pub confirmed: bool,
    /// Use GET-with-list when the meter negotiated multiple-references.
    pub use_get_with_list: bool,
    /// Largest response assembled from data blocks.
    pub max_response_bytes: usize,
    /// Most attributes in one GET-with-list.
    pub max_list_items: usize,
    /// How long an AARQ waits for its AARE (the gateway's `dlms.association_timeout_ms`).
    pub association_timeout: Duration,
    /// How long a request APDU (GET, next block, SET, ACTION) or an RLRQ waits for its answer (the gateway's
    /// `dlms.response_timeout_ms`).
    pub response_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            aarq: Aarq::default(),
            priority_high: false,
            confirmed: false,
            use_get_with_list: true,
            max_response_bytes: 64 * 1024,
            max_list_items: 10,
            association_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
        }
    }
}

/// Identifies a queued request in the events.
pub type RequestId = u64;

/// Work for the meter.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Read one attribute.
    Get(AttributeDescriptor),
    /// Read several attributes (one result each).
    GetList(Vec<AttributeDescriptor>),
    /// Write one attribute.
    Set(AttributeDescriptor, Data),
    /// Invoke a method with optional parameters.
    Action(MethodDescriptor, Option<Data>),
}

/// A successful result.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The attribute's value.
    Data(Data),
    /// One result per attribute of a [`Request::GetList`].
    List(Vec<GetDataResult>),
    /// The SET succeeded.
    Set,
    /// The ACTION succeeded, with its return data if any.
    Action(Option<Data>),
}

/// Why the association could not be established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssociationFailure {
    /// The AARE rejected it.
    Rejected {
        /// Association result (1 permanent, 2 transient).
        result: u8,
        /// Diagnostic name.
        diagnostic: String,
    },
    /// No AARE in time.
    Timeout,
    /// The meter answered with an exception or service error.
    Refused(String),
}

impl std::fmt::Display for AssociationFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssociationFailure::Rejected { result, diagnostic } => {
                write!(f, "association rejected (result {result}, {diagnostic})")
            }
            AssociationFailure::Timeout => f.write_str("no association response in time"),
            AssociationFailure::Refused(why) => write!(f, "association refused: {why}"),
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// No answer within [`ClientConfig::response_timeout`], or the request's deadline passed.
    #[error("no response in time")]
    Timeout,
    /// The meter answered with a data-access-result.
    #[error("meter error: {0}")]
    DataAccess(DataAccessResult),
    /// The ACTION failed with this action-result.
    #[error("meter error: {}", action_result_name(*.0))]
    Action(u8),
    /// ExceptionResponse.
    #[error("exception: {}, {}", .0.state_error_name(), .0.service_error_name())]
    Exception(ExceptionResponse),
    /// ConfirmedServiceError.
    #[error("confirmed service error (service {}, type {}, value {})", .0.service, .0.error_type, .0.value)]
    ServiceError(ConfirmedServiceError),
    /// The association needed for it failed.
    #[error("{0}")]
    NotAssociated(AssociationFailure),
    /// The connection ended.
    #[error("aborted: the connection ended")]
    Aborted,
    /// The data blocks exceed the configured bound.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// A reply that does not fit the request.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The association is open.
    Associated(InitiateResponse),
    /// It could not be opened; queued requests failed with [`RequestError::NotAssociated`].
    AssociationFailed(AssociationFailure),
    /// A request finished.
    Response {
        /// Its id.
        id: RequestId,
        /// Its result.
        result: Result<Response, RequestError>,
    },
    /// The association was released.
    Released,
    /// An unsolicited EventNotification or DataNotification.
    Notification(Apdu),
    /// A reply that matches nothing outstanding (stale invoke id, late answer): ignored.
    Unmatched(Apdu),
    /// Bytes that are not an APDU.
    Malformed(ApduError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    Associating,
    Associated(InitiateResponse),
    Releasing,
}

#[derive(Debug)]
enum Step {
    /// One APDU and its answer.
    Single,
    /// GET-with-list unavailable: one GET per attribute.
    OneByOne { next: usize, results: Vec<GetDataResult> },
    /// Collecting data blocks.
    Blocks { buf: Vec<u8>, as_list: bool },
}

#[derive(Debug)]
struct InFlight {
    id: RequestId,
    invoke_id: u8,
    request: Request,
    step: Step,
    deadline: Option<Instant>,
}

/// A request waiting for the association or for the one before it.
#[derive(Debug)]
struct Queued {
    id: RequestId,
    request: Request,
    deadline: Option<Instant>,
}

/// What an APDU on the wire waits for; decides which configured timeout its timer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The AARE to an AARQ.
    Association,
    /// The answer to a request APDU.
    Response,
    /// The RLRE to an RLRQ.
    Release,
}

/// The armed timer: what is awaited and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timer {
    wait: Wait,
    at: Instant,
}

/// The client association.
#[derive(Debug)]
pub struct Association {
    config: ClientConfig,
    state: State,
    queue: VecDeque<Queued>,
    in_flight: Option<InFlight>,
    /// APDUs to send, each with what it will wait for (its timer is armed when it is handed out).
    transmit: VecDeque<(Vec<u8>, Wait)>,
    timer: Option<Timer>,
    events: VecDeque<Event>,
    next_invoke: u8,
    next_id: RequestId,
    release_when_idle: bool,
}

/// Largest number of requests waiting (the session's own queue is bounded too).
const MAX_QUEUE: usize = 1024;

impl Association {
    /// A closed association.
    pub fn new(config: ClientConfig) -> Self {
        Association {
            config,
            state: State::Idle,
            queue: VecDeque::new(),
            in_flight: None,
            transmit: VecDeque::new(),
            timer: None,
            events: VecDeque::new(),
            next_invoke: 1,
            next_id: 1,
            release_when_idle: false,
        }
    }

    /// Whether the association is open.
    pub fn is_associated(&self) -> bool {
        matches!(self.state, State::Associated(_))
    }

    /// The negotiated parameters, when associated.
    pub fn negotiated(&self) -> Option<&InitiateResponse> {
        match &self.state {
            State::Associated(i) => Some(i),
            _ => None,
        }
    }

    /// Whether an answer is awaited (the caller should run its timer).
    pub fn awaiting_reply(&self) -> bool {
        matches!(self.state, State::Associating | State::Releasing) || self.in_flight.is_some()
    }

    /// Whether nothing is queued, in flight or awaited.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.awaiting_reply()
    }

    /// Opens the association (sends an AARQ) if it is not open or opening.
    pub fn associate(&mut self) {
        if self.state == State::Idle {
            self.send(Apdu::Aarq(self.config.aarq.clone()).encode(), Wait::Association);
            self.state = State::Associating;
        }
    }

    /// Queues a request; it is sent once the association is open (opening it if needed). When the queue is full
    /// the request fails at once (an event with [`RequestError::Unexpected`]). Without a deadline of its own it is
    /// bounded by the association and response timeouts of each step only.
    pub fn request(&mut self, request: Request) -> RequestId {
        self.enqueue(request, None)
    }

    /// Like [`Association::request`], and the request fails with [`RequestError::Timeout`] once `deadline` has
    /// passed (checked by [`Association::handle_timeout`]), wherever it is: queued, waiting for the association,
    /// or between data blocks. A reply arriving after that is reported as [`Event::Unmatched`].
    pub fn request_until(&mut self, request: Request, deadline: Instant) -> RequestId {
        self.enqueue(request, Some(deadline))
    }

    fn enqueue(&mut self, request: Request, deadline: Option<Instant>) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        if self.queue.len() >= MAX_QUEUE {
            self.events.push_back(Event::Response {
                id,
                result: Err(RequestError::Unexpected("client request queue is full".into())),
            });
            return id;
        }
        self.queue.push_back(Queued { id, request, deadline });
        self.release_when_idle = false;
        self.pump();
        id
    }

    /// Releases the association (RLRQ) once nothing is queued or in flight.
    pub fn release(&mut self) {
        self.release_when_idle = true;
        self.pump();
    }

    /// The next APDU to send; `now` is when it goes out, which starts its timer (association timeout for an
    /// AARQ, response timeout otherwise).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let (apdu, wait) = self.transmit.pop_front()?;
        let timeout = match wait {
            Wait::Association => self.config.association_timeout,
            Wait::Response | Wait::Release => self.config.response_timeout,
        };
        // A clock too close to its end to add the timeout to: wait as long as the clock can express.
        self.timer = Some(Timer { wait, at: now.checked_add(timeout).unwrap_or(now) });
        Some(apdu)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Association::handle_timeout`] should be called next: the earliest of the armed timer and the
    /// deadlines of the requests in flight or queued; `None` when nothing waits on time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadlines =
            self.in_flight.iter().filter_map(|f| f.deadline).chain(self.queue.iter().filter_map(|q| q.deadline));
        self.timer.map(|t| t.at).into_iter().chain(deadlines).min()
    }

    /// Fires whatever is due at `now`: requests past their deadline fail with [`RequestError::Timeout`]; an AARQ
    /// past the association timeout fails the association ([`AssociationFailure::Timeout`], queued requests
    /// included); a request APDU past the response timeout fails its request; an RLRQ past it counts as released.
    /// Calling it early, late or more than once is harmless: nothing that is not due changes.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(f) = self.in_flight.take_if(|f| f.deadline.is_some_and(|d| d <= now)) {
            self.events.push_back(Event::Response { id: f.id, result: Err(RequestError::Timeout) });
        }
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for q in self.queue.drain(..) {
            if q.deadline.is_some_and(|d| d <= now) {
                self.events.push_back(Event::Response { id: q.id, result: Err(RequestError::Timeout) });
            } else {
                kept.push_back(q);
            }
        }
        self.queue = kept;
        if let Some(timer) = self.timer.filter(|t| t.at <= now) {
            self.timer = None;
            match (timer.wait, &self.state) {
                (Wait::Association, State::Associating) => self.fail_association(AssociationFailure::Timeout),
                (Wait::Release, State::Releasing) => {
                    self.state = State::Idle;
                    self.events.push_back(Event::Released);
                }
                (Wait::Response, _) => {
                    if let Some(f) = self.in_flight.take() {
                        self.events.push_back(Event::Response { id: f.id, result: Err(RequestError::Timeout) });
                    }
                }
                _ => {}
            }
        }
        self.pump();
        self.settle_timer();
    }

    /// The connection ended: everything pending fails with [`RequestError::Aborted`].
    pub fn abort(&mut self) {
        if let Some(f) = self.in_flight.take() {
            self.events.push_back(Event::Response { id: f.id, result: Err(RequestError::Aborted) });
        }
        while let Some(q) = self.queue.pop_front() {
            self.events.push_back(Event::Response { id: q.id, result: Err(RequestError::Aborted) });
        }
        self.transmit.clear();
        self.timer = None;
        self.state = State::Idle;
        self.release_when_idle = false;
    }

    /// Consumes one received APDU.
    pub fn handle_apdu(&mut self, bytes: &[u8]) {
        let apdu = match Apdu::parse_prefix(bytes) {
            Ok((apdu, _)) => apdu,
            Err(e) => {
                self.events.push_back(Event::Malformed(e));
                return;
            }
        };
        match apdu {
            Apdu::Aare(aare) if self.state == State::Associating => {
                match (aare.accepted_ok(), aare.initiate, aare.service_error) {
                    (true, Some(initiate), _) => {
                        self.state = State::Associated(initiate);
                        self.events.push_back(Event::Associated(initiate));
                    }
                    (_, _, Some(e)) => self.fail_association(AssociationFailure::Refused(format!(
                        "confirmed service error (service {}, type {}, value {})",
                        e.service, e.error_type, e.value
                    ))),
                    (true, None, None) => {
                        self.fail_association(AssociationFailure::Refused("AARE without InitiateResponse".into()))
                    }
                    (false, _, None) => self.fail_association(AssociationFailure::Rejected {
                        result: aare.result,
                        diagnostic: aare.diagnostic.name().to_owned(),
                    }),
                }
            }
            Apdu::Rlre(_) if self.state == State::Releasing => {
                self.state = State::Idle;
                self.events.push_back(Event::Released);
            }
            Apdu::EventNotification(_) | Apdu::DataNotification(_) => self.events.push_back(Event::Notification(apdu)),
            Apdu::ExceptionResponse(e) => match self.state {
                State::Associating => self.fail_association(AssociationFailure::Refused(format!(
                    "{}, {}",
                    e.state_error_name(),
                    e.service_error_name()
                ))),
                _ => self.fail_in_flight(RequestError::Exception(e), Apdu::ExceptionResponse(e)),
            },
            Apdu::ConfirmedServiceError(e) => match self.state {
                State::Associating => self.fail_association(AssociationFailure::Refused(format!(
                    "confirmed service error (service {}, type {}, value {})",
                    e.service, e.error_type, e.value
                ))),
                _ => self.fail_in_flight(RequestError::ServiceError(e), Apdu::ConfirmedServiceError(e)),
            },
            Apdu::GetResponse(r) => self.on_get_response(r),
            Apdu::SetResponse(r) => {
                let iip = r.iip();
                if !self.matches(iip) {
                    return self.events.push_back(Event::Unmatched(Apdu::SetResponse(r)));
                }
                let result = match r {
                    SetResponse::Normal { result, .. } | SetResponse::LastDataBlock { result, .. }
                        if result == DataAccessResult::SUCCESS =>
                    {
                        Ok(Response::Set)
                    }
                    SetResponse::Normal { result, .. } | SetResponse::LastDataBlock { result, .. } => {
                        Err(RequestError::DataAccess(result))
                    }
                    other => Err(RequestError::Unexpected(format!("{other:?}"))),
                };
                self.finish(result);
            }
            Apdu::ActionResponse(r) => {
                if !self.matches(r.iip) {
                    return self.events.push_back(Event::Unmatched(Apdu::ActionResponse(r)));
                }
                let result = match (r.result, r.return_parameters) {
                    (0, None) => Ok(Response::Action(None)),
                    (0, Some(Ok(d))) => Ok(Response::Action(Some(d))),
                    (0, Some(Err(dar))) => Err(RequestError::DataAccess(dar)),
                    (code, _) => Err(RequestError::Action(code)),
                };
                self.finish(result);
            }
            other => self.events.push_back(Event::Unmatched(other)),
        }
        self.pump();
        self.settle_timer();
    }

    /// Queues an APDU; the timer of the previous exchange no longer applies (one exchange at a time).
    fn send(&mut self, apdu: Vec<u8>, wait: Wait) {
        self.transmit.push_back((apdu, wait));
        self.timer = None;
    }

    /// Drops the timer once what it waited for has been answered or given up.
    fn settle_timer(&mut self) {
        let applies = |t: &Timer| match t.wait {
            Wait::Association => self.state == State::Associating,
            Wait::Release => self.state == State::Releasing,
            Wait::Response => self.in_flight.is_some(),
        };
        if self.timer.as_ref().is_some_and(|t| !applies(t)) {
            self.timer = None;
        }
    }

    fn matches(&self, iip: InvokeIdAndPriority) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.invoke_id == iip.invoke_id())
    }

    fn on_get_response(&mut self, r: GetResponse) {
        let iip = r.iip();
        if !self.matches(iip) {
            self.events.push_back(Event::Unmatched(Apdu::GetResponse(r)));
            return;
        }
        let Some(mut f) = self.in_flight.take() else { return };
        let max = self.config.max_response_bytes;
        match (r, &mut f.step) {
            (GetResponse::Normal { result, .. }, Step::Single) => {
                let out = match (&f.request, result) {
                    (Request::Get(_), Ok(d)) => Ok(Response::Data(d)),
                    (Request::Get(_), Err(dar)) => Err(RequestError::DataAccess(dar)),
                    (Request::GetList(_), r) => Ok(Response::List(vec![r])),
                    (_, _) => Err(RequestError::Unexpected("GET.response to a non-GET request".into())),
                };
                self.events.push_back(Event::Response { id: f.id, result: out });
            }
            (GetResponse::Normal { result, .. }, Step::OneByOne { next, results }) => {
                results.push(result);
                *next += 1;
                let attrs = match &f.request {
                    Request::GetList(a) => a.clone(),
                    _ => Vec::new(),
                };
                match attrs.get(*next) {
                    Some(a) => {
                        f.invoke_id = self.take_invoke_id();
                        let iip = self.iip(f.invoke_id);
                        self.send(
                            Apdu::GetRequest(GetRequest::Normal { iip, attribute: *a, access: None }).encode(),
                            Wait::Response,
                        );
                        self.in_flight = Some(f);
                    }
                    None => {
                        let results = std::mem::take(results);
                        self.events.push_back(Event::Response { id: f.id, result: Ok(Response::List(results)) });
                    }
                }
            }
            (GetResponse::WithList { results, .. }, Step::Single) => {
                self.events.push_back(Event::Response { id: f.id, result: Ok(Response::List(results)) });
            }
            (GetResponse::WithDataBlock { last, block, raw, .. }, step) => {
                let as_list = matches!(f.request, Request::GetList(_));
                if let Step::Single = step {
                    *step = Step::Blocks { buf: Vec::new(), as_list };
                }
                let Step::Blocks { buf, as_list } = step else {
                    self.events.push_back(Event::Response {
                        id: f.id,
                        result: Err(RequestError::Unexpected("data block during one-by-one reads".into())),
                    });
                    return;
                };
                let chunk = match raw {
                    Ok(c) => c,
                    Err(dar) => {
                        self.events.push_back(Event::Response { id: f.id, result: Err(RequestError::DataAccess(dar)) });
                        return;
                    }
                };
                if buf.len() + chunk.len() > max {
                    self.events.push_back(Event::Response { id: f.id, result: Err(RequestError::TooLarge(max)) });
                    return;
                }
                buf.extend_from_slice(&chunk);
                if last {
                    let result = decode_blocks(buf, *as_list);
                    self.events.push_back(Event::Response { id: f.id, result });
                } else {
                    let iip = self.iip(f.invoke_id);
                    self.send(Apdu::GetRequest(GetRequest::Next { iip, block }).encode(), Wait::Response);
                    self.in_flight = Some(f);
                }
            }
            (other, _) => {
                self.events.push_back(Event::Response {
                    id: f.id,
                    result: Err(RequestError::Unexpected(format!("{other:?}"))),
                });
            }
        }
    }

    fn finish(&mut self, result: Result<Response, RequestError>) {
        if let Some(f) = self.in_flight.take() {
            self.events.push_back(Event::Response { id: f.id, result });
        }
    }

    fn fail_in_flight(&mut self, error: RequestError, apdu: Apdu) {
        match self.in_flight.take() {
            Some(f) => self.events.push_back(Event::Response { id: f.id, result: Err(error) }),
            None => self.events.push_back(Event::Unmatched(apdu)),
        }
    }

    fn fail_association(&mut self, failure: AssociationFailure) {
        self.state = State::Idle;
        while let Some(q) = self.queue.pop_front() {
            self.events
                .push_back(Event::Response { id: q.id, result: Err(RequestError::NotAssociated(failure.clone())) });
        }
        self.events.push_back(Event::AssociationFailed(failure));
    }

    fn take_invoke_id(&mut self) -> u8 {
        let id = self.next_invoke;
        self.next_invoke = if id >= 15 { 1 } else { id + 1 };
        id
    }

    fn iip(&self, invoke_id: u8) -> InvokeIdAndPriority {
        InvokeIdAndPriority::new(invoke_id, self.config.priority_high, self.config.confirmed)
    }

    /// Sends the next queued request, opens or releases the association as needed.
    fn pump(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        match &self.state {
            State::Idle if !self.queue.is_empty() => self.associate(),
            State::Associated(negotiated) => {
                let negotiated = *negotiated;
                if let Some(q) = self.queue.pop_front() {
                    self.start(q, &negotiated);
                } else if self.release_when_idle {
                    self.release_when_idle = false;
                    self.send(Apdu::Rlrq(Release { reason: Some(0) }).encode(), Wait::Release);
                    self.state = State::Releasing;
                }
            }
            _ => {}
        }
    }

    fn start(&mut self, queued: Queued, negotiated: &InitiateResponse) {
        let Queued { id, request, deadline } = queued;
        let invoke_id = self.take_invoke_id();
        let iip = self.iip(invoke_id);
        let mut step = Step::Single;
        let apdu = match &request {
            Request::Get(a) => Apdu::GetRequest(GetRequest::Normal { iip, attribute: *a, access: None }),
            Request::GetList(attrs) => {
                let with_list = self.config.use_get_with_list
                    && negotiated.conformance.multiple_references()
                    && attrs.len() > 1
                    && attrs.len() <= self.config.max_list_items;
                match (with_list, attrs.first()) {
                    (true, _) => Apdu::GetRequest(GetRequest::WithList {
                        iip,
                        attributes: attrs.iter().map(|a| (*a, None)).collect(),
                    }),
                    (false, Some(first)) => {
                        step = Step::OneByOne { next: 0, results: Vec::with_capacity(attrs.len()) };
                        Apdu::GetRequest(GetRequest::Normal { iip, attribute: *first, access: None })
                    }
                    (false, None) => {
                        self.events.push_back(Event::Response { id, result: Ok(Response::List(Vec::new())) });
                        return self.pump();
                    }
                }
            }
            Request::Set(a, value) => {
                Apdu::SetRequest(SetRequest::Normal { iip, attribute: *a, access: None, value: value.clone() })
            }
            Request::Action(m, parameters) => {
                Apdu::ActionRequest(ActionRequest { iip, method: *m, parameters: parameters.clone() })
            }
        };
        self.send(apdu.encode(), Wait::Response);
        self.in_flight = Some(InFlight { id, invoke_id, request, step, deadline });
    }
}

/// Decodes assembled data blocks: one Data, or (for a list) a count followed by Get-Data-Results.
fn decode_blocks(buf: &[u8], as_list: bool) -> Result<Response, RequestError> {
    let bad = |e: String| RequestError::Unexpected(format!("data blocks do not decode: {e}"));
    if !as_list {
        return Data::decode_exact(buf).map(Response::Data).map_err(|e| bad(e.to_string()));
    }
    let (count, mut pos) = decode_length(buf).map_err(|e| bad(e.to_string()))?;
    let mut results = Vec::with_capacity(count.min(buf.len()));
    for _ in 0..count {
        match buf.get(pos) {
            Some(0) => {
                let (d, used) = Data::decode(buf.get(pos + 1..).unwrap_or_default()).map_err(|e| bad(e.to_string()))?;
                results.push(Ok(d));
                pos += 1 + used;
            }
            Some(1) => {
                results.push(Err(DataAccessResult(buf.get(pos + 1).copied().ok_or_else(|| bad("truncated".into()))?)));
                pos += 2;
            }
            _ => return Err(bad("invalid Get-Data-Result".into())),
        }
    }
    Ok(Response::List(results))
}
