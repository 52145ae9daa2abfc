//! Allocator scenarios on the in-memory store.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::collections::HashSet;

use common::*;
use felis_ipam::AllowedUse;
use felis_ipam::AutoAssignRequest;
use felis_ipam::BlockCidr;
use felis_ipam::Error;
use felis_ipam::Ipam;
use felis_ipam::TunnelKind;
use felis_ipam::model::Block;
use felis_ipam::model::Handle;
use felis_ipam::model::handle_key;
use felis_ipam::report;
use felis_store::Datastore;
use felis_store::memory::MemoryStore as MemStore;

fn store_with(pools: &[felis_ipam::Pool], nodes: &[&str]) -> MemStore {
    let store = MemStore::new();
    for p in pools {
        put_pool(&store, p);
    }
    for n in nodes {
        put_node(&store, n, &[]);
    }
    store
}

fn block(store: &MemStore, cidr: &str) -> Option<Block> {
    let kv = store.get(&BlockCidr(net(cidr)).key()).unwrap()?;
    Some(serde_json::from_slice(&kv.value).unwrap())
}

#[test]
fn first_allocation_claims_a_block_and_writes_calico_records() {
    let store = store_with(&[pool("p", "10.0.0.0/24", 26)], &["n1"]);
    let ipam = Ipam::new(&store);
    let mut request = AutoAssignRequest::v4("n1", "k8s-pod-network.c1", 2);
    request
        .attributes
        .insert("namespace".into(), "default".into());
    request.attributes.insert("pod".into(), "web".into());
    let got = ipam.auto_assign(&request, now(), &mut rng(1)).unwrap();
    assert_eq!(got.v4.len(), 2);
    assert!(
        got.v4
            .iter()
            .all(|n| n.prefix_len() == 26 && net("10.0.0.0/24").contains(n))
    );
    let cidr = BlockCidr::containing(got.v4[0].addr(), 26).unwrap();
    // Affinity record, block with the allocation, handle counting it.
    let affinity = store.get(&cidr.affinity_key("n1")).unwrap().unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&affinity.value).unwrap(),
        serde_json::json!({"state": "confirmed", "deleted": false})
    );
    let b = block(&store, &cidr.to_string()).unwrap();
    assert_eq!(b.affinity.as_deref(), Some("host:n1"));
    assert_eq!(b.in_use(), 2);
    assert_eq!(b.attributes.len(), 1);
    assert_eq!(
        b.attributes[0].handle_id.as_deref(),
        Some("k8s-pod-network.c1")
    );
    assert_eq!(b.attributes[0].secondary["node"], "n1");
    assert_eq!(b.attributes[0].secondary["pod"], "web");
    assert_eq!(
        b.attributes[0].secondary["timestamp"],
        "2026-11-18T11:06:40Z"
    );
    let h: Handle = serde_json::from_slice(
        &store
            .get(&handle_key("k8s-pod-network.c1"))
            .unwrap()
            .unwrap()
            .value,
    )
    .unwrap();
    assert_eq!(h.handle_id, "k8s-pod-network.c1");
    assert_eq!(h.block, BTreeMap::from([(cidr.to_string(), 2)]));
    // Next allocation uses the same affine block.
    let more = ipam
        .auto_assign(&AutoAssignRequest::v4("n1", "h2", 1), now(), &mut rng(2))
        .unwrap();
    assert!(cidr.0.contains(&more.v4[0].addr()));
    assert_eq!(ipam.check().unwrap().problems(), 0);
}

