//! Push bodies as deployed meters send them: what a DataNotification (or EventNotification) carries, decoded
//! element by element and by structure, never by meter brand (IEC 62056-6-2 push setup, class 40; DSMR/HAN
//! practice for the layouts without a push object list).
//!
//! Layouts recognised, and freely mixed inside one body:
//!
//! | Layout | Elements |
//! |---|---|
//! | pairs | `{OBIS, value}` structures |
//! | triples | `{OBIS, value, {scaler, unit}}` (also `{OBIS, value, scaler, unit}`) |
//! | flat | `OBIS, value, OBIS, value, ...` (a `{scaler, unit}` structure right after a value belongs to it) |
//! | list identifier | a leading visible/utf8 string (or printable octet-string that is not an OBIS code), e.g. `"LIST_V001"` |
//! | self-describing | first element the push object list (`{class_id, logical_name, attribute, data_index}` entries), then the values in that order (inline or as one structure) |
//! | positional | values only, named by the caller's list of objects (`dlms.push_objects`), position *i* of the body → object *i* |
//!
//! An array or structure made only of pairs/triples is descended into (`{"LIST", [{OBIS, v}, ...]}`). An OBIS code
//! is an octet-string of 6 bytes whose A group is 0..=15 (IEC 62056-61 defines no higher medium): a 6-byte ASCII
//! serial number is not taken for one. An element that cannot be placed (no OBIS code before it and no positional
//! entry for its position) becomes a [`SkippedElement`]; the rest of the body is still decoded.
//!
//! The capture time of the values is the DataNotification's date-time (or the EventNotification's time); when the
//! header carries none, a clock object (0-0:1.0.0.255) in the body is taken instead ([`CaptureSource`]).

use super::apdu::{Apdu, AttributeDescriptor};
use super::axdr::Data;
use super::datetime::CosemDateTime;
use super::obis::Obis;
use super::registry::CLOCK;

/// Deepest nesting of pair lists descended into.
const MAX_NESTING: usize = 4;

/// How a value was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// `{OBIS, value}` structure.
    Pair,
    /// `{OBIS, value, {scaler, unit}}` structure.
    Triple,
    /// `OBIS, value` as consecutive elements.
    Flat,
    /// An entry of the push object list sent in the body.
    Described,
    /// The caller's positional list.
    Positional,
    /// The attribute descriptor of an EventNotification.
    Event,
}

impl Placement {
    /// Snake-case name (logs, metrics).
    pub fn name(&self) -> &'static str {
        match self {
            Placement::Pair => "pair",
            Placement::Triple => "triple",
            Placement::Flat => "flat",
            Placement::Described => "described",
            Placement::Positional => "positional",
            Placement::Event => "event",
        }
    }
}

/// One value of a push, with everything the push itself says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct PushedValue {
    /// The object.
    pub obis: Obis,
    /// Its interface class, when the push says (self-describing, EventNotification).
    pub class_id: Option<u16>,
    /// The attribute (2, the value, unless the push object list says otherwise).
    pub attribute: u8,
    /// data_index of the push object list entry (0 = the whole attribute).
    pub data_index: u16,
    /// The value as sent.
    pub value: Data,
    /// `(scaler, unit code)` carried in the push (triples).
    pub scaler_unit: Option<(i8, u8)>,
    /// How it was placed.
    pub placement: Placement,
}

impl PushedValue {
    /// The attribute descriptor, with `default_class` when the push does not carry the class.
    pub fn descriptor(&self, default_class: u16) -> AttributeDescriptor {
        AttributeDescriptor::new(self.class_id.unwrap_or(default_class), self.obis, self.attribute)
    }
}

/// Why an element was not placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// No OBIS code before it and no positional entry for its position.
    NoObject,
    /// An OBIS code at the end of the body, with no value after it.
    MissingValue,
    /// More values than entries in the push object list.
    BeyondObjectList,
}

