//! The BGP session finite state machine (RFC 4271 §8), as a pure struct.
//!
//! ```text
//!            ManualStart                    TcpConnected / send OPEN
//!   Idle ───────────────▶ Connect ─────────────────────────────────▶ OpenSent
//!    ▲  (passive: Active)   │ ▲ ConnectRetry: Connect                 │ OPEN ok / send KEEPALIVE
//!    │                TcpFailed│ │                                    ▼
//!    │                      ▼ │                                  OpenConfirm
//!    │                    Active ◀── TcpFailed in OpenSent            │ KEEPALIVE
//!    │ error / NOTIFICATION                                           ▼
//!    └──────────────── (auto restart after connect_retry) ──── Established
//! ```
//!
//! The shell feeds [`Event`]s with the current time and carries out the [`Action`]s; the FSM
//! never touches sockets or clocks. Timers are named ([`Timer`]); arming one that is already
//! running restarts it.

use std::net::Ipv4Addr;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

use crate::packet::Asn;
use crate::packet::CodecOptions;
use crate::packet::Family;
use crate::packet::Message;
use crate::packet::RouteRefresh;
use crate::packet::notification::Notification;
use crate::packet::notification::cease_subcode;
use crate::packet::notification::code;
use crate::packet::notification::open_subcode;
use crate::packet::open::Capability;
use crate::packet::open::GracefulRestart;
use crate::packet::open::GracefulRestartFamily;
use crate::packet::open::Open;
use crate::packet::update::Update;

/// Hold time we propose by default (RFC 4271 §10 suggests 90 s).
pub const DEFAULT_HOLD_TIME: u16 = 90;
/// Hold time while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
pub const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);
/// Delay before the first outgoing connection (BIRD's `connect delay time`, Calico: 2 s).
pub const DEFAULT_CONNECT_DELAY: Duration = Duration::from_secs(2);
/// Interval between connection attempts (BIRD's `connect retry time`, Calico: 5 s).
pub const DEFAULT_CONNECT_RETRY: Duration = Duration::from_secs(5);
/// Graceful restart time we advertise (BIRD default, 120 s).
pub const DEFAULT_RESTART_TIME: u16 = 120;

/// Static parameters of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionConfig {
    /// Our ASN.
    pub local_asn: Asn,
    /// The ASN the peer must present.
    pub peer_asn: Asn,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Hold time we propose (0 disables keepalives; else at least 3).
    pub hold_time: u16,
    /// Delay before the first connection attempt.
    pub connect_delay: Duration,
    /// Interval between connection attempts, and the wait before restarting after an error.
    pub connect_retry: Duration,
    /// Never connect; only accept.
    pub passive: bool,
    /// Families we advertise with the multiprotocol capability.
    pub families: Vec<Family>,
    /// Restart time to advertise in the graceful restart capability; `None` omits it.
    pub graceful_restart: Option<u16>,
    /// Set the Forwarding State (F) bit for every family in the graceful restart capability:
    /// we keep forwarding across a restart of ours, so a helper keeps our routes (stale) until
    /// our End-of-RIB instead of flushing them as soon as the new session is up (RFC 4724
    /// §4.2).
    #[serde(default)]
    pub forwarding_preserved: bool,
}

impl SessionConfig {
    /// A config with Calico/BIRD defaults: hold 90 s, connect delay 2 s, retry 5 s, IPv4 and
    /// IPv6 unicast, graceful restart 120 s.
    pub fn new(local_asn: Asn, peer_asn: Asn, router_id: Ipv4Addr) -> Self {
        SessionConfig {
            local_asn,
            peer_asn,
            router_id,
            hold_time: DEFAULT_HOLD_TIME,
            connect_delay: DEFAULT_CONNECT_DELAY,
            connect_retry: DEFAULT_CONNECT_RETRY,
            passive: false,
            families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
            graceful_restart: Some(DEFAULT_RESTART_TIME),
            forwarding_preserved: false,
        }
    }

    /// Whether the peer is in our AS.
    pub fn is_ibgp(&self) -> bool {
        self.local_asn == self.peer_asn
    }

    /// The OPEN this config sends.
    pub fn open(&self) -> Open {
        let mut capabilities: Vec<Capability> = self
            .families
            .iter()
            .copied()
            .map(Capability::Multiprotocol)
            .collect();
        capabilities.push(Capability::RouteRefresh);
        if let Some(restart_time) = self.graceful_restart {
            capabilities.push(Capability::GracefulRestart(GracefulRestart {
                restarting: false,
                notification: false,
                restart_time,
                families: self
                    .families
                    .iter()
                    .map(|f| GracefulRestartFamily {
                        family: *f,
                        forwarding_preserved: self.forwarding_preserved,
                    })
                    .collect(),
            }));
        }
        capabilities.push(Capability::FourOctetAs(self.local_asn));
        Open {
            version: 4,
            my_as: u16::try_from(self.local_asn.0).unwrap_or(23456),
            hold_time: self.hold_time,
            bgp_id: self.router_id,
            capabilities,
        }
    }
}

