//! IPAM records as Calico stores them in etcd (`/calico/ipam/v2/...`), and the pure operations on
//! an allocation block.
//!
//! ```text
//! /calico/ipam/v2/assignment/ipv4/block/10-244-120-64-26     Block (JSON)
//! /calico/ipam/v2/host/<node>/ipv4/block/10-244-120-64-26    Affinity {"state":"confirmed"}
//! /calico/ipam/v2/handle/<handleID>                          Handle {"handleID","block":{cidr:n}}
//! /calico/ipam/v2/config                                     IpamConfig
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;

/// Prefix of every IPAM key.
pub const IPAM_PREFIX: &str = "/calico/ipam/v2/";
/// The key of the IPAM configuration record.
pub const CONFIG_KEY: &str = "/calico/ipam/v2/config";
/// Prefix of every handle record.
pub const HANDLE_PREFIX: &str = "/calico/ipam/v2/handle/";
/// Prefix of every host affinity record.
pub const HOST_PREFIX: &str = "/calico/ipam/v2/host/";
/// Prefix of Node resources (node existence is checked against these).
pub const NODE_PREFIX: &str = "/calico/resources/v3/projectcalico.org/nodes/";
/// Prefix of IPPool resources.
pub const POOL_PREFIX: &str = "/calico/resources/v3/projectcalico.org/ippools/";
/// Prefix of IPReservation resources.
pub const RESERVATION_PREFIX: &str = "/calico/resources/v3/projectcalico.org/ipreservations/";

/// Secondary attribute keys Calico writes on each allocation.
pub mod attr {
    /// The namespace of the pod.
    pub const NAMESPACE: &str = "namespace";
    /// The node that made the allocation (the borrowing node for borrowed addresses).
    pub const NODE: &str = "node";
    /// The pod name.
    pub const POD: &str = "pod";
    /// When the address was allocated (RFC 3339).
    pub const TIMESTAMP: &str = "timestamp";
    /// What the address is for, e.g. [`TYPE_IPIP`].
    pub const TYPE: &str = "type";
    /// `type` of an IPIP tunnel address.
    pub const TYPE_IPIP: &str = "ipipTunnelAddress";
    /// `type` of a VXLAN tunnel address.
    pub const TYPE_VXLAN: &str = "vxlanTunnelAddress";
    /// `type` of a VXLAN IPv6 tunnel address.
    pub const TYPE_VXLAN_V6: &str = "vxlanV6TunnelAddress";
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> IpFamily {
        IpFamily::of(net.addr())
    }

    /// The key segment: `ipv4` or `ipv6`.
    pub fn segment(self) -> &'static str {
        match self {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        }
    }

    /// Bits in an address of this family.
    pub fn bits(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }
}

/// The CIDR of one allocation block, e.g. `10.244.120.64/26`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BlockCidr(pub IpNet);

impl BlockCidr {
    /// The block containing `ip` when blocks are `/prefix_len`.
    pub fn containing(ip: IpAddr, prefix_len: u8) -> Option<BlockCidr> {
        IpNet::new(ip, prefix_len)
            .ok()
            .map(|net| BlockCidr(net.trunc()))
    }

    /// The address family.
    pub fn family(&self) -> IpFamily {
        IpFamily::of_net(&self.0)
    }

    /// Calico's name of the block: the CIDR with `.`, `:` and `/` replaced by `-`
    /// (`10-244-120-64-26`, `fd00--40-122`).
    pub fn name(&self) -> String {
        self.0.to_string().replace(['.', ':', '/'], "-")
    }

    /// Parses a block name back ([`BlockCidr::name`]).
    pub fn from_name(name: &str) -> Option<BlockCidr> {
        let (addr, len) = name.rsplit_once('-')?;
        let len: u8 = len.parse().ok()?;
        let ip = if addr.matches('-').count() == 3 && !addr.contains("--") {
            IpAddr::V4(Ipv4Addr::from_str(&addr.replace('-', ".")).ok()?)
        } else {
            IpAddr::V6(Ipv6Addr::from_str(&addr.replace('-', ":")).ok()?)
        };
        IpNet::new(ip, len).ok().map(BlockCidr)
    }

