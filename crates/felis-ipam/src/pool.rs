//! The parts of IPPool and IPReservation the allocator needs, and pure choices over them: which
//! pools serve a node, which new block to claim, how a pool splits.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::net::IpAddr;

use felis_api::selector::Selector;
use ipnet::IpNet;
use rand::Rng;

use crate::error::Error;
use crate::model::BlockCidr;
use crate::model::IpFamily;

pub use felis_api::AllowedUse;

/// An IP pool as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The pool name.
    pub name: String,
    /// The pool CIDR (network address, host bits zero).
    pub cidr: IpNet,
    /// Block prefix length (26 for IPv4 and 122 for IPv6 by default).
    pub block_size: u8,
    /// Disabled pools hand out no new addresses.
    pub disabled: bool,
    /// Which nodes may take addresses from the pool.
    pub node_selector: Selector,
    /// What the addresses may be used for.
    pub allowed_uses: Vec<AllowedUse>,
    /// `assignmentMode: Manual`: only used when a request names the pool.
    pub manual: bool,
}

impl Pool {
    /// A pool with Calico's defaults for everything but the CIDR.
    pub fn new(name: &str, cidr: IpNet) -> Pool {
        let block_size = match IpFamily::of_net(&cidr) {
            IpFamily::V4 => 26,
            IpFamily::V6 => 122,
        };
        Pool {
            name: name.to_string(),
            cidr: cidr.trunc(),
            block_size,
            disabled: false,
            node_selector: Selector::all(),
            allowed_uses: vec![AllowedUse::Workload, AllowedUse::Tunnel],
            manual: false,
        }
    }

    /// The family.
    pub fn family(&self) -> IpFamily {
        IpFamily::of_net(&self.cidr)
    }

    /// Whether the pool hands out addresses for `usage` to a node with `labels`.
    pub fn serves(&self, usage: AllowedUse, labels: &BTreeMap<String, String>) -> bool {
        !self.disabled && self.allowed_uses.contains(&usage) && self.node_selector.matches(labels)
    }

    /// Whether `block` lies inside the pool.
    pub fn contains_block(&self, block: &BlockCidr) -> bool {
        self.cidr.contains(&block.0)
    }

    /// Number of addresses in the pool.
    pub fn total(&self) -> u128 {
        let host_bits = u32::from(self.cidr.max_prefix_len() - self.cidr.prefix_len());
        1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
    }

    /// Number of blocks in the pool.
    pub fn block_count(&self) -> u128 {
        let bits = u32::from(self.block_size.saturating_sub(self.cidr.prefix_len()));
        1u128.checked_shl(bits).unwrap_or(u128::MAX)
    }

    /// The `index`th block of the pool.
    pub fn block_at(&self, index: u128) -> Option<BlockCidr> {
        let host_bits = u32::from(self.cidr.max_prefix_len() - self.block_size);
        let offset = index.checked_shl(host_bits)?;
        let ip = match self.cidr.network() {
            IpAddr::V4(a) => IpAddr::V4(
                u32::from(a)
                    .checked_add(u32::try_from(offset).ok()?)?
                    .into(),
            ),
            IpAddr::V6(a) => IpAddr::V6(u128::from(a).checked_add(offset)?.into()),
        };
        IpNet::new(ip, self.block_size).ok().map(BlockCidr)
    }

    /// The block of this pool that contains `ip`.
    pub fn block_of(&self, ip: IpAddr) -> Option<BlockCidr> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        BlockCidr::containing(ip, self.block_size)
    }
}

/// Reserved CIDRs from every IPReservation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reservations {
    /// (IPReservation name, reserved CIDR).
    pub cidrs: Vec<(String, IpNet)>,
}

impl Reservations {
    /// The reservation covering `ip`, if any.
    pub fn covering(&self, ip: IpAddr) -> Option<&(String, IpNet)> {
        self.cidrs.iter().find(|(_, cidr)| cidr.contains(&ip))
    }

    /// Whether `ip` may be handed out.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.covering(ip).is_none()
    }

    /// Whether every address of `block` is reserved.
    pub fn covers_block(&self, block: &BlockCidr) -> bool {
        self.cidrs.iter().any(|(_, cidr)| cidr.contains(&block.0))
    }
}

