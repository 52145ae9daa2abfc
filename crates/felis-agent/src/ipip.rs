//! IPIP (`ipipMode: Always | CrossSubnet`) through one of two dataplanes, wire-compatible with
//! each other, so hosts of either kind interoperate:
//!
//! ```text
//!  kernel (the kernel has the ipip module; Calico's way):
//!   tunl0: up, mtu <host-20>, <tunnel addr>/32 (ipv4IPIPTunnelAddr, from IPAM)
//!   route <block> via <node addr> dev tunl0 onlink src <tunnel addr>
//!   nft inet felis: chain ipip-input (hook input): ip protocol 4 ip saddr != @ipip-peers-v4 drop
//!
//!  eBPF (no ipip module, as on the development machines): felis-ebpf's tc classifiers
//!   route <block> via <next hop toward node> dev <host if> onlink src <tunnel addr> mtu <host-20>
//!   tc egress on <host if>:  inner dst ∈ tunnels ──► outer IPv4 (this host → node), protocol 4
//!   tc ingress on <host if>: protocol 4 from a peer to this host ──► inner packet up the stack
//!   lo: <tunnel addr>/32: the source of host → remote pod traffic, so replies come back
//!       through the tunnel
//! ```
//!
//! Which one runs is detected, never assumed: [`DataplaneMode`] (`FELIS_IPIP_DATAPLANE=auto|
//! kernel|ebpf`, default `auto`) and what the kernel answers about `tunl0` ([`KernelIpip`]) make
//! the decision in [`choose_dataplane`]. The kernel can do IPIP when `tunl0` exists (the module
//! creates it in every namespace) or creating an `ipip` link named `tunl0` succeeds; the kernel
//! without the module answers that request with `EOPNOTSUPP` ("Unknown device type"), exactly
//! what is taken to mean "no module". `auto` picks the kernel when it can, eBPF otherwise;
//! forcing `kernel` where it cannot is an [`IpipStatus::Unavailable`] status, not a crash.
//! At start the plane logs the choice without changing the host (a `tunl0` present, or a probe
//! in a throwaway namespace); once IPIP is needed the probe runs in the host's namespace.
//!
//! [`tables`] (pure) derives what both dataplanes need from the desired [`HostState`]:
//! - `tunnels` (eBPF maps): every IPv4 route the graph sends through IPIP (prefix → node
//!   address), plus every IPv4 direct route as a "do not encapsulate" entry, so that a more
//!   specific direct route (an address borrowed by a node in our subnet, inside a block of a
//!   node elsewhere) wins in the LPM trie just as it wins in the kernel's routing table;
//! - `peers`: the nodes the graph routes to by IPIP or directly, i.e. every node owning a
//!   block (a node that sends IPIP has a tunnel address, hence a block). IPIP to this host from
//!   any other source is dropped, as Calico drops IPIP from non-cluster hosts: by the ingress
//!   classifier (eBPF), or by the nftables set [`PEER_SET`] (kernel).
//!
//! [`IpipPlane`] (the shell) keeps the chosen dataplane's pieces and removes the other's
//! leftovers (a restart with another mode adopts cleanly); without IPIP pools it removes what
//! Felis owns: classifiers, the nftables chain and set, the tunnel address (on `lo` or `tunl0`).
//! `tunl0` itself stays: it is the kernel module's own fallback device. When IPIP cannot work
//! it reports [`IpipStatus::Unavailable`] and the IPIP routes wait, instead of the agent failing.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::process::Command;
use std::process::Stdio;
use std::str::FromStr;

use felis_ebpf::IpipTc;
use felis_netlink::Handle;
use felis_netlink::Ifindex;
use felis_netlink::Route;
use felis_netlink::RouteProtocol;
use ipnet::IpNet;
use ipnet::Ipv4Net;
use tracing::info;
use tracing::warn;

use crate::calc::HostState;
use crate::calc::IPIP_OVERHEAD;
use crate::calc::RouteTarget;
use crate::nat;
use crate::run::ErrorChain;

/// The kernel's IPIP device (and Calico's).
pub const TUNL0: &str = "tunl0";
/// The environment variable that picks the dataplane: `auto` (default), `kernel` or `ebpf`.
pub const DATAPLANE_ENV: &str = "FELIS_IPIP_DATAPLANE";
/// The nftables base chain (table `inet felis`, hook input) of the kernel dataplane's filter.
pub const FILTER_CHAIN: &str = "ipip-input";
/// The nftables set of nodes IPIP is accepted from (kernel dataplane).
pub const PEER_SET: &str = "ipip-peers-v4";
/// `EOPNOTSUPP`: what creating an `ipip` link answers on a kernel without the module.
pub const EOPNOTSUPP: i32 = 95;

/// The classifiers' maps and the peer filter, as [`tables`] computes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpipTables {
    /// Inner destination prefix → outer destination; `0.0.0.0` means "do not encapsulate".
    pub tunnels: BTreeMap<Ipv4Net, Ipv4Addr>,
    /// Nodes IPIP is accepted from.
    pub peers: BTreeSet<Ipv4Addr>,
}

/// The maps for `state` (see the module docs); empty when no pool uses IPIP.
pub fn tables(state: &HostState) -> IpipTables {
    let mut tables = IpipTables::default();
    if !state.ipip {
        return tables;
    }
    for (dst, target) in &state.routes {
        let IpNet::V4(dst) = dst else { continue };
        match target {
            RouteTarget::Ipip {
                via: IpAddr::V4(via),
            } => {
                tables.tunnels.insert(*dst, *via);
                tables.peers.insert(*via);
            }
            RouteTarget::Direct {
                via: IpAddr::V4(via),
            } => {
                tables.tunnels.insert(*dst, Ipv4Addr::UNSPECIFIED);
                tables.peers.insert(*via);
            }
            _ => {}
        }
    }
    tables
}

/// What the operator asked for in [`DATAPLANE_ENV`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DataplaneMode {
    /// The kernel's `tunl0` where the kernel can, eBPF otherwise.
    #[default]
    Auto,
    /// The kernel's `tunl0` only (an error status where the kernel has no `ipip`).
    Kernel,
    /// The eBPF classifiers, even where the kernel has `ipip`.
    Ebpf,
}

impl FromStr for DataplaneMode {
    type Err = String;

    fn from_str(s: &str) -> Result<DataplaneMode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(DataplaneMode::Auto),
            "kernel" => Ok(DataplaneMode::Kernel),
            "ebpf" => Ok(DataplaneMode::Ebpf),
            _ => Err(format!(
                "{DATAPLANE_ENV}={s:?}: expected auto, kernel or ebpf"
            )),
        }
    }
}

impl DataplaneMode {
    /// The mode [`DATAPLANE_ENV`] asks for (unset: `auto`); the error names the variable.
    pub fn from_env() -> Result<DataplaneMode, String> {
        match std::env::var(DATAPLANE_ENV) {
            Ok(value) => value.parse(),
            Err(std::env::VarError::NotPresent) => Ok(DataplaneMode::Auto),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{DATAPLANE_ENV} is not valid UTF-8"))
            }
        }
    }
}

/// Which dataplane carries IPIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpipDataplane {
    /// The kernel's `tunl0`.
    Kernel,
    /// `felis-ebpf`'s tc classifiers on the host interface.
    Ebpf,
}

impl std::fmt::Display for IpipDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IpipDataplane::Kernel => "kernel tunl0",
            IpipDataplane::Ebpf => "eBPF on tc",
        })
    }
}

/// What the kernel said about `tunl0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelIpip {
    /// `tunl0` is an IPIP device (it existed, or creating it succeeded).
    Available,
    /// Creating an `ipip` link failed with `EOPNOTSUPP`: the kernel has no `ipip` module.
    NoModule,
    /// A `tunl0` exists but is not an IPIP device.
    NameTaken {
        /// Its kind, if it has one.
        kind: Option<String>,
    },
    /// The probe failed otherwise: nothing is known.
    ProbeFailed {
        /// The error, for the operator.
        error: String,
    },
}

impl KernelIpip {
    /// From an existing `tunl0`'s kind.
    pub fn of_existing(kind: Option<&str>) -> KernelIpip {
        match kind {
            Some("ipip") => KernelIpip::Available,
            other => KernelIpip::NameTaken {
                kind: other.map(str::to_string),
            },
        }
    }

