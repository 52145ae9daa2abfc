//! The columns `felis get` prints per kind, as calicoctl's `-o ps` and `-o wide`.
//!
//! [`columns`] and [`row`] never include a `NAMESPACE` column: for namespaced kinds listed
//! across namespaces (`-A`) the CLI prepends it, or uses [`columns_in`] / [`row_in`] which do.

use crate::kind::Kind;
use crate::resource::Resource;

/// The column headers of `kind`, without `NAMESPACE`.
pub fn columns(kind: Kind, wide: bool) -> Vec<&'static str> {
    match (kind, wide) {
        (Kind::IpPool, false) => vec!["NAME", "CIDR", "SELECTOR"],
        (Kind::IpPool, true) => vec![
            "NAME",
            "CIDR",
            "NAT",
            "IPIPMODE",
            "VXLANMODE",
            "DISABLED",
            "DISABLEBGPEXPORT",
            "SELECTOR",
        ],
        (Kind::IpReservation, true) => vec!["NAME", "CIDRS"],
        (Kind::IpamConfiguration, true) => vec!["NAME", "STRICTAFFINITY", "MAXBLOCKSPERHOST"],
        (Kind::Node, true) => vec!["NAME", "ASN", "IPV4", "IPV6"],
        (Kind::BgpConfiguration, _) => vec!["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"],
        (Kind::BgpPeer, _) => vec!["NAME", "PEERIP", "NODE", "ASN"],
        (Kind::NetworkPolicy | Kind::GlobalNetworkPolicy, false) => vec!["NAME", "TIER"],
        (Kind::NetworkPolicy | Kind::GlobalNetworkPolicy, true) => {
            vec!["NAME", "TIER", "ORDER", "SELECTOR"]
        }
        (Kind::Tier, _) => vec!["NAME", "ORDER"],
        (Kind::NetworkSet | Kind::GlobalNetworkSet, true) => vec!["NAME", "NETS"],
        (Kind::HostEndpoint, false) => vec!["NAME", "NODE"],
        (Kind::HostEndpoint, true) => vec!["NAME", "NODE", "INTERFACE", "IPS", "PROFILES"],
        (Kind::WorkloadEndpoint, false) => vec!["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"],
        (Kind::WorkloadEndpoint, true) => {
            vec![
                "NAME",
                "WORKLOAD",
                "NODE",
                "NETWORKS",
                "INTERFACE",
                "PROFILES",
                "NATS",
            ]
        }
        (Kind::K8sNetworkPolicy, true) => vec!["NAME", "POD-SELECTOR"],
        _ => vec!["NAME"],
    }
}

/// The cells of `r` under [`columns`]`(r.kind(), wide)`.
pub fn row(r: &Resource, wide: bool) -> Vec<String> {
    let name = r.name().to_string();
    match (r, wide) {
        (Resource::IpPool(p), false) => {
            vec![name, p.spec.cidr.to_string(), p.spec.node_selector.clone()]
        }
        (Resource::IpPool(p), true) => {
            let s = &p.spec;
            vec![
                name,
                s.cidr.to_string(),
                s.nat_outgoing.to_string(),
                s.ipip_mode.as_str().to_string(),
                s.vxlan_mode.as_str().to_string(),
                s.disabled.to_string(),
                s.disable_bgp_export.to_string(),
                s.node_selector.clone(),
            ]
        }
        (Resource::IpReservation(x), true) => vec![name, join(&x.spec.reserved_cidrs)],
        (Resource::IpamConfiguration(c), true) => vec![
            name,
            c.spec.strict_affinity.to_string(),
            c.spec.max_blocks_per_host.to_string(),
        ],
        (Resource::Node(n), true) => {
            let bgp = n.spec.bgp.as_ref();
            // Like calicoctl: an inherited AS number is shown in parentheses (the cluster
            // default; the CLI may substitute the BGPConfiguration's).
            let asn = match bgp.and_then(|b| b.as_number) {
                Some(a) => a.to_string(),
                None if bgp.is_some() => format!("({})", crate::bgp::DEFAULT_ASN),
                None => String::new(),
            };
            let v4 = bgp
                .and_then(|b| b.ipv4_address)
                .map(|a| a.to_string())
                .unwrap_or_default();
            let v6 = bgp
                .and_then(|b| b.ipv6_address)
                .map(|a| a.to_string())
                .unwrap_or_default();
            vec![name, asn, v4, v6]
        }
        (Resource::BgpConfiguration(c), _) => {
            let s = &c.spec;
            vec![
                name,
                s.log_severity_screen
                    .clone()
                    .unwrap_or_else(|| "Info".to_string()),
                s.node_to_node_mesh().to_string(),
                s.as_number.map(|a| a.to_string()).unwrap_or_default(),
            ]
        }
        (Resource::BgpPeer(p), _) => {
            let s = &p.spec;
            let node = if !s.node.is_empty() {
                s.node.clone()
            } else if !s.node_selector.is_empty() {
                s.node_selector.clone()
            } else {
                "(global)".to_string()
            };
            let peer = if s.peer_ip.is_empty() {
                s.peer_selector.clone()
            } else {
                s.peer_ip.clone()
            };
            let asn = s.as_number.map(|a| a.to_string()).unwrap_or_default();
            vec![name, peer, node, asn]
        }
        (Resource::NetworkPolicy(p), false) => vec![name, p.spec.tier.clone()],
        (Resource::NetworkPolicy(p), true) => {
            vec![
                name,
                p.spec.tier.clone(),
                order(p.spec.order),
                p.spec.selector.clone(),
            ]
        }
        (Resource::GlobalNetworkPolicy(p), false) => vec![name, p.spec.tier.clone()],
        (Resource::GlobalNetworkPolicy(p), true) => {
            vec![
                name,
                p.spec.tier.clone(),
                order(p.spec.order),
                p.spec.selector.clone(),
            ]
        }
        (Resource::Tier(t), _) => vec![name, order(t.spec.order)],
        (Resource::NetworkSet(n), true) => vec![name, join(&n.spec.nets)],
        (Resource::GlobalNetworkSet(n), true) => vec![name, join(&n.spec.nets)],
        (Resource::HostEndpoint(h), false) => vec![name, h.spec.node.clone()],
        (Resource::HostEndpoint(h), true) => vec![
            name,
            h.spec.node.clone(),
            h.spec.interface_name.clone(),
            join(&h.spec.expected_ips),
            h.spec.profiles.join(","),
        ],
        (Resource::WorkloadEndpoint(w), wide) => {
            let s = &w.spec;
            let workload = if s.pod.is_empty() {
                s.workload.clone()
            } else {
                s.pod.clone()
            };
            let mut cells = vec![
                workload,
                s.node.clone(),
                join(&s.ip_networks),
                s.interface_name.clone(),
            ];
            if wide {
                cells.insert(0, name);
                cells.push(s.profiles.join(","));
                let nats: Vec<String> = s
                    .ip_nats
                    .iter()
                    .map(|n| format!("{}->{}", n.external_ip, n.internal_ip))
                    .collect();
                cells.push(nats.join(","));
            }
            cells
        }
        (Resource::K8sNetworkPolicy(p), true) => {
            let sel = &p.spec.pod_selector;
            let labels: Vec<String> = sel
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let text = if labels.is_empty() && sel.match_expressions.is_empty() {
                "<none>".to_string()
            } else {
                labels.join(",")
            };
            vec![name, text]
        }
        _ => vec![name],
    }
}

