//! Two in-process speakers peering over loopback addresses (127.0.0.0/8 only).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::IpAddr;
use std::net::SocketAddr;
use std::time::Duration;

use felis_bgp::Asn;
use felis_bgp::io::Password;
use felis_bgp::io::PeerConfig;
use felis_bgp::io::PeerStatus;
use felis_bgp::io::Speaker;
use felis_bgp::io::SpeakerConfig;
use felis_bgp::rib::ChangeKind;
use felis_bgp::rib::RibChange;
use felis_bgp::session::State;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

/// A loopback address unique to this test process and test, so parallel runs don't clash.
fn loopback(test: u8, host: u8) -> IpAddr {
    let pid = std::process::id();
    IpAddr::from([127, (pid % 200) as u8 + 20, test, host])
}

async fn speaker(addr: IpAddr, asn: u32) -> (Speaker, UnboundedReceiver<RibChange>) {
    let IpAddr::V4(router_id) = addr else {
        unreachable!()
    };
    let mut config = SpeakerConfig::new(Asn(asn), router_id);
    config.listen = Some(SocketAddr::new(addr, 0));
    Speaker::start(config).await.unwrap()
}

fn peer(local: IpAddr, remote: IpAddr, remote_speaker: &Speaker, asn: u32) -> PeerConfig {
    let mut p = PeerConfig::new(remote, Asn(asn));
    p.port = remote_speaker.local_addr().unwrap().port();
    p.local_address = Some(local);
    p.connect_delay = Duration::ZERO;
    p.connect_retry = Duration::from_secs(1);
    p
}

