//! Every push layout the simulator sends decodes back to the values it encoded: encoder → DataNotification bytes →
//! APDU parser → push decoder (`ivy_protocol::dlms::push`), with the objects, values and pushed scalers intact.

use ivy_protocol::dlms::apdu::{Apdu, DataNotification};
use ivy_protocol::dlms::push::{Placement, decode_notification};
use ivy_protocol::dlms::{CosemDateTime, Data, Obis};
use ivy_sim::dlms::{PushEntry, PushForm, encode_push_body};
use proptest::prelude::*;

/// Values a meter pushes as attribute 2 (scalars; structures are not register values).
fn value(positional: bool) -> impl Strategy<Value = Data> {
    prop_oneof![
        any::<i32>().prop_map(Data::DoubleLong),
        any::<u32>().prop_map(Data::DoubleLongUnsigned),
        any::<u16>().prop_map(Data::LongUnsigned),
        any::<i16>().prop_map(Data::Long),
        any::<u8>().prop_map(Data::Unsigned),
        any::<i64>().prop_map(Data::Long64),
        any::<u8>().prop_map(Data::Enum),
        any::<bool>().prop_map(Data::Boolean),
        proptest::collection::vec(0x20u8..0x7F, 0..24).prop_map(Data::VisibleString),
        any::<[u8; 12]>().prop_map(|b| Data::OctetString(b.to_vec())),
        // Any octet-string, except (positional bodies) a 6-byte one that reads as an OBIS code: a body with an
        // OBIS code followed by a value names its values, by definition.
        proptest::collection::vec(any::<u8>(), 0..16)
            .prop_filter("OBIS-like in a positional body", move |b| !positional || b.len() != 6 || b[0] > 15)
            .prop_map(Data::OctetString),
    ]
}

fn entries(positional: bool) -> impl Strategy<Value = Vec<PushEntry>> {
    let entry = (
        (0u8..=15, any::<[u8; 5]>()),
        prop_oneof![Just(1u16), Just(3), Just(4)],
        value(positional),
        proptest::option::of((any::<i8>(), any::<u8>())),
    )
        .prop_map(|((a, rest), class_id, value, scaler_unit)| {
            let [b, c, d, e, f] = rest;
            PushEntry { obis: Obis([a, b, c, d, e, f]), class_id, value, scaler_unit }
        });
    proptest::collection::vec(entry, 0..12)
}

fn round_trip(form: PushForm, entries: &[PushEntry], time: Option<CosemDateTime>) {
    let body = encode_push_body(form, entries, "LIST_V001").expect("a DataNotification form");
    let apdu = Apdu::DataNotification(DataNotification { long_invoke_id: 7, date_time: time, body });
    let parsed = Apdu::parse(&apdu.encode()).expect("the simulator's APDU parses");
    let positional: Vec<Obis> = entries.iter().map(|e| e.obis).collect();
    let push = decode_notification(&parsed, if form == PushForm::DataPositional { &positional } else { &[] })
        .expect("a notification");
    assert!(push.skipped.is_empty(), "{form:?}: skipped {:?}", push.skipped);
    let got: Vec<(Obis, Data)> = push.values.iter().map(|v| (v.obis, v.value.clone())).collect();
    let want: Vec<(Obis, Data)> = entries.iter().map(|e| (e.obis, e.value.clone())).collect();
    assert_eq!(got, want, "{form:?}");
    for (v, e) in push.values.iter().zip(entries) {
        match form {
            PushForm::DataTriples => assert_eq!(v.scaler_unit, e.scaler_unit),
            PushForm::DataSelfDescribing => {
                assert_eq!(v.class_id, Some(e.class_id));
                assert_eq!(v.placement, Placement::Described);
            }
            PushForm::DataPositional => assert_eq!(v.placement, Placement::Positional),
            _ => assert_eq!(v.scaler_unit, None),
        }
    }
    let list_id = push.list_id.as_deref();
    assert_eq!(list_id, (form == PushForm::DataListFlat).then_some("LIST_V001"), "{form:?}");
    if let Some(t) = time.filter(CosemDateTime::is_concrete) {
        assert_eq!(push.capture_time.map(|(c, _)| c), Some(t));
    }
}

proptest! {
    #[test]
    fn keyed_layouts_round_trip(entries in entries(false), secs in 0i64..4_102_444_800, with_time: bool) {
        let time = with_time.then(|| CosemDateTime::from_unix_utc(secs));
        for form in PushForm::ALL.into_iter().filter(|f| f.is_data() && *f != PushForm::DataPositional) {
            round_trip(form, &entries, time);
        }
    }

    #[test]
    fn positional_layout_round_trips(entries in entries(true)) {
        round_trip(PushForm::DataPositional, &entries, None);
    }
}

#[test]
fn every_form_of_the_em114070_decodes() {
    let meter = ivy_sim::dlms::DlmsMeter::em114070("311501114070");
    let entries: Vec<PushEntry> = meter
        .push_object_list()
        .into_iter()
        .map(|(obis, class_id)| PushEntry {
            obis,
            class_id,
            value: Data::DoubleLongUnsigned(1),
            scaler_unit: Some((-2, 35)),
        })
        .collect();
    assert_eq!(entries.len(), meter.push_values(PushForm::DataFlat));
    for form in PushForm::ALL.into_iter().filter(PushForm::is_data) {
        round_trip(form, &entries, Some(CosemDateTime::from_unix_utc(1_747_431_900)));
    }
}
