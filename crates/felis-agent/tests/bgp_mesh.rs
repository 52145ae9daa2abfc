//! Two nodes' speakers, configured from their [`BgpDesired`] through [`plan`], form the
//! node-to-node mesh over loopback addresses (127.0.0.0/8 only, no root needed) and each
//! learns the other's block, which the calculation graph then routes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::IpAddr;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::SystemTime;

use felis_agent::bgp::BgpConfigFacts;
use felis_agent::bgp::PeerKind;
use felis_agent::bgp::SpeakerCommand;
use felis_agent::bgp::StatusReport;
use felis_agent::bgp::learned_update;
use felis_agent::bgp::plan;
use felis_agent::bgp::render_status;
use felis_agent::calc::BlockFacts;
use felis_agent::calc::CalcGraph;
use felis_agent::calc::NodeFacts;
use felis_agent::calc::PoolFacts;
use felis_agent::calc::RouteTarget;
use felis_agent::calc::Update;
use felis_api::ipam::EncapMode;
use felis_bgp::io::Speaker;
use felis_bgp::rib::RibChange;
use felis_bgp::session::State;
use ipnet::IpNet;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

/// A TCP port nothing listens on now (on every address), chosen by the kernel: ports derived
/// from the pid collided with other tests and with ephemeral ports.
fn free_port() -> u16 {
    std::net::TcpListener::bind("[::]:0")
        .or_else(|_| std::net::TcpListener::bind("0.0.0.0:0"))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn facts(a: IpAddr, b: IpAddr, port: u16) -> Vec<Update> {
    let node = |name: &str, address: IpAddr| {
        Update::NodeSet(NodeFacts {
            name: name.into(),
            ipv4: Some(IpNet::new(address, 8).unwrap()),
            ..NodeFacts::default()
        })
    };
    let block = |cidr: &str, node: &str| {
        Update::BlockSet(BlockFacts {
            cidr: cidr.parse().unwrap(),
            affinity: Some(node.into()),
            borrowed: Default::default(),
        })
    };
    vec![
        node("a", a),
        node("b", b),
        Update::PoolSet(PoolFacts {
            name: "p".into(),
            cidr: "10.244.0.0/16".parse().unwrap(),
            ipip_mode: EncapMode::Never,
            vxlan_mode: EncapMode::Never,
            nat_outgoing: false,
            disable_bgp_export: false,
        }),
        block("10.244.0.0/26", "a"),
        block("10.244.0.64/26", "b"),
        Update::BgpConfigSet(BgpConfigFacts {
            name: "default".into(),
            listen_port: Some(port),
            ..BgpConfigFacts::default()
        }),
    ]
}

/// Runs the plan's commands the way the agent's shell would; the listener binds the node's
/// own address (both nodes share this host's port space).
async fn start(graph: &CalcGraph, address: IpAddr) -> (Speaker, UnboundedReceiver<RibChange>) {
    let desired = graph.bgp_desired().expect("the node runs BGP");
    let mut speaker = None;
    for command in plan(None, Some(&desired)) {
        match command {
            SpeakerCommand::Start(mut config) => {
                config.listen = Some(SocketAddr::new(address, desired.listen_port));
                speaker = Some(Speaker::start(config).await.unwrap());
            }
            SpeakerCommand::AddPeer {
                mut config,
                password,
            } => {
                assert_eq!(password, None);
                config.connect_delay = Duration::ZERO;
                config.connect_retry = Duration::from_secs(1);
                let (s, _) = speaker.as_ref().expect("started first");
                s.add_peer(config).await.unwrap();
            }
            SpeakerCommand::Originate { prefix, next_hop } => {
                let (s, _) = speaker.as_ref().expect("started first");
                s.originate(prefix, Some(next_hop)).unwrap();
            }
            other => panic!("unexpected {other:?} from an empty start"),
        }
    }
    speaker.expect("plan starts the speaker")
}

async fn learn(graph: &mut CalcGraph, rx: &mut UnboundedReceiver<RibChange>, prefix: IpNet) {
    timeout(WAIT, async {
        loop {
            let change = rx.recv().await.expect("speaker stopped");
            graph.apply(learned_update(&change));
            if change.prefix == prefix {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{prefix} not learned in time"));
}

#[tokio::test]
async fn two_nodes_mesh_from_their_desired_config_and_learn_each_others_blocks() {
    let pid = std::process::id();
    let a_addr = IpAddr::from([127, (pid % 200) as u8 + 20, 77, 1]);
    let b_addr = IpAddr::from([127, (pid % 200) as u8 + 20, 77, 2]);
    let port = 20_000 + (pid % 20_000) as u16;
    let mut a = CalcGraph::new("a");
    let mut b = CalcGraph::new("b");
    for u in facts(a_addr, b_addr, port) {
        a.apply(u.clone());
        b.apply(u);
    }
    let (a_speaker, mut a_rx) = start(&a, a_addr).await;
    let (b_speaker, mut b_rx) = start(&b, b_addr).await;
    // Before BGP, IPAM already routes the remote block; BGP takes it over with the same route.
    let ipam_route = a.desired().routes[&"10.244.0.64/26".parse::<IpNet>().unwrap()].clone();

    learn(&mut a, &mut a_rx, "10.244.0.64/26".parse().unwrap()).await;
    learn(&mut b, &mut b_rx, "10.244.0.0/26".parse().unwrap()).await;
    assert_eq!(
        a.desired().routes[&"10.244.0.64/26".parse::<IpNet>().unwrap()],
        RouteTarget::Direct { via: b_addr }
    );
    assert_eq!(ipam_route, RouteTarget::Direct { via: b_addr });
    assert_eq!(
        b.desired().routes[&"10.244.0.0/26".parse::<IpNet>().unwrap()],
        RouteTarget::Direct { via: a_addr }
    );
    assert_eq!(
        b.desired().routes[&"10.244.0.64/26".parse::<IpNet>().unwrap()],
        RouteTarget::Blackhole,
        "its own block, learned back or not, stays a blackhole"
    );

    // `felis node status` of a.
    let statuses = a_speaker.peer_status().await.unwrap();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].state, State::Established);
    let kinds = a.bgp_desired().unwrap().peer_kinds();
    assert_eq!(kinds[&b_addr], PeerKind::Mesh);
    let text = render_status(&StatusReport::new(&statuses, &kinds, SystemTime::now()));
    assert!(
        text.contains(&format!("| {b_addr}")) && text.contains("| node-to-node mesh | up "),
        "{text}"
    );

    a_speaker.shutdown().await.unwrap();
    b_speaker.shutdown().await.unwrap();
}

#[tokio::test]
async fn bgp_runners_bring_up_the_mesh_apply_changes_and_report_status() {
    use felis_agent::bgp::BgpRunner;

    let pid = std::process::id();
    let a_addr = IpAddr::from([127, (pid % 200) as u8 + 20, 78, 1]);
    let b_addr = IpAddr::from([127, (pid % 200) as u8 + 20, 78, 2]);
    // Each node listens on its own port (`node.<name>` listenPort): they share this host.
    let port = free_port();
    let mut updates = facts(a_addr, b_addr, port);
    for (name, p) in [("node.a", free_port()), ("node.b", free_port())] {
        updates.push(Update::BgpConfigSet(BgpConfigFacts {
            name: name.into(),
            listen_port: Some(p),
            ..BgpConfigFacts::default()
        }));
    }
    let mut a = CalcGraph::new("a");
    let mut b = CalcGraph::new("b");
    for u in updates {
        a.apply(u.clone());
        b.apply(u);
    }
    let secrets = std::env::temp_dir();
    let mut a_runner = BgpRunner::new(&secrets);
    let mut b_runner = BgpRunner::new(&secrets);
    let mut a_done = a_runner.reconcile(a.bgp_desired().as_ref()).await;
    let mut b_done = b_runner.reconcile(b.bgp_desired().as_ref()).await;
    assert!(a_done.errors.is_empty(), "{:?}", a_done.errors);
    assert!(b_done.errors.is_empty(), "{:?}", b_done.errors);
    let mut a_rx = a_done.changes.take().expect("a started");
    let mut b_rx = b_done.changes.take().expect("b started");
    learn(&mut a, &mut a_rx, "10.244.0.64/26".parse().unwrap()).await;
    learn(&mut b, &mut b_rx, "10.244.0.0/26".parse().unwrap()).await;
    // Reconciling again with nothing new does nothing.
    let again = a_runner.reconcile(a.bgp_desired().as_ref()).await;
    assert!(again.errors.is_empty() && again.changes.is_none() && !again.stopped);

    // b claims a second block: a learns it through b's runner.
    let new_block = Update::BlockSet(BlockFacts {
        cidr: "10.244.1.0/26".parse().unwrap(),
        affinity: Some("b".into()),
        borrowed: Default::default(),
    });
    b.apply(new_block.clone());
    a.apply(new_block);
    let done = b_runner.reconcile(b.bgp_desired().as_ref()).await;
    assert!(done.errors.is_empty(), "{:?}", done.errors);
    learn(&mut a, &mut a_rx, "10.244.1.0/26".parse().unwrap()).await;
    assert_eq!(
        a.desired().routes[&"10.244.1.0/26".parse::<IpNet>().unwrap()],
        RouteTarget::Direct { via: b_addr }
    );

    let report = a_runner.status(SystemTime::now()).await;
    assert_eq!(report.peers.len(), 1);
    assert_eq!(report.peers[0].peer_type, "node-to-node mesh");
    assert!(report.peers[0].prefixes.accepted >= 2, "{report:?}");

    // BGP off for a: the speaker stops and the graph forgets what it learned.
    let stopped = a_runner.reconcile(None).await;
    assert!(stopped.stopped);
    a.apply(Update::LearnedRoutesCleared);
    assert!(b_runner.reconcile(None).await.stopped);
}
