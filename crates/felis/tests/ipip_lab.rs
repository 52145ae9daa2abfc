//! `felis lab` with IPIP pools: the agents run IPIP as eBPF on tc (the kernel here has no
//! `ipip` module), and the VPC router sees protocol 4 between subnets and plain pod packets
//! within one. Needs root (CI runs as root); every test makes its own uniquely named lab and
//! removes it on drop, even on failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::io::Read;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use common::Lab;
use common::text;

/// What these tests add to the shared lab guard.
trait IpipLab {
    fn check_converged(&self) -> serde_json::Value;
    fn address(&self, workload: &str) -> String;
    fn ping_with(&self, from: &str, extra: &[&str], to: &str) -> bool;
}

impl IpipLab for Lab {
    /// `lab check` until every probe passes (routes learned by BGP may still be on their way
    /// when `lab up` returns), at most 20 s; returns the last report.
    fn check_converged(&self) -> serde_json::Value {
        let mut report = self.check();
        for _ in 0..20 {
            if report["failed"] == 0 {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            report = self.check();
        }
        report
    }

    fn address(&self, workload: &str) -> String {
        self.addresses()[workload].clone()
    }

    /// Pings `to` from a host's or workload's namespace.
    fn ping_with(&self, from: &str, extra: &[&str], to: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.netns(from), "ping", "-q", "-W", "1"])
            .args(["-c", "3", "-i", "0.2"])
            .args(extra)
            .arg(to)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

/// tcpdump on every interface of a namespace, printing decoded packets; killed on drop.
struct Capture {
    child: Child,
}

impl Capture {
    fn start(netns: &str, filter: &str) -> Capture {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump", "-i", "any", "-n", "-l"])
            .arg("--immediate-mode")
            .arg(filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !text(&seen).contains("listening on") {
            assert_eq!(stderr.read(&mut byte).unwrap(), 1, "tcpdump exited early");
            seen.push(byte[0]);
        }
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stderr.read_to_end(&mut sink);
        });
        Capture { child }
    }

    /// Stops the capture; returns the packet lines.
    fn finish(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        let _ = self.child.wait();
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ipip_cross_subnet_encapsulates_between_subnets_only_and_every_pair_connects() {
    // h1 and h3 share subnet s1 (10.0.1.0/24); h2 is in s2.
    let Some(lab) = Lab::up(
        "i",
        &[
            "--hosts",
            "3",
            "--subnets",
            "2",
            "--workloads",
            "1",
            "--pool-mode",
            "ipip-cross-subnet",
        ],
    ) else {
        return;
    };
    let report = lab.check_converged();
    assert_eq!(report["failed"], 0, "{report:#}");
    assert_eq!(report["passed"], 9);

    // Across subnets: the route goes out eth0 toward the router, with the tunnel address as
    // source and room for the outer header; the classifiers sit on eth0.
    let (w2, w3) = (lab.address("h2-w1"), lab.address("h3-w1"));
    let routes = lab.ip("h1", "route");
    let route_to = |address: &str| {
        let prefix: Vec<&str> = address.split('.').take(3).collect();
        routes
            .lines()
            .find(|l| l.starts_with(&prefix.join(".")) && l.contains(" via "))
            .unwrap_or("")
            .to_string()
    };
    let across = route_to(&w2);
    for part in [
        "via 10.0.1.1 dev eth0",
        "onlink",
        "mtu 1480",
        " src 10.244.",
    ] {
        assert!(across.contains(part), "{part:?} in {across:?}: {routes}");
    }
    let within = route_to(&w3);
    assert!(
        within.contains("via 10.0.1.11 dev eth0") && !within.contains("mtu"),
        "same subnet is plain: {routes}"
    );
    let filters = lab.ip("h1", "-d link show eth0");
    assert!(filters.contains("eth0"));
    let out = Command::new("tc")
        .args([
            "-n",
            &lab.netns("h1"),
            "filter",
            "show",
            "dev",
            "eth0",
            "egress",
        ])
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("felis_ipip_egress"));
    // The node records its tunnel address as Calico does.
    let node = lab.felis(&[
        "get",
        "node",
        "h1",
        "-o",
        "json",
        "--datastore",
        &datastore(&lab),
    ]);
    let node = text(&node.stdout);
    assert!(node.contains("ipv4IPIPTunnelAddr"), "{node}");

    // What the VPC router sees: protocol 4 between the subnets' hosts, and no pod address.
    let capture = Capture::start(&lab.netns("vpc"), "ip proto 4 or icmp");
    assert!(lab.ping_with("h1-w1", &[], &w2));
    let lines = capture.finish();
    let ipip: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("10.0.1.10 > 10.0.2.10") && l.contains(&format!("> {w2}")))
        .collect();
    assert!(!ipip.is_empty(), "IPIP across subnets: {lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("10.0.1.10 > 10.0.2.10") || l.contains("10.0.2.10 > 10.0.1.10")),
        "every packet between the subnets is encapsulated: {lines:#?}"
    );