/// [`columns`], with a leading `NAMESPACE` for namespaced kinds when `all_namespaces`.
pub fn columns_in(kind: Kind, wide: bool, all_namespaces: bool) -> Vec<&'static str> {
    let mut cols = columns(kind, wide);
    if all_namespaces && kind.is_namespaced() {
        cols.insert(0, "NAMESPACE");
    }
    cols
}

/// [`row`], with a leading namespace cell for namespaced kinds when `all_namespaces`.
pub fn row_in(r: &Resource, wide: bool, all_namespaces: bool) -> Vec<String> {
    let mut cells = row(r, wide);
    if all_namespaces && r.kind().is_namespaced() {
        cells.insert(0, r.namespace().unwrap_or_default().to_string());
    }
    cells
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn order(o: Option<f64>) -> String {
    o.map(|o| o.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parse_documents;

    fn one(yaml: &str) -> Resource {
        let mut r = parse_documents(yaml, None).unwrap();
        r.remove(0)
    }

    #[test]
    fn every_row_has_one_cell_per_column() {
        let text = include_str!("../tests/fixtures/cluster.yaml");
        for r in parse_documents(text, None).unwrap() {
            for wide in [false, true] {
                assert_eq!(
                    row(&r, wide).len(),
                    columns(r.kind(), wide).len(),
                    "{} {wide}",
                    r.kind()
                );
                assert_eq!(
                    row_in(&r, wide, true).len(),
                    columns_in(r.kind(), wide, true).len(),
                    "{} {wide}",
                    r.kind()
                );
            }
        }
    }

    #[test]
    fn ippool_columns_match_calicoctl() {
        assert_eq!(columns(Kind::IpPool, false), ["NAME", "CIDR", "SELECTOR"]);
        let r = one(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\n\
                     spec: {cidr: 10.0.0.0/16, natOutgoing: true, ipipMode: Always}\n",
        );
        assert_eq!(row(&r, false), ["p", "10.0.0.0/16", "all()"]);
        assert_eq!(
            row(&r, true),
            [
                "p",
                "10.0.0.0/16",
                "true",
                "Always",
                "Never",
                "false",
                "false",
                "all()"
            ]
        );
    }

    #[test]
    fn workload_endpoint_row_shows_pod_node_networks_interface() {
        let r = one("apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
                     metadata: {name: n-k8s-pod-eth0, namespace: prod}\n\
                     spec: {pod: pod, node: node1, ipNetworks: [10.0.0.5/32], interfaceName: cali0}\n");
        assert_eq!(
            columns(Kind::WorkloadEndpoint, false),
            ["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"]
        );
        assert_eq!(row(&r, false), ["pod", "node1", "10.0.0.5/32", "cali0"]);
        assert_eq!(
            columns_in(Kind::WorkloadEndpoint, false, true)[0],
            "NAMESPACE"
        );
        assert_eq!(row_in(&r, false, true)[0], "prod");
        assert_eq!(row_in(&r, false, false).len(), 4);
    }

    #[test]
    fn policy_wide_adds_order_and_selector() {
        let r = one(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
                     metadata: {name: p}\nspec: {order: 100, selector: a == 'b'}\n",
        );
        assert_eq!(
            columns(Kind::GlobalNetworkPolicy, true),
            ["NAME", "TIER", "ORDER", "SELECTOR"]
        );
        assert_eq!(row(&r, true), ["p", "default", "100", "a == 'b'"]);
    }

    #[test]
    fn bgp_peer_without_node_is_global() {
        let r = one(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\n\
                     spec: {peerIP: 10.0.0.1, asNumber: 64513}\n",
        );
        assert_eq!(row(&r, false), ["p", "10.0.0.1", "(global)", "64513"]);
    }

    #[test]
    fn node_wide_shows_asn_and_addresses() {
        let r = one(
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: node1}\n\
                     spec: {bgp: {ipv4Address: 10.0.0.5/24}}\n",
        );
        assert_eq!(row(&r, true), ["node1", "(64512)", "10.0.0.5/24", ""]);
    }
}
