//! Network policy end to end in `felis lab`: policies applied with `felis apply` are enforced
//! by every host's agent (felis-policy compiled into nftables by felis-nft), real packets agree
//! with `felis policy trace`, and deleting the policy restores traffic. Needs root; every test
//! makes its own uniquely named lab and removes it on drop, even on failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Lab;
use common::text;

const WORKLOADS: [&str; 4] = ["h1-w1", "h1-w2", "h2-w1", "h2-w2"];

/// h1-w1 is the database: ingress denied except from h2-w1, the web workload.
const POLICY: &str = r#"apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: db
  namespace: default
spec:
  selector: role == 'db'
  types: [Ingress]
  ingress:
  - action: Allow
    source:
      selector: role == 'web'
"#;

/// What these tests add to the shared lab guard.
trait PolicyLab {
    fn trace(&self, from: &str, to: &str) -> String;
    fn until(&self, from: &str, address: &str, allowed: bool, since: Instant) -> Duration;
    fn programmed_after(&self, host: &str, after: f64, needle: &str) -> Option<(f64, String)>;
}

impl PolicyLab for Lab {
    /// `felis policy trace` of an echo request: "allow" or "deny".
    fn trace(&self, from: &str, to: &str) -> String {
        let out = self.cli(&[
            "policy",
            "trace",
            "--from",
            &format!("default/{from}"),
            "--to",
            &format!("default/{to}"),
            "--protocol",
            "ICMP",
            "--icmp-type",
            "8",
            "--icmp-code",
            "0",
            "-o",
            "json",
        ]);
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        report["verdict"].as_str().unwrap().to_string()
    }

    /// Polls `from` → `address` until the verdict is `allowed`; the time from `since` to the
    /// start of the first probe that saw it.
    fn until(&self, from: &str, address: &str, allowed: bool, since: Instant) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let start = Instant::now();
            // A short wait: a blocked probe costs 0.2 s, an allowed one a round trip.
            if self.ping(from, address, "0.2") == allowed {
                return start - since;
            }
            assert!(
                Instant::now() < deadline,
                "{from} -> {address} never became {}",
                if allowed { "allowed" } else { "denied" }
            );
        }
    }

    /// The first `policy programmed` line of `host`'s agent logged after `after` (seconds of
    /// the UTC day) whose fields contain `needle`: its time and the line.
    fn programmed_after(&self, host: &str, after: f64, needle: &str) -> Option<(f64, String)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self.log(host).lines().find_map(|line| {
                let time = time_of_day(line)?;
                (time > after && line.contains("policy programmed") && line.contains(needle))
                    .then(|| (time, line.to_string()))
            });
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Seconds since midnight UTC, now (the agents' logs carry UTC times of day).
fn now_of_day() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 86_400.0
}

