//! BGP-learned routes for the kernel FIB: which route each learned prefix gets. Pure.
//!
//! Calico splits routing between felix and BIRD: felix programs the encapsulated routes it
//! derives from IPAM (VXLAN; IPIP here too), BIRD's `protocol kernel` writes the rest, the
//! unencapsulated routes BGP learned, as `proto bird`. Felis does the same with its own speaker:
//! the calculation graph ([`crate::calc::CalcGraph::routed_by_bgp`]) leaves unencapsulated remote
//! routes alone, and [`Fib`] turns each best-route change of the speaker into at most one
//! kernel change, with protocol [`FIB_PROTOCOL`] (81):
//!
//! ```text
//!  speaker RibChange ──► Learned ──► Fib::apply ──► RouteOp (replace / delete, proto 81)
//!  graph ──► LearnedRouting ──┐                                     │
//!  next hop lookups ──────────┴──► Fib::reroute ──► RouteOp ─────────┴──► RouteWriter (batched)
//! ```
//!
//! A learned prefix gets a kernel route when [`LearnedRouting::target`] says `Direct` (the pool
//! containing it is unencapsulated toward that next hop, or no pool contains it) and the next
//! hop resolves, as BIRD's `gateway recursive` does, to a gateway and interface. Other targets
//! (VXLAN, IPIP) are the graph's, programmed from IPAM; a next hop of this node, a local block
//! or an unreachable next hop gets nothing (until the next [`Fib::reroute`]).
//!
//! Memory: a million routes are kept as 12-byte entries (address and length of the prefix, an
//! index into the few distinct next hops), not as [`LearnedRoute`](crate::calc::LearnedRoute)s; the
//! kernel changes are produced through a callback so the caller writes them in bounded chunks.
//! The maps are `HashMap`s: the order of kernel writes does not matter and a million-entry
//! `BTreeMap` costs twice the memory.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;

use felis_netlink::Ifindex;
use felis_netlink::Route;
use felis_netlink::RouteOp;
use felis_netlink::RouteProtocol;
use ipnet::IpNet;
use ipnet::Ipv4Net;
use ipnet::Ipv6Net;
use serde::Deserialize;
use serde::Serialize;

use crate::calc::LearnedRouting;
use crate::calc::RouteTarget;

/// The route protocol of BGP-learned routes Felis writes (Calico's BIRD writes `proto bird`,
/// 12). See [`felis_netlink::RouteProtocol::FELIS_BGP`].
pub const FIB_PROTOCOL: RouteProtocol = RouteProtocol::FELIS_BGP;

/// One best-route change of the speaker, without its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learned {
    /// The prefix.
    pub prefix: IpNet,
    /// The best route's next hop; `None` when no route is left (withdrawn).
    pub next_hop: Option<IpAddr>,
}

impl Learned {
    /// The change a speaker's [`felis_bgp::rib::RibChange`] is.
    pub fn from_change(change: &felis_bgp::rib::RibChange) -> Learned {
        let next_hop = match change.kind {
            felis_bgp::rib::ChangeKind::Added => change.next_hop,
            felis_bgp::rib::ChangeKind::Removed => None,
        };
        Learned {
            prefix: change.prefix.trunc(),
            next_hop,
        }
    }
}

/// Where a next hop leads: the gateway and interface the kernel uses toward it (itself when it
/// is on a connected subnet); `None` when nothing forwards there.
pub type Resolved = Option<(IpAddr, Ifindex)>;

/// The learned routes and what decides their kernel routes.
#[derive(Debug, Default)]
pub struct Fib {
    v4: HashMap<(u32, u8), u32>,
    v6: HashMap<(u128, u8), u32>,
    hops: Vec<IpAddr>,
    hop_ids: HashMap<IpAddr, u32>,
    routing: LearnedRouting,
    resolved: BTreeMap<IpAddr, Resolved>,
}

