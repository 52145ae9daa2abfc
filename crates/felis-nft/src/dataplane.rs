//! [`PolicyDataplane`]: keeps the installed ruleset in memory and applies only deltas.

use std::collections::BTreeMap;

use felis_policy::ProgramDelta;
use felis_policy::program::Program;

use crate::delta;
use crate::error::Error;
use crate::fast;
use crate::netlink;
use crate::netlink::NetlinkSession;
use crate::nft;
use crate::nft::NftSession;
use crate::render;
use crate::render::ApplyStats;
use crate::render::Config;
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
        if self.transport == Transport::Netlink
            && let Some((ops, mut stats)) = fast::delta_ops(installed, &desired)
        {
            if ops.is_empty() {
                return Ok(stats);
            }
            let session = match &mut self.netlink {
                Some(session) => session,
                None => self.netlink.insert(NetlinkSession::open()?),
            };
            let batch = session.batch(&ops);
            if batch.bytes().len() <= netlink::MAX_BATCH {
                self.installed = None;
                if let Err(e) = session.commit_batch(&batch) {
                    self.netlink = None;
                    return Err(e);
                }
                stats.script_bytes = batch.bytes().len();
                stats.netlink = true;
                self.installed = Some(desired);
                return Ok(stats);
            }
        }
        let (script, stats) = render::delta_script(installed, &desired);
        if script.is_empty() {
            return Ok(stats);
        }
        self.installed = None;
        match self.transport {
            Transport::ProcessPerApply => nft::apply_script(&script)?,
            Transport::Persistent | Transport::Netlink => {
                let session = match &mut self.session {
                    Some(session) => session,
                    None => self.session.insert(NftSession::start()?),
                };
                if let Err(e) = session.apply(&script) {
                    self.session = None;
                    return Err(e);
                }
            }
        }
        self.installed = Some(desired);
        Ok(stats)
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
        let Some(plan) = plan else {
            return self.apply(program, interfaces);
        };
        let mut stats = plan.stats;
        if plan.ops.is_empty() {
            if let Some(installed) = &mut self.installed {
                plan.apply_to(installed, &mut self.cache);
            }
            return Ok(stats);
        }
        let session = match &mut self.netlink {
            Some(session) => session,
            None => self.netlink.insert(NetlinkSession::open()?),
        };
        let batch = session.batch(&plan.ops);
        if batch.bytes().len() > netlink::MAX_BATCH {
            return self.apply(program, interfaces);
        }
        let Some(mut installed) = self.installed.take() else {
            return self.apply(program, interfaces);
        };
        if let Err(e) = session.commit_batch(&batch) {
            // The kernel's state is unknown: the next apply is a full one.
            self.netlink = None;
            return Err(e);
        }
        plan.apply_to(&mut installed, &mut self.cache);
        self.installed = Some(installed);
        stats.script_bytes = batch.bytes().len();
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

    fn replace(&mut self, desired: Ruleset) -> Result<ApplyStats, Error> {
        self.installed = None;
        let existing = nft::list_names()?;
        let (script, stats) = render::full_script(&desired, &existing);
        nft::apply_script(&script)?;
        self.installed = Some(desired);
        Ok(stats)
    }
}
