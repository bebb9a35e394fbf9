//! The push decoder on arbitrary bodies and notifications: never panics; every element is placed at most once;
//! whatever it places re-encodes as `{OBIS, value}` pairs that decode to the same values; the time-zone resolver
//! never panics on any 12-byte date-time and agrees with the fixed-offset arithmetic for a fixed zone.
#![no_main]

use ivy_protocol::dlms::apdu::Apdu;
use ivy_protocol::dlms::push::{decode_body, decode_notification};
use ivy_protocol::dlms::{CosemDateTime, Data, MeterZone, Obis};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    // The first byte chooses how many positional objects the caller configured.
    let positional: Vec<Obis> = (0..n % 8).map(|i| Obis::new(1, 0, 1, 8, i, 255)).collect();
    if let Ok((body, _)) = Data::decode(rest) {
        let push = decode_body(&body, &positional);
        // Each value and each skipped element is a distinct node of the body.
        assert!(push.values.len() + push.skipped.len() <= nodes(&body));
        let pairs: Vec<Data> = push
            .values
            .iter()
            .filter(|v| v.obis.bytes()[0] <= 15)
            .map(|v| Data::Structure(vec![Data::OctetString(v.obis.bytes().to_vec()), v.value.clone()]))
            .collect();
        let again = decode_body(&Data::Array(pairs.clone()), &[]);
        assert_eq!(again.values.len(), pairs.len());
        assert!(again.skipped.is_empty());
    }
    if let Ok((apdu, _)) = Apdu::parse_prefix(rest) {
        let _ = decode_notification(&apdu, &positional);
    }
    if let Some(b) = rest.get(..12).and_then(|b| <[u8; 12]>::try_from(b).ok()) {
        let t = CosemDateTime::from_bytes(&b);
        let offset = i32::from(n as i8) * 15;
        if let Some(z) = MeterZone::Fixed(offset).resolve(&t) {
            let _ = z.iso();
            if t.deviation.is_none() {
                assert_eq!(z.offset_minutes, offset);
            }
        }
        if let Ok(zone) = MeterZone::iana("Europe/Berlin")
            && let Some(z) = zone.resolve(&t)
        {
            let _ = z.iso();
        }
    }
});

fn nodes(d: &Data) -> usize {
    match d {
        Data::Array(v) | Data::Structure(v) => 1 + v.iter().map(nodes).sum::<usize>(),
        _ => 1,
    }
}
