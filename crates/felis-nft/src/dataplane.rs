//! [`PolicyDataplane`]: keeps the installed ruleset in memory and applies only deltas.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use felis_policy::ProgramDelta;
use felis_policy::program::Program;

use crate::delta;
use crate::error::Error;
use crate::fast;
use crate::link::LinkSession;
use crate::netlink;
use crate::netlink::NetlinkSession;
use crate::nft;
use crate::nft::NftSession;
use crate::render;
use crate::render::ApplyStats;
use crate::render::Config;
use crate::render::GroupChanges;
use crate::render::RenderCache;
use crate::render::Ruleset;

/// How deltas reach the kernel (full resyncs always use one `nft -f -` transaction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// A fresh `nft -f -` per transaction (~17–20 ms of process start-up each).
    ProcessPerApply,
    /// Deltas through one long-lived `nft -i` process.
    Persistent,
    /// Deltas of elements and endpoint chains as one nfnetlink batch on a netlink socket
    /// (see [`fast::delta_ops`]); other deltas through one long-lived `nft -i` process.
    #[default]
    Netlink,
}

/// The policy dataplane of one host (in the network namespace of the thread that calls it).
///
/// The first [`apply`](PolicyDataplane::apply), and the first after any failure, is a
/// [`resync`](PolicyDataplane::resync); the others send only the difference between the
/// ruleset it installed last and the new one, without reading the kernel back.
#[derive(Debug, Default)]
pub struct PolicyDataplane {
    config: Config,
    transport: Transport,
    /// What the last successful transaction left in the kernel; `None`: unknown.
    installed: Option<Ruleset>,
    session: Option<NftSession>,
    /// The netlink socket of [`Transport::Netlink`], opened on first use.
    netlink: Option<NetlinkSession>,
    /// Rendered chains of the last program, reused for unchanged policies.
    cache: RenderCache,
    /// The route-netlink socket that sets the interfaces' device groups, opened on first use.
    links: Option<LinkSession>,
    /// Interfaces that should have a device group but did not exist when it was set (see
    /// [`retry_missing_links`](PolicyDataplane::retry_missing_links)).
    missing: BTreeSet<String>,
}

impl PolicyDataplane {
    /// A dataplane for `cali*` workload interfaces, deltas by netlink ([`Transport::Netlink`]).
    pub fn new() -> PolicyDataplane {
        PolicyDataplane::default()
    }

    /// A dataplane with explicit settings.
    pub fn with_config(config: Config, transport: Transport) -> PolicyDataplane {
        PolicyDataplane {
            config,
            transport,
            installed: None,
            session: None,
            netlink: None,
            cache: RenderCache::default(),
            links: None,
            missing: BTreeSet::new(),
        }
    }

    /// This dataplane is fed programs whose set ids are stable from one to the next (those of
    /// a [`felis_policy::IncrementalCompiler`]): sets are named after their ids, from the first
    /// apply or resync on (see [`apply_delta`](PolicyDataplane::apply_delta)).
    pub fn with_stable_set_ids(mut self) -> PolicyDataplane {
        self.cache = RenderCache::stable();
        self.installed = None;
        self
    }

    /// The ruleset installed by the last successful transaction (`None` before the first, or
    /// after a failure).
    pub fn installed(&self) -> Option<&Ruleset> {
        self.installed.as_ref()
    }

    /// Makes the kernel enforce `program` for the endpoints in `interfaces` (endpoint key to
    /// interface name), by a delta transaction when the installed state is known.
    pub fn apply(
        &mut self,
        program: &Program,
        interfaces: &BTreeMap<String, String>,
    ) -> Result<ApplyStats, Error> {
        let desired = render::render_cached(program, interfaces, &self.config, &mut self.cache);
        let Some(installed) = &self.installed else {
            return self.replace(desired);
        };
        let links = GroupChanges::between(installed, &desired).links;
        if self.transport == Transport::Netlink
            && let Some((mut ops, mut cleanup, mut stats)) = fast::delta_ops(installed, &desired)
        {
            if ops.is_empty() && cleanup.is_empty() && links.is_empty() {
                return Ok(stats);
            }
            // Without group changes, one batch does it all.
            if links.is_empty() {
                ops.append(&mut cleanup);
            }
            let session = match &mut self.netlink {
                Some(session) => session,
                None => self.netlink.insert(NetlinkSession::open()?),
            };
            let (first, second) = session.batches(&ops, &cleanup);
            if first.bytes().len() <= netlink::MAX_BATCH
                && second.bytes().len() <= netlink::MAX_BATCH
            {
                self.installed = None;
                self.commit(&first)?;
                self.set_groups(&links)?;
                self.commit(&second)?;
                stats.script_bytes = first.bytes().len() + second.bytes().len();
                stats.netlink = true;
                self.installed = Some(desired);
                return Ok(stats);
            }
        }
        let (mut script, cleanup, stats) = render::delta_scripts(installed, &desired);
        if links.is_empty() {
            script.push_str(&cleanup);
        }
        if script.is_empty() && links.is_empty() {
            return Ok(stats);
        }
        self.installed = None;
        self.apply_text(&script)?;
        if !links.is_empty() {
            self.set_groups(&links)?;
            self.apply_text(&cleanup)?;
        }
        self.installed = Some(desired);
        Ok(stats)
    }

