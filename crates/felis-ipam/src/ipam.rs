//! The store-backed allocator: every change is one atomic, compare-and-swap transaction.
//!
//! Calico (on Kubernetes CRDs, without transactions) orders its writes so a crash leaks rather
//! than double-allocates: handle first, then block on allocation; block first, then handle on
//! release; affinity pending → block → affinity confirmed on claim. Felis's store has
//! transactions, so each step commits the handle, block and affinity changes together: a crash
//! leaves either all of them or none, which is strictly safer than the leak-only ordering. Every
//! write carries the mod revision it read (or is a create), so two writers never both succeed
//! on stale data; a conflict re-reads and retries, up to [`Ipam::max_attempts`].

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;
use std::time::SystemTime;

use felis_store::Datastore;
use felis_store::KeyValue;
use felis_store::TxnOp;
use ipnet::IpNet;
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::error::PoolFullness;
use crate::model::Affinity;
use crate::model::AllocationAttribute;
use crate::model::Block;
use crate::model::BlockCidr;
use crate::model::CONFIG_KEY;
use crate::model::HOST_PREFIX;
use crate::model::Handle;
use crate::model::IpFamily;
use crate::model::IpamConfig;
use crate::model::POOL_PREFIX;
use crate::model::RESERVATION_PREFIX;
use crate::model::affinity_prefix;
use crate::model::attr;
use crate::model::block_prefix;
use crate::model::handle_key;
use crate::model::node_key;
use crate::model::parse_affinity_key;
use crate::pool::AllowedUse;
use crate::pool::Pool;
use crate::pool::Reservations;
use crate::pool::choose_new_block;
use crate::resources;

/// What [`Ipam::auto_assign`] should allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoAssignRequest {
    /// The node the addresses are for (affinity and nodeSelector).
    pub node: String,
    /// Number of IPv4 addresses.
    pub num_v4: usize,
    /// Number of IPv6 addresses.
    pub num_v6: usize,
    /// The handle that will own them (CNI: `<network>.<containerID>`).
    pub handle_id: String,
    /// Secondary attributes (`namespace`, `pod`, `type`, ...); `node` and `timestamp` are added.
    pub attributes: BTreeMap<String, String>,
    /// Restrict to these IPv4 pools (names or CIDRs); empty means every eligible pool.
    pub pools_v4: Vec<String>,
    /// Restrict to these IPv6 pools (names or CIDRs); empty means every eligible pool.
    pub pools_v6: Vec<String>,
    /// What the addresses are for: pools must allow it.
    pub usage: AllowedUse,
}

impl AutoAssignRequest {
    /// A request for `num_v4` IPv4 workload addresses and no IPv6.
    pub fn v4(node: &str, handle_id: &str, num_v4: usize) -> AutoAssignRequest {
        AutoAssignRequest {
            node: node.to_string(),
            num_v4,
            num_v6: 0,
            handle_id: handle_id.to_string(),
            attributes: BTreeMap::new(),
            pools_v4: Vec::new(),
            pools_v6: Vec::new(),
            usage: AllowedUse::Workload,
        }
    }
}

/// Addresses handed out by [`Ipam::auto_assign`], each with its block's prefix length (as
/// Calico returns them; a workload gets the address as a /32 or /128).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Assigned {
    /// IPv4 addresses.
    pub v4: Vec<IpNet>,
    /// IPv6 addresses.
    pub v6: Vec<IpNet>,
}

/// Which tunnel an address is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    /// IPIP (`tunl0`), IPv4.
    Ipip,
    /// VXLAN (`vxlan.calico`), IPv4.
    Vxlan,
    /// VXLAN (`vxlan-v6.calico`), IPv6.
    VxlanV6,
}

impl TunnelKind {
    /// Calico's handle for `node`'s tunnel address.
    pub fn handle(self, node: &str) -> String {
        match self {
            TunnelKind::Ipip => format!("ipip-tunnel-addr-{node}"),
            TunnelKind::Vxlan => format!("vxlan-tunnel-addr-{node}"),
            TunnelKind::VxlanV6 => format!("vxlan-v6-tunnel-addr-{node}"),
        }
    }

    /// The `type` attribute.
    pub fn attribute_type(self) -> &'static str {
        match self {
            TunnelKind::Ipip => attr::TYPE_IPIP,
            TunnelKind::Vxlan => attr::TYPE_VXLAN,
            TunnelKind::VxlanV6 => attr::TYPE_VXLAN_V6,
        }
    }

    /// The family.
    pub fn family(self) -> IpFamily {
        match self {
            TunnelKind::Ipip | TunnelKind::Vxlan => IpFamily::V4,
            TunnelKind::VxlanV6 => IpFamily::V6,
        }
    }
}

