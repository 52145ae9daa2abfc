//! A lab routed by BGP alone: with unencapsulated pools every remote block is a route the
//! agent's BGP speaker learned and wrote with protocol 81 (Felis's BGP routes, where Calico's
//! BIRD writes `proto bird`), and no IPAM-derived copy (protocol 80) exists. Needs root (CI runs
//! as root); each test makes its own uniquely named lab and removes it on drop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;
use std::time::Instant;

/// Felis's protocol number for BGP-learned routes.
const BGP_PROTO: &str = "81";

/// The destination of each route line (`ip route show` output), with the line.
fn routes(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let dst = match words.first()? {
                &"blackhole" | &"unreachable" => words.get(1)?,
                dst => dst,
            };
            Some((dst.to_string(), line.to_string()))
        })
        .collect()
}

/// Each host's own blocks (the blackholes its agent programs), by host.
fn blocks(lab: &common::Lab, hosts: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    hosts
        .iter()
        .map(|h| {
            let own = routes(&lab.ip(h, "route show proto 80 type blackhole"));
            (h.to_string(), own.into_keys().collect())
        })
        .collect()
}

/// `lab check` until every probe passes, at most `wait`; returns the last report.
fn check_converged(lab: &common::Lab, wait: Duration) -> serde_json::Value {
    let deadline = Instant::now() + wait;
    let mut report = lab.check();
    while report["failed"] != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        report = lab.check();
    }
    report
}

