//! The shell that writes BGP-learned routes into the kernel: a thread of its own with a
//! batched rtnetlink socket ([`felis_netlink::RouteWriter`]); [`Fib`] decides every route.
//!
//! ```text
//!  speaker ──RibChange──► forward task ──Changes(≤4096)──┐
//!  agent loop ──Routing / Clear / Resync ────────────────┼──► "bgp-fib" thread
//!                                                        │     Fib (pure) ──► RouteOp
//!                                                        │     RouteWriter: ≤2048 per sendmsg
//! ```
//!
//! The thread takes everything queued, then writes, so while the kernel is busy with one batch
//! the next one queues up: a million routes go in as a few hundred `sendmsg` calls. A route the
//! kernel refuses is logged and written again by the next resync; so is everything when the
//! socket fails. Routes of ours (protocol 81) that no learned route wants are removed by the
//! resync, but only once the speaker has had the graceful-restart time to learn the routes back
//! after an agent restart, so a restart does not blink the routes a previous run installed.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

use felis_bgp::rib::RibChange;
use felis_netlink::Netns;
use felis_netlink::RouteFilter;
use felis_netlink::RouteOp;
use felis_netlink::RouteWriter;
use felis_netlink::TABLE_MAIN;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::debug;
use tracing::info;
use tracing::warn;

use super::fib::FIB_PROTOCOL;
use super::fib::Fib;
use super::fib::Learned;
use super::fib::Resolved;
use crate::calc::LearnedRouting;
use crate::run::ErrorChain;

/// Changes per message from the forward task to the thread.
const FORWARD_BATCH: usize = 4096;
/// Route changes per [`RouteWriter::write`] call.
const WRITE_CHUNK: usize = 2048;

/// What the writer thread is told.
#[derive(Debug)]
enum FibInput {
    Changes(Vec<Learned>),
    Routing(LearnedRouting),
    Clear,
    Resync,
}

/// The handle on the writer thread; dropping it (and every forward task) ends the thread.
#[derive(Debug)]
pub struct FibWriter {
    tx: mpsc::Sender<FibInput>,
    routing: Option<LearnedRouting>,
}

impl FibWriter {
    /// Starts the writer on the calling thread's network namespace. Routes of ours that no
    /// learned route wants are removed from `sweep_after` on (the graceful-restart time).
    pub fn start(sweep_after: Duration) -> Result<FibWriter, felis_netlink::Error> {
        FibWriter::start_in(&Netns::current()?, sweep_after)
    }

    /// The same, on the namespace `netns`.
    pub fn start_in(
        netns: &Netns,
        sweep_after: Duration,
    ) -> Result<FibWriter, felis_netlink::Error> {
        let writer = RouteWriter::open(netns)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("bgp-fib".into())
            .spawn(move || run(writer, &rx, sweep_after))
            .map_err(|source| felis_netlink::Error::Request {
                op: "start",
                object: "the BGP route writer thread".into(),
                source,
            })?;
        Ok(FibWriter { tx, routing: None })
    }

    /// Feeds a speaker's best-route changes to the writer (from a task of its own, until the
    /// speaker ends).
    pub fn forward(&self, mut changes: UnboundedReceiver<RibChange>) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(FORWARD_BATCH);
            while changes.recv_many(&mut batch, FORWARD_BATCH).await > 0 {
                let learned = batch.drain(..).map(|c| Learned::from_change(&c)).collect();
                if tx.send(FibInput::Changes(learned)).is_err() {
                    break;
                }
            }
        });
    }

    /// What decides the routes, from the graph; sent on only when it changed.
    pub fn set_routing(&mut self, routing: LearnedRouting) {
        if self.routing.as_ref() == Some(&routing) {
            return;
        }
        self.routing = Some(routing.clone());
        let _ = self.tx.send(FibInput::Routing(routing));
    }

    /// The speaker stopped: delete every learned route.
    pub fn clear(&self) {
        let _ = self.tx.send(FibInput::Clear);
    }

    /// Look up next hops again, mend what the kernel lost, and sweep stale routes.
    pub fn resync(&self) {
        let _ = self.tx.send(FibInput::Resync);
    }
}

/// The writer thread's state: the socket and the chunk being filled.
struct Shell {
    writer: RouteWriter,
    chunk: Vec<RouteOp>,
    written: usize,
    failed: usize,
    broken: bool,
}

