//! The per-host agent (`felis node run`).
//!
//! Layers: [`calc`] is the pure calculation graph, from the cluster's resources (nodes, pools,
//! IPAM blocks, local workload endpoints) to the host state this node should have (routes, VXLAN
//! neighbours, NAT sets). Reconcilers (netlink, nftables) and the datastore watch sit above it and
//! make no decisions of their own. [`bgp`] is the node's BGP configuration (peers, exports) and
//! `felis node status`, from the same facts. [`policy`] keeps the policy resources and programs this
//! node's workload endpoints' network policy through `felis-nft`. [`ipip`] runs IPIP pools
//! through the kernel's `tunl0` where the kernel has the `ipip` module, else through
//! `felis-ebpf`'s tc classifiers.

pub mod autodetect;
pub mod bgp;
pub mod calc;
pub mod dataplane;
pub mod fastpath;
pub mod ipip;
pub mod nat;
pub mod policy;
pub mod run;
pub mod sync;
