//! The active policy of a host compiled into a rule program: an IR independent of nftables,
//! where selectors have become IP sets and every rule is a flat list of matches.
//!
//! ```text
//! endpoint ─► direction ─► tier 1 ─► policy chain ─► rules (matches → action)
//!                          tier 2 ─► ...            Log: continue · Pass: next tier
//!                          (default action)
//!                          profiles ─► profile chain ─► rules
//! ```
//!
//! [`Program::verdict`] interprets the program; a property test checks it against
//! [`PolicySet::verdict`], so whatever renders the program (nftables) has a reference to meet.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

use crate::engine::PolicySet;
use crate::engine::endpoint_key;
use crate::engine::policy_key;
use crate::host::HostPolicyConfig;
use crate::host::Stage;
use crate::model::Action;
use crate::model::Direction;
use crate::model::Endpoint;
use crate::model::EntityRule;
use crate::model::IcmpMatch;
use crate::model::IpVersion;
use crate::model::Packet;
use crate::model::Policy;
use crate::model::Port;
use crate::model::Profile;
use crate::model::Protocol;
use crate::model::Rule;
use crate::model::TierDefaultAction;
use crate::resolve::NamedPortMember;
use crate::trace::Decision;
use crate::trace::DirectionTrace;
use crate::trace::RuleRef;
use crate::trace::Step;
use crate::trace::Trace;
use crate::trace::Verdict;

/// Identifies an IP set (or named-port set) of a [`Program`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IpSetId(pub u32);

/// The compiled policy of a set of (local) endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Program {
    /// Address sets that selectors and notSelectors resolved to, deduplicated.
    pub ip_sets: BTreeMap<IpSetId, Vec<IpNet>>,
    /// `address:protocol:port` sets that named ports resolved to, deduplicated.
    pub named_port_sets: BTreeMap<IpSetId, Vec<NamedPortMember>>,
    /// Policy chains by policy key (`<namespace>/<name>`, or `<name>` for global policies).
    pub policies: BTreeMap<String, PolicyProgram>,
    /// Profile chains by profile name (profiles that exist and some endpoint uses).
    pub profiles: BTreeMap<String, ProfileProgram>,
    /// Per endpoint, keyed `<namespace>/<name>` (or `<name>` for host endpoints).
    pub endpoints: BTreeMap<String, EndpointProgram>,
    /// Host endpoints and workload→host policy of one node ([`PolicySet::compile_for_node`]);
    /// `None`: host traffic is not policed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostProgram>,
}

/// The host side of a node's program: its host endpoints' stages and the FelixConfiguration
/// values (failsafe ports, `defaultEndpointToHostAction`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostProgram {
    /// The node.
    pub node: String,
    /// Failsafe ports and the workload→host action.
    pub config: HostPolicyConfig,
    /// Host endpoints by name.
    pub endpoints: BTreeMap<String, HostEndpointProgram>,
}

/// What runs at one host endpoint, per stage (see [`crate::host`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostEndpointProgram {
    /// `interfaceName`: a name, `*` (all interfaces) or empty (by `expectedIPs`).
    pub interface_name: String,
    /// `doNotTrack` policies (tiers only; none for `*` endpoints).
    pub untracked: EndpointProgram,
    /// `preDNAT` policies (ingress; tiers only).
    pub pre_dnat: DirectionProgram,
    /// Normal policies then profiles, for traffic to (ingress) and from (egress) the host.
    pub normal: EndpointProgram,
    /// `applyOnForward` policies (tiers only), for traffic forwarded across the interface.
    pub forward: EndpointProgram,
}

/// One policy's compiled rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyProgram {
    /// Tier name.
    pub tier: String,
    /// Namespace of a NetworkPolicy.
    pub namespace: Option<String>,
    /// Policy name.
    pub name: String,
    /// Ingress rules, in order.
    pub ingress: Vec<CompiledRule>,
    /// Egress rules, in order.
    pub egress: Vec<CompiledRule>,
}

