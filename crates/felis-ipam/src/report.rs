//! What `ipam show` and `ipam check` report, as data (serializable) plus renderers.
//!
//! Everything is computed from one [`Snapshot`]: a single listing of `/calico/ipam/v2/` (one
//! store revision, so blocks and handles are consistent with each other), the pools and the
//! nodes.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use felis_api::Kind;
use felis_store::TxnOp;
use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

use crate::error::Error;
use crate::ipam::Context;
use crate::ipam::Ipam;
use crate::ipam::decode;
use crate::ipam::encode;
use crate::model::Affinity;
use crate::model::AffinityState;
use crate::model::Block;
use crate::model::BlockCidr;
use crate::model::HANDLE_PREFIX;
use crate::model::Handle;
use crate::model::IPAM_PREFIX;
use crate::model::IpamConfig;
use crate::model::NODE_PREFIX;
use crate::model::attr;
use crate::model::handle_key;
use crate::model::parse_affinity_key;
use crate::table::Table;

/// Every IPAM record at one revision, plus pools and nodes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Configuration, pools, reservations.
    pub context: Context,
    /// Every block.
    pub blocks: Vec<Block>,
    /// Every host affinity: (node, block, record).
    pub affinities: Vec<(String, BlockCidr, Affinity)>,
    /// Every handle, by handle ID.
    pub handles: BTreeMap<String, Handle>,
    /// Names of every Node resource.
    pub nodes: BTreeSet<String>,
    /// Addresses of every WorkloadEndpoint (`spec.ipNetworks`) → `<namespace>/<name>`.
    pub workloads: BTreeMap<IpAddr, String>,
    /// See [`Ipam::workload_grace`].
    pub workload_grace: Option<crate::ipam::WorkloadGrace>,
}

/// Usage of one block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockUsage {
    /// The block.
    pub cidr: BlockCidr,
    /// The affine node, if any.
    pub node: Option<String>,
    /// Addresses in the block.
    pub total: u128,
    /// Allocated addresses.
    pub in_use: u128,
}

/// Usage of one pool (calicoctl `ipam show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUsage {
    /// The pool name.
    pub name: String,
    /// The pool CIDR.
    pub cidr: IpNet,
    /// Addresses in the pool.
    pub total: u128,
    /// Allocated addresses.
    pub in_use: u128,
    /// The pool's blocks that exist.
    pub blocks: Vec<BlockUsage>,
}

impl PoolUsage {
    /// Addresses not allocated.
    pub fn free(&self) -> u128 {
        self.total.saturating_sub(self.in_use)
    }
}

/// An address borrowed from another node's block (calicoctl `ipam show --show-borrowed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorrowedAddress {
    /// The address.
    pub ip: IpAddr,
    /// The node that allocated it.
    pub borrowing_node: String,
    /// The block.
    pub block: BlockCidr,
    /// The node the block is affine to.
    pub block_owner: String,
    /// What it is (`pod`, `ipipTunnelAddress`, ...).
    pub kind: String,
    /// `namespace/pod`, or the handle.
    pub allocated_to: String,
}

/// Everything known about one address (calicoctl `ipam show --ip`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressStatus {
    /// The address.
    pub ip: IpAddr,
    /// The pool containing it.
    pub pool: Option<String>,
    /// The block containing it, if the block exists.
    pub block: Option<BlockCidr>,
    /// The node the block is affine to.
    pub block_owner: Option<String>,
    /// Whether it is allocated.
    pub in_use: bool,
    /// The owning handle.
    pub handle: Option<String>,
    /// Secondary attributes of the allocation.
    pub attributes: BTreeMap<String, String>,
    /// The IPReservation covering it.
    pub reserved_by: Option<String>,
}

/// An allocated address nobody accounts for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LeakedAddress {
    /// The address.
    pub ip: IpAddr,
    /// Its block.
    pub block: BlockCidr,
    /// The handle on the allocation, if any.
    pub handle: Option<String>,
    /// The allocation's sequence number (guards release against reuse).
    pub sequence_number: Option<u64>,
    /// The node attribute.
    pub node: Option<String>,
    /// Why it is leaked.
    pub reason: String,
}

