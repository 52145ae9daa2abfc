//! The routed fast path (`felis-ebpf`'s [`FastPath`]): established TCP flows of local
//! workloads skip the host's IP forwarding path; every new flow, and each direction of it until
//! the stack has accepted a packet of it, still goes through nftables policy.
//!
//! [`FastPathPlane`] attaches the classifiers to the uplink (the interface holding the node's
//! address) and to every local workload veth, forgets veths that went away, and forgets every
//! recorded flow when policy is programmed ([`FastPathPlane::policy_changed`]).
//!
//! Conntrack does not see the packets the fast path forwards, so its idea of a TCP window falls
//! behind, and a FIN or RST that goes through the stack afterwards would be INVALID (and dropped
//! by `ct state invalid drop`). The plane therefore sets, in the host's namespace,
//! `net.netfilter.nf_conntrack_tcp_be_liberal=1` (out-of-window segments are not INVALID; what
//! kube-proxy's `--conntrack-tcp-be-liberal` sets) and `nf_conntrack_tcp_ignore_invalid_rst=1`;
//! if it cannot, it does not enable the fast path.
//!
//! `FELIS_ROUTED_FAST_PATH=off` keeps it off (and removes a previous run's classifiers); the
//! default, `auto`, enables it where the kernel loads the programs.

use std::collections::BTreeMap;

use felis_ebpf::Device;
use felis_ebpf::FastPath;
use tracing::info;
use tracing::warn;

use crate::run::ErrorChain;

/// The environment variable that turns the fast path off.
pub const FAST_PATH_ENV: &str = "FELIS_ROUTED_FAST_PATH";

/// The conntrack settings the fast path needs, as (sysctl path, value).
pub const SYSCTLS: [(&str, &str); 2] = [
    ("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal", "1"),
    (
        "/proc/sys/net/netfilter/nf_conntrack_tcp_ignore_invalid_rst",
        "1",
    ),
];

/// Whether the fast path runs on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastPathStatus {
    /// Not tried yet (no reconcile pass so far).
    Pending,
    /// Turned off by [`FAST_PATH_ENV`].
    Off,
    /// Attached to these interfaces.
    Active {
        /// How many interfaces carry the classifiers.
        interfaces: usize,
    },
    /// It cannot run here (no eBPF in this build or kernel, the conntrack settings refused).
    Unavailable {
        /// Why, for the operator.
        reason: String,
    },
}

/// Whether [`FAST_PATH_ENV`] (its value, if set) asks for the fast path; an unknown value is an
/// error naming the variable.
pub fn enabled_by(value: Option<&str>) -> Result<bool, String> {
    match value.map(str::trim) {
        None | Some("" | "auto" | "on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(format!(
            "{FAST_PATH_ENV}={other:?} is not one of auto, on, off"
        )),
    }
}

/// The fast path of this host: loaded on first use, attached to the uplink and local veths.
#[derive(Debug)]
pub struct FastPathPlane {
    wanted: Result<bool, String>,
    fast: Option<FastPath>,
    status: FastPathStatus,
    /// Interfaces a previous run may have left classifiers on, cleaned once when off.
    cleaned: bool,
}

impl Default for FastPathPlane {
    fn default() -> Self {
        FastPathPlane::new(enabled_by(std::env::var(FAST_PATH_ENV).ok().as_deref()))
    }
}

impl FastPathPlane {
    /// A plane that is on (`Ok(true)`), off, or misconfigured (`Err`: reported, stays off).
    pub fn new(wanted: Result<bool, String>) -> FastPathPlane {
        FastPathPlane {
            wanted,
            fast: None,
            status: FastPathStatus::Pending,
            cleaned: false,
        }
    }

    /// Where it stands.
    pub fn status(&self) -> &FastPathStatus {
        &self.status
    }

