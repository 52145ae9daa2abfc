//! The calculation graph: resources in, desired host state out.
//!
//! It follows Calico's felix route resolver: a route per local workload address on its veth, a
//! blackhole per block affine to this node, a route per remote block toward the node it is
//! affine to, and a /32 (/128) for each address borrowed from a block of another node. Each pool's
//! `vxlanMode` / `ipipMode` picks the route's device: VXLAN and IPIP `Always` encapsulate,
//! `CrossSubnet` encapsulates only when the remote node's address is outside this node's subnet
//! (its `bgp.ipv4Address` with prefix length), `Never` routes directly.
//!
//! **Who routes what.** Without BGP (`CalcGraph::new`), every remote block and borrowed address
//! is routed from IPAM. When the node runs BGP ([`CalcGraph::routed_by_bgp`], calico-node's
//! `CALICO_NETWORKING_BACKEND=bird`), Calico's split applies: the graph keeps the encapsulated
//! routes (VXLAN, IPIP) it derives from IPAM, and unencapsulated routes to remote blocks come
//! from BGP alone, written to the kernel by [`crate::bgp::fib`] with protocol 81
//! ([`felis_netlink::RouteProtocol::FELIS_BGP`]), never by the graph. Each learned route's device
//! is chosen by [`LearnedRouting::target`], a snapshot of the graph's pools, nodes and local
//! blocks ([`CalcGraph::learned_routing`]), so a million learned routes never enter the graph.
//!
//! Routes learned by BGP can also be given to the graph as facts ([`Update::LearnedRoute`]), as
//! tests of a mesh do: they are routed by the same [`LearnedRouting::target`], toward their next
//! hop, and replace an IPAM-derived route of exactly the same prefix. A learned route never
//! replaces a local block's blackhole or a local workload's route, and a route whose next hop is
//! this node is ignored. The BGP configuration of the node (peers, exports) is
//! [`CalcGraph::bgp_desired`], computed by [`crate::bgp`] from the same facts.
//!
//! Inputs are facts ([`Update`]); [`CalcGraph::desired`] is the full desired state, and
//! [`HostState::diff`] the smallest change between two of them. The graph is pure: the same set
//! of facts gives the same state whatever their order.
//!
//! ```text
//!  Node ─┐
//!  Pool ─┼─► CalcGraph ──► HostState { routes, vxlan, nat } ──diff──► reconcilers
//! Block ─┤
//!   WEP ─┘
//! ```

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::IpAddr;

use felis_api::ipam::EncapMode;
use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

use crate::bgp::BgpConfigFacts;
use crate::bgp::BgpDesired;
use crate::bgp::BgpFilterFacts;
use crate::bgp::BgpNodeFacts;
use crate::bgp::BgpPeerFacts;

/// VXLAN's overhead on IPv4 (outer IP, UDP, VXLAN and Ethernet headers).
pub const VXLAN_OVERHEAD: u32 = 50;
/// IPIP's overhead (the outer IPv4 header).
pub const IPIP_OVERHEAD: u32 = 20;

/// A node as the graph needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// Its IPv4 address with prefix length (`spec.bgp.ipv4Address`), the subnet for CrossSubnet.
    pub ipv4: Option<IpNet>,
    /// Its IPv6 address with prefix length.
    pub ipv6: Option<IpNet>,
    /// Its IPv4 VXLAN tunnel address and device MAC.
    pub vxlan_v4: Option<Vtep>,
    /// Its labels (selected by BGPPeer `nodeSelector` / `peerSelector`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its BGP settings (AS number, route reflector cluster ID).
    #[serde(default)]
    pub bgp: BgpNodeFacts,
}

/// A VXLAN tunnel endpoint: the tunnel device's address and MAC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Vtep {
    /// The tunnel device's address.
    pub address: IpAddr,
    /// The tunnel device's MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// A pool as the graph needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolFacts {
    /// The pool's name.
    pub name: String,
    /// Its CIDR.
    pub cidr: IpNet,
    /// IPIP mode.
    pub ipip_mode: EncapMode,
    /// VXLAN mode.
    pub vxlan_mode: EncapMode,
    /// Masquerade traffic leaving the pools.
    pub nat_outgoing: bool,
    /// Do not advertise the pool's blocks by BGP (`disableBGPExport`).
    #[serde(default)]
    pub disable_bgp_export: bool,
}

/// An IPAM block as the graph needs it: who it is affine to, and which of its addresses are
/// held by other nodes (borrowed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockFacts {
    /// The block's CIDR.
    pub cidr: IpNet,
    /// The node the block is affine to, if any.
    pub affinity: Option<String>,
    /// Addresses allocated to a node other than the affine one, with that node.
    pub borrowed: BTreeMap<IpAddr, String>,
}

/// A workload endpoint on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointFacts {
    /// The endpoint's key (namespace/name).
    pub key: String,
    /// The host side of its veth.
    pub interface: String,
    /// Its addresses (/32, /128).
    pub addresses: Vec<IpNet>,
}