impl SkipReason {
    /// Snake-case name (metrics label).
    pub fn name(&self) -> &'static str {
        match self {
            SkipReason::NoObject => "no_object",
            SkipReason::MissingValue => "missing_value",
            SkipReason::BeyondObjectList => "beyond_object_list",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::NoObject => "no OBIS code and no push_objects entry for its position",
            SkipReason::MissingValue => "OBIS code without a value after it",
            SkipReason::BeyondObjectList => "more values than entries in the push object list",
        })
    }
}

/// An element of the body that could not be placed.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedElement {
    /// Its position among the body's elements (inside a nested list: the position in that list).
    pub index: usize,
    /// Why.
    pub reason: SkipReason,
    /// The element.
    pub value: Data,
}

/// Where the capture time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaptureSource {
    /// The DataNotification date-time / EventNotification time.
    Header,
    /// A clock object (0-0:1.0.0.255) among the values.
    ClockObject,
}

/// A decoded push.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Push {
    /// When the values were captured, by the meter's clock (not resolved to UTC: the deviation may be unspecified).
    pub capture_time: Option<(CosemDateTime, CaptureSource)>,
    /// The leading list identifier, when there is one.
    pub list_id: Option<String>,
    /// The values, in body order.
    pub values: Vec<PushedValue>,
    /// Elements that could not be placed.
    pub skipped: Vec<SkippedElement>,
}

/// Decodes a pushed EventNotification or DataNotification; `None` for any other APDU. `positional` names the
/// values of bodies that carry no OBIS codes (`dlms.push_objects`).
pub fn decode_notification(apdu: &Apdu, positional: &[Obis]) -> Option<Push> {
    match apdu {
        Apdu::EventNotification(e) => Some(Push {
            capture_time: e.time.filter(CosemDateTime::is_concrete).map(|t| (t, CaptureSource::Header)),
            list_id: None,
            values: vec![PushedValue {
                obis: e.attribute.obis,
                class_id: Some(e.attribute.class_id),
                attribute: e.attribute.attribute,
                data_index: 0,
                value: e.value.clone(),
                scaler_unit: None,
                placement: Placement::Event,
            }],
            skipped: Vec::new(),
        }),
        Apdu::DataNotification(d) => {
            let mut push = decode_body(&d.body, positional);
            push.capture_time = d
                .date_time
                .filter(CosemDateTime::is_concrete)
                .map(|t| (t, CaptureSource::Header))
                .or_else(|| clock_in(&push.values).map(|t| (t, CaptureSource::ClockObject)));
            Some(push)
        }
        _ => None,
    }
}

fn clock_in(values: &[PushedValue]) -> Option<CosemDateTime> {
    values.iter().filter(|v| v.obis == CLOCK && v.attribute == 2).find_map(|v| match &v.value {
        Data::OctetString(b) => CosemDateTime::from_slice(b),
        Data::DateTime(b) => Some(CosemDateTime::from_bytes(b)),
        _ => None,
    })
}

/// Decodes a notification body (capture time not set). See the module documentation for the layouts.
pub fn decode_body(body: &Data, positional: &[Obis]) -> Push {
    let elements: &[Data] = match body {
        Data::Structure(v) | Data::Array(v) => v,
        single => std::slice::from_ref(single),
    };
    let mut push = Push::default();
    if let Some((objects, values)) = split_self_describing(elements) {
        described(&objects, values, &mut push);
        return push;
    }
    walk(elements, positional, 0, &mut push);
    push
}

/// An OBIS code: an octet-string of 6 bytes with a defined A group (0..=15).
pub fn as_obis(d: &Data) -> Option<Obis> {
    match d {
        Data::OctetString(b) if b.first().is_some_and(|a| *a <= 15) => Obis::from_slice(b),
        _ => None,
    }
}

/// `{integer scaler, enum unit}`.
fn as_scaler_unit(d: &Data) -> Option<(i8, u8)> {
    d.as_scaler_unit()
}

