//! Routing information bases: Adj-RIB-In, Loc-RIB and Adj-RIB-Out (RFC 4271 §3.2, §9),
//! route reflection (RFC 4456) and graceful restart stale routes (RFC 4724).
//!
//! ```text
//!   UPDATE from peer ──import checks──▶ paths[prefix] (one per peer: Adj-RIB-In)
//!                                           │ best path (§9.1.2)
//!                                           ▼
//!                                       best = paths[0] (Loc-RIB) ──▶ RibChange to the user
//!                                           │ export rules, per established peer
//!                                           ▼
//!                                       UPDATEs (Adj-RIB-Out, computed, not stored)
//! ```
//!
//! Memory: one `BTreeMap` entry per prefix holds all its paths inline (one path needs no heap
//! allocation); path attributes are interned and shared through `Arc`, so a million routes
//! learned in a few thousand UPDATEs share a few thousand attribute sets. Adj-RIB-Out is not
//! stored: what a peer was sent is recomputed from the previous best path and the export
//! rules, which are a pure function of (best path, target peer).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::collections::HashSet;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::sync::Arc;

use ipnet::IpNet;
use ipnet::Ipv4Net;
use ipnet::Ipv6Net;
use serde::Deserialize;
use serde::Serialize;

use crate::packet::Asn;
use crate::packet::CodecOptions;
use crate::packet::Family;
use crate::packet::update::AsPath;
use crate::packet::update::Community;
use crate::packet::update::Origin;
use crate::packet::update::PathAttributes;
use crate::packet::update::Update;
use crate::packet::update::UpdateView;
use crate::packet::update::announcements;
use crate::packet::update::attr_flag;
use crate::packet::update::withdrawals;
use crate::policy::PeerPolicy;
use crate::policy::Policy;
use crate::policy::RouteOrigin;

/// LOCAL_PREF assumed when none is carried (RFC 4271 §5.1.5; BIRD's default).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// Speaker-wide RIB parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RibConfig {
    /// Our ASN.
    pub local_asn: Asn,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Set to act as a route reflector with this cluster id (RFC 4456).
    pub cluster_id: Option<Ipv4Addr>,
}

/// How the NEXT_HOP of routes sent to a peer is chosen (Calico's `nextHopMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NextHopMode {
    /// eBGP: ourselves; iBGP: keep the received next hop (ourselves for local routes).
    #[default]
    Auto,
    /// Always ourselves.
    SelfAddress,
    /// Always keep the received or configured next hop (ourselves only when there is none).
    Keep,
}

/// Per-peer RIB parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RibPeerConfig {
    /// The peer's address (tie-break of §9.1.2.2 g).
    pub address: IpAddr,
    /// The peer's ASN (eBGP when it differs from ours).
    pub asn: Asn,
    /// The peer is a route-reflector client (RFC 4456), when we are a reflector.
    pub rr_client: bool,
    /// Next-hop rule for routes sent to this peer.
    pub next_hop_mode: NextHopMode,
    /// Our IPv4 address toward this peer; defaults to the session's local address.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Our IPv6 address toward this peer; defaults to the session's local address.
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Import and export filters (Calico's BGPFilters); empty: everything passes.
    #[serde(default)]
    pub policy: PeerPolicy,
}

impl RibPeerConfig {
    /// A peer with default rules.
    pub fn new(address: IpAddr, asn: Asn) -> Self {
        RibPeerConfig {
            address,
            asn,
            rr_client: false,
            next_hop_mode: NextHopMode::Auto,
            next_hop_v4: None,
            next_hop_v6: None,
            policy: PeerPolicy::default(),
        }
    }
}

/// Handle of a peer inside the RIB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerId(pub u32);

/// Where a path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RouteSource {
    /// Originated by this speaker.
    Local,
    /// Learned from a peer.
    Peer(PeerId),
}

/// Attributes of a route as stored: the next hop (of either family) and the path attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteAttrs {
    /// Next hop; `None` for a local route that takes ours.
    pub next_hop: Option<IpAddr>,
    /// IPv6 link-local next hop, if the peer sent one.
    pub link_local: Option<Ipv6Addr>,
    /// Path attributes.
    pub path: PathAttributes,
}

/// A best-route change handed to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RibChange {
    /// The prefix.
    pub prefix: IpNet,
    /// Next hop of the best route.
    pub next_hop: Option<IpAddr>,
    /// Its attributes.
    pub attrs: Arc<RouteAttrs>,
    /// The peer it was learned from.
    pub peer: IpAddr,
    /// Added (or replaced) versus removed.
    pub kind: ChangeKind,
}

/// Whether a best route appeared/changed or went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// A new or changed best route (replaces any previous one for the prefix).
    Added,
    /// No learned route remains for the prefix.
    Removed,
}

/// What a RIB operation produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RibOutput {
    /// Best-route changes for the user (learned routes only).
    pub changes: Vec<RibChange>,
    /// UPDATEs to send, per peer, in order.
    pub updates: Vec<(PeerId, Update)>,
}

/// Counters of one peer, for `felis node status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeerCounters {
    /// Prefixes the peer announced that we hold (accepted, or rejected by loop checks or by
    /// the import policy).
    pub received: usize,
    /// Prefixes accepted into the RIB.
    pub accepted: usize,
    /// Prefixes currently advertised to the peer.
    pub advertised: usize,
    /// Of the accepted, how many are stale (graceful restart).
    pub stale: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Path {
    attrs: Arc<RouteAttrs>,
    source: RouteSource,
    stale: bool,
}

/// The paths of one prefix, best first. One path needs no allocation.
#[derive(Debug, Clone)]
enum Paths {
    One(Path),
    Many(Vec<Path>),
}

impl Paths {
    fn as_slice(&self) -> &[Path] {
        match self {
            Paths::One(p) => std::slice::from_ref(p),
            Paths::Many(v) => v,
        }
    }

    fn best(&self) -> Option<&Path> {
        self.as_slice().first()
    }

    /// Replaces the path of the same source, or adds it. Returns the replaced path.
    fn upsert(&mut self, path: Path) -> Option<Path> {
        match self {
            Paths::One(p) if p.source == path.source => Some(std::mem::replace(p, path)),
            Paths::One(p) => {
                let first = p.clone();
                *self = Paths::Many(vec![first, path]);
                None
            }
            Paths::Many(v) => match v.iter_mut().find(|p| p.source == path.source) {
                Some(p) => Some(std::mem::replace(p, path)),
                None => {
                    v.push(path);
                    None
                }
            },
        }
    }

