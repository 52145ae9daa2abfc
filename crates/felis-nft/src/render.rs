//! Pure rendering: a [`Program`] plus the endpoints' interface names become a [`Ruleset`] (the
//! desired nftables objects), and two rulesets become the nft script that turns one into the
//! other.
//!
//! Layout of the objects this module owns in table `inet felis` (the agent's NAT sets and
//! `nat-postrouting` chain live there too and are never touched):
//!
//! ```text
//! pol-forward-egress  (hook forward, priority filter)     ct established/related accept, invalid drop,
//!                                                         iifname "cali*" iifgroup vmap @pol-from-grp,
//!                                                         iifname "cali*" drop
//! pol-forward-ingress (hook forward, priority filter + 1) ct established/related accept, invalid drop,
//!                                                         oifname "cali*" oifgroup vmap @pol-to-grp,
//!                                                         oifname "cali*" drop
//! pol-from-grp / pol-to-grp   verdict maps from a device group to `goto` the egress / ingress
//!                             endpoint chain
//! fw-<hash> / tw-<hash>       endpoint chains, egress / ingress: tiers, then profiles, then drop;
//!                             one per distinct rule list (a hash of it), shared by every endpoint
//!                             with the same policies, so most endpoint changes are map elements
//! pi-<policy> / po-<policy>   policy rules, ingress / egress
//! pri-<profile> / pro-<profile>  profile rules, ingress / egress
//! pol-s<id>-4h / -4n / -6h / -6n  IP set <id>: host addresses (hash) and CIDRs (interval)
//! pol-np<id>-4 / -6           named-port set <id>: address . protocol . port
//! ```
//!
//! Dispatch is by device group: every workload interface gets the group (`ip link set caliX
//! group N`) of its pair of endpoint chains, and the two maps hold one element per pair. Keying
//! the maps on the interface name instead would cost a verdict-map element per endpoint, and
//! an element that jumps makes the kernel validate the whole table at every commit (each element
//! of each verdict map reachable from a base chain, each chain behind it): milliseconds at
//! 10,000 endpoints, for any rule or jump change. With groups, an endpoint whose policies match
//! an existing pair changes no nftables object at all (set members aside), and validation walks
//! one element per pair. Group 0 (every new interface's) is in no map: its traffic is dropped
//! until the agent sets the group, so an endpoint is never reachable before its policy.
//!
//! Allow is `accept` (which ends only the current base chain: the ingress chain still runs, at
//! the next priority), Deny is `drop`, Log logs and continues. Pass sets [`PASS_MARK`] and returns
//! from the policy chain; the endpoint chain skips the tier's remaining policies and its default
//! action while the mark is set, and clears it before the next tier. In a profile, Pass returns
//! (the next profile is tried), as the reference interpreter [`Program::verdict`] does.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use felis_policy::Action;
use felis_policy::IpVersion;
use felis_policy::NamedPortMember;
use felis_policy::Protocol;
use felis_policy::TierDefaultAction;
use felis_policy::program::CompiledRule;
use felis_policy::program::DirectionProgram;
use felis_policy::program::EndpointProgram;
use felis_policy::program::IpSetId;
use felis_policy::program::Match;
use felis_policy::program::PolicyProgram;
use felis_policy::program::ProfileProgram;
use felis_policy::program::Program;
use felis_policy::program::Side;
use felis_policy::program::set_references;
use ipnet::IpNet;

/// The nftables table (shared with the agent's NAT objects).
pub const TABLE: &str = "felis";
/// The packet mark bit that carries "a Pass rule matched in this tier".
pub const PASS_MARK: u32 = 0x0010_0000;
/// Verdict map from a workload interface's device group to its egress chain.
pub const FROM_WORKLOAD_MAP: &str = "pol-from-grp";
/// Verdict map from a workload interface's device group to its ingress chain.
pub const TO_WORKLOAD_MAP: &str = "pol-to-grp";
/// Base chain running workload egress policy.
pub const EGRESS_BASE_CHAIN: &str = "pol-forward-egress";
/// Base chain running workload ingress policy.
pub const INGRESS_BASE_CHAIN: &str = "pol-forward-ingress";
/// The prefix Calico logs packets with.
pub const LOG_PREFIX: &str = "calico-packet: ";

/// Prefixes of every chain, set and map this crate owns.
const OWN_PREFIXES: [&str; 7] = ["pol-", "pi-", "po-", "pri-", "pro-", "tw-", "fw-"];
/// Protocols that carry ports: TCP, UDP, SCTP, UDP-Lite.
const PORT_PROTOCOLS: &str = "{ 6, 17, 132, 136 }";
/// The same, as numbers.
const PORT_PROTOCOL_NUMBERS: [u8; 4] = [6, 17, 132, 136];
/// Longest object name we emit (the kernel allows 256 bytes).
const MAX_NAME: usize = 200;

/// What rendering needs beyond the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Interface-name prefix of workload interfaces (`cali`): such interfaces whose endpoint
    /// has no program yet drop all forwarded traffic.
    pub workload_prefix: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            workload_prefix: "cali".to_string(),
        }
    }
}

/// The kind of a named set, which fixes its declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetKind {
    /// IPv4 host addresses (hash set).
    Hosts4,
    /// IPv6 host addresses (hash set).
    Hosts6,
    /// IPv4 CIDRs (interval set).
    Nets4,
    /// IPv6 CIDRs (interval set).
    Nets6,
    /// IPv4 `address . protocol . port`.
    NamedPorts4,
    /// IPv6 `address . protocol . port`.
    NamedPorts6,
}

impl SetKind {
    /// The body of the set declaration.
    pub fn declaration(self) -> &'static str {
        match self {
            SetKind::Hosts4 => "type ipv4_addr;",
            SetKind::Hosts6 => "type ipv6_addr;",
            SetKind::Nets4 => "type ipv4_addr; flags interval; auto-merge;",
            SetKind::Nets6 => "type ipv6_addr; flags interval; auto-merge;",
            SetKind::NamedPorts4 => "type ipv4_addr . inet_proto . inet_service;",
            SetKind::NamedPorts6 => "type ipv6_addr . inet_proto . inet_service;",
        }
    }

    /// Whether the set is an interval set (updated by flush and refill: an interval set with
    /// auto-merge cannot delete the elements it merged).
    pub fn is_interval(self) -> bool {
        matches!(self, SetKind::Nets4 | SetKind::Nets6)
    }
}

/// A named set and its elements (as nft text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSet {
    /// Its type.
    pub kind: SetKind,
    /// Elements, rendered.
    pub elements: BTreeSet<String>,
}

/// The desired state of every object this crate owns, rendered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Named sets by name.
    pub sets: BTreeMap<String, NftSet>,
    /// Regular chains by name, with their rules in order (shared with the render cache, so an
    /// unchanged chain compares equal by pointer).
    pub chains: BTreeMap<String, Arc<[String]>>,
    /// Interface name to egress chain.
    pub from_workload: BTreeMap<String, String>,
    /// Interface name to ingress chain.
    pub to_workload: BTreeMap<String, String>,
    /// Interface name to its device group (the id of its pair of endpoint chains).
    pub groups: BTreeMap<String, u32>,
    /// Device group to its egress and ingress chains (`pol-from-grp`, `pol-to-grp`).
    pub pairs: BTreeMap<u32, (String, String)>,
    /// Interface-name prefix of workload interfaces.
    pub workload_prefix: String,
}

/// What a delta or full apply changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Whether this was a full replace (resync).
    pub full: bool,
    /// Sets created.
    pub sets_added: usize,
    /// Sets deleted.
    pub sets_removed: usize,
    /// Set elements added (interval sets count their whole refill).
    pub elements_added: usize,
    /// Set elements removed.
    pub elements_removed: usize,
    /// Chains created.
    pub chains_added: usize,
    /// Chains whose rules were replaced.
    pub chains_replaced: usize,
    /// Chains deleted.
    pub chains_removed: usize,
    /// Verdict-map elements added, changed or removed.
    pub map_changes: usize,
    /// Workload interfaces whose device group changed.
    pub links_changed: usize,
    /// Size of the nft script sent (or of the netlink batch).
    pub script_bytes: usize,
    /// Sent as one netlink batch (not `nft` text).
    pub netlink: bool,
}

impl ApplyStats {
    /// Whether nothing needed to change.
    pub fn is_empty(&self) -> bool {
        !self.full
            && self.sets_added == 0
            && self.sets_removed == 0
            && self.elements_added == 0
            && self.elements_removed == 0
            && self.chains_added == 0
            && self.chains_replaced == 0
            && self.chains_removed == 0
            && self.map_changes == 0
            && self.links_changed == 0
    }
}

/// Whether `name` is a chain, set or map this crate owns.
pub fn is_own(name: &str) -> bool {
    OWN_PREFIXES.iter().any(|p| name.starts_with(p)) || crate::host::is_own(name)
}

/// Rendered policy and profile chains of the previous [`render_cached`], reused when a chain's
/// rules and the presence of the sets they refer to are unchanged.
#[derive(Debug, Clone, Default)]
pub struct RenderCache {
    chains: BTreeMap<String, CachedChain>,
    /// Endpoint chains by endpoint key.
    pub(crate) endpoints: BTreeMap<String, CachedEndpoint>,
    /// Set numbering of the previous rendering, see [`SetNumbers`]: per chain kind (policy
    /// ingress and egress, profile ingress and egress), by policy or profile key.
    set_refs: [BTreeMap<String, Vec<u32>>; 4],
    /// Every set number the previous rendering used.
    set_numbers: BTreeSet<u32>,
    /// The programs rendered number their sets stably ([`felis_policy::IncrementalCompiler`]):
    /// sets are named after their program ids.
    pub(crate) stable_set_ids: bool,
    /// Device groups of the previous rendering, by (egress, ingress) chain pair.
    pub(crate) groups: BTreeMap<(String, String), u32>,
}

