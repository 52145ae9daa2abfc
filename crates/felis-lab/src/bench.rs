//! `felis lab bench`: what the pod network costs, as ratios measured in one run.
//!
//! Paths, each measured with one iperf3 TCP stream and with ping, in interleaved rounds (the
//! median of each is kept, so that a burst of load elsewhere on the machine hits every path):
//!
//! ```text
//!  host  h1 -> h3        same subnet, the baseline for routed pods
//!  pod   h1-w1 -> h3-w1  same subnet: routed, unencapsulated
//!  host  h1 -> h2        across subnets (through the VPC router), the baseline for VXLAN
//!  pod   h1-w1 -> h2-w1  across subnets: VXLAN (or IPIP, in an IPIP lab)
//! ```
//!
//! In an IPIP lab (`--pool-mode ipip-cross-subnet`) one run gives IPIP against routed pods
//! and hosts: `ipip_vs_routed` is the IPIP pod/host ratio across subnets over the routed
//! pod/host ratio in one subnet, each path against its own host baseline. With `--pool-mode
//! ipip` the same-subnet pods are IPIP too, so there is no routed figure.
//!
//! And the time from a CNI ADD on one host until the new workload answers a workload on
//! another host.

use std::path::Path;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

use crate::Error;
use crate::PoolMode;
use crate::State;

/// One measured path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathResult {
    /// `host` or `pod`.
    pub kind: String,
    /// e.g. `h1 -> h3`.
    pub path: String,
    /// What the path crosses.
    pub via: String,
    /// Median single-stream TCP throughput, bits per second.
    pub throughput_bps: f64,
    /// Median of the average ping round-trip times, milliseconds.
    pub rtt_ms: f64,
}

/// The result of `felis lab bench`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Every path.
    pub paths: Vec<PathResult>,
    /// Routed pod throughput ÷ host throughput, same subnet.
    pub routed_ratio: Option<f64>,
    /// VXLAN pod throughput ÷ host throughput, across subnets.
    pub vxlan_ratio: Option<f64>,
    /// Routed pod RTT ÷ host RTT, same subnet (latency; lower is better).
    pub routed_rtt_ratio: Option<f64>,
    /// VXLAN pod RTT ÷ host RTT, across subnets.
    pub vxlan_rtt_ratio: Option<f64>,
    /// IPIP pod throughput ÷ host throughput, across subnets (IPIP labs).
    #[serde(default)]
    pub ipip_ratio: Option<f64>,
    /// IPIP pod RTT ÷ host RTT, across subnets.
    #[serde(default)]
    pub ipip_rtt_ratio: Option<f64>,
    /// `ipip_ratio ÷ routed_ratio`: the share of routed pods' throughput IPIP keeps.
    #[serde(default)]
    pub ipip_vs_routed: Option<f64>,
    /// `ipip_rtt_ratio ÷ routed_rtt_ratio` (lower is better).
    #[serde(default)]
    pub ipip_vs_routed_rtt: Option<f64>,
    /// CNI ADD → reachable from a workload on another host: p50, milliseconds.
    pub add_to_reachable_p50_ms: Option<f64>,
    /// The same, p99.
    pub add_to_reachable_p99_ms: Option<f64>,
    /// How many workloads were attached for that measurement.
    pub add_to_reachable_samples: usize,
}

struct Endpoint {
    label: String,
    netns: String,
    address: String,
}

