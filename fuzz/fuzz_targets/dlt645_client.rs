//! The DL/T 645 client fed arbitrary meter bytes (through the framer) between requests of every kind and timer
//! ticks: never panics, sends one frame at a time, refuses a second request while one is in flight, always has a
//! timer while it waits for a reply, and ends every accepted request with exactly one outcome.
#![no_main]

use ivy_protocol::dlt645::client::{Client, ClientConfig, Event, Request, SubmitError};
use ivy_protocol::dlt645::{Address, Di, Framer, FramerEvent, MeterDateTime, RelayAuth, RelayCommand};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn request(kind: u8, arg: &[u8]) -> Request {
    let address = Address::from_wire([0x70, 0x40, 0x11, 0x01, 0x15, 0x31]);
    let di = match arg {
        [a, b, c, d, ..] => Di::from_le_bytes([*a, *b, *c, *d]),
        _ => Di::new(0x0201_0100),
    };
    let auth = RelayAuth::new(2, "123456", "12345678").unwrap();
    let time = MeterDateTime::new(2026, 11, 30, 12, 0, 0).unwrap();
    match kind % 6 {
        0 => Request::Read { address, di },
        1 => Request::ReadAddress,
        2 => Request::Write { address, di, auth, value: arg.to_vec() },
        3 => Request::RelayControl {
            address,
            command: RelayCommand::ALL[usize::from(kind) % RelayCommand::ALL.len()],
            auth,
            valid_until: time,
            aes_key: (kind & 0x80 != 0).then_some([7; 16]),
        },
        4 => Request::BroadcastTime(time),
        _ => Request::Read { address: Address::WILDCARD, di },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, data)) = data.split_first() else { return };
    let config = ClientConfig {
        response_timeout: Duration::from_millis(1000),
        retries: u32::from(setup & 0x03),
        max_follow_ups: setup >> 4,
        wakeup_preamble: usize::from(setup >> 2 & 0x03),
    };
    let mut client = Client::new(config);
    let mut framer = Framer::new();
    let mut now = Instant::now();
    let mut open: HashSet<u64> = HashSet::new();
    for chunk in data.split(|b| *b == 0xA5).take(128) {
        match chunk {
            [0, kind, arg @ ..] => {
                let busy = client.in_flight();
                match client.request(request(*kind, arg)) {
                    Ok(id) => {
                        assert!(busy.is_none(), "accepted while busy");
                        assert!(open.insert(id));
                    }
                    Err(SubmitError::Busy(id)) => assert_eq!(busy, Some(id)),
                    Err(_) => assert!(busy.is_none()),
                }
            }
            [1, step] => {
                now += Duration::from_millis(u64::from(*step) * 20);
                client.handle_timeout(now);
            }
            [1] => {
                if let Some(t) = client.poll_timeout() {
                    now = now.max(t);
                }
                client.handle_timeout(now);
            }
            [2] => client.abort(),
            bytes => {
                framer.push(bytes);
                while let Some(e) = framer.next_event() {
                    if let FramerEvent::Frame(f) = e {
                        client.handle_frame(f);
                    }
                }
            }
        }
        if let Some(bytes) = client.poll_transmit(now) {
            assert!(!bytes.is_empty());
            assert_eq!(client.poll_transmit(now), None, "one frame at a time");
        }
        if client.in_flight().is_some() {
            assert!(client.poll_timeout().is_some(), "waiting for a reply without a timer");
        }
        while let Some(e) = client.poll_event() {
            if let Event::Done { id, .. } = e {
                assert!(open.remove(&id), "a request ended twice or was never accepted");
            }
        }
    }
    client.abort();
    while let Some(e) = client.poll_event() {
        if let Event::Done { id, .. } = e {
            assert!(open.remove(&id));
        }
    }
    assert!(open.is_empty(), "requests left without an outcome after abort");
    assert_eq!(client.poll_timeout(), None);
});
