//! The lab's plan: names and addresses, computed from its options. Pure.
//!
//! ```text
//!                      internet (<lab>.inet, 203.0.113.10 on lo)
//!                          │ 100.64.0.2/30
//!                          │ inet0 100.64.0.1/30
//!   ┌───────────── VPC router (<lab>.vpc): forwards only host addresses between subnets
//!   │ gw-s1 10.0.1.1/24        gw-s2 10.0.2.1/24            and to the internet
//!   │ (veths into br-s1)       (into br-s2)
//!   │  ├─ h1 ── eth0 10.0.1.10 (<lab>.h1)   ├─ h2 ── eth0 10.0.2.10 (<lab>.h2)
//!   │  └─ h3 ── eth0 10.0.1.11 (<lab>.h3)   ...
//! ```
//! Hosts go round-robin over the subnets. Each namespace is named `<lab>.<what>`; lab names
//! have no dots, so one lab's names never prefix another's.

use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::Serialize;

use crate::Error;

/// The address the lab's "internet" answers on.
pub const INTERNET_ADDRESS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The lab's pod pool.
pub const POOL_CIDR: &str = "10.244.0.0/16";

/// How the lab's pool encapsulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolMode {
    /// `vxlanMode: CrossSubnet`.
    VxlanCrossSubnet,
    /// `vxlanMode: Always`.
    Vxlan,
    /// `ipipMode: CrossSubnet`.
    IpipCrossSubnet,
    /// `ipipMode: Always`.
    Ipip,
    /// No encapsulation.
    None,
}

impl PoolMode {
    /// Parses the `--pool-mode` spelling.
    pub fn parse(s: &str) -> Result<PoolMode, Error> {
        match s {
            "vxlan-cross-subnet" => Ok(PoolMode::VxlanCrossSubnet),
            "vxlan" => Ok(PoolMode::Vxlan),
            "ipip-cross-subnet" => Ok(PoolMode::IpipCrossSubnet),
            "ipip" => Ok(PoolMode::Ipip),
            "none" => Ok(PoolMode::None),
            other => Err(Error::Invalid(format!(
                "--pool-mode {other:?}: use vxlan-cross-subnet, vxlan, ipip-cross-subnet, ipip or none"
            ))),
        }
    }

    /// The pool's `(ipipMode, vxlanMode)`.
    pub fn modes(self) -> (&'static str, &'static str) {
        match self {
            PoolMode::VxlanCrossSubnet => ("Never", "CrossSubnet"),
            PoolMode::Vxlan => ("Never", "Always"),
            PoolMode::IpipCrossSubnet => ("CrossSubnet", "Never"),
            PoolMode::Ipip => ("Always", "Never"),
            PoolMode::None => ("Never", "Never"),
        }
    }
}

/// What `felis lab up` was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// The lab's name (`--name`).
    pub name: String,
    /// Number of hosts.
    pub hosts: usize,
    /// Number of VPC subnets.
    pub subnets: usize,
    /// Workloads per host.
    pub workloads: usize,
    /// The pool's encapsulation.
    pub pool_mode: PoolMode,
    /// Whether the emulated source/destination checks are on.
    pub src_dst_check: bool,
}

/// A VPC subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// `s1`, `s2`, ...
    pub name: String,
    /// The bridge in the router namespace.
    pub bridge: String,
    /// The subnet's third octet: `10.0.<n>.0/24`.
    pub index: u8,
    /// The router's address in it (the hosts' gateway).
    pub gateway: Ipv4Addr,
}

impl Subnet {
    /// `10.0.<n>.0/24`.
    pub fn cidr(&self) -> String {
        format!("10.0.{}.0/24", self.index)
    }
}

/// A host of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// `h1`, `h2`, ...: also its node name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// The subnet it is in.
    pub subnet: String,
    /// Its address in the subnet (prefix /24).
    pub address: Ipv4Addr,
    /// Its gateway, the VPC router.
    pub gateway: Ipv4Addr,
    /// Its port on the subnet's bridge, in the router namespace.
    pub router_port: String,
}

/// A workload of the lab (its address is known once the CNI plugin gave it one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// `h1-w1`, ...
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its network namespace.
    pub netns: String,
}

