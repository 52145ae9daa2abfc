//! CNI plugin (spec 1.0.0; 0.3.0/0.3.1/0.4.0 configs; STATUS and GC of 1.1.0).
//!
//! Layer: the plugin's logic and its kernel dataplane. The protocol half is pure and unit
//! tested: [`env`](mod@env) (the `CNI_*` variables), [`config`] (stdin), [`result`] (results of every
//! version), [`error`] (the error JSON and the one code mapping), [`version`], [`naming`]
//! (Calico's `cali…` names). The dataplane half ([`dataplane`]) builds Calico's veth, addresses,
//! routes and sysctls through `felis-netlink`, and is tested in throwaway namespaces.
//!
//! Not here: IP allocation and the WorkloadEndpoint. [`plugin::run`] takes an
//! [`ipam::IpamClient`]; [`ipam::DelegatedIpam`] executes an IPAM plugin from `CNI_PATH` (e.g.
//! `host-local`), and the binary plugs `felis-ipam` in through the same trait.

pub mod config;
pub mod dataplane;
pub mod env;
pub mod error;
pub mod ipam;
pub mod naming;
pub mod plugin;
pub mod result;
pub mod version;

pub use crate::config::NetworkConfig;
pub use crate::env::CniArgs;
pub use crate::env::CniEnv;
pub use crate::env::Command;
pub use crate::error::CniError;
pub use crate::error::Error;
pub use crate::error::Result;
pub use crate::ipam::DelegatedIpam;
pub use crate::ipam::IpamClient;
pub use crate::ipam::IpamRequest;
pub use crate::plugin::Outcome;
pub use crate::plugin::PluginOptions;
pub use crate::plugin::run;
pub use crate::plugin::run_ipam;
pub use crate::plugin::run_ipam_process;
pub use crate::plugin::run_process;
pub use crate::result::CniResult;
pub use crate::version::CniVersion;
