//! The agent's shell: start-up (IP autodetection, Node registration, default pool, VXLAN tunnel
//! address), the datastore watch feeding the calculation graph, the reconcile loop, and the
//! health endpoint. It makes no decisions: those are in [`crate::calc`] and [`crate::dataplane`].
//!
//! ```text
//!  watch thread ──(Snapshot | Put | Delete)──► loop: graph.apply ─► desired ─► Dataplane
//!   (blocking store)          mpsc             │ ▲ resync timer, retry after errors
//!                                              └► policy (crate::policy) ─► Program ─► nftables
//! ```
//!
//! Readiness waits for both: routes reconciled and this node's policy programmed from a
//! datastore snapshot (so no workload is attached before its host enforces policy).

use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::SystemTime;

use felis_api::Kind;
use felis_api::ObjectMeta;
use felis_api::Resource;
use felis_api::ipam::EncapMode;
use felis_api::ipam::IpPool;
use felis_api::ipam::IpPoolSpec;
use felis_api::node::Node;
use felis_api::node::NodeBgpSpec;
use felis_client::Client;
use felis_netlink::Handle;
use felis_store::Datastore;
use felis_store::Revision;
use felis_store::WatchEvent;
use ipnet::IpNet;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::info;
use tracing::warn;

use crate::autodetect;
use crate::bgp::BgpRunner;
use crate::bgp::FibWriter;
use crate::calc::CalcGraph;
use crate::calc::Update;
use crate::dataplane::Dataplane;
use crate::policy::PolicyPlane;
use crate::sync;

/// First wait before setting again the policy device group of a workload interface that did not
/// exist; doubled while none appears, up to [`LINKS_RETRY_MAX`].
const LINKS_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two such retries.
const LINKS_RETRY_MAX: Duration = Duration::from_secs(10);

/// How the node's address is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpSetting {
    /// Given (`--ip 10.0.1.10/24`).
    Fixed(IpNet),
    /// Detected with a method (`--ip autodetect`, `IP_AUTODETECTION_METHOD`).
    Autodetect(autodetect::Method),
}

/// A default pool to create when no pool exists (calico-node's `CALICO_IPV4POOL_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultPool {
    /// Its CIDR.
    pub cidr: IpNet,
    /// `vxlanMode`.
    pub vxlan_mode: EncapMode,
    /// `ipipMode`.
    pub ipip_mode: EncapMode,
    /// `natOutgoing`.
    pub nat_outgoing: bool,
}

/// The agent's configuration.
pub struct Config {
    /// The node's name.
    pub node_name: String,
    /// How its address is chosen.
    pub ip: IpSetting,
    /// The datastore.
    pub store: Arc<dyn Datastore>,
    /// Where `/liveness` and `/readiness` are served.
    pub health_address: SocketAddr,
    /// A pool to create if none exists.
    pub default_pool: Option<DefaultPool>,
    /// Full reconciliation period.
    pub resync_interval: Duration,
    /// Where `nodename` and `mtu` are written for the CNI plugin, and `status.json` for
    /// `felis node status`.
    pub state_dir: PathBuf,
    /// Run the BGP speaker (calico-node's `CALICO_NETWORKING_BACKEND=bird`).
    pub bgp: bool,
}