impl Fib {
    /// An empty table (no routes; every prefix `Direct` until [`Fib::reroute`] says otherwise).
    pub fn new() -> Fib {
        Fib::default()
    }

    /// How many prefixes have a learned route.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// True when no prefix has a learned route.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The distinct next hops of learned routes (to resolve before [`Fib::reroute`]).
    pub fn next_hops(&self) -> Vec<IpAddr> {
        let mut used = vec![false; self.hops.len()];
        for id in self.v4.values().chain(self.v6.values()) {
            if let Some(u) = used.get_mut(*id as usize) {
                *u = true;
            }
        }
        self.hops
            .iter()
            .zip(used)
            .filter_map(|(hop, used)| used.then_some(*hop))
            .collect()
    }

    /// Next hops of `changes` not resolved yet: resolve them and give them to
    /// [`Fib::add_resolved`] before [`Fib::apply`].
    pub fn unresolved(&self, changes: &[Learned]) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = changes
            .iter()
            .filter_map(|c| c.next_hop)
            .filter(|hop| !self.resolved.contains_key(hop))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Records where a next hop that no route uses yet leads (a next hop some route uses
    /// changes only through [`Fib::reroute`], which rewrites its routes).
    pub fn add_resolved(&mut self, next_hop: IpAddr, resolved: Resolved) {
        self.resolved.entry(next_hop).or_insert(resolved);
    }

    /// Applies best-route changes; `each` gets the kernel change each one needs, if any.
    pub fn apply(&mut self, changes: &[Learned], mut each: impl FnMut(RouteOp)) {
        for change in changes {
            let old = self.remove(change.prefix);
            let old_route = old.and_then(|hop| self.route(change.prefix, hop));
            let new_route = change.next_hop.and_then(|hop| {
                self.insert(change.prefix, hop);
                self.route(change.prefix, hop)
            });
            emit(old_route, new_route, &mut each);
        }
    }

    /// Changes what decides the routes (the graph's pools, nodes and blocks; where next hops
    /// lead) and gives `each` the kernel change of every route that differs as a result.
    pub fn reroute(
        &mut self,
        routing: LearnedRouting,
        resolved: BTreeMap<IpAddr, Resolved>,
        mut each: impl FnMut(RouteOp),
    ) {
        if routing == self.routing && resolved == self.resolved {
            return;
        }
        let old_routing = std::mem::replace(&mut self.routing, routing);
        let old_resolved = std::mem::replace(&mut self.resolved, resolved);
        for (prefix, hop) in self.entries() {
            let old = route_for(&old_routing, &old_resolved, prefix, hop);
            let new = self.route(prefix, hop);
            emit(old, new, &mut each);
        }
    }

    /// Forgets every learned route (the speaker stopped); `each` gets the deletes.
    pub fn clear(&mut self, mut each: impl FnMut(RouteOp)) {
        for (prefix, hop) in self.entries() {
            if let Some(route) = self.route(prefix, hop) {
                each(RouteOp::Delete(route));
            }
        }
        self.v4 = HashMap::new();
        self.v6 = HashMap::new();
    }

    /// Every kernel route the learned routes need.
    pub fn routes(&self, mut each: impl FnMut(Route)) {
        for (prefix, hop) in self.entries() {
            if let Some(route) = self.route(prefix, hop) {
                each(route);
            }
        }
    }

    /// The kernel route `prefix` needs now, if any.
    pub fn wanted(&self, prefix: IpNet) -> Option<Route> {
        let hop = self.next_hop(prefix)?;
        self.route(prefix, hop)
    }

    /// True when `installed` (a route of ours found in the kernel) is what its prefix needs.
    pub fn is_wanted(&self, installed: &Route) -> bool {
        self.wanted(installed.dst).is_some_and(|want| {
            want.gateway == installed.gateway
                && want.ifindex == installed.ifindex
                && installed.metric.is_none()
                && installed.table == want.table
        })
    }

    /// The learned next hop of `prefix`.
    pub fn next_hop(&self, prefix: IpNet) -> Option<IpAddr> {
        let id = match prefix {
            IpNet::V4(p) => self.v4.get(&pack_v4(p)),
            IpNet::V6(p) => self.v6.get(&pack_v6(p)),
        }?;
        self.hops.get(*id as usize).copied()
    }

    fn route(&self, prefix: IpNet, hop: IpAddr) -> Option<Route> {
        route_for(&self.routing, &self.resolved, prefix, hop)
    }

    fn entries(&self) -> impl Iterator<Item = (IpNet, IpAddr)> + '_ {
        let v4 = self.v4.iter().filter_map(|(key, id)| {
            let hop = self.hops.get(*id as usize)?;
            Some((IpNet::V4(unpack_v4(*key)?), *hop))
        });
        let v6 = self.v6.iter().filter_map(|((addr, len), id)| {
            let hop = self.hops.get(*id as usize)?;
            let net = Ipv6Net::new(Ipv6Addr::from(*addr), *len).ok()?;
            Some((IpNet::V6(net), *hop))
        });
        v4.chain(v6)
    }