/// The device group of the chain pair `(egress, ingress)`: a hash of the names (so that an agent
/// restarted with the same program finds its interfaces' groups right), the next free number
/// on a collision with a group in `used`. Never 0 (the default group).
pub(crate) fn pair_group(egress: &str, ingress: &str, used: &dyn Fn(u32) -> bool) -> u32 {
    let hash = fnv1a(egress.bytes().chain([b' ']).chain(ingress.bytes()));
    let mut group = (hash ^ (hash >> 32)) as u32;
    while group == 0 || used(group) {
        group = group.wrapping_add(1);
    }
    group
}

impl RenderCache {
    /// An empty cache for programs whose set ids are stable from one program to the next
    /// ([`felis_policy::IncrementalCompiler`]): sets are named after their ids.
    pub fn stable() -> RenderCache {
        RenderCache {
            stable_set_ids: true,
            ..RenderCache::default()
        }
    }
}

#[derive(Debug, Clone)]
struct CachedChain {
    /// The policy or profile rules it was rendered from (with the program's set ids then).
    source: Vec<CompiledRule>,
    /// What else the rendering depended on (sets, policies and profiles present).
    presence: Vec<bool>,
    rendered: Arc<[String]>,
    /// The set numbers the rules refer to, in order (the rules' own ids are the program's).
    refs: Vec<u32>,
}

/// One endpoint's two chains (ingress, egress), as rendered for its program.
#[derive(Debug, Clone)]
pub(crate) struct CachedEndpoint {
    pub(crate) ifname: String,
    program: EndpointProgram,
    /// Which of the policies and profiles it refers to exist, per direction.
    presence: [Vec<bool>; 2],
    pub(crate) rendered: [Arc<[String]>; 2],
    /// `tw-<hash>` and `fw-<hash>`.
    pub(crate) names: [String; 2],
}

impl CachedEndpoint {
    const DIRECTIONS: [(&'static str, &'static str, &'static str); 2] =
        [("tw-", "pi-", "pri-"), ("fw-", "po-", "pro-")];

    pub(crate) fn render(
        ifname: &str,
        endpoint: &EndpointProgram,
        program: &Program,
    ) -> CachedEndpoint {
        let directions = [&endpoint.ingress, &endpoint.egress];
        let rendered: [Arc<[String]>; 2] = [0, 1].map(|i| {
            let (_, policy_prefix, profile_prefix) = CachedEndpoint::DIRECTIONS[i];
            endpoint_chain(program, directions[i], policy_prefix, profile_prefix).into()
        });
        let names = [0, 1].map(|i| {
            let (prefix, _, _) = CachedEndpoint::DIRECTIONS[i];
            format!("{prefix}{:016x}", digest(&rendered[i]))
        });
        CachedEndpoint {
            ifname: ifname.to_string(),
            program: endpoint.clone(),
            presence: directions.map(|d| presence_of(d, program).collect()),
            rendered,
            names,
        }
    }

    /// Whether this rendering still holds for `endpoint` in `program`.
    pub(crate) fn is_current(&self, endpoint: &EndpointProgram, program: &Program) -> bool {
        self.program == *endpoint
            && [&endpoint.ingress, &endpoint.egress]
                .iter()
                .zip(&self.presence)
                .all(|(d, stored)| presence_of(d, program).eq(stored.iter().copied()))
    }
}

/// Which of the policies and profiles `direction` refers to exist in `program`, in order.
fn presence_of<'a>(
    direction: &'a DirectionProgram,
    program: &'a Program,
) -> impl Iterator<Item = bool> + 'a {
    direction
        .tiers
        .iter()
        .flat_map(|t| &t.policies)
        .map(|p| program.policies.contains_key(p))
        .chain(
            direction
                .profiles
                .iter()
                .map(|p| program.profiles.contains_key(p)),
        )
}

/// Renders `program` for the endpoints in `interfaces` (endpoint key, as in
/// [`Program::endpoints`], to interface name). Endpoints without an interface are not rendered;
/// interfaces without an endpoint program are dropped by the workload-prefix rule.
pub fn render(
    program: &Program,
    interfaces: &BTreeMap<String, String>,
    config: &Config,
) -> Ruleset {
    render_cached(program, interfaces, config, &mut RenderCache::default())
}

/// [`render`], reusing (and then replacing) `cache`: only chains whose rules changed are
/// rendered again.
pub fn render_cached(
    program: &Program,
    interfaces: &BTreeMap<String, String>,
    config: &Config,
    cache: &mut RenderCache,
) -> Ruleset {
    let mut ruleset = Ruleset {
        workload_prefix: config.workload_prefix.clone(),
        ..Ruleset::default()
    };
    let numbers = SetNumbers::assign(program, cache);
    for (id, nets) in &program.ip_sets {
        let id = &numbers.get(*id);
        for net in nets {
            let (kind, element) = ip_element(net);
            insert_element(&mut ruleset.sets, ip_set_name(*id, kind), kind, element);
        }
    }
    for (id, members) in &program.named_port_sets {
        let id = &numbers.get(*id);
        for member in members {
            let (kind, element) = named_port_element(member);
            insert_element(
                &mut ruleset.sets,
                named_port_set_name(*id, kind),
                kind,
                element,
            );
        }
    }
    let presence = SetPresence::of(&ruleset.sets);
    let present = |name: &str| ruleset.sets.contains_key(name);
    let renderer = RuleRenderer {
        present: &present,
        numbers: &numbers,
    };
    let mut previous = std::mem::take(&mut cache.chains);
    let mut chains = BTreeMap::new();
    // Looks `key` up in the previous rendering; renders again when what it depends on changed.
    let mut cached = |key: String,
                      rules: &[CompiledRule],
                      presence: Vec<bool>,
                      render: &dyn Fn() -> Vec<String>|
     -> Arc<[String]> {
        let refs = numbers.refs(rules);
        let entry = match previous.remove(&key) {
            Some(hit)
                if hit.presence == presence
                    && hit.refs == refs
                    && hit.source.len() == rules.len()
                    && hit
                        .source
                        .iter()
                        .zip(rules)
                        .all(|(a, b)| same_but_set_ids(a, b)) =>
            {
                hit
            }
            _ => CachedChain {
                source: rules.to_vec(),
                presence,
                rendered: render().into(),
                refs,
            },
        };
        let rendered = entry.rendered.clone();
        cache.chains.insert(key, entry);
        rendered
    };
    for (key, policy) in &program.policies {
        for (prefix, rules) in [("pi-", &policy.ingress), ("po-", &policy.egress)] {
            let name = object_name(prefix, key);
            let rendered = cached(
                name.clone(),
                rules,
                presence.signature(rules, &numbers),
                &|| renderer.rules(rules, PassStyle::MarkAndReturn),
            );
            chains.insert(name, rendered);
        }
    }
    for (name, profile) in &program.profiles {
        for (prefix, rules) in [("pri-", &profile.ingress), ("pro-", &profile.egress)] {
            let name = object_name(prefix, name);
            let rendered = cached(
                name.clone(),
                rules,
                presence.signature(rules, &numbers),
                &|| renderer.rules(rules, PassStyle::Return),
            );
            chains.insert(name, rendered);
        }
    }
    // Endpoint chains are shared by every endpoint whose rules are the same: named after a hash
    // of their rules, so a new endpoint like an existing one only needs verdict-map elements.
    // The previous endpoints are walked in step with the program's (both sorted by key).
    let mut shared: BTreeMap<String, Arc<[String]>> = BTreeMap::new();
    let mut previous_endpoints = std::mem::take(&mut cache.endpoints).into_iter().peekable();
    let mut endpoints = Vec::with_capacity(program.endpoints.len());
    let mut to_workload = Vec::with_capacity(program.endpoints.len());
    let mut from_workload = Vec::with_capacity(program.endpoints.len());
    let mut interface_entries = interfaces.iter().peekable();
    for (key, endpoint) in &program.endpoints {
        while interface_entries.next_if(|(k, _)| *k < key).is_some() {}
        let Some((_, ifname)) = interface_entries.next_if(|(k, _)| *k == key) else {
            continue;
        };
        while previous_endpoints.next_if(|(k, _)| k < key).is_some() {}
        let hit = previous_endpoints
            .next_if(|(k, _)| k == key)
            .filter(|(_, c)| c.ifname == *ifname && c.is_current(endpoint, program));
        let (key, entry) = match hit {
            Some(hit) => hit,
            None => (
                key.clone(),
                CachedEndpoint::render(ifname, endpoint, program),
            ),
        };
        let [ingress, egress] =
            [0, 1].map(|i| shared_chain_name(&entry.names[i], &entry.rendered[i], &mut shared));
        to_workload.push((ifname.clone(), ingress));
        from_workload.push((ifname.clone(), egress));
        endpoints.push((key, entry));
    }
    cache.endpoints = endpoints.into_iter().collect();
    ruleset.to_workload = to_workload.into_iter().collect();
    ruleset.from_workload = from_workload.into_iter().collect();
    chains.extend(shared);
    ruleset.chains = chains;
    // Device groups: a pair keeps its group while it lives; a new pair's differs from every
    // group of the previous rendering (those may still be installed) and of this one.
    let previous_groups = std::mem::take(&mut cache.groups);
    let taken: BTreeSet<u32> = previous_groups.values().copied().collect();
    let mut groups = BTreeMap::new();
    let mut pairs: BTreeMap<u32, (String, String)> = BTreeMap::new();
    for (ifname, egress) in &ruleset.from_workload {
        let Some(ingress) = ruleset.to_workload.get(ifname) else {
            continue;
        };
        let pair = (egress.clone(), ingress.clone());
        let group = match cache.groups.get(&pair).or(previous_groups.get(&pair)) {
            Some(group) => *group,
            None => pair_group(egress, ingress, &|g| {
                taken.contains(&g) || pairs.contains_key(&g)
            }),
        };
        pairs.entry(group).or_insert_with(|| pair.clone());
        cache.groups.insert(pair, group);
        groups.insert(ifname.clone(), group);
    }
    ruleset.groups = groups;
    ruleset.pairs = pairs;
    crate::host::render_into(program, interfaces, &mut ruleset);
    ruleset
}