/// Agent errors (start-up; the loop itself retries).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable address.
    #[error("no IPv4 address found with autodetection method {0:?}")]
    NoAddress(String),
    /// Netlink failed.
    #[error("{0}")]
    Netlink(String, #[source] felis_netlink::Error),
    /// The datastore failed.
    #[error("datastore: {0}")]
    Client(#[from] felis_client::Error),
    /// The datastore failed.
    #[error("datastore")]
    Store(#[from] felis_store::Error),
    /// IPAM failed.
    #[error("allocating a tunnel address")]
    Ipam(#[from] felis_ipam::Error),
    /// A file could not be written.
    #[error("writing {path}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The health endpoint could not listen.
    #[error("health endpoint on {address}")]
    Health {
        /// The address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task failed.
    #[error("internal task failed: {0}")]
    Task(String),
}

enum StoreEvent {
    Snapshot(Vec<felis_store::KeyValue>, Revision),
    Put(felis_store::KeyValue),
    Delete(String, Revision),
}

impl StoreEvent {
    /// The datastore revision this event brings the agent's view up to.
    fn revision(&self) -> Revision {
        match self {
            StoreEvent::Snapshot(_, revision) | StoreEvent::Delete(_, revision) => *revision,
            StoreEvent::Put(kv) => kv.mod_revision,
        }
    }

    /// Whether the event may change a FelixConfiguration (a snapshot may change anything).
    fn touches_felix_configuration(&self) -> bool {
        const KEYS: &str = "/projectcalico.org/felixconfigurations/";
        match self {
            StoreEvent::Snapshot(..) => true,
            StoreEvent::Put(kv) => kv.key.contains(KEYS),
            StoreEvent::Delete(key, _) => key.contains(KEYS),
        }
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let handle = Handle::current()
        .await
        .map_err(|e| Error::Netlink("netlink".into(), e))?;
    let address = match &config.ip {
        IpSetting::Fixed(net) => *net,
        IpSetting::Autodetect(method) => detect(&handle, method).await?,
    };
    let host_mtu = host_mtu(&handle).await;
    info!(node = %config.node_name, %address, host_mtu, "starting");
    handle
        .write_sysctls(&[("net.ipv4.ip_forward".to_string(), "1".to_string())])
        .map_err(|e| Error::Netlink("enabling IP forwarding".into(), e))?;

    let ready = Arc::new(AtomicBool::new(false));
    // Readiness also waits for the AWS source/destination check when it is asked for.
    let aws_ready = Arc::new(AtomicBool::new(true));
    let listener = tokio::net::TcpListener::bind(config.health_address)
        .await
        .map_err(|source| Error::Health {
            address: config.health_address,
            source,
        })?;
    let metrics = Arc::new(std::sync::Mutex::new(String::new()));
    tokio::spawn(serve_health(
        listener,
        ready.clone(),
        aws_ready.clone(),
        metrics.clone(),
    ));

    let store = config.store.clone();
    let node_name = config.node_name.clone();
    let default_pool = config.default_pool.clone();
    blocking(move || register(store.as_ref(), &node_name, address, default_pool.as_ref()))
        .await??;
    write_state_file(&config, "nodename", &config.node_name)?;

    let store = config.store.clone();
    let node_name = config.node_name.clone();
    let mut aws_mode = blocking(move || aws_src_dst_mode(store.as_ref(), &node_name)).await?;
    // Re-applied (the previous attempt abandoned) whenever a FelixConfiguration changes it.
    let mut aws_task = None;
    if aws_mode != felis_aws::srcdst::SrcDstMode::DoNothing {
        aws_ready.store(false, Ordering::SeqCst);
        aws_task = Some(tokio::spawn(apply_src_dst_check(
            aws_mode,
            aws_ready.clone(),
        )));
    }

    let (tx, mut rx) = mpsc::channel::<StoreEvent>(1024);
    let store = config.store.clone();
    std::thread::Builder::new()
        .name("store-watch".into())
        .spawn(move || watch_store(store.as_ref(), &tx))
        .map_err(|e| Error::Task(e.to_string()))?;

    // With BGP, unencapsulated routes to remote blocks are BGP's (crate::bgp::fib), as Calico's.
    let mut graph = CalcGraph::new(config.node_name.clone()).routed_by_bgp(config.bgp);
    let mut dataplane = Dataplane::new(handle, address.addr(), host_mtu);
    let mut policy = Some(PolicyPlane::new(config.node_name.clone()));
    let mut policy_failed = false;
    let mut resync = tokio::time::interval(config.resync_interval);
    let mut retry_after_error = false;
    let mut tunnel_checked_for: Option<bool> = None;
    let mut ipip_tunnel: Option<std::net::Ipv4Addr> = None;
    let mut written_mtu: Option<u32> = None;
    // BGP: the speaker follows the graph's desired configuration; what it learns comes back
    // into the graph as facts.
    let mut bgp_runner = config
        .bgp
        .then(|| BgpRunner::new(crate::bgp::DEFAULT_SECRETS_DIR));
    // What the speaker learns goes into the kernel through the batched route writer.
    let mut fib = match config.bgp {
        true => Some(
            FibWriter::start(Duration::from_secs(u64::from(
                crate::bgp::DEFAULT_RESTART_TIME,
            )))
            .map_err(|e| Error::Netlink("starting the BGP route writer".into(), e))?,
        ),
        false => None,
    };
    let mut status_tick = tokio::time::interval(crate::bgp::STATUS_INTERVAL);
    let mut bgp_failed = false;
    // The datastore revision the agent has seen, and the one whose policy and routes are
    // known to be in the kernel (written to `synced-revision` for tests and tools).
    let mut seen_revision = 0i64;
    let mut written_revision = 0i64;
    let mut policy_current = false;
    // Workload interfaces missing when their policy device group was set: retried on their
    // own timer (no reconcile), sooner at first, backing off while they stay missing.
    let mut links_missing = false;
    let mut links_retry = LINKS_RETRY_FIRST;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down; the dataplane stays as it is");
                if let Some(runner) = &mut bgp_runner {
                    // Cease to every peer (no graceful restart: they withdraw our routes, as
                    // BIRD's do when it stops), and a moment for the peers to read it before
                    // the process exits (unread data would turn our close into a reset).
                    let _ = runner.reconcile(None).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                return Ok(());
            }
            event = rx.recv() => {
                let Some(event) = event else { return Err(Error::Task("store watch ended".into())) };
                let plane = policy.get_or_insert_with(|| PolicyPlane::new(config.node_name.clone()));
                seen_revision = seen_revision.max(event.revision().0);
                let mut felix_config_changed = event.touches_felix_configuration();
                apply_event(&mut graph, plane, &config.node_name, event);
                // Take everything already queued before reconciling once.
                while let Ok(event) = rx.try_recv() {
                    seen_revision = seen_revision.max(event.revision().0);
                    felix_config_changed |= event.touches_felix_configuration();
                    apply_event(&mut graph, plane, &config.node_name, event);
                }
                if felix_config_changed {
                    let (store, node_name) = (config.store.clone(), config.node_name.clone());
                    let mode = blocking(move || aws_src_dst_mode(store.as_ref(), &node_name)).await?;
                    if mode != aws_mode {
                        info!(from = %aws_mode, to = %mode, "awsSrcDstCheck changed");
                        if let Some(task) = aws_task.take() {
                            task.abort();
                        }
                        aws_mode = mode;
                        let wanted = mode != felis_aws::srcdst::SrcDstMode::DoNothing;
                        aws_ready.store(!wanted, Ordering::SeqCst);
                        if wanted {
                            aws_task = Some(tokio::spawn(apply_src_dst_check(mode, aws_ready.clone())));
                        }
                    }
                }
            }
            _ = resync.tick() => {
                dataplane.invalidate();
                if let Some(fib) = &fib {
                    fib.resync();
                }
                if let Some(plane) = &mut policy {
                    plane.invalidate();
                }
            }
            _ = status_tick.tick() => {
                let mut text = dataplane.fast_path_mut().prometheus();
                if let Some(runner) = &bgp_runner {
                    #[allow(clippy::disallowed_methods)] // the shell reads the clock for the report
                    let report = runner.status(std::time::SystemTime::now()).await;
                    text.push_str(&report.prometheus());
                    let path = config.state_dir.join("status.json");
                    if let Err(e) = crate::bgp::write_status_file(&path, &report) {
                        warn!(error = %ErrorChain(&e), "writing the BGP status failed");
                    }
                }
                if let Ok(mut metrics) = metrics.lock() {
                    *metrics = text;
                }
                continue;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)), if retry_after_error => {}
            _ = tokio::time::sleep(links_retry), if links_missing => {
                let mut failed = false;
                if let Some(mut plane) = policy.take() {
                    let (plane, result) = blocking(move || {
                        let result = plane.retry_missing_links();
                        (plane, result)
                    })
                    .await?;
                    match result {
                        Ok(0) => links_retry = (links_retry * 2).min(LINKS_RETRY_MAX),
                        Ok(fixed) => {
                            info!(interfaces = fixed, "policy groups set on interfaces that appeared");
                            links_retry = LINKS_RETRY_FIRST;
                        }
                        Err(e) => {
                            warn!(error = %ErrorChain(&e), "setting policy groups failed; resyncing");
                            failed = true;
                        }
                    }
                    links_missing = plane.has_missing_links();
                    policy = Some(plane);
                }
                // After a failure the pass below resyncs the policy (the plane asked for it).
                if !failed {
                    continue;
                }
            }
        }
        // Calico's pod MTU: the host's, less the largest overhead of the encapsulations in use.
        let pod_mtu = host_mtu.saturating_sub(graph.encap_overhead());
        if written_mtu != Some(pod_mtu) {
            match write_state_file(&config, "mtu", &pod_mtu.to_string()) {
                Ok(()) => written_mtu = Some(pod_mtu),
                Err(e) => warn!(error = %ErrorChain(&e), "writing the MTU file failed"),
            }
        }
        if let Some(runner) = &mut bgp_runner {
            let result = runner.reconcile(graph.bgp_desired().as_ref()).await;
            if result.stopped {
                graph.apply(Update::LearnedRoutesCleared);
                if let Some(fib) = &fib {
                    fib.clear();
                }
            }
            if let (Some(changes), Some(fib)) = (result.changes, &fib) {
                fib.forward(changes);
            }
            for e in &result.errors {
                warn!(error = %ErrorChain(e), "BGP configuration not applied yet; retrying");
            }
            bgp_failed = !result.errors.is_empty();
        }
        if let Some(fib) = &mut fib {
            fib.set_routing(graph.learned_routing());
        }
        let desired = graph.desired();
        // A VXLAN pool needs this node's tunnel address: allocate it once pools say so.
        let wants_vxlan = graph.uses_vxlan();
        if tunnel_checked_for != Some(wants_vxlan) && wants_vxlan {
            let store = config.store.clone();
            let node_name = config.node_name.clone();
            match blocking(move || ensure_vxlan_tunnel(store.as_ref(), &node_name)).await? {
                Ok(()) => tunnel_checked_for = Some(true),
                Err(e) => warn!(error = %ErrorChain(&e), "VXLAN tunnel address not allocated yet"),
            }
        }
        // An IPIP pool needs this node's IPIP tunnel address (the source of host → remote pod
        // traffic, see crate::ipip).
        if desired.ipip && ipip_tunnel.is_none() {
            let store = config.store.clone();
            let node_name = config.node_name.clone();
            match blocking(move || ensure_ipip_tunnel(store.as_ref(), &node_name)).await? {
                Ok(address) => {
                    ipip_tunnel = Some(address);
                    dataplane.ipip_mut().set_tunnel_address(Some(address));
                }
                Err(e) => warn!(error = %ErrorChain(&e), "IPIP tunnel address not allocated yet"),
            }
        }
        // A host endpoint naming only `expectedIPs` applies to the interface holding one.
        if let Some(plane) = &mut policy
            && plane.state.wants_host_addresses()
        {
            match dataplane.host_addresses().await {
                Ok(addresses) => {
                    if plane.state.set_host_addresses(addresses) {
                        plane.mark_dirty();
                    }
                }
                Err(e) => warn!(error = %ErrorChain(&e), "reading this host's addresses failed"),
            }
        }
        // Policy: compiled and sent to nftables off the async threads (it runs `nft`).
        if let Some(mut plane) = policy.take() {
            let (plane, result) = blocking(move || {
                let result = plane.apply();
                (plane, result)
            })
            .await?;
            policy_current = result.is_ok();
            match result {
                Ok(Some(applied)) if applied.stats.is_empty() && applied.skipped.is_empty() => {
                    // Recompiled after an irrelevant change (say, a WEP's container ID).
                    policy_failed = false;
                }
                Ok(Some(applied)) => {
                    policy_failed = false;
                    // Flows the fast path carries meet the new policy at their next packet.
                    dataplane.fast_path_mut().policy_changed();
                    for (key, reason) in &applied.skipped {
                        warn!(%key, %reason, "policy resource refused; enforcing the rest without it");
                    }
                    let s = &applied.stats;
                    info!(
                        endpoints = applied.endpoints,
                        policies = applied.policies,
                        full = s.full,
                        chains_added = s.chains_added,
                        chains_replaced = s.chains_replaced,
                        chains_removed = s.chains_removed,
                        elements_added = s.elements_added,
                        elements_removed = s.elements_removed,
                        map_changes = s.map_changes,
                        links_changed = s.links_changed,
                        script_bytes = s.script_bytes,
                        compile_ms = round2(applied.compile_ms),
                        apply_ms = round2(applied.apply_ms),
                        "policy programmed"
                    );
                }
                Ok(None) => {}
                Err(e @ crate::policy::PolicyError::Compile(_)) => {
                    // Retried when the resources change; the dataplane keeps its last program.
                    warn!(error = %ErrorChain(&e), "policy not updated");
                }
                Err(e) => {
                    warn!(error = %ErrorChain(&e), "programming policy failed; resyncing");
                    policy_failed = true;
                }
            }
            if !links_missing && plane.has_missing_links() {
                links_retry = LINKS_RETRY_FIRST;
            }
            links_missing = plane.has_missing_links();
            policy = Some(plane);
        }
        let policy_ready = policy.as_ref().is_some_and(PolicyPlane::ready);
        match dataplane.reconcile(&desired).await {
            Ok(stats) => {
                retry_after_error = policy_failed || bgp_failed;
                if policy_current && policy_ready && seen_revision != written_revision {
                    match write_state_file(&config, "synced-revision", &seen_revision.to_string()) {
                        Ok(()) => written_revision = seen_revision,
                        Err(e) => warn!(error = %ErrorChain(&e), "writing synced-revision failed"),
                    }
                }
                if policy_ready && !ready.swap(true, Ordering::SeqCst) {
                    info!(
                        routes = desired.routes.len(),
                        "dataplane and policy programmed; ready"
                    );
                }
                if stats.routes_set + stats.routes_removed > 0 {
                    info!(
                        set = stats.routes_set,
                        removed = stats.routes_removed,
                        pending = stats.routes_pending,
                        "routes reconciled"
                    );
                }
            }
            Err(e) => {
                warn!(error = %ErrorChain(&e), "reconcile failed; retrying");
                dataplane.invalidate();
                retry_after_error = true;
            }
        }
    }
}

fn apply_event(graph: &mut CalcGraph, policy: &mut PolicyPlane, node: &str, event: StoreEvent) {
    match event {
        StoreEvent::Snapshot(items, _) => {
            let (changed, errors) = policy.state.snapshot(
                items
                    .iter()
                    .map(|kv| (kv.key.as_str(), kv.value.as_slice())),
            );
            for e in errors {
                warn!(error = %e, "skipping a policy value");
            }
            if changed {
                policy.mark_dirty();
            }
            // A new snapshot of the resources; same node and mode, learned routes kept.
            *graph = graph.emptied();
            for kv in items {
                apply_put(graph, node, &kv);
            }
        }
        StoreEvent::Put(kv) => {
            match policy.state.put(&kv.key, &kv.value) {
                Ok(true) => policy.mark_dirty(),
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "skipping a policy value");
                    policy.mark_dirty();
                }
            }
            apply_put(graph, node, &kv);
        }
        StoreEvent::Delete(key, _) => {
            if policy.state.delete(&key) {
                policy.mark_dirty();
            }
            if let Some(update) = sync::on_delete(&key) {
                graph.apply(update);
            }
        }
    }
}

