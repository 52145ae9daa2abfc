use std::sync::Arc;
use std::time::SystemTime;

use felis_api::ipam::EncapMode;
use felis_bgp::rib::RouteAttrs;
use proptest::prelude::*;

use super::*;
use crate::calc::CalcGraph;
use crate::calc::EndpointFacts;
use crate::calc::RouteTarget;
use crate::calc::Vtep;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn node(name: &str, address: &str) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        ipv4: Some(net(address)),
        ..NodeFacts::default()
    }
}

fn labelled(mut n: NodeFacts, labels: &[(&str, &str)]) -> NodeFacts {
    n.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    n
}

fn pool(cidr: &str, ipip: EncapMode, vxlan: EncapMode) -> Update {
    Update::PoolSet(PoolFacts {
        name: format!("pool-{cidr}"),
        cidr: net(cidr),
        ipip_mode: ipip,
        vxlan_mode: vxlan,
        nat_outgoing: false,
        disable_bgp_export: false,
    })
}

fn block(cidr: &str, affinity: &str, borrowed: &[(&str, &str)]) -> Update {
    Update::BlockSet(BlockFacts {
        cidr: net(cidr),
        affinity: Some(affinity.into()),
        borrowed: borrowed
            .iter()
            .map(|(a, n)| (ip(a), n.to_string()))
            .collect(),
    })
}

fn config(name: &str, f: impl FnOnce(&mut BgpConfigFacts)) -> Update {
    let mut c = BgpConfigFacts {
        name: name.into(),
        ..BgpConfigFacts::default()
    };
    f(&mut c);
    Update::BgpConfigSet(c)
}

fn peer(name: &str, f: impl FnOnce(&mut BgpPeerFacts)) -> Update {
    let mut p = BgpPeerFacts {
        name: name.into(),
        use_node_ip: true,
        ..BgpPeerFacts::default()
    };
    f(&mut p);
    Update::BgpPeerSet(p)
}

fn graph(local: &str, updates: impl IntoIterator<Item = Update>) -> CalcGraph {
    let mut g = CalcGraph::new(local);
    for u in updates {
        g.apply(u);
    }
    g
}

/// Three nodes: a = 10.0.0.9, b = 10.0.0.10, c = 10.0.0.2, one pool, a block each.
fn three_nodes() -> Vec<Update> {
    vec![
        Update::NodeSet(node("a", "10.0.0.9/24")),
        Update::NodeSet(node("b", "10.0.0.10/24")),
        Update::NodeSet(node("c", "10.0.0.2/24")),
        pool("10.244.0.0/16", EncapMode::Never, EncapMode::Never),
        block("10.244.0.0/26", "a", &[]),
        block("10.244.0.64/26", "b", &[]),
        block("10.244.0.128/26", "c", &[]),
    ]
}

fn desired_of(local: &str, updates: impl IntoIterator<Item = Update>) -> BgpDesired {
    graph(local, updates).bgp_desired().unwrap()
}

#[test]
fn mesh_peers_with_every_other_node_on_calico_defaults() {
    let d = desired_of("a", three_nodes());
    assert_eq!(d.local_asn, Asn(64512));
    assert_eq!(d.router_id, "10.0.0.9".parse::<Ipv4Addr>().unwrap());
    assert_eq!(d.listen_port, 179);
    assert_eq!(d.cluster_id, None);
    assert_eq!(
        d.peers.keys().copied().collect::<Vec<_>>(),
        vec![ip("10.0.0.2"), ip("10.0.0.10")]
    );
    for p in d.peers.values() {
        assert_eq!(p.kind, PeerKind::Mesh);
        assert_eq!(p.asn, Asn(64512));
        assert_eq!(p.port, 179);
        assert_eq!(p.local_address, Some(ip("10.0.0.9")));
        assert_eq!(p.max_restart_time, 120);
        assert!(!p.rr_client);
    }
    assert!(d.problems.is_empty(), "{:?}", d.problems);
}

#[test]
fn the_node_whose_peer_ip_is_greater_as_a_string_is_passive() {
    // Numerically 10.0.0.10 > 10.0.0.9, but as strings "10.0.0.9" > "10.0.0.10".
    let a = desired_of("a", three_nodes()); // 10.0.0.9
    let b = desired_of("b", three_nodes()); // 10.0.0.10
    assert!(!a.peers[&ip("10.0.0.10")].passive, "a initiates toward b");
    assert!(b.peers[&ip("10.0.0.9")].passive, "b waits for a");
    // "10.0.0.9" > "10.0.0.2": c is passive toward a, a initiates.
    let c = desired_of("c", three_nodes());
    assert!(c.peers[&ip("10.0.0.9")].passive);
    assert!(!a.peers[&ip("10.0.0.2")].passive);
    // Every pair has exactly one passive side.
    for (x, y) in [("a", "b"), ("a", "c"), ("b", "c")] {
        let dx = desired_of(x, three_nodes());
        let dy = desired_of(y, three_nodes());
        let addr = |d: &BgpDesired| IpAddr::V4(d.router_id);
        assert_ne!(dx.peers[&addr(&dy)].passive, dy.peers[&addr(&dx)].passive);
    }
}

#[test]
fn mesh_is_off_when_disabled_and_asn_and_ports_follow_configuration() {
    let mut updates = three_nodes();
    updates.push(config("default", |c| c.node_to_node_mesh = Some(false)));
    assert!(desired_of("a", updates).peers.is_empty());

    let mut updates = three_nodes();
    updates.push(config("default", |c| {
        c.asn = Some(Asn(65000));
        c.listen_port = Some(1179);
    }));
    updates.push(config("node.b", |c| c.listen_port = Some(2179)));
    let mut b = node("b", "10.0.0.10/24");
    b.bgp.asn = Some(Asn(65010));
    updates.push(Update::NodeSet(b));
    let a = desired_of("a", updates.clone());
    assert_eq!(a.local_asn, Asn(65000));
    assert_eq!(a.listen_port, 1179);
    assert_eq!(a.peers[&ip("10.0.0.10")].asn, Asn(65010));
    assert_eq!(a.peers[&ip("10.0.0.10")].port, 2179, "b listens on 2179");
    assert_eq!(a.peers[&ip("10.0.0.2")].port, 1179);
    let b = desired_of("b", updates);
    assert_eq!(b.local_asn, Asn(65010));
    assert_eq!(b.listen_port, 2179);
}

#[test]
fn a_node_without_an_ipv4_address_runs_no_bgp() {
    let g = graph(
        "a",
        [Update::NodeSet(NodeFacts {
            name: "a".into(),
            ..NodeFacts::default()
        })],
    );
    assert_eq!(g.bgp_desired(), None);
    assert_eq!(CalcGraph::new("a").bgp_desired(), None);
}

