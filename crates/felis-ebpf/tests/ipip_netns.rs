//! The IPIP classifiers between two namespaces joined by a veth pair.
//!
//! ```text
//!   ct-<pid>-a                                  ct-<pid>-b
//!   lo 10.99.1.1/32 ("pod")                     lo 10.99.2.1/32 ("pod")
//!   a0 192.168.77.1/24 ───────── veth ───────── b0 192.168.77.2/24
//!   10.99.2.0/24 via 192.168.77.2 onlink        10.99.1.0/24 via 192.168.77.1 onlink
//!     src 10.99.1.1 mtu 1480                      src 10.99.2.1 mtu 1480
//! ```
//! Traffic between the "pods" is IPIP on the veth; traffic between the host addresses is not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Read;
use std::io::Write;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use felis_ebpf::IpipTc;
use felis_testns::TestNetns;
use felis_testns::skip_unless_root;
use ipnet::Ipv4Net;

const A_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const B_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const A_POD: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
const B_POD: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 1);

struct Pair {
    a: TestNetns,
    b: TestNetns,
}

fn pair() -> Pair {
    let a = TestNetns::new().unwrap();
    let b = TestNetns::new().unwrap();
    a.link_to(
        "a0",
        &format!("{A_HOST}/24"),
        &b,
        "b0",
        &format!("{B_HOST}/24"),
    );
    for (ns, dev, pod, remote_pod, remote_host) in [
        (&a, "a0", A_POD, "10.99.2.0/24", B_HOST),
        (&b, "b0", B_POD, "10.99.1.0/24", A_HOST),
    ] {
        ns.ip(&["addr", "add", &format!("{pod}/32"), "dev", "lo"]);
        ns.ip(&[
            "route",
            "add",
            remote_pod,
            "via",
            &remote_host.to_string(),
            "dev",
            dev,
            "onlink",
            "mtu",
            "1480",
            "src",
            &pod.to_string(),
        ]);
    }
    Pair { a, b }
}

fn tunnels(prefix: &str, remote: Ipv4Addr) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    BTreeMap::from([(prefix.parse().unwrap(), remote)])
}

fn attach(
    ns: &TestNetns,
    dev: &'static str,
    local: Ipv4Addr,
    prefix: &'static str,
    remote: Ipv4Addr,
) -> IpipTc {
    ns.run(move || {
        IpipTc::attach(
            dev,
            local,
            &tunnels(prefix, remote),
            &BTreeSet::from([remote]),
        )
    })
    .unwrap()
}

fn ping(ns: &TestNetns, from: Ipv4Addr, to: Ipv4Addr, count: u32) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), "ping", "-n", "-q", "-W", "1"])
        .args([
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-I",
            &from.to_string(),
        ])
        .arg(to.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A tcpdump in a namespace writing to a pcap file; killed on drop.
struct Capture {
    child: Child,
    file: tempfile::NamedTempFile,
}

impl Capture {
    fn start(ns: &TestNetns, dev: &str, filter: &str) -> Capture {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "tcpdump", "-i", dev, "-n", "-U"])
            // Without it, packets still in the capture ring when tcpdump stops are lost.
            .arg("--immediate-mode")
            .args(["-Z", "root", "-s", "128", "-w"])
            .arg(file.path())
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // tcpdump says "listening on" once the filter is in place.
        let mut stderr = child.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            assert_eq!(stderr.read(&mut byte).unwrap(), 1, "tcpdump exited early");
            seen.push(byte[0]);
        }
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stderr.read_to_end(&mut sink);
        });
        Capture { child, file }
    }

    /// Stops the capture and returns the captured frames.
    fn finish(mut self) -> Vec<Vec<u8>> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let bytes = std::fs::read(self.file.path()).unwrap();
        pcap_frames(&bytes)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The frames of a classic pcap file (little-endian, as tcpdump writes on x86).
