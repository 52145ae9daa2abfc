//! IPAM errors.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::IpFamily;

/// How full one pool is, for [`Error::PoolExhausted`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolFullness {
    /// The pool name.
    pub pool: String,
    /// The pool CIDR.
    pub cidr: IpNet,
    /// Addresses in use.
    pub in_use: u128,
    /// Addresses in the pool.
    pub total: u128,
}

impl fmt::Display for PoolFullness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) {}/{} in use",
            self.pool, self.cidr, self.in_use, self.total
        )
    }
}

fn list(pools: &[PoolFullness]) -> String {
    let parts: Vec<String> = pools.iter().map(ToString::to_string).collect();
    parts.join(", ")
}

/// IPAM errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every eligible pool is full (or the host may not claim more blocks and may not borrow).
    #[error(
        "no free {family:?} address for node {node} (wanted {wanted}, got {got}); pools: {}",
        list(pools)
    )]
    PoolExhausted {
        /// The node asking.
        node: String,
        /// The family.
        family: IpFamily,
        /// Addresses asked for.
        wanted: usize,
        /// Addresses found before giving up (released again).
        got: usize,
        /// The eligible pools and how full they are.
        pools: Vec<PoolFullness>,
    },
    /// No enabled pool of the family allows this use and matches the node's labels.
    #[error("no enabled {family:?} IP pool matches node {node} (use {usage})")]
    NoMatchingPool {
        /// The node asking.
        node: String,
        /// The family.
        family: IpFamily,
        /// The intended use (`Workload`, `Tunnel`).
        usage: String,
    },
    /// The address is reserved by an IPReservation.
    #[error("address {ip} is reserved by IPReservation {reservation} ({cidr})")]
    AddressReserved {
        /// The address.
        ip: IpAddr,
        /// The IPReservation name.
        reservation: String,
        /// The reserved CIDR containing it.
        cidr: IpNet,
    },
    /// The address is already allocated.
    #[error("address {ip} is already in use (handle {handle:?})")]
    AddressInUse {
        /// The address.
        ip: IpAddr,
        /// Its current handle.
        handle: Option<String>,
    },
    /// The address is in no IP pool.
    #[error("address {ip} is not in any IP pool")]
    NotInPool {
        /// The address.
        ip: IpAddr,
    },
    /// A pool cannot be split as asked.
    #[error("cannot split pool {cidr} into {parts} parts: {reason}")]
    InvalidSplit {
        /// The pool CIDR.
        cidr: IpNet,
        /// The requested number of parts.
        parts: u32,
        /// Why.
        reason: String,
    },
    /// Compare-and-swap kept failing.
    #[error("gave up on {key} after {attempts} concurrent modifications")]
    TooManyConflicts {
        /// The contended key.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A stored record does not parse.
    #[error("malformed record at {key}")]
    Malformed {
        /// The key.
        key: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored resource is invalid (e.g. a pool with a bad selector).
    #[error("invalid {key}: {reason}")]
    InvalidResource {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The datastore failed.
    #[error("datastore {op} {key} failed")]
    Store {
        /// The operation (`get`, `list`, `commit`).
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// The cause.
        #[source]
        source: felis_store::Error,
    },
}