    /// From the error creating an `ipip` link: `EOPNOTSUPP` (this kernel's answer without the
    /// module) means no module; anything else decides nothing.
    pub fn of_create_error(errno: Option<i32>, error: String) -> KernelIpip {
        if errno == Some(EOPNOTSUPP) {
            KernelIpip::NoModule
        } else {
            KernelIpip::ProbeFailed { error }
        }
    }
}

/// The dataplane for `mode` given what the kernel said (`None`: not probed, as for `ebpf`),
/// with why; `Err` when IPIP cannot work (the status' reason).
pub fn choose_dataplane(
    mode: DataplaneMode,
    kernel: Option<&KernelIpip>,
) -> Result<(IpipDataplane, String), String> {
    let forced = format!("{DATAPLANE_ENV}=kernel");
    match (mode, kernel) {
        (DataplaneMode::Ebpf, _) => Ok((IpipDataplane::Ebpf, format!("{DATAPLANE_ENV}=ebpf"))),
        (_, Some(KernelIpip::Available)) => Ok((
            IpipDataplane::Kernel,
            "the kernel has the ipip module".to_string(),
        )),
        (DataplaneMode::Auto, None) => {
            Ok((IpipDataplane::Ebpf, "the kernel was not probed".to_string()))
        }
        (DataplaneMode::Auto, Some(KernelIpip::NoModule)) => Ok((
            IpipDataplane::Ebpf,
            "the kernel has no ipip module (creating tunl0: EOPNOTSUPP)".to_string(),
        )),
        (DataplaneMode::Auto, Some(KernelIpip::NameTaken { kind })) => Ok((
            IpipDataplane::Ebpf,
            format!(
                "{TUNL0} exists but is not an ipip device (kind {})",
                kind.as_deref().unwrap_or("none")
            ),
        )),
        (DataplaneMode::Auto, Some(KernelIpip::ProbeFailed { error })) => Ok((
            IpipDataplane::Ebpf,
            format!("probing for the ipip module failed: {error}"),
        )),
        (DataplaneMode::Kernel, None) => Err(format!("{forced}, but the kernel was not probed")),
        (DataplaneMode::Kernel, Some(KernelIpip::NoModule)) => Err(format!(
            "{forced}, but the kernel has no ipip module (creating {TUNL0}: EOPNOTSUPP); \
             load it or use {DATAPLANE_ENV}=auto"
        )),
        (DataplaneMode::Kernel, Some(KernelIpip::NameTaken { kind })) => Err(format!(
            "{forced}, but {TUNL0} exists and is not an ipip device (kind {})",
            kind.as_deref().unwrap_or("none")
        )),
        (DataplaneMode::Kernel, Some(KernelIpip::ProbeFailed { error })) => Err(format!(
            "{forced}, but probing for the ipip module failed: {error}"
        )),
    }
}

/// What IPIP routes need from the plane once its dataplane is in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipRouting {
    /// Which dataplane carries the routes.
    pub dataplane: IpipDataplane,
    /// The routes' device: `tunl0`, or the host interface carrying the classifiers.
    pub ifindex: Ifindex,
    /// Its name.
    pub ifname: String,
    /// The route source: this node's tunnel address, once it is in place.
    pub source: Option<IpAddr>,
    /// The MTU: the host's less the outer header (`tunl0`'s, or the eBPF routes').
    pub mtu: u32,
}

impl IpipRouting {
    /// Whether [`IpipRouting::route`] needs the underlay's next hop toward the node (eBPF:
    /// the packet leaves the host interface toward it, so the route names its MAC's owner).
    pub fn needs_next_hop(&self) -> bool {
        self.dataplane == IpipDataplane::Ebpf
    }

    /// The route for the remote block `dst` of the node `via`. `next_hop` is the underlay's
    /// next hop toward `via` (gateway, interface), used by eBPF only. `None`: the route must
    /// wait (eBPF, and the node is not reached through the classifiers' interface).
    pub fn route(
        &self,
        dst: IpNet,
        via: IpAddr,
        next_hop: Option<(IpAddr, Ifindex)>,
    ) -> Option<Route> {
        let gateway = match self.dataplane {
            // `<block> via <node> dev tunl0 onlink`: the kernel encapsulates toward the next
            // hop, the node itself.
            IpipDataplane::Kernel => via,
            // The classifiers encapsulate; the route picks the interface and the next hop's MAC.
            IpipDataplane::Ebpf => match next_hop {
                Some((gateway, index)) if index == self.ifindex => gateway,
                _ => return None,
            },
        };
        let mut route = Route::new(dst)
            .via(gateway)
            .dev(self.ifindex)
            .onlink()
            .protocol(RouteProtocol::FELIX);
        route.source = self.source;
        Some(route)
    }
}

/// Whether IPIP is working on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpipStatus {
    /// No pool uses IPIP.
    Unused,
    /// The eBPF dataplane: the classifiers are attached to this interface.
    Active {
        /// The host interface.
        ifname: String,
    },
    /// The kernel dataplane: `tunl0` carries IPIP.
    ActiveKernel {
        /// The device (`tunl0`).
        device: String,
    },
    /// IPIP is needed but cannot work (no eBPF support, no host interface, no `ipip` module
    /// where `kernel` is forced): its routes wait.
    Unavailable {
        /// Why, for the operator.
        reason: String,
    },
}

impl IpipStatus {
    /// The dataplane in use, when active.
    pub fn dataplane(&self) -> Option<IpipDataplane> {
        match self {
            IpipStatus::Active { .. } => Some(IpipDataplane::Ebpf),
            IpipStatus::ActiveKernel { .. } => Some(IpipDataplane::Kernel),
            IpipStatus::Unused | IpipStatus::Unavailable { .. } => None,
        }
    }
}

/// What to change on `tunl0` (kernel dataplane), from its current state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tunl0Plan {
    /// Set this MTU (the host's less [`IPIP_OVERHEAD`]).
    pub set_mtu: Option<u32>,
    /// Set it up.
    pub set_up: bool,
}

/// The changes that give `tunl0` (now `mtu`, up or not) the MTU `host_mtu - 20`, up.
pub fn tunl0_plan(mtu: Option<u32>, is_up: bool, host_mtu: u32) -> Tunl0Plan {
    let wanted = host_mtu.saturating_sub(IPIP_OVERHEAD);
    Tunl0Plan {
        set_mtu: (mtu != Some(wanted)).then_some(wanted),
        set_up: !is_up,
    }
}

/// Tunnel addresses to remove and add, on `lo` (eBPF) or `tunl0` (kernel).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPlan {
    /// (device, address) to remove: ours (a /32 inside a pool) but not wanted there.
    pub remove: Vec<(String, IpNet)>,
    /// (device, address) to add.
    pub add: Option<(String, IpNet)>,
}

/// The plan that leaves `wanted` (device, address) as the only tunnel address of ours among
/// `present` (device, address). An address is ours when it is a /32 inside one of `pools`;
/// anything else on those devices is left alone.
pub fn tunnel_address_plan(
    present: &[(String, IpNet)],
    pools: &BTreeSet<IpNet>,
    wanted: Option<(&str, Ipv4Addr)>,
) -> AddressPlan {
    let wanted = wanted.map(|(device, a)| (device.to_string(), IpNet::from(IpAddr::V4(a))));
    let mut plan = AddressPlan::default();
    for (device, net) in present {
        let ours = net.prefix_len() == net.max_prefix_len()
            && pools.iter().any(|p| p.contains(&net.addr()));
        let is_wanted = wanted
            .as_ref()
            .is_some_and(|w| w.0 == *device && w.1 == *net);
        if ours && !is_wanted {
            plan.remove.push((device.clone(), *net));
        }
    }
    if let Some(w) = wanted
        && !present.contains(&w)
    {
        plan.add = Some(w);
    }
    plan
}

