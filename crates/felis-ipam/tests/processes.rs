//! Several PROCESSES (this test binary re-executed as workers, as CNI plugin invocations would
//! be) allocating on 4 nodes through one SQLite file: no address twice, `check` clean.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::process::Command;

use common::*;
use felis_ipam::AutoAssignRequest;
use felis_ipam::Ipam;

const WORKER_ENV: &str = "FELIS_IPAM_TEST_WORKER";
const NODES: [&str; 4] = ["node-a", "node-b", "node-c", "node-d"];
const ROUNDS: usize = 30;

/// Worker: `<url> <node> <worker id>`; prints `KEPT <ip>` for each address it keeps.
fn worker(spec: &str) {
    let parts: Vec<&str> = spec.split(' ').collect();
    let [url, node, id] = parts[..] else {
        panic!("bad worker spec {spec:?}")
    };
    let store = felis_store::open(url).unwrap();
    let ipam = Ipam::new(&*store);
    let mut rng = rng(id.parse().unwrap());
    for i in 0..ROUNDS {
        let handle = format!("k8s-pod-network.p{id}-{i}");
        let got = ipam
            .auto_assign(&AutoAssignRequest::v4(node, &handle, 1), now(), &mut rng)
            .unwrap();
        let addr = got.v4[0].addr();
        if i % 3 == 2 {
            assert_eq!(ipam.release_by_handle(&handle).unwrap(), vec![addr]);
        } else {
            println!("KEPT {addr}");
        }
    }
}

#[test]
fn processes_on_four_nodes_sqlite() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        worker(&spec);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/felis.db", dir.path().display());
    {
        let store = felis_store::open(&url).unwrap();
        put_pool(&*store, &pool("pool", "10.30.0.0/24", 27));
        for n in NODES {
            put_node(&*store, n, &[]);
        }
    }
    let exe = std::env::current_exe().unwrap();
    let spawned: Vec<_> = (0..NODES.len() * 2)
        .map(|id| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "processes_on_four_nodes_sqlite",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    WORKER_ENV,
                    format!("{url} {} {}", NODES[id % NODES.len()], id),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut kept: Vec<IpAddr> = Vec::new();
    for child in spawned {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "worker failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        kept.extend(
            stdout
                .lines()
                .filter_map(|l| l.split("KEPT ").nth(1)) // the harness prints `test .. ... ` first
                .map(|s| ip(s.trim())),
        );
    }
    let store = felis_store::open(&url).unwrap();
    let ipam = Ipam::new(&*store);
    let unique: HashSet<IpAddr> = kept.iter().copied().collect();
    assert_eq!(unique.len(), kept.len(), "an address was handed out twice");
    let report = ipam.check().unwrap();
    assert_eq!(report.problems(), 0, "{}", report.summary());
    assert_eq!(kept.len(), NODES.len() * 2 * (ROUNDS - ROUNDS / 3));
    assert_eq!(allocated(&ipam), unique);
    assert_eq!(ipam.show().unwrap()[0].in_use, kept.len() as u128);
}
