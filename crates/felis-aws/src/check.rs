//! `felis aws check`: can this instance and each peer node talk BGP and carry pod traffic?
//!
//! [`evaluate`] is pure: it takes [`Facts`] (this instance, its interface, subnets, security
//! groups, peers' interfaces when EC2 shows them, the cluster's pools) and returns a [`Report`].
//! [`gather`] and [`run`] are the I/O shell that fetch the facts.
//!
//! Security groups are evaluated for the traffic between this node's address and the peer's
//! address: ingress on this interface's groups from the peer, egress to the peer, and, when
//! the peer's interface is visible to this account, the peer's groups too. Network ACLs and
//! route tables are not evaluated.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde::Serialize;
use tracing::warn;

use crate::config::AwsConfig;
use crate::ec2::Ec2Client;
use crate::error::Error;
use crate::imds::Imds;
use crate::model::Instance;
use crate::model::NetworkInterface;
use crate::model::SecurityGroup;
use crate::model::Subnet;

/// BGP's TCP port.
pub const BGP_PORT: u16 = 179;
/// Calico's VXLAN UDP port (FelixConfiguration `vxlanPort` default).
pub const VXLAN_PORT: u16 = 4789;

/// `ipipMode` / `vxlanMode` of an IP pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EncapMode {
    /// No encapsulation.
    #[default]
    Never,
    /// Always encapsulate.
    Always,
    /// Encapsulate only towards nodes outside this node's subnet.
    CrossSubnet,
}

impl std::str::FromStr for EncapMode {
    type Err = String;
    /// Parses Calico's spelling (`Never`, `Always`, `CrossSubnet`); empty means `Never`.
    fn from_str(s: &str) -> Result<EncapMode, String> {
        match s {
            "" | "Never" => Ok(EncapMode::Never),
            "Always" => Ok(EncapMode::Always),
            "CrossSubnet" => Ok(EncapMode::CrossSubnet),
            other => Err(format!(
                "encapsulation mode {other:?} is not one of Never, Always, CrossSubnet"
            )),
        }
    }
}

/// An IPv4 pool as far as the check cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Pool name.
    pub name: String,
    /// Pool CIDR.
    pub cidr: Ipv4Net,
    /// `ipipMode`.
    pub ipip_mode: EncapMode,
    /// `vxlanMode`.
    pub vxlan_mode: EncapMode,
    /// `disabled: true` pools carry no new traffic and are skipped.
    pub disabled: bool,
}

/// A cluster node: name and `spec.bgp.ipv4Address` (address with the subnet prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// IPv4 address and prefix, e.g. `10.0.1.10/24`.
    pub address: Ipv4Net,
}

/// What the caller knows about the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cluster {
    /// This node's name, to leave it out of the peers and find its interface.
    pub this_node: Option<String>,
    /// All nodes (this one may be among them).
    pub nodes: Vec<NodeSpec>,
    /// IPv4 pools.
    pub pools: Vec<PoolSpec>,
}

/// A peer node and, when EC2 shows it, the interface holding its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFacts {
    /// The node.
    pub node: NodeSpec,
    /// Its interface, `None` when not visible to this account (or not on EC2).
    pub interface: Option<NetworkInterface>,
}

/// Everything [`evaluate`] needs, fetched by [`gather`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// This instance.
    pub instance: Instance,
    /// The interface carrying this node's address (the primary one unless the node's address
    /// lives elsewhere).
    pub interface: NetworkInterface,
    /// This node, when the caller named it.
    pub this_node: Option<NodeSpec>,
    /// Subnets of this and the peers' interfaces.
    pub subnets: Vec<Subnet>,
    /// Security groups of this and the peers' interfaces.
    pub security_groups: Vec<SecurityGroup>,
    /// The other nodes.
    pub peers: Vec<PeerFacts>,
    /// IPv4 pools.
    pub pools: Vec<PoolSpec>,
    /// What could not be fetched, for the report's limitations.
    pub notes: Vec<String>,
}

/// The result of evaluating security groups for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// A rule admits the traffic.
    Allowed,
    /// No rule admits it.
    Denied,
    /// Only rules naming a security group of a peer that EC2 does not show could admit it.
    Unknown,
}

/// One kind of traffic, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCheck {
    /// From this node to the peer (this egress, peer ingress when visible).
    pub outbound: Verdict,
    /// From the peer to this node (this ingress, peer egress when visible).
    pub inbound: Verdict,
}

impl FlowCheck {
    /// Denied if either way is denied, unknown if either is unknown, else allowed.
    #[must_use]
    pub fn verdict(&self) -> Verdict {
        combine(&[self.outbound, self.inbound])
    }
}

/// How a pool's pod traffic reaches a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encapsulation {
    /// Plain routed packets with pod addresses (needs the check off and the same subnet).
    None,
    /// IP-in-IP (protocol 4) between node addresses.
    Ipip,
    /// VXLAN (UDP 4789) between node addresses.
    Vxlan,
}

/// One pool's path to one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolPath {
    /// Pool name.
    pub pool: String,
    /// What the pool's mode does towards this peer.
    pub encapsulation: Encapsulation,
}