/// One profile's compiled rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileProgram {
    /// Ingress rules, in order.
    pub ingress: Vec<CompiledRule>,
    /// Egress rules, in order.
    pub egress: Vec<CompiledRule>,
}

/// What runs for one endpoint, per direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointProgram {
    /// Traffic into the endpoint.
    pub ingress: DirectionProgram,
    /// Traffic out of the endpoint.
    pub egress: DirectionProgram,
}

/// The participating tiers, then the profiles, of one endpoint in one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionProgram {
    /// Participating tiers in order.
    pub tiers: Vec<TierProgram>,
    /// Profile names in order (a missing profile is skipped).
    pub profiles: Vec<String>,
}

/// A participating tier: its applying policies in order, and its default action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierProgram {
    /// Tier name.
    pub tier: String,
    /// Policy keys (into [`Program::policies`]) in order.
    pub policies: Vec<String>,
    /// What happens when no rule of the tier decided.
    pub default_action: TierDefaultAction,
}

/// A rule: all matches must hold, then `action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledRule {
    /// The action.
    pub action: Action,
    /// Conditions, ANDed.
    pub matches: Vec<Match>,
}

/// Which address/port of the packet a match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    /// The source.
    Source,
    /// The destination.
    Destination,
}

/// One condition of a compiled rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Match {
    /// The rule can never match (its CIDRs and ipVersion disagree on the family).
    Never,
    /// The packet is of this family.
    IpVersion(IpVersion),
    /// The packet's protocol is (`negated`: is not) this one.
    Protocol {
        /// The protocol.
        protocol: Protocol,
        /// Whether the match is inverted (`notProtocol`).
        negated: bool,
    },
    /// The packet is ICMP/ICMPv6 of this type (and code); `negated`: it is not.
    Icmp {
        /// Type and code.
        icmp: IcmpMatch,
        /// Whether the match is inverted (`notICMP`).
        negated: bool,
    },
    /// The address is (`negated`: is not) in one of these CIDRs.
    Nets {
        /// Which address.
        side: Side,
        /// The CIDRs.
        nets: Vec<IpNet>,
        /// Whether the match is inverted (`notNets`).
        negated: bool,
    },
    /// The address is (`negated`: is not) in an IP set.
    Set {
        /// Which address.
        side: Side,
        /// The set.
        set: IpSetId,
        /// Whether the match is inverted (`notSelector`).
        negated: bool,
    },
    /// The packet has ports and the port is (`negated`: is not) in one of the ranges, or the
    /// `address:protocol:port` is in one of the named-port sets.
    Ports {
        /// Which port (and, for named ports, address).
        side: Side,
        /// Inclusive port ranges.
        ranges: Vec<(u16, u16)>,
        /// Named-port sets.
        named: Vec<IpSetId>,
        /// Whether the match is inverted (`notPorts`).
        negated: bool,
    },
}

impl PolicySet {
    /// [`PolicySet::compile`], plus the host side of `node`: its host endpoints (all stages)
    /// and the FelixConfiguration values, in [`Program::host`].
    pub fn compile_for_node<'a>(
        &self,
        local: impl IntoIterator<Item = &'a Endpoint>,
        node: &str,
    ) -> Program {
        let mut compiler = self.compile_endpoints(local);
        let host = host_program(self, node, |hep, direction, stage, profiles| {
            compiler.direction(hep, direction, stage, profiles)
        });
        compiler.finish(Some(host))
    }

    /// Compiles the policy that applies to `local` endpoints into a [`Program`].
    pub fn compile<'a>(&self, local: impl IntoIterator<Item = &'a Endpoint>) -> Program {
        self.compile_endpoints(local).finish(None)
    }

    fn compile_endpoints<'a>(&self, local: impl IntoIterator<Item = &'a Endpoint>) -> Compiler<'_> {
        let mut compiler = Compiler {
            set: self,
            program: Program::default(),
            sets: ContentSets::default(),
        };
        for endpoint in local {
            let programs = [Direction::Ingress, Direction::Egress]
                .map(|direction| compiler.direction(endpoint, direction, Stage::Normal, true));
            let [ingress, egress] = programs;
            compiler
                .program
                .endpoints
                .insert(endpoint_key(endpoint), EndpointProgram { ingress, egress });
        }
        compiler
    }
}

