//! Block IPAM as Calico does it: pools, affine blocks, borrowing, handles, reservations, leak
//! checks.
//!
//! Layer: pure logic over the [`felis_store::Datastore`] trait (no sockets, no clock, no
//! randomness of its own: callers pass `now` and an RNG). It does not create interfaces or
//! routes (that is `felis-cni` and `felis-agent`) and does not print (the CLI renders the
//! [`report`] data and [`table`]s).
//!
//! ```text
//!  auto_assign(node, n)                         store (Calico's etcd layout)
//!   (a) blocks affine to node  ──get/CAS──▶  /calico/ipam/v2/assignment/ipv4/block/<a-b-c-d-26>
//!   (b) claim a free block     ──txn────▶   + /calico/ipam/v2/host/<node>/ipv4/block/<...>
//!   (c) borrow from others     ──CAS────▶    /calico/ipam/v2/handle/<handle>
//! ```
//!
//! - [`model`]: the stored records (Block, Affinity, Handle, IpamConfig) and pure block ops.
//! - [`pool`]: the pool view, reservations, block choice, `split`.
//! - [`Ipam`]: the store-backed allocator (assign, release, node cleanup, configure).
//! - [`report`]: `show`, `show_blocks`, `show_borrowed`, `show_ip`, `check`, release from a
//!   report; [`table`] renders them like calicoctl.

mod error;
mod ipam;
pub mod model;
pub mod pool;
pub mod report;
pub mod resources;
pub mod table;

pub use error::Error;
pub use error::PoolFullness;
pub use ipam::Assigned;
pub use ipam::AutoAssignRequest;
pub use ipam::Context;
pub use ipam::Ipam;
pub use ipam::TunnelKind;
pub use ipam::WorkloadGrace;
pub use ipam::format_timestamp;
pub use ipam::parse_timestamp;
pub use model::BlockCidr;
pub use model::IpFamily;
pub use model::IpamConfig;
pub use pool::AllowedUse;
pub use pool::Pool;
pub use pool::Reservations;
pub use pool::split;
