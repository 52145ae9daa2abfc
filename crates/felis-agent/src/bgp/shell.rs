//! The BGP shell: drives a [`felis_bgp::io::Speaker`] toward a [`BgpDesired`] by executing
//! [`plan`]'s commands, reads passwords, writes the status file. It makes no decisions.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::SystemTime;

use felis_bgp::io::Password;
use felis_bgp::io::Speaker;
use felis_bgp::rib::RibChange;
use ipnet::IpNet;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::warn;

use super::BgpDesired;
use super::SecretRef;
use super::SpeakerCommand;
use super::StatusReport;
use super::plan;

/// Where BGP passwords are read from by default: `<dir>/<secret name>/<key>`.
pub const DEFAULT_SECRETS_DIR: &str = "/etc/felis/secrets";

/// What went wrong applying one command; the others were still applied.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The speaker could not start (e.g. the listen port is taken).
    #[error("failed to start the BGP speaker")]
    Start(#[source] felis_bgp::Error),
    /// A peer could not be added.
    #[error("failed to add BGP peer {address}")]
    AddPeer {
        /// The peer.
        address: IpAddr,
        /// The cause.
        #[source]
        source: felis_bgp::Error,
    },
    /// A peer's password could not be read.
    #[error("failed to read the password of BGP peer {address} from {}", path.display())]
    Password {
        /// The peer.
        address: IpAddr,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A peer could not be removed.
    #[error("failed to remove BGP peer {address}")]
    RemovePeer {
        /// The peer.
        address: IpAddr,
        /// The cause.
        #[source]
        source: felis_bgp::Error,
    },
    /// A peer's filters could not be replaced.
    #[error("failed to replace the filters of BGP peer {address}")]
    SetPolicy {
        /// The peer.
        address: IpAddr,
        /// The cause.
        #[source]
        source: felis_bgp::Error,
    },
    /// A prefix could not be announced or withdrawn.
    #[error("failed to announce or withdraw {prefix}")]
    Export {
        /// The prefix.
        prefix: IpNet,
        /// The cause.
        #[source]
        source: felis_bgp::Error,
    },
    /// The status file could not be written.
    #[error("failed to write the status file {}", path.display())]
    StatusFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What one [`BgpRunner::reconcile`] did that the caller must act on.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// The previous speaker stopped: apply `Update::LearnedRoutesCleared` to the graph.
    pub stopped: bool,
    /// A new speaker started: feed its changes through [`super::learned_update`] into the
    /// graph.
    pub changes: Option<UnboundedReceiver<RibChange>>,
    /// Commands that failed; they are retried by the next reconcile.
    pub errors: Vec<ShellError>,
}

/// Owns the speaker and what it was last configured with.
#[derive(Debug)]
pub struct BgpRunner {
    secrets_dir: PathBuf,
    speaker: Option<Speaker>,
    applied: Option<BgpDesired>,
}

impl BgpRunner {
    /// A runner with no speaker yet, reading passwords under `secrets_dir`.
    pub fn new(secrets_dir: impl Into<PathBuf>) -> BgpRunner {
        BgpRunner {
            secrets_dir: secrets_dir.into(),
            speaker: None,
            applied: None,
        }
    }

    /// The running speaker, if any.
    pub fn speaker(&self) -> Option<&Speaker> {
        self.speaker.as_ref()
    }

    /// Applies the difference between what the speaker has and `desired` (call after every
    /// batch of graph updates with `graph.bgp_desired()`, and on the resync timer). What
    /// failed is not recorded as applied, so the next call retries it.
    pub async fn reconcile(&mut self, desired: Option<&BgpDesired>) -> Reconciled {
        let mut out = Reconciled::default();
        let commands = plan(self.applied.as_ref(), desired);
        let mut applied = self.applied.take();
        for command in commands {
            match command {
                SpeakerCommand::Stop => {
                    if let Some(speaker) = self.speaker.take() {
                        // A speaker that already ended has nothing left to stop.
                        let _ = speaker.shutdown().await;
                    }
                    applied = None;
                    out.stopped = true;
                }
                SpeakerCommand::Start(config) => match Speaker::start(config).await {
                    Ok((speaker, changes)) => {
                        self.speaker = Some(speaker);
                        out.changes = Some(changes);
                        applied = desired.map(|d| BgpDesired {
                            peers: Default::default(),
                            exports: Default::default(),
                            problems: Vec::new(),
                            ..d.clone()
                        });
                    }
                    Err(e) => {
                        out.errors.push(ShellError::Start(e));
                        break;
                    }
                },
                SpeakerCommand::AddPeer {
                    mut config,
                    password,
                } => {
                    let address = config.address;
                    let (Some(speaker), Some(applied), Some(desired)) =
                        (&self.speaker, applied.as_mut(), desired)
                    else {
                        continue;
                    };
                    match password.map(|r| read_password(&self.secrets_dir, &r)) {
                        Some(Err(source)) => {
                            out.errors.push(ShellError::Password {
                                address,
                                path: password_path(&self.secrets_dir, &source.0),
                                source: source.1,
                            });
                            continue;
                        }
                        Some(Ok(password)) => config.password = password,
                        None => {}
                    }
                    match speaker.add_peer(config).await {
                        Ok(()) => {
                            if let Some(peer) = desired.peers.get(&address) {
                                applied.peers.insert(address, peer.clone());
                            }
                        }
                        Err(source) => out.errors.push(ShellError::AddPeer { address, source }),
                    }
                }
                SpeakerCommand::RemovePeer(address) => {
                    let (Some(speaker), Some(applied)) = (&self.speaker, applied.as_mut()) else {
                        continue;
                    };
                    match speaker.remove_peer(address).await {
                        Ok(()) => {
                            applied.peers.remove(&address);
                        }
                        Err(source) => out.errors.push(ShellError::RemovePeer { address, source }),
                    }
                }
                SpeakerCommand::SetPeerPolicy { address, policy } => {
                    let (Some(speaker), Some(applied), Some(desired)) =
                        (&self.speaker, applied.as_mut(), desired)
                    else {
                        continue;
                    };
                    match speaker.set_peer_policy(address, policy).await {
                        Ok(()) => {
                            if let Some(peer) = desired.peers.get(&address) {
                                applied.peers.insert(address, peer.clone());
                            }
                        }
                        Err(source) => out.errors.push(ShellError::SetPolicy { address, source }),
                    }
                }
                SpeakerCommand::Originate { prefix, next_hop } => {
                    let (Some(speaker), Some(applied), Some(desired)) =
                        (&self.speaker, applied.as_mut(), desired)
                    else {
                        continue;
                    };
                    let attributes = desired
                        .exports
                        .get(&prefix)
                        .map(|e| super::path_attributes(&e.communities))
                        .unwrap_or_default();
                    match speaker.originate_with(prefix, Some(next_hop), attributes) {
                        Ok(()) => {
                            if let Some(export) = desired.exports.get(&prefix) {
                                applied.exports.insert(prefix, export.clone());
                            }
                        }
                        Err(source) => out.errors.push(ShellError::Export { prefix, source }),
                    }
                }
                SpeakerCommand::Withdraw(prefix) => {
                    let (Some(speaker), Some(applied)) = (&self.speaker, applied.as_mut()) else {
                        continue;
                    };
                    match speaker.withdraw(prefix) {
                        Ok(()) => {
                            applied.exports.remove(&prefix);
                        }
                        Err(source) => out.errors.push(ShellError::Export { prefix, source }),
                    }
                }
            }
        }
        if let (Some(applied), Some(desired)) = (applied.as_mut(), desired) {
            for problem in &desired.problems {
                if !applied.problems.contains(problem) {
                    warn!(%problem, "BGP configuration not used as written");
                }
            }
            applied.problems.clone_from(&desired.problems);
        }
        self.applied = applied;
        out
    }

    /// The status report of the running speaker as of `now` (no peers when BGP is off).
    pub async fn status(&self, now: SystemTime) -> StatusReport {
        let statuses = match &self.speaker {
            Some(speaker) => speaker.peer_status().await.unwrap_or_default(),
            None => Vec::new(),
        };
        let kinds = self
            .applied
            .as_ref()
            .map(BgpDesired::peer_kinds)
            .unwrap_or_default();
        StatusReport::new(&statuses, &kinds, now)
    }
}

/// Writes `report` to `path` atomically (a temporary file renamed over it), for
/// `felis node status` to read with [`StatusReport::from_status_file`].
pub fn write_status_file(path: &Path, report: &StatusReport) -> Result<(), ShellError> {
    let error = |source| ShellError::StatusFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    let json = serde_json::to_vec_pretty(report).map_err(|e| error(std::io::Error::other(e)))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(error)?;
    file.write_all(&json).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&tmp, path).map_err(error)
}

