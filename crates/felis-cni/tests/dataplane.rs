//! The workload dataplane in throwaway namespaces (`ct-<pid>-<n>`); skipped unless root.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::Read;
use std::io::Write;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::time::Duration;

use felis_cni::Error;
use felis_cni::dataplane::WorkloadSpec;
use felis_cni::dataplane::check_workload;
use felis_cni::dataplane::setup_workload;
use felis_cni::dataplane::teardown_workload;
use felis_netlink::Handle;
use felis_netlink::MacAddr;
use felis_netlink::Route;
use felis_netlink::block_on;
use felis_testns::TestNetns;
use felis_testns::skip_unless_root;

fn spec(pod: &TestNetns, host_ifname: &str, addresses: &[&str]) -> WorkloadSpec {
    WorkloadSpec {
        container_netns: pod.path().to_path_buf(),
        container_ifname: "eth0".into(),
        host_ifname: host_ifname.into(),
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        mtu: 1440,
        allow_ip_forwarding: false,
    }
}

/// A host namespace with an "uplink" bridge holding 192.0.2.1/24 and fd00:2::1/64, and a
/// default route over it, as a real host has (proxy ARP only answers for routable targets).
async fn host_with_uplink(host: &TestNetns) -> Handle {
    let h = host.handle().await.unwrap();
    let br = h.add_bridge("uplink").await.unwrap();
    h.set_link_up(br.index).await.unwrap();
    h.add_address(br.index, "192.0.2.1/24".parse().unwrap())
        .await
        .unwrap();
    h.add_route(&Route::new("0.0.0.0/0".parse().unwrap()).via("192.0.2.254".parse().unwrap()))
        .await
        .unwrap();
    h
}

/// Opens a TCP connection from inside `from` to `to` and exchanges one line with a listener
/// running inside `listener_ns`. Only addresses inside our own namespaces are used.
fn tcp_exchange(listener_ns: &TestNetns, bind: SocketAddr, from: &TestNetns) -> String {
    let listener = listener_ns.run(|| TcpListener::bind(bind).unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        conn.write_all(format!("hello {}\n", peer.ip()).as_bytes())
            .unwrap();
    });
    let reply = from.run(|| {
        // IPv6 addresses leave "tentative" asynchronously (kernel DAD work, even with DAD off):
        // retry briefly rather than race it.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let mut conn = loop {
            match TcpStream::connect_timeout(&bind, Duration::from_secs(3)) {
                Ok(conn) => break conn,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("connect to {bind} failed ({e}), retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connect to {bind}: {e}"),
            }
        };
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        reply
    });
    server.join().unwrap();
    reply
}

