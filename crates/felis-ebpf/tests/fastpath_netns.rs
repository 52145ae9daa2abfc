//! The routed fast path between two "hosts", each with a "pod" behind a Calico-style veth,
//! and an nftables forward policy on both hosts.
//!
//! ```text
//!  pod A 10.98.1.1 ── caliA ─ host 1 ─ u1 192.168.78.1 ══ u2 192.168.78.2 ─ host 2 ─ caliB ── pod B 10.98.2.1
//!  (default via 169.254.1.1, proxy ARP on cali*)      policy: to pod B only TCP 5555 and ping
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::io::Read;
use std::io::Write;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use felis_ebpf::Device;
use felis_ebpf::FastPath;
use felis_testns::TestNetns;
use felis_testns::skip_unless_root;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 98, 1, 1);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 98, 2, 1);
const ALLOWED: u16 = 5555;
const DENIED: u16 = 5556;

struct Lab {
    pod_a: TestNetns,
    host1: TestNetns,
    host2: TestNetns,
    pod_b: TestNetns,
}

/// A pod namespace behind `cali` in `host`, as the CNI plugin wires it.
fn plug(host: &TestNetns, pod: &TestNetns, cali: &str, address: Ipv4Addr) {
    host.ip(&[
        "link",
        "add",
        cali,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ]);
    host.exec(
        "sysctl",
        &["-qw", &format!("net.ipv4.conf.{cali}.proxy_arp=1")],
    );
    host.exec(
        "sysctl",
        &["-qw", &format!("net.ipv4.neigh.{cali}.proxy_delay=0")],
    );
    host.ip(&["link", "set", cali, "up"]);
    host.ip(&["route", "add", &format!("{address}/32"), "dev", cali]);
    pod.ip(&["addr", "add", &format!("{address}/32"), "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["link", "set", "lo", "up"]);
    pod.ip(&[
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
}

fn lab() -> Lab {
    let lab = Lab {
        pod_a: TestNetns::new().unwrap(),
        host1: TestNetns::new().unwrap(),
        host2: TestNetns::new().unwrap(),
        pod_b: TestNetns::new().unwrap(),
    };
    lab.host1
        .link_to("u1", "192.168.78.1/24", &lab.host2, "u2", "192.168.78.2/24");
    for (host, remote_pods, remote) in [
        (&lab.host1, "10.98.2.0/24", "192.168.78.2"),
        (&lab.host2, "10.98.1.0/24", "192.168.78.1"),
    ] {
        host.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        // What the agent sets with the fast path: conntrack does not see the packets it
        // forwards, so its TCP window is behind (see felis_ebpf::FastPath).
        host.exec(
            "sysctl",
            &[
                "-qw",
                "net.netfilter.nf_conntrack_tcp_be_liberal=1",
                "net.netfilter.nf_conntrack_tcp_ignore_invalid_rst=1",
            ],
        );
        host.ip(&["route", "add", remote_pods, "via", remote]);
        // Proxy ARP answers for 169.254.1.1 only with a route to it elsewhere.
        host.ip(&["route", "add", "default", "via", remote]);
        // Both hosts police forwarded traffic: established first, then what is allowed.
        let policy = format!(
            "table inet t {{ chain forwarding {{ type filter hook forward priority 0; policy drop;
               ct state established,related accept
               ct state invalid drop
               ip daddr {POD_B} tcp dport {ALLOWED} accept
               ip daddr {POD_B} icmp type echo-request accept
             }}
             }}"
        );
        nft(host, &policy);
    }
    plug(&lab.host1, &lab.pod_a, "caliA", POD_A);
    plug(&lab.host2, &lab.pod_b, "caliB", POD_B);
    lab
}

fn nft(ns: &TestNetns, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft -f: {script}");
}

fn ifindex(ns: &TestNetns, ifname: &str) -> u32 {
    let out = ns.ip(&["-o", "link", "show", ifname]);
    out.split(':').next().unwrap().trim().parse().unwrap()
}