/// The source/destination checks that matter for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SrcDstCheck {
    /// Some pool sends un-encapsulated pod traffic to this peer, so the checks must be off.
    pub must_be_off: bool,
    /// This interface's check (`true` = on).
    pub this_node: bool,
    /// The peer interface's check, `None` when not visible.
    pub peer: Option<bool>,
}

/// A problem or a warning with the sentence saying what to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Whether it stops pod networking or BGP with this peer.
    pub blocking: bool,
    /// What is wrong and what to change.
    pub message: String,
}

/// The check's result for one peer node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: Ipv4Addr,
    /// The peer's instance, when visible.
    pub instance_id: Option<String>,
    /// The peer's interface, when visible.
    pub interface_id: Option<String>,
    /// Whether the peer is in this node's VPC subnet (`None`: cannot tell).
    pub same_subnet: Option<bool>,
    /// Per pool, how pod traffic gets there.
    pub paths: Vec<PoolPath>,
    /// TCP 179.
    pub bgp: FlowCheck,
    /// IP protocol 4, when some pool encapsulates with IPIP towards this peer.
    pub ipip: Option<FlowCheck>,
    /// UDP 4789, when some pool encapsulates with VXLAN towards this peer.
    pub vxlan: Option<FlowCheck>,
    /// Source/destination checks.
    pub source_dest_check: SrcDstCheck,
    /// Problems, blocking first.
    pub findings: Vec<Finding>,
}

impl PeerReport {
    /// Whether anything found for this peer blocks it.
    #[must_use]
    pub fn blocking(&self) -> bool {
        self.findings.iter().any(|f| f.blocking)
    }
}

/// The whole `aws check` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// This instance.
    pub instance_id: String,
    /// This node's interface.
    pub interface_id: String,
    /// This node's address.
    pub address: Option<Ipv4Addr>,
    /// This interface's subnet.
    pub subnet_id: Option<String>,
    /// Its CIDR.
    pub subnet_cidr: Option<Ipv4Net>,
    /// This interface's source/destination check (`true` = on).
    pub source_dest_check: bool,
    /// This interface's security groups.
    pub security_groups: Vec<String>,
    /// One entry per peer node, by name.
    pub peers: Vec<PeerReport>,
    /// Findings not about one peer.
    pub findings: Vec<Finding>,
    /// What the check could not see.
    pub limitations: Vec<String>,
}

impl Report {
    /// Whether something blocks the cluster (the CLI exits non-zero).
    #[must_use]
    pub fn blocking(&self) -> bool {
        self.findings.iter().any(|f| f.blocking) || self.peers.iter().any(PeerReport::blocking)
    }

