//! `FelixConfiguration`: the per-host agent's settings (`default` and `node.<name>`).
//!
//! The fields Felis uses are typed (see `calico-reference.md` §2). Calico has about 150 more;
//! those are accepted when their name is one Calico knows ([`KNOWN_UNTYPED_FIELDS`]) and kept
//! verbatim in [`FelixConfigurationSpec::other`], so Calico manifests apply unchanged while a
//! misspelt field is still an error.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

use crate::bgp::check_log_level;
use crate::duration;
use crate::error::ValidationError;
use crate::meta::ObjectMeta;
use crate::rule::Port;
use crate::rule::Protocol;
use crate::validate::Normalize;

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident $(= $json:literal)?),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(
                #[doc = stringify!($variant)]
                $(#[serde(rename = $json)])?
                $variant,
            )*
        }
    };
}

string_enum!(
    /// `Enabled`, `Disabled` or `Auto` (nftablesMode).
    NftablesMode { Enabled, Disabled, Auto }
);
string_enum!(
    /// `Legacy`, `NFT` or `Auto` (iptablesBackend).
    IptablesBackend { Legacy, Nft = "NFT", Auto }
);
string_enum!(
    /// `Insert` or `Append` (chainInsertMode).
    ChainInsertMode { Insert, Append }
);
string_enum!(
    /// `Drop`, `Return` or `Accept` (defaultEndpointToHostAction).
    EndpointToHostAction { Drop, Return, Accept }
);
string_enum!(
    /// `Accept` or `Return` (iptablesFilterAllowAction, iptablesMangleAllowAction).
    AllowAction { Accept, Return }
);
string_enum!(
    /// `Drop` or `Reject` (iptablesFilterDenyAction).
    DenyAction { Drop, Reject }
);
string_enum!(
    /// `CalicoIPAM` or `WorkloadIPs` (routeSource).
    RouteSource { CalicoIpam = "CalicoIPAM", WorkloadIps = "WorkloadIPs" }
);
string_enum!(
    /// `Enabled` or `Disabled`.
    EnabledDisabled { Enabled, Disabled }
);
string_enum!(
    /// `DoNothing`, `Enable` or `Disable` (awsSrcDstCheck).
    AwsSrcDstCheck { DoNothing, Enable, Disable }
);
string_enum!(
    /// `Drop`, `Reject` or `Disabled` (serviceLoopPrevention).
    ServiceLoopPrevention { Drop, Reject, Disabled }
);
string_enum!(
    /// `Disabled` or `Any` (workloadSourceSpoofing).
    WorkloadSourceSpoofing { Disabled, Any }
);
string_enum!(
    /// `Tunnel` or `DSR` (bpfExternalServiceMode).
    BpfExternalServiceMode { Tunnel, Dsr = "DSR" }
);
string_enum!(
    /// `TCP`, `Enabled` or `Disabled` (bpfConnectTimeLoadBalancing).
    BpfConnectTimeLoadBalancing { Tcp = "TCP", Enabled, Disabled }
);
string_enum!(
    /// `Disabled`, `Strict` or `Loose` (bpfEnforceRPF).
    BpfEnforceRpf { Disabled, Strict, Loose }
);
string_enum!(
    /// `Disabled`, `L2Only` or `Enabled` (bpfRedirectToPeer).
    BpfRedirectToPeer { Disabled, L2Only, Enabled }
);

/// A `FelixConfiguration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FelixConfiguration {
    /// Name (`default` or `node.<name>`).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The settings.
    #[serde(default)]
    pub spec: FelixConfigurationSpec,
}

/// A protocol, port and optional network (failsafe ports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtoPort {
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// The port.
    pub port: u16,
    /// Only for this peer network (CIDR), if set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub net: String,
}

/// An inclusive range of routing table indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTableRange {
    /// First table.
    pub min: u32,
    /// Last table.
    pub max: u32,
}

