//! The client association state machine driven with scripted meter replies (no sockets, no clock).

use ivy_protocol::dlms::apdu::{
    Aare, ActionResponse, Apdu, AttributeDescriptor, Conformance, DataAccessResult, ExceptionResponse, GetRequest,
    GetResponse, InvokeIdAndPriority, MethodDescriptor, Release, SetResponse,
};
use ivy_protocol::dlms::association::{
    Association, AssociationFailure, ClientConfig, Event, Request, RequestError, Response,
};
use ivy_protocol::dlms::{Data, Obis};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn voltage() -> AttributeDescriptor {
    AttributeDescriptor::new(3, Obis::new(1, 0, 12, 7, 0, 255), 2)
}

fn frequency() -> AttributeDescriptor {
    AttributeDescriptor::new(3, Obis::new(1, 0, 14, 7, 0, 255), 2)
}

fn events(a: &mut Association) -> Vec<Event> {
    std::iter::from_fn(|| a.poll_event()).collect()
}

/// The time every scripted APDU goes out: the tests only need "later than that" for timeouts.
fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// Past every timer armed at [`t0`] with the default settings.
fn later() -> Instant {
    t0() + Duration::from_secs(60)
}

fn sent(a: &mut Association) -> Vec<Apdu> {
    std::iter::from_fn(|| a.poll_transmit(t0())).map(|b| Apdu::parse(&b).unwrap()).collect()
}

fn aare(conformance: u32) -> Vec<u8> {
    Apdu::Aare(Aare::accepted(Conformance(conformance), 500)).encode()
}

fn get_response(invoke: u8, result: Result<Data, DataAccessResult>) -> Vec<u8> {
    Apdu::GetResponse(GetResponse::Normal { iip: InvokeIdAndPriority(invoke), result }).encode()
}

#[test]
fn associate_get_release() {
    let mut a = Association::new(ClientConfig::default());
    let id = a.request(Request::Get(voltage()));
    let out = sent(&mut a);
    assert_eq!(out.len(), 1);
    assert_eq!(
        a_bytes(&out[0]),
        hex::decode("601da109060760857405080101be10040e01000000065f1f0400001e1dffff").unwrap()
    );
    assert!(a.awaiting_reply());
    a.handle_apdu(&aare(0x001E1D));
    assert!(matches!(events(&mut a)[..], [Event::Associated(_)]));
    let out = sent(&mut a);
    // The GET goes out with invoke id 1 and no priority/service-class bits (what the EM114070 expects).
    assert_eq!(a_bytes(&out[0]), hex::decode("c00101000301000c0700ff0200").unwrap());
    a.handle_apdu(&get_response(1, Ok(Data::DoubleLongUnsigned(23636))));
    assert_eq!(
        events(&mut a),
        vec![Event::Response { id, result: Ok(Response::Data(Data::DoubleLongUnsigned(23636))) }]
    );
    a.release();
    assert_eq!(sent(&mut a), vec![Apdu::Rlrq(Release { reason: Some(0) })]);
    a.handle_apdu(&Apdu::Rlre(Release { reason: Some(0) }).encode());
    assert_eq!(events(&mut a), vec![Event::Released]);
    assert!(a.is_idle());
}

fn a_bytes(apdu: &Apdu) -> Vec<u8> {
    apdu.encode()
}

#[test]
fn rejected_association_fails_queued_requests() {
    let mut a = Association::new(ClientConfig::default());
    let id = a.request(Request::Get(voltage()));
    sent(&mut a);
    a.handle_apdu(&Apdu::Aare(Aare::rejected(2)).encode());
    let ev = events(&mut a);
    assert!(
        matches!(&ev[0], Event::Response { id: i, result: Err(RequestError::NotAssociated(why)) } if *i == id && why.to_string().contains("application-context-name-not-supported"))
    );
    assert!(matches!(&ev[1], Event::AssociationFailed(AssociationFailure::Rejected { result: 1, .. })));
    assert!(a.is_idle());
}

