//! IPIP (`ipipMode: Always | CrossSubnet`) without the kernel's `ipip` module: the
//! encapsulation is `felis-ebpf`'s tc classifiers on the host interface, wire-compatible with
//! a kernel `tunl0`, so Felis hosts and hosts with a real `tunl0` interoperate.
//!
//! ```text
//!  route <block> via <next hop toward node> dev <host if> onlink src <tunnel addr> mtu <host-20>
//!  tc egress on <host if>:  inner dst ∈ tunnels ──► outer IPv4 (this host → node), protocol 4
//!  tc ingress on <host if>: protocol 4 from a peer to this host ──► inner packet up the stack
//!  lo: <tunnel addr>/32 (ipv4IPIPTunnelAddr, from IPAM): the source of host → remote pod
//!      traffic, so replies come back through the tunnel
//! ```
//!
//! [`tables`] (pure) derives the classifiers' maps from the desired [`HostState`]:
//! - `tunnels`: every IPv4 route the graph sends through IPIP (prefix → node address), plus
//!   every IPv4 direct route as a "do not encapsulate" entry, so that a more specific direct
//!   route (an address borrowed by a node in our subnet, inside a block of a node elsewhere)
//!   wins in the LPM trie just as it wins in the kernel's routing table;
//! - `peers`: the nodes the graph routes to by IPIP or directly, i.e. every node owning a
//!   block (a node that sends IPIP has a tunnel address, hence a block). IPIP to this host from
//!   any other source is dropped, as Calico drops IPIP from non-cluster hosts.
//!
//! Where the kernel does have `ipip`, the eBPF path is used anyway (one code path, and `tunl0`
//! would also claim every protocol-4 packet); the start-up log says which case it is.
//! [`IpipPlane`] (the shell) attaches the classifiers, keeps their maps, the tunnel address on
//! `lo`, and a status: when eBPF is missing it reports [`IpipStatus::Unavailable`] and the IPIP
//! routes wait, instead of the agent failing.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::process::Command;
use std::process::Stdio;

use felis_ebpf::IpipTc;
use felis_netlink::Handle;
use felis_netlink::Ifindex;
use felis_netlink::Route;
use ipnet::IpNet;
use ipnet::Ipv4Net;
use tracing::info;
use tracing::warn;

use crate::calc::HostState;
use crate::calc::IPIP_OVERHEAD;
use crate::calc::RouteTarget;
use crate::run::ErrorChain;

/// The classifiers' maps, as [`tables`] computes them.
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

/// What IPIP routes need from the plane once the classifiers are in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipRouting {
    /// The host interface carrying the tunnel (the classifiers are attached to it).
    pub ifindex: Ifindex,
    /// Its name.
    pub ifname: String,
    /// The route source: this node's tunnel address, once it is on `lo`.
    pub source: Option<IpAddr>,
    /// The routes' MTU: the host's less the outer header.
    pub mtu: u32,
}

/// Whether IPIP is working on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpipStatus {
    /// No pool uses IPIP.
    Unused,
    /// The classifiers are attached to this interface.
    Active {
        /// The host interface.
        ifname: String,
    },
    /// IPIP is needed but cannot work (no eBPF support, no host interface): its routes wait.
    Unavailable {
        /// Why, for the operator.
        reason: String,
    },
}

/// The shell: the attached classifiers and the tunnel address on `lo`.
#[derive(Debug)]
pub struct IpipPlane {
    tc: Option<IpipTc>,
    status: IpipStatus,
    tunnel_address: Option<Ipv4Addr>,
    kernel_ipip_probed: bool,
    cleaned_up: bool,
    verify: bool,
}

impl Default for IpipPlane {
    fn default() -> Self {
        IpipPlane::new()
    }
}

impl IpipPlane {
    /// Nothing attached yet (a previous run's classifiers are adopted by the first pass).
    pub fn new() -> IpipPlane {
        IpipPlane {
            tc: None,
            status: IpipStatus::Unused,
            tunnel_address: None,
            kernel_ipip_probed: false,
            cleaned_up: false,
            verify: false,
        }
    }

    /// Makes the next pass check that the classifiers are still attached (resync timer,
    /// after errors).
    pub fn invalidate(&mut self) {
        self.verify = true;
    }

    /// The current status.
    pub fn status(&self) -> &IpipStatus {
        &self.status
    }

    /// This node's IPIP tunnel address (`ipv4IPIPTunnelAddr`), once IPAM gave it one.
    pub fn set_tunnel_address(&mut self, address: Option<Ipv4Addr>) {
        self.tunnel_address = address;
    }

    /// The classifiers' packet counters, when attached.
    pub fn stats(&self) -> Option<felis_ebpf::IpipStats> {
        self.tc.as_ref().and_then(|tc| tc.stats().ok())
    }