    /// The number of addresses in the block.
    pub fn size(&self) -> u32 {
        let host_bits = u32::from(self.0.max_prefix_len() - self.0.prefix_len());
        1u32.checked_shl(host_bits).unwrap_or(u32::MAX)
    }

    /// The address at `ordinal` (0 is the network address).
    pub fn addr(&self, ordinal: u32) -> IpAddr {
        match self.0.network() {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(ordinal))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(
                u128::from(a).wrapping_add(u128::from(ordinal)),
            )),
        }
    }

    /// The ordinal of `ip` in the block, `None` if outside.
    pub fn ordinal(&self, ip: IpAddr) -> Option<u32> {
        if !self.0.contains(&ip) {
            return None;
        }
        let offset = match (self.0.network(), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u128::from(u32::from(a) - u32::from(n)),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) - u128::from(n),
            _ => return None,
        };
        u32::try_from(offset).ok()
    }

    /// The store key of the block record.
    pub fn key(&self) -> String {
        format!("{}{}", block_prefix(self.family()), self.name())
    }

    /// The store key of `node`'s affinity to this block.
    pub fn affinity_key(&self, node: &str) -> String {
        format!("{}{}", affinity_prefix(node, self.family()), self.name())
    }
}

impl fmt::Display for BlockCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `/calico/ipam/v2/assignment/<ipv4|ipv6>/block/`.
pub fn block_prefix(family: IpFamily) -> String {
    format!("{IPAM_PREFIX}assignment/{}/block/", family.segment())
}

/// `/calico/ipam/v2/host/<node>/<ipv4|ipv6>/block/`.
pub fn affinity_prefix(node: &str, family: IpFamily) -> String {
    format!("{HOST_PREFIX}{node}/{}/block/", family.segment())
}

/// `/calico/ipam/v2/handle/<handle>`.
pub fn handle_key(handle: &str) -> String {
    format!("{HANDLE_PREFIX}{handle}")
}

/// `/calico/resources/v3/projectcalico.org/nodes/<node>`.
pub fn node_key(node: &str) -> String {
    format!("{NODE_PREFIX}{node}")
}

/// Parses an affinity key into (node, block).
pub fn parse_affinity_key(key: &str) -> Option<(String, BlockCidr)> {
    let rest = key.strip_prefix(HOST_PREFIX)?;
    let (node, rest) = rest.split_once('/')?;
    let (_family, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix("block/")?;
    Some((node.to_string(), BlockCidr::from_name(name)?))
}

/// Treats JSON `null` as the type's default (Go writes nil slices and maps as `null`).
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Who an allocation belongs to: the handle and descriptive attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AllocationAttribute {
    /// The handle that owns the allocation.
    #[serde(default)]
    pub handle_id: Option<String>,
    /// Free-form attributes: `namespace`, `node`, `pod`, `timestamp`, `type` ([`attr`]).
    #[serde(default, deserialize_with = "null_default")]
    pub secondary: BTreeMap<String, String>,
}

/// One allocation block: the addresses of a CIDR and who holds each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The block CIDR.
    pub cidr: BlockCidr,
    /// `host:<node>` when the block is affine to a node.
    #[serde(default)]
    pub affinity: Option<String>,
    /// Deprecated; always false when written by Felis.
    #[serde(rename = "strictAffinity", default)]
    pub strict_affinity: bool,
    /// Per ordinal: the index into `attributes`, or `None` when free.
    #[serde(default, deserialize_with = "null_default")]
    pub allocations: Vec<Option<usize>>,
    /// Free ordinals, in the order they will be handed out.
    #[serde(default, deserialize_with = "null_default")]
    pub unallocated: Vec<u32>,
    /// Attribute records the allocations point at.
    #[serde(default, deserialize_with = "null_default")]
    pub attributes: Vec<AllocationAttribute>,
    /// Tombstone: the block is being deleted.
    #[serde(default)]
    pub deleted: bool,
    /// Incremented on every allocation.
    #[serde(rename = "sequenceNumber", default)]
    pub sequence_number: u64,
    /// Per allocated ordinal, the sequence number at allocation time (ABA protection on
    /// release).
    #[serde(
        rename = "sequenceNumberForAllocation",
        default,
        deserialize_with = "null_default"
    )]
    pub sequence_number_for_allocation: BTreeMap<String, u64>,
}

