//! BGP resources: `BGPConfiguration`, `BGPPeer` and `BGPFilter`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

use crate::duration;
use crate::error::ValidationError;
use crate::meta::ObjectMeta;
use crate::net;
use crate::net::Asn;
use crate::validate;
use crate::validate::Normalize;

/// Calico's default AS number.
pub const DEFAULT_ASN: Asn = Asn(64512);
/// The BGP port.
pub const DEFAULT_BGP_PORT: u16 = 179;

/// A `BGPConfiguration` (`default`, or `node.<name>` for one node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfiguration {
    /// Name.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The settings.
    #[serde(default)]
    pub spec: BgpConfigurationSpec,
}

/// The spec of a `BGPConfiguration`. Unset fields take Calico's runtime defaults (see the
/// accessor methods); Calico does not store them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpConfigurationSpec {
    /// Log level of the BGP daemon (default Info).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<String>,
    /// Full node-to-node mesh (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// The cluster's AS number (default 64512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<Asn>,
    /// Service LoadBalancer ranges to advertise.
    #[serde(
        default,
        rename = "serviceLoadBalancerIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_load_balancer_ips: Vec<ServiceCidr>,
    /// Service external IP ranges to advertise.
    #[serde(
        default,
        rename = "serviceExternalIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_external_ips: Vec<ServiceCidr>,
    /// Service cluster IP ranges to advertise.
    #[serde(
        default,
        rename = "serviceClusterIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cluster_ips: Vec<ServiceCidr>,
    /// BGP listen port (default 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// Named communities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
    /// Communities attached to advertised prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    /// Password of mesh sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BgpPassword>,
    /// Graceful restart time of mesh sessions (default 120s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_max_restart_time: Option<String>,
    /// `None` (listen on all addresses) or `NodeIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_mode: Option<BindMode>,
    /// Interfaces whose addresses are not exported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_interfaces: Vec<String>,
    /// IPv4 address local workloads peer with.
    #[serde(
        default,
        rename = "localWorkloadPeeringIPV4",
        skip_serializing_if = "Option::is_none"
    )]
    pub local_workload_peering_ipv4: Option<String>,
    /// IPv6 address local workloads peer with.
    #[serde(
        default,
        rename = "localWorkloadPeeringIPV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub local_workload_peering_ipv6: Option<String>,
    /// Whether the agent programs cluster routes itself (`Enabled`/`Disabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_cluster_routes: Option<String>,
}

impl BgpConfigurationSpec {
    /// Whether the node-to-node mesh is on (default true).
    pub fn node_to_node_mesh(&self) -> bool {
        self.node_to_node_mesh_enabled.unwrap_or(true)
    }

    /// The cluster AS number (default 64512).
    pub fn asn(&self) -> Asn {
        self.as_number.unwrap_or(DEFAULT_ASN)
    }

    /// The listen port (default 179).
    pub fn port(&self) -> u16 {
        self.listen_port.unwrap_or(DEFAULT_BGP_PORT)
    }
}

/// A CIDR of service addresses to advertise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCidr {
    /// The range.
    #[serde(with = "net::cidr")]
    pub cidr: IpNet,
}

/// A named BGP community.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Community {
    /// The name prefix advertisements refer to.
    pub name: String,
    /// `aa:nn` (standard) or `aa:nn:mm` (large).
    pub value: String,
}

/// Communities to attach to a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixAdvertisement {
    /// The prefix.
    #[serde(with = "net::cidr")]
    pub cidr: IpNet,
    /// Community names or literal values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
}

/// A BGP password from a Kubernetes secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpPassword {
    /// The secret and key holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// A key of a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key in the secret.
    pub key: String,
    /// Whether the secret may be missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// Which addresses the BGP daemon listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BindMode {
    /// All addresses.
    None,
    /// Only the node's IP.
    #[serde(rename = "NodeIP")]
    NodeIp,
}