/// The host side of `node`'s program: its host endpoints, each stage's direction programs made
/// by `direction(host endpoint, direction, stage, with profiles)`.
pub(crate) fn host_program(
    set: &PolicySet,
    node: &str,
    mut direction: impl FnMut(&Endpoint, Direction, Stage, bool) -> DirectionProgram,
) -> HostProgram {
    let mut host = HostProgram {
        node: node.to_string(),
        config: set.host_config(node).clone(),
        endpoints: BTreeMap::new(),
    };
    for hep in set.host_endpoints_of(node) {
        let interface_name = hep
            .host_endpoint
            .as_ref()
            .map(|h| h.interface_name.clone())
            .unwrap_or_default();
        let mut stage = |stage: Stage, dir: Direction, profiles: bool| {
            if stage == Stage::Untracked && interface_name == "*" {
                return DirectionProgram::default();
            }
            direction(hep, dir, stage, profiles)
        };
        let program = HostEndpointProgram {
            untracked: EndpointProgram {
                ingress: stage(Stage::Untracked, Direction::Ingress, false),
                egress: stage(Stage::Untracked, Direction::Egress, false),
            },
            pre_dnat: stage(Stage::PreDnat, Direction::Ingress, false),
            normal: EndpointProgram {
                ingress: stage(Stage::Normal, Direction::Ingress, true),
                egress: stage(Stage::Normal, Direction::Egress, true),
            },
            forward: EndpointProgram {
                ingress: stage(Stage::Forward, Direction::Ingress, false),
                egress: stage(Stage::Forward, Direction::Egress, false),
            },
            interface_name: interface_name.clone(),
        };
        host.endpoints.insert(endpoint_key(hep), program);
    }
    host
}

/// The tiers of `stage` (and, with `profiles`, the profiles) of `endpoint` in `direction`, by
/// policy key, and the policies they name (in the order they appear).
pub(crate) fn direction_program<'a>(
    set: &'a PolicySet,
    endpoint: &Endpoint,
    direction: Direction,
    stage: Stage,
    profiles: bool,
) -> (DirectionProgram, Vec<&'a Policy>) {
    let mut named = Vec::new();
    let tiers = set
        .applicable_tiers_in(endpoint, direction, stage)
        .into_iter()
        .map(|applied| TierProgram {
            tier: applied.tier.name.clone(),
            policies: applied
                .policies
                .iter()
                .map(|policy| {
                    named.push(*policy);
                    policy_key(policy).into_owned()
                })
                .collect(),
            default_action: applied.tier.default_action,
        })
        .collect();
    let profiles = if profiles {
        endpoint.profiles.clone()
    } else {
        Vec::new()
    };
    (DirectionProgram { tiers, profiles }, named)
}

/// The sets of one entity rule, as a [`SetSource`] numbered them.
#[derive(Debug, Default)]
pub(crate) struct EntitySets {
    /// The selector/namespaceSelector/serviceAccounts set, when the entity is restricted.
    pub(crate) selected: Option<IpSetId>,
    /// The notSelector set, when there is a notSelector.
    pub(crate) excluded: Option<IpSetId>,
    /// One named-port set per named port in `ports`/`notPorts`.
    pub(crate) named: BTreeMap<String, IpSetId>,
}

/// Where compiled rules get their set ids from.
pub(crate) trait SetSource {
    /// The sets behind `entity` of a rule in a policy of `policy_namespace`.
    fn entity_sets(
        &mut self,
        set: &PolicySet,
        entity: &EntityRule,
        policy_namespace: Option<&str>,
    ) -> EntitySets;
}

/// What an IP set was made from: the key that deduplicates sets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SetContents {
    Nets(Vec<IpNet>),
    NamedPorts(Vec<NamedPortMember>),
}

