//! Route reflection (RFC 4456) and graceful restart (RFC 4724) against real BIRD 2, all iBGP
//! in AS 64512 on one LAN: a bridge in a switch namespace and one namespace per router
//! (`ct-<pid>-<case>-…`, removed on drop even when the test fails).
//!
//! ```text
//!                     ct-<pid>-<case>-sw (br0)
//!        ┌──────────────────┼──────────────────┐
//!   192.0.2.1/24       192.0.2.2/24       192.0.2.3/24
//!   A (client)         R (reflector)      C (client)
//! ```
//!
//! * `felis_client_of_bird_reflector`: A is Felis, R and C are BIRD.
//! * `bird_clients_of_felis_reflector`: R is Felis, A and C are BIRD.
//! * `felis_and_bird_clients_of_felis_reflector`: R and A are Felis, C is BIRD.
//! * `felis_crash_keeps_routes_in_bird_until_end_of_rib`: Felis and one BIRD (graceful
//!   restart, 120 s as Calico); Felis crashes (no Cease) and comes back announcing less.
//! * `felis_restart_without_forwarding_bit_flushes_at_session_up`: the same with the graceful
//!   restart F bit clear, showing BIRD's flush that the bit avoids.
//!
//! Skips with a message when not root or when `bird` is missing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use common::Bird;
use common::Felis;
use common::Netns;
use common::lan;
use common::preconditions;
use common::runtime;
use common::wait_until;
use felis_bgp::Asn;
use felis_bgp::io::PeerConfig;
use felis_bgp::io::SpeakerConfig;
use felis_bgp::session::State;
use ipnet::IpNet;

const A: &str = "192.0.2.1";
const R: &str = "192.0.2.2";
const C: &str = "192.0.2.3";

/// Nodes `a` (A), `r` (R, the reflector) and `c` (C) on one LAN, namespaces tagged `tag`.
fn client_reflector_client(tag: &str) -> common::Lan {
    lan(
        tag,
        &[
            ("a", &format!("{A}/24")),
            ("r", &format!("{R}/24")),
            ("c", &format!("{C}/24")),
        ],
    )
}
const AS: u32 = 64512;
/// The reflector's cluster id, distinct from every router id so the checks can tell them
/// apart.
const CLUSTER: &str = "10.255.255.2";
/// What Felis originates in every case.
const FELIS_ROUTE: &str = "10.65.0.0/26";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// One `protocol bgp` of an iBGP BIRD toward `neighbor`; `extra` adds options such as
/// `rr client;` or `passive on;`.
fn bird_session(name: &str, local: &str, neighbor: &str, extra: &str, export: &str) -> String {
    format!(
        r#"
protocol bgp {name} {{
  local {local} as {AS};
  neighbor {neighbor} as {AS};
  {extra}
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 5;
  hold time 30;
  graceful restart on;
  ipv4 {{ import all; export {export}; }};
}}
"#
    )
}

/// A BIRD router with id `id`, a static blackhole route per entry of `statics`, learned BGP
/// routes exported to the kernel, and `sessions`.
fn bird_router(
    ns: &Netns,
    dir: &std::path::Path,
    id: &str,
    statics: &[&str],
    sessions: &str,
) -> Bird {
    let routes: String = statics
        .iter()
        .map(|r| format!("  route {r} blackhole;\n"))
        .collect();
    let body = format!(
        r#"
router id {id};
protocol device {{ scan time 1; }}
protocol direct {{ ipv4; interface "eth0"; }}
protocol kernel {{ ipv4 {{ export where source = RTS_BGP; }}; }}
protocol static s4 {{
  ipv4;
{routes}}}
{sessions}
"#
    );
    Bird::spawn(ns, dir, &body)
}

fn subdir(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::create_dir(&path).unwrap();
    path
}

/// An iBGP peer toward `address` with short timers.
fn felis_peer(address: &str) -> PeerConfig {
    let mut peer = PeerConfig::new(ip(address), Asn(AS));
    peer.connect_delay = Duration::from_millis(200);
    peer.connect_retry = Duration::from_secs(2);
    peer.families = vec![felis_bgp::packet::Family::IPV4_UNICAST];
    peer
}

fn felis_config(id: &str) -> SpeakerConfig {
    let mut config = SpeakerConfig::new(Asn(AS), v4(id));
    config.listen = Some(SocketAddr::new(ip(id), 179));
    config
}

/// `ip route show PREFIX` in `ns`.
fn kernel_route(ns: &Netns, prefix: &str) -> String {
    ns.ip_out(&["route", "show", prefix])
}

