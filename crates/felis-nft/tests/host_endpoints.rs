//! Host endpoints and workload→host traffic with real packets: a "node" namespace with an
//! external interface `eth0` (the host endpoint) to an "external" namespace, and a workload
//! behind `caliw`. Each kernel verdict must equal `felis policy trace`'s.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use felis_nft::PolicyDataplane;
use felis_policy::PolicySet;
use felis_policy::Program;
use felis_policy::Verdict;
use felis_policy::scenario::Scenario;
use felis_policy::trace::Query;
use felis_policy::trace::trace;
use felis_testns::TestNetns;
use felis_testns::skip_unless_root;

const TIMEOUT: Duration = Duration::from_millis(400);
const NODE_IP: &str = "192.168.77.1";
const EXTERNAL_IP: &str = "192.168.77.2";
const WORKLOAD_IP: &str = "10.65.1.2";
const NODE_IP6: &str = "fd65:1::1";
const WORKLOAD_IP6: &str = "fd65:1::2";

/// node (eth0 192.168.77.1/24, caliw 10.65.1.1/24) ─ external (192.168.77.2) and workload
/// (10.65.1.2).
struct Topology {
    node: TestNetns,
    external: TestNetns,
    workload: TestNetns,
}

impl Topology {
    fn new() -> Topology {
        let node = TestNetns::new().unwrap();
        node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        let external = TestNetns::new().unwrap();
        let workload = TestNetns::new().unwrap();
        for (ns, host_if, host_net, peer_net, gateway) in [
            (
                &external,
                "eth0",
                "192.168.77.1/24",
                "192.168.77.2/24",
                NODE_IP,
            ),
            (
                &workload,
                "caliw",
                "10.65.1.1/24",
                "10.65.1.2/24",
                "10.65.1.1",
            ),
        ] {
            node.ip(&[
                "link",
                "add",
                host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ]);
            node.ip(&["addr", "add", host_net, "dev", host_if]);
            node.ip(&["link", "set", host_if, "up"]);
            ns.ip(&["addr", "add", peer_net, "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["link", "set", "lo", "up"]);
            ns.ip(&["route", "add", "default", "via", gateway]);
        }
        node.ip(&["link", "set", "lo", "up"]);
        node.ip(&["addr", "add", "fd65:1::1/64", "dev", "caliw", "nodad"]);
        workload.ip(&["addr", "add", "fd65:1::2/64", "dev", "eth0", "nodad"]);
        workload.ip(&["-6", "route", "add", "default", "via", NODE_IP6]);
        Topology {
            node,
            external,
            workload,
        }
    }
}

/// TCP listeners (and UDP echo servers) on some ports in a namespace, stopped on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &TestNetns, ports: &[u16]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            let (tcp, udp) = ns.run(|| {
                let tcp = TcpListener::bind(("::", port)).unwrap();
                let udp = UdpSocket::bind(("::", port)).unwrap();
                (tcp, udp)
            });
            tcp.set_nonblocking(true).unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let tcp_stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !tcp_stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => {}
                    }
                }
            }));
            let udp_stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !udp_stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn tcp_connects(from: &TestNetns, to: &str, port: u16) -> bool {
    let to: IpAddr = to.parse().unwrap();
    from.run(|| TcpStream::connect_timeout(&SocketAddr::new(to, port), TIMEOUT).is_ok())
}

fn udp_echoes(from: &TestNetns, to: &str, port: u16) -> bool {
    let to: IpAddr = to.parse().unwrap();
    from.run(|| {
        let socket = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        socket.send_to(b"ping", (to, port)).unwrap();
        let mut buf = [0u8; 16];
        matches!(socket.recv_from(&mut buf), Ok((4, _)))
    })
}

