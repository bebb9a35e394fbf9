//! The client association fed arbitrary replies between requests and timeouts: never panics, never has more
//! than one request on the wire, and every request ends with exactly one response event.
#![no_main]

use ivy_protocol::dlms::apdu::AttributeDescriptor;
use ivy_protocol::dlms::association::{Association, ClientConfig, Event, Request};
use ivy_protocol::dlms::Obis;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;

fuzz_target!(|data: &[u8]| {
    let mut a = Association::new(ClientConfig::default());
    let mut open: HashSet<u64> = HashSet::new();
    for chunk in data.split(|b| *b == 0xA5).take(64) {
        match chunk.first() {
            Some(0) => {
                let attr = AttributeDescriptor::new(3, Obis::new(1, 0, 12, 7, 0, 255), 2);
                open.insert(a.request(Request::Get(attr)));
            }
            Some(1) => a.handle_timeout(),
            Some(2) => a.release(),
            _ => a.handle_apdu(chunk),
        }
        let mut sent = 0;
        while a.poll_transmit().is_some() {
            sent += 1;
        }
        assert!(sent <= 2, "at most one request (plus a next-block or AARQ) at a time");
        while let Some(e) = a.poll_event() {
            if let Event::Response { id, .. } = e {
                assert!(open.remove(&id), "a request answered twice or never asked");
            }
        }
    }
    a.abort();
    while let Some(e) = a.poll_event() {
        if let Event::Response { id, .. } = e {
            assert!(open.remove(&id));
        }
    }
    assert!(open.is_empty(), "requests left without an answer after abort");
});