#[test]
fn felis_client_of_bird_reflector() {
    if !preconditions() {
        return;
    }
    let rt = runtime();
    let lan = client_reflector_client("rrc");
    let [a, r, c] = &lan.nodes[..] else {
        panic!("three nodes")
    };
    let dir = tempfile::tempdir().unwrap();
    let reflector_export = "where source ~ [RTS_STATIC, RTS_BGP]";
    let rr = format!("rr client; rr cluster id {CLUSTER};");
    let reflector = bird_router(
        r,
        &subdir(&dir, "r"),
        R,
        &["10.201.2.0/24"],
        &(bird_session("felis", R, A, &rr, reflector_export)
            + &bird_session("c", R, C, &rr, reflector_export)),
    );
    let client = bird_router(
        c,
        &subdir(&dir, "c"),
        C,
        &["10.201.3.0/24"],
        &bird_session("r", C, R, "", "where source = RTS_STATIC"),
    );
    let mut felis = Felis::spawn(
        a,
        felis_config(A),
        vec![felis_peer(R)],
        vec![net(FELIS_ROUTE)],
    );

    // C's route reaches Felis through R with C's next hop, C as originator and R's cluster.
    let learned = felis.wait_added(&rt, "10.201.3.0/24");
    assert_eq!(learned.peer, ip(R));
    assert_eq!(learned.next_hop, Some(ip(C)), "next hop preserved");
    assert_eq!(learned.attrs.path.originator_id, Some(v4(C)));
    assert_eq!(learned.attrs.path.cluster_list, vec![v4(CLUSTER)]);
    // R's own route is not reflected: no ORIGINATOR_ID, no CLUSTER_LIST, next hop R.
    let own = felis.wait_added(&rt, "10.201.2.0/24");
    assert_eq!(own.next_hop, Some(ip(R)));
    assert_eq!(own.attrs.path.originator_id, None);
    assert!(own.attrs.path.cluster_list.is_empty());

    // Felis's route reaches C through R, next hop still Felis.
    let route = client.wait_route(FELIS_ROUTE, |out| out.contains(&format!("via {A}")));
    assert!(
        route.contains(&format!("BGP.originator_id: {A}")),
        "{route}"
    );
    assert!(
        route.contains(&format!("BGP.cluster_list: {CLUSTER}")),
        "{route}"
    );
    assert!(route.contains(&format!("from {R}")), "{route}");
    assert!(!route.contains("unreachable"), "{route}");
    let kernel = wait_until(
        "programmed Felis's route in C's kernel",
        || kernel_route(c, FELIS_ROUTE),
        || {
            let k = kernel_route(c, FELIS_ROUTE);
            k.contains(&format!("via {A}")).then_some(k)
        },
    );
    assert!(kernel.contains("dev eth0"), "{kernel}");
    let at_r = reflector.wait_route(FELIS_ROUTE, |out| out.contains(&format!("via {A}")));
    assert!(
        !at_r.contains("BGP.originator_id"),
        "R got it straight from A: {at_r}"
    );

    let status = felis.wait_status(&rt, "advertised its route", |s| s.counters.advertised == 1);
    assert_eq!(status.state, State::Established);
    assert_eq!(status.counters.accepted, 2, "C's and R's routes");
}

#[test]
fn bird_clients_of_felis_reflector() {
    if !preconditions() {
        return;
    }
    let rt = runtime();
    let lan = client_reflector_client("rrs");
    let [a, r, c] = &lan.nodes[..] else {
        panic!("three nodes")
    };
    let dir = tempfile::tempdir().unwrap();
    let static_only = "where source = RTS_STATIC";
    let bird_a = bird_router(
        a,
        &subdir(&dir, "a"),
        A,
        &["10.201.1.0/24"],
        &bird_session("r", A, R, "", static_only),
    );
    let bird_c = bird_router(
        c,
        &subdir(&dir, "c"),
        C,
        &["10.201.3.0/24"],
        &bird_session("r", C, R, "", static_only),
    );
    let mut config = felis_config(R);
    config.cluster_id = Some(v4(CLUSTER));
    let peers = [A, C]
        .iter()
        .map(|addr| {
            let mut peer = felis_peer(addr);
            peer.rr_client = true;
            peer
        })
        .collect();
    let mut felis = Felis::spawn(r, config, peers, vec![net(FELIS_ROUTE)]);

    for (bird, ns, other, other_route) in [
        (&bird_a, a, C, "10.201.3.0/24"),
        (&bird_c, c, A, "10.201.1.0/24"),
    ] {
        // The other client's route, reflected: its next hop, originator and our cluster.
        let route = bird.wait_route(other_route, |out| out.contains(&format!("via {other}")));
        assert!(route.contains(&format!("from {R}")), "{route}");
        assert!(
            route.contains(&format!("BGP.originator_id: {other}")),
            "{route}"
        );
        assert!(
            route.contains(&format!("BGP.cluster_list: {CLUSTER}")),
            "{route}"
        );
        assert!(!route.contains("unreachable"), "{route}");
        let kernel = wait_until(
            "programmed the reflected route",
            || kernel_route(ns, other_route),
            || {
                let k = kernel_route(ns, other_route);
                k.contains(&format!("via {other}")).then_some(k)
            },
        );
        assert!(kernel.contains("dev eth0"), "{kernel}");
        // The reflector's own route is plain iBGP.
        let own = bird.wait_route(FELIS_ROUTE, |out| out.contains(&format!("via {R}")));
        assert!(!own.contains("BGP.originator_id"), "{own}");
        assert!(!own.contains("BGP.cluster_list"), "{own}");
    }

    // Felis itself learned both clients' routes with their own next hops.
    let mut learned = [
        felis.wait_added(&rt, "10.201.1.0/24"),
        felis.wait_added(&rt, "10.201.3.0/24"),
    ];
    learned.sort_by_key(|c| c.prefix);
    assert_eq!(learned[0].next_hop, Some(ip(A)));
    assert_eq!(learned[1].next_hop, Some(ip(C)));
    for addr in [A, C] {
        let status = felis.peer_status(&rt, ip(addr));
        assert_eq!(status.state, State::Established, "{status:?}");
        assert_eq!(status.counters.accepted, 1, "{status:?}");
        // Our route and the other client's.
        assert_eq!(status.counters.advertised, 2, "{status:?}");
    }
}