#[test]
fn bgp_peers_apply_globally_by_node_name_or_by_node_selector() {
    let mut updates = three_nodes();
    updates.push(Update::NodeSet(labelled(
        node("a", "10.0.0.9/24"),
        &[("rack", "r1")],
    )));
    updates.push(config("default", |c| c.node_to_node_mesh = Some(false)));
    updates.push(peer("global-tor", |p| {
        p.peer_ip = Some(ip("192.168.0.1"));
        p.asn = Some(Asn(65100));
    }));
    updates.push(peer("only-a", |p| {
        p.node = "a".into();
        p.peer_ip = Some(ip("192.168.0.2"));
        p.peer_port = Some(1179);
        p.asn = Some(Asn(65101));
        p.next_hop_mode = NextHopMode::Keep;
        p.password = Some(SecretRef {
            name: "bgp".into(),
            key: "tor".into(),
            optional: false,
        });
        p.max_restart_time = Some(30);
    }));
    updates.push(peer("rack-r1", |p| {
        p.node_selector = "rack == 'r1'".into();
        p.peer_ip = Some(ip("192.168.0.3"));
        p.asn = Some(Asn(65102));
        p.use_node_ip = false;
    }));
    let a = desired_of("a", updates.clone());
    assert_eq!(a.peers.len(), 3);
    let global = &a.peers[&ip("192.168.0.1")];
    assert_eq!(
        (global.kind, global.asn, global.passive),
        (PeerKind::Global, Asn(65100), false)
    );
    let only_a = &a.peers[&ip("192.168.0.2")];
    assert_eq!(only_a.kind, PeerKind::Node);
    assert_eq!(only_a.port, 1179);
    assert_eq!(only_a.next_hop_mode, NextHopMode::Keep);
    assert_eq!(only_a.password.as_ref().unwrap().key, "tor");
    assert_eq!(only_a.max_restart_time, 30);
    assert_eq!(only_a.source.as_deref(), Some("only-a"));
    let rack = &a.peers[&ip("192.168.0.3")];
    assert_eq!(rack.kind, PeerKind::Node);
    assert_eq!(rack.local_address, None, "sourceAddress: None");
    // b has neither the name nor the label: only the global peer.
    let b = desired_of("b", updates);
    assert_eq!(
        b.peers.keys().copied().collect::<Vec<_>>(),
        vec![ip("192.168.0.1")]
    );
}

#[test]
fn nodes_never_peer_with_themselves() {
    let mut updates = three_nodes();
    updates.push(config("default", |c| c.node_to_node_mesh = Some(false)));
    updates.push(peer("to-a", |p| {
        p.peer_ip = Some(ip("10.0.0.9"));
        p.asn = Some(Asn(64512));
    }));
    updates.push(peer("all-nodes", |p| p.peer_selector = "all()".into()));
    let a = desired_of("a", updates.clone());
    assert!(!a.peers.contains_key(&ip("10.0.0.9")));
    assert_eq!(a.peers.len(), 2, "b and c through the peerSelector");
    let b = desired_of("b", updates);
    assert!(!b.peers.contains_key(&ip("10.0.0.10")));
    assert_eq!(
        b.peers[&ip("10.0.0.9")].kind,
        PeerKind::Global,
        "BGPPeer beats mesh"
    );
}

#[test]
fn an_explicit_bgp_peer_replaces_the_mesh_peering_of_the_same_address() {
    let mut updates = three_nodes();
    updates.push(peer("to-b", |p| {
        p.node = "a".into();
        p.peer_ip = Some(ip("10.0.0.10"));
        p.asn = Some(Asn(64512));
    }));
    let a = desired_of("a", updates);
    assert_eq!(a.peers[&ip("10.0.0.10")].kind, PeerKind::Node);
    assert_eq!(a.peers[&ip("10.0.0.10")].node.as_deref(), Some("b"));
    assert_eq!(a.peers[&ip("10.0.0.2")].kind, PeerKind::Mesh);
}

/// Calico's route reflector recipe: mesh off; `rr` nodes carry a cluster id; every node peers
/// with the reflectors, and the reflectors with every node.
fn reflector_cluster() -> Vec<Update> {
    let mut rr = labelled(node("rr", "10.0.0.100/24"), &[("route-reflector", "true")]);
    rr.bgp.route_reflector_cluster_id = Some("244.0.0.1".into());
    let mut rr2 = labelled(node("rr2", "10.0.0.101/24"), &[("route-reflector", "true")]);
    rr2.bgp.route_reflector_cluster_id = Some("244.0.0.1".into());
    let mut updates = three_nodes();
    updates.extend([
        Update::NodeSet(rr),
        Update::NodeSet(rr2),
        config("default", |c| c.node_to_node_mesh = Some(false)),
        peer("peer-with-rrs", |p| {
            p.peer_selector = "route-reflector == 'true'".into();
        }),
        peer("rrs-with-all", |p| {
            p.node_selector = "route-reflector == 'true'".into();
            p.peer_selector = "all()".into();
        }),
    ]);
    updates
}

#[test]
fn a_route_reflector_treats_non_reflector_peers_as_clients() {
    let rr = desired_of("rr", reflector_cluster());
    assert_eq!(rr.cluster_id, Some("244.0.0.1".parse().unwrap()));
    assert_eq!(rr.speaker_config().cluster_id, rr.cluster_id);
    assert_eq!(rr.peers.len(), 4, "a, b, c and rr2");
    for client in ["10.0.0.9", "10.0.0.10", "10.0.0.2"] {
        assert!(rr.peers[&ip(client)].rr_client, "{client}");
        assert_eq!(rr.peers[&ip(client)].kind, PeerKind::Node);
    }
    assert!(!rr.peers[&ip("10.0.0.101")].rr_client, "another reflector");

    let a = desired_of("a", reflector_cluster());
    assert_eq!(a.cluster_id, None);
    assert_eq!(
        a.peers.keys().copied().collect::<Vec<_>>(),
        vec![ip("10.0.0.100"), ip("10.0.0.101")]
    );
    assert!(
        a.peers
            .values()
            .all(|p| !p.rr_client && p.kind == PeerKind::Global)
    );
    // "10.0.0.9" > "10.0.0.100" as strings: the reflector waits, a initiates.
    assert!(!a.peers[&ip("10.0.0.100")].passive);
    assert!(rr.peers[&ip("10.0.0.9")].passive);
}