/// The script that deletes every object of ours in `existing` (names as listed from the
/// kernel) and creates `ruleset`, in one transaction.
pub fn full_script(ruleset: &Ruleset, existing: &[String]) -> (String, ApplyStats) {
    let mut s = String::new();
    let mut stats = ApplyStats {
        full: true,
        ..ApplyStats::default()
    };
    let _ = writeln!(s, "add table inet {TABLE}");
    let own: Vec<&String> = existing.iter().filter(|n| is_own(n)).collect();
    let (maps_and_sets, chains): (Vec<&String>, Vec<&String>) =
        own.iter().partition(|n| is_set_or_map(n));
    // Remove rules (and map elements) before the chains and sets they refer to.
    for chain in &chains {
        let _ = writeln!(s, "flush chain inet {TABLE} {chain}");
    }
    for set in &maps_and_sets {
        let _ = writeln!(s, "flush {} inet {TABLE} {set}", set_or_map(set));
    }
    for chain in &chains {
        let _ = writeln!(s, "delete chain inet {TABLE} {chain}");
        stats.chains_removed += 1;
    }
    for set in &maps_and_sets {
        let _ = writeln!(s, "delete {} inet {TABLE} {set}", set_or_map(set));
        stats.sets_removed += 1;
    }
    for map in [FROM_WORKLOAD_MAP, TO_WORKLOAD_MAP] {
        let _ = writeln!(
            s,
            "add map inet {TABLE} {map} {{ type devgroup : verdict; }}"
        );
    }
    for (name, set) in &ruleset.sets {
        add_set(&mut s, name, set, &mut stats);
    }
    for name in ruleset.chains.keys() {
        let _ = writeln!(s, "add chain inet {TABLE} {name}");
        stats.chains_added += 1;
    }
    for (name, rules) in &ruleset.chains {
        add_rules(&mut s, name, rules);
    }
    stats.map_changes += add_pair_elements(&mut s, ruleset.pairs.iter());
    for (chain, priority, map, key, group) in [
        (
            EGRESS_BASE_CHAIN,
            "filter",
            FROM_WORKLOAD_MAP,
            "iifname",
            "iifgroup",
        ),
        (
            INGRESS_BASE_CHAIN,
            "filter + 1",
            TO_WORKLOAD_MAP,
            "oifname",
            "oifgroup",
        ),
    ] {
        let _ = writeln!(
            s,
            "add chain inet {TABLE} {chain} {{ type filter hook forward priority {priority}; policy accept; }}"
        );
        let rules = [
            "ct state established,related accept".to_string(),
            "ct state invalid drop".to_string(),
            format!(
                "{key} \"{}*\" meta {group} vmap @{map}",
                ruleset.workload_prefix
            ),
            format!("{key} \"{}*\" drop", ruleset.workload_prefix),
        ];
        add_rules(&mut s, chain, &rules);
    }
    crate::host::add_base_chains(&mut s, ruleset);
    stats.script_bytes = s.len();
    (s, stats)
}

/// The script that turns installed state `old` into `new`, in one transaction: sets first,
/// then chains, then map elements; removals in reverse. Empty when nothing changed. (The
/// interfaces' device groups are not in it: see [`delta_scripts`] and [`GroupChanges`].)
pub fn delta_script(old: &Ruleset, new: &Ruleset) -> (String, ApplyStats) {
    let (mut s, cleanup, stats) = delta_scripts(old, new);
    s.push_str(&cleanup);
    (s, stats)
}

/// [`delta_script`] in two parts: what to send before the interfaces' device groups change
/// (additions: a group's pair is in the maps before any interface has the group) and what to
/// send after (removals: no interface has a group any more when its pair goes).
pub fn delta_scripts(old: &Ruleset, new: &Ruleset) -> (String, String, ApplyStats) {
    let mut s = String::new();
    let mut stats = ApplyStats::default();
    // 1. Sets: new ones, then changed elements.
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            None => add_set(&mut s, name, set, &mut stats),
            Some(installed) if installed == set => {}
            Some(installed) if set.kind.is_interval() || installed.kind != set.kind => {
                if installed.kind != set.kind {
                    let _ = writeln!(s, "delete set inet {TABLE} {name}");
                    let _ = writeln!(
                        s,
                        "add set inet {TABLE} {name} {{ {} }}",
                        set.kind.declaration()
                    );
                } else {
                    let _ = writeln!(s, "flush set inet {TABLE} {name}");
                    stats.elements_removed += installed.elements.len();
                }
                stats.elements_added += add_elements(&mut s, name, set.elements.iter());
            }
            Some(installed) => {
                let removed = installed.elements.difference(&set.elements);
                stats.elements_removed += element_command(&mut s, "delete", name, removed);
                let added = set.elements.difference(&installed.elements);
                stats.elements_added += add_elements(&mut s, name, added);
            }
        }
    }
    // 2. Chains: declare new ones (jumps may point at them), then (re)fill.
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            let _ = writeln!(s, "add chain inet {TABLE} {name}");
            stats.chains_added += 1;
        }
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(installed) if Arc::ptr_eq(installed, rules) || installed == rules => continue,
            Some(_) => {
                let _ = writeln!(s, "flush chain inet {TABLE} {name}");
                stats.chains_replaced += 1;
            }
            None => {}
        }
        add_rules(&mut s, name, rules);
    }
    // 3. Verdict maps: new pairs (removed ones go in the second part).
    let changes = GroupChanges::between(old, new);
    stats.map_changes += add_pair_elements(&mut s, changes.added.iter().map(|(g, p)| (g, *p)));
    crate::host::delta_base_chains(&mut s, old, new);
    stats.links_changed = changes.links.len();
    let main = std::mem::take(&mut s);
    for map in [FROM_WORKLOAD_MAP, TO_WORKLOAD_MAP] {
        stats.map_changes += element_command(
            &mut s,
            "delete",
            map,
            changes.removed.iter().map(u32::to_string),
        );
    }
    // 4. Removed chains: empty them all first (they may jump to each other), then delete.
    let removed_chains: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    for name in &removed_chains {
        let _ = writeln!(s, "flush chain inet {TABLE} {name}");
    }
    for name in &removed_chains {
        let _ = writeln!(s, "delete chain inet {TABLE} {name}");
        stats.chains_removed += 1;
    }
    // 5. Removed sets, once no rule refers to them.
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        let _ = writeln!(s, "delete set inet {TABLE} {name}");
        stats.sets_removed += 1;
    }
    stats.script_bytes = main.len() + s.len();
    (main, s, stats)
}

/// What changes in the device-group dispatch from `old` to `new`.
#[derive(Debug, Default)]
pub struct GroupChanges<'a> {
    /// Pairs new in `new`, by group.
    pub added: Vec<(u32, &'a (String, String))>,
    /// Groups whose pair is gone.
    pub removed: Vec<u32>,
    /// Interfaces whose device group changes: the new group (0 for an interface that no
    /// longer has an endpoint).
    pub links: Vec<(String, u32)>,
}

impl<'a> GroupChanges<'a> {
    /// The changes from `old` to `new`.
    pub fn between(old: &'a Ruleset, new: &'a Ruleset) -> GroupChanges<'a> {
        let added = new
            .pairs
            .iter()
            .filter(|(g, p)| old.pairs.get(g) != Some(p))
            .map(|(g, p)| (*g, p))
            .collect();
        let removed = old
            .pairs
            .iter()
            .filter(|(g, p)| new.pairs.get(g) != Some(p))
            .map(|(g, _)| *g)
            .collect();
        let mut links: Vec<(String, u32)> = old
            .groups
            .keys()
            .filter(|i| !new.groups.contains_key(*i))
            .map(|i| (i.clone(), 0))
            .collect();
        links.extend(
            new.groups
                .iter()
                .filter(|(i, g)| old.groups.get(*i) != Some(g))
                .map(|(i, g)| (i.clone(), *g)),
        );
        GroupChanges {
            added,
            removed,
            links,
        }
    }
}

/// A chain or set name: `prefix` + `key` when `key` is made of characters nft accepts in a
/// name, else `prefix` + a hash of `key`.
pub fn object_name(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() + prefix.len() <= MAX_NAME
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if plain {
        format!("{prefix}{key}")
    } else {
        let hash = fnv1a(key.bytes());
        format!("{prefix}h{hash:016x}")
    }
}

