//! The wrapper framer on arbitrary bytes, split at arbitrary points: never panics, stays bounded, and frames the
//! same packets however the bytes are chunked.
#![no_main]

use ivy_protocol::wrapper::{Framer, FramerEvent};
use libfuzzer_sys::fuzz_target;

fn packets(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut framer = Framer::default();
    let mut out = Vec::new();
    for c in chunks {
        framer.push(c);
        while let Some(e) = framer.next_event() {
            if let FramerEvent::Packet(p) = e {
                out.push(p.to_bytes());
            }
        }
        assert!(framer.buffered() <= 8 + 4096 + c.len());
    }
    framer.flush();
    while let Some(e) = framer.next_event() {
        if let FramerEvent::Packet(p) = e {
            out.push(p.to_bytes());
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let at = usize::from(cut) % (rest.len() + 1);
    let whole = packets(&[rest]);
    let split = packets(&[&rest[..at], &rest[at..]]);
    assert_eq!(whole, split);
});
