//! One task per peer: owns the TCP connection, the timers and the [`Session`] FSM.

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::time::SystemTime;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;
use tracing::debug;
use tracing::info;
use tracing::info_span;
use tracing::warn;

use crate::error::DecodeError;
use crate::io::CoreEvent;
use crate::io::PeerCommand;
use crate::io::PeerConfig;
use crate::io::SharedStatus;
use crate::io::md5;
use crate::io::ttl;
use crate::packet::HEADER_LEN;
use crate::packet::Message;
use crate::packet::frame;
use crate::packet::message_type;
use crate::packet::notification::Notification;
use crate::packet::notification::cease_subcode;
use crate::packet::update::Update;
use crate::packet::update::UpdateView;
use crate::rib::PeerId;
use crate::session::Action;
use crate::session::Event;
use crate::session::Session;
use crate::session::State;
use crate::session::Timer;
use crate::session::accept_incoming;

/// What the connect and reader tasks report, tagged with the connection generation so
/// reports from a connection already replaced are ignored.
#[derive(Debug)]
enum IoEvent {
    Connected(u64, TcpStream),
    ConnectFailed(u64, io::Error),
    Frame(u64, u8, Vec<u8>),
    FrameError(u64, DecodeError),
    Closed(u64, Option<io::Error>),
}

/// A live connection. Writes go through a writer task so the peer task never blocks on a
/// peer that is slow to read (two speakers dumping large tables to each other could
/// otherwise deadlock with full socket buffers on both sides).
struct Connection {
    writer: mpsc::UnboundedSender<Vec<u8>>,
    reader: JoinHandle<()>,
    generation: u64,
    outgoing: bool,
    local: SocketAddr,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer task flushes what is queued (a final NOTIFICATION) and closes.
        self.reader.abort();
    }
}

/// Longest a single write may wait for the peer to read before the connection counts as dead.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) struct PeerTask {
    id: PeerId,
    config: PeerConfig,
    session: Session,
    commands: mpsc::UnboundedReceiver<PeerCommand>,
    core: mpsc::UnboundedSender<CoreEvent>,
    status: SharedStatus,
    io_tx: mpsc::Sender<IoEvent>,
    io_rx: mpsc::Receiver<IoEvent>,
    conn: Option<Connection>,
    connecting: Option<JoinHandle<()>>,
    generation: u64,
    timers: [Option<Instant>; 3],
    pending: VecDeque<Event>,
}

fn slot(timer: Timer) -> usize {
    match timer {
        Timer::ConnectRetry => 0,
        Timer::Hold => 1,
        Timer::Keepalive => 2,
    }
}

const TIMERS: [Timer; 3] = [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive];

impl PeerTask {
    pub(super) fn new(
        id: PeerId,
        config: PeerConfig,
        session: Session,
        commands: mpsc::UnboundedReceiver<PeerCommand>,
        core: mpsc::UnboundedSender<CoreEvent>,
        status: SharedStatus,
    ) -> Self {
        let (io_tx, io_rx) = mpsc::channel(1024);
        PeerTask {
            id,
            config,
            session,
            commands,
            core,
            status,
            io_tx,
            io_rx,
            conn: None,
            connecting: None,
            generation: 0,
            timers: [None; 3],
            pending: VecDeque::new(),
        }
    }

    pub(super) async fn run(self) {
        let span = info_span!("peer", addr = %self.config.address);
        self.run_inner().instrument(span).await;
    }

    async fn run_inner(mut self) {
        self.pending.push_back(Event::ManualStart);
        loop {
            let event = match self.pending.pop_front() {
                Some(event) => event,
                None => match self.next_event().await {
                    Some(Some(event)) => event,
                    Some(None) => continue,
                    None => {
                        self.feed(Event::ManualStop).await;
                        return;
                    }
                },
            };
            self.feed(event).await;
        }
    }

