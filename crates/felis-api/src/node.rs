//! The `Node` resource: a host running the agent, with its BGP and tunnel addresses.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

use crate::error::ValidationError;
use crate::meta::ObjectMeta;
use crate::net;
use crate::net::Asn;
use crate::validate::Normalize;

/// A `Node`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Name (the host name) and labels (selected by `nodeSelector`s).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Addresses and BGP settings.
    #[serde(default)]
    pub spec: NodeSpec,
    /// State reported by the node.
    #[serde(default, skip_serializing_if = "NodeStatus::is_empty")]
    pub status: NodeStatus,
}

/// The spec of a `Node`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// BGP settings; absent when the node does not run BGP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgpSpec>,
    /// Address of the IPv4 VXLAN tunnel device.
    #[serde(
        default,
        rename = "ipv4VXLANTunnelAddr",
        with = "net::opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_vxlan_tunnel_addr: Option<IpAddr>,
    /// MAC of the IPv4 VXLAN tunnel device.
    #[serde(
        default,
        rename = "vxlanTunnelMACAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_tunnel_mac_addr: Option<String>,
    /// Address of the IPv6 VXLAN tunnel device.
    #[serde(
        default,
        rename = "ipv6VXLANTunnelAddr",
        with = "net::opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_vxlan_tunnel_addr: Option<IpAddr>,
    /// MAC of the IPv6 VXLAN tunnel device.
    #[serde(
        default,
        rename = "vxlanTunnelMACAddrV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_tunnel_mac_addr_v6: Option<String>,
    /// The orchestrators that know this node, and their name for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orch_refs: Vec<OrchRef>,
    /// WireGuard interface addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<NodeWireguardSpec>,
    /// All known addresses of the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
}

/// BGP settings of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeBgpSpec {
    /// The node's AS; the cluster's (BGPConfiguration) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<Asn>,
    /// IPv4 address with the subnet's prefix length (`10.0.1.5/24`); the prefix defines
    /// CrossSubnet.
    #[serde(
        default,
        rename = "ipv4Address",
        with = "net::opt_cidr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_address: Option<IpNet>,
    /// IPv6 address with prefix length.
    #[serde(
        default,
        rename = "ipv6Address",
        with = "net::opt_cidr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_address: Option<IpNet>,
    /// Address of the IPIP tunnel device.
    #[serde(
        default,
        rename = "ipv4IPIPTunnelAddr",
        with = "net::opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_ipip_tunnel_addr: Option<IpAddr>,
    /// Set to make this node a route reflector with this cluster ID (an IPv4 address).
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_reflector_cluster_id: Option<String>,
}

/// An orchestrator's reference to a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrchRef {
    /// The orchestrator's name for the node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// The orchestrator (`k8s`).
    pub orchestrator: String,
}

/// WireGuard addresses of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeWireguardSpec {
    /// IPv4 address of the WireGuard device.
    #[serde(
        default,
        rename = "interfaceIPv4Address",
        with = "net::opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub interface_ipv4_address: Option<IpAddr>,
    /// IPv6 address of the WireGuard device.
    #[serde(
        default,
        rename = "interfaceIPv6Address",
        with = "net::opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub interface_ipv6_address: Option<IpAddr>,
}

/// One address of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAddress {
    /// The address (possibly with prefix length).
    pub address: String,
    /// `InternalIP`, `ExternalIP`, `CalicoNodeIP`, ...
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub address_type: Option<String>,
}

/// Status reported by a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    /// WireGuard public key (IPv4 device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_public_key: Option<String>,
    /// WireGuard public key (IPv6 device).
    #[serde(
        default,
        rename = "wireguardPublicKeyV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub wireguard_public_key_v6: Option<String>,
    /// Pod CIDRs assigned by the orchestrator.
    #[serde(default, rename = "podCIDRs", skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
}

impl NodeStatus {
    /// Whether nothing is reported.
    pub fn is_empty(&self) -> bool {
        self == &NodeStatus::default()
    }
}

impl NodeSpec {
    /// The node's IPv4 BGP address (without prefix), if any.
    pub fn ipv4(&self) -> Option<IpAddr> {
        self.bgp
            .as_ref()
            .and_then(|b| b.ipv4_address)
            .map(|n| n.addr())
    }

    /// The node's IPv6 BGP address (without prefix), if any.
    pub fn ipv6(&self) -> Option<IpAddr> {
        self.bgp
            .as_ref()
            .and_then(|b| b.ipv6_address)
            .map(|n| n.addr())
    }
}

impl Normalize for Node {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        if let Some(bgp) = &self.spec.bgp {
            if let Some(a) = bgp.ipv4_address
                && !matches!(a, IpNet::V4(_))
            {
                return Err(ValidationError::new(
                    "spec.bgp.ipv4Address",
                    format!("{a} is not an IPv4 address"),
                ));
            }
            if let Some(a) = bgp.ipv6_address
                && !matches!(a, IpNet::V6(_))
            {
                return Err(ValidationError::new(
                    "spec.bgp.ipv6Address",
                    format!("{a} is not an IPv6 address"),
                ));
            }
            if let Some(a) = bgp.ipv4_ipip_tunnel_addr
                && !a.is_ipv4()
            {
                return Err(ValidationError::new(
                    "spec.bgp.ipv4IPIPTunnelAddr",
                    format!("{a} is not an IPv4 address"),
                ));
            }
            if let Some(id) = &bgp.route_reflector_cluster_id
                && !id.is_empty()
                && id.parse::<std::net::Ipv4Addr>().is_err()
            {
                return Err(ValidationError::new(
                    "spec.bgp.routeReflectorClusterID",
                    format!("{id:?} is not an IPv4 address"),
                ));
            }
        }
        if let Some(a) = self.spec.ipv4_vxlan_tunnel_addr
            && !a.is_ipv4()
        {
            return Err(ValidationError::new(
                "spec.ipv4VXLANTunnelAddr",
                format!("{a} is not an IPv4 address"),
            ));
        }
        if let Some(a) = self.spec.ipv6_vxlan_tunnel_addr
            && !a.is_ipv6()
        {
            return Err(ValidationError::new(
                "spec.ipv6VXLANTunnelAddr",
                format!("{a} is not an IPv6 address"),
            ));
        }
        for (path, mac) in [
            ("spec.vxlanTunnelMACAddr", &self.spec.vxlan_tunnel_mac_addr),
            (
                "spec.vxlanTunnelMACAddrV6",
                &self.spec.vxlan_tunnel_mac_addr_v6,
            ),
        ] {
            if let Some(mac) = mac {
                crate::validate::mac(path, mac)?;
            }
        }
        Ok(())
    }
}