/// A fact about the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// A node was created or changed.
    NodeSet(NodeFacts),
    /// A node was deleted.
    NodeDeleted(String),
    /// A pool was created or changed.
    PoolSet(PoolFacts),
    /// A pool was deleted.
    PoolDeleted(String),
    /// A block was created or changed.
    BlockSet(BlockFacts),
    /// A block was deleted.
    BlockDeleted(IpNet),
    /// A workload endpoint on this node was created or changed.
    EndpointSet(EndpointFacts),
    /// A workload endpoint on this node was deleted.
    EndpointDeleted(String),
    /// A BGPConfiguration (`default` or `node.<name>`) was created or changed.
    BgpConfigSet(BgpConfigFacts),
    /// A BGPConfiguration was deleted.
    BgpConfigDeleted(String),
    /// A BGPPeer was created or changed.
    BgpPeerSet(BgpPeerFacts),
    /// A BGPPeer was deleted.
    BgpPeerDeleted(String),
    /// A BGPFilter was created or changed.
    BgpFilterSet(BgpFilterFacts),
    /// A BGPFilter was deleted.
    BgpFilterDeleted(String),
    /// BGP's best route for a prefix appeared or changed (replaces any earlier one).
    LearnedRoute(LearnedRoute),
    /// BGP no longer has a route for the prefix.
    LearnedRouteWithdrawn(IpNet),
    /// The speaker stopped: every learned route is gone.
    LearnedRoutesCleared,
}

/// A best route learned from a BGP peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedRoute {
    /// The destination.
    pub prefix: IpNet,
    /// The BGP next hop (a node's address, unless a peer set another).
    pub next_hop: IpAddr,
    /// The peer it was learned from.
    pub peer: IpAddr,
}

/// Where a route sends its traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RouteTarget {
    /// A local workload: `dev <interface> scope link`.
    Workload {
        /// The veth's host side.
        interface: String,
    },
    /// A block affine to this node: `blackhole`, so unallocated addresses go nowhere.
    Blackhole,
    /// Unencapsulated, toward the node's address (resolved through the underlay's routes).
    Direct {
        /// The remote node's address.
        via: IpAddr,
    },
    /// VXLAN: `via <remote VTEP> dev vxlan.calico onlink`.
    Vxlan {
        /// The remote node's tunnel address.
        via: IpAddr,
    },
    /// IP-in-IP with the remote node's address as outer destination.
    Ipip {
        /// The remote node's address.
        via: IpAddr,
    },
}

/// The NAT sets: sources in `masquerade` going to destinations outside `all_pools` are
/// masqueraded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatSets {
    /// CIDRs of natOutgoing pools.
    pub masquerade: BTreeSet<IpNet>,
    /// CIDRs of every pool.
    pub all_pools: BTreeSet<IpNet>,
}

/// The host state this node should have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// Routes by destination.
    pub routes: BTreeMap<IpNet, RouteTarget>,
    /// This node's VXLAN device, when some pool uses VXLAN and the node has a tunnel address.
    pub local_vtep: Option<Vtep>,
    /// Remote VXLAN endpoints (static ARP + FDB entries), by node address.
    pub remote_vteps: BTreeMap<IpAddr, Vtep>,
    /// Whether some pool uses IPIP (so the IPIP device is needed).
    pub ipip: bool,
    /// NAT sets.
    pub nat: NatSets,
}

/// One change between two [`HostState`]s, in the order to apply it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Add or replace a route.
    RouteSet(IpNet, RouteTarget),
    /// Remove a route.
    RouteDel(IpNet),
    /// Create or change the local VXLAN device.
    VtepSet(Vtep),
    /// Remove the local VXLAN device.
    VtepDel,
    /// Add or change a remote VXLAN endpoint (static ARP + FDB toward `node_address`).
    RemoteVtepSet {
        /// The remote node's address (the FDB destination).
        node_address: IpAddr,
        /// Its tunnel address and MAC.
        vtep: Vtep,
    },
    /// Remove a remote VXLAN endpoint.
    RemoteVtepDel {
        /// The remote node's address.
        node_address: IpAddr,
        /// Its tunnel address and MAC.
        vtep: Vtep,
    },
    /// Replace the NAT sets.
    NatSet(NatSets),
}

impl HostState {
    /// The changes that turn `self` into `next`: devices before the routes that use them,
    /// routes removed before devices are.
    pub fn diff(&self, next: &HostState) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some(vtep) = next
            .local_vtep
            .as_ref()
            .filter(|v| self.local_vtep.as_ref() != Some(*v))
        {
            changes.push(Change::VtepSet(vtep.clone()));
        }
        for (node_address, vtep) in &next.remote_vteps {
            if self.remote_vteps.get(node_address) != Some(vtep) {
                if let Some(old) = self.remote_vteps.get(node_address) {
                    changes.push(Change::RemoteVtepDel {
                        node_address: *node_address,
                        vtep: old.clone(),
                    });
                }
                changes.push(Change::RemoteVtepSet {
                    node_address: *node_address,
                    vtep: vtep.clone(),
                });
            }
        }
        for (dst, target) in &next.routes {
            if self.routes.get(dst) != Some(target) {
                changes.push(Change::RouteSet(*dst, target.clone()));
            }
        }
        for dst in self.routes.keys() {
            if !next.routes.contains_key(dst) {
                changes.push(Change::RouteDel(*dst));
            }
        }
        for (node_address, vtep) in &self.remote_vteps {
            if !next.remote_vteps.contains_key(node_address) {
                changes.push(Change::RemoteVtepDel {
                    node_address: *node_address,
                    vtep: vtep.clone(),
                });
            }
        }
        if self.local_vtep.is_some() && next.local_vtep.is_none() {
            changes.push(Change::VtepDel);
        }
        if next.nat != self.nat {
            changes.push(Change::NatSet(next.nat.clone()));
        }
        changes
    }
}