/// A Felis client and a BIRD client of a Felis reflector.
#[test]
fn felis_and_bird_clients_of_felis_reflector() {
    if !preconditions() {
        return;
    }
    let rt = runtime();
    let lan = client_reflector_client("rrm");
    let [a, r, c] = &lan.nodes[..] else {
        panic!("three nodes")
    };
    let dir = tempfile::tempdir().unwrap();
    let bird_c = bird_router(
        c,
        &subdir(&dir, "c"),
        C,
        &["10.201.3.0/24"],
        &bird_session("r", C, R, "", "where source = RTS_STATIC"),
    );
    let mut config = felis_config(R);
    config.cluster_id = Some(v4(CLUSTER));
    let peers = [A, C]
        .iter()
        .map(|addr| {
            let mut peer = felis_peer(addr);
            peer.rr_client = true;
            peer
        })
        .collect();
    let mut reflector = Felis::spawn(r, config, peers, vec![net(FELIS_ROUTE)]);
    let client_route = "10.65.1.0/26";
    let mut client = Felis::spawn(
        a,
        felis_config(A),
        vec![felis_peer(R)],
        vec![net(client_route)],
    );

    // BIRD's route reaches the Felis client through the Felis reflector.
    let learned = client.wait_added(&rt, "10.201.3.0/24");
    assert_eq!(learned.peer, ip(R));
    assert_eq!(learned.next_hop, Some(ip(C)));
    assert_eq!(learned.attrs.path.originator_id, Some(v4(C)));
    assert_eq!(learned.attrs.path.cluster_list, vec![v4(CLUSTER)]);
    let own = client.wait_added(&rt, FELIS_ROUTE);
    assert_eq!(own.next_hop, Some(ip(R)));
    assert_eq!(own.attrs.path.originator_id, None);

    // The Felis client's route reaches BIRD the same way.
    let route = bird_c.wait_route(client_route, |out| out.contains(&format!("via {A}")));
    assert!(route.contains(&format!("from {R}")), "{route}");
    assert!(
        route.contains(&format!("BGP.originator_id: {A}")),
        "{route}"
    );
    assert!(
        route.contains(&format!("BGP.cluster_list: {CLUSTER}")),
        "{route}"
    );
    assert!(!route.contains("unreachable"), "{route}");

    // The reflector learned both with their own next hops and sent each client two routes.
    assert_eq!(
        reflector.wait_added(&rt, client_route).next_hop,
        Some(ip(A))
    );
    assert_eq!(
        reflector.wait_added(&rt, "10.201.3.0/24").next_hop,
        Some(ip(C))
    );
    for addr in [A, C] {
        let status = reflector.peer_status(&rt, ip(addr));
        assert_eq!(status.state, State::Established, "{status:?}");
        let status = wait_until(
            "advertised two routes",
            || format!("{status:?}"),
            || {
                let s = reflector.peer_status(&rt, ip(addr));
                (s.counters.advertised == 2).then_some(s)
            },
        );
        assert_eq!(status.counters.accepted, 1, "{status:?}");
    }
}

/// Whether BIRD's `show protocols` line for `name` says Established.
fn established(bird: &Bird, name: &str) -> bool {
    bird.birdc(&format!("show protocols {name}"))
        .contains("Established")
}

/// Felis crashes and comes back announcing one of its two routes. With the forwarding-state
/// bit (Felis's default) BIRD keeps both routes throughout and drops the other at End-of-RIB.
#[test]
fn felis_crash_keeps_routes_in_bird_until_end_of_rib() {
    felis_crash_and_restart("grf", true);
}

