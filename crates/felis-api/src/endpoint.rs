//! Endpoint and network-set resources: `HostEndpoint`, `WorkloadEndpoint`, `NetworkSet`,
//! `GlobalNetworkSet`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

use crate::error::ValidationError;
use crate::meta::ObjectMeta;
use crate::net;
use crate::rule::Protocol;
use crate::validate;
use crate::validate::Normalize;

/// A `NetworkSet` (namespaced): labelled CIDRs for rule selectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSet {
    /// Name, namespace and the labels selectors match.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The networks.
    #[serde(default)]
    pub spec: NetworkSetSpec,
}

/// A `GlobalNetworkSet`: labelled CIDRs, cluster-scoped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalNetworkSet {
    /// Name and the labels selectors match.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The networks.
    #[serde(default)]
    pub spec: NetworkSetSpec,
}

/// The spec of `NetworkSet` and `GlobalNetworkSet`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSetSpec {
    /// The CIDRs of the set.
    #[serde(default, with = "net::cidr_vec", skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<IpNet>,
}

impl Normalize for NetworkSet {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        self.spec.nets.iter_mut().for_each(|n| *n = n.trunc());
        Ok(())
    }
}

impl Normalize for GlobalNetworkSet {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        self.spec.nets.iter_mut().for_each(|n| *n = n.trunc());
        Ok(())
    }
}

/// Calico's name of a workload endpoint: node, orchestrator, workload (the pod, for `k8s`) and
/// endpoint, each with `-` doubled, joined by `-`: `node1-k8s-my--pod-eth0`.
pub fn workload_endpoint_name(
    node: &str,
    orchestrator: &str,
    workload: &str,
    endpoint: &str,
) -> String {
    [node, orchestrator, workload, endpoint]
        .iter()
        .map(|part| part.replace('-', "--"))
        .collect::<Vec<_>>()
        .join("-")
}

/// A named port of an endpoint (for rules that match ports by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPort {
    /// The port's name.
    pub name: String,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// The port number.
    pub port: u16,
}

/// A named port of a workload, possibly published on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEndpointPort {
    /// The port's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// The port number.
    pub port: u16,
    /// Port published on the host (0 = none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub host_port: u16,
    /// Host address the port is published on.
    #[serde(default, rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

/// A `HostEndpoint`: a host interface (or all of them) under policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEndpoint {
    /// Name and the labels policies select.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The interface and its addresses.
    #[serde(default)]
    pub spec: HostEndpointSpec,
}

/// The spec of a `HostEndpoint`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEndpointSpec {
    /// The node the interface is on.
    #[serde(default)]
    pub node: String,
    /// The interface: a name, `*` for all interfaces, or empty with `expectedIPs`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface_name: String,
    /// The interface's addresses (used to resolve selectors to IPs).
    #[serde(default, rename = "expectedIPs", skip_serializing_if = "Vec::is_empty")]
    pub expected_ips: Vec<IpAddr>,
    /// Profiles applied when no policy decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Named ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

impl Normalize for HostEndpoint {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        let s = &self.spec;
        if s.node.is_empty() {
            return Err(ValidationError::new("spec.node", "the node is required"));
        }
        validate::subdomain("spec.node", &s.node)?;
        if s.interface_name.is_empty() && s.expected_ips.is_empty() {
            return Err(ValidationError::new(
                "spec.interfaceName",
                "set interfaceName or expectedIPs (or both)",
            ));
        }
        if !s.interface_name.is_empty() {
            validate::interface_name("spec.interfaceName", &s.interface_name, true)?;
        }
        for (i, p) in s.ports.iter().enumerate() {
            check_port(&format!("spec.ports[{i}]"), &p.name, p.protocol, true)?;
        }
        Ok(())
    }
}

/// A `WorkloadEndpoint` (namespaced): a pod's (or VM's) interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadEndpoint {
    /// Name (`<node>-k8s-<pod>-<endpoint>`, dashes doubled), namespace and the pod's labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The interface, its addresses and profiles.
    #[serde(default)]
    pub spec: WorkloadEndpointSpec,
}

/// The spec of a `WorkloadEndpoint`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEndpointSpec {
    /// The orchestrator (`k8s`, `cni`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub orchestrator: String,
    /// The workload (non-Kubernetes orchestrators).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload: String,
    /// The node the workload runs on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The container's ID.
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "String::is_empty"
    )]
    pub container_id: String,
    /// The pod's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// The interface inside the workload (`eth0`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// The pod's service account.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
    /// The workload's addresses (/32 and /128).
    #[serde(default, with = "net::cidr_vec", skip_serializing_if = "Vec::is_empty")]
    pub ip_networks: Vec<IpNet>,
    /// 1:1 NAT (floating IPs).
    #[serde(default, rename = "ipNATs", skip_serializing_if = "Vec::is_empty")]
    pub ip_nats: Vec<IpNat>,
    /// IPv4 gateway of the workload.
    #[serde(
        default,
        rename = "ipv4Gateway",
        with = "net::opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_gateway: Option<IpAddr>,
    /// IPv6 gateway of the workload.
    #[serde(
        default,
        rename = "ipv6Gateway",
        with = "net::opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_gateway: Option<IpAddr>,
    /// Profiles applied when no policy decides (`kns.<ns>`, `ksa.<ns>.<sa>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// The host side of the veth (`cali...`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface_name: String,
    /// The workload's MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Named ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<WorkloadEndpointPort>,
    /// Source prefixes the workload may send from besides its own addresses.
    #[serde(default, with = "net::cidr_vec", skip_serializing_if = "Vec::is_empty")]
    pub allow_spoofed_source_prefixes: Vec<IpNet>,
    /// Bandwidth, packet rate and connection limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_controls: Option<QosControls>,
}

