//! Makes the kernel match a [`HostState`]: routes, the VXLAN device and its neighbours, and NAT.
//!
//! It reconciles rather than patches: each pass lists what the kernel has of ours (routes with
//! protocol 80, workload routes with protocol boot on `cali*` devices, the `vxlan.calico` device
//! and its permanent neighbour and FDB entries) and changes only the difference, so a restart
//! adopts what a previous run left and an error is mended by the next pass.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::IpAddr;

use felis_netlink::FdbEntry;
use felis_netlink::Handle;
use felis_netlink::Ifindex;
use felis_netlink::MacAddr;
use felis_netlink::Route;
use felis_netlink::RouteFilter;
use felis_netlink::RouteKind;
use felis_netlink::RouteProtocol;
use felis_netlink::RouteScope;
use felis_netlink::TABLE_MAIN;
use felis_netlink::Vxlan;
use ipnet::IpNet;
use tracing::debug;
use tracing::warn;

use crate::calc::HostState;
use crate::calc::NatSets;
use crate::calc::RouteTarget;
use crate::calc::Vtep;
use crate::fastpath::FastPathPlane;
use crate::ipip::IpipPlane;
use crate::ipip::IpipRouting;
use crate::nat;

/// The VXLAN device's name.
pub const VXLAN_DEVICE: &str = "vxlan.calico";
/// Calico's VNI.
pub const VXLAN_VNI: u32 = 4096;
/// The VXLAN UDP port.
pub const VXLAN_PORT: u16 = 4789;
pub use crate::calc::VXLAN_OVERHEAD;
/// Workload interfaces start with this.
pub const WORKLOAD_PREFIX: &str = "cali";

/// Dataplane errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink operation failed.
    #[error("{what}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: felis_netlink::Error,
    },
    /// nftables refused the NAT rules.
    #[error("programming natOutgoing")]
    Nat(#[source] felis_nft::Error),
}

fn nl(what: impl Into<String>) -> impl FnOnce(felis_netlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

/// What one pass changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Routes added or replaced.
    pub routes_set: usize,
    /// Routes removed.
    pub routes_removed: usize,
    /// Routes that could not be programmed yet (device missing, IPIP unsupported).
    pub routes_pending: usize,
}

/// The reconciler: a netlink handle on the host's namespace and what it last programmed.
pub struct Dataplane {
    handle: Handle,
    node_address: IpAddr,
    host_mtu: u32,
    nat_programmed: Option<NatSets>,
    ipip: IpipPlane,
    fast_path: FastPathPlane,
}

impl Dataplane {
    /// A reconciler for a host whose address is `node_address`.
    pub fn new(handle: Handle, node_address: IpAddr, host_mtu: u32) -> Dataplane {
        Dataplane {
            handle,
            node_address,
            host_mtu,
            nat_programmed: None,
            ipip: IpipPlane::new(),
            fast_path: FastPathPlane::default(),
        }
    }

    /// This host's addresses and the interfaces that hold them (for host endpoints that name
    /// only `expectedIPs`).
    pub async fn host_addresses(&self) -> Result<BTreeMap<IpAddr, String>, Error> {
        let links = self.handle.links().await.map_err(nl("listing links"))?;
        let names: BTreeMap<Ifindex, &str> =
            links.iter().map(|l| (l.index, l.name.as_str())).collect();
        let addresses = self
            .handle
            .addresses(None)
            .await
            .map_err(nl("listing addresses"))?;
        Ok(addresses
            .iter()
            .filter_map(|a| Some((a.net.addr(), (*names.get(&a.ifindex)?).to_string())))
            .collect())
    }

    /// The routed fast path on the uplink and the local workload veths.
    pub fn fast_path_mut(&mut self) -> &mut FastPathPlane {
        &mut self.fast_path
    }

    /// The IPIP plane (kernel `tunl0` or eBPF on tc): its status, and this node's tunnel address.
    pub fn ipip_mut(&mut self) -> &mut IpipPlane {
        &mut self.ipip
    }

    /// Forgets what was programmed, so the next pass rewrites everything (after errors).
    pub fn invalidate(&mut self) {
        self.nat_programmed = None;
        self.ipip.invalidate();
    }