/// FSM states (RFC 4271 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    /// Not trying; refuses connections.
    Idle,
    /// Waiting for an outgoing connection to complete.
    Connect,
    /// Waiting for an incoming connection (or the next outgoing attempt).
    Active,
    /// OPEN sent; waiting for the peer's OPEN.
    OpenSent,
    /// OPENs exchanged; waiting for KEEPALIVE.
    OpenConfirm,
    /// Exchanging routes.
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        })
    }
}

/// The session's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Timer {
    /// Connection attempts, and the wait before an automatic restart from Idle.
    ConnectRetry,
    /// Hold timer: the peer is dead when it fires.
    Hold,
    /// Time to send a KEEPALIVE.
    Keepalive,
}

/// Inputs to the FSM.
#[allow(
    clippy::large_enum_variant,
    reason = "events are transient, handled one at a time"
)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The operator (or the speaker) starts the session.
    ManualStart,
    /// The operator stops the session (peer removed or disabled).
    ManualStop,
    /// A TCP connection to the peer is up (outgoing completed or incoming accepted).
    TcpConnected,
    /// The connection attempt failed or the connection closed.
    TcpFailed,
    /// Collision resolution (RFC 4271 §6.8) replaced the connection in OpenSent or
    /// OpenConfirm with a new one: the OPEN exchange starts over on it.
    TcpConnectionReplaced,
    /// A message arrived.
    Message(Message),
    /// Bytes arrived that could not be decoded; carries the NOTIFICATION to send.
    DecodeFailed(Notification),
    /// A timer fired.
    TimerExpired(Timer),
}

/// What the shell must do.
#[allow(
    clippy::large_enum_variant,
    reason = "actions are drained right after `handle`"
)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Open a TCP connection to the peer (dropping any attempt in flight).
    Connect,
    /// Close the TCP connection.
    Disconnect,
    /// Send a message.
    Send(Message),
    /// Start (or restart) a timer.
    ArmTimer(Timer, Duration),
    /// Stop a timer.
    StopTimer(Timer),
    /// The state changed.
    StateChanged {
        /// Old state.
        from: State,
        /// New state.
        to: State,
    },
    /// The session reached Established with these parameters.
    Established(Negotiated),
    /// An Established session went down: the RIB must drop (or mark stale) its routes.
    SessionDown(SessionDown),
    /// Routes arrived.
    UpdateReceived(Update),
    /// The peer asked us to re-send our routes of a family (RFC 2918).
    RouteRefreshRequested(Family),
}

/// Why an Established session ended and whether its routes are kept as stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDown {
    /// The reason.
    pub reason: DownReason,
    /// RFC 4724 §4.2: keep the peer's routes as stale for this long (seconds) for these
    /// families, because the peer advertised graceful restart and the TCP session just died.
    pub graceful_restart: Option<(u16, Vec<Family>)>,
}

/// Why a session left a synchronised state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownReason {
    /// We sent this NOTIFICATION.
    NotificationSent(Notification),
    /// The peer sent this NOTIFICATION.
    NotificationReceived(Notification),
    /// The TCP connection failed.
    ConnectionLost,
    /// Stopped by the operator.
    Stopped,
}

/// What the OPEN exchange settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Negotiated {
    /// The peer's ASN.
    pub peer_asn: Asn,
    /// The peer's BGP identifier.
    pub peer_id: Ipv4Addr,
    /// Hold time in seconds (0: no keepalives).
    pub hold_time: u16,
    /// How to read and write UPDATEs.
    pub codec: CodecOptions,
    /// Families both sides advertised.
    pub families: Vec<Family>,
    /// Both sides support ROUTE-REFRESH.
    pub route_refresh: bool,
    /// The peer's graceful restart capability.
    pub peer_graceful_restart: Option<GracefulRestart>,
}

impl Negotiated {
    /// The families whose forwarding state the peer says it preserved across its restart
    /// (the F bit of its graceful restart capability, RFC 4724 §3).
    pub fn forwarding_preserved(&self) -> Vec<Family> {
        self.peer_graceful_restart
            .iter()
            .flat_map(|gr| &gr.families)
            .filter(|f| f.forwarding_preserved)
            .map(|f| f.family)
            .collect()
    }

    /// Keepalive interval: a third of the hold time (RFC 4271 §10).
    pub fn keepalive(&self) -> Option<Duration> {
        (self.hold_time > 0).then(|| Duration::from_secs(u64::from(self.hold_time / 3).max(1)))
    }
}

/// One BGP session's FSM.
#[derive(Debug, Clone)]
pub struct Session {
    config: SessionConfig,
    state: State,
    since: Option<Instant>,
    started: bool,
    negotiated: Option<Negotiated>,
}