impl Normalize for BgpConfiguration {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        let s = &self.spec;
        if let Some(level) = &s.log_severity_screen {
            check_log_level("spec.logSeverityScreen", level)?;
        }
        if s.listen_port == Some(0) {
            return Err(ValidationError::new("spec.listenPort", "must be 1-65535"));
        }
        for (i, c) in s.communities.iter().enumerate() {
            if !is_community(&c.value) {
                return Err(ValidationError::new(
                    format!("spec.communities[{i}].value"),
                    format!(
                        "invalid community {:?}: expected aa:nn or aa:nn:mm",
                        c.value
                    ),
                ));
            }
        }
        for (i, p) in s.prefix_advertisements.iter().enumerate() {
            for (j, c) in p.communities.iter().enumerate() {
                if !is_community(c) && !s.communities.iter().any(|k| &k.name == c) {
                    return Err(ValidationError::new(
                        format!("spec.prefixAdvertisements[{i}].communities[{j}]"),
                        format!("{c:?} is neither a community value nor a defined community name"),
                    ));
                }
            }
        }
        duration::check(
            "spec.nodeMeshMaxRestartTime",
            s.node_mesh_max_restart_time.as_deref(),
        )?;
        for (field, ip) in [
            ("localWorkloadPeeringIPV4", &s.local_workload_peering_ipv4),
            ("localWorkloadPeeringIPV6", &s.local_workload_peering_ipv6),
        ] {
            if let Some(ip) = ip {
                net::parse_ip(ip).map_err(|r| ValidationError::new(format!("spec.{field}"), r))?;
            }
        }
        if let Some(v) = &s.program_cluster_routes
            && v != "Enabled"
            && v != "Disabled"
        {
            return Err(ValidationError::new(
                "spec.programClusterRoutes",
                format!("must be Enabled or Disabled, not {v:?}"),
            ));
        }
        Ok(())
    }
}

/// Whether `v` is a standard (`aa:nn`, 16-bit parts) or large (`aa:nn:mm`, 32-bit) community.
fn is_community(v: &str) -> bool {
    let parts: Vec<&str> = v.split(':').collect();
    match parts.len() {
        2 => parts.iter().all(|p| p.parse::<u16>().is_ok()),
        3 => parts.iter().all(|p| p.parse::<u32>().is_ok()),
        _ => false,
    }
}

/// Checks a log level (case-insensitive, as Calico).
pub(crate) fn check_log_level(path: &str, level: &str) -> Result<(), ValidationError> {
    const LEVELS: &[&str] = &[
        "trace", "debug", "info", "warning", "error", "fatal", "panic", "none",
    ];
    if LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
        Ok(())
    } else {
        Err(ValidationError::new(
            path,
            format!(
                "invalid log level {level:?}: expected Debug, Info, Warning, Error, Fatal or None"
            ),
        ))
    }
}

/// A `BGPPeer`: which nodes peer with whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpPeer {
    /// Name.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The peering.
    #[serde(default)]
    pub spec: BgpPeerSpec,
}

/// The spec of a `BGPPeer`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpPeerSpec {
    /// The one node that peers (exclusive with `nodeSelector`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The nodes that peer; empty (and no `node`) = all.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_selector: String,
    /// The peer: `ip`, `ip:port` or `[v6]:port`.
    #[serde(default, rename = "peerIP", skip_serializing_if = "String::is_empty")]
    pub peer_ip: String,
    /// The peer's AS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<Asn>,
    /// Peer with the Calico nodes matching this selector (exclusive with peerIP/asNumber).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer_selector: String,
    /// Deprecated: keep the original next hop.
    #[serde(default, skip_serializing_if = "validate::is_false")]
    pub keep_original_next_hop: bool,
    /// `Auto`, `Self` or `Keep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_mode: Option<NextHopMode>,
    /// TCP MD5 password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BgpPassword>,
    /// `UseNodeIP` (default) or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SourceAddress>,
    /// Graceful restart time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<String>,
    /// How many times our AS may appear in received paths.
    #[serde(
        default,
        rename = "numAllowedLocalASNumbers",
        skip_serializing_if = "Option::is_none"
    )]
    pub num_allowed_local_as_numbers: Option<i32>,
    /// GTSM: the peer is at most this many hops away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<u8>,
    /// Gateway through which the peer is reachable (adds a static route).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reachable_by: String,
    /// BGPFilter names, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// Peer with local workloads matching this selector.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_workload_selector: String,
    /// `Auto` or `Manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_peering: Option<ReversePeering>,
    /// `None` or `BFDIfDirectlyConnected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_detection_mode: Option<String>,
    /// `GracefulRestart` or `LongLivedGracefulRestart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_mode: Option<String>,
    /// `Recursive` or `DirectIfDirectlyConnected`.
    #[serde(
        default,
        rename = "birdGatewayMode",
        skip_serializing_if = "Option::is_none"
    )]
    pub bird_gateway_mode: Option<String>,
}

