//! Policy scenarios: a multi-document YAML file of resources, plus one document of kind
//! `Scenario` listing probes and the verdict each must get. The same probes run through
//! [`crate::trace::trace`] (the `tests/scenarios` suite) and as real packets in a lab.
//!
//! ```yaml
//! apiVersion: projectcalico.org/v3
//! kind: WorkloadEndpoint
//! # ...
//! ---
//! kind: Scenario
//! description: deny-all in prod
//! probes:
//!   - {from: prod/web, to: prod/db, protocol: TCP, port: 5432, expect: deny}
//!   - {from: prod/web, to: 8.8.8.8, protocol: ICMP, icmpType: 8, icmpCode: 0, expect: allow}
//! ```
//!
//! Documents are separated by lines `---`. The `Scenario` document is blanked out (keeping
//! line numbers) before the rest goes to [`felis_api::load::parse_documents`].

use felis_api::Resource;
use serde::Deserialize;
use serde::Serialize;

use crate::error::Error;
use crate::host::Stage;
use crate::trace::Query;
use crate::trace::Reason;
use crate::trace::SideReport;
use crate::trace::TraceReport;
use crate::trace::Verdict;

/// Kind of the probes document.
pub const SCENARIO_KIND: &str = "Scenario";

/// A parsed scenario: the cluster's resources and the probes to run against them.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// What the scenario shows.
    pub description: String,
    /// Every resource of the file, in order.
    pub resources: Vec<Resource>,
    /// The probes, in order.
    pub probes: Vec<Probe>,
}

/// One probe: a packet and the verdict it must get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    /// `NS/WORKLOAD`, `WORKLOAD` or an IP address.
    pub from: String,
    /// `NS/WORKLOAD`, `WORKLOAD` or an IP address.
    pub to: String,
    /// `TCP` (default), `UDP`, `SCTP`, `ICMP`, `ICMPv6` or a number.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Destination port.
    #[serde(default)]
    pub port: Option<u16>,
    /// ICMP type.
    #[serde(default)]
    pub icmp_type: Option<u8>,
    /// ICMP code.
    #[serde(default)]
    pub icmp_code: Option<u8>,
    /// `allow` or `deny`.
    pub expect: Expect,
    /// What must decide the source's egress (checked by `policy trace` only).
    #[serde(default)]
    pub egress: Option<SideExpect>,
    /// What must decide the destination's ingress (checked by `policy trace` only).
    #[serde(default)]
    pub ingress: Option<SideExpect>,
    /// What must decide at the first host endpoint the packet is forwarded across
    /// (applyOnForward; checked by `policy trace` only).
    #[serde(default)]
    pub forward: Option<SideExpect>,
    /// Why the probe gets that verdict (for the reader and the failure report).
    #[serde(default)]
    pub note: Option<String>,
}

/// What must have decided one direction; unset fields are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SideExpect {
    /// `allow` or `deny` for this side.
    #[serde(default)]
    pub verdict: Option<Expect>,
    /// The reason (`policy`, `end-of-tier`, `profile`, `no-policy-profile`, ...).
    #[serde(default)]
    pub reason: Option<Reason>,
    /// Deciding tier.
    #[serde(default)]
    pub tier: Option<String>,
    /// Deciding policy.
    #[serde(default)]
    pub policy: Option<String>,
    /// Deciding rule index.
    #[serde(default)]
    pub rule: Option<usize>,
    /// Deciding profile.
    #[serde(default)]
    pub profile: Option<String>,
    /// Deciding stage (`untracked`, `pre-dnat`, `normal`, `forward`).
    #[serde(default)]
    pub stage: Option<Stage>,
}

/// The verdict a probe expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The packet passes.
    Allow,
    /// The packet is dropped.
    Deny,
}

