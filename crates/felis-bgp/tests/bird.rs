//! Interoperability with a real BIRD 2 (Debian `bird2`) across a veth pair between two network
//! namespaces made for the test (`ct-<pid>-…`, removed on drop even when the test fails).
//!
//! ```text
//!  ct-<pid>-<case>-f                          ct-<pid>-<case>-b
//!  Felis speaker (AS 64512)   veth0 ── veth1   bird -f (AS 64513)
//!  192.0.2.1/24 2001:db8::1/64                 192.0.2.2/24 2001:db8::2/64
//!  originates 10.65.0.0/26, 2001:db8:65::/64   static 10.200.1.0/24, 10.200.2.0/24,
//!                                              2001:db8:200::/48
//! ```
//!
//! Runs by default (CI is root and installs bird2). Skips with a message when not root or
//! when `bird` is missing. Shared helpers are in `common/mod.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use common::Bird;
use common::Felis;
use common::Netns;
use common::WAIT;
use common::preconditions;
use common::runtime;
use felis_bgp::Asn;
use felis_bgp::io::Password;
use felis_bgp::io::PeerConfig;
use felis_bgp::io::SpeakerConfig;
use felis_bgp::rib::ChangeKind;
use felis_bgp::rib::RibChange;
use felis_bgp::session::State;
use ipnet::IpNet;

const FELIS_V4: &str = "192.0.2.1";
const BIRD_V4: &str = "192.0.2.2";
const FELIS_V6: &str = "2001:db8::1";
const BIRD_V6: &str = "2001:db8::2";
const BIRD_ASN: u32 = 64513;

fn start_bird(ns: &Netns, dir: &Path, felis_passive: bool) -> Bird {
    start_bird_with(ns, dir, felis_passive, "", "", BIRD_ASN)
}

fn start_bird_with(
    ns: &Netns,
    dir: &Path,
    felis_passive: bool,
    extra: &str,
    bgp_extra: &str,
    bird_asn: u32,
) -> Bird {
    start_bird_args(ns, dir, felis_passive, extra, bgp_extra, bird_asn, &[])
}

fn start_bird_args(
    ns: &Netns,
    dir: &Path,
    felis_passive: bool,
    extra: &str,
    bgp_extra: &str,
    bird_asn: u32,
    args: &[&str],
) -> Bird {
    let passive = if felis_passive { "" } else { "passive on;" };
    let text = format!(
        r#"
router id {BIRD_V4};
protocol device {{ scan time 1; }}
protocol direct {{ ipv4; ipv6; interface "veth1"; }}
protocol static s4 {{
  ipv4;
  route 10.200.1.0/24 blackhole;
  route 10.200.2.0/24 blackhole;
}}
protocol static s6 {{
  ipv6;
  route 2001:db8:200::/48 blackhole;
}}
protocol bgp felis {{
  local {BIRD_V4} as {bird_asn};
  neighbor {FELIS_V4} as 64512;
  {passive}
  {bgp_extra}
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 5;
  hold time 30;
  graceful restart on;
  ipv4 {{ import all; export where source = RTS_STATIC; }};
  ipv6 {{ import all; export where source = RTS_STATIC; next hop address {BIRD_V6}; }};
}}
{extra}
"#
    );
    Bird::spawn_with(ns, dir, &text, args)
}

struct Topology {
    felis: Netns,
    bird: Netns,
}

fn topology(tag: &str) -> Topology {
    let felis = Netns::new(&format!("{tag}-f"));
    let bird = Netns::new(&format!("{tag}-b"));
    felis.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", &bird.name,
    ]);
    felis.ip(&["addr", "add", &format!("{FELIS_V4}/24"), "dev", "veth0"]);
    felis.ip(&[
        "addr",
        "add",
        &format!("{FELIS_V6}/64"),
        "dev",
        "veth0",
        "nodad",
    ]);
    felis.ip(&["link", "set", "veth0", "up"]);
    bird.ip(&["addr", "add", &format!("{BIRD_V4}/24"), "dev", "veth1"]);
    bird.ip(&[
        "addr",
        "add",
        &format!("{BIRD_V6}/64"),
        "dev",
        "veth1",
        "nodad",
    ]);
    bird.ip(&["link", "set", "veth1", "up"]);
    Topology { felis, bird }
}

fn start_felis(ns: &Netns, passive: bool) -> Felis {
    start_felis_with(ns, passive, None, BIRD_ASN)
}