/// A handle whose count for a block disagrees with the block.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HandleMismatch {
    /// The handle.
    pub handle: String,
    /// The block.
    pub block: String,
    /// Addresses the handle record counts there.
    pub recorded: u64,
    /// Addresses the block gives the handle.
    pub found: u64,
}

/// An allocated address in a block outside every pool.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OutsidePool {
    /// The address.
    pub ip: IpAddr,
    /// Its block.
    pub block: BlockCidr,
    /// The handle.
    pub handle: Option<String>,
}

/// A block/affinity inconsistency.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AffinityProblem {
    /// The node named by the affinity.
    pub node: String,
    /// The block.
    pub block: BlockCidr,
    /// What is wrong.
    pub reason: String,
}

/// An address and the workload it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkloadAddress {
    /// The address.
    pub ip: IpAddr,
    /// The WorkloadEndpoint (`<namespace>/<name>`), or the pod attribute of the allocation.
    pub workload: String,
}

/// The result of `ipam check` (written as JSON by `-o FILE`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Number of blocks.
    pub blocks: usize,
    /// Number of host affinities.
    pub affinities: usize,
    /// Number of handles.
    pub handles: usize,
    /// Number of allocated addresses.
    pub allocations: usize,
    /// Allocated addresses per node attribute, most first.
    pub allocations_by_node: Vec<(String, usize)>,
    /// Allocated addresses whose handle is missing or absent.
    pub leaked: Vec<LeakedAddress>,
    /// Handles counting more (or fewer) addresses than the blocks give them.
    pub handle_mismatches: Vec<HandleMismatch>,
    /// Allocated addresses outside every pool.
    pub outside_pools: Vec<OutsidePool>,
    /// Blocks affine to nodes that do not exist, and affinity records that disagree.
    pub affinity_problems: Vec<AffinityProblem>,
    /// Addresses a WorkloadEndpoint uses, inside a pool, that IPAM has not allocated.
    #[serde(default)]
    pub in_use_not_allocated: Vec<WorkloadAddress>,
    /// Informational, not counted as problems: addresses allocated to a pod (`pod` attribute)
    /// that no WorkloadEndpoint uses. Calico calls these leaks after a grace period (15 min),
    /// because a CNI ADD writes the endpoint only after allocating.
    #[serde(default)]
    pub allocated_without_workload: Vec<WorkloadAddress>,
}

impl CheckReport {
    /// Total number of problems.
    pub fn problems(&self) -> usize {
        self.leaked.len()
            + self.handle_mismatches.len()
            + self.outside_pools.len()
            + self.affinity_problems.len()
            + self.in_use_not_allocated.len()
    }

    /// The printable summary, ending with `Check complete; found N problems.`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Found {} IPAM blocks, {} host affinities, {} handles.",
            self.blocks, self.affinities, self.handles
        );
        let _ = writeln!(out, "Found {} allocated IPs.", self.allocations);
        if !self.allocations_by_node.is_empty() {
            let _ = writeln!(out, "Nodes with the most allocations:");
            for (node, count) in self.allocations_by_node.iter().take(5) {
                let _ = writeln!(out, "  {node}: {count}");
            }
        }
        let _ = writeln!(out, "Found {} leaked IPs.", self.leaked.len());
        for leak in &self.leaked {
            let _ = writeln!(
                out,
                "  {} in {} (handle {}): {}",
                leak.ip,
                leak.block,
                leak.handle.as_deref().unwrap_or("<none>"),
                leak.reason
            );
        }
        let _ = writeln!(
            out,
            "Found {} handles with wrong counts.",
            self.handle_mismatches.len()
        );
        for m in &self.handle_mismatches {
            let _ = writeln!(
                out,
                "  handle {} counts {} in {}, block has {}",
                m.handle, m.recorded, m.block, m.found
            );
        }
        let _ = writeln!(
            out,
            "Found {} IPs outside any IP pool.",
            self.outside_pools.len()
        );
        for o in &self.outside_pools {
            let _ = writeln!(out, "  {} in {}", o.ip, o.block);
        }
        let _ = writeln!(
            out,
            "Found {} affinity problems.",
            self.affinity_problems.len()
        );
        for a in &self.affinity_problems {
            let _ = writeln!(out, "  {} for node {}: {}", a.block, a.node, a.reason);
        }
        let _ = writeln!(
            out,
            "Found {} IPs in use by workloads but not allocated.",
            self.in_use_not_allocated.len()
        );
        for w in &self.in_use_not_allocated {
            let _ = writeln!(out, "  {} used by {}", w.ip, w.workload);
        }
        if !self.allocated_without_workload.is_empty() {
            let _ = writeln!(
                out,
                "Found {} IPs allocated to pods without a WorkloadEndpoint (possible leaks).",
                self.allocated_without_workload.len()
            );
        }
        let _ = write!(out, "Check complete; found {} problems.", self.problems());
        out
    }
}