/// One allocated address of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation<'a> {
    /// The ordinal in the block.
    pub ordinal: u32,
    /// The address.
    pub ip: IpAddr,
    /// Its attributes (handle and secondary), if the block's index is valid.
    pub attribute: Option<&'a AllocationAttribute>,
    /// The sequence number recorded for it.
    pub sequence_number: Option<u64>,
}

impl<'a> Allocation<'a> {
    /// The owning handle, if any.
    pub fn handle(&self) -> Option<&'a str> {
        self.attribute.and_then(|a| a.handle_id.as_deref())
    }

    /// A secondary attribute.
    pub fn secondary(&self, key: &str) -> Option<&'a str> {
        self.attribute
            .and_then(|a| a.secondary.get(key))
            .map(String::as_str)
    }
}

/// `host:<node>`.
pub fn host_affinity(node: &str) -> String {
    format!("host:{node}")
}

impl Block {
    /// An empty block, optionally affine to `node`.
    pub fn new(cidr: BlockCidr, node: Option<&str>) -> Block {
        let size = cidr.size();
        Block {
            cidr,
            affinity: node.map(host_affinity),
            strict_affinity: false,
            allocations: vec![None; size as usize],
            unallocated: (0..size).collect(),
            attributes: Vec::new(),
            deleted: false,
            sequence_number: 0,
            sequence_number_for_allocation: BTreeMap::new(),
        }
    }

    /// The node this block is affine to (`host:<node>`), if any.
    pub fn affine_node(&self) -> Option<&str> {
        self.affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
    }

    /// Whether the block is affine to `node`.
    pub fn is_affine_to(&self, node: &str) -> bool {
        self.affine_node() == Some(node)
    }

    /// Number of allocated addresses.
    pub fn in_use(&self) -> usize {
        self.allocations.iter().filter(|a| a.is_some()).count()
    }

    /// Whether no address is allocated.
    pub fn is_empty(&self) -> bool {
        self.allocations.iter().all(Option::is_none)
    }

    /// Every allocated address, in ordinal order.
    pub fn allocated(&self) -> impl Iterator<Item = Allocation<'_>> + '_ {
        self.allocations
            .iter()
            .enumerate()
            .filter_map(move |(ordinal, index)| {
                let index = (*index)?;
                let ordinal = u32::try_from(ordinal).ok()?;
                Some(Allocation {
                    ordinal,
                    ip: self.cidr.addr(ordinal),
                    attribute: self.attributes.get(index),
                    sequence_number: self
                        .sequence_number_for_allocation
                        .get(&ordinal.to_string())
                        .copied(),
                })
            })
    }

