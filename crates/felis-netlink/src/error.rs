//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong talking to the kernel.
///
/// Kernel errors are kept as [`io::Error`] (the errno), so callers never see `rtnetlink` types.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening a netlink socket failed.
    #[error("failed to open a netlink socket in network namespace {netns}")]
    Connect {
        /// The namespace path (or `current`).
        netns: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Opening a network namespace file failed.
    #[error("failed to open network namespace {path}")]
    NetnsOpen {
        /// The namespace path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Creating a named network namespace failed.
    #[error("failed to create network namespace {name}")]
    NetnsCreate {
        /// The namespace name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Deleting a named network namespace failed.
    #[error("failed to delete network namespace {path}")]
    NetnsDelete {
        /// The namespace path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `setns(2)` into a namespace failed.
    #[error("failed to enter network namespace {netns}")]
    NetnsEnter {
        /// The namespace path (or a description).
        netns: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A helper thread could not be spawned.
    #[error("failed to spawn a helper thread for network namespace {netns}")]
    Thread {
        /// The namespace path (or a description).
        netns: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A tokio runtime could not be built.
    #[error("failed to start an async runtime for {purpose}")]
    Runtime {
        /// What it was for.
        purpose: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A name is not a valid interface or namespace name.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A MAC address did not parse.
    #[error("invalid MAC address {0:?}")]
    InvalidMac(String),
    /// A route could not be expressed as a netlink message.
    #[error("invalid route {dst}: {reason}")]
    InvalidRoute {
        /// Destination of the route.
        dst: String,
        /// Why.
        reason: String,
    },
    /// A link was not found.
    #[error("link {0} not found")]
    LinkNotFound(String),
    /// A netlink request failed.
    #[error("failed to {op} {object}")]
    Request {
        /// The operation, e.g. `add route`.
        op: &'static str,
        /// The key of the object, e.g. `10.0.0.1/32 dev cali1234`.
        object: String,
        /// The cause (errno from the kernel).
        #[source]
        source: io::Error,
    },
    /// Reading or writing a sysctl failed.
    #[error("failed to {op} sysctl {key}")]
    Sysctl {
        /// `read` or `write`.
        op: &'static str,
        /// The key, e.g. `net/ipv4/conf/cali1/proxy_arp`.
        key: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The errno of the kernel's answer, if this error carries one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Request { source, .. }
            | Error::Sysctl { source, .. }
            | Error::Connect { source, .. }
            | Error::NetnsOpen { source, .. }
            | Error::NetnsCreate { source, .. }
            | Error::NetnsDelete { source, .. }
            | Error::NetnsEnter { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the object is missing (`ENOENT`, `ESRCH`, `ENODEV`, or a link lookup miss).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::LinkNotFound(_))
            || matches!(
                self.errno(),
                Some(libc_errno::ENOENT | libc_errno::ESRCH | libc_errno::ENODEV)
            )
    }

    /// True when the object already exists (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc_errno::EEXIST)
    }

    /// True when the kernel lacks the feature (`EOPNOTSUPP`).
    pub fn is_not_supported(&self) -> bool {
        self.errno() == Some(libc_errno::EOPNOTSUPP)
    }
}

/// Errno values used for classification (Linux numbering).
pub(crate) mod libc_errno {
    pub(crate) const ENOENT: i32 = 2;
    pub(crate) const ESRCH: i32 = 3;
    pub(crate) const EEXIST: i32 = 17;
    pub(crate) const ENODEV: i32 = 19;
    pub(crate) const EOPNOTSUPP: i32 = 95;
}

/// Converts an `rtnetlink` error into an [`io::Error`], keeping the kernel's errno.
pub(crate) fn kernel(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// Shorthand for the crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
