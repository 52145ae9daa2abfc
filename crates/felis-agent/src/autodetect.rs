//! IP autodetection, as calico-node does it: `first-found` (skipping container and tunnel
//! devices), `interface=REGEX`, `skip-interface=REGEX`, `cidr=CIDR[,CIDR]`, `can-reach=DEST`.
//! Pure: it chooses among the interfaces and addresses it is given.

use std::net::IpAddr;

use ipnet::IpNet;

/// Interfaces `first-found` never picks (the reference §1 "IP autodetection").
pub const EXCLUDED: &[&str] = &[
    "^docker.*",
    "^cbr.*",
    "^dummy.*",
    "^podman.*",
    "^virbr.*",
    "^lxcbr.*",
    "^veth.*",
    "^lo$",
    "^br-.*",
    "^cali.*",
    "^tunl.*",
    "^flannel.*",
    "^kube-ipvs.*",
    "^cni.*",
    "^vxlan.calico$",
    "^vxlan-v6.calico$",
    "^wireguard.cali$",
    "^wg-v6.cali$",
    "^nodelocaldns.*",
];

/// An autodetection method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// The first global address on an interface that is not excluded.
    FirstFound,
    /// The first address on an interface whose name matches.
    Interface(String),
    /// The first address on an interface whose name does not match (nor an excluded one).
    SkipInterface(String),
    /// The first address inside one of these CIDRs.
    Cidr(Vec<IpNet>),
    /// The source address the kernel would use to reach this destination.
    CanReach(IpAddr),
}

impl Method {
    /// Parses `first-found`, `interface=...`, `skip-interface=...`, `cidr=...`, `can-reach=...`.
    pub fn parse(s: &str) -> Result<Method, String> {
        let s = s.trim();
        if s.is_empty() || s == "first-found" {
            return Ok(Method::FirstFound);
        }
        let (method, arg) = s
            .split_once('=')
            .ok_or_else(|| format!("unknown autodetection method {s:?}"))?;
        match method {
            "interface" => check_regex(arg).map(|_| Method::Interface(arg.to_string())),
            "skip-interface" => check_regex(arg).map(|_| Method::SkipInterface(arg.to_string())),
            "cidr" => arg
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<IpNet>()
                        .map_err(|e| format!("cidr={c}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Method::Cidr),
            "can-reach" => arg
                .parse::<IpAddr>()
                .map(Method::CanReach)
                .map_err(|_| format!("can-reach={arg}: not an IP address")),
            other => Err(format!("unknown autodetection method {other:?}")),
        }
    }
}

fn check_regex(pattern: &str) -> Result<regex_lite::Regex, String> {
    regex_lite::Regex::new(pattern)
        .map_err(|e| format!("invalid interface pattern {pattern:?}: {e}"))
}

/// An address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The interface's name.
    pub interface: String,
    /// The address with its prefix length.
    pub address: IpNet,
}

/// Picks an address of `family_v4` (true = IPv4) among `candidates` (in interface order);
/// `reach_source` answers `can-reach` (the kernel's source address toward the destination).
pub fn choose(
    method: &Method,
    candidates: &[Candidate],
    v4: bool,
    reach_source: Option<IpAddr>,
) -> Option<Candidate> {
    let excluded: Vec<regex_lite::Regex> = EXCLUDED
        .iter()
        .filter_map(|p| regex_lite::Regex::new(p).ok())
        .collect();
    let usable = |c: &&Candidate| {
        c.address.addr().is_ipv4() == v4
            && !c.address.addr().is_loopback()
            && !is_link_local(c.address.addr())
    };
    let not_excluded = |c: &&Candidate| !excluded.iter().any(|r| r.is_match(&c.interface));
    match method {
        Method::FirstFound => candidates.iter().filter(usable).find(not_excluded).cloned(),
        Method::Interface(pattern) => {
            let re = check_regex(pattern).ok()?;
            candidates
                .iter()
                .filter(usable)
                .find(|c| re.is_match(&c.interface))
                .cloned()
        }
        Method::SkipInterface(pattern) => {
            let re = check_regex(pattern).ok()?;
            candidates
                .iter()
                .filter(usable)
                .filter(not_excluded)
                .find(|c| !re.is_match(&c.interface))
                .cloned()
        }
        Method::Cidr(cidrs) => candidates
            .iter()
            .filter(usable)
            .find(|c| cidrs.iter().any(|n| n.contains(&c.address.addr())))
            .cloned(),
        Method::CanReach(_) => {
            let source = reach_source?;
            candidates
                .iter()
                .find(|c| c.address.addr() == source)
                .cloned()
        }
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(interface: &str, address: &str) -> Candidate {
        Candidate {
            interface: interface.into(),
            address: address.parse().unwrap(),
        }
    }

    fn candidates() -> Vec<Candidate> {
        vec![
            c("lo", "127.0.0.1/8"),
            c("docker0", "172.17.0.1/16"),
            c("cali0123456789a", "169.254.1.1/32"),
            c("vxlan.calico", "10.244.0.0/32"),
            c("eth0", "10.0.1.10/24"),
            c("eth1", "192.168.5.2/24"),
        ]
    }

    #[test]
    fn first_found_skips_container_and_tunnel_devices() {
        let got = choose(&Method::FirstFound, &candidates(), true, None).unwrap();
        assert_eq!(got.address.to_string(), "10.0.1.10/24");
    }

    #[test]
    fn interface_cidr_and_can_reach() {
        let m = Method::parse("interface=eth1").unwrap();
        assert_eq!(
            choose(&m, &candidates(), true, None).unwrap().interface,
            "eth1"
        );
        let m = Method::parse("cidr=192.168.0.0/16").unwrap();
        assert_eq!(
            choose(&m, &candidates(), true, None).unwrap().interface,
            "eth1"
        );
        let m = Method::parse("skip-interface=eth0").unwrap();
        assert_eq!(
            choose(&m, &candidates(), true, None).unwrap().interface,
            "eth1"
        );
        let m = Method::parse("can-reach=8.8.8.8").unwrap();
        let src = "192.168.5.2".parse().ok();
        assert_eq!(
            choose(&m, &candidates(), true, src).unwrap().interface,
            "eth1"
        );
    }

    #[test]
    fn bad_methods_are_refused() {
        assert!(Method::parse("guess").is_err());
        assert!(Method::parse("cidr=10.0.0.0/33").is_err());
        assert!(Method::parse("interface=(").is_err());
        assert!(Method::parse("can-reach=example").is_err());
    }
}