    /// Whether [`FastPathPlane::reconcile`] has anything to do with the host's interfaces: it
    /// is on and usable, or off with a previous run's classifiers still to remove, or not yet
    /// decided. Callers skip looking the interfaces up otherwise.
    pub fn needs_interfaces(&self) -> bool {
        match (&self.wanted, &self.status) {
            (_, FastPathStatus::Pending) => true,
            (Ok(true), FastPathStatus::Active { .. }) => true,
            (Ok(false), _) => !self.cleaned,
            _ => false,
        }
    }

    /// Attaches to `uplink` and `workloads` (name → index), forgets workloads no longer
    /// there. Loads the programs on the first call. Blocking (netlink, bpf syscalls), short.
    pub fn reconcile(&mut self, uplink: Option<(&str, u32)>, workloads: &BTreeMap<String, u32>) {
        match &self.wanted {
            Ok(true) => {}
            Ok(false) => {
                if !self.cleaned {
                    self.cleaned = true;
                    self.status = FastPathStatus::Off;
                    info!("routed fast path off ({FAST_PATH_ENV}=off)");
                    let names = uplink.map(|(n, _)| n).into_iter();
                    for name in names.chain(workloads.keys().map(String::as_str)) {
                        if let Err(e) = felis_ebpf::detach_fast_path(name) {
                            warn!(ifname = name, error = %ErrorChain(&e), "removing fast-path classifiers failed");
                        }
                    }
                }
                return;
            }
            Err(reason) => {
                if self.status == FastPathStatus::Pending {
                    warn!(%reason, "routed fast path off");
                    self.status = FastPathStatus::Unavailable {
                        reason: reason.clone(),
                    };
                }
                return;
            }
        }
        if matches!(self.status, FastPathStatus::Unavailable { .. }) {
            return;
        }
        if self.fast.is_none() {
            match load() {
                Ok(fast) => self.fast = Some(fast),
                Err(reason) => {
                    info!(%reason, "routed fast path unavailable; forwarding through the stack only");
                    self.status = FastPathStatus::Unavailable { reason };
                    return;
                }
            }
        }
        let Some(fast) = &mut self.fast else { return };
        let mut wanted: BTreeMap<&str, (u32, Device)> = workloads
            .iter()
            .map(|(name, index)| (name.as_str(), (*index, Device::Workload)))
            .collect();
        if let Some((name, index)) = uplink {
            wanted.insert(name, (index, Device::Uplink));
        }
        let gone: Vec<String> = fast
            .attached()
            .keys()
            .filter(|name| !wanted.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Err(e) = fast.forget(&name) {
                warn!(ifname = %name, error = %ErrorChain(&e), "forgetting a fast-path interface failed");
            }
        }
        for (name, (index, device)) in wanted {
            let before = fast.attached().len();
            match fast.attach(name, index, device) {
                Ok(()) if fast.attached().len() > before => {
                    tracing::debug!(ifname = name, ?device, "fast path attached");
                }
                Ok(()) => {}
                // The veth may be going away as we speak: the next pass sees it gone.
                Err(e) => {
                    warn!(ifname = name, error = %ErrorChain(&e), "attaching the fast path failed")
                }
            }
        }
        let interfaces = fast.attached().len();
        if self.status != (FastPathStatus::Active { interfaces }) {
            if matches!(self.status, FastPathStatus::Pending) {
                info!(interfaces, "routed fast path active");
            }
            self.status = FastPathStatus::Active { interfaces };
        }
    }

    /// The fast path's counters in Prometheus text: whether it is active and, when it is, the
    /// packets it forwarded, the redirects the kernel refused, the flow directions recorded and
    /// the packets left to the stack to refresh conntrack.
    pub fn prometheus(&self) -> String {
        let stats = self.fast.as_ref().and_then(|f| f.stats().ok());
        render_metrics(
            matches!(self.status, FastPathStatus::Active { .. }),
            stats.as_ref(),
        )
    }