    /// The allocation of `ip`, if allocated.
    pub fn allocation(&self, ip: IpAddr) -> Option<Allocation<'_>> {
        let ordinal = self.cidr.ordinal(ip)?;
        let index = (*self.allocations.get(ordinal as usize)?)?;
        Some(Allocation {
            ordinal,
            ip,
            attribute: self.attributes.get(index),
            sequence_number: self
                .sequence_number_for_allocation
                .get(&ordinal.to_string())
                .copied(),
        })
    }

    /// Free addresses that `usable` accepts (e.g. not reserved), in hand-out order.
    pub fn free_count(&self, usable: impl Fn(IpAddr) -> bool) -> usize {
        self.unallocated
            .iter()
            .filter(|&&o| usable(self.cidr.addr(o)))
            .count()
    }

    /// Allocates up to `count` free addresses that `usable` accepts, in `unallocated` order,
    /// to one attribute record. Returns the addresses (fewer than `count` when the block has
    /// fewer free).
    pub fn allocate(
        &mut self,
        count: usize,
        attribute: AllocationAttribute,
        usable: impl Fn(IpAddr) -> bool,
    ) -> Vec<IpAddr> {
        let mut chosen = Vec::new();
        let mut remaining = Vec::with_capacity(self.unallocated.len());
        for &ordinal in &self.unallocated {
            if chosen.len() < count
                && self.allocations.get(ordinal as usize) == Some(&None)
                && usable(self.cidr.addr(ordinal))
            {
                chosen.push(ordinal);
            } else {
                remaining.push(ordinal);
            }
        }
        if chosen.is_empty() {
            return Vec::new();
        }
        self.unallocated = remaining;
        let index = self.attributes.len();
        self.attributes.push(attribute);
        for &ordinal in &chosen {
            self.mark(ordinal, index);
        }
        chosen.into_iter().map(|o| self.cidr.addr(o)).collect()
    }

    /// Allocates exactly `ip`. `Err(existing handle)` when it is already allocated;
    /// `Err(None)` also when `ip` is outside the block.
    pub fn allocate_ip(
        &mut self,
        ip: IpAddr,
        attribute: AllocationAttribute,
    ) -> Result<(), Option<String>> {
        let ordinal = self.cidr.ordinal(ip).ok_or(None)?;
        match self.allocations.get(ordinal as usize) {
            Some(None) => {}
            Some(Some(_)) => {
                return Err(self
                    .allocation(ip)
                    .and_then(|a| a.handle().map(str::to_string)));
            }
            None => return Err(None),
        }
        self.unallocated.retain(|&o| o != ordinal);
        let index = self.attributes.len();
        self.attributes.push(attribute);
        self.mark(ordinal, index);
        Ok(())
    }

    fn mark(&mut self, ordinal: u32, index: usize) {
        if let Some(slot) = self.allocations.get_mut(ordinal as usize) {
            *slot = Some(index);
        }
        self.sequence_number_for_allocation
            .insert(ordinal.to_string(), self.sequence_number);
        self.sequence_number += 1;
    }

    /// Releases the given addresses; returns, for each one that was allocated, its address
    /// and owning handle. Freed ordinals go to the end of `unallocated` (reused last).
    pub fn release(&mut self, ips: &[IpAddr]) -> Vec<(IpAddr, Option<String>)> {
        let mut released = Vec::new();
        for &ip in ips {
            let Some(ordinal) = self.cidr.ordinal(ip) else {
                continue;
            };
            let Some(slot) = self.allocations.get_mut(ordinal as usize) else {
                continue;
            };
            let Some(index) = slot.take() else { continue };
            let handle = self.attributes.get(index).and_then(|a| a.handle_id.clone());
            self.unallocated.push(ordinal);
            self.sequence_number_for_allocation
                .remove(&ordinal.to_string());
            released.push((ip, handle));
        }
        self.compact_attributes();
        released
    }

    /// Releases every address owned by `handle`; returns them.
    pub fn release_handle(&mut self, handle: &str) -> Vec<IpAddr> {
        let ips: Vec<IpAddr> = self
            .allocated()
            .filter(|a| a.handle() == Some(handle))
            .map(|a| a.ip)
            .collect();
        self.release(&ips);
        ips
    }

    /// Number of addresses owned by `handle`.
    pub fn count_for_handle(&self, handle: &str) -> u64 {
        self.allocated()
            .filter(|a| a.handle() == Some(handle))
            .count() as u64
    }

    /// Drops attribute records no allocation points at and renumbers the rest.
    fn compact_attributes(&mut self) {
        let mut used = vec![false; self.attributes.len()];
        for index in self.allocations.iter().flatten() {
            if let Some(u) = used.get_mut(*index) {
                *u = true;
            }
        }
        if used.iter().all(|u| *u) {
            return;
        }
        let mut renumber = vec![None; self.attributes.len()];
        let mut kept = Vec::new();
        for (index, attribute) in std::mem::take(&mut self.attributes).into_iter().enumerate() {
            if used.get(index) == Some(&true) {
                if let Some(r) = renumber.get_mut(index) {
                    *r = Some(kept.len());
                }
                kept.push(attribute);
            }
        }
        self.attributes = kept;
        for slot in &mut self.allocations {
            *slot = slot.and_then(|i| renumber.get(i).copied().flatten());
        }
    }
}