/// The name of the shared endpoint chain with `rules` (entered into `shared` if new): `base`
/// (prefix and a hash of the rules), suffixed on the (astronomically unlikely) collision.
fn shared_chain_name(
    base: &str,
    rules: &Arc<[String]>,
    shared: &mut BTreeMap<String, Arc<[String]>>,
) -> String {
    if let Some(existing) = shared.get(base)
        && (Arc::ptr_eq(existing, rules) || existing == rules)
    {
        return base.to_string();
    }
    let mut name = base.to_string();
    let mut n = 0u32;
    loop {
        match shared.get(&name) {
            None => {
                shared.insert(name.clone(), rules.clone());
                return name;
            }
            Some(existing) if Arc::ptr_eq(existing, rules) || existing == rules => return name,
            Some(_) => {
                n += 1;
                name = format!("{base}-{n}");
            }
        }
    }
}

/// FNV-1a, 64 bits: stable across runs and builds (names and groups derive from it).
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A hash of the rules and their separators.
fn digest(rules: &[String]) -> u64 {
    fnv1a(rules.iter().flat_map(|r| r.bytes().chain([b'\n'])))
}

/// Whether one of our names (as listed) is a map: the dispatch maps (`-grp`), or the
/// interface-name verdict maps of earlier versions (`-wl`).
fn is_map(name: &str) -> bool {
    name.ends_with("-wl") || name.ends_with("-grp")
}

/// The nft keyword for one of our set or map names.
fn set_or_map(name: &str) -> &'static str {
    if is_map(name) { "map" } else { "set" }
}

/// The component set an address goes to, and its element text.
pub(crate) fn ip_element(net: &IpNet) -> (SetKind, String) {
    match net {
        IpNet::V4(n) if n.prefix_len() == 32 => (SetKind::Hosts4, n.addr().to_string()),
        IpNet::V6(n) if n.prefix_len() == 128 => (SetKind::Hosts6, n.addr().to_string()),
        IpNet::V4(n) => (SetKind::Nets4, n.trunc().to_string()),
        IpNet::V6(n) => (SetKind::Nets6, n.trunc().to_string()),
    }
}

/// The component set a named-port member goes to, and its element text.
pub(crate) fn named_port_element(member: &NamedPortMember) -> (SetKind, String) {
    // Named ports belong to endpoint addresses: the host address stands for the net.
    let kind = match member.net {
        IpNet::V4(_) => SetKind::NamedPorts4,
        IpNet::V6(_) => SetKind::NamedPorts6,
    };
    let element = format!(
        "{} . {} . {}",
        member.net.addr(),
        member.protocol.0,
        member.port
    );
    (kind, element)
}

pub(crate) fn ip_set_name(id: IpSetId, kind: SetKind) -> String {
    let suffix = match kind {
        SetKind::Hosts4 => "4h",
        SetKind::Nets4 => "4n",
        SetKind::Hosts6 => "6h",
        SetKind::Nets6 => "6n",
        SetKind::NamedPorts4 => "4",
        SetKind::NamedPorts6 => "6",
    };
    format!("pol-s{}-{suffix}", id.0)
}

pub(crate) fn named_port_set_name(id: IpSetId, kind: SetKind) -> String {
    let family = if kind == SetKind::NamedPorts6 { 6 } else { 4 };
    format!("pol-np{}-{family}", id.0)
}

fn insert_element(
    sets: &mut BTreeMap<String, NftSet>,
    name: String,
    kind: SetKind,
    element: String,
) {
    sets.entry(name)
        .or_insert_with(|| NftSet {
            kind,
            elements: BTreeSet::new(),
        })
        .elements
        .insert(element);
}

fn add_set(s: &mut String, name: &str, set: &NftSet, stats: &mut ApplyStats) {
    let _ = writeln!(
        s,
        "add set inet {TABLE} {name} {{ {} }}",
        set.kind.declaration()
    );
    stats.sets_added += 1;
    stats.elements_added += add_elements(s, name, set.elements.iter());
}

fn add_elements<'a>(
    s: &mut String,
    set: &str,
    elements: impl Iterator<Item = &'a String>,
) -> usize {
    element_command(s, "add", set, elements)
}

/// Writes `<verb> element inet felis <set> { e1, e2, ... }` unless there are no elements;
/// returns how many.
fn element_command<T: AsRef<str>>(
    s: &mut String,
    verb: &str,
    set: &str,
    elements: impl Iterator<Item = T>,
) -> usize {
    let mut count = 0;
    let mut line = String::new();
    for element in elements {
        line.push_str(if count == 0 { "" } else { ", " });
        line.push_str(element.as_ref());
        count += 1;
    }
    if count > 0 {
        let _ = writeln!(s, "{verb} element inet {TABLE} {set} {{ {line} }}");
    }
    count
}

/// Adds each pair's elements to both maps; returns how many elements.
fn add_pair_elements<'a>(
    s: &mut String,
    pairs: impl Iterator<Item = (&'a u32, &'a (String, String))> + Clone,
) -> usize {
    let egress = pairs.clone().map(|(g, (e, _))| format!("{g} : goto {e}"));
    let ingress = pairs.map(|(g, (_, i))| format!("{g} : goto {i}"));
    element_command(s, "add", FROM_WORKLOAD_MAP, egress)
        + element_command(s, "add", TO_WORKLOAD_MAP, ingress)
}

/// Whether one of our names (as listed) is a set or map rather than a chain.
fn is_set_or_map(name: &str) -> bool {
    name.starts_with("pol-s") || name.starts_with("pol-np") || is_map(name)
}

fn add_rules(s: &mut String, chain: &str, rules: &[String]) {
    for rule in rules {
        let _ = writeln!(s, "add rule inet {TABLE} {chain} {rule}");
    }
}

/// The endpoint chain of one direction: its tiers, then its profiles, then drop.
fn endpoint_chain(
    program: &Program,
    direction: &DirectionProgram,
    policy_prefix: &str,
    profile_prefix: &str,
) -> Vec<String> {
    let clear = format!("meta mark set meta mark & {:#010x}", !PASS_MARK);
    let unless_passed = format!("meta mark & {PASS_MARK:#010x} == 0");
    let mut rules = vec![clear.clone()];
    for tier in &direction.tiers {
        let mut first = true;
        for key in &tier.policies {
            if !program.policies.contains_key(key) {
                continue;
            }
            let chain = object_name(policy_prefix, key);
            rules.push(if first {
                format!("jump {chain}")
            } else {
                format!("{unless_passed} jump {chain}")
            });
            first = false;
        }
        match (tier.default_action, first) {
            (TierDefaultAction::Deny, true) => rules.push("drop".to_string()),
            (TierDefaultAction::Deny, false) => rules.push(format!("{unless_passed} drop")),
            (TierDefaultAction::Pass, _) => {}
        }
        if !first {
            rules.push(clear.clone());
        }
    }
    for name in &direction.profiles {
        if program.profiles.contains_key(name) {
            rules.push(format!("jump {}", object_name(profile_prefix, name)));
        }
    }
    rules.push("drop".to_string());
    rules
}

/// The two chains (`pi-`/`po-`) of policy `key`, rendered for the sets `present` says exist,
/// for programs with stable set ids.
pub(crate) fn policy_chains(
    key: &str,
    policy: &PolicyProgram,
    present: &dyn Fn(&str) -> bool,
) -> [(String, Vec<String>); 2] {
    direction_chains(
        key,
        [("pi-", &policy.ingress), ("po-", &policy.egress)],
        PassStyle::MarkAndReturn,
        present,
    )
}

/// The two chains (`pri-`/`pro-`) of profile `name`, as [`policy_chains`].
pub(crate) fn profile_chains(
    name: &str,
    profile: &ProfileProgram,
    present: &dyn Fn(&str) -> bool,
) -> [(String, Vec<String>); 2] {
    direction_chains(
        name,
        [("pri-", &profile.ingress), ("pro-", &profile.egress)],
        PassStyle::Return,
        present,
    )
}

/// The chains of one policy or profile: a name prefix and rules per direction.
fn direction_chains(
    key: &str,
    directions: [(&str, &Vec<CompiledRule>); 2],
    pass: PassStyle,
    present: &dyn Fn(&str) -> bool,
) -> [(String, Vec<String>); 2] {
    let numbers = SetNumbers::default();
    let renderer = RuleRenderer {
        present,
        numbers: &numbers,
    };
    directions.map(|(prefix, rules)| (object_name(prefix, key), renderer.rules(rules, pass)))
}

/// Which component sets (hosts/CIDRs per family, named ports per family) exist, by set id.
struct SetPresence {
    ip: BTreeMap<IpSetId, [bool; 4]>,
    named: BTreeMap<IpSetId, [bool; 2]>,
}

impl SetPresence {
    fn of(sets: &BTreeMap<String, NftSet>) -> SetPresence {
        let mut presence = SetPresence {
            ip: BTreeMap::new(),
            named: BTreeMap::new(),
        };
        for name in sets.keys() {
            let parsed = name
                .strip_prefix("pol-s")
                .map(|rest| (false, rest))
                .or_else(|| name.strip_prefix("pol-np").map(|rest| (true, rest)));
            let Some((named, rest)) = parsed else {
                continue;
            };
            let Some((id, suffix)) = rest.split_once('-') else {
                continue;
            };
            let Ok(id) = id.parse::<u32>() else {
                continue;
            };
            let id = IpSetId(id);
            match (named, suffix) {
                (false, suffix) => {
                    let index = ["4h", "4n", "6h", "6n"].iter().position(|s| *s == suffix);
                    if let Some(index) = index {
                        presence.ip.entry(id).or_default()[index] = true;
                    }
                }
                (true, "4") => presence.named.entry(id).or_default()[0] = true,
                (true, _) => presence.named.entry(id).or_default()[1] = true,
            }
        }
        presence
    }