/// A 1:1 NAT mapping of a workload address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpNat {
    /// The workload's own address.
    #[serde(rename = "internalIP")]
    pub internal_ip: IpAddr,
    /// The address it is reachable at.
    #[serde(rename = "externalIP")]
    pub external_ip: IpAddr,
}

/// QoS limits of a workload (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QosControls {
    /// Ingress bandwidth, bits/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_bandwidth: Option<i64>,
    /// Egress bandwidth, bits/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_bandwidth: Option<i64>,
    /// Ingress burst, bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_burst: Option<i64>,
    /// Egress burst, bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_burst: Option<i64>,
    /// Ingress peak rate, bits/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_peakrate: Option<i64>,
    /// Egress peak rate, bits/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_peakrate: Option<i64>,
    /// Ingress minimum burst, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_minburst: Option<i64>,
    /// Egress minimum burst, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_minburst: Option<i64>,
    /// Ingress packets/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_packet_rate: Option<i64>,
    /// Egress packets/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_packet_rate: Option<i64>,
    /// Ingress packet burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_packet_burst: Option<i64>,
    /// Egress packet burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_packet_burst: Option<i64>,
    /// Most concurrent ingress connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_max_connections: Option<i64>,
    /// Most concurrent egress connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_max_connections: Option<i64>,
}

impl Normalize for WorkloadEndpoint {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        let s = &self.spec;
        if !s.node.is_empty() {
            validate::subdomain("spec.node", &s.node)?;
        }
        if !s.interface_name.is_empty() {
            validate::interface_name("spec.interfaceName", &s.interface_name, false)?;
        }
        if !s.mac.is_empty() {
            validate::mac("spec.mac", &s.mac)?;
        }
        if let Some(gw) = s.ipv4_gateway
            && !gw.is_ipv4()
        {
            return Err(ValidationError::new(
                "spec.ipv4Gateway",
                format!("{gw} is not IPv4"),
            ));
        }
        if let Some(gw) = s.ipv6_gateway
            && !gw.is_ipv6()
        {
            return Err(ValidationError::new(
                "spec.ipv6Gateway",
                format!("{gw} is not IPv6"),
            ));
        }
        for (i, p) in s.ports.iter().enumerate() {
            check_port(&format!("spec.ports[{i}]"), &p.name, p.protocol, false)?;
            if !p.host_ip.is_empty() {
                net::parse_ip(&p.host_ip)
                    .map_err(|r| ValidationError::new(format!("spec.ports[{i}].hostIP"), r))?;
            }
        }
        if let Some(q) = &s.qos_controls {
            let all = [
                ("ingressBandwidth", q.ingress_bandwidth),
                ("egressBandwidth", q.egress_bandwidth),
                ("ingressBurst", q.ingress_burst),
                ("egressBurst", q.egress_burst),
                ("ingressPeakrate", q.ingress_peakrate),
                ("egressPeakrate", q.egress_peakrate),
                ("ingressMinburst", q.ingress_minburst),
                ("egressMinburst", q.egress_minburst),
                ("ingressPacketRate", q.ingress_packet_rate),
                ("egressPacketRate", q.egress_packet_rate),
                ("ingressPacketBurst", q.ingress_packet_burst),
                ("egressPacketBurst", q.egress_packet_burst),
                ("ingressMaxConnections", q.ingress_max_connections),
                ("egressMaxConnections", q.egress_max_connections),
            ];
            for (field, v) in all {
                if let Some(v) = v
                    && v < 0
                {
                    return Err(ValidationError::new(
                        format!("spec.qosControls.{field}"),
                        format!("must not be negative, not {v}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_port(
    path: &str,
    name: &str,
    protocol: Protocol,
    name_required: bool,
) -> Result<(), ValidationError> {
    if name_required && name.is_empty() {
        return Err(ValidationError::new(
            format!("{path}.name"),
            "the port name is required",
        ));
    }
    if !protocol.supports_ports() {
        return Err(ValidationError::new(
            format!("{path}.protocol"),
            format!("must be TCP, UDP or SCTP, not {protocol}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_endpoint_names_double_dashes() {
        assert_eq!(
            workload_endpoint_name("node-a", "k8s", "frontend-5d8f7", "eth0"),
            "node--a-k8s-frontend--5d8f7-eth0"
        );
        assert_eq!(
            workload_endpoint_name("n1", "cni", "3f1e2d", "eth0"),
            "n1-cni-3f1e2d-eth0"
        );
    }
}