#[test]
fn full_affine_block_claims_another_then_borrows() {
    // Four /26 blocks; node n1 may own only one.
    let store = store_with(&[pool("p", "10.0.0.0/24", 26)], &["n1", "n2"]);
    let ipam = Ipam::new(&store);
    ipam.configure(None, Some(1)).unwrap();
    let a = ipam
        .auto_assign(&AutoAssignRequest::v4("n2", "other", 1), now(), &mut rng(3))
        .unwrap();
    let n2_block = BlockCidr::containing(a.v4[0].addr(), 26).unwrap();
    let first = ipam
        .auto_assign(&AutoAssignRequest::v4("n1", "h1", 64), now(), &mut rng(4))
        .unwrap();
    let n1_block = BlockCidr::containing(first.v4[0].addr(), 26).unwrap();
    assert!(first.v4.iter().all(|n| n1_block.0.contains(&n.addr())));
    // n1 is at its block limit: the next address is borrowed (from n2's block or... only
    // existing blocks can be borrowed from).
    let borrowed = ipam
        .auto_assign(&AutoAssignRequest::v4("n1", "h2", 1), now(), &mut rng(5))
        .unwrap();
    assert!(n2_block.0.contains(&borrowed.v4[0].addr()));
    let rows = ipam.show_borrowed().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].borrowing_node, "n1");
    assert_eq!(rows[0].block_owner, "n2");
    assert_eq!(rows[0].allocated_to, "h2");
    let rendered = report::render_borrowed(&rows);
    assert!(
        rendered.contains("| IP        | BORROWING-NODE |") || rendered.contains("BORROWING-NODE")
    );
    // Strict affinity forbids borrowing.
    ipam.configure(Some(true), None).unwrap();
    let err = ipam
        .auto_assign(&AutoAssignRequest::v4("n1", "h3", 1), now(), &mut rng(6))
        .unwrap_err();
    assert!(matches!(err, Error::PoolExhausted { got: 0, .. }), "{err}");
    assert!(err.to_string().contains("10.0.0.0/24"), "{err}");
    assert!(store.get(&handle_key("h3")).unwrap().is_none());
    assert_eq!(ipam.check().unwrap().problems(), 0);
}

#[test]
fn exhaustion_is_all_or_nothing() {
    let store = store_with(&[pool("p", "10.0.0.0/29", 30)], &["n1"]);
    let ipam = Ipam::new(&store);
    let err = ipam
        .auto_assign(&AutoAssignRequest::v4("n1", "big", 9), now(), &mut rng(1))
        .unwrap_err();
    match &err {
        Error::PoolExhausted {
            wanted: 9,
            got: 8,
            pools,
            ..
        } => {
            assert_eq!(pools[0].total, 8);
        }
        other => panic!("unexpected {other}"),
    }
    assert!(allocated(&ipam).is_empty());
    assert!(store.get(&handle_key("big")).unwrap().is_none());
    let ok = ipam
        .auto_assign(&AutoAssignRequest::v4("n1", "fits", 8), now(), &mut rng(1))
        .unwrap();
    assert_eq!(ok.v4.len(), 8);
    assert_eq!(ipam.check().unwrap().problems(), 0);
}

#[test]
fn reserved_addresses_are_never_handed_out() {
    let store = store_with(&[pool("p", "10.0.0.0/28", 28)], &["n1"]);
    put_reservation(&store, "r", &["10.0.0.0/30", "10.0.0.15/32"]);
    let ipam = Ipam::new(&store);
    let got = ipam
        .auto_assign(&AutoAssignRequest::v4("n1", "h", 11), now(), &mut rng(1))
        .unwrap();
    let addrs: HashSet<String> = got.v4.iter().map(|n| n.addr().to_string()).collect();
    assert_eq!(addrs.len(), 11);
    for bad in ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.15"] {
        assert!(!addrs.contains(bad), "{bad} handed out");
    }
    assert!(
        ipam.auto_assign(&AutoAssignRequest::v4("n1", "h2", 1), now(), &mut rng(1))
            .is_err()
    );
    let err = ipam
        .assign_ip(ip("10.0.0.1"), "x", &BTreeMap::new(), "n1", now())
        .unwrap_err();
    assert!(
        matches!(err, Error::AddressReserved { ref reservation, .. } if reservation == "r"),
        "{err}"
    );
    assert_eq!(
        ipam.show_ip(ip("10.0.0.1")).unwrap().reserved_by.as_deref(),
        Some("r")
    );
}

