//! The IPAM resources: `IPPool`, `IPReservation` and `IPAMConfiguration`.

use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

use crate::error::ValidationError;
use crate::meta::ObjectMeta;
use crate::net;
use crate::validate;
use crate::validate::Normalize;

/// Default IPv4 block size (a /26: 64 addresses).
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default IPv6 block size (a /122: 64 addresses).
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

/// An `IPPool`: a CIDR IPAM allocates blocks from, and how its traffic is encapsulated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpPool {
    /// Name and labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The pool.
    pub spec: IpPoolSpec,
}

/// The spec of an `IPPool`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpPoolSpec {
    /// The pool's network (host bits cleared by defaulting).
    #[serde(with = "net::cidr")]
    pub cidr: IpNet,
    /// Prefix length of the blocks handed to nodes; defaulted to 26 (v4) or 122 (v6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// IP-in-IP encapsulation (IPv4 pools only).
    #[serde(default)]
    pub ipip_mode: EncapMode,
    /// VXLAN encapsulation.
    #[serde(default)]
    pub vxlan_mode: EncapMode,
    /// Masquerade traffic from this pool to destinations outside all pools.
    #[serde(default, skip_serializing_if = "validate::is_false")]
    pub nat_outgoing: bool,
    /// No new allocations from this pool.
    #[serde(default, skip_serializing_if = "validate::is_false")]
    pub disabled: bool,
    /// Don't export this pool's routes over BGP.
    #[serde(
        default,
        rename = "disableBGPExport",
        skip_serializing_if = "validate::is_false"
    )]
    pub disable_bgp_export: bool,
    /// Which nodes may allocate from this pool; defaulted to `all()`.
    #[serde(default = "validate::all_selector")]
    pub node_selector: String,
    /// What addresses from this pool may be used for; defaulted to `[Workload, Tunnel]`.
    #[serde(default)]
    pub allowed_uses: Vec<AllowedUse>,
    /// Whether addresses are assigned automatically or only on request.
    #[serde(default)]
    pub assignment_mode: AssignmentMode,
}

impl IpPoolSpec {
    /// A spec with Calico's defaults for `cidr`.
    pub fn new(cidr: IpNet) -> IpPoolSpec {
        let mut spec = IpPoolSpec {
            cidr,
            block_size: None,
            ipip_mode: EncapMode::Never,
            vxlan_mode: EncapMode::Never,
            nat_outgoing: false,
            disabled: false,
            disable_bgp_export: false,
            node_selector: validate::all_selector(),
            allowed_uses: Vec::new(),
            assignment_mode: AssignmentMode::Automatic,
        };
        spec.fill_defaults();
        spec
    }

    /// The block size, defaulted by family when unset.
    pub fn block_size(&self) -> u8 {
        self.block_size.unwrap_or(match self.cidr {
            IpNet::V4(_) => DEFAULT_BLOCK_SIZE_V4,
            IpNet::V6(_) => DEFAULT_BLOCK_SIZE_V6,
        })
    }

    /// Whether addresses from this pool may be used for `usage`.
    pub fn allows(&self, usage: AllowedUse) -> bool {
        if self.allowed_uses.is_empty() {
            matches!(usage, AllowedUse::Workload | AllowedUse::Tunnel)
        } else {
            self.allowed_uses.contains(&usage)
        }
    }

    fn fill_defaults(&mut self) {
        self.cidr = self.cidr.trunc();
        self.block_size = Some(self.block_size());
        if self.node_selector.trim().is_empty() {
            self.node_selector = validate::all_selector();
        }
        if self.allowed_uses.is_empty() {
            self.allowed_uses = vec![AllowedUse::Workload, AllowedUse::Tunnel];
        }
    }
}

