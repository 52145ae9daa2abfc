//! Host endpoints and workload→host traffic: the nftables rendering of [`HostProgram`] (the
//! host side of a node's program, see `felis_policy::host`).
//!
//! Rendered only when the program has a host side ([`Program::host`]); objects in table
//! `inet felis`:
//!
//! ```text
//! base chains (static; created by a full resync or when the host side appears)
//!   pol-host-raw-pre   prerouting, raw        jump pol-hraw-in     untracked ingress
//!   pol-host-raw-out   output, raw            jump pol-hraw-out    untracked egress
//!   pol-host-notrack-p prerouting, raw + 1    NOTRACK mark ⇒ notrack
//!   pol-host-notrack-o output, raw + 1        NOTRACK mark ⇒ notrack
//!   pol-host-prednat   prerouting, dstnat - 10  jump pol-hpre      pre-DNAT ingress
//!   pol-host-input     input, filter          jump pol-hin
//!   pol-host-output    output, filter         jump pol-hout
//!   pol-host-fwd-in    forward, filter + 2    jump pol-hfwd-in     applyOnForward, from a HEP
//!   pol-host-fwd-out   forward, filter + 3    jump pol-hfwd-out    applyOnForward, to a HEP
//! dispatch chains (regular):
//!   pol-hin   ct established,related accept · ACCEPT mark ⇒ accept · iifname "cali*":
//!             workload→host (ICMPv6 neighbour discovery accept; Drop: drop; Accept/Return:
//!             invalid drop, the workload's egress chain via @pol-from-grp, unknown cali* drop)
//!             · iifname ⇒ goto fh-<if>
//!   pol-hout  the same for oifname ⇒ goto th-<if>; oifname "cali*" return (host→workload)
//!   pol-hfwd-in / -out   iifname ⇒ jump fhfw-<if> / oifname ⇒ jump thfw-<if>
//!   pol-hpre, pol-hraw-in, pol-hraw-out   by interface ⇒ goto fhpre-/fhraw-/thraw-<if>
//! per host endpoint:
//!   fh-<if> / th-<if>        invalid drop, failsafe accepts, tiers, profiles, drop (default
//!                            deny)
//!   fhfw-<if> / thfw-<if>    invalid drop, applyOnForward tiers (end-of-tier drop); else
//!                            return (allowed)
//!   fhpre-<if>, fhraw-<if>, thraw-<if>   already ACCEPT-marked or failsafe: return; ACCEPT
//!                            (raw: + NOTRACK) mark set, tiers without end-of-tier drop, mark
//!                            cleared, return
//! ```
//!
//! The untracked and pre-DNAT stages jump to the same `pi-`/`po-` policy chains as the normal
//! stage: the chain sets [`HOST_ACCEPT_MARK`] before and clears it after, so a policy's
//! `accept` leaves the packet marked; the filter chains accept marked packets at once, and the
//! raw + 1 chains `notrack` what untracked policy allowed. A `*` host endpoint covers every
//! interface but `lo` and workload interfaces, after the named ones, and takes no untracked
//! policy. Host endpoints naming no interface (only `expectedIPs`) are rendered only for an
//! interface the caller resolved (in the interfaces map, under the endpoint's name).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use felis_policy::EndpointToHostAction;
use felis_policy::FailsafePort;
use felis_policy::NEIGHBOR_DISCOVERY_TYPES;
use felis_policy::TierDefaultAction;
use felis_policy::program::DirectionProgram;
use felis_policy::program::HostEndpointProgram;
use felis_policy::program::HostProgram;
use felis_policy::program::Program;
use ipnet::IpNet;

use crate::render::FROM_WORKLOAD_MAP;
use crate::render::PASS_MARK;
use crate::render::Ruleset;
use crate::render::TABLE;
use crate::render::object_name;

/// Mark bit: untracked or pre-DNAT policy allowed the packet (the filter chains accept it).
pub const HOST_ACCEPT_MARK: u32 = 0x0020_0000;
/// Mark bit: untracked policy allowed the packet (the raw + 1 chains `notrack` it).
pub const HOST_NOTRACK_MARK: u32 = 0x0040_0000;

