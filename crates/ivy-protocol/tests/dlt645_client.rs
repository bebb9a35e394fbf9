//! The sans-IO DL/T 645 client driven with scripted meter replies: no sockets, time passed in.

use ivy_protocol::dlt645::client::{
    Client, ClientConfig, Event, MeterError, Outcome, Request, RequestId, Response, SubmitError, TransportError,
};
use ivy_protocol::dlt645::control::function;
use ivy_protocol::dlt645::relay::decrypt_relay_body;
use ivy_protocol::dlt645::{
    Address, Control, Di, ErrorFlags, Frame, Framer, FramerEvent, MeterDateTime, RelayAuth, RelayCommand,
};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn meter() -> Address {
    "311501114070".parse().unwrap()
}

fn other_meter() -> Address {
    "000000001234".parse().unwrap()
}

const VOLTAGE_A: Di = Di::new(0x0201_0100);

fn config() -> ClientConfig {
    ClientConfig { response_timeout: ms(1000), retries: 2, ..ClientConfig::default() }
}

fn events(c: &mut Client) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// The one frame the client sends at `now`, decoded.
fn sent(c: &mut Client, now: Instant) -> Frame {
    let bytes = c.poll_transmit(now).expect("a frame to send");
    assert_eq!(c.poll_transmit(now), None, "one frame at a time");
    Frame::decode(&bytes).unwrap().frame
}

fn done(c: &mut Client) -> (RequestId, Outcome) {
    match &events(c)[..] {
        [Event::Done { id, outcome }] => (*id, outcome.clone()),
        other => panic!("expected one Done event, got {other:?}"),
    }
}

fn follow_up_reply(address: Address, di: Di, value: &[u8], seq: u8, more: bool) -> Frame {
    let mut data = di.to_le_bytes().to_vec();
    data.extend_from_slice(value);
    data.push(seq);
    let control = Control(Control::reply(function::READ_FOLLOW_UP).0 | if more { 0x20 } else { 0 });
    Frame::new(address, control, &data).unwrap()
}

#[test]
fn read_register() {
    let mut c = Client::new(config());
    let id = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    assert_eq!(c.in_flight(), Some(id));
    assert_eq!(c.poll_timeout(), None, "no timer before the frame is handed out");
    let out = sent(&mut c, t0());
    assert_eq!(out, Frame::read(meter(), VOLTAGE_A));
    assert_eq!(c.poll_timeout(), Some(t0() + ms(1000)));
    c.handle_frame(Frame::read_reply(meter(), VOLTAGE_A, &[0x05, 0x22], false).unwrap());
    assert_eq!(done(&mut c), (id, Ok(Ok(Response::Data { di: VOLTAGE_A, value: vec![0x05, 0x22] }))));
    assert!(c.is_idle());
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.poll_transmit(t0()), None);
}

#[test]
fn read_address_takes_whichever_meter_answers() {
    let mut c = Client::new(config());
    let id = c.request(Request::ReadAddress).unwrap();
    let out = sent(&mut c, t0());
    assert_eq!(out, Frame::read_address());
    c.handle_frame(Frame::read_address_reply(other_meter()));
    assert_eq!(done(&mut c), (id, Ok(Ok(Response::Address(other_meter())))));
}

#[test]
fn read_from_the_wildcard_address_accepts_the_answering_meter() {
    let mut c = Client::new(config());
    let id = c.request(Request::Read { address: Address::WILDCARD, di: VOLTAGE_A }).unwrap();
    assert_eq!(sent(&mut c, t0()).address, Address::WILDCARD);
    c.handle_frame(Frame::read_reply(meter(), VOLTAGE_A, &[0x05, 0x22], false).unwrap());
    assert_eq!(done(&mut c), (id, Ok(Ok(Response::Data { di: VOLTAGE_A, value: vec![0x05, 0x22] }))));
}

