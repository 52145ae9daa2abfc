//! The tokio shell: listener, one task per peer driving its [`Session`], and a core task that
//! owns the [`Rib`]. The only code in the crate with sockets and timers.
//!
//! ```text
//!   Speaker (handle) ──Command──▶ core task (Rib) ──RibChange──▶ user
//!                                   ▲      │ PeerCommand::Send(UPDATEs)
//!                         CoreEvent │      ▼
//!   listener ──TcpStream──▶ core ──▶ peer task (Session FSM, timers, TCP writer)
//!                                        ▲ frames
//!                                   reader task (TCP reader, framing)
//! ```
//!
//! The shell makes no decisions: the FSM decides what to send and when, the RIB decides what
//! to learn and advertise.
//!
//! ```no_run
//! # async fn demo() -> Result<(), felis_bgp::Error> {
//! use felis_bgp::Asn;
//! use felis_bgp::io::{PeerConfig, Speaker, SpeakerConfig};
//!
//! let config = SpeakerConfig::new(Asn(64512), "10.0.0.1".parse().unwrap());
//! let (speaker, mut changes) = Speaker::start(config).await?;
//! let mut peer = PeerConfig::new("10.0.0.2".parse().unwrap(), Asn(64512));
//! peer.passive = true; // Calico: passive toward a peer whose IP is greater as a string
//! speaker.add_peer(peer).await?;
//! speaker.originate("10.65.0.0/26".parse().unwrap(), None)?;
//! while let Some(change) = changes.recv().await {
//!     println!("{:?} {} via {:?}", change.kind, change.prefix, change.next_hop);
//! }
//! # Ok(())
//! # }
//! ```

mod md5;
mod peer;
mod ttl;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tracing::debug;
use tracing::info;
use tracing::warn;

use crate::error::Error;
use crate::packet::Asn;
use crate::packet::Family;
use crate::packet::update::PathAttributes;
use crate::packet::update::Update;
use crate::policy::PeerPolicy;
use crate::rib::NextHopMode;
use crate::rib::PeerCounters;
use crate::rib::PeerId;
use crate::rib::PeerUp;
use crate::rib::Rib;
use crate::rib::RibChange;
use crate::rib::RibConfig;
use crate::rib::RibOutput;
use crate::rib::RibPeerConfig;
use crate::session::DEFAULT_CONNECT_DELAY;
use crate::session::DEFAULT_CONNECT_RETRY;
use crate::session::DEFAULT_HOLD_TIME;
use crate::session::DEFAULT_RESTART_TIME;
use crate::session::Negotiated;
use crate::session::Session;
use crate::session::SessionConfig;
use crate::session::SessionDown;
use crate::session::State;

/// The standard BGP port.
pub const BGP_PORT: u16 = 179;

/// Speaker-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakerConfig {
    /// Our ASN.
    pub local_asn: Asn,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Where to accept connections; `None` accepts none (every peer must be active).
    pub listen: Option<SocketAddr>,
    /// Act as a route reflector with this cluster id.
    pub cluster_id: Option<Ipv4Addr>,
}

impl SpeakerConfig {
    /// Listens on `[::]:179` (dual stack).
    pub fn new(local_asn: Asn, router_id: Ipv4Addr) -> Self {
        SpeakerConfig {
            local_asn,
            router_id,
            listen: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), BGP_PORT)),
            cluster_id: None,
        }
    }
}

/// One configured peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConfig {
    /// The peer's address.
    pub address: IpAddr,
    /// The peer's TCP port for our outgoing connections.
    pub port: u16,
    /// The peer's ASN.
    pub asn: Asn,
    /// Only accept connections; never connect.
    pub passive: bool,
    /// Hold time we propose.
    pub hold_time: u16,
    /// Delay before the first connection attempt.
    pub connect_delay: Duration,
    /// Interval between attempts and the wait after an error.
    pub connect_retry: Duration,
    /// Families to negotiate.
    pub families: Vec<Family>,
    /// Graceful restart time to advertise; `None` omits the capability.
    pub graceful_restart: Option<u16>,
    /// Advertise that our forwarding state survives a restart of ours (the graceful restart
    /// F bit). True by default: the routes this node's workloads need are in the kernel and
    /// stay there when the speaker dies, so a peer keeps our routes (stale) until the new
    /// speaker's End-of-RIB rather than flushing them when the new session comes up.
    #[serde(default = "default_true")]
    pub forwarding_preserved: bool,
    /// Longest we keep a restarting peer's routes (Calico's `maxRestartTime`).
    pub max_restart_time: u16,
    /// The peer is a route-reflector client.
    pub rr_client: bool,
    /// Next-hop rule for routes we send.
    pub next_hop_mode: NextHopMode,
    /// Next hop to send for IPv4 routes instead of the session's local address.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Next hop to send for IPv6 routes instead of the session's local address.
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Source address for outgoing connections.
    pub local_address: Option<IpAddr>,
    /// TCP-MD5 password (RFC 2385). Never logged or serialised.
    #[serde(skip_serializing)]
    pub password: Option<Password>,
    /// TTL security (GTSM, RFC 5082): the peer is at most this many hops away; we send with
    /// TTL 255 and drop its packets that arrive with less than `256 - hops`. `None`: the
    /// default TTL, no check.
    #[serde(default)]
    pub ttl_security: Option<u8>,
    /// Import and export filters. Change them on a live session with
    /// [`Speaker::set_peer_policy`]; the session stays up.
    #[serde(default)]
    pub policy: PeerPolicy,
}

