//! Links, addresses, routes, neighbours, sysctls and network namespaces over rtnetlink.
//!
//! Layer: kernel adapter. This crate executes; it makes no decisions (which routes a host should
//! have is decided by the agent's pure core). It wraps `rtnetlink` 0.24 / `netlink-packet-route`
//! 0.34 behind its own types ([`Link`], [`Route`], [`MacAddr`], ...) so a version bump touches
//! only this crate.
//!
//! ```text
//!   caller (tokio task)                 throwaway OS thread
//!   ───────────────────                 ───────────────────
//!   Handle::in_netns(path) ──spawn──▶   setns(path) ; socket() ; register with runtime
//!          ◀── connection + handle ───   (thread ends; the socket stays in that netns)
//!   handle.add_route(..).await          (requests run on the caller's runtime)
//!   handle.write_sysctls(..) ──spawn──▶ setns(path) ; write /proc/sys/... (per-thread view)
//! ```
//!
//! The [`Netlink`] trait names the operations a reconciler uses; [`Handle`] implements it and
//! [`RecordingNetlink`] is an in-memory fake that records every change (tests without root).
//!
//! [`RouteWriter`] is the bulk path for routes: thousands of changes per `sendmsg`, a result per
//! change, and streamed dumps (BGP-learned routes by the hundred thousand).
//!
//! The API is async. Short-lived synchronous callers (the CNI plugin) wrap a whole session in
//! [`block_on`]; a [`Handle`] must stay on the runtime that created it.
//!
//! Namespaces: [`Netns`] opens, creates (`/run/netns/<name>`, like `ip netns add`) and deletes
//! them and runs closures inside them, always on a throwaway thread: `setns(2)` is never called
//! on a thread the caller owns.

mod batch;
mod error;
mod fake;
mod handle;
mod netns;
mod probe;
pub mod sysctl;
mod types;

pub use crate::batch::RouteOp;
pub use crate::batch::RouteOpFailure;
pub use crate::batch::RouteWriter;
pub use crate::batch::WriteReport;
pub use crate::error::Error;
pub use crate::error::Result;
pub use crate::fake::Call;
pub use crate::fake::Netlink;
pub use crate::fake::RecordingNetlink;
pub use crate::handle::Handle;
pub use crate::netns::NETNS_RUN_DIR;
pub use crate::netns::Netns;
pub use crate::netns::delete_path as delete_netns_path;
pub use crate::netns::list_named as list_named_netns;
pub use crate::netns::run_in;
pub use crate::netns::run_in_new_netns;
pub use crate::probe::supports_link_kind;
pub use crate::types::Address;
pub use crate::types::FdbEntry;
pub use crate::types::Ifindex;
pub use crate::types::Link;
pub use crate::types::MacAddr;
pub use crate::types::Neighbour;
pub use crate::types::Route;
pub use crate::types::RouteFilter;
pub use crate::types::RouteKind;
pub use crate::types::RouteProtocol;
pub use crate::types::RouteScope;
pub use crate::types::TABLE_LOCAL;
pub use crate::types::TABLE_MAIN;
pub use crate::types::VethPair;
pub use crate::types::Vxlan;
pub use crate::types::validate_ifname;

/// Runs `future` to completion on a fresh current-thread tokio runtime (for synchronous callers
/// such as the CNI plugin). Create and use [`Handle`]s inside the one future.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Runtime {
            purpose: "block_on",
            source,
        })?;
    Ok(runtime.block_on(future))
}