/// The nft script that makes the kernel dataplane's filter accept IPIP only from `peers`
/// (`None`: remove the filter). Only [`FILTER_CHAIN`] and [`PEER_SET`] of table `inet felis`
/// are touched, in one transaction, as [`nat::render`] touches only its own objects there.
pub fn render_peer_filter(peers: Option<&BTreeSet<Ipv4Addr>>) -> String {
    let table = nat::TABLE;
    let mut script = format!(
        "table inet {table} {{\n\
         \x20 set {PEER_SET} {{ type ipv4_addr; }}\n\
         \x20 chain {FILTER_CHAIN} {{ type filter hook input priority filter; policy accept; }}\n\
         }}\n\
         flush chain inet {table} {FILTER_CHAIN}\n"
    );
    match peers {
        None => script.push_str(&format!(
            "delete chain inet {table} {FILTER_CHAIN}\n\
             delete set inet {table} {PEER_SET}\n"
        )),
        Some(peers) => {
            script.push_str(&format!("flush set inet {table} {PEER_SET}\n"));
            if !peers.is_empty() {
                let list: Vec<String> = peers.iter().map(Ipv4Addr::to_string).collect();
                script.push_str(&format!(
                    "add element inet {table} {PEER_SET} {{ {} }}\n",
                    list.join(", ")
                ));
            }
            script.push_str(&format!(
                "add rule inet {table} {FILTER_CHAIN} ip protocol 4 ip saddr != @{PEER_SET} counter drop\n"
            ));
        }
    }
    script
}

/// The shell: the chosen dataplane's pieces (the classifiers, or `tunl0` and the peer filter)
/// and the tunnel address.
#[derive(Debug)]
pub struct IpipPlane {
    /// What [`DATAPLANE_ENV`] asks for (an invalid value is the status' reason).
    mode: Result<DataplaneMode, String>,
    /// The dataplane chosen once IPIP was first needed.
    dataplane: Option<IpipDataplane>,
    started: bool,
    tc: Option<IpipTc>,
    status: IpipStatus,
    tunnel_address: Option<Ipv4Addr>,
    /// Leftover classifiers were removed (while eBPF is not in use).
    tc_cleaned: bool,
    /// What the nftables peer filter holds: `Some(None)` removed, `None` unknown.
    filter: Option<Option<BTreeSet<Ipv4Addr>>>,
    verify: bool,
    /// The kind a usable `tunl0` has (`ipip`; tests stand in a veth).
    tunl0_kind: &'static str,
}

impl Default for IpipPlane {
    fn default() -> Self {
        IpipPlane::new()
    }
}

impl IpipPlane {
    /// Nothing set up yet (a previous run's pieces are adopted by the first pass); the mode
    /// comes from [`DATAPLANE_ENV`].
    pub fn new() -> IpipPlane {
        IpipPlane::with_mode_result(DataplaneMode::from_env())
    }

    /// As [`IpipPlane::new`], with the mode given instead of read from the environment.
    pub fn with_mode(mode: DataplaneMode) -> IpipPlane {
        IpipPlane::with_mode_result(Ok(mode))
    }

    fn with_mode_result(mode: Result<DataplaneMode, String>) -> IpipPlane {
        IpipPlane {
            mode,
            dataplane: None,
            started: false,
            tc: None,
            status: IpipStatus::Unused,
            tunnel_address: None,
            tc_cleaned: false,
            filter: None,
            verify: false,
            tunl0_kind: "ipip",
        }
    }

    /// Lets a `tunl0` of `kind` stand in for the kernel's (tests: this kernel has no `ipip`
    /// nor `dummy`, so the kernel dataplane runs against a veth named `tunl0`).
    #[cfg(test)]
    pub(crate) fn stand_in_tunl0(mut self, kind: &'static str) -> IpipPlane {
        self.tunl0_kind = kind;
        self
    }

    /// Makes the next pass check that the classifiers are still attached and rewrite the peer
    /// filter (resync timer, after errors).
    pub fn invalidate(&mut self) {
        self.verify = true;
        self.filter = None;
    }

    /// The current status.
    pub fn status(&self) -> &IpipStatus {
        &self.status
    }

    /// The dataplane chosen (once IPIP was needed and the choice could be made).
    pub fn dataplane(&self) -> Option<IpipDataplane> {
        self.dataplane
    }

    /// This node's IPIP tunnel address (`ipv4IPIPTunnelAddr`), once IPAM gave it one.
    pub fn set_tunnel_address(&mut self, address: Option<Ipv4Addr>) {
        self.tunnel_address = address;
    }

    /// The classifiers' packet counters, when attached.
    pub fn stats(&self) -> Option<felis_ebpf::IpipStats> {
        self.tc.as_ref().and_then(|tc| tc.stats().ok())
    }

    /// Makes the dataplane and the tunnel address match `desired`; returns what IPIP routes
    /// need, or `None` when they must wait (not needed, or unavailable: see
    /// [`IpipPlane::status`]). Never fails the pass: IPIP trouble leaves only IPIP routes
    /// pending.
    pub async fn reconcile(
        &mut self,
        handle: &Handle,
        desired: &HostState,
        node_address: IpAddr,
        host_mtu: u32,
    ) -> Option<IpipRouting> {
        if !self.started {
            self.started = true;
            self.log_start(handle, desired.ipip).await;
        }
        if !desired.ipip {
            self.remove(handle, desired, node_address).await;
            self.set_status(IpipStatus::Unused);
            return None;
        }
        let mode = match &self.mode {
            Ok(mode) => *mode,
            Err(reason) => {
                let reason = reason.clone();
                self.set_status(IpipStatus::Unavailable { reason });
                return None;
            }
        };
        let dataplane = match self.dataplane {
            Some(dataplane) => dataplane,
            None => {
                let kernel = match mode {
                    DataplaneMode::Ebpf => None,
                    DataplaneMode::Auto | DataplaneMode::Kernel => {
                        Some(self.probe(handle, true).await)
                    }
                };
                match choose_dataplane(mode, kernel.as_ref()) {
                    Ok((dataplane, why)) => {
                        info!(%dataplane, %why, "IPIP dataplane chosen");
                        self.dataplane = Some(dataplane);
                        dataplane
                    }
                    Err(reason) => {
                        self.set_status(IpipStatus::Unavailable { reason });
                        return None;
                    }
                }
            }
        };
        match dataplane {
            IpipDataplane::Kernel => {
                self.reconcile_kernel(handle, desired, node_address, host_mtu)
                    .await
            }
            IpipDataplane::Ebpf => {
                self.reconcile_ebpf(handle, desired, node_address, host_mtu)
                    .await
            }
        }
    }

    /// The start-up log line: which dataplane IPIP uses (or would use), found without changing
    /// the host when IPIP is not needed yet.
    async fn log_start(&self, handle: &Handle, needed: bool) {
        match &self.mode {
            Err(reason) => warn!(%reason, "invalid IPIP dataplane setting: IPIP cannot work"),
            // Chosen (and logged) in this very pass.
            Ok(_) if needed => {}
            Ok(DataplaneMode::Ebpf) => info!(
                dataplane = %IpipDataplane::Ebpf,
                "IPIP dataplane when a pool uses IPIP ({DATAPLANE_ENV}=ebpf)"
            ),
            Ok(mode) => {
                let kernel = self.probe(handle, false).await;
                match choose_dataplane(*mode, Some(&kernel)) {
                    Ok((dataplane, why)) => {
                        info!(%dataplane, %why, "IPIP dataplane when a pool uses IPIP");
                    }
                    Err(reason) => warn!(%reason, "IPIP will be unavailable if a pool uses it"),
                }
            }
        }
    }

    /// What the kernel says about `tunl0`. With `create`, an absent `tunl0` is created in the
    /// host's namespace (the kernel dataplane's device); without, the kind is probed in a
    /// throwaway namespace and nothing here changes.
    async fn probe(&self, handle: &Handle, create: bool) -> KernelIpip {
        match handle.link(TUNL0).await {
            Ok(Some(link)) => return self.of_existing(link.kind.as_deref()),
            Ok(None) => {}
            Err(e) => {
                return KernelIpip::ProbeFailed {
                    error: ErrorChain(&e).to_string(),
                };
            }
        }
        if !create {
            let probe =
                tokio::task::spawn_blocking(|| felis_netlink::supports_link_kind("ipip")).await;
            return match probe {
                Ok(Ok(true)) => KernelIpip::Available,
                Ok(Ok(false)) => KernelIpip::NoModule,
                Ok(Err(e)) => KernelIpip::ProbeFailed {
                    error: ErrorChain(&e).to_string(),
                },
                Err(e) => KernelIpip::ProbeFailed {
                    error: e.to_string(),
                },
            };
        }
        match handle.add_ipip_link(TUNL0).await {
            Ok(link) => {
                info!("created {TUNL0}");
                self.of_existing(link.kind.as_deref())
            }
            // Loading the module on demand made the kernel's own tunl0 appear meanwhile.
            Err(e) if e.is_exists() => match handle.link(TUNL0).await {
                Ok(Some(link)) => self.of_existing(link.kind.as_deref()),
                _ => KernelIpip::ProbeFailed {
                    error: ErrorChain(&e).to_string(),
                },
            },
            Err(e) => KernelIpip::of_create_error(e.errno(), ErrorChain(&e).to_string()),
        }
    }