fn pcap_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        if at + caplen > bytes.len() {
            break;
        }
        frames.push(bytes[at..at + caplen].to_vec());
        at += caplen;
    }
    frames
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn pods_reach_each_other_through_ipip_and_the_wire_format_is_the_kernels() {
    if skip_unless_root("pods_reach_each_other_through_ipip") {
        return;
    }
    let p = pair();
    let _a = attach(&p.a, "a0", A_HOST, "10.99.2.0/24", B_HOST);
    let _b = attach(&p.b, "b0", B_HOST, "10.99.1.0/24", A_HOST);
    let capture = Capture::start(&p.b, "b0", "ip proto 4");
    assert!(ping(&p.a, A_POD, B_POD, 3), "pod to pod through IPIP");
    let frames = capture.finish();
    assert!(
        frames.len() >= 6,
        "echo requests and replies encapsulated: {}",
        frames.len()
    );
    for frame in &frames {
        let outer = &frame[14..34];
        assert_eq!(outer[0], 0x45, "IPv4, no options");
        assert_eq!(outer[8], 64, "TTL 64");
        assert_eq!(outer[9], 4, "protocol 4 (IPIP)");
        assert_eq!(checksum(outer), 0, "outer header checksum");
        let inner = &frame[34..54];
        assert_eq!(inner[0], 0x45);
        assert_eq!(inner[9], 1, "ICMP inside");
        let total = u16::from_be_bytes([outer[2], outer[3]]);
        let inner_total = u16::from_be_bytes([inner[2], inner[3]]);
        assert_eq!(total, inner_total + 20);
        assert_eq!(outer[6] & 0x40, inner[6] & 0x40, "DF copied");
        let (src, dst) = (&outer[12..16], &outer[16..20]);
        let (isrc, idst) = (&inner[12..16], &inner[16..20]);
        if isrc == A_POD.octets() {
            assert_eq!((src, dst), (&A_HOST.octets()[..], &B_HOST.octets()[..]));
            assert_eq!(idst, B_POD.octets());
        } else {
            assert_eq!((src, dst), (&B_HOST.octets()[..], &A_HOST.octets()[..]));
            assert_eq!((isrc, idst), (&B_POD.octets()[..], &A_POD.octets()[..]));
        }
    }
    let stats = _a.stats().unwrap();
    assert!(
        stats.encapsulated >= 3 && stats.decapsulated >= 3,
        "{stats:?}"
    );
}

#[test]
fn host_traffic_outside_the_tunnels_stays_plain() {
    if skip_unless_root("host_traffic_outside_the_tunnels_stays_plain") {
        return;
    }
    let p = pair();
    let _a = attach(&p.a, "a0", A_HOST, "10.99.2.0/24", B_HOST);
    let _b = attach(&p.b, "b0", B_HOST, "10.99.1.0/24", A_HOST);
    let capture = Capture::start(&p.b, "b0", "ip proto 4");
    assert!(ping(&p.a, A_HOST, B_HOST, 2));
    assert!(capture.finish().is_empty(), "no IPIP for host to host");
}

#[test]
fn a_tcp_transfer_with_gso_crosses_the_tunnel_intact() {
    if skip_unless_root("a_tcp_transfer_with_gso_crosses_the_tunnel_intact") {
        return;
    }
    let p = pair();
    let _a = attach(&p.a, "a0", A_HOST, "10.99.2.0/24", B_HOST);
    let _b = attach(&p.b, "b0", B_HOST, "10.99.1.0/24", A_HOST);
    let listener =
        p.b.run(|| TcpListener::bind(SocketAddr::from((B_POD, 0))))
            .unwrap();
    let port = listener.local_addr().unwrap().port();
    const SIZE: usize = 32 << 20;
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut sum = 0u64;
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sum = buf[..n]
                .iter()
                .fold(sum, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
            total += n;
        }
        (total, sum)
    });
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    let expected = data
        .iter()
        .fold(0u64, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
    let started = Instant::now();
    let target = SocketAddr::from((B_POD, port));
    let mut stream =
        p.a.run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))
            .unwrap();
    stream.write_all(&data).unwrap();
    drop(stream);
    let (total, sum) = server.join().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(total, SIZE);
    assert_eq!(sum, expected, "payload intact");
    eprintln!(
        "32 MiB through IPIP in {:?} ({:.0} Mbit/s)",
        elapsed,
        (SIZE as f64 * 8.0) / elapsed.as_secs_f64() / 1e6
    );
    let stats = _b.stats().unwrap();
    assert_eq!(stats.decap_failed + stats.malformed, 0, "{stats:?}");
}

#[test]
fn ipip_from_an_unknown_peer_is_dropped() {
    if skip_unless_root("ipip_from_an_unknown_peer_is_dropped") {
        return;
    }
    let p = pair();
    let _a = attach(&p.a, "a0", A_HOST, "10.99.2.0/24", B_HOST);
    let mut b = attach(&p.b, "b0", B_HOST, "10.99.1.0/24", A_HOST);
    b.set_peers(&BTreeSet::new()).unwrap();
    assert!(
        !ping(&p.a, A_POD, B_POD, 2),
        "B accepts IPIP only from its peers"
    );
    assert!(b.stats().unwrap().unknown_peer >= 2);
    b.set_peers(&BTreeSet::from([A_HOST])).unwrap();
    assert!(
        ping(&p.a, A_POD, B_POD, 1),
        "accepted again once A is a peer"
    );
}