impl Normalize for IpPool {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        let spec = &mut self.spec;
        spec.fill_defaults();
        let block = spec.block_size();
        let (lo, hi) = match spec.cidr {
            IpNet::V4(_) => (20, 32),
            IpNet::V6(_) => (116, 128),
        };
        if !(lo..=hi).contains(&block) {
            return Err(ValidationError::new(
                "spec.blockSize",
                format!(
                    "block size {block} is out of range {lo}-{hi} for {}",
                    spec.cidr
                ),
            ));
        }
        if block < spec.cidr.prefix_len() {
            return Err(ValidationError::new(
                "spec.blockSize",
                format!(
                    "the pool {} is smaller than one /{block} block; \
                     use a block size of at least {}",
                    spec.cidr,
                    spec.cidr.prefix_len()
                ),
            ));
        }
        // Calico refuses pools overlapping link-local space: 169.254.1.1 is every workload's
        // gateway, and fe80::/10 addresses are the veths' own.
        let link_local: IpNet = match spec.cidr {
            IpNet::V4(_) => IpNet::V4(ipnet::Ipv4Net::new_assert([169, 254, 0, 0].into(), 16)),
            IpNet::V6(_) => IpNet::V6(ipnet::Ipv6Net::new_assert(
                [0xfe80, 0, 0, 0, 0, 0, 0, 0].into(),
                10,
            )),
        };
        if link_local.contains(&spec.cidr) || spec.cidr.contains(&link_local) {
            return Err(ValidationError::new(
                "spec.cidr",
                format!("{} overlaps the link-local range {link_local}", spec.cidr),
            ));
        }
        if spec.ipip_mode != EncapMode::Never && matches!(spec.cidr, IpNet::V6(_)) {
            return Err(ValidationError::new(
                "spec.ipipMode",
                "IPIP is not supported on an IPv6 pool; use vxlanMode",
            ));
        }
        if spec.ipip_mode != EncapMode::Never && spec.vxlan_mode != EncapMode::Never {
            return Err(ValidationError::new(
                "spec.vxlanMode",
                "ipipMode and vxlanMode cannot both be enabled; set one of them to Never",
            ));
        }
        if spec.allowed_uses.contains(&AllowedUse::LoadBalancer) && spec.allowed_uses.len() > 1 {
            return Err(ValidationError::new(
                "spec.allowedUses",
                "LoadBalancer cannot be combined with other uses",
            ));
        }
        validate::selector("spec.nodeSelector", &spec.node_selector)
    }
}

/// Encapsulation mode of a pool (`ipipMode`, `vxlanMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EncapMode {
    /// No encapsulation (the default).
    #[default]
    Never,
    /// Always encapsulate traffic to other nodes.
    Always,
    /// Encapsulate only when the destination node is in another subnet.
    CrossSubnet,
}

impl EncapMode {
    /// The mode as Calico spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            EncapMode::Never => "Never",
            EncapMode::Always => "Always",
            EncapMode::CrossSubnet => "CrossSubnet",
        }
    }
}

/// What a pool's addresses may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AllowedUse {
    /// Workload (pod) addresses.
    Workload,
    /// Tunnel device addresses (IPIP, VXLAN, WireGuard).
    Tunnel,
    /// Service LoadBalancer addresses.
    LoadBalancer,
}

/// How addresses are assigned from a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AssignmentMode {
    /// IPAM may pick addresses from this pool on its own (the default).
    #[default]
    Automatic,
    /// Only addresses explicitly requested from this pool.
    Manual,
}

/// An `IPReservation`: addresses IPAM will not hand out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpReservation {
    /// Name and labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The reserved ranges.
    #[serde(default)]
    pub spec: IpReservationSpec,
}

/// The spec of an `IPReservation`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpReservationSpec {
    /// CIDRs (or single addresses) that must not be allocated.
    #[serde(default, rename = "reservedCIDRs", with = "net::cidr_vec")]
    pub reserved_cidrs: Vec<IpNet>,
}

impl Normalize for IpReservation {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        for net in &mut self.spec.reserved_cidrs {
            *net = net.trunc();
        }
        Ok(())
    }
}

/// The `IPAMConfiguration` singleton (`default`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConfiguration {
    /// Name (`default`).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The settings.
    #[serde(default)]
    pub spec: IpamConfigurationSpec,
}

/// The spec of `IPAMConfiguration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpamConfigurationSpec {
    /// Never borrow addresses from blocks affine to other nodes.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Most blocks one node may claim; 0 = unlimited.
    #[serde(default)]
    pub max_blocks_per_host: i32,
    /// Claim new blocks when the affine ones are full (default true).
    #[serde(default = "validate::default_true")]
    pub auto_allocate_blocks: bool,
}

impl Default for IpamConfigurationSpec {
    fn default() -> IpamConfigurationSpec {
        IpamConfigurationSpec {
            strict_affinity: false,
            max_blocks_per_host: 0,
            auto_allocate_blocks: true,
        }
    }
}

impl Normalize for IpamConfiguration {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        if self.spec.max_blocks_per_host < 0 {
            return Err(ValidationError::new(
                "spec.maxBlocksPerHost",
                format!(
                    "must be 0 (unlimited) or more, not {}",
                    self.spec.max_blocks_per_host
                ),
            ));
        }
        Ok(())
    }
}