    fn of_existing(&self, kind: Option<&str>) -> KernelIpip {
        if kind == Some(self.tunl0_kind) {
            KernelIpip::Available
        } else {
            KernelIpip::of_existing(kind)
        }
    }

    /// No pool uses IPIP: removes what Felis owns of either dataplane (`tunl0` stays).
    async fn remove(&mut self, handle: &Handle, desired: &HostState, node_address: IpAddr) {
        self.detach_classifiers(handle, node_address).await;
        if let Err(reason) = self.reconcile_filter(None).await {
            warn!(%reason, "removing the IPIP peer filter failed");
        }
        self.reconcile_tunnel_address(handle, desired, None).await;
    }

    /// Detaches our classifiers, or once a previous run's from the host interface.
    async fn detach_classifiers(&mut self, handle: &Handle, node_address: IpAddr) {
        if let Some(tc) = self.tc.take() {
            let _ = IpipTc::detach(tc.ifname());
        } else if !self.tc_cleaned
            && let Some((_, name)) = host_interface(handle, node_address).await
            && let Err(e) = IpipTc::detach(&name)
        {
            warn!(error = %ErrorChain(&e), "removing leftover IPIP classifiers failed");
        }
        self.tc_cleaned = true;
    }

    /// Makes the nftables peer filter accept IPIP only from `peers` (`None`: removes it).
    async fn reconcile_filter(&mut self, peers: Option<&BTreeSet<Ipv4Addr>>) -> Result<(), String> {
        let want = peers.cloned();
        if self.filter.as_ref() == Some(&want) {
            return Ok(());
        }
        let script = render_peer_filter(peers);
        let applied = tokio::task::spawn_blocking(move || nat::apply(&script)).await;
        match applied {
            Ok(Ok(())) => {
                self.filter = Some(want);
                Ok(())
            }
            Ok(Err(e)) => {
                self.filter = None;
                Err(ErrorChain(&e).to_string())
            }
            Err(e) => {
                self.filter = None;
                Err(e.to_string())
            }
        }
    }

    /// The kernel dataplane: the peer filter, then `tunl0` up with its MTU and the tunnel
    /// address (eBPF leftovers go).
    async fn reconcile_kernel(
        &mut self,
        handle: &Handle,
        desired: &HostState,
        node_address: IpAddr,
        host_mtu: u32,
    ) -> Option<IpipRouting> {
        // Ours, or once a previous (eBPF) run's: they would encapsulate ahead of tunl0.
        self.detach_classifiers(handle, node_address).await;
        self.verify = false;
        let tables = tables(desired);
        // The filter first: tunl0 decapsulates from anyone once it is up.
        if let Err(reason) = self.reconcile_filter(Some(&tables.peers)).await {
            self.set_status(IpipStatus::Unavailable {
                reason: format!("programming the IPIP peer filter (nftables): {reason}"),
            });
            return None;
        }
        let link = match handle.link(TUNL0).await {
            Ok(Some(link)) => Ok(link),
            Ok(None) => handle.add_ipip_link(TUNL0).await,
            Err(e) => Err(e),
        };
        let link = match link {
            Ok(link) if link.kind.as_deref() == Some(self.tunl0_kind) => link,
            Ok(link) => {
                // Chosen again (auto: eBPF) on the next pass.
                self.dataplane = None;
                self.set_status(IpipStatus::Unavailable {
                    reason: format!(
                        "{TUNL0} is not an ipip device (kind {})",
                        link.kind.as_deref().unwrap_or("none")
                    ),
                });
                return None;
            }
            Err(e) => {
                self.dataplane = None;
                self.set_status(IpipStatus::Unavailable {
                    reason: format!("setting up {TUNL0}: {}", ErrorChain(&e)),
                });
                return None;
            }
        };
        let plan = tunl0_plan(link.mtu, link.is_up, host_mtu);
        if let Some(mtu) = plan.set_mtu
            && let Err(e) = handle.set_mtu(link.index, mtu).await
        {
            self.set_status(IpipStatus::Unavailable {
                reason: format!("setting the MTU of {TUNL0} to {mtu}: {}", ErrorChain(&e)),
            });
            return None;
        }
        if plan.set_up
            && let Err(e) = handle.set_link_up(link.index).await
        {
            self.set_status(IpipStatus::Unavailable {
                reason: format!("setting {TUNL0} up: {}", ErrorChain(&e)),
            });
            return None;
        }
        let source = self
            .reconcile_tunnel_address(handle, desired, Some(TUNL0))
            .await;
        self.set_status(IpipStatus::ActiveKernel {
            device: TUNL0.to_string(),
        });
        Some(IpipRouting {
            dataplane: IpipDataplane::Kernel,
            ifindex: link.index,
            ifname: TUNL0.to_string(),
            source,
            mtu: host_mtu.saturating_sub(IPIP_OVERHEAD),
        })
    }

    /// The eBPF dataplane: the classifiers and their maps on the host interface, the tunnel
    /// address on `lo` (the kernel dataplane's leftovers go).
    async fn reconcile_ebpf(
        &mut self,
        handle: &Handle,
        desired: &HostState,
        node_address: IpAddr,
        host_mtu: u32,
    ) -> Option<IpipRouting> {
        self.tc_cleaned = false;
        if let Err(reason) = self.reconcile_filter(None).await {
            warn!(%reason, "removing the kernel dataplane's IPIP peer filter failed");
        }
        let host = host_interface(handle, node_address).await;
        let (IpAddr::V4(local), Some((ifindex, ifname))) = (node_address, host) else {
            self.set_status(IpipStatus::Unavailable {
                reason: format!("no IPv4 host interface holds the node address {node_address}"),
            });
            return None;
        };
        let tables = tables(desired);
        let reusable = self
            .tc
            .as_ref()
            .is_some_and(|tc| tc.ifname() == ifname && tc.local() == local);
        if reusable {
            let verify = std::mem::take(&mut self.verify);
            if let Some(tc) = &mut self.tc
                && let Err(e) = tc
                    .set_peers(&tables.peers)
                    .and_then(|_| tc.set_tunnels(&tables.tunnels))
                    .and_then(|_| {
                        if verify {
                            tc.ensure_attached()
                        } else {
                            Ok(false)
                        }
                    })
            {
                warn!(error = %ErrorChain(&e), "updating the IPIP classifiers failed; reattaching");
                self.tc = None;
            }
        } else if let Some(old) = self.tc.take()
            && old.ifname() != ifname
        {
            let _ = IpipTc::detach(old.ifname());
        }
        if self.tc.is_none() {
            match IpipTc::attach(&ifname, local, &tables.tunnels, &tables.peers) {
                Ok(tc) => self.tc = Some(tc),
                Err(e) => {
                    self.set_status(IpipStatus::Unavailable {
                        reason: ErrorChain(&e).to_string(),
                    });
                    return None;
                }
            }
        }
        self.set_status(IpipStatus::Active {
            ifname: ifname.clone(),
        });
        let source = self
            .reconcile_tunnel_address(handle, desired, Some("lo"))
            .await;
        Some(IpipRouting {
            dataplane: IpipDataplane::Ebpf,
            ifindex,
            ifname,
            source,
            mtu: host_mtu.saturating_sub(IPIP_OVERHEAD),
        })
    }