impl Session {
    /// A session in Idle.
    pub fn new(config: SessionConfig) -> Self {
        Session {
            config,
            state: State::Idle,
            since: None,
            started: false,
            negotiated: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When the current state was entered (None before the first event).
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Parameters of the current OPEN exchange (set from OpenConfirm on).
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// How UPDATEs on the current connection are encoded.
    pub fn codec(&self) -> CodecOptions {
        self.negotiated
            .as_ref()
            .map(|n| n.codec)
            .unwrap_or_default()
    }

    /// Feeds one event to the FSM; appends what the shell must do to `out`.
    pub fn handle(&mut self, now: Instant, event: Event, out: &mut Vec<Action>) {
        if self.since.is_none() {
            self.since = Some(now);
        }
        let from = self.state;
        match (self.state, event) {
            (_, Event::ManualStop) => self.stop(out),
            (State::Idle, Event::ManualStart) => {
                self.started = true;
                if self.config.passive {
                    self.state = State::Active;
                } else {
                    self.state = State::Connect;
                    out.push(Action::ArmTimer(
                        Timer::ConnectRetry,
                        self.config.connect_delay,
                    ));
                }
            }
            (_, Event::ManualStart) => {}
            (State::Idle, Event::TimerExpired(Timer::ConnectRetry)) if self.started => {
                // The wait after an error is over: restart automatically.
                if self.config.passive {
                    self.state = State::Active;
                } else {
                    self.connect(out);
                }
            }
            (State::Idle, Event::TcpConnected) => out.push(Action::Disconnect),
            (State::Idle, _) => {}
            (State::Connect | State::Active, Event::TimerExpired(Timer::ConnectRetry)) => {
                if self.config.passive {
                    self.state = State::Active;
                } else {
                    self.connect(out);
                }
            }
            (State::Connect | State::Active, Event::TcpConnected) => {
                out.push(Action::StopTimer(Timer::ConnectRetry));
                out.push(Action::Send(Message::Open(self.config.open())));
                out.push(Action::ArmTimer(Timer::Hold, OPEN_HOLD_TIME));
                self.state = State::OpenSent;
            }
            (State::Connect, Event::TcpFailed) => {
                // RFC 4271 §8.2.2: Connect → Active; the retry timer keeps running.
                self.state = State::Active;
            }
            (State::Connect | State::Active, _) => {}
            (State::OpenSent | State::OpenConfirm, Event::TcpConnectionReplaced) => {
                out.push(Action::StopTimer(Timer::Keepalive));
                out.push(Action::Send(Message::Open(self.config.open())));
                out.push(Action::ArmTimer(Timer::Hold, OPEN_HOLD_TIME));
                self.negotiated = None;
                self.state = State::OpenSent;
            }
            (_, Event::TcpConnectionReplaced) => {}
            (State::OpenSent, Event::Message(Message::Open(open))) => {
                match self.validate_open(&open) {
                    Ok(negotiated) => {
                        out.push(Action::Send(Message::Keepalive));
                        match negotiated.keepalive() {
                            Some(keepalive) => {
                                out.push(Action::ArmTimer(Timer::Hold, hold(&negotiated)));
                                out.push(Action::ArmTimer(Timer::Keepalive, keepalive));
                            }
                            None => out.push(Action::StopTimer(Timer::Hold)),
                        }
                        self.negotiated = Some(negotiated);
                        self.state = State::OpenConfirm;
                    }
                    Err(n) => self.fail(out, DownReason::NotificationSent(n)),
                }
            }
            (State::OpenSent, Event::TcpFailed) => {
                // RFC 4271 §8.2.2: OpenSent + TcpConnectionFails → Active.
                out.push(Action::Disconnect);
                out.push(Action::StopTimer(Timer::Hold));
                out.push(Action::ArmTimer(
                    Timer::ConnectRetry,
                    self.config.connect_retry,
                ));
                self.state = State::Active;
            }
            (State::OpenConfirm, Event::Message(Message::Keepalive)) => {
                if let Some(n) = &self.negotiated {
                    if n.hold_time > 0 {
                        out.push(Action::ArmTimer(Timer::Hold, hold(n)));
                    }
                    out.push(Action::Established(n.clone()));
                }
                self.state = State::Established;
            }
            (State::Established, Event::Message(Message::Update(update))) => {
                self.restart_hold(out);
                out.push(Action::UpdateReceived(update));
            }
            (State::Established, Event::Message(Message::Keepalive)) => self.restart_hold(out),
            (State::Established, Event::Message(Message::RouteRefresh(rr))) => {
                self.restart_hold(out);
                let RouteRefresh { family, subtype } = rr;
                let known = self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.families.contains(&family));
                // RFC 7313: only subtype 0 is a request; BoRR/EoRR markers are ignored.
                if known && subtype == 0 {
                    out.push(Action::RouteRefreshRequested(family));
                }
            }
            (State::OpenConfirm | State::Established, Event::TimerExpired(Timer::Keepalive)) => {
                out.push(Action::Send(Message::Keepalive));
                if let Some(keepalive) = self.negotiated.as_ref().and_then(Negotiated::keepalive) {
                    out.push(Action::ArmTimer(Timer::Keepalive, keepalive));
                }
            }
            (_, Event::TimerExpired(Timer::Hold)) => {
                self.fail(
                    out,
                    DownReason::NotificationSent(Notification::hold_timer_expired()),
                );
            }
            (_, Event::TimerExpired(_)) => {}
            (_, Event::Message(Message::Notification(n))) => {
                self.fail(out, DownReason::NotificationReceived(n));
            }
            (_, Event::DecodeFailed(n)) => self.fail(out, DownReason::NotificationSent(n)),
            (_, Event::TcpFailed) => self.fail(out, DownReason::ConnectionLost),
            (_, Event::TcpConnected) => {
                // A second connection is the shell's to resolve (see `resolve_collision`).
            }
            (state, Event::Message(_)) => {
                // RFC 6608: FSM error subcodes name the state the message arrived in.
                let subcode = match state {
                    State::OpenSent => 1,
                    State::OpenConfirm => 2,
                    _ => 3,
                };
                self.fail(
                    out,
                    DownReason::NotificationSent(Notification::fsm(subcode)),
                );
            }
        }
        if self.state != from {
            self.since = Some(now);
            out.push(Action::StateChanged {
                from,
                to: self.state,
            });
        }
    }

    fn connect(&mut self, out: &mut Vec<Action>) {
        out.push(Action::Connect);
        out.push(Action::ArmTimer(
            Timer::ConnectRetry,
            self.config.connect_retry,
        ));
        self.state = State::Connect;
    }

    fn restart_hold(&self, out: &mut Vec<Action>) {
        if let Some(n) = self.negotiated.as_ref().filter(|n| n.hold_time > 0) {
            out.push(Action::ArmTimer(Timer::Hold, hold(n)));
        }
    }

    fn stop(&mut self, out: &mut Vec<Action>) {
        self.started = false;
        if self.state == State::Idle {
            out.push(Action::StopTimer(Timer::ConnectRetry));
            return;
        }
        let was_established = self.state == State::Established;
        if matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            let n = Notification::cease(cease_subcode::ADMIN_SHUTDOWN);
            out.push(Action::Send(Message::Notification(n)));
        }
        out.push(Action::Disconnect);
        for t in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
            out.push(Action::StopTimer(t));
        }
        if was_established {
            out.push(Action::SessionDown(SessionDown {
                reason: DownReason::Stopped,
                graceful_restart: None,
            }));
        }
        self.negotiated = None;
        self.state = State::Idle;
    }

    /// Drops to Idle after an error; restarts automatically after `connect_retry`.
    fn fail(&mut self, out: &mut Vec<Action>, reason: DownReason) {
        if let DownReason::NotificationSent(n) = &reason {
            out.push(Action::Send(Message::Notification(n.clone())));
        }
        out.push(Action::Disconnect);
        out.push(Action::StopTimer(Timer::Hold));
        out.push(Action::StopTimer(Timer::Keepalive));
        if self.state == State::Established {
            // RFC 4724 §4.2: only a dead TCP session (no NOTIFICATION) keeps routes as stale.
            let graceful_restart = match (&reason, &self.negotiated) {
                (DownReason::ConnectionLost, Some(n)) => {
                    n.peer_graceful_restart.as_ref().map(|gr| {
                        let families = gr
                            .families
                            .iter()
                            .map(|f| f.family)
                            .filter(|f| n.families.contains(f))
                            .collect();
                        (gr.restart_time, families)
                    })
                }
                _ => None,
            };
            out.push(Action::SessionDown(SessionDown {
                reason,
                graceful_restart,
            }));
        }
        out.push(Action::ArmTimer(
            Timer::ConnectRetry,
            self.config.connect_retry,
        ));
        self.negotiated = None;
        self.state = State::Idle;
    }

    /// RFC 4271 §6.2: checks the peer's OPEN against our configuration.
    pub fn validate_open(&self, open: &Open) -> Result<Negotiated, Notification> {
        let peer_asn = open.asn();
        if peer_asn != self.config.peer_asn {
            return Err(Notification {
                code: code::OPEN,
                subcode: open_subcode::BAD_PEER_AS,
                data: open.my_as.to_be_bytes().to_vec(),
            });
        }
        if open.hold_time == 1 || open.hold_time == 2 {
            return Err(Notification::new(
                code::OPEN,
                open_subcode::UNACCEPTABLE_HOLD_TIME,
            ));
        }
        let bad_id = open.bgp_id.is_unspecified()
            || open.bgp_id.is_multicast()
            || (self.config.is_ibgp() && open.bgp_id == self.config.router_id);
        if bad_id {
            return Err(Notification::new(
                code::OPEN,
                open_subcode::BAD_BGP_IDENTIFIER,
            ));
        }
        let theirs = open.families();
        let families = self
            .config
            .families
            .iter()
            .copied()
            .filter(|f| theirs.contains(f))
            .collect();
        Ok(Negotiated {
            peer_asn,
            peer_id: open.bgp_id,
            hold_time: self.config.hold_time.min(open.hold_time),
            codec: CodecOptions {
                four_octet_asn: open.has_four_octet_as(),
            },
            families,
            route_refresh: open.has_route_refresh(),
            peer_graceful_restart: open.graceful_restart().cloned(),
        })
    }
}