fn attach(ns: &TestNetns, devices: &[(&'static str, Device)]) -> FastPath {
    let indexes: Vec<(&str, u32, Device)> = devices
        .iter()
        .map(|(name, kind)| (*name, ifindex(ns, name), *kind))
        .collect();
    ns.run(move || {
        let mut fast = FastPath::load().unwrap();
        for (name, index, kind) in indexes {
            fast.attach(name, index, kind).unwrap();
        }
        fast
    })
}

fn forwarded_by_the_stack(ns: &TestNetns) -> u64 {
    let out = ns.exec("nstat", &["-az", "IpForwDatagrams"]);
    out.lines()
        .find(|l| l.starts_with("IpForwDatagrams"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

/// Sends `size` bytes from pod A to pod B on `port`; the bytes pod B read, or `None` when the
/// connection could not be made.
fn transfer(lab: &Lab, port: u16, size: usize) -> Option<usize> {
    let started = std::time::Instant::now();
    let result = transfer_inner(lab, port, size);
    eprintln!(
        "transfer of {size} bytes to port {port}: {result:?} in {:?}",
        started.elapsed()
    );
    result
}

fn transfer_inner(lab: &Lab, port: u16, size: usize) -> Option<usize> {
    let listener = lab
        .pod_b
        .run(|| TcpListener::bind(SocketAddr::from((POD_B, port))))
        .unwrap();
    listener.set_nonblocking(false).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return Some(total),
                Ok(n) => total += n,
            }
        }
    });
    let target = SocketAddr::from((POD_B, port));
    let stream = lab
        .pod_a
        .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)));
    let Ok(mut stream) = stream else {
        // Unblock the accept.
        let _ = lab.pod_b.run(|| TcpStream::connect(target));
        let _ = server.join();
        return None;
    };
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let data = vec![7u8; size];
    if let Err(e) = stream.write_all(&data) {
        eprintln!("writing to pod B: {e}");
    }
    drop(stream);
    server.join().unwrap()
}

#[test]
fn established_flows_take_the_fast_path_and_policy_still_decides_new_ones() {
    if skip_unless_root("established_flows_take_the_fast_path") {
        return;
    }
    let lab = lab();
    let mut fast1 = attach(
        &lab.host1,
        &[("caliA", Device::Workload), ("u1", Device::Uplink)],
    );
    let mut fast2 = attach(
        &lab.host2,
        &[("caliB", Device::Workload), ("u2", Device::Uplink)],
    );
    let before = forwarded_by_the_stack(&lab.host2);
    const SIZE: usize = 16 << 20;
    assert_eq!(transfer(&lab, ALLOWED, SIZE), Some(SIZE));
    let (s1, s2) = (fast1.stats().unwrap(), fast2.stats().unwrap());
    // Each direction is recorded on each host once the stack has let it through...
    assert!(s1.recorded >= 2 && s2.recorded >= 2, "{s1:?} {s2:?}");
    // ...and the rest of the flow goes around the stack.
    assert!(s1.forwarded > 50 && s2.forwarded > 50, "{s1:?} {s2:?}");
    assert_eq!(s1.redirect_failed + s2.redirect_failed, 0);
    let by_stack = forwarded_by_the_stack(&lab.host2) - before;
    assert!(
        by_stack < s2.forwarded,
        "host 2's stack forwarded {by_stack} packets, the fast path {}",
        s2.forwarded
    );

    // A new flow between the same pods to a port the policy does not allow is refused.
    assert_eq!(transfer(&lab, DENIED, 1000), None);

    // After a policy change, flows are taken again only once the stack has passed them.
    lab.host1.run(|| fast1.policy_changed()).unwrap();
    lab.host2.run(|| fast2.policy_changed()).unwrap();
    let recorded = fast2.stats().unwrap().recorded;
    assert_eq!(transfer(&lab, ALLOWED, SIZE), Some(SIZE));
    assert!(fast2.stats().unwrap().recorded > recorded);
}