#[test]
fn node_selector_disabled_and_allowed_uses_pick_pools() {
    let mut rack_a = pool("rack-a", "10.1.0.0/24", 26);
    rack_a.node_selector = "rack == 'a'".parse().unwrap();
    let mut disabled = pool("off", "10.2.0.0/24", 26);
    disabled.disabled = true;
    let mut tunnels = pool("tunnels", "10.3.0.0/24", 26);
    tunnels.allowed_uses = vec![AllowedUse::Tunnel];
    let store = MemStore::new();
    for p in [&rack_a, &disabled, &tunnels] {
        put_pool(&store, p);
    }
    put_node(&store, "a1", &[("rack", "a")]);
    put_node(&store, "b1", &[("rack", "b")]);
    let ipam = Ipam::new(&store);
    let got = ipam
        .auto_assign(&AutoAssignRequest::v4("a1", "h", 1), now(), &mut rng(1))
        .unwrap();
    assert!(net("10.1.0.0/24").contains(&got.v4[0].addr()));
    let err = ipam
        .auto_assign(&AutoAssignRequest::v4("b1", "h2", 1), now(), &mut rng(1))
        .unwrap_err();
    assert!(
        matches!(err, Error::NoMatchingPool { ref node, .. } if node == "b1"),
        "{err}"
    );
    // Tunnel addresses come from the Tunnel-only pool, once per node.
    let t1 = ipam
        .assign_tunnel_address("b1", TunnelKind::Vxlan, now(), &mut rng(2))
        .unwrap();
    assert!(net("10.3.0.0/24").contains(&t1));
    let again = ipam
        .assign_tunnel_address("b1", TunnelKind::Vxlan, now(), &mut rng(3))
        .unwrap();
    assert_eq!(t1, again);
    assert_eq!(
        ipam.ips_by_handle("vxlan-tunnel-addr-b1").unwrap(),
        vec![t1]
    );
    let status = ipam.show_ip(t1).unwrap();
    assert_eq!(
        status.attributes.get("type").map(String::as_str),
        Some("vxlanTunnelAddress")
    );
    // An explicit pool filter.
    let mut req = AutoAssignRequest::v4("a1", "h3", 1);
    req.pools_v4 = vec!["10.2.0.0/24".into()];
    assert!(matches!(
        ipam.auto_assign(&req, now(), &mut rng(1)),
        Err(Error::NoMatchingPool { .. })
    ));
    assert_eq!(ipam.check().unwrap().problems(), 0);
}

#[test]
fn release_by_handle_is_idempotent_and_release_ips_reports_unallocated() {
    let store = store_with(&[pool("p", "10.0.0.0/24", 26)], &["n1"]);
    let ipam = Ipam::new(&store);
    let got = ipam
        .auto_assign(&AutoAssignRequest::v4("n1", "h", 3), now(), &mut rng(1))
        .unwrap();
    let ips: Vec<_> = got.v4.iter().map(|n| n.addr()).collect();
    let mut released = ipam.release_by_handle("h").unwrap();
    released.sort();
    let mut want = ips.clone();
    want.sort();
    assert_eq!(released, want);
    assert!(ipam.release_by_handle("h").unwrap().is_empty());
    assert!(ipam.release_by_handle("never-existed").unwrap().is_empty());
    assert!(store.get(&handle_key("h")).unwrap().is_none());
    // The block stays: it is affine to a live node.
    assert_eq!(ipam.snapshot().unwrap().blocks.len(), 1);
    let again = ipam
        .auto_assign(&AutoAssignRequest::v4("n1", "h2", 2), now(), &mut rng(1))
        .unwrap();
    let unallocated = ipam
        .release_ips(&[again.v4[0].addr(), ip("10.0.0.200"), ip("192.168.0.1")])
        .unwrap();
    assert_eq!(unallocated.len(), 2);
    let h: Handle =
        serde_json::from_slice(&store.get(&handle_key("h2")).unwrap().unwrap().value).unwrap();
    assert_eq!(h.total(), 1);
    assert_eq!(ipam.check().unwrap().problems(), 0);
}

#[test]
fn assign_ip_claims_block_and_refuses_duplicates() {
    let store = store_with(&[pool("p", "10.0.0.0/24", 26)], &["n1", "n2"]);
    let ipam = Ipam::new(&store);
    let got = ipam
        .assign_ip(ip("10.0.0.77"), "fixed", &BTreeMap::new(), "n1", now())
        .unwrap();
    assert_eq!(got, net("10.0.0.77/26"));
    assert_eq!(
        block(&store, "10.0.0.64/26").unwrap().affinity.as_deref(),
        Some("host:n1")
    );
    let err = ipam
        .assign_ip(ip("10.0.0.77"), "other", &BTreeMap::new(), "n2", now())
        .unwrap_err();
    assert!(
        matches!(err, Error::AddressInUse { handle: Some(ref h), .. } if h == "fixed"),
        "{err}"
    );
    // Into an existing block owned by someone else: allowed (it's a borrow).
    ipam.assign_ip(ip("10.0.0.78"), "other", &BTreeMap::new(), "n2", now())
        .unwrap();
    let err = ipam
        .assign_ip(ip("10.9.0.1"), "x", &BTreeMap::new(), "n1", now())
        .unwrap_err();
    assert!(matches!(err, Error::NotInPool { .. }), "{err}");
    assert_eq!(ipam.show_borrowed().unwrap().len(), 1);
    assert_eq!(ipam.check().unwrap().problems(), 0);
}