    /// Keeps the tunnel address /32 on `device` (`lo` or `tunl0`; `None`: nowhere) and removes
    /// other /32s of ours (inside a pool) from `lo` and `tunl0`; returns the address when it
    /// is in place.
    async fn reconcile_tunnel_address(
        &self,
        handle: &Handle,
        desired: &HostState,
        device: Option<&str>,
    ) -> Option<IpAddr> {
        let mut present: Vec<(String, IpNet)> = Vec::new();
        let mut indexes: BTreeMap<&str, Ifindex> = BTreeMap::new();
        for name in ["lo", TUNL0] {
            let Ok(Some(link)) = handle.link(name).await else {
                continue;
            };
            indexes.insert(name, link.index);
            match handle.addresses(Some(link.index)).await {
                Ok(addresses) => {
                    present.extend(addresses.into_iter().map(|a| (name.to_string(), a.net)));
                }
                Err(e) => {
                    warn!(device = name, error = %ErrorChain(&e), "listing tunnel addresses failed");
                    return None;
                }
            }
        }
        let wanted = device.zip(self.tunnel_address);
        let plan = tunnel_address_plan(&present, &desired.nat.all_pools, wanted);
        for (name, net) in &plan.remove {
            if let Some(index) = indexes.get(name.as_str())
                && let Err(e) = handle.del_address(*index, *net).await
            {
                warn!(address = %net, device = %name, error = %ErrorChain(&e), "removing an old tunnel address failed");
            }
        }
        if let Some((name, net)) = &plan.add {
            let index = indexes.get(name.as_str())?;
            if let Err(e) = handle.add_address(*index, *net).await {
                warn!(address = %net, device = %name, error = %ErrorChain(&e), "adding the IPIP tunnel address failed");
                return None;
            }
            info!(address = %net, device = %name, "IPIP tunnel address in place");
        }
        wanted.map(|(_, address)| IpAddr::V4(address))
    }

    fn set_status(&mut self, status: IpipStatus) {
        if self.status != status {
            match &status {
                IpipStatus::Unavailable { reason } => {
                    warn!(%reason, "IPIP unavailable: IPIP routes wait");
                }
                IpipStatus::Active { ifname } => {
                    info!(%ifname, dataplane = %IpipDataplane::Ebpf, "IPIP active");
                }
                IpipStatus::ActiveKernel { device } => {
                    info!(%device, dataplane = %IpipDataplane::Kernel, "IPIP active");
                }
                IpipStatus::Unused => {}
            }
            self.status = status;
        }
    }
}

