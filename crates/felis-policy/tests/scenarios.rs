//! The scenario suite: every probe of every `tests/scenarios/*.yaml` through
//! `PolicySet::from_resources` and `trace`, reporting all mismatches at once, and through the
//! compiled `Program` (which must agree with the engine). The same files are meant to be
//! replayed as real packets in a lab.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::PathBuf;

use felis_policy::PolicySet;
use felis_policy::scenario::Scenario;
use felis_policy::trace::trace;

/// `tests/scenarios/*.yaml`, then `tests/scenarios/host/*.yaml` (host endpoint scenarios the
/// lab replay, which reads only the top level, cannot emulate).
fn scenario_files() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut all = Vec::new();
    for dir in [root.clone(), root.join("host")] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        all.extend(files);
    }
    all
}

#[test]
fn every_scenario_probe_gets_its_expected_verdict() {
    let files = scenario_files();
    let mut failures = String::new();
    let mut probes = 0;
    for path in &files {
        let name = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(path)
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(path).unwrap();
        let scenario = match Scenario::parse(&text) {
            Ok(s) => s,
            Err(e) => {
                writeln!(failures, "{name}: {e}").unwrap();
                continue;
            }
        };
        assert!(!scenario.probes.is_empty(), "{name} has no probes");
        let set = match PolicySet::from_resources(&scenario.resources) {
            Ok(set) => set,
            Err(e) => {
                writeln!(failures, "{name}: converting resources: {e}").unwrap();
                continue;
            }
        };
        let program = set.compile(&set.endpoints);
        for (index, probe) in scenario.probes.iter().enumerate() {
            probes += 1;
            // The compiled program (what the dataplane renders) must agree with the engine.
            if let Ok(query) = probe.query()
                && let Ok(report) = trace(&set, &query)
            {
                let from = set.peer_endpoint(&query.from).unwrap();
                let to = set.peer_endpoint(&query.to).unwrap();
                let engine = set.verdict(&report.packet, from, to);
                let key = |side: &Option<felis_policy::DirectionTrace>| {
                    side.as_ref().map(|s| s.endpoint.clone())
                };
                let compiled = program.verdict(
                    &report.packet,
                    key(&engine.egress).as_deref(),
                    key(&engine.ingress).as_deref(),
                );
                if compiled != engine {
                    writeln!(
                        failures,
                        "{name} probe {index}: {probe}: the compiled program disagrees:\n  \
                         engine   {engine:?}\n  compiled {compiled:?}"
                    )
                    .unwrap();
                }
            }
            let report = probe.query().and_then(|query| trace(&set, &query));
            match report {
                Ok(report) if probe.mismatches(&report).is_empty() => {}
                Ok(report) => {
                    let why = probe.mismatches(&report).join("; ");
                    writeln!(failures, "{name} probe {index}: {probe}: {why}").unwrap();
                    if let Some(note) = &probe.note {
                        writeln!(failures, "  note: {note}").unwrap();
                    }
                    for line in report.to_string().lines() {
                        writeln!(failures, "  | {line}").unwrap();
                    }
                }
                Err(e) => writeln!(failures, "{name} probe {index}: {probe}: {e}").unwrap(),
            }
        }
    }
    assert!(failures.is_empty(), "scenario mismatches:\n{failures}");
    assert!(files.len() >= 10, "only {} scenario files", files.len());
    eprintln!("{} scenario files, {probes} probes", files.len());
}