impl Shell {
    fn push(&mut self, op: RouteOp) {
        self.chunk.push(op);
        if self.chunk.len() >= WRITE_CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.chunk.is_empty() {
            return;
        }
        match self.writer.write(&self.chunk) {
            Ok(report) => {
                self.written += self.chunk.len() - report.failures.len();
                // A delete of a route already gone is no failure.
                let failures: Vec<_> = report
                    .failures
                    .iter()
                    .filter(|f| {
                        !(f.is_not_found()
                            && matches!(self.chunk.get(f.index), Some(RouteOp::Delete(_))))
                    })
                    .collect();
                if let Some(first) = failures.first() {
                    self.failed += failures.len();
                    self.broken = true;
                    if let Some(op) = self.chunk.get(first.index) {
                        warn!(
                            count = failures.len(),
                            route = %op.route(),
                            error = %first.error,
                            "kernel refused BGP routes; retrying at the next resync"
                        );
                    }
                }
            }
            Err(e) => {
                self.failed += self.chunk.len();
                self.broken = true;
                warn!(error = %ErrorChain(&e), "writing BGP routes failed; retrying at the next resync");
            }
        }
        self.chunk.clear();
    }

    fn resolve(&mut self, hop: std::net::IpAddr) -> Resolved {
        match self.writer.lookup(hop) {
            Ok(route) => route.and_then(|r| Some((r.gateway.unwrap_or(hop), r.ifindex?))),
            Err(e) => {
                warn!(%hop, error = %ErrorChain(&e), "next hop lookup failed");
                self.broken = true;
                None
            }
        }
    }
}

/// Applies one input once routing is known (a routing input is the caller's); returns whether
/// it asks for a resync.
fn feed(fib: &mut Fib, shell: &mut Shell, input: FibInput) -> bool {
    match input {
        FibInput::Changes(changes) => {
            for hop in fib.unresolved(&changes) {
                let resolved = shell.resolve(hop);
                fib.add_resolved(hop, resolved);
            }
            fib.apply(&changes, |op| shell.push(op));
        }
        FibInput::Clear => fib.clear(|op| shell.push(op)),
        FibInput::Resync => return true,
        FibInput::Routing(_) => {}
    }
    false
}

fn run(writer: RouteWriter, rx: &mpsc::Receiver<FibInput>, sweep_after: Duration) {
    #[allow(clippy::disallowed_methods)] // the shell reads the clock
    let started = Instant::now();
    let mut shell = Shell {
        writer,
        chunk: Vec::with_capacity(WRITE_CHUNK),
        written: 0,
        failed: 0,
        broken: false,
    };
    let mut fib = Fib::new();
    let mut routing: Option<LearnedRouting> = None;
    // Changes that came before the graph's first word on routing.
    let mut early: Vec<FibInput> = Vec::new();
    while let Ok(first) = rx.recv() {
        #[allow(clippy::disallowed_methods)] // the shell reads the clock
        let begun = Instant::now();
        let mut reroute = false;
        let mut resync = false;
        let mut input = Some(first);
        while let Some(next) = input.take() {
            match next {
                FibInput::Routing(r) => {
                    routing = Some(r);
                    reroute = true;
                }
                other if routing.is_none() => early.push(other),
                other => resync |= feed(&mut fib, &mut shell, other),
            }
            if routing.is_some() && !early.is_empty() {
                // Replay what came early, now that routes can be decided.
                let replay = std::mem::take(&mut early);
                if let Some(r) = routing.clone() {
                    fib.reroute(r, BTreeMap::new(), |op| shell.push(op));
                }
                for item in replay {
                    resync |= feed(&mut fib, &mut shell, item);
                }
            }
            input = rx.try_recv().ok();
        }
        if let Some(r) = routing.clone()
            && (reroute || resync)
        {
            // Where each next hop leads, as of now; then every route that changed.
            let resolved: BTreeMap<_, _> = fib
                .next_hops()
                .into_iter()
                .map(|hop| (hop, shell.resolve(hop)))
                .collect();
            fib.reroute(r, resolved, |op| shell.push(op));
        }
        shell.flush();
        if resync && routing.is_some() {
            #[allow(clippy::disallowed_methods)] // the shell reads the clock
            let sweep = started.elapsed() >= sweep_after;
            mend(&mut shell, &fib, sweep);
        }
        if shell.written + shell.failed > 0 {
            let ms = begun.elapsed().as_secs_f64() * 1e3;
            if shell.written + shell.failed >= 10_000 {
                info!(
                    written = shell.written,
                    failed = shell.failed,
                    learned = fib.len(),
                    ms = ms.round(),
                    "BGP routes programmed"
                );
            } else {
                debug!(
                    written = shell.written,
                    failed = shell.failed,
                    learned = fib.len(),
                    ms,
                    "BGP routes programmed"
                );
            }
            shell.written = 0;
            shell.failed = 0;
        }
    }
}

