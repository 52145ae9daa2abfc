//! [`Handle`]: a netlink connection bound to one network namespace, and every operation on it.

use std::io;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::InfoData;
use netlink_packet_route::link::InfoKind;
use netlink_packet_route::link::InfoVeth;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::link::LinkInfo;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::NeighbourAddress;
use netlink_packet_route::neighbour::NeighbourAttribute;
use netlink_packet_route::neighbour::NeighbourFlags;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::route::RouteAddress;
use netlink_packet_route::route::RouteAttribute;
use netlink_packet_route::route::RouteFlags;
use netlink_packet_route::route::RouteMessage;
use rtnetlink::AddressMessageBuilder;
use rtnetlink::LinkBridge;
use rtnetlink::LinkMessageBuilder;
use rtnetlink::LinkUnspec;
use rtnetlink::LinkVeth;
use rtnetlink::LinkVxlan;
use rtnetlink::RouteMessageBuilder;

use crate::error::Error;
use crate::error::Result;
use crate::error::kernel;
use crate::netns::Netns;
use crate::types::Address;
use crate::types::FdbEntry;
use crate::types::Ifindex;
use crate::types::Link;
use crate::types::MacAddr;
use crate::types::Neighbour;
use crate::types::Route;
use crate::types::RouteFilter;
use crate::types::RouteKind;
use crate::types::RouteProtocol;
use crate::types::RouteScope;
use crate::types::VethPair;
use crate::types::Vxlan;
use crate::types::validate_ifname;

/// A netlink connection bound to one network namespace.
///
/// The socket is opened on a throwaway thread that entered the namespace, so it stays bound to
/// that namespace while the connection task runs on the caller's tokio runtime. Cheap to clone.
/// Must be used on the runtime it was created on (its connection task lives there).
#[derive(Clone)]
pub struct Handle {
    inner: rtnetlink::Handle,
    netns: Arc<Netns>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("netns", &self.netns.describe())
            .finish()
    }
}

impl Handle {
    /// A handle on the calling thread's namespace. Must be called inside a tokio runtime.
    pub async fn current() -> Result<Handle> {
        let netns = Netns::current()?;
        Handle::connect(netns).await
    }

    /// A handle on the namespace at `path` (e.g. `/run/netns/x`, `/proc/<pid>/ns/net`).
    pub async fn in_netns(path: impl AsRef<Path>) -> Result<Handle> {
        let netns = Netns::open(path)?;
        Handle::connect(netns).await
    }

    /// A handle on an already open namespace.
    pub async fn connect(netns: Netns) -> Result<Handle> {
        let runtime = tokio::runtime::Handle::current();
        let describe = netns.describe();
        let connect_err = |source: io::Error| Error::Connect {
            netns: describe.clone(),
            source,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_netns = netns.try_clone()?;
        // Detached: the caller awaits the answer instead of blocking the runtime on a join.
        std::thread::Builder::new()
            .name("netlink-connect".to_string())
            .spawn(move || {
                let result =
                    nix::sched::setns(thread_netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(io::Error::from)
                        .and_then(|()| {
                            // Registering the socket with the runtime's reactor needs its context.
                            let _guard = runtime.enter();
                            rtnetlink::new_connection()
                        });
                let _ = tx.send(result);
            })
            .map_err(|source| Error::Thread {
                netns: describe.clone(),
                source,
            })?;
        let (connection, inner, _messages) = rx
            .await
            .map_err(|_| connect_err(io::Error::other("connect thread ended early")))?
            .map_err(connect_err)?;
        tokio::spawn(connection);
        Ok(Handle {
            inner,
            netns: Arc::new(netns),
        })
    }

    /// The namespace this handle is bound to.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    // ---------------------------------------------------------------- links

    /// Every link in the namespace, sorted by index.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let messages: Vec<LinkMessage> = self
            .inner
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_err("list", "links", e))?;
        let mut links: Vec<Link> = messages.into_iter().map(link_from_message).collect();
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    /// Links whose name starts with `prefix`, sorted by name.
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<Link>> {
        let mut links: Vec<Link> = self
            .links()
            .await?
            .into_iter()
            .filter(|l| l.name.starts_with(prefix))
            .collect();
        links.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(links)
    }

    /// The link called `name`, or `None`.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        validate_ifname(name)?;
        let request = self.inner.link().get().match_name(name.to_string());
        first_link(request, || format!("link {name}")).await
    }

