//! Property test: random sequences of allocate / assign / release / node delete / configure on
//! the in-memory store, against a simple model. Never a duplicate address, everything released
//! comes back, `check()` finds no problem other than blocks of nodes deleted a moment ago.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashSet;
use std::net::IpAddr;

use common::*;
use felis_ipam::AutoAssignRequest;
use felis_ipam::Error;
use felis_ipam::Ipam;
use felis_store::memory::MemoryStore as MemStore;
use proptest::prelude::*;

const NODES: [&str; 3] = ["n0", "n1", "n2"];
const RESERVED: &str = "10.0.0.5";

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        node: usize,
        v4: usize,
        v6: usize,
        seed: u64,
    },
    AssignIp {
        node: usize,
        offset: u8,
    },
    ReleaseHandle {
        pick: usize,
    },
    ReleaseIp {
        pick: usize,
    },
    DeleteNode {
        node: usize,
    },
    ReviveNode {
        node: usize,
    },
    Configure {
        strict: bool,
        max: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..4usize, 0..3usize, any::<u64>())
            .prop_map(|(node, v4, v6, seed)| Op::Alloc { node, v4: v4.max(usize::from(v6 == 0)), v6, seed }),
        2 => (0..3usize, 0..32u8).prop_map(|(node, offset)| Op::AssignIp { node, offset }),
        4 => any::<usize>().prop_map(|pick| Op::ReleaseHandle { pick }),
        2 => any::<usize>().prop_map(|pick| Op::ReleaseIp { pick }),
        1 => (0..3usize).prop_map(|node| Op::DeleteNode { node }),
        1 => (0..3usize).prop_map(|node| Op::ReviveNode { node }),
        1 => (any::<bool>(), 0..3u32).prop_map(|(strict, max)| Op::Configure { strict, max }),
    ]
}

struct Model {
    handles: BTreeMap<String, BTreeSet<IpAddr>>,
    dead: BTreeSet<usize>,
    next_handle: usize,
}

impl Model {
    fn in_use(&self) -> HashSet<IpAddr> {
        self.handles.values().flatten().copied().collect()
    }
}

fn setup() -> MemStore {
    let store = MemStore::new();
    put_pool(&store, &pool("v4", "10.0.0.0/27", 29));
    put_pool(&store, &pool("v6", "fd00::/123", 125));
    put_reservation(&store, "r", &["10.0.0.5/32"]);
    for n in NODES {
        put_node(&store, n, &[]);
    }
    store
}