fn start_felis_with(ns: &Netns, passive: bool, password: Option<&str>, bird_asn: u32) -> Felis {
    let mut config = SpeakerConfig::new(Asn(64512), FELIS_V4.parse().unwrap());
    config.listen = Some(SocketAddr::new(FELIS_V4.parse().unwrap(), 179));
    let mut peer = PeerConfig::new(BIRD_V4.parse().unwrap(), Asn(bird_asn));
    peer.passive = passive;
    peer.connect_delay = Duration::from_millis(200);
    peer.connect_retry = Duration::from_secs(2);
    peer.next_hop_v6 = Some(FELIS_V6.parse().unwrap());
    peer.password = password.map(|p| Password(p.to_owned()));
    Felis::spawn(
        ns,
        config,
        vec![peer],
        vec![
            "10.65.0.0/26".parse().unwrap(),
            "2001:db8:65::/64".parse().unwrap(),
        ],
    )
}

fn wait_for_bird_routes(bird: &Bird) -> String {
    let start = Instant::now();
    loop {
        let routes = bird.birdc("show route protocol felis");
        if routes.contains("10.65.0.0/26") && routes.contains("2001:db8:65::/64") {
            return routes;
        }
        if start.elapsed() > WAIT {
            panic!(
                "BIRD never learned Felis's routes:\n{routes}\n{}",
                bird.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn learned(changes: &[RibChange]) -> Vec<(IpNet, Option<IpAddr>)> {
    let mut v: Vec<_> = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Added)
        .map(|c| (c.prefix, c.next_hop))
        .collect();
    v.sort();
    v
}

fn bird_routes() -> Vec<(IpNet, Option<IpAddr>)> {
    vec![
        (
            "10.200.1.0/24".parse().unwrap(),
            Some(BIRD_V4.parse().unwrap()),
        ),
        (
            "10.200.2.0/24".parse().unwrap(),
            Some(BIRD_V4.parse().unwrap()),
        ),
        (
            "2001:db8:200::/48".parse().unwrap(),
            Some(BIRD_V6.parse().unwrap()),
        ),
    ]
}

fn interop(tag: &str, felis_passive: bool, password: Option<&str>) {
    interop_as(tag, felis_passive, password, BIRD_ASN);
}

fn interop_as(tag: &str, felis_passive: bool, password: Option<&str>, bird_asn: u32) {
    if !preconditions() {
        return;
    }
    let rt = runtime();
    let topo = topology(tag);
    let dir = tempfile::tempdir().unwrap();
    let bgp_extra = password
        .map(|p| format!("password \"{p}\";"))
        .unwrap_or_default();
    let bird = start_bird_with(
        &topo.bird,
        dir.path(),
        felis_passive,
        "",
        &bgp_extra,
        bird_asn,
    );
    let mut felis = start_felis_with(&topo.felis, felis_passive, password, bird_asn);
    let changes = felis.changes(&rt, 3, WAIT);
    assert_eq!(
        learned(&changes),
        bird_routes(),
        "BIRD log:\n{}",
        bird.log()
    );
    let routes = wait_for_bird_routes(&bird);
    assert!(
        routes.contains(FELIS_V4),
        "IPv4 next hop is Felis:\n{routes}"
    );
    assert!(
        routes.contains(FELIS_V6),
        "IPv6 next hop is Felis:\n{routes}"
    );
    let status = felis.wait_status(&rt, "advertised both routes", |s| {
        s.counters.advertised == 2
    });
    assert_eq!(status.state, State::Established);
    assert_eq!(status.counters.accepted, 3);
    let protocols = bird.birdc("show protocols all felis");
    assert!(protocols.contains("Established"), "{protocols}");
    assert!(
        !routes.contains("unreachable"),
        "BIRD cannot resolve Felis's next hops:\n{routes}"
    );
}

#[test]
fn bird_interop_felis_active() {
    interop("act", false, None);
}

/// Calico's node-to-node mesh: iBGP in AS 64512, BIRD resolving next hops recursively.
#[test]
fn bird_interop_ibgp_mesh() {
    interop_as("ibgp", false, None, 64512);
}

#[test]
fn bird_interop_with_tcp_md5_password() {
    interop("md5", false, Some("calico-s3cret"));
}

#[test]
fn bird_interop_felis_passive() {
    interop("pas", true, None);
}

#[test]
fn bird_crash_keeps_routes_stale_until_it_returns() {
    bird_crash_and_return("gr", true);
}

/// RFC 4724 §4.2: a BIRD that comes back without graceful restart recovery (no `-R`) sends
/// no Forwarding State bit: its stale routes go as soon as the session is up, before it
/// re-announces them.
#[test]
fn bird_back_without_forwarding_bit_flushes_stale_routes_at_session_up() {
    bird_crash_and_return("grf", false);
}

fn bird_crash_and_return(tag: &str, forwarding_preserved: bool) {
    if !preconditions() {
        return;
    }
    let rt = runtime();
    let topo = topology(tag);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    std::fs::create_dir(&first).unwrap();
    let mut bird = start_bird(&topo.bird, &first, false);
    let mut felis = start_felis(&topo.felis, false);
    assert_eq!(
        learned(&felis.changes(&rt, 3, WAIT)),
        bird_routes(),
        "{}",
        bird.log()
    );

    // SIGKILL: the TCP session dies without a NOTIFICATION, as in a BIRD crash. BIRD
    // advertised graceful restart, so its routes stay (stale) instead of being withdrawn.
    drop(bird);
    let status = felis.wait_status(&rt, "marked routes stale", |s| s.counters.stale == 3);
    assert_ne!(status.state, State::Established);
    assert!(
        felis.changes(&rt, 1, Duration::from_secs(2)).is_empty(),
        "routes were withdrawn"
    );

    // BIRD comes back, re-announces and sends End-of-RIB: the routes are fresh again. With
    // `-R` its OPEN sets the F bit and the stale routes stay until then; without, they go
    // at session up and come back with the announcements.
    let second = dir.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let args: &[&str] = if forwarding_preserved { &["-R"] } else { &[] };
    bird = start_bird_args(&topo.bird, &second, false, "", "", BIRD_ASN, args);
    let status = felis.wait_status(&rt, "refreshed its routes", |s| {
        s.state == State::Established && s.counters.stale == 0 && s.counters.accepted == 3
    });
    assert_eq!(status.counters.received, 3);
    let changes = felis.changes(&rt, 10, Duration::from_secs(1));
    let removed: Vec<_> = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Removed)
        .collect();
    if forwarding_preserved {
        assert!(removed.is_empty(), "{removed:?}\n{}", bird.log());
    } else {
        assert_eq!(removed.len(), 3, "{changes:?}\n{}", bird.log());
        assert_eq!(learned(&changes), bird_routes(), "the routes came back");
    }
}

/// User+system CPU seconds of a process, from /proc/PID/stat.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|t| t.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// BIRD exports 1M static IPv4 routes; Felis learns them. Prints time and memory per route.
#[test]
#[ignore = "benchmark (~10 s): cargo test -p felis-bgp --release --test bird -- --ignored --nocapture"]
fn bird_sends_one_million_routes() {
    if !preconditions() {
        return;
    }
    let count: u32 = std::env::var("BGP_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = runtime();
    let topo = topology("1m");
    let dir = tempfile::tempdir().unwrap();
    let mut routes = String::with_capacity(count as usize * 40);
    for i in 0..count {
        let n = 0x6400_0000u32 + (i << 8);
        let [a, b, c, _] = n.to_be_bytes();
        routes.push_str(&format!("  route {a}.{b}.{c}.0/24 blackhole;\n"));
    }
    std::fs::write(
        dir.path().join("routes.conf"),
        format!("protocol static big {{\n  ipv4;\n{routes}}}\n"),
    )
    .unwrap();
    // The interop config plus an include of the big static protocol.
    let bird = start_bird_with(
        &topo.bird,
        dir.path(),
        false,
        "include \"routes.conf\";",
        "",
        BIRD_ASN,
    );
    let before = resident_bytes();
    let start = Instant::now();
    let mut felis = start_felis(&topo.felis, false);
    let mut added = 0usize;
    let mut first: Option<Duration> = None;
    while added < count as usize + 3 {
        let want = (count as usize + 3 - added).min(10_000);
        let got = felis.changes(&rt, want, WAIT);
        if got.is_empty() {
            panic!("stalled after {added} routes\n{}", bird.log());
        }
        first.get_or_insert(start.elapsed());
        let before = added / 100_000;
        added += got.iter().filter(|c| c.kind == ChangeKind::Added).count();
        if added / 100_000 != before {
            println!("{:.2}s: {added} routes", start.elapsed().as_secs_f64());
        }
    }
    let total = start.elapsed();
    let after = resident_bytes();
    println!(
        "cpu: bird {:.1}s, test process {:.1}s",
        cpu_seconds(&bird.child.id().to_string()),
        cpu_seconds("self")
    );
    let status = felis.status(&rt);
    println!(
        "felis learned {} routes from BIRD: {:.2}s after start ({:.2}s from first route), \
         rss delta {} MiB = {:.0} bytes/route",
        status.counters.accepted,
        total.as_secs_f64(),
        (total - first.unwrap_or_default()).as_secs_f64(),
        (after - before) / (1024 * 1024),
        (after - before) as f64 / f64::from(count),
    );
    assert_eq!(status.counters.accepted, count as usize + 3);
}