#[test]
fn replies_are_matched_by_invoke_id_not_order() {
    let mut a = Association::new(ClientConfig::default());
    a.associate();
    sent(&mut a);
    a.handle_apdu(&aare(0x001E1D));
    events(&mut a);
    let first = a.request(Request::Get(voltage()));
    sent(&mut a);
    // The meter is slow: our timer fires, the request fails with a timeout ...
    a.handle_timeout(later());
    assert_eq!(events(&mut a), vec![Event::Response { id: first, result: Err(RequestError::Timeout) }]);
    // ... the next request goes out with invoke id 2 ...
    let second = a.request(Request::Get(frequency()));
    let out = sent(&mut a);
    assert!(matches!(&out[0], Apdu::GetRequest(GetRequest::Normal { iip, .. }) if iip.invoke_id() == 2));
    // ... and the late answer to invoke id 1 is not taken for it.
    a.handle_apdu(&get_response(1, Ok(Data::DoubleLongUnsigned(23636))));
    assert!(matches!(events(&mut a)[..], [Event::Unmatched(_)]));
    a.handle_apdu(&get_response(2, Ok(Data::DoubleLongUnsigned(5004))));
    assert_eq!(
        events(&mut a),
        vec![Event::Response { id: second, result: Ok(Response::Data(Data::DoubleLongUnsigned(5004))) }]
    );
}

#[test]
fn invoke_ids_cycle_1_to_15() {
    let mut a = Association::new(ClientConfig::default());
    a.associate();
    sent(&mut a);
    a.handle_apdu(&aare(0x001E1D));
    let mut seen = Vec::new();
    for _ in 0..17 {
        a.request(Request::Get(voltage()));
        if let Some(Apdu::GetRequest(GetRequest::Normal { iip, .. })) = sent(&mut a).first() {
            seen.push(iip.invoke_id());
            a.handle_apdu(&get_response(iip.0, Ok(Data::Null)));
        }
    }
    assert_eq!(seen[..16], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 1]);
}

#[test]
fn block_transfer_is_followed_to_the_end() {
    let mut a = Association::new(ClientConfig::default());
    a.associate();
    sent(&mut a);
    a.handle_apdu(&aare(0x001E1D));
    let id = a.request(Request::Get(voltage()));
    sent(&mut a);
    let value = Data::OctetString((0..300u16).map(|i| i as u8).collect());
    let encoded = value.to_bytes();
    let (first, second) = encoded.split_at(200);
    a.handle_apdu(
        &Apdu::GetResponse(GetResponse::WithDataBlock {
            iip: InvokeIdAndPriority(1),
            last: false,
            block: 1,
            raw: Ok(first.to_vec()),
        })
        .encode(),
    );
    assert_eq!(sent(&mut a), vec![Apdu::GetRequest(GetRequest::Next { iip: InvokeIdAndPriority(1), block: 1 })]);
    a.handle_apdu(
        &Apdu::GetResponse(GetResponse::WithDataBlock {
            iip: InvokeIdAndPriority(1),
            last: true,
            block: 2,
            raw: Ok(second.to_vec()),
        })
        .encode(),
    );
    assert_eq!(events(&mut a).pop(), Some(Event::Response { id, result: Ok(Response::Data(value)) }));
}

#[test]
fn block_transfer_is_bounded() {
    let mut a = Association::new(ClientConfig { max_response_bytes: 100, ..ClientConfig::default() });
    a.associate();
    sent(&mut a);
    a.handle_apdu(&aare(0x001E1D));
    let id = a.request(Request::Get(voltage()));
    sent(&mut a);
    a.handle_apdu(
        &Apdu::GetResponse(GetResponse::WithDataBlock {
            iip: InvokeIdAndPriority(1),
            last: false,
            block: 1,
            raw: Ok(vec![0; 150]),
        })
        .encode(),
    );
    assert_eq!(events(&mut a).pop(), Some(Event::Response { id, result: Err(RequestError::TooLarge(100)) }));
}