/// An element that names its value: the code, the value, a pushed scaler_unit, and how.
type Keyed<'a> = (Obis, &'a Data, Option<(i8, u8)>, Placement);

/// A pair or triple structure.
fn keyed(d: &Data) -> Option<Keyed<'_>> {
    let Data::Structure(items) = d else { return None };
    match items.as_slice() {
        [o, v] => as_obis(o).map(|o| (o, v, None, Placement::Pair)),
        [o, v, su] => {
            let o = as_obis(o)?;
            as_scaler_unit(su).map(|su| (o, v, Some(su), Placement::Triple))
        }
        [o, v, Data::Integer(s), Data::Enum(u)] => as_obis(o).map(|o| (o, v, Some((*s, *u)), Placement::Triple)),
        _ => None,
    }
}

/// An array or structure made only of pairs/triples (at least one).
fn is_keyed_list(d: &Data) -> bool {
    match d {
        Data::Structure(v) | Data::Array(v) => !v.is_empty() && v.iter().all(|e| keyed(e).is_some()),
        _ => false,
    }
}

/// A list identifier: a visible/utf8 string, or a printable octet-string that is not an OBIS code.
fn as_list_id(d: &Data) -> Option<String> {
    match d {
        Data::VisibleString(_) | Data::Utf8String(_) => d.as_text(),
        Data::OctetString(b) if as_obis(d).is_none() && !b.is_empty() => d.as_text(),
        _ => None,
    }
}

/// Whether the body names its values anywhere (then it is not positional).
fn names_values(elements: &[Data]) -> bool {
    let mut i = 0;
    while let Some(e) = elements.get(i) {
        if keyed(e).is_some() || is_keyed_list(e) {
            return true;
        }
        if as_obis(e).is_some() && elements.get(i + 1).is_some() {
            return true;
        }
        i += 1;
    }
    false
}

fn walk(elements: &[Data], positional: &[Obis], depth: usize, push: &mut Push) {
    let positional_body = !names_values(elements);
    let mut i = 0;
    while let Some(e) = elements.get(i) {
        // The caller's list names positions of bodies that carry no OBIS codes (first position included, so a
        // configured list identifier object is published like any value).
        if positional_body {
            if let Some(obis) = positional.get(i).filter(|_| depth == 0) {
                push.values.push(value(*obis, e.clone(), None, Placement::Positional));
            } else if i == 0 && depth == 0 && push.list_id.is_none() && as_list_id(e).is_some() {
                push.list_id = as_list_id(e);
            } else {
                push.skipped.push(SkippedElement { index: i, reason: SkipReason::NoObject, value: e.clone() });
            }
            i += 1;
            continue;
        }
        if let Some((obis, v, su, placement)) = keyed(e) {
            push.values.push(value(obis, v.clone(), su, placement));
            i += 1;
            continue;
        }
        if let Some(obis) = as_obis(e) {
            match elements.get(i + 1) {
                Some(v) => {
                    let su = elements.get(i + 2).and_then(as_scaler_unit);
                    push.values.push(value(obis, v.clone(), su, Placement::Flat));
                    i += if su.is_some() { 3 } else { 2 };
                }
                None => {
                    push.skipped.push(SkippedElement { index: i, reason: SkipReason::MissingValue, value: e.clone() });
                    i += 1;
                }
            }
            continue;
        }
        if depth < MAX_NESTING && (is_keyed_list(e) || nested_named(e)) {
            if let Data::Structure(inner) | Data::Array(inner) = e {
                walk(inner, &[], depth + 1, push);
            }
            i += 1;
            continue;
        }
        if i == 0 && depth == 0 && push.list_id.is_none() && as_list_id(e).is_some() {
            push.list_id = as_list_id(e);
        } else {
            push.skipped.push(SkippedElement { index: i, reason: SkipReason::NoObject, value: e.clone() });
        }
        i += 1;
    }
}

