//! The BGP configuration of this node, computed from the cluster's resources. Pure.
//!
//! Calico renders `bird.cfg` from the same resources; Felis computes a [`BgpDesired`] and
//! drives its own speaker ([`felis_bgp::io::Speaker`]) toward it with [`plan`]:
//!
//! ```text
//!  Node, BGPConfiguration, BGPPeer, IPPool, IPAM blocks ──► desired() ──► BgpDesired
//!  BgpDesired (before, after) ──► plan() ──► [SpeakerCommand] ──► the shell calls the Speaker
//!  Speaker's RibChange ──► fib::Learned ──► FibWriter ──► kernel routes, proto 81 (fib)
//! ```
//!
//! The agent writes learned routes into the kernel itself ([`fib`], [`FibWriter`]: Calico's
//! BIRD `protocol kernel`); [`learned_update`] turns them into graph facts instead, for tests
//! and tools that keep learned routes in the graph.
//!
//! [`BgpRunner`] is the shell around it: it owns the speaker, executes the plan (resolving
//! passwords), and reports status; it decides nothing.
//!
//! Calico's rules, as followed here:
//! - **Speaker**: AS = the node's `bgp.asNumber`, else BGPConfiguration `default` `asNumber`,
//!   else 64512; router id = the node's IPv4 address; `listenPort` from `node.<name>`, else
//!   `default`, else 179; the node reflects routes when it has `routeReflectorClusterID`.
//! - **Mesh** (`nodeToNodeMeshEnabled`, default true, read from `default` only): a peer per other
//!   node and family, of the node's AS, on the port that node listens on. Each mesh pair is one
//!   session: a node is passive toward a peer whose IP is greater **as a string** (so the
//!   higher-IP node initiates; `10.0.0.9` > `10.0.0.10` as strings).
//! - **BGPPeer**: applies to this node when `node` names it, `nodeSelector` matches its labels,
//!   or neither is set (a global peer). `peerIP` (+ port, `asNumber`) gives one peer, which we
//!   connect to; `peerSelector` gives a peer per other node it selects, with the same passive
//!   rule as the mesh. Kind: global when neither `node` nor `nodeSelector` is set, else node
//!   specific. A node with `routeReflectorClusterID` treats the iBGP peers its BGPPeers give as
//!   route-reflector clients, unless the peer is itself a route reflector.
//! - When the same address comes from several sources, the most specific wins: node-specific
//!   BGPPeer, then global BGPPeer, then the mesh (BGPPeers by name among equals). A node never
//!   peers with its own addresses.
//! - **Exports**: the node's affine blocks (as blocks) and a /32 (/128) per address it holds in
//!   another node's block, both only inside a pool without `disableBGPExport`; plus the
//!   BGPConfiguration's `serviceClusterIPs` and `serviceExternalIPs` CIDRs. Nothing else. Next
//!   hop: the node's address of the prefix's family. `prefixAdvertisements` attach communities
//!   (names resolved through `communities`) to exported prefixes inside their CIDR.
//! - **Filters** (`filters`, BGPFilter names in order): each BGPPeer's peers get the rules of
//!   its filters, concatenated in that order, as their import and export policy
//!   ([`felis_bgp::policy`]: first matching rule decides, no match accepts). A filter that does
//!   not exist is skipped (a problem line); rules with `interface` never match (Felis advertises
//!   no interface routes; a problem line says so). Mesh peers have no filters. A change of
//!   filters only is applied to the live session ([`SpeakerCommand::SetPeerPolicy`]).
//! - **TTL security** (`ttlSecurity`, hops; 0 or unset: off) is passed to the speaker (GTSM).
//! - **Passwords** (`password.secretKeyRef`, `nodeMeshPassword`) are carried as a [`SecretRef`];
//!   the shell resolves them (see [`SecretRef`]) just before adding the peer, so secrets never
//!   enter the calculation, its logs or its JSON.

pub mod fib;
mod kernel;
mod shell;
mod status;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::net::SocketAddr;

use felis_api::selector::Selector;
use felis_bgp::Asn;
use felis_bgp::io::PeerConfig;
use felis_bgp::io::SpeakerConfig;
use felis_bgp::packet::update::PathAttributes;
use felis_bgp::packet::update::RawAttribute;
use felis_bgp::policy::FilterAction;
use felis_bgp::policy::FilterRule;
use felis_bgp::policy::MatchOperator;
use felis_bgp::policy::PeerPolicy;
use felis_bgp::policy::Policy;
use felis_bgp::rib::ChangeKind;
use felis_bgp::rib::NextHopMode;
use felis_bgp::rib::RibChange;
use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