async fn wait_state(s: &Speaker, state: State) -> PeerStatus {
    timeout(WAIT, async {
        loop {
            let status = s.peer_status().await.unwrap();
            if let Some(p) = status.into_iter().find(|p| p.state == state) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no peer reached {state}"))
}

async fn next_change(rx: &mut UnboundedReceiver<RibChange>) -> RibChange {
    timeout(WAIT, rx.recv())
        .await
        .expect("no RibChange in time")
        .expect("channel closed")
}

#[tokio::test]
async fn ebgp_session_exchanges_routes_active_to_passive() {
    let (a_addr, b_addr) = (loopback(1, 1), loopback(1, 2));
    let (a, mut a_rx) = speaker(a_addr, 64512).await;
    let (b, mut b_rx) = speaker(b_addr, 64513).await;
    let mut pb = peer(b_addr, a_addr, &a, 64512);
    pb.passive = true;
    b.add_peer(pb).await.unwrap();
    a.add_peer(peer(a_addr, b_addr, &b, 64513)).await.unwrap();

    a.originate("10.65.1.0/26".parse().unwrap(), None).unwrap();
    b.originate("10.65.2.0/26".parse().unwrap(), None).unwrap();

    let got = next_change(&mut b_rx).await;
    assert_eq!(got.prefix, "10.65.1.0/26".parse().unwrap());
    assert_eq!(got.next_hop, Some(a_addr));
    assert_eq!(got.kind, ChangeKind::Added);
    assert_eq!(got.peer, a_addr);
    let got = next_change(&mut a_rx).await;
    assert_eq!(got.prefix, "10.65.2.0/26".parse().unwrap());
    assert_eq!(got.next_hop, Some(b_addr));

    let status = wait_state(&a, State::Established).await;
    assert_eq!(status.address, b_addr);
    assert_eq!(
        status.router_id,
        Some(match b_addr {
            IpAddr::V4(v) => v,
            IpAddr::V6(_) => unreachable!(),
        })
    );
    assert_eq!(status.counters.accepted, 1);
    assert_eq!(status.counters.advertised, 1);

    // Withdrawal reaches the peer.
    a.withdraw("10.65.1.0/26".parse().unwrap()).unwrap();
    let got = next_change(&mut b_rx).await;
    assert_eq!(got.kind, ChangeKind::Removed);

    // Removing the peer sends Cease; the other side drops the routes learned from it.
    b.remove_peer(a_addr).await.unwrap();
    let got = next_change(&mut a_rx).await;
    assert_eq!(
        (got.prefix, got.kind),
        ("10.65.2.0/26".parse().unwrap(), ChangeKind::Removed)
    );
    let status = a.peer_status().await.unwrap();
    assert!(
        status[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("Administrative shutdown")
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn both_sides_active_resolve_the_collision_and_establish() {
    let (a_addr, b_addr) = (loopback(2, 1), loopback(2, 2));
    let (a, _a_rx) = speaker(a_addr, 64512).await;
    let (b, mut b_rx) = speaker(b_addr, 64512).await;
    a.add_peer(peer(a_addr, b_addr, &b, 64512)).await.unwrap();
    b.add_peer(peer(b_addr, a_addr, &a, 64512)).await.unwrap();
    a.originate("10.65.3.0/26".parse().unwrap(), None).unwrap();
    let got = next_change(&mut b_rx).await;
    assert_eq!(got.prefix, "10.65.3.0/26".parse().unwrap());
    assert_eq!(got.attrs.path.local_pref, Some(100));
    wait_state(&a, State::Established).await;
    wait_state(&b, State::Established).await;
}

/// Both sides connect at the same moment (same connect delay): the connection the higher
/// identifier initiated survives at once, instead of each side dropping its own attempt for
/// the other's and both ending up with nothing until the next retry.
#[tokio::test]
async fn simultaneous_connects_keep_one_connection_without_waiting_for_a_retry() {
    let (a_addr, b_addr) = (loopback(7, 1), loopback(7, 2));
    let (a, _a_rx) = speaker(a_addr, 64512).await;
    let (b, _b_rx) = speaker(b_addr, 64512).await;
    let mut pa = peer(a_addr, b_addr, &b, 64512);
    let mut pb = peer(b_addr, a_addr, &a, 64512);
    for p in [&mut pa, &mut pb] {
        p.connect_delay = Duration::from_millis(300);
        p.connect_retry = Duration::from_secs(10);
    }
    let start = std::time::Instant::now();
    let (ra, rb) = tokio::join!(a.add_peer(pa), b.add_peer(pb));
    ra.unwrap();
    rb.unwrap();
    wait_state(&a, State::Established).await;
    wait_state(&b, State::Established).await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}: the collision cost a retry",
        start.elapsed()
    );
}

#[tokio::test]
async fn wrong_peer_as_is_refused_with_bad_peer_as() {
    let (a_addr, b_addr) = (loopback(3, 1), loopback(3, 2));
    let (a, _a_rx) = speaker(a_addr, 64512).await;
    let (b, _b_rx) = speaker(b_addr, 64513).await;
    let mut pb = peer(b_addr, a_addr, &a, 65000);
    pb.passive = true;
    b.add_peer(pb).await.unwrap();
    a.add_peer(peer(a_addr, b_addr, &b, 64513)).await.unwrap();
    timeout(WAIT, async {
        loop {
            let s = a.peer_status().await.unwrap();
            if s[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("Bad peer AS"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("A never saw Bad peer AS");
}

#[tokio::test]
async fn duplicate_and_unknown_peers_are_errors() {
    let addr = loopback(4, 1);
    let (a, _rx) = speaker(addr, 64512).await;
    let p = PeerConfig::new(loopback(4, 2), Asn(1));
    a.add_peer(p.clone()).await.unwrap();
    assert!(matches!(
        a.add_peer(p).await,
        Err(felis_bgp::Error::PeerExists(_))
    ));
    assert!(matches!(
        a.remove_peer(loopback(4, 3)).await,
        Err(felis_bgp::Error::PeerNotFound(_))
    ));
}

#[tokio::test]
async fn tcp_md5_sessions_need_matching_passwords() {
    let (a_addr, b_addr) = (loopback(5, 1), loopback(5, 2));
    let (a, _a_rx) = speaker(a_addr, 64512).await;
    let (b, mut b_rx) = speaker(b_addr, 64513).await;
    let mut pb = peer(b_addr, a_addr, &a, 64512);
    pb.passive = true;
    pb.password = Some(Password("s3cret".into()));
    b.add_peer(pb).await.unwrap();
    let mut pa = peer(a_addr, b_addr, &b, 64513);
    pa.password = Some(Password("s3cret".into()));
    assert!(
        !format!("{pa:?}").contains("s3cret"),
        "password must not appear in Debug"
    );
    a.add_peer(pa).await.unwrap();
    a.originate("10.65.5.0/26".parse().unwrap(), None).unwrap();
    assert_eq!(
        next_change(&mut b_rx).await.prefix,
        "10.65.5.0/26".parse().unwrap()
    );

    // A third speaker with the wrong password never gets a session.
    let c_addr = loopback(5, 3);
    let (c, _c_rx) = speaker(c_addr, 64514).await;
    let mut pc = peer(c_addr, b_addr, &b, 64513);
    pc.password = Some(Password("wrong".into()));
    c.add_peer(pc).await.unwrap();
    let mut pb2 = peer(b_addr, c_addr, &c, 64514);
    pb2.passive = true;
    pb2.password = Some(Password("right".into()));
    b.add_peer(pb2).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = c.peer_status().await.unwrap();
    assert_ne!(status[0].state, State::Established);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tables_flow_both_ways_at_once() {
    const N: u32 = 50_000;
    let (a_addr, b_addr) = (loopback(6, 1), loopback(6, 2));
    let (a, mut a_rx) = speaker(a_addr, 64512).await;
    let (b, mut b_rx) = speaker(b_addr, 64513).await;
    for i in 0..N {
        let p = |base: u32| {
            ipnet::IpNet::V4(ipnet::Ipv4Net::new((base + (i << 8)).into(), 24).unwrap())
        };
        a.originate(p(0x0a00_0000), None).unwrap();
        b.originate(p(0x6400_0000), None).unwrap();
    }
    let mut pb = peer(b_addr, a_addr, &a, 64512);
    pb.passive = true;
    b.add_peer(pb).await.unwrap();
    a.add_peer(peer(a_addr, b_addr, &b, 64513)).await.unwrap();
    for rx in [&mut a_rx, &mut b_rx] {
        let mut n = 0;
        while n < N {
            let c = timeout(Duration::from_secs(60), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(c.kind, ChangeKind::Added);
            n += 1;
        }
    }
    let status = wait_state(&a, State::Established).await;
    assert_eq!(status.counters.accepted, N as usize);
    assert_eq!(status.counters.advertised, N as usize);
}
