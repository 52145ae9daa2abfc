//! A small cluster shared by the verdict tests.
//!
//! ```text
//! namespace   labels          endpoint  ip          labels            sa       named ports
//! prod        env=prod        web       10.0.0.1    app=web           web      http TCP 8080
//!                             db        10.0.0.2    app=db            db       postgres TCP 5432
//! dev         env=dev         web       10.0.1.1    app=web           default
//!                             db        10.0.1.2    app=db            default
//! monitoring  team=ops        prom      10.0.2.1    app=prometheus    prom
//!                             grafana   10.0.2.2    app=grafana       default
//! (host)                      host1     192.168.0.10  node=host1 (HEP, projectcalico-default-allow)
//! prod NetworkSet  partners  172.16.0.0/16  role=partner
//! GlobalNetworkSet trusted   198.51.100.0/24, 2001:db8::/32  trust=yes
//! outside: 8.8.8.8, 203.0.113.5
//! ```
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use felis_policy::Endpoint;
use felis_policy::NamedPort;
use felis_policy::Namespace;
use felis_policy::NetworkSet;
use felis_policy::Packet;
use felis_policy::Policy;
use felis_policy::PolicySet;
use felis_policy::Profile;
use felis_policy::Protocol;
use felis_policy::ServiceAccount;
use felis_policy::Tier;
use felis_policy::TierDefaultAction;
use felis_policy::Trace;
use felis_policy::Verdict;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(ns: &str, name: &str, addr: &str, app: &str, sa: &str) -> Endpoint {
    Endpoint {
        name: name.to_string(),
        namespace: Some(ns.to_string()),
        labels: labels(&[("app", app)]),
        ips: vec![format!("{addr}/32").parse().unwrap()],
        profiles: vec![format!("kns.{ns}"), format!("ksa.{ns}.{sa}")],
        ports: Vec::new(),
        service_account: Some(sa.to_string()),
        orchestrator: Some("k8s".to_string()),
        workload: None,
        ..Endpoint::default()
    }
}

pub fn cluster() -> PolicySet {
    let mut set = PolicySet::new();
    for (ns, key, value) in [
        ("prod", "env", "prod"),
        ("dev", "env", "dev"),
        ("monitoring", "team", "ops"),
    ] {
        set.add_namespace(Namespace {
            name: ns.to_string(),
            labels: labels(&[(key, value)]),
        });
        set.add_profile(Profile::allow_all(format!("kns.{ns}")));
    }
    // ksa profiles carry no rules; they only exist (KDD creates them).
    for (ns, sa) in [
        ("prod", "web"),
        ("prod", "db"),
        ("dev", "default"),
        ("monitoring", "prom"),
        ("monitoring", "default"),
    ] {
        set.add_profile(Profile {
            name: format!("ksa.{ns}.{sa}"),
            ..Profile::default()
        });
    }
    set.add_profile(Profile::allow_all("projectcalico-default-allow"));
    set.add_service_account(ServiceAccount {
        name: "db".to_string(),
        namespace: "prod".to_string(),
        labels: labels(&[("role", "database")]),
    });
    let mut web = pod("prod", "web", "10.0.0.1", "web", "web");
    web.ports.push(NamedPort {
        name: "http".to_string(),
        protocol: Protocol::TCP,
        port: 8080,
    });
    let mut db = pod("prod", "db", "10.0.0.2", "db", "db");
    db.ports.push(NamedPort {
        name: "postgres".to_string(),
        protocol: Protocol::TCP,
        port: 5432,
    });
    set.add_endpoint(web)
        .add_endpoint(db)
        .add_endpoint(pod("dev", "web", "10.0.1.1", "web", "default"))
        .add_endpoint(pod("dev", "db", "10.0.1.2", "db", "default"))
        .add_endpoint(pod("monitoring", "prom", "10.0.2.1", "prometheus", "prom"))
        .add_endpoint(pod(
            "monitoring",
            "grafana",
            "10.0.2.2",
            "grafana",
            "default",
        ))
        .add_endpoint(Endpoint {
            name: "host1".to_string(),
            labels: labels(&[("node", "host1")]),
            ips: vec!["192.168.0.10/32".parse().unwrap()],
            profiles: vec!["projectcalico-default-allow".to_string()],
            ..Endpoint::default()
        });
    set.add_network_set(NetworkSet {
        name: "partners".to_string(),
        namespace: Some("prod".to_string()),
        labels: labels(&[("role", "partner")]),
        nets: vec!["172.16.0.0/16".parse().unwrap()],
    });
    set.add_network_set(NetworkSet {
        name: "trusted".to_string(),
        namespace: None,
        labels: labels(&[("trust", "yes")]),
        nets: vec![
            "198.51.100.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
    });
    set
}

/// `ns/name` or a bare host endpoint name.
/// [`cluster`] with two tiers: `security` (order 10, default Deny) and `audit` (no order,
/// default Pass).
pub fn tiered_cluster() -> PolicySet {
    let mut set = cluster();
    set.add_tier(Tier {
        name: "security".to_string(),
        order: Some(10.0),
        default_action: TierDefaultAction::Deny,
    });
    set.add_tier(Tier {
        name: "audit".to_string(),
        order: None,
        default_action: TierDefaultAction::Pass,
    });
    set
}

pub fn endpoint<'a>(set: &'a PolicySet, key: &str) -> &'a Endpoint {
    let (ns, name) = match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    };
    set.endpoints
        .iter()
        .find(|e| e.name == name && e.namespace.as_deref() == ns)
        .unwrap_or_else(|| panic!("no endpoint {key}"))
}

