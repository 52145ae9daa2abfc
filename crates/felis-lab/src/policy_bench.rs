//! `felis lab bench --policy`: what enforcing a large policy set costs the pods, as ratios
//! measured in one run.
//!
//! Between two pods in one subnet (h1-w1 → the first workload of another host in h1's subnet):
//! one-stream TCP throughput (iperf3) and the rate of new TCP connections (connect, then reset),
//! first without any policy, then with `--rules` rules over `--endpoints` endpoints, then again
//! without (the baseline is the mean of both). The generated set:
//!
//! - `endpoints` WorkloadEndpoints in namespace `felis-bench`, spread over the two hosts
//!   (datastore objects with interfaces that do not exist: the agents compile and program them
//!   like any other), each selected by its own policy of 10 ingress rules;
//! - 10 more policies of 10 rules each selecting the measured pods (namespace `default`); the
//!   rule that allows the measured traffic is the last rule of the last policy, so every new
//!   connection walks 100 rules.
//!
//! Per-packet cost must not grow with the number of rules in the cluster (dispatch by
//! interface, selectors as sets), so the target is ≥ 0.97 on both figures.

use std::io::Read as _;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

use crate::Error;
use crate::State;
use crate::bench::median;

/// The port the connection-rate listener uses in the server pod.
const CONN_PORT: u16 = 5202;
/// Rules per generated policy.
const RULES_PER_POLICY: usize = 10;
/// Policies selecting the measured pods.
const MEASURED_POLICIES: usize = 10;

/// The result of `felis lab bench --policy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyBenchReport {
    /// The measured path.
    pub path: String,
    /// Rules in the generated policy set.
    pub rules: usize,
    /// Generated endpoints.
    pub endpoints: usize,
    /// Generated policies.
    pub policies: usize,
    /// Median throughput without policy, bits per second.
    pub baseline_throughput_bps: f64,
    /// Median throughput with the policy set.
    pub policy_throughput_bps: f64,
    /// `policy ÷ baseline` throughput.
    pub throughput_ratio: f64,
    /// Median new connections per second without policy.
    pub baseline_connections_per_second: f64,
    /// Median new connections per second with the policy set.
    pub policy_connections_per_second: f64,
    /// `policy ÷ baseline` connection rate.
    pub connection_rate_ratio: f64,
    /// From `felis apply` of the whole set returning until both hosts enforce it, seconds.
    pub program_seconds: f64,
}

struct Pod {
    label: String,
    netns: String,
    address: Ipv4Addr,
}

/// Runs the benchmark on a lab with at least two hosts in h1's subnet, each with a workload.
pub fn run(
    state: &State,
    felis: &Path,
    seconds: u64,
    rounds: usize,
    rules: usize,
    endpoints: usize,
) -> Result<PolicyBenchReport, Error> {
    let (client, server, server_host) = pair(state)?;
    let policies = rules.div_ceil(RULES_PER_POLICY).max(MEASURED_POLICIES + 1);
    let manifest = manifest(policies, endpoints, &["h1", server_host.as_str()]);
    let measure = |tp: &mut Vec<f64>, cr: &mut Vec<f64>| -> Result<(), Error> {
        for _ in 0..rounds.max(1) {
            tp.push(crate::bench::iperf_between(
                &client.netns,
                &server.netns,
                &server.address.to_string(),
                &format!("{} -> {}", client.label, server.label),
                seconds,
            )?);
            cr.push(connection_rate(&client, &server, seconds)?);
        }
        Ok(())
    };
    let (mut base_tp, mut base_cr) = (Vec::new(), Vec::new());
    measure(&mut base_tp, &mut base_cr)?;

    // A datastore transaction takes at most 128 operations: apply in chunks.
    let chunks: Vec<String> = manifest
        .chunks(100)
        .map(|docs| docs.join("---\n"))
        .collect();
    let each = |verb: &str| -> Result<(), Error> {
        for chunk in &chunks {
            crate::agents::felis(state, felis, &[verb, "-f", "-"], chunk)?;
        }
        Ok(())
    };
    #[allow(clippy::disallowed_methods)] // benchmarks read the real clock
    let start = Instant::now();
    each("apply")?;
    wait_synced(state, felis, &["h1", server_host.as_str()])?;
    let program_seconds = start.elapsed().as_secs_f64();
    let (mut pol_tp, mut pol_cr) = (Vec::new(), Vec::new());
    let measured = measure(&mut pol_tp, &mut pol_cr);
    let removed =
        each("delete").and_then(|()| wait_synced(state, felis, &["h1", server_host.as_str()]));
    measured?;
    removed?;
    measure(&mut base_tp, &mut base_cr)?;

    let (b_tp, p_tp) = (median(&mut base_tp), median(&mut pol_tp));
    let (b_cr, p_cr) = (median(&mut base_cr), median(&mut pol_cr));
    Ok(PolicyBenchReport {
        path: format!("{} -> {}", client.label, server.label),
        rules: policies * RULES_PER_POLICY,
        endpoints,
        policies,
        baseline_throughput_bps: b_tp,
        policy_throughput_bps: p_tp,
        throughput_ratio: if b_tp > 0.0 { p_tp / b_tp } else { 0.0 },
        baseline_connections_per_second: b_cr,
        policy_connections_per_second: p_cr,
        connection_rate_ratio: if b_cr > 0.0 { p_cr / b_cr } else { 0.0 },
        program_seconds,
    })
}

