//! The APDU parser, the raw-APDU extent walker and `explain` on arbitrary bytes: never panic; whatever parses
//! re-encodes to bytes that parse to the same APDU, and a complete extent never exceeds the input.
#![no_main]

use ivy_protocol::dlms::apdu::Apdu;
use ivy_protocol::dlms::extent::{ApduExtent, apdu_extent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((apdu, used)) = Apdu::parse_prefix(data) {
        assert!(used <= data.len());
        let again = Apdu::parse_prefix(&apdu.encode()).map(|(a, _)| a);
        // Lenient inputs (a missing ACTION.response presence byte) re-encode in the standard form.
        if let Ok(again) = again {
            assert_eq!(again.encode(), apdu.encode());
        }
    }
    if let ApduExtent::Complete(n) = apdu_extent(data) {
        assert!(n <= data.len());
    }
    let _ = ivy_protocol::explain::dlms::explain_apdu(data);
});
