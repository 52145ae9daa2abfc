//! TTL security (GTSM, RFC 5082; BGPPeer `ttlSecurity`) against a real BIRD 2 with
//! `ttl security on`, directly connected and two hops away behind a router namespace.
//!
//! ```text
//!  direct:   ct-<pid>-gd-f  Felis 192.0.2.1/24 ── veth ── 192.0.2.2/24 BIRD  ct-<pid>-gd-b
//!  routed:   ct-<pid>-gr-f  Felis 192.0.2.1/24 ── ct-<pid>-gr-r (forwards) ── 198.51.100.2/24
//!                                  192.0.2.254/24    198.51.100.254/24          BIRD  ct-<pid>-gr-b
//! ```
//!
//! Skips with a message when not root or when `bird` is missing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use common::Bird;
use common::Felis;
use common::Netns;
use common::preconditions;
use common::run;
use common::runtime;
use felis_bgp::Asn;
use felis_bgp::Family;
use felis_bgp::io::PeerConfig;
use felis_bgp::io::SpeakerConfig;
use felis_bgp::session::State;

const FELIS: &str = "192.0.2.1";

fn link(a: &Netns, a_if: &str, a_cidr: &str, b: &Netns, b_if: &str, b_cidr: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", a_cidr, "dev", a_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["addr", "add", b_cidr, "dev", b_if]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// BIRD (AS 64513) with GTSM for a peer `hops` away; `passive`: it only accepts; `statics`:
/// more static routes (a route to Felis's subnet, for recursive next hops).
fn bird(
    ns: &Netns,
    dir: &std::path::Path,
    me: &str,
    hops: u8,
    passive: bool,
    statics: &str,
) -> Bird {
    let passive = if passive { "passive on;" } else { "" };
    Bird::spawn(
        ns,
        dir,
        &format!(
            r#"
router id {me};
protocol device {{ scan time 1; }}
protocol direct {{ ipv4; }}
protocol static {{ ipv4; route 10.200.1.0/24 blackhole; {statics} }}
protocol bgp felis {{
  local {me} as 64513;
  neighbor {FELIS} as 64512;
  ttl security on;
  multihop {hops};
  {passive}
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 2;
  hold time 9;
  startup hold time 3;
  ipv4 {{ import all; export where net = 10.200.1.0/24; }};
}}
"#
        ),
    )
}

fn felis(ns: &Netns, bird: &str, hops: Option<u8>, passive: bool) -> Felis {
    let mut config = SpeakerConfig::new(Asn(64512), FELIS.parse().unwrap());
    config.listen = Some(SocketAddr::new(FELIS.parse().unwrap(), 179));
    let mut peer = PeerConfig::new(bird.parse().unwrap(), Asn(64513));
    peer.families = vec![Family::IPV4_UNICAST];
    peer.passive = passive;
    peer.connect_delay = Duration::from_millis(200);
    peer.connect_retry = Duration::from_secs(1);
    peer.hold_time = 9;
    peer.ttl_security = hops;
    Felis::spawn(
        ns,
        config,
        vec![peer],
        vec!["10.65.0.0/26".parse().unwrap()],
    )
}

/// Whether the session stays short of Established for `within`.
fn never_established(felis: &Felis, rt: &tokio::runtime::Runtime, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if felis.status(rt).state == State::Established {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

#[test]
fn gtsm_session_with_a_direct_neighbour_comes_up_on_an_accepted_connection() {
    if !preconditions() {
        return;
    }
    let rt = runtime();
    let f = Netns::new("gd-f");
    let b = Netns::new("gd-b");
    link(&f, "eth0", "192.0.2.1/24", &b, "eth0", "192.0.2.2/24");
    let dir = tempfile::tempdir().unwrap();
    // BIRD connects: our listener's SYN-ACK and the accepted socket must both send TTL 255.
    let bird = bird(&b, dir.path(), "192.0.2.2", 1, false, "");
    let mut felis = felis(&f, "192.0.2.2", Some(1), true);
    felis.wait_added(&rt, "10.200.1.0/24");
    let status = felis.wait_status(&rt, "established", |s| s.state == State::Established);
    assert_eq!(status.counters.accepted, 1, "{}", bird.log());
    bird.wait_route("10.65.0.0/26", |_| true);
}

#[test]
fn gtsm_session_two_hops_away_needs_ttl_security_of_two() {
    if !preconditions() {
        return;
    }
    let rt = runtime();
    let f = Netns::new("gr-f");
    let r = Netns::new("gr-r");
    let b = Netns::new("gr-b");
    link(&f, "eth0", "192.0.2.1/24", &r, "left", "192.0.2.254/24");
    link(
        &r,
        "right",
        "198.51.100.254/24",
        &b,
        "eth0",
        "198.51.100.2/24",
    );
    f.ip(&["route", "add", "default", "via", "192.0.2.254"]);
    b.ip(&["route", "add", "default", "via", "198.51.100.254"]);
    run(&[
        "ip",
        "netns",
        "exec",
        &r.name,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // BIRD accepts peers up to 2 hops away, and only accepts connections: Felis connects.
    let bird = bird(
        &b,
        dir.path(),
        "198.51.100.2",
        2,
        true,
        "route 192.0.2.0/24 via 198.51.100.254;",
    );

    // ttlSecurity 1: BIRD's packets arrive with TTL 254 < 255, our kernel drops them.
    let too_strict = felis(&f, "198.51.100.2", Some(1), false);
    assert!(
        never_established(&too_strict, &rt, Duration::from_secs(5)),
        "a peer two hops away passed a one-hop check"
    );
    let protocols = bird.birdc("show protocols felis");
    assert!(!protocols.contains("Established"), "{protocols}");
    drop(too_strict);

    // ttlSecurity 2: 254 passes.
    let mut two = felis(&f, "198.51.100.2", Some(2), false);
    two.wait_added(&rt, "10.200.1.0/24");
    let status = two.wait_status(&rt, "established", |s| s.state == State::Established);
    assert_eq!(status.counters.accepted, 1, "{}", bird.log());
    bird.wait_route("10.65.0.0/26", |_| true);
    drop(two);
}