    fn normalise(&mut self) {
        if let Paths::Many(v) = self
            && v.len() == 1
            && let Some(p) = v.pop()
        {
            *self = Paths::One(p);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Best {
    source: RouteSource,
    attrs: Arc<RouteAttrs>,
}

#[derive(Debug, Clone)]
struct BestChange {
    prefix: IpNet,
    old: Option<Best>,
    new: Option<Best>,
}

#[derive(Debug, Clone)]
struct PeerState {
    config: RibPeerConfig,
    router_id: Ipv4Addr,
    established: bool,
    families: Vec<Family>,
    codec: CodecOptions,
    local_v4: Option<Ipv4Addr>,
    local_v6: Option<Ipv6Addr>,
    counters: PeerCounters,
    rejected: BTreeSet<IpNet>,
    /// Routes the import policy rejected, kept so a policy change can admit them without
    /// asking the peer again (soft reconfiguration).
    filtered: BTreeMap<IpNet, Arc<RouteAttrs>>,
}

impl PeerState {
    fn is_ibgp(&self, local: Asn) -> bool {
        self.config.asn == local
    }
}

/// Parameters of a session that reached Established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUp {
    /// The peer's BGP identifier.
    pub router_id: Ipv4Addr,
    /// Negotiated families.
    pub families: Vec<Family>,
    /// Negotiated codec.
    pub codec: CodecOptions,
    /// Our address on the connection (default next-hop-self address).
    pub local_address: IpAddr,
}

/// All RIBs of one speaker.
#[derive(Debug)]
pub struct Rib {
    config: RibConfig,
    peers: Vec<Option<PeerState>>,
    v4: BTreeMap<Ipv4Net, Paths>,
    v6: BTreeMap<Ipv6Net, Paths>,
    interned: HashSet<Arc<RouteAttrs>>,
    interned_since_sweep: usize,
}

impl Rib {
    /// An empty RIB.
    pub fn new(config: RibConfig) -> Self {
        Rib {
            config,
            peers: Vec::new(),
            v4: BTreeMap::new(),
            v6: BTreeMap::new(),
            interned: HashSet::new(),
            interned_since_sweep: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RibConfig {
        &self.config
    }

    /// Registers a peer (not yet established).
    pub fn add_peer(&mut self, config: RibPeerConfig) -> PeerId {
        let state = PeerState {
            config,
            router_id: Ipv4Addr::UNSPECIFIED,
            established: false,
            families: Vec::new(),
            codec: CodecOptions::FOUR_OCTET,
            local_v4: None,
            local_v6: None,
            counters: PeerCounters::default(),
            rejected: BTreeSet::new(),
            filtered: BTreeMap::new(),
        };
        // Ids are never reused, so a late event about a removed peer cannot be taken for
        // a new one.
        self.peers.push(Some(state));
        PeerId(u32::try_from(self.peers.len() - 1).unwrap_or(u32::MAX))
    }

    /// Removes a peer and every route learned from it.
    pub fn remove_peer(&mut self, peer: PeerId, out: &mut RibOutput) {
        self.peer_down(peer, None, out);
        if let Some(slot) = self.peers.get_mut(peer.0 as usize) {
            *slot = None;
        }
    }

    /// The peer's counters.
    pub fn counters(&self, peer: PeerId) -> Option<PeerCounters> {
        self.peer(peer).map(|p| p.counters)
    }

    /// Number of prefixes with at least one path.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the RIB holds no route.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of distinct attribute sets held.
    pub fn interned_attrs(&self) -> usize {
        self.interned.len()
    }

    /// The best route of a prefix (Loc-RIB).
    pub fn best(&self, prefix: &IpNet) -> Option<(RouteSource, Arc<RouteAttrs>)> {
        self.paths(prefix)?
            .best()
            .map(|p| (p.source, p.attrs.clone()))
    }

    /// All paths of a prefix, best first: (source, attributes, stale).
    pub fn paths_of(&self, prefix: &IpNet) -> Vec<(RouteSource, Arc<RouteAttrs>, bool)> {
        self.paths(prefix)
            .map(|p| {
                p.as_slice()
                    .iter()
                    .map(|p| (p.source, p.attrs.clone(), p.stale))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adj-RIB-In of a peer: the prefixes and attributes it announced and we accepted.
    pub fn adj_rib_in(&self, peer: PeerId) -> Vec<(IpNet, Arc<RouteAttrs>)> {
        let source = RouteSource::Peer(peer);
        self.entries()
            .filter_map(|(prefix, paths)| {
                paths
                    .as_slice()
                    .iter()
                    .find(|p| p.source == source)
                    .map(|p| (prefix, p.attrs.clone()))
            })
            .collect()
    }

    /// Adj-RIB-Out of a peer: what we advertise to it, with the attributes as sent.
    pub fn adj_rib_out(&self, peer: PeerId) -> Vec<(IpNet, RouteAttrs)> {
        let Some(target) = self.peer(peer) else {
            return Vec::new();
        };
        self.entries()
            .filter_map(|(prefix, paths)| {
                let best = paths.best()?;
                let best = Best {
                    source: best.source,
                    attrs: best.attrs.clone(),
                };
                self.export_attrs(&best, prefix, peer, target)
                    .map(|a| (prefix, a))
            })
            .collect()
    }

    /// A session came up: sends the peer everything it may receive, then End-of-RIB.
    pub fn peer_up(&mut self, peer: PeerId, up: PeerUp, out: &mut RibOutput) {
        let Some(state) = self.peer_mut(peer) else {
            return;
        };
        state.router_id = up.router_id;
        state.families = up.families.clone();
        state.codec = up.codec;
        state.established = true;
        state.counters.advertised = 0;
        match up.local_address {
            IpAddr::V4(a) => state.local_v4 = Some(a),
            IpAddr::V6(a) => state.local_v6 = Some(a),
        }
        for family in up.families {
            self.dump(peer, family, out);
        }
    }

    /// The peer asked for a family again (ROUTE-REFRESH): re-sends it, then End-of-RIB.
    pub fn route_refresh(&mut self, peer: PeerId, family: Family, out: &mut RibOutput) {
        if self
            .peer(peer)
            .is_some_and(|p| p.established && p.families.contains(&family))
        {
            if let Some(state) = self.peer_mut(peer) {
                state.counters.advertised = 0;
            }
            for f in self
                .peer(peer)
                .map(|p| p.families.clone())
                .unwrap_or_default()
            {
                if f != family {
                    // Re-count what other families advertise.
                    let count = self.count_exported(peer, f);
                    if let Some(state) = self.peer_mut(peer) {
                        state.counters.advertised += count;
                    }
                }
            }
            self.dump(peer, family, out);
        }
    }

    /// A session went down. With `graceful` (RFC 4724), the peer's routes of those families
    /// stay as stale until [`Rib::end_of_rib`] or [`Rib::purge_stale`]; all others go now.
    pub fn peer_down(&mut self, peer: PeerId, graceful: Option<&[Family]>, out: &mut RibOutput) {
        let Some(state) = self.peer_mut(peer) else {
            return;
        };
        state.established = false;
        state.counters.advertised = 0;
        state.rejected.clear();
        state.filtered.clear();
        let keep: Vec<Family> = graceful.map(<[Family]>::to_vec).unwrap_or_default();
        let source = RouteSource::Peer(peer);
        let mut changes = Vec::new();
        let mut stale = 0;
        let v4_keep = keep.contains(&Family::IPV4_UNICAST);
        let v6_keep = keep.contains(&Family::IPV6_UNICAST);
        if v4_keep {
            stale += mark_stale(&mut self.v4, source);
        } else {
            let prefixes = prefixes_from(&self.v4, source, false);
            for p in prefixes {
                self.remove_path(IpNet::V4(p), source, &mut changes);
            }
        }
        if v6_keep {
            stale += mark_stale(&mut self.v6, source);
        } else {
            let prefixes = prefixes_from(&self.v6, source, false);
            for p in prefixes {
                self.remove_path(IpNet::V6(p), source, &mut changes);
            }
        }
        if let Some(state) = self.peer_mut(peer) {
            state.counters.stale = stale;
            state.counters.received = state.counters.accepted;
        }
        self.export(&changes, out);
        self.sweep_interned();
    }

    /// End-of-RIB received: stale routes of that family the peer did not refresh go.
    pub fn end_of_rib(&mut self, peer: PeerId, family: Family, out: &mut RibOutput) {
        let source = RouteSource::Peer(peer);
        let mut changes = Vec::new();
        if family == Family::IPV4_UNICAST {
            for p in prefixes_from(&self.v4, source, true) {
                self.remove_path(IpNet::V4(p), source, &mut changes);
            }
        } else if family == Family::IPV6_UNICAST {
            for p in prefixes_from(&self.v6, source, true) {
                self.remove_path(IpNet::V6(p), source, &mut changes);
            }
        }
        self.export(&changes, out);
    }

    /// The restart timer expired: every stale route of the peer goes.
    pub fn purge_stale(&mut self, peer: PeerId, out: &mut RibOutput) {
        let mut inner = RibOutput::default();
        self.end_of_rib(peer, Family::IPV4_UNICAST, &mut inner);
        self.end_of_rib(peer, Family::IPV6_UNICAST, &mut inner);
        out.changes.extend(inner.changes);
        out.updates.extend(inner.updates);
        self.sweep_interned();
    }

    /// RFC 4724 §4.2: a restarted peer's session is up again. For each family it did not keep
    /// forwarding state for (no Forwarding State bit in its new graceful restart capability,
    /// the family missing from it, or no capability at all), its stale routes go now instead of
    /// at End-of-RIB. `preserved`: the families whose F bit the new OPEN set.
    pub fn flush_unpreserved_stale(
        &mut self,
        peer: PeerId,
        preserved: &[Family],
        out: &mut RibOutput,
    ) {
        for family in [Family::IPV4_UNICAST, Family::IPV6_UNICAST] {
            if !preserved.contains(&family) {
                self.end_of_rib(peer, family, out);
            }
        }
        self.sweep_interned();
    }

    /// The peer's import and export policy.
    pub fn policy(&self, peer: PeerId) -> Option<&PeerPolicy> {
        self.peer(peer).map(|p| &p.config.policy)
    }

    /// Replaces a peer's policy on the live session: what the new export policy no longer
    /// lets through is withdrawn from the peer and what it newly lets through is announced;
    /// the peer's routes are imported again under the new import policy, from the routes kept
    /// (accepted ones and the ones the old policy rejected), without asking the peer.
    pub fn set_policy(&mut self, peer: PeerId, policy: PeerPolicy, out: &mut RibOutput) {
        let Some(state) = self.peer_mut(peer) else {
            return;
        };
        let old = std::mem::replace(&mut state.config.policy, policy);
        let established = state.established;
        let (import_changed, export_changed) = (
            old.import != state.config.policy.import,
            old.export != state.config.policy.export,
        );
        // Export first, against the Loc-RIB as the peer was last told it; then the import
        // changes go to every peer (this one included) under the new export policies.
        if export_changed && established {
            self.reexport(peer, &old.export, out);
        }
        if import_changed {
            self.reimport(peer, out);
        }
    }

    /// Sends `peer` the difference between what `old` and its current export policy let
    /// through.
    fn reexport(&mut self, peer: PeerId, old: &Policy, out: &mut RibOutput) {
        let Some(target) = self.peer(peer) else {
            return;
        };
        let new = &target.config.policy.export;
        let mut announce = Vec::new();
        let mut withdraw = Vec::new();
        for (prefix, paths) in self.entries() {
            if !target.families.contains(&family_of(&prefix)) {
                continue;
            }
            let Some(best) = paths.best() else {
                continue;
            };
            let origin = origin_of(best.source);
            let now = new.accepts(&prefix, origin);
            if old.accepts(&prefix, origin) == now {
                continue;
            }
            let best = Best {
                source: best.source,
                attrs: best.attrs.clone(),
            };
            if self
                .export_attrs_unfiltered(&best, prefix, peer, target)
                .is_none()
            {
                continue;
            }
            if now {
                announce.push(BestChange {
                    prefix,
                    old: None,
                    new: Some(best),
                });
            } else {
                withdraw.push(prefix);
            }
        }
        for update in withdrawals(&withdraw) {
            out.updates.push((peer, update));
        }
        if let Some(state) = self.peer_mut(peer) {
            state.counters.advertised = state.counters.advertised.saturating_sub(withdraw.len());
        }
        self.export_to(peer, &announce, out);
    }

    /// Runs the peer's kept routes through its current import policy again.
    fn reimport(&mut self, peer: PeerId, out: &mut RibOutput) {
        let Some(state) = self.peer(peer) else {
            return;
        };
        let policy = &state.config.policy;
        let source = RouteSource::Peer(peer);
        let now_rejected: Vec<(IpNet, Arc<RouteAttrs>, bool)> = self
            .entries()
            .filter_map(|(prefix, paths)| {
                let path = paths.as_slice().iter().find(|p| p.source == source)?;
                (!policy.imports(&prefix)).then(|| (prefix, path.attrs.clone(), path.stale))
            })
            .collect();
        let now_imported: Vec<(IpNet, Arc<RouteAttrs>)> = state
            .filtered
            .iter()
            .filter(|(prefix, _)| policy.imports(prefix))
            .map(|(prefix, attrs)| (*prefix, attrs.clone()))
            .collect();
        let mut changes = Vec::new();
        for (prefix, attrs, stale) in now_rejected {
            self.remove_path(prefix, source, &mut changes);
            // A stale route (the peer is restarting) just goes: the peer sends it again.
            if !stale
                && let Some(state) = self.peer_mut(peer)
                && state.filtered.insert(prefix, attrs).is_none()
            {
                state.counters.received += 1;
            }
        }
        for (prefix, attrs) in now_imported {
            self.forget_unaccepted(peer, &prefix);
            let path = Path {
                attrs,
                source,
                stale: false,
            };
            self.insert_path(prefix, path, &mut changes);
        }
        self.export(&changes, out);
        self.sweep_interned();
    }

    /// Originates a route from this speaker. `next_hop` `None` means ourselves.
    pub fn originate(&mut self, prefix: IpNet, next_hop: Option<IpAddr>, out: &mut RibOutput) {
        self.originate_with(prefix, next_hop, PathAttributes::default(), out);
    }

    /// [`Rib::originate`] with attributes of its own (communities, say): ORIGIN, AS_PATH and
    /// NEXT_HOP of `extra` are replaced by the speaker's.
    pub fn originate_with(
        &mut self,
        prefix: IpNet,
        next_hop: Option<IpAddr>,
        extra: PathAttributes,
        out: &mut RibOutput,
    ) {
        let attrs = RouteAttrs {
            next_hop,
            link_local: None,
            path: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::default()),
                next_hop: match next_hop {
                    Some(IpAddr::V4(a)) => Some(a),
                    _ => None,
                },
                ..extra
            },
        };
        let attrs = self.intern(attrs);
        let mut changes = Vec::new();
        self.insert_path(
            prefix.trunc(),
            Path {
                attrs,
                source: RouteSource::Local,
                stale: false,
            },
            &mut changes,
        );
        self.export(&changes, out);
    }

    /// Withdraws a route originated with [`Rib::originate`].
    pub fn withdraw_local(&mut self, prefix: IpNet, out: &mut RibOutput) {
        let mut changes = Vec::new();
        self.remove_path(prefix.trunc(), RouteSource::Local, &mut changes);
        self.export(&changes, out);
    }

    /// Applies an owned UPDATE from a peer.
    pub fn apply_update(&mut self, peer: PeerId, update: &Update, out: &mut RibOutput) {
        let mut changes = Vec::new();
        let source = RouteSource::Peer(peer);
        for p in &update.withdrawn {
            self.withdraw(peer, IpNet::V4(*p), &mut changes);
        }
        if let Some(unreach) = &update.mp_unreach {
            for p in &unreach.withdrawn {
                self.withdraw(peer, *p, &mut changes);
            }
        }
        if !update.nlri.is_empty() {
            let nh = update.attrs.next_hop.map(IpAddr::V4);
            let attrs = self.import(peer, &update.attrs, nh, None);
            for p in &update.nlri {
                self.announce(peer, source, IpNet::V4(*p), attrs.as_ref(), &mut changes);
            }
        }
        if let Some(reach) = &update.mp_reach {
            let attrs = self.import(peer, &update.attrs, Some(reach.next_hop), reach.link_local);
            for p in &reach.nlri {
                self.announce(peer, source, *p, attrs.as_ref(), &mut changes);
            }
        }
        self.export(&changes, out);
        if let Some(family) = update.end_of_rib_family() {
            self.end_of_rib(peer, family, out);
        }
    }

    /// Applies an UPDATE straight from its wire view, allocating nothing per prefix.
    pub fn apply_view(&mut self, peer: PeerId, view: &UpdateView<'_>, out: &mut RibOutput) {
        let mut changes = Vec::new();
        let source = RouteSource::Peer(peer);
        for p in view.withdrawn() {
            self.withdraw(peer, IpNet::V4(p), &mut changes);
        }
        if let Some(unreach) = &view.mp_unreach {
            for p in unreach.prefixes() {
                self.withdraw(peer, p, &mut changes);
            }
        }
        if view.is_treat_as_withdraw() {
            for p in view.nlri() {
                self.withdraw(peer, IpNet::V4(p), &mut changes);
            }
            if let Some(reach) = &view.mp_reach {
                for p in reach.prefixes() {
                    self.withdraw(peer, p, &mut changes);
                }
            }
        } else {
            let mut nlri = view.nlri().peekable();
            if nlri.peek().is_some() {
                let nh = view.attrs.next_hop.map(IpAddr::V4);
                let attrs = self.import(peer, &view.attrs, nh, None);
                for p in nlri {
                    self.announce(peer, source, IpNet::V4(p), attrs.as_ref(), &mut changes);
                }
            }
            if let Some(reach) = &view.mp_reach {
                let attrs = self.import(peer, &view.attrs, Some(reach.next_hop), reach.link_local);
                for p in reach.prefixes() {
                    self.announce(peer, source, p, attrs.as_ref(), &mut changes);
                }
            }
        }
        self.export(&changes, out);
        if let Some(family) = view.end_of_rib() {
            self.end_of_rib(peer, family, out);
        }
    }

    fn peer(&self, peer: PeerId) -> Option<&PeerState> {
        self.peers.get(peer.0 as usize).and_then(Option::as_ref)
    }

    fn peer_mut(&mut self, peer: PeerId) -> Option<&mut PeerState> {
        self.peers.get_mut(peer.0 as usize).and_then(Option::as_mut)
    }

    fn paths(&self, prefix: &IpNet) -> Option<&Paths> {
        match prefix {
            IpNet::V4(p) => self.v4.get(p),
            IpNet::V6(p) => self.v6.get(p),
        }
    }

    fn entries(&self) -> impl Iterator<Item = (IpNet, &Paths)> {
        self.v4
            .iter()
            .map(|(p, paths)| (IpNet::V4(*p), paths))
            .chain(self.v6.iter().map(|(p, paths)| (IpNet::V6(*p), paths)))
    }

    fn intern(&mut self, attrs: RouteAttrs) -> Arc<RouteAttrs> {
        if let Some(existing) = self.interned.get(&attrs) {
            return existing.clone();
        }
        let arc = Arc::new(attrs);
        self.interned.insert(arc.clone());
        self.interned_since_sweep += 1;
        if self.interned_since_sweep > 4096 && self.interned_since_sweep > self.interned.len() / 2 {
            self.sweep_interned();
        }
        arc
    }

    /// Drops interned attribute sets no route uses any more.
    fn sweep_interned(&mut self) {
        self.interned.retain(|a| Arc::strong_count(a) > 1);
        self.interned_since_sweep = 0;
    }

    /// Import checks and normalisation; `None` means rejected (a loop).
    fn import(
        &mut self,
        peer: PeerId,
        attrs: &PathAttributes,
        next_hop: Option<IpAddr>,
        link_local: Option<Ipv6Addr>,
    ) -> Option<Arc<RouteAttrs>> {
        let local = self.config.local_asn;
        let state = self.peer(peer)?;
        let ibgp = state.is_ibgp(local);
        let mut path = attrs.clone();
        if ibgp {
            // RFC 4456 §8: our own reflected routes come back with our id or cluster id.
            if path.originator_id == Some(self.config.router_id) {
                return None;
            }
            let cluster = self.config.cluster_id.unwrap_or(self.config.router_id);
            if path.cluster_list.contains(&cluster) {
                return None;
            }
        } else {
            // RFC 4271 §9.1.2: a path that already holds our ASN is a loop.
            if path.as_path.as_ref().is_some_and(|p| p.contains(local)) {
                return None;
            }
            // LOCAL_PREF is not for eBGP (RFC 4271 §5.1.5); reflection attributes neither.
            path.local_pref = None;
            path.originator_id = None;
            path.cluster_list.clear();
        }
        Some(self.intern(RouteAttrs {
            next_hop,
            link_local,
            path,
        }))
    }

    fn withdraw(&mut self, peer: PeerId, prefix: IpNet, changes: &mut Vec<BestChange>) {
        let prefix = prefix.trunc();
        self.forget_unaccepted(peer, &prefix);
        self.remove_path(prefix, RouteSource::Peer(peer), changes);
    }

    /// Forgets that the peer's announcement of `prefix` was rejected (by a loop check or the
    /// import policy), if it was.
    fn forget_unaccepted(&mut self, peer: PeerId, prefix: &IpNet) {
        if let Some(state) = self.peer_mut(peer) {
            let rejected = state.rejected.remove(prefix);
            let filtered = state.filtered.remove(prefix).is_some();
            if rejected || filtered {
                state.counters.received = state.counters.received.saturating_sub(1);
            }
        }
    }

    fn announce(
        &mut self,
        peer: PeerId,
        source: RouteSource,
        prefix: IpNet,
        attrs: Option<&Arc<RouteAttrs>>,
        changes: &mut Vec<BestChange>,
    ) {
        self.forget_unaccepted(peer, &prefix);
        let imported = self
            .peer(peer)
            .is_some_and(|s| s.config.policy.imports(&prefix));
        match attrs {
            Some(attrs) if imported => {
                let path = Path {
                    attrs: attrs.clone(),
                    source,
                    stale: false,
                };
                self.insert_path(prefix, path, changes);
            }
            Some(attrs) => {
                self.remove_path(prefix, source, changes);
                if let Some(state) = self.peer_mut(peer)
                    && state.filtered.insert(prefix, attrs.clone()).is_none()
                {
                    state.counters.received += 1;
                }
            }
            None => {
                self.remove_path(prefix, source, changes);
                if let Some(state) = self.peer_mut(peer)
                    && state.rejected.insert(prefix)
                {
                    state.counters.received += 1;
                }
            }
        }
    }

    fn insert_path(&mut self, prefix: IpNet, path: Path, changes: &mut Vec<BestChange>) {
        let source = path.source;
        let (previous, replaced) = match prefix {
            IpNet::V4(p) => upsert(&mut self.v4, p, path),
            IpNet::V6(p) => upsert(&mut self.v6, p, path),
        };
        if let RouteSource::Peer(peer) = source
            && let Some(state) = self.peer_mut(peer)
        {
            match replaced {
                None => {
                    state.counters.accepted += 1;
                    state.counters.received += 1;
                }
                Some(old) if old.stale => {
                    state.counters.stale = state.counters.stale.saturating_sub(1);
                }
                Some(_) => {}
            }
        }
        let new = self.reselect(prefix);
        let same = match (&previous, &new) {
            (Some(a), Some(b)) => a.source == b.source && Arc::ptr_eq(&a.attrs, &b.attrs),
            (None, None) => true,
            _ => false,
        };
        if !same {
            changes.push(BestChange {
                prefix,
                old: previous,
                new,
            });
        }
    }

    fn remove_path(&mut self, prefix: IpNet, source: RouteSource, changes: &mut Vec<BestChange>) {
        let removed = match prefix {
            IpNet::V4(p) => remove(&mut self.v4, p, source),
            IpNet::V6(p) => remove(&mut self.v6, p, source),
        };
        let Some(removed) = removed else {
            return;
        };
        if let RouteSource::Peer(peer) = source
            && let Some(state) = self.peer_mut(peer)
        {
            state.counters.accepted = state.counters.accepted.saturating_sub(1);
            state.counters.received = state.counters.received.saturating_sub(1);
            if removed.path.stale {
                state.counters.stale = state.counters.stale.saturating_sub(1);
            }
        }
        let was_best = removed.was_best;
        if was_best {
            let old = Some(Best {
                source: removed.path.source,
                attrs: removed.path.attrs,
            });
            let new = self.reselect(prefix);
            changes.push(BestChange { prefix, old, new });
        }
    }

    /// Re-runs best-path selection, moving the best path to the front.
    fn reselect(&mut self, prefix: IpNet) -> Option<Best> {
        let ctx = SelectCtx {
            peers: &self.peers,
            local: self.config.local_asn,
        };
        let paths = match prefix {
            IpNet::V4(p) => self.v4.get_mut(&p),
            IpNet::V6(p) => self.v6.get_mut(&p),
        }?;
        if let Paths::Many(v) = paths {
            let mut best = 0;
            for i in 1..v.len() {
                if let (Some(a), Some(b)) = (v.get(i), v.get(best))
                    && ctx.better(a, b)
                {
                    best = i;
                }
            }
            v.swap(0, best);
        }
        paths.best().map(|p| Best {
            source: p.source,
            attrs: p.attrs.clone(),
        })
    }

    fn count_exported(&self, peer: PeerId, family: Family) -> usize {
        let Some(target) = self.peer(peer) else {
            return 0;
        };
        self.entries()
            .filter(|(prefix, _)| family_of(prefix) == family)
            .filter(|(prefix, paths)| {
                paths.best().is_some_and(|b| {
                    let best = Best {
                        source: b.source,
                        attrs: b.attrs.clone(),
                    };
                    self.export_attrs(&best, *prefix, peer, target).is_some()
                })
            })
            .count()
    }

    /// Sends the whole table of a family to a peer, then End-of-RIB.
    fn dump(&mut self, peer: PeerId, family: Family, out: &mut RibOutput) {
        let changes: Vec<BestChange> = self
            .entries()
            .filter(|(prefix, _)| family_of(prefix) == family)
            .filter_map(|(prefix, paths)| {
                let best = paths.best()?;
                Some(BestChange {
                    prefix,
                    old: None,
                    new: Some(Best {
                        source: best.source,
                        attrs: best.attrs.clone(),
                    }),
                })
            })
            .collect();
        self.export_to(peer, &changes, out);
        out.updates.push((peer, Update::end_of_rib(family)));
    }

    /// Hands best-path changes to the user and to every established peer.
    fn export(&mut self, changes: &[BestChange], out: &mut RibOutput) {
        if changes.is_empty() {
            return;
        }
        for c in changes {
            let learned = |b: &Option<Best>| match b {
                Some(Best {
                    source: RouteSource::Peer(p),
                    attrs,
                }) => Some((*p, attrs.clone())),
                _ => None,
            };
            match (learned(&c.old), learned(&c.new)) {
                (_, Some((peer, attrs))) => out.changes.push(RibChange {
                    prefix: c.prefix,
                    next_hop: attrs.next_hop,
                    attrs,
                    peer: self.peer_address(peer),
                    kind: ChangeKind::Added,
                }),
                (Some((peer, attrs)), None) => out.changes.push(RibChange {
                    prefix: c.prefix,
                    next_hop: attrs.next_hop,
                    attrs,
                    peer: self.peer_address(peer),
                    kind: ChangeKind::Removed,
                }),
                (None, None) => {}
            }
        }
        let targets: Vec<PeerId> = self
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.as_ref().is_some_and(|p| p.established))
            .map(|(i, _)| PeerId(u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        for target in targets {
            self.export_to(target, changes, out);
        }
    }

    fn peer_address(&self, peer: PeerId) -> IpAddr {
        self.peer(peer)
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.config.address)
    }

    fn export_to(&mut self, peer: PeerId, changes: &[BestChange], out: &mut RibOutput) {
        let Some(target) = self.peer(peer) else {
            return;
        };
        let codec = target.codec;
        // Exported attributes depend only on (source, attrs, family); compute each once.
        let mut cache: HashMap<(RouteSource, usize, bool), Option<Arc<RouteAttrs>>> =
            HashMap::new();
        let mut groups: Vec<(Arc<RouteAttrs>, Vec<IpNet>)> = Vec::new();
        let mut group_of: HashMap<Arc<RouteAttrs>, usize> = HashMap::new();
        let mut withdrawn = Vec::new();
        let mut delta: isize = 0;
        for c in changes {
            if !target.families.contains(&family_of(&c.prefix)) {
                continue;
            }
            let v6 = matches!(c.prefix, IpNet::V6(_));
            let mut exported = |b: &Best| {
                // The policy depends on the prefix, the rest only on (source, attrs, family).
                if !target.config.policy.exports(&c.prefix, origin_of(b.source)) {
                    return None;
                }
                let key = (b.source, Arc::as_ptr(&b.attrs) as usize, v6);
                cache
                    .entry(key)
                    .or_insert_with(|| {
                        self.export_attrs_unfiltered(b, c.prefix, peer, target)
                            .map(Arc::new)
                    })
                    .clone()
            };
            let old = c.old.as_ref().and_then(&mut exported);
            let new = c.new.as_ref().and_then(&mut exported);
            match new {
                Some(attrs) => {
                    if old.is_none() {
                        delta += 1;
                    }
                    if old.as_ref() == Some(&attrs) {
                        continue;
                    }
                    let idx = *group_of.entry(attrs.clone()).or_insert_with(|| {
                        groups.push((attrs.clone(), Vec::new()));
                        groups.len() - 1
                    });
                    if let Some((_, prefixes)) = groups.get_mut(idx) {
                        prefixes.push(c.prefix);
                    }
                }
                None if old.is_some() => {
                    delta -= 1;
                    withdrawn.push(c.prefix);
                }
                None => {}
            }
        }
        for update in withdrawals(&withdrawn) {
            out.updates.push((peer, update));
        }
        for (attrs, prefixes) in groups {
            let v6_next_hop = match attrs.next_hop {
                Some(IpAddr::V6(a)) => Some((a, attrs.link_local)),
                _ => None,
            };
            for update in announcements(&attrs.path, &prefixes, v6_next_hop, &codec) {
                out.updates.push((peer, update));
            }
        }
        if let Some(state) = self.peer_mut(peer) {
            state.counters.advertised = state.counters.advertised.saturating_add_signed(delta);
        }
    }

    /// The export rules and the target's export policy: whether `best` goes to `target`, and
    /// with which attributes.
    fn export_attrs(
        &self,
        best: &Best,
        prefix: IpNet,
        target_id: PeerId,
        target: &PeerState,
    ) -> Option<RouteAttrs> {
        if !target
            .config
            .policy
            .exports(&prefix, origin_of(best.source))
        {
            return None;
        }
        self.export_attrs_unfiltered(best, prefix, target_id, target)
    }

    /// The export rules of the protocol (without the target's policy).
    fn export_attrs_unfiltered(
        &self,
        best: &Best,
        prefix: IpNet,
        target_id: PeerId,
        target: &PeerState,
    ) -> Option<RouteAttrs> {
        let local = self.config.local_asn;
        let attrs = &best.attrs;
        let target_ibgp = target.is_ibgp(local);
        let source = match best.source {
            RouteSource::Local => None,
            RouteSource::Peer(p) if p == target_id => return None,
            RouteSource::Peer(p) => Some(self.peer(p)?),
        };
        let from_ibgp = source.is_some_and(|s| s.is_ibgp(local));
        // RFC 1997 well-known communities.
        if attrs.path.has_community(Community::NO_ADVERTISE) {
            return None;
        }
        if !target_ibgp
            && (attrs.path.has_community(Community::NO_EXPORT)
                || attrs.path.has_community(Community::NO_EXPORT_SUBCONFED))
        {
            return None;
        }
        let reflecting = from_ibgp && target_ibgp;
        if reflecting {
            // RFC 4271 §9.2: iBGP routes are not passed to iBGP peers, except by a route
            // reflector (RFC 4456 §6): client routes go to everyone, non-client routes only
            // to clients.
            self.config.cluster_id?;
            let from_client = source.is_some_and(|s| s.config.rr_client);
            if !from_client && !target.config.rr_client {
                return None;
            }
        }
        let mut path = attrs.path.clone();
        let self_v4 = target.config.next_hop_v4.or(target.local_v4);
        let self_v6 = target.config.next_hop_v6.or(target.local_v6);
        let use_self = match target.config.next_hop_mode {
            NextHopMode::SelfAddress => true,
            NextHopMode::Keep => attrs.next_hop.is_none(),
            NextHopMode::Auto => !target_ibgp || attrs.next_hop.is_none(),
        };
        let next_hop = if use_self {
            match prefix {
                IpNet::V4(_) => IpAddr::V4(self_v4?),
                IpNet::V6(_) => IpAddr::V6(self_v6?),
            }
        } else {
            attrs.next_hop?
        };
        // The next hop must match the family we carry it in.
        let (next_hop, link_local) = match (prefix, next_hop) {
            (IpNet::V4(_), IpAddr::V4(a)) => {
                path.next_hop = Some(a);
                (IpAddr::V4(a), None)
            }
            (IpNet::V6(_), IpAddr::V6(a)) => {
                path.next_hop = None;
                (
                    IpAddr::V6(a),
                    if use_self { None } else { attrs.link_local },
                )
            }
            _ => return None,
        };
        if target_ibgp {
            path.local_pref = Some(path.local_pref.unwrap_or(DEFAULT_LOCAL_PREF));
            if reflecting {
                if let Some(src) = source {
                    path.originator_id.get_or_insert(src.router_id);
                }
                if let Some(cluster) = self.config.cluster_id {
                    path.cluster_list.insert(0, cluster);
                }
            } else {
                path.originator_id = None;
                path.cluster_list.clear();
            }
        } else {
            path.as_path
                .get_or_insert_with(AsPath::default)
                .prepend(local);
            path.local_pref = None;
            path.originator_id = None;
            path.cluster_list.clear();
            // MED is not passed on to other ASes (RFC 4271 §5.1.4), only our own.
            if source.is_some() {
                path.med = None;
            }
        }
        if source.is_some() {
            // RFC 4271 §5: unrecognised transitive attributes are passed on marked Partial.
            for a in &mut path.other {
                a.flags |= attr_flag::PARTIAL;
            }
        }
        Some(RouteAttrs {
            next_hop: Some(next_hop),
            link_local,
            path,
        })
    }
}

struct Removed {
    path: Path,
    was_best: bool,
}

/// Inserts or replaces the path of `path.source`. Returns the best path before the change
/// and the path replaced, if any.
fn upsert<K: Ord + Copy>(
    map: &mut BTreeMap<K, Paths>,
    key: K,
    path: Path,
) -> (Option<Best>, Option<Path>) {
    let Some(paths) = map.get_mut(&key) else {
        map.insert(key, Paths::One(path));
        return (None, None);
    };
    let previous = paths.best().map(|p| Best {
        source: p.source,
        attrs: p.attrs.clone(),
    });
    (previous, paths.upsert(path))
}

fn remove<K: Ord + Copy>(
    map: &mut BTreeMap<K, Paths>,
    key: K,
    source: RouteSource,
) -> Option<Removed> {
    let paths = map.get_mut(&key)?;
    match paths {
        Paths::One(p) if p.source == source => {
            let path = p.clone();
            map.remove(&key);
            Some(Removed {
                path,
                was_best: true,
            })
        }
        Paths::One(_) => None,
        Paths::Many(v) => {
            let i = v.iter().position(|p| p.source == source)?;
            let path = v.remove(i);
            if v.is_empty() {
                map.remove(&key);
            } else {
                paths.normalise();
            }
            Some(Removed {
                path,
                was_best: i == 0,
            })
        }
    }
}

fn mark_stale<K: Ord + Copy>(map: &mut BTreeMap<K, Paths>, source: RouteSource) -> usize {
    let mut count = 0;
    for paths in map.values_mut() {
        let slice: &mut [Path] = match paths {
            Paths::One(p) => std::slice::from_mut(p),
            Paths::Many(v) => v,
        };
        for p in slice.iter_mut().filter(|p| p.source == source) {
            p.stale = true;
            count += 1;
        }
    }
    count
}

fn prefixes_from<K: Ord + Copy>(
    map: &BTreeMap<K, Paths>,
    source: RouteSource,
    only_stale: bool,
) -> Vec<K> {
    map.iter()
        .filter(|(_, paths)| {
            paths
                .as_slice()
                .iter()
                .any(|p| p.source == source && (!only_stale || p.stale))
        })
        .map(|(k, _)| *k)
        .collect()
}

/// The origin a filter's `source` sees for a path of `source`.
fn origin_of(source: RouteSource) -> RouteOrigin {
    match source {
        RouteSource::Local => RouteOrigin::Local,
        RouteSource::Peer(_) => RouteOrigin::RemotePeer,
    }
}

fn family_of(prefix: &IpNet) -> Family {
    match prefix {
        IpNet::V4(_) => Family::IPV4_UNICAST,
        IpNet::V6(_) => Family::IPV6_UNICAST,
    }
}

struct SelectCtx<'a> {
    peers: &'a [Option<PeerState>],
    local: Asn,
}

impl SelectCtx<'_> {
    fn peer(&self, source: RouteSource) -> Option<&PeerState> {
        match source {
            RouteSource::Local => None,
            RouteSource::Peer(p) => self.peers.get(p.0 as usize).and_then(Option::as_ref),
        }
    }

    /// RFC 4271 §9.1.2.2 with RFC 4456 §9 tie-breaks: whether `a` beats `b`.
    fn better(&self, a: &Path, b: &Path) -> bool {
        use std::cmp::Ordering;
        // Our own routes win, as BIRD's static protocol preference beats BGP's.
        match (a.source, b.source) {
            (RouteSource::Local, RouteSource::Peer(_)) => return true,
            (RouteSource::Peer(_), RouteSource::Local) => return false,
            _ => {}
        }
        let (pa, pb) = (&a.attrs.path, &b.attrs.path);
        let lp = |p: &PathAttributes| p.local_pref.unwrap_or(DEFAULT_LOCAL_PREF);
        if lp(pa) != lp(pb) {
            return lp(pa) > lp(pb);
        }
        let len = |p: &PathAttributes| p.as_path.as_ref().map_or(0, AsPath::len);
        if len(pa) != len(pb) {
            return len(pa) < len(pb);
        }
        let origin = |p: &PathAttributes| p.origin.unwrap_or(Origin::Incomplete);
        if origin(pa) != origin(pb) {
            return origin(pa) < origin(pb);
        }
        let neighbour = |p: &PathAttributes| p.as_path.as_ref().and_then(AsPath::first_asn);
        if neighbour(pa) == neighbour(pb) {
            let (ma, mb) = (pa.med.unwrap_or(0), pb.med.unwrap_or(0));
            if ma != mb {
                return ma < mb;
            }
        }
        let (sa, sb) = (self.peer(a.source), self.peer(b.source));
        let ebgp = |s: Option<&PeerState>| s.is_some_and(|s| !s.is_ibgp(self.local));
        if ebgp(sa) != ebgp(sb) {
            return ebgp(sa);
        }
        let id = |p: &PathAttributes, s: Option<&PeerState>| {
            u32::from(
                p.originator_id
                    .or(s.map(|s| s.router_id))
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
            )
        };
        if id(pa, sa) != id(pb, sb) {
            return id(pa, sa) < id(pb, sb);
        }
        if pa.cluster_list.len() != pb.cluster_list.len() {
            return pa.cluster_list.len() < pb.cluster_list.len();
        }
        let addr = |s: Option<&PeerState>| s.map(|s| s.config.address);
        addr(sa).cmp(&addr(sb)) == Ordering::Less
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::update::MpReach;
    use crate::packet::update::RawAttribute;
    use crate::policy::FilterAction;
    use crate::policy::FilterRule;
    use crate::policy::MatchOperator;

    const LOCAL: Asn = Asn(64512);

    fn rib(cluster_id: Option<Ipv4Addr>) -> Rib {
        Rib::new(RibConfig {
            local_asn: LOCAL,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            cluster_id,
        })
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn up(rib: &mut Rib, addr: &str, asn: u32, router_id: &str, client: bool) -> PeerId {
        let mut config = RibPeerConfig::new(addr.parse().unwrap(), Asn(asn));
        config.rr_client = client;
        let id = rib.add_peer(config);
        let mut out = RibOutput::default();
        rib.peer_up(
            id,
            PeerUp {
                router_id: v4(router_id),
                families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
                codec: CodecOptions::FOUR_OCTET,
                local_address: "10.0.0.1".parse().unwrap(),
            },
            &mut out,
        );
        id
    }

    fn attrs(path: &[u32], next_hop: &str) -> PathAttributes {
        PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(path.iter().copied())),
            next_hop: Some(v4(next_hop)),
            ..PathAttributes::default()
        }
    }

    fn announce(attrs: PathAttributes, prefixes: &[&str]) -> Update {
        Update {
            attrs,
            nlri: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            ..Update::default()
        }
    }

    fn apply(rib: &mut Rib, peer: PeerId, update: Update) -> RibOutput {
        let mut out = RibOutput::default();
        rib.apply_update(peer, &update, &mut out);
        out
    }

    fn updates_to(out: &RibOutput, peer: PeerId) -> Vec<Update> {
        out.updates
            .iter()
            .filter(|(p, _)| *p == peer)
            .map(|(_, u)| u.clone())
            .collect()
    }

    #[test]
    fn ebgp_route_is_learned_and_reported() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.1.2", 65001, "10.0.1.2", false);
        let out = apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.1.2"), &["192.168.0.0/24"]),
        );
        assert_eq!(out.changes.len(), 1);
        let c = &out.changes[0];
        assert_eq!(c.prefix, net("192.168.0.0/24"));
        assert_eq!(c.next_hop, Some("10.0.1.2".parse().unwrap()));
        assert_eq!(c.peer, "10.0.1.2".parse::<IpAddr>().unwrap());
        assert_eq!(c.kind, ChangeKind::Added);
        assert_eq!(rib.counters(a).unwrap().accepted, 1);
        assert_eq!(rib.adj_rib_in(a).len(), 1);
    }

    #[test]
    fn withdrawal_falls_back_to_next_best_path() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.1.2", 65001, "10.0.1.2", false);
        let b = up(&mut rib, "10.0.2.2", 65002, "10.0.2.2", false);
        apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.1.2"), &["192.168.0.0/24"]),
        );
        let out = apply(
            &mut rib,
            b,
            announce(attrs(&[65002, 65003], "10.0.2.2"), &["192.168.0.0/24"]),
        );
        assert!(out.changes.is_empty(), "longer path must not become best");
        let out = apply(
            &mut rib,
            a,
            Update {
                withdrawn: vec!["192.168.0.0/24".parse().unwrap()],
                ..Update::default()
            },
        );
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].kind, ChangeKind::Added);
        assert_eq!(out.changes[0].next_hop, Some("10.0.2.2".parse().unwrap()));
        let out = apply(
            &mut rib,
            b,
            Update {
                withdrawn: vec!["192.168.0.0/24".parse().unwrap()],
                ..Update::default()
            },
        );
        assert_eq!(out.changes[0].kind, ChangeKind::Removed);
        assert!(rib.is_empty());
    }

    fn best_peer(rib: &Rib, prefix: &str) -> RouteSource {
        rib.best(&net(prefix)).unwrap().0
    }

    #[test]
    fn best_path_prefers_higher_local_pref_then_shorter_path_then_origin() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.0.2", 64512, "10.0.0.2", false);
        let b = up(&mut rib, "10.0.0.3", 64512, "10.0.0.3", false);
        let mut long_pref = attrs(&[65001, 65002], "10.0.0.2");
        long_pref.local_pref = Some(200);
        apply(&mut rib, a, announce(long_pref, &["10.9.0.0/16"]));
        apply(
            &mut rib,
            b,
            announce(attrs(&[65001], "10.0.0.3"), &["10.9.0.0/16"]),
        );
        assert_eq!(best_peer(&rib, "10.9.0.0/16"), RouteSource::Peer(a));

        apply(
            &mut rib,
            a,
            announce(attrs(&[65001, 65002], "10.0.0.2"), &["10.8.0.0/16"]),
        );
        apply(
            &mut rib,
            b,
            announce(attrs(&[65001], "10.0.0.3"), &["10.8.0.0/16"]),
        );
        assert_eq!(best_peer(&rib, "10.8.0.0/16"), RouteSource::Peer(b));

        let mut egp = attrs(&[65001], "10.0.0.3");
        egp.origin = Some(Origin::Egp);
        apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.0.2"), &["10.7.0.0/16"]),
        );
        apply(&mut rib, b, announce(egp, &["10.7.0.0/16"]));
        assert_eq!(best_peer(&rib, "10.7.0.0/16"), RouteSource::Peer(a));
    }

    #[test]
    fn med_compares_only_within_the_same_neighbour_as() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.0.2", 64512, "10.0.0.2", false);
        let b = up(&mut rib, "10.0.0.3", 64512, "10.0.0.3", false);
        let mut high = attrs(&[65001], "10.0.0.2");
        high.med = Some(50);
        let mut low = attrs(&[65001], "10.0.0.3");
        low.med = Some(10);
        apply(&mut rib, a, announce(high.clone(), &["10.6.0.0/16"]));
        apply(&mut rib, b, announce(low, &["10.6.0.0/16"]));
        assert_eq!(best_peer(&rib, "10.6.0.0/16"), RouteSource::Peer(b));
        // Different neighbour AS: MED ignored, the lower router id wins.
        let mut other = attrs(&[65009], "10.0.0.3");
        other.med = Some(10);
        apply(&mut rib, a, announce(high, &["10.5.0.0/16"]));
        apply(&mut rib, b, announce(other, &["10.5.0.0/16"]));
        assert_eq!(best_peer(&rib, "10.5.0.0/16"), RouteSource::Peer(a));
    }

    #[test]
    fn ebgp_beats_ibgp_and_lower_router_id_breaks_ties() {
        let mut rib = rib(None);
        let i = up(&mut rib, "10.0.0.2", 64512, "10.0.0.2", false);
        let e = up(&mut rib, "10.0.9.2", 65001, "10.0.9.2", false);
        apply(
            &mut rib,
            i,
            announce(attrs(&[65001], "10.0.0.2"), &["10.4.0.0/16"]),
        );
        apply(
            &mut rib,
            e,
            announce(attrs(&[65001], "10.0.9.2"), &["10.4.0.0/16"]),
        );
        assert_eq!(best_peer(&rib, "10.4.0.0/16"), RouteSource::Peer(e));

        let hi = up(&mut rib, "10.0.0.3", 64512, "10.0.0.9", false);
        let lo = up(&mut rib, "10.0.0.4", 64512, "10.0.0.5", false);
        apply(
            &mut rib,
            hi,
            announce(attrs(&[65001], "10.0.0.3"), &["10.3.0.0/16"]),
        );
        apply(
            &mut rib,
            lo,
            announce(attrs(&[65001], "10.0.0.4"), &["10.3.0.0/16"]),
        );
        assert_eq!(best_peer(&rib, "10.3.0.0/16"), RouteSource::Peer(lo));
    }

    #[test]
    fn as_path_loop_is_rejected_but_counted_as_received() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.1.2", 65001, "10.0.1.2", false);
        let out = apply(
            &mut rib,
            a,
            announce(attrs(&[65001, 64512], "10.0.1.2"), &["10.2.0.0/16"]),
        );
        assert!(out.changes.is_empty());
        assert!(rib.is_empty());
        let c = rib.counters(a).unwrap();
        assert_eq!((c.received, c.accepted), (1, 0));
        apply(
            &mut rib,
            a,
            Update {
                withdrawn: vec!["10.2.0.0/16".parse().unwrap()],
                ..Update::default()
            },
        );
        assert_eq!(rib.counters(a).unwrap().received, 0);
    }

    #[test]
    fn ebgp_export_prepends_as_sets_next_hop_self_and_strips_local_pref_and_med() {
        let mut rib = rib(None);
        let i = up(&mut rib, "10.0.0.2", 64512, "10.0.0.2", false);
        let e = up(&mut rib, "10.0.9.2", 65001, "10.0.9.2", false);
        let mut a = attrs(&[], "10.0.0.2");
        a.local_pref = Some(300);
        a.med = Some(7);
        a.other = vec![RawAttribute {
            flags: 0xc0,
            code: 32,
            value: vec![1, 2, 3],
        }];
        let out = apply(&mut rib, i, announce(a, &["10.1.0.0/16"]));
        let sent = updates_to(&out, e);
        assert_eq!(sent.len(), 1);
        let mut want = attrs(&[64512], "10.0.0.1");
        want.other = vec![RawAttribute {
            flags: 0xe0,
            code: 32,
            value: vec![1, 2, 3],
        }];
        assert_eq!(sent[0].attrs, want);
        assert_eq!(
            sent[0].nlri,
            vec!["10.1.0.0/16".parse::<Ipv4Net>().unwrap()]
        );
        assert!(
            updates_to(&out, i).is_empty(),
            "never sent back to its source"
        );
        assert_eq!(rib.counters(e).unwrap().advertised, 1);
        assert_eq!(rib.adj_rib_out(e).len(), 1);
    }

    #[test]
    fn ibgp_export_keeps_next_hop_and_sets_default_local_pref() {
        let mut rib = rib(None);
        let e = up(&mut rib, "10.0.9.2", 65001, "10.0.9.2", false);
        let i = up(&mut rib, "10.0.0.2", 64512, "10.0.0.2", false);
        let out = apply(
            &mut rib,
            e,
            announce(attrs(&[65001], "10.0.9.2"), &["10.1.0.0/16"]),
        );
        let sent = updates_to(&out, i);
        let mut want = attrs(&[65001], "10.0.9.2");
        want.local_pref = Some(100);
        assert_eq!(sent[0].attrs, want);
    }

    #[test]
    fn ibgp_routes_are_not_passed_to_ibgp_peers_without_reflection() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.0.2", 64512, "10.0.0.2", false);
        let b = up(&mut rib, "10.0.0.3", 64512, "10.0.0.3", false);
        let out = apply(
            &mut rib,
            a,
            announce(attrs(&[], "10.0.0.2"), &["10.1.0.0/16"]),
        );
        assert_eq!(out.changes.len(), 1);
        assert!(updates_to(&out, b).is_empty());
    }

    #[test]
    fn reflector_passes_client_routes_to_non_clients_with_originator_and_cluster() {
        let cluster = v4("244.0.0.1");
        let mut rib = rib(Some(cluster));
        let client = up(&mut rib, "10.0.0.2", 64512, "10.0.0.2", true);
        let other = up(&mut rib, "10.0.0.3", 64512, "10.0.0.3", false);
        let out = apply(
            &mut rib,
            client,
            announce(attrs(&[], "10.0.0.2"), &["10.1.0.0/16"]),
        );
        let sent = updates_to(&out, other);
        let mut want = attrs(&[], "10.0.0.2");
        want.local_pref = Some(100);
        want.originator_id = Some(v4("10.0.0.2"));
        want.cluster_list = vec![cluster];
        assert_eq!(sent[0].attrs, want);
    }

    #[test]
    fn reflector_passes_non_client_routes_only_to_clients() {
        let mut rib = rib(Some(v4("244.0.0.1")));
        let n1 = up(&mut rib, "10.0.0.2", 64512, "10.0.0.2", false);
        let n2 = up(&mut rib, "10.0.0.3", 64512, "10.0.0.3", false);
        let c = up(&mut rib, "10.0.0.4", 64512, "10.0.0.4", true);
        let out = apply(
            &mut rib,
            n1,
            announce(attrs(&[], "10.0.0.2"), &["10.1.0.0/16"]),
        );
        assert!(updates_to(&out, n2).is_empty());
        assert_eq!(updates_to(&out, c).len(), 1);
    }

    #[test]
    fn reflected_route_loops_are_rejected() {
        let cluster = v4("244.0.0.1");
        let mut rib = rib(Some(cluster));
        let a = up(&mut rib, "10.0.0.2", 64512, "10.0.0.2", true);
        let mut own = attrs(&[], "10.0.0.2");
        own.originator_id = Some(v4("10.0.0.1"));
        apply(&mut rib, a, announce(own, &["10.1.0.0/16"]));
        let mut looped = attrs(&[], "10.0.0.2");
        looped.cluster_list = vec![cluster];
        apply(&mut rib, a, announce(looped, &["10.2.0.0/16"]));
        assert!(rib.is_empty());
    }

    #[test]
    fn no_export_community_stays_inside_the_as() {
        let mut rib = rib(None);
        let i = up(&mut rib, "10.0.0.2", 64512, "10.0.0.2", false);
        let e = up(&mut rib, "10.0.9.2", 65001, "10.0.9.2", false);
        let mut a = attrs(&[], "10.0.0.2");
        a.communities = vec![Community::NO_EXPORT];
        let out = apply(&mut rib, i, announce(a, &["10.1.0.0/16"]));
        assert!(updates_to(&out, e).is_empty());
    }

    #[test]
    fn originated_routes_go_to_peers_with_next_hop_self_but_not_to_the_user() {
        let mut rib = rib(None);
        let i = up(&mut rib, "10.0.0.2", 64512, "10.0.0.2", false);
        let e = up(&mut rib, "10.0.9.2", 65001, "10.0.9.2", false);
        let mut out = RibOutput::default();
        rib.originate(net("10.65.0.0/26"), None, &mut out);
        assert!(out.changes.is_empty());
        let mut want_i = attrs(&[], "10.0.0.1");
        want_i.local_pref = Some(100);
        assert_eq!(updates_to(&out, i)[0].attrs, want_i);
        assert_eq!(updates_to(&out, e)[0].attrs, attrs(&[64512], "10.0.0.1"));
        let mut out = RibOutput::default();
        rib.withdraw_local(net("10.65.0.0/26"), &mut out);
        assert_eq!(
            updates_to(&out, e)[0].withdrawn,
            vec!["10.65.0.0/26".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(rib.counters(e).unwrap().advertised, 0);
    }

    #[test]
    fn originated_communities_travel_and_originating_again_replaces_them() {
        let mut rib = rib(None);
        let e = up(&mut rib, "10.0.9.2", 65001, "10.0.9.2", false);
        let extra = PathAttributes {
            communities: vec![Community(0xfc00_0064)],
            ..PathAttributes::default()
        };
        let mut out = RibOutput::default();
        rib.originate_with(net("10.96.0.0/16"), None, extra, &mut out);
        let mut want = attrs(&[64512], "10.0.0.1");
        want.communities = vec![Community(0xfc00_0064)];
        assert_eq!(updates_to(&out, e)[0].attrs, want);
        let mut out = RibOutput::default();
        rib.originate(net("10.96.0.0/16"), None, &mut out);
        assert_eq!(updates_to(&out, e)[0].attrs, attrs(&[64512], "10.0.0.1"));
    }

    #[test]
    fn local_route_beats_learned_and_learned_route_is_reported_removed() {
        let mut rib = rib(None);
        let e = up(&mut rib, "10.0.9.2", 65001, "10.0.9.2", false);
        apply(
            &mut rib,
            e,
            announce(attrs(&[65001], "10.0.9.2"), &["10.65.0.0/26"]),
        );
        let mut out = RibOutput::default();
        rib.originate(net("10.65.0.0/26"), None, &mut out);
        assert_eq!(out.changes[0].kind, ChangeKind::Removed);
        // The peer now gets our route instead of being told nothing.
        assert_eq!(updates_to(&out, e)[0].attrs, attrs(&[64512], "10.0.0.1"));
    }

    #[test]
    fn peer_up_dumps_table_then_end_of_rib() {
        let mut rib = rib(None);
        let mut out = RibOutput::default();
        rib.originate(net("10.65.0.0/26"), None, &mut out);
        rib.originate(
            net("fd00:65::/122"),
            Some("fd00::1".parse().unwrap()),
            &mut out,
        );
        let id = rib.add_peer(RibPeerConfig::new("10.0.9.2".parse().unwrap(), Asn(65001)));
        let mut out = RibOutput::default();
        rib.peer_up(
            id,
            PeerUp {
                router_id: v4("10.0.9.2"),
                families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
                codec: CodecOptions::FOUR_OCTET,
                local_address: "10.0.9.1".parse().unwrap(),
            },
            &mut out,
        );
        let sent = updates_to(&out, id);
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert_eq!(sent[0].attrs, attrs(&[64512], "10.0.9.1"));
        assert_eq!(sent[1], Update::end_of_rib(Family::IPV4_UNICAST));
        // No IPv6 address toward this peer: the IPv6 route cannot be sent with next-hop-self.
        assert_eq!(sent[2], Update::end_of_rib(Family::IPV6_UNICAST));
    }

    #[test]
    fn ipv6_routes_are_exported_in_mp_reach_with_ipv6_next_hop() {
        let mut rib = rib(None);
        let mut config = RibPeerConfig::new("fd00::2".parse().unwrap(), Asn(65001));
        config.next_hop_v6 = Some("fd00::1".parse().unwrap());
        let id = rib.add_peer(config);
        let mut out = RibOutput::default();
        rib.peer_up(
            id,
            PeerUp {
                router_id: v4("10.0.9.2"),
                families: vec![Family::IPV6_UNICAST],
                codec: CodecOptions::FOUR_OCTET,
                local_address: "fd00::1".parse().unwrap(),
            },
            &mut out,
        );
        let mut out = RibOutput::default();
        rib.originate(net("fd00:65::/122"), None, &mut out);
        let sent = updates_to(&out, id);
        assert_eq!(
            sent[0].mp_reach,
            Some(MpReach {
                family: Family::IPV6_UNICAST,
                next_hop: "fd00::1".parse().unwrap(),
                link_local: None,
                nlri: vec![net("fd00:65::/122")],
            })
        );
        assert_eq!(sent[0].attrs.next_hop, None);
    }

    #[test]
    fn graceful_restart_keeps_stale_routes_until_end_of_rib() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.1.2", 65001, "10.0.1.2", false);
        apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.1.2"), &["10.1.0.0/16", "10.2.0.0/16"]),
        );
        let mut out = RibOutput::default();
        rib.peer_down(a, Some(&[Family::IPV4_UNICAST]), &mut out);
        assert!(out.changes.is_empty(), "stale routes stay in forwarding");
        assert_eq!(rib.counters(a).unwrap().stale, 2);
        assert!(rib.paths_of(&net("10.1.0.0/16"))[0].2);

        let mut out = RibOutput::default();
        rib.peer_up(
            a,
            PeerUp {
                router_id: v4("10.0.1.2"),
                families: vec![Family::IPV4_UNICAST],
                codec: CodecOptions::FOUR_OCTET,
                local_address: "10.0.1.1".parse().unwrap(),
            },
            &mut out,
        );
        apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.1.2"), &["10.1.0.0/16"]),
        );
        assert!(!rib.paths_of(&net("10.1.0.0/16"))[0].2);
        assert_eq!(rib.counters(a).unwrap().stale, 1);
        let out = apply(&mut rib, a, Update::end_of_rib(Family::IPV4_UNICAST));
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].prefix, net("10.2.0.0/16"));
        assert_eq!(out.changes[0].kind, ChangeKind::Removed);
        assert_eq!(rib.len(), 1);
    }

    #[test]
    fn restart_timer_expiry_purges_stale_routes() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.1.2", 65001, "10.0.1.2", false);
        apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.1.2"), &["10.1.0.0/16"]),
        );
        let mut out = RibOutput::default();
        rib.peer_down(a, Some(&[Family::IPV4_UNICAST]), &mut out);
        let mut out = RibOutput::default();
        rib.purge_stale(a, &mut out);
        assert_eq!(out.changes.len(), 1);
        assert!(rib.is_empty());
    }

    #[test]
    fn non_graceful_down_removes_routes_and_withdraws_them_from_others() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.1.2", 65001, "10.0.1.2", false);
        let b = up(&mut rib, "10.0.2.2", 65002, "10.0.2.2", false);
        apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.1.2"), &["10.1.0.0/16"]),
        );
        let mut out = RibOutput::default();
        rib.peer_down(a, None, &mut out);
        assert_eq!(out.changes[0].kind, ChangeKind::Removed);
        assert_eq!(updates_to(&out, b)[0].withdrawn.len(), 1);
        assert_eq!(rib.counters(b).unwrap().advertised, 0);
    }

    #[test]
    fn treat_as_withdraw_view_removes_previous_route() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.1.2", 65001, "10.0.1.2", false);
        apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.1.2"), &["10.0.0.0/24"]),
        );
        // Same prefix again with ORIGIN 7 (invalid): RFC 7606 treat-as-withdraw.
        let body = crate::packet::tests::hex(
            "0000 0014 40 01 01 07 40 02 06 02 01 0000fde9 40 03 04 0a000102 18 0a0000",
        );
        let view = UpdateView::parse(&body, &CodecOptions::FOUR_OCTET).unwrap();
        let mut out = RibOutput::default();
        rib.apply_view(a, &view, &mut out);
        assert_eq!(out.changes[0].kind, ChangeKind::Removed);
        assert!(rib.is_empty());
    }

    #[test]
    fn view_and_owned_update_give_the_same_rib() {
        let mut r1 = rib(None);
        let mut r2 = rib(None);
        let a1 = up(&mut r1, "10.0.1.2", 65001, "10.0.1.2", false);
        let a2 = up(&mut r2, "10.0.1.2", 65001, "10.0.1.2", false);
        let u = announce(attrs(&[65001], "10.0.1.2"), &["10.1.0.0/16", "10.2.0.0/24"]);
        let bytes = crate::packet::Message::Update(u.clone())
            .to_bytes(&CodecOptions::FOUR_OCTET)
            .unwrap();
        let view = UpdateView::parse(&bytes[19..], &CodecOptions::FOUR_OCTET).unwrap();
        let mut o1 = RibOutput::default();
        let mut o2 = RibOutput::default();
        r1.apply_update(a1, &u, &mut o1);
        r2.apply_view(a2, &view, &mut o2);
        assert_eq!(o1, o2);
        assert_eq!(r1.adj_rib_in(a1), r2.adj_rib_in(a2));
    }

    #[test]
    fn many_prefixes_share_one_attribute_set() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.1.2", 65001, "10.0.1.2", false);
        let prefixes: Vec<String> = (0..500)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        apply(&mut rib, a, announce(attrs(&[65001], "10.0.1.2"), &refs));
        assert_eq!(rib.len(), 500);
        assert_eq!(rib.interned_attrs(), 1);
    }

    #[test]
    fn removing_a_peer_drops_its_routes_and_never_reuses_its_id() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.1.2", 65001, "10.0.1.2", false);
        apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.1.2"), &["10.1.0.0/16"]),
        );
        let mut out = RibOutput::default();
        rib.remove_peer(a, &mut out);
        assert!(rib.is_empty());
        assert_eq!(rib.counters(a), None);
        let b = rib.add_peer(RibPeerConfig::new("10.0.2.2".parse().unwrap(), Asn(65002)));
        assert_ne!(b, a);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// (peer index, local_pref, AS path length, origin)
        fn path() -> impl Strategy<Value = (usize, u32, usize, u8)> {
            (
                0usize..4,
                prop_oneof![Just(100u32), Just(200)],
                0usize..4,
                0u8..3,
            )
        }

        fn build(paths: &[(usize, u32, usize, u8)], order: &[usize]) -> (Rib, Vec<PeerId>) {
            let mut rib = rib(None);
            let peers: Vec<PeerId> = (0..4)
                .map(|i| {
                    up(
                        &mut rib,
                        &format!("10.0.0.{}", i + 2),
                        64512,
                        &format!("10.0.0.{}", i + 2),
                        false,
                    )
                })
                .collect();
            for &i in order {
                let (peer, local_pref, len, origin) = paths[i];
                let mut a = attrs(&vec![65001; len], &format!("10.0.0.{}", peer + 2));
                a.local_pref = Some(local_pref);
                a.origin = Some([Origin::Igp, Origin::Egp, Origin::Incomplete][origin as usize]);
                apply(&mut rib, peers[peer], announce(a, &["10.9.0.0/16"]));
            }
            (rib, peers)
        }

        const PREFIXES: [&str; 5] = [
            "10.1.0.0/16",
            "10.1.1.0/24",
            "10.2.0.0/16",
            "10.65.0.0/26",
            "10.66.0.0/26",
        ];

        fn rule() -> impl Strategy<Value = FilterRule> {
            (
                0usize..PREFIXES.len(),
                0u8..4,
                any::<bool>(),
                any::<bool>(),
                prop::option::of(16u8..30),
            )
                .prop_map(|(p, op, remote, accept, min)| {
                    let operator = [
                        MatchOperator::Equal,
                        MatchOperator::NotEqual,
                        MatchOperator::In,
                        MatchOperator::NotIn,
                    ][op as usize];
                    let action = if accept {
                        FilterAction::Accept
                    } else {
                        FilterAction::Reject
                    };
                    FilterRule {
                        remote_peers_only: remote,
                        min_length: min.filter(|m| *m >= net(PREFIXES[p]).prefix_len()),
                        ..FilterRule::cidr(operator, net(PREFIXES[p]), action)
                    }
                })
        }

        fn peer_policy() -> impl Strategy<Value = PeerPolicy> {
            (
                prop::collection::vec(rule(), 0..3),
                prop::collection::vec(rule(), 0..3),
            )
                .prop_map(|(import, export)| PeerPolicy {
                    import: Policy {
                        v4: import,
                        v6: vec![],
                    },
                    export: Policy {
                        v4: export,
                        v6: vec![],
                    },
                })
        }

        /// Peer `a` (eBGP 65001) announces `learned`, we originate 10.65 and 10.66; every peer
        /// starts with `policies`. Returns the RIB, the peers (a, b, t) and what `t` was sent.
        fn filtered(policies: [&PeerPolicy; 3]) -> (Rib, [PeerId; 3], BTreeMap<IpNet, ()>) {
            let mut rib = rib(None);
            let mut sent = BTreeMap::new();
            let mut ids = Vec::new();
            for (i, policy) in policies.iter().enumerate() {
                let address = format!("10.0.{i}.2");
                let mut config =
                    RibPeerConfig::new(address.parse().unwrap(), Asn(65001 + i as u32));
                config.policy = (*policy).clone();
                let id = rib.add_peer(config);
                let mut out = RibOutput::default();
                rib.peer_up(
                    id,
                    PeerUp {
                        router_id: v4(&address),
                        families: vec![Family::IPV4_UNICAST],
                        codec: CodecOptions::FOUR_OCTET,
                        local_address: format!("10.0.{i}.1").parse().unwrap(),
                    },
                    &mut out,
                );
                ids.push(id);
            }
            let [a, b, t] = [ids[0], ids[1], ids[2]];
            let mut out = RibOutput::default();
            rib.originate(net("10.65.0.0/26"), None, &mut out);
            rib.originate(net("10.66.0.0/26"), None, &mut out);
            out.updates.extend(
                apply(
                    &mut rib,
                    a,
                    announce(attrs(&[65001], "10.0.0.2"), &PREFIXES[..3]),
                )
                .updates,
            );
            out.updates.extend(
                apply(
                    &mut rib,
                    b,
                    announce(attrs(&[65002, 65009], "10.0.1.2"), &PREFIXES[1..3]),
                )
                .updates,
            );
            record(&mut sent, &out, t);
            (rib, [a, b, t], sent)
        }

        /// Applies the UPDATEs sent to `t` to `sent` (its view of what we advertise).
        fn record(sent: &mut BTreeMap<IpNet, ()>, out: &RibOutput, t: PeerId) {
            for update in updates_to(out, t) {
                for p in &update.withdrawn {
                    sent.remove(&IpNet::V4(*p));
                }
                for p in &update.nlri {
                    sent.insert(IpNet::V4(*p), ());
                }
            }
        }

        proptest! {
            /// Changing policies on live sessions reaches the same RIBs, counters and
            /// advertisements as starting with the new policies, and what a peer was sent
            /// along the way adds up to what we advertise to it.
            #[test]
            fn live_policy_changes_equal_starting_with_the_new_policies(
                before in prop::collection::vec(peer_policy(), 3),
                after in prop::collection::vec(peer_policy(), 3),
            ) {
                let (mut live, peers, mut sent) =
                    filtered([&before[0], &before[1], &before[2]]);
                for (peer, policy) in peers.iter().zip(&after) {
                    let mut out = RibOutput::default();
                    live.set_policy(*peer, policy.clone(), &mut out);
                    record(&mut sent, &out, peers[2]);
                }
                let (fresh, _, _) = filtered([&after[0], &after[1], &after[2]]);
                for prefix in PREFIXES {
                    let best = |r: &Rib| r.best(&net(prefix)).map(|(s, a)| (s, a.path.as_path.clone()));
                    prop_assert_eq!(best(&live), best(&fresh), "{}", prefix);
                }
                for peer in peers {
                    prop_assert_eq!(live.counters(peer), fresh.counters(peer));
                    prop_assert_eq!(live.adj_rib_out(peer), fresh.adj_rib_out(peer));
                    prop_assert_eq!(live.adj_rib_in(peer), fresh.adj_rib_in(peer));
                }
                let advertised: BTreeMap<IpNet, ()> =
                    live.adj_rib_out(peers[2]).into_iter().map(|(p, _)| (p, ())).collect();
                prop_assert_eq!(sent, advertised);
            }

            #[test]
            fn best_path_does_not_depend_on_arrival_order(
                paths in prop::collection::vec(path(), 1..8),
                seed in any::<u64>(),
            ) {
                let forward: Vec<usize> = (0..paths.len()).collect();
                let mut shuffled = forward.clone();
                // Deterministic shuffle from the seed.
                let mut x = seed | 1;
                for i in (1..shuffled.len()).rev() {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    shuffled.swap(i, (x % (i as u64 + 1)) as usize);
                }
                // Only the last announcement of each peer counts: compare on the same final set.
                let (a, _) = build(&paths, &forward);
                let mut last: BTreeMap<usize, usize> = BTreeMap::new();
                for (i, p) in paths.iter().enumerate() {
                    last.insert(p.0, i);
                }
                let finals: Vec<usize> = last.values().copied().collect();
                let mut finals_shuffled = finals.clone();
                finals_shuffled.reverse();
                let (b, _) = build(&paths, &finals_shuffled);
                let (c, _) = build(&paths, &shuffled.iter().copied().filter(|i| finals.contains(i)).collect::<Vec<_>>());
                let p = net("10.9.0.0/16");
                prop_assert_eq!(a.best(&p).map(|b| b.0), b.best(&p).map(|b| b.0));
                prop_assert_eq!(b.best(&p).map(|b| b.0), c.best(&p).map(|b| b.0));
                prop_assert_eq!(a.paths_of(&p).len(), last.len());
            }

            #[test]
            fn withdrawing_every_peer_empties_the_rib_and_reports_removed_last(
                paths in prop::collection::vec(path(), 1..8),
            ) {
                let order: Vec<usize> = (0..paths.len()).collect();
                let (mut rib, peers) = build(&paths, &order);
                let mut last_kind = None;
                for peer in peers {
                    let out = apply(
                        &mut rib,
                        peer,
                        Update { withdrawn: vec!["10.9.0.0/16".parse().unwrap()], ..Update::default() },
                    );
                    if let Some(c) = out.changes.last() {
                        last_kind = Some(c.kind);
                    }
                }
                prop_assert!(rib.is_empty());
                prop_assert_eq!(last_kind, Some(ChangeKind::Removed));
            }
        }
    }

    fn reject_v4(operator: MatchOperator, cidr: &str) -> Policy {
        Policy {
            v4: vec![FilterRule::cidr(operator, net(cidr), FilterAction::Reject)],
            v6: vec![],
        }
    }

    fn withdrawn_v4(updates: &[Update]) -> Vec<IpNet> {
        updates
            .iter()
            .flat_map(|u| u.withdrawn.iter().map(|p| IpNet::V4(*p)))
            .collect()
    }

    fn announced_v4(updates: &[Update]) -> Vec<IpNet> {
        updates
            .iter()
            .flat_map(|u| u.nlri.iter().map(|p| IpNet::V4(*p)))
            .collect()
    }

    #[test]
    fn import_policy_rejects_routes_and_counts_them_received_not_accepted() {
        let mut rib = rib(None);
        let mut config = RibPeerConfig::new("10.0.1.2".parse().unwrap(), Asn(65001));
        config.policy.import = reject_v4(MatchOperator::Equal, "10.2.0.0/16");
        let a = rib.add_peer(config);
        let mut out = RibOutput::default();
        rib.peer_up(
            a,
            PeerUp {
                router_id: v4("10.0.1.2"),
                families: vec![Family::IPV4_UNICAST],
                codec: CodecOptions::FOUR_OCTET,
                local_address: "10.0.1.1".parse().unwrap(),
            },
            &mut out,
        );
        let out = apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.1.2"), &["10.1.0.0/16", "10.2.0.0/16"]),
        );
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].prefix, net("10.1.0.0/16"));
        assert!(rib.best(&net("10.2.0.0/16")).is_none());
        let c = rib.counters(a).unwrap();
        assert_eq!((c.received, c.accepted), (2, 1));
        // Announced again: still one received; withdrawn: gone from the counters.
        apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.1.2"), &["10.2.0.0/16"]),
        );
        assert_eq!(rib.counters(a).unwrap().received, 2);
        apply(
            &mut rib,
            a,
            Update {
                withdrawn: vec!["10.2.0.0/16".parse().unwrap()],
                ..Update::default()
            },
        );
        let c = rib.counters(a).unwrap();
        assert_eq!((c.received, c.accepted), (1, 1));
    }

    #[test]
    fn a_route_the_import_policy_starts_rejecting_is_withdrawn_from_everyone() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.1.2", 65001, "10.0.1.2", false);
        let b = up(&mut rib, "10.0.2.2", 65002, "10.0.2.2", false);
        apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.1.2"), &["10.1.0.0/16", "10.2.0.0/16"]),
        );
        let mut out = RibOutput::default();
        let policy = PeerPolicy {
            import: reject_v4(MatchOperator::In, "10.2.0.0/16"),
            ..PeerPolicy::default()
        };
        rib.set_policy(a, policy, &mut out);
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].prefix, net("10.2.0.0/16"));
        assert_eq!(out.changes[0].kind, ChangeKind::Removed);
        assert_eq!(withdrawn_v4(&updates_to(&out, b)), vec![net("10.2.0.0/16")]);
        let c = rib.counters(a).unwrap();
        assert_eq!((c.received, c.accepted), (2, 1));
        assert_eq!(rib.counters(b).unwrap().advertised, 1);

        // Lifting the filter imports the kept route again, with no word to the peer.
        let mut out = RibOutput::default();
        rib.set_policy(a, PeerPolicy::default(), &mut out);
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].kind, ChangeKind::Added);
        assert_eq!(out.changes[0].prefix, net("10.2.0.0/16"));
        assert!(updates_to(&out, a).is_empty());
        assert_eq!(announced_v4(&updates_to(&out, b)), vec![net("10.2.0.0/16")]);
        let c = rib.counters(a).unwrap();
        assert_eq!((c.received, c.accepted), (2, 2));
        assert_eq!(rib.counters(b).unwrap().advertised, 2);
    }

    #[test]
    fn export_policy_keeps_routes_from_one_peer_only() {
        let mut rib = rib(None);
        let mut config = RibPeerConfig::new("10.0.9.2".parse().unwrap(), Asn(65009));
        config.policy.export = reject_v4(MatchOperator::Equal, "10.66.0.0/26");
        let id = rib.add_peer(config);
        let other = up(&mut rib, "10.0.8.2", 65008, "10.0.8.2", false);
        let mut out = RibOutput::default();
        rib.originate(net("10.65.0.0/26"), None, &mut out);
        rib.originate(net("10.66.0.0/26"), None, &mut out);
        let mut out = RibOutput::default();
        rib.peer_up(
            id,
            PeerUp {
                router_id: v4("10.0.9.2"),
                families: vec![Family::IPV4_UNICAST],
                codec: CodecOptions::FOUR_OCTET,
                local_address: "10.0.9.1".parse().unwrap(),
            },
            &mut out,
        );
        assert_eq!(
            announced_v4(&updates_to(&out, id)),
            vec![net("10.65.0.0/26")]
        );
        assert_eq!(rib.counters(id).unwrap().advertised, 1);
        assert_eq!(rib.adj_rib_out(id).len(), 1);
        assert_eq!(rib.adj_rib_out(other).len(), 2);
        // Re-originating the rejected prefix still sends nothing to that peer.
        let mut out = RibOutput::default();
        rib.withdraw_local(net("10.66.0.0/26"), &mut out);
        rib.originate(net("10.66.0.0/26"), None, &mut out);
        assert!(updates_to(&out, id).is_empty(), "{out:?}");
        assert_eq!(updates_to(&out, other).len(), 2);
    }

    #[test]
    fn export_policy_change_withdraws_and_announces_on_the_live_session() {
        let mut rib = rib(None);
        let id = up(&mut rib, "10.0.9.2", 65009, "10.0.9.2", false);
        let a = up(&mut rib, "10.0.1.2", 65001, "10.0.1.2", false);
        let mut out = RibOutput::default();
        rib.originate(net("10.65.0.0/26"), None, &mut out);
        rib.originate(net("10.66.0.0/26"), None, &mut out);
        apply(
            &mut rib,
            a,
            announce(attrs(&[65001], "10.0.1.2"), &["10.1.0.0/16"]),
        );
        assert_eq!(rib.counters(id).unwrap().advertised, 3);

        // Reject 10.66.0.0/26 and every route learned from other peers.
        let mut out = RibOutput::default();
        let policy = PeerPolicy {
            export: Policy {
                v4: vec![
                    FilterRule::cidr(
                        MatchOperator::Equal,
                        net("10.66.0.0/26"),
                        FilterAction::Reject,
                    ),
                    FilterRule {
                        remote_peers_only: true,
                        ..FilterRule::any(FilterAction::Reject)
                    },
                ],
                v6: vec![],
            },
            ..PeerPolicy::default()
        };
        rib.set_policy(id, policy, &mut out);
        assert!(out.changes.is_empty());
        let sent = updates_to(&out, id);
        assert_eq!(
            withdrawn_v4(&sent),
            vec![net("10.1.0.0/16"), net("10.66.0.0/26")]
        );
        assert!(announced_v4(&sent).is_empty());
        assert!(updates_to(&out, a).is_empty());
        assert_eq!(rib.counters(id).unwrap().advertised, 1);

        // Accept the learned routes again (a rule earlier in the list).
        let mut out = RibOutput::default();
        let mut policy = rib.policy(id).unwrap().clone();
        policy.export.v4.insert(
            0,
            FilterRule {
                remote_peers_only: true,
                ..FilterRule::any(FilterAction::Accept)
            },
        );
        rib.set_policy(id, policy, &mut out);
        let sent = updates_to(&out, id);
        assert!(withdrawn_v4(&sent).is_empty());
        assert_eq!(announced_v4(&sent), vec![net("10.1.0.0/16")]);
        assert_eq!(rib.counters(id).unwrap().advertised, 2);
        assert_eq!(rib.adj_rib_out(id).len(), 2);
    }

    #[test]
    fn export_policy_accept_does_not_override_ibgp_split_horizon() {
        let mut rib = rib(None);
        let a = up(&mut rib, "10.0.1.2", 64512, "10.0.1.2", false);
        let b = up(&mut rib, "10.0.2.2", 64512, "10.0.2.2", false);
        apply(
            &mut rib,
            a,
            announce(attrs(&[], "10.0.1.2"), &["10.1.0.0/16"]),
        );
        let mut out = RibOutput::default();
        let policy = PeerPolicy {
            export: Policy {
                v4: vec![FilterRule::any(FilterAction::Reject)],
                v6: vec![],
            },
            ..PeerPolicy::default()
        };
        rib.set_policy(b, policy, &mut out);
        let mut out = RibOutput::default();
        rib.set_policy(b, PeerPolicy::default(), &mut out);
        assert!(updates_to(&out, b).is_empty(), "{out:?}");
        assert_eq!(rib.counters(b).unwrap().advertised, 0);
    }

    #[test]
    fn restarted_peer_without_forwarding_bit_loses_its_stale_routes_at_once() {
        for preserved in [true, false] {
            let mut rib = rib(None);
            let a = up(&mut rib, "10.0.1.2", 65001, "10.0.1.2", false);
            apply(
                &mut rib,
                a,
                announce(attrs(&[65001], "10.0.1.2"), &["10.1.0.0/16"]),
            );
            let mut out = RibOutput::default();
            rib.peer_down(a, Some(&[Family::IPV4_UNICAST]), &mut out);
            assert_eq!(rib.counters(a).unwrap().stale, 1);
            let families = if preserved {
                vec![Family::IPV4_UNICAST]
            } else {
                vec![]
            };
            let mut out = RibOutput::default();
            rib.flush_unpreserved_stale(a, &families, &mut out);
            if preserved {
                assert!(out.changes.is_empty());
                assert_eq!(rib.counters(a).unwrap().stale, 1);
            } else {
                assert_eq!(out.changes.len(), 1);
                assert_eq!(out.changes[0].kind, ChangeKind::Removed);
                assert_eq!(rib.counters(a).unwrap().stale, 0);
                assert!(rib.is_empty());
            }
        }
    }
}
