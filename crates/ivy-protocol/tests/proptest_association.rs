//! The DLMS association's time contract under any interleaving of timer ticks with lost and delayed replies
//! (a meter answers in order): every request ends exactly once, with its own attribute's value or a timeout, and
//! no timer fires before its configured time (association timeout for the AARQ, response timeout for a GET,
//! the request's own deadline).

use ivy_protocol::dlms::apdu::{Aare, Apdu, AttributeDescriptor, Conformance, GetRequest, GetResponse, Release};
use ivy_protocol::dlms::association::{
    Association, AssociationFailure, ClientConfig, Event, Request, RequestError, RequestId, Response,
};
use ivy_protocol::dlms::{Data, Obis};
use proptest::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

const ASSOCIATION_TIMEOUT: Duration = Duration::from_millis(3000);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(700);

fn attribute(n: u8) -> AttributeDescriptor {
    AttributeDescriptor::new(3, Obis::new(1, 0, 32, 7, 0, n), 2)
}

/// The meter's value of attribute `n` (distinct per attribute, so a reply taken for the wrong request shows).
fn value_of(a: &AttributeDescriptor) -> Data {
    Data::DoubleLongUnsigned(1000 + u32::from(a.obis.0[5]))
}

/// The meter's answer to one APDU.
fn answer(request: &[u8]) -> Option<Vec<u8>> {
    let reply = match Apdu::parse(request).ok()? {
        Apdu::Aarq(_) => Apdu::Aare(Aare::accepted(Conformance(0x001E1D), 500)),
        Apdu::GetRequest(GetRequest::Normal { iip, attribute, .. }) => {
            Apdu::GetResponse(GetResponse::Normal { iip, result: Ok(value_of(&attribute)) })
        }
        Apdu::Rlrq(_) => Apdu::Rlre(Release { reason: Some(0) }),
        _ => return None,
    };
    Some(reply.encode())
}

#[derive(Debug, Clone)]
enum Step {
    /// Time passes; the association's timers are checked.
    Advance(u64),
    /// The oldest reply on the line arrives.
    Deliver,
    /// A reply is lost (index modulo the number on the line).
    Lose(usize),
    /// A request for attribute `n`, with a deadline this many ms ahead (or none).
    Submit(u8, Option<u64>),
    /// Release once idle.
    Release,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u64..1500).prop_map(Step::Advance),
        4 => Just(Step::Deliver),
        1 => any::<usize>().prop_map(Step::Lose),
        2 => (0u8..8, prop::option::of(0u64..4000)).prop_map(|(n, d)| Step::Submit(n, d)),
        1 => Just(Step::Release),
    ]
}

/// What the test knows about the wire: when each kind of APDU last went out.
#[derive(Default)]
struct Sent {
    aarq: Option<Instant>,
    get: Option<Instant>,
}

/// Replies on the line, oldest first.
type Line = VecDeque<Vec<u8>>;

struct Harness {
    a: Association,
    now: Instant,
    line: Line,
    sent: Sent,
    asked: HashMap<RequestId, (AttributeDescriptor, Option<Instant>)>,
    ended: HashMap<RequestId, Result<Response, RequestError>>,
    submitted: usize,
}

impl Harness {
    fn transmit(&mut self) {
        while let Some(apdu) = self.a.poll_transmit(self.now) {
            match Apdu::parse(&apdu) {
                Ok(Apdu::Aarq(_)) => self.sent.aarq = Some(self.now),
                Ok(Apdu::GetRequest(_)) => self.sent.get = Some(self.now),
                _ => {}
            }
            self.line.extend(answer(&apdu));
        }
    }