    /// Plain aligned columns, then the findings and limitations as sentences.
    #[must_use]
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "instance {} interface {} address {} subnet {} ({}) source/dest check {}",
            self.instance_id,
            self.interface_id,
            self.address
                .map_or_else(|| "?".to_owned(), |a| a.to_string()),
            self.subnet_id.as_deref().unwrap_or("?"),
            self.subnet_cidr
                .map_or_else(|| "?".to_owned(), |c| c.to_string()),
            if self.source_dest_check { "on" } else { "off" },
        );
        let _ = writeln!(out);
        let header = [
            "NODE",
            "ADDRESS",
            "SUBNET",
            "ENCAP",
            "BGP 179",
            "IPIP",
            "VXLAN 4789",
            "SRC/DST",
            "STATUS",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
        for p in &self.peers {
            let encaps: BTreeSet<&str> = p
                .paths
                .iter()
                .map(|path| match path.encapsulation {
                    Encapsulation::None => "none",
                    Encapsulation::Ipip => "ipip",
                    Encapsulation::Vxlan => "vxlan",
                })
                .collect();
            rows.push(vec![
                p.node.clone(),
                p.address.to_string(),
                match p.same_subnet {
                    Some(true) => "same".to_owned(),
                    Some(false) => "other".to_owned(),
                    None => "?".to_owned(),
                },
                if encaps.is_empty() {
                    "-".to_owned()
                } else {
                    encaps.into_iter().collect::<Vec<_>>().join(",")
                },
                flow_cell(Some(&p.bgp)),
                flow_cell(p.ipip.as_ref()),
                flow_cell(p.vxlan.as_ref()),
                src_dst_cell(&p.source_dest_check),
                if p.blocking() {
                    "BLOCKED".to_owned()
                } else if p.findings.is_empty() {
                    "ok".to_owned()
                } else {
                    "warning".to_owned()
                },
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                rows.iter()
                    .map(|r| r.get(c).map_or(0, String::len))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        if self.peers.is_empty() {
            let _ = writeln!(out, "(no peer nodes)");
        }
        let mut any = false;
        for f in &self.findings {
            any = true;
            let _ = writeln!(out, "\n{}: {}", severity(f), f.message);
        }
        for p in &self.peers {
            for f in &p.findings {
                if !any {
                    let _ = writeln!(out);
                    any = true;
                }
                let _ = writeln!(out, "{} {}: {}", severity(f), p.node, f.message);
            }
        }
        if !self.limitations.is_empty() {
            let _ = writeln!(out, "\nlimitations:");
            for l in &self.limitations {
                let _ = writeln!(out, "  - {l}");
            }
        }
        out
    }
}

/// Evaluates the facts. Pure.
#[must_use]
pub fn evaluate(facts: &Facts) -> Report {
    let groups: BTreeMap<&str, &SecurityGroup> = facts
        .security_groups
        .iter()
        .map(|g| (g.id.as_str(), g))
        .collect();
    let subnets: BTreeMap<&str, &Subnet> =
        facts.subnets.iter().map(|s| (s.id.as_str(), s)).collect();
    let this = &facts.interface;
    let this_subnet = this
        .subnet_id
        .as_deref()
        .and_then(|id| subnets.get(id))
        .copied();
    let this_ip = facts
        .this_node
        .as_ref()
        .map(|n| n.address.addr())
        .or(this.private_ip)
        .or(facts.instance.private_ip);
    let pools: Vec<&PoolSpec> = facts.pools.iter().filter(|p| !p.disabled).collect();

    let mut limitations =
        vec!["network ACLs and route tables are not evaluated, only security groups".to_owned()];
    limitations.extend(facts.notes.iter().cloned());
    let invisible: Vec<&str> = facts
        .peers
        .iter()
        .filter(|p| p.interface.is_none())
        .map(|p| p.node.name.as_str())
        .collect();
    if !invisible.is_empty() {
        limitations.push(format!(
            "no EC2 interface found for {}: only this instance's security groups were evaluated \
             for them (rules naming a security group cannot be matched to them), and their \
             subnet and source/destination check were inferred or not checked",
            invisible.join(", ")
        ));
    }
    let mut findings = Vec::new();
    if pools.is_empty() {
        findings.push(Finding {
            blocking: false,
            message: "no enabled IPv4 pool was given, so only BGP was checked".to_owned(),
        });
    }
    let Some(this_ip) = this_ip else {
        findings.push(Finding {
            blocking: true,
            message: format!("interface {} has no private IPv4 address", this.id),
        });
        return Report {
            instance_id: facts.instance.id.clone(),
            interface_id: this.id.clone(),
            address: None,
            subnet_id: this.subnet_id.clone(),
            subnet_cidr: this_subnet.map(|s| s.cidr),
            source_dest_check: this.source_dest_check,
            security_groups: this.group_ids.clone(),
            peers: Vec::new(),
            findings,
            limitations,
        };
    };
    let this_side = Side {
        interface: Some(this),
        address: this_ip,
        groups: &groups,
    };

    let mut peers: Vec<PeerReport> = facts
        .peers
        .iter()
        .map(|peer| {
            let peer_ip = peer.node.address.addr();
            let peer_side = Side { interface: peer.interface.as_ref(), address: peer_ip, groups: &groups };
            // The VPC's truth about subnets.
            let same_subnet = match (peer.interface.as_ref().and_then(|i| i.subnet_id.as_deref()), this.subnet_id.as_deref()) {
                (Some(a), Some(b)) => Some(a == b),
                _ => this_subnet.map(|s| s.cidr.contains(&peer_ip)),
            };
            // Calico's CrossSubnet decision uses the Node's address prefix.
            let calico_same_subnet = facts.this_node.as_ref().map(|n| n.address.contains(&peer_ip));
            let decides_same = calico_same_subnet.or(same_subnet).unwrap_or(false);
            let paths: Vec<PoolPath> = pools
                .iter()
                .map(|pool| PoolPath { pool: pool.name.clone(), encapsulation: encapsulation(pool, decides_same) })
                .collect();
            let uses = |e: Encapsulation| paths.iter().any(|p| p.encapsulation == e);
            let mut findings = Vec::new();

            let bgp = flow_check(&this_side, &peer_side, 6, Some(BGP_PORT), "TCP 179 (BGP)", &mut findings);
            let ipip = uses(Encapsulation::Ipip)
                .then(|| flow_check(&this_side, &peer_side, 4, None, "IP protocol 4 (IPIP)", &mut findings));
            let vxlan = uses(Encapsulation::Vxlan).then(|| {
                flow_check(&this_side, &peer_side, 17, Some(VXLAN_PORT), "UDP 4789 (VXLAN)", &mut findings)
            });

            let native: Vec<&str> = paths
                .iter()
                .filter(|p| p.encapsulation == Encapsulation::None)
                .map(|p| p.pool.as_str())
                .collect();
            let source_dest_check = SrcDstCheck {
                must_be_off: !native.is_empty(),
                this_node: this.source_dest_check,
                peer: peer.interface.as_ref().map(|i| i.source_dest_check),
            };
            if !native.is_empty() {
                if same_subnet == Some(false) {
                    findings.push(Finding {
                        blocking: true,
                        message: format!(
                            "pool {} sends pod traffic to {} unencapsulated but it is in another \
                             VPC subnet, where the VPC router drops it: set ipipMode: CrossSubnet \
                             (or vxlanMode: CrossSubnet) on the pool{}",
                            native.join(", "),
                            peer.node.name,
                            if calico_same_subnet == Some(true) {
                                format!(
                                    ", and give node {} the VPC subnet's prefix ({}) as its \
                                     address prefix, which now makes Calico believe they share a subnet",
                                    facts.this_node.as_ref().map_or("?", |n| n.name.as_str()),
                                    this_subnet.map_or_else(|| "?".to_owned(), |s| s.cidr.to_string())
                                )
                            } else {
                                String::new()
                            }
                        ),
                    });
                }
                if this.source_dest_check {
                    findings.push(Finding {
                        blocking: true,
                        message: format!(
                            "the source/destination check is on for this node's interface {}, so \
                             EC2 drops unencapsulated pod traffic of pool {}: set FelixConfiguration \
                             awsSrcDstCheck: Disable (or `aws ec2 modify-network-interface-attribute \
                             --network-interface-id {} --no-source-dest-check`)",
                            this.id,
                            native.join(", "),
                            this.id
                        ),
                    });
                }
                if let Some(peer_interface) = peer.interface.as_ref().filter(|i| i.source_dest_check) {
                    findings.push(Finding {
                        blocking: true,
                        message: format!(
                            "the source/destination check is on for the peer's interface {}: disable \
                             it on that node (FelixConfiguration awsSrcDstCheck: Disable)",
                            peer_interface.id
                        ),
                    });
                }
            }
            findings.sort_by_key(|f| !f.blocking);
            PeerReport {
                node: peer.node.name.clone(),
                address: peer_ip,
                instance_id: peer.interface.as_ref().and_then(|i| i.instance_id.clone()),
                interface_id: peer.interface.as_ref().map(|i| i.id.clone()),
                same_subnet,
                paths,
                bgp,
                ipip,
                vxlan,
                source_dest_check,
                findings,
            }
        })
        .collect();
    peers.sort_by(|a, b| a.node.cmp(&b.node));
    Report {
        instance_id: facts.instance.id.clone(),
        interface_id: this.id.clone(),
        address: Some(this_ip),
        subnet_id: this.subnet_id.clone(),
        subnet_cidr: this_subnet.map(|s| s.cidr),
        source_dest_check: this.source_dest_check,
        security_groups: this.group_ids.clone(),
        peers,
        findings,
        limitations,
    }
}

/// Fetches the facts for `cluster` with `config`: IMDS → instance id → DescribeInstances, then
/// DescribeNetworkInterfaces (peers by address), DescribeSubnets, DescribeSecurityGroups.
///
/// # Errors
/// Any metadata or EC2 failure about this instance, naming the call. Failing to look up the
/// peers' interfaces only adds a limitation.
pub fn gather(cluster: &Cluster, config: &AwsConfig) -> Result<Facts, Error> {
    let imds = Imds::new(config);
    let instance_id = imds.instance_id()?;
    let ec2 = Ec2Client::from_config(config, Some(&imds))?;
    let instance = ec2.describe_instance(&instance_id)?;
    gather_for(cluster, &ec2, instance)
}

/// [`gather`] for an already described instance.
///
/// # Errors
/// As [`gather`].
pub fn gather_for(cluster: &Cluster, ec2: &Ec2Client, instance: Instance) -> Result<Facts, Error> {
    let this_node = cluster
        .this_node
        .as_ref()
        .and_then(|name| cluster.nodes.iter().find(|n| &n.name == name))
        .cloned();
    let own_ips: BTreeSet<Ipv4Addr> = instance
        .network_interfaces
        .iter()
        .flat_map(|i| i.private_ips.iter().copied())
        .collect();
    let interface = this_node
        .as_ref()
        .and_then(|n| {
            instance
                .network_interfaces
                .iter()
                .find(|i| i.private_ips.contains(&n.address.addr()))
        })
        .or_else(|| instance.primary_interface())
        .cloned()
        .ok_or_else(|| Error::NoPrimaryInterface(instance.id.clone()))?;
    let peer_nodes: Vec<&NodeSpec> = cluster
        .nodes
        .iter()
        .filter(|n| {
            Some(&n.name) != cluster.this_node.as_ref() && !own_ips.contains(&n.address.addr())
        })
        .collect();
    let mut notes = Vec::new();
    let addresses: Vec<Ipv4Addr> = peer_nodes.iter().map(|n| n.address.addr()).collect();
    let peer_interfaces = match ec2.network_interfaces_by_address(&addresses) {
        Ok(found) => found,
        Err(e) => {
            warn!(error = %e, "cannot look up the peers' interfaces");
            notes.push(format!("the peers' interfaces could not be looked up: {e}"));
            Vec::new()
        }
    };
    let peers: Vec<PeerFacts> = peer_nodes
        .iter()
        .map(|n| PeerFacts {
            node: (*n).clone(),
            interface: peer_interfaces
                .iter()
                .find(|i| i.private_ips.contains(&n.address.addr()))
                .cloned(),
        })
        .collect();
    let visible =
        std::iter::once(&interface).chain(peers.iter().filter_map(|p| p.interface.as_ref()));
    let mut subnet_ids = BTreeSet::new();
    let mut group_ids = BTreeSet::new();
    for i in visible {
        subnet_ids.extend(i.subnet_id.iter().cloned());
        group_ids.extend(i.group_ids.iter().cloned());
    }
    let subnets = ec2.describe_subnets(&subnet_ids.into_iter().collect::<Vec<_>>())?;
    let security_groups =
        ec2.describe_security_groups(&group_ids.into_iter().collect::<Vec<_>>())?;
    Ok(Facts {
        instance,
        interface,
        this_node,
        subnets,
        security_groups,
        peers,
        pools: cluster.pools.clone(),
        notes,
    })
}

/// Runs the check with the process environment ([`AwsConfig::from_env`]).
///
/// # Errors
/// As [`gather`].
pub fn run(cluster: &Cluster) -> Result<Report, Error> {
    run_with(cluster, &AwsConfig::from_env())
}

/// Runs the check with explicit settings.
///
/// # Errors
/// As [`gather`].
pub fn run_with(cluster: &Cluster, config: &AwsConfig) -> Result<Report, Error> {
    Ok(evaluate(&gather(cluster, config)?))
}

// ---- helpers ---------------------------------------------------------------------------------

/// One end of the traffic.
struct Side<'a> {
    /// `None`: EC2 does not show this end.
    interface: Option<&'a NetworkInterface>,
    address: Ipv4Addr,
    groups: &'a BTreeMap<&'a str, &'a SecurityGroup>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Side<'_> {
    /// Whether this end's groups admit `protocol`/`port` in `direction` with `remote`.
    /// `None` when this end is not visible.
    fn admits(
        &self,
        direction: Direction,
        remote: &Side<'_>,
        protocol: u8,
        port: Option<u16>,
    ) -> Option<Verdict> {
        let interface = self.interface?;
        let mut verdict = Verdict::Denied;
        for id in &interface.group_ids {
            let Some(group) = self.groups.get(id.as_str()) else {
                verdict = Verdict::Unknown;
                continue;
            };
            let rules = match direction {
                Direction::Ingress => &group.ingress,
                Direction::Egress => &group.egress,
            };
            for rule in rules.iter().filter(|r| r.covers(protocol, port)) {
                if rule.cidrs.iter().any(|c| c.contains(&remote.address)) {
                    return Some(Verdict::Allowed);
                }
                match remote.interface {
                    Some(r) if rule.group_ids.iter().any(|g| r.group_ids.contains(g)) => {
                        return Some(Verdict::Allowed);
                    }
                    None if !rule.group_ids.is_empty() || !rule.prefix_list_ids.is_empty() => {
                        verdict = Verdict::Unknown;
                    }
                    _ if !rule.prefix_list_ids.is_empty() => verdict = Verdict::Unknown,
                    _ => {}
                }
            }
        }
        Some(verdict)
    }

    fn group_list(&self) -> String {
        self.interface
            .map_or_else(|| "?".to_owned(), |i| i.group_ids.join(", "))
    }
}

fn flow_check(
    this: &Side<'_>,
    peer: &Side<'_>,
    protocol: u8,
    port: Option<u16>,
    what: &str,
    findings: &mut Vec<Finding>,
) -> FlowCheck {
    let this_egress = this.admits(Direction::Egress, peer, protocol, port);
    let this_ingress = this.admits(Direction::Ingress, peer, protocol, port);
    let peer_ingress = peer.admits(Direction::Ingress, this, protocol, port);
    let peer_egress = peer.admits(Direction::Egress, this, protocol, port);
    let mut advise = |verdict: Option<Verdict>, text: String| match verdict {
        Some(Verdict::Denied) => findings.push(Finding {
            blocking: true,
            message: text,
        }),
        Some(Verdict::Unknown) => findings.push(Finding {
            blocking: false,
            message: format!(
                "cannot tell whether {what} is allowed, as only rules naming security groups or \
                 prefix lists could admit it; if they do not cover the peer, {text}"
            ),
        }),
        _ => {}
    };
    advise(
        this_ingress,
        format!(
            "allow inbound {what} from {}/32 (or the peer's security group) in this node's \
             security group {}",
            peer.address,
            this.group_list()
        ),
    );
    advise(
        this_egress,
        format!(
            "allow outbound {what} to {}/32 in this node's security group {}",
            peer.address,
            this.group_list()
        ),
    );
    advise(
        peer_ingress,
        format!(
            "allow inbound {what} from {}/32 (or this node's security group) in the peer's \
             security group {}",
            this.address,
            peer.group_list()
        ),
    );
    advise(
        peer_egress,
        format!(
            "allow outbound {what} to {}/32 in the peer's security group {}",
            this.address,
            peer.group_list()
        ),
    );
    let known = |v: Option<Verdict>| v.unwrap_or(Verdict::Allowed);
    FlowCheck {
        outbound: combine(&[known(this_egress), known(peer_ingress)]),
        inbound: combine(&[known(this_ingress), known(peer_egress)]),
    }
}

fn combine(verdicts: &[Verdict]) -> Verdict {
    if verdicts.contains(&Verdict::Denied) {
        Verdict::Denied
    } else if verdicts.contains(&Verdict::Unknown) {
        Verdict::Unknown
    } else {
        Verdict::Allowed
    }
}

fn encapsulation(pool: &PoolSpec, same_subnet: bool) -> Encapsulation {
    let on = |mode: EncapMode| match mode {
        EncapMode::Never => false,
        EncapMode::Always => true,
        EncapMode::CrossSubnet => !same_subnet,
    };
    if on(pool.ipip_mode) {
        Encapsulation::Ipip
    } else if on(pool.vxlan_mode) {
        Encapsulation::Vxlan
    } else {
        Encapsulation::None
    }
}

fn flow_cell(flow: Option<&FlowCheck>) -> String {
    let Some(flow) = flow else {
        return "-".to_owned();
    };
    match (flow.outbound, flow.inbound) {
        (Verdict::Allowed, Verdict::Allowed) => "ok".to_owned(),
        (Verdict::Denied, Verdict::Denied) => "BLOCKED".to_owned(),
        (Verdict::Denied, _) => "BLOCKED out".to_owned(),
        (_, Verdict::Denied) => "BLOCKED in".to_owned(),
        _ => "?".to_owned(),
    }
}

fn src_dst_cell(check: &SrcDstCheck) -> String {
    let word = |on: bool| if on { "ON" } else { "off" };
    let text = match check.peer {
        Some(peer) if peer == check.this_node => word(peer).to_owned(),
        Some(peer) => format!("{}/{}", word(check.this_node), word(peer)),
        None => format!("{}/?", word(check.this_node)),
    };
    if check.must_be_off {
        text
    } else {
        format!("n/a ({})", text.to_lowercase())
    }
}

fn severity(f: &Finding) -> &'static str {
    if f.blocking { "BLOCKING" } else { "warning" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Permission;
    use crate::model::Protocol;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn rule(
        protocol: Protocol,
        ports: Option<(i32, i32)>,
        cidrs: &[&str],
        groups: &[&str],
    ) -> Permission {
        Permission {
            protocol,
            from_port: ports.map(|p| p.0),
            to_port: ports.map(|p| p.1),
            cidrs: cidrs.iter().map(|c| net(c)).collect(),
            group_ids: groups.iter().map(|g| (*g).to_owned()).collect(),
            prefix_list_ids: Vec::new(),
        }
    }

    fn all_out() -> Vec<Permission> {
        vec![rule(Protocol::All, None, &["0.0.0.0/0"], &[])]
    }

    fn interface(
        id: &str,
        ip: &str,
        subnet: &str,
        groups: &[&str],
        check: bool,
    ) -> NetworkInterface {
        let ip: Ipv4Addr = ip.parse().unwrap();
        NetworkInterface {
            id: id.to_owned(),
            subnet_id: Some(subnet.to_owned()),
            vpc_id: Some("vpc-1".to_owned()),
            device_index: Some(0),
            instance_id: Some(format!("i-{id}")),
            private_ip: Some(ip),
            private_ips: vec![ip],
            source_dest_check: check,
            group_ids: groups.iter().map(|g| (*g).to_owned()).collect(),
            mac_address: None,
        }
    }

    fn pool(ipip: EncapMode, vxlan: EncapMode) -> PoolSpec {
        PoolSpec {
            name: "pool".to_owned(),
            cidr: net("192.168.0.0/16"),
            ipip_mode: ipip,
            vxlan_mode: vxlan,
            disabled: false,
        }
    }

    /// This node 10.0.1.10/24 in subnet-a with sg-a admitting 179 and protocol 4 from the VPC;
    /// visible peer `same` (10.0.1.11, subnet-a) and `far` (10.0.2.10, subnet-b), all checks off.
    fn facts(pools: Vec<PoolSpec>) -> Facts {
        let this = interface("eni-this", "10.0.1.10", "subnet-a", &["sg-a"], false);
        Facts {
            instance: Instance {
                id: "i-this".to_owned(),
                subnet_id: Some("subnet-a".to_owned()),
                vpc_id: None,
                private_ip: this.private_ip,
                source_dest_check: Some(false),
                network_interfaces: vec![this.clone()],
            },
            interface: this,
            this_node: Some(NodeSpec {
                name: "a1".to_owned(),
                address: net("10.0.1.10/24"),
            }),
            subnets: vec![
                Subnet {
                    id: "subnet-a".to_owned(),
                    vpc_id: None,
                    cidr: net("10.0.1.0/24"),
                    availability_zone: None,
                },
                Subnet {
                    id: "subnet-b".to_owned(),
                    vpc_id: None,
                    cidr: net("10.0.2.0/24"),
                    availability_zone: None,
                },
            ],
            security_groups: vec![SecurityGroup {
                id: "sg-a".to_owned(),
                name: "nodes".to_owned(),
                ingress: vec![
                    rule(Protocol::Number(6), Some((179, 179)), &[], &["sg-a"]),
                    rule(Protocol::Number(4), Some((-1, -1)), &["10.0.0.0/16"], &[]),
                ],
                egress: all_out(),
            }],
            peers: vec![
                PeerFacts {
                    node: NodeSpec {
                        name: "a2".to_owned(),
                        address: net("10.0.1.11/24"),
                    },
                    interface: Some(interface(
                        "eni-same",
                        "10.0.1.11",
                        "subnet-a",
                        &["sg-a"],
                        false,
                    )),
                },
                PeerFacts {
                    node: NodeSpec {
                        name: "b1".to_owned(),
                        address: net("10.0.2.10/24"),
                    },
                    interface: Some(interface(
                        "eni-far",
                        "10.0.2.10",
                        "subnet-b",
                        &["sg-a"],
                        false,
                    )),
                },
            ],
            pools,
            notes: Vec::new(),
        }
    }

    fn messages(report: &Report, node: &str) -> Vec<String> {
        report
            .peers
            .iter()
            .find(|p| p.node == node)
            .map(|p| p.findings.iter().map(|f| f.message.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn correct_ipip_cross_subnet_setup_is_clean() {
        let report = evaluate(&facts(vec![pool(EncapMode::CrossSubnet, EncapMode::Never)]));
        assert!(!report.blocking(), "{}", report.render_table());
        assert_eq!(report.peers[0].paths[0].encapsulation, Encapsulation::None);
        assert_eq!(report.peers[1].paths[0].encapsulation, Encapsulation::Ipip);
    }

    #[test]
    fn vxlan_pool_without_udp_4789_is_blocked_both_ways() {
        let report = evaluate(&facts(vec![pool(EncapMode::Never, EncapMode::Always)]));
        assert!(report.blocking());
        let peer = &report.peers[0];
        assert_eq!(peer.ipip, None);
        let vxlan = peer.vxlan.unwrap();
        assert_eq!(
            (vxlan.outbound, vxlan.inbound),
            (Verdict::Denied, Verdict::Denied)
        );
        assert!(messages(&report, "a2").iter().any(|m| m.starts_with(
            "allow inbound UDP 4789 (VXLAN) from 10.0.1.11/32 (or the peer's security group) in \
             this node's security group sg-a"
        )));
    }

    #[test]
    fn restricted_egress_blocks_outbound_bgp() {
        let mut f = facts(vec![]);
        f.security_groups[0].egress = vec![rule(
            Protocol::Number(6),
            Some((443, 443)),
            &["0.0.0.0/0"],
            &[],
        )];
        let report = evaluate(&f);
        let peer = &report.peers[0];
        assert_eq!(peer.bgp.outbound, Verdict::Denied);
        assert!(
            messages(&report, "a2").contains(
                &"allow outbound TCP 179 (BGP) to 10.0.1.11/32 in this node's security group sg-a"
                    .to_owned()
            )
        );
        assert!(report.render_table().contains("BLOCKED"));
    }

    #[test]
    fn peer_group_without_bgp_blocks_outbound_and_names_the_peer_group() {
        let mut f = facts(vec![]);
        f.security_groups.push(SecurityGroup {
            id: "sg-b".to_owned(),
            name: "other".to_owned(),
            ingress: Vec::new(),
            egress: all_out(),
        });
        if let Some(i) = f.peers[1].interface.as_mut() {
            i.group_ids = vec!["sg-b".to_owned()];
        }
        let report = evaluate(&f);
        let far = &report.peers[1];
        // Our ingress names sg-a, which the peer is no longer in: denied both ways.
        assert_eq!(far.bgp.outbound, Verdict::Denied);
        assert_eq!(far.bgp.inbound, Verdict::Denied);
        assert!(
            messages(&report, "b1")
                .iter()
                .any(|m| m.contains("in the peer's security group sg-b"))
        );
        assert!(!report.peers[0].blocking());
    }

    #[test]
    fn unencapsulated_pool_across_subnets_is_blocking() {
        let report = evaluate(&facts(vec![pool(EncapMode::Never, EncapMode::Never)]));
        assert!(!report.peers[0].blocking());
        assert!(
            messages(&report, "b1")
                .iter()
                .any(|m| m.contains("another VPC subnet") && m.contains("ipipMode: CrossSubnet"))
        );
    }

    #[test]
    fn node_prefix_wider_than_the_vpc_subnet_is_reported() {
        let mut f = facts(vec![pool(EncapMode::CrossSubnet, EncapMode::Never)]);
        f.this_node = Some(NodeSpec {
            name: "a1".to_owned(),
            address: net("10.0.1.10/16"),
        });
        let report = evaluate(&f);
        let far = &report.peers[1];
        assert_eq!(far.same_subnet, Some(false));
        assert_eq!(
            far.paths[0].encapsulation,
            Encapsulation::None,
            "Calico decides from the prefix"
        );
        assert!(
            messages(&report, "b1")
                .iter()
                .any(|m| m.contains("(10.0.1.0/24) as its address prefix"))
        );
    }

    #[test]
    fn checks_left_on_block_only_unencapsulated_peers() {
        let mut f = facts(vec![pool(EncapMode::CrossSubnet, EncapMode::Never)]);
        f.interface.source_dest_check = true;
        let report = evaluate(&f);
        assert!(report.peers[0].blocking());
        assert!(!report.peers[1].blocking());
        assert!(report.source_dest_check);
    }

    #[test]
    fn security_group_not_described_is_unknown_not_blocking() {
        let mut f = facts(vec![]);
        f.interface.group_ids.push("sg-missing".to_owned());
        f.security_groups[0].ingress.clear();
        // Peers outside EC2: only this side is evaluated.
        for peer in &mut f.peers {
            peer.interface = None;
        }
        let report = evaluate(&f);
        assert_eq!(report.peers[0].bgp.inbound, Verdict::Unknown);
        assert!(!report.blocking());
        assert!(
            messages(&report, "a2")
                .iter()
                .any(|m| m.starts_with("cannot tell whether TCP 179"))
        );
    }

    #[test]
    fn disabled_pools_are_ignored() {
        let mut p = pool(EncapMode::Never, EncapMode::Never);
        p.disabled = true;
        let report = evaluate(&facts(vec![p]));
        assert!(report.peers.iter().all(|p| p.paths.is_empty()));
        assert!(!report.blocking());
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.message.contains("no enabled IPv4 pool"))
        );
    }

    #[test]
    fn table_columns_are_aligned() {
        let report = evaluate(&facts(vec![pool(EncapMode::CrossSubnet, EncapMode::Never)]));
        let table = report.render_table();
        let lines: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("NODE") || l.starts_with("a2") || l.starts_with("b1"))
            .collect();
        assert_eq!(lines.len(), 3, "{table}");
        let column = |l: &str| l.find("BGP 179").or_else(|| l.find("ok"));
        assert_eq!(lines[0].find("BGP 179"), lines[1].find("ok"), "{table}");
        assert!(column(lines[2]).is_some());
        assert_eq!(
            lines[0],
            "NODE  ADDRESS    SUBNET  ENCAP  BGP 179  IPIP  VXLAN 4789  SRC/DST    STATUS"
        );
        assert_eq!(
            lines[2],
            "b1    10.0.2.10  other   ipip   ok       ok    -           n/a (off)  ok"
        );
    }

    #[test]
    fn encapsulation_modes_parse_from_calico_spelling() {
        assert_eq!(
            "CrossSubnet".parse::<EncapMode>().unwrap(),
            EncapMode::CrossSubnet
        );
        assert_eq!("".parse::<EncapMode>().unwrap(), EncapMode::Never);
        assert!(
            "crosssubnet"
                .parse::<EncapMode>()
                .unwrap_err()
                .contains("CrossSubnet")
        );
    }

    #[test]
    fn report_round_trips_through_json() {
        let report = evaluate(&facts(vec![pool(EncapMode::Always, EncapMode::Never)]));
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert!(json.contains("\"encapsulation\":\"ipip\""), "{json}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn verdict_rank(v: Verdict) -> u8 {
            match v {
                Verdict::Denied => 0,
                Verdict::Unknown => 1,
                Verdict::Allowed => 2,
            }
        }

        fn flows(report: &Report) -> Vec<Verdict> {
            report
                .peers
                .iter()
                .flat_map(|p| {
                    [Some(p.bgp), p.ipip, p.vxlan]
                        .into_iter()
                        .flatten()
                        .flat_map(|f| [f.outbound, f.inbound])
                })
                .collect()
        }

        fn arb_rule() -> impl Strategy<Value = Permission> {
            let protocol = prop_oneof![
                Just(Protocol::All),
                Just(Protocol::Number(6)),
                Just(Protocol::Number(17)),
                Just(Protocol::Number(4)),
            ];
            let ports = prop_oneof![
                Just(None),
                Just(Some((-1, -1))),
                (0_i32..5000, 0_i32..5000).prop_map(|(a, b)| Some((a.min(b), a.max(b)))),
            ];
            let cidr = prop_oneof![
                Just("0.0.0.0/0"),
                Just("10.0.0.0/16"),
                Just("10.0.1.11/32"),
                Just("10.0.2.0/24"),
                Just("172.16.0.0/12"),
            ];
            let group = prop_oneof![Just("sg-a"), Just("sg-other")];
            (
                protocol,
                ports,
                proptest::collection::vec(cidr, 0..2),
                proptest::collection::vec(group, 0..2),
            )
                .prop_map(|(protocol, ports, cidrs, groups)| rule(protocol, ports, &cidrs, &groups))
        }

        proptest! {
            #[test]
            fn adding_a_rule_never_takes_access_away(
                ingress in proptest::collection::vec(arb_rule(), 0..4),
                egress in proptest::collection::vec(arb_rule(), 0..4),
                extra in arb_rule(),
                extra_is_egress in any::<bool>(),
                hide_peers in any::<bool>(),
            ) {
                let pools = vec![pool(EncapMode::CrossSubnet, EncapMode::Never), {
                    let mut p = pool(EncapMode::Never, EncapMode::Always);
                    p.name = "vx".to_owned();
                    p
                }];
                let mut f = facts(pools);
                if hide_peers {
                    for peer in &mut f.peers {
                        peer.interface = None;
                    }
                }
                f.security_groups[0].ingress = ingress;
                f.security_groups[0].egress = egress;
                let before = evaluate(&f);
                if extra_is_egress {
                    f.security_groups[0].egress.push(extra);
                } else {
                    f.security_groups[0].ingress.push(extra);
                }
                let after = evaluate(&f);
                for (b, a) in flows(&before).into_iter().zip(flows(&after)) {
                    prop_assert!(verdict_rank(a) >= verdict_rank(b), "{b:?} became {a:?}");
                }
                prop_assert_eq!(
                    after.blocking(),
                    after.peers.iter().any(|p| p.findings.iter().any(|f| f.blocking))
                );
            }

            #[test]
            fn allow_all_both_ways_allows_every_flow(hide_peers in any::<bool>()) {
                let mut f = facts(vec![pool(EncapMode::Always, EncapMode::Never)]);
                if hide_peers {
                    for peer in &mut f.peers {
                        peer.interface = None;
                    }
                }
                f.security_groups[0].ingress = all_out();
                f.security_groups[0].egress = all_out();
                let report = evaluate(&f);
                prop_assert!(flows(&report).iter().all(|v| *v == Verdict::Allowed));
                prop_assert!(!report.blocking());
            }
        }
    }
}