#[test]
fn reattaching_replaces_the_filters_in_place_and_detach_removes_them() {
    if skip_unless_root("reattaching_replaces_the_filters_in_place") {
        return;
    }
    let p = pair();
    let first = attach(&p.a, "a0", A_HOST, "10.99.2.0/24", B_HOST);
    let _b = attach(&p.b, "b0", B_HOST, "10.99.1.0/24", A_HOST);
    // A restart: the old object goes away, the filters stay and keep working.
    drop(first);
    assert!(ping(&p.a, A_POD, B_POD, 1), "filters outlive their loader");
    let mut second = attach(&p.a, "a0", A_HOST, "10.99.2.0/24", B_HOST);
    for direction in ["ingress", "egress"] {
        let filters = p.a.exec("tc", &["filter", "show", "dev", "a0", direction]);
        assert_eq!(
            filters.lines().filter(|l| l.contains("felis_ipip")).count(),
            1,
            "one {direction} filter: {filters}"
        );
    }
    assert!(ping(&p.a, A_POD, B_POD, 1));
    assert!(
        second.stats().unwrap().encapsulated >= 1,
        "the new program runs"
    );
    // Without its tunnel, A sends pod traffic plain (B still encapsulates its replies).
    second.set_tunnels(&BTreeMap::new()).unwrap();
    let capture = Capture::start(&p.b, "b0", "ip proto 4 and src host 192.168.77.1");
    let _ = ping(&p.a, A_POD, B_POD, 1);
    assert!(capture.finish().is_empty());
    assert!(p.a.run(|| IpipTc::detach("a0")).unwrap());
    assert!(!p.a.run(|| IpipTc::detach("a0")).unwrap(), "idempotent");
    let filters = p.a.exec("tc", &["filter", "show", "dev", "a0", "egress"]);
    assert!(!filters.contains("felis_ipip"), "{filters}");
}

#[test]
fn filters_deleted_behind_our_back_are_put_back_without_a_reload() {
    if skip_unless_root("filters_deleted_behind_our_back_are_put_back") {
        return;
    }
    let p = pair();
    let mut a = attach(&p.a, "a0", A_HOST, "10.99.2.0/24", B_HOST);
    let _b = attach(&p.b, "b0", B_HOST, "10.99.1.0/24", A_HOST);
    assert!(!p.a.run(|| a.ensure_attached()).unwrap(), "nothing missing");
    // The whole qdisc goes, filters with it: pod traffic leaves A unencapsulated.
    p.a.exec("tc", &["qdisc", "del", "dev", "a0", "clsact"]);
    let before = a.stats().unwrap().encapsulated;
    assert!(p.a.run(|| a.ensure_attached()).unwrap(), "put back");
    assert!(ping(&p.a, A_POD, B_POD, 1));
    assert!(
        a.stats().unwrap().encapsulated > before,
        "the same maps and counters"
    );
    let filters = p.a.exec("tc", &["filter", "show", "dev", "a0", "ingress"]);
    assert!(filters.contains("felis_ipip_ingress"), "{filters}");
}

#[test]
fn the_object_is_built_and_errors_name_the_interface() {
    if skip_unless_root("the_object_is_built_and_errors_name_the_interface") {
        return;
    }
    assert!(felis_ebpf::is_built(), "clang compiled bpf/ipip.c");
    let ns = TestNetns::new().unwrap();
    let err = ns
        .run(|| IpipTc::attach("nosuch0", A_HOST, &BTreeMap::new(), &BTreeSet::new()))
        .unwrap_err();
    assert!(err.to_string().contains("nosuch0"), "{err}");
}

#[test]
fn a_more_specific_unspecified_entry_is_not_encapsulated() {
    if skip_unless_root("a_more_specific_unspecified_entry_is_not_encapsulated") {
        return;
    }
    let p = pair();
    let mut a = attach(&p.a, "a0", A_HOST, "10.99.2.0/24", B_HOST);
    let _b = attach(&p.b, "b0", B_HOST, "10.99.1.0/24", A_HOST);
    let mut tunnels = tunnels("10.99.2.0/24", B_HOST);
    tunnels.insert("10.99.2.1/32".parse().unwrap(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(a.set_tunnels(&tunnels).unwrap(), 1);
    let capture = Capture::start(&p.b, "b0", "ip proto 4 and src host 192.168.77.1");
    let _ = ping(&p.a, A_POD, B_POD, 1);
    assert!(
        capture.finish().is_empty(),
        "the /32 hole wins over the /24"
    );
    assert_eq!(a.tunnels(), &tunnels);
}