#[test]
fn write_accepted_and_refused() {
    let auth = RelayAuth::new(2, "123456", "12345678").unwrap();
    let di = Di::new(0x0400_0102);
    let mut c = Client::new(config());
    let id =
        c.request(Request::Write { address: meter(), di, auth: auth.clone(), value: vec![0x19, 0x34, 0x04] }).unwrap();
    assert_eq!(sent(&mut c, t0()), Frame::write(meter(), di, &auth, &[0x19, 0x34, 0x04]).unwrap());
    c.handle_frame(Frame::ack_reply(meter(), function::WRITE));
    assert_eq!(done(&mut c), (id, Ok(Ok(Response::Accepted))));

    let id = c.request(Request::Write { address: meter(), di, auth, value: vec![0x00] }).unwrap();
    sent(&mut c, t0());
    c.handle_frame(Frame::error_reply(meter(), function::WRITE, ErrorFlags(0x04)));
    assert_eq!(done(&mut c), (id, Ok(Err(MeterError::Refused { flags: ErrorFlags(0x04) }))));
}

#[test]
fn write_value_too_long_is_refused_at_submission() {
    let auth = RelayAuth::new(2, "123456", "12345678").unwrap();
    let mut c = Client::new(config());
    let request = Request::Write { address: meter(), di: VOLTAGE_A, auth, value: vec![0; 200] };
    assert!(matches!(c.request(request), Err(SubmitError::Build(_))));
    assert!(c.is_idle());
}

#[test]
fn relay_control_plain_and_encrypted() {
    let auth = RelayAuth::new(2, "123456", "12345678").unwrap();
    let until = MeterDateTime::new(2026, 11, 30, 12, 0, 0).unwrap();
    let key = [7u8; 16];
    for aes_key in [None, Some(key)] {
        let mut c = Client::new(config());
        let request = Request::RelayControl {
            address: meter(),
            command: RelayCommand::Trip,
            auth: auth.clone(),
            valid_until: until,
            aes_key,
        };
        assert!(!format!("{request:?}").contains("07, 07"), "the key never prints");
        let id = c.request(request).unwrap();
        let out = sent(&mut c, t0());
        assert_eq!(out, Frame::relay_control(meter(), RelayCommand::Trip, &auth, &until, aes_key.as_ref()));
        let body: [u8; 16] = out.data().try_into().unwrap();
        let plain = if aes_key.is_some() { decrypt_relay_body(&body, &key) } else { body };
        assert_eq!(plain[8], RelayCommand::Trip.code());
        c.handle_frame(Frame::ack_reply(meter(), function::RELAY_CONTROL));
        assert_eq!(done(&mut c), (id, Ok(Ok(Response::Accepted))));
    }
}

#[test]
fn broadcast_time_completes_when_sent_and_waits_for_nothing() {
    let mut c = Client::new(config());
    let time = MeterDateTime::new(2026, 11, 30, 10, 30, 0).unwrap();
    let id = c.request(Request::BroadcastTime(time)).unwrap();
    assert_eq!(events(&mut c), vec![]);
    assert_eq!(sent(&mut c, t0()), Frame::broadcast_time(&time));
    assert_eq!(done(&mut c), (id, Ok(Ok(Response::Sent))));
    assert_eq!(c.poll_timeout(), None);
    assert!(c.is_idle());
}

#[test]
fn requests_that_need_a_reply_cannot_go_to_the_broadcast_address() {
    let mut c = Client::new(config());
    assert_eq!(
        c.request(Request::Read { address: Address::BROADCAST, di: VOLTAGE_A }),
        Err(SubmitError::BroadcastAddress)
    );
    assert!(c.is_idle());
}

