//! The kinds of resource Felis knows, their names, aliases and datastore key prefixes.

use std::fmt;

use crate::error::ValidationError;

/// API group and version of the Calico kinds.
pub const CALICO_API_VERSION: &str = "projectcalico.org/v3";
/// API group and version of Kubernetes NetworkPolicy.
pub const K8S_NETWORKING_API_VERSION: &str = "networking.k8s.io/v1";
/// API version of Kubernetes core kinds (Namespace).
pub const K8S_CORE_API_VERSION: &str = "v1";

/// A kind of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `IPPool`: a range of addresses IPAM allocates from.
    IpPool,
    /// `IPReservation`: addresses IPAM must not hand out.
    IpReservation,
    /// `IPAMConfiguration` (singleton `default`).
    IpamConfiguration,
    /// `Node`: a host running the agent.
    Node,
    /// `BGPConfiguration` (`default` or `node.<name>`).
    BgpConfiguration,
    /// `BGPPeer`: an explicit BGP peering.
    BgpPeer,
    /// `BGPFilter`: import/export route filters.
    BgpFilter,
    /// `FelixConfiguration` (`default` or `node.<name>`).
    FelixConfiguration,
    /// Calico `NetworkPolicy` (namespaced).
    NetworkPolicy,
    /// `GlobalNetworkPolicy` (cluster-scoped).
    GlobalNetworkPolicy,
    /// `Tier`: an ordered group of policies.
    Tier,
    /// `Profile`: rules and labels inherited by endpoints.
    Profile,
    /// `NetworkSet` (namespaced): labelled CIDRs.
    NetworkSet,
    /// `GlobalNetworkSet`: labelled CIDRs, cluster-scoped.
    GlobalNetworkSet,
    /// `HostEndpoint`: a host interface under policy.
    HostEndpoint,
    /// `WorkloadEndpoint` (namespaced): a pod's interface.
    WorkloadEndpoint,
    /// `KubeControllersConfiguration` (singleton `default`).
    KubeControllersConfiguration,
    /// `ClusterInformation` (singleton `default`).
    ClusterInformation,
    /// Kubernetes `networking.k8s.io/v1` `NetworkPolicy`.
    K8sNetworkPolicy,
    /// Kubernetes `v1` `Namespace`.
    Namespace,
}

/// Every kind, in the order calicoctl documents them.
const ALL: &[Kind] = &[
    Kind::IpPool,
    Kind::IpReservation,
    Kind::IpamConfiguration,
    Kind::Node,
    Kind::BgpConfiguration,
    Kind::BgpPeer,
    Kind::BgpFilter,
    Kind::FelixConfiguration,
    Kind::NetworkPolicy,
    Kind::GlobalNetworkPolicy,
    Kind::Tier,
    Kind::Profile,
    Kind::NetworkSet,
    Kind::GlobalNetworkSet,
    Kind::HostEndpoint,
    Kind::WorkloadEndpoint,
    Kind::KubeControllersConfiguration,
    Kind::ClusterInformation,
    Kind::K8sNetworkPolicy,
    Kind::Namespace,
];