/// Runs the benchmark on a lab that has hosts h1, h2 (another subnet) and h3 (h1's subnet),
/// each with at least one workload.
pub fn run(
    state: &State,
    felis: &Path,
    seconds: u64,
    rounds: usize,
    attach: usize,
) -> Result<BenchReport, Error> {
    let host = |name: &str| -> Result<Endpoint, Error> {
        let h = state.plan.host(name).ok_or_else(needs)?;
        Ok(Endpoint {
            label: name.into(),
            netns: h.netns.clone(),
            address: h.address.to_string(),
        })
    };
    let pod = |name: &str| -> Result<Endpoint, Error> {
        let w = state
            .plan
            .workloads
            .iter()
            .find(|w| w.name == name)
            .ok_or_else(needs)?;
        let address = state.addresses.get(name).ok_or_else(needs)?;
        Ok(Endpoint {
            label: name.into(),
            netns: w.netns.clone(),
            address: address.to_string(),
        })
    };
    let same_subnet = |a: &str, b: &str| {
        state.plan.host(a).map(|h| &h.subnet) == state.plan.host(b).map(|h| &h.subnet)
    };
    if !same_subnet("h1", "h3") || same_subnet("h1", "h2") {
        return Err(needs());
    }
    let mode = state.plan.spec.pool_mode;
    let ipip = matches!(mode, PoolMode::Ipip | PoolMode::IpipCrossSubnet);
    let pairs = [
        ("host", host("h1")?, host("h3")?, "same subnet"),
        (
            "pod",
            pod("h1-w1")?,
            pod("h3-w1")?,
            match mode {
                PoolMode::Ipip => "same subnet, IPIP",
                _ => "same subnet, routed",
            },
        ),
        ("host", host("h1")?, host("h2")?, "across subnets"),
        (
            "pod",
            pod("h1-w1")?,
            pod("h2-w1")?,
            if ipip {
                "across subnets, IPIP"
            } else {
                "across subnets, encapsulated"
            },
        ),
    ];
    let mut throughput: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
    let mut rtt: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
    for _ in 0..rounds.max(1) {
        for (i, (_, from, to, _)) in pairs.iter().enumerate() {
            throughput[i].push(iperf(from, to, seconds)?);
            rtt[i].push(ping_rtt(from, to)?);
        }
    }
    let paths: Vec<PathResult> = pairs
        .iter()
        .enumerate()
        .map(|(i, (kind, from, to, via))| PathResult {
            kind: kind.to_string(),
            path: format!("{} -> {}", from.label, to.label),
            via: via.to_string(),
            throughput_bps: median(&mut throughput[i]),
            rtt_ms: median(&mut rtt[i]),
        })
        .collect();
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    // With `ipipMode: Always` the same-subnet pods are IPIP too: no routed figure.
    let routed = mode != PoolMode::Ipip;
    let routed_ratio = ratio(paths[1].throughput_bps, paths[0].throughput_bps).filter(|_| routed);
    let routed_rtt_ratio = ratio(paths[1].rtt_ms, paths[0].rtt_ms).filter(|_| routed);
    let encapsulated = ratio(paths[3].throughput_bps, paths[2].throughput_bps);
    let encapsulated_rtt = ratio(paths[3].rtt_ms, paths[2].rtt_ms);
    let (ipip_ratio, ipip_rtt_ratio) = if ipip {
        (encapsulated, encapsulated_rtt)
    } else {
        (None, None)
    };
    let mut report = BenchReport {
        routed_ratio,
        vxlan_ratio: encapsulated.filter(|_| !ipip),
        routed_rtt_ratio,
        vxlan_rtt_ratio: encapsulated_rtt.filter(|_| !ipip),
        ipip_vs_routed: ipip_ratio.zip(routed_ratio).and_then(|(i, r)| ratio(i, r)),
        ipip_vs_routed_rtt: ipip_rtt_ratio
            .zip(routed_rtt_ratio)
            .and_then(|(i, r)| ratio(i, r)),
        ipip_ratio,
        ipip_rtt_ratio,
        paths,
        add_to_reachable_p50_ms: None,
        add_to_reachable_p99_ms: None,
        add_to_reachable_samples: 0,
    };
    if attach > 0 {
        let mut samples = add_to_reachable(state, felis, &pod("h1-w1")?, attach)?;
        report.add_to_reachable_samples = samples.len();
        report.add_to_reachable_p50_ms = percentile(&mut samples, 0.50);
        report.add_to_reachable_p99_ms = percentile(&mut samples, 0.99);
    }
    Ok(report)
}

impl BenchReport {
    /// The ratio lines of the text report (what `felis lab bench` prints under the table).
    pub fn summary_lines(&self) -> Vec<String> {
        let show = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
        let mut lines = vec![format!(
            "routed pod / host (same subnet): throughput {}, RTT {}",
            show(self.routed_ratio),
            show(self.routed_rtt_ratio)
        )];
        if self.ipip_ratio.is_some() {
            lines.push(format!(
                "IPIP pod / host (across subnets): throughput {}, RTT {}",
                show(self.ipip_ratio),
                show(self.ipip_rtt_ratio)
            ));
            lines.push(format!(
                "IPIP / routed (each against its host baseline): throughput {}, RTT {}",
                show(self.ipip_vs_routed),
                show(self.ipip_vs_routed_rtt)
            ));
        } else {
            lines.push(format!(
                "VXLAN pod / host (across subnets): throughput {}, RTT {}",
                show(self.vxlan_ratio),
                show(self.vxlan_rtt_ratio)
            ));
        }
        lines
    }
}

fn needs() -> Error {
    Error::Invalid(
        "lab bench needs hosts h1 and h3 in one subnet and h2 in another, each with a workload: \
         felis lab up --hosts 3 --subnets 2 --workloads 1 (or more)"
            .into(),
    )
}

/// One TCP stream from `from` to `to` for `seconds`: bits per second received.
/// One iperf3 TCP stream from namespace `from` to `address` in namespace `to`, bits per second.
pub(crate) fn iperf_between(
    from: &str,
    to: &str,
    address: &str,
    label: &str,
    seconds: u64,
) -> Result<f64, Error> {
    let (from_label, to_label) = label.split_once(" -> ").unwrap_or((label, ""));
    iperf(
        &Endpoint {
            label: from_label.into(),
            netns: from.into(),
            address: String::new(),
        },
        &Endpoint {
            label: to_label.into(),
            netns: to.into(),
            address: address.into(),
        },
        seconds,
    )
}