#[test]
fn setup_builds_calicos_veth_routes_and_sysctls() {
    if skip_unless_root("setup_builds_calicos_veth_routes_and_sysctls") {
        return;
    }
    let host = TestNetns::new().unwrap();
    let pod = TestNetns::new().unwrap();
    let s = spec(&pod, "calic440f455693", &["10.244.1.5/26"]);
    let built = block_on(async {
        let h = host_with_uplink(&host).await;
        setup_workload(&h, &s).await
    })
    .unwrap()
    .unwrap();
    assert_eq!(built.host_ifname, "calic440f455693");
    assert_eq!(built.host_mac, MacAddr::CALICO_HOST);
    assert_eq!(built.addresses[0].to_string(), "10.244.1.5/32");

    // Host side, checked with iproute2 and /proc.
    let link = host.ip(&["link", "show", "calic440f455693"]);
    assert!(link.contains("link/ether ee:ee:ee:ee:ee:ee"), "{link}");
    assert!(link.contains("mtu 1440"), "{link}");
    assert!(link.contains("state UP") || link.contains(",UP"), "{link}");
    let routes = host.ip(&["route", "show", "proto", "boot"]);
    assert!(
        routes.contains("10.244.1.5 dev calic440f455693 scope link"),
        "{routes}"
    );
    // tc's hooks for the agent's fast path, added before the link came up.
    let qdiscs = host.exec("tc", &["qdisc", "show", "dev", "calic440f455693"]);
    assert!(qdiscs.contains("qdisc clsact ffff:"), "{qdiscs}");
    for (key, want) in [
        ("net/ipv4/conf/calic440f455693/proxy_arp", "1"),
        ("net/ipv4/neigh/calic440f455693/proxy_delay", "0"),
        ("net/ipv4/conf/calic440f455693/forwarding", "1"),
        ("net/ipv4/conf/calic440f455693/route_localnet", "1"),
    ] {
        let got = host.exec("cat", &[&format!("/proc/sys/{key}")]);
        assert_eq!(got.trim(), want, "{key}");
    }

    // Container side.
    let addr = pod.ip(&["-4", "addr", "show", "eth0"]);
    assert!(addr.contains("inet 10.244.1.5/32"), "{addr}");
    let link = pod.ip(&["link", "show", "eth0"]);
    assert!(
        link.contains(&format!("link/ether {}", built.container_mac)),
        "{link}"
    );
    assert!(link.contains("mtu 1440"), "{link}");
    let routes = pod.ip(&["route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("169.254.1.1 dev eth0 scope link"),
        "{routes}"
    );

    // The container reaches the host through proxy ARP on 169.254.1.1.
    let reply = tcp_exchange(&host, "192.0.2.1:8080".parse().unwrap(), &pod);
    assert_eq!(reply, "hello 10.244.1.5\n");
    let neigh = pod.ip(&["neigh", "show", "169.254.1.1"]);
    assert!(neigh.contains("ee:ee:ee:ee:ee:ee"), "{neigh}");

    block_on(async {
        let h = host.handle().await.unwrap();
        check_workload(&h, &s).await.unwrap();
    })
    .unwrap();
}

#[test]
fn two_workloads_talk_through_the_host() {
    if skip_unless_root("two_workloads_talk_through_the_host") {
        return;
    }
    let host = TestNetns::new().unwrap();
    let a = TestNetns::new().unwrap();
    let b = TestNetns::new().unwrap();
    let sa = spec(
        &a,
        "caliaaaaaaaaaaa",
        &["10.244.1.10/32", "fd00:244::10/128"],
    );
    let sb = spec(
        &b,
        "calibbbbbbbbbbb",
        &["10.244.1.11/32", "fd00:244::11/128"],
    );
    block_on(async {
        let h = host_with_uplink(&host).await;
        // IPv6 forwarding is global (the agent's job on a real host).
        h.write_sysctls(&[("net/ipv6/conf/all/forwarding".into(), "1".into())])
            .unwrap();
        setup_workload(&h, &sa).await.unwrap();
        setup_workload(&h, &sb).await.unwrap();
    })
    .unwrap();
    let reply = tcp_exchange(&b, "10.244.1.11:9000".parse().unwrap(), &a);
    assert_eq!(reply, "hello 10.244.1.10\n");
    let routes = a.ip(&["-6", "route", "show", "default"]);
    assert!(
        routes.contains("via fe80::ecee:eeff:feee:eeee dev eth0"),
        "{routes}"
    );
    let reply = tcp_exchange(&b, "[fd00:244::11]:9001".parse().unwrap(), &a);
    assert_eq!(reply, "hello fd00:244::10\n");
}

#[test]
fn teardown_is_idempotent_even_without_the_namespace() {
    if skip_unless_root("teardown_is_idempotent_even_without_the_namespace") {
        return;
    }
    let host = TestNetns::new().unwrap();
    let pod = TestNetns::new().unwrap();
    let s = spec(&pod, "calitear0000000", &["10.244.2.5/32"]);
    let pod_path = pod.path().to_path_buf();
    block_on(async {
        let h = host_with_uplink(&host).await;
        setup_workload(&h, &s).await.unwrap();
        teardown_workload(&h, Some(&pod_path), "eth0", "calitear0000000")
            .await
            .unwrap();
        assert!(h.link("calitear0000000").await.unwrap().is_none());
        assert!(!host.ip(&["route"]).contains("10.244.2.5"));
        // Again: nothing left, still success.
        teardown_workload(&h, Some(&pod_path), "eth0", "calitear0000000")
            .await
            .unwrap();
        // Namespace gone (the runtime deleted it first): host side removed by name.
        setup_workload(&h, &s).await.unwrap();
    })
    .unwrap();
    drop(pod);
    block_on(async {
        let h = host.handle().await.unwrap();
        // The veth died with the namespace; teardown must still succeed.
        teardown_workload(&h, Some(&pod_path), "eth0", "calitear0000000")
            .await
            .unwrap();
        teardown_workload(&h, None, "eth0", "calitear0000000")
            .await
            .unwrap();
        assert!(h.link("calitear0000000").await.unwrap().is_none());
    })
    .unwrap();
}

#[test]
fn check_reports_the_first_difference() {
    if skip_unless_root("check_reports_the_first_difference") {
        return;
    }
    let host = TestNetns::new().unwrap();
    let pod = TestNetns::new().unwrap();
    let s = spec(&pod, "calicheck000000", &["10.244.3.5/32"]);
    block_on(async {
        let h = host_with_uplink(&host).await;
        setup_workload(&h, &s).await.unwrap();
        check_workload(&h, &s).await.unwrap();
        host.ip(&["route", "del", "10.244.3.5/32"]);
        let e = check_workload(&h, &s).await.unwrap_err();
        assert!(
            matches!(&e, Error::CheckFailed { what } if what.contains("host route")),
            "{e}"
        );
        let mut other = s.clone();
        other.addresses = vec!["10.244.3.6/32".parse().unwrap()];
        let e = check_workload(&h, &other).await.unwrap_err();
        assert!(matches!(e, Error::CheckFailed { .. }));
    })
    .unwrap();
}

#[test]
fn an_address_routed_to_another_workload_is_refused() {
    if skip_unless_root("an_address_routed_to_another_workload_is_refused") {
        return;
    }
    let host = TestNetns::new().unwrap();
    let a = TestNetns::new().unwrap();
    let b = TestNetns::new().unwrap();
    block_on(async {
        let h = host_with_uplink(&host).await;
        setup_workload(&h, &spec(&a, "calidup00000001", &["10.244.4.5/32"]))
            .await
            .unwrap();
        let e = setup_workload(&h, &spec(&b, "calidup00000002", &["10.244.4.5/32"]))
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::RouteConflict { ref existing, .. } if existing == "calidup00000001"),
            "{e}"
        );
        assert_eq!(felis_cni::CniError::from(&e).code, 102);
    })
    .unwrap();
}

#[test]
fn a_stale_host_veth_is_replaced_and_a_missing_netns_is_container_unknown() {
    if skip_unless_root("a_stale_host_veth_is_replaced_and_a_missing_netns_is_container_unknown") {
        return;
    }
    let host = TestNetns::new().unwrap();
    let pod = TestNetns::new().unwrap();
    host.ip(&[
        "link",
        "add",
        "calistale000000",
        "type",
        "veth",
        "peer",
        "name",
        "leftover",
    ]);
    block_on(async {
        let h = host_with_uplink(&host).await;
        setup_workload(&h, &spec(&pod, "calistale000000", &["10.244.5.5/32"]))
            .await
            .unwrap();
        assert!(h.link("leftover").await.unwrap().is_none());
        let mut gone = spec(&pod, "caligone0000000", &["10.244.5.6/32"]);
        gone.container_netns = "/run/netns/ct-does-not-exist".into();
        let e = setup_workload(&h, &gone).await.unwrap_err();
        assert_eq!(felis_cni::CniError::from(&e).code, 3, "{e}");
    })
    .unwrap();
}