/// Compares the kernel's routes of ours with what the learned routes want: removes the
/// unwanted ones (when `sweep`) and writes everything again when some wanted one is missing.
fn mend(shell: &mut Shell, fib: &Fib, sweep: bool) {
    let mut wanted = 0usize;
    fib.routes(|_| wanted += 1);
    let mut matched = 0usize;
    let mut stale: Vec<RouteOp> = Vec::new();
    let filter = RouteFilter {
        protocol: Some(FIB_PROTOCOL),
        table: Some(TABLE_MAIN),
        ..RouteFilter::default()
    };
    let dumped = shell.writer.dump(filter, |route| {
        if fib.is_wanted(&route) {
            matched += 1;
        } else if sweep {
            stale.push(RouteOp::Delete(route));
        }
    });
    if let Err(e) = dumped {
        warn!(error = %ErrorChain(&e), "listing BGP routes failed");
        return;
    }
    if !stale.is_empty() {
        info!(
            count = stale.len(),
            "removing BGP routes no peer advertises"
        );
        for op in stale {
            shell.push(op);
        }
    }
    if matched < wanted || shell.broken {
        shell.broken = false;
        if matched < wanted {
            info!(missing = wanted - matched, "writing missing BGP routes");
        }
        fib.routes(|route| shell.push(RouteOp::Replace(route)));
    }
    shell.flush();
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::Arc;

    use felis_bgp::packet::update::PathAttributes;
    use felis_bgp::rib::ChangeKind;
    use felis_bgp::rib::RouteAttrs;
    use ipnet::IpNet;

    use super::*;

    /// A namespace `ct-<pid>-<tag>` with r0 (a veth end, up) holding 192.0.2.1/24; deleted on
    /// drop. `None` (the test skips) when not root.
    struct Ns(String);

    impl Ns {
        fn new(tag: &str) -> Option<Ns> {
            let root = Command::new("id").arg("-u").output().ok()?.stdout == b"0\n";
            if !root {
                eprintln!("skipped: needs root for network namespaces");
                return None;
            }
            let ns = Ns(format!("ct-{}-{tag}", std::process::id()));
            let _ = Netns::delete_named(&ns.0);
            Netns::create_named(&ns.0).unwrap();
            ns.ip("link set lo up");
            ns.ip("link add r0 type veth peer name r1");
            ns.ip("addr add 192.0.2.1/24 dev r0");
            ns.ip("link set r0 up");
            ns.ip("link set r1 up");
            Some(ns)
        }

        fn ip(&self, args: &str) -> String {
            let out = Command::new("ip")
                .args(["-n", &self.0])
                .args(args.split_whitespace())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ip {args}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// Waits (up to 5 s) until `ip route show proto 81` satisfies `ok`; returns it.
        fn wait_routes(&self, ok: impl Fn(&str) -> bool) -> String {
            for _ in 0..250 {
                let routes = self.ip("route show proto 81");
                if ok(&routes) {
                    return routes;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("routes never as expected: {}", self.ip("route show"));
        }
    }

    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Netns::delete_named(&self.0);
        }
    }

    fn change(prefix: &str, next_hop: Option<&str>) -> RibChange {
        let next_hop = next_hop.map(|h| h.parse().unwrap());
        RibChange {
            prefix: prefix.parse::<IpNet>().unwrap(),
            next_hop,
            attrs: Arc::new(RouteAttrs {
                next_hop,
                link_local: None,
                path: PathAttributes::default(),
            }),
            peer: "192.0.2.2".parse().unwrap(),
            kind: match next_hop {
                Some(_) => ChangeKind::Added,
                None => ChangeKind::Removed,
            },
        }
    }

    fn routing() -> LearnedRouting {
        LearnedRouting {
            own: [IpAddr::from([192, 0, 2, 1])].into(),
            local_v4: Some("192.0.2.1/24".parse().unwrap()),
            ..LearnedRouting::default()
        }
    }

    use std::net::IpAddr;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn learned_routes_reach_the_kernel_and_leave_it_and_resync_mends_them() {
        let Some(ns) = Ns::new("fibw") else { return };
        let netns = Netns::open(format!("/run/netns/{}", ns.0)).unwrap();
        // A stale route of ours from a "previous run", and someone else's route.
        ns.ip("route add 10.99.0.0/24 via 192.0.2.9 proto 81");
        ns.ip("route add 10.98.0.0/24 via 192.0.2.9");
        let mut fib = FibWriter::start_in(&netns, Duration::ZERO).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        fib.forward(rx);
        // Changes before the graph's first word on routing wait for it.
        for i in 0..250 {
            tx.send(change(&format!("10.70.{i}.0/24"), Some("192.0.2.2")))
                .unwrap();
        }
        tx.send(change("10.80.0.0/24", Some("192.0.2.1"))).unwrap(); // our own next hop
        fib.set_routing(routing());
        let routes = ns.wait_routes(|r| r.lines().count() >= 251);
        assert!(
            routes.contains("10.70.0.0/24 via 192.0.2.2 dev r0"),
            "{routes}"
        );
        assert!(!routes.contains("10.80.0.0"), "{routes}");

        // Withdrawn and moved routes.
        tx.send(change("10.70.0.0/24", None)).unwrap();
        tx.send(change("10.70.1.0/24", Some("192.0.2.3"))).unwrap();
        let routes = ns.wait_routes(|r| {
            !r.contains("10.70.0.0/24") && r.contains("10.70.1.0/24 via 192.0.2.3")
        });
        assert_eq!(
            routes.lines().filter(|l| l.starts_with("10.70.")).count(),
            249
        );

        // Resync: a route lost from the kernel comes back, the stale one goes (sweep time 0),
        // and the other owner's route stays.
        ns.ip("route del 10.70.5.0/24 proto 81");
        fib.resync();
        let routes = ns.wait_routes(|r| r.contains("10.70.5.0/24") && !r.contains("10.99.0.0"));
        assert_eq!(routes.lines().count(), 249, "{routes}");
        assert!(ns.ip("route show").contains("10.98.0.0/24"));

        // The speaker stops: every learned route goes.
        fib.clear();
        ns.wait_routes(str::is_empty);
        assert!(ns.ip("route show").contains("10.98.0.0/24"));
    }

    /// IPv6 unicast (MP-BGP) routes reach the kernel's IPv6 table with protocol 81 and leave it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn learned_ipv6_routes_reach_the_kernel_and_leave_it() {
        let Some(ns) = Ns::new("fib6") else { return };
        if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
            eprintln!("skipped: this kernel has no IPv6");
            return;
        }
        ns.ip("addr add 2001:db8:f::1/64 dev r0 nodad");
        let netns = Netns::open(format!("/run/netns/{}", ns.0)).unwrap();
        let mut fib = FibWriter::start_in(&netns, Duration::ZERO).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        fib.forward(rx);
        let v6_routes = || ns.ip("-6 route show proto 81");
        let wait = |ok: &dyn Fn(&str) -> bool| {
            for _ in 0..250 {
                let routes = v6_routes();
                if ok(&routes) {
                    return routes;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("IPv6 routes never as expected: {}", ns.ip("-6 route show"));
        };
        for i in 0..50 {
            tx.send(change(
                &format!("2001:db8:70:{i:x}::/64"),
                Some("2001:db8:f::2"),
            ))
            .unwrap();
        }
        tx.send(change("2001:db8:80::/64", Some("2001:db8:f::1")))
            .unwrap(); // our own
        fib.set_routing(LearnedRouting {
            own: [
                IpAddr::from([192, 0, 2, 1]),
                "2001:db8:f::1".parse().unwrap(),
            ]
            .into(),
            local_v4: Some("192.0.2.1/24".parse().unwrap()),
            local_v6: Some("2001:db8:f::1/64".parse().unwrap()),
            ..LearnedRouting::default()
        });
        let routes = wait(&|r: &str| r.lines().count() >= 50);
        assert!(
            routes.contains("2001:db8:70::/64 via 2001:db8:f::2 dev r0"),
            "{routes}"
        );
        assert!(!routes.contains("2001:db8:80::"), "{routes}");

        tx.send(change("2001:db8:70::/64", None)).unwrap();
        let routes = wait(&|r: &str| !r.contains("2001:db8:70::/64"));
        assert_eq!(routes.lines().count(), 49, "{routes}");

        fib.clear();
        wait(&str::is_empty);
    }
}