#[test]
fn deleted_node_blocks_are_released() {
    let store = store_with(&[pool("p", "10.0.0.0/24", 26)], &["n1", "n2"]);
    let ipam = Ipam::new(&store);
    ipam.configure(Some(false), Some(1)).unwrap();
    // n1 fills its block, then borrows one address from n2's block.
    ipam.auto_assign(
        &AutoAssignRequest::v4("n2", "n2-pod", 1),
        now(),
        &mut rng(1),
    )
    .unwrap();
    ipam.auto_assign(
        &AutoAssignRequest::v4("n1", "n1-pods", 64),
        now(),
        &mut rng(2),
    )
    .unwrap();
    let borrowed = ipam
        .auto_assign(
            &AutoAssignRequest::v4("n1", "n1-borrow", 1),
            now(),
            &mut rng(3),
        )
        .unwrap();
    let n2_block = BlockCidr::containing(borrowed.v4[0].addr(), 26).unwrap();
    // n2 goes away; its pod is released; the block still holds n1's borrowed address.
    delete_node(&store, "n2");
    ipam.release_by_handle("n2-pod").unwrap();
    assert!(block(&store, &n2_block.to_string()).is_some());
    let report = ipam.check().unwrap();
    assert_eq!(report.affinity_problems.len(), 1, "{}", report.summary());
    // Releasing the last (borrowed) address of the dead node's block deletes the block.
    ipam.release_by_handle("n1-borrow").unwrap();
    assert!(block(&store, &n2_block.to_string()).is_none());
    assert!(store.get(&n2_block.affinity_key("n2")).unwrap().is_none());
    assert_eq!(ipam.check().unwrap().problems(), 0);
    // release_node_affinities: non-empty blocks lose affinity, empty ones go.
    delete_node(&store, "n1");
    assert_eq!(ipam.release_node_affinities("n1").unwrap(), 1);
    let snapshot = ipam.snapshot().unwrap();
    assert_eq!(snapshot.blocks.len(), 1);
    assert_eq!(snapshot.blocks[0].affinity, None);
    assert!(snapshot.affinities.is_empty());
    assert_eq!(snapshot.check().problems(), 0);
    ipam.release_by_handle("n1-pods").unwrap();
    assert!(ipam.snapshot().unwrap().blocks.is_empty());
}

#[test]
fn check_finds_leaks_and_release_from_report_fixes_them() {
    let store = store_with(&[pool("p", "10.0.0.0/24", 26)], &["n1"]);
    let ipam = Ipam::new(&store);
    ipam.auto_assign(&AutoAssignRequest::v4("n1", "a", 2), now(), &mut rng(1))
        .unwrap();
    ipam.auto_assign(&AutoAssignRequest::v4("n1", "b", 1), now(), &mut rng(1))
        .unwrap();
    // Lose handle `a` (a crash in Calico's non-transactional write order), and make `b` count
    // an address it does not have.
    store.delete(&handle_key("a"), None).unwrap();
    let kv = store.get(&handle_key("b")).unwrap().unwrap();
    let mut hb: Handle = serde_json::from_slice(&kv.value).unwrap();
    *hb.block.values_mut().next().unwrap() = 5;
    store
        .update(&kv.key, &serde_json::to_vec(&hb).unwrap(), None)
        .unwrap();
    // A block affine to a node that does not exist.
    ipam.assign_ip(
        ip("10.0.0.200"),
        "ghost-pod",
        &BTreeMap::new(),
        "ghost",
        now(),
    )
    .unwrap();
    let report = ipam.check().unwrap();
    assert_eq!(report.leaked.len(), 2);
    assert_eq!(report.handle_mismatches.len(), 1);
    assert_eq!(report.affinity_problems.len(), 1);
    assert_eq!(report.problems(), 4);
    assert!(
        report
            .summary()
            .ends_with("Check complete; found 4 problems.")
    );
    // The JSON report round-trips (ipam check -o FILE; ipam release --from-report FILE).
    let json = serde_json::to_string(&report).unwrap();
    let back: report::CheckReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    ipam.release_by_handle("ghost-pod").unwrap();
    let summary = ipam.release_from_reports(&[back.clone(), back]).unwrap();
    assert_eq!(summary.released.len(), 2);
    assert_eq!(summary.handles_fixed, 1);
    let after = ipam.check().unwrap();
    assert_eq!(after.problems(), 0, "{}", after.summary());
    assert_eq!(after.allocations, 1);
}

