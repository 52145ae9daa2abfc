//! Which deltas take the netlink hot path: the difference between two [`Ruleset`]s as
//! [`crate::netlink::Op`]s, when it is made only of what [`crate::netlink`] can encode.
//!
//! That covers the common changes: a workload endpoint added or removed (its endpoint chains,
//! verdict-map elements and selector-set members), its labels changed (set members, endpoint
//! chains refilled), and set membership following any of them. A delta that creates or deletes
//! a set, changes an interval set or a policy/profile chain's rules returns `None`: it goes
//! through `nft` text.

use std::sync::Arc;

use crate::netlink::Element;
use crate::netlink::EndpointRule;
use crate::netlink::Op;
use crate::netlink::Verdict;
use crate::render::ApplyStats;
use crate::render::FROM_WORKLOAD_MAP;
use crate::render::GroupChanges;
use crate::render::Ruleset;
use crate::render::TO_WORKLOAD_MAP;

/// The netlink operations that turn installed state `old` into `new`, in the order
/// [`crate::render::delta_scripts`] uses: set elements, new chains, chain rules, new pairs;
/// then, once the interfaces' groups have changed, gone pairs and removed chains. `None` if
/// the delta needs `nft` text. Empty lists: nothing changed in nftables.
pub fn delta_ops(old: &Ruleset, new: &Ruleset) -> Option<(Vec<Op>, Vec<Op>, ApplyStats)> {
    // The host side appearing or going adds or deletes base chains: nft text.
    if crate::host::has_host(old) != crate::host::has_host(new) {
        return None;
    }
    let mut ops = Vec::new();
    let mut stats = ApplyStats::default();
    // 1. Set elements, in sets that exist on both sides with the same hash kind.
    if old.sets.len() != new.sets.len() {
        return None;
    }
    for ((old_name, installed), (name, set)) in old.sets.iter().zip(&new.sets) {
        if old_name != name || installed.kind != set.kind {
            return None;
        }
        if installed.elements == set.elements {
            continue;
        }
        if set.kind.is_interval() {
            return None;
        }
        let removed = installed
            .elements
            .difference(&set.elements)
            .map(|e| Element::of_set(set.kind, e))
            .collect::<Option<Vec<_>>>()?;
        let added = set
            .elements
            .difference(&installed.elements)
            .map(|e| Element::of_set(set.kind, e))
            .collect::<Option<Vec<_>>>()?;
        stats.elements_removed += removed.len();
        stats.elements_added += added.len();
        if !removed.is_empty() {
            ops.push(Op::DeleteElements {
                set: name.clone(),
                elements: removed,
            });
        }
        if !added.is_empty() {
            ops.push(Op::AddElements {
                set: name.clone(),
                elements: added,
            });
        }
    }
    // 2. Chains: declare new ones, then (re)fill; only endpoint-chain rule shapes.
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            ops.push(Op::AddChain(name.clone()));
            stats.chains_added += 1;
        }
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(installed) if Arc::ptr_eq(installed, rules) || installed == rules => continue,
            Some(_) => {
                ops.push(Op::FlushChain(name.clone()));
                stats.chains_replaced += 1;
            }
            None => {}
        }
        for rule in rules.iter() {
            ops.push(Op::AddRule {
                chain: name.clone(),
                rule: EndpointRule::parse(rule)?,
            });
        }
    }
    // 3. Verdict maps: new pairs now; gone pairs and removed chains once no interface has
    // their groups (the second list).
    let changes = GroupChanges::between(old, new);
    stats.links_changed = changes.links.len();
    let (added, removed) = pair_elements(&changes.added, &changes.removed);
    stats.map_changes += 2 * (changes.added.len() + changes.removed.len());
    ops.extend(added);
    let mut cleanup = removed;
    let removed: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    cleanup.extend(removed.iter().map(|n| Op::FlushChain((*n).clone())));
    cleanup.extend(removed.iter().map(|n| Op::DeleteChain((*n).clone())));
    stats.chains_removed += removed.len();
    Some((ops, cleanup, stats))
}

