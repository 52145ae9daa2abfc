//! Learning 1M IPv4 prefixes into the RIB: time and resident memory per route.
//!
//! `cargo bench -p felis-bgp --bench rib` (prints one line of results; not a criterion bench,
//! because one iteration already takes seconds). `RIB_PREFIXES=N` changes the count.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "bench code")]

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::time::Instant;

use felis_bgp::Asn;
use felis_bgp::Family;
use felis_bgp::packet::CodecOptions;
use felis_bgp::packet::HEADER_LEN;
use felis_bgp::packet::Message;
use felis_bgp::packet::update::AsPath;
use felis_bgp::packet::update::Origin;
use felis_bgp::packet::update::PathAttributes;
use felis_bgp::packet::update::UpdateView;
use felis_bgp::packet::update::announcements;
use felis_bgp::rib::PeerUp;
use felis_bgp::rib::Rib;
use felis_bgp::rib::RibConfig;
use felis_bgp::rib::RibOutput;
use felis_bgp::rib::RibPeerConfig;
use ipnet::IpNet;
use ipnet::Ipv4Net;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    let count: u32 = std::env::var("RIB_PREFIXES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // 1000 distinct AS paths, as a full-ish table shares attributes across many prefixes.
    let opts = CodecOptions::FOUR_OCTET;
    let mut wire: Vec<Vec<u8>> = Vec::new();
    let groups = 1000u32;
    for g in 0..groups {
        let attrs = PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence([64513, 65000 + g])),
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 2)),
            ..PathAttributes::default()
        };
        let prefixes: Vec<IpNet> = (0..count / groups)
            .map(|i| {
                let n = g * (count / groups) + i;
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0100_0000 + (n << 8)), 24).unwrap())
            })
            .collect();
        for u in announcements(&attrs, &prefixes, None, &opts) {
            wire.push(Message::Update(u).to_bytes(&opts).unwrap());
        }
    }
    let wire_bytes: usize = wire.iter().map(Vec::len).sum();

    let start = Instant::now();
    let mut decoded = 0usize;
    for m in &wire {
        decoded += UpdateView::parse(&m[HEADER_LEN..], &opts)
            .unwrap()
            .nlri()
            .count();
    }
    let decode = start.elapsed();

    let mut rib = Rib::new(RibConfig {
        local_asn: Asn(64512),
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        cluster_id: None,
    });
    let peer = rib.add_peer(RibPeerConfig::new(
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        Asn(64513),
    ));
    let mut out = RibOutput::default();
    rib.peer_up(
        peer,
        PeerUp {
            router_id: Ipv4Addr::new(192, 0, 2, 2),
            families: vec![Family::IPV4_UNICAST],
            codec: opts,
            local_address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        },
        &mut out,
    );
    let before = resident_bytes();
    let start = Instant::now();
    let mut changes = 0usize;
    for m in &wire {
        let view = UpdateView::parse(&m[HEADER_LEN..], &opts).unwrap();
        let mut out = RibOutput::default();
        rib.apply_view(peer, &view, &mut out);
        changes += out.changes.len();
    }
    let learn = start.elapsed();
    let after = resident_bytes();
    let per_route = (after.saturating_sub(before)) as f64 / f64::from(count);
    println!(
        "prefixes={count} updates={} wire_bytes={wire_bytes} decode={:.3}s ({:.1} M prefixes/s) \
         rib_learn={:.3}s ({:.2} M prefixes/s) rib_len={} changes={changes} \
         attrs={} rss_delta={} MiB bytes_per_route={per_route:.1}",
        wire.len(),
        decode.as_secs_f64(),
        decoded as f64 / decode.as_secs_f64() / 1e6,
        learn.as_secs_f64(),
        f64::from(count) / learn.as_secs_f64() / 1e6,
        rib.len(),
        rib.interned_attrs(),
        (after - before) / (1024 * 1024),
    );
}
