//! Per-peer import and export policy: Calico's `BGPFilter` rules. Pure.
//!
//! A peer's filters apply in the order its `BGPPeer` names them, and each filter's rules in
//! their order; the first rule that matches a route decides (Accept or Reject). A route no rule
//! matches gets the normal behaviour: accepted on import, advertised on export as the BGP rules
//! allow (Calico: "the default action is Accept"). Concatenating the rules of all filters in
//! order therefore gives the same answer as evaluating the filters one after the other, which is
//! what [`Policy`] holds.
//!
//! A rule matches when all its conditions hold:
//! - `cidr` + `matchOperator`: `In` (the route lies inside the CIDR), `NotIn`, `Equal` (the
//!   route is the CIDR), `NotEqual`;
//! - `prefixLength {min, max}`: the route's length lies in the range; `min` defaults to the
//!   CIDR's length (0 without one), `max` to the family's maximum (BIRD's `net ~ cidr{min,max}`,
//!   which Calico renders; with `NotIn` the whole pattern is negated, as in BIRD);
//! - `source: RemotePeers`: the route was learned from a BGP peer (on import every route is);
//! - `interface`: the route is a route of a local interface. Felis exports no interface routes
//!   (only the blocks and service ranges it originates), so such a rule never matches.
//!
//! Accepting a route never overrides the protocol's own rules (iBGP split horizon, route
//! reflection, NO_EXPORT): as with BIRD, a filter chooses among the routes BGP may send.

use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FilterAction {
    /// Accept the route (import it, or advertise it).
    Accept,
    /// Reject the route (do not import it, or do not advertise it).
    Reject,
}

/// How a rule compares a route with its CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MatchOperator {
    /// The route is the CIDR.
    Equal,
    /// The route is not the CIDR.
    NotEqual,
    /// The route lies inside the CIDR (and in the length range).
    In,
    /// The route does not lie inside the CIDR (or is out of the length range).
    NotIn,
}

/// Where a route comes from, for `source: RemotePeers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RouteOrigin {
    /// Originated by this speaker (a block, a service range).
    Local,
    /// Learned from a BGP peer.
    RemotePeer,
}

/// One rule of a filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FilterRule {
    /// `cidr` and `matchOperator` (set together).
    pub prefix: Option<(MatchOperator, IpNet)>,
    /// `prefixLength.min`.
    pub min_length: Option<u8>,
    /// `prefixLength.max`.
    pub max_length: Option<u8>,
    /// `source: RemotePeers`: only routes learned from peers.
    pub remote_peers_only: bool,
    /// `interface`: only routes of local interfaces matching this glob (never, in Felis).
    pub interface: Option<String>,
    /// What a match does.
    pub action: FilterAction,
}

impl FilterRule {
    /// A rule with no condition: it matches every route of its family.
    pub fn any(action: FilterAction) -> FilterRule {
        FilterRule {
            prefix: None,
            min_length: None,
            max_length: None,
            remote_peers_only: false,
            interface: None,
            action,
        }
    }

    /// A rule on a CIDR.
    pub fn cidr(operator: MatchOperator, cidr: IpNet, action: FilterAction) -> FilterRule {
        FilterRule {
            prefix: Some((operator, cidr)),
            ..FilterRule::any(action)
        }
    }

    /// Whether the rule matches `prefix` from `origin`.
    pub fn matches(&self, prefix: &IpNet, origin: RouteOrigin) -> bool {
        if self.interface.is_some() {
            return false;
        }
        if self.remote_peers_only && origin != RouteOrigin::RemotePeer {
            return false;
        }
        let family_max = match prefix {
            IpNet::V4(_) => 32,
            IpNet::V6(_) => 128,
        };
        let len = prefix.prefix_len();
        let in_range = |base: u8| {
            let min = self.min_length.unwrap_or(base);
            let max = self.max_length.unwrap_or(family_max);
            min <= len && len <= max
        };
        match self.prefix {
            None => in_range(0),
            Some((operator, cidr)) => {
                let cidr = cidr.trunc();
                let same_family = matches!(
                    (prefix, cidr),
                    (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
                );
                let inside = same_family && cidr.contains(prefix) && in_range(cidr.prefix_len());
                let equal = *prefix == cidr && in_range(cidr.prefix_len());
                match operator {
                    MatchOperator::In => inside,
                    MatchOperator::NotIn => same_family && !inside,
                    MatchOperator::Equal => equal,
                    MatchOperator::NotEqual => same_family && !equal,
                }
            }
        }
    }
}

/// The rules of one direction (import or export), per family, all filters concatenated in
/// order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    /// Rules for IPv4 routes (`importV4` / `exportV4`).
    pub v4: Vec<FilterRule>,
    /// Rules for IPv6 routes (`importV6` / `exportV6`).
    pub v6: Vec<FilterRule>,
}