#[test]
fn get_with_list_only_when_negotiated() {
    // Negotiated multiple-references: one GET-with-list.
    let mut a = Association::new(ClientConfig::default());
    a.associate();
    sent(&mut a);
    a.handle_apdu(&aare(0x001E1D));
    let id = a.request(Request::GetList(vec![voltage(), frequency()]));
    assert!(matches!(sent(&mut a)[..], [Apdu::GetRequest(GetRequest::WithList { .. })]));
    a.handle_apdu(
        &Apdu::GetResponse(GetResponse::WithList {
            iip: InvokeIdAndPriority(1),
            results: vec![Ok(Data::DoubleLongUnsigned(23636)), Err(DataAccessResult::OBJECT_UNDEFINED)],
        })
        .encode(),
    );
    assert_eq!(
        events(&mut a).pop(),
        Some(Event::Response {
            id,
            result: Ok(Response::List(vec![Ok(Data::DoubleLongUnsigned(23636)), Err(DataAccessResult(4))]))
        })
    );

    // Not negotiated (conformance without multiple-references): one GET each, results gathered in order.
    let mut a = Association::new(ClientConfig::default());
    a.associate();
    sent(&mut a);
    a.handle_apdu(&aare(0x001C1D));
    let id = a.request(Request::GetList(vec![voltage(), frequency()]));
    let first = sent(&mut a);
    assert!(matches!(&first[..], [Apdu::GetRequest(GetRequest::Normal { attribute, .. })] if *attribute == voltage()));
    a.handle_apdu(&get_response(1, Err(DataAccessResult::OBJECT_UNDEFINED)));
    let second = sent(&mut a);
    assert!(
        matches!(&second[..], [Apdu::GetRequest(GetRequest::Normal { attribute, iip, .. })] if *attribute == frequency() && iip.invoke_id() == 2)
    );
    a.handle_apdu(&get_response(2, Ok(Data::DoubleLongUnsigned(5004))));
    assert_eq!(
        events(&mut a).pop(),
        Some(Event::Response {
            id,
            result: Ok(Response::List(vec![Err(DataAccessResult(4)), Ok(Data::DoubleLongUnsigned(5004))]))
        })
    );
}

#[test]
fn data_access_errors_actions_sets_and_exceptions() {
    let mut a = Association::new(ClientConfig::default());
    a.associate();
    sent(&mut a);
    a.handle_apdu(&aare(0x001E1D));
    events(&mut a);

    let id = a.request(Request::Get(voltage()));
    sent(&mut a);
    a.handle_apdu(&get_response(1, Err(DataAccessResult::OBJECT_UNDEFINED)));
    match events(&mut a).pop() {
        Some(Event::Response { id: i, result: Err(RequestError::DataAccess(dar)) }) => {
            assert_eq!(i, id);
            assert_eq!(dar.name(), "object-undefined");
        }
        other => panic!("{other:?}"),
    }

    let disconnect = MethodDescriptor { class_id: 70, obis: Obis::new(0, 0, 96, 3, 10, 255), method: 1 };
    let id = a.request(Request::Action(disconnect, Some(Data::Integer(0))));
    assert_eq!(a_bytes(&sent(&mut a)[0]), hex::decode("c30102004600006003 0aff01010f00".replace(' ', "")).unwrap());
    a.handle_apdu(
        &Apdu::ActionResponse(ActionResponse {
            iip: InvokeIdAndPriority(2),
            result: 0,
            return_parameters: Some(Ok(Data::Boolean(true))),
            presence_byte_missing: false,
        })
        .encode(),
    );
    assert_eq!(
        events(&mut a).pop(),
        Some(Event::Response { id, result: Ok(Response::Action(Some(Data::Boolean(true)))) })
    );

    let id = a.request(Request::Action(disconnect, None));
    sent(&mut a);
    a.handle_apdu(&hex::decode("c7010303").unwrap());
    assert_eq!(events(&mut a).pop(), Some(Event::Response { id, result: Err(RequestError::Action(3)) }));

    let clock = AttributeDescriptor::new(8, Obis::new(0, 0, 1, 0, 0, 255), 2);
    let id = a.request(Request::Set(clock, Data::OctetString(vec![0xFF; 12])));
    sent(&mut a);
    a.handle_apdu(
        &Apdu::SetResponse(SetResponse::Normal { iip: InvokeIdAndPriority(4), result: DataAccessResult(0) }).encode(),
    );
    assert_eq!(events(&mut a).pop(), Some(Event::Response { id, result: Ok(Response::Set) }));

    let id = a.request(Request::Get(voltage()));
    sent(&mut a);
    let exception = ExceptionResponse { state_error: 1, service_error: 2, invocation_counter: None };
    a.handle_apdu(&Apdu::ExceptionResponse(exception).encode());
    assert_eq!(events(&mut a).pop(), Some(Event::Response { id, result: Err(RequestError::Exception(exception)) }));
}