    fn insert(&mut self, prefix: IpNet, hop: IpAddr) {
        let id = match self.hop_ids.get(&hop) {
            Some(id) => *id,
            None => {
                let id = u32::try_from(self.hops.len()).unwrap_or(u32::MAX);
                self.hops.push(hop);
                self.hop_ids.insert(hop, id);
                id
            }
        };
        match prefix {
            IpNet::V4(p) => self.v4.insert(pack_v4(p), id),
            IpNet::V6(p) => self.v6.insert(pack_v6(p), id),
        };
    }

    fn remove(&mut self, prefix: IpNet) -> Option<IpAddr> {
        let id = match prefix {
            IpNet::V4(p) => self.v4.remove(&pack_v4(p)),
            IpNet::V6(p) => self.v6.remove(&pack_v6(p)),
        }?;
        self.hops.get(id as usize).copied()
    }
}

/// The kernel route for `prefix` learned via `hop` (see the module docs).
fn route_for(
    routing: &LearnedRouting,
    resolved: &BTreeMap<IpAddr, Resolved>,
    prefix: IpNet,
    hop: IpAddr,
) -> Option<Route> {
    match routing.target(prefix, hop)? {
        RouteTarget::Direct { via } => {
            let (gateway, ifindex) = (*resolved.get(&via)?)?;
            Some(
                Route::new(prefix)
                    .via(gateway)
                    .dev(ifindex)
                    .protocol(FIB_PROTOCOL),
            )
        }
        _ => None,
    }
}

fn emit(old: Option<Route>, new: Option<Route>, each: &mut impl FnMut(RouteOp)) {
    match (old, new) {
        (old, Some(new)) if old.as_ref() != Some(&new) => each(RouteOp::Replace(new)),
        (Some(old), None) => each(RouteOp::Delete(old)),
        _ => {}
    }
}

fn pack_v4(net: Ipv4Net) -> (u32, u8) {
    (u32::from(net.addr()), net.prefix_len())
}

fn unpack_v4((addr, len): (u32, u8)) -> Option<Ipv4Net> {
    Ipv4Net::new(Ipv4Addr::from(addr), len).ok()
}