    /// One reconciliation pass toward `desired`.
    pub async fn reconcile(&mut self, desired: &HostState) -> Result<PassStats, Error> {
        let mut stats = PassStats::default();
        let vxlan = self.reconcile_vxlan(desired).await?;
        let ipip = self
            .ipip
            .reconcile(&self.handle, desired, self.node_address, self.host_mtu)
            .await;
        let links = self
            .reconcile_routes(desired, vxlan, ipip.as_ref(), &mut stats)
            .await?;
        self.reconcile_fast_path(desired, &links).await?;
        if self.nat_programmed.as_ref() != Some(&desired.nat) {
            let script = nat::render(&desired.nat);
            tokio::task::spawn_blocking(move || nat::apply(&script))
                .await
                .map_err(|e| Error::Nat(felis_nft::Error::Spawn(std::io::Error::other(e))))?
                .map_err(Error::Nat)?;
            self.nat_programmed = Some(desired.nat.clone());
        }
        Ok(stats)
    }

    /// Ensures (or removes) `vxlan.calico` and its neighbours; returns its index when present.
    async fn reconcile_vxlan(&self, desired: &HostState) -> Result<Option<Ifindex>, Error> {
        let existing = self
            .handle
            .link(VXLAN_DEVICE)
            .await
            .map_err(nl("reading vxlan.calico"))?;
        let Some(vtep) = &desired.local_vtep else {
            if existing.is_some() {
                self.handle
                    .delete_link_by_name(VXLAN_DEVICE)
                    .await
                    .map_err(nl("removing vxlan.calico"))?;
            }
            return Ok(None);
        };
        let mac: MacAddr = vtep
            .mac
            .parse()
            .map_err(nl(format!("VTEP MAC {}", vtep.mac)))?;
        let mtu = self.host_mtu.saturating_sub(VXLAN_OVERHEAD);
        let link = match existing {
            Some(link) if link.kind.as_deref() == Some("vxlan") => link,
            other => {
                if other.is_some() {
                    self.handle
                        .delete_link_by_name(VXLAN_DEVICE)
                        .await
                        .map_err(nl("replacing a non-VXLAN vxlan.calico"))?;
                }
                let parent = self.parent_ifindex().await?;
                self.handle
                    .add_vxlan(&Vxlan {
                        name: VXLAN_DEVICE.to_string(),
                        vni: VXLAN_VNI,
                        port: VXLAN_PORT,
                        local: Some(self.node_address),
                        dev: parent,
                        learning: false,
                        mtu: Some(mtu),
                        mac: Some(mac),
                    })
                    .await
                    .map_err(nl("creating vxlan.calico"))?
            }
        };
        let index = link.index;
        if link.mac != Some(mac) {
            self.handle
                .set_mac(index, mac)
                .await
                .map_err(nl("setting the VTEP MAC"))?;
        }
        if link.mtu != Some(mtu) {
            self.handle
                .set_mtu(index, mtu)
                .await
                .map_err(nl("setting the VXLAN MTU"))?;
        }
        let address = IpNet::from(vtep.address);
        let addresses = self
            .handle
            .addresses(Some(index))
            .await
            .map_err(nl("reading VTEP addresses"))?;
        for a in &addresses {
            if a.net != address {
                self.handle
                    .del_address(index, a.net)
                    .await
                    .map_err(nl("removing a VTEP address"))?;
            }
        }
        if !addresses.iter().any(|a| a.net == address) {
            self.handle
                .add_address(index, address)
                .await
                .map_err(nl("adding the VTEP address"))?;
        }
        if !link.is_up {
            self.handle
                .set_link_up(index)
                .await
                .map_err(nl("setting vxlan.calico up"))?;
        }
        self.reconcile_vteps(index, &desired.remote_vteps).await?;
        Ok(Some(index))
    }