impl Policy {
    /// The action of the first rule that matches, if any.
    pub fn evaluate(&self, prefix: &IpNet, origin: RouteOrigin) -> Option<FilterAction> {
        let rules = match prefix {
            IpNet::V4(_) => &self.v4,
            IpNet::V6(_) => &self.v6,
        };
        rules
            .iter()
            .find(|r| r.matches(prefix, origin))
            .map(|r| r.action)
    }

    /// Whether the route passes: the first matching rule accepts it, or none matches.
    pub fn accepts(&self, prefix: &IpNet, origin: RouteOrigin) -> bool {
        self.evaluate(prefix, origin) != Some(FilterAction::Reject)
    }

    /// Whether there are no rules (everything passes).
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// The import and export policy of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerPolicy {
    /// Applied to routes the peer sends us.
    pub import: Policy,
    /// Applied to routes we would advertise to the peer.
    pub export: Policy,
}

impl PeerPolicy {
    /// Whether a route the peer announced is imported.
    pub fn imports(&self, prefix: &IpNet) -> bool {
        self.import.accepts(prefix, RouteOrigin::RemotePeer)
    }

    /// Whether a route is advertised to the peer (as far as the filters go).
    pub fn exports(&self, prefix: &IpNet, origin: RouteOrigin) -> bool {
        self.export.accepts(prefix, origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    use FilterAction::Accept;
    use FilterAction::Reject;
    use MatchOperator::Equal;
    use MatchOperator::In;
    use MatchOperator::NotEqual;
    use MatchOperator::NotIn;
    use RouteOrigin::Local;
    use RouteOrigin::RemotePeer;

    #[test]
    fn in_matches_the_cidr_and_everything_inside_it() {
        let rule = FilterRule::cidr(In, net("10.0.0.0/16"), Reject);
        assert!(rule.matches(&net("10.0.0.0/16"), RemotePeer));
        assert!(rule.matches(&net("10.0.5.0/24"), RemotePeer));
        assert!(rule.matches(&net("10.0.5.7/32"), Local));
        assert!(!rule.matches(&net("10.0.0.0/8"), RemotePeer));
        assert!(!rule.matches(&net("10.1.0.0/24"), RemotePeer));
        assert!(!rule.matches(&net("fd00::/64"), RemotePeer));
    }

    #[test]
    fn not_in_is_the_complement_of_in_within_the_family() {
        let rule = FilterRule::cidr(NotIn, net("10.0.0.0/16"), Reject);
        assert!(!rule.matches(&net("10.0.5.0/24"), RemotePeer));
        assert!(rule.matches(&net("10.1.0.0/24"), RemotePeer));
        assert!(rule.matches(&net("10.0.0.0/8"), RemotePeer));
        assert!(!rule.matches(&net("fd00::/64"), RemotePeer));
    }

    #[test]
    fn equal_and_not_equal_compare_the_whole_prefix() {
        let eq = FilterRule::cidr(Equal, net("10.0.0.0/16"), Accept);
        assert!(eq.matches(&net("10.0.0.0/16"), RemotePeer));
        assert!(!eq.matches(&net("10.0.0.0/17"), RemotePeer));
        assert!(!eq.matches(&net("10.0.0.0/15"), RemotePeer));
        let ne = FilterRule::cidr(NotEqual, net("10.0.0.0/16"), Accept);
        assert!(!ne.matches(&net("10.0.0.0/16"), RemotePeer));
        assert!(ne.matches(&net("10.0.0.0/17"), RemotePeer));
        // A CIDR written with host bits compares as its network.
        let host_bits = FilterRule::cidr(Equal, net("10.0.0.9/16"), Accept);
        assert!(host_bits.matches(&net("10.0.0.0/16"), RemotePeer));
    }

    #[test]
    fn prefix_length_narrows_in_to_a_range_of_lengths() {
        // Calico's sample: accept 55.0.0.0/16 routes of length 30 or more.
        let rule = FilterRule {
            min_length: Some(30),
            ..FilterRule::cidr(In, net("55.0.0.0/16"), Accept)
        };
        assert!(rule.matches(&net("55.0.1.0/30"), RemotePeer));
        assert!(rule.matches(&net("55.0.1.1/32"), RemotePeer));
        assert!(!rule.matches(&net("55.0.1.0/24"), RemotePeer));
        assert!(!rule.matches(&net("55.0.0.0/16"), RemotePeer));
        let capped = FilterRule {
            max_length: Some(24),
            ..FilterRule::cidr(In, net("55.0.0.0/16"), Accept)
        };
        assert!(capped.matches(&net("55.0.0.0/16"), RemotePeer));
        assert!(capped.matches(&net("55.0.1.0/24"), RemotePeer));
        assert!(!capped.matches(&net("55.0.1.0/26"), RemotePeer));
        // NotIn negates the whole pattern, length included.
        let not_in = FilterRule {
            max_length: Some(24),
            ..FilterRule::cidr(NotIn, net("55.0.0.0/16"), Reject)
        };
        assert!(not_in.matches(&net("55.0.1.0/26"), RemotePeer));
        assert!(!not_in.matches(&net("55.0.1.0/24"), RemotePeer));
    }

    #[test]
    fn prefix_length_without_cidr_matches_lengths_of_the_family() {
        let rule = FilterRule {
            min_length: Some(25),
            ..FilterRule::any(Reject)
        };
        assert!(rule.matches(&net("10.0.0.0/26"), RemotePeer));
        assert!(!rule.matches(&net("10.0.0.0/24"), RemotePeer));
    }

    #[test]
    fn remote_peers_source_matches_only_learned_routes() {
        let rule = FilterRule {
            remote_peers_only: true,
            ..FilterRule::any(Reject)
        };
        assert!(rule.matches(&net("10.0.0.0/24"), RemotePeer));
        assert!(!rule.matches(&net("10.0.0.0/24"), Local));
    }

    #[test]
    fn interface_rules_never_match_because_felis_exports_no_interface_routes() {
        let rule = FilterRule {
            interface: Some("*.calico".into()),
            ..FilterRule::any(Reject)
        };
        assert!(!rule.matches(&net("10.0.0.0/24"), Local));
        assert!(!rule.matches(&net("10.0.0.0/24"), RemotePeer));
    }

    #[test]
    fn first_matching_rule_decides_and_no_match_accepts() {
        let policy = Policy {
            v4: vec![
                FilterRule::cidr(In, net("10.0.1.0/24"), Accept),
                FilterRule::cidr(In, net("10.0.0.0/16"), Reject),
            ],
            v6: vec![FilterRule::any(Reject)],
        };
        assert_eq!(
            policy.evaluate(&net("10.0.1.0/26"), RemotePeer),
            Some(Accept)
        );
        assert!(policy.accepts(&net("10.0.1.0/26"), RemotePeer));
        assert_eq!(
            policy.evaluate(&net("10.0.2.0/26"), RemotePeer),
            Some(Reject)
        );
        assert!(!policy.accepts(&net("10.0.2.0/26"), RemotePeer));
        assert_eq!(policy.evaluate(&net("10.9.0.0/26"), RemotePeer), None);
        assert!(policy.accepts(&net("10.9.0.0/26"), RemotePeer));
        // The IPv4 catch-all of another family does not apply: v6 rules for v6 routes only.
        assert!(!policy.accepts(&net("fd00::/64"), RemotePeer));
        assert!(Policy::default().accepts(&net("fd00::/64"), RemotePeer));
    }

    #[test]
    fn peer_policy_imports_as_remote_routes_and_exports_by_origin() {
        let policy = PeerPolicy {
            import: Policy {
                v4: vec![FilterRule::cidr(Equal, net("10.200.2.0/24"), Reject)],
                v6: vec![],
            },
            export: Policy {
                v4: vec![FilterRule {
                    remote_peers_only: true,
                    ..FilterRule::any(Reject)
                }],
                v6: vec![],
            },
        };
        assert!(!policy.imports(&net("10.200.2.0/24")));
        assert!(policy.imports(&net("10.200.1.0/24")));
        assert!(policy.exports(&net("10.65.0.0/26"), Local));
        assert!(!policy.exports(&net("10.200.1.0/24"), RemotePeer));
    }
}
