//! [`RouteWriter`] against the kernel, each test in namespaces of its own; skipped unless root.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::net::Ipv4Addr;

use felis_netlink::Ifindex;
use felis_netlink::Route;
use felis_netlink::RouteFilter;
use felis_netlink::RouteOp;
use felis_netlink::RouteProtocol;
use felis_netlink::RouteWriter;
use felis_testns::TestNetns;
use felis_testns::skip_unless_root;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A namespace with `eth0` (a veth end, up) holding 192.0.2.1/24, next hop 192.0.2.2.
fn with_link() -> Result<(TestNetns, Ifindex), Box<dyn std::error::Error>> {
    let ns = TestNetns::new()?;
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["link", "set", "eth1", "up"]);
    let index: u32 = ns
        .ip(&["-o", "link", "show", "eth0"])
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()?;
    Ok((ns, Ifindex(index)))
}

fn route(n: u32, dev: Ifindex, gateway: &str) -> Route {
    let [a, b, c, _] = (0x6400_0000u32 + (n << 8)).to_be_bytes();
    Route::new(format!("{a}.{b}.{c}.0/24").parse().unwrap())
        .via(gateway.parse::<IpAddr>().unwrap())
        .dev(dev)
        .protocol(RouteProtocol::FELIS_BGP)
}

fn ours() -> RouteFilter {
    RouteFilter {
        protocol: Some(RouteProtocol::FELIS_BGP),
        ipv6: Some(false),
        ..RouteFilter::default()
    }
}

#[test]
fn a_batch_installs_replaces_and_deletes_thousands_of_routes() -> TestResult {
    if skip_unless_root("a_batch_installs_replaces_and_deletes_thousands_of_routes") {
        return Ok(());
    }
    let (ns, dev) = with_link()?;
    let mut writer = RouteWriter::open(ns.netns())?;
    let n = 5000;
    let adds: Vec<RouteOp> = (0..n)
        .map(|i| RouteOp::Add(route(i, dev, "192.0.2.2")))
        .collect();
    let report = writer.write(&adds)?;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.sends >= 2, "several buffers: {}", report.sends);
    assert_eq!(writer.count(ours())?, n as usize);
    let text = ns.ip(&["route", "show", "proto", "81"]);
    assert!(
        text.contains("100.0.0.0/24 via 192.0.2.2 dev eth0"),
        "{text}"
    );

    // Replace moves every route to another next hop; nothing is duplicated.
    let replaces: Vec<RouteOp> = (0..n)
        .map(|i| RouteOp::Replace(route(i, dev, "192.0.2.3")))
        .collect();
    assert!(writer.write(&replaces)?.failures.is_empty());
    let mut gateways = std::collections::BTreeSet::new();
    writer.dump(ours(), |r| {
        gateways.insert(r.gateway);
    })?;
    assert_eq!(
        gateways.into_iter().collect::<Vec<_>>(),
        vec![Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)))]
    );
    assert_eq!(writer.count(ours())?, n as usize);

    let deletes: Vec<RouteOp> = (0..n)
        .map(|i| RouteOp::Delete(route(i, dev, "192.0.2.3")))
        .collect();
    assert!(writer.write(&deletes)?.failures.is_empty());
    assert_eq!(writer.count(ours())?, 0);
    Ok(())
}

#[test]
fn each_refused_change_is_reported_by_position_and_the_rest_applies() -> TestResult {
    if skip_unless_root("each_refused_change_is_reported_by_position_and_the_rest_applies") {
        return Ok(());
    }
    let (ns, dev) = with_link()?;
    // Another owner's route for 100.0.1.0/24 (proto boot).
    ns.ip(&["route", "add", "100.0.1.0/24", "via", "192.0.2.2"]);
    let mut writer = RouteWriter::open(ns.netns())?;
    let ops = vec![
        RouteOp::Add(route(0, dev, "192.0.2.2")),
        RouteOp::Add(route(1, dev, "192.0.2.2")), // EEXIST: someone else's
        RouteOp::Delete(route(7, dev, "192.0.2.2")), // ESRCH: not there
        RouteOp::Add(route(2, dev, "198.51.100.1")), // ENETUNREACH: no such next hop
        RouteOp::Add(route(3, dev, "192.0.2.2")),
    ];
    let report = writer.write(&ops)?;
    let failed: Vec<(usize, bool)> = report
        .failures
        .iter()
        .map(|f| (f.index, f.is_exists() || f.is_not_found()))
        .collect();
    assert_eq!(
        failed,
        vec![(1, true), (2, true), (3, false)],
        "{:?}",
        report.failures
    );
    assert_eq!(writer.count(ours())?, 2);
    // A delete under our protocol never removes another owner's route.
    let report = writer.write(&[RouteOp::Delete(route(1, dev, "192.0.2.2"))])?;
    assert_eq!(report.failures.len(), 1);
    assert!(
        ns.ip(&["route", "show", "proto", "boot"])
            .contains("100.0.1.0/24")
    );
    // The last change failing still ends the batch.
    let report = writer.write(&[
        RouteOp::Add(route(4, dev, "192.0.2.2")),
        RouteOp::Add(route(4, dev, "192.0.2.2")),
    ])?;
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].index, 1);
    Ok(())
}

/// Run with: cargo test -p felis-netlink --release --test batch measure -- --ignored --nocapture
#[test]
#[ignore = "measurement: prints batched route throughput"]
fn measure_batched_route_throughput() -> TestResult {
    if skip_unless_root("measure_batched_route_throughput") {
        return Ok(());
    }
    let (ns, dev) = with_link()?;
    let mut writer = RouteWriter::open(ns.netns())?;
    let n: u32 = std::env::var("ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let ops: Vec<RouteOp> = (0..n)
        .map(|i| RouteOp::Replace(route(i, dev, "192.0.2.2")))
        .collect();
    let t = std::time::Instant::now();
    let report = writer.write(&ops)?;
    let write = t.elapsed().as_secs_f64();
    assert!(report.failures.is_empty());
    let t = std::time::Instant::now();
    let count = writer.count(ours())?;
    let dump = t.elapsed().as_secs_f64();
    assert_eq!(count, n as usize);
    println!(
        "RouteWriter: {n} routes in {write:.2} s ({:.0}/s, {} sendmsg); streamed count {:.0} ms",
        f64::from(n) / write,
        report.sends,
        dump * 1e3
    );
    Ok(())
}

#[test]
fn lookup_finds_the_route_toward_an_address_or_none() -> TestResult {
    if skip_unless_root("lookup_finds_the_route_toward_an_address_or_none") {
        return Ok(());
    }
    let (ns, dev) = with_link()?;
    ns.ip(&["route", "add", "10.9.0.0/16", "via", "192.0.2.7"]);
    ns.ip(&["route", "add", "blackhole", "10.8.0.0/16"]);
    let mut writer = RouteWriter::open(ns.netns())?;
    let connected = writer.lookup("192.0.2.9".parse()?)?.unwrap();
    assert_eq!((connected.gateway, connected.ifindex), (None, Some(dev)));
    let via = writer.lookup("10.9.1.1".parse()?)?.unwrap();
    assert_eq!(via.gateway, Some("192.0.2.7".parse()?));
    assert_eq!(via.ifindex, Some(dev));
    assert!(writer.lookup("10.8.0.1".parse()?)?.is_none(), "blackhole");
    assert!(writer.lookup("203.0.113.1".parse()?)?.is_none(), "no route");
    Ok(())
}
