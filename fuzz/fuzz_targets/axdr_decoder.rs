//! The A-XDR decoder on arbitrary bytes: never panics, and every decoded value re-encodes to the bytes it used.
#![no_main]

use ivy_protocol::dlms::Data;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((value, used)) = Data::decode(data) {
        let mut out = Vec::new();
        value.encode(&mut out);
        // Booleans other than 0/1 and non-minimal BER lengths normalise, so compare the re-encodings (NaN floats
        // make value equality useless).
        let (back, _) = Data::decode(&out).expect("an encoded value decodes");
        assert_eq!(back.to_bytes(), out);
        assert!(used <= data.len());
    }
    let _ = ivy_protocol::explain::dlms::explain_axdr(data);
});
