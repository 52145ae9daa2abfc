//! The policy scenario suite (crates/felis-policy/tests/scenarios) replayed as real packets in a
//! `felis lab`: every scenario's workloads are attached through the CNI plugin with their own
//! addresses (CNI_ARGS `IP=`), namespace, pod name, labels, profiles and named ports; its
//! policies are applied with `felis apply`; once both agents have programmed that datastore
//! revision, each probe is sent for real (TCP connect, UDP echo, ICMP echo request) and must get
//! the verdict the scenario expects, which `felis policy trace` against the lab's datastore must
//! give too. Workloads alternate between two hosts, so probes cross hosts and stay on one.
//!
//! Probes a lab cannot send are skipped and counted: IPv6 (the lab is IPv4), ICMP other than echo
//! requests, and addresses outside the cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Read as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::net::TcpListener;

use socket2::Domain;
use socket2::Protocol;
use socket2::Socket;
use socket2::Type;
use std::net::TcpStream;
use std::net::UdpSocket;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Lab;
use common::text;
use felis_api::Resource;
use felis_netlink::Netns;
use felis_policy::scenario::Expect;
use felis_policy::scenario::Probe;
use felis_policy::scenario::Scenario;

const HOSTS: [&str; 2] = ["h1", "h2"];
const SCENARIO_POOL: &str = "apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: scenario-pool}
spec: {cidr: 10.64.0.0/14, blockSize: 26, ipipMode: Never, vxlanMode: Never, natOutgoing: false}
";
/// How long a denied probe waits before calling it dropped.
const DENY_WAIT: Duration = Duration::from_millis(1500);

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../felis-policy/tests/scenarios")
}

/// A scenario workload attached in the lab.
struct Workload {
    namespace: String,
    pod: String,
    host: &'static str,
    netns: String,
    address: Ipv4Addr,
}

/// The scenario's workloads: CNI DEL and namespace removal on drop, even when a probe failed.
struct Attached<'a> {
    lab: &'a Lab,
    workloads: Vec<Workload>,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        for w in &self.workloads {
            let _ = cni(self.lab, "DEL", w);
            let _ = Command::new("ip").args(["netns", "del", &w.netns]).status();
        }
    }
}

/// Runs the CNI plugin for `w` in its host's namespace, as a runtime does.
fn cni(lab: &Lab, command: &str, w: &Workload) -> Result<String, String> {
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "felis",
        "nodename": w.host,
        "datastore": lab.datastore,
        "mtu": 0,
        "ipam": {"type": "felis-ipam"},
    })
    .to_string();
    let felis = Path::new(env!("CARGO_BIN_EXE_felis"));
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.netns(w.host)])
        .arg(felis)
        .env("CNI_COMMAND", command)
        .env(
            "CNI_CONTAINERID",
            format!("{}-{}-{}", lab.name, w.namespace, w.pod),
        )
        .env("CNI_NETNS", Path::new("/run/netns").join(&w.netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", felis.parent().unwrap())
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};IP={}",
                w.namespace, w.pod, w.address
            ),
        )
        .env(
            "FELIS_MTU_FILE",
            format!("/run/felis/lab/{}/{}/mtu", lab.name, w.host),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!(
            "CNI {command} {}/{}: {}{}",
            w.namespace,
            w.pod,
            text(&out.stdout),
            text(&out.stderr)
        ))
    }
}