/// eBPF conntrack timeouts (Go durations).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BpfConntrackTimeouts {
    /// Grace period of new entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_grace_period: Option<String>,
    /// TCP SYN sent.
    #[serde(
        default,
        rename = "tcpSynSent",
        skip_serializing_if = "Option::is_none"
    )]
    pub tcp_syn_sent: Option<String>,
    /// TCP established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_established: Option<String>,
    /// TCP FINs seen.
    #[serde(
        default,
        rename = "tcpFinsSeen",
        skip_serializing_if = "Option::is_none"
    )]
    pub tcp_fins_seen: Option<String>,
    /// TCP RST seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_reset_seen: Option<String>,
    /// UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_timeout: Option<String>,
    /// Other protocols.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_timeout: Option<String>,
    /// ICMP.
    #[serde(
        default,
        rename = "icmpTimeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub icmp_timeout: Option<String>,
}

/// The spec of a `FelixConfiguration`. Unset fields take the agent's built-in defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FelixConfigurationSpec {
    /// eBPF dataplane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_enabled: Option<bool>,
    /// nftables dataplane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables_mode: Option<NftablesMode>,
    /// iptables backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_backend: Option<IptablesBackend>,
    /// Insert chains at the top, or append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_insert_mode: Option<ChainInsertMode>,
    /// Workload → host traffic after egress policy (default Drop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint_to_host_action: Option<EndpointToHostAction>,
    /// Verdict of allowed packets in the filter table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_filter_allow_action: Option<AllowAction>,
    /// Verdict of allowed packets in the mangle table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_mangle_allow_action: Option<AllowAction>,
    /// Verdict of denied packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_filter_deny_action: Option<DenyAction>,
    /// Workload interface prefixes, comma separated (default `cali`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_prefix: Option<String>,
    /// Interfaces to ignore, comma separated, `/regex/` allowed (default `kube-ipvs0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_exclude: Option<String>,
    /// IPv6 support (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_support: Option<bool>,
    /// IPIP tunnel (unset: from the pools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip_enabled: Option<bool>,
    /// VXLAN tunnel (unset: from the pools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_enabled: Option<bool>,
    /// IPIP MTU (0 = auto).
    #[serde(default, rename = "ipipMTU", skip_serializing_if = "Option::is_none")]
    pub ipip_mtu: Option<i32>,
    /// VXLAN MTU, IPv4 (0 = auto).
    #[serde(default, rename = "vxlanMTU", skip_serializing_if = "Option::is_none")]
    pub vxlan_mtu: Option<i32>,
    /// VXLAN MTU, IPv6 (0 = auto).
    #[serde(
        default,
        rename = "vxlanMTUV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_mtu_v6: Option<i32>,
    /// WireGuard MTU, IPv4 (0 = auto).
    #[serde(
        default,
        rename = "wireguardMTU",
        skip_serializing_if = "Option::is_none"
    )]
    pub wireguard_mtu: Option<i32>,
    /// WireGuard MTU, IPv6 (0 = auto).
    #[serde(
        default,
        rename = "wireguardMTUV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub wireguard_mtu_v6: Option<i32>,
    /// Host interfaces considered for the MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_iface_pattern: Option<String>,
    /// VXLAN UDP port (default 4789).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_port: Option<u16>,
    /// VXLAN VNI (default 4096).
    #[serde(default, rename = "vxlanVNI", skip_serializing_if = "Option::is_none")]
    pub vxlan_vni: Option<u32>,
    /// Routing tables the agent may use (default 1–250).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table_ranges: Option<Vec<RouteTableRange>>,
    /// Deprecated single range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table_range: Option<RouteTableRange>,
    /// Route resync period (default 90s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_refresh_interval: Option<String>,
    /// iptables resync period (default 180s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_refresh_interval: Option<String>,
    /// IP set resync period (default 90s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsets_refresh_interval: Option<String>,
    /// iptables lock timeout (0 = disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_lock_timeout: Option<String>,
    /// iptables lock probe interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_lock_probe_interval: Option<String>,
    /// iptables lock file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_lock_file_path: Option<String>,
    /// Packet mark bits the agent may use (default 0xffff0000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_mark_mask: Option<u32>,
    /// Largest IP set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ipset_size: Option<i32>,
    /// SNAT address instead of MASQUERADE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing_address: Option<String>,
    /// Port range of natOutgoing SNAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_port_range: Option<Port>,
    /// Protocol of device routes (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_route_protocol: Option<i32>,
    /// Source address of device routes, IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_route_source_address: Option<String>,
    /// Source address of device routes, IPv6.
    #[serde(
        default,
        rename = "deviceRouteSourceAddressIPv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub device_route_source_address_ipv6: Option<String>,
    /// Remove routes the agent does not own from its tables (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_external_routes: Option<bool>,
    /// Where workload routes come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_source: Option<RouteSource>,
    /// Turn on IP forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_forwarding: Option<EnabledDisabled>,
    /// Inbound ports always open on host endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_inbound_host_ports: Option<Vec<ProtoPort>>,
    /// Outbound ports always open on host endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_outbound_host_ports: Option<Vec<ProtoPort>>,
    /// NodePort ranges (default 30000:32767).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_node_port_ranges: Option<Vec<Port>>,
    /// Log level on stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<String>,
    /// Log level of the log file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_file: Option<String>,
    /// Log level to syslog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_sys: Option<String>,
    /// Log file (default /var/log/calico/felix.log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file_path: Option<String>,
    /// Prefix of `Log` rule messages (default calico-packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_prefix: Option<String>,
    /// Health endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_enabled: Option<bool>,
    /// Health endpoint address (default localhost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_host: Option<String>,
    /// Health endpoint port (default 9099).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_port: Option<u16>,
    /// Prometheus metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_enabled: Option<bool>,
    /// Prometheus port (default 9091).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_port: Option<u16>,
    /// WireGuard, IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_enabled: Option<bool>,
    /// WireGuard, IPv6.
    #[serde(
        default,
        rename = "wireguardEnabledV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub wireguard_enabled_v6: Option<bool>,
    /// Encrypt host-to-host traffic too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_host_encryption_enabled: Option<bool>,
    /// WireGuard UDP port, IPv4 (default 51820).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_listening_port: Option<u16>,
    /// WireGuard UDP port, IPv6 (default 51821).
    #[serde(
        default,
        rename = "wireguardListeningPortV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub wireguard_listening_port_v6: Option<u16>,
    /// WireGuard device, IPv4 (default wireguard.cali).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_interface_name: Option<String>,
    /// WireGuard device, IPv6 (default wg-v6.cali).
    #[serde(
        default,
        rename = "wireguardInterfaceNameV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub wireguard_interface_name_v6: Option<String>,
    /// Priority of the WireGuard routing rule (default 99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_routing_rule_priority: Option<i32>,
    /// AWS source/destination check handling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_src_dst_check: Option<AwsSrcDstCheck>,
    /// What to do with traffic to service IPs that loops back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_loop_prevention: Option<ServiceLoopPrevention>,
    /// Whether workloads may send from other addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_source_spoofing: Option<WorkloadSourceSpoofing>,
    /// Report endpoint status to the datastore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_reporting_enabled: Option<bool>,
    /// OpenStack-style floating IPs.
    #[serde(
        default,
        rename = "floatingIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub floating_ips: Option<EnabledDisabled>,
    /// XDP for untracked deny.
    #[serde(
        default,
        rename = "xdpEnabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub xdp_enabled: Option<bool>,
    /// Generic (skb) XDP.
    #[serde(
        default,
        rename = "genericXDPEnabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub generic_xdp_enabled: Option<bool>,
    /// eBPF: how external service traffic reaches the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_external_service_mode: Option<BpfExternalServiceMode>,
    /// eBPF: connect-time load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_connect_time_load_balancing: Option<BpfConnectTimeLoadBalancing>,
    /// eBPF: host-networked NAT without CTLB.
    #[serde(
        default,
        rename = "bpfHostNetworkedNATWithoutCTLB",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_host_networked_nat_without_ctlb: Option<EnabledDisabled>,
    /// eBPF: clean up kube-proxy's iptables rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_kube_proxy_iptables_cleanup_enabled: Option<bool>,
    /// eBPF: kube-proxy minimum sync period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_kube_proxy_min_sync_period: Option<String>,
    /// eBPF: kube-proxy healthz port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_kube_proxy_healthz_port: Option<u16>,
    /// eBPF: data interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_data_iface_pattern: Option<String>,
    /// eBPF: reverse path filtering.
    #[serde(
        default,
        rename = "bpfEnforceRPF",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_enforce_rpf: Option<BpfEnforceRpf>,
    /// eBPF: port range for collision SNAT.
    #[serde(
        default,
        rename = "bpfPSNATPorts",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_psnat_ports: Option<Port>,
    /// eBPF: conntrack map size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_map_size_conntrack: Option<i32>,
    /// eBPF: NAT frontend map size.
    #[serde(
        default,
        rename = "bpfMapSizeNATFrontend",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_map_size_nat_frontend: Option<i32>,
    /// eBPF: NAT backend map size.
    #[serde(
        default,
        rename = "bpfMapSizeNATBackend",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_map_size_nat_backend: Option<i32>,
    /// eBPF: NAT affinity map size.
    #[serde(
        default,
        rename = "bpfMapSizeNATAffinity",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_map_size_nat_affinity: Option<i32>,
    /// eBPF: route map size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_map_size_route: Option<i32>,
    /// eBPF: IP set map size.
    #[serde(
        default,
        rename = "bpfMapSizeIPSets",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_map_size_ip_sets: Option<i32>,
    /// eBPF: interface state map size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_map_size_if_state: Option<i32>,
    /// eBPF: conntrack timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_conntrack_timeouts: Option<BpfConntrackTimeouts>,
    /// eBPF: bypass Linux conntrack for host traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_host_conntrack_bypass: Option<bool>,
    /// eBPF: redirect to the peer interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_redirect_to_peer: Option<BpfRedirectToPeer>,
    /// Flow log flush interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_logs_flush_interval: Option<String>,
    /// Goldmane server for flow logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_logs_goldmane_server: Option<String>,
    /// Report usage to the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_reporting_enabled: Option<bool>,
    /// Go GC threshold.
    #[serde(
        default,
        rename = "goGCThreshold",
        skip_serializing_if = "Option::is_none"
    )]
    pub go_gc_threshold: Option<i32>,
    /// Go memory limit in MB (-1 = none).
    #[serde(
        default,
        rename = "goMemoryLimitMB",
        skip_serializing_if = "Option::is_none"
    )]
    pub go_memory_limit_mb: Option<i64>,
    /// Other Calico fields, by their JSON name, kept verbatim.
    #[serde(skip)]
    pub other: BTreeMap<String, Value>,
}

