//! Plain values describing kernel objects: our own types, so `rtnetlink` never leaks out.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::error::Error;

/// An interface index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ifindex(pub u32);

impl fmt::Display for Ifindex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 48-bit Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Calico's host-side veth MAC, `ee:ee:ee:ee:ee:ee`.
    pub const CALICO_HOST: MacAddr = MacAddr([0xee; 6]);

    /// The bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Parses kernel bytes; `None` unless exactly six.
    pub fn from_bytes(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts
                .next()
                .ok_or_else(|| Error::InvalidMac(s.to_string()))?;
            if part.len() != 2 {
                return Err(Error::InvalidMac(s.to_string()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| Error::InvalidMac(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(Error::InvalidMac(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: Ifindex,
    /// Interface name.
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `vxlan`, `bridge`, ...); `None` for physical devices and `lo`.
    pub kind: Option<String>,
    /// Hardware address, if the link has a 6-byte one.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub is_up: bool,
    /// The bridge (or other controller) this link is enslaved to.
    pub controller: Option<Ifindex>,
    /// For veth and tunnels: the index of the underlying or peer link (in its own namespace).
    pub link: Option<Ifindex>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    /// Interface index.
    pub ifindex: Ifindex,
    /// The address with its prefix length, e.g. `10.0.0.1/32`.
    pub net: IpNet,
}

/// A route protocol number (`rtm_protocol`): who installed the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteProtocol(pub u8);

impl RouteProtocol {
    /// Installed by the kernel (connected routes).
    pub const KERNEL: RouteProtocol = RouteProtocol(2);
    /// `proto boot`: Calico's and Felis's local workload routes.
    pub const BOOT: RouteProtocol = RouteProtocol(3);
    /// `proto static`: the default for `ip route add`.
    pub const STATIC: RouteProtocol = RouteProtocol(4);
    /// `proto bird` (12).
    pub const BIRD: RouteProtocol = RouteProtocol(12);
    /// Protocol 80: Calico's felix-programmed VXLAN/no-encap routes and blackholes.
    pub const FELIX: RouteProtocol = RouteProtocol(80);
    /// Protocol 81: Felis's routes learned by BGP (where Calico's BIRD writes `proto bird`,
    /// 12). Next to felix's 80, and taken by no one in Linux's `rtnetlink.h` or iproute2's
    /// `rt_protos` (which give BGP daemons 186, Zebra 11, BIRD 12), so `ip route show proto 81`
    /// lists exactly what Felis's speaker installed and no other daemon touches it.
    pub const FELIS_BGP: RouteProtocol = RouteProtocol(81);
}

impl fmt::Display for RouteProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Route scope (`rtm_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum RouteScope {
    /// Global (`scope global`, 0).
    #[default]
    Universe,
    /// `scope link` (253).
    Link,
    /// `scope host` (254).
    Host,
    /// Any other value.
    Other(u8),
}

/// Route type (`rtm_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum RouteKind {
    /// A normal route.
    #[default]
    Unicast,
    /// Packets are silently discarded.
    Blackhole,
    /// Packets are discarded with ICMP unreachable.
    Unreachable,
    /// Local addresses (the `local` table).
    Local,
    /// Any other value.
    Other(u8),
}

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;
/// The local routing table.
pub const TABLE_LOCAL: u32 = 255;

/// A route: both what to install and what a listing returns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// Destination prefix.
    pub dst: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface, if any.
    pub ifindex: Option<Ifindex>,
    /// Who owns the route.
    pub protocol: RouteProtocol,
    /// Scope.
    pub scope: RouteScope,
    /// Type.
    pub kind: RouteKind,
    /// Routing table (254 = main).
    pub table: u32,
    /// `onlink`: the gateway is reachable on `ifindex` even without a matching prefix.
    pub onlink: bool,
    /// Metric (`priority`), if set.
    pub metric: Option<u32>,
    /// Preferred source address, if set.
    pub source: Option<IpAddr>,
}

impl Route {
    /// A unicast route in the main table with protocol `static` and no next hop yet.
    pub fn new(dst: IpNet) -> Route {
        Route {
            dst,
            gateway: None,
            ifindex: None,
            protocol: RouteProtocol::STATIC,
            scope: RouteScope::Universe,
            kind: RouteKind::Unicast,
            table: TABLE_MAIN,
            onlink: false,
            metric: None,
            source: None,
        }
    }

    /// A blackhole route.
    pub fn blackhole(dst: IpNet) -> Route {
        Route {
            kind: RouteKind::Blackhole,
            ..Route::new(dst)
        }
    }

    /// Sets the output device.
    pub fn dev(mut self, ifindex: Ifindex) -> Route {
        self.ifindex = Some(ifindex);
        self
    }

    /// Sets the next hop.
    pub fn via(mut self, gateway: IpAddr) -> Route {
        self.gateway = Some(gateway);
        self
    }

    /// Sets the protocol.
    pub fn protocol(mut self, protocol: RouteProtocol) -> Route {
        self.protocol = protocol;
        self
    }

    /// Sets the scope.
    pub fn scope(mut self, scope: RouteScope) -> Route {
        self.scope = scope;
        self
    }

    /// Sets the table.
    pub fn table(mut self, table: u32) -> Route {
        self.table = table;
        self
    }

    /// Marks the next hop `onlink`.
    pub fn onlink(mut self) -> Route {
        self.onlink = true;
        self
    }

    /// Sets the metric.
    pub fn metric(mut self, metric: u32) -> Route {
        self.metric = Some(metric);
        self
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == RouteKind::Blackhole {
            write!(f, "blackhole ")?;
        }
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = self.ifindex {
            write!(f, " dev #{dev}")?;
        }
        if self.table != TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

/// Which routes to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteFilter {
    /// Only IPv6 (`Some(true)`) or only IPv4 (`Some(false)`); both if `None`.
    pub ipv6: Option<bool>,
    /// Only this table (`None`: every table).
    pub table: Option<u32>,
    /// Only this protocol.
    pub protocol: Option<RouteProtocol>,
    /// Only routes out of this interface.
    pub ifindex: Option<Ifindex>,
}

/// A permanent neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    /// Interface index.
    pub ifindex: Ifindex,
    /// The neighbour's IP.
    pub ip: IpAddr,
    /// Its MAC, if resolved.
    pub mac: Option<MacAddr>,
    /// True for `NUD_PERMANENT`.
    pub is_permanent: bool,
}

/// A bridge forwarding-database entry; on a VXLAN device, `dst` is the remote VTEP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    /// Interface index (the VXLAN device or bridge port).
    pub ifindex: Ifindex,
    /// The MAC address.
    pub mac: MacAddr,
    /// Remote VTEP address for VXLAN entries.
    pub dst: Option<IpAddr>,
}

/// A veth pair to create.
#[derive(Debug)]
pub struct VethPair<'a> {
    /// Name of the end that stays in the handle's namespace.
    pub name: String,
    /// Name of the other end.
    pub peer_name: String,
    /// Move the peer into this namespace at creation (atomically, by fd).
    pub peer_netns: Option<&'a crate::Netns>,
    /// MTU for both ends.
    pub mtu: Option<u32>,
    /// MAC of the local end.
    pub mac: Option<MacAddr>,
    /// MAC of the peer.
    pub peer_mac: Option<MacAddr>,
}

/// A VXLAN device to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    /// Device name, e.g. `vxlan.calico`.
    pub name: String,
    /// VXLAN network identifier (Calico: 4096).
    pub vni: u32,
    /// UDP destination port (Calico: 4789).
    pub port: u16,
    /// Local VTEP address.
    pub local: Option<IpAddr>,
    /// Parent device.
    pub dev: Option<Ifindex>,
    /// Learn remote MACs from traffic (Calico turns this off and programs the FDB).
    pub learning: bool,
    /// MTU.
    pub mtu: Option<u32>,
    /// MAC of the device.
    pub mac: Option<MacAddr>,
}

/// Validates an interface name (1..=15 bytes, no `/`, whitespace, `:` or NUL).
pub fn validate_ifname(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 15 {
        Some("longer than 15 bytes (IFNAMSIZ)")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("contains '/', ':', NUL or whitespace")
    } else {
        None
    };
    reject_name(name, reason)
}

/// `Err(InvalidName)` when a validator found a `reason`.
pub(crate) fn reject_name(name: &str, reason: Option<&'static str>) -> Result<(), Error> {
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_through_text() {
        let mac: MacAddr = "ee:ee:ee:ee:ee:ee".parse().unwrap();
        assert_eq!(mac, MacAddr::CALICO_HOST);
        assert_eq!(mac.to_string(), "ee:ee:ee:ee:ee:ee");
        let mac: MacAddr = "66:0A:1b:2c:3d:4e".parse().unwrap();
        assert_eq!(mac.to_string(), "66:0a:1b:2c:3d:4e");
    }

    #[test]
    fn malformed_macs_are_rejected() {
        for bad in [
            "",
            "ee:ee",
            "ee:ee:ee:ee:ee:ee:ee",
            "gg:ee:ee:ee:ee:ee",
            "e:ee:ee:ee:ee:eee",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_names_follow_ifnamsiz() {
        assert!(validate_ifname("cali0123456789a").is_ok());
        assert!(validate_ifname("cali0123456789ab").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("").is_err());
    }
}