impl BgpPeerSpec {
    /// The peer address and port (if given) of `peerIP`.
    pub fn peer_addr(&self) -> Option<(IpAddr, Option<u16>)> {
        parse_peer_ip(&self.peer_ip).ok()
    }
}

/// Parses `ip`, `ip:port` or `[v6]:port`.
pub fn parse_peer_ip(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let bad = || format!("invalid peer address {s:?}: expected IP, IP:port or [IPv6]:port");
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        if sa.port() == 0 {
            return Err(bad());
        }
        return Ok((sa.ip(), Some(sa.port())));
    }
    Err(bad())
}

/// How the next hop of routes sent to a peer is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NextHopMode {
    /// BIRD's default behaviour.
    Auto,
    /// Always our address.
    #[serde(rename = "Self")]
    SelfAddr,
    /// Keep the original next hop.
    Keep,
}

/// The source address of BGP sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourceAddress {
    /// The node's IP (default).
    #[serde(rename = "UseNodeIP")]
    UseNodeIp,
    /// Let the kernel choose.
    None,
}

/// Whether the reverse peering is created automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReversePeering {
    /// Automatically.
    Auto,
    /// By hand.
    Manual,
}

impl Normalize for BgpPeer {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        let s = &self.spec;
        if !s.node.is_empty() && !s.node_selector.is_empty() {
            return Err(ValidationError::new(
                "spec.nodeSelector",
                "node and nodeSelector cannot both be set",
            ));
        }
        if !s.node.is_empty() {
            validate::subdomain("spec.node", &s.node)?;
        }
        if !s.node_selector.is_empty() {
            validate::selector("spec.nodeSelector", &s.node_selector)?;
        }
        if !s.peer_selector.is_empty() {
            validate::selector("spec.peerSelector", &s.peer_selector)?;
            if !s.peer_ip.is_empty() || s.as_number.is_some() {
                return Err(ValidationError::new(
                    "spec.peerSelector",
                    "peerSelector cannot be combined with peerIP or asNumber",
                ));
            }
        } else if !s.peer_ip.is_empty() {
            parse_peer_ip(&s.peer_ip).map_err(|r| ValidationError::new("spec.peerIP", r))?;
            if s.as_number.is_none() {
                return Err(ValidationError::new(
                    "spec.asNumber",
                    "asNumber is required with peerIP",
                ));
            }
        } else if s.local_workload_selector.is_empty() {
            return Err(ValidationError::new(
                "spec.peerIP",
                "set peerIP and asNumber, peerSelector or localWorkloadSelector",
            ));
        }
        if !s.local_workload_selector.is_empty() {
            validate::selector("spec.localWorkloadSelector", &s.local_workload_selector)?;
        }
        if s.keep_original_next_hop && s.next_hop_mode.is_some_and(|m| m != NextHopMode::Keep) {
            return Err(ValidationError::new(
                "spec.nextHopMode",
                "keepOriginalNextHop conflicts with nextHopMode; use nextHopMode Keep",
            ));
        }
        if !s.reachable_by.is_empty() {
            net::parse_ip(&s.reachable_by)
                .map_err(|r| ValidationError::new("spec.reachableBy", r))?;
        }
        duration::check("spec.maxRestartTime", s.max_restart_time.as_deref())?;
        if let Some(n) = s.num_allowed_local_as_numbers
            && n < 0
        {
            return Err(ValidationError::new(
                "spec.numAllowedLocalASNumbers",
                format!("must not be negative, not {n}"),
            ));
        }
        for (i, f) in s.filters.iter().enumerate() {
            validate::subdomain(&format!("spec.filters[{i}]"), f)?;
        }
        for (field, value, allowed) in [
            (
                "failureDetectionMode",
                &s.failure_detection_mode,
                &["None", "BFDIfDirectlyConnected"][..],
            ),
            (
                "restartMode",
                &s.restart_mode,
                &["GracefulRestart", "LongLivedGracefulRestart"][..],
            ),
            (
                "birdGatewayMode",
                &s.bird_gateway_mode,
                &["Recursive", "DirectIfDirectlyConnected"][..],
            ),
        ] {
            if let Some(v) = value
                && !allowed.contains(&v.as_str())
            {
                return Err(ValidationError::new(
                    format!("spec.{field}"),
                    format!(
                        "invalid value {v:?}: expected one of {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A `BGPFilter`: ordered import/export rules per family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpFilter {
    /// Name.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The rules.
    #[serde(default)]
    pub spec: BgpFilterSpec,
}

/// The spec of a `BGPFilter`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpFilterSpec {
    /// IPv4 export rules.
    #[serde(default, rename = "exportV4", skip_serializing_if = "Vec::is_empty")]
    pub export_v4: Vec<BgpFilterRule>,
    /// IPv4 import rules.
    #[serde(default, rename = "importV4", skip_serializing_if = "Vec::is_empty")]
    pub import_v4: Vec<BgpFilterRule>,
    /// IPv6 export rules.
    #[serde(default, rename = "exportV6", skip_serializing_if = "Vec::is_empty")]
    pub export_v6: Vec<BgpFilterRule>,
    /// IPv6 import rules.
    #[serde(default, rename = "importV6", skip_serializing_if = "Vec::is_empty")]
    pub import_v6: Vec<BgpFilterRule>,
}

/// One BGP filter rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpFilterRule {
    /// The prefix to compare routes with (needs `matchOperator`).
    #[serde(
        default,
        with = "net::opt_cidr",
        skip_serializing_if = "Option::is_none"
    )]
    pub cidr: Option<IpNet>,
    /// Bounds on the route's prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<PrefixLength>,
    /// `RemotePeers`: only routes learned from peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<BgpFilterSource>,
    /// Only routes of interfaces matching this glob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// How `cidr` is compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_operator: Option<MatchOperator>,
    /// What to do with matching routes.
    pub action: BgpFilterAction,
}

/// Bounds on a prefix length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixLength {
    /// Shortest accepted length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u8>,
    /// Longest accepted length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u8>,
}