#[test]
fn show_counts_and_renders() {
    let store = store_with(
        &[pool("p", "10.0.0.0/24", 26), pool("v6", "fd00::/120", 122)],
        &["n1"],
    );
    let ipam = Ipam::new(&store);
    let mut req = AutoAssignRequest::v4("n1", "h", 10);
    req.num_v6 = 3;
    let got = ipam.auto_assign(&req, now(), &mut rng(1)).unwrap();
    assert_eq!(got.v6.len(), 3);
    assert!(got.v6.iter().all(|n| n.prefix_len() == 122));
    let pools = ipam.show().unwrap();
    assert_eq!(pools.len(), 2);
    assert_eq!(
        (pools[0].total, pools[0].in_use, pools[0].free()),
        (256, 10, 246)
    );
    assert_eq!((pools[1].total, pools[1].in_use), (256, 3));
    let text = report::render_show(&pools, true);
    assert!(
        text.contains("| IP Pool  | 10.0.0.0/24   |       256 | 10 (4%)    | 246 (96%) |"),
        "{text}"
    );
    assert!(text.contains("| Block    |"), "{text}");
    let config = report::render_configuration(&ipam.configuration().unwrap());
    assert!(
        config.contains("| AutoAllocateBlocks | true  |"),
        "{config}"
    );
    let status = ipam.show_ip(got.v4[0].addr()).unwrap();
    assert!(
        report::render_address(&status).starts_with(&format!("IP {} is in use", got.v4[0].addr()))
    );
}

#[test]
fn uses_blocks_written_by_calico() {
    let store = store_with(
        &[pool("default-ipv4-ippool", "10.244.0.0/16", 26)],
        &["node1"],
    );
    let mut allocations = vec![serde_json::Value::Null; 64];
    allocations[0] = serde_json::json!(0);
    let block = serde_json::json!({
        "cidr": "10.244.120.64/26",
        "affinity": "host:node1",
        "strictAffinity": false,
        "allocations": allocations,
        "unallocated": (1..64).collect::<Vec<u32>>(),
        "attributes": [{"handle_id": "k8s-pod-network.abc", "secondary": {
            "namespace": "default", "node": "node1", "pod": "nginx",
            "timestamp": "2023-05-01 10:00:00.123456789 +0000 UTC"}}],
        "deleted": false,
        "sequenceNumber": 1,
        "sequenceNumberForAllocation": {"0": 0},
    });
    store
        .create(
            "/calico/ipam/v2/assignment/ipv4/block/10-244-120-64-26",
            block.to_string().as_bytes(),
        )
        .unwrap();
    store
        .create(
            "/calico/ipam/v2/host/node1/ipv4/block/10-244-120-64-26",
            br#"{"state":"confirmed","deleted":false}"#,
        )
        .unwrap();
    store
        .create(
            "/calico/ipam/v2/handle/k8s-pod-network.abc",
            br#"{"block":{"10.244.120.64/26":1},"deleted":false}"#,
        )
        .unwrap();
    let ipam = Ipam::new(&store);
    assert_eq!(ipam.check().unwrap().problems(), 0);
    let got = ipam
        .auto_assign(
            &AutoAssignRequest::v4("node1", "k8s-pod-network.def", 1),
            now(),
            &mut rng(1),
        )
        .unwrap();
    assert_eq!(got.v4[0], net("10.244.120.65/26"));
    let status = ipam.show_ip(ip("10.244.120.64")).unwrap();
    assert_eq!(status.handle.as_deref(), Some("k8s-pod-network.abc"));
    assert_eq!(status.attributes["pod"], "nginx");
    assert_eq!(
        ipam.release_by_handle("k8s-pod-network.abc").unwrap(),
        vec![ip("10.244.120.64")]
    );
    assert_eq!(ipam.check().unwrap().problems(), 0);
}