/// h1-w1 and the first workload of another host in h1's subnet.
fn pair(state: &State) -> Result<(Pod, Pod, String), Error> {
    let needs = || {
        Error::Invalid(
            "lab bench --policy needs two hosts in one subnet with a workload each (e.g. `felis lab up --hosts 2 --subnets 1 --workloads 1`)"
                .into(),
        )
    };
    let h1 = state.plan.host("h1").ok_or_else(needs)?;
    let pod = |name: &str| -> Option<Pod> {
        let w = state.plan.workloads.iter().find(|w| w.name == name)?;
        let std::net::IpAddr::V4(address) = *state.addresses.get(name)? else {
            return None;
        };
        Some(Pod {
            label: name.to_string(),
            netns: w.netns.clone(),
            address,
        })
    };
    let client = pod("h1-w1").ok_or_else(needs)?;
    let other = state
        .plan
        .hosts
        .iter()
        .find(|h| h.name != "h1" && h.subnet == h1.subnet)
        .ok_or_else(needs)?;
    let server = pod(&format!("{}-w1", other.name)).ok_or_else(needs)?;
    Ok((client, server, other.name.clone()))
}

/// The generated resources, one YAML document each.
fn manifest(policies: usize, endpoints: usize, hosts: &[&str]) -> Vec<String> {
    let mut docs = vec![
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: felis-bench, labels: {bench: 'true'}}\n"
            .to_string(),
    ];
    for i in 0..endpoints {
        let host = hosts[i % hosts.len()];
        let (a, b) = ((i / 250) % 250, i % 250 + 1);
        docs.push(format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {{name: {host}-k8s-bench--{i}-eth0, namespace: felis-bench, labels: {{app: bench-{i}, group: g{g}}}}}\nspec: {{orchestrator: k8s, node: {host}, pod: bench-{i}, endpoint: eth0, interfaceName: calibench{i}, ipNetworks: [10.99.{a}.{b}/32], profiles: [kns.felis-bench]}}\n",
            g = i % 10
        ));
    }
    // Policies on the generated endpoints: 10 rules each, none matching the measured traffic.
    for p in 0..policies - MEASURED_POLICIES {
        let mut rules = String::new();
        for r in 0..RULES_PER_POLICY {
            rules.push_str(&format!(
                "  - action: Allow\n    protocol: TCP\n    source: {{selector: \"group == 'g{}'\"}}\n    destination: {{ports: [{}]}}\n",
                (p + r) % 10,
                10_000 + r
            ));
        }
        docs.push(format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: bench-{p}, namespace: felis-bench}}\nspec:\n  selector: \"app == 'bench-{}'\"\n  types: [Ingress]\n  ingress:\n{rules}",
            p % endpoints.max(1)
        ));
    }
    // Policies on the measured pods: the allowing rule is the last of the last policy.
    for p in 0..MEASURED_POLICIES {
        let mut rules = String::new();
        for r in 0..RULES_PER_POLICY {
            let last = p + 1 == MEASURED_POLICIES && r + 1 == RULES_PER_POLICY;
            if last {
                rules.push_str(&format!(
                    "  - action: Allow\n    protocol: TCP\n    source: {{selector: \"projectcalico.org/namespace == 'default'\"}}\n    destination: {{ports: [5201, {CONN_PORT}]}}\n"
                ));
            } else {
                rules.push_str(&format!(
                    "  - action: Allow\n    protocol: TCP\n    source: {{selector: \"group == 'g{}'\"}}\n    destination: {{ports: [{}]}}\n",
                    r % 10,
                    20_000 + p * RULES_PER_POLICY + r
                ));
            }
        }
        docs.push(format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: bench-measured-{p}, namespace: default}}\nspec:\n  order: {}\n  selector: all()\n  types: [Ingress]\n  ingress:\n{rules}",
            100 + p
        ));
    }
    docs
}