#[test]
fn a_bad_cluster_id_or_selector_is_a_problem_not_a_failure() {
    let mut rr = node("a", "10.0.0.9/24");
    rr.bgp.route_reflector_cluster_id = Some("not-an-ip".into());
    let mut updates = three_nodes();
    updates.push(Update::NodeSet(rr));
    updates.push(peer("broken", |p| p.peer_selector = "a ==".into()));
    updates.push(peer("no-asn", |p| p.peer_ip = Some(ip("192.168.0.1"))));
    let d = desired_of("a", updates);
    assert_eq!(d.cluster_id, None);
    assert_eq!(d.problems.len(), 3, "{:?}", d.problems);
    assert_eq!(d.peers.len(), 2, "the mesh still stands");
}

#[test]
fn exports_are_affine_blocks_and_addresses_held_in_other_nodes_blocks_only() {
    let mut updates = three_nodes();
    updates.extend([
        // a holds 10.244.0.70 in b's block; b holds 10.244.0.5 in a's block.
        block("10.244.0.64/26", "b", &[("10.244.0.70", "a")]),
        block("10.244.0.0/26", "a", &[("10.244.0.5", "b")]),
        // A pool that is not exported, with a block of a's.
        Update::PoolSet(PoolFacts {
            name: "private".into(),
            cidr: net("10.99.0.0/16"),
            ipip_mode: EncapMode::Never,
            vxlan_mode: EncapMode::Never,
            nat_outgoing: false,
            disable_bgp_export: true,
        }),
        block("10.99.0.0/26", "a", &[]),
        // A block outside every pool.
        block("172.16.0.0/26", "a", &[]),
    ]);
    let a = desired_of("a", updates);
    assert_eq!(
        a.exports.keys().copied().collect::<Vec<_>>(),
        vec![net("10.244.0.0/26"), net("10.244.0.70/32")]
    );
    assert!(a.exports.values().all(|e| e.next_hop == ip("10.0.0.9")));
}

#[test]
fn service_ranges_are_exported_and_prefix_advertisements_attach_communities() {
    let mut updates = three_nodes();
    updates.push(config("default", |c| {
        c.service_cluster_ips = vec![net("10.96.0.0/12")];
        c.communities = [("mine".to_string(), "65000:100".to_string())].into();
        c.prefix_advertisements = vec![
            (
                net("10.244.0.0/16"),
                vec!["mine".into(), "65000:1:2".into()],
            ),
            (net("10.96.0.0/12"), vec!["bogus".into()]),
        ];
    }));
    let a = desired_of("a", updates);
    assert_eq!(
        a.exports[&net("10.244.0.0/26")].communities,
        [
            Community::Standard(65000, 100),
            Community::Large(65000, 1, 2)
        ]
        .into()
    );
    assert!(a.exports[&net("10.96.0.0/12")].communities.is_empty());
    assert_eq!(a.problems.len(), 1, "{:?}", a.problems);
}

#[test]
fn ipv6_peers_and_exports_need_ipv6_on_both_ends() {
    let mut a = node("a", "10.0.0.9/24");
    a.ipv6 = Some(net("fd00::9/64"));
    let mut b = node("b", "10.0.0.10/24");
    b.ipv6 = Some(net("fd00::10/64"));
    let d = desired_of(
        "a",
        [
            Update::NodeSet(a),
            Update::NodeSet(b),
            Update::NodeSet(node("c", "10.0.0.2/24")),
            pool("fd00:244::/64", EncapMode::Never, EncapMode::Never),
            block("fd00:244::/122", "a", &[]),
        ],
    );
    assert_eq!(d.peers.len(), 3, "b twice, c over IPv4 only");
    assert_eq!(d.peers[&ip("fd00::10")].local_address, Some(ip("fd00::9")));
    assert_eq!(d.exports[&net("fd00:244::/122")].next_hop, ip("fd00::9"));
}