    /// Reads the events; timeouts must be due.
    fn collect(&mut self, fired_by_timer: bool) -> Result<(), TestCaseError> {
        while let Some(e) = self.a.poll_event() {
            match e {
                Event::Response { id, result } => {
                    let (attribute, deadline) = self.asked[&id];
                    match &result {
                        Ok(Response::Data(d)) => prop_assert_eq!(d, &value_of(&attribute)),
                        Err(RequestError::Timeout) => {
                            prop_assert!(fired_by_timer, "a timeout outside handle_timeout");
                            let by_deadline = deadline.is_some_and(|d| d <= self.now);
                            let by_response = self.sent.get.is_some_and(|t| t + RESPONSE_TIMEOUT <= self.now);
                            prop_assert!(by_deadline || by_response, "request {} timed out early", id);
                        }
                        Err(RequestError::NotAssociated(AssociationFailure::Timeout)) => {
                            prop_assert!(self.sent.aarq.is_some_and(|t| t + ASSOCIATION_TIMEOUT <= self.now));
                        }
                        other => prop_assert!(false, "unexpected result {:?}", other),
                    }
                    prop_assert!(self.ended.insert(id, result).is_none(), "request {} ended twice", id);
                }
                Event::AssociationFailed(f) => {
                    prop_assert_eq!(&f, &AssociationFailure::Timeout);
                    prop_assert!(fired_by_timer);
                    prop_assert!(
                        self.sent.aarq.is_some_and(|t| t + ASSOCIATION_TIMEOUT <= self.now),
                        "association timeout fired early"
                    );
                }
                Event::Associated(_) | Event::Released | Event::Unmatched(_) => {}
                other => prop_assert!(false, "unexpected event {:?}", other),
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn timers_fire_at_their_configured_times_and_every_request_ends_once(
        steps in prop::collection::vec(step_strategy(), 0..150),
    ) {
        let config = ClientConfig {
            association_timeout: ASSOCIATION_TIMEOUT,
            response_timeout: RESPONSE_TIMEOUT,
            ..ClientConfig::default()
        };
        let mut h = Harness {
            a: Association::new(config),
            now: t0(),
            line: Line::new(),
            sent: Sent::default(),
            asked: HashMap::new(),
            ended: HashMap::new(),
            submitted: 0,
        };
        for step in steps {
            match step {
                Step::Advance(ms) => {
                    h.now += Duration::from_millis(ms);
                    h.a.handle_timeout(h.now);
                    h.collect(true)?;
                }
                Step::Deliver => {
                    if let Some(reply) = h.line.pop_front() {
                        h.a.handle_apdu(&reply);
                    }
                }
                Step::Lose(i) if !h.line.is_empty() => {
                    let i = i % h.line.len();
                    h.line.remove(i);
                }
                Step::Lose(_) => {}
                // At most 12 requests: invoke ids cycle through 15, so a reply delayed past 15 newer requests
                // could be taken for one of them (the driver's deadline keeps real lines far from that).
                Step::Submit(n, deadline) if h.submitted < 12 => {
                    let attribute = attribute(n);
                    let deadline = deadline.map(|ms| h.now + Duration::from_millis(ms));
                    let id = match deadline {
                        Some(d) => h.a.request_until(Request::Get(attribute), d),
                        None => h.a.request(Request::Get(attribute)),
                    };
                    h.asked.insert(id, (attribute, deadline));
                    h.submitted += 1;
                }
                Step::Submit(..) => {}
                Step::Release => h.a.release(),
            }
            h.transmit();
            h.collect(false)?;
        }
        // A calm line: replies arrive, timers fire when due, until nothing is left.
        for _ in 0..1000 {
            h.transmit();
            if let Some(reply) = h.line.pop_front() {
                h.a.handle_apdu(&reply);
                h.collect(false)?;
                continue;
            }
            match h.a.poll_timeout() {
                Some(t) => {
                    h.now = h.now.max(t);
                    h.a.handle_timeout(h.now);
                    h.collect(true)?;
                }
                None => break,
            }
        }
        prop_assert!(!h.a.awaiting_reply() || h.a.poll_timeout().is_some(), "waiting without a timer");
        prop_assert_eq!(h.ended.len(), h.asked.len(), "every request ends exactly once");
    }
}
