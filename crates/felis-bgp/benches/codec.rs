//! UPDATE decode/encode throughput (prefixes per second).
//!
//! `cargo bench -p felis-bgp --bench codec`

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "bench code")]

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::Criterion;
use criterion::Throughput;
use criterion::criterion_group;
use criterion::criterion_main;
use felis_bgp::packet::CodecOptions;
use felis_bgp::packet::HEADER_LEN;
use felis_bgp::packet::Message;
use felis_bgp::packet::update::AsPath;
use felis_bgp::packet::update::Origin;
use felis_bgp::packet::update::PathAttributes;
use felis_bgp::packet::update::UpdateView;
use felis_bgp::packet::update::announcements;
use ipnet::IpNet;
use ipnet::Ipv4Net;

const PREFIXES: u32 = 100_000;

fn wire() -> (Vec<Vec<u8>>, Vec<felis_bgp::packet::update::Update>) {
    let attrs = PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence([64513, 65000])),
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 2)),
        ..PathAttributes::default()
    };
    let prefixes: Vec<IpNet> = (0..PREFIXES)
        .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap()))
        .collect();
    let updates = announcements(&attrs, &prefixes, None, &CodecOptions::FOUR_OCTET);
    let bytes = updates
        .iter()
        .map(|u| {
            Message::Update(u.clone())
                .to_bytes(&CodecOptions::FOUR_OCTET)
                .unwrap()
        })
        .collect();
    (bytes, updates)
}

fn bench(c: &mut Criterion) {
    let (bytes, updates) = wire();
    let mut g = c.benchmark_group("update");
    g.throughput(Throughput::Elements(u64::from(PREFIXES)));
    g.bench_function("view_parse_and_iterate", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for m in &bytes {
                let view = UpdateView::parse(&m[HEADER_LEN..], &CodecOptions::FOUR_OCTET).unwrap();
                n += view.nlri().count();
            }
            black_box(n)
        });
    });
    g.bench_function("decode_owned", |b| {
        b.iter(|| {
            for m in &bytes {
                black_box(Message::decode(m, &CodecOptions::FOUR_OCTET).unwrap());
            }
        });
    });
    g.bench_function("encode", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(512 * 1024);
            for u in &updates {
                Message::Update(u.clone())
                    .encode(&CodecOptions::FOUR_OCTET, &mut out)
                    .unwrap();
            }
            black_box(out.len())
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