#[test]
fn plan_starts_then_applies_only_the_difference() {
    let before = desired_of("a", three_nodes());
    let start = plan(None, Some(&before));
    assert_eq!(start[0], SpeakerCommand::Start(before.speaker_config()));
    assert_eq!(
        start
            .iter()
            .filter(|c| matches!(c, SpeakerCommand::AddPeer { .. }))
            .count(),
        2
    );
    // Exports before peers: a session that comes up at once already has them.
    assert_eq!(
        start.get(1),
        Some(&SpeakerCommand::Originate {
            prefix: net("10.244.0.0/26"),
            next_hop: ip("10.0.0.9")
        })
    );
    assert!(matches!(start.last(), Some(SpeakerCommand::AddPeer { .. })));
    assert!(plan(Some(&before), Some(&before)).is_empty());

    // c leaves, d arrives, b changes AS, a gains a block.
    let mut updates = three_nodes();
    updates.extend([
        Update::NodeDeleted("c".into()),
        Update::NodeSet(node("d", "10.0.0.3/24")),
        Update::NodeSet(NodeFacts {
            bgp: BgpNodeFacts {
                asn: Some(Asn(65010)),
                route_reflector_cluster_id: None,
            },
            ..node("b", "10.0.0.10/24")
        }),
        block("10.244.1.0/26", "a", &[]),
        Update::BlockDeleted(net("10.244.0.0/26")),
    ]);
    let after = desired_of("a", updates);
    let commands = plan(Some(&before), Some(&after));
    let kinds: Vec<String> = commands
        .iter()
        .map(|c| match c {
            SpeakerCommand::RemovePeer(a) => format!("remove {a}"),
            SpeakerCommand::AddPeer { config, .. } => format!("add {}", config.address),
            SpeakerCommand::Withdraw(p) => format!("withdraw {p}"),
            SpeakerCommand::Originate { prefix, .. } => format!("originate {prefix}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "remove 10.0.0.2",
            "remove 10.0.0.10",
            "withdraw 10.244.0.0/26",
            "originate 10.244.1.0/26",
            "add 10.0.0.3",
            "add 10.0.0.10",
        ]
    );
}

#[test]
fn plan_restarts_the_speaker_when_its_identity_changes_and_stops_it_when_bgp_goes() {
    let before = desired_of("a", three_nodes());
    let mut updates = three_nodes();
    updates.push(config("default", |c| c.asn = Some(Asn(65000))));
    let after = desired_of("a", updates);
    let commands = plan(Some(&before), Some(&after));
    assert_eq!(commands[0], SpeakerCommand::Stop);
    assert_eq!(commands[1], SpeakerCommand::Start(after.speaker_config()));
    assert_eq!(
        commands.len(),
        2 + 2 + 1,
        "stop, start, two peers, one export"
    );
    assert_eq!(plan(Some(&before), None), vec![SpeakerCommand::Stop]);
    assert!(plan(None, None).is_empty());
}

#[test]
fn peer_config_carries_the_desired_settings_but_no_password() {
    let mut updates = three_nodes();
    updates.push(config("default", |c| {
        c.node_mesh_password = Some(SecretRef {
            name: "bgp".into(),
            key: "mesh".into(),
            optional: true,
        });
    }));
    let d = desired_of("b", updates);
    let address = ip("10.0.0.9");
    let config = d.peer_config(address, &d.peers[&address]);
    assert!(config.passive);
    assert_eq!(config.asn, Asn(64512));
    assert_eq!(config.next_hop_v4, Some("10.0.0.10".parse().unwrap()));
    assert_eq!(config.local_address, Some(ip("10.0.0.10")));
    assert_eq!(config.password, None);
    let Some(SpeakerCommand::AddPeer { password, .. }) = plan(None, Some(&d))
        .into_iter()
        .find(|c| matches!(c, SpeakerCommand::AddPeer { .. }))
    else {
        panic!("no peer added")
    };
    assert_eq!(password.unwrap().key, "mesh");
}

fn change(prefix: &str, next_hop: Option<&str>, kind: ChangeKind) -> RibChange {
    RibChange {
        prefix: net(prefix),
        next_hop: next_hop.map(ip),
        attrs: Arc::new(RouteAttrs {
            next_hop: next_hop.map(ip),
            link_local: None,
            path: Default::default(),
        }),
        peer: ip("10.0.0.10"),
        kind,
    }
}

#[test]
fn rib_changes_become_learned_route_facts() {
    assert_eq!(
        learned_update(&change(
            "10.244.0.64/26",
            Some("10.0.0.10"),
            ChangeKind::Added
        )),
        Update::LearnedRoute(LearnedRoute {
            prefix: net("10.244.0.64/26"),
            next_hop: ip("10.0.0.10"),
            peer: ip("10.0.0.10"),
        })
    );
    assert_eq!(
        learned_update(&change("10.244.0.64/26", None, ChangeKind::Removed)),
        Update::LearnedRouteWithdrawn(net("10.244.0.64/26"))
    );
}

fn learned(prefix: &str, next_hop: &str) -> Update {
    Update::LearnedRoute(LearnedRoute {
        prefix: net(prefix),
        next_hop: ip(next_hop),
        peer: ip(next_hop),
    })
}

/// a and b share 10.0.1.0/24, c is in 10.0.2.0/24; every node has a VTEP.
fn two_subnets(ipip: EncapMode, vxlan: EncapMode) -> Vec<Update> {
    let with_vtep = |name: &str, address: &str, vtep: &str| {
        Update::NodeSet(NodeFacts {
            vxlan_v4: Some(Vtep {
                address: ip(vtep),
                mac: "66:00:00:00:00:01".into(),
            }),
            ..node(name, address)
        })
    };
    vec![
        with_vtep("a", "10.0.1.10/24", "10.244.0.0"),
        with_vtep("b", "10.0.1.11/24", "10.244.0.64"),
        with_vtep("c", "10.0.2.12/24", "10.244.0.128"),
        pool("10.244.0.0/16", ipip, vxlan),
        block("10.244.0.0/26", "a", &[]),
    ]
}

#[test]
fn learned_routes_take_the_device_the_pool_mode_gives() {
    for (ipip, vxlan, same, across) in [
        (
            EncapMode::Never,
            EncapMode::Never,
            RouteTarget::Direct {
                via: ip("10.0.1.11"),
            },
            RouteTarget::Direct {
                via: ip("10.0.2.12"),
            },
        ),
        (
            EncapMode::CrossSubnet,
            EncapMode::Never,
            RouteTarget::Direct {
                via: ip("10.0.1.11"),
            },
            RouteTarget::Ipip {
                via: ip("10.0.2.12"),
            },
        ),
        (
            EncapMode::Always,
            EncapMode::Never,
            RouteTarget::Ipip {
                via: ip("10.0.1.11"),
            },
            RouteTarget::Ipip {
                via: ip("10.0.2.12"),
            },
        ),
        (
            EncapMode::Never,
            EncapMode::CrossSubnet,
            RouteTarget::Direct {
                via: ip("10.0.1.11"),
            },
            RouteTarget::Vxlan {
                via: ip("10.244.0.128"),
            },
        ),
    ] {
        let mut updates = two_subnets(ipip, vxlan);
        updates.push(learned("10.244.0.64/26", "10.0.1.11"));
        updates.push(learned("10.244.0.128/26", "10.0.2.12"));
        let routes = graph("a", updates).desired().routes;
        assert_eq!(routes[&net("10.244.0.64/26")], same, "{ipip:?}/{vxlan:?}");
        assert_eq!(
            routes[&net("10.244.0.128/26")],
            across,
            "{ipip:?}/{vxlan:?}"
        );
    }
}

#[test]
fn a_learned_block_is_routed_by_bgp_and_ipam_routes_are_the_fallback() {
    let mut updates = two_subnets(EncapMode::Never, EncapMode::Never);
    // IPAM says b's block is b's; BGP (through a reflector keeping next hops) says via c.
    updates.push(block("10.244.0.64/26", "b", &[]));
    let ipam_only = graph("a", updates.clone()).desired();
    assert_eq!(
        ipam_only.routes[&net("10.244.0.64/26")],
        RouteTarget::Direct {
            via: ip("10.0.1.11")
        }
    );
    updates.push(learned("10.244.0.64/26", "10.0.2.12"));
    let mut g = graph("a", updates);
    assert_eq!(
        g.desired().routes[&net("10.244.0.64/26")],
        RouteTarget::Direct {
            via: ip("10.0.2.12")
        }
    );
    g.apply(Update::LearnedRouteWithdrawn(net("10.244.0.64/26")));
    assert_eq!(g.desired(), ipam_only);
}

#[test]
fn learned_routes_never_replace_local_blackholes_workloads_or_point_at_ourselves() {
    let mut updates = two_subnets(EncapMode::Never, EncapMode::Never);
    updates.extend([
        learned("10.244.0.0/26", "10.0.1.11"), // our own block, learned back
        learned("10.244.0.5/32", "10.0.1.11"), // a local workload's address
        learned("10.244.9.0/26", "10.0.1.10"), // next hop is ourselves
        learned("10.244.0.9/32", "10.0.1.11"), // b borrowed from our block: fine
        learned("192.168.50.0/24", "10.0.1.11"), // outside every pool: direct
        Update::EndpointSet(EndpointFacts {
            key: "ns/pod".into(),
            interface: "cali0123456789a".into(),
            addresses: vec![net("10.244.0.5/32")],
        }),
    ]);
    let routes = graph("a", updates).desired().routes;
    assert_eq!(routes[&net("10.244.0.0/26")], RouteTarget::Blackhole);
    assert_eq!(
        routes[&net("10.244.0.5/32")],
        RouteTarget::Workload {
            interface: "cali0123456789a".into()
        }
    );
    assert!(!routes.contains_key(&net("10.244.9.0/26")));
    assert_eq!(
        routes[&net("10.244.0.9/32")],
        RouteTarget::Direct {
            via: ip("10.0.1.11")
        }
    );
    assert_eq!(
        routes[&net("192.168.50.0/24")],
        RouteTarget::Direct {
            via: ip("10.0.1.11")
        }
    );
}

fn arb_update() -> impl Strategy<Value = Update> {
    let names = prop::sample::select(vec!["a", "b", "c"]);
    let addresses = prop::sample::select(vec!["10.0.1.9", "10.0.1.10", "10.0.2.11"]);
    let prefixes = prop::sample::select(vec![
        "10.244.0.0/26",
        "10.244.0.64/26",
        "10.244.0.128/26",
        "10.244.0.70/32",
    ]);
    prop_oneof![
        (
            names.clone(),
            addresses.clone(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(n, a, rr, label)| {
                let mut f = node(n, &format!("{a}/24"));
                if rr {
                    f.bgp.route_reflector_cluster_id = Some("244.0.0.1".into());
                }
                if label {
                    f.labels = [("rack".to_string(), "r1".to_string())].into();
                }
                f.vxlan_v4 = Some(Vtep {
                    address: ip(&format!("10.244.0.{}", 64 * (n.as_bytes()[0] - b'a'))),
                    mac: "66:00:00:00:00:01".into(),
                });
                Update::NodeSet(f)
            }),
        names.clone().prop_map(|n| Update::NodeDeleted(n.into())),
        (prefixes.clone(), names.clone(), names.clone()).prop_map(|(p, n, holder)| {
            block(
                &format!("{}/26", net(p).trunc().addr()).replace(".70/", ".64/"),
                n,
                &[("10.244.0.70", holder)],
            )
        }),
        (0u8..3, any::<bool>()).prop_map(|(m, export)| {
            let mode = [EncapMode::Never, EncapMode::Always, EncapMode::CrossSubnet][m as usize];
            Update::PoolSet(PoolFacts {
                name: "p".into(),
                cidr: net("10.244.0.0/16"),
                ipip_mode: mode,
                vxlan_mode: EncapMode::Never,
                nat_outgoing: false,
                disable_bgp_export: export,
            })
        }),
        any::<bool>().prop_map(|mesh| config("default", |c| c.node_to_node_mesh = Some(mesh))),
        (any::<bool>(), addresses.clone(), any::<bool>(), 0u8..3).prop_map(
            |(by_selector, a, filtered, ttl)| {
                peer("p1", |p| {
                    if filtered {
                        p.filters = vec!["f1".into(), "missing".into()];
                    }
                    p.ttl_security = (ttl > 0).then_some(ttl);
                    if by_selector {
                        p.node_selector = "rack == 'r1'".into();
                        p.peer_selector = "all()".into();
                    } else {
                        p.peer_ip = Some(ip(a));
                        p.asn = Some(Asn(64512));
                    }
                })
            }
        ),
        prefixes
            .clone()
            .prop_map(|p| Update::BgpFilterSet(reject_filter("f1", p, p))),
        Just(Update::BgpFilterDeleted("f1".into())),
        Just(Update::BgpPeerDeleted("p1".into())),
        (prefixes.clone(), addresses).prop_map(|(p, a)| learned(p, a)),
        prefixes.prop_map(|p| Update::LearnedRouteWithdrawn(net(p))),
    ]
}

fn key(u: &Update) -> String {
    match u {
        Update::NodeSet(n) => format!("node/{}", n.name),
        Update::NodeDeleted(n) => format!("node/{n}"),
        Update::PoolSet(p) => format!("pool/{}", p.name),
        Update::PoolDeleted(p) => format!("pool/{p}"),
        Update::BlockSet(b) => format!("block/{}", b.cidr),
        Update::BlockDeleted(b) => format!("block/{b}"),
        Update::EndpointSet(e) => format!("ep/{}", e.key),
        Update::EndpointDeleted(e) => format!("ep/{e}"),
        Update::BgpConfigSet(c) => format!("bgpconfig/{}", c.name),
        Update::BgpConfigDeleted(c) => format!("bgpconfig/{c}"),
        Update::BgpPeerSet(p) => format!("bgppeer/{}", p.name),
        Update::BgpPeerDeleted(p) => format!("bgppeer/{p}"),
        Update::BgpFilterSet(f) => format!("bgpfilter/{}", f.name),
        Update::BgpFilterDeleted(f) => format!("bgpfilter/{f}"),
        Update::LearnedRoute(r) => format!("learned/{}", r.prefix),
        Update::LearnedRouteWithdrawn(p) => format!("learned/{p}"),
        Update::LearnedRoutesCleared => "learned-all".to_string(),
    }
}

proptest! {
    /// With learned routes and BGP resources in the mix, the routes and the BGP configuration
    /// depend only on the final facts, not on their order or repetition.
    #[test]
    fn desired_routes_and_bgp_do_not_depend_on_update_order(
        updates in prop::collection::vec(arb_update(), 1..40),
        seed in any::<u64>(),
    ) {
        let mut last: BTreeMap<String, Update> = BTreeMap::new();
        for u in &updates {
            last.insert(key(u), u.clone());
        }
        let in_order = graph("a", updates);
        let mut finals: Vec<Update> = last.into_values().collect();
        let mut s = seed;
        for i in (1..finals.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            finals.swap(i, (s >> 33) as usize % (i + 1));
        }
        let shuffled = graph("a", finals.iter().cloned().chain(finals.iter().cloned()));
        prop_assert_eq!(in_order.desired(), shuffled.desired());
        prop_assert_eq!(in_order.bgp_desired(), shuffled.bgp_desired());
    }

    /// Whatever the facts, a node never peers with itself, every peer's passive flag is
    /// Calico's string rule (or false for explicit peers), and exports are ours.
    #[test]
    fn bgp_desired_keeps_calicos_invariants(
        updates in prop::collection::vec(arb_update(), 1..40),
    ) {
        let g = graph("a", updates);
        if let Some(d) = g.bgp_desired() {
            let me = IpAddr::V4(d.router_id);
            prop_assert!(!d.peers.contains_key(&me));
            for (address, p) in &d.peers {
                // Here Global peers are the peerIP ones (active); mesh and peerSelector
                // peers follow the string rule.
                if p.node.is_some() && p.kind != PeerKind::Global {
                    prop_assert_eq!(p.passive, address.to_string() > me.to_string());
                }
            }
            for e in d.exports.values() {
                prop_assert_eq!(e.next_hop, me);
            }
            // Applying the plan from nothing, then from itself, is a start then nothing.
            prop_assert!(plan(Some(&d), Some(&d)).is_empty());
        }
    }
}

/// What a speaker holds, as the plan's commands see it.
#[derive(Debug, PartialEq)]
struct SimulatedSpeaker {
    config: SpeakerConfig,
    peers: BTreeMap<IpAddr, (PeerConfig, Option<SecretRef>)>,
    exports: BTreeMap<IpNet, IpAddr>,
}

fn simulated(d: &BgpDesired) -> SimulatedSpeaker {
    SimulatedSpeaker {
        config: d.speaker_config(),
        peers: d
            .peers
            .iter()
            .map(|(a, p)| (*a, (d.peer_config(*a, p), p.password.clone())))
            .collect(),
        exports: d.exports.iter().map(|(p, e)| (*p, e.next_hop)).collect(),
    }
}

/// Runs commands against the simulation; adding a peer twice, or removing or withdrawing
/// what is not there, is a bug in the plan.
fn run(
    mut speaker: Option<SimulatedSpeaker>,
    commands: Vec<SpeakerCommand>,
) -> Result<Option<SimulatedSpeaker>, String> {
    for command in commands {
        match command {
            SpeakerCommand::Stop => {
                speaker.take().ok_or("stop without a speaker")?;
            }
            SpeakerCommand::Start(config) => {
                if speaker.is_some() {
                    return Err("start over a running speaker".into());
                }
                speaker = Some(SimulatedSpeaker {
                    config,
                    peers: BTreeMap::new(),
                    exports: BTreeMap::new(),
                });
            }
            SpeakerCommand::AddPeer { config, password } => {
                let s = speaker.as_mut().ok_or("add without a speaker")?;
                if s.peers.insert(config.address, (config, password)).is_some() {
                    return Err("peer added twice".into());
                }
            }
            SpeakerCommand::RemovePeer(address) => {
                let s = speaker.as_mut().ok_or("remove without a speaker")?;
                s.peers.remove(&address).ok_or("removed an unknown peer")?;
            }
            SpeakerCommand::SetPeerPolicy { address, policy } => {
                let s = speaker.as_mut().ok_or("set policy without a speaker")?;
                let (config, _) = s
                    .peers
                    .get_mut(&address)
                    .ok_or("set the policy of an unknown peer")?;
                if config.policy == policy {
                    return Err("set a policy the peer already has".into());
                }
                config.policy = policy;
            }
            SpeakerCommand::Originate { prefix, next_hop } => {
                let s = speaker.as_mut().ok_or("originate without a speaker")?;
                s.exports.insert(prefix, next_hop);
            }
            SpeakerCommand::Withdraw(prefix) => {
                let s = speaker.as_mut().ok_or("withdraw without a speaker")?;
                s.exports
                    .remove(&prefix)
                    .ok_or("withdrew an unknown prefix")?;
            }
        }
    }
    Ok(speaker)
}

proptest! {
    /// From any configuration to any other, the plan's commands take the speaker exactly
    /// there, and never add a peer twice or remove what is absent.
    #[test]
    fn plan_takes_the_speaker_from_any_configuration_to_any_other(
        local in prop::sample::select(vec!["a", "b"]),
        before in prop::collection::vec(arb_update(), 0..30),
        after in prop::collection::vec(arb_update(), 0..30),
    ) {
        let old = graph(local, before.clone()).bgp_desired();
        let new = graph(local, before.into_iter().chain(after)).bgp_desired();
        let reached = run(old.as_ref().map(simulated), plan(old.as_ref(), new.as_ref()));
        prop_assert_eq!(reached, Ok(new.as_ref().map(simulated)));
    }
}

#[test]
#[ignore = "measurement: cargo test -p felis-agent --release --lib measure -- --ignored --nocapture"]
fn measure_desired_and_plan_for_a_large_mesh() {
    let nodes = 1000u32;
    let mut g = CalcGraph::new("n0");
    g.apply(pool("10.0.0.0/8", EncapMode::Never, EncapMode::Never));
    for i in 0..nodes {
        let name = format!("n{i}");
        let address = format!("172.16.{}.{}/16", i / 250, i % 250 + 1);
        g.apply(Update::NodeSet(node(&name, &address)));
        for b in 0..4 {
            let block_index = i * 4 + b;
            let cidr = format!(
                "10.{}.{}.{}/26",
                block_index / 1024,
                (block_index / 4) % 256,
                (block_index % 4) * 64
            );
            g.apply(Update::BlockSet(BlockFacts {
                cidr: net(&cidr),
                affinity: Some(name.clone()),
                borrowed: BTreeMap::new(),
            }));
        }
    }
    for i in 0..(nodes * 4) {
        let prefix = format!("10.{}.{}.{}/26", i / 1024, (i / 4) % 256, (i % 4) * 64);
        let via = format!("172.16.{}.{}", (i / 4) / 250, (i / 4) % 250 + 1);
        g.apply(learned(&prefix, &via));
    }
    let start = std::time::Instant::now();
    let d = g.bgp_desired().unwrap();
    let desired_time = start.elapsed();
    let start = std::time::Instant::now();
    let commands = plan(None, Some(&d));
    let plan_time = start.elapsed();
    let start = std::time::Instant::now();
    let routes = g.desired().routes.len();
    let routes_time = start.elapsed();
    println!(
        "{nodes} nodes: bgp_desired {desired_time:?} ({} peers, {} exports), plan {plan_time:?} ({} commands), desired routes {routes_time:?} ({routes} routes)",
        d.peers.len(),
        d.exports.len(),
        commands.len()
    );
}

#[test]
fn export_communities_become_communities_and_large_community_attributes() {
    let communities = BTreeSet::from([
        Community::Standard(64512, 100),
        Community::Large(64512, 1, 2),
        Community::Standard(65000, 7),
    ]);
    let attributes = path_attributes(&communities);
    assert_eq!(
        attributes.communities,
        vec![
            felis_bgp::packet::update::Community(0xfc00_0064),
            felis_bgp::packet::update::Community(0xfde8_0007),
        ]
    );
    assert_eq!(
        attributes.other,
        vec![RawAttribute {
            flags: 0xc0,
            code: 32,
            value: [64512u32, 1, 2]
                .iter()
                .flat_map(|p| p.to_be_bytes())
                .collect(),
        }]
    );
    assert_eq!(path_attributes(&BTreeSet::new()), PathAttributes::default());
}

/// A BGPFilter rejecting `import` on import and `export` on export (IPv4, Equal).
fn reject_filter(name: &str, import: &str, export: &str) -> BgpFilterFacts {
    let reject = |cidr: &str| Policy {
        v4: vec![FilterRule::cidr(
            MatchOperator::Equal,
            net(cidr),
            FilterAction::Reject,
        )],
        v6: vec![],
    };
    BgpFilterFacts {
        name: name.into(),
        import: reject(import),
        export: reject(export),
        interface_rules: 0,
    }
}

fn tor_peer(filters: &[&str], ttl_security: Option<u8>) -> Update {
    peer("tor", |p| {
        p.peer_ip = Some(ip("10.0.0.1"));
        p.asn = Some(Asn(65001));
        p.filters = filters.iter().map(|f| f.to_string()).collect();
        p.ttl_security = ttl_security;
    })
}

#[test]
fn bgp_filters_become_the_policy_of_the_peers_their_bgp_peer_gives_in_order() {
    let mut updates = three_nodes();
    updates.extend([
        Update::BgpFilterSet(reject_filter("first", "10.1.0.0/16", "10.244.0.0/26")),
        Update::BgpFilterSet(reject_filter("second", "10.2.0.0/16", "10.244.1.0/26")),
        tor_peer(&["second", "first", "missing"], Some(2)),
    ]);
    let d = desired_of("a", updates);
    let tor = &d.peers[&ip("10.0.0.1")];
    let cidrs = |rules: &[FilterRule]| -> Vec<IpNet> {
        rules
            .iter()
            .filter_map(|r| r.prefix.map(|(_, c)| c))
            .collect()
    };
    assert_eq!(
        cidrs(&tor.policy.import.v4),
        vec![net("10.2.0.0/16"), net("10.1.0.0/16")]
    );
    assert_eq!(
        cidrs(&tor.policy.export.v4),
        vec![net("10.244.1.0/26"), net("10.244.0.0/26")]
    );
    assert_eq!(tor.ttl_security, Some(2));
    assert_eq!(
        d.problems,
        vec!["BGPPeer tor: BGPFilter missing does not exist; skipped".to_string()]
    );
    // Mesh peers have no filters and no TTL security.
    for (address, p) in &d.peers {
        if *address != ip("10.0.0.1") {
            assert_eq!(p.policy, PeerPolicy::default());
            assert_eq!(p.ttl_security, None);
        }
    }
    let config = d.peer_config(ip("10.0.0.1"), tor);
    assert_eq!(config.policy, tor.policy);
    assert_eq!(config.ttl_security, Some(2));
}

#[test]
fn interface_rules_are_reported_as_never_matching() {
    let filter: felis_api::BgpFilter = serde_json::from_str(
        r#"{"metadata":{"name":"ifaces"},"spec":{"exportV4":[
            {"action":"Reject","interface":"*.calico"},
            {"action":"Accept","matchOperator":"In","cidr":"77.0.0.0/16","source":"RemotePeers",
             "prefixLength":{"min":24,"max":28}}]}}"#,
    )
    .unwrap();
    let facts = BgpFilterFacts::from_resource(&filter);
    assert_eq!(facts.interface_rules, 1);
    assert_eq!(
        facts.export.v4[1],
        FilterRule {
            prefix: Some((MatchOperator::In, net("77.0.0.0/16"))),
            min_length: Some(24),
            max_length: Some(28),
            remote_peers_only: true,
            interface: None,
            action: FilterAction::Accept,
        }
    );
    assert!(facts.import.is_empty());
    let mut updates = three_nodes();
    updates.extend([Update::BgpFilterSet(facts), tor_peer(&["ifaces"], None)]);
    let d = desired_of("a", updates);
    assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
    assert!(d.problems[0].contains("interface"), "{:?}", d.problems);
}

