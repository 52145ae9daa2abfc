//! Builds the lab's VPC in network namespaces: router, subnets, internet, hosts, and the
//! AWS-like drops.
//!
//! The VPC router forwards between subnets, and to the internet, only packets whose source and
//! destination are host addresses (AWS drops container addresses across subnets and does not
//! NAT them); within a subnet, hosts share a bridge. The per-host source/destination check drops,
//! at the host's bridge port, packets from the host whose source is not the host's address and
//! packets to it whose destination is not, unless the check is off.

use std::collections::BTreeMap;

use crate::Error;
use crate::plan::INTERNET_ADDRESS;
use crate::plan::Plan;
use crate::sh::exec_in;
use crate::sh::ip;
use crate::sh::ip_in;
use crate::sh::nft_in;
use crate::sh::sysctl_in;

/// Creates the VPC, the internet and the hosts' namespaces and links.
pub(crate) fn build(plan: &Plan) -> Result<(), Error> {
    let router = plan.router_netns.as_str();
    let internet = plan.internet_netns.as_str();
    for netns in [router, internet]
        .into_iter()
        .chain(plan.hosts.iter().map(|h| h.netns.as_str()))
    {
        ip(&["netns", "add", netns])?;
        ip_in(netns, &["link", "set", "lo", "up"])?;
    }
    sysctl_in(router, "net.ipv4.ip_forward", "1")?;
    // Bridged traffic must not be seen by the router's IP forwarding rules.
    let _ = sysctl_in(router, "net.bridge.bridge-nf-call-iptables", "0");
    for subnet in &plan.subnets {
        ip_in(router, &["link", "add", &subnet.bridge, "type", "bridge"])?;
        ip_in(router, &["link", "set", &subnet.bridge, "up"])?;
        // The router's address sits on a veth plugged into the bridge, not on the bridge
        // itself: a bridge device has no encapsulation offloads, so routing VXLAN/IPIP
        // packets out of it would segment every GSO packet in software (4x slower), which a
        // real VPC fabric never costs the hosts.
        let (gw, gw_port) = (
            format!("gw-{}", subnet.name),
            format!("gw-{}-br", subnet.name),
        );
        ip_in(
            router,
            &["link", "add", &gw, "type", "veth", "peer", "name", &gw_port],
        )?;
        ip_in(
            router,
            &["link", "set", &gw_port, "master", &subnet.bridge, "up"],
        )?;
        ip_in(
            router,
            &["addr", "add", &format!("{}/24", subnet.gateway), "dev", &gw],
        )?;
        ip_in(router, &["link", "set", &gw, "up"])?;
    }
    // The internet: one link to the router, one address to reach.
    ip_in(
        router,
        &[
            "link", "add", "inet0", "type", "veth", "peer", "name", "eth0", "netns", internet,
        ],
    )?;
    ip_in(router, &["addr", "add", "100.64.0.1/30", "dev", "inet0"])?;
    ip_in(router, &["link", "set", "inet0", "up"])?;
    ip_in(
        router,
        &[
            "route",
            "add",
            &format!("{INTERNET_ADDRESS}/32"),
            "via",
            "100.64.0.2",
        ],
    )?;
    ip_in(internet, &["addr", "add", "100.64.0.2/30", "dev", "eth0"])?;
    ip_in(
        internet,
        &[
            "addr",
            "add",
            &format!("{INTERNET_ADDRESS}/32"),
            "dev",
            "lo",
        ],
    )?;
    ip_in(internet, &["link", "set", "eth0", "up"])?;
    ip_in(internet, &["route", "add", "default", "via", "100.64.0.1"])?;
    for host in &plan.hosts {
        let subnet = plan
            .subnets
            .iter()
            .find(|s| s.name == host.subnet)
            .ok_or_else(|| Error::Invalid(format!("host {} has no subnet", host.name)))?;
        ip_in(
            router,
            &[
                "link",
                "add",
                &host.router_port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.netns,
            ],
        )?;
        ip_in(
            router,
            &[
                "link",
                "set",
                &host.router_port,
                "master",
                &subnet.bridge,
                "up",
            ],
        )?;
        ip_in(
            &host.netns,
            &[
                "addr",
                "add",
                &format!("{}/24", host.address),
                "dev",
                "eth0",
            ],
        )?;
        ip_in(&host.netns, &["link", "set", "eth0", "up"])?;
        ip_in(
            &host.netns,
            &["route", "add", "default", "via", &host.gateway.to_string()],
        )?;
        sysctl_in(&host.netns, "net.ipv4.ip_forward", "1")?;
    }
    nft_in(router, &router_rules(plan))?;
    let checks = plan
        .hosts
        .iter()
        .map(|h| (h.name.clone(), plan.spec.src_dst_check))
        .collect();
    set_src_dst_checks(plan, &checks)
}

