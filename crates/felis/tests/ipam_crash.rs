//! Crash safety of IPAM: CNI IPAM ADDs killed at random points leave nothing worse than leaks;
//! `ipam check` reports them as leaks once past the grace period, and `ipam release
//! --from-report` cleans them up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::io::Write;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

fn felis(datastore: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_felis"))
        .args(args)
        .env("FELIS_DATASTORE", datastore)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "felis {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn killed_allocators_leave_only_leaks_that_release_from_report_cleans() {
    let dir = tempfile::tempdir().unwrap();
    let datastore = format!("file://{}", dir.path().join("felis.db").display());
    let mut setup = Command::new(env!("CARGO_BIN_EXE_felis"))
        .args(["apply", "-f", "-"])
        .env("FELIS_DATASTORE", &datastore)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    setup.stdin.take().unwrap().write_all(b"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.128.0.0/16\n---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: n1\nspec:\n  bgp:\n    ipv4Address: 10.0.0.1/24\n").unwrap();
    assert!(setup.wait().unwrap().success());

    // The IPAM plugin (`felis-ipam` link) with pod arguments: each ADD that gets through leaves
    // an allocation that only a WorkloadEndpoint would account for, as an ADD of the full plugin
    // killed between IPAM and the endpoint does. Kill them at random points.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_felis"), bin.join("felis-ipam")).unwrap();
    let config = serde_json::json!({
        "cniVersion": "1.0.0", "name": "net", "type": "felis", "nodename": "n1",
        "datastore": datastore, "ipam": {"type": "felis-ipam"},
    })
    .to_string();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut killed = 0;
    for i in 0..60 {
        let mut child = Command::new(bin.join("felis-ipam"))
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("c{i}"))
            .env("CNI_NETNS", "/var/run/netns/none")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &bin)
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{i}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(config.as_bytes());
        // Kill somewhere between start-up and completion (0–30 ms), or let it finish.
        let delay = next() % 40;
        if delay < 30 {
            std::thread::sleep(Duration::from_millis(delay));
            if child.kill().is_ok() {
                killed += 1;
            }
        }
        let _ = child.wait();
    }
    assert!(killed > 0);

    // Within the grace period nothing counts as a problem.
    let check = felis(&datastore, &["ipam", "check"]);
    assert!(
        check.contains("Check complete; found 0 problems."),
        "{check}"
    );
    // Past it, every allocation without an endpoint is a leak, and nothing worse.
    let report_path = dir.path().join("report.json");
    let check = felis(
        &datastore,
        &[
            "ipam",
            "check",
            "--grace-period",
            "0s",
            "-o",
            report_path.to_str().unwrap(),
        ],
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    for worse in [
        "handle_mismatches",
        "outside_pools",
        "affinity_problems",
        "in_use_not_allocated",
    ] {
        assert_eq!(
            report[worse].as_array().map(Vec::len),
            Some(0),
            "{worse}: {check}"
        );
    }
    let leaks = report["leaked"].as_array().unwrap().len();
    assert!(
        leaks > 0,
        "the ADDs that got through left allocations no endpoint accounts for: {check}"
    );

    felis(
        &datastore,
        &[
            "ipam",
            "release",
            "--from-report",
            report_path.to_str().unwrap(),
            "--grace-period",
            "0s",
        ],
    );
    let after = felis(&datastore, &["ipam", "check", "--grace-period", "0s"]);
    assert!(
        after.contains("Check complete; found 0 problems."),
        "{after}"
    );
    let show = felis(&datastore, &["ipam", "show"]);
    assert!(show.contains("| 0 (0%)"), "everything released: {show}");
}