fn apply_put(graph: &mut CalcGraph, node: &str, kv: &felis_store::KeyValue) {
    match sync::on_put(node, &kv.key, &kv.value) {
        Ok(Some(update)) => graph.apply(update),
        Ok(None) => {
            // A workload endpoint that moved to another node is no longer ours.
            if let Some(Update::EndpointDeleted(key)) = sync::on_delete(&kv.key) {
                graph.apply(Update::EndpointDeleted(key));
            }
        }
        Err(e) => warn!(error = %e, "skipping a value"),
    }
}

/// Lists and watches `/calico/`, forever; relists after compaction or errors.
fn watch_store(store: &dyn Datastore, tx: &mpsc::Sender<StoreEvent>) {
    loop {
        let listing = match store.list(sync::WATCH_PREFIX) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %ErrorChain(&e), "listing the datastore failed; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if tx
            .blocking_send(StoreEvent::Snapshot(listing.items, listing.revision))
            .is_err()
        {
            return;
        }
        let from = Revision(listing.revision.0 + 1);
        let mut watch = match store.watch(sync::WATCH_PREFIX, from) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %ErrorChain(&e), "watching the datastore failed; relisting");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        loop {
            let event = match watch.next(Duration::from_secs(1)) {
                Ok(Some(WatchEvent::Put(kv))) => StoreEvent::Put(kv),
                Ok(Some(WatchEvent::Delete { key, revision })) => StoreEvent::Delete(key, revision),
                Ok(Some(WatchEvent::Compacted { .. })) => break,
                Ok(None) => {
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    warn!(error = %ErrorChain(&e), "watch failed; relisting");
                    break;
                }
            };
            if tx.blocking_send(event).is_err() {
                return;
            }
        }
    }
}