#[test]
fn error_reply_carries_its_bits_and_no_requested_data_is_its_own_outcome() {
    let mut c = Client::new(config());
    let id = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    sent(&mut c, t0());
    c.handle_frame(Frame::error_reply(meter(), function::READ, ErrorFlags(0x02)));
    let (got, outcome) = done(&mut c);
    assert_eq!(got, id);
    let Ok(Err(e)) = outcome else { panic!("{outcome:?}") };
    assert_eq!(e, MeterError::NoRequestedData { flags: ErrorFlags(0x02) });
    assert_eq!(e.flags().names(), vec!["no_requested_data"]);

    // Bit 1 with other bits is still "no requested data"; other bits alone are a refusal.
    for (byte, no_data) in [(0x03, true), (0x01, false), (0x04, false), (0x00, false)] {
        let id = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
        sent(&mut c, t0());
        c.handle_frame(Frame::error_reply(meter(), function::READ, ErrorFlags(byte)));
        let expected = if no_data {
            MeterError::NoRequestedData { flags: ErrorFlags(byte) }
        } else {
            MeterError::Refused { flags: ErrorFlags(byte) }
        };
        assert_eq!(done(&mut c), (id, Ok(Err(expected))));
    }
}

#[test]
fn follow_up_frames_are_read_and_concatenated() {
    let mut c = Client::new(config());
    let di = Di::new(0x0610_0101);
    let id = c.request(Request::Read { address: meter(), di }).unwrap();
    sent(&mut c, t0());
    c.handle_frame(Frame::read_reply(meter(), di, &[1, 2, 3], true).unwrap());
    assert_eq!(events(&mut c), vec![]);
    // The first follow-up asks for frame 1, with its own fresh timer.
    let t1 = t0() + ms(300);
    assert_eq!(sent(&mut c, t1), Frame::read_follow_up(meter(), di, 1));
    assert_eq!(c.poll_timeout(), Some(t1 + ms(1000)));
    c.handle_frame(follow_up_reply(meter(), di, &[4, 5], 1, true));
    assert_eq!(sent(&mut c, t1), Frame::read_follow_up(meter(), di, 2));
    // A repeated reply for frame 1 (late duplicate) is not frame 2.
    let stale = follow_up_reply(meter(), di, &[4, 5], 1, true);
    c.handle_frame(stale.clone());
    assert_eq!(events(&mut c), vec![Event::Unmatched(Box::new(stale))]);
    c.handle_frame(follow_up_reply(meter(), di, &[6], 2, false));
    assert_eq!(done(&mut c), (id, Ok(Ok(Response::Data { di, value: vec![1, 2, 3, 4, 5, 6] }))));
}

#[test]
fn an_error_in_a_follow_up_ends_the_read() {
    let mut c = Client::new(config());
    let di = Di::new(0x0610_0101);
    let id = c.request(Request::Read { address: meter(), di }).unwrap();
    sent(&mut c, t0());
    c.handle_frame(Frame::read_reply(meter(), di, &[1], true).unwrap());
    sent(&mut c, t0());
    c.handle_frame(Frame::error_reply(meter(), function::READ_FOLLOW_UP, ErrorFlags(0x01)));
    assert_eq!(done(&mut c), (id, Ok(Err(MeterError::Refused { flags: ErrorFlags(0x01) }))));
}

#[test]
fn follow_ups_are_bounded() {
    let mut c = Client::new(ClientConfig { max_follow_ups: 2, ..config() });
    let di = Di::new(0x0610_0101);
    let id = c.request(Request::Read { address: meter(), di }).unwrap();
    sent(&mut c, t0());
    c.handle_frame(Frame::read_reply(meter(), di, &[1], true).unwrap());
    for seq in 1..=2 {
        assert_eq!(sent(&mut c, t0()), Frame::read_follow_up(meter(), di, seq));
        c.handle_frame(follow_up_reply(meter(), di, &[seq], seq, true));
    }
    assert_eq!(done(&mut c), (id, Err(TransportError::TooManyFollowUps(2))));
    assert_eq!(c.poll_transmit(t0()), None);
}