/// What [`Ipam::release_from_reports`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSummary {
    /// Leaked addresses released.
    pub released: Vec<IpAddr>,
    /// Handle records corrected.
    pub handles_fixed: usize,
    /// Affinities of missing nodes released.
    pub affinities_released: usize,
    /// Problems skipped because they changed since the report.
    pub skipped: usize,
}

fn percent(part: u128, total: u128) -> String {
    if total == 0 {
        return format!("{part} (0%)");
    }
    // Rounded to the nearest percent, like Go's %.0f.
    let pct = (part * 200 + total) / (total * 2);
    format!("{part} ({pct}%)")
}

/// Renders `ipam show` (with block rows when `show_blocks`).
pub fn render_show(pools: &[PoolUsage], show_blocks: bool) -> String {
    let mut table = Table::new(["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]);
    for pool in pools {
        table.row([
            "IP Pool".to_string(),
            pool.cidr.to_string(),
            pool.total.to_string(),
            percent(pool.in_use, pool.total),
            percent(pool.free(), pool.total),
        ]);
        if show_blocks {
            for block in &pool.blocks {
                table.row([
                    "Block".to_string(),
                    block.cidr.to_string(),
                    block.total.to_string(),
                    percent(block.in_use, block.total),
                    percent(block.total - block.in_use, block.total),
                ]);
            }
        }
    }
    table.render()
}

/// Renders `ipam show --show-borrowed`.
pub fn render_borrowed(rows: &[BorrowedAddress]) -> String {
    let mut table = Table::new([
        "IP",
        "BORROWING-NODE",
        "BLOCK",
        "BLOCK OWNER",
        "TYPE",
        "ALLOCATED-TO",
    ]);
    for r in rows {
        table.row([
            r.ip.to_string(),
            r.borrowing_node.clone(),
            r.block.to_string(),
            r.block_owner.clone(),
            r.kind.clone(),
            r.allocated_to.clone(),
        ]);
    }
    table.render()
}

/// Renders `ipam show --ip`.
pub fn render_address(status: &AddressStatus) -> String {
    let mut out = String::new();
    if status.in_use {
        let _ = writeln!(out, "IP {} is in use", status.ip);
        if let Some(handle) = &status.handle {
            let _ = writeln!(out, "Handle: {handle}");
        }
        if let Some(block) = &status.block {
            let owner = status.block_owner.as_deref().unwrap_or("<none>");
            let _ = writeln!(out, "Block: {block} (affine to {owner})");
        }
        let _ = writeln!(out, "Attributes:");
        for (k, v) in &status.attributes {
            let _ = writeln!(out, "  {k}: {v}");
        }
    } else if status.pool.is_none() {
        let _ = writeln!(out, "IP {} is not in any IP pool", status.ip);
    } else {
        let _ = writeln!(out, "IP {} is not assigned", status.ip);
    }
    if let Some(reservation) = &status.reserved_by {
        let _ = writeln!(out, "Reserved by IPReservation {reservation}");
    }
    out
}

/// Renders `ipam show --show-configuration`.
pub fn render_configuration(config: &IpamConfig) -> String {
    let mut table = Table::new(["PROPERTY", "VALUE"]);
    table.row([
        "StrictAffinity".to_string(),
        config.strict_affinity.to_string(),
    ]);
    table.row([
        "AutoAllocateBlocks".to_string(),
        config.auto_allocate_blocks.to_string(),
    ]);
    table.row([
        "MaxBlocksPerHost".to_string(),
        config.max_blocks_per_host.to_string(),
    ]);
    table.render()
}

fn allocated_to(attrs: &BTreeMap<String, String>, handle: Option<&str>) -> String {
    match (attrs.get(attr::NAMESPACE), attrs.get(attr::POD)) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        (None, Some(pod)) => pod.clone(),
        _ => handle.unwrap_or("").to_string(),
    }
}

fn kind_of(attrs: &BTreeMap<String, String>) -> String {
    match attrs.get(attr::TYPE) {
        Some(t) => t.clone(),
        None if attrs.contains_key(attr::POD) => "pod".to_string(),
        None => String::new(),
    }
}

impl Snapshot {
    /// `ipam show`: per pool, with its blocks.
    pub fn show(&self) -> Vec<PoolUsage> {
        self.context
            .pools
            .iter()
            .map(|pool| {
                let blocks: Vec<BlockUsage> = self
                    .blocks
                    .iter()
                    .filter(|b| pool.contains_block(&b.cidr))
                    .map(|b| BlockUsage {
                        cidr: b.cidr,
                        node: b.affine_node().map(str::to_string),
                        total: u128::from(b.cidr.size()),
                        in_use: b.in_use() as u128,
                    })
                    .collect();
                PoolUsage {
                    name: pool.name.clone(),
                    cidr: pool.cidr,
                    total: pool.total(),
                    in_use: blocks.iter().map(|b| b.in_use).sum(),
                    blocks,
                }
            })
            .collect()
    }

    /// `ipam show --show-borrowed`: addresses allocated by a node other than the block's.
    pub fn show_borrowed(&self) -> Vec<BorrowedAddress> {
        let mut rows = Vec::new();
        for block in &self.blocks {
            let Some(owner) = block.affine_node() else {
                continue;
            };
            for a in block.allocated() {
                let Some(attribute) = a.attribute else {
                    continue;
                };
                let Some(node) = attribute.secondary.get(attr::NODE) else {
                    continue;
                };
                if node == owner {
                    continue;
                }
                rows.push(BorrowedAddress {
                    ip: a.ip,
                    borrowing_node: node.clone(),
                    block: block.cidr,
                    block_owner: owner.to_string(),
                    kind: kind_of(&attribute.secondary),
                    allocated_to: allocated_to(&attribute.secondary, a.handle()),
                });
            }
        }
        rows
    }

    /// `ipam show --ip`.
    pub fn show_ip(&self, ip: IpAddr) -> AddressStatus {
        let block = self.blocks.iter().find(|b| b.cidr.0.contains(&ip));
        let allocation = block.and_then(|b| b.allocation(ip));
        AddressStatus {
            ip,
            pool: self.context.pool_of(ip).map(|p| p.name.clone()),
            block: block.map(|b| b.cidr),
            block_owner: block.and_then(|b| b.affine_node()).map(str::to_string),
            in_use: allocation.is_some(),
            handle: allocation
                .as_ref()
                .and_then(|a| a.handle())
                .map(str::to_string),
            attributes: allocation
                .as_ref()
                .and_then(|a| a.attribute)
                .map(|a| a.secondary.clone())
                .unwrap_or_default(),
            reserved_by: self
                .context
                .reservations
                .covering(ip)
                .map(|(n, _)| n.clone()),
        }
    }

    /// `ipam check`.
    pub fn check(&self) -> CheckReport {
        let mut report = CheckReport {
            blocks: self.blocks.len(),
            affinities: self.affinities.len(),
            handles: self.handles.len(),
            ..CheckReport::default()
        };
        let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
        // handle → block → addresses found
        let mut found: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
        for block in &self.blocks {
            let in_pool = self.context.pool_of_block(&block.cidr).is_some();
            for a in block.allocated() {
                report.allocations += 1;
                let node = a.secondary(attr::NODE).map(str::to_string);
                *by_node.entry(node.clone().unwrap_or_default()).or_default() += 1;
                if !in_pool {
                    report.outside_pools.push(OutsidePool {
                        ip: a.ip,
                        block: block.cidr,
                        handle: a.handle().map(str::to_string),
                    });
                }
                let reason = match a.handle() {
                    None => Some("allocation has no handle"),
                    Some(h) if !self.handles.contains_key(h) => Some("handle does not exist"),
                    Some(h) => {
                        *found
                            .entry(h)
                            .or_default()
                            .entry(block.cidr.to_string())
                            .or_default() += 1;
                        None
                    }
                };
                if let Some(reason) = reason {
                    report.leaked.push(LeakedAddress {
                        ip: a.ip,
                        block: block.cidr,
                        handle: a.handle().map(str::to_string),
                        sequence_number: a.sequence_number,
                        node,
                        reason: reason.to_string(),
                    });
                }
            }
        }
        for (id, handle) in &self.handles {
            let actual = found.get(id.as_str()).cloned().unwrap_or_default();
            let blocks: BTreeSet<&String> = handle.block.keys().chain(actual.keys()).collect();
            for block in blocks {
                let recorded = handle.block.get(block).copied().unwrap_or(0);
                let got = actual.get(block).copied().unwrap_or(0);
                if recorded != got {
                    report.handle_mismatches.push(HandleMismatch {
                        handle: id.clone(),
                        block: block.clone(),
                        recorded,
                        found: got,
                    });
                }
            }
            if handle.block.is_empty() && actual.is_empty() {
                report.handle_mismatches.push(HandleMismatch {
                    handle: id.clone(),
                    block: String::new(),
                    recorded: 0,
                    found: 0,
                });
            }
        }
        let blocks: BTreeMap<BlockCidr, &Block> = self.blocks.iter().map(|b| (b.cidr, b)).collect();
        let affinities: BTreeSet<(&str, BlockCidr)> = self
            .affinities
            .iter()
            .map(|(n, b, _)| (n.as_str(), *b))
            .collect();
        for block in &self.blocks {
            if let Some(node) = block.affine_node() {
                if !self.nodes.contains(node) {
                    report.affinity_problems.push(AffinityProblem {
                        node: node.to_string(),
                        block: block.cidr,
                        reason: "block is affine to a node that does not exist".into(),
                    });
                } else if !affinities.contains(&(node, block.cidr)) {
                    report.affinity_problems.push(AffinityProblem {
                        node: node.to_string(),
                        block: block.cidr,
                        reason: "block is affine to the node but it has no affinity record".into(),
                    });
                }
            }
        }
        for (node, cidr, affinity) in &self.affinities {
            let problem = match blocks.get(cidr) {
                None => Some(format!("{:?} affinity without a block", affinity.state)),
                Some(b) if !b.is_affine_to(node) => {
                    Some(format!("block is affine to {:?}", b.affinity))
                }
                Some(_) if affinity.state != AffinityState::Confirmed => {
                    Some(format!("affinity is {:?}", affinity.state))
                }
                Some(_) => None,
            };
            if let Some(reason) = problem {
                report.affinity_problems.push(AffinityProblem {
                    node: node.clone(),
                    block: *cidr,
                    reason,
                });
            }
        }
        let allocated: BTreeSet<IpAddr> = self
            .blocks
            .iter()
            .flat_map(|b| b.allocated().map(|a| a.ip))
            .collect();
        for (ip, workload) in &self.workloads {
            if !allocated.contains(ip) && self.context.pool_of(*ip).is_some() {
                report.in_use_not_allocated.push(WorkloadAddress {
                    ip: *ip,
                    workload: workload.clone(),
                });
            }
        }
        for block in &self.blocks {
            for a in block.allocated() {
                if let Some(pod) = a.secondary(attr::POD)
                    && !self.workloads.contains_key(&a.ip)
                {
                    let workload = match a.secondary(attr::NAMESPACE) {
                        Some(ns) => format!("{ns}/{pod}"),
                        None => pod.to_string(),
                    };
                    // Past the grace period, an allocation whose pod never got (or lost) its
                    // endpoint is a leak: e.g. a CNI ADD killed between IPAM and the endpoint.
                    let allocated_at = a
                        .secondary(attr::TIMESTAMP)
                        .and_then(crate::ipam::parse_timestamp);
                    let expired = self.workload_grace.is_some_and(|g| {
                        allocated_at
                            .is_none_or(|t| g.now.duration_since(t).is_ok_and(|age| age >= g.grace))
                    });
                    if expired {
                        report.leaked.push(LeakedAddress {
                            ip: a.ip,
                            block: block.cidr,
                            handle: a.handle().map(str::to_string),
                            sequence_number: a.sequence_number,
                            node: a.secondary(attr::NODE).map(str::to_string),
                            reason: format!(
                                "allocated to pod {workload}, which has no WorkloadEndpoint, for longer than the grace period"
                            ),
                        });
                    } else {
                        report
                            .allocated_without_workload
                            .push(WorkloadAddress { ip: a.ip, workload });
                    }
                }
            }
        }
        let mut by_node: Vec<(String, usize)> = by_node.into_iter().collect();
        by_node.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        report.allocations_by_node = by_node;
        report
    }
}

impl Ipam<'_> {
    /// Reads everything the reports need.
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        let context = self.context()?;
        let mut snapshot = Snapshot {
            context,
            workload_grace: self.workload_grace,
            ..Snapshot::default()
        };
        let assignment = format!("{IPAM_PREFIX}assignment/");
        for kv in self.list(IPAM_PREFIX)? {
            if kv.key.starts_with(&assignment) {
                snapshot.blocks.push(decode(&kv)?);
            } else if let Some(id) = kv.key.strip_prefix(HANDLE_PREFIX) {
                let mut handle: Handle = decode(&kv)?;
                handle.handle_id = id.to_string();
                snapshot.handles.insert(id.to_string(), handle);
            } else if let Some((node, block)) = parse_affinity_key(&kv.key) {
                snapshot.affinities.push((node, block, decode(&kv)?));
            }
        }
        let prefix = Kind::WorkloadEndpoint.key_prefix();
        for kv in self.list(&prefix)? {
            let value: serde_json::Value =
                serde_json::from_slice(&kv.value).map_err(|source| Error::Malformed {
                    key: kv.key.clone(),
                    source,
                })?;
            let name = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key).to_string();
            let networks = value.pointer("/spec/ipNetworks").and_then(|v| v.as_array());
            for net in networks.into_iter().flatten().filter_map(|v| v.as_str()) {
                let ip = net
                    .parse::<IpNet>()
                    .map(|n| n.addr())
                    .or_else(|_| net.parse::<IpAddr>());
                if let Ok(ip) = ip {
                    snapshot.workloads.insert(ip, name.clone());
                }
            }
        }
        for kv in self.list(NODE_PREFIX)? {
            if let Some(name) = kv.key.strip_prefix(NODE_PREFIX) {
                snapshot.nodes.insert(name.to_string());
            }
        }
        Ok(snapshot)
    }

    /// `ipam show`.
    pub fn show(&self) -> Result<Vec<PoolUsage>, Error> {
        Ok(self.snapshot()?.show())
    }

    /// `ipam show --show-borrowed`.
    pub fn show_borrowed(&self) -> Result<Vec<BorrowedAddress>, Error> {
        Ok(self.snapshot()?.show_borrowed())
    }

    /// `ipam show --ip`.
    pub fn show_ip(&self, ip: IpAddr) -> Result<AddressStatus, Error> {
        Ok(self.snapshot()?.show_ip(ip))
    }

    /// `ipam check`.
    pub fn check(&self) -> Result<CheckReport, Error> {
        Ok(self.snapshot()?.check())
    }

    /// `ipam release --from-report`: fixes the problems present in every one of `reports`
    /// that are still present now. Leaked addresses are released only if the allocation still
    /// has the same handle and sequence number; handle counts are rewritten from the block (both
    /// in one transaction, so a concurrent allocation makes it retry).
    pub fn release_from_reports(&self, reports: &[CheckReport]) -> Result<ReleaseSummary, Error> {
        let mut summary = ReleaseSummary::default();
        let Some((first, rest)) = reports.split_first() else {
            return Ok(summary);
        };
        let now = self.snapshot()?.check();
        for leak in &first.leaked {
            if !rest.iter().all(|r| r.leaked.contains(leak)) {
                continue;
            }
            let still = now.leaked.iter().any(|l| {
                l.ip == leak.ip
                    && l.handle == leak.handle
                    && l.sequence_number == leak.sequence_number
            });
            if !still {
                summary.skipped += 1;
                continue;
            }
            if self.release_leak(leak)? {
                summary.released.push(leak.ip);
            } else {
                summary.skipped += 1;
            }
        }
        for mismatch in &first.handle_mismatches {
            if !rest.iter().all(|r| r.handle_mismatches.contains(mismatch)) {
                continue;
            }
            if !now.handle_mismatches.contains(mismatch) {
                summary.skipped += 1;
                continue;
            }
            self.fix_handle(&mismatch.handle, &mismatch.block)?;
            summary.handles_fixed += 1;
        }
        let missing_nodes: BTreeSet<&String> = first
            .affinity_problems
            .iter()
            .filter(|p| rest.iter().all(|r| r.affinity_problems.contains(p)))
            .filter(|p| now.affinity_problems.contains(p))
            .map(|p| &p.node)
            .collect();
        for node in missing_nodes {
            if !self.node_exists(node)? {
                summary.affinities_released += self.release_node_affinities(node)?;
            }
        }
        Ok(summary)
    }

    /// Releases one leaked allocation if it is unchanged (same handle and sequence number).
    fn release_leak(&self, leak: &LeakedAddress) -> Result<bool, Error> {
        let key = leak.block.key();
        for _ in 0..self.max_attempts {
            let Some(kv) = self.get(&key)? else {
                return Ok(false);
            };
            let mut block: Block = decode(&kv)?;
            let unchanged = block.allocation(leak.ip).is_some_and(|a| {
                a.handle() == leak.handle.as_deref() && a.sequence_number == leak.sequence_number
            });
            if !unchanged {
                return Ok(false);
            }
            block.release(&[leak.ip]);
            let mut ops = vec![TxnOp::Update {
                key: key.clone(),
                value: encode(&key, &block)?,
                expected: Some(kv.mod_revision),
            }];
            // The handle that still counts the address gives it up in the same transaction.
            if let Some(id) = &leak.handle {
                let handle_key = handle_key(id);
                if let Some(hkv) = self.get(&handle_key)? {
                    let mut handle: Handle = decode(&hkv)?;
                    handle.decrement(&leak.block, 1);
                    ops.push(if handle.total() == 0 {
                        TxnOp::Delete {
                            key: handle_key,
                            expected: Some(hkv.mod_revision),
                        }
                    } else {
                        TxnOp::Update {
                            value: encode(&handle_key, &handle)?,
                            key: handle_key,
                            expected: Some(hkv.mod_revision),
                        }
                    });
                }
            }
            if self.commit(&ops)? {
                return Ok(true);
            }
        }
        Err(Error::TooManyConflicts {
            key,
            attempts: self.max_attempts,
        })
    }

    /// Rewrites `handle`'s count for `block_text` from the block itself.
    fn fix_handle(&self, handle: &str, block_text: &str) -> Result<(), Error> {
        let key = handle_key(handle);
        for _ in 0..self.max_attempts {
            let Some(hkv) = self.get(&key)? else {
                return Ok(());
            };
            let mut record: Handle = decode(&hkv)?;
            let mut ops = Vec::new();
            let mut actual = 0;
            if let Ok(net) = block_text.parse::<IpNet>() {
                let block_key = BlockCidr(net).key();
                if let Some(bkv) = self.get(&block_key)? {
                    let block: Block = decode(&bkv)?;
                    actual = block.count_for_handle(handle);
                    // Re-write the block unchanged: the transaction then fails if anyone
                    // changed it meanwhile.
                    ops.push(TxnOp::Update {
                        key: block_key,
                        value: bkv.value.clone(),
                        expected: Some(bkv.mod_revision),
                    });
                }
            }
            if actual == 0 {
                record.block.remove(block_text);
            } else {
                record.block.insert(block_text.to_string(), actual);
            }
            record.handle_id = handle.to_string();
            ops.push(if record.total() == 0 {
                TxnOp::Delete {
                    key: key.clone(),
                    expected: Some(hkv.mod_revision),
                }
            } else {
                TxnOp::Update {
                    key: key.clone(),
                    value: encode(&key, &record)?,
                    expected: Some(hkv.mod_revision),
                }
            });
            if self.commit(&ops)? {
                return Ok(());
            }
        }
        Err(Error::TooManyConflicts {
            key,
            attempts: self.max_attempts,
        })
    }
}
