//! `projectcalico.org/v3` resources, defaulting, validation, YAML/JSON loading and the selector
//! language. The vocabulary of Felis: the bottom layer, pure, no I/O.
//!
//! - [`Resource`] holds one object of any [`Kind`]. [`Resource::from_value`] decodes a manifest
//!   strictly (an unknown field is an error, as with calicoctl), fills in Calico's defaults and
//!   validates; every error names the field path ([`ValidationError`]).
//!   [`Resource::to_value`] gives the manifest back with defaults filled in.
//! - [`load::parse_documents`] reads multi-document YAML or JSON, all or nothing, with the
//!   document and line of the first problem.
//! - [`key_for`] and [`Resource::key`] give Calico's etcd key layout.
//! - [`table`] has the columns `felis get` prints, as calicoctl.
//! - [`selector`] is Calico's selector language.
//!
//! What it does not do: talk to a datastore, decide policy verdicts, or allocate addresses.

pub mod bgp;
pub mod config;
pub mod duration;
pub mod endpoint;
mod error;
pub mod felix;
pub mod ipam;
pub mod k8s;
mod kind;
pub mod load;
mod meta;
pub mod net;
pub mod node;
pub mod policy;
mod resource;
pub mod rule;
pub mod selector;
pub mod table;
pub mod time;
pub mod validate;

pub use error::ValidationError;
pub use ipam::AllowedUse;
pub use ipam::AssignmentMode;
pub use ipam::EncapMode;
pub use ipam::IpPoolSpec;
pub use ipam::IpReservationSpec;
pub use ipam::IpamConfigurationSpec;
pub use kind::CALICO_API_VERSION;
pub use kind::K8S_CORE_API_VERSION;
pub use kind::K8S_NETWORKING_API_VERSION;
pub use kind::Kind;
pub use kind::key_for;
pub use meta::ObjectMeta;
pub use net::Asn;
pub use node::NodeSpec;
pub use policy::PolicyType;
pub use resource::BgpConfiguration;
pub use resource::BgpFilter;
pub use resource::BgpPeer;
pub use resource::ClusterInformation;
pub use resource::FelixConfiguration;
pub use resource::GlobalNetworkPolicy;
pub use resource::GlobalNetworkSet;
pub use resource::HostEndpoint;
pub use resource::IpPool;
pub use resource::IpReservation;
pub use resource::IpamConfiguration;
pub use resource::K8sNetworkPolicy;
pub use resource::KubeControllersConfiguration;
pub use resource::Namespace;
pub use resource::NetworkPolicy;
pub use resource::NetworkSet;
pub use resource::Node;
pub use resource::Profile;
pub use resource::Resource;
pub use resource::Tier;
pub use resource::WorkloadEndpoint;
pub use rule::Action;
pub use rule::EntityRule;
pub use rule::IcmpFields;
pub use rule::Port;
pub use rule::Protocol;
pub use rule::Rule;
