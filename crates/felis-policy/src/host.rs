//! Host endpoints and traffic to and from the host itself (the reference §3, items 1, 6–8).
//!
//! ```text
//!   workload ─► its own host      ICMPv6 neighbour discovery: allowed; else workload egress
//!                                 ─► defaultEndpointToHostAction (Drop|Accept|Return)
//!   host ─► a local workload      always allowed (no host or workload policy)
//!   to/from a host endpoint       failsafe ports ─► untracked ─► pre-DNAT (ingress) ─► normal
//!                                 (tiers, then profiles; nothing allows ⇒ deny)
//!   forwarded across a HEP        untracked ─► pre-DNAT (ingress) ─► applyOnForward policies
//!                                 (nothing decides ⇒ allow)
//! ```
//!
//! Untracked (`doNotTrack`) and pre-DNAT stages have no end-of-tier drop: an Allow or Deny
//! decides, anything else continues with the next stage. An untracked Allow bypasses conntrack,
//! so the return traffic needs its own Allow. `*` host endpoints take no untracked policy.
//!
//! Which host endpoint a packet crosses: for traffic to or from a host address, the host
//! endpoint whose `expectedIPs` hold it, else the node's `*` endpoint, else the node's only
//! endpoint with an interface name. Forwarded traffic crosses the node's `*` endpoint, else its
//! only named one. Workload↔workload traffic crossing nodes is judged at both host endpoints.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

use crate::engine::Context;
use crate::engine::PolicySet;
use crate::engine::endpoint_key;
use crate::model::Direction;
use crate::model::Endpoint;
use crate::model::Packet;
use crate::model::Policy;
use crate::model::Protocol;
use crate::trace::Decision;
use crate::trace::DirectionTrace;
use crate::trace::Trace;
use crate::trace::Verdict;

/// `defaultEndpointToHostAction`: what happens to workload→host traffic its egress policy
/// allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EndpointToHostAction {
    /// Drop it (Calico's default).
    #[default]
    Drop,
    /// Leave it to the host's other firewall rules (Felis does not police it further: allow).
    Return,
    /// Accept it.
    Accept,
}

impl fmt::Display for EndpointToHostAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointToHostAction::Drop => "Drop",
            EndpointToHostAction::Return => "Return",
            EndpointToHostAction::Accept => "Accept",
        })
    }
}

/// One failsafe entry: traffic of `protocol` to `port` (and, with `net`, from or to that
/// network) is always allowed at host endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailsafePort {
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
    /// Inbound: the source must be in it; outbound: the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<IpNet>,
}

impl FailsafePort {
    /// A failsafe entry for any peer.
    pub fn new(protocol: Protocol, port: u16) -> FailsafePort {
        FailsafePort {
            protocol,
            port,
            net: None,
        }
    }

    /// Whether the entry opens `packet`, whose peer (source inbound, destination outbound) is
    /// `peer`.
    pub fn matches(&self, packet: &Packet, peer: IpAddr) -> bool {
        packet.protocol == self.protocol
            && packet.dst_port == Some(self.port)
            && self.net.is_none_or(|net| net.contains(&peer))
    }
}

/// The FelixConfiguration values host-endpoint and workload→host policy depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPolicyConfig {
    /// `defaultEndpointToHostAction` (default Drop).
    #[serde(default)]
    pub default_endpoint_to_host_action: EndpointToHostAction,
    /// `failsafeInboundHostPorts` (default: [`HostPolicyConfig::default_inbound`]).
    #[serde(default = "HostPolicyConfig::default_inbound")]
    pub failsafe_inbound: Vec<FailsafePort>,
    /// `failsafeOutboundHostPorts` (default: [`HostPolicyConfig::default_outbound`]).
    #[serde(default = "HostPolicyConfig::default_outbound")]
    pub failsafe_outbound: Vec<FailsafePort>,
}

impl Default for HostPolicyConfig {
    fn default() -> HostPolicyConfig {
        HostPolicyConfig {
            default_endpoint_to_host_action: EndpointToHostAction::Drop,
            failsafe_inbound: HostPolicyConfig::default_inbound(),
            failsafe_outbound: HostPolicyConfig::default_outbound(),
        }
    }
}

