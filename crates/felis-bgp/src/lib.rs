//! BGP-4 speaker: wire codec, session FSM, RIBs, route reflection, graceful restart.
//!
//! Layers, bottom up:
//!
//! ```text
//!  packet/   codec: bytes <-> Message (OPEN, UPDATE, NOTIFICATION, KEEPALIVE, ROUTE-REFRESH)
//!  session   pure RFC 4271 §8 FSM: handle(now, Event, &mut Vec<Action>)
//!  rib       Adj-RIB-In / Loc-RIB / Adj-RIB-Out, best path (§9.1), RR (RFC 4456), GR stale
//!  policy    per-peer import/export filters (Calico's BGPFilter), applied by the RIB
//!  io/       tokio shell: listener, one task per peer, timers, the Speaker handle
//! ```
//!
//! Everything but `io/` is pure: no clock, no sockets. The crate knows nothing of the kernel:
//! the [`io::Speaker`] hands best routes learned from peers to its user as [`rib::RibChange`]s
//! on a channel; the user decides how to program them.

pub mod error;
pub mod io;
pub mod packet;
pub mod policy;
pub mod rib;
pub mod session;

pub use error::DecodeError;
pub use error::EncodeError;
pub use error::Error;
pub use packet::Asn;
pub use packet::Family;
pub use packet::Message;
