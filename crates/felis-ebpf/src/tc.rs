//! The IPIP classifiers on tc: loading, attaching (legacy netlink `cls_bpf`, so the filters
//! outlive the process and a restart replaces them atomically), and the maps.
//!
//! Maps (all keys and addresses in network byte order, as the packet carries them):
//!
//! | map | kind | key → value |
//! | --- | --- | --- |
//! | `tunnels` | LPM trie | inner destination prefix → outer destination (node address) |
//! | `peers` | hash | node address IPIP is accepted from → 1 |
//! | `config` | array | `[0]` = this host's address (outer source, decap destination) |
//! | `stats` | per-CPU array | [`IpipStats`] counters |

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use aya::Ebpf;
use aya::maps::Array;
use aya::maps::HashMap as BpfHashMap;
use aya::maps::LpmTrie;
use aya::maps::MapError;
use aya::maps::PerCpuArray;
use aya::maps::lpm_trie::Key;
use aya::programs::ProgramError;
use aya::programs::SchedClassifier;
use aya::programs::TcAttachType;
use aya::programs::tc::NlOptions;
use aya::programs::tc::SchedClassifierLink;
use aya::programs::tc::TcAttachOptions;
use aya::programs::tc::TcError;
use aya::programs::tc::TcHandle;
use ipnet::Ipv4Net;
use tracing::debug;
use tracing::info;

/// The egress classifier's name (also the `tc filter` name, see `tc filter show dev X egress`).
pub const EGRESS_PROGRAM: &str = "felis_ipip_egress";
/// The ingress classifier's name.
pub const INGRESS_PROGRAM: &str = "felis_ipip_ingress";
/// The tc priority (`pref`) of both filters; a fixed value so a restart replaces them in place.
pub const TC_PRIORITY: u16 = 0x4649;
/// The filters' handle within [`TC_PRIORITY`].
const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

const EEXIST: i32 = 17;

/// The compiled object (empty when the build had no clang).
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipip.o"))
}

/// Whether this build carries the eBPF programs (clang was present at build time).
pub fn is_built() -> bool {
    !object().is_empty()
}

/// IPIP-on-tc errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binary was built without clang, so it has no eBPF programs.
    #[error(
        "this build has no eBPF programs (clang and libbpf-dev were missing when it was built)"
    )]
    Unavailable,
    /// The kernel refused an object (no BPF support, no permission, verifier rejection).
    #[error("loading the {object} eBPF object into the kernel")]
    Load {
        /// Which object (`IPIP`, `fast path`).
        object: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// An object lacks a program or map this code expects (a build mismatch).
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// The kernel refused a program (verifier) or its attachment.
    #[error("{action} classifier {program} on {ifname}")]
    Program {
        /// What was being done (`loading`, `attaching`).
        action: &'static str,
        /// The classifier.
        program: &'static str,
        /// The interface.
        ifname: String,
        /// The cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// tc (qdisc or filter) failed.
    #[error("{action} on {ifname}")]
    Tc {
        /// What was being done.
        action: &'static str,
        /// The interface.
        ifname: String,
        /// The cause.
        #[source]
        source: Box<TcError>,
    },
    /// A map operation failed.
    #[error("updating map {map}")]
    Map {
        /// The map.
        map: &'static str,
        /// The cause.
        #[source]
        source: Box<MapError>,
    },
}

/// Packet counters of the classifiers, summed over CPUs (indexes as in `bpf/ipip.c`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpipStats {
    /// Packets encapsulated on egress.
    pub encapsulated: u64,
    /// Packets dropped because encapsulation failed (never sent unencapsulated).
    pub encap_failed: u64,
    /// Packets decapsulated on ingress.
    pub decapsulated: u64,
    /// Packets dropped because decapsulation failed.
    pub decap_failed: u64,
    /// IPIP packets to this host from an address outside the peers, dropped.
    pub unknown_peer: u64,
    /// Outer fragments passed up untouched (the stack drops them: no ipip handler).
    pub fragments: u64,
    /// Malformed IPIP packets (bad outer header length, inner not IPv4), dropped.
    pub malformed: u64,
}