/// Input dispatch chain.
pub const INPUT_CHAIN: &str = "pol-hin";
/// Output dispatch chain.
pub const OUTPUT_CHAIN: &str = "pol-hout";
/// Forward dispatch chain, by input interface.
pub const FORWARD_IN_CHAIN: &str = "pol-hfwd-in";
/// Forward dispatch chain, by output interface.
pub const FORWARD_OUT_CHAIN: &str = "pol-hfwd-out";
/// Pre-DNAT dispatch chain.
pub const PRE_DNAT_CHAIN: &str = "pol-hpre";
/// Untracked ingress dispatch chain.
pub const RAW_IN_CHAIN: &str = "pol-hraw-in";
/// Untracked egress dispatch chain.
pub const RAW_OUT_CHAIN: &str = "pol-hraw-out";

/// Prefixes of the per-host-endpoint chains.
const HOST_PREFIXES: [&str; 7] = ["fh-", "th-", "fhfw-", "thfw-", "fhpre-", "fhraw-", "thraw-"];

/// Base chains: name, hook, priority, the one rule.
fn base_chains() -> [(&'static str, &'static str, &'static str, String); 9] {
    let notrack = format!("meta mark & {HOST_NOTRACK_MARK:#010x} != 0 notrack");
    [
        (
            "pol-host-raw-pre",
            "prerouting",
            "raw",
            format!("jump {RAW_IN_CHAIN}"),
        ),
        (
            "pol-host-raw-out",
            "output",
            "raw",
            format!("jump {RAW_OUT_CHAIN}"),
        ),
        (
            "pol-host-notrack-p",
            "prerouting",
            "raw + 1",
            notrack.clone(),
        ),
        ("pol-host-notrack-o", "output", "raw + 1", notrack),
        (
            "pol-host-prednat",
            "prerouting",
            "dstnat - 10",
            format!("jump {PRE_DNAT_CHAIN}"),
        ),
        (
            "pol-host-input",
            "input",
            "filter",
            format!("jump {INPUT_CHAIN}"),
        ),
        (
            "pol-host-output",
            "output",
            "filter",
            format!("jump {OUTPUT_CHAIN}"),
        ),
        (
            "pol-host-fwd-in",
            "forward",
            "filter + 2",
            format!("jump {FORWARD_IN_CHAIN}"),
        ),
        (
            "pol-host-fwd-out",
            "forward",
            "filter + 3",
            format!("jump {FORWARD_OUT_CHAIN}"),
        ),
    ]
}

/// Whether `name` is a per-host-endpoint chain of this module (the dispatch and base chains
/// start with `pol-`, which the renderer owns already).
pub fn is_own(name: &str) -> bool {
    HOST_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether `ruleset` has a host side (its dispatch chains).
pub fn has_host(ruleset: &Ruleset) -> bool {
    ruleset.chains.contains_key(INPUT_CHAIN)
}

/// Adds the host side of `program` (if any) to `ruleset`: dispatch and per-endpoint chains.
/// A host endpoint naming no interface (only `expectedIPs`) uses `interfaces[<its name>]`, if
/// the caller resolved one.
pub fn render_into(
    program: &Program,
    interfaces: &BTreeMap<String, String>,
    ruleset: &mut Ruleset,
) {
    let Some(host) = &program.host else {
        return;
    };
    let chains = render_chains(program, host, interfaces, &ruleset.workload_prefix);
    for (name, rules) in chains {
        ruleset.chains.insert(name, rules.into());
    }
}

/// Appends to a full-resync script the base chains (when `ruleset` has a host side); the
/// script has deleted every `pol-` chain before.
pub fn add_base_chains(s: &mut String, ruleset: &Ruleset) {
    if has_host(ruleset) {
        create_base_chains(s);
    }
}

/// Appends to a delta script the base chains when the host side appears (after the dispatch
/// chains were created), or their removal when it goes (before the dispatch chains are).
pub fn delta_base_chains(s: &mut String, old: &Ruleset, new: &Ruleset) {
    match (has_host(old), has_host(new)) {
        (false, true) => create_base_chains(s),
        (true, false) => {
            for (name, ..) in base_chains() {
                let _ = writeln!(s, "flush chain inet {TABLE} {name}");
                let _ = writeln!(s, "delete chain inet {TABLE} {name}");
            }
        }
        _ => {}
    }
}

fn create_base_chains(s: &mut String) {
    for (name, hook, priority, rule) in base_chains() {
        let _ = writeln!(
            s,
            "add chain inet {TABLE} {name} {{ type filter hook {hook} priority {priority}; policy accept; }}"
        );
        let _ = writeln!(s, "add rule inet {TABLE} {name} {rule}");
    }
}

/// The host side's chains, by name.
pub fn render_chains(
    program: &Program,
    host: &HostProgram,
    interfaces: &BTreeMap<String, String>,
    workload_prefix: &str,
) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let wildcard = format!("\"{workload_prefix}*\"");
    let accepted = format!("meta mark & {HOST_ACCEPT_MARK:#010x} != 0 accept");
    // Invalid packets are dropped only on the interfaces we police (in the per-endpoint chains).
    let invalid = "ct state invalid drop".to_string();
    let stateful = ["ct state established,related accept".to_string(), accepted];
    let mut input: Vec<String> = stateful.to_vec();
    let types: Vec<String> = NEIGHBOR_DISCOVERY_TYPES.iter().map(u8::to_string).collect();
    input.push(format!(
        "iifname {wildcard} icmpv6 type {{ {} }} accept",
        types.join(", ")
    ));
    match host.config.default_endpoint_to_host_action {
        EndpointToHostAction::Drop => input.push(format!("iifname {wildcard} drop")),
        // Return leaves the packet to the host's other rules: our base chain accepts.
        EndpointToHostAction::Accept | EndpointToHostAction::Return => {
            input.push(format!("iifname {wildcard} {invalid}"));
            input.push(format!(
                "iifname {wildcard} meta iifgroup vmap @{FROM_WORKLOAD_MAP}"
            ));
            input.push(format!("iifname {wildcard} drop"));
        }
    }
    let mut output: Vec<String> = stateful.to_vec();
    output.push(format!("oifname {wildcard} return"));
    let mut forward_in: Vec<String> = stateful.to_vec();
    let mut forward_out: Vec<String> = stateful.to_vec();
    let mut pre_dnat = vec!["ct state established,related accept".to_string()];
    let mut raw_in = Vec::new();
    let mut raw_out = Vec::new();

    // Named interfaces first, then `*`.
    let mut endpoints: Vec<(&str, &String, &HostEndpointProgram)> = host
        .endpoints
        .iter()
        .filter_map(|(key, e)| {
            let ifname = match e.interface_name.as_str() {
                "" => interfaces.get(key)?,
                _ => &e.interface_name,
            };
            Some((ifname.as_str(), key, e))
        })
        .collect();
    endpoints.sort_by_key(|&(ifname, key, _)| (ifname == "*", ifname, key));
    let mut seen = std::collections::BTreeSet::new();
    for (ifname, _, hep) in endpoints {
        if !seen.insert(ifname) {
            continue; // A second endpoint for the same interface: the first (by name) wins.
        }
        let all = ifname == "*";
        let (iif, oif) = if all {
            (
                format!("iifname != \"lo\" iifname != {wildcard}"),
                format!("oifname != \"lo\" oifname != {wildcard}"),
            )
        } else {
            (
                format!("iifname \"{ifname}\""),
                format!("oifname \"{ifname}\""),
            )
        };
        let name = |prefix: &str| object_name(prefix, ifname);
        let inbound = &host.config.failsafe_inbound;
        let outbound = &host.config.failsafe_outbound;

        let mut fh = vec![invalid.clone()];
        fh.extend(failsafe_rules(inbound, true, "accept"));
        fh.extend(normal_chain(program, &hep.normal.ingress, "pi-", "pri-"));
        input.push(format!("{iif} goto {}", name("fh-")));
        chains.insert(name("fh-"), fh);

        let mut th = vec![invalid.clone()];
        th.extend(failsafe_rules(outbound, false, "accept"));
        th.extend(normal_chain(program, &hep.normal.egress, "po-", "pro-"));
        output.push(format!("{oif} goto {}", name("th-")));
        chains.insert(name("th-"), th);

        forward_in.push(format!("{iif} jump {}", name("fhfw-")));
        let mut fhfw = vec![invalid.clone()];
        fhfw.extend(tier_rules(program, &hep.forward.ingress, "pi-", true));
        chains.insert(name("fhfw-"), fhfw);
        forward_out.push(format!("{oif} jump {}", name("thfw-")));
        let mut thfw = vec![invalid.clone()];
        thfw.extend(tier_rules(program, &hep.forward.egress, "po-", true));
        chains.insert(name("thfw-"), thfw);

        if !hep.pre_dnat.tiers.is_empty() {
            pre_dnat.push(format!("{iif} goto {}", name("fhpre-")));
            chains.insert(
                name("fhpre-"),
                marked_stage(
                    program,
                    &hep.pre_dnat,
                    "pi-",
                    inbound,
                    true,
                    HOST_ACCEPT_MARK,
                ),
            );
        }
        let untracked_mark = HOST_ACCEPT_MARK | HOST_NOTRACK_MARK;
        if !all && !hep.untracked.ingress.tiers.is_empty() {
            raw_in.push(format!("{iif} goto {}", name("fhraw-")));
            chains.insert(
                name("fhraw-"),
                marked_stage(
                    program,
                    &hep.untracked.ingress,
                    "pi-",
                    inbound,
                    true,
                    untracked_mark,
                ),
            );
        }
        if !all && !hep.untracked.egress.tiers.is_empty() {
            raw_out.push(format!("{oif} goto {}", name("thraw-")));
            chains.insert(
                name("thraw-"),
                marked_stage(
                    program,
                    &hep.untracked.egress,
                    "po-",
                    outbound,
                    false,
                    untracked_mark,
                ),
            );
        }
    }
    for (name, rules) in [
        (INPUT_CHAIN, input),
        (OUTPUT_CHAIN, output),
        (FORWARD_IN_CHAIN, forward_in),
        (FORWARD_OUT_CHAIN, forward_out),
        (PRE_DNAT_CHAIN, pre_dnat),
        (RAW_IN_CHAIN, raw_in),
        (RAW_OUT_CHAIN, raw_out),
    ] {
        chains.insert(name.to_string(), rules);
    }
    chains
}

/// Failsafe rules ending in `verdict`: inbound ones match the source network, outbound ones
/// the destination.
fn failsafe_rules(ports: &[FailsafePort], inbound: bool, verdict: &str) -> Vec<String> {
    ports
        .iter()
        .map(|p| {
            let net = match p.net {
                None => String::new(),
                Some(net) => {
                    let (family, side) = match (net, inbound) {
                        (IpNet::V4(_), true) => ("ip", "saddr"),
                        (IpNet::V4(_), false) => ("ip", "daddr"),
                        (IpNet::V6(_), true) => ("ip6", "saddr"),
                        (IpNet::V6(_), false) => ("ip6", "daddr"),
                    };
                    format!("{family} {side} {} ", net.trunc())
                }
            };
            format!(
                "{net}meta l4proto {} th dport {} {verdict}",
                p.protocol.0, p.port
            )
        })
        .collect()
}

/// Tiers (by jumps to the policy chains, Pass by [`PASS_MARK`]), with or without end-of-tier
/// drop; falls through (returns) when no tier decided.
fn tier_rules(
    program: &Program,
    direction: &DirectionProgram,
    policy_prefix: &str,
    end_of_tier_drop: bool,
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
        if end_of_tier_drop && tier.default_action == TierDefaultAction::Deny {
            rules.push(if first {
                "drop".to_string()
            } else {
                format!("{unless_passed} drop")
            });
        }
        if !first {
            rules.push(clear.clone());
        }
    }
    rules
}