/// What the allocator reads once per call: configuration, pools, reservations.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `/calico/ipam/v2/config` (defaults when absent).
    pub config: IpamConfig,
    /// Every IP pool, sorted by name.
    pub pools: Vec<Pool>,
    /// Every reserved CIDR.
    pub reservations: Reservations,
}

impl Context {
    /// The pool containing `ip`.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&Pool> {
        self.pools.iter().find(|p| p.cidr.contains(&ip))
    }

    /// The pool containing `block`.
    pub fn pool_of_block(&self, block: &BlockCidr) -> Option<&Pool> {
        self.pools.iter().find(|p| p.contains_block(block))
    }
}

/// The IPAM allocator over a datastore.
pub struct Ipam<'s> {
    store: &'s dyn Datastore,
    /// Compare-and-swap attempts per record before [`Error::TooManyConflicts`].
    pub max_attempts: u32,
    /// When set, `check` counts an address allocated to a pod that has no WorkloadEndpoint as
    /// leaked once its allocation is older than the grace period (Calico: 15 min, because a CNI
    /// ADD writes the endpoint only after allocating); unset, such addresses are only listed.
    pub workload_grace: Option<WorkloadGrace>,
}

/// The clock reading and grace period for [`Ipam::workload_grace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadGrace {
    /// Now.
    pub now: SystemTime,
    /// How old an allocation without a WorkloadEndpoint must be to count as leaked.
    pub grace: Duration,
}

/// Parses the `timestamp` attribute ([`format_timestamp`]'s `YYYY-MM-DDTHH:MM:SSZ`).
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    felis_api::time::parse_rfc3339(text)
}

/// Formats `now` as RFC 3339 UTC (`2026-11-27T06:30:00Z`) for the `timestamp` attribute.
pub fn format_timestamp(now: SystemTime) -> String {
    felis_api::time::format_rfc3339(now)
}

/// Outcome of one CAS attempt.
enum Attempt<T> {
    Done(T),
    Retry,
}

fn is_conflict(error: &felis_store::Error) -> bool {
    matches!(
        error,
        felis_store::Error::Conflict { .. }
            | felis_store::Error::AlreadyExists { .. }
            | felis_store::Error::NotFound { .. }
    )
}

pub(crate) fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, Error> {
    serde_json::from_slice(&kv.value).map_err(|source| Error::Malformed {
        key: kv.key.clone(),
        source,
    })
}

pub(crate) fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|source| Error::Malformed {
        key: key.to_string(),
        source,
    })
}

impl<'s> Ipam<'s> {
    /// An allocator over `store`.
    pub fn new(store: &'s dyn Datastore) -> Ipam<'s> {
        Ipam {
            store,
            max_attempts: 100,
            workload_grace: None,
        }
    }

    /// The datastore.
    pub fn store(&self) -> &'s dyn Datastore {
        self.store
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        self.store.get(key).map_err(|source| Error::Store {
            op: "get",
            key: key.into(),
            source,
        })
    }

    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, Error> {
        self.store
            .list(prefix)
            .map(|l| l.items)
            .map_err(|source| Error::Store {
                op: "list",
                key: prefix.into(),
                source,
            })
    }

    /// Commits `ops`; `Ok(false)` when a precondition failed (retry), `Ok(true)` when applied.
    pub(crate) fn commit(&self, ops: &[TxnOp]) -> Result<bool, Error> {
        match self.store.commit(ops) {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(source) => {
                let key = ops
                    .first()
                    .map(|op| match op {
                        TxnOp::Create { key, .. }
                        | TxnOp::Update { key, .. }
                        | TxnOp::Put { key, .. }
                        | TxnOp::Delete { key, .. } => key.clone(),
                    })
                    .unwrap_or_default();
                Err(Error::Store {
                    op: "commit",
                    key,
                    source,
                })
            }
        }
    }

    /// Runs `step` until it is done, at most [`Ipam::max_attempts`] times.
    fn retry<T>(
        &self,
        key: &str,
        mut step: impl FnMut() -> Result<Attempt<T>, Error>,
    ) -> Result<T, Error> {
        for _ in 0..self.max_attempts {
            if let Attempt::Done(value) = step()? {
                return Ok(value);
            }
        }
        Err(Error::TooManyConflicts {
            key: key.to_string(),
            attempts: self.max_attempts,
        })
    }

    /// Reads configuration, pools and reservations.
    pub fn context(&self) -> Result<Context, Error> {
        // `ipam configure` writes Calico's record; `apply` of an IPAMConfiguration writes the
        // v3 resource. The one written last wins.
        let config = self.configuration()?;
        let mut pools = Vec::new();
        for kv in self.list(POOL_PREFIX)? {
            pools.push(resources::decode_pool(&kv)?);
        }
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        let mut reservations = Reservations::default();
        for kv in self.list(RESERVATION_PREFIX)? {
            reservations
                .cidrs
                .extend(resources::decode_reservation(&kv)?);
        }
        Ok(Context {
            config,
            pools,
            reservations,
        })
    }