#[test]
fn compiled_programs_agree_with_the_engine_on_every_pair_of_every_scenario() {
    let ports: [(felis_policy::Protocol, Option<u16>, Option<u8>); 10] = [
        (felis_policy::Protocol::TCP, Some(22), None),
        (felis_policy::Protocol::TCP, Some(53), None),
        (felis_policy::Protocol::TCP, Some(5432), None),
        (felis_policy::Protocol::TCP, Some(6379), None),
        (felis_policy::Protocol::TCP, Some(8050), None),
        (felis_policy::Protocol::TCP, Some(8080), None),
        (felis_policy::Protocol::UDP, Some(53), None),
        (felis_policy::Protocol::ICMP, None, Some(8)),
        (felis_policy::Protocol::ICMP, None, Some(13)),
        (felis_policy::Protocol(47), None, None),
    ];
    let outside: std::net::IpAddr = "198.51.100.5".parse().unwrap();
    let mut checked = 0;
    let mut disagreements = String::new();
    for path in scenario_files() {
        let scenario = Scenario::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let set = PolicySet::from_resources(&scenario.resources).unwrap();
        let program = set.compile(&set.endpoints);
        let peers: Vec<(std::net::IpAddr, Option<&felis_policy::Endpoint>)> = set
            .endpoints
            .iter()
            .filter_map(|e| {
                let ip = e.ips.iter().find(|n| n.addr().is_ipv4())?.addr();
                Some((ip, Some(e)))
            })
            .chain([(outside, None)])
            .collect();
        for &(src, from) in &peers {
            for &(dst, to) in &peers {
                if from.is_none() && to.is_none() {
                    continue;
                }
                for &(protocol, port, icmp_type) in &ports {
                    let packet = felis_policy::Packet {
                        src_ip: src,
                        dst_ip: dst,
                        protocol,
                        src_port: port.map(|_| 40000),
                        dst_port: port,
                        icmp_type,
                        icmp_code: icmp_type.map(|_| 0),
                    };
                    let engine = set.verdict(&packet, from, to);
                    let key = |side: &Option<felis_policy::DirectionTrace>| {
                        side.as_ref().map(|s| s.endpoint.clone())
                    };
                    let compiled = program.verdict(
                        &packet,
                        key(&engine.egress).as_deref(),
                        key(&engine.ingress).as_deref(),
                    );
                    checked += 1;
                    if compiled != engine {
                        writeln!(
                            disagreements,
                            "{}: {packet:?}\n  engine   {engine:?}\n  compiled {compiled:?}",
                            path.display()
                        )
                        .unwrap();
                    }
                }
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "engine and program disagree:\n{disagreements}"
    );
    eprintln!("{checked} packets agree");
}

#[test]
fn compiled_host_endpoints_agree_with_the_engine_in_every_stage() {
    use felis_policy::Direction;
    use felis_policy::Protocol;
    let ports: [(Protocol, Option<u16>); 9] = [
        (Protocol::TCP, Some(22)),
        (Protocol::TCP, Some(23)),
        (Protocol::TCP, Some(443)),
        (Protocol::TCP, Some(2222)),
        (Protocol::TCP, Some(8080)),
        (Protocol::TCP, Some(9100)),
        (Protocol::TCP, Some(9101)),
        (Protocol::UDP, Some(53)),
        (Protocol::ICMP, None),
    ];
    let mut checked = 0;
    let mut disagreements = String::new();
    for path in scenario_files() {
        let scenario = Scenario::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let set = PolicySet::from_resources(&scenario.resources).unwrap();
        let mut addresses: Vec<std::net::IpAddr> = set
            .endpoints
            .iter()
            .flat_map(|e| e.ips.iter().map(|n| n.addr()))
            .chain(set.nodes.values().flatten().copied())
            .filter(|ip| ip.is_ipv4())
            .collect();
        addresses.extend(
            ["198.51.100.7", "203.0.113.9", "10.1.1.1"]
                .map(|ip| ip.parse::<std::net::IpAddr>().unwrap()),
        );
        let nodes: std::collections::BTreeSet<&str> = set
            .endpoints
            .iter()
            .filter(|e| e.is_host_endpoint())
            .filter_map(|e| e.node.as_deref())
            .collect();
        for node in nodes {
            let program = set.compile_for_node(std::iter::empty(), node);
            for hep in set.host_endpoints_of(node) {
                for &src in &addresses {
                    for &dst in &addresses {
                        for &(protocol, port) in &ports {
                            let packet = felis_policy::Packet {
                                src_ip: src,
                                dst_ip: dst,
                                protocol,
                                src_port: port.map(|_| 40000),
                                dst_port: port,
                                icmp_type: port.is_none().then_some(8),
                                icmp_code: port.is_none().then_some(0),
                            };
                            for direction in [Direction::Ingress, Direction::Egress] {
                                for forwarded in [false, true] {
                                    let engine = set
                                        .host_endpoint_verdict(&packet, hep, direction, forwarded);
                                    let compiled = program
                                        .host_verdict(&hep.name, &packet, direction, forwarded);
                                    checked += 1;
                                    if compiled.as_ref() != Some(&engine) {
                                        writeln!(
                                            disagreements,
                                            "{}: {} {direction:?} forwarded {forwarded} \
                                             {packet:?}\n  engine   {engine:?}\n  compiled \
                                             {compiled:?}",
                                            path.display(),
                                            hep.name
                                        )
                                        .unwrap();
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "engine and program disagree:\n{}",
        disagreements
            .lines()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(checked > 5_000, "only {checked} host packets checked");
    eprintln!("{checked} host endpoint packets agree");
}

/// Without hosts (no Node addresses, no host endpoints: the top-level scenarios), the
/// host-aware path verdict `trace` uses is exactly the plain endpoint verdict.
#[test]
fn path_verdict_equals_the_endpoint_verdict_without_hosts() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut checked = 0;
    for path in scenario_files()
        .into_iter()
        .filter(|p| p.parent() == Some(&root))
    {
        let scenario = Scenario::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let set = PolicySet::from_resources(&scenario.resources).unwrap();
        if !set.nodes.is_empty() || set.endpoints.iter().any(|e| e.is_host_endpoint()) {
            continue;
        }
        for probe in &scenario.probes {
            let Ok(query) = probe.query() else { continue };
            let Ok(report) = trace(&set, &query) else {
                continue;
            };
            let from = set.peer_endpoint(&query.from).unwrap();
            let to = set.peer_endpoint(&query.to).unwrap();
            let plain = set.verdict(&report.packet, from, to);
            let path_aware = set.path_verdict(&report.packet, path_end(from), path_end(to));
            assert_eq!(path_aware, plain, "{}: {probe}", path.display());
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} probes");
}

fn path_end(endpoint: Option<&felis_policy::Endpoint>) -> felis_policy::PathEnd<'_> {
    match endpoint {
        Some(e) => felis_policy::PathEnd::Workload(e),
        None => felis_policy::PathEnd::Outside,
    }
}
