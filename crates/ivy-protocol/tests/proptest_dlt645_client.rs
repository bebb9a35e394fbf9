//! Properties of the DL/T 645 client against a scripted meter (follow-up frames, "no requested data"):
//! the outcome does not depend on how the meter's bytes are chunked, and any interleaving of timer ticks with
//! lost and late replies ends every request exactly once, with its own register's answer or a timeout, never with
//! another register's value or error.

use ivy_protocol::dlt645::client::{
    Client, ClientConfig, Event, LATE_REPLY_WINDOWS, MeterError, Outcome, Request, RequestId, Response, TransportError,
};
use ivy_protocol::dlt645::control::function;
use ivy_protocol::dlt645::{Address, Control, Di, ErrorFlags, Frame, Framer, FramerEvent};
use proptest::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// A meter that answers reads, splitting values longer than `split` bytes into follow-up frames.
#[derive(Debug, Clone)]
struct Meter {
    address: Address,
    /// Register values; `None` answers "no requested data".
    registers: Vec<(Di, Option<Vec<u8>>)>,
    split: usize,
}

impl Meter {
    fn pieces<'a>(&self, value: &'a [u8]) -> Vec<&'a [u8]> {
        if value.is_empty() { vec![value] } else { value.chunks(self.split).collect() }
    }

    fn answer(&self, request: &Frame) -> Option<Frame> {
        if request.address != self.address {
            return None;
        }
        let di = request.data_id()?;
        let (_, value) = self.registers.iter().find(|(d, _)| *d == di)?;
        let f = request.control.function();
        let Some(value) = value else { return Some(Frame::error_reply(self.address, f, ErrorFlags(0x02))) };
        let pieces = self.pieces(value);
        match f {
            function::READ => Some(Frame::read_reply(self.address, di, pieces[0], pieces.len() > 1).unwrap()),
            function::READ_FOLLOW_UP => {
                let seq = *request.data().get(4)?;
                let piece = pieces.get(usize::from(seq))?;
                let more = usize::from(seq) + 1 < pieces.len();
                let mut data = di.to_le_bytes().to_vec();
                data.extend_from_slice(piece);
                data.push(seq);
                let control = Control(Control::reply(function::READ_FOLLOW_UP).0 | if more { 0x20 } else { 0 });
                Some(Frame::new(self.address, control, &data).unwrap())
            }
            _ => None,
        }
    }

    /// What a read of register `index` must give when the meter answers.
    fn expected(&self, index: usize, max_follow_ups: u8) -> Outcome {
        let (di, value) = &self.registers[index];
        match value {
            None => Ok(Err(MeterError::NoRequestedData { flags: ErrorFlags(0x02) })),
            Some(v) if self.pieces(v).len() - 1 > usize::from(max_follow_ups) => {
                Err(TransportError::TooManyFollowUps(max_follow_ups))
            }
            Some(v) => Ok(Ok(Response::Data { di: *di, value: v.clone() })),
        }
    }
}

fn meter_strategy() -> impl Strategy<Value = Meter> {
    let register = (any::<u32>(), prop::option::weighted(0.85, prop::collection::vec(any::<u8>(), 0..400)));
    (prop::collection::vec(register, 1..5), 20usize..=195).prop_map(|(regs, split)| {
        let mut registers: Vec<(Di, Option<Vec<u8>>)> = Vec::new();
        for (di, value) in regs {
            if !registers.iter().any(|(d, _)| d.value() == di) {
                registers.push((Di::new(di), value));
            }
        }
        Meter { address: "311501114070".parse().unwrap(), registers, split }
    })
}

fn config() -> ClientConfig {
    ClientConfig { response_timeout: Duration::from_millis(1000), retries: 2, ..ClientConfig::default() }
}

/// Reads register `index`, delivering the meter's bytes (after `noise`, with a preamble) in chunks of the
/// given sizes, cycled.
fn read_through_framer(meter: &Meter, index: usize, chunks: &[usize], noise: &[u8]) -> Outcome {
    let mut client = Client::new(config());
    let id = client.request(Request::Read { address: meter.address, di: meter.registers[index].0 }).unwrap();
    let mut framer = Framer::new();
    let mut sizes = chunks.iter().cycle();
    for _ in 0..100 {
        let Some(bytes) = client.poll_transmit(t0()) else { break };
        let request = Frame::decode(&bytes).unwrap().frame;
        let mut wire = noise.to_vec();
        if let Some(reply) = meter.answer(&request) {
            wire.extend(reply.encode_with_preamble(2));
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at((*sizes.next().unwrap()).min(rest.len()));
            framer.push(piece);
            while let Some(e) = framer.next_event() {
                if let FramerEvent::Frame(f) = e {
                    client.handle_frame(f);
                }
            }
            rest = tail;
        }
    }
    match std::iter::from_fn(|| client.poll_event()).collect::<Vec<_>>().as_slice() {
        [Event::Done { id: done, outcome }] if *done == id => outcome.clone(),
        other => panic!("expected one outcome, got {other:?}"),
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Time passes; the client's timers are checked.
    Advance(u64),
    /// The oldest reply on the line reaches the client (a meter answers in the order it was asked).
    Deliver,
    /// One reply is lost (which one: index modulo the number on the line).
    Lose(usize),
    /// Another meter on the bus speaks: a reply for the register being read (with its own value) or an error
    /// reply, which must never be taken for our meter's answer.
    Neighbour(bool),
}

/// A meter on the same bus.
fn neighbour() -> Address {
    "000000001234".parse().unwrap()
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0u64..2500).prop_map(Step::Advance),
        2 => Just(Step::Deliver),
        1 => any::<usize>().prop_map(Step::Lose),
        1 => any::<bool>().prop_map(Step::Neighbour),
    ]
}