/// Registers (or updates) this node's Node resource, and creates the default pool if asked to
/// and no pool exists.
fn register(
    store: &dyn Datastore,
    node_name: &str,
    address: IpNet,
    default_pool: Option<&DefaultPool>,
) -> Result<(), Error> {
    let client = Client::new(store);
    client.upsert(Kind::Node, None, node_name, &|existing| {
        let mut node = match existing {
            Some(Resource::Node(node)) => node,
            _ => Node {
                metadata: ObjectMeta {
                    name: node_name.to_string(),
                    ..ObjectMeta::default()
                },
                spec: Default::default(),
                status: Default::default(),
            },
        };
        let bgp = node.spec.bgp.get_or_insert_with(NodeBgpSpec::default);
        bgp.ipv4_address = Some(address);
        Ok(Resource::Node(node))
    })?;
    if let Some(pool) = default_pool
        && client.list(Kind::IpPool, None)?.is_empty()
    {
        {
            let mut spec = IpPoolSpec::new(pool.cidr);
            spec.vxlan_mode = pool.vxlan_mode;
            spec.ipip_mode = pool.ipip_mode;
            spec.nat_outgoing = pool.nat_outgoing;
            let name = if pool.cidr.addr().is_ipv4() {
                "default-ipv4-ippool"
            } else {
                "default-ipv6-ippool"
            };
            let resource = Resource::IpPool(IpPool {
                metadata: ObjectMeta {
                    name: name.to_string(),
                    ..ObjectMeta::default()
                },
                spec,
            });
            let resource = Resource::from_value(resource.to_value()).map_err(|source| {
                felis_client::Error::Invalid {
                    kind: "IPPool",
                    name: name.to_string(),
                    source,
                }
            })?;
            match client.write(
                &[resource],
                felis_client::WriteMode::Create {
                    skip_existing: true,
                },
            ) {
                Ok(_) => info!(pool = %pool.cidr, "created the default pool"),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Gives this node a VXLAN tunnel address (IPAM handle `vxlan-tunnel-addr-<node>`) and MAC,
/// recorded in its Node resource.
fn ensure_vxlan_tunnel(store: &dyn Datastore, node_name: &str) -> Result<(), Error> {
    let client = Client::new(store);
    if let Resource::Node(node) = client.get(Kind::Node, None, node_name)?
        && node.spec.ipv4_vxlan_tunnel_addr.is_some()
        && node.spec.vxlan_tunnel_mac_addr.is_some()
    {
        return Ok(());
    }
    #[allow(clippy::disallowed_methods)] // the shell reads the clock and hands it to IPAM
    let now = SystemTime::now();
    let ipam = felis_ipam::Ipam::new(store);
    let tunnel = ipam.assign_tunnel_address(
        node_name,
        felis_ipam::TunnelKind::Vxlan,
        now,
        &mut rand::rng(),
    )?;
    let mac = vtep_mac(node_name);
    client.upsert(Kind::Node, None, node_name, &|existing| match existing {
        Some(Resource::Node(mut node)) => {
            node.spec.ipv4_vxlan_tunnel_addr = Some(tunnel);
            node.spec
                .vxlan_tunnel_mac_addr
                .get_or_insert_with(|| mac.clone());
            Ok(Resource::Node(node))
        }
        _ => Err(felis_client::Error::NotFound {
            kind: "Node",
            name: node_name.to_string(),
        }),
    })?;
    info!(%tunnel, "VXLAN tunnel address allocated");
    Ok(())
}

/// Gives this node an IPIP tunnel address (IPAM handle `ipip-tunnel-addr-<node>`), recorded as
/// its Node's `spec.bgp.ipv4IPIPTunnelAddr`, as calico-node does.
fn ensure_ipip_tunnel(store: &dyn Datastore, node_name: &str) -> Result<std::net::Ipv4Addr, Error> {
    #[allow(clippy::disallowed_methods)] // the shell reads the clock and hands it to IPAM
    let now = SystemTime::now();
    let ipam = felis_ipam::Ipam::new(store);
    // The handle's address if it has one (so a restart keeps it), else a new one.
    let tunnel = ipam.assign_tunnel_address(
        node_name,
        felis_ipam::TunnelKind::Ipip,
        now,
        &mut rand::rng(),
    )?;
    let IpAddr::V4(v4) = tunnel else {
        return Err(Error::Task(format!(
            "IPAM gave the IPv6 address {tunnel} as IPIP tunnel address"
        )));
    };
    let client = Client::new(store);
    let recorded = matches!(
        client.get(Kind::Node, None, node_name)?,
        Resource::Node(node)
            if node.spec.bgp.as_ref().and_then(|b| b.ipv4_ipip_tunnel_addr) == Some(tunnel)
    );
    if !recorded {
        client.upsert(Kind::Node, None, node_name, &|existing| match existing {
            Some(Resource::Node(mut node)) => {
                node.spec
                    .bgp
                    .get_or_insert_with(NodeBgpSpec::default)
                    .ipv4_ipip_tunnel_addr = Some(tunnel);
                Ok(Resource::Node(node))
            }
            _ => Err(felis_client::Error::NotFound {
                kind: "Node",
                name: node_name.to_string(),
            }),
        })?;
        info!(%tunnel, "IPIP tunnel address allocated");
    }
    Ok(v4)
}

/// A stable, locally administered MAC for the node's VTEP: `66:` and five bytes of a hash of
/// its name.
pub fn vtep_mac(node_name: &str) -> String {
    // FNV-1a, 64 bits: stable across runs and versions.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node_name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = hash.to_be_bytes();
    format!(
        "66:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

/// Writes `<state dir>/<name>` atomically (temporary file, then rename): `nodename` and `mtu`
/// for the CNI plugin.
fn write_state_file(config: &Config, name: &str, content: &str) -> Result<(), Error> {
    let err = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| Error::File { path, source }
    };
    std::fs::create_dir_all(&config.state_dir).map_err(err(&config.state_dir))?;
    let path = config.state_dir.join(name);
    let tmp = config.state_dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).map_err(err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(err(&path))
}

async fn detect(handle: &Handle, method: &autodetect::Method) -> Result<IpNet, Error> {
    let links = handle
        .links()
        .await
        .map_err(|e| Error::Netlink("listing links".into(), e))?;
    let addresses = handle
        .addresses(None)
        .await
        .map_err(|e| Error::Netlink("listing addresses".into(), e))?;
    let mut candidates = Vec::new();
    for link in &links {
        for a in addresses.iter().filter(|a| a.ifindex == link.index) {
            candidates.push(autodetect::Candidate {
                interface: link.name.clone(),
                address: a.net,
            });
        }
    }
    let reach = match method {
        autodetect::Method::CanReach(dst) => handle
            .route_lookup(*dst)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.source),
        _ => None,
    };
    autodetect::choose(method, &candidates, true, reach)
        .map(|c| c.address)
        .ok_or_else(|| Error::NoAddress(format!("{method:?}")))
}

/// Calico's host MTU: the smallest MTU of the up interfaces matching `mtuIfacePattern`, 1460
/// when none does.
async fn host_mtu(handle: &Handle) -> u32 {
    let pattern = regex_lite::Regex::new(r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)");
    let Ok(pattern) = pattern else { return 1460 };
    let links = handle.links().await.unwrap_or_default();
    links
        .iter()
        .filter(|l| l.is_up && pattern.is_match(&l.name))
        .filter_map(|l| l.mtu)
        .min()
        .unwrap_or(1460)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))
}

/// `awsSrcDstCheck`: `FELIX_AWSSRCDSTCHECK`, else FelixConfiguration `node.<name>`, else
/// `default`, else DoNothing (Felix's precedence).
fn aws_src_dst_mode(store: &dyn Datastore, node_name: &str) -> felis_aws::srcdst::SrcDstMode {
    if let Ok(value) = std::env::var("FELIX_AWSSRCDSTCHECK")
        && let Ok(mode) = value.parse()
    {
        return mode;
    }
    let client = Client::new(store);
    for name in [format!("node.{node_name}"), "default".to_string()] {
        if let Ok(Resource::FelixConfiguration(felix)) =
            client.get(Kind::FelixConfiguration, None, &name)
            && let Some(mode) = felix
                .spec
                .aws_src_dst_check
                .and_then(|m| serde_json::to_value(m).ok())
                .and_then(|v| v.as_str().and_then(|s| s.parse().ok()))
        {
            return mode;
        }
    }
    felis_aws::srcdst::SrcDstMode::DoNothing
}

/// Sets the instance's source/destination check through the EC2 API, retrying with Calico's
/// backoff (30 s doubling to 8 min) until it is done; then readiness may pass.
async fn apply_src_dst_check(mode: felis_aws::srcdst::SrcDstMode, done: Arc<AtomicBool>) {
    let mut failures = 0;
    loop {
        match tokio::task::spawn_blocking(move || felis_aws::srcdst::apply(mode)).await {
            Ok(Ok(status)) => {
                info!(%status, "AWS source/destination check");
                done.store(true, Ordering::SeqCst);
                return;
            }
            Ok(Err(e)) => {
                failures += 1;
                let delay = felis_aws::srcdst::retry_delay(failures);
                warn!(error = %ErrorChain(&e), retry_in = ?delay, "setting the AWS source/destination check failed");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                warn!(error = %e, "the AWS source/destination check task failed");
                return;
            }
        }
    }
}

/// `/liveness` answers 200 while the agent runs; `/readiness` answers 200 once the dataplane
/// has been programmed (and the AWS source/destination check set, when asked for), 503 before.
async fn serve_health(
    listener: tokio::net::TcpListener,
    ready: Arc<AtomicBool>,
    aws_ready: Arc<AtomicBool>,
    metrics: Arc<std::sync::Mutex<String>>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let ready = ready.clone();
        let aws_ready = aws_ready.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let metrics_text;
            let (status, body) = match path {
                "/liveness" => ("200 OK", "live"),
                "/metrics" => {
                    metrics_text = metrics.lock().map(|m| m.clone()).unwrap_or_default();
                    ("200 OK", metrics_text.as_str())
                }
                "/readiness"
                    if ready.load(Ordering::SeqCst) && aws_ready.load(Ordering::SeqCst) =>
                {
                    ("200 OK", "ready")
                }
                "/readiness" => ("503 Service Unavailable", "not ready"),
                _ => ("404 Not Found", "not found"),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// Milliseconds to two decimals, for logs.
fn round2(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

/// Displays an error with its whole source chain.
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// The node's address, for callers that only have the IP.
pub fn host_address(net: &IpNet) -> IpAddr {
    net.addr()
}
