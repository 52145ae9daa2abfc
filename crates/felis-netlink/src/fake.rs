//! [`Netlink`]: the operations reconcilers need, as a trait, and [`RecordingNetlink`], an
//! in-memory fake that records every change, for tests without root.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;

use ipnet::IpNet;

use crate::error::Error;
use crate::error::Result;
use crate::error::libc_errno;
use crate::handle::Handle;
use crate::types::Address;
use crate::types::FdbEntry;
use crate::types::Ifindex;
use crate::types::Link;
use crate::types::MacAddr;
use crate::types::Neighbour;
use crate::types::Route;
use crate::types::RouteFilter;
use crate::types::Vxlan;

/// The kernel operations an agent's reconciler uses; [`Handle`] is the real one.
pub trait Netlink: Send + Sync {
    /// Every link.
    fn links(&self) -> impl Future<Output = Result<Vec<Link>>> + Send;
    /// The link called `name`.
    fn link(&self, name: &str) -> impl Future<Output = Result<Option<Link>>> + Send;
    /// Creates a VXLAN device.
    fn add_vxlan(&self, vxlan: &Vxlan) -> impl Future<Output = Result<Link>> + Send;
    /// Sets a link up.
    fn set_link_up(&self, index: Ifindex) -> impl Future<Output = Result<()>> + Send;
    /// Sets a link's MTU.
    fn set_mtu(&self, index: Ifindex, mtu: u32) -> impl Future<Output = Result<()>> + Send;
    /// Sets a link's MAC.
    fn set_mac(&self, index: Ifindex, mac: MacAddr) -> impl Future<Output = Result<()>> + Send;
    /// Deletes a link.
    fn delete_link(&self, index: Ifindex) -> impl Future<Output = Result<()>> + Send;
    /// Addresses of one link or all.
    fn addresses(
        &self,
        index: Option<Ifindex>,
    ) -> impl Future<Output = Result<Vec<Address>>> + Send;
    /// Adds an address.
    fn add_address(&self, index: Ifindex, net: IpNet) -> impl Future<Output = Result<()>> + Send;
    /// Removes an address.
    fn del_address(&self, index: Ifindex, net: IpNet) -> impl Future<Output = Result<()>> + Send;
    /// Routes matching `filter`.
    fn routes(&self, filter: RouteFilter) -> impl Future<Output = Result<Vec<Route>>> + Send;
    /// Adds or replaces a route.
    fn replace_route(&self, route: &Route) -> impl Future<Output = Result<()>> + Send;
    /// Deletes a route.
    fn del_route(&self, route: &Route) -> impl Future<Output = Result<()>> + Send;
    /// Installs a permanent neighbour.
    fn set_neighbour(
        &self,
        index: Ifindex,
        ip: IpAddr,
        mac: MacAddr,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Deletes a neighbour.
    fn del_neighbour(&self, index: Ifindex, ip: IpAddr) -> impl Future<Output = Result<()>> + Send;
    /// Neighbours of one link or all.
    fn neighbours(
        &self,
        index: Option<Ifindex>,
    ) -> impl Future<Output = Result<Vec<Neighbour>>> + Send;
    /// Installs a permanent FDB entry.
    fn set_fdb(&self, entry: &FdbEntry) -> impl Future<Output = Result<()>> + Send;
    /// Deletes an FDB entry.
    fn del_fdb(&self, entry: &FdbEntry) -> impl Future<Output = Result<()>> + Send;
    /// FDB entries of one link or all.
    fn fdb(&self, index: Option<Ifindex>) -> impl Future<Output = Result<Vec<FdbEntry>>> + Send;
    /// Writes sysctls in the namespace, in order.
    fn write_sysctls(&self, settings: &[(String, String)]) -> Result<()>;
}

impl Netlink for Handle {
    fn links(&self) -> impl Future<Output = Result<Vec<Link>>> + Send {
        Handle::links(self)
    }
    fn link(&self, name: &str) -> impl Future<Output = Result<Option<Link>>> + Send {
        Handle::link(self, name)
    }
    fn add_vxlan(&self, vxlan: &Vxlan) -> impl Future<Output = Result<Link>> + Send {
        Handle::add_vxlan(self, vxlan)
    }
    fn set_link_up(&self, index: Ifindex) -> impl Future<Output = Result<()>> + Send {
        Handle::set_link_up(self, index)
    }
    fn set_mtu(&self, index: Ifindex, mtu: u32) -> impl Future<Output = Result<()>> + Send {
        Handle::set_mtu(self, index, mtu)
    }
    fn set_mac(&self, index: Ifindex, mac: MacAddr) -> impl Future<Output = Result<()>> + Send {
        Handle::set_mac(self, index, mac)
    }
    fn delete_link(&self, index: Ifindex) -> impl Future<Output = Result<()>> + Send {
        Handle::delete_link(self, index)
    }
    fn addresses(
        &self,
        index: Option<Ifindex>,
    ) -> impl Future<Output = Result<Vec<Address>>> + Send {
        Handle::addresses(self, index)
    }
    fn add_address(&self, index: Ifindex, net: IpNet) -> impl Future<Output = Result<()>> + Send {
        Handle::add_address(self, index, net)
    }
    fn del_address(&self, index: Ifindex, net: IpNet) -> impl Future<Output = Result<()>> + Send {
        Handle::del_address(self, index, net)
    }
    fn routes(&self, filter: RouteFilter) -> impl Future<Output = Result<Vec<Route>>> + Send {
        Handle::routes(self, filter)
    }
    fn replace_route(&self, route: &Route) -> impl Future<Output = Result<()>> + Send {
        Handle::replace_route(self, route)
    }
    fn del_route(&self, route: &Route) -> impl Future<Output = Result<()>> + Send {
        Handle::del_route(self, route)
    }
    fn set_neighbour(
        &self,
        index: Ifindex,
        ip: IpAddr,
        mac: MacAddr,
    ) -> impl Future<Output = Result<()>> + Send {
        Handle::set_neighbour(self, index, ip, mac)
    }
    fn del_neighbour(&self, index: Ifindex, ip: IpAddr) -> impl Future<Output = Result<()>> + Send {
        Handle::del_neighbour(self, index, ip)
    }
    fn neighbours(
        &self,
        index: Option<Ifindex>,
    ) -> impl Future<Output = Result<Vec<Neighbour>>> + Send {
        Handle::neighbours(self, index)
    }
    fn set_fdb(&self, entry: &FdbEntry) -> impl Future<Output = Result<()>> + Send {
        Handle::set_fdb(self, entry)
    }
    fn del_fdb(&self, entry: &FdbEntry) -> impl Future<Output = Result<()>> + Send {
        Handle::del_fdb(self, entry)
    }
    fn fdb(&self, index: Option<Ifindex>) -> impl Future<Output = Result<Vec<FdbEntry>>> + Send {
        Handle::fdb(self, index)
    }
    fn write_sysctls(&self, settings: &[(String, String)]) -> Result<()> {
        Handle::write_sysctls(self, settings)
    }
}

/// A change made through [`RecordingNetlink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `add_vxlan`.
    AddVxlan(Vxlan),
    /// `set_link_up`.
    SetLinkUp(Ifindex),
    /// `set_mtu`.
    SetMtu(Ifindex, u32),
    /// `set_mac`.
    SetMac(Ifindex, MacAddr),
    /// `delete_link`.
    DeleteLink(Ifindex),
    /// `add_address`.
    AddAddress(Ifindex, IpNet),
    /// `del_address`.
    DelAddress(Ifindex, IpNet),
    /// `replace_route`.
    ReplaceRoute(Route),
    /// `del_route`.
    DelRoute(Route),
    /// `set_neighbour`.
    SetNeighbour(Ifindex, IpAddr, MacAddr),
    /// `del_neighbour`.
    DelNeighbour(Ifindex, IpAddr),
    /// `set_fdb`.
    SetFdb(FdbEntry),
    /// `del_fdb`.
    DelFdb(FdbEntry),
    /// One sysctl of `write_sysctls`.
    WriteSysctl(String, String),
}