/// Source of routes a filter rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BgpFilterSource {
    /// Routes learned from BGP peers.
    RemotePeers,
}

/// How a filter rule compares a route with its `cidr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MatchOperator {
    /// The route equals the CIDR.
    Equal,
    /// The route differs from the CIDR.
    NotEqual,
    /// The route is within the CIDR.
    In,
    /// The route is outside the CIDR.
    NotIn,
}

/// What a filter rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BgpFilterAction {
    /// Accept the route.
    Accept,
    /// Reject the route.
    Reject,
}

impl Normalize for BgpFilter {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        let s = &self.spec;
        for (field, rules, v6) in [
            ("exportV4", &s.export_v4, false),
            ("importV4", &s.import_v4, false),
            ("exportV6", &s.export_v6, true),
            ("importV6", &s.import_v6, true),
        ] {
            for (i, r) in rules.iter().enumerate() {
                check_filter_rule(&format!("spec.{field}[{i}]"), r, v6)?;
            }
        }
        Ok(())
    }
}

fn check_filter_rule(path: &str, r: &BgpFilterRule, v6: bool) -> Result<(), ValidationError> {
    let max_len = if v6 { 128 } else { 32 };
    if let Some(cidr) = r.cidr
        && matches!(cidr, IpNet::V6(_)) != v6
    {
        return Err(ValidationError::new(
            format!("{path}.cidr"),
            format!("{cidr} is not an IPv{} CIDR", if v6 { 6 } else { 4 }),
        ));
    }
    if r.cidr.is_some() != r.match_operator.is_some() {
        return Err(ValidationError::new(
            format!("{path}.matchOperator"),
            "cidr and matchOperator must be set together",
        ));
    }
    if let Some(pl) = r.prefix_length {
        for (field, v) in [("min", pl.min), ("max", pl.max)] {
            if let Some(v) = v
                && v > max_len
            {
                return Err(ValidationError::new(
                    format!("{path}.prefixLength.{field}"),
                    format!("must be 0-{max_len}, not {v}"),
                ));
            }
        }
        if let (Some(min), Some(max)) = (pl.min, pl.max)
            && min > max
        {
            return Err(ValidationError::new(
                format!("{path}.prefixLength"),
                format!("min {min} exceeds max {max}"),
            ));
        }
        if let (Some(cidr), Some(min)) = (r.cidr, pl.min)
            && min < cidr.prefix_len()
        {
            return Err(ValidationError::new(
                format!("{path}.prefixLength.min"),
                format!(
                    "min {min} is shorter than the CIDR's prefix length {}",
                    cidr.prefix_len()
                ),
            ));
        }
    }
    Ok(())
}