/// The IPIP classifiers attached to one interface of the current network namespace, and
/// their maps. Dropping it leaves the filters in place (the kernel keeps the programs and
/// maps alive); [`IpipTc::detach`] removes them.
pub struct IpipTc {
    ebpf: Ebpf,
    ifname: String,
    local: Ipv4Addr,
    tunnels: BTreeMap<Ipv4Net, Ipv4Addr>,
    peers: BTreeSet<Ipv4Addr>,
}

impl std::fmt::Debug for IpipTc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpipTc")
            .field("ifname", &self.ifname)
            .field("local", &self.local)
            .field("tunnels", &self.tunnels.len())
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl IpipTc {
    /// Loads the classifiers with fresh maps filled from `local`, `tunnels` and `peers`, adds
    /// a `clsact` qdisc to `ifname` if it has none, and attaches them on its ingress and
    /// egress, replacing the filters a previous run attached (in place, so traffic never sees
    /// an empty map). `ifname` must be an Ethernet interface of the current namespace.
    pub fn attach(
        ifname: &str,
        local: Ipv4Addr,
        tunnels: &BTreeMap<Ipv4Net, Ipv4Addr>,
        peers: &BTreeSet<Ipv4Addr>,
    ) -> Result<IpipTc, Error> {
        if !is_built() {
            return Err(Error::Unavailable);
        }
        let ebpf = Ebpf::load(object()).map_err(|e| Error::Load {
            object: "IPIP",
            source: Box::new(e),
        })?;
        let mut tc = IpipTc {
            ebpf,
            ifname: ifname.to_string(),
            local: Ipv4Addr::UNSPECIFIED,
            tunnels: BTreeMap::new(),
            peers: BTreeSet::new(),
        };
        tc.set_local(local)?;
        tc.set_peers(peers)?;
        tc.set_tunnels(tunnels)?;
        add_clsact(ifname)?;
        // Ingress first: by the time we encapsulate, we accept the replies.
        for (name, kind) in [
            (INGRESS_PROGRAM, TcAttachType::Ingress),
            (EGRESS_PROGRAM, TcAttachType::Egress),
        ] {
            tc.program(name)?
                .load()
                .map_err(program_err(name, "loading", ifname))?;
            tc.attach_program(name, kind, true)?;
        }
        info!(ifname, %local, "IPIP classifiers attached");
        Ok(tc)
    }

    /// Checks that both filters are still on the interface (someone may have deleted them, or
    /// the qdisc) and puts back what is missing, with the programs already loaded. Cheap: one
    /// netlink request per direction, no reload. Returns whether anything was put back.
    pub fn ensure_attached(&mut self) -> Result<bool, Error> {
        add_clsact(&self.ifname)?;
        let mut restored = false;
        for (name, kind) in [
            (INGRESS_PROGRAM, TcAttachType::Ingress),
            (EGRESS_PROGRAM, TcAttachType::Egress),
        ] {
            restored |= self.attach_program(name, kind, false)?;
        }
        if restored {
            info!(ifname = %self.ifname, "IPIP classifiers were missing: attached again");
        }
        Ok(restored)
    }

    fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, Error> {
        let ifname = self.ifname.clone();
        self.ebpf
            .program_mut(name)
            .ok_or(Error::Missing(name))?
            .try_into()
            .map_err(program_err(name, "loading", &ifname))
    }

    /// Attaches a loaded program at our priority and handle (see [`attach_classifier`]).
    fn attach_program(
        &mut self,
        name: &'static str,
        kind: TcAttachType,
        replace: bool,
    ) -> Result<bool, Error> {
        let ifname = self.ifname.clone();
        let program = self.program(name)?;
        attach_classifier(program, name, &ifname, kind, TC_PRIORITY, replace)
    }

    /// Removes the classifiers Felis attached to `ifname` in the current namespace (by name,
    /// whatever their priority), e.g. when no pool uses IPIP any more. Returns whether
    /// anything was removed. The `clsact` qdisc stays.
    pub fn detach(ifname: &str) -> Result<bool, Error> {
        let removed = detach_classifiers(
            ifname,
            &[
                (EGRESS_PROGRAM, TcAttachType::Egress),
                (INGRESS_PROGRAM, TcAttachType::Ingress),
            ],
            "detaching the IPIP classifiers",
        )?;
        if removed {
            info!(ifname, "IPIP classifiers detached");
        }
        Ok(removed)
    }

    /// The interface the classifiers are attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// This host's address: the outer source, and the destination IPIP is accepted at.
    pub fn local(&self) -> Ipv4Addr {
        self.local
    }

    /// Sets this host's address.
    pub fn set_local(&mut self, local: Ipv4Addr) -> Result<(), Error> {
        if local == self.local {
            return Ok(());
        }
        let map = self
            .ebpf
            .map_mut("config")
            .ok_or(Error::Missing("config"))?;
        let mut config: Array<_, u32> = Array::try_from(map).map_err(map_err("config"))?;
        config.set(0, wire(local), 0).map_err(map_err("config"))?;
        self.local = local;
        Ok(())
    }

    /// Makes the tunnel table exactly `tunnels` (inner destination prefix → remote node
    /// address); returns how many entries were written or removed.
    pub fn set_tunnels(&mut self, tunnels: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Result<usize, Error> {
        let map = self
            .ebpf
            .map_mut("tunnels")
            .ok_or(Error::Missing("tunnels"))?;
        let mut trie: LpmTrie<_, u32, u32> = LpmTrie::try_from(map).map_err(map_err("tunnels"))?;
        let mut changes = 0;
        for (prefix, remote) in tunnels {
            let prefix = prefix.trunc();
            if self.tunnels.get(&prefix) != Some(remote) {
                trie.insert(&lpm_key(prefix), wire(*remote), 0)
                    .map_err(map_err("tunnels"))?;
                self.tunnels.insert(prefix, *remote);
                changes += 1;
            }
        }
        let wanted: BTreeSet<Ipv4Net> = tunnels.keys().map(Ipv4Net::trunc).collect();
        let stale: Vec<Ipv4Net> = self
            .tunnels
            .keys()
            .filter(|p| !wanted.contains(*p))
            .copied()
            .collect();
        for prefix in stale {
            match trie.remove(&lpm_key(prefix)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(map_err("tunnels")(source)),
            }
            self.tunnels.remove(&prefix);
            changes += 1;
        }
        Ok(changes)
    }

    /// Makes the set of nodes IPIP is accepted from exactly `peers`.
    pub fn set_peers(&mut self, peers: &BTreeSet<Ipv4Addr>) -> Result<usize, Error> {
        let map = self.ebpf.map_mut("peers").ok_or(Error::Missing("peers"))?;
        let mut hash: BpfHashMap<_, u32, u32> =
            BpfHashMap::try_from(map).map_err(map_err("peers"))?;
        let mut changes = 0;
        for peer in peers.difference(&self.peers) {
            hash.insert(wire(*peer), 1, 0).map_err(map_err("peers"))?;
            changes += 1;
        }
        for peer in self.peers.difference(peers) {
            match hash.remove(&wire(*peer)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(map_err("peers")(source)),
            }
            changes += 1;
        }
        self.peers = peers.clone();
        Ok(changes)
    }

    /// The tunnel table as last set.
    pub fn tunnels(&self) -> &BTreeMap<Ipv4Net, Ipv4Addr> {
        &self.tunnels
    }

    /// The peers as last set.
    pub fn peers(&self) -> &BTreeSet<Ipv4Addr> {
        &self.peers
    }

    /// The classifiers' packet counters (since this object was loaded).
    pub fn stats(&self) -> Result<IpipStats, Error> {
        let map = self.ebpf.map("stats").ok_or(Error::Missing("stats"))?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err("stats"))?;
        let read = |index: u32| -> Result<u64, Error> {
            let values = counters.get(&index, 0).map_err(map_err("stats"))?;
            Ok(values.iter().sum())
        };
        Ok(IpipStats {
            encapsulated: read(0)?,
            encap_failed: read(1)?,
            decapsulated: read(2)?,
            decap_failed: read(3)?,
            unknown_peer: read(4)?,
            fragments: read(5)?,
            malformed: read(6)?,
        })
    }
}

