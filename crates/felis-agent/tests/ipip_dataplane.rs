//! The dataplane's IPIP handling in a namespace: routes via the host interface with the tunnel
//! address as source and room for the outer header, the classifiers attached, the tunnel
//! address on `lo`; a restart adopts it all; without IPIP pools everything of it goes away.
//!
//! Everything runs on a thread inside the test namespace (the reconciler also starts `nft` and
//! `ip`, which must inherit that namespace).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::IpAddr;
use std::net::Ipv4Addr;

use felis_agent::calc::HostState;
use felis_agent::calc::RouteTarget;
use felis_agent::dataplane::Dataplane;
use felis_agent::dataplane::PassStats;
use felis_agent::ipip::IpipStatus;
use felis_netlink::Handle;
use felis_testns::TestNetns;
use felis_testns::skip_unless_root;
use ipnet::IpNet;

const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// h1: eth0 10.0.1.10/24 (a veth to a "router" namespace 10.0.1.1), default via 10.0.1.1.
fn host() -> (TestNetns, TestNetns) {
    let host = TestNetns::new().unwrap();
    let router = TestNetns::new().unwrap();
    host.link_to("eth0", "10.0.1.10/24", &router, "r0", "10.0.1.1/24");
    host.ip(&["route", "add", "default", "via", "10.0.1.1"]);
    (host, router)
}

fn desired(ipip: bool) -> HostState {
    let mut state = HostState {
        ipip,
        ..HostState::default()
    };
    state.nat.all_pools.insert(net("10.244.0.0/16"));
    if ipip {
        state.routes.insert(
            net("10.244.5.0/26"),
            RouteTarget::Ipip {
                via: ip("10.0.2.10"),
            },
        );
        state.routes.insert(
            net("10.244.6.0/26"),
            RouteTarget::Ipip {
                via: ip("10.0.1.11"),
            },
        );
        state
            .routes
            .insert(net("10.244.1.0/26"), RouteTarget::Blackhole);
    }
    state
}

/// One reconcile pass with a fresh dataplane (as a restarted agent), inside `ns`.
fn pass(ns: &TestNetns, passes: &[HostState]) -> Vec<(PassStats, IpipStatus)> {
    ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let handle = Handle::current().await.unwrap();
            let mut dataplane = Dataplane::new(handle, IpAddr::V4(NODE), 1500);
            dataplane.ipip_mut().set_tunnel_address(Some(TUNNEL));
            let mut out = Vec::new();
            for state in passes {
                let stats = dataplane.reconcile(state).await.unwrap();
                out.push((stats, dataplane.ipip_mut().status().clone()));
            }
            out
        })
    })
}

fn filters(ns: &TestNetns, direction: &str) -> String {
    ns.exec("tc", &["filter", "show", "dev", "eth0", direction])
}

#[test]
fn ipip_routes_classifiers_and_tunnel_address_come_and_go_with_ipip_pools() {
    if skip_unless_root("ipip_routes_classifiers_and_tunnel_address_come_and_go") {
        return;
    }
    let (h1, _router) = host();
    let on = desired(true);
    let results = pass(&h1, &[on.clone(), on.clone()]);
    let (first, status) = &results[0];
    assert_eq!(first.routes_pending, 0, "{first:?}");
    assert_eq!(first.routes_set, 3, "{first:?}");
    assert_eq!(
        status,
        &IpipStatus::Active {
            ifname: "eth0".into()
        }
    );
    assert_eq!(results[1].0.routes_set, 0, "a second pass changes nothing");

    let routes = h1.ip(&["route", "show", "proto", "80"]);
    assert!(
        routes.contains("10.244.5.0/26 via 10.0.1.1 dev eth0 src 10.244.1.0 onlink mtu 1480"),
        "across subnets: through the gateway toward the node: {routes}"
    );
    assert!(
        routes.contains("10.244.6.0/26 via 10.0.1.11 dev eth0 src 10.244.1.0 onlink mtu 1480"),
        "on-link node: straight to it: {routes}"
    );
    let lo = h1.ip(&["addr", "show", "dev", "lo"]);
    assert!(lo.contains("inet 10.244.1.0/32"), "{lo}");
    assert!(filters(&h1, "egress").contains("felis_ipip_egress"));
    assert!(filters(&h1, "ingress").contains("felis_ipip_ingress"));

    // A restarted agent adopts routes and replaces the classifiers in place.
    let results = pass(&h1, std::slice::from_ref(&on));
    assert_eq!(results[0].0.routes_set, 0, "{:?}", results[0].0);
    assert_eq!(
        filters(&h1, "egress")
            .lines()
            .filter(|l| l.contains("felis_ipip"))
            .count(),
        1
    );

    // The IPIP pool goes: routes, classifiers and the tunnel address go with it, also for a
    // restarted agent that never attached them itself.
    let results = pass(&h1, &[desired(false)]);
    // (Removing the tunnel address takes the routes using it as source with it: the kernel
    // flushes routes whose preferred source goes away, so fewer are counted as removed.)
    assert!(results[0].0.routes_removed >= 1, "{:?}", results[0].0);
    let routes = h1.ip(&["route", "show", "proto", "80"]);
    assert!(routes.trim().is_empty(), "{routes}");
    assert_eq!(results[0].1, IpipStatus::Unused);
    assert!(!filters(&h1, "egress").contains("felis_ipip"));
    assert!(!filters(&h1, "ingress").contains("felis_ipip"));
    let lo = h1.ip(&["addr", "show", "dev", "lo"]);
    assert!(!lo.contains("10.244.1.0"), "{lo}");
}

#[test]
fn without_a_host_interface_ipip_routes_wait_with_a_status() {
    if skip_unless_root("without_a_host_interface_ipip_routes_wait_with_a_status") {
        return;
    }
    let (h1, _router) = host();
    h1.ip(&["addr", "del", "10.0.1.10/24", "dev", "eth0"]);
    h1.ip(&["route", "add", "default", "dev", "eth0"]);
    let results = pass(&h1, &[desired(true)]);
    let (stats, status) = &results[0];
    assert_eq!(stats.routes_pending, 2, "{stats:?}");
    assert!(
        matches!(status, IpipStatus::Unavailable { reason } if reason.contains("10.0.1.10")),
        "{status:?}"
    );
}