use crate::calc::BlockFacts;
use crate::calc::LearnedRoute;
use crate::calc::NodeFacts;
use crate::calc::PoolFacts;
use crate::calc::Update;

pub use self::kernel::FibWriter;
pub use self::shell::BgpRunner;
pub use self::shell::DEFAULT_SECRETS_DIR;
pub use self::shell::Reconciled;
pub use self::shell::ShellError;
pub use self::shell::write_status_file;
pub use self::status::PeerReport;
pub use self::status::PrefixCounts;
pub use self::status::STATUS_FILE;
pub use self::status::STATUS_INTERVAL;
pub use self::status::STATUS_MAX_AGE;
pub use self::status::StatusReport;
pub use self::status::render_status;

/// Calico's default AS number.
pub const DEFAULT_ASN: Asn = Asn(64512);
/// The default BGP port.
pub const DEFAULT_LISTEN_PORT: u16 = 179;
/// Graceful restart time when none is configured (BIRD's default, as Calico).
pub const DEFAULT_RESTART_TIME: u16 = 120;

/// A node's BGP settings (`spec.bgp` of the Node resource).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpNodeFacts {
    /// `bgp.asNumber`: the node's own AS, else the cluster's.
    pub asn: Option<Asn>,
    /// `bgp.routeReflectorClusterID`: set when the node is a route reflector.
    pub route_reflector_cluster_id: Option<String>,
}

/// A reference to a BGP password: key `key` of secret `name`.
///
/// Resolution (the shell's job, not the calculation's): in Kubernetes, Calico reads the Secret
/// from the namespace calico-node runs in. Felis reads the file `<secrets dir>/<name>/<key>`
/// (default `/etc/felis/secrets`, the layout a mounted Secret volume has), trimming one trailing
/// newline; a missing file is an error for the peer unless the reference is optional, in which
/// case the session runs without a password.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecretRef {
    /// The secret's name.
    pub name: String,
    /// The key within the secret.
    pub key: String,
    /// Whether the secret may be missing.
    #[serde(default)]
    pub optional: bool,
}

/// A `BGPConfiguration` as the calculation needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpConfigFacts {
    /// `default` or `node.<name>`.
    pub name: String,
    /// `nodeToNodeMeshEnabled`.
    pub node_to_node_mesh: Option<bool>,
    /// `asNumber`.
    pub asn: Option<Asn>,
    /// `listenPort`.
    pub listen_port: Option<u16>,
    /// `communities`: name to value (`aa:nn` or `aa:nn:mm`).
    pub communities: BTreeMap<String, String>,
    /// `prefixAdvertisements`: CIDR and community names or values.
    pub prefix_advertisements: Vec<(IpNet, Vec<String>)>,
    /// `serviceClusterIPs`.
    pub service_cluster_ips: Vec<IpNet>,
    /// `serviceExternalIPs`.
    pub service_external_ips: Vec<IpNet>,
    /// `nodeMeshPassword`.
    pub node_mesh_password: Option<SecretRef>,
    /// `nodeMeshMaxRestartTime`, in seconds.
    pub node_mesh_max_restart_time: Option<u16>,
}

impl BgpConfigFacts {
    /// The facts of a `BGPConfiguration` resource.
    pub fn from_resource(config: &felis_api::BgpConfiguration) -> BgpConfigFacts {
        let s = &config.spec;
        BgpConfigFacts {
            name: config.metadata.name.clone(),
            node_to_node_mesh: s.node_to_node_mesh_enabled,
            asn: s.as_number.map(|a| Asn(a.0)),
            listen_port: s.listen_port,
            communities: s
                .communities
                .iter()
                .map(|c| (c.name.clone(), c.value.clone()))
                .collect(),
            prefix_advertisements: s
                .prefix_advertisements
                .iter()
                .map(|p| (p.cidr, p.communities.clone()))
                .collect(),
            service_cluster_ips: s.service_cluster_ips.iter().map(|c| c.cidr).collect(),
            service_external_ips: s.service_external_ips.iter().map(|c| c.cidr).collect(),
            node_mesh_password: s.node_mesh_password.as_ref().and_then(secret_ref),
            node_mesh_max_restart_time: s.node_mesh_max_restart_time.as_deref().and_then(seconds),
        }
    }
}