/// Sets deduplicated by contents, numbered in the order they are first met.
#[derive(Debug, Default)]
struct ContentSets {
    ids: BTreeMap<SetContents, IpSetId>,
    ip_sets: BTreeMap<IpSetId, Vec<IpNet>>,
    named_port_sets: BTreeMap<IpSetId, Vec<NamedPortMember>>,
}

impl ContentSets {
    fn id(&mut self, contents: SetContents) -> IpSetId {
        if let Some(id) = self.ids.get(&contents) {
            return *id;
        }
        let id = IpSetId(u32::try_from(self.ids.len()).unwrap_or(u32::MAX));
        match &contents {
            SetContents::Nets(nets) => {
                self.ip_sets.insert(id, nets.clone());
            }
            SetContents::NamedPorts(members) => {
                self.named_port_sets.insert(id, members.clone());
            }
        }
        self.ids.insert(contents, id);
        id
    }
}

impl SetSource for ContentSets {
    fn entity_sets(
        &mut self,
        set: &PolicySet,
        entity: &EntityRule,
        policy_namespace: Option<&str>,
    ) -> EntitySets {
        let resolved = set.resolve_entity(entity, policy_namespace);
        let selected = resolved
            .selected
            .map(|nets| self.id(SetContents::Nets(nets)));
        let excluded = entity
            .not_selector
            .is_some()
            .then(|| self.id(SetContents::Nets(resolved.excluded)));
        let named = resolved
            .named_ports
            .into_iter()
            .map(|(name, members)| (name, self.id(SetContents::NamedPorts(members))))
            .collect();
        EntitySets {
            selected,
            excluded,
            named,
        }
    }
}

struct Compiler<'a> {
    set: &'a PolicySet,
    program: Program,
    sets: ContentSets,
}

impl Compiler<'_> {
    /// The tiers of `stage` (and, with `profiles`, the profiles) of `endpoint` in `direction`,
    /// compiling the policies and profiles they name.
    fn direction(
        &mut self,
        endpoint: &Endpoint,
        direction: Direction,
        stage: Stage,
        profiles: bool,
    ) -> DirectionProgram {
        let (program, policies) = direction_program(self.set, endpoint, direction, stage, profiles);
        for policy in policies {
            self.policy(policy);
        }
        for name in &program.profiles {
            self.profile(name);
        }
        program
    }

    /// Compiles `policy` once.
    fn policy(&mut self, policy: &Policy) {
        let key = policy_key(policy);
        if !self.program.policies.contains_key(key.as_ref()) {
            let program = compile_policy(self.set, policy, &mut self.sets);
            self.program.policies.insert(key.into_owned(), program);
        }
    }

    fn profile(&mut self, name: &str) {
        if self.program.profiles.contains_key(name) {
            return;
        }
        let Some(profile) = self.set.profiles.get(name) else {
            return;
        };
        let program = compile_profile(self.set, profile, &mut self.sets);
        self.program.profiles.insert(name.to_string(), program);
    }

    fn finish(mut self, host: Option<HostProgram>) -> Program {
        self.program.ip_sets = self.sets.ip_sets;
        self.program.named_port_sets = self.sets.named_port_sets;
        self.program.host = host;
        self.program
    }
}

/// `policy`'s rules compiled, sets numbered by `sets`.
pub(crate) fn compile_policy(
    set: &PolicySet,
    policy: &Policy,
    sets: &mut dyn SetSource,
) -> PolicyProgram {
    let namespace = policy.namespace.as_deref();
    PolicyProgram {
        tier: policy.tier.clone(),
        namespace: policy.namespace.clone(),
        name: policy.name.clone(),
        ingress: policy
            .ingress
            .iter()
            .map(|r| compile_rule(set, r, namespace, sets))
            .collect(),
        egress: policy
            .egress
            .iter()
            .map(|r| compile_rule(set, r, namespace, sets))
            .collect(),
    }
}