    // Within a subnet: plain pod packets on the bridge, no protocol 4.
    let capture = Capture::start(&lab.netns("vpc"), "ip proto 4 or icmp");
    assert!(lab.ping_with("h1-w1", &[], &w3));
    let lines = capture.finish();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("> {w3}: ICMP echo request"))),
        "plain pod packets within the subnet: {lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("ipip") || l.contains("proto IPIP")),
        "no IPIP within the subnet: {lines:#?}"
    );

    // Host to remote pod: the tunnel address is the source, so the reply comes back through
    // the tunnel; a full-size packet (route MTU 1480) passes with DF set.
    assert!(
        lab.ping_with("h1", &[], &w2),
        "host to a pod across subnets"
    );
    assert!(
        lab.ping_with("h1", &["-s", "1452", "-M", "do"], &w2),
        "1480-byte packets fit the tunnel"
    );
}

#[test]
fn ipip_always_lab_connects_every_pair_and_survives_an_agent_restart() {
    let Some(lab) = Lab::up(
        "i",
        &[
            "--hosts",
            "3",
            "--subnets",
            "2",
            "--workloads",
            "1",
            "--pool-mode",
            "ipip",
        ],
    ) else {
        return;
    };
    let report = lab.check_converged();
    assert_eq!(report["failed"], 0, "{report:#}");
    // Always: even the same-subnet neighbour is reached through IPIP.
    let w3 = lab.address("h3-w1");
    let capture = Capture::start(&lab.netns("vpc"), "ip proto 4");
    assert!(lab.ping_with("h1-w1", &[], &w3));
    let lines = capture.finish();
    assert!(
        lines.iter().any(|l| l.contains("10.0.1.10 > 10.0.1.11")),
        "IPIP within the subnet too: {lines:#?}"
    );

    // A restart adopts the classifiers and routes: nothing is recreated, pods still connect.
    let before = lab.ip("h1", "route");
    let out = lab.felis(&["lab", "agent", "--name", &lab.name, "h1", "stop", "--kill"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        lab.ping_with("h1-w1", &[], &w3),
        "the dataplane outlives the agent"
    );
    let out = lab.felis(&["lab", "agent", "--name", &lab.name, "h1", "start"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(lab.ip("h1", "route"), before, "routes adopted");
    for direction in ["ingress", "egress"] {
        let out = Command::new("tc")
            .args([
                "-n",
                &lab.netns("h1"),
                "filter",
                "show",
                "dev",
                "eth0",
                direction,
            ])
            .output()
            .unwrap();
        let filters = text(&out.stdout);
        assert_eq!(
            filters.lines().filter(|l| l.contains("felis_ipip")).count(),
            1,
            "one {direction} classifier after the restart: {filters}"
        );
    }
    let report = lab.check_converged();
    assert_eq!(report["failed"], 0, "{report:#}");
}

fn datastore(lab: &Lab) -> String {
    format!("file:///run/felis/lab/{}/felis.db", lab.name)
}