/// A `BGPPeer` as the calculation needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeerFacts {
    /// The resource's name.
    pub name: String,
    /// `node`: the one node this applies to.
    pub node: String,
    /// `nodeSelector`: the nodes this applies to.
    pub node_selector: String,
    /// `peerIP`'s address.
    pub peer_ip: Option<IpAddr>,
    /// `peerIP`'s port, when given (`ip:port`).
    pub peer_port: Option<u16>,
    /// `asNumber`.
    pub asn: Option<Asn>,
    /// `peerSelector`: peer with the nodes it selects.
    pub peer_selector: String,
    /// `nextHopMode`, or `Keep` from `keepOriginalNextHop`.
    pub next_hop_mode: NextHopMode,
    /// `password.secretKeyRef`.
    pub password: Option<SecretRef>,
    /// `sourceAddress` is `UseNodeIP` (the default), not `None`.
    pub use_node_ip: bool,
    /// `maxRestartTime`, in seconds.
    pub max_restart_time: Option<u16>,
    /// `ttlSecurity`: GTSM for a peer at most this many hops away (0: off).
    #[serde(default)]
    pub ttl_security: Option<u8>,
    /// `filters`: BGPFilter names, in order.
    #[serde(default)]
    pub filters: Vec<String>,
}

impl BgpPeerFacts {
    /// The facts of a `BGPPeer` resource.
    pub fn from_resource(peer: &felis_api::BgpPeer) -> BgpPeerFacts {
        let s = &peer.spec;
        let (peer_ip, peer_port) = s.peer_addr().map_or((None, None), |(a, p)| (Some(a), p));
        let next_hop_mode = match (s.keep_original_next_hop, s.next_hop_mode) {
            (true, _) | (_, Some(felis_api::bgp::NextHopMode::Keep)) => NextHopMode::Keep,
            (_, Some(felis_api::bgp::NextHopMode::SelfAddr)) => NextHopMode::SelfAddress,
            _ => NextHopMode::Auto,
        };
        BgpPeerFacts {
            name: peer.metadata.name.clone(),
            node: s.node.clone(),
            node_selector: s.node_selector.clone(),
            peer_ip,
            peer_port,
            asn: s.as_number.map(|a| Asn(a.0)),
            peer_selector: s.peer_selector.clone(),
            next_hop_mode,
            password: s.password.as_ref().and_then(secret_ref),
            use_node_ip: s.source_address != Some(felis_api::bgp::SourceAddress::None),
            max_restart_time: s.max_restart_time.as_deref().and_then(seconds),
            ttl_security: s.ttl_security.filter(|hops| *hops > 0),
            filters: s.filters.clone(),
        }
    }
}

/// A `BGPFilter` as the calculation needs it: its rules as speaker policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpFilterFacts {
    /// The resource's name.
    pub name: String,
    /// `importV4` and `importV6`.
    pub import: Policy,
    /// `exportV4` and `exportV6`.
    pub export: Policy,
    /// How many rules match on `interface` (they never match in Felis).
    pub interface_rules: usize,
}

impl BgpFilterFacts {
    /// The facts of a `BGPFilter` resource.
    pub fn from_resource(filter: &felis_api::BgpFilter) -> BgpFilterFacts {
        let s = &filter.spec;
        let rules = |rules: &[felis_api::bgp::BgpFilterRule]| -> Vec<FilterRule> {
            rules.iter().map(filter_rule).collect()
        };
        let interface_rules = [&s.export_v4, &s.import_v4, &s.export_v6, &s.import_v6]
            .iter()
            .flat_map(|r| r.iter())
            .filter(|r| r.interface.is_some())
            .count();
        BgpFilterFacts {
            name: filter.metadata.name.clone(),
            import: Policy {
                v4: rules(&s.import_v4),
                v6: rules(&s.import_v6),
            },
            export: Policy {
                v4: rules(&s.export_v4),
                v6: rules(&s.export_v6),
            },
            interface_rules,
        }
    }
}

/// One rule of a `BGPFilter` as the speaker evaluates it.
fn filter_rule(rule: &felis_api::bgp::BgpFilterRule) -> FilterRule {
    use felis_api::bgp::MatchOperator as Op;
    let operator = |op: Op| match op {
        Op::Equal => MatchOperator::Equal,
        Op::NotEqual => MatchOperator::NotEqual,
        Op::In => MatchOperator::In,
        Op::NotIn => MatchOperator::NotIn,
    };
    FilterRule {
        // Validation sets cidr and matchOperator together; a cidr alone is taken as `In`.
        prefix: rule.cidr.map(|cidr| {
            (
                rule.match_operator.map_or(MatchOperator::In, operator),
                cidr,
            )
        }),
        min_length: rule.prefix_length.and_then(|l| l.min),
        max_length: rule.prefix_length.and_then(|l| l.max),
        remote_peers_only: rule.source == Some(felis_api::bgp::BgpFilterSource::RemotePeers),
        interface: rule.interface.clone(),
        action: match rule.action {
            felis_api::bgp::BgpFilterAction::Accept => FilterAction::Accept,
            felis_api::bgp::BgpFilterAction::Reject => FilterAction::Reject,
        },
    }
}

