//! From datastore keys and values to calculation-graph facts. Pure.
//!
//! The agent watches `/calico/` and hands every put and delete here; keys it does not care about
//! give no [`Update`]. Workload endpoints of other nodes are ignored (their routes come from the
//! IPAM blocks).

use std::collections::BTreeMap;
use std::net::IpAddr;

use felis_api::Resource;
use felis_ipam::model::Block;

use crate::bgp::BgpConfigFacts;
use crate::bgp::BgpFilterFacts;
use crate::bgp::BgpNodeFacts;
use crate::bgp::BgpPeerFacts;
use crate::calc::BlockFacts;
use crate::calc::EndpointFacts;
use crate::calc::NodeFacts;
use crate::calc::PoolFacts;
use crate::calc::Update;
use crate::calc::Vtep;

/// Every key the agent watches starts with this.
pub const WATCH_PREFIX: &str = "/calico/";

const RESOURCES: &str = "/calico/resources/v3/projectcalico.org/";
const NODES: &str = "/calico/resources/v3/projectcalico.org/nodes/";
const POOLS: &str = "/calico/resources/v3/projectcalico.org/ippools/";
const WEPS: &str = "/calico/resources/v3/projectcalico.org/workloadendpoints/";
const BLOCKS: &str = "/calico/ipam/v2/assignment/";
const BGP_CONFIGS: &str = "/calico/resources/v3/projectcalico.org/bgpconfigurations/";
const BGP_PEERS: &str = "/calico/resources/v3/projectcalico.org/bgppeers/";
const BGP_FILTERS: &str = "/calico/resources/v3/projectcalico.org/bgpfilters/";