/// An address as the packet carries it: the map's bytes are the octets in order.
pub(crate) fn wire(address: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(address.octets())
}

fn lpm_key(prefix: Ipv4Net) -> Key<u32> {
    Key::new(u32::from(prefix.prefix_len()), wire(prefix.network()))
}

/// Attaches a loaded classifier to `ifname` at `priority` (handle 1). When a filter is there
/// already, `replace` swaps its program for ours in place (traffic never sees a gap), else it is
/// left as it is. Returns whether a new filter was created. The filter outlives this process.
pub(crate) fn attach_classifier(
    program: &mut SchedClassifier,
    name: &'static str,
    ifname: &str,
    kind: TcAttachType,
    priority: u16,
    replace: bool,
) -> Result<bool, Error> {
    let err = |action: &'static str| program_err(name, action, ifname);
    let options = TcAttachOptions::Netlink(NlOptions {
        priority,
        handle: TC_HANDLE,
        classid: None,
    });
    let (id, created) = match program.attach_with_options(ifname, kind, options) {
        Ok(id) => (id, true),
        Err(ProgramError::TcError(TcError::NetlinkError(e)))
            if e.raw_os_error() == Some(EEXIST) && !replace =>
        {
            return Ok(false);
        }
        Err(ProgramError::TcError(TcError::NetlinkError(e)))
            if e.raw_os_error() == Some(EEXIST) =>
        {
            // A previous run's filter: replace its program in place.
            debug!(%ifname, program = name, "replacing an attached classifier");
            let link = SchedClassifierLink::attached(ifname, kind, priority, TC_HANDLE, None)
                .map_err(|e| err("attaching")(ProgramError::TcError(TcError::IoError(e))))?;
            (
                program.attach_to_link(link).map_err(err("replacing"))?,
                false,
            )
        }
        Err(e) => return Err(err("attaching")(e)),
    };
    let link = program.take_link(id).map_err(err("attaching"))?;
    // The filter must outlive this process (the agent may restart): a netlink tc link is
    // only (ifindex, priority, handle), so forgetting it leaks nothing but keeps its Drop
    // from detaching the filter.
    std::mem::forget(link);
    Ok(created)
}

