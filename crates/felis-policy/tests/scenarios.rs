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

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_scenario_probe_gets_its_expected_verdict() {
    let files = scenario_files();
    let mut failures = String::new();
    let mut probes = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
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