    /// What rendering `rules` depends on besides the rules themselves.
    fn signature(&self, rules: &[CompiledRule], numbers: &SetNumbers) -> Vec<bool> {
        let mut signature = Vec::new();
        for m in rules.iter().flat_map(|r| &r.matches) {
            match m {
                Match::Set { set, .. } => {
                    let set = numbers.get(*set);
                    signature.extend(self.ip.get(&set).copied().unwrap_or_default());
                }
                Match::Ports { named, .. } => {
                    for id in named {
                        let id = numbers.get(*id);
                        signature.extend(self.named.get(&id).copied().unwrap_or_default());
                    }
                }
                _ => {}
            }
        }
        signature
    }
}

/// Stable set numbers: the number in a set's name (`pol-s<n>-4h`), by the program's
/// [`IpSetId`].
///
/// The program numbers sets in the order compilation first meets them, which shifts when an
/// endpoint early in that order changes (a pod deleted or relabelled), renaming most sets and
/// rewriting most policy chains. Instead a set keeps the number the previous rendering gave the
/// set at the same place (policy or profile chain, and position among the chain's set
/// references); a set with no such number keeps its program id when that is free, else gets
/// an unused one.
#[derive(Debug, Clone, Default)]
struct SetNumbers {
    /// By program id; `None`: the program id itself.
    numbers: Vec<Option<u32>>,
}

impl SetNumbers {
    fn get(&self, id: IpSetId) -> IpSetId {
        let number = usize::try_from(id.0)
            .ok()
            .and_then(|i| self.numbers.get(i).copied().flatten());
        IpSetId(number.unwrap_or(id.0))
    }

    /// The set numbers `rules` refer to, in order.
    fn refs(&self, rules: &[CompiledRule]) -> Vec<u32> {
        set_references(rules).map(|id| self.get(id).0).collect()
    }

    /// Numbers the sets of `program`, and records them in `cache` for the next rendering.
    fn assign(program: &Program, cache: &mut RenderCache) -> SetNumbers {
        if cache.stable_set_ids {
            return SetNumbers::default();
        }
        let ids = program
            .ip_sets
            .keys()
            .chain(program.named_port_sets.keys())
            .filter_map(|id| usize::try_from(id.0).ok());
        let size = ids.max().map_or(0, |m| m + 1);
        let mut numbers: Vec<Option<u32>> = vec![None; size];
        let mut taken: BTreeSet<u32> = BTreeSet::new();
        let chains = || {
            let policies = program
                .policies
                .iter()
                .flat_map(|(key, p)| [(0, key, &p.ingress), (1, key, &p.egress)]);
            let profiles = program
                .profiles
                .iter()
                .flat_map(|(key, p)| [(2, key, &p.ingress), (3, key, &p.egress)]);
            policies.chain(profiles)
        };
        // 1. The number the previous rendering gave the same reference.
        for (kind, key, rules) in chains() {
            let Some(previous) = cache.set_refs[kind].get(key) else {
                continue;
            };
            for (id, number) in set_references(rules).zip(previous) {
                let Some(slot) = usize::try_from(id.0).ok().and_then(|i| numbers.get_mut(i)) else {
                    continue;
                };
                if slot.is_none() && !taken.contains(number) {
                    *slot = Some(*number);
                    taken.insert(*number);
                }
            }
        }
        // 2. Its own id when free, 3. else a number nobody used.
        let mut next = taken
            .iter()
            .chain(cache.set_numbers.iter())
            .max()
            .map_or(0, |m| m.saturating_add(1))
            .max(u32::try_from(size).unwrap_or(u32::MAX));
        let mut own = Vec::new();
        for (i, slot) in numbers.iter().enumerate() {
            if slot.is_none() {
                own.push(i);
            }
        }
        for i in own {
            let id = u32::try_from(i).unwrap_or(u32::MAX);
            let number = if taken.contains(&id) {
                next = next.saturating_add(1);
                next - 1
            } else {
                id
            };
            taken.insert(number);
            if let Some(slot) = numbers.get_mut(i) {
                *slot = Some(number);
            }
        }
        let numbering = SetNumbers { numbers };
        let mut previous = std::mem::take(&mut cache.set_refs);
        for (kind, key, rules) in chains() {
            let refs = numbering.refs(rules);
            match previous[kind].remove_entry(key.as_str()) {
                Some((key, old)) if old == refs => cache.set_refs[kind].insert(key, old),
                Some((key, _)) => cache.set_refs[kind].insert(key, refs),
                None => cache.set_refs[kind].insert(key.clone(), refs),
            };
        }
        cache.set_numbers = taken;
        numbering
    }
}

/// Whether two rules are equal but for the ids of the sets they refer to.
fn same_but_set_ids(a: &CompiledRule, b: &CompiledRule) -> bool {
    a.action == b.action
        && a.matches.len() == b.matches.len()
        && a.matches.iter().zip(&b.matches).all(|pair| match pair {
            (
                Match::Set {
                    side: side_a,
                    negated: negated_a,
                    ..
                },
                Match::Set {
                    side: side_b,
                    negated: negated_b,
                    ..
                },
            ) => side_a == side_b && negated_a == negated_b,
            (
                Match::Ports {
                    side: side_a,
                    ranges: ranges_a,
                    named: named_a,
                    negated: negated_a,
                },
                Match::Ports {
                    side: side_b,
                    ranges: ranges_b,
                    named: named_b,
                    negated: negated_b,
                },
            ) => {
                side_a == side_b
                    && ranges_a == ranges_b
                    && named_a.len() == named_b.len()
                    && negated_a == negated_b
            }
            (a, b) => a == b,
        })
}

/// How a Pass rule is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassStyle {
    /// In a policy chain: mark, and return to the endpoint chain, which skips the tier.
    MarkAndReturn,
    /// In a profile chain: return (the next profile is tried).
    Return,
}

struct RuleRenderer<'a> {
    /// Whether the named set exists (a rule refers only to sets that do).
    present: &'a dyn Fn(&str) -> bool,
    numbers: &'a SetNumbers,
}