#[test]
fn a_filter_change_is_applied_to_the_live_session_and_a_ttl_change_re_adds_the_peer() {
    let mut updates = three_nodes();
    updates.extend([
        Update::BgpFilterSet(reject_filter("f", "10.1.0.0/16", "10.244.0.0/26")),
        tor_peer(&["f"], None),
    ]);
    let before = desired_of("a", updates.clone());

    // The filter's rules change: only the policy of that peer is replaced.
    updates.push(Update::BgpFilterSet(reject_filter(
        "f",
        "10.9.0.0/16",
        "10.244.0.0/26",
    )));
    let after = desired_of("a", updates.clone());
    let commands = plan(Some(&before), Some(&after));
    assert_eq!(
        commands,
        vec![SpeakerCommand::SetPeerPolicy {
            address: ip("10.0.0.1"),
            policy: after.peers[&ip("10.0.0.1")].policy.clone(),
        }]
    );

    // The BGPPeer drops the filter: the same, back to no policy.
    updates.push(tor_peer(&[], None));
    let unfiltered = desired_of("a", updates.clone());
    assert_eq!(
        plan(Some(&after), Some(&unfiltered)),
        vec![SpeakerCommand::SetPeerPolicy {
            address: ip("10.0.0.1"),
            policy: PeerPolicy::default(),
        }]
    );

    // TTL security is a socket setting: the peer is added again.
    updates.push(tor_peer(&[], Some(1)));
    let gtsm = desired_of("a", updates);
    let kinds: Vec<String> = plan(Some(&unfiltered), Some(&gtsm))
        .iter()
        .map(|c| match c {
            SpeakerCommand::RemovePeer(a) => format!("remove {a}"),
            SpeakerCommand::AddPeer { config, .. } => {
                format!("add {} ttl {:?}", config.address, config.ttl_security)
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["remove 10.0.0.1", "add 10.0.0.1 ttl Some(1)"]);
}

#[test]
fn bgp_filter_resources_and_peer_fields_come_from_the_datastore() {
    let filter = br#"{"apiVersion":"projectcalico.org/v3","kind":"BGPFilter",
        "metadata":{"name":"f"},"spec":{"importV4":[
            {"action":"Reject","matchOperator":"NotIn","cidr":"44.0.0.0/16"}]}}"#;
    let key = "/calico/resources/v3/projectcalico.org/bgpfilters/f";
    let update = crate::sync::on_put("a", key, filter).unwrap().unwrap();
    let Update::BgpFilterSet(f) = update else {
        panic!("{update:?}")
    };
    assert_eq!(f.name, "f");
    assert_eq!(
        f.import.v4,
        vec![FilterRule::cidr(
            MatchOperator::NotIn,
            net("44.0.0.0/16"),
            FilterAction::Reject
        )]
    );
    assert_eq!(
        crate::sync::on_delete(key),
        Some(Update::BgpFilterDeleted("f".into()))
    );
    let peer = br#"{"apiVersion":"projectcalico.org/v3","kind":"BGPPeer",
        "metadata":{"name":"tor"},"spec":{"peerIP":"10.0.0.1","asNumber":65001,
        "ttlSecurity":1,"filters":["f","g"]}}"#;
    let key = "/calico/resources/v3/projectcalico.org/bgppeers/tor";
    let update = crate::sync::on_put("a", key, peer).unwrap().unwrap();
    let Update::BgpPeerSet(p) = update else {
        panic!("{update:?}")
    };
    assert_eq!(p.ttl_security, Some(1));
    assert_eq!(p.filters, ["f", "g"]);
}

