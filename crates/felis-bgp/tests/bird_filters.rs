//! Import and export filters (Calico's BGPFilter, [`felis_bgp::policy`]) against a real BIRD 2,
//! and a change of them on the live session.
//!
//! ```text
//!  ct-<pid>-flt-f                               ct-<pid>-flt-b
//!  Felis speaker (AS 64512)   veth0 ── veth1    bird -f (AS 64513, passive)
//!  192.0.2.1/24                                  192.0.2.2/24
//!  originates 10.65.0.0/26, 10.66.0.0/26         static 10.200.1.0/24, 10.200.2.0/24
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

use std::net::IpAddr;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use common::Bird;
use common::Felis;
use common::Netns;
use common::WAIT;
use common::preconditions;
use common::runtime;
use felis_bgp::Asn;
use felis_bgp::io::PeerConfig;
use felis_bgp::io::SpeakerConfig;
use felis_bgp::policy::FilterAction;
use felis_bgp::policy::FilterRule;
use felis_bgp::policy::MatchOperator;
use felis_bgp::policy::PeerPolicy;
use felis_bgp::policy::Policy;
use felis_bgp::rib::ChangeKind;
use felis_bgp::session::State;
use ipnet::IpNet;

const FELIS: &str = "192.0.2.1";
const BIRD: &str = "192.0.2.2";

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Import rejects `import_reject` (Equal), export rejects `export_reject` (Equal).
fn policy(import_reject: &str, export_reject: &str) -> PeerPolicy {
    let reject = |cidr: &str| Policy {
        v4: vec![FilterRule::cidr(
            MatchOperator::Equal,
            net(cidr),
            FilterAction::Reject,
        )],
        v6: vec![],
    };
    PeerPolicy {
        import: reject(import_reject),
        export: reject(export_reject),
    }
}

/// Waits until BIRD's routes from Felis are exactly `expected`.
fn wait_bird_table(bird: &Bird, expected: &[&str]) {
    let start = Instant::now();
    let all = ["10.65.0.0/26", "10.66.0.0/26"];
    loop {
        let routes = bird.birdc("show route protocol felis");
        let has: Vec<&str> = all.iter().copied().filter(|p| routes.contains(p)).collect();
        if has == expected {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "BIRD never had exactly {expected:?} from Felis:\n{routes}\n{}",
            bird.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bird_sees_export_filters_and_felis_applies_import_filters_live() {
    if !preconditions() {
        return;
    }
    let rt = runtime();
    let felis_ns = Netns::new("flt-f");
    let bird_ns = Netns::new("flt-b");
    felis_ns.ip(&[
        "link",
        "add",
        "veth0",
        "type",
        "veth",
        "peer",
        "name",
        "veth1",
        "netns",
        &bird_ns.name,
    ]);
    felis_ns.ip(&["addr", "add", &format!("{FELIS}/24"), "dev", "veth0"]);
    felis_ns.ip(&["link", "set", "veth0", "up"]);
    bird_ns.ip(&["addr", "add", &format!("{BIRD}/24"), "dev", "veth1"]);
    bird_ns.ip(&["link", "set", "veth1", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let bird = Bird::spawn(
        &bird_ns,
        dir.path(),
        &format!(
            r#"
router id {BIRD};
protocol device {{ scan time 1; }}
protocol direct {{ ipv4; interface "veth1"; }}
protocol static {{
  ipv4;
  route 10.200.1.0/24 blackhole;
  route 10.200.2.0/24 blackhole;
}}
protocol bgp felis {{
  local {BIRD} as 64513;
  neighbor {FELIS} as 64512;
  passive on;
  hold time 30;
  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
"#
        ),
    );
    let mut config = SpeakerConfig::new(Asn(64512), FELIS.parse().unwrap());
    config.listen = Some(SocketAddr::new(FELIS.parse().unwrap(), 179));
    let mut peer = PeerConfig::new(BIRD.parse().unwrap(), Asn(64513));
    peer.families = vec![felis_bgp::Family::IPV4_UNICAST];
    peer.connect_delay = Duration::from_millis(200);
    peer.connect_retry = Duration::from_secs(2);
    peer.policy = policy("10.200.2.0/24", "10.66.0.0/26");
    let mut felis = Felis::spawn(
        &felis_ns,
        config,
        vec![peer],
        vec![net("10.65.0.0/26"), net("10.66.0.0/26")],
    );
    let bird_ip: IpAddr = BIRD.parse().unwrap();

    // Import: 10.200.2.0/24 is received but not accepted.
    let added = felis.wait_added(&rt, "10.200.1.0/24");
    assert_eq!(added.next_hop, Some(bird_ip));
    let status = felis.wait_status(&rt, "counted both BIRD routes", |s| {
        s.counters.received == 2 && s.counters.advertised == 1
    });
    assert_eq!(status.counters.accepted, 1, "{status:?}");
    assert_eq!(status.state, State::Established);
    let since = status.since;
    let extra = felis.changes(&rt, 5, Duration::from_millis(500));
    assert!(
        extra.iter().all(|c| c.prefix != net("10.200.2.0/24")),
        "{extra:?}"
    );
    // Export: BIRD has 10.65.0.0/26 from Felis, never 10.66.0.0/26.
    wait_bird_table(&bird, &["10.65.0.0/26"]);

    // Swap both filters on the live session.
    rt.block_on(
        felis
            .speaker
            .set_peer_policy(bird_ip, policy("10.200.1.0/24", "10.65.0.0/26")),
    )
    .unwrap();
    wait_bird_table(&bird, &["10.66.0.0/26"]);
    let mut changes: Vec<_> = felis
        .changes(&rt, 2, WAIT)
        .into_iter()
        .map(|c| (c.prefix, c.kind))
        .collect();
    changes.sort_by_key(|(prefix, _)| *prefix);
    assert_eq!(
        changes,
        vec![
            (net("10.200.1.0/24"), ChangeKind::Removed),
            (net("10.200.2.0/24"), ChangeKind::Added),
        ]
    );
    let status = felis.wait_status(&rt, "counted the swap", |s| {
        s.counters.received == 2 && s.counters.accepted == 1 && s.counters.advertised == 1
    });
    assert_eq!(status.state, State::Established);
    assert_eq!(status.since, since, "the session was reset");
    let protocols = bird.birdc("show protocols all felis");
    assert!(protocols.contains("Established"), "{protocols}");

    // No filter at all: everything flows both ways, still on the same session.
    rt.block_on(
        felis
            .speaker
            .set_peer_policy(bird_ip, PeerPolicy::default()),
    )
    .unwrap();
    wait_bird_table(&bird, &["10.65.0.0/26", "10.66.0.0/26"]);
    let status = felis.wait_status(&rt, "accepted both", |s| {
        s.counters.received == 2 && s.counters.accepted == 2 && s.counters.advertised == 2
    });
    assert_eq!(status.since, since, "the session was reset");
}
