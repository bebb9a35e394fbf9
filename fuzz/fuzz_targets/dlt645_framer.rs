//! The DL/T 645 framer and frame/value decoding on arbitrary bytes, split at an arbitrary point: never panics,
//! stays bounded, frames the same way however the bytes are chunked, and every frame re-encodes to its bytes.
#![no_main]

use ivy_protocol::dlt645::{Catalogue, Frame, Framer, FramerEvent, Reply};
use libfuzzer_sys::fuzz_target;

fn frames(chunks: &[&[u8]]) -> Vec<Frame> {
    let mut framer = Framer::new();
    let mut out = Vec::new();
    for c in chunks {
        framer.push(c);
        while let Some(e) = framer.next_event() {
            if let FramerEvent::Frame(f) = e {
                if let Reply::Data { di, value, .. } = f.reply() {
                    let _ = Catalogue::builtin().decode(di, value);
                }
                out.push(f);
            }
        }
        assert!(framer.buffered() <= 212 + c.len());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let at = usize::from(cut) % (rest.len() + 1);
    let whole = frames(&[rest]);
    assert_eq!(whole, frames(&[&rest[..at], &rest[at..]]));
    for f in &whole {
        assert_eq!(Frame::decode(&f.encode()).map(|d| d.frame).as_ref(), Ok(f));
    }
    let _ = ivy_protocol::explain::dlt645::explain_frame(rest);
});