impl Kind {
    /// Every kind.
    pub fn all() -> &'static [Kind] {
        ALL
    }

    /// The kind named `s`, case-insensitively: the kind name, its singular or plural, or a
    /// calicoctl alias (`ipp`, `gnp`, `np`, `wep`, `hep`, `bgpp`, `felixconfig`, ...).
    ///
    /// `networkpolicy`/`np`/`policy` is the Calico kind; the Kubernetes one is
    /// `k8snetworkpolicy`, `knp` or `networkpolicies.networking.k8s.io`.
    pub fn from_name(s: &str) -> Option<Kind> {
        let lower = s.trim().to_ascii_lowercase();
        let kind = match lower.as_str() {
            "ippool" | "ippools" | "ipp" | "ipps" | "pool" | "pools" => Kind::IpPool,
            "ipreservation" | "ipreservations" | "ipr" | "iprs" => Kind::IpReservation,
            "ipamconfiguration"
            | "ipamconfigurations"
            | "ipamconfig"
            | "ipamconfigs"
            | "ipamconfiguration.projectcalico.org" => Kind::IpamConfiguration,
            "node" | "nodes" | "no" | "nos" => Kind::Node,
            "bgpconfiguration" | "bgpconfigurations" | "bgpconfig" | "bgpconfigs" => {
                Kind::BgpConfiguration
            }
            "bgppeer" | "bgppeers" | "bgpp" | "bgpps" | "bp" | "bps" => Kind::BgpPeer,
            "bgpfilter" | "bgpfilters" | "bgpf" | "bgpfs" | "bf" | "bfs" => Kind::BgpFilter,
            "felixconfiguration"
            | "felixconfigurations"
            | "felixconfig"
            | "felixconfigs"
            | "fc"
            | "fcs" => Kind::FelixConfiguration,
            "networkpolicy" | "networkpolicies" | "np" | "nps" | "policy" | "policies" | "pol"
            | "pols" => Kind::NetworkPolicy,
            "globalnetworkpolicy" | "globalnetworkpolicies" | "gnp" | "gnps" => {
                Kind::GlobalNetworkPolicy
            }
            "tier" | "tiers" => Kind::Tier,
            "profile" | "profiles" | "pro" | "pros" => Kind::Profile,
            "networkset" | "networksets" | "netset" | "netsets" => Kind::NetworkSet,
            "globalnetworkset" | "globalnetworksets" | "gnetset" | "gnetsets" => {
                Kind::GlobalNetworkSet
            }
            "hostendpoint" | "hostendpoints" | "hep" | "heps" => Kind::HostEndpoint,
            "workloadendpoint" | "workloadendpoints" | "wep" | "weps" => Kind::WorkloadEndpoint,
            "kubecontrollersconfiguration" | "kubecontrollersconfigurations" | "kcc" | "kccs" => {
                Kind::KubeControllersConfiguration
            }
            "clusterinformation" | "clusterinformations" | "clusterinfo" | "clusterinfos" => {
                Kind::ClusterInformation
            }
            "k8snetworkpolicy"
            | "k8snetworkpolicies"
            | "knp"
            | "knps"
            | "networkpolicy.networking.k8s.io"
            | "networkpolicies.networking.k8s.io" => Kind::K8sNetworkPolicy,
            "namespace" | "namespaces" | "ns" => Kind::Namespace,
            _ => return None,
        };
        Some(kind)
    }

    /// The kind the way manifests spell it in `kind:` (`IPPool`).
    pub fn name(&self) -> &'static str {
        match self {
            Kind::IpPool => "IPPool",
            Kind::IpReservation => "IPReservation",
            Kind::IpamConfiguration => "IPAMConfiguration",
            Kind::Node => "Node",
            Kind::BgpConfiguration => "BGPConfiguration",
            Kind::BgpPeer => "BGPPeer",
            Kind::BgpFilter => "BGPFilter",
            Kind::FelixConfiguration => "FelixConfiguration",
            Kind::NetworkPolicy | Kind::K8sNetworkPolicy => "NetworkPolicy",
            Kind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            Kind::Tier => "Tier",
            Kind::Profile => "Profile",
            Kind::NetworkSet => "NetworkSet",
            Kind::GlobalNetworkSet => "GlobalNetworkSet",
            Kind::HostEndpoint => "HostEndpoint",
            Kind::WorkloadEndpoint => "WorkloadEndpoint",
            Kind::KubeControllersConfiguration => "KubeControllersConfiguration",
            Kind::ClusterInformation => "ClusterInformation",
            Kind::Namespace => "Namespace",
        }
    }

    /// The `apiVersion` manifests of this kind carry.
    pub fn api_version(&self) -> &'static str {
        match self {
            Kind::K8sNetworkPolicy => K8S_NETWORKING_API_VERSION,
            Kind::Namespace => K8S_CORE_API_VERSION,
            _ => CALICO_API_VERSION,
        }
    }

    /// The lowercase plural used in datastore keys and by calicoctl (`ippools`).
    pub fn plural(&self) -> &'static str {
        match self {
            Kind::IpPool => "ippools",
            Kind::IpReservation => "ipreservations",
            Kind::IpamConfiguration => "ipamconfigurations",
            Kind::Node => "nodes",
            Kind::BgpConfiguration => "bgpconfigurations",
            Kind::BgpPeer => "bgppeers",
            Kind::BgpFilter => "bgpfilters",
            Kind::FelixConfiguration => "felixconfigurations",
            Kind::NetworkPolicy | Kind::K8sNetworkPolicy => "networkpolicies",
            Kind::GlobalNetworkPolicy => "globalnetworkpolicies",
            Kind::Tier => "tiers",
            Kind::Profile => "profiles",
            Kind::NetworkSet => "networksets",
            Kind::GlobalNetworkSet => "globalnetworksets",
            Kind::HostEndpoint => "hostendpoints",
            Kind::WorkloadEndpoint => "workloadendpoints",
            Kind::KubeControllersConfiguration => "kubecontrollersconfigurations",
            Kind::ClusterInformation => "clusterinformations",
            Kind::Namespace => "namespaces",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(&self) -> bool {
        matches!(
            self,
            Kind::NetworkPolicy
                | Kind::NetworkSet
                | Kind::WorkloadEndpoint
                | Kind::K8sNetworkPolicy
        )
    }

    /// Whether the kind only allows the names `default` (and, for Felix and BGP
    /// configuration, `node.<nodename>`).
    pub fn is_singleton(&self) -> bool {
        matches!(
            self,
            Kind::IpamConfiguration
                | Kind::KubeControllersConfiguration
                | Kind::ClusterInformation
                | Kind::FelixConfiguration
                | Kind::BgpConfiguration
        )
    }

    /// The datastore key prefix of this kind, ending in `/`:
    /// `/calico/resources/v3/projectcalico.org/ippools/`.
    pub fn key_prefix(&self) -> String {
        let group = match self {
            Kind::K8sNetworkPolicy => "networking.k8s.io",
            Kind::Namespace => "core",
            _ => "projectcalico.org",
        };
        format!("/calico/resources/v3/{group}/{}/", self.plural())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    /// Like [`Kind::from_name`], with an error naming the unknown kind.
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::from_name(s).ok_or_else(|| format!("unknown resource kind {s:?}"))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The datastore key of an object: the kind's prefix, then `<namespace>/` for namespaced kinds,
/// then the name. A namespaced kind without a namespace goes in `default`.
pub fn key_for(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    let mut key = kind.key_prefix();
    if kind.is_namespaced() {
        key.push_str(namespace.filter(|ns| !ns.is_empty()).unwrap_or("default"));
        key.push('/');
    }
    key.push_str(name);
    key
}

/// The kind of a manifest with `apiVersion` and `kind`, or an error at the field that is wrong.
pub(crate) fn kind_of_manifest(api_version: &str, kind: &str) -> Result<Kind, ValidationError> {
    let candidates: Vec<Kind> = ALL.iter().copied().filter(|k| k.name() == kind).collect();
    if candidates.is_empty() {
        return Err(ValidationError::new(
            "kind",
            format!("unknown kind {kind:?}"),
        ));
    }
    candidates
        .iter()
        .copied()
        .find(|k| k.api_version() == api_version)
        .ok_or_else(|| {
            let expected: Vec<&str> = candidates.iter().map(|k| k.api_version()).collect();
            ValidationError::new(
                "apiVersion",
                format!(
                    "apiVersion {api_version:?} is not valid for kind {kind}; expected {}",
                    expected.join(" or ")
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_found_by_name_plural_and_any_case() {
        for kind in Kind::all() {
            if *kind != Kind::K8sNetworkPolicy {
                assert_eq!(Kind::from_name(kind.name()), Some(*kind), "{kind}");
                assert_eq!(Kind::from_name(&kind.name().to_uppercase()), Some(*kind));
            }
            assert_eq!(
                Kind::from_name(kind.plural()).map(|k| k.plural()),
                Some(kind.plural())
            );
        }
    }

    #[test]
    fn calicoctl_aliases_resolve() {
        let cases = [
            ("ipp", Kind::IpPool),
            ("pools", Kind::IpPool),
            ("gnp", Kind::GlobalNetworkPolicy),
            ("np", Kind::NetworkPolicy),
            ("pol", Kind::NetworkPolicy),
            ("policy", Kind::NetworkPolicy),
            ("wep", Kind::WorkloadEndpoint),
            ("hep", Kind::HostEndpoint),
            ("bgpp", Kind::BgpPeer),
            ("bp", Kind::BgpPeer),
            ("bgpf", Kind::BgpFilter),
            ("bf", Kind::BgpFilter),
            ("netsets", Kind::NetworkSet),
            ("gnetsets", Kind::GlobalNetworkSet),
            ("felixconfig", Kind::FelixConfiguration),
            ("FelixConfigs", Kind::FelixConfiguration),
            ("fc", Kind::FelixConfiguration),
            ("bgpconfig", Kind::BgpConfiguration),
            ("kcc", Kind::KubeControllersConfiguration),
            ("tiers", Kind::Tier),
            ("pro", Kind::Profile),
            ("no", Kind::Node),
            ("ipreservations", Kind::IpReservation),
            ("ipamconfigs", Kind::IpamConfiguration),
            ("clusterinfo", Kind::ClusterInformation),
            ("knp", Kind::K8sNetworkPolicy),
            ("networkpolicies.networking.k8s.io", Kind::K8sNetworkPolicy),
            ("ns", Kind::Namespace),
        ];
        for (alias, kind) in cases {
            assert_eq!(Kind::from_name(alias), Some(kind), "{alias}");
        }
        assert_eq!(Kind::from_name("nonsense"), None);
    }

    #[test]
    fn keys_follow_calico_etcd_layout() {
        assert_eq!(
            key_for(Kind::IpPool, None, "p"),
            "/calico/resources/v3/projectcalico.org/ippools/p"
        );
        assert_eq!(
            key_for(Kind::NetworkPolicy, Some("prod"), "default.x"),
            "/calico/resources/v3/projectcalico.org/networkpolicies/prod/default.x"
        );
        assert_eq!(
            key_for(Kind::WorkloadEndpoint, None, "w"),
            "/calico/resources/v3/projectcalico.org/workloadendpoints/default/w"
        );
        assert_eq!(
            key_for(Kind::K8sNetworkPolicy, Some("ns"), "k"),
            "/calico/resources/v3/networking.k8s.io/networkpolicies/ns/k"
        );
        assert_eq!(
            key_for(Kind::Namespace, None, "ns"),
            "/calico/resources/v3/core/namespaces/ns"
        );
        // Namespace is cluster-scoped: a namespace argument is ignored.
        assert_eq!(
            key_for(Kind::Node, Some("x"), "n"),
            "/calico/resources/v3/projectcalico.org/nodes/n"
        );
    }

    #[test]
    fn api_versions_tell_the_two_network_policies_apart() {
        assert_eq!(
            kind_of_manifest("projectcalico.org/v3", "NetworkPolicy"),
            Ok(Kind::NetworkPolicy)
        );
        assert_eq!(
            kind_of_manifest("networking.k8s.io/v1", "NetworkPolicy"),
            Ok(Kind::K8sNetworkPolicy)
        );
        assert!(kind_of_manifest("v1", "IPPool").is_err());
        assert!(kind_of_manifest("projectcalico.org/v3", "Namespace").is_err());
    }

    #[test]
    fn namespaced_kinds_are_the_four_calico_and_k8s_ones() {
        let namespaced: Vec<Kind> = Kind::all()
            .iter()
            .copied()
            .filter(Kind::is_namespaced)
            .collect();
        assert_eq!(
            namespaced,
            [
                Kind::NetworkPolicy,
                Kind::NetworkSet,
                Kind::WorkloadEndpoint,
                Kind::K8sNetworkPolicy
            ]
        );
    }
}