/// A nested array/structure that is itself a flat `OBIS, value, ...` sequence.
fn nested_named(d: &Data) -> bool {
    match d {
        Data::Structure(v) | Data::Array(v) => v.first().and_then(as_obis).is_some() && v.len() >= 2,
        _ => false,
    }
}

fn value(obis: Obis, value: Data, scaler_unit: Option<(i8, u8)>, placement: Placement) -> PushedValue {
    PushedValue { obis, class_id: None, attribute: 2, data_index: 0, value, scaler_unit, placement }
}

/// One entry of a push object list: `{class_id, logical_name, attribute_index, data_index}` (class 40, attribute 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushObject {
    /// Interface class.
    pub class_id: u16,
    /// Logical name.
    pub obis: Obis,
    /// Attribute index.
    pub attribute: u8,
    /// Data index (0 = whole attribute).
    pub data_index: u16,
}

impl PushObject {
    /// The entry as A-XDR.
    pub fn to_data(&self) -> Data {
        Data::Structure(vec![
            Data::LongUnsigned(self.class_id),
            Data::OctetString(self.obis.bytes().to_vec()),
            Data::Integer(i8::try_from(self.attribute).unwrap_or(i8::MAX)),
            Data::LongUnsigned(self.data_index),
        ])
    }

    fn from_data(d: &Data) -> Option<Self> {
        let Data::Structure(items) = d else { return None };
        let (class, ln, attr, index) = match items.as_slice() {
            [c, l, a, i] => (c, l, a, Some(i)),
            [c, l, a] => (c, l, a, None),
            _ => return None,
        };
        let class_id = match class {
            Data::LongUnsigned(c) => *c,
            _ => return None,
        };
        let obis = match ln {
            Data::OctetString(b) => Obis::from_slice(b)?,
            _ => return None,
        };
        let attribute = match attr {
            Data::Integer(a) => u8::try_from(*a).ok()?,
            Data::Unsigned(a) => *a,
            _ => return None,
        };
        let data_index = match index {
            None => 0,
            Some(Data::LongUnsigned(i)) => *i,
            Some(Data::Unsigned(i)) => u16::from(*i),
            Some(_) => return None,
        };
        Some(PushObject { class_id, obis, attribute, data_index })
    }
}

/// The push setup's own object list, when it describes itself as its first entry.
fn is_push_object_list(o: &PushObject) -> bool {
    o.class_id == 40 && o.attribute == 2
}

/// `(objects the values map to, values)` when the first element is a push object list.
fn split_self_describing(elements: &[Data]) -> Option<(Vec<PushObject>, &[Data])> {
    let (first, rest) = elements.split_first()?;
    let Data::Array(entries) = first else { return None };
    if entries.is_empty() {
        return None;
    }
    let mut objects: Vec<PushObject> = entries.iter().map(PushObject::from_data).collect::<Option<_>>()?;
    // A list that describes itself first: its own value is the list already read; the values map to the rest.
    if objects.first().is_some_and(is_push_object_list) {
        objects.remove(0);
    }
    // Values inline after the list, or all of them in one structure (never taken apart for a single object, whose
    // value may itself be a structure).
    let values = match rest {
        [Data::Structure(inner)] if objects.len() > 1 && inner.len() == objects.len() => inner.as_slice(),
        _ => rest,
    };
    Some((objects, values))
}