/// `profile`'s rules compiled, sets numbered by `sets`.
pub(crate) fn compile_profile(
    set: &PolicySet,
    profile: &Profile,
    sets: &mut dyn SetSource,
) -> ProfileProgram {
    ProfileProgram {
        ingress: profile
            .ingress
            .iter()
            .map(|r| compile_rule(set, r, None, sets))
            .collect(),
        egress: profile
            .egress
            .iter()
            .map(|r| compile_rule(set, r, None, sets))
            .collect(),
    }
}

fn compile_rule(
    set: &PolicySet,
    rule: &Rule,
    policy_namespace: Option<&str>,
    sets: &mut dyn SetSource,
) -> CompiledRule {
    let mut matches = Vec::new();
    // A rule is rendered only for the family of its CIDRs (and its ipVersion).
    let mut families: Vec<IpVersion> = rule.ip_version.into_iter().collect();
    for entity in [&rule.source, &rule.destination] {
        families.extend(
            entity
                .nets
                .iter()
                .chain(&entity.not_nets)
                .map(IpVersion::of_net),
        );
    }
    match families.split_first() {
        None => {}
        Some((first, rest)) if rest.iter().all(|f| f == first) => {
            matches.push(Match::IpVersion(*first));
        }
        Some(_) => matches.push(Match::Never),
    }
    if let Some(protocol) = rule.protocol {
        matches.push(Match::Protocol {
            protocol,
            negated: false,
        });
    }
    if let Some(protocol) = rule.not_protocol {
        matches.push(Match::Protocol {
            protocol,
            negated: true,
        });
    }
    if let Some(icmp) = rule.icmp {
        matches.push(Match::Icmp {
            icmp,
            negated: false,
        });
    }
    if let Some(icmp) = rule.not_icmp {
        matches.push(Match::Icmp {
            icmp,
            negated: true,
        });
    }
    for (entity, side) in [
        (&rule.source, Side::Source),
        (&rule.destination, Side::Destination),
    ] {
        let entity_sets = sets.entity_sets(set, entity, policy_namespace);
        entity_matches(entity, side, &entity_sets, &mut matches);
    }
    CompiledRule {
        action: rule.action,
        matches,
    }
}

fn entity_matches(entity: &EntityRule, side: Side, sets: &EntitySets, out: &mut Vec<Match>) {
    if !entity.nets.is_empty() {
        out.push(Match::Nets {
            side,
            nets: entity.nets.clone(),
            negated: false,
        });
    }
    if !entity.not_nets.is_empty() {
        out.push(Match::Nets {
            side,
            nets: entity.not_nets.clone(),
            negated: true,
        });
    }
    if let Some(set) = sets.selected {
        out.push(Match::Set {
            side,
            set,
            negated: false,
        });
    }
    if let Some(set) = sets.excluded {
        out.push(Match::Set {
            side,
            set,
            negated: true,
        });
    }
    for (ports, negated) in [(&entity.ports, false), (&entity.not_ports, true)] {
        if ports.is_empty() {
            continue;
        }
        let mut ranges = Vec::new();
        let mut named = Vec::new();
        for port in ports {
            match port {
                Port::Number(p) => ranges.push((*p, *p)),
                Port::Range(start, end) => ranges.push((*start, *end)),
                Port::Named(name) => named.extend(sets.named.get(name).copied()),
            }
        }
        out.push(Match::Ports {
            side,
            ranges,
            named,
            negated,
        });
    }
}

/// The set ids `rules` refer to, in order (with repeats).
pub fn set_references(rules: &[CompiledRule]) -> impl Iterator<Item = IpSetId> + '_ {
    rules
        .iter()
        .flat_map(|r| &r.matches)
        .flat_map(|m| match m {
            Match::Set { set, .. } => std::slice::from_ref(set),
            Match::Ports { named, .. } => named.as_slice(),
            _ => &[],
        })
        .copied()
}

