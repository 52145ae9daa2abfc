//! Helpers shared by the interop tests against a real BIRD 2 (Debian `bird2`): network
//! namespaces made for the test (`ct-<pid>-…`, removed on drop even when the test fails), a
//! BIRD process per namespace with its own control socket, and a Felis speaker running on a
//! thread inside a namespace.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::fs::File;
use std::net::IpAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

use felis_bgp::io::PeerConfig;
use felis_bgp::io::PeerStatus;
use felis_bgp::io::Speaker;
use felis_bgp::io::SpeakerConfig;
use felis_bgp::rib::ChangeKind;
use felis_bgp::rib::RibChange;
use ipnet::IpNet;

/// How long a test waits for anything (sessions, routes) before failing.
pub const WAIT: Duration = Duration::from_secs(60);

/// Runs a command; its stdout, or an error naming the command and its stderr.
pub fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("running {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace named `ct-<pid>-<tag>`, deleted on drop.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates the namespace (replacing a leftover of the same name) with `lo` up.
    pub fn new(tag: &str) -> Netns {
        let name = format!("ct-{}-{tag}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        run(&["ip", "netns", "add", &name]).unwrap();
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS…`, panicking on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full).unwrap();
    }

    /// `ip -n NAME ARGS…` output (or the error text).
    pub fn ip_out(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full).unwrap_or_else(|e| e)
    }

    /// Its bind-mount path, for `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// One LAN: a switch namespace holding bridge `br0`, and one namespace per node with an
/// `eth0` plugged into the bridge. Nodes are dropped before the switch.
pub struct Lan {
    /// The nodes, in the order given to [`lan`].
    pub nodes: Vec<Netns>,
    /// The switch namespace (declared last so it is deleted last).
    pub switch: Netns,
}

/// Builds a [`Lan`] named `ct-<pid>-<tag>-…`; `nodes` are (suffix, address/prefix-length).
pub fn lan(tag: &str, nodes: &[(&str, &str)]) -> Lan {
    let switch = Netns::new(&format!("{tag}-sw"));
    switch.ip(&["link", "add", "br0", "type", "bridge"]);
    switch.ip(&["link", "set", "br0", "up"]);
    let mut made = Vec::new();
    for (i, (suffix, cidr)) in nodes.iter().enumerate() {
        let ns = Netns::new(&format!("{tag}-{suffix}"));
        let port = format!("p{i}");
        switch.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        switch.ip(&["link", "set", &port, "master", "br0"]);
        switch.ip(&["link", "set", &port, "up"]);
        let nodad = if cidr.contains(':') { "nodad" } else { "" };
        let mut args = vec!["addr", "add", cidr, "dev", "eth0"];
        if !nodad.is_empty() {
            args.push(nodad);
        }
        ns.ip(&args);
        ns.ip(&["link", "set", "eth0", "up"]);
        made.push(ns);
    }
    Lan {
        nodes: made,
        switch,
    }
}

/// `name` from PATH, or from /usr/sbin where Debian installs BIRD (not always on PATH).
pub fn bin(name: &str) -> String {
    let sbin = Path::new("/usr/sbin").join(name);
    if Command::new(name).arg("--version").output().is_err() && sbin.exists() {
        return sbin.to_string_lossy().into_owned();
    }
    name.to_owned()
}

/// Whether we run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns false (after printing why) when the test cannot run here: not root, or no `bird`.
pub fn preconditions() -> bool {
    if !is_root() {
        eprintln!("SKIP: BIRD interop test needs root (network namespaces)");
        return false;
    }
    if Command::new(bin("bird")).arg("--version").output().is_err() {
        eprintln!("SKIP: BIRD interop test needs `bird` (Debian package bird2)");
        return false;
    }
    true
}

/// A current-thread tokio runtime for the test thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `f` every 100 ms until it returns `Some`, panicking with `what` and `context()`
/// after [`WAIT`].
pub fn wait_until<T>(
    what: &str,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "never {what}:\n{}", context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A BIRD process in a namespace, killed on drop.
pub struct Bird {
    /// The process (`bird -f`).
    pub child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Bird {
    /// Writes `dir/bird.conf` as a `log` line to `dir/bird.log` followed by `body`, and runs
    /// BIRD with it in `ns`, with its control socket in `dir`.
    pub fn spawn(ns: &Netns, dir: &Path, body: &str) -> Bird {
        Bird::spawn_with(ns, dir, body, &[])
    }

    /// [`Bird::spawn`] with more command-line arguments (`-R`: graceful restart recovery, so
    /// its OPEN says forwarding state was preserved).
    pub fn spawn_with(ns: &Netns, dir: &Path, body: &str, args: &[&str]) -> Bird {
        let conf = dir.join("bird.conf");
        let socket = dir.join("bird.ctl");
        let log = dir.join("bird.log");
        let text = format!("log \"{}\" all;\n{body}", log.display());
        std::fs::write(&conf, text).unwrap();
        let stdout = File::create(dir.join("bird.stdout")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, &bin("bird"), "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .args(args)
            .stdout(stdout.try_clone().unwrap())
            .stderr(stdout)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Bird { child, socket, log }
    }

    /// `birdc COMMAND` output (or the error text).
    pub fn birdc(&self, command: &str) -> String {
        let birdc = bin("birdc");
        let mut args = vec![birdc.as_str(), "-s"];
        let socket = self.socket.to_string_lossy().into_owned();
        args.push(&socket);
        args.extend(command.split(' '));
        run(&args).unwrap_or_else(|e| e)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `show route all PREFIX` lists the prefix and satisfies `ok`; returns it.
    pub fn wait_route(&self, prefix: &str, ok: impl Fn(&str) -> bool) -> String {
        wait_until(
            &format!("saw {prefix} as expected"),
            || {
                format!(
                    "{}\n{}\n{}",
                    self.birdc(&format!("show route all {prefix}")),
                    self.birdc("show protocols all"),
                    self.log()
                )
            },
            || {
                let out = self.birdc(&format!("show route all {prefix}"));
                (out.contains(prefix) && ok(&out)).then_some(out)
            },
        )
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Felis speaker running on a thread inside a namespace. Its handle and change stream are
/// used from the test thread (tokio channels work across runtimes).
pub struct Felis {
    /// The speaker handle.
    pub speaker: Speaker,
    changes: tokio::sync::mpsc::UnboundedReceiver<RibChange>,
    /// Changes [`Felis::wait_added`] received but has not returned yet.
    seen: Vec<RibChange>,
    /// Sends whether to shut down cleanly (Cease) rather than crash.
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Felis {
    /// Starts a speaker in `ns`: originates `prefixes` first, then adds `peers`.
    pub fn spawn(
        ns: &Netns,
        config: SpeakerConfig,
        peers: Vec<PeerConfig>,
        prefixes: Vec<IpNet>,
    ) -> Felis {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<bool>();
        let path = ns.path();
        let thread = std::thread::spawn(move || {
            // setns on this throwaway thread only: sockets made here live in the namespace.
            let file = File::open(&path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (speaker, changes) = Speaker::start(config).await.unwrap();
                for prefix in prefixes {
                    speaker.originate(prefix, None).unwrap();
                }
                for peer in peers {
                    speaker.add_peer(peer).await.unwrap();
                }
                ready_tx.send((speaker.clone(), changes)).unwrap();
                let clean = tokio::time::timeout(Duration::from_secs(300), stop_rx)
                    .await
                    .map_or(true, |r| r.unwrap_or(true));
                if clean {
                    let _ = speaker.shutdown().await;
                }
            });
            // Dropping the runtime drops every task and closes every socket: after a
            // crash request the peers see the TCP session end without a NOTIFICATION.
            drop(rt);
        });
        let (speaker, changes) = ready_rx.recv_timeout(WAIT).expect("Felis did not start");
        Felis {
            speaker,
            changes,
            seen: Vec::new(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops the speaker as a crash would: no Cease, the TCP connections just close.
    pub fn crash(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(false);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Collects `n` best-route changes (or fewer after `within`).
    pub fn changes(
        &mut self,
        rt: &tokio::runtime::Runtime,
        n: usize,
        within: Duration,
    ) -> Vec<RibChange> {
        rt.block_on(async {
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + within;
            while got.len() < n {
                match tokio::time::timeout_at(deadline, self.changes.recv()).await {
                    Ok(Some(c)) => got.push(c),
                    Ok(None) | Err(_) => break,
                }
            }
            got
        })
    }

    /// Waits for a change adding `prefix` (possibly one received earlier by this method and
    /// kept aside); returns it.
    pub fn wait_added(&mut self, rt: &tokio::runtime::Runtime, prefix: &str) -> RibChange {
        let prefix: IpNet = prefix.parse().unwrap();
        let start = Instant::now();
        loop {
            if let Some(i) = self
                .seen
                .iter()
                .rposition(|c| c.prefix == prefix && c.kind == ChangeKind::Added)
            {
                return self.seen.remove(i);
            }
            assert!(
                start.elapsed() < WAIT,
                "never learned {prefix}; saw {:#?}",
                self.seen
            );
            let more = self.changes(rt, 1, Duration::from_millis(500));
            self.seen.extend(more);
        }
    }

    /// The first peer's status.
    pub fn status(&self, rt: &tokio::runtime::Runtime) -> PeerStatus {
        rt.block_on(self.speaker.peer_status()).unwrap().remove(0)
    }

    /// The status of the peer at `address`.
    pub fn peer_status(&self, rt: &tokio::runtime::Runtime, address: IpAddr) -> PeerStatus {
        rt.block_on(self.speaker.peer_status())
            .unwrap()
            .into_iter()
            .find(|s| s.address == address)
            .unwrap()
    }

    /// Waits until the first peer's status satisfies `ok`.
    pub fn wait_status(
        &self,
        rt: &tokio::runtime::Runtime,
        what: &str,
        ok: impl Fn(&PeerStatus) -> bool,
    ) -> PeerStatus {
        let start = Instant::now();
        loop {
            let status = self.status(rt);
            if ok(&status) {
                return status;
            }
            assert!(start.elapsed() < WAIT, "peer never {what}: {status:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Felis {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