fn verify(ipam: &Ipam<'_>, model: &Model) -> Result<(), TestCaseError> {
    let stored = allocated(ipam); // asserts no duplicates
    prop_assert_eq!(&stored, &model.in_use());
    prop_assert!(!stored.contains(&ip(RESERVED)));
    let report = ipam
        .check()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let dead: BTreeSet<&str> = model.dead.iter().map(|&n| NODES[n]).collect();
    let unexpected =
        report.leaked.len() + report.handle_mismatches.len() + report.outside_pools.len();
    prop_assert_eq!(unexpected, 0, "{}", report.summary());
    for p in &report.affinity_problems {
        prop_assert!(dead.contains(p.node.as_str()), "{}", report.summary());
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = setup();
    let ipam = Ipam::new(&store);
    let mut model = Model {
        handles: BTreeMap::new(),
        dead: BTreeSet::new(),
        next_handle: 0,
    };
    for op in ops {
        match op {
            Op::Alloc { node, v4, v6, seed } => {
                if model.dead.contains(&node) {
                    continue;
                }
                let handle = format!("h{}", model.next_handle);
                model.next_handle += 1;
                let mut request = AutoAssignRequest::v4(NODES[node], &handle, v4);
                request.num_v6 = v6;
                let before = model.in_use();
                match ipam.auto_assign(&request, now(), &mut rng(seed)) {
                    Ok(got) => {
                        prop_assert_eq!(got.v4.len(), v4);
                        prop_assert_eq!(got.v6.len(), v6);
                        let ips: BTreeSet<IpAddr> =
                            got.v4.iter().chain(&got.v6).map(|n| n.addr()).collect();
                        prop_assert_eq!(ips.len(), v4 + v6);
                        for ip in &ips {
                            prop_assert!(!before.contains(ip), "{} handed out twice", ip);
                        }
                        model.handles.insert(handle, ips);
                    }
                    Err(Error::PoolExhausted { .. }) => {}
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            Op::AssignIp { node, offset } => {
                if model.dead.contains(&node) {
                    continue;
                }
                let addr = ip(&format!("10.0.0.{offset}"));
                let handle = format!("h{}", model.next_handle);
                model.next_handle += 1;
                let result = ipam.assign_ip(addr, &handle, &BTreeMap::new(), NODES[node], now());
                if addr == ip(RESERVED) {
                    prop_assert!(
                        matches!(result, Err(Error::AddressReserved { .. })),
                        "{:?}",
                        result
                    );
                } else if model.in_use().contains(&addr) {
                    prop_assert!(
                        matches!(result, Err(Error::AddressInUse { .. })),
                        "{:?}",
                        result
                    );
                } else {
                    prop_assert!(result.is_ok(), "{:?}", result);
                    model.handles.insert(handle, BTreeSet::from([addr]));
                }
            }
            Op::ReleaseHandle { pick } => {
                let Some(handle) = model
                    .handles
                    .keys()
                    .nth(pick % model.handles.len().max(1))
                    .cloned()
                else {
                    continue;
                };
                let released: BTreeSet<IpAddr> = ipam
                    .release_by_handle(&handle)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .into_iter()
                    .collect();
                let expected = model.handles.remove(&handle).unwrap_or_default();
                prop_assert_eq!(released, expected);
            }
            Op::ReleaseIp { pick } => {
                let all: Vec<(String, IpAddr)> = model
                    .handles
                    .iter()
                    .flat_map(|(h, ips)| ips.iter().map(move |ip| (h.clone(), *ip)))
                    .collect();
                let Some((handle, addr)) = all.get(pick % all.len().max(1)).cloned() else {
                    continue;
                };
                let unallocated = ipam
                    .release_ips(&[addr])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(unallocated.is_empty());
                if let Some(ips) = model.handles.get_mut(&handle) {
                    ips.remove(&addr);
                    if ips.is_empty() {
                        model.handles.remove(&handle);
                    }
                }
            }
            Op::DeleteNode { node } => {
                if model.dead.insert(node) {
                    delete_node(&store, NODES[node]);
                }
            }
            Op::ReviveNode { node } => {
                if model.dead.remove(&node) {
                    ipam.release_node_affinities(NODES[node])
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    put_node(&store, NODES[node], &[]);
                }
            }
            Op::Configure { strict, max } => {
                ipam.configure(Some(strict), Some(max))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        verify(&ipam, &model)?;
    }
    // Bring every node back, release everything: nothing is left and the whole pool can be
    // allocated again.
    for node in std::mem::take(&mut model.dead) {
        ipam.release_node_affinities(NODES[node])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        put_node(&store, NODES[node], &[]);
    }
    for handle in std::mem::take(&mut model.handles).into_keys() {
        ipam.release_by_handle(&handle)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    prop_assert!(allocated(&ipam).is_empty());
    let report = ipam
        .check()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(report.problems(), 0, "{}", report.summary());
    prop_assert_eq!(report.handles, 0);
    ipam.configure(Some(false), Some(0))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut all = AutoAssignRequest::v4("n0", "everything", 31);
    all.num_v6 = 32;
    let got = ipam
        .auto_assign(&all, now(), &mut rng(0))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(got.v4.len() + got.v6.len(), 63);
    let more = ipam.auto_assign(
        &AutoAssignRequest::v4("n1", "one-more", 1),
        now(),
        &mut rng(0),
    );
    prop_assert!(
        matches!(more, Err(Error::PoolExhausted { .. })),
        "{:?}",
        more
    );
    let report = ipam
        .check()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(report.problems(), 0, "{}", report.summary());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn ipam_never_double_allocates_and_gets_everything_back(ops in prop::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