impl Expect {
    /// As a [`Verdict`].
    pub fn verdict(self) -> Verdict {
        match self {
            Expect::Allow => Verdict::Allow,
            Expect::Deny => Verdict::Deny,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScenarioDocument {
    kind: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    probes: Vec<Probe>,
}

fn default_protocol() -> String {
    "TCP".to_string()
}

impl Probe {
    /// The trace query of this probe.
    pub fn query(&self) -> Result<Query, Error> {
        Query::from_args(
            &self.from,
            &self.to,
            &self.protocol,
            self.port,
            self.icmp_type,
            self.icmp_code,
        )
    }
}

impl Probe {
    /// How `report` differs from what the probe expects (empty: it matches).
    pub fn mismatches(&self, report: &TraceReport) -> Vec<String> {
        let mut out = Vec::new();
        if report.verdict != self.expect.verdict() {
            out.push(format!(
                "verdict {}, expected {}",
                report.verdict,
                self.expect.verdict()
            ));
        }
        for (direction, expect, side) in [
            ("egress", &self.egress, &report.egress),
            ("ingress", &self.ingress, &report.ingress),
        ] {
            let Some(expect) = expect else { continue };
            let Some(side) = side else {
                out.push(format!(
                    "{direction}: outside the cluster, expected a decision"
                ));
                continue;
            };
            side_mismatches(direction, expect, side, &mut out);
        }
        if let Some(expect) = &self.forward {
            match report.forward.first() {
                Some(side) => side_mismatches("forward", expect, side, &mut out),
                None => out.push("forward: no host endpoint crossed, expected one".to_string()),
            }
        }
        out
    }
}

fn side_mismatches(direction: &str, expect: &SideExpect, side: &SideReport, out: &mut Vec<String>) {
    let mut check = |what: &str, expected: Option<String>, got: Option<String>| {
        if let Some(expected) = expected
            && Some(&expected) != got.as_ref()
        {
            let got = got.unwrap_or_else(|| "none".to_string());
            out.push(format!("{direction} {what} {got}, expected {expected}"));
        }
    };
    check(
        "verdict",
        expect.verdict.map(|v| v.verdict().to_string()),
        Some(side.verdict.to_string()),
    );
    check(
        "reason",
        expect.reason.map(|r| r.to_string()),
        Some(side.reason.to_string()),
    );
    check("tier", expect.tier.clone(), side.tier.clone());
    check("policy", expect.policy.clone(), side.policy.clone());
    check(
        "rule",
        expect.rule.map(|r| r.to_string()),
        side.rule.map(|r| r.to_string()),
    );
    check("profile", expect.profile.clone(), side.profile.clone());
    check(
        "stage",
        expect.stage.map(|s| s.to_string()),
        Some(side.stage.to_string()),
    );
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} {}", self.from, self.to, self.protocol)?;
        if let Some(port) = self.port {
            write!(f, "/{port}")?;
        }
        if let Some(t) = self.icmp_type {
            write!(f, " type {t}")?;
        }
        if let Some(c) = self.icmp_code {
            write!(f, " code {c}")?;
        }
        let expect = match self.expect {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        };
        write!(f, " expect {expect}")
    }
}

impl Scenario {
    /// Parses a scenario file: resources, and exactly one `Scenario` document.
    pub fn parse(text: &str) -> Result<Scenario, Error> {
        let lines: Vec<&str> = text.lines().collect();
        let mut documents: Vec<(usize, usize)> = Vec::new();
        let mut start = 0;
        for (i, line) in lines.iter().enumerate() {
            if is_separator(line) {
                documents.push((start, i));
                start = i + 1;
            }
        }
        documents.push((start, lines.len()));
        let scenario_docs: Vec<(usize, usize)> = documents
            .into_iter()
            .filter(|&(a, b)| {
                lines
                    .get(a..b)
                    .unwrap_or_default()
                    .iter()
                    .any(|l| is_scenario_kind(l))
            })
            .collect();
        let &[(a, b)] = scenario_docs.as_slice() else {
            return Err(Error::Scenario {
                field: "kind".to_string(),
                reason: format!(
                    "expected exactly one document of kind {SCENARIO_KIND}, found {}",
                    scenario_docs.len()
                ),
            });
        };
        let scenario_text = lines.get(a..b).unwrap_or_default().join("\n");
        let document: ScenarioDocument =
            serde_saphyr::from_str(&scenario_text).map_err(|e| Error::Scenario {
                field: format!("document at line {}", a + 1),
                reason: e.to_string(),
            })?;
        if document.kind != SCENARIO_KIND {
            return Err(Error::Scenario {
                field: "kind".to_string(),
                reason: format!("expected {SCENARIO_KIND}, found {:?}", document.kind),
            });
        }
        // Blank the scenario document out, keeping every other line where it was.
        let rest: Vec<&str> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| if (a..b).contains(&i) { "" } else { *l })
            .collect();
        let resources = felis_api::load::parse_documents(&rest.join("\n"), None).map_err(|e| {
            Error::Scenario {
                field: "resources".to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(Scenario {
            description: document.description,
            resources,
            probes: document.probes,
        })
    }
}

fn is_separator(line: &str) -> bool {
    let line = line.trim_end();
    line == "---" || line.starts_with("--- ")
}

fn is_scenario_kind(line: &str) -> bool {
    line.strip_prefix("kind:")
        .map(|rest| rest.split('#').next().unwrap_or_default().trim())
        .is_some_and(|kind| kind.trim_matches(['"', '\'']) == SCENARIO_KIND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    const TEXT: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
kind: Scenario
description: demo
probes:
  - {from: prod/a, to: 10.0.0.1, port: 80, expect: allow}
  - {from: 10.0.0.1, to: prod/a, protocol: ICMP, icmpType: 8, expect: deny, note: why}
";

    #[test]
    fn scenario_splits_probes_from_resources() {
        let scenario = Scenario::parse(TEXT).unwrap();
        assert_eq!(scenario.description, "demo");
        assert_eq!(scenario.resources.len(), 1);
        assert_eq!(scenario.probes.len(), 2);
        let query = scenario.probes[0].query().unwrap();
        assert_eq!(query.protocol, Protocol::TCP);
        assert_eq!(query.port, Some(80));
        let query = scenario.probes[1].query().unwrap();
        assert_eq!(query.protocol, Protocol::ICMP);
        assert_eq!(query.icmp_type, Some(8));
        assert_eq!(
            scenario.probes[1].to_string(),
            "10.0.0.1 -> prod/a ICMP type 8 expect deny"
        );
    }

    #[test]
    fn scenario_needs_exactly_one_probes_document() {
        let err =
            Scenario::parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n").unwrap_err();
        assert!(err.to_string().contains("found 0"), "{err}");
        let err = Scenario::parse(&TEXT.replace("expect: deny", "expect: maybe")).unwrap_err();
        assert!(err.to_string().contains("line 5"), "{err}");
    }

    #[test]
    fn resource_errors_keep_their_line_numbers() {
        let text = format!("{TEXT}---\napiVersion: v1\nkind: Namespace\nmetadata: {{nome: x}}\n");
        let err = Scenario::parse(&text).unwrap_err().to_string();
        assert!(err.contains("line 12") || err.contains("line 13"), "{err}");
    }
}