/// Where a peer comes from; `felis node status` shows it as PEER TYPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PeerKind {
    /// The node-to-node mesh.
    Mesh,
    /// A BGPPeer without `node` or `nodeSelector`.
    Global,
    /// A BGPPeer for this node (`node` or `nodeSelector`).
    Node,
}

impl PeerKind {
    /// calicoctl's name: `node-to-node mesh`, `global`, `node specific`.
    pub fn label(self) -> &'static str {
        match self {
            PeerKind::Mesh => "node-to-node mesh",
            PeerKind::Global => "global",
            PeerKind::Node => "node specific",
        }
    }
}

/// One peer this node should have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPeer {
    /// The peer's AS.
    pub asn: Asn,
    /// The peer's port (for our outgoing connections).
    pub port: u16,
    /// Only accept the peer's connections.
    pub passive: bool,
    /// Where the peer comes from.
    pub kind: PeerKind,
    /// The BGPPeer that gives it (`None` for the mesh).
    pub source: Option<String>,
    /// The Felis node the peer is, if it is one.
    pub node: Option<String>,
    /// The peer is a route-reflector client of this node.
    pub rr_client: bool,
    /// Next-hop rule for routes sent to the peer.
    pub next_hop_mode: NextHopMode,
    /// TCP-MD5 password, to resolve.
    pub password: Option<SecretRef>,
    /// Source address of our connections (the node's IP unless `sourceAddress: None`).
    pub local_address: Option<IpAddr>,
    /// Graceful restart time we keep the peer's routes for.
    pub max_restart_time: u16,
    /// TTL security (GTSM): the peer is at most this many hops away.
    #[serde(default)]
    pub ttl_security: Option<u8>,
    /// Import and export policy from the BGPPeer's filters.
    #[serde(default)]
    pub policy: PeerPolicy,
}

/// A BGP community to attach to an exported prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Community {
    /// `aa:nn` (RFC 1997).
    Standard(u16, u16),
    /// `aa:nn:mm` (RFC 8092).
    Large(u32, u32, u32),
}

impl Community {
    /// Parses `aa:nn` or `aa:nn:mm`.
    pub fn parse(value: &str) -> Option<Community> {
        let parts: Vec<&str> = value.split(':').collect();
        match parts.as_slice() {
            [a, b] => Some(Community::Standard(a.parse().ok()?, b.parse().ok()?)),
            [a, b, c] => Some(Community::Large(
                a.parse().ok()?,
                b.parse().ok()?,
                c.parse().ok()?,
            )),
            _ => None,
        }
    }
}

/// How one prefix is exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    /// The next hop to advertise (the node's address of the prefix's family).
    pub next_hop: IpAddr,
    /// Communities to attach.
    pub communities: BTreeSet<Community>,
}

/// The BGP configuration this node should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpDesired {
    /// Our AS.
    pub local_asn: Asn,
    /// Our router id: the node's IPv4 address.
    pub router_id: Ipv4Addr,
    /// The node's IPv6 address, if it has one.
    pub local_ipv6: Option<Ipv6Addr>,
    /// The port we listen on.
    pub listen_port: u16,
    /// Route reflector cluster id, when the node reflects.
    pub cluster_id: Option<Ipv4Addr>,
    /// Peers by address.
    pub peers: BTreeMap<IpAddr, DesiredPeer>,
    /// Prefixes to announce.
    pub exports: BTreeMap<IpNet, Export>,
    /// Configuration that could not be used, one line each (for logs and status).
    pub problems: Vec<String>,
}

/// What [`desired`] reads: the calculation graph's facts.
#[derive(Debug, Clone, Copy)]
pub struct BgpInputs<'a> {
    /// This node's name.
    pub local_node: &'a str,
    /// Nodes by name.
    pub nodes: &'a BTreeMap<String, NodeFacts>,
    /// Pools by name.
    pub pools: &'a BTreeMap<String, PoolFacts>,
    /// IPAM blocks by CIDR.
    pub blocks: &'a BTreeMap<IpNet, BlockFacts>,
    /// BGPConfigurations by name.
    pub configs: &'a BTreeMap<String, BgpConfigFacts>,
    /// BGPPeers by name.
    pub peers: &'a BTreeMap<String, BgpPeerFacts>,
    /// BGPFilters by name.
    pub filters: &'a BTreeMap<String, BgpFilterFacts>,
}