#[test]
fn notifications_pass_through_and_abort_fails_everything() {
    let mut a = Association::new(ClientConfig::default());
    a.handle_apdu(&hex::decode("c200030100010800ff020600002710").unwrap());
    assert!(matches!(events(&mut a)[..], [Event::Notification(Apdu::EventNotification(_))]));
    a.handle_apdu(&hex::decode("0f00000042000600010000").unwrap());
    assert!(matches!(events(&mut a)[..], [Event::Notification(Apdu::DataNotification(_))]));
    a.handle_apdu(&[0xFF, 0x00]);
    assert!(matches!(events(&mut a)[..], [Event::Malformed(_)]));

    let first = a.request(Request::Get(voltage()));
    let second = a.request(Request::Get(frequency()));
    a.abort();
    assert_eq!(
        events(&mut a),
        vec![
            Event::Response { id: first, result: Err(RequestError::Aborted) },
            Event::Response { id: second, result: Err(RequestError::Aborted) }
        ]
    );
    assert!(a.is_idle());
    assert_eq!(a.poll_transmit(t0()), None);
}

#[test]
fn association_timeout_is_reported() {
    let mut a = Association::new(ClientConfig::default());
    let id = a.request(Request::Get(voltage()));
    sent(&mut a);
    a.handle_timeout(later());
    let ev = events(&mut a);
    assert!(matches!(&ev[0], Event::Response { id: i, result: Err(RequestError::NotAssociated(_)) } if *i == id));
    assert_eq!(ev[1], Event::AssociationFailed(AssociationFailure::Timeout));
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Association timeout 3 s, response timeout 0.7 s: different enough that one cannot pass for the other.
fn timed_config() -> ClientConfig {
    ClientConfig { association_timeout: ms(3000), response_timeout: ms(700), ..ClientConfig::default() }
}

#[test]
fn association_and_response_timeouts_fire_at_their_own_configured_times() {
    // The AARQ waits the association timeout, not the (shorter) response timeout ...
    let mut a = Association::new(timed_config());
    let id = a.request(Request::Get(voltage()));
    assert_eq!(a.poll_timeout(), None, "no timer before the AARQ is handed out");
    let t = t0();
    assert!(matches!(a.poll_transmit(t).map(|b| Apdu::parse(&b).unwrap()), Some(Apdu::Aarq(_))));
    assert_eq!(a.poll_timeout(), Some(t + ms(3000)));
    a.handle_timeout(t + ms(700));
    a.handle_timeout(t + ms(2999));
    assert_eq!(events(&mut a), vec![], "nothing fires before the association timeout");
    a.handle_timeout(t + ms(3000));
    let ev = events(&mut a);
    assert!(matches!(&ev[..], [
        Event::Response { id: i, result: Err(RequestError::NotAssociated(AssociationFailure::Timeout)) },
        Event::AssociationFailed(AssociationFailure::Timeout),
    ] if *i == id));
    assert_eq!(a.poll_timeout(), None);

    // ... and a GET waits the response timeout, counted from when the GET goes out.
    let mut a = Association::new(timed_config());
    let id = a.request(Request::Get(voltage()));
    a.poll_transmit(t);
    a.handle_apdu(&aare(0x001E1D));
    assert!(matches!(events(&mut a)[..], [Event::Associated(_)]));
    let t1 = t + ms(1200);
    assert!(matches!(a.poll_transmit(t1).map(|b| Apdu::parse(&b).unwrap()), Some(Apdu::GetRequest(_))));
    assert_eq!(a.poll_timeout(), Some(t1 + ms(700)));
    a.handle_timeout(t1 + ms(699));
    assert_eq!(events(&mut a), vec![]);
    a.handle_timeout(t1 + ms(700));
    assert_eq!(events(&mut a), vec![Event::Response { id, result: Err(RequestError::Timeout) }]);
    assert_eq!(a.poll_timeout(), None);
    assert!(a.is_associated(), "a response timeout does not end the association");
    // The late answer matches nothing.
    a.handle_apdu(&get_response(1, Ok(Data::DoubleLongUnsigned(1))));
    assert!(matches!(events(&mut a)[..], [Event::Unmatched(_)]));
}

#[test]
fn each_data_block_restarts_the_response_timer_and_the_release_waits_the_response_timeout() {
    let mut a = Association::new(timed_config());
    let id = a.request(Request::Get(voltage()));
    let t = t0();
    a.poll_transmit(t);
    a.handle_apdu(&aare(0x001E1D));
    events(&mut a);
    a.poll_transmit(t + ms(100));
    // First block at +600 ms (inside the first 700 ms), the next-block request goes out at +650 ms.
    let block = |last: bool, n: u32, raw: Vec<u8>| {
        Apdu::GetResponse(GetResponse::WithDataBlock { iip: InvokeIdAndPriority(1), last, block: n, raw: Ok(raw) })
            .encode()
    };
    a.handle_apdu(&block(false, 1, vec![0x06, 0x00]));
    assert!(matches!(a.poll_transmit(t + ms(650)).map(|b| Apdu::parse(&b).unwrap()), Some(Apdu::GetRequest(_))));
    assert_eq!(a.poll_timeout(), Some(t + ms(1350)));
    a.handle_timeout(t + ms(900));
    assert_eq!(events(&mut a), vec![], "the first request's timer no longer applies");
    a.handle_apdu(&block(true, 2, vec![0x00, 0x5C, 0x54]));
    assert_eq!(
        events(&mut a),
        vec![Event::Response { id, result: Ok(Response::Data(Data::DoubleLongUnsigned(23636))) }]
    );
    assert_eq!(a.poll_timeout(), None);
    a.release();
    let t2 = t + ms(5000);
    assert!(matches!(a.poll_transmit(t2).map(|b| Apdu::parse(&b).unwrap()), Some(Apdu::Rlrq(_))));
    assert_eq!(a.poll_timeout(), Some(t2 + ms(700)));
    a.handle_timeout(t2 + ms(700));
    assert_eq!(events(&mut a), vec![Event::Released]);
    assert!(a.is_idle());
}

#[test]
fn a_request_deadline_bounds_the_whole_request() {
    let mut a = Association::new(timed_config());
    let t = t0();
    // The deadline falls while the association is still being opened: the request fails then, the AARQ still
    // waits its own timer.
    let id = a.request_until(Request::Get(voltage()), t + ms(1000));
    a.poll_transmit(t);
    assert_eq!(a.poll_timeout(), Some(t + ms(1000)));
    a.handle_timeout(t + ms(1000));
    assert_eq!(events(&mut a), vec![Event::Response { id, result: Err(RequestError::Timeout) }]);
    assert_eq!(a.poll_timeout(), Some(t + ms(3000)));
    a.handle_apdu(&aare(0x001E1D));
    assert!(matches!(events(&mut a)[..], [Event::Associated(_)]));
    assert_eq!(a.poll_transmit(t + ms(1100)), None, "the expired request is not sent");
    // In flight: the deadline wins over a later response timer.
    let id = a.request_until(Request::Get(frequency()), t + ms(1500));
    a.poll_transmit(t + ms(1100));
    assert_eq!(a.poll_timeout(), Some(t + ms(1500)));
    a.handle_timeout(t + ms(1500));
    assert_eq!(events(&mut a), vec![Event::Response { id, result: Err(RequestError::Timeout) }]);
    assert_eq!(a.poll_timeout(), None);
}