#[derive(Debug, Default)]
struct State {
    links: BTreeMap<Ifindex, Link>,
    addresses: Vec<Address>,
    routes: Vec<Route>,
    neighbours: Vec<Neighbour>,
    fdb: Vec<FdbEntry>,
    sysctls: BTreeMap<String, String>,
    calls: Vec<Call>,
}

/// An in-memory kernel that keeps state like the real one (replace semantics, `ENOENT` on
/// deleting what is missing, `EEXIST` on duplicates) and records every change in order.
#[derive(Debug, Default)]
pub struct RecordingNetlink {
    state: Mutex<State>,
}

impl RecordingNetlink {
    /// An empty namespace.
    pub fn new() -> RecordingNetlink {
        RecordingNetlink::default()
    }

    /// Adds a pre-existing link (e.g. `eth0`) without recording a call; returns its index.
    pub fn with_link(&self, name: &str, kind: Option<&str>) -> Ifindex {
        let mut state = self.lock();
        let index = Ifindex(state.links.keys().last().map_or(1, |i| i.0 + 1));
        state.links.insert(
            index,
            Link {
                index,
                name: name.to_string(),
                kind: kind.map(str::to_string),
                mac: None,
                mtu: Some(1500),
                is_up: true,
                controller: None,
                link: None,
            },
        );
        index
    }