impl Program {
    /// The same program with its sets numbered canonically: sets with equal contents merged,
    /// numbered in the order the policy chains, then the profile chains (each by key, ingress
    /// then egress) first refer to them; sets nothing refers to dropped. Two programs that
    /// enforce the same policy with differently numbered sets have equal canonical forms
    /// ([`PolicySet::compile`] numbers by contents, [`crate::incremental`] by definition).
    pub fn canonical(&self) -> Program {
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Contents<'a> {
            Nets(&'a [IpNet]),
            NamedPorts(&'a [NamedPortMember]),
        }
        let mut program = self.clone();
        let mut by_contents: BTreeMap<Contents<'_>, IpSetId> = BTreeMap::new();
        let mut renumbered: BTreeMap<IpSetId, IpSetId> = BTreeMap::new();
        let mut ip_sets = BTreeMap::new();
        let mut named_port_sets = BTreeMap::new();
        let chains = program
            .policies
            .values_mut()
            .flat_map(|p| [&mut p.ingress, &mut p.egress])
            .chain(
                program
                    .profiles
                    .values_mut()
                    .flat_map(|p| [&mut p.ingress, &mut p.egress]),
            );
        for rules in chains {
            for m in rules.iter_mut().flat_map(|r| &mut r.matches) {
                let ids: Vec<&mut IpSetId> = match m {
                    Match::Set { set, .. } => vec![set],
                    Match::Ports { named, .. } => named.iter_mut().collect(),
                    _ => Vec::new(),
                };
                for id in ids {
                    let old = *id;
                    if let Some(new) = renumbered.get(&old) {
                        *id = *new;
                        continue;
                    }
                    let contents = match (self.ip_sets.get(&old), self.named_port_sets.get(&old)) {
                        (Some(nets), _) => Contents::Nets(nets),
                        (None, Some(members)) => Contents::NamedPorts(members),
                        (None, None) => Contents::Nets(&[]),
                    };
                    let next = IpSetId(u32::try_from(by_contents.len()).unwrap_or(u32::MAX));
                    let new = match by_contents.get(&contents) {
                        Some(new) => *new,
                        None => {
                            match &contents {
                                Contents::Nets(nets) => ip_sets.insert(next, nets.to_vec()),
                                Contents::NamedPorts(members) => {
                                    named_port_sets.insert(next, members.to_vec());
                                    None
                                }
                            };
                            by_contents.insert(contents, next);
                            next
                        }
                    };
                    renumbered.insert(old, new);
                    *id = new;
                }
            }
        }
        program.ip_sets = ip_sets;
        program.named_port_sets = named_port_sets;
        program
    }

    /// Interprets the program for `packet` leaving endpoint `from` and entering `to` (keys of
    /// [`Program::endpoints`]; `None`, or a key not in the program: outside this program).
    pub fn verdict(&self, packet: &Packet, from: Option<&str>, to: Option<&str>) -> Trace {
        let side = |key: Option<&str>, direction: Direction| {
            let key = key?;
            let endpoint = self.endpoints.get(key)?;
            let program = match direction {
                Direction::Ingress => &endpoint.ingress,
                Direction::Egress => &endpoint.egress,
            };
            Some(self.evaluate(key, program, direction, packet))
        };
        let egress = side(from, Direction::Egress);
        let ingress = side(to, Direction::Ingress);
        let allowed = [&egress, &ingress]
            .into_iter()
            .flatten()
            .all(|s| s.verdict == Verdict::Allow);
        Trace {
            verdict: if allowed {
                Verdict::Allow
            } else {
                Verdict::Deny
            },
            egress,
            ingress,
            forward: Vec::new(),
        }
    }

    /// Interprets host endpoint `key` of [`Program::host`] for `packet` in `direction`: for
    /// traffic to or from the host, or (`forwarded`) across it; `None` if the program has no
    /// such host endpoint. The reference the host rendering must meet, as
    /// [`PolicySet::host_endpoint_verdict`] is for the program.
    pub fn host_verdict(
        &self,
        key: &str,
        packet: &Packet,
        direction: Direction,
        forwarded: bool,
    ) -> Option<DirectionTrace> {
        let host = self.host.as_ref()?;
        let hep = host.endpoints.get(key)?;
        let mut steps = Vec::new();
        let finish = |verdict, decided_by, program: &DirectionProgram, steps, stage| {
            Some(DirectionTrace {
                endpoint: key.to_string(),
                verdict,
                decided_by,
                tiers: program.tiers.iter().map(|t| t.tier.clone()).collect(),
                steps,
                stage,
            })
        };
        if !forwarded && let Some(port) = host.config.failsafe(packet, direction) {
            let decided_by = Decision::Failsafe {
                protocol: port.protocol,
                port: port.port,
            };
            let none = DirectionProgram::default();
            return finish(Verdict::Allow, decided_by, &none, steps, Stage::Normal);
        }
        let pick = |p: &'_ EndpointProgram| match direction {
            Direction::Ingress => p.ingress.clone(),
            Direction::Egress => p.egress.clone(),
        };
        let mut early = vec![(Stage::Untracked, pick(&hep.untracked))];
        if direction == Direction::Ingress {
            early.push((Stage::PreDnat, hep.pre_dnat.clone()));
        }
        for (stage, program) in &early {
            if program.tiers.is_empty() {
                continue;
            }
            if let Some((verdict, decided_by)) =
                self.run_tiers(program, direction, packet, false, &mut steps)
            {
                return finish(verdict, decided_by, program, steps, *stage);
            }
        }
        let (stage, program) = if forwarded {
            (Stage::Forward, pick(&hep.forward))
        } else {
            (Stage::Normal, pick(&hep.normal))
        };
        if let Some((verdict, decided_by)) =
            self.run_tiers(&program, direction, packet, true, &mut steps)
        {
            return finish(verdict, decided_by, &program, steps, stage);
        }
        if forwarded {
            return finish(
                Verdict::Allow,
                Decision::ForwardNotPoliced,
                &program,
                steps,
                stage,
            );
        }
        let profiles_only = DirectionProgram {
            tiers: Vec::new(),
            profiles: program.profiles.clone(),
        };
        let mut side = self.evaluate(key, &profiles_only, direction, packet);
        let mut all_steps = steps;
        all_steps.append(&mut side.steps);
        finish(side.verdict, side.decided_by, &program, all_steps, stage)
    }