#[test]
fn follow_up_without_sequence_number_is_unexpected() {
    let mut c = Client::new(config());
    let di = Di::new(0x0610_0101);
    let id = c.request(Request::Read { address: meter(), di }).unwrap();
    sent(&mut c, t0());
    c.handle_frame(Frame::read_reply(meter(), di, &[1], true).unwrap());
    sent(&mut c, t0());
    let bare = Frame::new(meter(), Control::reply(function::READ_FOLLOW_UP), &di.to_le_bytes()).unwrap();
    c.handle_frame(bare);
    assert!(matches!(done(&mut c), (i, Err(TransportError::Unexpected { control: 0x92, .. })) if i == id));
}

#[test]
fn retries_then_timeout() {
    let mut c = Client::new(config());
    let id = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    let request = Frame::read(meter(), VOLTAGE_A);
    let mut now = t0();
    for attempt in 1..=3 {
        assert_eq!(sent(&mut c, now), request, "attempt {attempt} sends the same frame");
        let due = now + ms(1000);
        assert_eq!(c.poll_timeout(), Some(due));
        c.handle_timeout(due - ms(1));
        assert_eq!(c.poll_transmit(due), None, "nothing before the reply timer");
        c.handle_timeout(due);
        now = due + ms(5);
    }
    assert_eq!(done(&mut c), (id, Err(TransportError::Timeout { attempts: 3 })));
    assert_eq!(c.poll_timeout(), None);
    assert!(c.is_idle());
}

#[test]
fn a_retry_is_answered() {
    let mut c = Client::new(ClientConfig { retries: 1, ..config() });
    let id = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    sent(&mut c, t0());
    c.handle_timeout(t0() + ms(1000));
    assert_eq!(events(&mut c), vec![]);
    sent(&mut c, t0() + ms(1000));
    c.handle_frame(Frame::read_reply(meter(), VOLTAGE_A, &[0x05, 0x22], false).unwrap());
    assert_eq!(done(&mut c), (id, Ok(Ok(Response::Data { di: VOLTAGE_A, value: vec![0x05, 0x22] }))));
}

#[test]
fn zero_retries_means_one_attempt() {
    let mut c = Client::new(ClientConfig { retries: 0, ..config() });
    let id = c.request(Request::ReadAddress).unwrap();
    sent(&mut c, t0());
    c.handle_timeout(t0() + ms(1000));
    assert_eq!(done(&mut c), (id, Err(TransportError::Timeout { attempts: 1 })));
}

#[test]
fn the_deadline_bounds_the_request_across_retries() {
    let mut c = Client::new(config());
    let id = c.request_until(Request::Read { address: meter(), di: VOLTAGE_A }, t0() + ms(1500)).unwrap();
    assert_eq!(c.poll_timeout(), Some(t0() + ms(1500)), "the deadline counts before the frame goes out");
    sent(&mut c, t0());
    assert_eq!(c.poll_timeout(), Some(t0() + ms(1000)));
    c.handle_timeout(t0() + ms(1000));
    sent(&mut c, t0() + ms(1000));
    assert_eq!(c.poll_timeout(), Some(t0() + ms(1500)), "the deadline comes before the second reply timer");
    c.handle_timeout(t0() + ms(1500));
    assert_eq!(done(&mut c), (id, Err(TransportError::Deadline)));
}

#[test]
fn wrong_address_reply_is_ignored() {
    let mut c = Client::new(config());
    let id = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    sent(&mut c, t0());
    let wrong = Frame::read_reply(other_meter(), VOLTAGE_A, &[0x99, 0x99], false).unwrap();
    c.handle_frame(wrong.clone());
    let wrong_error = Frame::error_reply(other_meter(), function::READ, ErrorFlags(0x02));
    c.handle_frame(wrong_error.clone());
    assert_eq!(events(&mut c), vec![Event::Unmatched(Box::new(wrong)), Event::Unmatched(Box::new(wrong_error))]);
    assert_eq!(c.in_flight(), Some(id));
    c.handle_frame(Frame::read_reply(meter(), VOLTAGE_A, &[0x05, 0x22], false).unwrap());
    assert_eq!(done(&mut c), (id, Ok(Ok(Response::Data { di: VOLTAGE_A, value: vec![0x05, 0x22] }))));
}