fn password_path(dir: &Path, secret: &SecretRef) -> PathBuf {
    dir.join(&secret.name).join(&secret.key)
}

/// The password of `secret`: the file's contents without one trailing newline; `None` when an
/// optional secret is missing.
fn read_password(
    dir: &Path,
    secret: &SecretRef,
) -> Result<Option<Password>, (SecretRef, std::io::Error)> {
    match std::fs::read_to_string(password_path(dir, secret)) {
        Ok(text) => {
            let text = text.strip_suffix('\n').unwrap_or(&text);
            Ok(Some(Password(text.to_string())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && secret.optional => Ok(None),
        Err(e) => Err((secret.clone(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_come_from_secret_files_and_optional_ones_may_be_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bgp")).unwrap();
        std::fs::write(dir.path().join("bgp/tor"), "s3cret\n").unwrap();
        let secret = |key: &str, optional| SecretRef {
            name: "bgp".into(),
            key: key.into(),
            optional,
        };
        assert_eq!(
            read_password(dir.path(), &secret("tor", false)).unwrap(),
            Some(Password("s3cret".into()))
        );
        assert_eq!(
            read_password(dir.path(), &secret("gone", true)).unwrap(),
            None
        );
        assert!(read_password(dir.path(), &secret("gone", false)).is_err());
    }

    #[test]
    fn the_status_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/status.json");
        let report = StatusReport::not_running(SystemTime::UNIX_EPOCH);
        write_status_file(&path, &report).unwrap();
        let read = std::fs::read(&path).unwrap();
        assert_eq!(
            serde_json::from_slice::<StatusReport>(&read).unwrap(),
            report
        );
        assert!(!path.with_extension("json.tmp").exists());
    }
}