    /// Waits for the next input. `None`: stop the task; `Some(None)`: nothing for the FSM.
    async fn next_event(&mut self) -> Option<Option<Event>> {
        let next_timer = TIMERS
            .iter()
            .filter_map(|t| {
                self.timers
                    .get(slot(*t))
                    .copied()
                    .flatten()
                    .map(|at| (at, *t))
            })
            .min_by_key(|(at, _)| *at);
        let deadline = next_timer.map(|(at, _)| at);
        tokio::select! {
            command = self.commands.recv() => match command {
                None | Some(PeerCommand::Stop) => None,
                Some(PeerCommand::Incoming(stream)) => {
                    self.incoming(stream).await;
                    Some(None)
                }
                Some(PeerCommand::Send(updates)) => {
                    self.send_updates(&updates).await;
                    Some(None)
                }
            },
            Some(io) = self.io_rx.recv() => Some(self.io_event(io)),
            () = sleep_until(deadline), if deadline.is_some() => {
                let timer = next_timer.map(|(_, t)| t)?;
                if let Some(s) = self.timers.get_mut(slot(timer)) {
                    *s = None;
                }
                Some(Some(Event::TimerExpired(timer)))
            }
        }
    }

    fn io_event(&mut self, io: IoEvent) -> Option<Event> {
        let current = self.conn.as_ref().map(|c| c.generation);
        match io {
            IoEvent::Connected(generation, stream) => {
                if generation != self.generation || self.conn.is_some() {
                    return None;
                }
                self.connecting = None;
                self.attach(stream, true, generation);
                Some(Event::TcpConnected)
            }
            IoEvent::ConnectFailed(generation, error) => {
                if generation != self.generation || self.conn.is_some() {
                    return None;
                }
                debug!(%error, "connect failed");
                self.set_error(format!("connect: {error}"));
                Some(Event::TcpFailed)
            }
            IoEvent::Frame(generation, kind, body) if Some(generation) == current => {
                if kind == message_type::UPDATE {
                    return Some(self.decode_update(&body));
                }
                match Message::decode_body(kind, &body, &self.session.codec()) {
                    Ok(message) => {
                        if let Message::Notification(n) = &message {
                            warn!(notification = %n, "NOTIFICATION received");
                            self.set_error(format!("received: {n}"));
                        }
                        Some(Event::Message(message))
                    }
                    Err(error) => {
                        warn!(%error, "malformed message");
                        Some(Event::DecodeFailed(error.notification()))
                    }
                }
            }
            IoEvent::FrameError(generation, error) if Some(generation) == current => {
                warn!(%error, "malformed message header");
                Some(Event::DecodeFailed(error.notification()))
            }
            IoEvent::Closed(generation, error) if Some(generation) == current => {
                let reason = error.map_or_else(|| "closed by peer".to_owned(), |e| e.to_string());
                debug!(%reason, "connection lost");
                if self.session.state() != State::Idle {
                    self.set_error(format!("connection: {reason}"));
                }
                self.conn = None;
                Some(Event::TcpFailed)
            }
            IoEvent::Frame(..) | IoEvent::FrameError(..) | IoEvent::Closed(..) => None,
        }
    }

    /// Decodes an UPDATE through the view, so RFC 7606 treat-as-withdraw is logged.
    fn decode_update(&self, body: &[u8]) -> Event {
        match UpdateView::parse(body, &self.session.codec()) {
            Ok(view) => {
                if let Some(error) = &view.attribute_error {
                    warn!(%error, "UPDATE attribute error: announced prefixes treated as withdrawn");
                }
                Event::Message(Message::Update(view.to_update()))
            }
            Err(error) => {
                warn!(%error, "malformed UPDATE");
                Event::DecodeFailed(error.notification())
            }
        }
    }

    async fn feed(&mut self, event: Event) {
        let mut actions = Vec::new();
        self.session
            .handle(Instant::now().into_std(), event, &mut actions);
        for action in actions {
            self.execute(action).await;
        }
    }