#[test]
fn other_functions_dis_and_requests_do_not_answer() {
    let mut c = Client::new(config());
    let id = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    let echo = sent(&mut c, t0());
    let other_di = Frame::read_reply(meter(), Di::new(0x0201_0200), &[0x05, 0x22], false).unwrap();
    let other_function = Frame::ack_reply(meter(), function::WRITE);
    let other_error = Frame::error_reply(meter(), function::WRITE, ErrorFlags(0x04));
    for f in [echo.clone(), other_di.clone(), other_function.clone(), other_error.clone()] {
        c.handle_frame(f);
    }
    assert_eq!(
        events(&mut c),
        vec![
            Event::Unmatched(Box::new(echo)),
            Event::Unmatched(Box::new(other_di)),
            Event::Unmatched(Box::new(other_function)),
            Event::Unmatched(Box::new(other_error))
        ]
    );
    assert_eq!(c.in_flight(), Some(id));
}

#[test]
fn late_reply_after_timeout_is_unmatched() {
    let mut c = Client::new(ClientConfig { retries: 0, ..config() });
    let id = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    sent(&mut c, t0());
    c.handle_timeout(t0() + ms(1000));
    assert_eq!(done(&mut c), (id, Err(TransportError::Timeout { attempts: 1 })));
    let late = Frame::read_reply(meter(), VOLTAGE_A, &[0x05, 0x22], false).unwrap();
    c.handle_frame(late.clone());
    assert_eq!(events(&mut c), vec![Event::Unmatched(Box::new(late.clone()))]);
    // Also while the next request (another register) is in flight.
    let next = c.request(Request::Read { address: meter(), di: Di::new(0x0201_0200) }).unwrap();
    sent(&mut c, t0() + ms(1100));
    c.handle_frame(late.clone());
    assert_eq!(events(&mut c), vec![Event::Unmatched(Box::new(late))]);
    assert_eq!(c.in_flight(), Some(next));
}

#[test]
fn a_second_request_is_refused_while_one_is_in_flight() {
    let mut c = Client::new(config());
    let id = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    assert_eq!(c.request(Request::ReadAddress), Err(SubmitError::Busy(id)));
    assert_eq!(c.request(Request::Read { address: other_meter(), di: VOLTAGE_A }), Err(SubmitError::Busy(id)));
    sent(&mut c, t0());
    assert_eq!(c.request(Request::ReadAddress), Err(SubmitError::Busy(id)));
    c.handle_frame(Frame::read_reply(meter(), VOLTAGE_A, &[0x05, 0x22], false).unwrap());
    assert!(matches!(done(&mut c), (i, Ok(Ok(Response::Data { .. }))) if i == id));
    let next = c.request(Request::ReadAddress).unwrap();
    assert_ne!(next, id);
}

#[test]
fn abort_fails_the_request_in_flight() {
    let mut c = Client::new(config());
    let id = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    c.abort();
    assert_eq!(done(&mut c), (id, Err(TransportError::Aborted)));
    assert_eq!(c.poll_transmit(t0()), None);
    assert_eq!(c.poll_timeout(), None);
    c.abort();
    assert_eq!(events(&mut c), vec![]);
}

#[test]
fn wakeup_preamble_precedes_every_frame() {
    let mut c = Client::new(ClientConfig { wakeup_preamble: 4, ..config() });
    c.request(Request::Read { address: meter(), di: Di::new(0x0610_0101) }).unwrap();
    let first = c.poll_transmit(t0()).unwrap();
    assert_eq!(first, Frame::read(meter(), Di::new(0x0610_0101)).encode_with_preamble(4));
    c.handle_frame(Frame::read_reply(meter(), Di::new(0x0610_0101), &[1], true).unwrap());
    let follow = c.poll_transmit(t0()).unwrap();
    assert_eq!(follow[..4], [0xFE; 4]);
}