/// A TCP port nothing listens on now, chosen by the kernel.
fn free_port() -> u16 {
    std::net::TcpListener::bind("[::]:0")
        .or_else(|_| std::net::TcpListener::bind("0.0.0.0:0"))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Two nodes on loopback addresses, `a` > `b` as strings: b peers with a by the mesh (passive:
/// a's address is greater), a with b by a BGPPeer (active) that names the BGPFilter `f`.
fn filtered_pair(a: IpAddr, b: IpAddr, filter: Option<BgpFilterFacts>) -> Vec<Update> {
    let (a_port, b_port) = (free_port(), free_port());
    let mut updates = vec![
        Update::NodeSet(NodeFacts {
            name: "a".into(),
            ipv4: Some(IpNet::new(a, 8).unwrap()),
            ..NodeFacts::default()
        }),
        Update::NodeSet(NodeFacts {
            name: "b".into(),
            ipv4: Some(IpNet::new(b, 8).unwrap()),
            ..NodeFacts::default()
        }),
        pool("10.244.0.0/16", EncapMode::Never, EncapMode::Never),
        block("10.244.0.0/26", "a", &[]),
        block("10.244.1.0/26", "a", &[]),
        block("10.244.0.64/26", "b", &[]),
        block("10.244.2.64/26", "b", &[]),
        config("node.a", |c| c.listen_port = Some(a_port)),
        config("node.b", |c| c.listen_port = Some(b_port)),
        peer("a-to-b", |p| {
            p.node = "a".into();
            p.peer_ip = Some(b);
            p.peer_port = Some(b_port);
            p.asn = Some(Asn(64512));
            p.filters = vec!["f".into()];
        }),
    ];
    updates.extend(filter.map(Update::BgpFilterSet));
    updates
}

/// Feeds changes into `graph` (and `learned`, the best routes so far) until the learned
/// routes are `expected`.
async fn wait_learned(
    graph: &mut CalcGraph,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<RibChange>,
    learned: &mut BTreeSet<IpNet>,
    expected: &[&str],
) {
    let expected: BTreeSet<IpNet> = expected.iter().map(|p| net(p)).collect();
    let done = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while *learned != expected {
            let change = rx.recv().await.expect("speaker stopped");
            match change.kind {
                ChangeKind::Added => learned.insert(change.prefix),
                ChangeKind::Removed => learned.remove(&change.prefix),
            };
            graph.apply(learned_update(&change));
        }
    })
    .await;
    assert!(done.is_ok(), "learned {learned:?}, expected {expected:?}");
}