/// The router's forwarding filter: only host addresses cross subnets or reach the internet.
fn router_rules(plan: &Plan) -> String {
    let hosts: Vec<String> = plan.hosts.iter().map(|h| h.address.to_string()).collect();
    format!(
        "table inet lab {{\n\
         \x20 set hosts {{ type ipv4_addr; elements = {{ {} }} }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority 0; policy drop;\n\
         \x20   ip saddr @hosts ip daddr @hosts accept\n\
         \x20   oifname \"inet0\" ip saddr @hosts accept\n\
         \x20   iifname \"inet0\" ip daddr @hosts accept\n\
         \x20   counter comment \"vpc-drop\"\n\
         \x20 }}\n\
         }}\n",
        hosts.join(", ")
    )
}

/// Sets each host's emulated source/destination check (true = on, foreign addresses dropped).
pub(crate) fn set_src_dst_checks(
    plan: &Plan,
    checks: &BTreeMap<String, bool>,
) -> Result<(), Error> {
    let mut rules = String::new();
    for host in &plan.hosts {
        if checks.get(&host.name).copied().unwrap_or(false) {
            let (port, address) = (&host.router_port, host.address);
            rules.push_str(&format!(
                "    iifname \"{port}\" ether type ip ip saddr != {address} counter drop comment \"src-dst-check {port}\"\n\
                 \x20   oifname \"{port}\" ether type ip ip daddr != {address} counter drop comment \"src-dst-check {port}\"\n"
            ));
        }
    }
    // One transaction: replace the whole table.
    let script = format!(
        "table bridge srcdst {{}}\n\
         delete table bridge srcdst\n\
         table bridge srcdst {{\n\
         \x20 chain forward {{ type filter hook forward priority 0; policy accept;\n{rules}  }}\n\
         \x20 chain input {{ type filter hook input priority 0; policy accept;\n{rules}  }}\n\
         \x20 chain output {{ type filter hook output priority 0; policy accept;\n{rules}  }}\n\
         }}\n"
    );
    nft_in(&plan.router_netns, &script)
}

/// Creates a workload's namespace (as a container runtime would, before calling CNI).
pub(crate) fn create_workload_netns(netns: &str) -> Result<(), Error> {
    ip(&["netns", "add", netns])?;
    ip_in(netns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Kills every process inside `netns` and deletes it. Missing namespaces are fine.
pub(crate) fn delete_netns(netns: &str) -> Result<(), Error> {
    if let Ok(pids) = ip(&["netns", "pids", netns]) {
        for pid in pids.split_whitespace() {
            let _ = crate::sh::run("kill", &["-TERM", pid]);
        }
    }
    match ip(&["netns", "del", netns]) {
        Ok(_) => Ok(()),
        Err(_) if !std::path::Path::new("/run/netns").join(netns).exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Pings `target` once from `netns`, waiting at most one second.
pub(crate) fn ping(netns: &str, target: &str) -> bool {
    exec_in(netns, &["ping", "-c", "1", "-W", "1", "-q", target]).is_ok()
}

/// Pings `target` once from `netns`, waiting at most 100 ms.
pub(crate) fn ping_once_fast(netns: &str, target: &str) -> bool {
    exec_in(netns, &["ping", "-c", "1", "-W", "0.1", "-q", target]).is_ok()
}