/// Serde default of [`PeerConfig::forwarding_preserved`] (configs saved before it existed).
fn default_true() -> bool {
    true
}

/// A TCP-MD5 password; its `Debug` output is redacted so it never reaches a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl PeerConfig {
    /// A peer with Calico/BIRD defaults (hold 90 s, connect delay 2 s, retry 5 s, IPv4 and
    /// IPv6 unicast, graceful restart 120 s).
    pub fn new(address: IpAddr, asn: Asn) -> Self {
        PeerConfig {
            address,
            port: BGP_PORT,
            asn,
            passive: false,
            hold_time: DEFAULT_HOLD_TIME,
            connect_delay: DEFAULT_CONNECT_DELAY,
            connect_retry: DEFAULT_CONNECT_RETRY,
            families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
            graceful_restart: Some(DEFAULT_RESTART_TIME),
            forwarding_preserved: true,
            max_restart_time: DEFAULT_RESTART_TIME,
            rr_client: false,
            next_hop_mode: NextHopMode::Auto,
            next_hop_v4: None,
            next_hop_v6: None,
            local_address: None,
            password: None,
            ttl_security: None,
            policy: PeerPolicy::default(),
        }
    }

    fn session_config(&self, speaker: &SpeakerConfig) -> SessionConfig {
        SessionConfig {
            local_asn: speaker.local_asn,
            peer_asn: self.asn,
            router_id: speaker.router_id,
            hold_time: self.hold_time,
            connect_delay: self.connect_delay,
            connect_retry: self.connect_retry,
            passive: self.passive,
            families: self.families.clone(),
            graceful_restart: self.graceful_restart,
            forwarding_preserved: self.forwarding_preserved,
        }
    }

    fn rib_config(&self) -> RibPeerConfig {
        RibPeerConfig {
            address: self.address,
            asn: self.asn,
            rr_client: self.rr_client,
            next_hop_mode: self.next_hop_mode,
            next_hop_v4: self.next_hop_v4,
            next_hop_v6: self.next_hop_v6,
            policy: self.policy.clone(),
        }
    }
}

/// What `felis node status` shows for one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's address.
    pub address: IpAddr,
    /// The peer's ASN.
    pub asn: Asn,
    /// FSM state.
    pub state: State,
    /// When the state was entered.
    pub since: SystemTime,
    /// The last error (NOTIFICATION sent or received, or connection failure).
    pub last_error: Option<String>,
    /// The peer's BGP identifier once known.
    pub router_id: Option<Ipv4Addr>,
    /// Prefix counters.
    pub counters: PeerCounters,
}

/// Session-side status a peer task keeps up to date.
#[derive(Debug, Clone)]
struct SessionStatus {
    state: State,
    since: SystemTime,
    last_error: Option<String>,
    router_id: Option<Ipv4Addr>,
}

type SharedStatus = Arc<Mutex<SessionStatus>>;

/// Commands from the [`Speaker`] handle to the core task.
enum Command {
    AddPeer(Box<PeerConfig>, oneshot::Sender<Result<(), Error>>),
    RemovePeer(IpAddr, oneshot::Sender<Result<(), Error>>),
    SetPolicy(IpAddr, Box<PeerPolicy>, oneshot::Sender<Result<(), Error>>),
    Originate(IpNet, Option<IpAddr>, Box<PathAttributes>),
    Withdraw(IpNet),
    Status(oneshot::Sender<Vec<PeerStatus>>),
    Shutdown(oneshot::Sender<()>),
}