/// The element operations that add the `added` pairs (by group) to both maps, and those that
/// delete the `removed` groups.
pub(crate) fn pair_elements<P: std::borrow::Borrow<(String, String)>>(
    added: &[(u32, P)],
    removed: &[u32],
) -> (Vec<Op>, Vec<Op>) {
    let mut adds = Vec::new();
    let mut deletes = Vec::new();
    for (i, map) in [FROM_WORKLOAD_MAP, TO_WORKLOAD_MAP].into_iter().enumerate() {
        if !added.is_empty() {
            let elements = added
                .iter()
                .map(|(group, pair)| {
                    let (egress, ingress) = pair.borrow();
                    let chain = if i == 0 { egress } else { ingress };
                    Element::of_group(*group, Some(Verdict::Goto(chain.clone())))
                })
                .collect();
            adds.push(Op::AddElements {
                set: map.to_string(),
                elements,
            });
        }
        if !removed.is_empty() {
            let elements = removed
                .iter()
                .map(|group| Element::of_group(*group, None))
                .collect();
            deletes.push(Op::DeleteElements {
                set: map.to_string(),
                elements,
            });
        }
    }
    (adds, deletes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::render::NftSet;
    use crate::render::SetKind;

    fn ruleset(members: &[&str], endpoints: &[&str]) -> Ruleset {
        let mut r = Ruleset::default();
        r.sets.insert(
            "pol-s0-4h".into(),
            NftSet {
                kind: SetKind::Hosts4,
                elements: members.iter().map(|m| m.to_string()).collect(),
            },
        );
        r.sets.insert(
            "pol-s0-4n".into(),
            NftSet {
                kind: SetKind::Nets4,
                elements: BTreeSet::from(["10.0.0.0/8".to_string()]),
            },
        );
        r.chains.insert(
            "pi-p".into(),
            vec!["ip saddr @pol-s0-4h accept".to_string()].into(),
        );
        r.chains
            .insert("fw-all".into(), vec!["drop".to_string()].into());
        for (i, ifname) in endpoints.iter().enumerate() {
            let group = u32::try_from(i).unwrap() + 1;
            r.groups.insert(ifname.to_string(), group);
            r.pairs
                .insert(group, ("fw-all".to_string(), format!("tw-{ifname}")));
            r.from_workload
                .insert(ifname.to_string(), "fw-all".to_string());
            let rules: Arc<[String]> = vec![
                "meta mark set meta mark & 0xffefffff".to_string(),
                "jump pi-p".to_string(),
                "drop".to_string(),
            ]
            .into();
            r.chains.insert(format!("tw-{ifname}"), rules);
            r.to_workload
                .insert(ifname.to_string(), format!("tw-{ifname}"));
        }
        r
    }

    #[test]
    fn a_new_endpoint_is_set_members_a_chain_and_a_map_element() {
        let old = ruleset(&["10.0.0.1"], &["cali1"]);
        let new = ruleset(&["10.0.0.1", "10.0.0.2"], &["cali1", "cali2"]);
        let (ops, cleanup, stats) = delta_ops(&old, &new).unwrap();
        assert_eq!(cleanup, []);
        let described: Vec<String> = ops.iter().map(Op::describe).collect();
        assert_eq!(
            described,
            [
                "add 1 element(s) to pol-s0-4h",
                "add chain tw-cali2",
                "add rule ClearPassMark to chain tw-cali2",
                "add rule Jump(\"pi-p\") to chain tw-cali2",
                "add rule Drop to chain tw-cali2",
                "add 1 element(s) to pol-from-grp",
                "add 1 element(s) to pol-to-grp",
            ]
        );
        assert_eq!(
            (
                stats.elements_added,
                stats.chains_added,
                stats.map_changes,
                stats.links_changed
            ),
            (1, 1, 2, 1)
        );
        // And back: the pair and its chain go after the interface's group.
        let (ops, cleanup, _) = delta_ops(&new, &old).unwrap();
        let described: Vec<String> = ops.iter().map(Op::describe).collect();
        assert_eq!(described, ["delete 1 element(s) from pol-s0-4h"]);
        let described: Vec<String> = cleanup.iter().map(Op::describe).collect();
        assert_eq!(
            described,
            [
                "delete 1 element(s) from pol-from-grp",
                "delete 1 element(s) from pol-to-grp",
                "flush chain tw-cali2",
                "delete chain tw-cali2",
            ]
        );
    }

    #[test]
    fn policy_rule_and_set_structure_changes_need_nft_text() {
        let old = ruleset(&["10.0.0.1"], &["cali1"]);
        let mut new = old.clone();
        new.chains.insert(
            "pi-p".into(),
            vec!["ip saddr @pol-s0-4h drop".to_string()].into(),
        );
        assert!(delta_ops(&old, &new).is_none());
        let mut new = old.clone();
        new.sets.remove("pol-s0-4n");
        assert!(delta_ops(&old, &new).is_none());
        let mut new = old.clone();
        if let Some(set) = new.sets.get_mut("pol-s0-4n") {
            set.elements.insert("192.168.0.0/16".into());
        }
        assert!(delta_ops(&old, &new).is_none());
        let (ops, cleanup, _) = delta_ops(&old, &old).unwrap();
        assert_eq!((ops, cleanup), (vec![], vec![]));
    }
}