/// The cluster: node1 (address 192.168.77.1), workload prod/w on it, plus `extra` documents.
fn cluster(extra: &str) -> PolicySet {
    let text = format!(
        r#"
apiVersion: projectcalico.org/v3
kind: Node
metadata: {{name: node1}}
spec: {{bgp: {{ipv4Address: 192.168.77.1/24, ipv6Address: "fd65:1::1/64"}}}}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {{name: node1-k8s-w-eth0, namespace: prod, labels: {{app: w}}}}
spec: {{orchestrator: k8s, node: node1, pod: w, endpoint: eth0, ipNetworks: [10.65.1.2/32, "fd65:1::2/128"]}}
{extra}---
kind: Scenario
probes: []
"#
    );
    let scenario = Scenario::parse(&text).unwrap();
    PolicySet::from_resources(&scenario.resources).unwrap()
}

fn program(set: &PolicySet) -> Program {
    set.compile_for_node(
        set.endpoints.iter().filter(|e| !e.is_host_endpoint()),
        "node1",
    )
}

fn interfaces() -> BTreeMap<String, String> {
    BTreeMap::from([("prod/node1-k8s-w-eth0".to_string(), "caliw".to_string())])
}

/// What `felis policy trace` says about `from` → `to`.
fn traced(set: &PolicySet, from: &str, to: &str, protocol: &str, port: u16) -> bool {
    let query = Query::from_args(from, to, protocol, Some(port), None, None).unwrap();
    trace(set, &query).unwrap().verdict == Verdict::Allow
}

/// Sends the probe through the kernel, checks it against the trace, returns the kernel's answer.
fn probe(
    topology: &Topology,
    set: &PolicySet,
    from: &str,
    to: &str,
    protocol: &str,
    port: u16,
) -> bool {
    let ns = match from {
        NODE_IP | NODE_IP6 => &topology.node,
        EXTERNAL_IP => &topology.external,
        WORKLOAD_IP | WORKLOAD_IP6 => &topology.workload,
        other => panic!("no namespace for {other}"),
    };
    let actual = match protocol {
        "TCP" => tcp_connects(ns, to, port),
        _ => udp_echoes(ns, to, port),
    };
    let expected = traced(set, from, to, protocol, port);
    assert_eq!(
        actual, expected,
        "{from} -> {to} {protocol}/{port}: kernel {actual}, trace {expected}"
    );
    actual
}

const HOST_ENDPOINT: &str = r#"---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node1-eth0, labels: {role: node}}
spec: {node: node1, interfaceName: eth0, expectedIPs: [192.168.77.1]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-all-nodes}
spec: {selector: role == 'node', types: [Ingress, Egress]}
"#;