/// Events from peer tasks and the listener to the core task.
#[derive(Debug)]
enum CoreEvent {
    Established {
        peer: PeerId,
        negotiated: Negotiated,
        local_address: IpAddr,
    },
    Update {
        peer: PeerId,
        update: Update,
    },
    Down {
        peer: PeerId,
        down: SessionDown,
    },
    RouteRefresh {
        peer: PeerId,
        family: Family,
    },
    RestartExpired {
        peer: PeerId,
        generation: u64,
    },
    Accepted {
        stream: TcpStream,
        remote: SocketAddr,
    },
}

/// Commands from the core task to a peer task.
#[derive(Debug)]
enum PeerCommand {
    Incoming(TcpStream),
    Send(Vec<Update>),
    Stop,
}

/// A running BGP speaker. Cheap to clone; every clone talks to the same speaker.
#[derive(Debug, Clone)]
pub struct Speaker {
    commands: mpsc::UnboundedSender<Command>,
    local_addr: Option<SocketAddr>,
}

/// Linux's `EAFNOSUPPORT`: the kernel does not support the address family (IPv6 disabled).
const EAFNOSUPPORT: i32 = 97;

impl Speaker {
    /// Binds the listener (if configured) and starts the speaker. Best routes learned from
    /// peers arrive on the returned channel.
    pub async fn start(
        config: SpeakerConfig,
    ) -> Result<(Speaker, mpsc::UnboundedReceiver<RibChange>), Error> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut local_addr = None;
        let mut shared_listener = None;
        let mut accept_task = None;
        if let Some(addr) = config.listen {
            let listener = match TcpListener::bind(addr).await {
                Ok(listener) => listener,
                // A kernel without IPv6 (ipv6.disable=1) cannot open `[::]`: IPv4 only.
                Err(e)
                    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                        && e.raw_os_error() == Some(EAFNOSUPPORT) =>
                {
                    let v4 =
                        SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), addr.port());
                    warn!(%addr, fallback = %v4, "no IPv6 in this kernel; listening on IPv4 only");
                    TcpListener::bind(v4)
                        .await
                        .map_err(|source| Error::Listen { addr: v4, source })?
                }
                Err(source) => return Err(Error::Listen { addr, source }),
            };
            local_addr = listener.local_addr().ok();
            info!(%addr, "BGP listening");
            let listener = Arc::new(listener);
            shared_listener = Some(listener.clone());
            accept_task = Some(tokio::spawn(accept_loop(listener, events_tx.clone())));
        }
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let core = Core {
            rib: Rib::new(RibConfig {
                local_asn: config.local_asn,
                router_id: config.router_id,
                cluster_id: config.cluster_id,
            }),
            config,
            listener: shared_listener,
            accept_task,
            peers: BTreeMap::new(),
            by_id: BTreeMap::new(),
            events_tx,
            changes: changes_tx,
        };
        tokio::spawn(core.run(commands_rx, events_rx));
        Ok((
            Speaker {
                commands,
                local_addr,
            },
            changes_rx,
        ))
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Adds a peer and starts its session.
    pub async fn add_peer(&self, peer: PeerConfig) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::AddPeer(Box::new(peer), tx))?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Stops a peer's session (Cease) and forgets its routes.
    pub async fn remove_peer(&self, address: IpAddr) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::RemovePeer(address, tx))?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Replaces a peer's import and export policy without resetting its session: routes the
    /// new export policy stops are withdrawn from the peer and routes it lets through are
    /// announced; the peer's routes are imported again under the new import policy (the
    /// speaker keeps the ones a policy rejected, so no ROUTE-REFRESH is needed).
    pub async fn set_peer_policy(&self, address: IpAddr, policy: PeerPolicy) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::SetPolicy(address, Box::new(policy), tx))?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Announces a prefix of ours; `next_hop` `None` means our address toward each peer.
    pub fn originate(&self, prefix: IpNet, next_hop: Option<IpAddr>) -> Result<(), Error> {
        self.originate_with(prefix, next_hop, PathAttributes::default())
    }

    /// [`Speaker::originate`] with attributes of its own, such as COMMUNITIES (RFC 1997) or a
    /// LARGE_COMMUNITY (RFC 8092) in `other`; ORIGIN, AS_PATH and NEXT_HOP are the speaker's.
    /// Originating a prefix again replaces its attributes.
    pub fn originate_with(
        &self,
        prefix: IpNet,
        next_hop: Option<IpAddr>,
        attributes: PathAttributes,
    ) -> Result<(), Error> {
        self.send(Command::Originate(prefix, next_hop, Box::new(attributes)))
    }

    /// Withdraws a prefix announced with [`Speaker::originate`].
    pub fn withdraw(&self, prefix: IpNet) -> Result<(), Error> {
        self.send(Command::Withdraw(prefix))
    }

    /// State and counters of every peer, sorted by address.
    pub async fn peer_status(&self) -> Result<Vec<PeerStatus>, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx))?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    /// Stops every session (Cease) and the speaker.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Shutdown(tx))?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).map_err(|_| Error::Shutdown)
    }
}