impl HostPolicyConfig {
    /// Felix's default inbound failsafes: tcp:22, udp:68, tcp:179, tcp:2379, tcp:2380,
    /// tcp:5473, tcp:6443, tcp:6666, tcp:6667.
    pub fn default_inbound() -> Vec<FailsafePort> {
        let mut ports = vec![
            FailsafePort::new(Protocol::TCP, 22),
            FailsafePort::new(Protocol::UDP, 68),
        ];
        ports.extend(COMMON_FAILSAFE_TCP.map(|p| FailsafePort::new(Protocol::TCP, p)));
        ports
    }

    /// Felix's default outbound failsafes: udp:53, udp:67, tcp:179, tcp:2379, tcp:2380,
    /// tcp:5473, tcp:6443, tcp:6666, tcp:6667.
    pub fn default_outbound() -> Vec<FailsafePort> {
        let mut ports = vec![
            FailsafePort::new(Protocol::UDP, 53),
            FailsafePort::new(Protocol::UDP, 67),
        ];
        ports.extend(COMMON_FAILSAFE_TCP.map(|p| FailsafePort::new(Protocol::TCP, p)));
        ports
    }

    /// Whether every value is Calico's default.
    pub fn is_default(&self) -> bool {
        *self == HostPolicyConfig::default()
    }

    /// The failsafe entry opening `packet` in `direction` at a host endpoint, if any.
    pub fn failsafe(&self, packet: &Packet, direction: Direction) -> Option<&FailsafePort> {
        let (ports, peer) = match direction {
            Direction::Ingress => (&self.failsafe_inbound, packet.src_ip),
            Direction::Egress => (&self.failsafe_outbound, packet.dst_ip),
        };
        ports.iter().find(|p| p.matches(packet, peer))
    }
}

/// ICMPv6 types a workload may always send its host: MLD query/report/done (130–132), router
/// solicitation (133), neighbour solicitation and advertisement (135, 136), as Felix allows.
pub const NEIGHBOR_DISCOVERY_TYPES: [u8; 6] = [130, 131, 132, 133, 135, 136];

/// TCP failsafes common to both directions: BGP, etcd, Typha, the API server, kube-proxy.
const COMMON_FAILSAFE_TCP: [u16; 7] = [179, 2379, 2380, 5473, 6443, 6666, 6667];

/// The stages of policy, in the order they run at a host endpoint.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// `doNotTrack` policies (raw table; host endpoints only).
    Untracked,
    /// `preDNAT` policies (host endpoint ingress, before DNAT).
    PreDnat,
    /// Normal policies (and profiles): workload endpoints, and traffic to or from the host.
    #[default]
    Normal,
    /// `applyOnForward` normal policies, for traffic forwarded across a host endpoint.
    Forward,
}

impl Stage {
    /// Whether this is the normal stage.
    pub fn is_normal(&self) -> bool {
        *self == Stage::Normal
    }

    /// Whether `policy` belongs to this stage in `direction`.
    pub fn includes(self, policy: &Policy, direction: Direction) -> bool {
        let normal = !policy.pre_dnat && !policy.do_not_track;
        match self {
            Stage::Untracked => policy.do_not_track,
            Stage::PreDnat => policy.pre_dnat && direction == Direction::Ingress,
            Stage::Normal => normal,
            Stage::Forward => normal && policy.apply_on_forward,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Untracked => "untracked",
            Stage::PreDnat => "pre-dnat",
            Stage::Normal => "normal",
            Stage::Forward => "forward",
        })
    }
}

/// One end of a packet, as the host-aware verdict sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PathEnd<'a> {
    /// A workload endpoint.
    Workload(&'a Endpoint),
    /// A host (a node address or a host endpoint's `expectedIPs`), with the host endpoint the
    /// traffic crosses, if the node has one.
    Host {
        /// The node.
        node: &'a str,
        /// Its host endpoint for this traffic.
        endpoint: Option<&'a Endpoint>,
    },
    /// Outside the cluster (or an endpoint of no node).
    Outside,
}