#[test]
fn host_endpoint_denies_all_but_failsafe_ports() {
    if skip_unless_root("host_endpoint_denies_all_but_failsafe_ports") {
        return;
    }
    let topology = Topology::new();
    let _node = Servers::start(&topology.node, &[22, 80]);
    let _external = Servers::start(&topology.external, &[53, 5000]);
    let _workload = Servers::start(&topology.workload, &[8080, 8081]);

    // Before any host endpoint: nothing is policed.
    let set = cluster("");
    let mut dataplane = PolicyDataplane::new();
    topology
        .node
        .run(|| dataplane.apply(&program(&set), &interfaces()))
        .unwrap();
    assert!(probe(&topology, &set, EXTERNAL_IP, NODE_IP, "TCP", 80));

    // The host endpoint with a deny-all policy: ssh (failsafe) stays open, port 80 closes.
    let set = cluster(HOST_ENDPOINT);
    topology
        .node
        .run(|| dataplane.apply(&program(&set), &interfaces()))
        .unwrap();
    assert!(probe(&topology, &set, EXTERNAL_IP, NODE_IP, "TCP", 22));
    assert!(!probe(&topology, &set, EXTERNAL_IP, NODE_IP, "TCP", 80));
    // Outbound: DNS is failsafe (its reply passes as established), anything else is denied.
    assert!(probe(&topology, &set, NODE_IP, EXTERNAL_IP, "UDP", 53));
    assert!(!probe(&topology, &set, NODE_IP, EXTERNAL_IP, "TCP", 5000));
    // Forwarded to the workload: no applyOnForward policy, so allowed.
    assert!(probe(
        &topology,
        &set,
        EXTERNAL_IP,
        WORKLOAD_IP,
        "TCP",
        8080
    ));
    // The host reaches its workload whatever the host endpoint says.
    assert!(probe(&topology, &set, NODE_IP, WORKLOAD_IP, "TCP", 8080));

    // applyOnForward: now the host endpoint judges forwarded traffic too.
    let forward = r#"---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: forward-8080}
spec:
  selector: role == 'node'
  applyOnForward: true
  types: [Ingress]
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [8080]}}]
"#;
    let set = cluster(&format!("{HOST_ENDPOINT}{forward}"));
    topology
        .node
        .run(|| dataplane.apply(&program(&set), &interfaces()))
        .unwrap();
    assert!(probe(
        &topology,
        &set,
        EXTERNAL_IP,
        WORKLOAD_IP,
        "TCP",
        8080
    ));
    assert!(!probe(
        &topology,
        &set,
        EXTERNAL_IP,
        WORKLOAD_IP,
        "TCP",
        8081
    ));
    assert!(!probe(&topology, &set, EXTERNAL_IP, NODE_IP, "TCP", 80));

    // A full resync renders the same.
    topology
        .node
        .run(|| dataplane.resync(&program(&set), &interfaces()))
        .unwrap();
    assert!(probe(&topology, &set, EXTERNAL_IP, NODE_IP, "TCP", 22));
    assert!(!probe(
        &topology,
        &set,
        EXTERNAL_IP,
        WORKLOAD_IP,
        "TCP",
        8081
    ));
    topology.node.run(|| dataplane.remove()).unwrap();
}

#[test]
fn pre_dnat_and_untracked_policy_run_before_normal_policy() {
    if skip_unless_root("pre_dnat_and_untracked_policy_run_before_normal_policy") {
        return;
    }
    let topology = Topology::new();
    let _node = Servers::start(&topology.node, &[22, 9100, 9101]);
    let _workload = Servers::start(&topology.workload, &[8080]);
    let stages = r#"---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: untracked}
spec:
  selector: role == 'node'
  doNotTrack: true
  applyOnForward: true
  types: [Ingress, Egress]
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [9100]}}]
  egress: [{action: Allow, protocol: TCP, source: {ports: [9100]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pre}
spec:
  selector: role == 'node'
  preDNAT: true
  applyOnForward: true
  types: [Ingress]
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [8080, 22]}}]
"#;
    let set = cluster(&format!("{HOST_ENDPOINT}{stages}"));
    let mut dataplane = PolicyDataplane::new();
    topology
        .node
        .run(|| dataplane.apply(&program(&set), &interfaces()))
        .unwrap();
    // Untracked allow both ways: the deny-all normal policy never sees it, nor conntrack.
    assert!(probe(&topology, &set, EXTERNAL_IP, NODE_IP, "TCP", 9100));
    let tracked = topology
        .node
        .exec("conntrack", &["-L", "-p", "tcp", "--dport", "9100"]);
    assert!(!tracked.contains("dport=9100"), "tracked: {tracked}");
    assert!(!probe(&topology, &set, EXTERNAL_IP, NODE_IP, "TCP", 9101));
    // Pre-DNAT deny of forwarded traffic; failsafe ssh is not subject to it.
    assert!(!probe(
        &topology,
        &set,
        EXTERNAL_IP,
        WORKLOAD_IP,
        "TCP",
        8080
    ));
    assert!(probe(&topology, &set, EXTERNAL_IP, NODE_IP, "TCP", 22));
    // The tool sees tracked connections (so the check above means something).
    let tracked = topology
        .node
        .exec("conntrack", &["-L", "-p", "tcp", "--dport", "22"]);
    assert!(tracked.contains("dport=22"), "not tracked: {tracked}");
    topology.node.run(|| dataplane.remove()).unwrap();
}

