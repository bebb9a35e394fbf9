//! Property tests: wrapper packets round-trip through the framer, the framer gives the same result for any
//! chunking of the same stream, and the detector decides the same way however the first bytes are split.

use ivy_protocol::detect::{Detection, Detector};
use ivy_protocol::wrapper::{Framer, FramerEvent, Header, MAX_WPORT, wrap};
use proptest::prelude::*;

fn frame_all(chunks: &[&[u8]]) -> Vec<FramerEvent> {
    let mut framer = Framer::default();
    let mut out = Vec::new();
    for c in chunks {
        framer.push(c);
        while let Some(e) = framer.next_event() {
            out.push(e);
        }
    }
    framer.flush();
    while let Some(e) = framer.next_event() {
        out.push(e);
    }
    out
}

/// Packets only (discard runs may be split differently by chunking, the frames may not).
fn packets(events: &[FramerEvent]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            FramerEvent::Packet(p) => Some(p.to_bytes()),
            FramerEvent::Discarded { .. } => None,
        })
        .collect()
}

fn discarded_bytes(events: &[FramerEvent]) -> usize {
    events.iter().map(|e| if let FramerEvent::Discarded { bytes, .. } = e { *bytes } else { 0 }).sum()
}

prop_compose! {
    fn packet()(source in 0..=MAX_WPORT, destination in 0..=MAX_WPORT,
                payload in proptest::collection::vec(any::<u8>(), 0..300)) -> Vec<u8> {
        wrap(source, destination, &payload).unwrap()
    }
}

/// Garbage made of bytes that start neither a wrapper packet nor an APDU.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop_oneof![Just(0xFFu8), Just(0x55), Just(0xAA), Just(0x12)], 0..6)
}

proptest! {
    #[test]
    fn header_round_trip(source: u16, destination: u16, len: u16) {
        let h = Header::new(source, destination, len);
        prop_assert_eq!(Header::parse(&h.encode()).unwrap(), h);
    }

    #[test]
    fn packets_survive_garbage_and_any_chunking(
        parts in proptest::collection::vec((garbage(), packet()), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        let mut garbage_total = 0;
        for (g, p) in &parts {
            stream.extend_from_slice(g);
            garbage_total += g.len();
            stream.extend_from_slice(p);
            expected.push(p.clone());
        }
        let whole = frame_all(&[&stream]);
        prop_assert_eq!(packets(&whole), expected.clone());
        prop_assert_eq!(discarded_bytes(&whole), garbage_total);

        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&stream[last..p]);
            last = p;
        }
        chunks.push(&stream[last..]);
        let chunked = frame_all(&chunks);
        prop_assert_eq!(packets(&chunked), expected);
        prop_assert_eq!(discarded_bytes(&chunked), garbage_total);
    }

    #[test]
    fn framer_never_panics_and_stays_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20)) {
        let mut framer = Framer::default();
        for c in &chunks {
            framer.push(c);
            while framer.next_event().is_some() {}
            prop_assert!(framer.buffered() <= 8 + 4096 + 200);
        }
    }

    #[test]
    fn detection_is_independent_of_chunking(stream in proptest::collection::vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>()) {
        let decide = |chunks: &[&[u8]]| {
            let mut d = Detector::with_builtin_rules();
            let mut answers = Vec::new();
            for (i, c) in chunks.iter().enumerate() {
                d.push(c);
                loop {
                    match d.poll() {
                        Detection::NeedMore => break,
                        Detection::Registration(r) => answers.push(format!("reg {}", r.raw_id)),
                        other => {
                            // Decided: the framer gets the buffered bytes plus everything that follows.
                            answers.push(format!("{other:?}"));
                            let mut rest = d.into_buffered();
                            chunks[i + 1..].iter().for_each(|c| rest.extend_from_slice(c));
                            return (answers, rest);
                        }
                    }
                }
            }
            (answers, d.into_buffered())
        };
        let at = cut.index(stream.len() + 1);
        prop_assert_eq!(decide(&[&stream]), decide(&[&stream[..at], &stream[at..]]));
    }
}