/// The documents of a multi-document YAML file, without the scenario and the workload
/// endpoints (the lab makes its own).
fn other_documents(yaml: &str) -> String {
    let mut docs: Vec<Vec<&str>> = vec![Vec::new()];
    for line in yaml.lines() {
        if line.trim_end() == "---" {
            docs.push(Vec::new());
        } else {
            docs.last_mut().unwrap().push(line);
        }
    }
    docs.into_iter()
        .filter(|d| {
            !d.iter().any(|l| {
                let l = l.trim();
                l == "kind: Scenario" || l == "kind: WorkloadEndpoint"
            })
        })
        .filter(|d| d.iter().any(|l| l.starts_with("kind:")))
        .map(|d| d.join("\n"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Where a probe starts or ends: a scenario workload, or an address outside the cluster
/// (on the lab's "outside" namespace, routed through h1).
#[derive(Clone)]
struct Place {
    netns: String,
    address: Ipv4Addr,
    /// How `felis policy trace` names it: `NS/POD` or the address.
    traced: String,
    /// The lab host it sits behind.
    host: &'static str,
}

/// Resolves `NS/POD`, `POD` (namespace default) or an address; `None` for what a lab cannot
/// send from or to (IPv6).
fn place(lab: &Lab, workloads: &[Workload], what: &str) -> Option<Place> {
    let of = |w: &Workload| Place {
        netns: w.netns.clone(),
        address: w.address,
        traced: format!("{}/{}", w.namespace, w.pod),
        host: w.host,
    };
    if let Ok(ip) = what.parse::<Ipv4Addr>() {
        return Some(workloads.iter().find(|w| w.address == ip).map_or_else(
            || Place {
                netns: lab.netns("out"),
                address: ip,
                traced: ip.to_string(),
                host: "h1",
            },
            of,
        ));
    }
    let (ns, pod) = what.split_once('/').unwrap_or(("default", what));
    workloads
        .iter()
        .find(|w| w.namespace == ns && w.pod == pod)
        .map(of)
}

/// The lab's stand-in for the world outside the cluster: a namespace behind h1 that answers
/// on every external address the probes use (h2 routes them through h1).
fn outside(lab: &Lab) {
    let out = lab.netns("out");
    let run = |args: &[&str]| {
        let status = Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    };
    run(&["netns", "add", &out]);
    run(&["-n", &out, "link", "set", "lo", "up"]);
    run(&[
        "-n",
        &lab.netns("h1"),
        "link",
        "add",
        "out0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &out,
    ]);
    run(&[
        "-n",
        &lab.netns("h1"),
        "addr",
        "add",
        "100.65.0.1/30",
        "dev",
        "out0",
    ]);
    run(&["-n", &lab.netns("h1"), "link", "set", "out0", "up"]);
    run(&["-n", &out, "addr", "add", "100.65.0.2/30", "dev", "eth0"]);
    run(&["-n", &out, "link", "set", "eth0", "up"]);
    run(&["-n", &out, "route", "add", "default", "via", "100.65.0.1"]);
}

/// Makes `address` answer in the outside namespace, routed there from both hosts.
fn add_outside_address(lab: &Lab, address: Ipv4Addr, h1: &str) {
    let host = format!("{address}/32");
    let _ = Command::new("ip")
        .args(["-n", &lab.netns("out"), "addr", "add", &host, "dev", "lo"])
        .stderr(Stdio::null())
        .status();
    for (netns, via) in [("h1", "100.65.0.2"), ("h2", h1)] {
        let status = Command::new("ip")
            .args([
                "-n",
                &lab.netns(netns),
                "route",
                "replace",
                &host,
                "via",
                via,
            ])
            .status()
            .unwrap();
        assert!(status.success(), "route to {host} in {netns}");
    }
}

/// What the lab can send for a probe, if anything.
enum Packet {
    Tcp(u16),
    Udp(u16),
    Echo,
    /// Another ICMP type/code that conntrack accepts as a new flow, on a raw socket.
    Icmp(u8, u8),
}

fn packet(probe: &Probe) -> Option<Packet> {
    match probe.protocol.to_ascii_uppercase().as_str() {
        "TCP" => probe.port.map(Packet::Tcp),
        "UDP" => probe.port.map(Packet::Udp),
        "ICMP" => match (probe.icmp_type.unwrap_or(8), probe.icmp_code.unwrap_or(0)) {
            (8, 0) => Some(Packet::Echo),
            // Requests conntrack lets start a flow (echo, timestamp, information, mask).
            // Unsolicited replies and errors are invalid to conntrack and dropped before any
            // policy, in Calico as in Felis, so the lab cannot show their policy verdict.
            (t @ (8 | 13 | 15 | 17), c) => Some(Packet::Icmp(t, c)),
            _ => None,
        },
        _ => None,
    }
}

/// Listeners in the destination workloads: TCP accepts, UDP echoes. Stopped on drop.
struct Listeners {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Listeners {
    fn start(wanted: &BTreeSet<(String, bool, u16)>) -> Listeners {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (netns, tcp, port) in wanted {
            let (tcp, port) = (*tcp, *port);
            let netns = Netns::open(Path::new("/run/netns").join(netns)).unwrap();
            let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            let stop = stop.clone();
            if tcp {
                let listener = netns.run(move || TcpListener::bind(any)).unwrap().unwrap();
                listener.set_nonblocking(true).unwrap();
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((mut s, _)) => {
                                let _ = s.write_all(b"ok");
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                }));
            } else {
                let socket = netns.run(move || UdpSocket::bind(any)).unwrap().unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                threads.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                            let _ = socket.send_to(&buf[..n], peer);
                        }
                    }
                }));
            }
        }
        Listeners { stop, threads }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends the probe's packet for real, from `from`'s address; whether it got through.