/// Sets the MTU of eBPF IPIP routes just programmed (`felis-netlink` routes carry no metrics
/// yet), with one `ip -batch` run. Each route must exist already. Kernel routes need none:
/// `tunl0`'s own MTU applies.
pub fn set_route_mtus(routes: &[Route], routing: &IpipRouting) -> Result<(), std::io::Error> {
    if routes.is_empty() || routing.dataplane == IpipDataplane::Kernel {
        return Ok(());
    }
    let mut script = String::new();
    for route in routes {
        let Some(gateway) = route.gateway else {
            continue;
        };
        script.push_str(&format!(
            "route change {} via {gateway} dev {} onlink proto {}",
            route.dst, routing.ifname, route.protocol.0
        ));
        if let Some(source) = route.source {
            script.push_str(&format!(" src {source}"));
        }
        script.push_str(&format!(" mtu {}\n", routing.mtu));
    }
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip -batch: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The interface holding the node's address, with its name.
/// The interface holding the node's address (the uplink), with its index.
pub(crate) async fn host_interface(
    handle: &Handle,
    node_address: IpAddr,
) -> Option<(Ifindex, String)> {
    let addresses = handle.addresses(None).await.ok()?;
    let index = addresses
        .iter()
        .find(|a| a.net.addr() == node_address)?
        .ifindex;
    let link = handle.link_by_index(index).await.ok().flatten()?;
    Some((index, link.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn state(routes: &[(&str, RouteTarget)]) -> HostState {
        HostState {
            routes: routes.iter().map(|(d, t)| (net(d), t.clone())).collect(),
            ipip: true,
            ..HostState::default()
        }
    }

    #[test]
    fn ipip_routes_become_tunnels_and_direct_routes_carve_holes() {
        let node_b: IpAddr = "10.0.2.10".parse().unwrap();
        let node_c: IpAddr = "10.0.1.11".parse().unwrap();
        let s = state(&[
            ("10.244.1.0/26", RouteTarget::Ipip { via: node_b }),
            ("10.244.1.5/32", RouteTarget::Direct { via: node_c }),
            ("10.244.0.0/26", RouteTarget::Blackhole),
            (
                "10.244.0.2/32",
                RouteTarget::Workload {
                    interface: "cali1".into(),
                },
            ),
        ]);
        let t = tables(&s);
        assert_eq!(
            t.tunnels,
            BTreeMap::from([
                (
                    "10.244.1.0/26".parse().unwrap(),
                    "10.0.2.10".parse().unwrap()
                ),
                ("10.244.1.5/32".parse().unwrap(), Ipv4Addr::UNSPECIFIED),
            ])
        );
        assert_eq!(
            t.peers,
            BTreeSet::from(["10.0.1.11".parse().unwrap(), "10.0.2.10".parse().unwrap()])
        );
    }

    #[test]
    fn without_an_ipip_pool_the_tables_are_empty() {
        let mut s = state(&[(
            "10.244.1.0/26",
            RouteTarget::Direct {
                via: "10.0.1.11".parse().unwrap(),
            },
        )]);
        s.ipip = false;
        assert_eq!(tables(&s), IpipTables::default());
    }

    #[test]
    fn ipv6_routes_are_ignored() {
        let s = state(&[(
            "fd00::/122",
            RouteTarget::Direct {
                via: "fd00:1::10".parse().unwrap(),
            },
        )]);
        assert_eq!(tables(&s), IpipTables::default());
    }

    // ------------------------------------------------------------ detection

    #[test]
    fn the_mode_parses_from_the_environment_value() {
        assert_eq!("auto".parse(), Ok(DataplaneMode::Auto));
        assert_eq!("".parse(), Ok(DataplaneMode::Auto));
        assert_eq!(" Kernel ".parse(), Ok(DataplaneMode::Kernel));
        assert_eq!("EBPF".parse(), Ok(DataplaneMode::Ebpf));
        let err = "tunl0".parse::<DataplaneMode>().unwrap_err();
        assert!(
            err.contains("FELIS_IPIP_DATAPLANE") && err.contains("\"tunl0\""),
            "{err}"
        );
        assert_eq!(DataplaneMode::default(), DataplaneMode::Auto);
    }

    #[test]
    fn eopnotsupp_and_only_it_means_no_module() {
        // What this kernel answers `ip link add tunl0 type ipip` (strace: error=-EOPNOTSUPP,
        // extack "Unknown device type").
        assert_eq!(
            KernelIpip::of_create_error(Some(95), "Unknown device type".into()),
            KernelIpip::NoModule
        );
        for errno in [Some(1), Some(19), Some(17), None] {
            assert!(
                matches!(
                    KernelIpip::of_create_error(errno, "x".into()),
                    KernelIpip::ProbeFailed { .. }
                ),
                "{errno:?}"
            );
        }
        assert_eq!(KernelIpip::of_existing(Some("ipip")), KernelIpip::Available);
        assert_eq!(
            KernelIpip::of_existing(Some("dummy")),
            KernelIpip::NameTaken {
                kind: Some("dummy".into())
            }
        );
        assert_eq!(
            KernelIpip::of_existing(None),
            KernelIpip::NameTaken { kind: None }
        );
    }

    #[test]
    fn auto_uses_the_kernel_where_it_can_and_ebpf_otherwise() {
        let pick = |mode, k: Option<KernelIpip>| choose_dataplane(mode, k.as_ref()).map(|d| d.0);
        use DataplaneMode::*;
        use IpipDataplane as D;
        assert_eq!(pick(Auto, Some(KernelIpip::Available)), Ok(D::Kernel));
        // This machine: no module, so auto picks eBPF exactly as before.
        assert_eq!(pick(Auto, Some(KernelIpip::NoModule)), Ok(D::Ebpf));
        assert_eq!(
            pick(Auto, Some(KernelIpip::NameTaken { kind: None })),
            Ok(D::Ebpf)
        );
        assert_eq!(
            pick(
                Auto,
                Some(KernelIpip::ProbeFailed {
                    error: "EPERM".into()
                })
            ),
            Ok(D::Ebpf)
        );
        assert_eq!(pick(Auto, None), Ok(D::Ebpf));
        assert_eq!(pick(Ebpf, Some(KernelIpip::Available)), Ok(D::Ebpf));
        assert_eq!(pick(Ebpf, None), Ok(D::Ebpf));
        assert_eq!(pick(Kernel, Some(KernelIpip::Available)), Ok(D::Kernel));
        let Err(reason) = pick(Kernel, Some(KernelIpip::NoModule)) else {
            panic!("kernel forced without the module must be an error");
        };
        assert!(
            reason.contains("FELIS_IPIP_DATAPLANE=kernel") && reason.contains("no ipip module"),
            "{reason}"
        );
        assert!(pick(Kernel, Some(KernelIpip::NameTaken { kind: None })).is_err());
        assert!(
            pick(
                Kernel,
                Some(KernelIpip::ProbeFailed {
                    error: "EPERM".into()
                })
            )
            .is_err()
        );
    }

    #[test]
    fn the_status_says_which_dataplane_runs() {
        let ebpf = IpipStatus::Active {
            ifname: "eth0".into(),
        };
        let kernel = IpipStatus::ActiveKernel {
            device: TUNL0.into(),
        };
        assert_eq!(ebpf.dataplane(), Some(IpipDataplane::Ebpf));
        assert_eq!(kernel.dataplane(), Some(IpipDataplane::Kernel));
        assert_eq!(IpipStatus::Unused.dataplane(), None);
        assert_eq!(IpipDataplane::Kernel.to_string(), "kernel tunl0");
        assert_eq!(IpipDataplane::Ebpf.to_string(), "eBPF on tc");
    }

    // --------------------------------------------------------------- routes

    fn routing(dataplane: IpipDataplane) -> IpipRouting {
        IpipRouting {
            dataplane,
            ifindex: Ifindex(7),
            ifname: match dataplane {
                IpipDataplane::Kernel => TUNL0.into(),
                IpipDataplane::Ebpf => "eth0".into(),
            },
            source: Some(ip("10.244.1.0")),
            mtu: 1480,
        }
    }

    #[test]
    fn kernel_routes_go_via_the_node_on_tunl0_onlink_from_the_tunnel_address() {
        let r = routing(IpipDataplane::Kernel);
        assert!(!r.needs_next_hop());
        // The underlay's next hop (a gateway) is irrelevant: the outer destination is the node.
        let route = r
            .route(
                net("10.244.5.0/26"),
                ip("10.0.2.10"),
                Some((ip("10.0.1.1"), Ifindex(2))),
            )
            .unwrap();
        assert_eq!(route.dst, net("10.244.5.0/26"));
        assert_eq!(route.gateway, Some(ip("10.0.2.10")));
        assert_eq!(route.ifindex, Some(Ifindex(7)));
        assert!(route.onlink);
        assert_eq!(route.source, Some(ip("10.244.1.0")));
        assert_eq!(route.protocol, RouteProtocol::FELIX);
        assert_eq!(
            r.route(net("10.244.5.0/26"), ip("10.0.2.10"), None),
            Some(route)
        );
    }

    #[test]
    fn ebpf_routes_go_via_the_underlay_next_hop_on_the_host_interface() {
        let r = routing(IpipDataplane::Ebpf);
        assert!(r.needs_next_hop());
        let route = r
            .route(
                net("10.244.5.0/26"),
                ip("10.0.2.10"),
                Some((ip("10.0.1.1"), Ifindex(7))),
            )
            .unwrap();
        assert_eq!(route.gateway, Some(ip("10.0.1.1")));
        assert_eq!(route.ifindex, Some(Ifindex(7)));
        assert!(route.onlink);
        assert_eq!(route.source, Some(ip("10.244.1.0")));
        // Reached through another interface (or not at all): the route waits.
        assert_eq!(
            r.route(
                net("10.244.5.0/26"),
                ip("10.0.2.10"),
                Some((ip("10.0.9.1"), Ifindex(3)))
            ),
            None
        );
        assert_eq!(r.route(net("10.244.5.0/26"), ip("10.0.2.10"), None), None);
    }

    #[test]
    fn kernel_routes_get_no_route_mtu_tunl0s_own_applies() {
        // No `ip` run at all (the route does not exist anywhere).
        let route = routing(IpipDataplane::Kernel)
            .route(net("10.244.5.0/26"), ip("10.0.2.10"), None)
            .unwrap();
        assert!(set_route_mtus(&[route], &routing(IpipDataplane::Kernel)).is_ok());
    }

    #[test]
    fn tunl0_gets_the_host_mtu_less_20_and_goes_up() {
        assert_eq!(
            tunl0_plan(Some(1480), false, 1500),
            Tunl0Plan {
                set_mtu: None,
                set_up: true
            }
        );
        assert_eq!(
            tunl0_plan(Some(1480), true, 9001),
            Tunl0Plan {
                set_mtu: Some(8981),
                set_up: false
            }
        );
        assert_eq!(tunl0_plan(Some(8981), true, 9001), Tunl0Plan::default());
        assert_eq!(tunl0_plan(None, true, 1500).set_mtu, Some(1480));
    }

    // ------------------------------------------------------ tunnel address

    fn pools() -> BTreeSet<IpNet> {
        BTreeSet::from([net("10.244.0.0/16")])
    }

    fn at(device: &str, a: &str) -> (String, IpNet) {
        (device.to_string(), net(a))
    }

    #[test]
    fn the_kernel_puts_the_tunnel_address_on_tunl0_and_takes_it_off_lo() {
        let present = [
            at("lo", "127.0.0.1/8"),
            at("lo", "10.244.1.0/32"),
            at("lo", "192.0.2.1/32"),
        ];
        let plan = tunnel_address_plan(
            &present,
            &pools(),
            Some((TUNL0, "10.244.1.0".parse().unwrap())),
        );
        assert_eq!(plan.remove, vec![at("lo", "10.244.1.0/32")]);
        assert_eq!(plan.add, Some(at(TUNL0, "10.244.1.0/32")));
    }

    #[test]
    fn ebpf_puts_the_tunnel_address_on_lo_and_takes_it_off_tunl0() {
        let present = [
            at("lo", "127.0.0.1/8"),
            at(TUNL0, "10.244.1.0/32"),
            at(TUNL0, "10.244.9.9/32"),
        ];
        let plan = tunnel_address_plan(
            &present,
            &pools(),
            Some(("lo", "10.244.1.0".parse().unwrap())),
        );
        assert_eq!(
            plan.remove,
            vec![at(TUNL0, "10.244.1.0/32"), at(TUNL0, "10.244.9.9/32")]
        );
        assert_eq!(plan.add, Some(at("lo", "10.244.1.0/32")));
    }

    #[test]
    fn in_place_is_kept_and_unused_removes_only_ours() {
        let present = [at(TUNL0, "10.244.1.0/32"), at(TUNL0, "172.16.0.1/32")];
        let plan = tunnel_address_plan(
            &present,
            &pools(),
            Some((TUNL0, "10.244.1.0".parse().unwrap())),
        );
        assert_eq!(plan, AddressPlan::default());
        let plan = tunnel_address_plan(&present, &pools(), None);
        assert_eq!(plan.remove, vec![at(TUNL0, "10.244.1.0/32")]);
        assert_eq!(plan.add, None);
    }

    // ---------------------------------------------------------- peer filter

    #[test]
    fn the_peer_filter_drops_ipip_from_anyone_but_the_peers() {
        let peers = BTreeSet::from(["10.0.2.10".parse().unwrap(), "10.0.1.11".parse().unwrap()]);
        let script = render_peer_filter(Some(&peers));
        assert!(script.contains(
            "chain ipip-input { type filter hook input priority filter; policy accept; }"
        ));
        assert!(script.contains("set ipip-peers-v4 { type ipv4_addr; }"));
        assert!(script.contains("flush set inet felis ipip-peers-v4\n"));
        assert!(script.contains("add element inet felis ipip-peers-v4 { 10.0.1.11, 10.0.2.10 }"));
        assert!(script.contains(
            "add rule inet felis ipip-input ip protocol 4 ip saddr != @ipip-peers-v4 counter drop"
        ));
        // Only its own objects: never the table, NAT's or felis-nft's.
        assert!(!script.contains("delete"));
        assert!(!script.contains("flush table"));
        assert!(!script.contains("nat-postrouting"));

        // No peers yet: every IPIP packet is dropped.
        let script = render_peer_filter(Some(&BTreeSet::new()));
        assert!(!script.contains("add element"));
        assert!(script.contains("ip saddr != @ipip-peers-v4 counter drop"));
    }

    #[test]
    fn removing_the_peer_filter_deletes_only_its_chain_and_set() {
        let script = render_peer_filter(None);
        assert!(script.contains("delete chain inet felis ipip-input\n"));
        assert!(script.contains("delete set inet felis ipip-peers-v4\n"));
        assert!(!script.contains("add rule"));
        assert!(!script.contains("delete table"));
        // The chain is emptied before it goes (a chain with rules cannot be deleted).
        let flush = script.find("flush chain").unwrap();
        let delete = script.find("delete chain").unwrap();
        assert!(flush < delete);
    }

    // ------------------------------------------- in namespaces (root only)

    mod netns {
        use felis_testns::TestNetns;
        use felis_testns::skip_unless_root;

        use super::*;
        use crate::dataplane::Dataplane;
        use crate::dataplane::PassStats;

        const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
        const TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);

        /// eth0 10.0.1.10/24 (a veth to a "router" namespace 10.0.1.1), default via 10.0.1.1.
        fn host() -> (TestNetns, TestNetns) {
            let host = TestNetns::new().unwrap();
            let router = TestNetns::new().unwrap();
            host.link_to("eth0", "10.0.1.10/24", &router, "r0", "10.0.1.1/24");
            host.ip(&["route", "add", "default", "via", "10.0.1.1"]);
            (host, router)
        }

        fn desired(ipip: bool) -> HostState {
            let mut state = HostState {
                ipip,
                ..HostState::default()
            };
            state.nat.all_pools.insert(net("10.244.0.0/16"));
            if ipip {
                for (dst, via) in [
                    ("10.244.5.0/26", "10.0.2.10"),
                    ("10.244.6.0/26", "10.0.1.11"),
                ] {
                    state
                        .routes
                        .insert(net(dst), RouteTarget::Ipip { via: ip(via) });
                }
                state
                    .routes
                    .insert(net("10.244.1.0/26"), RouteTarget::Blackhole);
            }
            state
        }

        /// Passes with a fresh dataplane (as a restarted agent) whose IPIP plane is `plane()`.
        fn pass(
            ns: &TestNetns,
            plane: fn() -> IpipPlane,
            passes: &[HostState],
        ) -> Vec<(PassStats, IpipStatus, Option<IpipDataplane>)> {
            ns.run(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let handle = Handle::current().await.unwrap();
                    let mut dataplane = Dataplane::new(handle, IpAddr::V4(NODE), 1500);
                    *dataplane.ipip_mut() = plane();
                    dataplane.ipip_mut().set_tunnel_address(Some(TUNNEL));
                    let mut out = Vec::new();
                    for state in passes {
                        let stats = dataplane.reconcile(state).await.unwrap();
                        let ipip = dataplane.ipip_mut();
                        out.push((stats, ipip.status().clone(), ipip.dataplane()));
                    }
                    out
                })
            })
        }

        fn kernel_stand_in() -> IpipPlane {
            IpipPlane::with_mode(DataplaneMode::Kernel).stand_in_tunl0("veth")
        }

        fn nft(ns: &TestNetns) -> String {
            ns.exec("nft", &["list", "table", "inet", "felis"])
        }

        #[test]
        fn the_kernel_dataplane_sets_up_tunl0_routes_and_the_peer_filter_and_hands_over() {
            if skip_unless_root("the_kernel_dataplane_sets_up_tunl0") {
                return;
            }
            let (h1, _router) = host();
            // A stand-in for the kernel's tunl0 (a veth: down, default MTU), and an eBPF run's tunnel
            // address left on lo.
            h1.ip(&[
                "link", "add", "tunl0", "type", "veth", "peer", "name", "tunl0p",
            ]);
            h1.ip(&["link", "set", "tunl0p", "up"]);
            h1.ip(&["addr", "add", "10.244.1.0/32", "dev", "lo"]);
            let on = desired(true);
            let results = pass(&h1, kernel_stand_in, &[on.clone(), on.clone()]);
            let (first, status, dataplane) = &results[0];
            assert_eq!(first.routes_pending, 0, "{first:?}");
            assert_eq!(first.routes_set, 3, "{first:?}");
            assert_eq!(
                status,
                &IpipStatus::ActiveKernel {
                    device: TUNL0.into()
                }
            );
            assert_eq!(*dataplane, Some(IpipDataplane::Kernel));
            assert_eq!(results[1].0.routes_set, 0, "a second pass changes nothing");

            let tunl0 = h1.ip(&["-d", "link", "show", "tunl0"]);
            assert!(tunl0.contains("mtu 1480"), "{tunl0}");
            assert!(tunl0.contains(",UP"), "{tunl0}");
            let addresses = h1.ip(&["addr", "show", "dev", "tunl0"]);
            assert!(addresses.contains("inet 10.244.1.0/32"), "{addresses}");
            let lo = h1.ip(&["addr", "show", "dev", "lo"]);
            assert!(!lo.contains("10.244.1.0"), "moved off lo: {lo}");
            let routes = h1.ip(&["route", "show", "proto", "80"]);
            for node in ["10.0.2.10", "10.0.1.11"] {
                let block = if node == "10.0.2.10" {
                    "10.244.5.0/26"
                } else {
                    "10.244.6.0/26"
                };
                let want = format!("{block} via {node} dev tunl0 src 10.244.1.0 onlink");
                assert!(
                    routes.contains(&want),
                    "straight to the node: {want} in {routes}"
                );
            }
            assert!(!routes.contains("mtu"), "tunl0's MTU applies: {routes}");
            let table = nft(&h1);
            assert!(table.contains("chain ipip-input"), "{table}");
            let elements: String = table.split_whitespace().collect();
            assert!(
                elements.contains("elements={10.0.1.11,10.0.2.10}"),
                "{table}"
            );
            assert!(
                table.contains("ip protocol ipencap ip saddr != @ipip-peers-v4"),
                "{table}"
            );

            // A restarted agent adopts everything.
            let results = pass(&h1, kernel_stand_in, std::slice::from_ref(&on));
            assert_eq!(results[0].0.routes_set, 0, "{:?}", results[0].0);

            // Restarted with the eBPF dataplane: the kernel dataplane's pieces go, tunl0 stays.
            let results = pass(
                &h1,
                || IpipPlane::with_mode(DataplaneMode::Ebpf),
                std::slice::from_ref(&on),
            );
            assert_eq!(
                results[0].1,
                IpipStatus::Active {
                    ifname: "eth0".into()
                }
            );
            let addresses = h1.ip(&["addr", "show", "dev", "tunl0"]);
            assert!(!addresses.contains("10.244.1.0"), "{addresses}");
            let lo = h1.ip(&["addr", "show", "dev", "lo"]);
            assert!(lo.contains("inet 10.244.1.0/32"), "{lo}");
            let table = nft(&h1);
            assert!(!table.contains("ipip"), "{table}");
            assert!(table.contains("nat-postrouting"), "NAT stays: {table}");
            let routes = h1.ip(&["route", "show", "proto", "80"]);
            assert!(
                routes.contains("10.244.5.0/26 via 10.0.1.1 dev eth0 src 10.244.1.0 onlink"),
                "{routes}"
            );

            // Back to the kernel (the eBPF run's classifiers go), then no IPIP pool: what Felis
            // owns goes, tunl0 stays.
            let egress = h1.exec("tc", &["filter", "show", "dev", "eth0", "egress"]);
            assert!(egress.contains("felis_ipip"), "{egress}");
            pass(&h1, kernel_stand_in, std::slice::from_ref(&on));
            let egress = h1.exec("tc", &["filter", "show", "dev", "eth0", "egress"]);
            assert!(!egress.contains("felis_ipip"), "{egress}");
            let ingress = h1.exec("tc", &["filter", "show", "dev", "eth0", "ingress"]);
            assert!(!ingress.contains("felis_ipip"), "{ingress}");
            let results = pass(&h1, kernel_stand_in, &[desired(false)]);
            assert_eq!(results[0].1, IpipStatus::Unused);
            let routes = h1.ip(&["route", "show", "proto", "80"]);
            assert!(routes.trim().is_empty(), "{routes}");
            let addresses = h1.ip(&["addr", "show", "dev", "tunl0"]);
            assert!(!addresses.contains("10.244.1.0"), "{addresses}");
            let table = nft(&h1);
            assert!(!table.contains("ipip"), "{table}");
            assert!(h1.ip(&["link", "show"]).contains("tunl0"));
            let egress = h1.exec("tc", &["filter", "show", "dev", "eth0", "egress"]);
            assert!(!egress.contains("felis_ipip"), "{egress}");
        }

        /// The `counter packets N` of the peer filter's drop rule.
        fn dropped(ns: &TestNetns) -> u64 {
            let chain = ns.exec("nft", &["list", "chain", "inet", "felis", "ipip-input"]);
            chain
                .split("counter packets ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no counter in {chain}"))
        }

        /// Three pings from the router toward a "pod" 10.244.1.1 of h1, sent as IPIP from
        /// 10.0.1.1 to 10.0.1.10 by the eBPF classifiers on the router's side.
        fn ipip_from_the_router(router: &TestNetns) {
            let _ = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    router.name(),
                    "ping",
                    "-n",
                    "-q",
                    "-W",
                    "1",
                ])
                .args(["-c", "3", "-i", "0.2", "10.244.1.1"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }

        #[test]
        fn the_peer_filter_drops_ipip_from_strangers_and_only_from_them() {
            if skip_unless_root("the_peer_filter_drops_ipip_from_strangers") {
                return;
            }
            let (h1, router) = host();
            h1.ip(&[
                "link", "add", "tunl0", "type", "veth", "peer", "name", "tunl0p",
            ]);
            h1.ip(&["link", "set", "tunl0p", "up"]);
            router.ip(&[
                "route",
                "add",
                "10.244.1.0/26",
                "via",
                "10.0.1.10",
                "dev",
                "r0",
                "onlink",
            ]);
            let _tc = router
                .run(|| {
                    IpipTc::attach(
                        "r0",
                        "10.0.1.1".parse().unwrap(),
                        &BTreeMap::from([(
                            "10.244.1.0/26".parse().unwrap(),
                            "10.0.1.10".parse().unwrap(),
                        )]),
                        &BTreeSet::new(),
                    )
                })
                .unwrap();
            // The router (10.0.1.1) is no peer of h1.
            pass(&h1, kernel_stand_in, &[desired(true)]);
            assert_eq!(dropped(&h1), 0);
            ipip_from_the_router(&router);
            assert_eq!(dropped(&h1), 3, "IPIP from a stranger is dropped");

            // Now it is (a node h1 routes to directly): its IPIP passes the filter.
            let mut with_router = desired(true);
            with_router.routes.insert(
                net("10.244.7.0/26"),
                RouteTarget::Direct {
                    via: ip("10.0.1.1"),
                },
            );
            pass(&h1, kernel_stand_in, &[with_router]);
            let table = nft(&h1);
            let elements: String = table.split_whitespace().collect();
            assert!(
                elements.contains("elements={10.0.1.1,10.0.1.11,10.0.2.10}"),
                "{table}"
            );
            let before = dropped(&h1);
            ipip_from_the_router(&router);
            assert_eq!(dropped(&h1), before, "IPIP from a peer is not dropped");
        }

        #[test]
        fn this_kernel_auto_picks_ebpf_and_forced_kernel_is_an_error_status() {
            if skip_unless_root("this_kernel_auto_picks_ebpf") {
                return;
            }
            if felis_netlink::supports_link_kind("ipip").unwrap() {
                eprintln!("SKIPPED: this kernel has the ipip module");
                return;
            }
            let (h1, _router) = host();
            let on = desired(true);
            let results = pass(
                &h1,
                || IpipPlane::with_mode(DataplaneMode::Auto),
                std::slice::from_ref(&on),
            );
            assert_eq!(results[0].2, Some(IpipDataplane::Ebpf));
            assert_eq!(
                results[0].1,
                IpipStatus::Active {
                    ifname: "eth0".into()
                }
            );
            assert!(!h1.ip(&["link", "show"]).contains("tunl0"));

            let (h2, _router2) = host();
            let results = pass(&h2, || IpipPlane::with_mode(DataplaneMode::Kernel), &[on]);
            let (stats, status, dataplane) = &results[0];
            assert_eq!(stats.routes_pending, 2, "{stats:?}");
            assert_eq!(*dataplane, None);
            let IpipStatus::Unavailable { reason } = status else {
                panic!("{status:?}");
            };
            assert!(
                reason.contains("FELIS_IPIP_DATAPLANE=kernel") && reason.contains("no ipip module"),
                "{reason}"
            );
            let egress = h2.exec("tc", &["filter", "show", "dev", "eth0", "egress"]);
            assert!(!egress.contains("felis_ipip"), "{egress}");
        }

        fn filters(ns: &TestNetns, direction: &str) -> String {
            ns.exec("tc", &["filter", "show", "dev", "eth0", direction])
        }

        // The default (eBPF, on this kernel) dataplane: routes via the host interface with the
        // tunnel address as source and room for the outer header, the classifiers attached,
        // the tunnel address on `lo`; a restart adopts it all; without IPIP pools everything
        // of it goes away.

        #[test]
        fn ipip_routes_classifiers_and_tunnel_address_come_and_go_with_ipip_pools() {
            if skip_unless_root("ipip_routes_classifiers_and_tunnel_address_come_and_go") {
                return;
            }
            let (h1, _router) = host();
            let on = desired(true);
            let results = pass(&h1, IpipPlane::new, &[on.clone(), on.clone()]);
            let (first, status, _) = &results[0];
            assert_eq!(first.routes_pending, 0, "{first:?}");
            assert_eq!(first.routes_set, 3, "{first:?}");
            assert_eq!(
                status,
                &IpipStatus::Active {
                    ifname: "eth0".into()
                }
            );
            assert_eq!(results[1].0.routes_set, 0, "a second pass changes nothing");

            let routes = h1.ip(&["route", "show", "proto", "80"]);
            assert!(
                routes
                    .contains("10.244.5.0/26 via 10.0.1.1 dev eth0 src 10.244.1.0 onlink mtu 1480"),
                "across subnets: through the gateway toward the node: {routes}"
            );
            assert!(
                routes.contains(
                    "10.244.6.0/26 via 10.0.1.11 dev eth0 src 10.244.1.0 onlink mtu 1480"
                ),
                "on-link node: straight to it: {routes}"
            );
            let lo = h1.ip(&["addr", "show", "dev", "lo"]);
            assert!(lo.contains("inet 10.244.1.0/32"), "{lo}");
            assert!(filters(&h1, "egress").contains("felis_ipip_egress"));
            assert!(filters(&h1, "ingress").contains("felis_ipip_ingress"));

            // A restarted agent adopts routes and replaces the classifiers in place.
            let results = pass(&h1, IpipPlane::new, std::slice::from_ref(&on));
            assert_eq!(results[0].0.routes_set, 0, "{:?}", results[0].0);
            assert_eq!(
                filters(&h1, "egress")
                    .lines()
                    .filter(|l| l.contains("felis_ipip"))
                    .count(),
                1
            );

            // The IPIP pool goes: routes, classifiers and the tunnel address go with it, also for a
            // restarted agent that never attached them itself.
            let results = pass(&h1, IpipPlane::new, &[desired(false)]);
            // (Removing the tunnel address takes the routes using it as source with it: the kernel
            // flushes routes whose preferred source goes away, so fewer are counted as removed.)
            assert!(results[0].0.routes_removed >= 1, "{:?}", results[0].0);
            let routes = h1.ip(&["route", "show", "proto", "80"]);
            assert!(routes.trim().is_empty(), "{routes}");
            assert_eq!(results[0].1, IpipStatus::Unused);
            assert!(!filters(&h1, "egress").contains("felis_ipip"));
            assert!(!filters(&h1, "ingress").contains("felis_ipip"));
            let lo = h1.ip(&["addr", "show", "dev", "lo"]);
            assert!(!lo.contains("10.244.1.0"), "{lo}");
        }

        #[test]
        fn without_a_host_interface_ipip_routes_wait_with_a_status() {
            if skip_unless_root("without_a_host_interface_ipip_routes_wait_with_a_status") {
                return;
            }
            let (h1, _router) = host();
            h1.ip(&["addr", "del", "10.0.1.10/24", "dev", "eth0"]);
            h1.ip(&["route", "add", "default", "dev", "eth0"]);
            let results = pass(&h1, IpipPlane::new, &[desired(true)]);
            let (stats, status, _) = &results[0];
            assert_eq!(stats.routes_pending, 2, "{stats:?}");
            assert!(
                matches!(status, IpipStatus::Unavailable { reason } if reason.contains("10.0.1.10")),
                "{status:?}"
            );
        }
    }
}
