//! Codec benchmarks (criterion). Run: `cargo bench -p ivy-protocol --bench codecs`; results and the machine are
//! recorded in docs/PERFORMANCE.md.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ivy_protocol::dlms::apdu::Apdu;
use ivy_protocol::dlms::axdr::Data;
use ivy_protocol::dlt645::{Catalogue, Frame, Framer, FramerEvent, Reply};
use ivy_protocol::wrapper::{self, Framer as WrapperFramer, FramerEvent as WrapperEvent};
use std::hint::black_box;

fn dlt645(c: &mut Criterion) {
    // Reply from 311501114070: ACTIVE_POWER_TOTAL = -2.3456 kW.
    let reply = hex::decode("68704011011531689107333336358967b5e616").unwrap();
    let catalogue = Catalogue::builtin();
    let mut g = c.benchmark_group("dlt645");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_read_reply_and_value", |b| {
        b.iter(|| {
            let d = Frame::decode(black_box(&reply)).unwrap();
            match d.frame.reply() {
                Reply::Data { di, value, .. } => black_box(catalogue.decode(di, value).unwrap()),
                _ => unreachable!(),
            };
        })
    });
    let stream: Vec<u8> = std::iter::repeat_n(reply.clone(), 1000).flatten().collect();
    g.throughput(Throughput::Elements(1000));
    g.bench_function("framer_1000_replies_in_1k_chunks", |b| {
        b.iter_batched(
            Framer::new,
            |mut f| {
                let mut n = 0;
                for chunk in stream.chunks(1024) {
                    f.push(chunk);
                    while let Some(e) = f.next_event() {
                        if let FramerEvent::Frame(fr) = e {
                            black_box(&fr);
                            n += 1;
                        }
                    }
                }
                assert_eq!(n, 1000);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn wrapper_framing(c: &mut Criterion) {
    let packet = wrapper::wrap(1, 0x10, &hex::decode("c401c1000600005c54").unwrap()).unwrap();
    let stream: Vec<u8> = std::iter::repeat_n(packet, 1000).flatten().collect();
    let mut g = c.benchmark_group("wrapper");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("framer_1000_get_responses_in_1k_chunks", |b| {
        b.iter_batched(
            WrapperFramer::default,
            |mut f| {
                let mut n = 0;
                for chunk in stream.chunks(1024) {
                    f.push(chunk);
                    while let Some(e) = f.next_event() {
                        if let WrapperEvent::Packet(p) = e {
                            black_box(&p);
                            n += 1;
                        }
                    }
                }
                assert_eq!(n, 1000);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn dlms(c: &mut Criterion) {
    let get_response = hex::decode("c401c1000600005c54").unwrap();
    let structure = hex::decode("0204060001e2400600005c5405fffffb2e12138c").unwrap();
    let mut g = c.benchmark_group("dlms");
    g.throughput(Throughput::Elements(1));
    g.bench_function("get_response_normal_parse", |b| {
        b.iter(|| black_box(Apdu::parse(black_box(&get_response)).unwrap()))
    });
    g.bench_function("axdr_structure_of_4_decode", |b| {
        b.iter(|| black_box(Data::decode(black_box(&structure)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, dlt645, wrapper_framing, dlms);
criterion_main!(benches);