/// An address of an end: an endpoint key (`prod/web`, `host1`) or a literal IP outside.
pub fn address<'a>(set: &'a PolicySet, end: &str) -> (IpAddr, Option<&'a Endpoint>) {
    match end.parse::<IpAddr>() {
        Ok(addr) => (addr, set.endpoint_by_ip(addr)),
        Err(_) => {
            let e = endpoint(set, end);
            (e.ips[0].addr(), Some(e))
        }
    }
}

/// A packet between two ends: `proto` is `tcp`, `udp`, `sctp`, `icmp:<type>:<code>` or a
/// protocol number; TCP/UDP/SCTP packets come from port 40000.
pub fn packet(set: &PolicySet, from: &str, to: &str, proto: &str, dport: u16) -> Packet {
    let (src, _) = address(set, from);
    let (dst, _) = address(set, to);
    if let Some(rest) = proto.strip_prefix("icmp:") {
        let (t, c) = rest.split_once(':').unwrap();
        return Packet::icmp(src, dst, t.parse().unwrap(), c.parse().unwrap());
    }
    let protocol: Protocol = proto.parse().unwrap();
    if protocol.has_ports() {
        Packet::with_ports(protocol, src, 40000, dst, dport)
    } else {
        Packet {
            src_ip: src,
            dst_ip: dst,
            protocol,
            src_port: None,
            dst_port: None,
            icmp_type: None,
            icmp_code: None,
        }
    }
}

/// The trace of a flow between two ends (see [`packet`]).
pub fn trace(set: &PolicySet, from: &str, to: &str, proto: &str, dport: u16) -> Trace {
    let (_, from_ep) = address(set, from);
    let (_, to_ep) = address(set, to);
    set.verdict(&packet(set, from, to, proto, dport), from_ep, to_ep)
}

/// One row of a verdict table.
pub struct Case {
    pub from: &'static str,
    pub to: &'static str,
    pub proto: &'static str,
    pub port: u16,
    pub allow: bool,
}

pub const fn case(
    from: &'static str,
    to: &'static str,
    proto: &'static str,
    port: u16,
    allow: bool,
) -> Case {
    Case {
        from,
        to,
        proto,
        port,
        allow,
    }
}

pub fn check(name: &str, set: &PolicySet, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let t = trace(set, c.from, c.to, c.proto, c.port);
        let want = if c.allow {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        if t.verdict != want {
            failures.push(format!(
                "{name}: {} -> {} {}/{}: want {want:?}, got {:?}\n  egress: {:?}\n  ingress: {:?}",
                c.from, c.to, c.proto, c.port, t.verdict, t.egress, t.ingress
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A policy from its JSON form (the engine model's serde shape).
pub fn policy(value: serde_json::Value) -> Policy {
    serde_json::from_value(value).unwrap()
}