/// A value the agent could not understand: it is skipped, and said once.
#[derive(Debug, thiserror::Error)]
#[error("ignoring {key}: {reason}")]
pub struct Undecodable {
    /// The key.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// The fact a put of `key` = `value` gives node `local_node`, if any.
pub fn on_put(local_node: &str, key: &str, value: &[u8]) -> Result<Option<Update>, Undecodable> {
    let bad = |reason: String| Undecodable {
        key: key.to_string(),
        reason,
    };
    if key.starts_with(BLOCKS) && key.contains("/block/") {
        let block: Block = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
        return Ok(Some(Update::BlockSet(block_facts(&block))));
    }
    if !key.starts_with(RESOURCES) {
        return Ok(None);
    }
    let wanted = [NODES, POOLS, WEPS, BGP_CONFIGS, BGP_PEERS, BGP_FILTERS]
        .iter()
        .any(|prefix| key.starts_with(prefix));
    if !wanted {
        return Ok(None);
    }
    let json: serde_json::Value = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
    let resource = Resource::from_value(json).map_err(|e| bad(e.to_string()))?;
    Ok(match resource {
        Resource::Node(node) => {
            let bgp = node.spec.bgp.as_ref();
            let vxlan_v4 = match (
                node.spec.ipv4_vxlan_tunnel_addr,
                &node.spec.vxlan_tunnel_mac_addr,
            ) {
                (Some(address), Some(mac)) => Some(Vtep {
                    address,
                    mac: mac.clone(),
                }),
                _ => None,
            };
            Some(Update::NodeSet(NodeFacts {
                name: node.metadata.name.clone(),
                ipv4: bgp.and_then(|b| b.ipv4_address),
                ipv6: bgp.and_then(|b| b.ipv6_address),
                vxlan_v4,
                labels: node.metadata.labels.clone(),
                bgp: BgpNodeFacts {
                    asn: bgp.and_then(|b| b.as_number).map(|a| felis_bgp::Asn(a.0)),
                    route_reflector_cluster_id: bgp
                        .and_then(|b| b.route_reflector_cluster_id.clone()),
                },
            }))
        }
        Resource::IpPool(pool) => Some(Update::PoolSet(PoolFacts {
            name: pool.metadata.name.clone(),
            cidr: pool.spec.cidr,
            ipip_mode: pool.spec.ipip_mode,
            vxlan_mode: pool.spec.vxlan_mode,
            nat_outgoing: pool.spec.nat_outgoing,
            disable_bgp_export: pool.spec.disable_bgp_export,
        })),
        Resource::BgpConfiguration(config) => {
            Some(Update::BgpConfigSet(BgpConfigFacts::from_resource(&config)))
        }
        Resource::BgpPeer(peer) => Some(Update::BgpPeerSet(BgpPeerFacts::from_resource(&peer))),
        Resource::BgpFilter(filter) => {
            Some(Update::BgpFilterSet(BgpFilterFacts::from_resource(&filter)))
        }
        Resource::WorkloadEndpoint(wep) if wep.spec.node == local_node => {
            Some(Update::EndpointSet(EndpointFacts {
                key: endpoint_key(key),
                interface: wep.spec.interface_name.clone(),
                addresses: wep.spec.ip_networks.clone(),
            }))
        }
        _ => None,
    })
}

/// The fact a delete of `key` gives, if any.
pub fn on_delete(key: &str) -> Option<Update> {
    if key.starts_with(BLOCKS) && key.contains("/block/") {
        let name = key.rsplit('/').next()?;
        let cidr = felis_ipam::BlockCidr::from_name(name)?;
        return Some(Update::BlockDeleted(cidr.0));
    }
    if let Some(name) = key.strip_prefix(NODES) {
        return Some(Update::NodeDeleted(name.to_string()));
    }
    if let Some(name) = key.strip_prefix(POOLS) {
        return Some(Update::PoolDeleted(name.to_string()));
    }
    if let Some(name) = key.strip_prefix(BGP_CONFIGS) {
        return Some(Update::BgpConfigDeleted(name.to_string()));
    }
    if let Some(name) = key.strip_prefix(BGP_PEERS) {
        return Some(Update::BgpPeerDeleted(name.to_string()));
    }
    if let Some(name) = key.strip_prefix(BGP_FILTERS) {
        return Some(Update::BgpFilterDeleted(name.to_string()));
    }
    if key.starts_with(WEPS) {
        // Endpoints of other nodes were never added; deleting an unknown key is a no-op.
        return Some(Update::EndpointDeleted(endpoint_key(key)));
    }
    None
}

fn endpoint_key(key: &str) -> String {
    key.strip_prefix(WEPS).unwrap_or(key).to_string()
}

/// What the graph needs of a block: its affinity, and addresses held by other nodes.
pub fn block_facts(block: &Block) -> BlockFacts {
    let affinity = block.affine_node().map(str::to_string);
    let mut borrowed: BTreeMap<IpAddr, String> = BTreeMap::new();
    for allocation in block.allocated() {
        if let Some(holder) = allocation.secondary(felis_ipam::model::attr::NODE)
            && affinity.as_deref() != Some(holder)
        {
            borrowed.insert(allocation.ip, holder.to_string());
        }
    }
    BlockFacts {
        cidr: block.cidr.0,
        affinity,
        borrowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_nodes_become_facts() {
        let pool =
            br#"{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"p"},
            "spec":{"cidr":"10.244.0.0/16","vxlanMode":"CrossSubnet","natOutgoing":true}}"#;
        let update = on_put("a", &format!("{POOLS}p"), pool).unwrap().unwrap();
        let Update::PoolSet(p) = update else {
            panic!("{update:?}")
        };
        assert!(p.nat_outgoing);
        assert_eq!(p.vxlan_mode, felis_api::ipam::EncapMode::CrossSubnet);

        let node = br#"{"apiVersion":"projectcalico.org/v3","kind":"Node","metadata":{"name":"b"},
            "spec":{"bgp":{"ipv4Address":"10.0.1.11/24"},"ipv4VXLANTunnelAddr":"10.244.0.64",
            "vxlanTunnelMACAddr":"66:00:00:00:00:01"}}"#;
        let update = on_put("a", &format!("{NODES}b"), node).unwrap().unwrap();
        let Update::NodeSet(n) = update else {
            panic!("{update:?}")
        };
        assert_eq!(n.ipv4.unwrap().to_string(), "10.0.1.11/24");
        assert_eq!(n.vxlan_v4.unwrap().mac, "66:00:00:00:00:01");
    }