impl RuleRenderer<'_> {
    fn rules(&self, rules: &[CompiledRule], pass: PassStyle) -> Vec<String> {
        rules.iter().flat_map(|r| self.rule(r, pass)).collect()
    }

    /// One compiled rule as nft rules: one per family it can match, and per combination of
    /// alternatives (an address in a hash set or in an interval set, say).
    fn rule(&self, rule: &CompiledRule, pass: PassStyle) -> Vec<String> {
        let action = match (rule.action, pass) {
            (Action::Allow, _) => "accept".to_string(),
            (Action::Deny, _) => "drop".to_string(),
            (Action::Log, _) => format!("log prefix \"{LOG_PREFIX}\""),
            (Action::Pass, PassStyle::MarkAndReturn) => {
                format!("meta mark set meta mark | {PASS_MARK:#010x} return")
            }
            (Action::Pass, PassStyle::Return) => "return".to_string(),
        };
        if rule.matches.contains(&Match::Never) {
            return Vec::new();
        }
        let version = rule.matches.iter().find_map(|m| match m {
            Match::IpVersion(v) => Some(*v),
            _ => None,
        });
        let family_specific = rule.matches.iter().any(|m| match m {
            Match::Set { .. } | Match::Nets { .. } | Match::Icmp { .. } => true,
            Match::Ports { named, .. } => !named.is_empty(),
            Match::Never | Match::IpVersion(_) | Match::Protocol { .. } => false,
        });
        let protocol = rule.matches.iter().find_map(|m| match m {
            Match::Protocol {
                protocol,
                negated: false,
            } => Some(*protocol),
            _ => None,
        });
        let families: Vec<Option<IpVersion>> = match version {
            Some(v) => vec![Some(v)],
            None if family_specific => vec![Some(IpVersion::V4), Some(IpVersion::V6)],
            None => vec![None],
        };
        let mut out = Vec::new();
        for family in families {
            let mut conditions: Vec<Vec<Fragment>> = Vec::new();
            if let Some(family) = family {
                conditions.push(vec![Fragment::new(
                    format!("meta nfproto {}", nfproto(family)),
                    Protocols::all(),
                )]);
            }
            for m in &rule.matches {
                conditions.push(self.condition(m, family, protocol));
            }
            expand(&conditions, &action, &mut out);
        }
        out
    }

    /// One condition as alternatives (any may hold): an empty string always holds; no
    /// alternatives at all means the condition can never hold.
    /// `protocol` is the rule's positive protocol match, if any.
    fn condition(
        &self,
        m: &Match,
        family: Option<IpVersion>,
        protocol: Option<Protocol>,
    ) -> Vec<Fragment> {
        let any = |text: String| Fragment::new(text, Protocols::all());
        match m {
            Match::Never => Vec::new(),
            Match::IpVersion(_) => vec![any(String::new())],
            Match::Protocol { protocol, negated } => {
                let protocols = if *negated {
                    Protocols::all().without(protocol.0)
                } else {
                    Protocols::only(&[protocol.0])
                };
                vec![Fragment::new(
                    format!("meta l4proto {}{}", not(*negated), protocol.0),
                    protocols,
                )]
            }
            Match::Icmp { icmp, negated } => {
                let (proto, name) = match family {
                    Some(IpVersion::V6) => (Protocol::ICMPV6.0, "icmpv6"),
                    _ => (Protocol::ICMP.0, "icmp"),
                };
                let t = icmp.icmp_type;
                if protocol.is_some_and(|p| p.0 != proto) {
                    // The rule's protocol is not this family's ICMP: never ICMP here.
                    return if *negated {
                        vec![any(String::new())]
                    } else {
                        Vec::new()
                    };
                }
                if *negated {
                    let icmp_only = Protocols::only(&[proto]);
                    let mut alternatives = vec![
                        Fragment::new(
                            format!("meta l4proto != {proto}"),
                            Protocols::all().without(proto),
                        ),
                        Fragment::new(
                            format!("meta l4proto {proto} {name} type != {t}"),
                            icmp_only,
                        ),
                    ];
                    if let Some(code) = icmp.code {
                        alternatives.push(Fragment::new(
                            format!("meta l4proto {proto} {name} type {t} {name} code != {code}"),
                            icmp_only,
                        ));
                    }
                    alternatives
                } else {
                    let code = icmp
                        .code
                        .map(|c| format!(" {name} code {c}"))
                        .unwrap_or_default();
                    vec![Fragment::new(
                        format!("meta l4proto {proto} {name} type {t}{code}"),
                        Protocols::only(&[proto]),
                    )]
                }
            }
            Match::Nets {
                side,
                nets,
                negated,
            } => {
                let Some(family) = family else {
                    return Vec::new();
                };
                let nets: Vec<String> = nets
                    .iter()
                    .filter(|n| IpVersion::of_net(n) == family)
                    .map(|n| n.trunc().to_string())
                    .collect();
                match (nets.is_empty(), *negated) {
                    (true, false) => Vec::new(),
                    (true, true) => vec![any(String::new())],
                    (false, negated) => vec![any(format!(
                        "{} {}{{ {} }}",
                        address(family, *side),
                        not(negated),
                        nets.join(", ")
                    ))],
                }
            }
            Match::Set { side, set, negated } => {
                let Some(family) = family else {
                    return Vec::new();
                };
                let kinds = match family {
                    IpVersion::V4 => [SetKind::Hosts4, SetKind::Nets4],
                    IpVersion::V6 => [SetKind::Hosts6, SetKind::Nets6],
                };
                let present: Vec<String> = kinds
                    .iter()
                    .map(|k| ip_set_name(self.numbers.get(*set), *k))
                    .filter(|n| (self.present)(n))
                    .collect();
                let address = address(family, *side);
                if *negated {
                    let all: Vec<String> = present
                        .iter()
                        .map(|n| format!("{address} != @{n}"))
                        .collect();
                    vec![any(all.join(" "))]
                } else {
                    present
                        .iter()
                        .map(|n| any(format!("{address} @{n}")))
                        .collect()
                }
            }
            Match::Ports {
                side,
                ranges,
                named,
                negated,
            } => {
                let port = match side {
                    Side::Source => "th sport",
                    Side::Destination => "th dport",
                };
                let ranges: Vec<String> = ranges
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}-{b}")
                        }
                    })
                    .collect();
                let named: Vec<String> = match family {
                    Some(family) => {
                        let kind = match family {
                            IpVersion::V4 => SetKind::NamedPorts4,
                            IpVersion::V6 => SetKind::NamedPorts6,
                        };
                        named
                            .iter()
                            .map(|id| named_port_set_name(self.numbers.get(*id), kind))
                            .filter(|n| (self.present)(n))
                            .collect()
                    }
                    None => Vec::new(),
                };
                let tuple = family
                    .map(|f| format!("{} . meta l4proto . {port}", address(f, *side)))
                    .unwrap_or_default();
                // Ports exist only for these protocols; a rule that already matches one of them
                // needs no guard (which nft would make an anonymous set per rule, and the kernel
                // numbers anonymous sets by scanning the table: quadratic at 10k rules).
                let guard = match protocol {
                    Some(p) if PORT_PROTOCOL_NUMBERS.contains(&p.0) => None,
                    _ => Some(format!("meta l4proto {PORT_PROTOCOLS}")),
                };
                if *negated {
                    let mut all: Vec<String> = guard.into_iter().collect();
                    if !ranges.is_empty() {
                        all.push(format!("{port} != {{ {} }}", ranges.join(", ")));
                    }
                    all.extend(named.iter().map(|n| format!("{tuple} != @{n}")));
                    vec![
                        Fragment::new(
                            format!("meta l4proto != {PORT_PROTOCOLS}"),
                            Protocols::all().without_all(&PORT_PROTOCOL_NUMBERS),
                        ),
                        Fragment::new(all.join(" "), Protocols::only(&PORT_PROTOCOL_NUMBERS)),
                    ]
                } else {
                    let with_ports =
                        |text| Fragment::new(text, Protocols::only(&PORT_PROTOCOL_NUMBERS));
                    let mut alternatives = Vec::new();
                    if !ranges.is_empty() {
                        let guard = guard.map(|g| format!("{g} ")).unwrap_or_default();
                        alternatives.push(with_ports(format!(
                            "{guard}{port} {{ {} }}",
                            ranges.join(", ")
                        )));
                    }
                    alternatives.extend(named.iter().map(|n| with_ports(format!("{tuple} @{n}"))));
                    alternatives
                }
            }
        }
    }
}

/// One alternative of a condition: nft text, and the IP protocols it admits.
#[derive(Debug, Clone)]
struct Fragment {
    text: String,
    protocols: Protocols,
}

impl Fragment {
    fn new(text: String, protocols: Protocols) -> Fragment {
        Fragment { text, protocols }
    }
}

/// A set of IP protocol numbers (a 256-bit mask). Combinations of alternatives whose protocols
/// do not intersect can never match, and nft refuses some of them ("conflicting protocols"):
/// they are not emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Protocols([u64; 4]);

impl Protocols {
    fn all() -> Protocols {
        Protocols([u64::MAX; 4])
    }

    fn only(protocols: &[u8]) -> Protocols {
        let mut set = Protocols([0; 4]);
        for p in protocols {
            set.0[usize::from(p / 64)] |= 1 << (p % 64);
        }
        set
    }

    fn without(self, protocol: u8) -> Protocols {
        self.without_all(&[protocol])
    }

    fn without_all(mut self, protocols: &[u8]) -> Protocols {
        for p in protocols {
            self.0[usize::from(p / 64)] &= !(1 << (p % 64));
        }
        self
    }

    fn intersect(self, other: Protocols) -> Protocols {
        let mut out = self;
        for (word, o) in out.0.iter_mut().zip(other.0) {
            *word &= o;
        }
        out
    }

    fn is_empty(self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// Appends one rule per combination of alternatives of `conditions` that some protocol can
/// satisfy.
fn expand(conditions: &[Vec<Fragment>], action: &str, out: &mut Vec<String>) {
    let mut partial = vec![Fragment::new(String::new(), Protocols::all())];
    for alternatives in conditions {
        let mut next = Vec::with_capacity(partial.len() * alternatives.len());
        for prefix in &partial {
            for alternative in alternatives {
                let protocols = prefix.protocols.intersect(alternative.protocols);
                if protocols.is_empty() {
                    continue;
                }
                let mut rule = prefix.text.clone();
                if !alternative.text.is_empty() {
                    if !rule.is_empty() {
                        rule.push(' ');
                    }
                    rule.push_str(&alternative.text);
                }
                next.push(Fragment::new(rule, protocols));
            }
        }
        partial = next;
    }
    for rule in partial {
        if rule.text.is_empty() {
            out.push(action.to_string());
        } else {
            out.push(format!("{} {action}", rule.text));
        }
    }
}

fn nfproto(family: IpVersion) -> &'static str {
    match family {
        IpVersion::V4 => "ipv4",
        IpVersion::V6 => "ipv6",
    }
}

fn address(family: IpVersion, side: Side) -> &'static str {
    match (family, side) {
        (IpVersion::V4, Side::Source) => "ip saddr",
        (IpVersion::V4, Side::Destination) => "ip daddr",
        (IpVersion::V6, Side::Source) => "ip6 saddr",
        (IpVersion::V6, Side::Destination) => "ip6 daddr",
    }
}

fn not(negated: bool) -> &'static str {
    if negated { "!= " } else { "" }
}

#[cfg(test)]
mod tests {
    use felis_policy::IcmpMatch;
    use felis_policy::NamedPortMember;
    use felis_policy::program::EndpointProgram;
    use felis_policy::program::PolicyProgram;
    use felis_policy::program::ProfileProgram;
    use felis_policy::program::TierProgram;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn rule(action: Action, matches: Vec<Match>) -> CompiledRule {
        CompiledRule { action, matches }
    }

