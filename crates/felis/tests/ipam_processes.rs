//! IPAM under concurrent processes, through the CNI IPAM entry point (`felis-ipam`, a link to
//! the `felis` binary), on the embedded store and on a real etcd: 8 workers on 4 nodes allocate
//! 10,000 addresses in total, then release half of them. No address is ever handed out twice,
//! `ipam check` finds no problem, and `ipam show` counts exactly what is held.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;

const WORKERS: usize = 8;
const NODES: usize = 4;

fn total() -> usize {
    std::env::var("FELIS_IPAM_STRESS_TOTAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// A directory holding `felis-ipam` (a link to the binary), like `/opt/cni/bin`.
fn plugin_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("felis-ipam");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_felis"), &link).unwrap();
    (dir, link)
}

fn felis(datastore: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_felis"))
        .args(args)
        .env("FELIS_DATASTORE", datastore)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "felis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One CNI IPAM invocation; returns stdout.
fn cni(plugin: &Path, datastore: &str, command: &str, node: &str, container: &str) -> String {
    let config = serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "felis",
        "nodename": node, "datastore": datastore, "ipam": {"type": "felis-ipam"},
    });
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", "/var/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{command} {container} on {node}: {stdout}"
    );
    stdout
}

fn run(datastore: &str) {
    felis_setup(datastore);
    let (_dir, plugin) = plugin_dir();
    let total = total();
    let per_worker = total / WORKERS;
    // Phase 1: every worker allocates its share; record (container, address).
    let allocations: Vec<Vec<(String, String)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let plugin = plugin.clone();
                scope.spawn(move || {
                    let node = format!("node-{}", w % NODES);
                    (0..per_worker)
                        .map(|i| {
                            let container = format!("w{w}-c{i}");
                            let out = cni(&plugin, datastore, "ADD", &node, &container);
                            let result: serde_json::Value = serde_json::from_str(&out).unwrap();
                            let address = result["ips"][0]["address"].as_str().unwrap().to_string();
                            (container, address)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<&String> = allocations.iter().flatten().map(|(_, a)| a).collect();
    let distinct: BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), per_worker * WORKERS);
    assert_eq!(distinct.len(), all.len(), "an address was handed out twice");

    // Phase 2: every worker releases every other address of its own, concurrently.
    std::thread::scope(|scope| {
        for (w, mine) in allocations.iter().enumerate() {
            let plugin = plugin.clone();
            scope.spawn(move || {
                let node = format!("node-{}", w % NODES);
                for (container, _) in mine.iter().step_by(2) {
                    cni(&plugin, datastore, "DEL", &node, container);
                    // DEL is idempotent.
                }
                if let Some((container, _)) = mine.first() {
                    cni(&plugin, datastore, "DEL", &node, container);
                }
            });
        }
    });
    let held: usize = allocations.iter().map(|mine| mine.len() / 2).sum();

    let check = felis(datastore, &["ipam", "check"]);
    assert!(
        check.contains("Check complete; found 0 problems."),
        "{check}"
    );
    let show = felis(datastore, &["ipam", "show"]);
    let in_use: BTreeMap<&str, usize> = show
        .lines()
        .filter(|l| l.contains("IP Pool"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            Some((
                cells.get(2).copied()?,
                cells.get(4)?.split_whitespace().next()?.parse().ok()?,
            ))
        })
        .collect();
    assert_eq!(in_use.get("10.128.0.0/16"), Some(&held), "{show}");
}

fn felis_setup(datastore: &str) {
    let mut pool = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: stress\nspec:\n  cidr: 10.128.0.0/16\n".to_string();
    for n in 0..NODES {
        pool.push_str(&format!(
            "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: node-{n}\nspec:\n  bgp:\n    ipv4Address: 10.0.0.{}/24\n",
            n + 10
        ));
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_felis"))
        .args(["apply", "-f", "-"])
        .env("FELIS_DATASTORE", datastore)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pool.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn concurrent_processes_on_the_embedded_store_never_share_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("felis.db").display());
    run(&url);
}

#[test]
fn concurrent_processes_on_etcd_never_share_an_address() {
    let etcd = felis_store::testing::EtcdServer::start()
        .expect("etcd is needed (Debian package etcd-server; scripts/test installs it)");
    run(&etcd.url());
}