#[test]
fn workload_to_host_follows_default_endpoint_to_host_action() {
    if skip_unless_root("workload_to_host_follows_default_endpoint_to_host_action") {
        return;
    }
    let topology = Topology::new();
    let _node = Servers::start(&topology.node, &[8080]);
    let _workload = Servers::start(&topology.workload, &[9090]);
    let mut dataplane = PolicyDataplane::new();

    // Calico's default: Drop. The host still reaches the workload.
    let set = cluster("");
    topology
        .node
        .run(|| dataplane.apply(&program(&set), &interfaces()))
        .unwrap();
    assert!(!probe(&topology, &set, WORKLOAD_IP, NODE_IP, "TCP", 8080));
    assert!(probe(&topology, &set, NODE_IP, WORKLOAD_IP, "TCP", 9090));
    // IPv6: the workload's neighbour advertisements reach the host, so the host reaches it.
    topology.workload.ip(&["-6", "neigh", "flush", "all"]);
    topology.node.ip(&["-6", "neigh", "flush", "all"]);
    assert!(probe(&topology, &set, NODE_IP6, WORKLOAD_IP6, "TCP", 9090));
    assert!(!probe(&topology, &set, WORKLOAD_IP6, NODE_IP6, "TCP", 8080));

    // Accept: the workload's egress policy (its profile allows) then accept.
    let accept = r#"---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {defaultEndpointToHostAction: Accept}
"#;
    let set = cluster(accept);
    topology
        .node
        .run(|| dataplane.apply(&program(&set), &interfaces()))
        .unwrap();
    assert!(probe(&topology, &set, WORKLOAD_IP, NODE_IP, "TCP", 8080));
    assert!(probe(&topology, &set, WORKLOAD_IP, NODE_IP, "UDP", 8080));

    // Accept, but the workload's egress policy denies: denied.
    let egress = r#"---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: w-egress, namespace: prod}
spec: {selector: app == 'w', types: [Egress], egress: [{action: Allow, protocol: UDP}]}
"#;
    let set = cluster(&format!("{accept}{egress}"));
    topology
        .node
        .run(|| dataplane.apply(&program(&set), &interfaces()))
        .unwrap();
    assert!(!probe(&topology, &set, WORKLOAD_IP, NODE_IP, "TCP", 8080));
    assert!(probe(&topology, &set, WORKLOAD_IP, NODE_IP, "UDP", 8080));
    assert!(probe(&topology, &set, NODE_IP, WORKLOAD_IP, "TCP", 9090));
    topology.node.run(|| dataplane.remove()).unwrap();
}

#[test]
fn all_interfaces_host_endpoint_spares_loopback_and_workloads() {
    if skip_unless_root("all_interfaces_host_endpoint_spares_loopback_and_workloads") {
        return;
    }
    let topology = Topology::new();
    let _node = Servers::start(&topology.node, &[80]);
    let _workload = Servers::start(&topology.workload, &[9090]);
    let all = r#"---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node1-all, labels: {role: node}}
spec: {node: node1, interfaceName: "*", expectedIPs: [192.168.77.1]}
"#;
    let set = cluster(all);
    let mut dataplane = PolicyDataplane::new();
    topology
        .node
        .run(|| dataplane.apply(&program(&set), &interfaces()))
        .unwrap();
    // No policy, no profile: default deny on every interface but lo and workload interfaces.
    assert!(!probe(&topology, &set, EXTERNAL_IP, NODE_IP, "TCP", 80));
    assert!(tcp_connects(&topology.node, "127.0.0.1", 80));
    assert!(probe(&topology, &set, NODE_IP, WORKLOAD_IP, "TCP", 9090));
    // Forwarded traffic: no applyOnForward policy, so allowed.
    assert!(probe(
        &topology,
        &set,
        EXTERNAL_IP,
        WORKLOAD_IP,
        "TCP",
        9090
    ));
    topology.node.run(|| dataplane.remove()).unwrap();
}
