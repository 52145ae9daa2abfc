//! The crate's error type and its one mapping to CNI error codes.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

/// Everything the plugin can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config's `cniVersion` is not one we speak.
    #[error("incompatible CNI version {version:?}")]
    IncompatibleVersion {
        /// The requested version.
        version: String,
    },
    /// A command that the requested version does not have (e.g. CHECK at 0.3.1).
    #[error("command {command} is not supported by CNI version {version}")]
    CommandNotInVersion {
        /// The command.
        command: &'static str,
        /// The config's version.
        version: String,
    },
    /// A field we do not support was set.
    #[error("unsupported field {field} in network configuration")]
    UnsupportedField {
        /// The field path.
        field: String,
    },
    /// The container's network namespace does not exist.
    #[error("container network namespace {netns} does not exist")]
    ContainerUnknown {
        /// `CNI_NETNS`.
        netns: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A required environment variable is missing.
    #[error("required environment variable {0} is missing")]
    MissingEnv(&'static str),
    /// An environment variable has an invalid value.
    #[error("environment variable {var} is invalid: {reason}")]
    InvalidEnv {
        /// The variable.
        var: &'static str,
        /// Why.
        reason: String,
    },
    /// An I/O failure (reading stdin, executing a plugin, ...).
    #[error("I/O failure while {action}")]
    Io {
        /// What we were doing.
        action: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// JSON that did not decode.
    #[error("failed to decode {what}")]
    Decode {
        /// What was being decoded (`network configuration`, `prevResult`, ...).
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The network configuration is syntactically fine but wrong.
    #[error("invalid network configuration: field {field}: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: String,
        /// Why.
        reason: String,
    },
    /// A transient condition; the runtime should retry.
    #[error("try again later: {reason}")]
    TryAgainLater {
        /// Why.
        reason: String,
    },
    /// STATUS: the plugin cannot currently serve ADD.
    #[error("plugin not available: {reason}")]
    NotAvailable {
        /// Why.
        reason: String,
    },
    /// A delegated plugin (IPAM) answered with a CNI error; its code is passed through.
    #[error("{plugin} plugin failed: {msg}")]
    Delegated {
        /// The plugin type, e.g. `host-local`.
        plugin: String,
        /// The plugin's error code.
        code: u32,
        /// Its message.
        msg: String,
        /// Its details.
        details: String,
    },
    /// A delegated plugin failed without a decodable CNI error.
    #[error("{plugin} plugin exited with {status}: {stderr}")]
    DelegatedCrashed {
        /// The plugin type.
        plugin: String,
        /// Exit status text.
        status: String,
        /// Its stderr (trimmed).
        stderr: String,
    },
    /// The delegated plugin could not be found on `CNI_PATH`.
    #[error("plugin {plugin} not found in CNI_PATH {path}")]
    PluginNotFound {
        /// The plugin type.
        plugin: String,
        /// `CNI_PATH`.
        path: String,
    },
    /// An in-process IPAM backend failed (plugged in by the binary).
    #[error("IPAM failed to {op} for handle {handle}: {reason}")]
    Ipam {
        /// `assign`, `release`, ...
        op: &'static str,
        /// The IPAM handle (`<network>.<container id>`).
        handle: String,
        /// Why.
        reason: String,
    },
    /// IPAM returned no address.
    #[error("IPAM returned no addresses for handle {handle}")]
    NoAddresses {
        /// The IPAM handle.
        handle: String,
    },
    /// A kernel operation failed.
    #[error("failed to {op}")]
    Netlink {
        /// What we tried, naming the object.
        op: String,
        /// The cause.
        #[source]
        source: felis_netlink::Error,
    },
    /// The workload's address is already routed to another interface.
    #[error("route to {dst} already exists via {existing}, not {wanted}")]
    RouteConflict {
        /// The workload address.
        dst: String,
        /// The interface currently owning it.
        existing: String,
        /// The interface we wanted.
        wanted: String,
    },
    /// The container interface name is taken in the container's namespace.
    #[error("interface {ifname} already exists in container network namespace {netns}")]
    InterfaceExists {
        /// The interface name.
        ifname: String,
        /// The namespace.
        netns: PathBuf,
    },
    /// CHECK found the dataplane differing from the expected state.
    #[error("check failed: {what}")]
    CheckFailed {
        /// What differs.
        what: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Netlink`].
    pub fn netlink(op: impl Into<String>) -> impl FnOnce(felis_netlink::Error) -> Error {
        let op = op.into();
        move |source| Error::Netlink { op, source }
    }
}

/// The CNI error codes of spec 1.0.0 §Error (0–99 reserved) and ours (≥ 100).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS (1.1.0): the plugin is not available.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// Ours: a kernel (netlink/sysctl) operation failed.
    pub const DATAPLANE: u32 = 100;
    /// Ours: CHECK found a difference.
    pub const CHECK_FAILED: u32 = 101;
    /// Ours: the address is already routed to another interface, or the name is taken.
    pub const CONFLICT: u32 = 102;
    /// Ours: IPAM failed or gave nothing.
    pub const IPAM: u32 = 103;
    /// Ours: anything else (the Go libraries' generic code).
    pub const INTERNAL: u32 = 999;
}

/// The error object a plugin prints on stdout: `{cniVersion, code, msg, details}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    /// The version of the config being answered.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// The cause chain, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// Sets the `cniVersion` to answer with.
    pub fn with_version(mut self, version: &str) -> CniError {
        self.cni_version = version.to_string();
        self
    }

    /// Renders the JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|_| {
            serde_json::json!({ "cniVersion": self.cni_version, "code": self.code, "msg": self.msg })
        })
    }
}