/// The BGP configuration of `inputs.local_node`; `None` when the node is unknown or has no IPv4
/// address (it runs no BGP).
pub fn desired(inputs: &BgpInputs<'_>) -> Option<BgpDesired> {
    let local = inputs.nodes.get(inputs.local_node)?;
    let router_id = match local.ipv4?.addr() {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => return None,
    };
    let local_ipv6 = local.ipv6.and_then(|a| match a.addr() {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    });
    let global = inputs.configs.get("default");
    let per_node = |name: &str| inputs.configs.get(&format!("node.{name}"));
    let mine = per_node(inputs.local_node);
    let mut problems = Vec::new();

    let cluster_asn = global.and_then(|c| c.asn).unwrap_or(DEFAULT_ASN);
    let node_asn = |n: &NodeFacts| n.bgp.asn.unwrap_or(cluster_asn);
    let local_asn = node_asn(local);
    let listen_port_of = |name: &str| {
        per_node(name)
            .and_then(|c| c.listen_port)
            .or(global.and_then(|c| c.listen_port))
            .unwrap_or(DEFAULT_LISTEN_PORT)
    };
    let cluster_id = match cluster_id_of(local) {
        Some(s) => match s.parse::<Ipv4Addr>() {
            Ok(id) => Some(id),
            Err(_) => {
                problems.push(format!(
                    "node {}: routeReflectorClusterID {s:?} is not an IPv4 address; not reflecting",
                    local.name
                ));
                None
            }
        },
        None => None,
    };
    let local_addresses: Vec<IpAddr> = [local.ipv4, local.ipv6]
        .into_iter()
        .flatten()
        .map(|a| a.addr())
        .collect();
    let local_address_for = |peer: IpAddr| {
        local_addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == peer.is_ipv4())
    };
    // Calico: a node is passive toward a peer whose IP is greater as a string.
    let passive_toward = |peer: IpAddr| {
        local_address_for(peer).is_some_and(|mine| peer.to_string() > mine.to_string())
    };
    let others = || {
        inputs
            .nodes
            .values()
            .filter(move |n| n.name != inputs.local_node)
    };
    let addresses_of = |n: &NodeFacts| -> Vec<IpAddr> {
        [n.ipv4, n.ipv6]
            .into_iter()
            .flatten()
            .map(|a| a.addr())
            .filter(|a| local_address_for(*a).is_some() && !local_addresses.contains(a))
            .collect()
    };

    let mut peers: BTreeMap<IpAddr, DesiredPeer> = BTreeMap::new();
    let mut insert = |address: IpAddr, peer: DesiredPeer| {
        let wins = peers.get(&address).is_none_or(|old| peer.kind > old.kind);
        if wins {
            peers.insert(address, peer);
        }
    };

    if global.and_then(|c| c.node_to_node_mesh).unwrap_or(true) {
        let password = global.and_then(|c| c.node_mesh_password.clone());
        let restart = global
            .and_then(|c| c.node_mesh_max_restart_time)
            .unwrap_or(DEFAULT_RESTART_TIME);
        for node in others() {
            for address in addresses_of(node) {
                insert(
                    address,
                    DesiredPeer {
                        asn: node_asn(node),
                        port: listen_port_of(&node.name),
                        passive: passive_toward(address),
                        kind: PeerKind::Mesh,
                        source: None,
                        node: Some(node.name.clone()),
                        rr_client: false,
                        next_hop_mode: NextHopMode::Auto,
                        password: password.clone(),
                        local_address: local_address_for(address),
                        max_restart_time: restart,
                        ttl_security: None,
                        policy: PeerPolicy::default(),
                    },
                );
            }
        }
    }

    for spec in inputs.peers.values() {
        let applies = if !spec.node.is_empty() {
            spec.node == inputs.local_node
        } else if !spec.node_selector.is_empty() {
            match Selector::parse(&spec.node_selector) {
                Ok(selector) => selector.matches(&local.labels),
                Err(e) => {
                    problems.push(format!("BGPPeer {}: nodeSelector: {e}", spec.name));
                    false
                }
            }
        } else {
            true
        };
        if !applies {
            continue;
        }
        let kind = if spec.node.is_empty() && spec.node_selector.is_empty() {
            PeerKind::Global
        } else {
            PeerKind::Node
        };
        let restart = spec.max_restart_time.unwrap_or(DEFAULT_RESTART_TIME);
        let policy = peer_policy(spec, inputs.filters, &mut problems);
        let source_for = |address: IpAddr| {
            if spec.use_node_ip {
                local_address_for(address)
            } else {
                None
            }
        };
        if !spec.peer_selector.is_empty() {
            let selector = match Selector::parse(&spec.peer_selector) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("BGPPeer {}: peerSelector: {e}", spec.name));
                    continue;
                }
            };
            for node in others().filter(|n| selector.matches(&n.labels)) {
                let asn = node_asn(node);
                for address in addresses_of(node) {
                    insert(
                        address,
                        DesiredPeer {
                            asn,
                            port: listen_port_of(&node.name),
                            passive: passive_toward(address),
                            kind,
                            source: Some(spec.name.clone()),
                            node: Some(node.name.clone()),
                            rr_client: cluster_id.is_some()
                                && asn == local_asn
                                && cluster_id_of(node).is_none(),
                            next_hop_mode: spec.next_hop_mode,
                            password: spec.password.clone(),
                            local_address: source_for(address),
                            max_restart_time: restart,
                            ttl_security: spec.ttl_security,
                            policy: policy.clone(),
                        },
                    );
                }
            }
        } else if let Some(address) = spec.peer_ip {
            let Some(asn) = spec.asn else {
                problems.push(format!("BGPPeer {}: peerIP without asNumber", spec.name));
                continue;
            };
            if local_addresses.contains(&address) {
                continue; // a node never peers with itself
            }
            if local_address_for(address).is_none() {
                problems.push(format!(
                    "BGPPeer {}: node {} has no address of {address}'s family",
                    spec.name, local.name
                ));
                continue;
            }
            let peer_node = others().find(|n| {
                [n.ipv4, n.ipv6]
                    .into_iter()
                    .flatten()
                    .any(|a| a.addr() == address)
            });
            insert(
                address,
                DesiredPeer {
                    asn,
                    port: spec.peer_port.unwrap_or(DEFAULT_LISTEN_PORT),
                    passive: false,
                    kind,
                    source: Some(spec.name.clone()),
                    node: peer_node.map(|n| n.name.clone()),
                    rr_client: cluster_id.is_some()
                        && asn == local_asn
                        && peer_node.and_then(cluster_id_of).is_none(),
                    next_hop_mode: spec.next_hop_mode,
                    password: spec.password.clone(),
                    local_address: source_for(address),
                    max_restart_time: restart,
                    ttl_security: spec.ttl_security,
                    policy,
                },
            );
        }
    }

    let config_field = |f: fn(&BgpConfigFacts) -> bool| mine.filter(|c| f(c)).or(global);
    let advertised = config_field(|c| !c.prefix_advertisements.is_empty());
    let community_names = config_field(|c| !c.communities.is_empty());
    let services =
        config_field(|c| !c.service_cluster_ips.is_empty() || !c.service_external_ips.is_empty());
    let mut exports = BTreeMap::new();
    let mut export = |prefix: IpNet| {
        let next_hop = match prefix {
            IpNet::V4(_) => Some(IpAddr::V4(router_id)),
            IpNet::V6(_) => local_ipv6.map(IpAddr::V6),
        };
        let Some(next_hop) = next_hop else {
            return;
        };
        let mut communities = BTreeSet::new();
        for (cidr, names) in advertised.iter().flat_map(|c| &c.prefix_advertisements) {
            if !cidr.contains(&prefix) {
                continue;
            }
            for name in names {
                let value = community_names
                    .and_then(|c| c.communities.get(name))
                    .unwrap_or(name);
                match Community::parse(value) {
                    Some(c) => {
                        communities.insert(c);
                    }
                    None => problems.push(format!(
                        "prefixAdvertisements {cidr}: community {name:?} is not aa:nn or aa:nn:mm"
                    )),
                }
            }
        }
        exports.insert(
            prefix,
            Export {
                next_hop,
                communities,
            },
        );
    };
    let exportable = |prefix: &IpNet| {
        inputs
            .pools
            .values()
            .filter(|p| p.cidr.contains(prefix))
            .max_by_key(|p| p.cidr.prefix_len())
            .is_some_and(|p| !p.disable_bgp_export)
    };
    for block in inputs.blocks.values() {
        let affine = block.affinity.as_deref() == Some(inputs.local_node);
        if affine && exportable(&block.cidr) {
            export(block.cidr);
        }
        if affine {
            continue;
        }
        for (address, holder) in &block.borrowed {
            let host = IpNet::from(*address);
            if holder == inputs.local_node && exportable(&host) {
                export(host);
            }
        }
    }
    for cidr in services
        .iter()
        .flat_map(|c| c.service_cluster_ips.iter().chain(&c.service_external_ips))
    {
        export(*cidr);
    }
    problems.sort();
    problems.dedup();
    Some(BgpDesired {
        local_asn,
        router_id,
        local_ipv6,
        listen_port: listen_port_of(inputs.local_node),
        cluster_id,
        peers,
        exports,
        problems,
    })
}