/// The time of day of a log line starting `2026-11-27T07:51:32.674932Z`.
fn time_of_day(line: &str) -> Option<f64> {
    let clock = line.split_whitespace().next()?.split_once('T')?.1;
    let clock = clock.strip_suffix('Z')?;
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn wep_name(workload: &str) -> String {
    let host = &workload[..2];
    felis_api::endpoint::workload_endpoint_name(host, "k8s", workload, "eth0")
}

/// Every ordered pair: the real packet's fate and the trace's verdict agree, and they are
/// `expected`.
fn assert_pairs(
    lab: &Lab,
    addresses: &std::collections::BTreeMap<String, String>,
    expected: impl Fn(&str, &str) -> bool,
) {
    let mut wrong = Vec::new();
    for from in WORKLOADS {
        for to in WORKLOADS {
            if from == to {
                continue;
            }
            let want = expected(from, to);
            let packet = lab.ping(from, &addresses[to], "1");
            let trace = lab.trace(from, to);
            if packet != want || (trace == "allow") != want {
                wrong.push(format!(
                    "{from} -> {to}: expected {want}, packet passed {packet}, trace {trace}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn policies_are_enforced_on_every_host_as_traced_and_lifted_on_delete() {
    let Some(lab) = Lab::up("p", &["--hosts", "2", "--subnets", "1", "--workloads", "2"]) else {
        return;
    };
    // No policy: the namespace profile allows everything, right after `lab up`.
    let report = lab.check();
    assert_eq!(report["failed"], 0, "{report:#}");
    let addresses = lab.addresses();
    assert_pairs(&lab, &addresses, |_, _| true);

    lab.cli(&["label", "wep", &wep_name("h1-w1"), "role=db"]);
    lab.cli(&["label", "wep", &wep_name("h2-w1"), "role=web"]);

    let db = &addresses["h1-w1"];
    let mut denied_after = Vec::new();
    let mut allowed_after = Vec::new();
    let mut agent_after_apply = Vec::new();
    for round in 0..3 {
        // Same host (h1-w2) and the other host (h2-w2) lose access; h2-w1 keeps it.
        let before = now_of_day();
        let applied = lab.apply(POLICY);
        let returned = now_of_day();
        denied_after.push(lab.until("h1-w2", db, false, applied));
        // When h1's agent had programmed it, from the agent's log.
        let (at, line) = lab
            .programmed_after("h1", before, "policies=1")
            .expect("h1 logged the policy");
        agent_after_apply.push(format!(
            "{:.1} ms after apply started, {:+.1} ms after it returned ({})",
            (at - before) * 1000.0,
            (at - returned) * 1000.0,
            line.split("full=").nth(1).unwrap_or_default()
        ));
        if round == 0 {
            assert_pairs(&lab, &addresses, |from, to| {
                to != "h1-w1" || from == "h2-w1"
            });
            assert!(
                lab.ping("h1-w1", &addresses["h2-w2"], "1"),
                "egress is not restricted"
            );
        }
        let deleted = Instant::now();
        lab.cli(&["delete", "networkpolicy", "db", "-n", "default"]);
        let returned = Instant::now();
        allowed_after.push(lab.until("h1-w2", db, true, returned));
        eprintln!(
            "round {round}: delete took {:?} to return",
            returned - deleted
        );
    }
    assert_pairs(&lab, &addresses, |_, _| true);
    let report = lab.check();
    assert_eq!(report["failed"], 0, "{report:#}");

    // Enforcement outlives the agent: killed, the kernel keeps the rules; restarted, it adopts
    // them (one atomic resync) without opening a window.
    let applied = lab.apply(POLICY);
    lab.until("h1-w2", db, false, applied);
    let out = lab.felis(&["lab", "agent", "--name", &lab.name, "h1", "stop", "--kill"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !lab.ping("h1-w2", db, "1"),
        "still denied with the agent down"
    );
    assert!(
        lab.ping("h2-w1", db, "1"),
        "still allowed with the agent down"
    );
    let restart = now_of_day();
    let out = lab.felis(&["lab", "agent", "--name", &lab.name, "h1", "start"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, line) = lab
        .programmed_after("h1", restart, "full=true")
        .expect("the restarted agent resynced");
    assert!(line.contains("policies=1"), "{line}");
    assert_pairs(&lab, &addresses, |from, to| {
        to != "h1-w1" || from == "h2-w1"
    });
    lab.cli(&["delete", "networkpolicy", "db"]);
    lab.until("h1-w2", db, true, Instant::now());

    eprintln!("apply returned -> first probe that was denied started: {denied_after:?}");
    for line in &agent_after_apply {
        eprintln!("h1 programmed the policy {line}");
    }
    eprintln!("delete returned -> first probe that passed started: {allowed_after:?}");

    // The agents logged what they programmed.
    for host in ["h1", "h2"] {
        let log = lab.log(host);
        let programmed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("policy programmed"))
            .collect();
        assert!(!programmed.is_empty(), "{host}: {log}");
        for line in programmed.iter().rev().take(3) {
            eprintln!("{host}: {line}");
        }
    }
}

#[test]
fn a_global_default_deny_isolates_every_workload_but_not_its_egress() {
    let Some(lab) = Lab::up("p", &["--hosts", "2", "--subnets", "1", "--workloads", "1"]) else {
        return;
    };
    let addresses = lab.addresses();
    assert!(lab.ping("h1-w1", &addresses["h2-w1"], "1"));
    // A global default deny of ingress to every workload (h1's and h2's).
    let applied = lab.apply(
        r#"apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: default-deny-ingress
spec:
  selector: projectcalico.org/orchestrator == 'k8s'
  types: [Ingress]
"#,
    );
    let took = lab.until("h1-w1", &addresses["h2-w1"], false, applied);
    eprintln!("global deny took {took:?}");
    assert!(!lab.ping("h2-w1", &addresses["h1-w1"], "1"));
    assert_eq!(lab.trace("h2-w1", "h1-w1"), "deny");
    let report = lab.check();
    // Only the internet probes pass (egress is open; replies are established traffic).
    for probe in report["probes"].as_array().unwrap() {
        assert_eq!(
            probe["ok"],
            probe["to"] == "internet",
            "{probe}: {report:#}"
        );
    }
}

#[test]
fn an_egress_policy_limits_its_workload_to_one_peer_on_another_host() {
    let Some(lab) = Lab::up("p", &["--hosts", "2", "--subnets", "1", "--workloads", "2"]) else {
        return;
    };
    let addresses = lab.addresses();
    lab.cli(&["label", "wep", &wep_name("h1-w2"), "role=client"]);
    lab.cli(&["label", "wep", &wep_name("h2-w2"), "role=db"]);
    let applied = lab.apply(
        r#"apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: client-egress
  namespace: default
spec:
  selector: role == 'client'
  types: [Egress]
  egress:
  - action: Allow
    destination:
      selector: role == 'db'
"#,
    );
    lab.until("h1-w2", &addresses["h1-w1"], false, applied);
    assert_pairs(&lab, &addresses, |from, to| {
        from != "h1-w2" || to == "h2-w2"
    });
    let report = lab.check();
    for probe in report["probes"].as_array().unwrap() {
        let expected = probe["from"] != "h1-w2" || probe["to"] == "h2-w2";
        assert_eq!(probe["ok"], expected, "{probe}: {report:#}");
    }
}