    #[test]
    fn only_local_endpoints_count() {
        let wep = |node: &str| {
            format!(
                r#"{{"apiVersion":"projectcalico.org/v3","kind":"WorkloadEndpoint",
                "metadata":{{"name":"n-k8s-p-eth0","namespace":"default"}},
                "spec":{{"node":"{node}","interfaceName":"cali0123456789a","ipNetworks":["10.244.0.5/32"],
                "endpoint":"eth0","orchestrator":"k8s","pod":"p"}}}}"#
            )
        };
        let key = format!("{WEPS}default/n-k8s-p-eth0");
        assert!(matches!(
            on_put("a", &key, wep("a").as_bytes()),
            Ok(Some(Update::EndpointSet(_)))
        ));
        assert!(matches!(on_put("a", &key, wep("b").as_bytes()), Ok(None)));
        assert_eq!(
            on_delete(&key),
            Some(Update::EndpointDeleted("default/n-k8s-p-eth0".into()))
        );
    }

    #[test]
    fn bgp_resources_become_facts() {
        let config = br#"{"apiVersion":"projectcalico.org/v3","kind":"BGPConfiguration",
            "metadata":{"name":"default"},"spec":{"nodeToNodeMeshEnabled":false,"asNumber":65000,
            "listenPort":1179,"nodeMeshMaxRestartTime":"2m",
            "communities":[{"name":"c","value":"65000:100"}],
            "prefixAdvertisements":[{"cidr":"10.244.0.0/16","communities":["c"]}],
            "serviceClusterIPs":[{"cidr":"10.96.0.0/12"}]}}"#;
        let update = on_put("a", &format!("{BGP_CONFIGS}default"), config)
            .unwrap()
            .unwrap();
        let Update::BgpConfigSet(c) = update else {
            panic!("{update:?}")
        };
        assert_eq!(c.node_to_node_mesh, Some(false));
        assert_eq!(c.asn, Some(felis_bgp::Asn(65000)));
        assert_eq!(c.listen_port, Some(1179));
        assert_eq!(c.node_mesh_max_restart_time, Some(120));
        assert_eq!(c.communities["c"], "65000:100");
        assert_eq!(c.service_cluster_ips[0].to_string(), "10.96.0.0/12");

        let peer = br#"{"apiVersion":"projectcalico.org/v3","kind":"BGPPeer",
            "metadata":{"name":"tor"},"spec":{"nodeSelector":"rack == 'r1'",
            "peerIP":"10.0.0.1:1179","asNumber":65001,"keepOriginalNextHop":true,
            "password":{"secretKeyRef":{"name":"bgp","key":"tor"}},"sourceAddress":"None",
            "maxRestartTime":"30s"}}"#;
        let update = on_put("a", &format!("{BGP_PEERS}tor"), peer)
            .unwrap()
            .unwrap();
        let Update::BgpPeerSet(p) = update else {
            panic!("{update:?}")
        };
        assert_eq!(p.peer_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(p.peer_port, Some(1179));
        assert_eq!(p.asn, Some(felis_bgp::Asn(65001)));
        assert_eq!(p.next_hop_mode, felis_bgp::rib::NextHopMode::Keep);
        assert_eq!(p.password.unwrap().name, "bgp");
        assert!(!p.use_node_ip);
        assert_eq!(p.max_restart_time, Some(30));

        assert_eq!(
            on_delete(&format!("{BGP_PEERS}tor")),
            Some(Update::BgpPeerDeleted("tor".into()))
        );
        assert_eq!(
            on_delete(&format!("{BGP_CONFIGS}default")),
            Some(Update::BgpConfigDeleted("default".into()))
        );
    }

    #[test]
    fn node_bgp_settings_labels_and_pool_export_flag_become_facts() {
        let node = br#"{"apiVersion":"projectcalico.org/v3","kind":"Node",
            "metadata":{"name":"rr","labels":{"rr":"true"}},
            "spec":{"bgp":{"ipv4Address":"10.0.1.11/24","asNumber":65002,
            "routeReflectorClusterID":"244.0.0.1"}}}"#;
        let Ok(Some(Update::NodeSet(n))) = on_put("a", &format!("{NODES}rr"), node) else {
            panic!("node")
        };
        assert_eq!(n.labels["rr"], "true");
        assert_eq!(n.bgp.asn, Some(felis_bgp::Asn(65002)));
        assert_eq!(
            n.bgp.route_reflector_cluster_id.as_deref(),
            Some("244.0.0.1")
        );
        let pool =
            br#"{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"p"},
            "spec":{"cidr":"10.244.0.0/16","disableBGPExport":true}}"#;
        let Ok(Some(Update::PoolSet(p))) = on_put("a", &format!("{POOLS}p"), pool) else {
            panic!("pool")
        };
        assert!(p.disable_bgp_export);
    }

    #[test]
    fn garbage_is_reported_not_fatal() {
        assert!(on_put("a", &format!("{POOLS}p"), b"not json").is_err());
        assert!(matches!(
            on_put("a", "/calico/other/x", b"whatever"),
            Ok(None)
        ));
    }
}