    /// Policy was programmed: forget every recorded flow, so each flow's next packet meets the
    /// new policy in the stack before the fast path takes it again.
    pub fn policy_changed(&mut self) {
        if let Some(fast) = &mut self.fast
            && let Err(e) = fast.policy_changed()
        {
            // Flows keep their old generation: the fast path keeps carrying what the policy
            // accepted before, as conntrack's `established` rule would. Drop it to be safe.
            warn!(error = %ErrorChain(&e), "resetting the fast path's flows failed; turning it off");
            self.fast = None;
            self.status = FastPathStatus::Unavailable {
                reason: "resetting its flows failed".into(),
            };
        }
    }
}

/// Prometheus text for the fast path (see [`FastPathPlane::prometheus`]).
pub fn render_metrics(active: bool, stats: Option<&felis_ebpf::FastPathStats>) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP felis_fastpath_active Whether the routed fast path is attached (1) or not (0).\n\
         # TYPE felis_fastpath_active gauge\nfelis_fastpath_active {}",
        u8::from(active)
    );
    if let Some(s) = stats {
        for (name, help, value) in [
            (
                "felis_fastpath_forwarded_packets_total",
                "Packets the fast path sent on without the host's forwarding path.",
                s.forwarded,
            ),
            (
                "felis_fastpath_redirect_failures_total",
                "Redirects the kernel refused (the packet was dropped).",
                s.redirect_failed,
            ),
            (
                "felis_fastpath_recorded_flows_total",
                "Flow directions recorded after the stack accepted them.",
                s.recorded,
            ),
            (
                "felis_fastpath_refresh_packets_total",
                "Packets left to the stack to keep their conntrack entry alive.",
                s.refreshed,
            ),
        ] {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
    }
    text
}

fn load() -> Result<FastPath, String> {
    let fast = FastPath::load().map_err(|e| ErrorChain(&e).to_string())?;
    for (path, value) in SYSCTLS {
        std::fs::write(path, value).map_err(|e| format!("setting {path} to {value}: {e}"))?;
    }
    Ok(fast)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_off_plane_looks_at_interfaces_once_to_clean_up() {
        let mut plane = FastPathPlane::new(Ok(false));
        assert!(plane.needs_interfaces());
        plane.reconcile(None, &BTreeMap::new());
        assert_eq!(plane.status(), &FastPathStatus::Off);
        assert!(!plane.needs_interfaces());
    }

    #[test]
    fn the_variable_turns_it_off_and_names_itself_when_wrong() {
        assert_eq!(enabled_by(None), Ok(true));
        assert_eq!(enabled_by(Some("auto")), Ok(true));
        assert_eq!(enabled_by(Some("off")), Ok(false));
        let e = enabled_by(Some("fast")).unwrap_err();
        assert!(e.contains(FAST_PATH_ENV) && e.contains("fast"), "{e}");
    }

    #[test]
    fn metrics_say_whether_it_is_active_and_count_packets() {
        let off = render_metrics(false, None);
        assert!(off.contains("felis_fastpath_active 0\n"), "{off}");
        assert!(!off.contains("forwarded"), "{off}");
        let stats = felis_ebpf::FastPathStats {
            forwarded: 42,
            redirect_failed: 0,
            recorded: 4,
            refreshed: 1,
        };
        let on = render_metrics(true, Some(&stats));
        for line in [
            "felis_fastpath_active 1",
            "# TYPE felis_fastpath_forwarded_packets_total counter",
            "felis_fastpath_forwarded_packets_total 42",
            "felis_fastpath_recorded_flows_total 4",
            "felis_fastpath_refresh_packets_total 1",
            "felis_fastpath_redirect_failures_total 0",
        ] {
            assert!(on.lines().any(|l| l == line), "{line} missing from\n{on}");
        }
    }

    #[test]
    fn a_misconfigured_plane_stays_off_and_says_why() {
        let mut plane = FastPathPlane::new(Err("bad".into()));
        assert!(plane.needs_interfaces());
        plane.reconcile(None, &BTreeMap::new());
        assert!(!plane.needs_interfaces());
        assert_eq!(
            plane.status(),
            &FastPathStatus::Unavailable {
                reason: "bad".into()
            }
        );
    }
}