    /// Two tiers (security: Pass then default deny; default: allow web), a profile, two
    /// endpoints of which one has an interface.
    fn program() -> Program {
        let mut program = Program::default();
        program.ip_sets.insert(
            IpSetId(0),
            vec![net("10.0.0.1/32"), net("10.1.0.0/16"), net("fd00::1/128")],
        );
        program.named_port_sets.insert(
            IpSetId(1),
            vec![NamedPortMember {
                net: net("10.0.0.2/32"),
                protocol: Protocol::TCP,
                port: 8080,
            }],
        );
        program.policies.insert(
            "security".to_string(),
            PolicyProgram {
                tier: "security".to_string(),
                namespace: None,
                name: "security".to_string(),
                ingress: vec![
                    rule(
                        Action::Log,
                        vec![Match::Icmp {
                            icmp: IcmpMatch {
                                icmp_type: 8,
                                code: Some(0),
                            },
                            negated: false,
                        }],
                    ),
                    rule(
                        Action::Pass,
                        vec![Match::Set {
                            side: Side::Source,
                            set: IpSetId(0),
                            negated: false,
                        }],
                    ),
                ],
                egress: vec![],
            },
        );
        program.policies.insert(
            "prod/web".to_string(),
            PolicyProgram {
                tier: "default".to_string(),
                namespace: Some("prod".to_string()),
                name: "web".to_string(),
                ingress: vec![
                    rule(
                        Action::Allow,
                        vec![
                            Match::Protocol {
                                protocol: Protocol::TCP,
                                negated: false,
                            },
                            Match::Ports {
                                side: Side::Destination,
                                ranges: vec![(80, 80), (8000, 8100)],
                                named: vec![IpSetId(1)],
                                negated: false,
                            },
                        ],
                    ),
                    rule(
                        Action::Deny,
                        vec![
                            Match::IpVersion(IpVersion::V4),
                            Match::Nets {
                                side: Side::Source,
                                nets: vec![net("192.168.0.0/16")],
                                negated: true,
                            },
                        ],
                    ),
                    rule(Action::Allow, vec![Match::Never]),
                ],
                egress: vec![rule(Action::Allow, vec![])],
            },
        );
        program.profiles.insert(
            "kns.prod".to_string(),
            ProfileProgram {
                ingress: vec![rule(Action::Allow, vec![])],
                egress: vec![rule(Action::Pass, vec![])],
            },
        );
        let tiers = vec![
            TierProgram {
                tier: "security".to_string(),
                policies: vec!["security".to_string()],
                default_action: TierDefaultAction::Deny,
            },
            TierProgram {
                tier: "default".to_string(),
                policies: vec!["prod/web".to_string()],
                default_action: TierDefaultAction::Deny,
            },
        ];
        let endpoint = EndpointProgram {
            ingress: DirectionProgram {
                tiers,
                profiles: vec!["kns.prod".to_string()],
            },
            egress: DirectionProgram {
                tiers: vec![],
                profiles: vec!["kns.prod".to_string(), "missing".to_string()],
            },
        };
        program
            .endpoints
            .insert("prod/web-1".to_string(), endpoint.clone());
        program
            .endpoints
            .insert("prod/no-interface".to_string(), endpoint);
        program
    }

    fn interfaces() -> BTreeMap<String, String> {
        BTreeMap::from([("prod/web-1".to_string(), "cali1".to_string())])
    }

    fn text(ruleset: &Ruleset) -> String {
        let mut s = String::new();
        for (name, set) in &ruleset.sets {
            let elements: Vec<&str> = set.elements.iter().map(String::as_str).collect();
            let _ = writeln!(s, "set {name} {:?} {}", set.kind, elements.join(", "));
        }
        for (name, rules) in &ruleset.chains {
            let _ = writeln!(s, "chain {name}");
            for rule in rules.iter() {
                let _ = writeln!(s, "  {rule}");
            }
        }
        for (ifname, chain) in &ruleset.from_workload {
            let _ = writeln!(s, "from {ifname} -> {chain}");
        }
        for (ifname, chain) in &ruleset.to_workload {
            let _ = writeln!(s, "to {ifname} -> {chain}");
        }
        s
    }

    const GOLDEN: &str = r#"set pol-np1-4 NamedPorts4 10.0.0.2 . 6 . 8080
set pol-s0-4h Hosts4 10.0.0.1
set pol-s0-4n Nets4 10.1.0.0/16
set pol-s0-6h Hosts6 fd00::1
chain fw-f3f464e45ba0b1a2
  meta mark set meta mark & 0xffefffff
  jump pro-kns.prod
  drop
chain pi-prod/web
  meta nfproto ipv4 meta l4proto 6 th dport { 80, 8000-8100 } accept
  meta nfproto ipv4 meta l4proto 6 ip daddr . meta l4proto . th dport @pol-np1-4 accept
  meta nfproto ipv6 meta l4proto 6 th dport { 80, 8000-8100 } accept
  meta nfproto ipv4 ip saddr != { 192.168.0.0/16 } drop
chain pi-security
  meta nfproto ipv4 meta l4proto 1 icmp type 8 icmp code 0 log prefix "calico-packet: "
  meta nfproto ipv6 meta l4proto 58 icmpv6 type 8 icmpv6 code 0 log prefix "calico-packet: "
  meta nfproto ipv4 ip saddr @pol-s0-4h meta mark set meta mark | 0x00100000 return
  meta nfproto ipv4 ip saddr @pol-s0-4n meta mark set meta mark | 0x00100000 return
  meta nfproto ipv6 ip6 saddr @pol-s0-6h meta mark set meta mark | 0x00100000 return
chain po-prod/web
  accept
chain po-security
chain pri-kns.prod
  accept
chain pro-kns.prod
  return
chain tw-35344ea6194e2f6c
  meta mark set meta mark & 0xffefffff
  jump pi-security
  meta mark & 0x00100000 == 0 drop
  meta mark set meta mark & 0xffefffff
  jump pi-prod/web
  meta mark & 0x00100000 == 0 drop
  meta mark set meta mark & 0xffefffff
  jump pri-kns.prod
  drop
from cali1 -> fw-f3f464e45ba0b1a2
to cali1 -> tw-35344ea6194e2f6c
"#;

    #[test]
    fn renders_golden_program() {
        let ruleset = render(&program(), &interfaces(), &Config::default());
        let actual = text(&ruleset);
        if actual != GOLDEN {
            panic!("rendering changed:\n{actual}");
        }
    }

    #[test]
    fn full_script_deletes_only_own_objects_before_recreating() {
        let ruleset = render(&program(), &interfaces(), &Config::default());
        let existing = [
            "nat-postrouting",
            "masq-ipam-pools-v4",
            "pol-forward-egress",
            "pol-from-wl",
            "pol-s9-4h",
            "tw-cali7",
        ]
        .map(String::from);
        let (script, stats) = full_script(&ruleset, &existing);
        assert!(stats.full);
        assert!(!script.contains("nat-postrouting"));
        assert!(!script.contains("masq-ipam"));
        let position = |needle: &str| {
            script
                .find(needle)
                .unwrap_or_else(|| panic!("{needle} missing from\n{script}"))
        };
        assert!(
            position("flush chain inet felis tw-cali7")
                < position("flush map inet felis pol-from-wl")
        );
        assert!(
            position("flush map inet felis pol-from-wl")
                < position("delete chain inet felis tw-cali7")
        );
        assert!(
            position("delete chain inet felis tw-cali7")
                < position("delete set inet felis pol-s9-4h")
        );
        assert!(
            position("delete set inet felis pol-s9-4h") < position("add set inet felis pol-s0-4h")
        );
        assert!(
            position("add set inet felis pol-s0-4h") < position("add rule inet felis pi-security")
        );
        assert!(
            position("add chain inet felis tw-35344ea6194e2f6c\n")
                < position("add element inet felis pol-to-grp")
        );
        let group = ruleset.groups["cali1"];
        assert!(script.contains(&format!("{group} : goto tw-35344ea6194e2f6c")));
        assert!(script.contains(
            "add rule inet felis pol-forward-egress iifname \"cali*\" meta iifgroup vmap @pol-from-grp"
        ));
        assert!(script.contains("add rule inet felis pol-forward-ingress oifname \"cali*\" drop"));
        assert_eq!(stats.chains_removed, 2);
        assert_eq!(stats.sets_removed, 2);
    }

    #[test]
    fn unchanged_program_has_empty_delta() {
        let ruleset = render(&program(), &interfaces(), &Config::default());
        let (script, stats) = delta_script(&ruleset, &ruleset.clone());
        assert_eq!(script, "");
        assert!(stats.is_empty());
    }

    #[test]
    fn delta_adds_sets_before_rules_and_removes_rules_before_sets() {
        let old = render(&program(), &interfaces(), &Config::default());
        let mut changed = program();
        // A new host joins set 0, the CIDR leaves it, and set 1 goes away with its rule.
        changed.ip_sets.insert(
            IpSetId(0),
            vec![net("10.0.0.1/32"), net("10.0.0.9/32"), net("fd00::1/128")],
        );
        changed.named_port_sets.clear();
        let mut new_ifaces = interfaces();
        new_ifaces.insert("prod/no-interface".to_string(), "cali2".to_string());
        let new = render(&changed, &new_ifaces, &Config::default());
        let (script, stats) = delta_script(&old, &new);
        // cali2's endpoint program equals cali1's: it shares its chains and their pair (only
        // its device group changes, outside the script).
        let expected = "\
add element inet felis pol-s0-4h { 10.0.0.9 }
flush chain inet felis pi-prod/web
add rule inet felis pi-prod/web meta nfproto ipv4 meta l4proto 6 th dport { 80, 8000-8100 } accept
add rule inet felis pi-prod/web meta nfproto ipv6 meta l4proto 6 th dport { 80, 8000-8100 } accept
add rule inet felis pi-prod/web meta nfproto ipv4 ip saddr != { 192.168.0.0/16 } drop
flush chain inet felis pi-security
add rule inet felis pi-security meta nfproto ipv4 meta l4proto 1 icmp type 8 icmp code 0 log prefix \"calico-packet: \"
add rule inet felis pi-security meta nfproto ipv6 meta l4proto 58 icmpv6 type 8 icmpv6 code 0 log prefix \"calico-packet: \"
add rule inet felis pi-security meta nfproto ipv4 ip saddr @pol-s0-4h meta mark set meta mark | 0x00100000 return
add rule inet felis pi-security meta nfproto ipv6 ip6 saddr @pol-s0-6h meta mark set meta mark | 0x00100000 return
delete set inet felis pol-np1-4
delete set inet felis pol-s0-4n
";
        assert_eq!(script, expected, "got:\n{script}");
        assert_eq!(stats.elements_added, 1);
        assert_eq!(stats.chains_added, 0);
        assert_eq!(stats.chains_replaced, 2);
        assert_eq!(stats.sets_removed, 2);
        assert_eq!((stats.map_changes, stats.links_changed), (0, 1));
        assert_eq!(new.groups["cali2"], new.groups["cali1"]);
        let changes = GroupChanges::between(&old, &new);
        assert_eq!(changes.links, [("cali2".to_string(), new.groups["cali1"])]);
    }

