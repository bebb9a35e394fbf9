//! Property tests for DLMS: every A-XDR type round-trips, OBIS text round-trips, built APDUs parse back to
//! themselves, the raw-APDU extent walker agrees with the parser, and parsers never panic.

use ivy_protocol::dlms::apdu::{
    ActionRequest, ActionResponse, Apdu, AttributeDescriptor, DataAccessResult, DataNotification, EventForm,
    EventNotification, ExceptionResponse, GetRequest, GetResponse, InvokeIdAndPriority, MethodDescriptor,
};
use ivy_protocol::dlms::extent::{ApduExtent, FormExtent, apdu_extent};
use ivy_protocol::dlms::{CosemDateTime, Data, Obis};
use proptest::prelude::*;

fn leaf() -> impl Strategy<Value = Data> {
    prop_oneof![
        Just(Data::Null),
        any::<bool>().prop_map(Data::Boolean),
        (0usize..40).prop_flat_map(|bits| proptest::collection::vec(any::<u8>(), bits.div_ceil(8))
            .prop_map(move |bytes| Data::BitString { bits, bytes })),
        any::<i32>().prop_map(Data::DoubleLong),
        any::<u32>().prop_map(Data::DoubleLongUnsigned),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Data::OctetString),
        proptest::collection::vec(0x20u8..0x7F, 0..40).prop_map(Data::VisibleString),
        ".{0,20}".prop_map(Data::Utf8String),
        any::<u8>().prop_map(Data::Bcd),
        any::<i8>().prop_map(Data::Integer),
        any::<i16>().prop_map(Data::Long),
        any::<u8>().prop_map(Data::Unsigned),
        any::<u16>().prop_map(Data::LongUnsigned),
        any::<i64>().prop_map(Data::Long64),
        any::<u64>().prop_map(Data::Long64Unsigned),
        any::<u8>().prop_map(Data::Enum),
        any::<f32>().prop_filter("NaN != NaN", |f| !f.is_nan()).prop_map(Data::Float32),
        any::<f64>().prop_filter("NaN != NaN", |f| !f.is_nan()).prop_map(Data::Float64),
        any::<[u8; 12]>().prop_map(Data::DateTime),
        any::<[u8; 5]>().prop_map(Data::Date),
        any::<[u8; 4]>().prop_map(Data::Time),
        proptest::collection::vec(any::<u8>(), 0..20)
            .prop_map(|contents| Data::CompactArray { description: vec![0x01, 0x00, 0x02, 0x12], contents }),
    ]
}

fn data() -> impl Strategy<Value = Data> {
    leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Data::Array),
            proptest::collection::vec(inner, 0..8).prop_map(Data::Structure),
        ]
    })
}

fn attribute() -> impl Strategy<Value = AttributeDescriptor> {
    (any::<u16>(), any::<[u8; 6]>(), any::<u8>()).prop_map(|(c, o, a)| AttributeDescriptor::new(c, Obis(o), a))
}

fn apdu() -> impl Strategy<Value = Apdu> {
    let iip = any::<u8>().prop_map(InvokeIdAndPriority);
    let result = prop_oneof![data().prop_map(Ok), any::<u8>().prop_map(|d| Err(DataAccessResult(d)))];
    prop_oneof![
        (iip.clone(), attribute()).prop_map(|(iip, attribute)| Apdu::GetRequest(GetRequest::Normal {
            iip,
            attribute,
            access: None
        })),
        (iip.clone(), any::<u32>()).prop_map(|(iip, block)| Apdu::GetRequest(GetRequest::Next { iip, block })),
        (iip.clone(), result.clone()).prop_map(|(iip, result)| Apdu::GetResponse(GetResponse::Normal { iip, result })),
        (iip.clone(), proptest::collection::vec(result.clone(), 0..5))
            .prop_map(|(iip, results)| Apdu::GetResponse(GetResponse::WithList { iip, results })),
        (iip.clone(), any::<bool>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
            |(iip, last, block, raw)| Apdu::GetResponse(GetResponse::WithDataBlock { iip, last, block, raw: Ok(raw) })
        ),
        (iip.clone(), any::<u16>(), any::<[u8; 6]>(), any::<u8>(), proptest::option::of(data())).prop_map(
            |(iip, class_id, o, method, parameters)| Apdu::ActionRequest(ActionRequest {
                iip,
                method: MethodDescriptor { class_id, obis: Obis(o), method },
                parameters
            })
        ),
        (iip, any::<u8>(), proptest::option::of(result)).prop_map(|(iip, result, return_parameters)| {
            Apdu::ActionResponse(ActionResponse { iip, result, return_parameters, presence_byte_missing: false })
        }),
        (attribute(), data(), any::<bool>()).prop_map(|(attribute, value, timed)| {
            Apdu::EventNotification(EventNotification {
                time: timed.then(|| CosemDateTime::from_unix_utc(1_769_747_659)),
                attribute,
                value,
                form: EventForm::Standard,
            })
        }),
        (any::<u32>(), data(), any::<bool>()).prop_map(|(long_invoke_id, body, timed)| {
            Apdu::DataNotification(DataNotification {
                long_invoke_id,
                date_time: timed.then(|| CosemDateTime::from_unix_utc(0)),
                body,
            })
        }),
        (1u8..3, 1u8..7, any::<u32>()).prop_map(|(s, e, ic)| Apdu::ExceptionResponse(ExceptionResponse {
            state_error: s,
            service_error: e,
            invocation_counter: (e == 6).then_some(ic)
        })),
    ]
}

proptest! {
    #[test]
    fn axdr_round_trip(d in data()) {
        let bytes = d.to_bytes();
        let (back, used) = Data::decode(&bytes).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, d);
    }

    #[test]
    fn axdr_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Data::decode(&bytes);
    }

    #[test]
    fn obis_text_round_trip(o in any::<[u8; 6]>()) {
        let obis = Obis(o);
        prop_assert_eq!(obis.to_string().parse::<Obis>().unwrap(), obis);
    }

    #[test]
    fn apdus_round_trip_and_extent_agrees(a in apdu()) {
        let bytes = a.encode();
        let back = Apdu::parse(&bytes).unwrap();
        prop_assert_eq!(&back.encode(), &bytes);
        match apdu_extent(&bytes) {
            ApduExtent::Complete(n) => prop_assert_eq!(n, bytes.len()),
            ApduExtent::EventNotification { standard, .. } => prop_assert_eq!(standard, FormExtent::Complete(bytes.len())),
            other => prop_assert!(false, "extent {:?} for {}", other, hex::encode(&bytes)),
        }
        // Every strict prefix needs more bytes (or, for EventNotification, is not yet a complete standard form).
        if let Some(prefix) = bytes.get(..bytes.len() - 1) {
            prop_assert!(!matches!(apdu_extent(prefix), ApduExtent::Complete(n) if n == bytes.len()));
        }
    }

    #[test]
    fn apdu_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120), tag in prop_oneof![Just(0x60u8), Just(0x61), Just(0x62), Just(0x63), 0xC0u8..0xC8, Just(0xD8), Just(0x0E), Just(0x0F)]) {
        let mut input = vec![tag];
        input.extend(bytes);
        let _ = Apdu::parse_prefix(&input);
        let _ = apdu_extent(&input);
        let _ = ivy_protocol::explain::dlms::explain_apdu(&input);
    }
}