impl<'a> PathEnd<'a> {
    /// The endpoint policy is evaluated for at this end (the workload, or the host endpoint).
    pub fn endpoint(&self) -> Option<&'a Endpoint> {
        match *self {
            PathEnd::Workload(e) => Some(e),
            PathEnd::Host { endpoint, .. } => endpoint,
            PathEnd::Outside => None,
        }
    }

    /// The node this end is on, if any.
    pub fn node(&self) -> Option<&'a str> {
        match *self {
            PathEnd::Workload(e) => e.node.as_deref(),
            PathEnd::Host { node, .. } => Some(node),
            PathEnd::Outside => None,
        }
    }
}

impl PolicySet {
    /// The FelixConfiguration values of `node`: `node.<name>`'s, else `default`'s.
    pub fn host_config(&self, node: &str) -> &HostPolicyConfig {
        self.host_by_node.get(node).unwrap_or(&self.host)
    }

    /// Host endpoints of `node`.
    pub fn host_endpoints_of<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Endpoint> {
        let node = node.to_string();
        self.endpoints
            .iter()
            .filter(move |e| e.is_host_endpoint() && e.node.as_deref() == Some(node.as_str()))
    }

    /// The host endpoint of `node` that traffic to or from the host address `ip` crosses: the
    /// one whose `expectedIPs` hold `ip`, else the node's `*` one, else its only named one.
    pub fn host_endpoint_for(&self, node: &str, ip: Option<IpAddr>) -> Option<&Endpoint> {
        let owns = |e: &&Endpoint| ip.is_some_and(|ip| e.ips.iter().any(|n| n.contains(&ip)));
        self.host_endpoints_of(node)
            .find(owns)
            .or_else(|| self.forward_endpoint(node))
    }