    /// The labels of Node `node`, `None` if no such Node resource exists.
    pub fn node_labels(&self, node: &str) -> Result<Option<BTreeMap<String, String>>, Error> {
        match self.get(&node_key(node))? {
            Some(kv) => Ok(Some(resources::decode_node_labels(&kv)?)),
            None => Ok(None),
        }
    }

    /// Whether Node `node` exists.
    pub fn node_exists(&self, node: &str) -> Result<bool, Error> {
        Ok(self.get(&node_key(node))?.is_some())
    }

    /// The pools of `family` that serve `usage` on `node`, restricted to `filter` (names or
    /// CIDRs) when non-empty. Reads the node's labels only if some selector needs them.
    fn eligible_pools<'c>(
        &self,
        ctx: &'c Context,
        node: &str,
        family: IpFamily,
        usage: AllowedUse,
        filter: &[String],
    ) -> Result<Vec<&'c Pool>, Error> {
        let candidates: Vec<&Pool> = ctx
            .pools
            .iter()
            .filter(|p| p.family() == family)
            .filter(|p| {
                if filter.is_empty() {
                    !p.manual
                } else {
                    filter
                        .iter()
                        .any(|f| *f == p.name || f.parse::<IpNet>().ok() == Some(p.cidr))
                }
            })
            .collect();
        let labels = if candidates.iter().any(|p| !p.node_selector.is_all()) {
            self.node_labels(node)?.unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        Ok(candidates
            .into_iter()
            .filter(|p| p.serves(usage, &labels))
            .collect())
    }

    /// Allocates addresses for `request.node` (Calico's `AutoAssign`): from the node's affine
    /// blocks, then by claiming a new block, then (unless strict affinity) by borrowing from
    /// other nodes' blocks. All or nothing: on failure, what was allocated is released again.
    pub fn auto_assign<R: Rng + ?Sized>(
        &self,
        request: &AutoAssignRequest,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<Assigned, Error> {
        let ctx = self.context()?;
        let mut secondary = request.attributes.clone();
        secondary.insert(attr::NODE.into(), request.node.clone());
        secondary.insert(attr::TIMESTAMP.into(), format_timestamp(now));
        let attribute = AllocationAttribute {
            handle_id: Some(request.handle_id.clone()),
            secondary,
        };
        let mut assigned = Assigned::default();
        for (family, want, filter) in [
            (IpFamily::V4, request.num_v4, &request.pools_v4),
            (IpFamily::V6, request.num_v6, &request.pools_v6),
        ] {
            if want == 0 {
                continue;
            }
            let result = self
                .eligible_pools(&ctx, &request.node, family, request.usage, filter)
                .and_then(|pools| {
                    if pools.is_empty() {
                        return Err(Error::NoMatchingPool {
                            node: request.node.clone(),
                            family,
                            usage: format!("{:?}", request.usage),
                        });
                    }
                    self.assign_family(&ctx, &pools, request, family, want, &attribute, rng)
                });
            match result {
                Ok(ips) => {
                    let out = match family {
                        IpFamily::V4 => &mut assigned.v4,
                        IpFamily::V6 => &mut assigned.v6,
                    };
                    out.extend(ips);
                }
                Err(e) => {
                    let done: Vec<IpAddr> = assigned
                        .v4
                        .iter()
                        .chain(&assigned.v6)
                        .map(IpNet::addr)
                        .collect();
                    self.release_ips(&done)?;
                    return Err(e);
                }
            }
        }
        Ok(assigned)
    }

    #[allow(clippy::too_many_arguments)]
    fn assign_family<R: Rng + ?Sized>(
        &self,
        ctx: &Context,
        pools: &[&Pool],
        request: &AutoAssignRequest,
        family: IpFamily,
        want: usize,
        attribute: &AllocationAttribute,
        rng: &mut R,
    ) -> Result<Vec<IpNet>, Error> {
        let node = request.node.as_str();
        let handle = request.handle_id.as_str();
        let mut got: Vec<IpNet> = Vec::new();
        // (a) Blocks already affine to this node, in pools that serve it.
        // Newest claim first: older blocks are usually full, and a full block is skipped
        // without decoding it (see `looks_full`).
        let mut affinities = self.list(&affinity_prefix(node, family))?;
        affinities.sort_by_key(|kv| std::cmp::Reverse(kv.create_revision));
        let affine: Vec<BlockCidr> = affinities
            .iter()
            .filter_map(|kv| parse_affinity_key(&kv.key).map(|(_, block)| block))
            .collect();
        for block in affine
            .iter()
            .filter(|b| pools.iter().any(|p| p.contains_block(b)))
        {
            if got.len() >= want {
                break;
            }
            got.extend(self.fill_block(
                ctx,
                block,
                want - got.len(),
                Some(node),
                handle,
                attribute,
            )?);
        }
        // (b) Claim new blocks while allowed.
        let mut affine_count = affine.len();
        while got.len() < want && ctx.config.auto_allocate_blocks {
            let max = ctx.config.max_blocks_per_host as usize;
            if max > 0 && affine_count >= max {
                break;
            }
            match self.claim_block(ctx, pools, node, want - got.len(), handle, attribute, rng)? {
                Some(ips) => {
                    affine_count += 1;
                    got.extend(ips);
                }
                None => break,
            }
        }
        // (c) Borrow from other nodes' blocks.
        if got.len() < want && !ctx.config.strict_affinity {
            got.extend(self.borrow(
                ctx,
                pools,
                node,
                family,
                want - got.len(),
                handle,
                attribute,
                rng,
            )?);
        }
        if got.len() < want {
            let fullness = self.fullness(pools, family)?;
            let addrs: Vec<IpAddr> = got.iter().map(IpNet::addr).collect();
            self.release_ips(&addrs)?;
            return Err(Error::PoolExhausted {
                node: node.to_string(),
                family,
                wanted: want,
                got: got.len(),
                pools: fullness,
            });
        }
        Ok(got)
    }

    /// How full each of `pools` is.
    fn fullness(&self, pools: &[&Pool], family: IpFamily) -> Result<Vec<PoolFullness>, Error> {
        let blocks: Vec<Block> = self
            .list(&block_prefix(family))?
            .iter()
            .map(decode)
            .collect::<Result<_, _>>()?;
        Ok(pools
            .iter()
            .map(|p| PoolFullness {
                pool: p.name.clone(),
                cidr: p.cidr,
                in_use: blocks
                    .iter()
                    .filter(|b| p.contains_block(&b.cidr))
                    .map(|b| b.in_use() as u128)
                    .sum(),
                total: p.total(),
            })
            .collect())
    }

    /// The op that adds `count` addresses in `block` to `handle`: create or CAS update.
    fn handle_increment(
        &self,
        handle: &str,
        block: &BlockCidr,
        count: u64,
    ) -> Result<TxnOp, Error> {
        let key = handle_key(handle);
        Ok(match self.get(&key)? {
            Some(kv) => {
                let mut record: Handle = decode(&kv)?;
                record.handle_id = handle.to_string();
                record.increment(block, count);
                TxnOp::Update {
                    value: encode(&key, &record)?,
                    key,
                    expected: Some(kv.mod_revision),
                }
            }
            None => {
                let mut record = Handle::new(handle);
                record.increment(block, count);
                TxnOp::Create {
                    value: encode(&key, &record)?,
                    key,
                }
            }
        })
    }

    /// Allocates up to `want` addresses in the existing `block` (only while it is affine to
    /// `affine_to`, when given).
    fn fill_block(
        &self,
        ctx: &Context,
        block: &BlockCidr,
        want: usize,
        affine_to: Option<&str>,
        handle: &str,
        attribute: &AllocationAttribute,
    ) -> Result<Vec<IpNet>, Error> {
        let key = block.key();
        self.retry(&key, || {
            let Some(kv) = self.get(&key)? else {
                return Ok(Attempt::Done(Vec::new()));
            };
            if looks_full(&kv.value) {
                return Ok(Attempt::Done(Vec::new()));
            }
            let mut record: Block = decode(&kv)?;
            if record.deleted || affine_to.is_some_and(|n| !record.is_affine_to(n)) {
                return Ok(Attempt::Done(Vec::new()));
            }
            let ips = record.allocate(want, attribute.clone(), |ip| ctx.reservations.allows(ip));
            if ips.is_empty() {
                return Ok(Attempt::Done(Vec::new()));
            }
            let ops = [
                self.handle_increment(handle, block, ips.len() as u64)?,
                TxnOp::Update {
                    key: key.clone(),
                    value: encode(&key, &record)?,
                    expected: Some(kv.mod_revision),
                },
            ];
            Ok(if self.commit(&ops)? {
                Attempt::Done(with_prefix(&ips, block))
            } else {
                Attempt::Retry
            })
        })
    }

    /// Claims a free block of `pools` for `node` and allocates up to `want` addresses in it, in
    /// one transaction (affinity, block, handle). `None` when no block is free.
    #[allow(clippy::too_many_arguments)]
    fn claim_block<R: Rng + ?Sized>(
        &self,
        ctx: &Context,
        pools: &[&Pool],
        node: &str,
        want: usize,
        handle: &str,
        attribute: &AllocationAttribute,
        rng: &mut R,
    ) -> Result<Option<Vec<IpNet>>, Error> {
        let Some(family) = pools.first().map(|p| p.family()) else {
            return Ok(None);
        };
        let prefix = block_prefix(family);
        // Blocks known to exist, from every host's (small) affinity records rather than the
        // (large) blocks. A block without affinity (its node was deleted while it still held
        // addresses) is missed: creating it fails, the choice is marked taken, and after a few
        // failures the full block listing is read instead.
        let segment = format!("/{}/block/", family.segment());
        let mut existing: HashSet<BlockCidr> = self
            .list(HOST_PREFIX)?
            .iter()
            .filter(|kv| kv.key.contains(&segment))
            .filter_map(|kv| parse_affinity_key(&kv.key).map(|(_, block)| block))
            .collect();
        let mut failures = 0;
        self.retry(&prefix, || {
            if failures == 3 {
                existing.extend(
                    self.list(&prefix)?.iter().filter_map(|kv| {
                        kv.key.strip_prefix(&prefix).and_then(BlockCidr::from_name)
                    }),
                );
            }
            let Some(cidr) = choose_new_block(pools, &existing, &ctx.reservations, rng) else {
                return Ok(Attempt::Done(None));
            };
            let mut block = Block::new(cidr, Some(node));
            let ips = block.allocate(want, attribute.clone(), |ip| ctx.reservations.allows(ip));
            let affinity_key = cidr.affinity_key(node);
            let block_key = cidr.key();
            let mut ops = vec![
                TxnOp::Put {
                    value: encode(&affinity_key, &Affinity::confirmed())?,
                    key: affinity_key,
                },
                TxnOp::Create {
                    value: encode(&block_key, &block)?,
                    key: block_key,
                },
            ];
            if !ips.is_empty() {
                ops.push(self.handle_increment(handle, &cidr, ips.len() as u64)?);
            }
            Ok(if self.commit(&ops)? {
                Attempt::Done(Some(with_prefix(&ips, &cidr)))
            } else {
                existing.insert(cidr);
                failures += 1;
                Attempt::Retry
            })
        })
    }

    /// Borrows up to `want` addresses from blocks of `pools` not affine to `node`.
    #[allow(clippy::too_many_arguments)]
    fn borrow<R: Rng + ?Sized>(
        &self,
        ctx: &Context,
        pools: &[&Pool],
        node: &str,
        family: IpFamily,
        want: usize,
        handle: &str,
        attribute: &AllocationAttribute,
        rng: &mut R,
    ) -> Result<Vec<IpNet>, Error> {
        let mut candidates: Vec<BlockCidr> = Vec::new();
        for kv in self.list(&block_prefix(family))? {
            let block: Block = decode(&kv)?;
            if !block.deleted
                && !block.is_affine_to(node)
                && pools.iter().any(|p| p.contains_block(&block.cidr))
                && block.free_count(|ip| ctx.reservations.allows(ip)) > 0
            {
                candidates.push(block.cidr);
            }
        }
        if !candidates.is_empty() {
            let start = rng.random_range(0..candidates.len());
            candidates.rotate_left(start);
        }
        let mut got = Vec::new();
        for block in &candidates {
            if got.len() >= want {
                break;
            }
            got.extend(self.fill_block(ctx, block, want - got.len(), None, handle, attribute)?);
        }
        Ok(got)
    }

    /// Allocates exactly `ip` to `handle` for `node` (CNI `IP=` / `ipAddrs`). Claims the block
    /// for `node` if nobody has it yet.
    pub fn assign_ip(
        &self,
        ip: IpAddr,
        handle: &str,
        attributes: &BTreeMap<String, String>,
        node: &str,
        now: SystemTime,
    ) -> Result<IpNet, Error> {
        let ctx = self.context()?;
        let pool = ctx.pool_of(ip).ok_or(Error::NotInPool { ip })?;
        if let Some((name, cidr)) = ctx.reservations.covering(ip) {
            return Err(Error::AddressReserved {
                ip,
                reservation: name.clone(),
                cidr: *cidr,
            });
        }
        let cidr = pool.block_of(ip).ok_or(Error::NotInPool { ip })?;
        let mut secondary = attributes.clone();
        secondary.insert(attr::NODE.into(), node.to_string());
        secondary.insert(attr::TIMESTAMP.into(), format_timestamp(now));
        let attribute = AllocationAttribute {
            handle_id: Some(handle.to_string()),
            secondary,
        };
        let key = cidr.key();
        self.retry(&key, || {
            let mut ops = Vec::new();
            match self.get(&key)? {
                Some(kv) => {
                    let mut block: Block = decode(&kv)?;
                    if let Err(owner) = block.allocate_ip(ip, attribute.clone()) {
                        return Err(Error::AddressInUse { ip, handle: owner });
                    }
                    ops.push(TxnOp::Update {
                        key: key.clone(),
                        value: encode(&key, &block)?,
                        expected: Some(kv.mod_revision),
                    });
                }
                None => {
                    let mut block = Block::new(cidr, Some(node));
                    if block.allocate_ip(ip, attribute.clone()).is_err() {
                        return Err(Error::NotInPool { ip });
                    }
                    let affinity_key = cidr.affinity_key(node);
                    ops.push(TxnOp::Put {
                        value: encode(&affinity_key, &Affinity::confirmed())?,
                        key: affinity_key,
                    });
                    ops.push(TxnOp::Create {
                        key: key.clone(),
                        value: encode(&key, &block)?,
                    });
                }
            }
            ops.push(self.handle_increment(handle, &cidr, 1)?);
            Ok(if self.commit(&ops)? {
                Attempt::Done(with_prefix(&[ip], &cidr).remove(0))
            } else {
                Attempt::Retry
            })
        })
    }

    /// The tunnel address of `node` for `kind`: the one its handle already holds, or a new one
    /// from a pool that allows `Tunnel`.
    pub fn assign_tunnel_address<R: Rng + ?Sized>(
        &self,
        node: &str,
        kind: TunnelKind,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<IpAddr, Error> {
        let handle = kind.handle(node);
        if let Some(ip) = self
            .ips_by_handle(&handle)?
            .into_iter()
            .find(|ip| IpFamily::of(*ip) == kind.family())
        {
            return Ok(ip);
        }
        let mut request = AutoAssignRequest::v4(node, &handle, 0);
        match kind.family() {
            IpFamily::V4 => request.num_v4 = 1,
            IpFamily::V6 => request.num_v6 = 1,
        }
        request.usage = AllowedUse::Tunnel;
        request
            .attributes
            .insert(attr::TYPE.into(), kind.attribute_type().into());
        let assigned = self.auto_assign(&request, now, rng)?;
        assigned
            .v4
            .iter()
            .chain(&assigned.v6)
            .next()
            .map(IpNet::addr)
            .ok_or_else(|| Error::PoolExhausted {
                node: node.to_string(),
                family: kind.family(),
                wanted: 1,
                got: 0,
                pools: Vec::new(),
            })
    }

    /// Every address `handle` holds (per its handle record).
    pub fn ips_by_handle(&self, handle: &str) -> Result<Vec<IpAddr>, Error> {
        let Some(kv) = self.get(&handle_key(handle))? else {
            return Ok(Vec::new());
        };
        let record: Handle = decode(&kv)?;
        let mut ips = Vec::new();
        for cidr in record.block.keys() {
            let Ok(net) = cidr.parse::<IpNet>() else {
                continue;
            };
            let block_cidr = BlockCidr(net);
            if let Some(bkv) = self.get(&block_cidr.key())? {
                let block: Block = decode(&bkv)?;
                ips.extend(
                    block
                        .allocated()
                        .filter(|a| a.handle() == Some(handle))
                        .map(|a| a.ip),
                );
            }
        }
        Ok(ips)
    }

    /// Whether an empty `block` should be deleted: it has no affinity, or its node is gone.
    fn should_delete_empty(&self, block: &Block) -> Result<bool, Error> {
        match block.affine_node() {
            Some(node) => Ok(!self.node_exists(node)?),
            None => Ok(block.affinity.is_none()),
        }
    }

    /// Ops that write `block` back after a release (or delete it and its affinity when empty
    /// and nobody keeps it).
    fn block_write_ops(&self, kv: &KeyValue, block: &Block) -> Result<Vec<TxnOp>, Error> {
        if block.is_empty() && self.should_delete_empty(block)? {
            let mut ops = vec![TxnOp::Delete {
                key: kv.key.clone(),
                expected: Some(kv.mod_revision),
            }];
            if let Some(node) = block.affine_node() {
                let affinity_key = block.cidr.affinity_key(node);
                if let Some(akv) = self.get(&affinity_key)? {
                    ops.push(TxnOp::Delete {
                        key: affinity_key,
                        expected: Some(akv.mod_revision),
                    });
                }
            }
            Ok(ops)
        } else {
            Ok(vec![TxnOp::Update {
                key: kv.key.clone(),
                value: encode(&kv.key, block)?,
                expected: Some(kv.mod_revision),
            }])
        }
    }

    /// The op that removes `count` addresses in `block` from `handle` (deleting the record at
    /// zero); `None` when the handle does not exist.
    fn handle_decrement(
        &self,
        handle: &str,
        block: &BlockCidr,
        count: Option<u64>,
    ) -> Result<Option<TxnOp>, Error> {
        let key = handle_key(handle);
        let Some(kv) = self.get(&key)? else {
            return Ok(None);
        };
        let mut record: Handle = decode(&kv)?;
        match count {
            Some(n) => record.decrement(block, n),
            None => {
                record.block.remove(&block.to_string());
            }
        }
        Ok(Some(if record.total() == 0 {
            TxnOp::Delete {
                key,
                expected: Some(kv.mod_revision),
            }
        } else {
            record.handle_id = handle.to_string();
            TxnOp::Update {
                value: encode(&key, &record)?,
                key,
                expected: Some(kv.mod_revision),
            }
        }))
    }

    /// Releases the addresses owned by `handle` (CNI DEL). Idempotent: an unknown handle
    /// releases nothing. Returns the released addresses.
    pub fn release_by_handle(&self, handle: &str) -> Result<Vec<IpAddr>, Error> {
        let key = handle_key(handle);
        let mut released = Vec::new();
        loop {
            let step = self.retry(&key, || {
                let Some(hkv) = self.get(&key)? else {
                    return Ok(Attempt::Done(None));
                };
                let record: Handle = decode(&hkv)?;
                let Some(cidr_text) = record.block.keys().next().cloned() else {
                    let ops = [TxnOp::Delete {
                        key: key.clone(),
                        expected: Some(hkv.mod_revision),
                    }];
                    return Ok(if self.commit(&ops)? {
                        Attempt::Done(None)
                    } else {
                        Attempt::Retry
                    });
                };
                let mut remaining = record.clone();
                remaining.block.remove(&cidr_text);
                let handle_op = if remaining.total() == 0 {
                    TxnOp::Delete {
                        key: key.clone(),
                        expected: Some(hkv.mod_revision),
                    }
                } else {
                    TxnOp::Update {
                        key: key.clone(),
                        value: encode(&key, &remaining)?,
                        expected: Some(hkv.mod_revision),
                    }
                };
                let mut ops = Vec::new();
                let mut ips = Vec::new();
                if let Ok(net) = cidr_text.parse::<IpNet>() {
                    let block_key = BlockCidr(net).key();
                    if let Some(bkv) = self.get(&block_key)? {
                        let mut block: Block = decode(&bkv)?;
                        ips = block.release_handle(handle);
                        if !ips.is_empty() {
                            ops.extend(self.block_write_ops(&bkv, &block)?);
                        }
                    }
                }
                ops.push(handle_op);
                Ok(if self.commit(&ops)? {
                    Attempt::Done(Some(ips))
                } else {
                    Attempt::Retry
                })
            })?;
            match step {
                Some(ips) => released.extend(ips),
                None => return Ok(released),
            }
        }
    }

    /// Releases specific addresses, whoever holds them. Returns the addresses that were not
    /// allocated.
    pub fn release_ips(&self, ips: &[IpAddr]) -> Result<Vec<IpAddr>, Error> {
        if ips.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = self.context()?;
        let mut by_block: BTreeMap<BlockCidr, Vec<IpAddr>> = BTreeMap::new();
        let mut unallocated = Vec::new();
        let mut blocks_cache: Option<Vec<BlockCidr>> = None;
        for &ip in ips {
            let from_pool = ctx.pool_of(ip).and_then(|p| p.block_of(ip));
            let block = match from_pool {
                Some(b) => Some(b),
                None => {
                    // No pool (deleted?): find the block among the stored ones.
                    if blocks_cache.is_none() {
                        let mut all = Vec::new();
                        for family in [IpFamily::V4, IpFamily::V6] {
                            let prefix = block_prefix(family);
                            all.extend(self.list(&prefix)?.iter().filter_map(|kv| {
                                kv.key.strip_prefix(&prefix).and_then(BlockCidr::from_name)
                            }));
                        }
                        blocks_cache = Some(all);
                    }
                    blocks_cache
                        .as_ref()
                        .and_then(|all| all.iter().find(|b| b.0.contains(&ip)).copied())
                }
            };
            match block {
                Some(b) => by_block.entry(b).or_default().push(ip),
                None => unallocated.push(ip),
            }
        }
        for (cidr, ips) in by_block {
            let key = cidr.key();
            let missing = self.retry(&key, || {
                let Some(kv) = self.get(&key)? else {
                    return Ok(Attempt::Done(ips.clone()));
                };
                let mut block: Block = decode(&kv)?;
                let released = block.release(&ips);
                let missing: Vec<IpAddr> = ips
                    .iter()
                    .filter(|ip| !released.iter().any(|(r, _)| r == *ip))
                    .copied()
                    .collect();
                if released.is_empty() {
                    return Ok(Attempt::Done(missing));
                }
                let mut per_handle: BTreeMap<String, u64> = BTreeMap::new();
                for (_, handle) in &released {
                    if let Some(h) = handle {
                        *per_handle.entry(h.clone()).or_default() += 1;
                    }
                }
                let mut ops = self.block_write_ops(&kv, &block)?;
                for (handle, count) in &per_handle {
                    ops.extend(self.handle_decrement(handle, &cidr, Some(*count))?);
                }
                Ok(if self.commit(&ops)? {
                    Attempt::Done(missing)
                } else {
                    Attempt::Retry
                })
            })?;
            unallocated.extend(missing);
        }
        Ok(unallocated)
    }

    /// Releases every block affinity of `node` (a deleted node): empty blocks are deleted,
    /// others lose their affinity and are deleted when their last address is released.
    /// Returns the number of affinities released.
    pub fn release_node_affinities(&self, node: &str) -> Result<usize, Error> {
        let mut count = 0;
        for family in [IpFamily::V4, IpFamily::V6] {
            for akv in self.list(&affinity_prefix(node, family))? {
                let Some((_, cidr)) = parse_affinity_key(&akv.key) else {
                    continue;
                };
                let key = cidr.key();
                self.retry(&key, || {
                    let Some(akv) = self.get(&akv.key)? else {
                        return Ok(Attempt::Done(()));
                    };
                    let mut ops = vec![TxnOp::Delete {
                        key: akv.key.clone(),
                        expected: Some(akv.mod_revision),
                    }];
                    if let Some(kv) = self.get(&key)? {
                        let mut block: Block = decode(&kv)?;
                        if block.is_affine_to(node) {
                            if block.is_empty() {
                                ops.push(TxnOp::Delete {
                                    key: key.clone(),
                                    expected: Some(kv.mod_revision),
                                });
                            } else {
                                block.affinity = None;
                                ops.push(TxnOp::Update {
                                    key: key.clone(),
                                    value: encode(&key, &block)?,
                                    expected: Some(kv.mod_revision),
                                });
                            }
                        }
                    }
                    Ok(if self.commit(&ops)? {
                        Attempt::Done(())
                    } else {
                        Attempt::Retry
                    })
                })?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Sets `strictAffinity` and/or `maxBlocksPerHost` (calicoctl `ipam configure`).
    pub fn configure(
        &self,
        strict_affinity: Option<bool>,
        max_blocks_per_host: Option<u32>,
    ) -> Result<IpamConfig, Error> {
        self.retry(CONFIG_KEY, || {
            let current = self.get(CONFIG_KEY)?;
            let mut config = self.configuration()?;
            if let Some(strict) = strict_affinity {
                config.strict_affinity = strict;
            }
            if let Some(max) = max_blocks_per_host {
                config.max_blocks_per_host = max;
            }
            let value = encode(CONFIG_KEY, &config)?;
            let op = match &current {
                Some(kv) => TxnOp::Update {
                    key: CONFIG_KEY.into(),
                    value,
                    expected: Some(kv.mod_revision),
                },
                None => TxnOp::Create {
                    key: CONFIG_KEY.into(),
                    value,
                },
            };
            Ok(if self.commit(&[op])? {
                Attempt::Done(config.clone())
            } else {
                Attempt::Retry
            })
        })
    }

    /// The effective configuration: `ipam configure` writes Calico's record
    /// (`/calico/ipam/v2/config`), `apply` of an IPAMConfiguration writes the v3 resource; the
    /// one written last wins. Defaults when neither exists.
    pub fn configuration(&self) -> Result<IpamConfig, Error> {
        let record = self.get(CONFIG_KEY)?;
        let resource = self.get(&resources::ipam_configuration_key())?;
        Ok(match (record, resource) {
            (Some(r), Some(v3)) if v3.mod_revision > r.mod_revision => {
                resources::decode_ipam_configuration(&v3)?
            }
            (Some(r), _) => decode(&r)?,
            (None, Some(v3)) => resources::decode_ipam_configuration(&v3)?,
            (None, None) => IpamConfig::default(),
        })
    }
}

/// Whether a stored block's JSON says it has no free ordinal, found without decoding it: Go's
/// `encoding/json` and `serde_json` both write `"unallocated":[]` for a full block. A block
/// written with other spacing is simply decoded.
fn looks_full(value: &[u8]) -> bool {
    const FULL: &[u8] = br#""unallocated":[]"#;
    value.windows(FULL.len()).any(|w| w == FULL)
}

fn with_prefix(ips: &[IpAddr], block: &BlockCidr) -> Vec<IpNet> {
    ips.iter()
        .filter_map(|ip| IpNet::new(*ip, block.0.prefix_len()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(format_timestamp(t), "2026-11-18T11:06:40Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_timestamp(leap), "2000-02-29T00:00:00Z");
    }
}