    /// Whether some interface's device group could not be set because the interface did not
    /// exist (yet): see [`retry_missing_links`](PolicyDataplane::retry_missing_links).
    pub fn has_missing_links(&self) -> bool {
        !self.missing.is_empty()
    }

    /// Sets the groups of the interfaces that were missing; returns how many now have theirs.
    /// (Not part of every apply: with many interfaces gone for good, it would slow each change.)
    pub fn retry_missing_links(&mut self) -> Result<usize, Error> {
        let Some(installed) = &self.installed else {
            return Ok(0);
        };
        let links: Vec<(String, u32)> = std::mem::take(&mut self.missing)
            .into_iter()
            .filter_map(|ifname| installed.groups.get(&ifname).map(|g| (ifname, *g)))
            .collect();
        self.set_groups(&links)?;
        Ok(links.len() - self.missing.len())
    }

    /// Sets the interfaces' device groups; an interface that does not exist yet is retried.
    fn set_groups(&mut self, links: &[(String, u32)]) -> Result<(), Error> {
        if links.is_empty() {
            return Ok(());
        }
        let session = match &mut self.links {
            Some(session) => session,
            None => self.links.insert(LinkSession::open()?),
        };
        match session.set_groups(links) {
            Ok(missing) => {
                // A missing interface with group 0 (no endpoint) needs nothing later.
                self.missing.extend(
                    missing
                        .into_iter()
                        .filter(|m| links.iter().any(|(i, g)| i == m && *g != 0)),
                );
                Ok(())
            }
            Err(e) => {
                self.links = None;
                Err(e)
            }
        }
    }

    /// Commits one netlink batch encoded by the open socket (nothing when it is empty); a
    /// failure closes the socket.
    fn commit(&mut self, batch: &netlink::Batch) -> Result<(), Error> {
        let Some(session) = &mut self.netlink else {
            return Err(Error::Netlink(std::io::Error::other("no netlink socket")));
        };
        let result = session.commit_batch(batch);
        if result.is_err() {
            self.netlink = None;
        }
        result
    }

    /// Applies an nft script by this dataplane's transport (nothing when it is empty).
    fn apply_text(&mut self, script: &str) -> Result<(), Error> {
        if script.is_empty() {
            return Ok(());
        }
        match self.transport {
            Transport::ProcessPerApply => nft::apply_script(script),
            Transport::Persistent | Transport::Netlink => {
                let session = match &mut self.session {
                    Some(session) => session,
                    None => self.session.insert(NftSession::start()?),
                };
                let result = session.apply(script);
                if result.is_err() {
                    self.session = None;
                }
                result
            }
        }
    }