    /// Makes the classifiers, their maps and the tunnel address match `desired`; returns what
    /// IPIP routes need, or `None` when they must wait (not needed, or unavailable: see
    /// [`IpipPlane::status`]). Never fails the pass: IPIP trouble leaves only IPIP routes
    /// pending.
    pub async fn reconcile(
        &mut self,
        handle: &Handle,
        desired: &HostState,
        node_address: IpAddr,
        host_mtu: u32,
    ) -> Option<IpipRouting> {
        let host = host_interface(handle, node_address).await;
        if !desired.ipip {
            if let Some(tc) = self.tc.take() {
                let _ = IpipTc::detach(tc.ifname());
            } else if !self.cleaned_up
                && let Some((_, name)) = &host
                && let Err(e) = IpipTc::detach(name)
            {
                // A previous run may have left classifiers: removed once, at start.
                warn!(error = %ErrorChain(&e), "removing leftover IPIP classifiers failed");
            }
            self.cleaned_up = true;
            self.reconcile_tunnel_address(handle, desired, None).await;
            self.set_status(IpipStatus::Unused);
            return None;
        }
        self.cleaned_up = false;
        let (IpAddr::V4(local), Some((ifindex, ifname))) = (node_address, host) else {
            self.set_status(IpipStatus::Unavailable {
                reason: format!("no IPv4 host interface holds the node address {node_address}"),
            });
            return None;
        };
        if !self.kernel_ipip_probed {
            self.kernel_ipip_probed = true;
            probe_kernel_ipip().await;
        }
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
            .reconcile_tunnel_address(handle, desired, self.tunnel_address)
            .await;
        Some(IpipRouting {
            ifindex,
            ifname,
            source,
            mtu: host_mtu.saturating_sub(IPIP_OVERHEAD),
        })
    }

    /// Keeps `address`/32 on `lo` and removes other /32s of ours there (inside a pool);
    /// returns the address when it is in place.
    async fn reconcile_tunnel_address(
        &self,
        handle: &Handle,
        desired: &HostState,
        address: Option<Ipv4Addr>,
    ) -> Option<IpAddr> {
        let lo = handle.link("lo").await.ok().flatten()?;
        let present = handle.addresses(Some(lo.index)).await.ok()?;
        let wanted = address.map(|a| IpNet::from(IpAddr::V4(a)));
        for a in &present {
            let ours = a.net.prefix_len() == a.net.max_prefix_len()
                && desired
                    .nat
                    .all_pools
                    .iter()
                    .any(|p| p.contains(&a.net.addr()));
            if ours
                && Some(a.net) != wanted
                && let Err(e) = handle.del_address(lo.index, a.net).await
            {
                warn!(address = %a.net, error = %ErrorChain(&e), "removing an old tunnel address failed");
            }
        }
        let wanted = wanted?;
        if !present.iter().any(|a| a.net == wanted) {
            if let Err(e) = handle.add_address(lo.index, wanted).await {
                warn!(address = %wanted, error = %ErrorChain(&e), "adding the IPIP tunnel address failed");
                return None;
            }
            info!(address = %wanted, "IPIP tunnel address on lo");
        }
        Some(wanted.addr())
    }

    fn set_status(&mut self, status: IpipStatus) {
        if self.status != status {
            match &status {
                IpipStatus::Unavailable { reason } => {
                    warn!(%reason, "IPIP unavailable: IPIP routes wait");
                }
                IpipStatus::Active { ifname } => info!(%ifname, "IPIP (eBPF on tc) active"),
                IpipStatus::Unused => {}
            }
            self.status = status;
        }
    }
}

/// Sets the MTU of IPIP routes just programmed (`felis-netlink` routes carry no metrics yet),
/// with one `ip -batch` run. Each route must exist already.
pub fn set_route_mtus(routes: &[Route], routing: &IpipRouting) -> Result<(), std::io::Error> {
    if routes.is_empty() {
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
async fn host_interface(handle: &Handle, node_address: IpAddr) -> Option<(Ifindex, String)> {
    let addresses = handle.addresses(None).await.ok()?;
    let index = addresses
        .iter()
        .find(|a| a.net.addr() == node_address)?
        .ifindex;
    let link = handle.link_by_index(index).await.ok().flatten()?;
    Some((index, link.name))
}

/// Logs whether the kernel has `ipip` (probed in a throwaway namespace, never assumed).
async fn probe_kernel_ipip() {
    let probe = tokio::task::spawn_blocking(|| felis_netlink::supports_link_kind("ipip")).await;
    match probe {
        Ok(Ok(true)) => info!(
            "the kernel has the ipip module; using the eBPF IPIP anyway (one code path, wire-compatible with tunl0)"
        ),
        Ok(Ok(false)) => info!("the kernel has no ipip module; IPIP runs as eBPF on tc"),
        Ok(Err(e)) => warn!(error = %ErrorChain(&e), "probing for the ipip module failed"),
        Err(e) => warn!(error = %e, "probing for the ipip module failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
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
}
