//! `felis policy trace` with host endpoints: what the JSON and text reports say about failsafe
//! ports, stages, forwarded traffic and workload→host traffic.

#![allow(clippy::unwrap_used)]

use felis_policy::PolicySet;
use felis_policy::scenario::Scenario;
use felis_policy::trace::Query;
use felis_policy::trace::trace;

fn cluster() -> PolicySet {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/scenarios/host/host-forward-prednat-untracked.yaml"
    );
    let scenario = Scenario::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    PolicySet::from_resources(&scenario.resources).unwrap()
}

fn json(from: &str, to: &str, protocol: &str, port: u16) -> serde_json::Value {
    let query = Query::from_args(from, to, protocol, Some(port), None, None).unwrap();
    serde_json::to_value(trace(&cluster(), &query).unwrap()).unwrap()
}

#[test]
fn failsafe_and_stage_show_in_the_json_report() {
    let report = json("198.51.100.7", "192.168.10.1", "TCP", 2222);
    assert_eq!(report["verdict"], "allow");
    assert_eq!(report["ingress"]["reason"], "failsafe");
    assert_eq!(report["ingress"]["failsafe"], "TCP:2222");
    assert_eq!(report["ingress"]["endpoint"], "node1-eth0");
    assert!(report.get("forward").is_none(), "no forward side: {report}");

    let report = json("10.1.1.1", "192.168.10.1", "TCP", 9100);
    assert_eq!(report["ingress"]["stage"], "untracked");
    assert_eq!(report["ingress"]["policy"], "untracked-metrics");
}

#[test]
fn forwarded_traffic_reports_the_host_endpoint_crossed() {
    let report = json("203.0.113.9", "prod/web", "TCP", 23);
    assert_eq!(report["verdict"], "deny");
    assert_eq!(
        report["ingress"]["verdict"], "allow",
        "the workload itself allows"
    );
    assert_eq!(report["forward"][0]["endpoint"], "node1-eth0");
    assert_eq!(report["forward"][0]["stage"], "forward");
    assert_eq!(report["forward"][0]["policy"], "forward-no-telnet");
}

#[test]
fn workload_to_host_names_the_action_in_both_forms() {
    let query =
        Query::from_args("prod/web", "192.168.10.1", "TCP", Some(10250), None, None).unwrap();
    let report = trace(&cluster(), &query).unwrap();
    let value = serde_json::to_value(&report).unwrap();
    assert_eq!(value["ingress"]["reason"], "endpoint-to-host");
    assert_eq!(value["ingress"]["endpointToHostAction"], "Accept");
    let text = report.to_string();
    assert!(
        text.contains(
            "ingress node1-eth0 allow: workload to its host: defaultEndpointToHostAction Accept"
        ),
        "{text}"
    );
    let query = Query::from_args("203.0.113.9", "prod/web", "TCP", Some(23), None, None).unwrap();
    let text = trace(&cluster(), &query).unwrap().to_string();
    assert!(
        text.contains("forward node1-eth0 deny: tier default, global policy forward-no-telnet, rule 0 [stage forward]"),
        "{text}"
    );
}