/// One call the shell makes on the speaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpeakerCommand {
    /// Start the speaker ([`felis_bgp::io::Speaker::start`]); feed its `RibChange`s to
    /// [`learned_update`].
    Start(SpeakerConfig),
    /// Shut the speaker down ([`felis_bgp::io::Speaker::shutdown`]); its learned routes are
    /// gone: the shell applies `Update::LearnedRouteWithdrawn` for each.
    Stop,
    /// Add a peer ([`felis_bgp::io::Speaker::add_peer`]) after resolving `password` into
    /// `config.password`.
    AddPeer {
        /// The peer's configuration, without its password.
        config: PeerConfig,
        /// The password to resolve, if any.
        password: Option<SecretRef>,
    },
    /// Remove a peer ([`felis_bgp::io::Speaker::remove_peer`]).
    RemovePeer(IpAddr),
    /// Replace a peer's filters on its live session
    /// ([`felis_bgp::io::Speaker::set_peer_policy`]).
    SetPeerPolicy {
        /// The peer.
        address: IpAddr,
        /// Its new import and export policy.
        policy: PeerPolicy,
    },
    /// Announce a prefix ([`felis_bgp::io::Speaker::originate`]).
    Originate {
        /// The prefix.
        prefix: IpNet,
        /// Its next hop.
        next_hop: IpAddr,
    },
    /// Withdraw a prefix ([`felis_bgp::io::Speaker::withdraw`]).
    Withdraw(IpNet),
}

