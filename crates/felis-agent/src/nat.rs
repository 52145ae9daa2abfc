//! `natOutgoing` in nftables: traffic from natOutgoing pools to destinations outside every pool
//! is masqueraded, as Calico's `cali-nat-outgoing` does with its `masq-ipam-pools` and
//! `all-ipam-pools` sets.
//!
//! The rules live in the agent's table `inet felis`; this module owns only its sets and chain
//! there, and rewrites them in one transaction.

use ipnet::IpNet;

use crate::calc::NatSets;

/// The agent's nftables table.
pub const TABLE: &str = "felis";

/// The nft script that makes the NAT part of the table match `nat`.
pub fn render(nat: &NatSets) -> String {
    let mut script = format!(
        "table inet {TABLE} {{\n\
         \x20 set masq-ipam-pools-v4 {{ type ipv4_addr; flags interval; }}\n\
         \x20 set all-ipam-pools-v4 {{ type ipv4_addr; flags interval; }}\n\
         \x20 set masq-ipam-pools-v6 {{ type ipv6_addr; flags interval; }}\n\
         \x20 set all-ipam-pools-v6 {{ type ipv6_addr; flags interval; }}\n\
         \x20 chain nat-postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         }}\n\
         flush chain inet {TABLE} nat-postrouting\n"
    );
    for (set, nets) in [
        ("masq-ipam-pools-v4", v4(&nat.masquerade)),
        ("all-ipam-pools-v4", v4(&nat.all_pools)),
        ("masq-ipam-pools-v6", v6(&nat.masquerade)),
        ("all-ipam-pools-v6", v6(&nat.all_pools)),
    ] {
        script.push_str(&format!("flush set inet {TABLE} {set}\n"));
        if !nets.is_empty() {
            script.push_str(&format!(
                "add element inet {TABLE} {set} {{ {} }}\n",
                nets.join(", ")
            ));
        }
    }
    script.push_str(&format!(
        "add rule inet {TABLE} nat-postrouting ip saddr @masq-ipam-pools-v4 ip daddr != @all-ipam-pools-v4 masquerade fully-random\n\
         add rule inet {TABLE} nat-postrouting ip6 saddr @masq-ipam-pools-v6 ip6 daddr != @all-ipam-pools-v6 masquerade fully-random\n"
    ));
    script
}

fn v4(nets: &std::collections::BTreeSet<IpNet>) -> Vec<String> {
    nets.iter()
        .filter(|n| matches!(n, IpNet::V4(_)))
        .map(|n| n.trunc().to_string())
        .collect()
}

fn v6(nets: &std::collections::BTreeSet<IpNet>) -> Vec<String> {
    nets.iter()
        .filter(|n| matches!(n, IpNet::V6(_)))
        .map(|n| n.trunc().to_string())
        .collect()
}

/// Applies an nft script in one transaction (`nft -f -`) in the caller's namespace.
pub fn apply(script: &str) -> Result<(), felis_nft::Error> {
    felis_nft::nft::apply_script(script)
}

/// Removes the agent's table (for tests and `--cleanup`). A missing table is fine.
pub fn remove_table() -> Result<(), felis_nft::Error> {
    apply(&format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_masquerades_natoutgoing_pools_to_outside_all_pools() {
        let nat = NatSets {
            masquerade: ["10.244.0.0/16".parse().unwrap()].into(),
            all_pools: [
                "10.244.0.0/16".parse().unwrap(),
                "10.96.0.0/20".parse().unwrap(),
            ]
            .into(),
        };
        let script = render(&nat);
        assert!(script.contains("add element inet felis masq-ipam-pools-v4 { 10.244.0.0/16 }"));
        assert!(script.contains("all-ipam-pools-v4 { 10.96.0.0/20, 10.244.0.0/16 }"));
        assert!(!script.contains("add element inet felis masq-ipam-pools-v6"));
        assert!(script.contains("masquerade fully-random"));
    }
}
