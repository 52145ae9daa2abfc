//! eBPF pieces of the Felis dataplane, for kernels that lack a module Felis would otherwise use.
//!
//! Today that is IPIP: [`IpipTc`] is an IP-in-IP encapsulation/decapsulation on tc (`clsact`
//! egress and ingress classifiers on the host interface), wire-compatible with the kernel's
//! `ipip` device (`tunl0`): a 20-byte outer IPv4 header, protocol 4, no options, outer source
//! this host's address, outer destination the remote node's address. Hosts running it
//! interoperate with hosts using a real `tunl0`.
//!
//! ```text
//!  pod ─► route <block> via <next hop> dev eth0 onlink mtu <host - 20>
//!            │
//!            ▼ tc egress on eth0: inner dst ∈ tunnels (LPM) ─► + outer IPv4 (proto 4) ─► wire
//!  wire ─► tc ingress on eth0: proto 4, dst = local, src ∈ peers ─► − outer ─► stack ─► pod
//! ```
//!
//! Layer: an adapter (it talks to the kernel through `aya`); it decides nothing about which
//! prefixes to tunnel: the agent's calculation graph does. The C source is `bpf/ipip.c`,
//! compiled by `build.rs` with clang; a build without clang yields a crate whose programs
//! report [`Error::Unavailable`].
//!
//! And a routed fast path: [`FastPath`] (tc classifiers on workload veths and the uplink)
//! forwards established TCP flows between workloads without the host's IP forwarding path,
//! once a packet of each direction has been accepted by the stack and its nftables policy.
//!
//! Everything acts on the calling thread's network namespace.

mod fastpath;
mod tc;

pub use fastpath::Device;
pub use fastpath::FAST_PRIORITY;
pub use fastpath::FORWARD_PROGRAM;
pub use fastpath::FastPath;
pub use fastpath::FastPathStats;
pub use fastpath::RECORD_PROGRAM;
pub use fastpath::detach_fast_path;

pub use tc::EGRESS_PROGRAM;
pub use tc::Error;
pub use tc::INGRESS_PROGRAM;
pub use tc::IpipStats;
pub use tc::IpipTc;
pub use tc::TC_PRIORITY;
pub use tc::is_built;