/// The state of a host's affinity to a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AffinityState {
    /// Claim in progress (Calico writes this before creating the block).
    #[serde(rename = "pending")]
    Pending,
    /// The block is the host's.
    #[serde(rename = "confirmed")]
    Confirmed,
    /// Release in progress.
    #[serde(rename = "pendingDeletion")]
    PendingDeletion,
}

/// A host affinity record (`/calico/ipam/v2/host/<node>/ipv4/block/<block>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    /// The claim state.
    pub state: AffinityState,
    /// Tombstone.
    #[serde(default)]
    pub deleted: bool,
}

impl Affinity {
    /// A confirmed affinity.
    pub fn confirmed() -> Affinity {
        Affinity {
            state: AffinityState::Confirmed,
            deleted: false,
        }
    }
}

/// A handle record: how many addresses the handle holds in each block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    /// The handle ID, e.g. `k8s-pod-network.<containerID>` or `ipip-tunnel-addr-<node>`.
    #[serde(rename = "handleID", default)]
    pub handle_id: String,
    /// Block CIDR (as text) → number of addresses held there.
    #[serde(default, deserialize_with = "null_default")]
    pub block: BTreeMap<String, u64>,
    /// Tombstone.
    #[serde(default)]
    pub deleted: bool,
}

impl Handle {
    /// A handle with no addresses.
    pub fn new(handle_id: &str) -> Handle {
        Handle {
            handle_id: handle_id.to_string(),
            block: BTreeMap::new(),
            deleted: false,
        }
    }

    /// Adds `count` addresses in `block`.
    pub fn increment(&mut self, block: &BlockCidr, count: u64) {
        *self.block.entry(block.to_string()).or_insert(0) += count;
    }

    /// Removes `count` addresses in `block` (saturating; drops the entry at zero).
    pub fn decrement(&mut self, block: &BlockCidr, count: u64) {
        let key = block.to_string();
        if let Some(n) = self.block.get_mut(&key) {
            *n = n.saturating_sub(count);
            if *n == 0 {
                self.block.remove(&key);
            }
        }
    }

    /// Total addresses held.
    pub fn total(&self) -> u64 {
        self.block.values().sum()
    }
}

fn default_true() -> bool {
    true
}