fn iperf(from: &Endpoint, to: &Endpoint, seconds: u64) -> Result<f64, Error> {
    let mut server = spawn(&to.netns, &["iperf3", "-s", "-1", "-p", "5201"])?;
    let result = (|| {
        // The server needs a moment to listen; retry the client briefly.
        #[allow(clippy::disallowed_methods)] // benchmarks read the real clock
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &from.netns,
                    "iperf3",
                    "-c",
                    &to.address,
                    "-p",
                    "5201",
                    "-J",
                ])
                .args(["-t", &seconds.to_string()])
                .output()
                .map_err(|source| Error::Spawn {
                    command: "iperf3".into(),
                    source,
                })?;
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if let Some(bps) = json
                .pointer("/end/sum_received/bits_per_second")
                .and_then(|v| v.as_f64())
            {
                return Ok(bps);
            }
            #[allow(clippy::disallowed_methods)]
            if Instant::now() > deadline {
                return Err(Error::Command {
                    command: format!("iperf3 {} -> {}", from.label, to.label),
                    stderr: json
                        .get("error")
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into()),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// The average RTT of 20 pings 10 ms apart, in milliseconds.
fn ping_rtt(from: &Endpoint, to: &Endpoint) -> Result<f64, Error> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &from.netns,
            "ping",
            "-q",
            "-c",
            "20",
            "-i",
            "0.01",
            "-W",
            "1",
            &to.address,
        ])
        .output()
        .map_err(|source| Error::Spawn {
            command: "ping".into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    // rtt min/avg/max/mdev = 0.045/0.061/0.090/0.011 ms
    text.lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Command {
            command: format!("ping {} -> {}", from.label, to.label),
            stderr: text.trim().to_string(),
        })
}

/// Attaches `count` workloads to h2 one by one, measuring from the start of each CNI ADD until
/// `from` (on h1) gets an answer from it; detaches each afterwards.
fn add_to_reachable(
    state: &State,
    felis: &Path,
    from: &Endpoint,
    count: usize,
) -> Result<Vec<f64>, Error> {
    let host = state.plan.host("h2").ok_or_else(needs)?;
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("bench-{i}");
        let netns = format!("{}.h2-{name}", state.plan.spec.name);
        crate::topology::create_workload_netns(&netns)?;
        #[allow(clippy::disallowed_methods)] // benchmarks read the real clock
        let start = Instant::now();
        let attached = crate::agents::cni(state, felis, "ADD", host, &name, &netns);
        let measured = attached.and_then(|address| {
            let address = address
                .ok_or_else(|| Error::Invalid(format!("CNI ADD of {name} gave no address")))?;
            loop {
                if crate::topology::ping_once_fast(&from.netns, &address.to_string()) {
                    return Ok(start.elapsed().as_secs_f64() * 1000.0);
                }
                if start.elapsed() > Duration::from_secs(10) {
                    return Err(Error::Invalid(format!(
                        "{name} was not reachable from {} within 10 s",
                        from.label
                    )));
                }
            }
        });
        let _ = crate::agents::cni(state, felis, "DEL", host, &name, &netns);
        let _ = crate::topology::delete_netns(&netns);
        samples.push(measured?);
    }
    Ok(samples)
}

fn spawn(netns: &str, args: &[&str]) -> Result<Child, Error> {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: args.join(" "),
            source,
        })
}

/// The median of `values` (nearest rank: the lower middle of an even count); 0 when empty.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    percentile(values, 0.5).unwrap_or(0.0)
}

/// The `p` quantile (nearest rank) of `values`.
fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipip_report_summarises_ipip_against_routed() {
        let report = BenchReport {
            paths: Vec::new(),
            routed_ratio: Some(0.8),
            vxlan_ratio: None,
            routed_rtt_ratio: Some(1.2),
            vxlan_rtt_ratio: None,
            ipip_ratio: Some(0.76),
            ipip_rtt_ratio: Some(1.32),
            ipip_vs_routed: Some(0.95),
            ipip_vs_routed_rtt: Some(1.1),
            add_to_reachable_p50_ms: None,
            add_to_reachable_p99_ms: None,
            add_to_reachable_samples: 0,
        };
        let lines = report.summary_lines();
        assert_eq!(
            lines[2],
            "IPIP / routed (each against its host baseline): throughput 0.95, RTT 1.10"
        );
        assert!(lines.iter().all(|l| !l.contains("VXLAN")));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&mut v, 0.5), Some(3.0));
        assert_eq!(percentile(&mut v, 0.99), Some(5.0));
        assert_eq!(percentile(&mut [], 0.5), None);
    }
}