    async fn execute(&mut self, action: Action) {
        match action {
            Action::Connect => self.connect(),
            Action::Disconnect => {
                self.conn = None;
                if let Some(task) = self.connecting.take() {
                    task.abort();
                }
            }
            Action::Send(message) => {
                if let Message::Notification(n) = &message {
                    warn!(notification = %n, "sending NOTIFICATION");
                    self.set_error(format!("sent: {n}"));
                }
                let codec = self.session.codec();
                match message.to_bytes(&codec) {
                    Ok(bytes) => self.write(&bytes).await,
                    Err(error) => warn!(%error, "cannot encode message"),
                }
            }
            Action::ArmTimer(timer, after) => {
                if let Some(s) = self.timers.get_mut(slot(timer)) {
                    *s = Some(Instant::now() + after);
                }
            }
            Action::StopTimer(timer) => {
                if let Some(s) = self.timers.get_mut(slot(timer)) {
                    *s = None;
                }
            }
            Action::StateChanged { from, to } => {
                info!(%from, %to, "session state changed");
                if let Ok(mut status) = self.status.lock() {
                    status.state = to;
                    status.since = SystemTime::now();
                }
            }
            Action::Established(negotiated) => {
                if let Ok(mut status) = self.status.lock() {
                    status.router_id = Some(negotiated.peer_id);
                    status.last_error = None;
                }
                let local_address = self
                    .conn
                    .as_ref()
                    .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.local.ip());
                let _ = self.core.send(CoreEvent::Established {
                    peer: self.id,
                    negotiated,
                    local_address,
                });
            }
            Action::SessionDown(down) => {
                let _ = self.core.send(CoreEvent::Down {
                    peer: self.id,
                    down,
                });
            }
            Action::UpdateReceived(update) => {
                let _ = self.core.send(CoreEvent::Update {
                    peer: self.id,
                    update,
                });
            }
            Action::RouteRefreshRequested(family) => {
                let _ = self.core.send(CoreEvent::RouteRefresh {
                    peer: self.id,
                    family,
                });
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.writer.send(bytes.to_vec()).is_err() {
            self.conn = None;
            self.pending.push_back(Event::TcpFailed);
        }
    }

    async fn send_updates(&mut self, updates: &[Update]) {
        if self.session.state() != State::Established {
            return;
        }
        let codec = self.session.codec();
        let mut bytes = Vec::new();
        for update in updates {
            let message = Message::Update(update.clone());
            if let Err(error) = message.encode(&codec, &mut bytes) {
                warn!(%error, "cannot encode UPDATE");
            }
            if bytes.len() >= 64 * 1024 {
                self.write(&bytes).await;
                bytes.clear();
            }
        }
        if !bytes.is_empty() {
            self.write(&bytes).await;
        }
    }

    fn connect(&mut self) {
        if let Some(task) = self.connecting.take() {
            task.abort();
        }
        self.generation += 1;
        let generation = self.generation;
        let remote = SocketAddr::new(self.config.address, self.config.port);
        let local = self.config.local_address;
        let password = self.config.password.as_ref().map(|p| p.0.clone());
        let ttl_security = self.config.ttl_security;
        let timeout = self.config.connect_retry;
        let tx = self.io_tx.clone();
        self.connecting = Some(tokio::spawn(async move {
            let result = connect(remote, local, password.as_deref(), ttl_security, timeout).await;
            let event = match result {
                Ok(stream) => IoEvent::Connected(generation, stream),
                Err(e) => IoEvent::ConnectFailed(generation, e),
            };
            let _ = tx.send(event).await;
        }));
    }

    fn attach(&mut self, stream: TcpStream, outgoing: bool, generation: u64) {
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
        let (reader, writer) = stream.into_split();
        let reader = tokio::spawn(read_loop(reader, generation, self.io_tx.clone()));
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(writer, queued, generation, self.io_tx.clone()));
        self.conn = Some(Connection {
            writer: queue,
            reader,
            generation,
            outgoing,
            local,
        });
    }