fn send(from: &Place, to: &Place, packet: &Packet) -> bool {
    let netns = Netns::open(Path::new("/run/netns").join(&from.netns)).unwrap();
    let source = SocketAddr::from((from.address, 0));
    match *packet {
        Packet::Tcp(port) => {
            let target = SocketAddr::from((to.address, port));
            netns
                .run(move || {
                    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                    socket.bind(&source.into()).unwrap();
                    if socket.connect_timeout(&target.into(), DENY_WAIT).is_err() {
                        return false;
                    }
                    let mut s: TcpStream = socket.into();
                    s.set_read_timeout(Some(DENY_WAIT)).unwrap();
                    let mut buf = [0u8; 2];
                    s.read_exact(&mut buf).is_ok()
                })
                .unwrap()
        }
        Packet::Udp(port) => {
            let target = SocketAddr::from((to.address, port));
            netns
                .run(move || {
                    let s = UdpSocket::bind(source).unwrap();
                    s.set_read_timeout(Some(DENY_WAIT / 3)).unwrap();
                    let mut buf = [0u8; 8];
                    (0..3).any(|_| {
                        s.send_to(b"probe", target).is_ok()
                            && s.recv_from(&mut buf)
                                .is_ok_and(|(n, _)| &buf[..n] == b"probe")
                    })
                })
                .unwrap()
        }
        Packet::Icmp(kind, code) => raw_icmp(from, to, kind, code),
        Packet::Echo => Command::new("ip")
            .args(["netns", "exec", &from.netns])
            .args(["ping", "-n", "-q", "-c", "1", "-W", "1.5"])
            .args(["-I", &from.address.to_string(), &to.address.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success(),
    }
}

/// Sends one ICMP message of `kind`/`code` from `from` and watches for it with a raw socket in
/// `to`'s namespace.
fn raw_icmp(from: &Place, to: &Place, kind: u8, code: u8) -> bool {
    static TAG: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let tag = TAG.fetch_add(1, Ordering::SeqCst);
    let open = |netns: &str| {
        let netns = Netns::open(Path::new("/run/netns").join(netns)).unwrap();
        netns
            .run(|| Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)))
            .unwrap()
            .unwrap()
    };
    let receiver = open(&to.netns);
    receiver
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let sender = open(&from.netns);
    sender
        .bind(&SocketAddr::from((from.address, 0)).into())
        .unwrap();
    let mut message = vec![kind, code, 0, 0];
    message.extend_from_slice(&0xfe15u16.to_be_bytes());
    message.extend_from_slice(&tag.to_be_bytes());
    message.extend_from_slice(b"felis-probe-----");
    let sum = checksum(&message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    sender
        .send_to(&message, &SocketAddr::from((to.address, 0)).into())
        .unwrap();
    let deadline = std::time::Instant::now() + DENY_WAIT;
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        let Ok(n) = (&receiver).read(&mut buf) else {
            continue;
        };
        let bytes = &buf[..n];
        let header = usize::from(bytes[0] & 0x0f) * 4;
        let source = Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]);
        let icmp = &bytes[header..];
        if source == from.address
            && icmp.len() >= 8
            && icmp[0] == kind
            && icmp[1] == code
            && icmp[6..8] == tag.to_be_bytes()
        {
            return true;
        }
    }
    false
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `felis policy trace` of the probe between the lab's endpoints: "allow" or "deny".
fn trace(lab: &Lab, from: &Place, to: &Place, probe: &Probe) -> String {
    let (from, to) = (from.traced.clone(), to.traced.clone());
    let mut args = vec![
        "policy".to_string(),
        "trace".into(),
        "--from".into(),
        from,
        "--to".into(),
        to,
        "--protocol".into(),
        probe.protocol.clone(),
        "-o".into(),
        "json".into(),
    ];
    for (flag, value) in [
        ("--port", probe.port.map(u32::from)),
        ("--icmp-type", probe.icmp_type.map(u32::from)),
        ("--icmp-code", probe.icmp_code.map(u32::from)),
    ] {
        if let Some(v) = value {
            args.push(flag.into());
            args.push(v.to_string());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report: serde_json::Value = serde_json::from_str(&lab.cli(&args)).unwrap();
    report["verdict"].as_str().unwrap().to_string()
}

/// The scenario's workload endpoint resources, in file order.
fn scenario_endpoints(scenario: &Scenario) -> Vec<serde_json::Value> {
    scenario
        .resources
        .iter()
        .filter(|r| matches!(r, Resource::WorkloadEndpoint(_)))
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}

fn wait_programmed(lab: &Lab) {
    let revision = lab.mark_revision("replay-marker");
    for host in HOSTS {
        lab.wait_synced(host, revision, Duration::from_secs(30));
    }
}

/// Waits until every host routes every workload address: to its `cali*` device when local,
/// else toward the workload's host (routes to remote blocks, and /32s of addresses borrowed
/// from another host's block, follow IPAM and BGP a moment after the agents' own revision).
fn wait_routes(lab: &Lab, hosts: &BTreeMap<String, String>, workloads: &[Workload]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for host in HOSTS {
        for w in workloads {
            let want = if w.host == host {
                " dev cali".to_string()
            } else {
                format!(" via {} ", hosts[w.host])
            };
            loop {
                let out = Command::new("ip")
                    .args([
                        "-n",
                        &lab.netns(host),
                        "route",
                        "get",
                        &w.address.to_string(),
                    ])
                    .output()
                    .unwrap();
                let route = text(&out.stdout);
                if route.contains(&want) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{host} never routed {} ({}/{} on {}): {route}",
                    w.address,
                    w.namespace,
                    w.pod,
                    w.host
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Replays one scenario file; returns (probes sent, probes skipped, mismatches).
fn replay(lab: &Lab, hosts: &BTreeMap<String, String>, file: &Path) -> (usize, usize, Vec<String>) {
    let yaml = std::fs::read_to_string(file).unwrap();
    let scenario = Scenario::parse(&yaml).unwrap();
    let label = file.file_name().unwrap().to_string_lossy().to_string();
    let endpoints = scenario_endpoints(&scenario);

    // Attach every workload with an IPv4 address, alternating hosts.
    let mut attached = Attached {
        lab,
        workloads: Vec::new(),
    };
    let mut manifest = vec![other_documents(&yaml)];
    for (i, ep) in endpoints.iter().enumerate() {
        let spec = &ep["spec"];
        let Some(address) = spec["ipNetworks"].as_array().and_then(|nets| {
            nets.iter()
                .filter_map(|n| n.as_str()?.split('/').next()?.parse::<Ipv4Addr>().ok())
                .next()
        }) else {
            continue;
        };
        let namespace = ep["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let pod = spec["pod"].as_str().unwrap().to_string();
        let w = Workload {
            netns: format!("{}.s{i}", lab.name),
            host: HOSTS[i % HOSTS.len()],
            namespace,
            pod,
            address,
        };
        let status = Command::new("ip")
            .args(["netns", "add", &w.netns])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {}", w.netns);
        Command::new("ip")
            .args(["-n", &w.netns, "link", "set", "lo", "up"])
            .status()
            .unwrap();
        attached.workloads.push(w);
        let w = attached.workloads.last().unwrap();
        cni(lab, "ADD", w).unwrap_or_else(|e| panic!("{label}: {e}"));
        // The endpoint the plugin wrote, given the scenario's labels, profiles and ports.
        let name = felis_api::endpoint::workload_endpoint_name(w.host, "k8s", &w.pod, "eth0");
        let mut written: serde_json::Value = serde_json::from_str(&lab.cli(&[
            "get",
            "workloadendpoint",
            &name,
            "-n",
            &w.namespace,
            "-o",
            "json",
        ]))
        .unwrap();
        let meta = &mut written["metadata"];
        if let Some(labels) = ep["metadata"]["labels"].as_object() {
            let merged = meta["labels"].as_object_mut();
            let merged = match merged {
                Some(m) => m,
                None => {
                    meta["labels"] = serde_json::json!({});
                    meta["labels"].as_object_mut().unwrap()
                }
            };
            for (k, v) in labels {
                merged.insert(k.clone(), v.clone());
            }
        }
        for field in ["profiles", "ports", "serviceAccountName"] {
            if !spec[field].is_null() {
                written["spec"][field] = spec[field].clone();
            }
        }
        manifest.push(serde_json::to_string(&written).unwrap());
    }
    let applied = manifest.join("\n---\n");
    lab.apply(&applied);
    wait_programmed(lab);
    wait_routes(lab, hosts, &attached.workloads);

    // Probes the lab can send, and the listeners they need.
    let workloads = &attached.workloads;
    let mut runnable = Vec::new();
    let mut skipped = 0;
    let mut wanted = BTreeSet::new();
    let out = lab.netns("out");
    for probe in &scenario.probes {
        let (Some(from), Some(to), Some(packet)) = (
            place(lab, workloads, &probe.from),
            place(lab, workloads, &probe.to),
            packet(probe),
        ) else {
            skipped += 1;
            continue;
        };
        if from.netns == out && to.netns == out {
            skipped += 1;
            continue;
        }
        for p in [&from, &to] {
            if p.netns == out {
                add_outside_address(lab, p.address, &hosts["h1"]);
            }
        }
        match packet {
            Packet::Tcp(port) => {
                wanted.insert((to.netns.clone(), true, port));
            }
            Packet::Udp(port) => {
                wanted.insert((to.netns.clone(), false, port));
            }
            Packet::Echo | Packet::Icmp(..) => {}
        }
        runnable.push((probe, from, to, packet));
    }
    let listeners = Listeners::start(&wanted);
    let results: Vec<(bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = runnable
            .iter()
            .map(|(probe, from, to, packet)| {
                s.spawn(move || (send(from, to, packet), trace(lab, from, to, probe)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(listeners);
    let mut mismatches = Vec::new();
    for ((probe, from, to, _), (passed, traced)) in runnable.iter().zip(&results) {
        let expected = probe.expect == Expect::Allow;
        let hosts = format!("{} -> {}", from.host, to.host);
        if *passed != expected {
            mismatches.push(format!(
                "{label}: {probe} ({hosts}): the packet {}{}",
                if *passed { "passed" } else { "was dropped" },
                probe
                    .note
                    .as_ref()
                    .map(|n| format!(" [{n}]"))
                    .unwrap_or_default()
            ));
        }
        let want = if expected { "allow" } else { "deny" };
        if traced != want {
            mismatches.push(format!("{label}: {probe}: policy trace says {traced}"));
        }
    }

    if !mismatches.is_empty() && std::env::var_os("FELIS_REPLAY_PAUSE").is_some() {
        eprintln!(
            "{label}: paused for 10 minutes with lab {} up (FELIS_REPLAY_PAUSE)",
            lab.name
        );
        std::thread::sleep(Duration::from_secs(600));
    }
    // Tear down: workloads, then the scenario's resources.
    drop(attached);
    let others = other_documents(&yaml);
    let path = lab.dir.path().join("scenario.yaml");
    std::fs::write(&path, others).unwrap();
    let _ = lab.felis(&[
        "--datastore",
        &lab.datastore,
        "delete",
        "-f",
        path.to_str().unwrap(),
    ]);
    (runnable.len(), skipped, mismatches)
}

#[test]
fn every_policy_scenario_replays_as_real_packets_as_traced() {
    let Some(lab) = Lab::up("r", &["--hosts", "2", "--subnets", "1", "--workloads", "0"]) else {
        return;
    };
    lab.apply(SCENARIO_POOL);
    outside(&lab);
    let ps: serde_json::Value = serde_json::from_slice(
        &lab.felis(&["lab", "ps", "--name", &lab.name, "-o", "json"])
            .stdout,
    )
    .unwrap();
    let hosts: BTreeMap<String, String> = ps["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let field = |f: &str| h[f].as_str().unwrap().to_string();
            (field("name"), field("address"))
        })
        .collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "scenario files: {files:?}");
    // FELIS_REPLAY_ONLY=substring replays only the matching files (for debugging).
    if let Some(only) = std::env::var_os("FELIS_REPLAY_ONLY") {
        let only = only.to_string_lossy().to_string();
        files.retain(|f| f.to_string_lossy().contains(&only));
    }
    let (mut sent, mut skipped, mut mismatches) = (0, 0, Vec::new());
    let mut per_file = BTreeMap::new();
    for file in &files {
        let (s, k, m) = replay(&lab, &hosts, file);
        per_file.insert(
            file.file_name().unwrap().to_string_lossy().to_string(),
            (s, k),
        );
        sent += s;
        skipped += k;
        mismatches.extend(m);
    }
    eprintln!("replayed {sent} probes as real packets, skipped {skipped}: {per_file:?}");
    assert!(
        mismatches.is_empty(),
        "{} of {sent} probes disagree:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    if std::env::var_os("FELIS_REPLAY_ONLY").is_none() {
        assert!(sent >= 140, "only {sent} probes could be sent");
    }
}
