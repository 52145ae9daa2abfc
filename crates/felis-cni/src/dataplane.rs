//! The workload veth, as Calico builds it (cni-plugin `dataplane_linux.go`):
//!
//! ```text
//!  container netns                         host netns
//!  ┌──────────────────────────┐            ┌───────────────────────────────────────────┐
//!  │ eth0  10.244.1.5/32      │◀── veth ──▶│ caliXXXXXXXXXXX  mac ee:ee:ee:ee:ee:ee    │
//!  │ 169.254.1.1 dev eth0     │            │  proxy_arp=1 proxy_delay=0 forwarding=1   │
//!  │   scope link             │            │  route_localnet=1                         │
//!  │ default via 169.254.1.1  │            │ 10.244.1.5 dev caliX scope link proto boot│
//!  └──────────────────────────┘            └───────────────────────────────────────────┘
//! ```
//!
//! Nothing owns 169.254.1.1: the host answers the container's ARP for it by proxy ARP, with its
//! fixed MAC. IPv6: the container's default route goes via the host veth's link-local address
//! (derived from the fixed MAC), which answers by proxy NDP.

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::path::Path;
use std::path::PathBuf;

use felis_netlink::Handle;
use felis_netlink::Ifindex;
use felis_netlink::MacAddr;
use felis_netlink::Netns;
use felis_netlink::Route;
use felis_netlink::RouteFilter;
use felis_netlink::RouteProtocol;
use felis_netlink::RouteScope;
use felis_netlink::VethPair;
use felis_netlink::sysctl;
use ipnet::IpNet;

use crate::error::Error;
use crate::error::Result;

/// The gateway the container's IPv4 routes point at; nothing owns it (proxy ARP answers).
pub const IPV4_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The host veth's MAC (Calico's fixed `ee:ee:ee:ee:ee:ee`).
pub const HOST_MAC: MacAddr = MacAddr::CALICO_HOST;

/// Protocol of the host routes to workloads (`proto boot`, Felix's `DeviceRouteProtocol`).
pub const WORKLOAD_ROUTE_PROTOCOL: RouteProtocol = RouteProtocol::BOOT;

/// What to build for one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The container's network namespace (`CNI_NETNS`).
    pub container_netns: PathBuf,
    /// Interface name inside the container (`CNI_IFNAME`, usually `eth0`).
    pub container_ifname: String,
    /// Host-side veth name (`cali...`).
    pub host_ifname: String,
    /// The workload's addresses; installed as /32 and /128 whatever prefix IPAM gave.
    pub addresses: Vec<IpNet>,
    /// MTU of both veth ends.
    pub mtu: u32,
    /// Calico `container_settings.allow_ip_forwarding`.
    pub allow_ip_forwarding: bool,
}

impl WorkloadSpec {
    /// The addresses as host routes: /32 or /128.
    pub fn host_addresses(&self) -> Vec<IpNet> {
        self.addresses
            .iter()
            .map(|a| host_prefix(a.addr()))
            .collect()
    }

    fn has_ipv4(&self) -> bool {
        self.addresses.iter().any(|a| a.addr().is_ipv4())
    }

    fn has_ipv6(&self) -> bool {
        self.addresses.iter().any(|a| a.addr().is_ipv6())
    }
}

/// What [`setup_workload`] built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadInterface {
    /// Host-side veth name.
    pub host_ifname: String,
    /// Host-side veth index.
    pub host_index: Ifindex,
    /// Host-side MAC (always [`HOST_MAC`]).
    pub host_mac: MacAddr,
    /// Container-side interface name.
    pub container_ifname: String,
    /// Container-side MAC (kernel-assigned).
    pub container_mac: MacAddr,
    /// The container's addresses as installed (/32, /128).
    pub addresses: Vec<IpNet>,
    /// MTU of both ends.
    pub mtu: u32,
}