    /// Static ARP (tunnel address → MAC) and FDB (MAC → node address) for each remote VTEP.
    async fn reconcile_vteps(
        &self,
        index: Ifindex,
        remote: &BTreeMap<IpAddr, Vtep>,
    ) -> Result<(), Error> {
        let mut want_neigh: BTreeMap<IpAddr, MacAddr> = BTreeMap::new();
        let mut want_fdb: BTreeSet<(MacAddr, IpAddr)> = BTreeSet::new();
        for (node_address, vtep) in remote {
            match vtep.mac.parse::<MacAddr>() {
                Ok(mac) => {
                    want_neigh.insert(vtep.address, mac);
                    want_fdb.insert((mac, *node_address));
                }
                Err(_) => warn!(mac = %vtep.mac, node = %node_address, "ignoring a bad VTEP MAC"),
            }
        }
        let neighbours = self
            .handle
            .neighbours(Some(index))
            .await
            .map_err(nl("reading VTEP neighbours"))?;
        for n in neighbours.iter().filter(|n| n.is_permanent) {
            if want_neigh.get(&n.ip) != n.mac.as_ref() {
                self.handle
                    .del_neighbour(index, n.ip)
                    .await
                    .map_err(nl("removing a neighbour"))?;
            }
        }
        for (ip, mac) in &want_neigh {
            let present = neighbours
                .iter()
                .any(|n| n.ip == *ip && n.mac == Some(*mac));
            if !present {
                self.handle
                    .set_neighbour(index, *ip, *mac)
                    .await
                    .map_err(nl("adding a neighbour"))?;
            }
        }
        let fdb = self
            .handle
            .fdb(Some(index))
            .await
            .map_err(nl("reading the VXLAN FDB"))?;
        for entry in fdb.iter().filter(|e| e.dst.is_some()) {
            let key = (entry.mac, entry.dst.unwrap_or(self.node_address));
            if !want_fdb.contains(&key) {
                self.handle
                    .del_fdb(entry)
                    .await
                    .map_err(nl("removing an FDB entry"))?;
            }
        }
        for (mac, dst) in &want_fdb {
            if !fdb.iter().any(|e| e.mac == *mac && e.dst == Some(*dst)) {
                let entry = FdbEntry {
                    ifindex: index,
                    mac: *mac,
                    dst: Some(*dst),
                };
                self.handle
                    .set_fdb(&entry)
                    .await
                    .map_err(nl("adding an FDB entry"))?;
            }
        }
        Ok(())
    }

    /// Attaches the fast path to the uplink and to the veths of the local workloads in
    /// `desired` that exist (`links`: name → index).
    async fn reconcile_fast_path(
        &mut self,
        desired: &HostState,
        links: &BTreeMap<String, Ifindex>,
    ) -> Result<(), Error> {
        if !self.fast_path.needs_interfaces() {
            return Ok(());
        }
        let uplink = crate::ipip::host_interface(&self.handle, self.node_address)
            .await
            .map(|(index, name)| (name, index.0));
        let workloads: BTreeMap<String, u32> = desired
            .routes
            .values()
            .filter_map(|target| match target {
                RouteTarget::Workload { interface } => links
                    .get(interface)
                    .map(|index| (interface.clone(), index.0)),
                _ => None,
            })
            .collect();
        self.fast_path
            .reconcile(uplink.as_ref().map(|(n, i)| (n.as_str(), *i)), &workloads);
        Ok(())
    }