#[tokio::test]
async fn bgp_filter_changes_reach_the_live_session_through_the_runner() {
    let pid = std::process::id();
    let a = IpAddr::from([127, (pid % 200) as u8 + 20, 79, 2]);
    let b = IpAddr::from([127, (pid % 200) as u8 + 20, 79, 1]);
    // a imports nothing of 10.244.2.64/26 and exports nothing of 10.244.1.0/26.
    let mut updates = filtered_pair(
        a,
        b,
        Some(reject_filter("f", "10.244.2.64/26", "10.244.1.0/26")),
    );
    let mut a_graph = graph("a", updates.clone());
    let mut b_graph = graph("b", updates.clone());
    let secrets = std::env::temp_dir();
    let mut a_runner = BgpRunner::new(&secrets);
    let mut b_runner = BgpRunner::new(&secrets);
    let mut a_done = a_runner.reconcile(a_graph.bgp_desired().as_ref()).await;
    let mut b_done = b_runner.reconcile(b_graph.bgp_desired().as_ref()).await;
    assert!(a_done.errors.is_empty(), "{:?}", a_done.errors);
    assert!(b_done.errors.is_empty(), "{:?}", b_done.errors);
    let mut a_rx = a_done.changes.take().unwrap();
    let mut b_rx = b_done.changes.take().unwrap();
    let (mut a_learned, mut b_learned) = (BTreeSet::new(), BTreeSet::new());
    wait_learned(&mut a_graph, &mut a_rx, &mut a_learned, &["10.244.0.64/26"]).await;
    wait_learned(&mut b_graph, &mut b_rx, &mut b_learned, &["10.244.0.0/26"]).await;
    let report = a_runner.status(SystemTime::now()).await;
    assert_eq!(report.peers[0].prefixes.received, 2, "{report:?}");
    assert_eq!(report.peers[0].prefixes.accepted, 1, "{report:?}");
    assert_eq!(report.peers[0].prefixes.advertised, 1, "{report:?}");
    let since = a_runner.speaker().unwrap().peer_status().await.unwrap()[0].since;

    // The BGPFilter changes: the runner replaces a's policy, the session stays.
    updates.push(Update::BgpFilterSet(reject_filter(
        "f",
        "10.244.0.64/26",
        "10.244.0.0/26",
    )));
    a_graph.apply(updates.last().cloned().unwrap());
    let done = a_runner.reconcile(a_graph.bgp_desired().as_ref()).await;
    assert!(done.errors.is_empty() && !done.stopped, "{:?}", done.errors);
    wait_learned(&mut a_graph, &mut a_rx, &mut a_learned, &["10.244.2.64/26"]).await;
    wait_learned(&mut b_graph, &mut b_rx, &mut b_learned, &["10.244.1.0/26"]).await;
    let status = a_runner.speaker().unwrap().peer_status().await.unwrap();
    assert_eq!(status[0].state, felis_bgp::session::State::Established);
    assert_eq!(status[0].since, since, "the session was reset");

    // The BGPFilter goes: a's BGPPeer names a filter that no longer exists, nothing is
    // filtered.
    a_graph.apply(Update::BgpFilterDeleted("f".into()));
    let done = a_runner.reconcile(a_graph.bgp_desired().as_ref()).await;
    assert!(done.errors.is_empty(), "{:?}", done.errors);
    wait_learned(
        &mut a_graph,
        &mut a_rx,
        &mut a_learned,
        &["10.244.0.64/26", "10.244.2.64/26"],
    )
    .await;
    wait_learned(
        &mut b_graph,
        &mut b_rx,
        &mut b_learned,
        &["10.244.0.0/26", "10.244.1.0/26"],
    )
    .await;

    assert!(a_runner.reconcile(None).await.stopped);
    assert!(b_runner.reconcile(None).await.stopped);
}