impl BgpDesired {
    /// The speaker's settings: listen on `[::]:<listen_port>`, reflect with `cluster_id`.
    pub fn speaker_config(&self) -> SpeakerConfig {
        let mut config = SpeakerConfig::new(self.local_asn, self.router_id);
        config.listen = Some(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            self.listen_port,
        ));
        config.cluster_id = self.cluster_id;
        config
    }

    /// The speaker's configuration of the peer at `address` (without its password).
    pub fn peer_config(&self, address: IpAddr, peer: &DesiredPeer) -> PeerConfig {
        let mut config = PeerConfig::new(address, peer.asn);
        config.port = peer.port;
        config.passive = peer.passive;
        config.max_restart_time = peer.max_restart_time;
        config.rr_client = peer.rr_client;
        config.next_hop_mode = peer.next_hop_mode;
        config.next_hop_v4 = Some(self.router_id);
        config.next_hop_v6 = self.local_ipv6;
        config.local_address = peer.local_address;
        config.ttl_security = peer.ttl_security;
        config.policy = peer.policy.clone();
        config
    }

    /// Each peer's kind, for [`StatusReport::new`].
    pub fn peer_kinds(&self) -> BTreeMap<IpAddr, PeerKind> {
        self.peers.iter().map(|(a, p)| (*a, p.kind)).collect()
    }
}

/// The speaker calls that take a speaker configured as `old` (`None`: no speaker) to `new`
/// (`None`: stop it). A change of AS, router id, listen port or cluster id restarts the
/// speaker; a changed peer is removed and added again, unless only its filters changed (those
/// are replaced on the live session); otherwise only the difference is applied: peers removed;
/// prefixes withdrawn, then announced; filters replaced; peers added.
pub fn plan(old: Option<&BgpDesired>, new: Option<&BgpDesired>) -> Vec<SpeakerCommand> {
    let mut commands = Vec::new();
    let Some(new) = new else {
        if old.is_some() {
            commands.push(SpeakerCommand::Stop);
        }
        return commands;
    };
    let old = match old {
        Some(old) if old.speaker_config() == new.speaker_config() => Some(old),
        Some(_) => {
            commands.push(SpeakerCommand::Stop);
            None
        }
        None => None,
    };
    if old.is_none() {
        commands.push(SpeakerCommand::Start(new.speaker_config()));
    }
    let no_peers = BTreeMap::new();
    let no_exports = BTreeMap::new();
    let (old_peers, old_exports) = old.map_or((&no_peers, &no_exports), |o| (&o.peers, &o.exports));
    // A peer's session: its configuration without the filters, which change live.
    let session = |d: &BgpDesired, address: &IpAddr, p: &DesiredPeer| {
        let mut config = d.peer_config(*address, p);
        config.policy = PeerPolicy::default();
        (config, p.password.clone())
    };
    let old_config = |address: &IpAddr| {
        old.zip(old_peers.get(address))
            .map(|(o, p)| session(o, address, p))
    };
    let mut policy_changes = Vec::new();
    for (address, old_peer) in old_peers {
        let kept = new.peers.get(address);
        if kept.map(|p| session(new, address, p)) != old_config(address) {
            commands.push(SpeakerCommand::RemovePeer(*address));
        } else if let Some(p) = kept
            && p.policy != old_peer.policy
        {
            policy_changes.push(SpeakerCommand::SetPeerPolicy {
                address: *address,
                policy: p.policy.clone(),
            });
        }
    }
    for prefix in old_exports.keys() {
        if !new.exports.contains_key(prefix) {
            commands.push(SpeakerCommand::Withdraw(*prefix));
        }
    }
    for (prefix, export) in &new.exports {
        if old_exports.get(prefix) != Some(export) {
            commands.push(SpeakerCommand::Originate {
                prefix: *prefix,
                next_hop: export.next_hop,
            });
        }
    }
    commands.extend(policy_changes);
    // Peers last: a session that comes up right away finds every export in the RIB (an
    // End-of-RIB sent before the announcements would make graceful-restart peers drop our
    // stale routes until they arrive).
    for (address, peer) in &new.peers {
        if old_config(address) != Some(session(new, address, peer)) {
            commands.push(SpeakerCommand::AddPeer {
                config: new.peer_config(*address, peer),
                password: peer.password.clone(),
            });
        }
    }
    commands
}