/// The calculation graph of one node.
#[derive(Debug, Clone)]
pub struct CalcGraph {
    local_node: String,
    nodes: BTreeMap<String, NodeFacts>,
    pools: BTreeMap<String, PoolFacts>,
    blocks: BTreeMap<IpNet, BlockFacts>,
    endpoints: BTreeMap<String, EndpointFacts>,
    bgp_configs: BTreeMap<String, BgpConfigFacts>,
    bgp_peers: BTreeMap<String, BgpPeerFacts>,
    bgp_filters: BTreeMap<String, BgpFilterFacts>,
    learned: BTreeMap<IpNet, LearnedRoute>,
    routed_by_bgp: bool,
}

impl CalcGraph {
    /// An empty graph for the node named `local_node`.
    pub fn new(local_node: impl Into<String>) -> CalcGraph {
        CalcGraph {
            local_node: local_node.into(),
            nodes: BTreeMap::new(),
            pools: BTreeMap::new(),
            blocks: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            bgp_configs: BTreeMap::new(),
            bgp_peers: BTreeMap::new(),
            bgp_filters: BTreeMap::new(),
            learned: BTreeMap::new(),
            routed_by_bgp: false,
        }
    }

    /// The same graph for a node that runs BGP: unencapsulated routes to remote blocks and
    /// borrowed addresses are left to BGP (see the module docs).
    pub fn routed_by_bgp(mut self, routed_by_bgp: bool) -> CalcGraph {
        self.routed_by_bgp = routed_by_bgp;
        self
    }

    /// Whether unencapsulated remote routes are left to BGP.
    pub fn is_routed_by_bgp(&self) -> bool {
        self.routed_by_bgp
    }

    /// An empty graph for the same node and mode, keeping the learned routes (a datastore
    /// resync replaces the resources, not what BGP learned).
    pub fn emptied(&self) -> CalcGraph {
        CalcGraph {
            learned: self.learned.clone(),
            ..CalcGraph::new(self.local_node.clone()).routed_by_bgp(self.routed_by_bgp)
        }
    }

    /// What [`LearnedRouting::target`] needs to route learned prefixes, as of now.
    pub fn learned_routing(&self) -> LearnedRouting {
        let local = self.nodes.get(&self.local_node);
        let own = local
            .into_iter()
            .flat_map(|l| [l.ipv4, l.ipv6])
            .flatten()
            .map(|a| a.addr())
            .collect();
        let vteps = self
            .nodes
            .values()
            .flat_map(|n| {
                [n.ipv4, n.ipv6]
                    .into_iter()
                    .flatten()
                    .filter_map(move |a| n.vxlan_v4.clone().map(|v| (a.addr(), v)))
            })
            .collect();
        let local_blocks = self
            .blocks
            .values()
            .filter(|b| b.affinity.as_deref() == Some(self.local_node.as_str()))
            .map(|b| b.cidr)
            .collect();
        let vxlan_used = self
            .pools
            .values()
            .any(|p| p.vxlan_mode != EncapMode::Never);
        LearnedRouting {
            own,
            local_blocks,
            vteps,
            pools: self.pools.values().cloned().collect(),
            local_v4: local.and_then(|l| l.ipv4),
            local_v6: local.and_then(|l| l.ipv6),
            has_local_vtep: vxlan_used && local.is_some_and(|l| l.vxlan_v4.is_some()),
        }
    }