/// The lab's names and addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// What was asked for.
    pub spec: LabSpec,
    /// The VPC router's namespace.
    pub router_netns: String,
    /// The internet's namespace.
    pub internet_netns: String,
    /// The subnets.
    pub subnets: Vec<Subnet>,
    /// The hosts.
    pub hosts: Vec<Host>,
    /// The workloads.
    pub workloads: Vec<Workload>,
}

/// Checks a lab name: 1–12 characters of `[a-z0-9-]`, starting with a letter.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 12
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "--name {name:?}: use 1-12 characters of a-z, 0-9 and '-', starting with a letter"
        )))
    }
}

impl Plan {
    /// Lays out the lab.
    pub fn new(spec: LabSpec) -> Result<Plan, Error> {
        validate_name(&spec.name)?;
        if !(1..=200).contains(&spec.subnets) {
            return Err(Error::Invalid("--subnets must be between 1 and 200".into()));
        }
        if !(1..=200).contains(&spec.hosts) {
            return Err(Error::Invalid("--hosts must be between 1 and 200".into()));
        }
        if spec.workloads > 50 {
            return Err(Error::Invalid("--workloads must be at most 50".into()));
        }
        let name = &spec.name;
        let subnets: Vec<Subnet> = (1..=spec.subnets)
            .map(|n| {
                let index = u8::try_from(n).unwrap_or(u8::MAX);
                Subnet {
                    name: format!("s{n}"),
                    bridge: format!("br-s{n}"),
                    index,
                    gateway: Ipv4Addr::new(10, 0, index, 1),
                }
            })
            .collect();
        let mut per_subnet = vec![0u8; subnets.len()];
        let mut hosts = Vec::with_capacity(spec.hosts);
        for i in 0..spec.hosts {
            let s = i % subnets.len();
            let subnet = &subnets[s];
            let address = Ipv4Addr::new(10, 0, subnet.index, 10 + per_subnet[s]);
            per_subnet[s] += 1;
            let host_name = format!("h{}", i + 1);
            hosts.push(Host {
                netns: format!("{name}.{host_name}"),
                subnet: subnet.name.clone(),
                address,
                gateway: subnet.gateway,
                router_port: host_name.clone(),
                name: host_name,
            });
        }
        let workloads = hosts
            .iter()
            .flat_map(|h| {
                (1..=spec.workloads).map(move |w| Workload {
                    name: format!("{}-w{w}", h.name),
                    host: h.name.clone(),
                    netns: format!("{name}.{}-w{w}", h.name),
                })
            })
            .collect();
        Ok(Plan {
            router_netns: format!("{name}.vpc"),
            internet_netns: format!("{name}.inet"),
            subnets,
            hosts,
            workloads,
            spec,
        })
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Every namespace of the lab, routers first.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.router_netns.clone(), self.internet_netns.clone()];
        all.extend(self.hosts.iter().map(|h| h.netns.clone()));
        all.extend(self.workloads.iter().map(|w| w.netns.clone()));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hosts: usize, subnets: usize) -> LabSpec {
        LabSpec {
            name: "felis".into(),
            hosts,
            subnets,
            workloads: 2,
            pool_mode: PoolMode::VxlanCrossSubnet,
            src_dst_check: false,
        }
    }

    #[test]
    fn hosts_go_round_robin_over_subnets() {
        let plan = Plan::new(spec(3, 2)).unwrap();
        let addresses: Vec<String> = plan.hosts.iter().map(|h| h.address.to_string()).collect();
        assert_eq!(addresses, ["10.0.1.10", "10.0.2.10", "10.0.1.11"]);
        assert_eq!(plan.hosts[1].gateway, Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(plan.workloads.len(), 6);
        assert_eq!(plan.workloads[0].netns, "felis.h1-w1");
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("felis").is_ok());
        assert!(validate_name("a.b").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("Upper").is_err());
        assert!(validate_name("much-too-long-name").is_err());
    }

    #[test]
    fn pool_modes_parse() {
        assert_eq!(
            PoolMode::parse("vxlan").unwrap().modes(),
            ("Never", "Always")
        );
        assert_eq!(PoolMode::parse("none").unwrap().modes(), ("Never", "Never"));
        assert!(PoolMode::parse("gre").is_err());
    }
}