    /// Programs the routes; returns the links seen (name → index).
    async fn reconcile_routes(
        &self,
        desired: &HostState,
        vxlan: Option<Ifindex>,
        ipip: Option<&IpipRouting>,
        stats: &mut PassStats,
    ) -> Result<BTreeMap<String, Ifindex>, Error> {
        let ours = self
            .handle
            .routes(RouteFilter {
                table: Some(TABLE_MAIN),
                protocol: Some(RouteProtocol::FELIX),
                ..RouteFilter::default()
            })
            .await
            .map_err(nl("listing our routes"))?;
        let boot = self
            .handle
            .routes(RouteFilter {
                table: Some(TABLE_MAIN),
                protocol: Some(RouteProtocol::BOOT),
                ..RouteFilter::default()
            })
            .await
            .map_err(nl("listing workload routes"))?;
        let links = self.handle.links().await.map_err(nl("listing links"))?;
        let by_name: BTreeMap<String, Ifindex> =
            links.iter().map(|l| (l.name.clone(), l.index)).collect();
        let mut wanted: BTreeSet<IpNet> = BTreeSet::new();
        let mut ipip_set: Vec<Route> = Vec::new();
        for (dst, target) in &desired.routes {
            let route = match target {
                RouteTarget::Workload { interface } => match by_name.get(interface.as_str()) {
                    Some(index) => Route::new(*dst)
                        .dev(*index)
                        .scope(RouteScope::Link)
                        .protocol(RouteProtocol::BOOT),
                    None => {
                        stats.routes_pending += 1;
                        continue;
                    }
                },
                RouteTarget::Blackhole => Route::blackhole(*dst).protocol(RouteProtocol::FELIX),
                RouteTarget::Direct { via } => match self.resolve(*via).await? {
                    Some((gateway, index)) => Route::new(*dst)
                        .via(gateway)
                        .dev(index)
                        .protocol(RouteProtocol::FELIX),
                    None => {
                        stats.routes_pending += 1;
                        continue;
                    }
                },
                RouteTarget::Vxlan { via } => match vxlan {
                    Some(index) => Route::new(*dst)
                        .via(*via)
                        .dev(index)
                        .onlink()
                        .protocol(RouteProtocol::FELIX),
                    None => {
                        stats.routes_pending += 1;
                        continue;
                    }
                },
                // `tunl0` or the eBPF classifiers encapsulate: crate::ipip builds the route.
                RouteTarget::Ipip { via } => {
                    let next_hop = match ipip {
                        Some(ipip) if ipip.needs_next_hop() => self.resolve(*via).await?,
                        _ => None,
                    };
                    match ipip.and_then(|ipip| ipip.route(*dst, *via, next_hop)) {
                        Some(route) => route,
                        None => {
                            stats.routes_pending += 1;
                            continue;
                        }
                    }
                }
            };
            if !matches!(target, RouteTarget::Workload { .. }) {
                wanted.insert(*dst);
            }
            let current = ours.iter().chain(&boot).find(|r| r.dst == *dst);
            if current.is_some_and(|c| same_route(c, &route)) {
                continue;
            }
            // A workload route owned by CNI under another protocol is replaced by ours.
            if let Some(c) = current.filter(|c| c.protocol != route.protocol) {
                let _ = self.handle.del_route(c).await;
            }
            debug!(route = %route, "programming route");
            self.handle
                .replace_route(&route)
                .await
                .map_err(nl(format!("programming {route}")))?;
            stats.routes_set += 1;
            if matches!(target, RouteTarget::Ipip { .. }) {
                ipip_set.push(route);
            }
        }
        if let Some(ipip) = ipip
            && let Err(e) = crate::ipip::set_route_mtus(&ipip_set, ipip)
        {
            warn!(error = %e, "setting the MTU of IPIP routes failed");
        }
        for route in &ours {
            if !wanted.contains(&route.dst) {
                match self.handle.del_route(route).await {
                    Ok(()) => stats.routes_removed += 1,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(nl(format!("removing {route}"))(e)),
                }
            }
        }
        Ok(by_name)
    }

    /// The next hop toward a remote node's address: itself when it is on a connected subnet,
    /// otherwise the gateway the kernel uses to reach it (as BIRD's `gateway recursive` does).
    async fn resolve(&self, via: IpAddr) -> Result<Option<(IpAddr, Ifindex)>, Error> {
        let route = self
            .handle
            .route_lookup(via)
            .await
            .map_err(nl(format!("looking up {via}")))?;
        Ok(route.and_then(|r| Some((r.gateway.unwrap_or(via), r.ifindex?))))
    }

    /// The interface that holds the node's address (the VXLAN device's parent).
    async fn parent_ifindex(&self) -> Result<Option<Ifindex>, Error> {
        let addresses = self
            .handle
            .addresses(None)
            .await
            .map_err(nl("listing addresses"))?;
        Ok(addresses
            .iter()
            .find(|a| a.net.addr() == self.node_address)
            .map(|a| a.ifindex))
    }
}

fn same_route(a: &Route, b: &Route) -> bool {
    a.dst == b.dst
        && a.kind == b.kind
        && a.protocol == b.protocol
        && a.gateway == b.gateway
        && (b.source.is_none() || a.source == b.source)
        && (a.kind == RouteKind::Blackhole || a.ifindex == b.ifindex)
}