/// Waits until the agents on `hosts` have programmed the datastore as it is now (their
/// `synced-revision` reaches the revision of a marker written last).
fn wait_synced(state: &State, felis: &Path, hosts: &[&str]) -> Result<(), Error> {
    let revision = crate::mark_revision(state, felis, "felis-bench-marker")?;
    for host in hosts {
        crate::wait_synced(
            &state.plan.spec.name,
            host,
            revision,
            Duration::from_secs(300),
        )?;
    }
    let _ = crate::agents::felis(
        state,
        felis,
        &["delete", "globalnetworkset", "felis-bench-marker"],
        "",
    );
    Ok(())
}

/// New TCP connections per second from `client` to `server` for `seconds`: connect, then close
/// with a reset (no TIME_WAIT, so ports never run out).
fn connection_rate(client: &Pod, server: &Pod, seconds: u64) -> Result<f64, Error> {
    let open = |netns: &str| {
        felis_netlink::Netns::open(Path::new("/run/netns").join(netns))
            .map_err(|e| Error::Invalid(format!("opening {netns}: {e}")))
    };
    let server_ns = open(&server.netns)?;
    let client_ns = open(&client.netns)?;
    let listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, CONN_PORT));
    let listener = server_ns
        .run(move || TcpListener::bind(listen))
        .map_err(|e| Error::Invalid(format!("listening in {}: {e}", server.netns)))?
        .map_err(|source| Error::Spawn {
            command: format!("a listener on port {CONN_PORT} in {}", server.netns),
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| Error::Spawn {
            command: "a non-blocking listener".into(),
            source,
        })?;
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                        let mut buf = [0u8; 1];
                        let _ = stream.read(&mut buf);
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        })
    };
    let target = SocketAddr::from((server.address, CONN_PORT));
    let count = client_ns
        .run(move || {
            #[allow(clippy::disallowed_methods)] // benchmarks read the real clock
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < Duration::from_secs(seconds) {
                let Ok(socket) =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                else {
                    continue;
                };
                if socket
                    .connect_timeout(&target.into(), Duration::from_secs(1))
                    .is_ok()
                {
                    n += 1;
                }
                let _ = socket.set_linger(Some(Duration::ZERO));
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
        .map_err(|e| Error::Invalid(format!("connecting from {}: {e}", client.netns)));
    stop.store(true, Ordering::SeqCst);
    let _ = acceptor.join();
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_has_the_asked_for_rules_and_loads() {
        let text = manifest(1000, 1000, &["h1", "h3"]).join("---\n");
        let docs = felis_api::load::parse_documents(&text, None).expect("loads");
        let policies = docs
            .iter()
            .filter(|d| matches!(d, felis_api::Resource::NetworkPolicy(_)))
            .count();
        let endpoints = docs
            .iter()
            .filter(|d| matches!(d, felis_api::Resource::WorkloadEndpoint(_)))
            .count();
        assert_eq!((policies, endpoints), (1000, 1000));
        assert_eq!(text.matches("  - action: Allow").count(), 10_000);
    }
}