/// Picks a block to claim: pools in the order given, in each a random starting block, then the
/// following ones (wrapping), skipping `existing` blocks and fully reserved ones. Looks at no
/// more than `existing.len()` + 4096 candidates per pool, so a huge IPv6 pool costs nothing.
pub fn choose_new_block<R: Rng + ?Sized>(
    pools: &[&Pool],
    existing: &HashSet<BlockCidr>,
    reservations: &Reservations,
    rng: &mut R,
) -> Option<BlockCidr> {
    for pool in pools {
        let count = pool.block_count();
        if count == 0 {
            continue;
        }
        let start = rng.random_range(0..count);
        let budget = (existing.len() as u128 + 4096).min(count);
        for step in 0..budget {
            let index = (start + step) % count;
            let Some(block) = pool.block_at(index) else {
                continue;
            };
            if !existing.contains(&block) && !reservations.covers_block(&block) {
                return Some(block);
            }
        }
    }
    None
}

/// Splits `cidr` into `parts` equal CIDRs (calicoctl `ipam split`): `parts` must be a power of
/// two and each part must still hold at least one block of `block_size`.
pub fn split(cidr: IpNet, block_size: u8, parts: u32) -> Result<Vec<IpNet>, Error> {
    let invalid = |reason: String| Error::InvalidSplit {
        cidr,
        parts,
        reason,
    };
    if parts == 0 || !parts.is_power_of_two() {
        return Err(invalid("the number of parts must be a power of two".into()));
    }
    let extra = u8::try_from(parts.trailing_zeros()).map_err(|e| invalid(e.to_string()))?;
    let new_len = cidr.prefix_len() + extra;
    if new_len > block_size {
        return Err(invalid(format!(
            "each part would be /{new_len}, smaller than the block size /{block_size}"
        )));
    }
    let subnets = cidr
        .trunc()
        .subnets(new_len)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(subnets.collect())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn split_validates_power_of_two_and_block_size() {
        let parts = split(net("10.0.0.0/16"), 26, 4).unwrap();
        assert_eq!(
            parts,
            vec![
                net("10.0.0.0/18"),
                net("10.0.64.0/18"),
                net("10.0.128.0/18"),
                net("10.0.192.0/18")
            ]
        );
        assert!(split(net("10.0.0.0/16"), 26, 3).is_err());
        assert!(split(net("10.0.0.0/24"), 26, 8).is_err());
        assert_eq!(split(net("10.0.0.0/24"), 26, 4).unwrap().len(), 4);
    }

    #[test]
    fn choose_new_block_skips_existing_and_reserved() {
        let pool = Pool::new("p", net("10.0.0.0/24"));
        assert_eq!(pool.block_count(), 4);
        let existing: HashSet<BlockCidr> = [
            BlockCidr(net("10.0.0.0/26")),
            BlockCidr(net("10.0.0.64/26")),
        ]
        .into();
        let reservations = Reservations {
            cidrs: vec![("r".into(), net("10.0.0.128/25"))],
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            choose_new_block(&[&pool], &existing, &reservations, &mut rng),
            None
        );
        let reservations = Reservations {
            cidrs: vec![("r".into(), net("10.0.0.128/26"))],
        };
        for seed in 0..16 {
            let mut rng = StdRng::seed_from_u64(seed);
            assert_eq!(
                choose_new_block(&[&pool], &existing, &reservations, &mut rng),
                Some(BlockCidr(net("10.0.0.192/26")))
            );
        }
    }

    #[test]
    fn huge_v6_pool_blocks() {
        let pool = Pool::new("v6", net("fd00::/48"));
        assert_eq!(pool.block_count(), 1 << 74);
        assert_eq!(pool.block_at(1), Some(BlockCidr(net("fd00::40/122"))));
        let mut rng = StdRng::seed_from_u64(7);
        let block = choose_new_block(
            &[&pool],
            &HashSet::new(),
            &Reservations::default(),
            &mut rng,
        );
        assert!(block.is_some_and(|b| pool.contains_block(&b)));
    }
}