    #[test]
    fn endpoints_share_chains_exactly_when_their_rules_are_equal() {
        let mut program = program();
        let mut other = program.endpoints["prod/web-1"].clone();
        other.ingress.tiers.clear();
        program.endpoints.insert("prod/other".to_string(), other);
        let mut interfaces = interfaces();
        interfaces.insert("prod/no-interface".to_string(), "cali2".to_string());
        interfaces.insert("prod/other".to_string(), "cali3".to_string());
        let ruleset = render(&program, &interfaces, &Config::default());
        let to = &ruleset.to_workload;
        let from = &ruleset.from_workload;
        assert_eq!(to["cali1"], to["cali2"]);
        assert_ne!(to["cali1"], to["cali3"]);
        assert_eq!(from["cali1"], from["cali3"], "egress programs are equal");
        let endpoint_chains = ruleset
            .chains
            .keys()
            .filter(|n| n.starts_with("tw-") || n.starts_with("fw-"))
            .count();
        assert_eq!(endpoint_chains, 3);
        assert_eq!(
            ruleset.chains[&to["cali3"]].as_ref(),
            [
                "meta mark set meta mark & 0xffefffff",
                "jump pri-kns.prod",
                "drop"
            ]
        );
        // A cached rendering names them the same.
        let mut cache = RenderCache::default();
        render_cached(&program, &interfaces, &Config::default(), &mut cache);
        let again = render_cached(&program, &interfaces, &Config::default(), &mut cache);
        assert_eq!(again, ruleset);
    }

    /// The program with set ids 0 and 1 swapped, as a compile in another order numbers them.
    fn renumbered(program: &Program) -> Program {
        let swap = |id: &mut IpSetId| {
            *id = IpSetId(match id.0 {
                0 => 1,
                1 => 0,
                n => n,
            })
        };
        let mut p = program.clone();
        p.ip_sets = program
            .ip_sets
            .iter()
            .map(|(id, nets)| {
                let mut id = *id;
                swap(&mut id);
                (id, nets.clone())
            })
            .collect();
        p.named_port_sets = program
            .named_port_sets
            .iter()
            .map(|(id, members)| {
                let mut id = *id;
                swap(&mut id);
                (id, members.clone())
            })
            .collect();
        for policy in p.policies.values_mut() {
            for rule in policy.ingress.iter_mut().chain(policy.egress.iter_mut()) {
                for m in &mut rule.matches {
                    match m {
                        Match::Set { set, .. } => swap(set),
                        Match::Ports { named, .. } => named.iter_mut().for_each(swap),
                        _ => {}
                    }
                }
            }
        }
        p
    }

    #[test]
    fn sets_keep_their_names_when_the_program_renumbers_them() {
        let mut cache = RenderCache::default();
        let first = render_cached(&program(), &interfaces(), &Config::default(), &mut cache);
        assert_eq!(first, render(&program(), &interfaces(), &Config::default()));
        let swapped = renumbered(&program());
        let fresh = render(&swapped, &interfaces(), &Config::default());
        assert!(
            fresh.sets.contains_key("pol-s1-4h"),
            "the program's own ids"
        );
        let second = render_cached(&swapped, &interfaces(), &Config::default(), &mut cache);
        assert_eq!(second, first, "same names, same chains: an empty delta");
        for (a, b) in first.chains.values().zip(second.chains.values()) {
            assert!(Arc::ptr_eq(a, b), "served from the cache");
        }
        // A new set keeps its program id when no other set holds that number.
        let mut grown = swapped.clone();
        grown.ip_sets.insert(IpSetId(2), vec![net("10.9.0.1/32")]);
        if let Some(web) = grown.policies.get_mut("prod/web") {
            web.egress = vec![rule(
                Action::Deny,
                vec![Match::Set {
                    side: Side::Destination,
                    set: IpSetId(2),
                    negated: false,
                }],
            )];
        }
        let third = render_cached(&grown, &interfaces(), &Config::default(), &mut cache);
        let names: Vec<&String> = third.sets.keys().collect();
        assert_eq!(
            names,
            [
                "pol-np1-4",
                "pol-s0-4h",
                "pol-s0-4n",
                "pol-s0-6h",
                "pol-s2-4h"
            ]
        );
        assert_eq!(
            third.chains["po-prod/web"].as_ref(),
            ["meta nfproto ipv4 ip daddr @pol-s2-4h drop"]
        );
    }

    #[test]
    fn negated_matches_expand_to_alternatives() {
        let renderer = RuleRenderer {
            present: &|_: &str| false,
            numbers: &SetNumbers::default(),
        };
        let rules = renderer.rule(
            &rule(
                Action::Deny,
                vec![
                    Match::Icmp {
                        icmp: IcmpMatch {
                            icmp_type: 3,
                            code: Some(1),
                        },
                        negated: true,
                    },
                    Match::IpVersion(IpVersion::V4),
                    Match::Set {
                        side: Side::Destination,
                        set: IpSetId(4),
                        negated: true,
                    },
                ],
            ),
            PassStyle::MarkAndReturn,
        );
        assert_eq!(
            rules,
            [
                "meta nfproto ipv4 meta l4proto != 1 drop",
                "meta nfproto ipv4 meta l4proto 1 icmp type != 3 drop",
                "meta nfproto ipv4 meta l4proto 1 icmp type 3 icmp code != 1 drop",
            ]
        );
        let ports = renderer.rule(
            &rule(
                Action::Allow,
                vec![Match::Ports {
                    side: Side::Source,
                    ranges: vec![(1, 1023)],
                    named: vec![],
                    negated: true,
                }],
            ),
            PassStyle::Return,
        );
        assert_eq!(
            ports,
            [
                "meta l4proto != { 6, 17, 132, 136 } accept",
                "meta l4proto { 6, 17, 132, 136 } th sport != { 1-1023 } accept",
            ]
        );
        // A selector set with no members can never match.
        let empty = renderer.rule(
            &rule(
                Action::Allow,
                vec![Match::Set {
                    side: Side::Source,
                    set: IpSetId(4),
                    negated: false,
                }],
            ),
            PassStyle::Return,
        );
        assert!(empty.is_empty());
    }

    #[test]
    fn cached_rendering_equals_fresh_rendering() {
        let mut cache = RenderCache::default();
        let first = render_cached(&program(), &interfaces(), &Config::default(), &mut cache);
        assert_eq!(first, render(&program(), &interfaces(), &Config::default()));
        // The CIDR leaves set 0 (its rules must drop the interval alternative) and a rule
        // changes; the cache must not serve stale chains.
        let mut changed = program();
        changed
            .ip_sets
            .insert(IpSetId(0), vec![net("10.0.0.1/32"), net("fd00::1/128")]);
        if let Some(web) = changed.policies.get_mut("prod/web") {
            web.egress = vec![rule(Action::Deny, vec![])];
        }
        let second = render_cached(&changed, &interfaces(), &Config::default(), &mut cache);
        assert_eq!(second, render(&changed, &interfaces(), &Config::default()));
        assert_ne!(first.chains["pi-security"], second.chains["pi-security"]);
        assert_eq!((cache.chains.len(), cache.endpoints.len()), (6, 1));
    }

    #[test]
    fn icmp_rules_render_only_for_their_protocol_family() {
        let renderer = RuleRenderer {
            present: &|_: &str| false,
            numbers: &SetNumbers::default(),
        };
        let icmp = |protocol, negated| {
            rule(
                Action::Allow,
                vec![
                    Match::Protocol {
                        protocol,
                        negated: false,
                    },
                    Match::Icmp {
                        icmp: IcmpMatch {
                            icmp_type: 128,
                            code: None,
                        },
                        negated,
                    },
                ],
            )
        };
        assert_eq!(
            renderer.rule(&icmp(Protocol::ICMPV6, false), PassStyle::Return),
            ["meta nfproto ipv6 meta l4proto 58 meta l4proto 58 icmpv6 type 128 accept"]
        );
        assert_eq!(
            renderer.rule(&icmp(Protocol::ICMP, true), PassStyle::Return),
            [
                // `meta l4proto 1 meta l4proto != 1` can never hold: pruned.
                "meta nfproto ipv4 meta l4proto 1 meta l4proto 1 icmp type != 128 accept",
                "meta nfproto ipv6 meta l4proto 1 accept",
            ]
        );
    }

    #[test]
    fn object_names_hash_unusual_keys() {
        assert_eq!(object_name("pi-", "prod/web.x_1"), "pi-prod/web.x_1");
        let hashed = object_name("pi-", "weird key");
        assert!(hashed.starts_with("pi-h") && hashed.len() == 20, "{hashed}");
        assert_ne!(hashed, object_name("pi-", "weird key2"));
        assert!(object_name("po-", &"a".repeat(300)).len() < 30);
    }
}