#[test]
fn timeouts_called_early_late_or_twice_change_nothing_that_is_not_due() {
    let mut c = Client::new(ClientConfig { retries: 0, ..config() });
    c.handle_timeout(t0());
    let id = c.request(Request::ReadAddress).unwrap();
    c.handle_timeout(t0() + ms(10_000));
    assert_eq!(events(&mut c), vec![], "no timer runs before the frame is handed out");
    sent(&mut c, t0() + ms(10_000));
    c.handle_timeout(t0());
    c.handle_timeout(t0() + ms(10_999));
    assert_eq!(events(&mut c), vec![]);
    c.handle_timeout(t0() + ms(11_000));
    c.handle_timeout(t0() + ms(11_000));
    assert_eq!(done(&mut c), (id, Err(TransportError::Timeout { attempts: 1 })));
}

#[test]
fn frames_through_the_framer_reach_the_client() {
    // The meter's reply arrives in pieces with a wake-up preamble and line noise before it.
    let mut c = Client::new(config());
    let id = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    sent(&mut c, t0());
    let mut wire = vec![0x00, 0x11, 0xFE, 0xFE];
    wire.extend(Frame::read_reply(meter(), VOLTAGE_A, &[0x05, 0x22], false).unwrap().encode());
    let mut framer = Framer::new();
    for piece in wire.chunks(3) {
        framer.push(piece);
        while let Some(e) = framer.next_event() {
            if let FramerEvent::Frame(f) = e {
                c.handle_frame(f);
            }
        }
    }
    assert_eq!(done(&mut c), (id, Ok(Ok(Response::Data { di: VOLTAGE_A, value: vec![0x05, 0x22] }))));
}

#[test]
fn late_error_reply_after_a_timeout_is_not_taken_for_the_next_request() {
    // Register 1 times out; its "no requested data" arrives while register 2 is asked. An error reply carries no
    // DI, so only the count of unanswered frames tells it apart: it is the late answer, and register 2 still gets
    // its own.
    let mut c = Client::new(ClientConfig { retries: 0, ..config() });
    let first = c.request(Request::Read { address: meter(), di: Di::new(0x0201_0200) }).unwrap();
    sent(&mut c, t0());
    c.handle_timeout(t0() + ms(1000));
    assert_eq!(done(&mut c), (first, Err(TransportError::Timeout { attempts: 1 })));
    let second = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    sent(&mut c, t0() + ms(1000));
    let late = Frame::error_reply(meter(), function::READ, ErrorFlags(0x02));
    c.handle_frame(late.clone());
    assert_eq!(events(&mut c), vec![Event::Unmatched(Box::new(late))]);
    assert_eq!(c.in_flight(), Some(second));
    c.handle_frame(Frame::read_reply(meter(), VOLTAGE_A, &[0x05, 0x22], false).unwrap());
    assert_eq!(done(&mut c), (second, Ok(Ok(Response::Data { di: VOLTAGE_A, value: vec![0x05, 0x22] }))));
    // The count is used up: the next error reply is the meter's answer.
    let third = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    sent(&mut c, t0() + ms(1100));
    c.handle_frame(Frame::error_reply(meter(), function::READ, ErrorFlags(0x02)));
    assert_eq!(done(&mut c), (third, Ok(Err(MeterError::NoRequestedData { flags: ErrorFlags(0x02) }))));
}