    /// Makes the kernel enforce `program`, which `delta` led to from the program of the last
    /// call: the programs of one [`felis_policy::IncrementalCompiler`], whose set ids are
    /// stable (once a dataplane takes deltas, sets are named after their program ids).
    ///
    /// `delta` must name every endpoint whose program or interface changed. A delta of set
    /// members and endpoints goes to the kernel as one netlink batch built from the delta
    /// alone, without rendering or diffing the whole ruleset; anything else, and the first
    /// call, falls back to [`apply`](PolicyDataplane::apply).
    pub fn apply_delta(
        &mut self,
        program: &Program,
        delta: &ProgramDelta,
        interfaces: &BTreeMap<String, String>,
    ) -> Result<ApplyStats, Error> {
        if !self.cache.stable_set_ids {
            // What is installed was numbered otherwise: start over.
            self.cache = RenderCache::stable();
            self.installed = None;
        }
        let plan = match &self.installed {
            Some(installed) if self.transport == Transport::Netlink => {
                delta::plan(installed, &self.cache, program, delta, interfaces)
            }
            _ => None,
        };
        let Some(mut plan) = plan else {
            return self.apply(program, interfaces);
        };
        let mut stats = plan.stats;
        if plan.ops.is_empty() && plan.cleanup.is_empty() && plan.links.is_empty() {
            if let Some(installed) = &mut self.installed {
                plan.apply_to(installed, &mut self.cache);
            }
            return Ok(stats);
        }
        // Without group changes, one batch does it all.
        let mut ops = std::mem::take(&mut plan.ops);
        let mut cleanup = std::mem::take(&mut plan.cleanup);
        if plan.links.is_empty() {
            ops.append(&mut cleanup);
        }
        let session = match &mut self.netlink {
            Some(session) => session,
            None => self.netlink.insert(NetlinkSession::open()?),
        };
        let (first, second) = session.batches(&ops, &cleanup);
        let bytes = first.bytes().len() + second.bytes().len();
        if bytes > netlink::MAX_BATCH {
            return self.apply(program, interfaces);
        }
        let Some(mut installed) = self.installed.take() else {
            return self.apply(program, interfaces);
        };
        // On failure the kernel's state is unknown: the next apply is a full one.
        self.commit(&first)?;
        self.set_groups(&plan.links)?;
        self.commit(&second)?;
        plan.apply_to(&mut installed, &mut self.cache);
        self.installed = Some(installed);
        stats.script_bytes = bytes;
        stats.netlink = true;
        Ok(stats)
    }

    /// Replaces every object this crate owns in table `inet felis` with the rendering of
    /// `program`, in one transaction (the agent's NAT objects stay).
    pub fn resync(
        &mut self,
        program: &Program,
        interfaces: &BTreeMap<String, String>,
    ) -> Result<ApplyStats, Error> {
        let desired = render::render_cached(program, interfaces, &self.config, &mut self.cache);
        self.replace(desired)
    }

    /// Deletes every object this crate owns (workload traffic is then unfiltered).
    pub fn remove(&mut self) -> Result<(), Error> {
        self.installed = None;
        let existing = nft::list_names()?;
        let (script, _) = render::full_script(&Ruleset::default(), &existing);
        // The full script recreates empty maps and base chains: keep only the deletions.
        let deletions: String = script
            .lines()
            .filter(|l| !l.starts_with("add "))
            .map(|l| format!("{l}\n"))
            .collect();
        if deletions.is_empty() {
            return Ok(());
        }
        nft::apply_script(&format!("add table inet {}\n{deletions}", render::TABLE))
    }

    /// The interfaces' groups change around the transaction: first, to 0, every workload
    /// interface whose group is not the one the new rendering gives it (its traffic is dropped
    /// meanwhile rather than sent to another endpoint's chains); after, to their new groups.
    /// Groups are a hash of the chain names, so after an agent restart most already match.
    fn replace(&mut self, desired: Ruleset) -> Result<ApplyStats, Error> {
        self.installed = None;
        let existing = nft::list_names()?;
        let (script, mut stats) = render::full_script(&desired, &existing);
        let session = match &mut self.links {
            Some(session) => session,
            None => self.links.insert(LinkSession::open()?),
        };
        let current = match session.groups(&self.config.workload_prefix) {
            Ok(current) => current,
            Err(e) => {
                self.links = None;
                return Err(e);
            }
        };
        let stale: Vec<(String, u32)> = current
            .iter()
            .filter(|(ifname, group)| **group != 0 && desired.groups.get(*ifname) != Some(group))
            .map(|(ifname, _)| (ifname.clone(), 0))
            .collect();
        self.set_groups(&stale)?;
        nft::apply_script(&script)?;
        self.missing.clear();
        let wanted: Vec<(String, u32)> = desired
            .groups
            .iter()
            .filter(|(ifname, group)| current.get(*ifname) != Some(group))
            .map(|(ifname, group)| (ifname.clone(), *group))
            .collect();
        self.set_groups(&wanted)?;
        stats.links_changed = stale.len() + wanted.len();
        self.installed = Some(desired);
        Ok(stats)
    }
}