/// Waits until `host` has a protocol-81 route for each of `want`; returns its BGP routes.
fn wait_bgp_routes(
    lab: &common::Lab,
    host: &str,
    want: &BTreeSet<String>,
    wait: Duration,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + wait;
    loop {
        let have = routes(&lab.ip(host, &format!("route show proto {BGP_PROTO}")));
        if want.iter().all(|b| have.contains_key(b)) {
            return have;
        }
        assert!(
            Instant::now() < deadline,
            "{host} has BGP routes {have:?}, wants {want:?}\n{}",
            lab.log(host)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_remote_block_is_routed_by_bgp_alone_and_kept_through_a_crash_not_a_clean_stop() {
    let Some(lab) = common::Lab::up(
        "b",
        &["--pool-mode", "none", "--subnets", "1", "--hosts", "4"],
    ) else {
        return;
    };
    let hosts = ["h1", "h2", "h3", "h4"];
    let report = check_converged(&lab, Duration::from_secs(30));
    assert_eq!(report["failed"], 0, "lab check: {report:#}");

    let owned = blocks(&lab, &hosts);
    for host in hosts {
        let remote: BTreeSet<String> = owned
            .iter()
            .filter(|(h, _)| h.as_str() != host)
            .flat_map(|(_, b)| b.iter().cloned())
            .collect();
        assert!(remote.len() >= 3, "{host}: remote blocks {remote:?}");
        let bgp = wait_bgp_routes(&lab, host, &remote, Duration::from_secs(20));
        for block in &remote {
            assert!(bgp[block].contains(" via "), "{host}: {}", bgp[block]);
        }
        // No IPAM-derived copy: the agent's own protocol holds only this host's blackholes.
        let felix = routes(&lab.ip(host, "route show proto 80"));
        for (dst, line) in &felix {
            assert!(
                line.starts_with("blackhole") && owned[host].contains(dst),
                "{host} has an IPAM-derived route: {line}"
            );
        }
    }

    // h4's agent crashes (SIGKILL: its sessions just drop, no NOTIFICATION). Its peers keep
    // its blocks as stale for the graceful-restart time (120 s, RFC 4724, as BIRD does for
    // Calico), so its workloads, whose dataplane stays, remain reachable.
    agent(&lab, "h4", &["stop", "--kill"]);
    std::thread::sleep(Duration::from_secs(3));
    for host in ["h1", "h2", "h3"] {
        let bgp = routes(&lab.ip(host, &format!("route show proto {BGP_PROTO}")));
        for block in &owned["h4"] {
            assert!(
                bgp.contains_key(block),
                "{host} dropped {block} of h4: {bgp:?}"
            );
        }
    }
    let report = lab.check();
    assert_eq!(report["failed"], 0, "with h4's agent killed: {report:#}");

    // Back again: the sessions come up, the routes are refreshed, everything passes.
    let established = sessions_established(&lab, "h4");
    agent(&lab, "h4", &["start"]);
    // The routes h4 programmed before the crash are still there: wait for its sessions.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sessions_established(&lab, "h4") < established + 3 {
        assert!(
            Instant::now() < deadline,
            "h4's sessions:\n{}",
            lab.log("h4")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = check_converged(&lab, Duration::from_secs(30));
    assert_eq!(
        report["failed"], 0,
        "after h4's agent restarted: {report:#}"
    );
    let elsewhere: BTreeSet<String> = ["h1", "h2", "h3"]
        .iter()
        .flat_map(|h| owned[*h].iter().cloned())
        .collect();
    wait_bgp_routes(&lab, "h4", &elsewhere, Duration::from_secs(30));

    // A clean stop (SIGTERM) ends the sessions with a Cease NOTIFICATION, which is no graceful
    // restart: the others withdraw h4's blocks at once (routes by BGP alone, no IPAM fallback).
    agent(&lab, "h4", &["stop"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    for host in ["h1", "h2", "h3"] {
        loop {
            let bgp = routes(&lab.ip(host, &format!("route show proto {BGP_PROTO}")));
            if owned["h4"].iter().all(|b| !bgp.contains_key(b)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{host} keeps h4's blocks: {bgp:?}\n{}\n---\n{}",
                bgp_log(lab.log(host)),
                bgp_log(lab.log("h4"))
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let felix = routes(&lab.ip(host, "route show proto 80"));
        assert!(
            owned["h4"].iter().all(|b| !felix.contains_key(b)),
            "{host}: {felix:?}"
        );
    }
    agent(&lab, "h4", &["start"]);
    let report = check_converged(&lab, Duration::from_secs(30));
    assert_eq!(
        report["failed"], 0,
        "after h4's agent started again: {report:#}"
    );
    for host in ["h1", "h2", "h3"] {
        wait_bgp_routes(&lab, host, &owned["h4"], Duration::from_secs(20));
    }
}

/// The BGP lines of a log.
fn bgp_log(log: String) -> String {
    log.lines()
        .filter(|l| l.contains("bgp") && !l.contains("policy"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How many times `host`'s agent logged a BGP session reaching Established.
fn sessions_established(lab: &common::Lab, host: &str) -> usize {
    lab.log(host).matches("to=Established").count()
}

/// `felis lab agent h4 ARGS`; must succeed.
fn agent(lab: &common::Lab, host: &str, args: &[&str]) {
    let out = lab.felis(&[&["lab", "agent", "--name", &lab.name, host], args].concat());
    assert!(
        out.status.success(),
        "lab agent {host} {args:?}: {}",
        common::text(&out.stderr)
    );
}

#[test]
fn vxlan_cross_subnet_routes_within_a_subnet_by_bgp_and_across_by_vxlan() {
    let Some(lab) = common::Lab::up(
        "b",
        &[
            "--pool-mode",
            "vxlan-cross-subnet",
            "--subnets",
            "2",
            "--hosts",
            "3",
            "--workloads",
            "1",
        ],
    ) else {
        return;
    };
    // Hosts go round-robin over the subnets: h1 and h3 share one, h2 is across.
    let report = check_converged(&lab, Duration::from_secs(30));
    assert_eq!(report["failed"], 0, "lab check: {report:#}");
    let owned = blocks(&lab, &["h1", "h2", "h3"]);
    let bgp = wait_bgp_routes(&lab, "h1", &owned["h3"], Duration::from_secs(20));
    for block in &owned["h3"] {
        assert!(!bgp[block].contains("vxlan.calico"), "{}", bgp[block]);
    }
    let felix = routes(&lab.ip("h1", "route show proto 80"));
    for block in &owned["h2"] {
        assert!(
            !bgp.contains_key(block),
            "h2's {block} by BGP: {}",
            bgp[block]
        );
        assert!(
            felix
                .get(block)
                .is_some_and(|l| l.contains("dev vxlan.calico")),
            "h2's {block} on h1: {felix:?}"
        );
    }
    for block in &owned["h3"] {
        assert!(
            !felix.contains_key(block),
            "IPAM copy of {block}: {felix:?}"
        );
    }
}

/// A namespace `ct-<pid>-<tag>`, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let ns = Netns(format!("ct-{}-{tag}", std::process::id()));
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns.0])
            .output();
        run("ip", &["netns", "add", &ns.0]);
        ns.ip("link set lo up");
        ns
    }

    fn ip(&self, args: &str) -> String {
        let mut full = vec!["-n", self.0.as_str()];
        full.extend(args.split_whitespace());
        run("ip", &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

/// A child process, killed on drop.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        common::text(&out.stderr)
    );
    common::text(&out.stdout)
}

/// `bird` from PATH, or /usr/sbin where Debian puts it.
fn sbin(name: &str) -> String {
    let path = format!("/usr/sbin/{name}");
    if std::path::Path::new(&path).exists() {
        path
    } else {
        name.to_string()
    }
}

/// The agent with a node-scoped BGPPeer to a BIRD (eBGP): BIRD's routes reach the agent's
/// kernel as protocol 81; the agent's service cluster IPs reach BIRD's kernel, with the
/// communities the BGPConfiguration's prefixAdvertisements give them.
#[test]
fn the_agent_and_bird_exchange_routes_into_both_kernels_with_communities() {
    if !common::is_root() {
        eprintln!("skipped: needs root to make network namespaces");
        return;
    }
    let felis_ns = Netns::new("bgf");
    let bird_ns = Netns::new("bgb");
    felis_ns.ip(&format!(
        "link add f0 type veth peer name b0 netns {}",
        bird_ns.0
    ));
    felis_ns.ip("addr add 192.0.2.1/24 dev f0");
    bird_ns.ip("addr add 192.0.2.2/24 dev b0");
    felis_ns.ip("link set f0 up");
    bird_ns.ip("link set b0 up");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bird.conf");
    std::fs::write(
        &conf,
        r#"router id 192.0.2.2;
protocol device { scan time 1; }
protocol direct { ipv4; interface "b0"; }
protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }
protocol static statics { ipv4; route 10.200.1.0/24 blackhole; route 10.200.2.0/24 blackhole; }
protocol bgp felis {
  local 192.0.2.2 as 64513;
  neighbor 192.0.2.1 as 64512;
  connect retry time 1;
  ipv4 { import all; export where source = RTS_STATIC; };
}
"#,
    )
    .unwrap();
    let socket = dir.path().join("bird.ctl");
    let _bird = Process(
        std::process::Command::new("ip")
            .args(["netns", "exec", &bird_ns.0, &sbin("bird"), "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.path().join("bird.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let store = format!("file://{}/felis.db", dir.path().display());
    let manifest = dir.path().join("bgp.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  nodeToNodeMeshEnabled: false
  asNumber: 64512
  serviceClusterIPs:
  - cidr: 10.96.0.0/16
  communities:
  - name: svc
    value: "64512:100"
  prefixAdvertisements:
  - cidr: 10.96.0.0/16
    communities: [svc, "64512:200", "64512:1:2"]
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: bird
spec:
  node: bench
  peerIP: 192.0.2.2
  asNumber: 64513
"#,
    )
    .unwrap();
    let felis = env!("CARGO_BIN_EXE_felis");
    run(
        felis,
        &[
            "--datastore",
            &store,
            "apply",
            "-f",
            manifest.to_str().unwrap(),
        ],
    );
    let log = dir.path().join("felis.log");
    let _agent = Process(
        std::process::Command::new("ip")
            .args(["netns", "exec", &felis_ns.0, felis, "node", "run"])
            .args([
                "--datastore",
                &store,
                "--nodename",
                "bench",
                "--ip",
                "192.0.2.1/24",
            ])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--health-address", "127.0.0.1:9099"])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("felis.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let birdc = |command: &str| {
        let mut args = vec!["-s", socket.to_str().unwrap()];
        args.extend(command.split(' '));
        run(&sbin("birdc"), &args)
    };
    loop {
        let felis_routes = felis_ns.ip(&format!("route show proto {BGP_PROTO}"));
        let bird_routes = bird_ns.ip("route show proto bird");
        let done = felis_routes.contains("10.200.1.0/24 via 192.0.2.2 dev f0")
            && felis_routes.contains("10.200.2.0/24 via 192.0.2.2 dev f0")
            && bird_routes.contains("10.96.0.0/16 via 192.0.2.1 dev b0");
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "felis: {felis_routes}\nbird: {bird_routes}\n{}\n{}",
            birdc("show protocols all felis"),
            common::strip_colours(&std::fs::read_to_string(&log).unwrap_or_default())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let detail = birdc("show route 10.96.0.0/16 all");
    assert!(
        detail.contains("(64512,100)")
            && detail.contains("(64512,200)")
            && detail.contains("(64512, 1, 2)"),
        "{detail}"
    );
    // Withdrawn by BIRD: gone from the agent's kernel.
    birdc("disable statics");
    let deadline = Instant::now() + Duration::from_secs(10);
    while felis_ns
        .ip(&format!("route show proto {BGP_PROTO}"))
        .contains("10.200.")
    {
        assert!(Instant::now() < deadline, "BIRD's withdrawn routes stay");
        std::thread::sleep(Duration::from_millis(100));
    }
}