    /// Takes in one fact.
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::NodeSet(node) => {
                self.nodes.insert(node.name.clone(), node);
            }
            Update::NodeDeleted(name) => {
                self.nodes.remove(&name);
            }
            Update::PoolSet(pool) => {
                self.pools.insert(pool.name.clone(), pool);
            }
            Update::PoolDeleted(name) => {
                self.pools.remove(&name);
            }
            Update::BlockSet(block) => {
                self.blocks.insert(block.cidr, block);
            }
            Update::BlockDeleted(cidr) => {
                self.blocks.remove(&cidr);
            }
            Update::EndpointSet(endpoint) => {
                self.endpoints.insert(endpoint.key.clone(), endpoint);
            }
            Update::EndpointDeleted(key) => {
                self.endpoints.remove(&key);
            }
            Update::BgpConfigSet(config) => {
                self.bgp_configs.insert(config.name.clone(), config);
            }
            Update::BgpConfigDeleted(name) => {
                self.bgp_configs.remove(&name);
            }
            Update::BgpPeerSet(peer) => {
                self.bgp_peers.insert(peer.name.clone(), peer);
            }
            Update::BgpPeerDeleted(name) => {
                self.bgp_peers.remove(&name);
            }
            Update::BgpFilterSet(filter) => {
                self.bgp_filters.insert(filter.name.clone(), filter);
            }
            Update::BgpFilterDeleted(name) => {
                self.bgp_filters.remove(&name);
            }
            Update::LearnedRoute(route) => {
                self.learned.insert(route.prefix, route);
            }
            Update::LearnedRouteWithdrawn(prefix) => {
                self.learned.remove(&prefix);
            }
            Update::LearnedRoutesCleared => self.learned.clear(),
        }
    }

    /// The BGP configuration this node should run (speaker settings, peers, exports); `None`
    /// when the node is unknown or has no IPv4 address (it runs no BGP). See [`crate::bgp`].
    pub fn bgp_desired(&self) -> Option<BgpDesired> {
        crate::bgp::desired(&crate::bgp::BgpInputs {
            local_node: &self.local_node,
            nodes: &self.nodes,
            pools: &self.pools,
            blocks: &self.blocks,
            configs: &self.bgp_configs,
            peers: &self.bgp_peers,
            filters: &self.bgp_filters,
        })
    }

    /// The largest encapsulation overhead among the pools (VXLAN 50, IPIP 20, none 0): what
    /// the pod MTU gives up to the host's.
    pub fn encap_overhead(&self) -> u32 {
        self.pools
            .values()
            .map(|p| match (p.vxlan_mode, p.ipip_mode) {
                (EncapMode::Never, EncapMode::Never) => 0,
                (EncapMode::Never, _) => IPIP_OVERHEAD,
                _ => VXLAN_OVERHEAD,
            })
            .max()
            .unwrap_or(0)
    }

    /// Whether some pool uses VXLAN (so this node needs a tunnel address).
    pub fn uses_vxlan(&self) -> bool {
        self.pools
            .values()
            .any(|p| p.vxlan_mode != EncapMode::Never)
    }

    /// The host state this node should have, given every fact so far.
    pub fn desired(&self) -> HostState {
        let mut state = HostState::default();
        let local = self.nodes.get(&self.local_node);
        for pool in self.pools.values() {
            state.nat.all_pools.insert(pool.cidr);
            if pool.nat_outgoing {
                state.nat.masquerade.insert(pool.cidr);
            }
            state.ipip |= pool.ipip_mode != EncapMode::Never;
        }
        let vxlan_used = self
            .pools
            .values()
            .any(|p| p.vxlan_mode != EncapMode::Never);
        if vxlan_used {
            state.local_vtep = local.and_then(|n| n.vxlan_v4.clone());
            if state.local_vtep.is_some() {
                for node in self.nodes.values().filter(|n| n.name != self.local_node) {
                    if let (Some(vtep), Some(address)) = (&node.vxlan_v4, node.ipv4) {
                        state.remote_vteps.insert(address.addr(), vtep.clone());
                    }
                }
            }
        }
        for block in self.blocks.values() {
            match block.affinity.as_deref() {
                Some(node) if node == self.local_node => {
                    state.routes.insert(block.cidr, RouteTarget::Blackhole);
                }
                Some(node) => {
                    if let Some(target) = self
                        .route_to(node, block.cidr, local, &state)
                        .filter(|t| !self.is_left_to_bgp(t))
                    {
                        state.routes.insert(block.cidr, target);
                    }
                }
                None => {}
            }
            for (address, holder) in &block.borrowed {
                if holder == &self.local_node {
                    continue; // the workload route below covers it
                }
                let host = IpNet::from(*address);
                if let Some(target) = self
                    .route_to(holder, host, local, &state)
                    .filter(|t| !self.is_left_to_bgp(t))
                {
                    state.routes.insert(host, target);
                }
            }
        }
        self.add_learned_routes(&mut state);
        for endpoint in self.endpoints.values() {
            for address in &endpoint.addresses {
                let host = IpNet::new(address.addr(), address.max_prefix_len()).unwrap_or(*address);
                state.routes.insert(
                    host,
                    RouteTarget::Workload {
                        interface: endpoint.interface.clone(),
                    },
                );
            }
        }
        state
    }

    /// Routes for BGP-learned prefixes given as facts (see the module docs for the
    /// precedence): they replace IPAM-derived routes of the same prefix, never a local block's
    /// blackhole; local workload routes are added after them and win.
    fn add_learned_routes(&self, state: &mut HostState) {
        if self.learned.is_empty() {
            return;
        }
        let routing = self.learned_routing();
        for route in self.learned.values() {
            if state.routes.get(&route.prefix) == Some(&RouteTarget::Blackhole) {
                continue;
            }
            if let Some(target) = routing
                .target(route.prefix, route.next_hop)
                .filter(|t| !self.is_left_to_bgp(t))
            {
                state.routes.insert(route.prefix, target);
            }
        }
    }

    /// True for the routes the BGP FIB writes when the node runs BGP (unencapsulated ones).
    fn is_left_to_bgp(&self, target: &RouteTarget) -> bool {
        self.routed_by_bgp && matches!(target, RouteTarget::Direct { .. })
    }

    /// The route toward `node` for `dst` (a block or a borrowed address), by the mode of the pool
    /// that contains `dst`. `None` when the node or a needed tunnel address is not known yet.
    fn route_to(
        &self,
        node: &str,
        dst: IpNet,
        local: Option<&NodeFacts>,
        state: &HostState,
    ) -> Option<RouteTarget> {
        let remote = self.nodes.get(node)?;
        let remote_address = match dst {
            IpNet::V4(_) => remote.ipv4?,
            IpNet::V6(_) => remote.ipv6?,
        };
        self.route_via(
            remote_address.addr(),
            remote.vxlan_v4.as_ref(),
            dst,
            local,
            state,
        )
    }

    /// The route for `dst` toward the node address `via` (whose VXLAN endpoint is `vtep`), by
    /// the mode of the pool that contains `dst`; a prefix outside every pool is routed
    /// directly. `None` when VXLAN is needed but a tunnel address is missing.
    fn route_via(
        &self,
        via: IpAddr,
        vtep: Option<&Vtep>,
        dst: IpNet,
        local: Option<&NodeFacts>,
        state: &HostState,
    ) -> Option<RouteTarget> {
        let subnet = local.and_then(|l| match dst {
            IpNet::V4(_) => l.ipv4,
            IpNet::V6(_) => l.ipv6,
        });
        choose_target(
            self.pools.values(),
            via,
            vtep,
            dst,
            subnet,
            state.local_vtep.is_some(),
        )
    }
}