    /// The link called `name`, or [`Error::LinkNotFound`].
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)
            .await?
            .ok_or_else(|| Error::LinkNotFound(name.to_string()))
    }

    /// The link with index `index`, or `None`.
    pub async fn link_by_index(&self, index: Ifindex) -> Result<Option<Link>> {
        let request = self.inner.link().get().match_index(index.0);
        first_link(request, || format!("link #{index}")).await
    }

    /// Creates a veth pair; the peer can be created directly in another namespace.
    /// Returns the local end.
    pub async fn add_veth(&self, veth: &VethPair<'_>) -> Result<Link> {
        validate_ifname(&veth.name)?;
        validate_ifname(&veth.peer_name)?;
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new().name(veth.peer_name.clone());
        if let Some(netns) = veth.peer_netns {
            // The fd stays open for the whole request: `veth` borrows the Netns.
            peer = peer.setns_by_fd(netns.as_fd().as_raw_fd());
        }
        if let Some(mtu) = veth.mtu {
            peer = peer.mtu(mtu);
        }
        if let Some(mac) = veth.peer_mac {
            peer = peer.address(mac.octets().to_vec());
        }
        let mut builder = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(veth.name.clone())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(mtu) = veth.mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(mac) = veth.mac {
            builder = builder.address(mac.octets().to_vec());
        }
        self.inner
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| {
                request_err(
                    "add",
                    format!("veth {} peer {}", veth.name, veth.peer_name),
                    e,
                )
            })?;
        self.require_link(&veth.name).await
    }

    /// Creates a VXLAN device.
    pub async fn add_vxlan(&self, vxlan: &Vxlan) -> Result<Link> {
        validate_ifname(&vxlan.name)?;
        let mut builder = LinkVxlan::new(&vxlan.name, vxlan.vni)
            .port(vxlan.port)
            .learning(vxlan.learning);
        builder = match vxlan.local {
            Some(IpAddr::V4(a)) => builder.local(a),
            Some(IpAddr::V6(a)) => builder.local6(a),
            None => builder,
        };
        if let Some(dev) = vxlan.dev {
            builder = builder.dev(dev.0);
        }
        if let Some(mtu) = vxlan.mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(mac) = vxlan.mac {
            builder = builder.address(mac.octets().to_vec());
        }
        self.inner
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| request_err("add", format!("vxlan {}", vxlan.name), e))?;
        self.require_link(&vxlan.name).await
    }

    /// Creates a bridge.
    pub async fn add_bridge(&self, name: &str) -> Result<Link> {
        validate_ifname(name)?;
        self.inner
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(|e| request_err("add", format!("bridge {name}"), e))?;
        self.require_link(name).await
    }

    /// Creates an IPIP tunnel device with no attributes, as `ip link add <name> type ipip` does
    /// (any local and remote address: named `tunl0`, it is Calico's device). Where the kernel
    /// has no `ipip` module this fails with `EOPNOTSUPP` ([`Error::is_not_supported`]).
    pub async fn add_ipip_link(&self, name: &str) -> Result<Link> {
        validate_ifname(name)?;
        self.inner
            .link()
            .add(ipip_link_message(name))
            .execute()
            .await
            .map_err(|e| request_err("add", format!("ipip link {name}"), e))?;
        self.require_link(name).await
    }

    /// Creates a link of an arbitrary kind with no attributes (for capability probes).
    pub(crate) async fn add_link_of_kind(&self, name: &str, kind: &str) -> Result<()> {
        let mut builder =
            LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::from(kind))
                .name(name.to_string());
        if kind == "vxlan" {
            // A VNI is mandatory for vxlan.
            builder = builder.set_info_data(InfoData::Vxlan(vec![
                netlink_packet_route::link::InfoVxlan::Id(1),
            ]));
        }
        self.inner
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| request_err("add", format!("{kind} link {name}"), e))
    }

    /// Adds a `clsact` qdisc (tc's ingress and egress hooks for classifiers) to a link; `Ok`
    /// when it has one already. On a link that is down this costs traffic nothing; on a running
    /// link the kernel briefly deactivates it, so callers that create links add it first.
    pub async fn add_clsact(&self, index: Ifindex) -> Result<()> {
        use futures_util::StreamExt as _;
        use netlink_packet_core::NLM_F_ACK;
        use netlink_packet_core::NLM_F_CREATE;
        use netlink_packet_core::NLM_F_EXCL;
        use netlink_packet_core::NLM_F_REQUEST;
        use netlink_packet_core::NetlinkMessage;
        use netlink_packet_core::NetlinkPayload;
        use netlink_packet_route::RouteNetlinkMessage;
        use netlink_packet_route::tc::TcAttribute;
        use netlink_packet_route::tc::TcHandle;
        use netlink_packet_route::tc::TcMessage;

        let object = || format!("clsact qdisc on link {index}");
        let mut message = TcMessage::with_index(index.0 as i32);
        // TC_H_CLSACT, and the handle tc gives it (ffff:).
        message.header.parent = TcHandle::from(0xFFFF_FFF1);
        message.header.handle = TcHandle::from(0xFFFF_0000);
        message
            .attributes
            .push(TcAttribute::Kind("clsact".to_string()));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(message));
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let mut handle = self.inner.clone();
        let mut answers = handle
            .request(request)
            .map_err(|e| request_err("add", object(), e))?;
        while let Some(answer) = answers.next().await {
            if let NetlinkPayload::Error(e) = answer.payload {
                if e.code.is_none() {
                    // The acknowledgement.
                    return Ok(());
                }
                let error = request_err("add", object(), rtnetlink::Error::NetlinkError(e));
                if error.is_exists() {
                    return Ok(());
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Sets a link administratively up.
    pub async fn set_link_up(&self, index: Ifindex) -> Result<()> {
        self.set_link(index, "set up", LinkUnspec::new_with_index(index.0).up())
            .await
    }

    /// Sets a link administratively down.
    pub async fn set_link_down(&self, index: Ifindex) -> Result<()> {
        self.set_link(
            index,
            "set down",
            LinkUnspec::new_with_index(index.0).down(),
        )
        .await
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, index: Ifindex, mtu: u32) -> Result<()> {
        self.set_link(
            index,
            "set mtu of",
            LinkUnspec::new_with_index(index.0).mtu(mtu),
        )
        .await
    }

    /// Sets a link's MAC address.
    pub async fn set_mac(&self, index: Ifindex, mac: MacAddr) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index.0).address(mac.octets().to_vec());
        self.set_link(index, "set mac of", builder).await
    }

    /// Renames a link (it must be down).
    pub async fn rename(&self, index: Ifindex, name: &str) -> Result<()> {
        validate_ifname(name)?;
        let builder = LinkUnspec::new_with_index(index.0).name(name.to_string());
        self.set_link(index, "rename", builder).await
    }

    /// Enslaves a link to a bridge (`None`: release it).
    pub async fn set_controller(&self, index: Ifindex, bridge: Option<Ifindex>) -> Result<()> {
        let builder = match bridge {
            Some(b) => LinkUnspec::new_with_index(index.0).controller(b.0),
            None => LinkUnspec::new_with_index(index.0).nocontroller(),
        };
        self.set_link(index, "set controller of", builder).await
    }

    async fn set_link(
        &self,
        index: Ifindex,
        op: &'static str,
        builder: LinkMessageBuilder<LinkUnspec>,
    ) -> Result<()> {
        self.inner
            .link()
            .set(builder.build())
            .execute()
            .await
            .map_err(|e| request_err(op, format!("link #{index}"), e))
    }

    /// Deletes a link (deleting one end of a veth deletes both).
    pub async fn delete_link(&self, index: Ifindex) -> Result<()> {
        self.inner
            .link()
            .del(index.0)
            .execute()
            .await
            .map_err(|e| request_err("delete", format!("link #{index}"), e))
    }

    /// Deletes the link called `name`; returns `false` if there was none (idempotent).
    pub async fn delete_link_by_name(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.delete_link(link.index).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ------------------------------------------------------------ addresses

    /// Adds an address (fails with `EEXIST` if present).
    pub async fn add_address(&self, index: Ifindex, net: IpNet) -> Result<()> {
        self.inner
            .address()
            .add(index.0, net.addr(), net.prefix_len())
            .execute()
            .await
            .map_err(|e| request_err("add", format!("address {net} on link #{index}"), e))
    }

    /// Adds an address, or refreshes it if present.
    pub async fn replace_address(&self, index: Ifindex, net: IpNet) -> Result<()> {
        self.inner
            .address()
            .add(index.0, net.addr(), net.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(|e| request_err("replace", format!("address {net} on link #{index}"), e))
    }

    /// Removes an address.
    pub async fn del_address(&self, index: Ifindex, net: IpNet) -> Result<()> {
        let message = match net.addr() {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index.0)
                .address(a, net.prefix_len())
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index.0)
                .address(a, net.prefix_len())
                .build(),
        };
        self.inner
            .address()
            .del(message)
            .execute()
            .await
            .map_err(|e| request_err("delete", format!("address {net} on link #{index}"), e))
    }

    /// Addresses, of one link or of all, sorted.
    pub async fn addresses(&self, index: Option<Ifindex>) -> Result<Vec<Address>> {
        let mut request = self.inner.address().get();
        if let Some(i) = index {
            request = request.set_link_index_filter(i.0);
        }
        let messages: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_err("list", "addresses", e))?;
        let mut out: Vec<Address> = messages.iter().filter_map(address_from_message).collect();
        out.retain(|a| index.is_none_or(|i| a.ifindex == i));
        out.sort();
        Ok(out)
    }

    // --------------------------------------------------------------- routes

    /// Adds a route (fails with `EEXIST` if an equal one exists).
    pub async fn add_route(&self, route: &Route) -> Result<()> {
        let message = route_to_message(route)?;
        self.inner
            .route()
            .add(message)
            .execute()
            .await
            .map_err(|e| request_err("add", format!("route {route}"), e))
    }

    /// Adds a route or replaces the one with the same destination, table and metric.
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        let message = route_to_message(route)?;
        self.inner
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|e| request_err("replace", format!("route {route}"), e))
    }

    /// Deletes a route.
    pub async fn del_route(&self, route: &Route) -> Result<()> {
        let message = route_to_message(route)?;
        self.inner
            .route()
            .del(message)
            .execute()
            .await
            .map_err(|e| request_err("delete", format!("route {route}"), e))
    }

    /// Routes matching `filter`, sorted.
    pub async fn routes(&self, filter: RouteFilter) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        let families: &[bool] = match filter.ipv6 {
            Some(true) => &[true],
            Some(false) => &[false],
            None => &[false, true],
        };
        for &ipv6 in families {
            let query = if ipv6 {
                RouteMessageBuilder::<Ipv6Addr>::new().build()
            } else {
                RouteMessageBuilder::<Ipv4Addr>::new().build()
            };
            let messages: Vec<RouteMessage> = self
                .inner
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| request_err("list", "routes", e))?;
            out.extend(messages.iter().filter_map(route_from_message));
        }
        out.retain(|r| {
            filter.table.is_none_or(|t| r.table == t)
                && filter.protocol.is_none_or(|p| r.protocol == p)
                && filter.ifindex.is_none_or(|i| r.ifindex == Some(i))
        });
        out.sort();
        Ok(out)
    }

    /// The routing-table entry the kernel would use for `addr` (`ip route get fibmatch ADDR`):
    /// one lookup instead of a dump, so it stays cheap with a million routes installed.
    /// `None` when nothing routes it.
    pub async fn route_lookup(&self, addr: IpAddr) -> Result<Option<Route>> {
        let message = crate::handle::fib_match_request(addr)?;
        let result: std::result::Result<Vec<RouteMessage>, _> = self
            .inner
            .route()
            .get(message)
            .execute()
            .try_collect()
            .await;
        match result {
            Ok(messages) => Ok(messages.iter().find_map(route_from_message)),
            Err(e) => {
                let err = request_err("look up", format!("route to {addr}"), e);
                // ENETUNREACH / EHOSTUNREACH: no route at all. EINVAL: the address falls under
                // a blackhole, unreachable or prohibit route, which forwards nothing either
                // (e.g. the agent's blackhole for a local block, before a workload's route).
                if matches!(err.errno(), Some(22 | 101 | 113)) || err.is_not_found() {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    // ----------------------------------------------------------- neighbours

    /// Installs (or replaces) a permanent neighbour entry: `ip neigh replace IP lladdr MAC nud
    /// permanent dev DEV`.
    pub async fn set_neighbour(&self, index: Ifindex, ip: IpAddr, mac: MacAddr) -> Result<()> {
        self.inner
            .neighbours()
            .add(index.0, ip)
            .link_layer_address(&mac.octets())
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| request_err("set", format!("neighbour {ip} on link #{index}"), e))
    }

    /// Deletes a neighbour entry.
    pub async fn del_neighbour(&self, index: Ifindex, ip: IpAddr) -> Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = family_of(ip);
        message.header.ifindex = index.0;
        message
            .attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        self.inner
            .neighbours()
            .del(message)
            .execute()
            .await
            .map_err(|e| request_err("delete", format!("neighbour {ip} on link #{index}"), e))
    }

    /// Neighbour entries (IPv4 and IPv6) of one link or all, sorted.
    pub async fn neighbours(&self, index: Option<Ifindex>) -> Result<Vec<Neighbour>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let messages: Vec<NeighbourMessage> = self
                .inner
                .neighbours()
                .get()
                .set_address_family(family)
                .execute()
                .try_collect()
                .await
                .map_err(|e| request_err("list", "neighbours", e))?;
            out.extend(messages.iter().filter_map(neighbour_from_message));
        }
        out.retain(|n| index.is_none_or(|i| n.ifindex == i));
        out.sort();
        Ok(out)
    }

    /// Installs (or replaces) a permanent FDB entry: `bridge fdb replace MAC dev DEV dst IP
    /// self permanent`.
    pub async fn set_fdb(&self, entry: &FdbEntry) -> Result<()> {
        let mut request = self
            .inner
            .neighbours()
            .add_bridge(entry.ifindex.0, &entry.mac.octets())
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace();
        if let Some(dst) = entry.dst {
            request = request.destination(dst);
        }
        request.execute().await.map_err(|e| {
            request_err(
                "set",
                format!("fdb {} on link #{}", entry.mac, entry.ifindex),
                e,
            )
        })
    }

    /// Deletes an FDB entry.
    pub async fn del_fdb(&self, entry: &FdbEntry) -> Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = entry.ifindex.0;
        message.header.flags = NeighbourFlags::Own;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(
                entry.mac.octets().to_vec(),
            ));
        if let Some(dst) = entry.dst {
            message
                .attributes
                .push(NeighbourAttribute::Destination(neighbour_address(dst)));
        }
        self.inner
            .neighbours()
            .del(message)
            .execute()
            .await
            .map_err(|e| {
                request_err(
                    "delete",
                    format!("fdb {} on link #{}", entry.mac, entry.ifindex),
                    e,
                )
            })
    }

    /// FDB entries of one link or all, sorted.
    pub async fn fdb(&self, index: Option<Ifindex>) -> Result<Vec<FdbEntry>> {
        let messages: Vec<NeighbourMessage> = self
            .inner
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|e| request_err("list", "fdb entries", e))?;
        let mut out: Vec<FdbEntry> = messages.iter().filter_map(fdb_from_message).collect();
        out.retain(|n| index.is_none_or(|i| n.ifindex == i));
        out.sort();
        Ok(out)
    }

    // -------------------------------------------------------------- sysctls

    /// Writes sysctls inside this handle's namespace, in order, on one throwaway thread.
    ///
    /// Keys are relative to `/proc/sys`, e.g. `net/ipv4/conf/cali1/proxy_arp`.
    pub fn write_sysctls(&self, settings: &[(String, String)]) -> Result<()> {
        crate::sysctl::write_in(&self.netns, settings)
    }

    /// Reads one sysctl inside this handle's namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        crate::sysctl::read_in(&self.netns, key)
    }
}

