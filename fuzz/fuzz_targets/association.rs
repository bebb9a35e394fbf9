//! The client association fed arbitrary replies between requests and timeouts: never panics, never has more
//! than one request on the wire, every request ends with exactly one response event, and a timer always exists
//! while an answer is awaited (so a driver sleeping until `poll_timeout` never waits forever).
#![no_main]

use ivy_protocol::dlms::apdu::AttributeDescriptor;
use ivy_protocol::dlms::association::{Association, ClientConfig, Event, Request};
use ivy_protocol::dlms::Obis;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let config = ClientConfig {
        association_timeout: Duration::from_millis(3000),
        response_timeout: Duration::from_millis(700),
        ..ClientConfig::default()
    };
    let mut a = Association::new(config);
    let mut open: HashSet<u64> = HashSet::new();
    let mut now = Instant::now();
    for chunk in data.split(|b| *b == 0xA5).take(64) {
        let attr = AttributeDescriptor::new(3, Obis::new(1, 0, 12, 7, 0, 255), 2);
        match chunk {
            [0, ..] => {
                open.insert(a.request(Request::Get(attr)));
            }
            [3, ms, ..] => {
                open.insert(a.request_until(Request::Get(attr), now + Duration::from_millis(u64::from(*ms) * 20)));
            }
            [1, step, ..] => {
                now += Duration::from_millis(u64::from(*step) * 20);
                a.handle_timeout(now);
            }
            [1] => {
                if let Some(t) = a.poll_timeout() {
                    now = now.max(t);
                }
                a.handle_timeout(now);
            }
            [2, ..] => a.release(),
            _ => a.handle_apdu(chunk),
        }
        let mut sent = 0;
        while a.poll_transmit(now).is_some() {
            sent += 1;
        }
        assert!(sent <= 2, "at most one request (plus a next-block or AARQ) at a time");
        if a.awaiting_reply() {
            assert!(a.poll_timeout().is_some(), "an awaited answer without a timer");
        }
        while let Some(e) = a.poll_event() {
            if let Event::Response { id, .. } = e {
                assert!(open.remove(&id), "a request answered twice or never asked");
            }
        }
    }
    a.abort();
    assert_eq!(a.poll_timeout(), None);
    while let Some(e) = a.poll_event() {
        if let Event::Response { id, .. } = e {
            assert!(open.remove(&id));
        }
    }
    assert!(open.is_empty(), "requests left without an answer after abort");
});