async fn accept_loop(listener: Arc<TcpListener>, events: mpsc::UnboundedSender<CoreEvent>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                if events.send(CoreEvent::Accepted { stream, remote }).is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

struct PeerHandle {
    id: PeerId,
    config: PeerConfig,
    commands: mpsc::UnboundedSender<PeerCommand>,
    status: SharedStatus,
    restart_generation: u64,
}

struct Core {
    config: SpeakerConfig,
    listener: Option<Arc<TcpListener>>,
    accept_task: Option<tokio::task::JoinHandle<()>>,
    rib: Rib,
    peers: BTreeMap<IpAddr, PeerHandle>,
    by_id: BTreeMap<PeerId, IpAddr>,
    events_tx: mpsc::UnboundedSender<CoreEvent>,
    changes: mpsc::UnboundedSender<RibChange>,
}

impl Core {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<CoreEvent>,
    ) {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        self.shutdown();
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.command(command),
                    None => {
                        self.shutdown();
                        return;
                    }
                },
                Some(event) = events.recv() => self.event(event),
            }
        }
    }

    fn shutdown(&mut self) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
        self.listener = None;
        for peer in self.peers.values() {
            let _ = peer.commands.send(PeerCommand::Stop);
        }
        self.peers.clear();
    }

    fn command(&mut self, command: Command) {
        let mut out = RibOutput::default();
        match command {
            Command::AddPeer(config, reply) => {
                let _ = reply.send(self.add_peer(*config));
            }
            Command::RemovePeer(address, reply) => {
                let result = match self.peers.remove(&address) {
                    Some(peer) => {
                        let _ = peer.commands.send(PeerCommand::Stop);
                        if let (Some(listener), Some(_)) = (&self.listener, &peer.config.password) {
                            let _ = md5::set_md5_key(listener.as_ref(), address, &[]);
                        }
                        self.by_id.remove(&peer.id);
                        self.rib.remove_peer(peer.id, &mut out);
                        info!(peer = %address, "peer removed");
                        Ok(())
                    }
                    None => Err(Error::PeerNotFound(address)),
                };
                let _ = reply.send(result);
            }
            Command::SetPolicy(address, policy, reply) => {
                let result = match self.peers.get_mut(&address) {
                    Some(peer) => {
                        peer.config.policy = (*policy).clone();
                        self.rib.set_policy(peer.id, *policy, &mut out);
                        info!(peer = %address, "peer policy replaced");
                        Ok(())
                    }
                    None => Err(Error::PeerNotFound(address)),
                };
                let _ = reply.send(result);
            }
            Command::Originate(prefix, next_hop, attributes) => {
                self.rib
                    .originate_with(prefix, next_hop, *attributes, &mut out);
            }
            Command::Withdraw(prefix) => self.rib.withdraw_local(prefix, &mut out),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown(_) => {}
        }
        self.emit(out);
    }

    fn add_peer(&mut self, config: PeerConfig) -> Result<(), Error> {
        if self.peers.contains_key(&config.address) {
            return Err(Error::PeerExists(config.address));
        }
        if let (Some(listener), Some(password)) = (&self.listener, &config.password) {
            // Accepted sockets inherit the listener's key for this peer.
            md5::set_md5_key(listener.as_ref(), config.address, password.0.as_bytes()).map_err(
                |source| Error::Md5 {
                    peer: config.address,
                    source,
                },
            )?;
        }
        if let (Some(listener), Some(_)) = (&self.listener, config.ttl_security) {
            // SYN-ACKs to a GTSM peer must leave with TTL 255 to pass its check.
            let v6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
            ttl::set_listener_ttl(listener.as_ref(), v6).map_err(|source| Error::TtlSecurity {
                peer: config.address,
                source,
            })?;
        }
        let id = self.rib.add_peer(config.rib_config());
        let status = Arc::new(Mutex::new(SessionStatus {
            state: State::Idle,
            since: SystemTime::now(),
            last_error: None,
            router_id: None,
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let session = Session::new(config.session_config(&self.config));
        let task = peer::PeerTask::new(
            id,
            config.clone(),
            session,
            rx,
            self.events_tx.clone(),
            status.clone(),
        );
        tokio::spawn(task.run());
        info!(peer = %config.address, asn = %config.asn, passive = config.passive, "peer added");
        self.by_id.insert(id, config.address);
        self.peers.insert(
            config.address,
            PeerHandle {
                id,
                config,
                commands: tx,
                status,
                restart_generation: 0,
            },
        );
        Ok(())
    }

    fn status(&self) -> Vec<PeerStatus> {
        self.peers
            .values()
            .map(|p| {
                let s = p
                    .status
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_else(|e| e.into_inner().clone());
                PeerStatus {
                    address: p.config.address,
                    asn: p.config.asn,
                    state: s.state,
                    since: s.since,
                    last_error: s.last_error,
                    router_id: s.router_id,
                    counters: self.rib.counters(p.id).unwrap_or_default(),
                }
            })
            .collect()
    }

    fn event(&mut self, event: CoreEvent) {
        let mut out = RibOutput::default();
        match event {
            CoreEvent::Accepted { stream, remote } => {
                let address = remote.ip().to_canonical();
                match self.peers.get(&address) {
                    Some(peer) => {
                        debug!(peer = %address, "incoming connection");
                        let _ = peer.commands.send(PeerCommand::Incoming(stream));
                    }
                    None => debug!(%remote, "connection from unknown address refused"),
                }
            }
            CoreEvent::Established {
                peer,
                negotiated,
                local_address,
            } => {
                // RFC 4724 §4.2: stale routes of families whose forwarding the restarted peer
                // did not preserve go now.
                self.rib.flush_unpreserved_stale(
                    peer,
                    &negotiated.forwarding_preserved(),
                    &mut out,
                );
                let up = PeerUp {
                    router_id: negotiated.peer_id,
                    families: negotiated.families.clone(),
                    codec: negotiated.codec,
                    local_address: local_address.to_canonical(),
                };
                self.rib.peer_up(peer, up, &mut out);
            }
            CoreEvent::Update { peer, update } => self.rib.apply_update(peer, &update, &mut out),
            CoreEvent::Down { peer, down } => {
                let graceful = down.graceful_restart.clone();
                self.rib
                    .peer_down(peer, graceful.as_ref().map(|(_, f)| f.as_slice()), &mut out);
                if let Some((restart_time, _)) = graceful {
                    self.arm_restart_timer(peer, restart_time);
                }
            }
            CoreEvent::RouteRefresh { peer, family } => {
                self.rib.route_refresh(peer, family, &mut out);
            }
            CoreEvent::RestartExpired { peer, generation } => {
                let current = self
                    .by_id
                    .get(&peer)
                    .and_then(|a| self.peers.get(a))
                    .map(|p| p.restart_generation);
                if current == Some(generation) {
                    self.rib.purge_stale(peer, &mut out);
                }
            }
        }
        self.emit(out);
    }

    fn arm_restart_timer(&mut self, peer: PeerId, restart_time: u16) {
        let Some(handle) = self.by_id.get(&peer).and_then(|a| self.peers.get_mut(a)) else {
            return;
        };
        handle.restart_generation += 1;
        let generation = handle.restart_generation;
        let wait = Duration::from_secs(u64::from(restart_time.min(handle.config.max_restart_time)));
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = events.send(CoreEvent::RestartExpired { peer, generation });
        });
    }

    fn emit(&mut self, out: RibOutput) {
        for change in out.changes {
            let _ = self.changes.send(change);
        }
        let mut per_peer: BTreeMap<PeerId, Vec<Update>> = BTreeMap::new();
        for (peer, update) in out.updates {
            per_peer.entry(peer).or_default().push(update);
        }
        for (peer, updates) in per_peer {
            if let Some(handle) = self.by_id.get(&peer).and_then(|a| self.peers.get(a)) {
                let _ = handle.commands.send(PeerCommand::Send(updates));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_config_preserves_forwarding_by_default_and_passes_it_to_the_session() {
        let speaker = SpeakerConfig::new(Asn(64512), Ipv4Addr::new(192, 0, 2, 1));
        let mut peer = PeerConfig::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), Asn(64512));
        assert!(peer.forwarding_preserved);
        assert!(peer.session_config(&speaker).forwarding_preserved);
        peer.forwarding_preserved = false;
        assert!(!peer.session_config(&speaker).forwarding_preserved);
        // A config serialised before the field existed still preserves forwarding.
        let mut json = serde_json::to_value(&peer).unwrap();
        json.as_object_mut().unwrap().remove("forwarding_preserved");
        let old: PeerConfig = serde_json::from_value(json).unwrap();
        assert!(old.forwarding_preserved);
    }
}