fn pack_v6(net: Ipv6Net) -> (u128, u8) {
    (u128::from(net.addr()), net.prefix_len())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::calc::PoolFacts;
    use felis_api::ipam::EncapMode;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn learned(prefix: &str, hop: Option<&str>) -> Learned {
        Learned {
            prefix: net(prefix),
            next_hop: hop.map(ip),
        }
    }

    fn pool(cidr: &str, ipip: EncapMode, vxlan: EncapMode) -> PoolFacts {
        PoolFacts {
            name: cidr.into(),
            cidr: net(cidr),
            ipip_mode: ipip,
            vxlan_mode: vxlan,
            nat_outgoing: false,
            disable_bgp_export: false,
        }
    }

    fn routing() -> LearnedRouting {
        LearnedRouting {
            own: BTreeSet::from([ip("10.0.0.1")]),
            local_blocks: BTreeSet::from([net("10.65.0.0/26")]),
            local_v4: Some(net("10.0.0.1/24")),
            ..LearnedRouting::default()
        }
    }

    fn resolved() -> BTreeMap<IpAddr, Resolved> {
        BTreeMap::from([
            (ip("10.0.0.2"), Some((ip("10.0.0.2"), Ifindex(2)))),
            (ip("10.0.0.3"), Some((ip("10.0.0.3"), Ifindex(2)))),
            (ip("10.1.0.9"), Some((ip("10.0.0.254"), Ifindex(2)))),
        ])
    }

    fn fib() -> Fib {
        let mut fib = Fib::new();
        fib.reroute(routing(), resolved(), |_| {});
        fib
    }

    fn ops(fib: &mut Fib, changes: &[Learned]) -> Vec<RouteOp> {
        let mut out = Vec::new();
        fib.apply(changes, |op| out.push(op));
        out
    }

    fn direct(prefix: &str, gateway: &str) -> Route {
        Route::new(net(prefix))
            .via(ip(gateway))
            .dev(Ifindex(2))
            .protocol(FIB_PROTOCOL)
    }

    #[test]
    fn a_learned_block_is_replaced_in_with_protocol_81_via_its_next_hop() {
        let mut fib = fib();
        let out = ops(&mut fib, &[learned("10.65.1.0/26", Some("10.0.0.2"))]);
        assert_eq!(
            out,
            vec![RouteOp::Replace(direct("10.65.1.0/26", "10.0.0.2"))]
        );
        assert_eq!(out[0].route().protocol, RouteProtocol(81));
        assert_eq!(fib.len(), 1);
    }

    #[test]
    fn a_recursive_next_hop_goes_through_the_gateway_the_kernel_uses() {
        let mut fib = fib();
        let out = ops(&mut fib, &[learned("192.168.9.0/24", Some("10.1.0.9"))]);
        assert_eq!(
            out,
            vec![RouteOp::Replace(direct("192.168.9.0/24", "10.0.0.254"))]
        );
    }

    #[test]
    fn a_new_next_hop_replaces_and_a_withdrawal_deletes() {
        let mut fib = fib();
        ops(&mut fib, &[learned("10.65.1.0/26", Some("10.0.0.2"))]);
        let out = ops(
            &mut fib,
            &[
                learned("10.65.1.0/26", Some("10.0.0.3")),
                learned("10.65.1.0/26", Some("10.0.0.3")),
                learned("10.65.1.0/26", None),
                learned("10.65.9.0/26", None),
            ],
        );
        assert_eq!(
            out,
            vec![
                RouteOp::Replace(direct("10.65.1.0/26", "10.0.0.3")),
                RouteOp::Delete(direct("10.65.1.0/26", "10.0.0.3")),
            ]
        );
        assert!(fib.is_empty());
    }

    #[test]
    fn own_next_hops_local_blocks_and_unresolved_next_hops_get_no_route() {
        let mut fib = fib();
        let out = ops(
            &mut fib,
            &[
                learned("10.65.2.0/26", Some("10.0.0.1")),
                learned("10.65.0.0/26", Some("10.0.0.2")),
                learned("10.65.3.0/26", Some("10.9.9.9")),
                learned("10.65.4.0/26", Some("2001:db8::1")),
            ],
        );
        assert_eq!(out, vec![]);
        assert_eq!(
            fib.unresolved(&[learned("10.65.3.0/26", Some("10.9.9.9"))]),
            vec![ip("10.9.9.9")]
        );
    }

    #[test]
    fn encapsulated_pools_are_left_to_the_graph_and_cross_subnet_splits_by_next_hop() {
        let mut fib = fib();
        let mut routing = routing();
        routing.pools = vec![
            pool("10.65.0.0/16", EncapMode::CrossSubnet, EncapMode::Never),
            pool("10.66.0.0/16", EncapMode::Always, EncapMode::Never),
        ];
        fib.reroute(routing, resolved(), |_| {});
        let out = ops(
            &mut fib,
            &[
                learned("10.65.1.0/26", Some("10.0.0.2")), // same subnet: direct
                learned("10.65.2.0/26", Some("10.1.0.9")), // other subnet: IPIP (graph's)
                learned("10.66.1.0/26", Some("10.0.0.2")), // IPIP always (graph's)
            ],
        );
        assert_eq!(
            out,
            vec![RouteOp::Replace(direct("10.65.1.0/26", "10.0.0.2"))]
        );
    }

    #[test]
    fn reroute_rewrites_only_the_routes_whose_route_changed() {
        let mut fib = fib();
        ops(
            &mut fib,
            &[
                learned("10.65.1.0/26", Some("10.0.0.2")),
                learned("10.65.2.0/26", Some("10.0.0.3")),
                learned("10.66.1.0/26", Some("10.0.0.3")),
            ],
        );
        // 10.0.0.3 becomes unreachable; 10.66.0.0/16 becomes an IPIP pool.
        let mut routing = routing();
        routing.pools = vec![pool("10.66.0.0/16", EncapMode::Always, EncapMode::Never)];
        let mut resolved = resolved();
        resolved.insert(ip("10.0.0.3"), None);
        let mut out = Vec::new();
        fib.reroute(routing.clone(), resolved.clone(), |op| out.push(op));
        out.sort();
        assert_eq!(
            out,
            vec![
                RouteOp::Delete(direct("10.65.2.0/26", "10.0.0.3")),
                RouteOp::Delete(direct("10.66.1.0/26", "10.0.0.3")),
            ]
        );
        let mut again = Vec::new();
        fib.reroute(routing, resolved, |op| again.push(op));
        assert_eq!(again, vec![]);
        assert_eq!(fib.next_hops().len(), 2);
    }

    #[test]
    fn clear_deletes_every_installed_route_and_wanted_matches_installed_ones() {
        let mut fib = fib();
        ops(
            &mut fib,
            &[
                learned("10.65.1.0/26", Some("10.0.0.2")),
                learned("2001:db8:1::/64", Some("10.0.0.2")), // family mismatch: nothing
            ],
        );
        assert!(fib.is_wanted(&direct("10.65.1.0/26", "10.0.0.2")));
        assert!(!fib.is_wanted(&direct("10.65.1.0/26", "10.0.0.3")));
        assert!(!fib.is_wanted(&direct("10.65.7.0/26", "10.0.0.2")));
        let mut out = Vec::new();
        fib.clear(|op| out.push(op));
        assert_eq!(
            out,
            vec![RouteOp::Delete(direct("10.65.1.0/26", "10.0.0.2"))]
        );
        assert!(fib.is_empty());
    }

    #[test]
    fn host_bits_of_a_learned_prefix_are_dropped() {
        let change = felis_bgp::rib::RibChange {
            prefix: net("10.65.1.7/26"),
            next_hop: Some(ip("10.0.0.2")),
            attrs: std::sync::Arc::new(felis_bgp::rib::RouteAttrs {
                next_hop: Some(ip("10.0.0.2")),
                link_local: None,
                path: felis_bgp::packet::update::PathAttributes::default(),
            }),
            peer: ip("10.0.0.2"),
            kind: felis_bgp::rib::ChangeKind::Added,
        };
        assert_eq!(
            Learned::from_change(&change),
            learned("10.65.1.0/26", Some("10.0.0.2"))
        );
    }
}