    /// Runs the tiers of `program`; `None` when every tier passed (or, without
    /// `end_of_tier_drop`, ended with no matching rule).
    fn run_tiers(
        &self,
        program: &DirectionProgram,
        direction: Direction,
        packet: &Packet,
        end_of_tier_drop: bool,
        steps: &mut Vec<Step>,
    ) -> Option<(Verdict, Decision)> {
        'tiers: for tier in &program.tiers {
            for policy_key in &tier.policies {
                let Some(policy) = self.policies.get(policy_key) else {
                    continue;
                };
                let rules = match direction {
                    Direction::Ingress => &policy.ingress,
                    Direction::Egress => &policy.egress,
                };
                for (index, rule) in rules.iter().enumerate() {
                    if !self.rule_matches(rule, packet) {
                        continue;
                    }
                    let at = RuleRef::Policy {
                        tier: tier.tier.clone(),
                        namespace: policy.namespace.clone(),
                        policy: policy.name.clone(),
                        index,
                    };
                    match rule.action {
                        Action::Allow | Action::Deny => {
                            let verdict = if rule.action == Action::Allow {
                                Verdict::Allow
                            } else {
                                Verdict::Deny
                            };
                            let decided_by = Decision::Rule {
                                rule: at,
                                action: rule.action,
                            };
                            return Some((verdict, decided_by));
                        }
                        Action::Log => steps.push(Step::Log(at)),
                        Action::Pass => {
                            steps.push(Step::Pass(at));
                            continue 'tiers;
                        }
                    }
                }
            }
            match tier.default_action {
                TierDefaultAction::Deny if end_of_tier_drop => {
                    let decided_by = Decision::EndOfTier {
                        tier: tier.tier.clone(),
                    };
                    return Some((Verdict::Deny, decided_by));
                }
                TierDefaultAction::Deny | TierDefaultAction::Pass => {
                    steps.push(Step::EndOfTierPass {
                        tier: tier.tier.clone(),
                    });
                }
            }
        }
        None
    }

    fn evaluate(
        &self,
        key: &str,
        program: &DirectionProgram,
        direction: Direction,
        packet: &Packet,
    ) -> DirectionTrace {
        let tiers: Vec<String> = program.tiers.iter().map(|t| t.tier.clone()).collect();
        let mut steps = Vec::new();
        let finish = |verdict, decided_by, steps| DirectionTrace {
            endpoint: key.to_string(),
            verdict,
            decided_by,
            tiers: tiers.clone(),
            steps,
            stage: Stage::Normal,
        };
        if let Some((verdict, decided_by)) =
            self.run_tiers(program, direction, packet, true, &mut steps)
        {
            return finish(verdict, decided_by, steps);
        }
        for name in &program.profiles {
            let Some(profile) = self.profiles.get(name) else {
                steps.push(Step::MissingProfile {
                    profile: name.clone(),
                });
                continue;
            };
            let rules = match direction {
                Direction::Ingress => &profile.ingress,
                Direction::Egress => &profile.egress,
            };
            for (index, rule) in rules.iter().enumerate() {
                if !self.rule_matches(rule, packet) {
                    continue;
                }
                let at = RuleRef::Profile {
                    profile: name.clone(),
                    index,
                };
                match rule.action {
                    Action::Allow | Action::Deny => {
                        let verdict = if rule.action == Action::Allow {
                            Verdict::Allow
                        } else {
                            Verdict::Deny
                        };
                        return finish(
                            verdict,
                            Decision::Rule {
                                rule: at,
                                action: rule.action,
                            },
                            steps,
                        );
                    }
                    Action::Log => steps.push(Step::Log(at)),
                    Action::Pass => {
                        steps.push(Step::Pass(at));
                        break;
                    }
                }
            }
        }
        finish(Verdict::Deny, Decision::NoProfileMatched, steps)
    }

    /// Whether every match of `rule` holds for `packet`.
    pub fn rule_matches(&self, rule: &CompiledRule, packet: &Packet) -> bool {
        rule.matches.iter().all(|m| self.match_holds(m, packet))
    }

    fn match_holds(&self, m: &Match, packet: &Packet) -> bool {
        let address = |side: &Side| -> IpAddr {
            match side {
                Side::Source => packet.src_ip,
                Side::Destination => packet.dst_ip,
            }
        };
        match m {
            Match::Never => false,
            Match::IpVersion(family) => IpVersion::of(packet.src_ip) == *family,
            Match::Protocol { protocol, negated } => (packet.protocol == *protocol) != *negated,
            Match::Icmp { icmp, negated } => {
                let hit =
                    packet.protocol.is_icmp() && icmp.matches(packet.icmp_type, packet.icmp_code);
                hit != *negated
            }
            Match::Nets {
                side,
                nets,
                negated,
            } => {
                let ip = address(side);
                nets.iter().any(|n| n.contains(&ip)) != *negated
            }
            Match::Set { side, set, negated } => {
                let ip = address(side);
                let hit = self
                    .ip_sets
                    .get(set)
                    .is_some_and(|nets| nets.iter().any(|n| n.contains(&ip)));
                hit != *negated
            }
            Match::Ports {
                side,
                ranges,
                named,
                negated,
            } => {
                let ip = address(side);
                let port = match side {
                    Side::Source => packet.src_port,
                    Side::Destination => packet.dst_port,
                };
                let hit = packet.protocol.has_ports()
                    && port.is_some_and(|port| {
                        ranges
                            .iter()
                            .any(|(start, end)| (*start..=*end).contains(&port))
                            || named.iter().any(|id| {
                                self.named_port_sets.get(id).is_some_and(|members| {
                                    members.iter().any(|m| {
                                        m.net.contains(&ip)
                                            && m.protocol == packet.protocol
                                            && m.port == port
                                    })
                                })
                            })
                    });
                hit != *negated
            }
        }
    }
}