#[test]
fn nothing_is_taken_that_policy_did_not_accept() {
    if skip_unless_root("nothing_is_taken_that_policy_did_not_accept") {
        return;
    }
    let lab = lab();
    let fast1 = attach(
        &lab.host1,
        &[("caliA", Device::Workload), ("u1", Device::Uplink)],
    );
    let fast2 = attach(
        &lab.host2,
        &[("caliB", Device::Workload), ("u2", Device::Uplink)],
    );
    assert_eq!(transfer(&lab, DENIED, 1000), None);
    // Host 1 let the SYNs out (its policy is the same, but they were dropped at host 2), so host
    // 1 may have recorded A → B; host 2 never recorded anything, nor sent anything on.
    let s2 = fast2.stats().unwrap();
    assert_eq!((s2.recorded, s2.forwarded), (0, 0), "{s2:?}");
    assert_eq!(fast1.stats().unwrap().forwarded, 0);
}

#[test]
fn detach_removes_the_filters_and_pods_still_talk() {
    if skip_unless_root("detach_removes_the_filters_and_pods_still_talk") {
        return;
    }
    let lab = lab();
    let mut fast1 = attach(
        &lab.host1,
        &[("caliA", Device::Workload), ("u1", Device::Uplink)],
    );
    // Attaching again (a restart) replaces the filters in place.
    let _again = attach(&lab.host1, &[("caliA", Device::Workload)]);
    let filters = lab
        .host1
        .exec("tc", &["filter", "show", "dev", "caliA", "ingress"]);
    assert_eq!(
        filters.matches("felis_fast_forward").count(),
        1,
        "{filters}"
    );
    assert!(lab.host1.run(|| fast1.detach("caliA")).unwrap());
    assert!(lab.host1.run(|| fast1.detach("u1")).unwrap());
    for dev in ["caliA", "u1"] {
        for direction in ["ingress", "egress"] {
            let filters = lab
                .host1
                .exec("tc", &["filter", "show", "dev", dev, direction]);
            assert!(
                !filters.contains("felis_fast"),
                "{dev} {direction}: {filters}"
            );
        }
    }
    assert!(fast1.attached().is_empty());
    assert_eq!(transfer(&lab, ALLOWED, 1 << 20), Some(1 << 20));
}

/// A connection pod A aborts (RST, after enough data for the fast path to carry the flow): pod
/// B sees the reset at once, and host 2's conntrack lets go of the flow.
#[test]
fn a_reset_reaches_the_pod_and_conntrack_lets_go() {
    if skip_unless_root("a_reset_reaches_the_pod_and_conntrack_lets_go") {
        return;
    }
    let lab = lab();
    let _fast1 = attach(
        &lab.host1,
        &[("caliA", Device::Workload), ("u1", Device::Uplink)],
    );
    let fast2 = attach(
        &lab.host2,
        &[("caliB", Device::Workload), ("u2", Device::Uplink)],
    );
    let listener = lab
        .pod_b
        .run(|| TcpListener::bind(SocketAddr::from((POD_B, ALLOWED))))
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let started = std::time::Instant::now();
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return ("eof", started.elapsed()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return ("reset", started.elapsed());
                }
                Err(_) => return ("timeout", started.elapsed()),
            }
        }
    });
    // SO_LINGER 0 makes close() send RST.
    let client = format!(
        "import socket, struct, time\n\
         s = socket.create_connection(('{POD_B}', {ALLOWED}))\n\
         s.sendall(b'x' * (8 << 20))\n\
         time.sleep(0.3)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
         s.close()\n"
    );
    lab.pod_a.exec("python3", &["-c", &client]);
    let (how, after) = server.join().unwrap();
    assert_eq!(how, "reset", "after {after:?}");
    assert!(fast2.stats().unwrap().forwarded > 50);
    let entries = lab.host2.exec(
        "conntrack",
        &["-L", "-p", "tcp", "--dport", &ALLOWED.to_string()],
    );
    assert!(
        entries.is_empty() || entries.contains("CLOSE"),
        "host 2 still tracks the flow as open: {entries}"
    );
}