/// Replies on the line, oldest first, with when their request was sent.
type Line = VecDeque<(Frame, Instant)>;

/// The oldest reply reaches the client, unless it is later than the client's late-reply window (then it is lost,
/// as the client's contract assumes).
fn deliver(client: &mut Client, line: &mut Line, now: Instant) {
    if let Some((frame, sent)) = line.pop_front()
        && now < sent + config().response_timeout * LATE_REPLY_WINDOWS
    {
        client.handle_frame(frame);
    }
}

fn collect(client: &mut Client, outcomes: &mut HashMap<RequestId, Outcome>) -> Result<(), TestCaseError> {
    while let Some(e) = client.poll_event() {
        if let Event::Done { id, outcome } = e {
            prop_assert!(outcomes.insert(id, outcome).is_none(), "request {} ended twice", id);
        }
    }
    Ok(())
}

/// Sends what the client has to send; the meter's answers go on the line.
fn transmit(meter: &Meter, client: &mut Client, now: Instant, line: &mut Line) {
    while let Some(bytes) = client.poll_transmit(now) {
        line.extend(meter.answer(&Frame::decode(&bytes).unwrap().frame).map(|f| (f, now)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chunking_does_not_change_the_outcome(
        meter in meter_strategy(),
        index in any::<prop::sample::Index>(),
        chunks in prop::collection::vec(1usize..64, 1..8),
        noise in prop::collection::vec(any::<u8>().prop_filter("not a start byte", |b| *b != 0x68), 0..6),
    ) {
        let index = index.index(meter.registers.len());
        let whole = read_through_framer(&meter, index, &[usize::MAX], &[]);
        prop_assert_eq!(&whole, &meter.expected(index, config().max_follow_ups));
        prop_assert_eq!(read_through_framer(&meter, index, &chunks, &noise), whole.clone());
        prop_assert_eq!(read_through_framer(&meter, index, &[1], &noise), whole);
    }

    #[test]
    fn any_order_of_ticks_and_replies_ends_each_request_once_and_consistently(
        meter in meter_strategy(),
        steps in prop::collection::vec(step_strategy(), 0..120),
        retries in 0u32..3,
    ) {
        let config = ClientConfig { retries, ..config() };
        let max_follow_ups = config.max_follow_ups;
        let mut client = Client::new(config);
        let mut now = t0();
        let mut line = Line::new();
        let mut asked: HashMap<RequestId, usize> = HashMap::new();
        let mut outcomes: HashMap<RequestId, Outcome> = HashMap::new();
        let mut next = 0;
        for step in steps {
            if client.is_idle() && next < meter.registers.len() {
                let id = client.request(Request::Read { address: meter.address, di: meter.registers[next].0 }).unwrap();
                asked.insert(id, next);
                next += 1;
            }
            transmit(&meter, &mut client, now, &mut line);
            match step {
                Step::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    client.handle_timeout(now);
                }
                Step::Deliver => deliver(&mut client, &mut line, now),
                Step::Lose(i) if !line.is_empty() => {
                    line.remove(i % line.len());
                }
                Step::Lose(_) => {}
                Step::Neighbour(error) => {
                    let di = meter.registers.get(next.saturating_sub(1)).map_or(Di::new(0), |(d, _)| *d);
                    client.handle_frame(if error {
                        Frame::error_reply(neighbour(), function::READ, ErrorFlags(0x02))
                    } else {
                        Frame::read_reply(neighbour(), di, &[0xEE; 3], false).unwrap()
                    });
                }
            }
            collect(&mut client, &mut outcomes)?;
        }
        // Then a calm line: everything on it arrives, timers fire when due, until every register was asked.
        for _ in 0..10_000 {
            if client.is_idle() {
                if next == meter.registers.len() {
                    break;
                }
                let id = client.request(Request::Read { address: meter.address, di: meter.registers[next].0 }).unwrap();
                asked.insert(id, next);
                next += 1;
            }
            transmit(&meter, &mut client, now, &mut line);
            if line.is_empty() {
                // Nothing to send, nothing on the air: the request in flight must have a timer to wait for.
                let due = client.poll_timeout();
                prop_assert!(due.is_some(), "a request in flight with nothing that can end it");
                now = now.max(due.unwrap_or(now));
                client.handle_timeout(now);
            }
            while !line.is_empty() {
                deliver(&mut client, &mut line, now);
            }
            collect(&mut client, &mut outcomes)?;
        }
        prop_assert!(client.is_idle());
        prop_assert_eq!(next, meter.registers.len());
        prop_assert_eq!(outcomes.len(), asked.len(), "every request ends exactly once");
        for (id, outcome) in &outcomes {
            let index = asked[id];
            match outcome {
                Err(TransportError::Timeout { attempts }) => prop_assert_eq!(*attempts, retries + 1),
                other => prop_assert_eq!(other, &meter.expected(index, max_follow_ups), "register {}", index),
            }
        }
    }
}