/// What routing a learned prefix needs from the graph: this node's addresses, subnets and
/// blocks, the pools' modes and the nodes' VXLAN endpoints. Small (it grows with nodes and
/// pools, not with routes); compare two to know whether learned routes need routing again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedRouting {
    /// This node's addresses: a route whose next hop is one of them is ignored.
    pub own: BTreeSet<IpAddr>,
    /// Blocks affine to this node: never routed elsewhere (they are blackholed here).
    pub local_blocks: BTreeSet<IpNet>,
    /// Each node address's VXLAN endpoint.
    pub vteps: BTreeMap<IpAddr, Vtep>,
    /// The pools.
    pub pools: Vec<PoolFacts>,
    /// This node's IPv4 address with its subnet (for CrossSubnet).
    pub local_v4: Option<IpNet>,
    /// This node's IPv6 address with its subnet.
    pub local_v6: Option<IpNet>,
    /// Whether this node has its VXLAN device (VXLAN routes need it).
    pub has_local_vtep: bool,
}

impl LearnedRouting {
    /// The route for a prefix learned with `next_hop`: by the mode of the pool containing it
    /// (VXLAN toward the next hop's VTEP, IPIP, or direct), as IPAM-derived routes are. `None`
    /// for a next hop of this node, a block of this node, a next hop of another family, or a
    /// VXLAN route whose endpoint is unknown.
    pub fn target(&self, prefix: IpNet, next_hop: IpAddr) -> Option<RouteTarget> {
        if self.own.contains(&next_hop)
            || prefix.addr().is_ipv4() != next_hop.is_ipv4()
            || self.local_blocks.contains(&prefix)
        {
            return None;
        }
        let subnet = match prefix {
            IpNet::V4(_) => self.local_v4,
            IpNet::V6(_) => self.local_v6,
        };
        choose_target(
            self.pools.iter(),
            next_hop,
            self.vteps.get(&next_hop),
            prefix,
            subnet,
            self.has_local_vtep,
        )
    }
}