    /// Adds a pre-existing route without recording a call.
    pub fn with_route(&self, route: Route) {
        self.lock().routes.push(route);
    }

    /// The changes made so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Returns and forgets the changes made so far.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }

    /// The current value of a sysctl written through the fake.
    pub fn sysctl(&self, key: &str) -> Option<String> {
        self.lock().sysctls.get(key).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn errno(op: &'static str, object: String, code: i32) -> Error {
    Error::Request {
        op,
        object,
        source: io::Error::from_raw_os_error(code),
    }
}

fn same_route(a: &Route, b: &Route) -> bool {
    // The kernel's identity of a route: destination, table, metric (and type for deletes).
    a.dst == b.dst && a.table == b.table && a.metric == b.metric
}

impl Netlink for RecordingNetlink {
    async fn links(&self) -> Result<Vec<Link>> {
        Ok(self.lock().links.values().cloned().collect())
    }

    async fn link(&self, name: &str) -> Result<Option<Link>> {
        Ok(self.lock().links.values().find(|l| l.name == name).cloned())
    }

    async fn add_vxlan(&self, vxlan: &Vxlan) -> Result<Link> {
        let mut state = self.lock();
        if state.links.values().any(|l| l.name == vxlan.name) {
            return Err(errno(
                "add",
                format!("vxlan {}", vxlan.name),
                libc_errno::EEXIST,
            ));
        }
        let index = Ifindex(state.links.keys().last().map_or(1, |i| i.0 + 1));
        let link = Link {
            index,
            name: vxlan.name.clone(),
            kind: Some("vxlan".to_string()),
            mac: vxlan.mac,
            mtu: vxlan.mtu.or(Some(1500)),
            is_up: false,
            controller: None,
            link: vxlan.dev,
        };
        state.links.insert(index, link.clone());
        state.calls.push(Call::AddVxlan(vxlan.clone()));
        Ok(link)
    }

    async fn set_link_up(&self, index: Ifindex) -> Result<()> {
        let mut state = self.lock();
        let link = state
            .links
            .get_mut(&index)
            .ok_or_else(|| errno("set up", format!("link #{index}"), libc_errno::ENODEV))?;
        link.is_up = true;
        state.calls.push(Call::SetLinkUp(index));
        Ok(())
    }

    async fn set_mtu(&self, index: Ifindex, mtu: u32) -> Result<()> {
        let mut state = self.lock();
        let link = state
            .links
            .get_mut(&index)
            .ok_or_else(|| errno("set mtu of", format!("link #{index}"), libc_errno::ENODEV))?;
        link.mtu = Some(mtu);
        state.calls.push(Call::SetMtu(index, mtu));
        Ok(())
    }

    async fn set_mac(&self, index: Ifindex, mac: MacAddr) -> Result<()> {
        let mut state = self.lock();
        let link = state
            .links
            .get_mut(&index)
            .ok_or_else(|| errno("set mac of", format!("link #{index}"), libc_errno::ENODEV))?;
        link.mac = Some(mac);
        state.calls.push(Call::SetMac(index, mac));
        Ok(())
    }

    async fn delete_link(&self, index: Ifindex) -> Result<()> {
        let mut state = self.lock();
        if state.links.remove(&index).is_none() {
            return Err(errno(
                "delete",
                format!("link #{index}"),
                libc_errno::ENODEV,
            ));
        }
        // As the kernel does: everything on the link goes with it.
        state.addresses.retain(|a| a.ifindex != index);
        state.routes.retain(|r| r.ifindex != Some(index));
        state.neighbours.retain(|n| n.ifindex != index);
        state.fdb.retain(|f| f.ifindex != index);
        state.calls.push(Call::DeleteLink(index));
        Ok(())
    }

    async fn addresses(&self, index: Option<Ifindex>) -> Result<Vec<Address>> {
        let mut out: Vec<Address> = self
            .lock()
            .addresses
            .iter()
            .filter(|a| index.is_none_or(|i| a.ifindex == i))
            .cloned()
            .collect();
        out.sort();
        Ok(out)
    }

    async fn add_address(&self, index: Ifindex, net: IpNet) -> Result<()> {
        let mut state = self.lock();
        let address = Address {
            ifindex: index,
            net,
        };
        if state.addresses.contains(&address) {
            return Err(errno(
                "add",
                format!("address {net} on link #{index}"),
                libc_errno::EEXIST,
            ));
        }
        state.addresses.push(address);
        state.calls.push(Call::AddAddress(index, net));
        Ok(())
    }

    async fn del_address(&self, index: Ifindex, net: IpNet) -> Result<()> {
        let mut state = self.lock();
        let before = state.addresses.len();
        state
            .addresses
            .retain(|a| !(a.ifindex == index && a.net == net));
        if state.addresses.len() == before {
            return Err(errno(
                "delete",
                format!("address {net} on link #{index}"),
                99,
            ));
        }
        state.calls.push(Call::DelAddress(index, net));
        Ok(())
    }

    async fn routes(&self, filter: RouteFilter) -> Result<Vec<Route>> {
        let mut out: Vec<Route> = self
            .lock()
            .routes
            .iter()
            .filter(|r| {
                filter.ipv6.is_none_or(|v6| r.dst.addr().is_ipv6() == v6)
                    && filter.table.is_none_or(|t| r.table == t)
                    && filter.protocol.is_none_or(|p| r.protocol == p)
                    && filter.ifindex.is_none_or(|i| r.ifindex == Some(i))
            })
            .cloned()
            .collect();
        out.sort();
        Ok(out)
    }

    async fn replace_route(&self, route: &Route) -> Result<()> {
        let mut state = self.lock();
        state.routes.retain(|r| !same_route(r, route));
        state.routes.push(route.clone());
        state.calls.push(Call::ReplaceRoute(route.clone()));
        Ok(())
    }

    async fn del_route(&self, route: &Route) -> Result<()> {
        let mut state = self.lock();
        let before = state.routes.len();
        state
            .routes
            .retain(|r| !(same_route(r, route) && r.kind == route.kind));
        if state.routes.len() == before {
            return Err(errno("delete", format!("route {route}"), libc_errno::ESRCH));
        }
        state.calls.push(Call::DelRoute(route.clone()));
        Ok(())
    }

    async fn set_neighbour(&self, index: Ifindex, ip: IpAddr, mac: MacAddr) -> Result<()> {
        let mut state = self.lock();
        state
            .neighbours
            .retain(|n| !(n.ifindex == index && n.ip == ip));
        state.neighbours.push(Neighbour {
            ifindex: index,
            ip,
            mac: Some(mac),
            is_permanent: true,
        });
        state.calls.push(Call::SetNeighbour(index, ip, mac));
        Ok(())
    }

    async fn del_neighbour(&self, index: Ifindex, ip: IpAddr) -> Result<()> {
        let mut state = self.lock();
        let before = state.neighbours.len();
        state
            .neighbours
            .retain(|n| !(n.ifindex == index && n.ip == ip));
        if state.neighbours.len() == before {
            return Err(errno(
                "delete",
                format!("neighbour {ip}"),
                libc_errno::ENOENT,
            ));
        }
        state.calls.push(Call::DelNeighbour(index, ip));
        Ok(())
    }

    async fn neighbours(&self, index: Option<Ifindex>) -> Result<Vec<Neighbour>> {
        let mut out: Vec<Neighbour> = self
            .lock()
            .neighbours
            .iter()
            .filter(|n| index.is_none_or(|i| n.ifindex == i))
            .cloned()
            .collect();
        out.sort();
        Ok(out)
    }

    async fn set_fdb(&self, entry: &FdbEntry) -> Result<()> {
        let mut state = self.lock();
        state
            .fdb
            .retain(|f| !(f.ifindex == entry.ifindex && f.mac == entry.mac));
        state.fdb.push(entry.clone());
        state.calls.push(Call::SetFdb(entry.clone()));
        Ok(())
    }

    async fn del_fdb(&self, entry: &FdbEntry) -> Result<()> {
        let mut state = self.lock();
        let before = state.fdb.len();
        state.fdb.retain(|f| f != entry);
        if state.fdb.len() == before {
            return Err(errno(
                "delete",
                format!("fdb {}", entry.mac),
                libc_errno::ENOENT,
            ));
        }
        state.calls.push(Call::DelFdb(entry.clone()));
        Ok(())
    }

    async fn fdb(&self, index: Option<Ifindex>) -> Result<Vec<FdbEntry>> {
        let mut out: Vec<FdbEntry> = self
            .lock()
            .fdb
            .iter()
            .filter(|f| index.is_none_or(|i| f.ifindex == i))
            .cloned()
            .collect();
        out.sort();
        Ok(out)
    }

    fn write_sysctls(&self, settings: &[(String, String)]) -> Result<()> {
        let mut state = self.lock();
        for (key, value) in settings {
            state.sysctls.insert(key.clone(), value.clone());
            state
                .calls
                .push(Call::WriteSysctl(key.clone(), value.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RouteProtocol;

    fn run<F: Future>(f: F) -> F::Output {
        crate::block_on(f).unwrap()
    }

    #[test]
    fn fake_records_changes_and_keeps_kernel_like_state() {
        let nl = RecordingNetlink::new();
        let eth0 = nl.with_link("eth0", None);
        run(async {
            let vx = nl
                .add_vxlan(&Vxlan {
                    name: "vxlan.calico".into(),
                    vni: 4096,
                    port: 4789,
                    local: None,
                    dev: Some(eth0),
                    learning: false,
                    mtu: Some(1450),
                    mac: None,
                })
                .await
                .unwrap();
            nl.set_link_up(vx.index).await.unwrap();
            let route = Route::new("10.65.2.0/26".parse().unwrap())
                .via("10.65.2.0".parse().unwrap())
                .dev(vx.index)
                .onlink()
                .protocol(RouteProtocol::FELIX);
            nl.replace_route(&route).await.unwrap();
            nl.replace_route(&route).await.unwrap();
            assert_eq!(
                nl.routes(RouteFilter::default()).await.unwrap(),
                vec![route.clone()]
            );
            assert!(
                nl.add_vxlan(&Vxlan {
                    mac: None,
                    ..vxlan_named("vxlan.calico")
                })
                .await
                .unwrap_err()
                .is_exists()
            );
            nl.delete_link(vx.index).await.unwrap();
            // The route went with the device, as in the kernel.
            assert!(nl.routes(RouteFilter::default()).await.unwrap().is_empty());
            assert!(nl.del_route(&route).await.unwrap_err().is_not_found());
            assert_eq!(
                nl.take_calls(),
                vec![
                    Call::AddVxlan(vxlan_named_full(eth0)),
                    Call::SetLinkUp(vx.index),
                    Call::ReplaceRoute(route.clone()),
                    Call::ReplaceRoute(route),
                    Call::DeleteLink(vx.index),
                ]
            );
        });
    }

    fn vxlan_named(name: &str) -> Vxlan {
        Vxlan {
            name: name.into(),
            vni: 4096,
            port: 4789,
            local: None,
            dev: None,
            learning: false,
            mtu: None,
            mac: None,
        }
    }

    fn vxlan_named_full(dev: Ifindex) -> Vxlan {
        Vxlan {
            dev: Some(dev),
            mtu: Some(1450),
            ..vxlan_named("vxlan.calico")
        }
    }
}
