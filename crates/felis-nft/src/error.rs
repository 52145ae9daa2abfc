//! The crate's error type.

/// Failure to program nftables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `nft` could not be started.
    #[error("failed to start nft")]
    Spawn(#[source] std::io::Error),
    /// Talking to the `nft` process failed.
    #[error("failed to talk to nft")]
    Pipe(#[source] std::io::Error),
    /// `nft` refused a transaction (its message names the line and object).
    #[error("nft refused the transaction: {0}")]
    Refused(String),
    /// The netlink socket failed (open, send or receive).
    #[error("netlink socket to nftables failed")]
    Netlink(#[source] std::io::Error),
    /// Listing table `inet felis` failed.
    #[error("failed to list table inet felis: {0}")]
    List(String),
}