#[test]
fn failed_v6_releases_the_v4_addresses() {
    let store = store_with(
        &[pool("v4", "10.0.0.0/24", 26), pool("v6", "fd00::/126", 126)],
        &["n1"],
    );
    let ipam = Ipam::new(&store);
    let mut req = AutoAssignRequest::v4("n1", "dual", 2);
    req.num_v6 = 5;
    let err = ipam.auto_assign(&req, now(), &mut rng(1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PoolExhausted {
                family: felis_ipam::IpFamily::V6,
                got: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(allocated(&ipam).is_empty());
    assert!(store.get(&handle_key("dual")).unwrap().is_none());
    assert_eq!(ipam.check().unwrap().problems(), 0);
}

#[test]
fn release_from_reports_only_fixes_what_every_report_found() {
    let store = store_with(&[pool("p", "10.0.0.0/24", 26)], &["n1"]);
    let ipam = Ipam::new(&store);
    ipam.auto_assign(&AutoAssignRequest::v4("n1", "a", 1), now(), &mut rng(1))
        .unwrap();
    store.delete(&handle_key("a"), None).unwrap();
    let first = ipam.check().unwrap();
    ipam.auto_assign(&AutoAssignRequest::v4("n1", "b", 1), now(), &mut rng(1))
        .unwrap();
    store.delete(&handle_key("b"), None).unwrap();
    let second = ipam.check().unwrap();
    assert_eq!((first.leaked.len(), second.leaked.len()), (1, 2));
    let summary = ipam.release_from_reports(&[first, second]).unwrap();
    assert_eq!(summary.released.len(), 1);
    let after = ipam.check().unwrap();
    assert_eq!(after.leaked.len(), 1);
    assert_eq!(after.leaked[0].handle.as_deref(), Some("b"));
    // A report whose address was since released and reallocated releases nothing.
    let stale = after.clone();
    ipam.release_ips(&[after.leaked[0].ip]).unwrap();
    let again = ipam
        .assign_ip(after.leaked[0].ip, "b", &BTreeMap::new(), "n1", now())
        .unwrap();
    let summary = ipam.release_from_reports(&[stale]).unwrap();
    assert!(summary.released.is_empty());
    assert_eq!(
        ipam.show_ip(again.addr()).unwrap().handle.as_deref(),
        Some("b")
    );
    assert_eq!(ipam.check().unwrap().problems(), 0);
}

#[test]
fn split_pools() {
    let parts = felis_ipam::split(net("192.168.0.0/16"), 26, 8).unwrap();
    assert_eq!(parts.len(), 8);
    assert_eq!(parts[7], net("192.168.224.0/19"));
    let err = felis_ipam::split(net("192.168.0.0/24"), 26, 16).unwrap_err();
    assert!(
        err.to_string().contains("smaller than the block size /26"),
        "{err}"
    );
}

#[test]
fn claims_skip_blocks_that_lost_their_affinity() {
    for seed in 0..8 {
        let store = store_with(&[pool("p", "10.0.0.0/25", 26)], &["old", "n2"]);
        let ipam = Ipam::new(&store);
        let kept = ipam
            .assign_ip(ip("10.0.0.10"), "kept", &BTreeMap::new(), "old", now())
            .unwrap();
        delete_node(&store, "old");
        assert_eq!(ipam.release_node_affinities("old").unwrap(), 1);
        // 10.0.0.0/26 still exists (it holds `kept`) but no affinity names it.
        let got = ipam
            .auto_assign(&AutoAssignRequest::v4("n2", "a", 1), now(), &mut rng(seed))
            .unwrap();
        assert!(
            net("10.0.0.64/26").contains(&got.v4[0].addr()),
            "seed {seed}: {:?}",
            got.v4
        );
        // n2's block fills up; the next address is borrowed from the unaffine block.
        ipam.auto_assign(&AutoAssignRequest::v4("n2", "b", 63), now(), &mut rng(seed))
            .unwrap();
        let borrowed = ipam
            .auto_assign(&AutoAssignRequest::v4("n2", "c", 1), now(), &mut rng(seed))
            .unwrap();
        assert!(net("10.0.0.0/26").contains(&borrowed.v4[0].addr()));
        assert_eq!(ipam.check().unwrap().problems(), 0);
        // Its last addresses released, the unaffine block is deleted.
        ipam.release_by_handle("c").unwrap();
        ipam.release_ips(&[kept.addr()]).unwrap();
        assert!(block(&store, "10.0.0.0/26").is_none());
        assert_eq!(ipam.check().unwrap().problems(), 0);
    }
}

#[test]
fn pending_affinity_left_by_calico_is_reported_not_fatal() {
    let store = store_with(&[pool("p", "10.0.0.0/24", 26)], &["n1"]);
    // Calico crashed between writing the pending affinity and creating the block.
    store
        .create(
            "/calico/ipam/v2/host/n1/ipv4/block/10-0-0-0-26",
            br#"{"state":"pending","deleted":false}"#,
        )
        .unwrap();
    let ipam = Ipam::new(&store);
    let got = ipam
        .auto_assign(&AutoAssignRequest::v4("n1", "a", 1), now(), &mut rng(1))
        .unwrap();
    assert_eq!(got.v4.len(), 1);
    let report = ipam.check().unwrap();
    assert!(
        report
            .affinity_problems
            .iter()
            .all(|p| p.block.to_string() == "10.0.0.0/26"),
        "{}",
        report.summary()
    );
    assert_eq!(allocated(&ipam).len(), 1);
}

#[test]
fn ipam_configuration_resource_and_configure_agree() {
    let store = store_with(&[pool("p", "10.0.0.0/24", 26)], &["n1"]);
    let ipam = Ipam::new(&store);
    assert_eq!(
        ipam.configuration().unwrap(),
        felis_ipam::IpamConfig::default()
    );
    // `felis apply` of an IPAMConfiguration writes the v3 resource.
    let resource = serde_json::json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPAMConfiguration",
        "metadata": {"name": "default"},
        "spec": {"strictAffinity": true, "maxBlocksPerHost": 2},
    });
    store
        .create(
            &felis_ipam::resources::ipam_configuration_key(),
            resource.to_string().as_bytes(),
        )
        .unwrap();
    let config = ipam.configuration().unwrap();
    assert!(config.strict_affinity);
    assert_eq!(config.max_blocks_per_host, 2);
    // `ipam configure` starts from the effective configuration and writes Calico's record.
    let after = ipam.configure(None, Some(7)).unwrap();
    assert!(after.strict_affinity);
    assert_eq!(after.max_blocks_per_host, 7);
    assert_eq!(ipam.configuration().unwrap(), after);
    let record = store.get("/calico/ipam/v2/config").unwrap().unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&record.value).unwrap(),
        serde_json::json!({"strict_affinity": true, "auto_allocate_blocks": true, "maxBlocksPerHost": 7})
    );
}