#[test]
fn a_real_refusal_taken_for_a_late_reply_is_asked_again() {
    // After a timed-out relay command, the meter's refusal of the next one is first taken as the late reply of
    // the earlier one; the request retries and the second refusal is its answer.
    let auth = RelayAuth::new(2, "123456", "12345678").unwrap();
    let until = MeterDateTime::new(2026, 11, 30, 12, 0, 0).unwrap();
    let relay = |command| Request::RelayControl {
        address: meter(),
        command,
        auth: auth.clone(),
        valid_until: until,
        aes_key: None,
    };
    let mut c = Client::new(ClientConfig { retries: 1, ..config() });
    let first = c.request(relay(RelayCommand::Trip)).unwrap();
    sent(&mut c, t0());
    c.handle_timeout(t0() + ms(1000));
    sent(&mut c, t0() + ms(1000));
    c.handle_timeout(t0() + ms(2000));
    assert_eq!(done(&mut c), (first, Err(TransportError::Timeout { attempts: 2 })));
    let second = c.request(relay(RelayCommand::CloseDirect)).unwrap();
    let t1 = t0() + ms(2000);
    sent(&mut c, t1);
    let refusal = Frame::error_reply(meter(), function::RELAY_CONTROL, ErrorFlags(0x04));
    c.handle_frame(refusal.clone());
    assert_eq!(events(&mut c), vec![Event::Unmatched(Box::new(refusal.clone()))]);
    c.handle_timeout(t1 + ms(1000));
    // The first attempt of the first command (sent at t0) is now past its window; the retry is sent.
    sent(&mut c, t1 + ms(1000));
    c.handle_frame(refusal);
    assert_eq!(done(&mut c), (second, Ok(Err(MeterError::Refused { flags: ErrorFlags(0x04) }))));
}

#[test]
fn a_reply_later_than_the_window_is_taken_as_lost() {
    let mut c = Client::new(ClientConfig { retries: 0, ..config() });
    let first = c.request(Request::ReadAddress).unwrap();
    sent(&mut c, t0());
    c.handle_timeout(t0() + ms(1000));
    assert_eq!(done(&mut c), (first, Err(TransportError::Timeout { attempts: 1 })));
    // Two response timeouts after the first frame went out, its reply is no longer expected.
    let second = c.request(Request::ReadAddress).unwrap();
    sent(&mut c, t0() + ms(2000));
    c.handle_frame(Frame::read_address_reply(meter()));
    assert_eq!(done(&mut c), (second, Ok(Ok(Response::Address(meter())))));
}

#[test]
fn the_other_reply_of_a_retried_frame_is_late_for_the_next_request() {
    // The first attempt was answered late, after the retry went out: the retry's reply is still to come.
    let auth = RelayAuth::new(2, "123456", "12345678").unwrap();
    let mut c = Client::new(config());
    let write = |value: u8| Request::Write { address: meter(), di: VOLTAGE_A, auth: auth.clone(), value: vec![value] };
    let first = c.request(write(1)).unwrap();
    sent(&mut c, t0());
    c.handle_timeout(t0() + ms(1000));
    sent(&mut c, t0() + ms(1000));
    c.handle_frame(Frame::ack_reply(meter(), function::WRITE));
    assert_eq!(done(&mut c), (first, Ok(Ok(Response::Accepted))));
    let second = c.request(write(2)).unwrap();
    sent(&mut c, t0() + ms(1100));
    let second_ack = Frame::ack_reply(meter(), function::WRITE);
    c.handle_frame(second_ack.clone());
    assert_eq!(events(&mut c), vec![Event::Unmatched(Box::new(second_ack.clone()))]);
    c.handle_frame(second_ack);
    assert_eq!(done(&mut c), (second, Ok(Ok(Response::Accepted))));
}

#[test]
fn late_replies_are_counted_per_meter() {
    // A timed-out request to one meter on the bus does not make another meter's answers suspect.
    let mut c = Client::new(ClientConfig { retries: 0, ..config() });
    let first = c.request(Request::Read { address: other_meter(), di: VOLTAGE_A }).unwrap();
    sent(&mut c, t0());
    c.handle_timeout(t0() + ms(1000));
    assert_eq!(done(&mut c), (first, Err(TransportError::Timeout { attempts: 1 })));
    let second = c.request(Request::Read { address: meter(), di: VOLTAGE_A }).unwrap();
    sent(&mut c, t0() + ms(1000));
    c.handle_frame(Frame::error_reply(meter(), function::READ, ErrorFlags(0x02)));
    assert_eq!(done(&mut c), (second, Ok(Err(MeterError::NoRequestedData { flags: ErrorFlags(0x02) }))));
}