/// The IPAM configuration record (`/calico/ipam/v2/config`), the stored form of the
/// `IPAMConfiguration` resource named `default`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfig {
    /// Never borrow addresses from other hosts' blocks.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Claim new blocks when the affine ones are full.
    #[serde(default = "default_true")]
    pub auto_allocate_blocks: bool,
    /// At most this many affine blocks per host and family (0 = unlimited).
    #[serde(rename = "maxBlocksPerHost", default)]
    pub max_blocks_per_host: u32,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> BlockCidr {
        BlockCidr(s.parse().unwrap())
    }

    #[test]
    fn block_names_follow_calico() {
        assert_eq!(cidr("10.244.120.64/26").name(), "10-244-120-64-26");
        assert_eq!(cidr("fd00::40/122").name(), "fd00--40-122");
        assert_eq!(
            BlockCidr::from_name("10-244-120-64-26"),
            Some(cidr("10.244.120.64/26"))
        );
        assert_eq!(
            BlockCidr::from_name("fd00--40-122"),
            Some(cidr("fd00::40/122"))
        );
        assert_eq!(
            cidr("10.0.0.0/26").key(),
            "/calico/ipam/v2/assignment/ipv4/block/10-0-0-0-26"
        );
        assert_eq!(
            cidr("10.0.0.0/26").affinity_key("n1"),
            "/calico/ipam/v2/host/n1/ipv4/block/10-0-0-0-26"
        );
        assert_eq!(
            parse_affinity_key("/calico/ipam/v2/host/n1/ipv6/block/fd00--40-122"),
            Some(("n1".to_string(), cidr("fd00::40/122")))
        );
    }

    #[test]
    fn block_json_matches_calico_shape() {
        let mut block = Block::new(cidr("10.0.0.0/30"), Some("n1"));
        let attribute = AllocationAttribute {
            handle_id: Some("h1".into()),
            secondary: [("node".to_string(), "n1".to_string())].into(),
        };
        block.allocate(1, attribute, |_| true);
        let json = serde_json::to_value(&block).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "cidr": "10.0.0.0/30",
                "affinity": "host:n1",
                "strictAffinity": false,
                "allocations": [0, null, null, null],
                "unallocated": [1, 2, 3],
                "attributes": [{"handle_id": "h1", "secondary": {"node": "n1"}}],
                "deleted": false,
                "sequenceNumber": 1,
                "sequenceNumberForAllocation": {"0": 0},
            })
        );
        // Go writes nil slices and maps as null.
        let go: Block = serde_json::from_str(
            r#"{"cidr":"10.0.0.0/30","affinity":null,"strictAffinity":false,
            "allocations":[null,null,null,null],"unallocated":[0,1,2,3],"attributes":null,
            "deleted":false,"sequenceNumber":0,"sequenceNumberForAllocation":null}"#,
        )
        .unwrap();
        assert_eq!(go, Block::new(cidr("10.0.0.0/30"), None));
    }

    #[test]
    fn release_compacts_attributes_and_reuses_freed_last() {
        let mut block = Block::new(cidr("10.0.0.0/29"), Some("n1"));
        let a = |h: &str| AllocationAttribute {
            handle_id: Some(h.into()),
            ..Default::default()
        };
        assert_eq!(block.allocate(2, a("h1"), |_| true).len(), 2);
        assert_eq!(
            block.allocate(1, a("h2"), |_| true),
            vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(block.release_handle("h1").len(), 2);
        assert_eq!(block.attributes.len(), 1);
        assert_eq!(
            block
                .allocation("10.0.0.2".parse().unwrap())
                .unwrap()
                .handle(),
            Some("h2")
        );
        assert_eq!(block.unallocated, vec![3, 4, 5, 6, 7, 0, 1]);
        assert_eq!(
            block.allocate_ip("10.0.0.2".parse().unwrap(), a("h3")),
            Err(Some("h2".into()))
        );
        assert!(
            block
                .allocate_ip("10.0.0.0".parse().unwrap(), a("h3"))
                .is_ok()
        );
        assert_eq!(block.in_use(), 2);
    }

    #[test]
    fn allocate_skips_unusable_addresses() {
        let mut block = Block::new(cidr("10.0.0.0/30"), None);
        let reserved: IpAddr = "10.0.0.0".parse().unwrap();
        let got = block.allocate(2, AllocationAttribute::default(), |ip| ip != reserved);
        assert_eq!(
            got,
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(block.free_count(|ip| ip != reserved), 1);
    }

    #[test]
    fn v6_block_addresses() {
        let b = cidr("fd00::40/122");
        assert_eq!(b.size(), 64);
        assert_eq!(b.addr(1), "fd00::41".parse::<IpAddr>().unwrap());
        assert_eq!(b.ordinal("fd00::7f".parse().unwrap()), Some(63));
        assert_eq!(b.ordinal("fd00::80".parse().unwrap()), None);
    }
}
