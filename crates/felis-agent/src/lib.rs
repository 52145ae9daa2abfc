//! The per-host agent (`felis node run`).
//!
//! Layers: [`calc`] is the pure calculation graph, from the cluster's resources (nodes, pools,
//! IPAM blocks, local workload endpoints) to the host state this node should have (routes, VXLAN
//! neighbours, NAT sets). Reconcilers (netlink, nftables) and the datastore watch sit above it and
//! make no decisions of their own.

pub mod autodetect;
pub mod calc;
pub mod dataplane;
pub mod nat;
pub mod run;
pub mod sync;