/// The normal stage: tiers, profiles, then drop (a host endpoint's default deny).
fn normal_chain(
    program: &Program,
    direction: &DirectionProgram,
    policy_prefix: &str,
    profile_prefix: &str,
) -> Vec<String> {
    let mut rules = tier_rules(program, direction, policy_prefix, true);
    for name in &direction.profiles {
        if program.profiles.contains_key(name) {
            rules.push(format!("jump {}", object_name(profile_prefix, name)));
        }
    }
    rules.push("drop".to_string());
    rules
}

/// An untracked or pre-DNAT stage: failsafe traffic skips it; policies run with `mark` set, so
/// that their `accept` leaves the packet marked; undecided packets leave unmarked.
fn marked_stage(
    program: &Program,
    direction: &DirectionProgram,
    policy_prefix: &str,
    failsafe: &[FailsafePort],
    inbound: bool,
    mark: u32,
) -> Vec<String> {
    // Allowed by an earlier stage (untracked, for pre-DNAT): decided already.
    let mut rules = vec![format!("meta mark & {HOST_ACCEPT_MARK:#010x} != 0 return")];
    rules.extend(failsafe_rules(failsafe, inbound, "return"));
    rules.push(format!("meta mark set meta mark | {mark:#010x}"));
    rules.extend(tier_rules(program, direction, policy_prefix, false));
    rules.push(format!("meta mark set meta mark & {:#010x}", !mark));
    rules
}

