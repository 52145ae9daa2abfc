//! The nftables policy dataplane: renders a host's compiled policy [`Program`] into table
//! `inet felis` and applies it incrementally.
//!
//! - [`render`] is pure: program + endpoint interfaces → [`Ruleset`] (named sets, chains,
//!   verdict-map elements keyed on device groups, each interface's group), and two rulesets →
//!   the nft script between them.
//! - [`link`] sets workload interfaces' device groups (rtnetlink), the key of the dispatch.
//! - [`PolicyDataplane`] keeps the installed ruleset in memory and sends each change as one
//!   atomic transaction; [`PolicyDataplane::resync`] replaces all of its objects at once.
//! - [`nft`] runs the `nft` tool: a process per transaction, or one long-lived `nft -i`.
//! - [`netlink`] is the hot path: deltas made of sets, set/map elements, endpoint chains and
//!   policy chains go to the kernel as one nfnetlink batch on a `NETLINK_NETFILTER` socket,
//!   without any process. [`PolicyDataplane::apply_delta`] builds that batch straight from a
//!   [`felis_policy::ProgramDelta`] (no whole-ruleset render or diff: the event-to-kernel
//!   path of one change); [`PolicyDataplane::apply`] diffs whole renderings
//!   ([`fast::delta_ops`] decides what goes by netlink).
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use felis_nft::PolicyDataplane;
//! # fn main() -> Result<(), felis_nft::Error> {
//! # let program = felis_policy::Program::default();
//! let interfaces = BTreeMap::from([("prod/web".to_string(), "cali1234".to_string())]);
//! let mut dataplane = PolicyDataplane::new();
//! let stats = dataplane.apply(&program, &interfaces)?; // the first apply is a full resync
//! assert!(stats.full);
//! # Ok(()) }
//! ```
//!
//! Forwarded traffic to and from workload interfaces (prefix `cali`) is filtered; traffic
//! between other interfaces is untouched unless the program has a host side
//! ([`felis_policy::program::HostProgram`]): then [`host`] renders host endpoints (input,
//! output, forward, pre-DNAT and raw hooks), failsafe ports and workload→host traffic.
//!
//! [`Program`]: felis_policy::Program

pub mod dataplane;
mod delta;
pub mod error;
pub mod fast;
pub mod host;
pub mod link;
pub mod netlink;
pub mod nft;
pub mod render;

pub use dataplane::PolicyDataplane;
pub use dataplane::Transport;
pub use error::Error;
pub use render::ApplyStats;
pub use render::Config;
pub use render::Ruleset;