/// Without the forwarding-state bit BIRD ends the restart as soon as the new session is up,
/// flushing every stale route before the new speaker's UPDATEs (RFC 4724 §4.2): why Felis
/// sets the bit by default.
#[test]
fn felis_restart_without_forwarding_bit_flushes_at_session_up() {
    felis_crash_and_restart("grn", false);
}

fn felis_crash_and_restart(tag: &str, forwarding_preserved: bool) {
    if !preconditions() {
        return;
    }
    let rt = runtime();
    let lan = lan(tag, &[("f", &format!("{A}/24")), ("b", &format!("{R}/24"))]);
    let [f, b] = &lan.nodes[..] else {
        panic!("two nodes")
    };
    let dir = tempfile::tempdir().unwrap();
    let bird = bird_router(
        b,
        &subdir(&dir, "b"),
        R,
        &["10.201.2.0/24"],
        &bird_session(
            "felis",
            R,
            A,
            "passive on; graceful restart time 120; debug { states, events, packets };",
            "where source = RTS_STATIC",
        ),
    );
    let kept = FELIS_ROUTE;
    let dropped = "10.65.0.64/26";
    let mut peer = felis_peer(R);
    peer.graceful_restart = Some(120);
    peer.forwarding_preserved = forwarding_preserved;
    let felis = Felis::spawn(
        f,
        felis_config(A),
        vec![peer.clone()],
        vec![net(kept), net(dropped)],
    );
    for prefix in [kept, dropped] {
        bird.wait_route(prefix, |out| out.contains(&format!("via {A}")));
    }
    let protocols = bird.birdc("show protocols all felis");
    assert!(
        protocols.contains("Restart time"),
        "Felis sent GR: {protocols}"
    );

    // Crash: the TCP session just closes, no Cease. BIRD keeps both routes, stale, and
    // keeps forwarding along them while Felis is away.
    felis.crash();
    wait_until(
        "noticed the session loss",
        || bird.birdc("show protocols all felis"),
        || (!established(&bird, "felis")).then_some(()),
    );
    assert!(
        bird.log().contains("Neighbor graceful restart detected"),
        "{}",
        bird.log()
    );
    let gap_end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < gap_end {
        for prefix in [kept, dropped] {
            let route = bird.birdc(&format!("show route all {prefix}"));
            assert!(
                route.contains(&format!("via {A}")),
                "lost {prefix} during the restart:\n{route}"
            );
            let kernel = kernel_route(b, prefix);
            assert!(
                kernel.contains(&format!("via {A}")),
                "kernel lost {prefix}: {kernel}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // BIRD does not mark stale routes in `show route`; the protocol says they are held.
    let protocols = bird.birdc("show protocols all felis");
    assert!(
        protocols.contains("Neighbor graceful restart active")
            && protocols.contains("Restart timer"),
        "{protocols}"
    );
    let log_before = bird.log().len();

    // A new speaker announces only `kept`: BIRD keeps it throughout and drops `dropped`
    // at End-of-RIB.
    let felis = Felis::spawn(f, felis_config(A), vec![peer], vec![net(kept)]);
    wait_until(
        "dropped the route Felis no longer announces",
        || format!("{}\n{}", bird.birdc("show route all"), bird.log()),
        || {
            let route = bird.birdc(&format!("show route {kept}"));
            assert!(
                !forwarding_preserved || route.contains(&format!("via {A}")),
                "lost {kept} across the restart:\n{route}\n{}",
                bird.log()
            );
            let gone = !bird.birdc("show route").contains(dropped);
            (gone && established(&bird, "felis")).then_some(())
        },
    );
    assert!(
        !kernel_route(b, dropped).contains(dropped),
        "kernel still has {dropped}"
    );
    assert!(kernel_route(b, kept).contains(&format!("via {A}")));
    // BIRD ended the restart at our End-of-RIB, not as soon as the session came up (which it
    // does, flushing every stale route, when the forwarding-state bit is clear).
    let log = bird.log();
    let after = log.get(log_before..).unwrap_or_default();
    let eor = after.find("Got END-OF-RIB");
    let done = after.find("Neighbor graceful restart done");
    assert!(eor.is_some() && done.is_some(), "{after}");
    if forwarding_preserved {
        assert!(eor < done, "restart did not end at End-of-RIB:\n{after}");
    } else {
        assert!(done < eor, "restart ended at End-of-RIB:\n{after}");
    }
    let status = felis.wait_status(&rt, "advertised its route", |s| {
        s.state == State::Established && s.counters.advertised == 1
    });
    assert_eq!(status.counters.accepted, 1);
    let protocols = bird.birdc("show protocols all felis");
    assert!(
        !protocols.contains("graceful restart active") && protocols.contains("Established"),
        "routes are fresh again: {protocols}"
    );
}