/// Runs a link lookup; "no such device" is `None`.
async fn first_link(
    request: rtnetlink::LinkGetRequest,
    object: impl FnOnce() -> String,
) -> Result<Option<Link>> {
    match request.execute().try_collect::<Vec<LinkMessage>>().await {
        Ok(messages) => Ok(messages.into_iter().next().map(link_from_message)),
        Err(e) => {
            let err = request_err("get", object(), e);
            if err.is_not_found() {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// The `RTM_NEWLINK` body [`Handle::add_ipip_link`] sends: `IFLA_IFNAME` and
/// `IFLA_LINKINFO { IFLA_INFO_KIND "ipip" }`, nothing else.
pub(crate) fn ipip_link_message(name: &str) -> LinkMessage {
    rtnetlink::LinkIpIp::new(name).build()
}

fn request_err(op: &'static str, object: impl Into<String>, e: rtnetlink::Error) -> Error {
    Error::Request {
        op,
        object: object.into(),
        source: kernel(e),
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

fn link_from_message(message: LinkMessage) -> Link {
    let mut link = Link {
        index: Ifindex(message.header.index),
        name: String::new(),
        kind: None,
        mac: None,
        mtu: None,
        is_up: message.header.flags.contains(LinkFlags::Up),
        controller: None,
        link: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Address(bytes) => link.mac = MacAddr::from_bytes(&bytes),
            LinkAttribute::Mtu(mtu) => link.mtu = Some(mtu),
            LinkAttribute::Controller(c) => link.controller = Some(Ifindex(c)),
            LinkAttribute::Link(l) => link.link = Some(Ifindex(l)),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn address_from_message(message: &AddressMessage) -> Option<Address> {
    let mut address = None;
    let mut local = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::Local(a) => local = Some(*a),
            _ => {}
        }
    }
    // IPv4 point-to-point addresses carry the local one in IFA_LOCAL.
    let ip = local.or(address)?;
    let net = IpNet::new(ip, message.header.prefix_len).ok()?;
    Some(Address {
        ifindex: Ifindex(message.header.index),
        net,
    })
}

pub(crate) fn route_from_message(message: &RouteMessage) -> Option<Route> {
    let header = &message.header;
    let ipv6 = match header.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    let mut dst_addr: IpAddr = if ipv6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let mut route = Route::new(IpNet::new(dst_addr, 0).ok()?);
    let mut table = u32::from(header.table);
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(a) => dst_addr = route_address(a)?,
            RouteAttribute::Gateway(a) => route.gateway = route_address(a),
            RouteAttribute::PrefSource(a) => route.source = route_address(a),
            RouteAttribute::Oif(i) => route.ifindex = Some(Ifindex(*i)),
            RouteAttribute::Priority(p) => route.metric = Some(*p),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    route.dst = IpNet::new(dst_addr, header.destination_prefix_length).ok()?;
    route.table = table;
    route.protocol = RouteProtocol(u8::from(header.protocol));
    route.scope = match u8::from(header.scope) {
        0 => RouteScope::Universe,
        253 => RouteScope::Link,
        254 => RouteScope::Host,
        other => RouteScope::Other(other),
    };
    route.kind = match u8::from(header.kind) {
        1 => RouteKind::Unicast,
        2 => RouteKind::Local,
        6 => RouteKind::Blackhole,
        7 => RouteKind::Unreachable,
        other => RouteKind::Other(other),
    };
    route.onlink = header.flags.contains(RouteFlags::Onlink);
    Some(route)
}

fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

pub(crate) fn route_to_message(route: &Route) -> Result<RouteMessage> {
    let invalid = |reason: String| Error::InvalidRoute {
        dst: route.dst.to_string(),
        reason,
    };
    let dst = route.dst.trunc();
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(|e| invalid(e.to_string()))?
        .table_id(route.table)
        .protocol(route.protocol.0.into())
        .scope(
            match route.scope {
                RouteScope::Universe => 0,
                RouteScope::Link => 253,
                RouteScope::Host => 254,
                RouteScope::Other(s) => s,
            }
            .into(),
        )
        .kind(
            match route.kind {
                RouteKind::Unicast => 1,
                RouteKind::Local => 2,
                RouteKind::Blackhole => 6,
                RouteKind::Unreachable => 7,
                RouteKind::Other(k) => k,
            }
            .into(),
        );
    if let Some(gw) = route.gateway {
        if gw.is_ipv4() != dst.addr().is_ipv4() {
            return Err(invalid(format!(
                "gateway {gw} is of another address family"
            )));
        }
        builder = builder.gateway(gw).map_err(|e| invalid(e.to_string()))?;
    }
    if let Some(src) = route.source {
        builder = builder
            .pref_source(src)
            .map_err(|e| invalid(e.to_string()))?;
    }
    if let Some(index) = route.ifindex {
        builder = builder.output_interface(index.0);
    }
    if let Some(metric) = route.metric {
        builder = builder.priority(metric);
    }
    if route.onlink {
        builder = builder.onlink();
    }
    Ok(builder.build())
}

fn neighbour_from_message(message: &NeighbourMessage) -> Option<Neighbour> {
    let mut ip = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some((*a).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                ip = Some((*a).into());
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = MacAddr::from_bytes(bytes),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: Ifindex(message.header.ifindex),
        ip: ip?,
        mac,
        is_permanent: message.header.state == NeighbourState::Permanent,
    })
}

fn fdb_from_message(message: &NeighbourMessage) -> Option<FdbEntry> {
    let mut dst = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some((*a).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                dst = Some((*a).into());
            }
            // AF_BRIDGE messages carry NDA_DST as raw bytes (4 or 16 of them).
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                dst = ip_from_bytes(bytes);
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = MacAddr::from_bytes(bytes),
            _ => {}
        }
    }
    Some(FdbEntry {
        ifindex: Ifindex(message.header.ifindex),
        mac: mac?,
        dst,
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::from(v4))
    } else {
        <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
    }
}

/// The `RTM_GETROUTE` request of `ip route get fibmatch ADDR`: the routing-table entry the
/// kernel would use for `addr`.
pub(crate) fn fib_match_request(addr: IpAddr) -> Result<RouteMessage> {
    let prefix = if addr.is_ipv4() { 32 } else { 128 };
    let mut message = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(addr, prefix)
        .map_err(|e| Error::InvalidRoute {
            dst: addr.to_string(),
            reason: e.to_string(),
        })?
        .build();
    message.header.flags |= RouteFlags::FibMatch;
    // A lookup carries no table, protocol, scope or type of its own.
    message.header.table = 0;
    message.header.protocol = netlink_packet_route::route::RouteProtocol::Unspec;
    message.header.scope = netlink_packet_route::route::RouteScope::Universe;
    message.header.kind = netlink_packet_route::route::RouteType::Unspec;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;

    use super::*;

    #[test]
    fn the_ipip_link_request_is_what_ip_link_add_type_ipip_sends() {
        let message = ipip_link_message("tunl0");
        let mut bytes = vec![0u8; message.buffer_len()];
        message.emit(&mut bytes);
        // As `strace ip link add tunl0 type ipip` shows iproute2 sending it (after the
        // nlmsghdr): an all-zero ifinfomsg, IFLA_IFNAME "tunl0", IFLA_LINKINFO { KIND "ipip" },
        // except that the kind is NUL-terminated here (iproute2 sends 4 bytes; the kernel
        // copies either with nla_strscpy, as for every other kind this crate creates).
        let expected: Vec<u8> = [
            &[0u8; 16][..],
            &[10, 0, 3, 0, b't', b'u', b'n', b'l', b'0', 0, 0, 0],
            &[16, 0, 18, 0, 9, 0, 1, 0, b'i', b'p', b'i', b'p', 0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(bytes, expected);
    }
}