/// The path attributes that carry `communities` on an exported prefix: COMMUNITIES (RFC 1997)
/// for `aa:nn`, LARGE_COMMUNITY (RFC 8092, optional transitive, type 32) for `aa:nn:mm`.
pub fn path_attributes(communities: &BTreeSet<Community>) -> PathAttributes {
    let mut attributes = PathAttributes::default();
    let mut large = Vec::new();
    for community in communities {
        match *community {
            Community::Standard(asn, value) => {
                attributes
                    .communities
                    .push(felis_bgp::packet::update::Community(
                        (u32::from(asn) << 16) | u32::from(value),
                    ))
            }
            Community::Large(a, b, c) => {
                for part in [a, b, c] {
                    large.extend_from_slice(&part.to_be_bytes());
                }
            }
        }
    }
    if !large.is_empty() {
        attributes.other.push(RawAttribute {
            flags: 0xc0,
            code: 32,
            value: large,
        });
    }
    attributes
}

/// The calculation-graph fact a best-route change of the speaker gives.
pub fn learned_update(change: &RibChange) -> Update {
    match (change.kind, change.next_hop) {
        (ChangeKind::Added, Some(next_hop)) => Update::LearnedRoute(LearnedRoute {
            prefix: change.prefix,
            next_hop,
            peer: change.peer,
        }),
        _ => Update::LearnedRouteWithdrawn(change.prefix),
    }
}

/// The import and export policy of the peers `spec` gives: its filters' rules in order.
fn peer_policy(
    spec: &BgpPeerFacts,
    filters: &BTreeMap<String, BgpFilterFacts>,
    problems: &mut Vec<String>,
) -> PeerPolicy {
    let mut policy = PeerPolicy::default();
    for name in &spec.filters {
        let Some(filter) = filters.get(name) else {
            problems.push(format!(
                "BGPPeer {}: BGPFilter {name} does not exist; skipped",
                spec.name
            ));
            continue;
        };
        if filter.interface_rules > 0 {
            problems.push(format!(
                "BGPFilter {name}: rules with `interface` are not supported (Felis advertises \
                 no interface routes); they never match"
            ));
        }
        policy.import.v4.extend(filter.import.v4.iter().cloned());
        policy.import.v6.extend(filter.import.v6.iter().cloned());
        policy.export.v4.extend(filter.export.v4.iter().cloned());
        policy.export.v6.extend(filter.export.v6.iter().cloned());
    }
    policy
}

/// The node's route reflector cluster id, if it is a reflector.
fn cluster_id_of(node: &NodeFacts) -> Option<&str> {
    node.bgp
        .route_reflector_cluster_id
        .as_deref()
        .filter(|s| !s.is_empty())
}

fn secret_ref(password: &felis_api::bgp::BgpPassword) -> Option<SecretRef> {
    password.secret_key_ref.as_ref().map(|r| SecretRef {
        name: r.name.clone(),
        key: r.key.clone(),
        optional: r.optional.unwrap_or(false),
    })
}

/// A Go duration in whole seconds, capped to what BGP's 12-bit restart time field needs.
fn seconds(duration: &str) -> Option<u16> {
    let secs = felis_api::duration::parse_duration(duration).ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(secs.min(f64::from(u16::MAX)) as u16)
}

#[cfg(test)]
mod tests;