fn described(objects: &[PushObject], values: &[Data], push: &mut Push) {
    for (index, v) in values.iter().enumerate() {
        match objects.get(index) {
            Some(o) => push.values.push(PushedValue {
                obis: o.obis,
                class_id: Some(o.class_id),
                attribute: o.attribute,
                data_index: o.data_index,
                value: v.clone(),
                scaler_unit: None,
                placement: Placement::Described,
            }),
            None => push.skipped.push(SkippedElement {
                index: index + 1,
                reason: SkipReason::BeyondObjectList,
                value: v.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apdu(hex: &str) -> Apdu {
        Apdu::parse(&hex::decode(hex.replace(' ', "")).unwrap()).unwrap()
    }

    fn obis(s: &str) -> Obis {
        s.parse().unwrap()
    }

    fn os(o: &str) -> Data {
        Data::OctetString(obis(o).bytes().to_vec())
    }

    #[test]
    fn example_a_triples_and_a_text_pair() {
        let a = apdu(
            "0f40000000000103 0203 0906 0100200700ff 120944 0202 0fff 1623  0203 0906 0100010700ff \
             0600000011 0202 0f00 161b  0202 0906 0101000281ff 0a0b 4149444f4e5f5630303031",
        );
        let p = decode_notification(&a, &[]).unwrap();
        assert!(p.skipped.is_empty());
        assert_eq!(p.capture_time, None);
        assert_eq!(p.values.len(), 3);
        let v = &p.values[0];
        assert_eq!(
            (v.obis, &v.value, v.scaler_unit, v.placement),
            (obis("1-0:32.7.0.255"), &Data::LongUnsigned(2372), Some((-1, 35)), Placement::Triple)
        );
        let v = &p.values[1];
        assert_eq!(
            (v.obis, &v.value, v.scaler_unit),
            (obis("1-0:1.7.0.255"), &Data::DoubleLongUnsigned(17), Some((0, 27)))
        );
        let v = &p.values[2];
        assert_eq!(
            (v.obis, v.value.as_text().as_deref(), v.placement),
            (obis("1-1:0.2.129.255"), Some("AIDON_V0001"), Placement::Pair)
        );
    }

    #[test]
    fn example_b_list_id_then_flat_pairs() {
        let a = apdu(
            "0f00000000 0c07e80301050c251eff800000 0205 0a09 4c4953545f56303031 0906 0101200700ff 1200e2 0906 \
             0101010700ff 0600000010",
        );
        let p = decode_notification(&a, &[]).unwrap();
        assert_eq!(p.list_id.as_deref(), Some("LIST_V001"));
        assert!(p.skipped.is_empty());
        let got: Vec<_> = p.values.iter().map(|v| (v.obis, v.value.clone(), v.placement)).collect();
        assert_eq!(
            got,
            vec![
                (obis("1-1:32.7.0.255"), Data::LongUnsigned(226), Placement::Flat),
                (obis("1-1:1.7.0.255"), Data::DoubleLongUnsigned(16), Placement::Flat),
            ]
        );
        let (t, source) = p.capture_time.unwrap();
        assert_eq!(source, CaptureSource::Header);
        assert_eq!(t.iso().as_deref(), Some("2024-03-01T12:37:30"));
        assert_eq!(t.deviation, None);
    }

    #[test]
    fn example_c_capture_time_with_deviation() {
        let a = apdu(
            "0f00020b41 0c07e9051005172d0000ff8880 0202 0202 0906 0100010800ff 06000000f6 0202 0906 0100200700ff \
             120915",
        );
        let p = decode_notification(&a, &[]).unwrap();
        let (t, _) = p.capture_time.unwrap();
        assert_eq!(t.iso().as_deref(), Some("2025-05-16T23:45:00+02:00"));
        // 2025-05-16T21:45:00Z
        assert_eq!(t.to_unix(), Some(1_747_431_900));
        assert_eq!(p.values.len(), 2);
        assert_eq!(p.values[1].value, Data::LongUnsigned(2325));
        assert_eq!(p.values[1].scaler_unit, None);
    }

    #[test]
    fn flat_triples_and_nested_lists() {
        let body = Data::Structure(vec![
            Data::VisibleString(b"KFM_001".to_vec()),
            Data::Array(vec![
                Data::Structure(vec![
                    os("1-0:1.8.0.255"),
                    Data::DoubleLongUnsigned(5),
                    Data::Structure(vec![Data::Integer(3), Data::Enum(30)]),
                ]),
                Data::Structure(vec![os("1-0:2.8.0.255"), Data::DoubleLongUnsigned(6)]),
            ]),
            os("1-0:31.7.0.255"),
            Data::LongUnsigned(12),
            Data::Structure(vec![Data::Integer(-1), Data::Enum(33)]),
        ]);
        let p = decode_body(&body, &[]);
        assert_eq!(p.list_id.as_deref(), Some("KFM_001"));
        assert!(p.skipped.is_empty(), "{:?}", p.skipped);
        let got: Vec<_> = p.values.iter().map(|v| (v.obis, v.scaler_unit, v.placement)).collect();
        assert_eq!(
            got,
            vec![
                (obis("1-0:1.8.0.255"), Some((3, 30)), Placement::Triple),
                (obis("1-0:2.8.0.255"), None, Placement::Pair),
                (obis("1-0:31.7.0.255"), Some((-1, 33)), Placement::Flat),
            ]
        );
    }

    #[test]
    fn four_element_triples() {
        let body = Data::Array(vec![Data::Structure(vec![
            os("1-0:32.7.0.255"),
            Data::LongUnsigned(2301),
            Data::Integer(-1),
            Data::Enum(35),
        ])]);
        let p = decode_body(&body, &[]);
        assert_eq!(p.values[0].scaler_unit, Some((-1, 35)));
        assert_eq!(p.values[0].placement, Placement::Triple);
    }

    #[test]
    fn self_describing_inline_and_wrapped() {
        let list = Data::Array(vec![
            PushObject { class_id: 40, obis: obis("0-0:25.9.0.255"), attribute: 2, data_index: 0 }.to_data(),
            PushObject { class_id: 3, obis: obis("1-0:32.7.0.255"), attribute: 2, data_index: 0 }.to_data(),
            PushObject { class_id: 8, obis: obis("0-0:1.0.0.255"), attribute: 2, data_index: 0 }.to_data(),
        ]);
        let clock = CosemDateTime::from_unix_utc(1_700_000_000);
        let clock_value = Data::OctetString(clock.to_bytes().to_vec());
        // The list describes itself first: the values that follow map to the other entries.
        let inline = Data::Structure(vec![list.clone(), Data::LongUnsigned(2300), clock_value.clone()]);
        let p = decode_body(&inline, &[]);
        assert!(p.skipped.is_empty());
        let got: Vec<_> = p.values.iter().map(|v| (v.obis, v.class_id, v.placement)).collect();
        assert_eq!(
            got,
            vec![
                (obis("1-0:32.7.0.255"), Some(3), Placement::Described),
                (obis("0-0:1.0.0.255"), Some(8), Placement::Described),
            ]
        );
        // Values wrapped in one structure.
        let wrapped = Data::Structure(vec![list, Data::Structure(vec![Data::LongUnsigned(2300), clock_value])]);
        assert_eq!(decode_body(&wrapped, &[]).values, p.values);
        // A clock object in the body is the capture time when the header has none.
        let n = Apdu::DataNotification(super::super::apdu::DataNotification {
            long_invoke_id: 1,
            date_time: None,
            body: inline,
        });
        let q = decode_notification(&n, &[]).unwrap();
        assert_eq!(q.capture_time, Some((clock, CaptureSource::ClockObject)));
    }

    #[test]
    fn self_describing_with_more_values_than_entries() {
        let list = Data::Array(vec![
            PushObject { class_id: 3, obis: obis("1-0:32.7.0.255"), attribute: 2, data_index: 0 }.to_data(),
        ]);
        let p = decode_body(&Data::Structure(vec![list, Data::LongUnsigned(1), Data::LongUnsigned(2)]), &[]);
        assert_eq!(p.values.len(), 1);
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].reason, SkipReason::BeyondObjectList);
    }

    #[test]
    fn positional_bodies_use_the_callers_list() {
        let body = Data::Structure(vec![
            Data::VisibleString(b"Kamstrup_V0001".to_vec()),
            Data::DoubleLongUnsigned(1234),
            Data::LongUnsigned(231),
        ]);
        let objects = [obis("1-1:0.2.129.255"), obis("1-1:1.7.0.255"), obis("1-1:32.7.0.255")];
        let p = decode_body(&body, &objects);
        assert!(p.skipped.is_empty());
        assert_eq!(p.list_id, None);
        let got: Vec<_> = p.values.iter().map(|v| (v.obis, v.placement)).collect();
        assert_eq!(got, objects.iter().map(|o| (*o, Placement::Positional)).collect::<Vec<_>>());
        // Without the list (or past its end): the list id is recognised, values are skipped, never invented keys.
        let p = decode_body(&body, &objects[..2]);
        assert_eq!(p.values.len(), 2);
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].index, 2);
        let p = decode_body(&body, &[]);
        assert_eq!(p.list_id.as_deref(), Some("Kamstrup_V0001"));
        assert!(p.values.is_empty());
        assert_eq!(p.skipped.iter().map(|s| s.index).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn unplaceable_elements_are_skipped_and_the_rest_decoded() {
        let body = Data::Array(vec![
            Data::Structure(vec![os("1-0:1.7.0.255"), Data::DoubleLong(5)]),
            Data::LongUnsigned(9),
            Data::Structure(vec![Data::Unsigned(1), Data::Unsigned(2), Data::Unsigned(3)]),
            Data::Structure(vec![os("1-0:2.7.0.255"), Data::DoubleLong(6)]),
            os("1-0:3.7.0.255"),
        ]);
        let p = decode_body(&body, &[]);
        assert_eq!(
            p.values.iter().map(|v| v.obis).collect::<Vec<_>>(),
            vec![obis("1-0:1.7.0.255"), obis("1-0:2.7.0.255")]
        );
        let skipped: Vec<_> = p.skipped.iter().map(|s| (s.index, s.reason)).collect();
        assert_eq!(skipped, vec![(1, SkipReason::NoObject), (2, SkipReason::NoObject), (4, SkipReason::MissingValue)]);
    }

    #[test]
    fn ascii_serials_are_not_obis_codes() {
        // "123456" as an octet-string: A would be 0x31, no medium; a value, not a key.
        let body = Data::Structure(vec![os("0-0:96.1.0.255"), Data::OctetString(b"123456".to_vec())]);
        let p = decode_body(&Data::Array(vec![body]), &[]);
        assert_eq!(p.values.len(), 1);
        assert_eq!(p.values[0].value.as_text().as_deref(), Some("123456"));
        // Flat form with a 6-byte value that could look like a code: the value position wins.
        let flat =
            Data::Structure(vec![os("0-0:96.1.0.255"), os("1-0:1.8.0.255"), os("1-0:1.7.0.255"), Data::DoubleLong(3)]);
        let p = decode_body(&flat, &[]);
        assert_eq!(p.values.len(), 2);
        assert_eq!(p.values[0].value, os("1-0:1.8.0.255"));
    }

    #[test]
    fn single_value_and_empty_bodies() {
        assert_eq!(decode_body(&Data::Array(vec![]), &[]), Push::default());
        let p = decode_body(&Data::DoubleLong(3), &[obis("1-0:1.7.0.255")]);
        assert_eq!(p.values.len(), 1);
        let p = decode_body(&Data::DoubleLong(3), &[]);
        assert_eq!(p.skipped.len(), 1);
    }

    #[test]
    fn event_notification_time() {
        let t = CosemDateTime::from_unix_utc(1_747_431_900);
        let e = Apdu::EventNotification(super::super::apdu::EventNotification {
            time: Some(t),
            attribute: AttributeDescriptor::new(3, obis("1-0:1.7.0.255"), 2),
            value: Data::DoubleLong(7),
            form: super::super::apdu::EventForm::Standard,
        });
        let p = decode_notification(&e, &[]).unwrap();
        assert_eq!(p.capture_time, Some((t, CaptureSource::Header)));
        assert_eq!(p.values[0].class_id, Some(3));
        assert_eq!(p.values[0].placement, Placement::Event);
    }
}
