//! Which deltas take the netlink hot path: the difference between two [`Ruleset`]s as
//! [`crate::netlink::Op`]s, when it is made only of what [`crate::netlink`] can encode.
//!
//! That covers the common changes: a workload endpoint added or removed (its endpoint chains,
//! verdict-map elements and selector-set members), its labels changed (set members, endpoint
//! chains refilled), and set membership following any of them. A delta that creates or deletes
//! a set, changes an interval set or a policy/profile chain's rules returns `None`: it goes
//! through `nft` text.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::netlink::Element;
use crate::netlink::EndpointRule;
use crate::netlink::Op;
use crate::netlink::Verdict;
use crate::render::ApplyStats;
use crate::render::FROM_WORKLOAD_MAP;
use crate::render::Ruleset;
use crate::render::TO_WORKLOAD_MAP;

/// The netlink operations that turn installed state `old` into `new`, in the order
/// [`crate::render::delta_script`] uses (set elements, new chains, chain rules, verdict maps,
/// removed chains); `None` if the delta needs `nft` text. An empty list: nothing changed.
pub fn delta_ops(old: &Ruleset, new: &Ruleset) -> Option<(Vec<Op>, ApplyStats)> {
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
    // 3. Verdict maps: stale entries out, then fresh ones in.
    for (map, installed, desired) in [
        (FROM_WORKLOAD_MAP, &old.from_workload, &new.from_workload),
        (TO_WORKLOAD_MAP, &old.to_workload, &new.to_workload),
    ] {
        let (stale, fresh) = differences(installed, desired);
        let stale = stale
            .into_iter()
            .map(|ifname| Element::of_interface(ifname, None))
            .collect::<Option<Vec<_>>>()?;
        let fresh = fresh
            .into_iter()
            .map(|(ifname, chain)| {
                Element::of_interface(ifname, Some(Verdict::Goto(chain.clone())))
            })
            .collect::<Option<Vec<_>>>()?;
        stats.map_changes += stale.len() + fresh.len();
        if !stale.is_empty() {
            ops.push(Op::DeleteElements {
                set: map.to_string(),
                elements: stale,
            });
        }
        if !fresh.is_empty() {
            ops.push(Op::AddElements {
                set: map.to_string(),
                elements: fresh,
            });
        }
    }
    // 4. Removed chains: empty them all first (they may jump to each other), then delete.
    let removed: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    ops.extend(removed.iter().map(|n| Op::FlushChain((*n).clone())));
    ops.extend(removed.iter().map(|n| Op::DeleteChain((*n).clone())));
    stats.chains_removed += removed.len();
    Some((ops, stats))
}

/// The keys of `installed` that `desired` lacks or maps elsewhere, and the entries of `desired`
/// that `installed` lacks or maps elsewhere: both maps walked once, in step.
fn differences<'a>(
    installed: &'a BTreeMap<String, String>,
    desired: &'a BTreeMap<String, String>,
) -> (Vec<&'a String>, Vec<(&'a String, &'a String)>) {
    let mut stale = Vec::new();
    let mut fresh = Vec::new();
    let mut old = installed.iter().peekable();
    let mut new = desired.iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(&(k, _)), None) => {
                stale.push(k);
                old.next();
            }
            (None, Some(&(k, v))) => {
                fresh.push((k, v));
                new.next();
            }
            (Some(&(ko, vo)), Some(&(kn, vn))) => match ko.cmp(kn) {
                Ordering::Less => {
                    stale.push(ko);
                    old.next();
                }
                Ordering::Greater => {
                    fresh.push((kn, vn));
                    new.next();
                }
                Ordering::Equal => {
                    if vo != vn {
                        stale.push(ko);
                        fresh.push((kn, vn));
                    }
                    old.next();
                    new.next();
                }
            },
        }
    }
    (stale, fresh)
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
        for ifname in endpoints {
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
        r.from_workload = BTreeMap::new();
        r
    }

    #[test]
    fn a_new_endpoint_is_set_members_a_chain_and_a_map_element() {
        let old = ruleset(&["10.0.0.1"], &["cali1"]);
        let new = ruleset(&["10.0.0.1", "10.0.0.2"], &["cali1", "cali2"]);
        let (ops, stats) = delta_ops(&old, &new).unwrap();
        let described: Vec<String> = ops.iter().map(Op::describe).collect();
        assert_eq!(
            described,
            [
                "add 1 element(s) to pol-s0-4h",
                "add chain tw-cali2",
                "add rule ClearPassMark to chain tw-cali2",
                "add rule Jump(\"pi-p\") to chain tw-cali2",
                "add rule Drop to chain tw-cali2",
                "add 1 element(s) to pol-to-wl",
            ]
        );
        assert_eq!(
            (stats.elements_added, stats.chains_added, stats.map_changes),
            (1, 1, 1)
        );
        // And back: the map element goes before its chain.
        let (ops, _) = delta_ops(&new, &old).unwrap();
        let described: Vec<String> = ops.iter().map(Op::describe).collect();
        assert_eq!(
            described,
            [
                "delete 1 element(s) from pol-s0-4h",
                "delete 1 element(s) from pol-to-wl",
                "flush chain tw-cali2",
                "delete chain tw-cali2",
            ]
        );
    }

    #[test]
    fn map_differences_walk_both_maps_in_step() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let installed = map(&[("a", "1"), ("b", "1"), ("d", "1"), ("f", "1")]);
        let desired = map(&[("b", "2"), ("c", "1"), ("d", "1"), ("g", "1")]);
        let (stale, fresh) = differences(&installed, &desired);
        assert_eq!(stale, ["a", "b", "f"]);
        let fresh: Vec<(&str, &str)> = fresh
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(fresh, [("b", "2"), ("c", "1"), ("g", "1")]);
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
        assert_eq!(delta_ops(&old, &old).unwrap().0, []);
    }
}