/// The IPv6 link-local address the kernel gives an interface with MAC `mac` (EUI-64).
pub fn link_local_of(mac: MacAddr) -> Ipv6Addr {
    let m = mac.octets();
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// Builds the veth pair, addresses, routes and sysctls of one workload.
///
/// A stale host veth of the same name (an earlier failed ADD) is removed first. If anything
/// fails after the veth exists, the veth is removed again; interfaces that were there before
/// (e.g. a foreign `eth0` in the container) are never touched.
pub async fn setup_workload(host: &Handle, spec: &WorkloadSpec) -> Result<WorkloadInterface> {
    if spec.addresses.is_empty() {
        return Err(Error::InvalidConfig {
            field: "ipam".into(),
            reason: "no addresses to configure".into(),
        });
    }
    let container = container_handle(&spec.container_netns).await?;
    let host_name = spec.host_ifname.as_str();
    let cont_name = spec.container_ifname.as_str();
    ensure_ifname_free(&container, cont_name).await?;
    if host
        .delete_link_by_name(host_name)
        .await
        .map_err(Error::netlink(format!(
            "delete stale host veth {host_name}"
        )))?
    {
        tracing::info!(ifname = host_name, "removed stale host veth");
    }

    let host_link = host
        .add_veth(&VethPair {
            name: host_name.to_string(),
            peer_name: cont_name.to_string(),
            peer_netns: Some(container.netns()),
            mtu: Some(spec.mtu),
            mac: Some(HOST_MAC),
            peer_mac: None,
        })
        .await
        .map_err(Error::netlink(format!(
            "create veth {host_name} / {cont_name}"
        )))?;

    match configure_workload(host, &container, spec, host_link.index).await {
        Ok(built) => Ok(built),
        Err(e) => {
            if let Err(cleanup) = host.delete_link(host_link.index).await {
                tracing::warn!(ifname = host_name, error = %cleanup, "removing half-built veth failed");
            }
            Err(e)
        }
    }
}

/// Everything after the veth exists: sysctls, links up, container routes and addresses, host
/// routes.
async fn configure_workload(
    host: &Handle,
    container: &Handle,
    spec: &WorkloadSpec,
    host_index: Ifindex,
) -> Result<WorkloadInterface> {
    let host_name = spec.host_ifname.as_str();
    let cont_name = spec.container_ifname.as_str();
    // Host side: sysctls before the link comes up, so IPv6 starts without DAD.
    host.write_sysctls(&host_sysctls(spec))
        .map_err(Error::netlink(format!("set sysctls of {host_name}")))?;
    // tc's hooks for the agent's fast path, while the link is still down: adding them to a
    // running link makes the kernel reset it, and the pod's first packets (its ARP) with it.
    if let Err(e) = host.add_clsact(host_index).await {
        tracing::warn!(ifname = host_name, error = %e, "no clsact qdisc: the agent will add it");
    }
    host.set_link_up(host_index)
        .await
        .map_err(Error::netlink(format!("set {host_name} up")))?;

    // Container side.
    let cont_link = container
        .link(cont_name)
        .await
        .map_err(Error::netlink(format!("look up {cont_name} in container")))?
        .ok_or_else(|| Error::CheckFailed {
            what: format!("{cont_name} did not appear in the container"),
        })?;
    let container_sysctls = container_sysctls(spec);
    if !container_sysctls.is_empty() {
        container
            .write_sysctls(&container_sysctls)
            .map_err(Error::netlink(format!(
                "set sysctls of container {cont_name}"
            )))?;
    }
    container
        .set_link_up(cont_link.index)
        .await
        .map_err(Error::netlink(format!("set container {cont_name} up")))?;
    for route in container_routes(spec, cont_link.index) {
        container
            .add_route(&route)
            .await
            .map_err(Error::netlink(format!("add container route {route}")))?;
    }
    let addresses = spec.host_addresses();
    for address in &addresses {
        container
            .add_address(cont_link.index, *address)
            .await
            .map_err(Error::netlink(format!(
                "add {address} to container {cont_name}"
            )))?;
    }

    // Host routes, refusing to steal an address routed to another interface.
    for address in &addresses {
        claim_host_route(host, *address, host_index, host_name).await?;
    }

    let container_mac = cont_link.mac.ok_or_else(|| Error::CheckFailed {
        what: format!("container {cont_name} has no MAC address"),
    })?;
    Ok(WorkloadInterface {
        host_ifname: host_name.to_string(),
        host_index,
        host_mac: HOST_MAC,
        container_ifname: cont_name.to_string(),
        container_mac,
        addresses,
        mtu: spec.mtu,
    })
}

/// Removes a workload's veth; idempotent (a missing namespace or interface is success).
///
/// Deleting either end removes both and the host routes with them; the host end is deleted by
/// name as well in case the container namespace is already gone.
pub async fn teardown_workload(
    host: &Handle,
    container_netns: Option<&Path>,
    container_ifname: &str,
    host_ifname: &str,
) -> Result<()> {
    if let Some(path) = container_netns {
        match Netns::open(path) {
            Ok(netns) => {
                let container = Handle::connect(netns)
                    .await
                    .map_err(Error::netlink(format!(
                        "open netlink in {}",
                        path.display()
                    )))?;
                container
                    .delete_link_by_name(container_ifname)
                    .await
                    .map_err(Error::netlink(format!(
                        "delete container {container_ifname}"
                    )))?;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(Error::Netlink {
                    op: format!("open container netns {}", path.display()),
                    source: e,
                });
            }
        }
    }
    host.delete_link_by_name(host_ifname)
        .await
        .map_err(Error::netlink(format!("delete host veth {host_ifname}")))?;
    Ok(())
}

/// Verifies what [`setup_workload`] builds; the error names the first difference.
pub async fn check_workload(host: &Handle, spec: &WorkloadSpec) -> Result<()> {
    let fail = |what: String| Err(Error::CheckFailed { what });
    // First, so that a vanished container is "container unknown", not a difference.
    let container = container_handle(&spec.container_netns).await?;
    let host_name = spec.host_ifname.as_str();
    let Some(host_link) = host
        .link(host_name)
        .await
        .map_err(Error::netlink(format!("look up {host_name}")))?
    else {
        return fail(format!("host veth {host_name} is missing"));
    };
    if host_link.kind.as_deref() != Some("veth") {
        return fail(format!("host interface {host_name} is not a veth"));
    }
    if !host_link.is_up {
        return fail(format!("host veth {host_name} is down"));
    }
    if host_link.mac != Some(HOST_MAC) {
        return fail(format!(
            "host veth {host_name} has MAC {:?}, want {HOST_MAC}",
            host_link.mac
        ));
    }
    let host_routes = host
        .routes(RouteFilter {
            ifindex: Some(host_link.index),
            ..RouteFilter::default()
        })
        .await
        .map_err(Error::netlink(format!("list routes via {host_name}")))?;
    for address in spec.host_addresses() {
        if !host_routes
            .iter()
            .any(|r| r.dst == address && r.table == felis_netlink::TABLE_MAIN)
        {
            return fail(format!("host route {address} dev {host_name} is missing"));
        }
    }

    let cont_name = spec.container_ifname.as_str();
    let Some(cont_link) = container
        .link(cont_name)
        .await
        .map_err(Error::netlink(format!("look up container {cont_name}")))?
    else {
        return fail(format!("container interface {cont_name} is missing"));
    };
    if !cont_link.is_up {
        return fail(format!("container interface {cont_name} is down"));
    }
    let addresses = container
        .addresses(Some(cont_link.index))
        .await
        .map_err(Error::netlink(format!(
            "list addresses of container {cont_name}"
        )))?;
    for address in spec.host_addresses() {
        if !addresses.iter().any(|a| a.net == address) {
            return fail(format!("container {cont_name} lacks address {address}"));
        }
    }
    let routes = container
        .routes(RouteFilter {
            ifindex: Some(cont_link.index),
            table: Some(felis_netlink::TABLE_MAIN),
            ..RouteFilter::default()
        })
        .await
        .map_err(Error::netlink(format!(
            "list routes of container {cont_name}"
        )))?;
    for want in container_routes(spec, cont_link.index) {
        if !routes
            .iter()
            .any(|r| r.dst == want.dst && r.gateway == want.gateway)
        {
            return fail(format!("container route {} is missing", want.dst));
        }
    }
    Ok(())
}

/// A netlink handle in the container's namespace; a namespace that cannot be opened is
/// [`Error::ContainerUnknown`] (CNI error 3).
pub async fn container_handle(netns: &Path) -> Result<Handle> {
    let opened = Netns::open(netns).map_err(|e| match e {
        felis_netlink::Error::NetnsOpen { source, .. } => Error::ContainerUnknown {
            netns: netns.to_path_buf(),
            source,
        },
        other => Error::Netlink {
            op: format!("open container netns {}", netns.display()),
            source: other,
        },
    })?;
    Handle::connect(opened)
        .await
        .map_err(Error::netlink(format!(
            "open netlink in {}",
            netns.display()
        )))
}

/// Fails with [`Error::InterfaceExists`] if `ifname` is taken in the container: ADD never
/// takes over an interface it did not create.
pub async fn ensure_ifname_free(container: &Handle, ifname: &str) -> Result<()> {
    let netns = container
        .netns()
        .path()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    match container
        .link(ifname)
        .await
        .map_err(Error::netlink(format!("look up {ifname} in container")))?
    {
        None => Ok(()),
        Some(_) => Err(Error::InterfaceExists {
            ifname: ifname.to_string(),
            netns,
        }),
    }
}

fn host_prefix(ip: IpAddr) -> IpNet {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    // Infallible: 32 and 128 are the maximum prefix lengths of their families.
    IpNet::new(ip, len).unwrap_or_else(|_| IpNet::from(ip))
}

/// Host-side sysctls (Calico `configureSysctls`).
fn host_sysctls(spec: &WorkloadSpec) -> Vec<(String, String)> {
    let name = spec.host_ifname.as_str();
    let mut out = Vec::new();
    if spec.has_ipv4() {
        out.push((sysctl::ipv4_conf(name, "route_localnet"), "1".into()));
        out.push((sysctl::ipv4_neigh(name, "proxy_delay"), "0".into()));
        out.push((sysctl::ipv4_conf(name, "proxy_arp"), "1".into()));
        out.push((sysctl::ipv4_conf(name, "forwarding"), "1".into()));
    }
    if spec.has_ipv6() {
        out.push((sysctl::ipv6_conf(name, "disable_ipv6"), "0".into()));
        out.push((sysctl::ipv6_conf(name, "accept_dad"), "0".into()));
        out.push((sysctl::ipv6_conf(name, "accept_ra"), "0".into()));
        out.push((sysctl::ipv6_conf(name, "proxy_ndp"), "1".into()));
        out.push((sysctl::ipv6_conf(name, "forwarding"), "1".into()));
    }
    out
}

/// Container-side sysctls (Calico `configureContainerSysctls`).
fn container_sysctls(spec: &WorkloadSpec) -> Vec<(String, String)> {
    let name = spec.container_ifname.as_str();
    let mut out = Vec::new();
    if spec.allow_ip_forwarding && spec.has_ipv4() {
        out.push(("net/ipv4/ip_forward".into(), "1".into()));
    }
    if spec.has_ipv6() {
        out.push(("net/ipv6/conf/all/disable_ipv6".into(), "0".into()));
        out.push(("net/ipv6/conf/default/disable_ipv6".into(), "0".into()));
        out.push(("net/ipv6/conf/lo/disable_ipv6".into(), "0".into()));
        out.push((sysctl::ipv6_conf(name, "accept_dad"), "0".into()));
        if spec.allow_ip_forwarding {
            out.push(("net/ipv6/conf/all/forwarding".into(), "1".into()));
        }
    }
    out
}

/// The container's routes: link route to 169.254.1.1 then default via it; IPv6 default via the
/// host veth's link-local address.
fn container_routes(spec: &WorkloadSpec, ifindex: Ifindex) -> Vec<Route> {
    let mut out = Vec::new();
    if spec.has_ipv4() {
        out.push(
            Route::new(host_prefix(IpAddr::V4(IPV4_GATEWAY)))
                .dev(ifindex)
                .scope(RouteScope::Link)
                .protocol(RouteProtocol::BOOT),
        );
        out.push(
            Route::new(IpNet::V4(ipnet::Ipv4Net::default()))
                .via(IpAddr::V4(IPV4_GATEWAY))
                .dev(ifindex)
                .protocol(RouteProtocol::BOOT),
        );
    }
    if spec.has_ipv6() {
        out.push(
            Route::new(IpNet::V6(ipnet::Ipv6Net::default()))
                .via(IpAddr::V6(link_local_of(HOST_MAC)))
                .dev(ifindex)
                .protocol(RouteProtocol::BOOT),
        );
    }
    out
}

/// Installs `<address> dev <host veth> scope link proto boot`, unless the address is already
/// routed through another interface (another workload owns it: refuse).
async fn claim_host_route(
    host: &Handle,
    address: IpNet,
    index: Ifindex,
    host_name: &str,
) -> Result<()> {
    // One fib lookup, not a dump: hosts may carry a million BGP routes.
    let existing = host
        .route_lookup(address.addr())
        .await
        .map_err(Error::netlink(format!("look up host route to {address}")))?;
    if let Some(other) = existing.filter(|r| {
        r.dst == address
            && r.table == felis_netlink::TABLE_MAIN
            && r.ifindex.is_some_and(|i| i != index)
    }) {
        let owner = match other.ifindex {
            Some(i) => match host.link_by_index(i).await {
                Ok(Some(link)) => link.name,
                _ => format!("#{i}"),
            },
            None => "?".to_string(),
        };
        return Err(Error::RouteConflict {
            dst: address.to_string(),
            existing: owner,
            wanted: host_name.to_string(),
        });
    }
    let route = Route::new(address)
        .dev(index)
        .scope(RouteScope::Link)
        .protocol(WORKLOAD_ROUTE_PROTOCOL);
    host.replace_route(&route)
        .await
        .map_err(Error::netlink(format!(
            "add host route {address} dev {host_name}"
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addresses: &[&str]) -> WorkloadSpec {
        WorkloadSpec {
            container_netns: "/run/netns/pod".into(),
            container_ifname: "eth0".into(),
            host_ifname: "calic440f455693".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            mtu: 1450,
            allow_ip_forwarding: false,
        }
    }

    #[test]
    fn link_local_follows_eui64_of_the_fixed_mac() {
        assert_eq!(
            link_local_of(HOST_MAC).to_string(),
            "fe80::ecee:eeff:feee:eeee"
        );
    }

    #[test]
    fn addresses_become_host_prefixes() {
        let s = spec(&["10.22.0.5/24", "fd00::5/64"]);
        let got: Vec<String> = s.host_addresses().iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["10.22.0.5/32", "fd00::5/128"]);
    }

    #[test]
    fn ipv4_only_workload_gets_calico_sysctls_and_routes() {
        let s = spec(&["10.244.1.5/32"]);
        let keys: Vec<String> = host_sysctls(&s)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            keys,
            [
                "net/ipv4/conf/calic440f455693/route_localnet=1",
                "net/ipv4/neigh/calic440f455693/proxy_delay=0",
                "net/ipv4/conf/calic440f455693/proxy_arp=1",
                "net/ipv4/conf/calic440f455693/forwarding=1",
            ]
        );
        assert!(container_sysctls(&s).is_empty());
        let routes: Vec<String> = container_routes(&s, Ifindex(2))
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            routes,
            [
                "169.254.1.1/32 dev #2 proto 3",
                "0.0.0.0/0 via 169.254.1.1 dev #2 proto 3"
            ]
        );
    }

    #[test]
    fn ipv6_workload_routes_via_host_link_local() {
        let s = spec(&["fd00::5/128"]);
        let routes: Vec<String> = container_routes(&s, Ifindex(2))
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            routes,
            ["::/0 via fe80::ecee:eeff:feee:eeee dev #2 proto 3"]
        );
        assert!(
            host_sysctls(&s)
                .iter()
                .any(|(k, v)| k.ends_with("/proxy_ndp") && v == "1")
        );
    }
}