/// The route for `dst` toward the node address `via` (whose VXLAN endpoint is `vtep`), by the
/// mode of the pool that contains `dst`; a prefix outside every pool is routed directly. `None`
/// when VXLAN is needed but a tunnel address (remote or local) is missing. `subnet` is this
/// node's address with its prefix length, for CrossSubnet.
fn choose_target<'a>(
    mut pools: impl Iterator<Item = &'a PoolFacts>,
    via: IpAddr,
    vtep: Option<&Vtep>,
    dst: IpNet,
    subnet: Option<IpNet>,
    has_local_vtep: bool,
) -> Option<RouteTarget> {
    let same_subnet = subnet.is_some_and(|subnet| subnet.trunc().contains(&via));
    let pool = pools.find(|p| p.cidr.contains(&dst));
    let (ipip, vxlan) = pool.map_or((EncapMode::Never, EncapMode::Never), |p| {
        (p.ipip_mode, p.vxlan_mode)
    });
    let encapsulate = |mode: EncapMode| match mode {
        EncapMode::Never => false,
        EncapMode::Always => true,
        EncapMode::CrossSubnet => !same_subnet,
    };
    if encapsulate(vxlan) {
        let vtep = vtep?;
        // Without a local VXLAN device the route could not be programmed.
        if !has_local_vtep {
            return None;
        }
        return Some(RouteTarget::Vxlan { via: vtep.address });
    }
    if encapsulate(ipip) && dst.addr().is_ipv4() {
        return Some(RouteTarget::Ipip { via });
    }
    Some(RouteTarget::Direct { via })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(name: &str, address: &str, vtep: Option<(&str, &str)>) -> Update {
        Update::NodeSet(NodeFacts {
            name: name.into(),
            ipv4: Some(net(address)),
            ipv6: None,
            vxlan_v4: vtep.map(|(a, m)| Vtep {
                address: ip(a),
                mac: m.into(),
            }),
            ..NodeFacts::default()
        })
    }

    fn pool(cidr: &str, ipip: EncapMode, vxlan: EncapMode, nat: bool) -> Update {
        Update::PoolSet(PoolFacts {
            name: format!("pool-{cidr}"),
            cidr: net(cidr),
            ipip_mode: ipip,
            vxlan_mode: vxlan,
            nat_outgoing: nat,
            disable_bgp_export: false,
        })
    }

    fn block(cidr: &str, node: &str) -> Update {
        Update::BlockSet(BlockFacts {
            cidr: net(cidr),
            affinity: Some(node.into()),
            borrowed: BTreeMap::new(),
        })
    }

    /// Three nodes: a and b share 10.0.1.0/24, c is in 10.0.2.0/24.
    fn cluster(ipip: EncapMode, vxlan: EncapMode) -> CalcGraph {
        let mut g = CalcGraph::new("a");
        for u in [
            node(
                "a",
                "10.0.1.10/24",
                Some(("10.244.0.0", "66:aa:aa:aa:aa:aa")),
            ),
            node(
                "b",
                "10.0.1.11/24",
                Some(("10.244.0.64", "66:bb:bb:bb:bb:bb")),
            ),
            node(
                "c",
                "10.0.2.12/24",
                Some(("10.244.0.128", "66:cc:cc:cc:cc:cc")),
            ),
            pool("10.244.0.0/16", ipip, vxlan, true),
            block("10.244.0.0/26", "a"),
            block("10.244.0.64/26", "b"),
            block("10.244.0.128/26", "c"),
        ] {
            g.apply(u);
        }
        g
    }

    #[test]
    fn local_blocks_blackhole_and_local_workloads_route_to_their_veth() {
        let mut g = cluster(EncapMode::Never, EncapMode::Never);
        g.apply(Update::EndpointSet(EndpointFacts {
            key: "ns/pod".into(),
            interface: "cali1234567890a".into(),
            addresses: vec![net("10.244.0.5/32")],
        }));
        let state = g.desired();
        assert_eq!(state.routes[&net("10.244.0.0/26")], RouteTarget::Blackhole);
        assert_eq!(
            state.routes[&net("10.244.0.5/32")],
            RouteTarget::Workload {
                interface: "cali1234567890a".into()
            }
        );
    }

    #[test]
    fn vxlan_cross_subnet_is_direct_within_the_subnet_and_vxlan_across() {
        let state = cluster(EncapMode::Never, EncapMode::CrossSubnet).desired();
        assert_eq!(
            state.routes[&net("10.244.0.64/26")],
            RouteTarget::Direct {
                via: ip("10.0.1.11")
            }
        );
        assert_eq!(
            state.routes[&net("10.244.0.128/26")],
            RouteTarget::Vxlan {
                via: ip("10.244.0.128")
            }
        );
        assert_eq!(state.local_vtep.unwrap().address, ip("10.244.0.0"));
        assert_eq!(state.remote_vteps.len(), 2);
    }

    #[test]
    fn vxlan_always_encapsulates_everything() {
        let state = cluster(EncapMode::Never, EncapMode::Always).desired();
        assert_eq!(
            state.routes[&net("10.244.0.64/26")],
            RouteTarget::Vxlan {
                via: ip("10.244.0.64")
            }
        );
    }

    #[test]
    fn ipip_cross_subnet_encapsulates_only_across_subnets() {
        let state = cluster(EncapMode::CrossSubnet, EncapMode::Never).desired();
        assert_eq!(
            state.routes[&net("10.244.0.64/26")],
            RouteTarget::Direct {
                via: ip("10.0.1.11")
            }
        );
        assert_eq!(
            state.routes[&net("10.244.0.128/26")],
            RouteTarget::Ipip {
                via: ip("10.0.2.12")
            }
        );
        assert!(state.ipip);
        assert!(
            state.local_vtep.is_none(),
            "no VXLAN device without a VXLAN pool"
        );
    }

    #[test]
    fn never_routes_directly_even_across_subnets() {
        let state = cluster(EncapMode::Never, EncapMode::Never).desired();
        assert_eq!(
            state.routes[&net("10.244.0.128/26")],
            RouteTarget::Direct {
                via: ip("10.0.2.12")
            }
        );
    }

    #[test]
    fn borrowed_addresses_get_host_routes_to_their_holder() {
        let mut g = cluster(EncapMode::Never, EncapMode::CrossSubnet);
        // c borrowed an address from a's block: a must not blackhole it.
        g.apply(Update::BlockSet(BlockFacts {
            cidr: net("10.244.0.0/26"),
            affinity: Some("a".into()),
            borrowed: [(ip("10.244.0.9"), "c".to_string())].into(),
        }));
        let state = g.desired();
        assert_eq!(
            state.routes[&net("10.244.0.9/32")],
            RouteTarget::Vxlan {
                via: ip("10.244.0.128")
            }
        );
        assert_eq!(state.routes[&net("10.244.0.0/26")], RouteTarget::Blackhole);
    }

    #[test]
    fn pod_mtu_overhead_follows_the_encapsulations_in_use() {
        assert_eq!(
            cluster(EncapMode::Never, EncapMode::Never).encap_overhead(),
            0
        );
        assert_eq!(
            cluster(EncapMode::CrossSubnet, EncapMode::Never).encap_overhead(),
            20
        );
        let mut g = cluster(EncapMode::Always, EncapMode::Never);
        g.apply(pool(
            "10.96.0.0/20",
            EncapMode::Never,
            EncapMode::CrossSubnet,
            false,
        ));
        assert_eq!(g.encap_overhead(), 50);
    }

    #[test]
    fn nat_sets_hold_natoutgoing_pools_and_all_pools() {
        let mut g = cluster(EncapMode::Never, EncapMode::Never);
        g.apply(pool(
            "10.96.0.0/20",
            EncapMode::Never,
            EncapMode::Never,
            false,
        ));
        let nat = g.desired().nat;
        assert_eq!(nat.masquerade, [net("10.244.0.0/16")].into());
        assert_eq!(
            nat.all_pools,
            [net("10.244.0.0/16"), net("10.96.0.0/20")].into()
        );
    }

    #[test]
    fn a_remote_block_of_an_unknown_node_gets_no_route_until_the_node_appears() {
        let mut g = CalcGraph::new("a");
        g.apply(node("a", "10.0.1.10/24", None));
        g.apply(pool(
            "10.244.0.0/16",
            EncapMode::Never,
            EncapMode::Never,
            false,
        ));
        g.apply(block("10.244.0.64/26", "b"));
        assert!(g.desired().routes.is_empty());
        g.apply(node("b", "10.0.1.11/24", None));
        assert_eq!(g.desired().routes.len(), 1);
    }

    #[test]
    fn diff_orders_devices_before_routes_and_removals_last() {
        let before = HostState::default();
        let after = cluster(EncapMode::Never, EncapMode::Always).desired();
        let changes = before.diff(&after);
        assert!(matches!(changes.first(), Some(Change::VtepSet(_))));
        let back = after.diff(&before);
        assert!(matches!(back.iter().rev().nth(1), Some(Change::VtepDel)));
        assert!(matches!(back.last(), Some(Change::NatSet(_))));
        assert!(after.diff(&after).is_empty());
    }

    #[test]
    fn under_bgp_unencapsulated_remote_blocks_are_left_to_bgp_and_encapsulated_ones_stay() {
        let mut g = cluster(EncapMode::Never, EncapMode::CrossSubnet).routed_by_bgp(true);
        g.apply(Update::BlockSet(BlockFacts {
            cidr: net("10.244.1.0/26"),
            affinity: Some("c".into()),
            borrowed: BTreeMap::from([(ip("10.244.1.5"), "b".to_string())]),
        }));
        let state = g.desired();
        // b shares the subnet: direct, so BGP's; c is across: VXLAN, the graph's.
        assert!(!state.routes.contains_key(&net("10.244.0.64/26")));
        assert!(!state.routes.contains_key(&net("10.244.1.5/32")));
        assert_eq!(
            state.routes[&net("10.244.1.0/26")],
            RouteTarget::Vxlan {
                via: ip("10.244.0.128")
            }
        );
        assert_eq!(
            state.routes[&net("10.244.0.128/26")],
            RouteTarget::Vxlan {
                via: ip("10.244.0.128")
            }
        );
        assert_eq!(state.routes[&net("10.244.0.0/26")], RouteTarget::Blackhole);
        // A resync snapshot keeps the mode.
        assert!(g.emptied().is_routed_by_bgp());
        let never = cluster(EncapMode::Never, EncapMode::Never)
            .routed_by_bgp(true)
            .desired();
        assert_eq!(
            never.routes.keys().copied().collect::<Vec<_>>(),
            vec![net("10.244.0.0/26")]
        );
    }

    #[test]
    fn learned_routing_routes_like_ipam_and_skips_own_and_local_blocks() {
        let g = cluster(EncapMode::CrossSubnet, EncapMode::Never);
        let routing = g.learned_routing();
        assert_eq!(
            routing.target(net("10.244.0.64/26"), ip("10.0.1.11")),
            Some(RouteTarget::Direct {
                via: ip("10.0.1.11")
            })
        );
        assert_eq!(
            routing.target(net("10.244.0.128/26"), ip("10.0.2.12")),
            Some(RouteTarget::Ipip {
                via: ip("10.0.2.12")
            })
        );
        // Outside every pool: direct, whatever the subnet.
        assert_eq!(
            routing.target(net("192.168.0.0/16"), ip("10.0.2.12")),
            Some(RouteTarget::Direct {
                via: ip("10.0.2.12")
            })
        );
        assert_eq!(routing.target(net("10.244.0.64/26"), ip("10.0.1.10")), None);
        assert_eq!(routing.target(net("10.244.0.0/26"), ip("10.0.1.11")), None);
        assert_eq!(
            routing.target(net("10.244.0.64/26"), ip("2001:db8::1")),
            None
        );
        // Learned facts on a BGP-routed graph keep only the encapsulated ones.
        let mut g = cluster(EncapMode::CrossSubnet, EncapMode::Never).routed_by_bgp(true);
        for (prefix, hop) in [
            ("10.250.0.0/26", "10.0.1.11"),
            ("10.244.2.0/26", "10.0.2.12"),
        ] {
            g.apply(Update::LearnedRoute(LearnedRoute {
                prefix: net(prefix),
                next_hop: ip(hop),
                peer: ip(hop),
            }));
        }
        let state = g.desired();
        assert!(!state.routes.contains_key(&net("10.250.0.0/26")));
        assert_eq!(
            state.routes[&net("10.244.2.0/26")],
            RouteTarget::Ipip {
                via: ip("10.0.2.12")
            }
        );
    }

    fn arb_update() -> impl Strategy<Value = Update> {
        let names = prop::sample::select(vec!["a", "b", "c"]);
        prop_oneof![
            (names.clone(), 1u8..4, any::<bool>()).prop_map(|(n, subnet, vtep)| {
                let index = n.as_bytes()[0] - b'a';
                Update::NodeSet(NodeFacts {
                    name: n.into(),
                    ipv4: Some(IpNet::V4(
                        ipnet::Ipv4Net::new(Ipv4Addr::new(10, 0, subnet, 10 + index), 24).unwrap(),
                    )),
                    ipv6: None,
                    vxlan_v4: vtep.then(|| Vtep {
                        address: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 64 * index)),
                        mac: format!("66:00:00:00:00:0{index}"),
                    }),
                    ..NodeFacts::default()
                })
            }),
            names.clone().prop_map(|n| Update::NodeDeleted(n.into())),
            (0u8..4, names.clone())
                .prop_map(|(b, n)| { block(&format!("10.244.0.{}/26", 64 * u32::from(b)), n) }),
            (0u8..3).prop_map(|m| {
                let mode =
                    [EncapMode::Never, EncapMode::Always, EncapMode::CrossSubnet][m as usize];
                pool("10.244.0.0/16", EncapMode::Never, mode, m == 1)
            }),
        ]
    }

    proptest! {
        /// The desired state depends only on the final facts, not on their order or repetition.
        #[test]
        fn desired_state_is_independent_of_update_order(
            updates in prop::collection::vec(arb_update(), 1..30),
            seed in any::<u64>(),
        ) {
            // Keep the last update per object: that is the final fact set.
            let mut last: BTreeMap<String, Update> = BTreeMap::new();
            for u in &updates {
                let key = match u {
                    Update::NodeSet(n) => format!("node/{}", n.name),
                    Update::NodeDeleted(n) => format!("node/{n}"),
                    Update::PoolSet(p) => format!("pool/{}", p.name),
                    Update::PoolDeleted(p) => format!("pool/{p}"),
                    Update::BlockSet(b) => format!("block/{}", b.cidr),
                    Update::BlockDeleted(b) => format!("block/{b}"),
                    Update::EndpointSet(e) => format!("ep/{}", e.key),
                    Update::EndpointDeleted(e) => format!("ep/{e}"),
                    Update::BgpConfigSet(c) => format!("bgpconfig/{}", c.name),
                    Update::BgpConfigDeleted(c) => format!("bgpconfig/{c}"),
                    Update::BgpPeerSet(p) => format!("bgppeer/{}", p.name),
                    Update::BgpPeerDeleted(p) => format!("bgppeer/{p}"),
                    Update::BgpFilterSet(f) => format!("bgpfilter/{}", f.name),
                    Update::BgpFilterDeleted(f) => format!("bgpfilter/{f}"),
                    Update::LearnedRoute(r) => format!("learned/{}", r.prefix),
                    Update::LearnedRouteWithdrawn(p) => format!("learned/{p}"),
                    Update::LearnedRoutesCleared => "learned".to_string(),
                };
                last.insert(key, u.clone());
            }
            let mut in_order = CalcGraph::new("a");
            for u in updates {
                in_order.apply(u);
            }
            let mut finals: Vec<Update> = last.into_values().collect();
            // A deterministic shuffle from the seed.
            let n = finals.len();
            let mut s = seed;
            for i in (1..n).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                finals.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut shuffled = CalcGraph::new("a");
            for u in finals.iter().cloned().chain(finals.iter().cloned()) {
                shuffled.apply(u);
            }
            prop_assert_eq!(in_order.desired(), shuffled.desired());
        }

        /// Applying the diff between two states to the first gives the second.
        #[test]
        fn diff_then_apply_reaches_the_target(
            a in prop::collection::vec(arb_update(), 0..20),
            b in prop::collection::vec(arb_update(), 0..20),
        ) {
            let state = |updates: Vec<Update>| {
                let mut g = CalcGraph::new("a");
                for u in updates { g.apply(u); }
                g.desired()
            };
            let (from, to) = (state(a), state(b));
            let mut reached = from.clone();
            for change in from.diff(&to) {
                match change {
                    Change::RouteSet(dst, t) => { reached.routes.insert(dst, t); }
                    Change::RouteDel(dst) => { reached.routes.remove(&dst); }
                    Change::VtepSet(v) => reached.local_vtep = Some(v),
                    Change::VtepDel => reached.local_vtep = None,
                    Change::RemoteVtepSet { node_address, vtep } => {
                        reached.remote_vteps.insert(node_address, vtep);
                    }
                    Change::RemoteVtepDel { node_address, .. } => {
                        reached.remote_vteps.remove(&node_address);
                    }
                    Change::NatSet(n) => reached.nat = n,
                }
            }
            reached.ipip = to.ipip;
            prop_assert_eq!(reached, to);
        }
    }
}