/// Calico FelixConfiguration fields Felis does not interpret but accepts.
pub const KNOWN_UNTYPED_FIELDS: &[&str] = &[
    "allowIPIPPacketsFromWorkloads",
    "allowVXLANPacketsFromWorkloads",
    "bpfAttachType",
    "bpfCTLBLogFilter",
    "bpfConnectTimeLoadBalancingEnabled",
    "bpfConntrackCleanupMode",
    "bpfConntrackLogLevel",
    "bpfConntrackMode",
    "bpfDSROptoutCIDRs",
    "bpfDisableGROForIfaces",
    "bpfDisableUnprivileged",
    "bpfExcludeCIDRsFromNAT",
    "bpfExportBufferSizeMB",
    "bpfExtToServiceConnmark",
    "bpfForceTrackPacketsFromIfaces",
    "bpfJITHardening",
    "bpfKubeProxyEndpointSlicesEnabled",
    "bpfL3IfacePattern",
    "bpfLogFilters",
    "bpfLogLevel",
    "bpfMaglevMaxEndpointsPerService",
    "bpfMaglevMaxServices",
    "bpfMapSizeConntrackCleanupQueue",
    "bpfMapSizeConntrackScaling",
    "bpfMapSizePerCpuConntrack",
    "bpfPolicyDebugEnabled",
    "bpfProfiling",
    "cgroupV2Path",
    "dataplaneDriver",
    "dataplaneWatchdogTimeout",
    "debugDisableLogDropping",
    "debugHost",
    "debugMemoryProfilePath",
    "debugPort",
    "debugSimulateCalcGraphHangAfter",
    "debugSimulateDataplaneApplyDelay",
    "debugSimulateDataplaneHangAfter",
    "disableConntrackInvalidCheck",
    "dnsCacheFile",
    "dnsCacheSaveInterval",
    "dnsLogsFileEnabled",
    "dnsTrustedServers",
    "endpointReportingDelay",
    "endpointStatusPathPrefix",
    "externalNodesList",
    "featureDetectOverride",
    "featureGates",
    "flowLogsCollectorDebugTrace",
    "flowLogsLocalReporter",
    "flowLogsPolicyEvaluationMode",
    "flowLogsPolicyScope",
    "goMaxProcs",
    "healthTimeoutOverrides",
    "interfaceRefreshInterval",
    "iptablesNATOutgoingInterfaceFilter",
    "iptablesPostWriteCheckInterval",
    "ipv4ElevatedRoutePriority",
    "ipv4NormalRoutePriority",
    "ipv6ElevatedRoutePriority",
    "ipv6NormalRoutePriority",
    "istioAmbientMode",
    "istioDSCPMark",
    "liveMigrationRouteConvergenceTime",
    "logActionRateLimit",
    "logActionRateLimitBurst",
    "logDebugFilenameRegex",
    "metadataAddr",
    "metadataPort",
    "natOutgoingExclusions",
    "netlinkTimeout",
    "nfNetlinkBufSize",
    "nftablesFilterAllowAction",
    "nftablesFilterDenyAction",
    "nftablesMangleAllowAction",
    "nftablesMarkMask",
    "nftablesRefreshInterval",
    "openstackRegion",
    "policySyncPathPrefix",
    "programClusterRoutes",
    "prometheusGoMetricsEnabled",
    "prometheusMetricsHost",
    "prometheusProcessMetricsEnabled",
    "prometheusWireGuardMetricsEnabled",
    "reportingInterval",
    "reportingTTL",
    "requireMTUFile",
    "routeSyncDisabled",
    "sidecarAccelerationEnabled",
    "statsDumpFilePath",
    "tproxyMode",
    "tproxyPort",
    "tproxyUpstreamConnMark",
    "usageReportingInitialDelay",
    "usageReportingInterval",
    "useInternalDataplaneDriver",
    "vxlanVNIV6",
    "windowsDnsCacheFile",
    "windowsDnsExtraTTL",
    "windowsManageFirewallRules",
    "windowsNetworkName",
    "wireguardKeepAlive",
    "wireguardPersistentKeepAlive",
    "wireguardThreadingEnabled",
    "xdpRefreshInterval",
];