    async fn incoming(&mut self, mut stream: TcpStream) {
        // First thing: with GTSM, segments from too far away are dropped from now on (the
        // handshake itself went through the listener); without, the listener's TTL 255 (if
        // another peer uses GTSM) goes back to the default.
        if let Err(error) =
            ttl::set_ttl_security(&stream, self.config.address, self.config.ttl_security)
        {
            warn!(%error, "cannot set TTL security on the accepted connection; refused");
            self.set_error(format!("TTL security: {error}"));
            return;
        }
        let state = self.session.state();
        let local_id = self.session.config().router_id;
        let remote_id = self
            .session
            .negotiated()
            .map(|n| n.peer_id)
            .or(match self.config.address {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let existing_outgoing = self.conn.as_ref().is_none_or(|c| c.outgoing);
        if !accept_incoming(state, existing_outgoing, local_id, remote_id) {
            debug!(%state, "incoming connection refused");
            let subcode = if matches!(
                state,
                State::Connect | State::OpenSent | State::OpenConfirm | State::Established
            ) {
                cease_subcode::CONNECTION_COLLISION
            } else {
                cease_subcode::CONNECTION_REJECTED
            };
            let n = Message::Notification(Notification::cease(subcode));
            if let Ok(bytes) = n.to_bytes(&Default::default()) {
                let _ = stream.write_all(&bytes).await;
            }
            return;
        }
        if let Some(task) = self.connecting.take() {
            task.abort();
        }
        self.generation += 1;
        let replacing = self.conn.is_some();
        if replacing {
            info!("connection collision: keeping the peer's connection");
            let n = Message::Notification(Notification::cease(cease_subcode::CONNECTION_COLLISION));
            if let Ok(bytes) = n.to_bytes(&Default::default()) {
                self.write(&bytes).await;
            }
            self.conn = None;
            self.pending.retain(|e| *e != Event::TcpFailed);
        }
        self.attach(stream, false, self.generation);
        self.pending.push_back(if replacing {
            Event::TcpConnectionReplaced
        } else {
            Event::TcpConnected
        });
    }

    fn set_error(&self, error: String) {
        if let Ok(mut status) = self.status.lock() {
            status.last_error = Some(error);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn connect(
    remote: SocketAddr,
    local: Option<IpAddr>,
    password: Option<&str>,
    ttl_security: Option<u8>,
    timeout: std::time::Duration,
) -> io::Result<TcpStream> {
    let socket = if remote.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(password) = password {
        md5::set_md5_key(&socket, remote.ip(), password.as_bytes())?;
    }
    if ttl_security.is_some() {
        ttl::set_ttl_security(&socket, remote.ip(), ttl_security)?;
    }
    if let Some(local) = local {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    tokio::time::timeout(timeout, socket.connect(remote))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Writes queued buffers in order; when the queue closes, flushes and shuts the socket down.
async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    generation: u64,
    tx: mpsc::Sender<IoEvent>,
) {
    while let Some(bytes) = queue.recv().await {
        let result = match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&bytes)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer stopped reading",
            )),
        };
        if let Err(e) = result {
            let _ = tx.send(IoEvent::Closed(generation, Some(e))).await;
            return;
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer.shutdown()).await;
}

/// Reads the byte stream and cuts it into messages.
async fn read_loop(mut reader: OwnedReadHalf, generation: u64, tx: mpsc::Sender<IoEvent>) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let mut start = 0;
        loop {
            let rest = buf.get(start..).unwrap_or_default();
            match frame(rest) {
                Ok(Some((len, kind))) => {
                    let body = rest.get(HEADER_LEN..len).unwrap_or_default().to_vec();
                    start += len;
                    if tx
                        .send(IoEvent::Frame(generation, kind, body))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(IoEvent::FrameError(generation, e)).await;
                    return;
                }
            }
        }
        buf.drain(..start);
        match reader.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = tx.send(IoEvent::Closed(generation, None)).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(IoEvent::Closed(generation, Some(e))).await;
                return;
            }
        }
    }
}