#[test]
fn check_compares_allocations_with_workload_endpoints() {
    let store = store_with(&[pool("p", "10.0.0.0/24", 26)], &["n1"]);
    let ipam = Ipam::new(&store);
    let mut req = AutoAssignRequest::v4("n1", "k8s-pod-network.c1", 1);
    req.attributes.insert("namespace".into(), "default".into());
    req.attributes.insert("pod".into(), "web".into());
    let got = ipam.auto_assign(&req, now(), &mut rng(1)).unwrap();
    let report = ipam.check().unwrap();
    assert_eq!(report.problems(), 0);
    assert_eq!(report.allocated_without_workload.len(), 1);
    assert_eq!(report.allocated_without_workload[0].workload, "default/web");
    let wep = |name: &str, ip: &str| {
        serde_json::json!({
            "apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"node": "n1", "pod": name, "ipNetworks": [format!("{ip}/32")]},
        })
        .to_string()
    };
    let prefix = "/calico/resources/v3/projectcalico.org/workloadendpoints/default/";
    let web = wep("n1-k8s-web-eth0", &got.v4[0].addr().to_string());
    store
        .create(&format!("{prefix}n1-k8s-web-eth0"), web.as_bytes())
        .unwrap();
    store
        .create(
            &format!("{prefix}n1-k8s-rogue-eth0"),
            wep("n1-k8s-rogue-eth0", "10.0.0.250").as_bytes(),
        )
        .unwrap();
    store
        .create(
            &format!("{prefix}n1-k8s-noipam-eth0"),
            wep("n1-k8s-noipam-eth0", "192.168.9.9").as_bytes(),
        )
        .unwrap();
    let report = ipam.check().unwrap();
    assert!(report.allocated_without_workload.is_empty());
    assert_eq!(report.in_use_not_allocated.len(), 1, "{}", report.summary());
    assert_eq!(
        report.in_use_not_allocated[0].workload,
        "default/n1-k8s-rogue-eth0"
    );
    assert!(
        report
            .summary()
            .ends_with("Check complete; found 1 problems.")
    );
}
