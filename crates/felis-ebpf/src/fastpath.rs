//! The routed fast path on tc (`bpf/fastpath.c`): established TCP flows between workloads
//! skip the host's forwarding path, every new flow and direction still goes through the stack
//! and its nftables policy.
//!
//! ```text
//!  workload veth (host side)  ingress: felis_fast_forward   egress: felis_fast_record
//!  uplink (host interface)    ingress: felis_fast_forward   egress: felis_fast_record
//! ```
//!
//! `felis_fast_record` runs after netfilter and records each forwarded TCP direction it sees
//! (the packet was accepted by policy); `felis_fast_forward` sends later packets of a recorded
//! direction (no SYN, FIN or RST) straight to the FIB's next device: into the pod's namespace
//! (`bpf_redirect_peer`) or out of the uplink (`bpf_redirect`). [`FastPath::policy_changed`]
//! forgets every recorded direction at once (a generation number), so a policy change is seen
//! by the next packet of every flow. The filters sit at [`FAST_PRIORITY`], ahead of the IPIP
//! classifiers, and pass what they do not take to the next filter.
//!
//! Maps: `flows` (LRU hash: direction → generation, last refresh), `devices` (hash: ifindex →
//! 1 workload / 2 uplink: where the fast path may send), `config` (`[0]` the generation),
//! `stats` (per-CPU counters, [`FastPathStats`]).

use std::collections::BTreeMap;

use aya::Ebpf;
use aya::maps::Array;
use aya::maps::HashMap as BpfHashMap;
use aya::maps::MapError;
use aya::maps::PerCpuArray;
use aya::programs::SchedClassifier;
use aya::programs::TcAttachType;
use tracing::info;

use crate::tc::Error;
use crate::tc::add_clsact;
use crate::tc::attach_classifier;
use crate::tc::detach_classifiers;
use crate::tc::map_err;
use crate::tc::program_err;

/// The forwarding classifier (ingress).
pub const FORWARD_PROGRAM: &str = "felis_fast_forward";
/// The recording classifier (egress).
pub const RECORD_PROGRAM: &str = "felis_fast_record";
/// The tc priority (`pref`) of both filters: before the IPIP classifiers
/// ([`crate::TC_PRIORITY`]), which then still see what the fast path passes on or sends out.
pub const FAST_PRIORITY: u16 = crate::TC_PRIORITY - 1;

/// The compiled object (empty when the build had no clang).
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.o"))
}

/// What an interface is to the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Device {
    /// The host side of a workload's veth: the fast path enters the pod's namespace directly.
    Workload,
    /// The host's interface toward other hosts.
    Uplink,
}

impl Device {
    fn code(self) -> u32 {
        match self {
            Device::Workload => 1,
            Device::Uplink => 2,
        }
    }
}

/// Packet counters, summed over CPUs (indexes as in `bpf/fastpath.c`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastPathStats {
    /// Packets sent on by the fast path.
    pub forwarded: u64,
    /// Redirects the kernel refused (the packet was dropped; the interface went away).
    pub redirect_failed: u64,
    /// Flow directions recorded after the stack accepted them.
    pub recorded: u64,
    /// Packets left to the stack to refresh their conntrack entry.
    pub refreshed: u64,
}