/// Moves the known-but-untyped fields out of `body.spec`, so that the typed part can be decoded
/// strictly; unknown fields stay and are reported by the strict decode.
pub(crate) fn split_untyped(body: &mut Value) -> BTreeMap<String, Value> {
    let mut other = BTreeMap::new();
    if let Some(Value::Object(spec)) = body.get_mut("spec") {
        for name in KNOWN_UNTYPED_FIELDS {
            if let Some(v) = spec.remove(*name)
                && !v.is_null()
            {
                other.insert((*name).to_string(), v);
            }
        }
    }
    other
}

/// Puts the untyped fields back into a serialized `body.spec`.
pub(crate) fn merge_untyped(body: &mut Value, other: &BTreeMap<String, Value>) {
    if other.is_empty() {
        return;
    }
    if let Some(obj) = body.as_object_mut() {
        let spec = obj
            .entry("spec")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(spec) = spec.as_object_mut() {
            for (k, v) in other {
                spec.insert(k.clone(), v.clone());
            }
        }
    }
}

impl Normalize for FelixConfiguration {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        let s = &self.spec;
        for (field, level) in [
            ("logSeverityScreen", &s.log_severity_screen),
            ("logSeverityFile", &s.log_severity_file),
            ("logSeveritySys", &s.log_severity_sys),
        ] {
            if let Some(level) = level {
                check_log_level(&format!("spec.{field}"), level)?;
            }
        }
        for (field, d) in [
            ("routeRefreshInterval", &s.route_refresh_interval),
            ("iptablesRefreshInterval", &s.iptables_refresh_interval),
            ("ipsetsRefreshInterval", &s.ipsets_refresh_interval),
            ("iptablesLockTimeout", &s.iptables_lock_timeout),
            ("iptablesLockProbeInterval", &s.iptables_lock_probe_interval),
            (
                "bpfKubeProxyMinSyncPeriod",
                &s.bpf_kube_proxy_min_sync_period,
            ),
            ("flowLogsFlushInterval", &s.flow_logs_flush_interval),
        ] {
            duration::check(&format!("spec.{field}"), d.as_deref())?;
        }
        for (field, mtu) in [
            ("ipipMTU", s.ipip_mtu),
            ("vxlanMTU", s.vxlan_mtu),
            ("vxlanMTUV6", s.vxlan_mtu_v6),
            ("wireguardMTU", s.wireguard_mtu),
            ("wireguardMTUV6", s.wireguard_mtu_v6),
        ] {
            if let Some(m) = mtu
                && !(m == 0 || (68..=65535).contains(&m))
            {
                return Err(ValidationError::new(
                    format!("spec.{field}"),
                    format!("MTU must be 0 (auto) or 68-65535, not {m}"),
                ));
            }
        }
        if let Some(vni) = s.vxlan_vni
            && !(1..=16_777_215).contains(&vni)
        {
            return Err(ValidationError::new(
                "spec.vxlanVNI",
                format!("VNI must be 1-16777215, not {vni}"),
            ));
        }
        if let Some(ranges) = &s.route_table_ranges {
            for (i, r) in ranges.iter().enumerate() {
                check_table_range(&format!("spec.routeTableRanges[{i}]"), r)?;
            }
        }
        if let Some(r) = &s.route_table_range {
            check_table_range("spec.routeTableRange", r)?;
        }
        for (field, ports) in [
            ("failsafeInboundHostPorts", &s.failsafe_inbound_host_ports),
            ("failsafeOutboundHostPorts", &s.failsafe_outbound_host_ports),
        ] {
            for (i, p) in ports.iter().flatten().enumerate() {
                if !p.protocol.supports_ports() {
                    return Err(ValidationError::new(
                        format!("spec.{field}[{i}].protocol"),
                        format!("must be TCP, UDP or SCTP, not {}", p.protocol),
                    ));
                }
                if !p.net.is_empty() {
                    crate::net::parse_cidr(&p.net)
                        .map_err(|r| ValidationError::new(format!("spec.{field}[{i}].net"), r))?;
                }
            }
        }
        for (i, p) in s.kube_node_port_ranges.iter().flatten().enumerate() {
            if p.is_named() {
                return Err(ValidationError::new(
                    format!("spec.kubeNodePortRanges[{i}]"),
                    "expected a port or a port range",
                ));
            }
        }
        for (field, p) in [
            ("natPortRange", &s.nat_port_range),
            ("bpfPSNATPorts", &s.bpf_psnat_ports),
        ] {
            if p.as_ref().is_some_and(Port::is_named) {
                return Err(ValidationError::new(
                    format!("spec.{field}"),
                    "expected a port range",
                ));
            }
        }
        if let Some(t) = &s.bpf_conntrack_timeouts {
            for (field, d) in [
                ("creationGracePeriod", &t.creation_grace_period),
                ("tcpSynSent", &t.tcp_syn_sent),
                ("tcpEstablished", &t.tcp_established),
                ("tcpFinsSeen", &t.tcp_fins_seen),
                ("tcpResetSeen", &t.tcp_reset_seen),
                ("udpTimeout", &t.udp_timeout),
                ("genericTimeout", &t.generic_timeout),
                ("icmpTimeout", &t.icmp_timeout),
            ] {
                // Calico also accepts "Auto" for the TCP timeouts.
                if d.as_deref() != Some("Auto") {
                    duration::check(&format!("spec.bpfConntrackTimeouts.{field}"), d.as_deref())?;
                }
            }
        }
        Ok(())
    }
}

fn check_table_range(path: &str, r: &RouteTableRange) -> Result<(), ValidationError> {
    if r.min == 0 || r.min > r.max || r.max > 0xffff_ffff - 1 {
        return Err(ValidationError::new(
            path,
            format!("invalid range {}-{}", r.min, r.max),
        ));
    }
    for reserved in [253, 254, 255] {
        if (r.min..=r.max).contains(&reserved) {
            return Err(ValidationError::new(
                path,
                format!(
                    "range {}-{} includes reserved table {reserved}",
                    r.min, r.max
                ),
            ));
        }
    }
    Ok(())
}