/// Removes the named classifiers from `ifname` (whatever their priority); whether any was
/// there. A missing interface or `clsact` qdisc means there is nothing to remove.
pub(crate) fn detach_classifiers(
    ifname: &str,
    programs: &[(&'static str, TcAttachType)],
    action: &'static str,
) -> Result<bool, Error> {
    let mut removed = false;
    for (name, kind) in programs {
        match aya::programs::tc::qdisc_detach_program(ifname, *kind, name) {
            Ok(()) => removed = true,
            Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            // No clsact qdisc at all: nothing of ours either.
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(22) => {}
            Err(source) => {
                return Err(Error::Tc {
                    action,
                    ifname: ifname.to_string(),
                    source: Box::new(source),
                });
            }
        }
    }
    Ok(removed)
}

/// Adds a `clsact` qdisc to `ifname` unless it has one.
pub(crate) fn add_clsact(ifname: &str) -> Result<(), Error> {
    match aya::programs::tc::qdisc_add_clsact(ifname) {
        Ok(()) => Ok(()),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(EEXIST) => Ok(()),
        Err(source) => Err(Error::Tc {
            action: "adding the clsact qdisc",
            ifname: ifname.to_string(),
            source: Box::new(source),
        }),
    }
}

pub(crate) fn program_err(
    program: &'static str,
    action: &'static str,
    ifname: &str,
) -> impl FnOnce(ProgramError) -> Error {
    let ifname = ifname.to_string();
    move |source| Error::Program {
        action,
        program,
        ifname,
        source: Box::new(source),
    }
}

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map {
        map,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_addresses_are_the_octets_in_wire_order() {
        let a = Ipv4Addr::new(10, 0, 1, 10);
        assert_eq!(wire(a).to_ne_bytes(), [10, 0, 1, 10]);
    }

    #[test]
    fn trie_keys_carry_the_prefix_length_and_network() {
        let key = lpm_key("10.244.1.7/26".parse::<Ipv4Net>().unwrap().trunc());
        assert_eq!(key.prefix_len(), 26);
        assert_eq!(key.data().to_ne_bytes(), [10, 244, 1, 0]);
    }
}
