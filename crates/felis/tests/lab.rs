//! `felis lab` end to end, as a user runs it: hosts in network namespaces, agents, workloads
//! attached through the CNI plugin, and the emulated VPC's drops. Needs root (CI runs as root);
//! every test makes its own uniquely named lab and removes it on drop, even on failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::process::Command;

use common::Lab;
use common::text;

/// Hosts h1, h3 are in subnet 1 and h2 in subnet 2 (round-robin).
fn subnet_of(workload: &str) -> u8 {
    match &workload[..2] {
        "h2" => 2,
        _ => 1,
    }
}

#[test]
fn vxlan_cross_subnet_lab_connects_every_workload_pair_and_the_internet() {
    let Some(lab) = Lab::up("l", &["--hosts", "3", "--subnets", "2", "--workloads", "2"]) else {
        return;
    };
    let report = lab.check();
    assert_eq!(report["failed"], 0, "{report:#}");
    assert_eq!(report["passed"], 36);
    // Within a subnet the route is direct; across subnets it goes through vxlan.calico.
    let routes = lab.ip("h1", "route");
    let ps: serde_json::Value = serde_json::from_slice(
        &lab.felis(&["lab", "ps", "--name", &lab.name, "-o", "json"])
            .stdout,
    )
    .unwrap();
    let address_of = |w: &str| {
        ps["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == w)
            .unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let h3_block = address_of("h3-w1");
    let h2_block = address_of("h2-w1");
    let route_for = |addr: &str| {
        let prefix: Vec<&str> = addr.split('.').take(3).collect();
        routes
            .lines()
            .find(|l| l.starts_with(&prefix.join(".")))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        route_for(&h3_block).contains("dev eth0"),
        "same subnet is direct: {routes}"
    );
    assert!(
        route_for(&h2_block).contains("dev vxlan.calico"),
        "across subnets is VXLAN: {routes}"
    );
}

#[test]
fn without_encapsulation_only_same_subnet_pairs_connect_as_on_aws() {
    let Some(lab) = Lab::up("l", &["--pool-mode", "none"]) else {
        return;
    };
    let report = lab.check();
    for probe in report["probes"].as_array().unwrap() {
        let (from, to) = (
            probe["from"].as_str().unwrap(),
            probe["to"].as_str().unwrap(),
        );
        let expected = to == "internet" || subnet_of(from) == subnet_of(to);
        assert_eq!(probe["ok"], expected, "{from} -> {to}");
    }
}

#[test]
fn source_destination_checks_block_unencapsulated_pods_until_disabled() {
    let Some(lab) = Lab::up(
        "l",
        &[
            "--hosts",
            "2",
            "--subnets",
            "1",
            "--workloads",
            "1",
            "--pool-mode",
            "none",
            "--src-dst-check",
            "on",
        ],
    ) else {
        return;
    };
    let report = lab.check();
    let pair = |r: &serde_json::Value| {
        r["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["from"] == "h1-w1" && p["to"] == "h2-w1")
            .unwrap()["ok"]
            .clone()
    };
    assert_eq!(
        pair(&report),
        false,
        "the check drops foreign source addresses"
    );
    for host in ["h1", "h2"] {
        let out = lab.felis(&["lab", "src-dst-check", "--name", &lab.name, host, "off"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert_eq!(
        pair(&lab.check()),
        true,
        "with the checks off, pods talk directly"
    );
}

#[test]
fn lab_commands_name_their_lab_and_fail_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_felis"))
        .args(["lab", "ps", "--name", "nosuchlab"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nosuchlab"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_felis"))
        .args(["lab", "up", "--name", "Bad.Name"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--name"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn lab_exec_runs_in_a_workload() {
    let Some(lab) = Lab::up("l", &["--hosts", "1", "--subnets", "1", "--workloads", "1"]) else {
        return;
    };
    let out = lab.felis(&[
        "lab", "exec", "--name", &lab.name, "h1-w1", "--", "ip", "-4", "route",
    ]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("default via 169.254.1.1"),
        "{}",
        text(&out.stdout)
    );
    let out = lab.felis(&["lab", "exec", "--name", &lab.name, "h1-w1", "--", "false"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the command's exit code comes back"
    );
}

#[test]
fn an_agent_killed_and_restarted_under_traffic_keeps_flows_and_recreates_nothing() {
    let Some(lab) = Lab::up("l", &["--hosts", "3", "--subnets", "2", "--workloads", "1"]) else {
        return;
    };
    let ps: serde_json::Value = serde_json::from_slice(
        &lab.felis(&["lab", "ps", "--name", &lab.name, "-o", "json"])
            .stdout,
    )
    .unwrap();
    let address = |w: &str| {
        ps["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == w)
            .unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let before_routes = lab.ip("h1", "route");
    let before_link = lab.ip("h1", "-d link show vxlan.calico");
    // A flow across subnets (VXLAN) and one within the subnet, while h1's agent dies and returns.
    let spawn_ping = |to: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{}.h1-w1", lab.name),
                "ping",
                "-q",
                "-c",
                "60",
                "-i",
                "0.05",
                to,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (vxlan, direct) = (spawn_ping(&address("h2-w1")), spawn_ping(&address("h3-w1")));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = lab.felis(&["lab", "agent", "--name", &lab.name, "h1", "stop", "--kill"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = lab.felis(&["lab", "agent", "--name", &lab.name, "h1", "start"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for ping in [vxlan, direct] {
        let out = ping.wait_with_output().unwrap();
        let summary = text(&out.stdout);
        assert!(
            summary.contains(" 0% packet loss"),
            "the flow survived: {summary}"
        );
    }
    assert_eq!(
        lab.ip("h1", "route"),
        before_routes,
        "routes are adopted, not re-created"
    );
    let index = |s: &str| s.split(':').next().unwrap_or_default().to_string();
    assert_eq!(
        index(&lab.ip("h1", "-d link show vxlan.calico")),
        index(&before_link),
        "same device"
    );
    let log = std::fs::read_to_string(format!("/run/felis/lab/{}/h1.log", lab.name)).unwrap();
    let second_start = log.rfind("starting").unwrap();
    assert!(
        !log[second_start..].contains("routes reconciled"),
        "nothing to change after restart:\n{}",
        &log[second_start..]
    );
}

#[test]
fn hosts_form_a_bgp_full_mesh_and_node_status_shows_it() {
    let Some(lab) = Lab::up("l", &["--hosts", "3", "--subnets", "2", "--workloads", "0"]) else {
        return;
    };
    let status = |host: &str| -> serde_json::Value {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{}.{host}", lab.name),
                env!("CARGO_BIN_EXE_felis"),
            ])
            .args([
                "node",
                "status",
                "--state-dir",
                &format!("/run/felis/lab/{}/{host}", lab.name),
                "-o",
                "json",
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    // Sessions come up within seconds (connect delay 2 s); the status file is rewritten every 5 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for host in ["h1", "h2", "h3"] {
        loop {
            let report = status(host);
            let peers = report["peers"].as_array().cloned().unwrap_or_default();
            let established = peers
                .iter()
                .filter(|p| p["bgp_state"] == "Established" && p["type"] == "node-to-node mesh")
                .count();
            if established == 2 {
                // Each node advertises its own block to each peer and receives theirs.
                assert!(
                    peers
                        .iter()
                        .all(|p| p["prefixes"]["received"].as_u64() >= Some(1)),
                    "{report:#}"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{host}: mesh not established: {report:#}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
    // The same per peer as Prometheus metrics on the health address (written with the status).
    let netns = felis_netlink::Netns::open(format!("/run/netns/{}.h1", lab.name)).unwrap();
    let metrics = netns
        .run(|| {
            use std::io::Read as _;
            use std::io::Write as _;
            let mut s = std::net::TcpStream::connect("127.0.0.1:9099").unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            body
        })
        .unwrap();
    let up: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("felis_bgp_peer_up{") && l.ends_with(" 1"))
        .collect();
    assert_eq!(up.len(), 2, "{metrics}");
    assert!(
        metrics.contains("felis_bgp_peer_prefixes_received{peer="),
        "{metrics}"
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}.h1", lab.name),
            env!("CARGO_BIN_EXE_felis"),
        ])
        .args([
            "node",
            "status",
            "--state-dir",
            &format!("/run/felis/lab/{}/h1", lab.name),
        ])
        .output()
        .unwrap();
    let text = text(&out.stdout);
    assert!(
        text.starts_with("Felis process is running.\n\nIPv4 BGP status\n"),
        "{text}"
    );
    assert!(
        text.contains("| 10.0.2.10    | node-to-node mesh | up    |"),
        "{text}"
    );
    assert!(text.contains("No IPv6 peers found."), "{text}");
}

/// The lab's AWS (IMDSv2 + EC2 on the VPC router) is what an agent with `awsSrcDstCheck`
/// talks to: Disable turns the emulated checks off through ModifyNetworkInterfaceAttribute, so
/// pods reach each other unencapsulated; Enable turns them back on. Live, without restarts.
#[test]
fn agents_set_the_labs_source_destination_checks_through_its_ec2_api() {
    let Some(lab) = Lab::up(
        "l",
        &[
            "--hosts",
            "2",
            "--subnets",
            "1",
            "--workloads",
            "1",
            "--pool-mode",
            "none",
            "--src-dst-check",
            "on",
        ],
    ) else {
        return;
    };
    let failed_until = |want: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let check = lab.check();
            if check["failed"] == want {
                return check;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "expected {want} failures: {check:#}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    // On: the two pod-to-pod probes fail (foreign source addresses), the internet works.
    let check = failed_until(2);
    for probe in check["probes"].as_array().unwrap() {
        let to_internet = probe["to"] == "internet";
        assert_eq!(probe["ok"], to_internet, "{probe}");
    }
    // `felis aws check` on a host, against the lab's EC2: the checks block the cluster.
    let aws_check = || {
        let felis = env!("CARGO_BIN_EXE_felis");
        let out = lab.felis(&[
            "lab",
            "exec",
            "--name",
            &lab.name,
            "h1",
            "--",
            felis,
            "aws",
            "check",
            "--nodename",
            "h1",
            "-o",
            "json",
        ]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("aws check: {e}: {}{}", text(&out.stdout), text(&out.stderr))
        });
        (out.status.code(), report)
    };
    let (code, report) = aws_check();
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["source_dest_check"], true, "{report:#}");
    assert_eq!(report["peers"][0]["same_subnet"], true, "{report:#}");
    let config = |mode: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\nspec: {{awsSrcDstCheck: {mode}}}\n"
        )
    };
    lab.apply(&config("Disable"));
    failed_until(0);
    let log = std::fs::read_to_string(format!("/run/felis/lab/{}/aws.log", lab.name)).unwrap();
    for host in ["h1", "h2"] {
        let line = format!(
            "ModifyNetworkInterfaceAttribute eni-{}-{host} SourceDestCheck=false",
            lab.name
        );
        assert!(log.contains(&line), "{line} not in aws.log:\n{log}");
        let (code, report) = aws_check();
        assert_eq!(code, Some(0), "{report:#}");
        assert!(
            lab.log(host).contains(&format!(
                "source/destination check disabled on eni-{}-{host}",
                lab.name
            )),
            "{host}'s agent did not report it"
        );
    }
    lab.apply(&config("Enable"));
    failed_until(2);
}