fn hold(n: &Negotiated) -> Duration {
    Duration::from_secs(u64::from(n.hold_time))
}

/// Which connection survives a collision (RFC 4271 §6.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CollisionWinner {
    /// Keep the connection we initiated; close the peer's with Cease/Collision.
    LocallyInitiated,
    /// Keep the connection the peer initiated; close ours with Cease/Collision.
    RemotelyInitiated,
}

/// RFC 4271 §6.8: the connection initiated by the speaker with the higher BGP identifier
/// survives.
pub fn resolve_collision(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> CollisionWinner {
    if u32::from(local_id) > u32::from(remote_id) {
        CollisionWinner::LocallyInitiated
    } else {
        CollisionWinner::RemotelyInitiated
    }
}

/// What to do with an incoming connection while a session already has one in `state`.
///
/// `existing_outgoing` says whether the existing connection is the one we initiated;
/// `remote_id` is the peer's BGP identifier when known (from OpenConfirm on), else a guess
/// such as its IPv4 address (Calico's router id is the node address), else unspecified.
///
/// In Connect our own attempt is under way (or about to start): when both sides connect at
/// once, each would otherwise drop its attempt for the other's connection, which is that
/// attempt, and both would be left with nothing until the next retry. So the rule of §6.8 is
/// applied early, on the guessed identifier: the higher identifier's connection is kept on
/// both sides. Without a guess (an IPv6 peer before its OPEN) the connection is accepted.
pub fn accept_incoming(
    state: State,
    existing_outgoing: bool,
    local_id: Ipv4Addr,
    remote_id: Ipv4Addr,
) -> bool {
    match state {
        State::Idle => false,
        State::Active => true,
        State::Connect => {
            remote_id.is_unspecified()
                || resolve_collision(local_id, remote_id) == CollisionWinner::RemotelyInitiated
        }
        State::Established => false,
        State::OpenSent | State::OpenConfirm => {
            existing_outgoing
                && resolve_collision(local_id, remote_id) == CollisionWinner::RemotelyInitiated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::notification::code;

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    fn config() -> SessionConfig {
        SessionConfig::new(Asn(64512), Asn(64513), Ipv4Addr::new(10, 0, 0, 1))
    }

    fn peer_open() -> Open {
        let mut c = SessionConfig::new(Asn(64513), Asn(64512), Ipv4Addr::new(10, 0, 0, 2));
        c.hold_time = 60;
        c.open()
    }

    /// The F bit on the wire: BIRD flushes a restarted peer's stale routes as soon as the new
    /// session is up unless the peer's new OPEN sets it (RFC 4724 §4.2).
    #[test]
    fn open_carries_forwarding_state_bit_per_family() {
        let encoded = |preserved: bool| {
            let mut c = config();
            c.forwarding_preserved = preserved;
            let mut wire = Vec::new();
            Message::Open(c.open())
                .encode(&CodecOptions::default(), &mut wire)
                .unwrap();
            let Message::Open(open) = Message::decode(&wire, &CodecOptions::default()).unwrap()
            else {
                panic!("not an OPEN")
            };
            let gr = open.graceful_restart().cloned().unwrap();
            assert!(!gr.restarting);
            assert_eq!(gr.restart_time, DEFAULT_RESTART_TIME);
            gr.families
                .iter()
                .map(|f| (f.family, f.forwarding_preserved))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            encoded(true),
            vec![(Family::IPV4_UNICAST, true), (Family::IPV6_UNICAST, true)]
        );
        assert_eq!(
            encoded(false),
            vec![(Family::IPV4_UNICAST, false), (Family::IPV6_UNICAST, false)]
        );
    }

    struct Fixture {
        session: Session,
        now: Instant,
    }

    impl Fixture {
        fn drive(&mut self, event: Event) -> Vec<Action> {
            let mut out = Vec::new();
            self.now += Duration::from_millis(10);
            self.session.handle(self.now, event, &mut out);
            out
        }
    }

    fn idle() -> Fixture {
        Fixture {
            session: Session::new(config()),
            now: Instant::now(),
        }
    }

    fn connect() -> Fixture {
        let mut f = idle();
        f.drive(Event::ManualStart);
        assert_eq!(f.session.state(), State::Connect);
        f
    }

    fn active() -> Fixture {
        let mut f = connect();
        f.drive(Event::TcpFailed);
        assert_eq!(f.session.state(), State::Active);
        f
    }

    fn open_sent() -> Fixture {
        let mut f = connect();
        f.drive(Event::TcpConnected);
        assert_eq!(f.session.state(), State::OpenSent);
        f
    }

    fn open_confirm() -> Fixture {
        let mut f = open_sent();
        f.drive(Event::Message(Message::Open(peer_open())));
        assert_eq!(f.session.state(), State::OpenConfirm);
        f
    }

    fn established() -> Fixture {
        let mut f = open_confirm();
        f.drive(Event::Message(Message::Keepalive));
        assert_eq!(f.session.state(), State::Established);
        f
    }

    fn negotiated() -> Negotiated {
        Negotiated {
            peer_asn: Asn(64513),
            peer_id: Ipv4Addr::new(10, 0, 0, 2),
            hold_time: 60,
            codec: CodecOptions::FOUR_OCTET,
            families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
            route_refresh: true,
            peer_graceful_restart: peer_open().graceful_restart().cloned(),
        }
    }

    fn changed(from: State, to: State) -> Action {
        Action::StateChanged { from, to }
    }

    #[test]
    fn idle_manual_start_waits_connect_delay() {
        let mut f = idle();
        assert_eq!(
            f.drive(Event::ManualStart),
            vec![
                Action::ArmTimer(Timer::ConnectRetry, SECS(2)),
                changed(State::Idle, State::Connect)
            ]
        );
    }

    #[test]
    fn idle_passive_manual_start_goes_active_without_connecting() {
        let mut f = idle();
        f.session.config.passive = true;
        assert_eq!(
            f.drive(Event::ManualStart),
            vec![changed(State::Idle, State::Active)]
        );
        assert_eq!(f.drive(Event::TimerExpired(Timer::ConnectRetry)), vec![]);
    }

    #[test]
    fn idle_refuses_connections_before_start() {
        let mut f = idle();
        assert_eq!(f.drive(Event::TcpConnected), vec![Action::Disconnect]);
        assert_eq!(f.drive(Event::TimerExpired(Timer::ConnectRetry)), vec![]);
    }

    #[test]
    fn connect_retry_expiry_connects_and_rearms_5s() {
        let mut f = connect();
        assert_eq!(
            f.drive(Event::TimerExpired(Timer::ConnectRetry)),
            vec![
                Action::Connect,
                Action::ArmTimer(Timer::ConnectRetry, SECS(5))
            ]
        );
    }

    #[test]
    fn connect_tcp_connected_sends_open_and_arms_large_hold() {
        let mut f = connect();
        assert_eq!(
            f.drive(Event::TcpConnected),
            vec![
                Action::StopTimer(Timer::ConnectRetry),
                Action::Send(Message::Open(config().open())),
                Action::ArmTimer(Timer::Hold, SECS(240)),
                changed(State::Connect, State::OpenSent),
            ]
        );
    }

    #[test]
    fn connect_tcp_failure_goes_active() {
        let mut f = connect();
        assert_eq!(
            f.drive(Event::TcpFailed),
            vec![changed(State::Connect, State::Active)]
        );
    }

    #[test]
    fn active_retry_expiry_connects_again() {
        let mut f = active();
        assert_eq!(
            f.drive(Event::TimerExpired(Timer::ConnectRetry)),
            vec![
                Action::Connect,
                Action::ArmTimer(Timer::ConnectRetry, SECS(5)),
                changed(State::Active, State::Connect),
            ]
        );
    }

    #[test]
    fn active_accepts_incoming_connection() {
        let mut f = active();
        let actions = f.drive(Event::TcpConnected);
        assert_eq!(
            actions.last(),
            Some(&changed(State::Active, State::OpenSent))
        );
    }

    #[test]
    fn open_sent_valid_open_negotiates_min_hold_and_keepalive_third() {
        let mut f = open_sent();
        assert_eq!(
            f.drive(Event::Message(Message::Open(peer_open()))),
            vec![
                Action::Send(Message::Keepalive),
                Action::ArmTimer(Timer::Hold, SECS(60)),
                Action::ArmTimer(Timer::Keepalive, SECS(20)),
                changed(State::OpenSent, State::OpenConfirm),
            ]
        );
        assert_eq!(f.session.negotiated(), Some(&negotiated()));
    }

    #[test]
    fn open_sent_zero_hold_time_disables_timers() {
        let mut f = open_sent();
        let mut open = peer_open();
        open.hold_time = 0;
        assert_eq!(
            f.drive(Event::Message(Message::Open(open))),
            vec![
                Action::Send(Message::Keepalive),
                Action::StopTimer(Timer::Hold),
                changed(State::OpenSent, State::OpenConfirm),
            ]
        );
        assert_eq!(f.drive(Event::Message(Message::Keepalive)).len(), 2);
    }

    fn rejected(n: Notification) -> Vec<Action> {
        vec![
            Action::Send(Message::Notification(n)),
            Action::Disconnect,
            Action::StopTimer(Timer::Hold),
            Action::StopTimer(Timer::Keepalive),
            Action::ArmTimer(Timer::ConnectRetry, SECS(5)),
            changed(State::OpenSent, State::Idle),
        ]
    }

    #[test]
    fn open_with_wrong_peer_as_sends_bad_peer_as() {
        let mut f = open_sent();
        let mut open = peer_open();
        open.capabilities
            .retain(|c| !matches!(c, Capability::FourOctetAs(_)));
        open.my_as = 65000;
        let n = Notification {
            code: code::OPEN,
            subcode: 2,
            data: vec![0xfd, 0xe8],
        };
        assert_eq!(f.drive(Event::Message(Message::Open(open))), rejected(n));
    }

    #[test]
    fn open_with_hold_time_2_sends_unacceptable_hold_time() {
        let mut f = open_sent();
        let mut open = peer_open();
        open.hold_time = 2;
        assert_eq!(
            f.drive(Event::Message(Message::Open(open))),
            rejected(Notification::new(code::OPEN, 6))
        );
    }

    #[test]
    fn open_with_zero_identifier_sends_bad_bgp_identifier() {
        let mut f = open_sent();
        let mut open = peer_open();
        open.bgp_id = Ipv4Addr::UNSPECIFIED;
        assert_eq!(
            f.drive(Event::Message(Message::Open(open))),
            rejected(Notification::new(code::OPEN, 3))
        );
    }

    #[test]
    fn ibgp_open_with_our_identifier_is_rejected() {
        let mut c = config();
        c.peer_asn = c.local_asn;
        let s = Session::new(c);
        let mut open = peer_open();
        open.capabilities
            .retain(|c| !matches!(c, Capability::FourOctetAs(_)));
        open.my_as = 64512;
        open.bgp_id = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(
            s.validate_open(&open),
            Err(Notification::new(code::OPEN, 3))
        );
    }

    #[test]
    fn families_are_the_intersection() {
        let s = Session::new(config());
        let mut open = peer_open();
        open.capabilities
            .retain(|c| *c != Capability::Multiprotocol(Family::IPV6_UNICAST));
        assert_eq!(
            s.validate_open(&open).unwrap().families,
            vec![Family::IPV4_UNICAST]
        );
    }

    #[test]
    fn open_sent_keepalive_is_fsm_error_for_open_sent() {
        let mut f = open_sent();
        assert_eq!(
            f.drive(Event::Message(Message::Keepalive)),
            rejected(Notification::fsm(1))
        );
    }

    #[test]
    fn open_sent_hold_expiry_sends_hold_timer_expired() {
        let mut f = open_sent();
        assert_eq!(
            f.drive(Event::TimerExpired(Timer::Hold)),
            rejected(Notification::hold_timer_expired())
        );
    }

    #[test]
    fn open_sent_tcp_failure_goes_active() {
        let mut f = open_sent();
        assert_eq!(
            f.drive(Event::TcpFailed),
            vec![
                Action::Disconnect,
                Action::StopTimer(Timer::Hold),
                Action::ArmTimer(Timer::ConnectRetry, SECS(5)),
                changed(State::OpenSent, State::Active),
            ]
        );
    }

    #[test]
    fn open_confirm_keepalive_establishes() {
        let mut f = open_confirm();
        assert_eq!(
            f.drive(Event::Message(Message::Keepalive)),
            vec![
                Action::ArmTimer(Timer::Hold, SECS(60)),
                Action::Established(negotiated()),
                changed(State::OpenConfirm, State::Established),
            ]
        );
    }

    #[test]
    fn open_confirm_notification_drops_to_idle_without_reply() {
        let mut f = open_confirm();
        let n = Notification::cease(cease_subcode::CONNECTION_COLLISION);
        assert_eq!(
            f.drive(Event::Message(Message::Notification(n))),
            vec![
                Action::Disconnect,
                Action::StopTimer(Timer::Hold),
                Action::StopTimer(Timer::Keepalive),
                Action::ArmTimer(Timer::ConnectRetry, SECS(5)),
                changed(State::OpenConfirm, State::Idle),
            ]
        );
    }

    #[test]
    fn open_confirm_keepalive_timer_sends_keepalive() {
        let mut f = open_confirm();
        assert_eq!(
            f.drive(Event::TimerExpired(Timer::Keepalive)),
            vec![
                Action::Send(Message::Keepalive),
                Action::ArmTimer(Timer::Keepalive, SECS(20))
            ]
        );
    }

    #[test]
    fn established_update_restarts_hold_and_is_handed_on() {
        let mut f = established();
        let u = Update::end_of_rib(Family::IPV4_UNICAST);
        assert_eq!(
            f.drive(Event::Message(Message::Update(u.clone()))),
            vec![
                Action::ArmTimer(Timer::Hold, SECS(60)),
                Action::UpdateReceived(u)
            ]
        );
    }

    #[test]
    fn established_keepalive_restarts_hold() {
        let mut f = established();
        assert_eq!(
            f.drive(Event::Message(Message::Keepalive)),
            vec![Action::ArmTimer(Timer::Hold, SECS(60))]
        );
    }

    #[test]
    fn established_route_refresh_for_negotiated_family_is_handed_on() {
        let mut f = established();
        let rr = RouteRefresh {
            family: Family::IPV6_UNICAST,
            subtype: 0,
        };
        assert_eq!(
            f.drive(Event::Message(Message::RouteRefresh(rr))),
            vec![
                Action::ArmTimer(Timer::Hold, SECS(60)),
                Action::RouteRefreshRequested(Family::IPV6_UNICAST)
            ]
        );
    }

    #[test]
    fn established_tcp_loss_keeps_routes_stale_for_peer_restart_time() {
        let mut f = established();
        assert_eq!(
            f.drive(Event::TcpFailed),
            vec![
                Action::Disconnect,
                Action::StopTimer(Timer::Hold),
                Action::StopTimer(Timer::Keepalive),
                Action::SessionDown(SessionDown {
                    reason: DownReason::ConnectionLost,
                    graceful_restart: Some((120, vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST])),
                }),
                Action::ArmTimer(Timer::ConnectRetry, SECS(5)),
                changed(State::Established, State::Idle),
            ]
        );
    }

    #[test]
    fn established_hold_expiry_sends_notification_and_flushes_routes() {
        let mut f = established();
        let n = Notification::hold_timer_expired();
        assert_eq!(
            f.drive(Event::TimerExpired(Timer::Hold)),
            vec![
                Action::Send(Message::Notification(n.clone())),
                Action::Disconnect,
                Action::StopTimer(Timer::Hold),
                Action::StopTimer(Timer::Keepalive),
                Action::SessionDown(SessionDown {
                    reason: DownReason::NotificationSent(n),
                    graceful_restart: None,
                }),
                Action::ArmTimer(Timer::ConnectRetry, SECS(5)),
                changed(State::Established, State::Idle),
            ]
        );
    }

    #[test]
    fn established_open_is_fsm_error_for_established() {
        let mut f = established();
        let actions = f.drive(Event::Message(Message::Open(peer_open())));
        assert_eq!(
            actions.first(),
            Some(&Action::Send(Message::Notification(Notification::fsm(3))))
        );
    }

    #[test]
    fn established_decode_failure_sends_its_notification() {
        let mut f = established();
        let n = Notification::new(code::UPDATE, 1);
        let actions = f.drive(Event::DecodeFailed(n.clone()));
        assert_eq!(
            actions.first(),
            Some(&Action::Send(Message::Notification(n)))
        );
        assert_eq!(f.session.state(), State::Idle);
    }

    #[test]
    fn established_manual_stop_sends_cease_and_does_not_restart() {
        let mut f = established();
        assert_eq!(
            f.drive(Event::ManualStop),
            vec![
                Action::Send(Message::Notification(Notification::cease(2))),
                Action::Disconnect,
                Action::StopTimer(Timer::ConnectRetry),
                Action::StopTimer(Timer::Hold),
                Action::StopTimer(Timer::Keepalive),
                Action::SessionDown(SessionDown {
                    reason: DownReason::Stopped,
                    graceful_restart: None,
                }),
                changed(State::Established, State::Idle),
            ]
        );
        assert_eq!(f.drive(Event::TimerExpired(Timer::ConnectRetry)), vec![]);
    }

    #[test]
    fn idle_after_error_restarts_automatically() {
        let mut f = established();
        f.drive(Event::TcpFailed);
        assert_eq!(
            f.drive(Event::TimerExpired(Timer::ConnectRetry)),
            vec![
                Action::Connect,
                Action::ArmTimer(Timer::ConnectRetry, SECS(5)),
                changed(State::Idle, State::Connect),
            ]
        );
    }

    #[test]
    fn collision_keeps_connection_of_higher_identifier() {
        let low = Ipv4Addr::new(10, 0, 0, 1);
        let high = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(
            resolve_collision(high, low),
            CollisionWinner::LocallyInitiated
        );
        assert_eq!(
            resolve_collision(low, high),
            CollisionWinner::RemotelyInitiated
        );
        assert!(accept_incoming(State::OpenSent, true, low, high));
        assert!(!accept_incoming(State::OpenSent, true, high, low));
        assert!(accept_incoming(State::Active, false, high, low));
        // Simultaneous connects: the higher identifier keeps its own attempt.
        assert!(accept_incoming(State::Connect, true, low, high));
        assert!(!accept_incoming(State::Connect, true, high, low));
        assert!(accept_incoming(
            State::Connect,
            true,
            high,
            Ipv4Addr::UNSPECIFIED
        ));
        assert!(!accept_incoming(State::Established, true, low, high));
    }

    #[test]
    fn open_confirm_replaced_connection_restarts_open_exchange() {
        let mut f = open_confirm();
        assert_eq!(
            f.drive(Event::TcpConnectionReplaced),
            vec![
                Action::StopTimer(Timer::Keepalive),
                Action::Send(Message::Open(config().open())),
                Action::ArmTimer(Timer::Hold, SECS(240)),
                changed(State::OpenConfirm, State::OpenSent),
            ]
        );
        assert_eq!(f.session.negotiated(), None);
    }

    #[test]
    fn events_and_actions_serialize_for_replay() {
        let mut f = established();
        let actions = f.drive(Event::TcpFailed);
        let json = serde_json::to_string(&actions).unwrap();
        let back: Vec<Action> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, actions);
    }
}