    /// The host endpoint of `node` forwarded traffic crosses: the `*` one, else the only one
    /// with an interface name.
    pub fn forward_endpoint(&self, node: &str) -> Option<&Endpoint> {
        let interface = |e: &Endpoint| {
            e.host_endpoint
                .as_ref()
                .map(|h| h.interface_name.clone())
                .unwrap_or_default()
        };
        if let Some(all) = self.host_endpoints_of(node).find(|e| interface(e) == "*") {
            return Some(all);
        }
        let mut named = self
            .host_endpoints_of(node)
            .filter(|e| !interface(e).is_empty());
        match (named.next(), named.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    /// The host owning `ip`: a host endpoint's `expectedIPs`, else a node address.
    pub fn host_of(&self, ip: IpAddr) -> Option<PathEnd<'_>> {
        if let Some(hep) = self
            .endpoints
            .iter()
            .filter(|e| e.is_host_endpoint())
            .find(|e| e.ips.iter().any(|n| n.contains(&ip)))
            && let Some(node) = hep.node.as_deref()
        {
            return Some(PathEnd::Host {
                node,
                endpoint: Some(hep),
            });
        }
        let (node, _) = self.nodes.iter().find(|(_, ips)| ips.contains(&ip))?;
        Some(PathEnd::Host {
            node,
            endpoint: self.host_endpoint_for(node, Some(ip)),
        })
    }

    /// One direction at host endpoint `hep` (see [`crate::host`]): for traffic to or from the
    /// host, or (`forwarded`) across the interface.
    pub fn host_endpoint_verdict(
        &self,
        packet: &Packet,
        hep: &Endpoint,
        direction: Direction,
        forwarded: bool,
    ) -> DirectionTrace {
        let context = Context {
            set: self,
            packet,
            extra: &[],
        };
        context.host_side(hep, direction, forwarded)
    }

    /// The host-aware verdict of `packet` from `from` to `to`: workload and host endpoint
    /// policy, failsafe ports, the untracked and pre-DNAT stages, applyOnForward, workload→host
    /// (`defaultEndpointToHostAction`) and host→workload traffic. See [`crate::host`].
    pub fn path_verdict(&self, packet: &Packet, from: PathEnd<'_>, to: PathEnd<'_>) -> Trace {
        let extra: Vec<&Endpoint> = from.endpoint().into_iter().chain(to.endpoint()).collect();
        let context = Context {
            set: self,
            packet,
            extra: &extra,
        };
        let same_node = from.node().is_some() && from.node() == to.node();
        let special = |decided_by: Decision, endpoint: String| DirectionTrace {
            endpoint,
            verdict: match &decided_by {
                Decision::EndpointToHost {
                    action: EndpointToHostAction::Drop,
                } => Verdict::Deny,
                _ => Verdict::Allow,
            },
            decided_by,
            tiers: Vec::new(),
            steps: Vec::new(),
            stage: Stage::Normal,
        };
        let host_name = |node: &str, endpoint: Option<&Endpoint>| match endpoint {
            Some(e) => endpoint_key(e),
            None => format!("host {node}"),
        };
        // Workload → its host: IPv6 neighbour discovery and MLD pass before any policy.
        let neighbor_discovery = same_node
            && matches!((from, to), (PathEnd::Workload(_), PathEnd::Host { .. }))
            && packet.protocol == Protocol::ICMPV6
            && packet
                .icmp_type
                .is_some_and(|t| NEIGHBOR_DISCOVERY_TYPES.contains(&t));
        if neighbor_discovery
            && let (PathEnd::Workload(w), PathEnd::Host { node, endpoint }) = (from, to)
        {
            return Trace {
                verdict: Verdict::Allow,
                egress: Some(special(Decision::NeighborDiscovery, endpoint_key(w))),
                ingress: Some(special(
                    Decision::NeighborDiscovery,
                    host_name(node, endpoint),
                )),
                forward: Vec::new(),
            };
        }
        let egress = match from {
            PathEnd::Workload(w) => Some(context.evaluate(w, Direction::Egress)),
            PathEnd::Host { node, endpoint } if same_node => matches!(to, PathEnd::Workload(_))
                .then(|| special(Decision::HostToWorkload, host_name(node, endpoint))),
            PathEnd::Host {
                endpoint: Some(hep),
                ..
            } => Some(context.host_side(hep, Direction::Egress, false)),
            PathEnd::Host { endpoint: None, .. } | PathEnd::Outside => None,
        };
        let ingress = match to {
            PathEnd::Workload(w) if same_node && matches!(from, PathEnd::Host { .. }) => {
                Some(special(Decision::HostToWorkload, endpoint_key(w)))
            }
            PathEnd::Workload(w) => Some(context.evaluate(w, Direction::Ingress)),
            PathEnd::Host { node, endpoint } if same_node => matches!(from, PathEnd::Workload(_))
                .then(|| {
                    let action = self.host_config(node).default_endpoint_to_host_action;
                    special(
                        Decision::EndpointToHost { action },
                        host_name(node, endpoint),
                    )
                }),
            PathEnd::Host {
                endpoint: Some(hep),
                ..
            } => Some(context.host_side(hep, Direction::Ingress, false)),
            PathEnd::Host { endpoint: None, .. } | PathEnd::Outside => None,
        };
        // Forwarded across a host endpoint: leaving a workload's node, entering another's.
        let mut forward = Vec::new();
        if !same_node {
            if let PathEnd::Workload(w) = from
                && let Some(hep) = w.node.as_deref().and_then(|n| self.forward_endpoint(n))
            {
                forward.push(context.host_side(hep, Direction::Egress, true));
            }
            if let PathEnd::Workload(w) = to
                && let Some(hep) = w.node.as_deref().and_then(|n| self.forward_endpoint(n))
            {
                forward.push(context.host_side(hep, Direction::Ingress, true));
            }
        }
        let allowed = egress
            .iter()
            .chain(&ingress)
            .chain(&forward)
            .all(|side| side.verdict == Verdict::Allow);
        Trace {
            verdict: if allowed {
                Verdict::Allow
            } else {
                Verdict::Deny
            },
            egress,
            ingress,
            forward,
        }
    }
}

impl Context<'_> {
    /// One direction at host endpoint `hep`: for traffic to or from the host itself, or
    /// (`forwarded`) across it.
    pub(crate) fn host_side(
        &self,
        hep: &Endpoint,
        direction: Direction,
        forwarded: bool,
    ) -> DirectionTrace {
        let mut steps = Vec::new();
        let finish = |verdict, decided_by, tiers: Vec<String>, steps, stage| DirectionTrace {
            endpoint: endpoint_key(hep),
            verdict,
            decided_by,
            tiers,
            steps,
            stage,
        };
        let config = self
            .set
            .host_config(hep.node.as_deref().unwrap_or_default());
        if !forwarded && let Some(port) = config.failsafe(self.packet, direction) {
            let decided_by = Decision::Failsafe {
                protocol: port.protocol,
                port: port.port,
            };
            return finish(Verdict::Allow, decided_by, Vec::new(), steps, Stage::Normal);
        }
        let all_interfaces = hep
            .host_endpoint
            .as_ref()
            .is_some_and(|h| h.is_all_interfaces());
        for stage in [Stage::Untracked, Stage::PreDnat] {
            if stage == Stage::Untracked && all_interfaces {
                continue;
            }
            let applied = self.set.applicable_tiers_in(hep, direction, stage);
            if applied.is_empty() {
                continue;
            }
            let tiers = applied.iter().map(|t| t.tier.name.clone()).collect();
            if let Some((verdict, decided_by)) =
                self.run_tiers(&applied, direction, false, &mut steps)
            {
                return finish(verdict, decided_by, tiers, steps, stage);
            }
        }
        let stage = if forwarded {
            Stage::Forward
        } else {
            Stage::Normal
        };
        let applied = self.set.applicable_tiers_in(hep, direction, stage);
        let tiers: Vec<String> = applied.iter().map(|t| t.tier.name.clone()).collect();
        if let Some((verdict, decided_by)) = self.run_tiers(&applied, direction, true, &mut steps) {
            return finish(verdict, decided_by, tiers, steps, stage);
        }
        if forwarded {
            return finish(
                Verdict::Allow,
                Decision::ForwardNotPoliced,
                tiers,
                steps,
                stage,
            );
        }
        let (verdict, decided_by) = self.run_profiles(hep, direction, &mut steps);
        finish(verdict, decided_by, tiers, steps, stage)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::model::HostInterface;
    use crate::model::Rule;
    use crate::trace::Decision;

    fn hep(name: &str, node: &str, interface: &str, ip: &str) -> Endpoint {
        Endpoint {
            name: name.to_string(),
            labels: [("role".to_string(), "node".to_string())].into(),
            ips: vec![format!("{ip}/32").parse().unwrap()],
            node: Some(node.to_string()),
            host_endpoint: Some(HostInterface {
                interface_name: interface.to_string(),
            }),
            ..Endpoint::default()
        }
    }

    fn policy(name: &str, namespace: Option<&str>) -> Policy {
        let mut policy = Policy::new(name, namespace);
        policy.ingress = vec![Rule::new(crate::model::Action::Deny)];
        policy
    }

    #[test]
    fn failsafe_entries_match_protocol_port_and_peer_net() {
        let config = HostPolicyConfig::default();
        let packet = |dst_port| {
            Packet::tcp(
                "10.0.0.9".parse().unwrap(),
                40000,
                "10.0.0.1".parse().unwrap(),
                dst_port,
            )
        };
        assert!(config.failsafe(&packet(22), Direction::Ingress).is_some());
        assert!(config.failsafe(&packet(22), Direction::Egress).is_none());
        assert!(config.failsafe(&packet(179), Direction::Egress).is_some());
        let limited = FailsafePort {
            net: Some("192.168.0.0/16".parse().unwrap()),
            ..FailsafePort::new(Protocol::TCP, 22)
        };
        assert!(!limited.matches(&packet(22), "10.0.0.9".parse().unwrap()));
        assert!(limited.matches(&packet(22), "192.168.3.4".parse().unwrap()));
        let udp = Packet::udp(
            "10.0.0.9".parse().unwrap(),
            40000,
            "10.0.0.1".parse().unwrap(),
            22,
        );
        assert!(config.failsafe(&udp, Direction::Ingress).is_none());
    }

    #[test]
    fn stages_partition_policies() {
        let mut raw = policy("raw", None);
        raw.do_not_track = true;
        let mut pre = policy("pre", None);
        pre.pre_dnat = true;
        let mut forward = policy("forward", None);
        forward.apply_on_forward = true;
        let normal = policy("normal", None);
        let stages = |p: &Policy, d| {
            [
                Stage::Untracked,
                Stage::PreDnat,
                Stage::Normal,
                Stage::Forward,
            ]
            .into_iter()
            .filter(|s| s.includes(p, d))
            .collect::<Vec<_>>()
        };
        assert_eq!(stages(&raw, Direction::Ingress), [Stage::Untracked]);
        assert_eq!(stages(&pre, Direction::Ingress), [Stage::PreDnat]);
        assert!(stages(&pre, Direction::Egress).is_empty());
        assert_eq!(
            stages(&forward, Direction::Egress),
            [Stage::Normal, Stage::Forward]
        );
        assert_eq!(stages(&normal, Direction::Ingress), [Stage::Normal]);
    }

    #[test]
    fn namespaced_policies_never_select_host_endpoints() {
        let mut set = PolicySet::new();
        set.add_endpoint(hep("node1-eth0", "node1", "eth0", "192.168.1.1"));
        set.add_policy(policy("np", Some("default")));
        let endpoint = &set.endpoints[0];
        assert!(
            set.applicable_tiers(endpoint, Direction::Ingress)
                .is_empty()
        );
        set.add_policy(policy("gnp", None));
        let endpoint = &set.endpoints[0];
        assert_eq!(set.applicable_tiers(endpoint, Direction::Ingress).len(), 1);
    }

    #[test]
    fn host_addresses_find_their_host_endpoint() {
        let mut set = PolicySet::new();
        set.add_endpoint(hep("node1-eth0", "node1", "eth0", "192.168.1.1"));
        set.add_endpoint(hep("node1-eth1", "node1", "eth1", "192.168.2.1"));
        set.add_endpoint(hep("node2-all", "node2", "*", "192.168.1.2"));
        set.nodes
            .insert("node1".to_string(), vec!["10.9.0.1".parse().unwrap()]);
        set.nodes
            .insert("node2".to_string(), vec!["10.9.0.2".parse().unwrap()]);
        set.nodes
            .insert("node3".to_string(), vec!["10.9.0.3".parse().unwrap()]);
        let name = |ip: &str| match set.host_of(ip.parse().unwrap()) {
            Some(PathEnd::Host { node, endpoint }) => {
                format!(
                    "{node}:{}",
                    endpoint.map(|e| e.name.as_str()).unwrap_or("-")
                )
            }
            other => format!("{other:?}"),
        };
        assert_eq!(name("192.168.2.1"), "node1:node1-eth1");
        // A node address: two named endpoints, no `*`: which one is unknown.
        assert_eq!(name("10.9.0.1"), "node1:-");
        assert_eq!(name("10.9.0.2"), "node2:node2-all");
        assert_eq!(name("10.9.0.3"), "node3:-");
        assert_eq!(name("8.8.8.8"), "None");
        assert!(set.forward_endpoint("node1").is_none());
        assert_eq!(set.forward_endpoint("node2").unwrap().name, "node2-all");
    }

    #[test]
    fn all_interfaces_endpoints_take_no_untracked_policy() {
        let mut set = PolicySet::new();
        set.add_endpoint(hep("node1-all", "node1", "*", "192.168.1.1"));
        let mut raw = policy("raw", None);
        raw.do_not_track = true;
        raw.apply_on_forward = true;
        set.add_policy(raw);
        let packet = Packet::tcp(
            "8.8.8.8".parse().unwrap(),
            40000,
            "192.168.1.1".parse().unwrap(),
            80,
        );
        let host = set.host_of("192.168.1.1".parse().unwrap()).unwrap();
        let trace = set.path_verdict(&packet, PathEnd::Outside, host);
        let ingress = trace.ingress.unwrap();
        // Not the untracked Deny: the default deny of the normal stage (no profile).
        assert_eq!(ingress.stage, Stage::Normal);
        assert_eq!(ingress.decided_by, Decision::NoProfileMatched);
        let program = set.compile_for_node(std::iter::empty(), "node1");
        let host = program.host.unwrap();
        assert!(
            host.endpoints["node1-all"]
                .untracked
                .ingress
                .tiers
                .is_empty()
        );
    }
}