/// The host side's chains as [`Ruleset`] entries (for tests and tools).
pub fn chains_of(program: &Program, workload_prefix: &str) -> BTreeMap<String, Arc<[String]>> {
    let mut ruleset = Ruleset {
        workload_prefix: workload_prefix.to_string(),
        ..Ruleset::default()
    };
    render_into(program, &BTreeMap::new(), &mut ruleset);
    ruleset.chains
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use felis_policy::PolicySet;
    use felis_policy::scenario::Scenario;

    use super::*;

    const CLUSTER: &str = r#"
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec:
  defaultEndpointToHostAction: Accept
  failsafeInboundHostPorts: [{protocol: TCP, port: 22}, {protocol: UDP, port: 68, net: 10.0.0.0/8}]
  failsafeOutboundHostPorts: [{protocol: UDP, port: 53}]
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node1-eth0, labels: {role: node}}
spec: {node: node1, interfaceName: eth0, expectedIPs: [192.168.10.1]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node1-all, labels: {role: any}}
spec: {node: node1, interfaceName: "*", profiles: [projectcalico-default-allow]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node2-eth0, labels: {role: node}}
spec: {node: node2, interfaceName: eth0}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: raw}
spec:
  selector: has(role)
  doNotTrack: true
  applyOnForward: true
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [9100]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pre}
spec:
  selector: role == 'node'
  preDNAT: true
  applyOnForward: true
  ingress: [{action: Deny, source: {nets: [198.51.100.0/24]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: fwd}
spec:
  selector: role == 'node'
  applyOnForward: true
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [443]}}]
---
kind: Scenario
probes: [{from: 10.0.0.1, to: 192.168.10.1, port: 22, expect: allow}]
"#;

    fn program() -> Program {
        let scenario = Scenario::parse(CLUSTER).unwrap();
        let set = PolicySet::from_resources(&scenario.resources).unwrap();
        set.compile_for_node(std::iter::empty(), "node1")
    }

    #[test]
    fn no_host_side_renders_nothing() {
        let program = Program::default();
        assert!(chains_of(&program, "cali").is_empty());
    }

    #[test]
    fn host_endpoints_render_per_interface_chains_named_ones_first() {
        let chains = chains_of(&program(), "cali");
        let eth0_in = object_name("fh-", "eth0");
        let any_in = object_name("fh-", "*");
        let input: Vec<&str> = chains[INPUT_CHAIN].iter().map(String::as_str).collect();
        assert_eq!(
            input,
            [
                "ct state established,related accept",
                "meta mark & 0x00200000 != 0 accept",
                "iifname \"cali*\" icmpv6 type { 130, 131, 132, 133, 135, 136 } accept",
                "iifname \"cali*\" ct state invalid drop",
                "iifname \"cali*\" meta iifgroup vmap @pol-from-grp",
                "iifname \"cali*\" drop",
                &format!("iifname \"eth0\" goto {eth0_in}"),
                &format!("iifname != \"lo\" iifname != \"cali*\" goto {any_in}"),
            ]
        );
        let fh: Vec<&str> = chains[&eth0_in].iter().map(String::as_str).collect();
        assert_eq!(fh[0], "ct state invalid drop");
        assert_eq!(fh[1], "meta l4proto 6 th dport 22 accept");
        assert_eq!(
            fh[2],
            "ip saddr 10.0.0.0/8 meta l4proto 17 th dport 68 accept"
        );
        assert_eq!(fh.last(), Some(&"drop"), "default deny");
        // The `*` endpoint: its profile allows, after the (empty) tiers.
        let any: &[String] = &chains[&any_in];
        assert!(any.contains(&"jump pri-projectcalico-default-allow".to_string()));
        // node2's endpoint is not this node's.
        assert_eq!(chains.keys().filter(|k| k.starts_with("fh-")).count(), 2);
        // Untracked only on the named interface; pre-DNAT only where a policy selects.
        assert!(chains.contains_key(&object_name("fhraw-", "eth0")));
        assert!(!chains.contains_key(&object_name("fhraw-", "*")));
        assert!(chains.contains_key(&object_name("fhpre-", "eth0")));
        assert!(!chains.contains_key(&object_name("fhpre-", "*")));
        let raw: &[String] = &chains[&object_name("fhraw-", "eth0")];
        assert_eq!(raw[0], "meta mark & 0x00200000 != 0 return");
        assert_eq!(raw[3], "meta mark set meta mark | 0x00600000");
        assert_eq!(raw.last().unwrap(), "meta mark set meta mark & 0xff9fffff");
        let fwd: &[String] = &chains[&object_name("fhfw-", "eth0")];
        assert!(fwd.contains(&"jump pi-fwd".to_string()));
        assert!(
            fwd.contains(&"meta mark & 0x00100000 == 0 drop".to_string())
                || fwd.contains(&"drop".to_string())
        );
    }

    #[test]
    fn expected_ips_only_endpoints_need_a_resolved_interface() {
        let mut program = program();
        let host = program.host.as_mut().unwrap();
        let mut hep = host.endpoints["node1-eth0"].clone();
        hep.interface_name = String::new();
        host.endpoints.insert("node1-by-ip".to_string(), hep);
        let mut unresolved = Ruleset::default();
        render_into(&program, &BTreeMap::new(), &mut unresolved);
        assert!(!unresolved.chains.contains_key(&object_name("fh-", "eth7")));
        let resolved = BTreeMap::from([("node1-by-ip".to_string(), "eth7".to_string())]);
        let mut ruleset = Ruleset::default();
        render_into(&program, &resolved, &mut ruleset);
        assert!(ruleset.chains.contains_key(&object_name("fh-", "eth7")));
        assert!(ruleset.chains[INPUT_CHAIN].contains(&"iifname \"eth7\" goto fh-eth7".to_string()));
    }

    #[test]
    fn drop_action_drops_workload_to_host_without_their_chains() {
        let mut program = program();
        if let Some(host) = &mut program.host {
            host.config.default_endpoint_to_host_action = EndpointToHostAction::Drop;
        }
        let chains = chains_of(&program, "cali");
        assert!(chains[INPUT_CHAIN].contains(&"iifname \"cali*\" drop".to_string()));
        assert!(!chains[INPUT_CHAIN].iter().any(|r| r.contains("vmap")));
    }

    #[test]
    fn base_chains_come_and_go_with_the_host_side() {
        let mut with = Ruleset::default();
        render_into(&program(), &BTreeMap::new(), &mut with);
        let without = Ruleset::default();
        let mut s = String::new();
        delta_base_chains(&mut s, &without, &with);
        assert!(s.contains(
            "add chain inet felis pol-host-input { type filter hook input priority filter; policy accept; }"
        ));
        assert!(s.contains(
            "add rule inet felis pol-host-notrack-p meta mark & 0x00400000 != 0 notrack"
        ));
        let mut s = String::new();
        delta_base_chains(&mut s, &with, &without);
        assert!(s.contains("delete chain inet felis pol-host-input"));
        let mut s = String::new();
        delta_base_chains(&mut s, &with, &with);
        assert!(s.is_empty());
    }
}