/// The one place errors become CNI codes.
impl From<&Error> for CniError {
    fn from(e: &Error) -> CniError {
        let code = match e {
            Error::IncompatibleVersion { .. } | Error::CommandNotInVersion { .. } => {
                code::INCOMPATIBLE_VERSION
            }
            Error::UnsupportedField { .. } => code::UNSUPPORTED_FIELD,
            Error::ContainerUnknown { .. } => code::UNKNOWN_CONTAINER,
            Error::MissingEnv(_) | Error::InvalidEnv { .. } => code::INVALID_ENVIRONMENT,
            Error::Io { .. } | Error::PluginNotFound { .. } => code::IO_FAILURE,
            Error::Decode { .. } => code::DECODING_FAILURE,
            Error::InvalidConfig { .. } => code::INVALID_NETWORK_CONFIG,
            Error::TryAgainLater { .. } => code::TRY_AGAIN_LATER,
            Error::NotAvailable { .. } => code::PLUGIN_NOT_AVAILABLE,
            Error::Delegated { code, .. } => *code,
            Error::DelegatedCrashed { .. } | Error::Ipam { .. } | Error::NoAddresses { .. } => {
                code::IPAM
            }
            Error::Netlink { .. } => code::DATAPLANE,
            Error::RouteConflict { .. } | Error::InterfaceExists { .. } => code::CONFLICT,
            Error::CheckFailed { .. } => code::CHECK_FAILED,
        };
        let (msg, details) = match e {
            // Pass a delegated plugin's own words through unchanged.
            Error::Delegated { msg, details, .. } => (msg.clone(), details.clone()),
            _ => (e.to_string(), source_chain(e)),
        };
        CniError {
            cni_version: String::new(),
            code,
            msg,
            details,
        }
    }
}

/// The causes of `e`, joined by `": "` (empty if none).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut next = e.source();
    while let Some(cause) = next {
        if !out.is_empty() {
            out.push_str(": ");
        }
        let _ = write!(out, "{cause}");
        next = cause.source();
    }
    out
}

/// Shorthand for the crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_codes_are_mapped_in_one_place() {
        let cases: Vec<(Error, u32)> = vec![
            (
                Error::IncompatibleVersion {
                    version: "0.2.0".into(),
                },
                1,
            ),
            (
                Error::UnsupportedField {
                    field: "ipam.ranges".into(),
                },
                2,
            ),
            (
                Error::ContainerUnknown {
                    netns: "/run/netns/x".into(),
                    source: io::Error::from_raw_os_error(2),
                },
                3,
            ),
            (Error::MissingEnv("CNI_IFNAME"), 4),
            (
                Error::Io {
                    action: "reading stdin".into(),
                    source: io::Error::other("x"),
                },
                5,
            ),
            (
                Error::Decode {
                    what: "network configuration".into(),
                    source: serde_json::from_str::<u8>("x").unwrap_err(),
                },
                6,
            ),
            (
                Error::InvalidConfig {
                    field: "name".into(),
                    reason: "empty".into(),
                },
                7,
            ),
            (
                Error::TryAgainLater {
                    reason: "datastore locked".into(),
                },
                11,
            ),
            (
                Error::NotAvailable {
                    reason: "no pools".into(),
                },
                50,
            ),
            (
                Error::CheckFailed {
                    what: "route".into(),
                },
                101,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(CniError::from(&error).code, code, "{error}");
        }
    }

    #[test]
    fn error_json_has_spec_shape_and_chain_in_details() {
        let e = Error::ContainerUnknown {
            netns: "/run/netns/gone".into(),
            source: io::Error::from_raw_os_error(2),
        };
        let json = CniError::from(&e).with_version("1.0.0").to_json();
        assert_eq!(json["cniVersion"], "1.0.0");
        assert_eq!(json["code"], 3);
        assert_eq!(
            json["msg"],
            "container network namespace /run/netns/gone does not exist"
        );
        assert!(json["details"].as_str().unwrap().contains("No such file"));
        // No details key when there is no cause.
        let json = CniError::from(&Error::MissingEnv("CNI_NETNS")).to_json();
        assert!(json.get("details").is_none());
    }

    #[test]
    fn delegated_errors_pass_through_code_and_message() {
        let e = Error::Delegated {
            plugin: "host-local".into(),
            code: 999,
            msg: "no IP addresses available".into(),
            details: String::new(),
        };
        let cni = CniError::from(&e);
        assert_eq!(
            (cni.code, cni.msg.as_str()),
            (999, "no IP addresses available")
        );
    }
}