/// The loaded fast path of the current network namespace, and the interfaces it is attached
/// to. Dropping it leaves the filters in place (the kernel keeps programs and maps alive);
/// [`FastPath::detach`] removes them from one interface.
pub struct FastPath {
    ebpf: Ebpf,
    attached: BTreeMap<String, (u32, Device)>,
    generation: u32,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("attached", &self.attached)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl FastPath {
    /// Loads the programs with empty maps (no interface attached yet).
    pub fn load() -> Result<FastPath, Error> {
        if object().is_empty() {
            return Err(Error::Unavailable);
        }
        let ebpf = Ebpf::load(object()).map_err(|e| Error::Load {
            object: "fast path",
            source: Box::new(e),
        })?;
        let mut fast = FastPath {
            ebpf,
            attached: BTreeMap::new(),
            generation: 0,
        };
        for name in [FORWARD_PROGRAM, RECORD_PROGRAM] {
            fast.program(name, "-")?
                .load()
                .map_err(program_err(name, "loading", "-"))?;
        }
        Ok(fast)
    }

    fn program(&mut self, name: &'static str, ifname: &str) -> Result<&mut SchedClassifier, Error> {
        self.ebpf
            .program_mut(name)
            .ok_or(Error::Missing(name))?
            .try_into()
            .map_err(program_err(name, "loading", ifname))
    }

    /// Attaches both classifiers to `ifname` (index `ifindex`) as a `device`, replacing in place
    /// the filters a previous run attached, and lets the fast path send to it. Attaching an
    /// interface again (same index and kind) does nothing.
    pub fn attach(&mut self, ifname: &str, ifindex: u32, device: Device) -> Result<(), Error> {
        if self.attached.get(ifname) == Some(&(ifindex, device)) {
            return Ok(());
        }
        add_clsact(ifname)?;
        // Recording first: a flow is only taken once it has been seen leaving.
        for (name, kind) in [
            (RECORD_PROGRAM, TcAttachType::Egress),
            (FORWARD_PROGRAM, TcAttachType::Ingress),
        ] {
            let program = self.program(name, ifname)?;
            attach_classifier(program, name, ifname, kind, FAST_PRIORITY, true)?;
        }
        self.devices()?
            .insert(ifindex, device.code(), 0)
            .map_err(map_err("devices"))?;
        if let Some((old, _)) = self.attached.insert(ifname.to_string(), (ifindex, device))
            && old != ifindex
        {
            self.remove_device(old)?;
        }
        Ok(())
    }

    /// Removes the classifiers from `ifname` (when it still exists) and stops sending to it.
    /// Returns whether anything was attached there.
    pub fn detach(&mut self, ifname: &str) -> Result<bool, Error> {
        let known = self.forget(ifname)?;
        let removed = detach_fast_path(ifname)?;
        Ok(known || removed)
    }

    /// Forgets `ifname` (it went away, and its filters with it): the fast path stops sending
    /// to its index. Returns whether it was attached.
    pub fn forget(&mut self, ifname: &str) -> Result<bool, Error> {
        match self.attached.remove(ifname) {
            Some((ifindex, _)) => {
                self.remove_device(ifindex)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn remove_device(&mut self, ifindex: u32) -> Result<(), Error> {
        match self.devices()?.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(map_err("devices")(source)),
        }
    }

    fn devices(&mut self) -> Result<BpfHashMap<&mut aya::maps::MapData, u32, u32>, Error> {
        let map = self
            .ebpf
            .map_mut("devices")
            .ok_or(Error::Missing("devices"))?;
        BpfHashMap::try_from(map).map_err(map_err("devices"))
    }

    /// The interfaces attached, by name: (ifindex, kind).
    pub fn attached(&self) -> &BTreeMap<String, (u32, Device)> {
        &self.attached
    }

    /// Forgets every recorded flow direction at once: the next packet of each flow goes
    /// through the stack (and its current policy) before the fast path takes the flow again.
    pub fn policy_changed(&mut self) -> Result<(), Error> {
        let next = self.generation.wrapping_add(1);
        let map = self
            .ebpf
            .map_mut("config")
            .ok_or(Error::Missing("config"))?;
        let mut config: Array<_, u32> = Array::try_from(map).map_err(map_err("config"))?;
        config.set(0, next, 0).map_err(map_err("config"))?;
        self.generation = next;
        Ok(())
    }

    /// The generation of recorded flows (bumped by [`FastPath::policy_changed`]).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The classifiers' packet counters (since this object was loaded).
    pub fn stats(&self) -> Result<FastPathStats, Error> {
        let map = self.ebpf.map("stats").ok_or(Error::Missing("stats"))?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err("stats"))?;
        let read = |index: u32| -> Result<u64, Error> {
            let values = counters.get(&index, 0).map_err(map_err("stats"))?;
            Ok(values.iter().sum())
        };
        Ok(FastPathStats {
            forwarded: read(0)?,
            redirect_failed: read(1)?,
            recorded: read(2)?,
            refreshed: read(3)?,
        })
    }
}

/// Removes the fast-path classifiers from `ifname` in the current namespace, whoever attached
/// them (a previous run). Returns whether anything was removed.
pub fn detach_fast_path(ifname: &str) -> Result<bool, Error> {
    let removed = detach_classifiers(
        ifname,
        &[
            (FORWARD_PROGRAM, TcAttachType::Ingress),
            (RECORD_PROGRAM, TcAttachType::Egress),
        ],
        "detaching the fast-path classifiers",
    )?;
    if removed {
        info!(ifname, "fast-path classifiers detached");
    }
    Ok(removed)
}
