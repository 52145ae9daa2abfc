//! AWS support for Felis: the EC2 source/destination check and `felis aws check`.
//!
//! - [`srcdst`]: Calico's `awsSrcDstCheck` (IMDS → instance → device-index-0 interface →
//!   `ModifyNetworkInterfaceAttribute SourceDestCheck`).
//! - [`check`]: per peer node, are BGP (TCP 179), IPIP (protocol 4) and VXLAN (UDP 4789)
//!   allowed by security groups, are the source/destination checks off where pod traffic is
//!   unencapsulated, and do subnets match the pools' CrossSubnet modes.
//! - [`ec2`], [`imds`], [`sigv4`], [`model`]: a lean blocking EC2 Query API client (SigV4 by
//!   hand, `ureq` with rustls, `roxmltree`), instead of the 24-minute `aws-sdk-ec2` build.
//!
//! Layer: an adapter. Decisions ([`srcdst::plan`], [`check::evaluate`], [`sigv4::sign`], the
//! XML decoders) are pure; the shells ([`srcdst::apply`], [`check::run`]) do blocking I/O and
//! are meant to be called from a blocking thread. It does not do IPIP encapsulation.

pub mod check;
pub mod config;
pub mod ec2;
pub mod error;
pub mod imds;
pub mod model;
pub mod sigv4;
pub mod srcdst;

pub use config::AwsConfig;
pub use error::Error;
