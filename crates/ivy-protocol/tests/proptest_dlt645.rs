//! Property tests for DL/T 645: frames round-trip, the framer is independent of chunking, BCD and the catalogue's
//! value encoding round-trip.

use ivy_protocol::dlt645::registers::{DecodedValue, Format, decode_value, encode_number};
use ivy_protocol::dlt645::{Address, Catalogue, Control, Frame, Framer, FramerEvent, bcd};
use proptest::prelude::*;

prop_compose! {
    fn frame()(addr in any::<[u8; 6]>(), control in any::<u8>(), data in proptest::collection::vec(any::<u8>(), 0..=200)) -> Frame {
        Frame::new(Address::from_wire(addr), Control(control), &data).unwrap()
    }
}

fn run(chunks: &[&[u8]]) -> (Vec<Frame>, usize) {
    let mut f = Framer::new();
    let mut frames = Vec::new();
    let mut discarded = 0;
    for c in chunks {
        f.push(c);
        while let Some(e) = f.next_event() {
            match e {
                FramerEvent::Frame(fr) => frames.push(fr),
                FramerEvent::Discarded { bytes, .. } => discarded += bytes,
            }
        }
        assert!(f.buffered() <= 212 + c.len());
    }
    (frames, discarded)
}

/// Garbage that contains no 0x68 (so it cannot start a frame) and no 0xFE (preamble, not counted).
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>().prop_filter("no start or preamble", |b| *b != 0x68 && *b != 0xFE), 0..8)
}

proptest! {
    #[test]
    fn encode_decode_round_trip(f in frame(), preamble in 0usize..5) {
        let wire = f.encode_with_preamble(preamble);
        let d = Frame::decode(&wire).unwrap();
        prop_assert_eq!(d.preamble, preamble);
        prop_assert_eq!(d.consumed, wire.len());
        prop_assert_eq!(d.frame, f);
    }

    #[test]
    fn framer_is_independent_of_chunking(
        parts in proptest::collection::vec((garbage(), frame()), 1..5),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        let mut garbage_len = 0;
        for (g, f) in &parts {
            stream.extend_from_slice(g);
            garbage_len += g.len();
            f.encode_into(&mut stream);
            expected.push(f.clone());
        }
        let (whole, discarded) = run(&[&stream]);
        prop_assert_eq!(&whole, &expected);
        prop_assert_eq!(discarded, garbage_len);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&stream[last..p]);
            last = p;
        }
        chunks.push(&stream[last..]);
        let (split, discarded_split) = run(&chunks);
        prop_assert_eq!(split, expected);
        prop_assert_eq!(discarded_split, garbage_len);
    }

    #[test]
    fn framer_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..10)) {
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        run(&refs);
    }

    #[test]
    fn bcd_round_trips(v in 0u64..100_000_000, s in -7_999_999i64..8_000_000) {
        prop_assert_eq!(bcd::decode_le(&bcd::encode_le(v, 4).unwrap()).unwrap(), v);
        prop_assert_eq!(bcd::decode_signed_le(&bcd::encode_signed_le(s, 4).unwrap()).unwrap(), s);
    }

    #[test]
    fn every_numeric_register_round_trips(index in any::<prop::sample::Index>(), fraction in 0.0f64..1.0) {
        let defs: Vec<_> = Catalogue::builtin().defs().iter().filter(|d| matches!(d.format, Format::Decimal { .. })).collect();
        let def = defs[index.index(defs.len())];
        let Format::Decimal { int_digits, decimals, signed } = def.format else { unreachable!() };
        let max = 10f64.powi(i32::from(int_digits)) * if signed { 0.79 } else { 0.99 };
        let value = ((if signed { fraction * 2.0 - 1.0 } else { fraction }) * max * 10f64.powi(i32::from(decimals))).round()
            / 10f64.powi(i32::from(decimals));
        let bytes = encode_number(&def.format, value).unwrap();
        prop_assert_eq!(bytes.len(), def.format.byte_len());
        match decode_value(&def.format, &bytes).unwrap() {
            DecodedValue::Number { value: back, .. } => prop_assert!((back - value).abs() < 1e-9, "{} {} {}", def.key, value, back),
            other => prop_assert!(false, "{other:?}"),
        }
    }
}
