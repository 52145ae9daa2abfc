//! `felis node status`: the speaker's peers in calicoctl's shape. Pure: the time of the report
//! is an argument.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use felis_api::time::format_rfc3339;
use felis_bgp::io::PeerStatus;
use felis_bgp::session::State;
use serde::Deserialize;
use serde::Serialize;

use super::PeerKind;

/// What `felis node status` shows: whether the agent runs, and its BGP peers. Its JSON is
/// `felis node status -o json`, and what the agent writes for the CLI to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Whether the agent process is running.
    pub running: bool,
    /// When the report was made (RFC 3339, UTC).
    pub generated: String,
    /// The same, in seconds since the Unix epoch (to tell a stale report).
    pub generated_unix: u64,
    /// The peers, sorted by address.
    pub peers: Vec<PeerReport>,
}

/// One peer's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// The peer's address.
    pub address: IpAddr,
    /// PEER TYPE: `node-to-node mesh`, `global` or `node specific`.
    #[serde(rename = "type")]
    pub peer_type: String,
    /// The peer's AS.
    pub asn: u32,
    /// STATE as BIRD's protocol state: `up` when established, else `start`.
    pub state: String,
    /// The BGP FSM state (`Established`, `Active`, ...).
    pub bgp_state: String,
    /// When the FSM entered its state (RFC 3339, UTC).
    pub since: String,
    /// The last error (NOTIFICATION or connection failure).
    pub last_error: Option<String>,
    /// Prefix counters.
    pub prefixes: PrefixCounts,
}

/// A metric: name, help text, and its value for a peer.
type MetricFamily = (&'static str, &'static str, fn(&PeerReport) -> usize);

/// Prefix counters of a peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixCounts {
    /// Prefixes the peer announced.
    pub received: usize,
    /// Of those, accepted into the RIB.
    pub accepted: usize,
    /// Prefixes we advertise to the peer.
    pub advertised: usize,
}

impl StatusReport {
    /// The report as Prometheus text (served on the health address's `/metrics`): per peer,
    /// `felis_bgp_peer_up`, `felis_bgp_peer_state` and the prefix counters, labelled with the
    /// peer's address, type and AS.
    pub fn prometheus(&self) -> String {
        let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::new();
        let families: [MetricFamily; 4] = [
            (
                "felis_bgp_peer_up",
                "Whether the BGP session with the peer is Established (1) or not (0).",
                |p| usize::from(p.bgp_state == "Established"),
            ),
            (
                "felis_bgp_peer_prefixes_received",
                "Prefixes the peer announced.",
                |p| p.prefixes.received,
            ),
            (
                "felis_bgp_peer_prefixes_accepted",
                "Prefixes of the peer accepted into the RIB.",
                |p| p.prefixes.accepted,
            ),
            (
                "felis_bgp_peer_prefixes_advertised",
                "Prefixes advertised to the peer.",
                |p| p.prefixes.advertised,
            ),
        ];
        for (name, help, value) in families {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
            for p in &self.peers {
                out.push_str(&format!(
                    "{name}{{peer=\"{}\",type=\"{}\",asn=\"{}\"}} {}\n",
                    p.address,
                    escape(&p.peer_type),
                    p.asn,
                    value(p)
                ));
            }
        }
        out.push_str(
            "# HELP felis_bgp_peer_state The BGP FSM state of the peer (1 for its current state).\n# TYPE felis_bgp_peer_state gauge\n",
        );
        for p in &self.peers {
            out.push_str(&format!(
                "felis_bgp_peer_state{{peer=\"{}\",state=\"{}\"}} 1\n",
                p.address,
                escape(&p.bgp_state)
            ));
        }
        out
    }

    /// A report from the speaker's peer statuses and each peer's kind, made at `now`.
    pub fn new(
        statuses: &[PeerStatus],
        kinds: &BTreeMap<IpAddr, PeerKind>,
        now: SystemTime,
    ) -> StatusReport {
        let mut peers: Vec<PeerReport> = statuses
            .iter()
            .map(|s| PeerReport {
                address: s.address,
                peer_type: kinds
                    .get(&s.address)
                    .map_or("unknown", |k| k.label())
                    .to_string(),
                asn: s.asn.0,
                state: if s.state == State::Established {
                    "up"
                } else {
                    "start"
                }
                .to_string(),
                bgp_state: s.state.to_string(),
                since: format_rfc3339(s.since),
                last_error: s.last_error.clone(),
                prefixes: PrefixCounts {
                    received: s.counters.received,
                    accepted: s.counters.accepted,
                    advertised: s.counters.advertised,
                },
            })
            .collect();
        peers.sort_by_key(|p| p.address);
        StatusReport {
            running: true,
            generated: format_rfc3339(now),
            generated_unix: unix_seconds(now),
            peers,
        }
    }

    /// The report of an agent that is not running (no peers), as of `now`.
    pub fn not_running(now: SystemTime) -> StatusReport {
        StatusReport {
            running: false,
            generated: format_rfc3339(now),
            generated_unix: unix_seconds(now),
            peers: Vec::new(),
        }
    }

    /// What the CLI shows from the status file the agent rewrites every few seconds: the
    /// report when the file exists, parses, and was written within `max_age` of `now`; else
    /// [`StatusReport::not_running`] (a missing, garbled or stale file means no live agent).
    pub fn from_status_file(
        contents: Option<&[u8]>,
        now: SystemTime,
        max_age: Duration,
    ) -> StatusReport {
        let report = contents.and_then(|c| serde_json::from_slice::<StatusReport>(c).ok());
        match report {
            Some(r) if unix_seconds(now).saturating_sub(r.generated_unix) <= max_age.as_secs() => r,
            _ => StatusReport::not_running(now),
        }
    }
}

/// Where the agent writes its status for `felis node status` (rewritten atomically every
/// [`STATUS_INTERVAL`]).
pub const STATUS_FILE: &str = "/run/felis/status.json";
/// How often the agent rewrites [`STATUS_FILE`].
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// A status file older than this means the agent is not running.
pub const STATUS_MAX_AGE: Duration = Duration::from_secs(30);

/// The text of `felis node status`, in `calicoctl node status`'s shape. SINCE is the time of
/// day when it is the report's day (UTC), else the date, as BIRD shows it.
pub fn render_status(report: &StatusReport) -> String {
    let mut out = String::new();
    if !report.running {
        out.push_str("Felis process is not running.\n");
        return out;
    }
    out.push_str("Felis process is running.\n");
    let today = report.generated.get(..10).unwrap_or_default();
    for (family, v4) in [("IPv4", true), ("IPv6", false)] {
        let _ = write!(out, "\n{family} BGP status\n");
        let rows: Vec<[String; 5]> = report
            .peers
            .iter()
            .filter(|p| p.address.is_ipv4() == v4)
            .map(|p| {
                let since = if p.since.get(..10) == Some(today) {
                    p.since.get(11..19)
                } else {
                    p.since.get(..10)
                };
                let mut info = p.bgp_state.clone();
                if p.bgp_state != "Established"
                    && let Some(e) = &p.last_error
                {
                    info.push(' ');
                    info.push_str(e);
                }
                [
                    p.address.to_string(),
                    p.peer_type.clone(),
                    p.state.clone(),
                    since.unwrap_or_default().to_string(),
                    info,
                ]
            })
            .collect();
        if rows.is_empty() {
            let _ = writeln!(out, "No {family} peers found.");
        } else {
            out.push_str(&table(
                ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"],
                &rows,
            ));
        }
    }
    out
}

/// A bordered table: headers centred (extra space to the right), cells left-aligned.
fn table<const N: usize>(headers: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = headers.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let mut out = rule.clone();
    for (header, width) in headers.iter().zip(widths) {
        let pad = width - header.chars().count();
        let left = pad / 2;
        let _ = write!(
            out,
            "| {}{header}{} ",
            " ".repeat(left),
            " ".repeat(pad - left)
        );
    }
    out.push_str("|\n");
    out.push_str(&rule);
    for row in rows {
        for (cell, width) in row.iter().zip(widths) {
            let _ = write!(out, "| {cell:<width$} ");
        }
        out.push_str("|\n");
    }
    out.push_str(&rule);
    out
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {

    #[test]
    fn metrics_name_every_peer_with_its_counters() {
        let report = StatusReport {
            running: true,
            generated: String::new(),
            generated_unix: 0,
            peers: vec![PeerReport {
                address: "10.0.0.2".parse().expect("address"),
                peer_type: "node-to-node mesh".into(),
                asn: 64512,
                state: "up".into(),
                bgp_state: "Established".into(),
                since: String::new(),
                last_error: None,
                prefixes: PrefixCounts {
                    received: 3,
                    accepted: 2,
                    advertised: 1,
                },
            }],
        };
        let text = report.prometheus();
        let labels = "{peer=\"10.0.0.2\",type=\"node-to-node mesh\",asn=\"64512\"}";
        for line in [
            format!("felis_bgp_peer_up{labels} 1"),
            format!("felis_bgp_peer_prefixes_received{labels} 3"),
            format!("felis_bgp_peer_prefixes_accepted{labels} 2"),
            format!("felis_bgp_peer_prefixes_advertised{labels} 1"),
            "felis_bgp_peer_state{peer=\"10.0.0.2\",state=\"Established\"} 1".to_string(),
            "# TYPE felis_bgp_peer_up gauge".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    use felis_bgp::Asn;
    use felis_bgp::rib::PeerCounters;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    // 2026-11-27 09:14:03 UTC
    const NOW: u64 = 1_795_770_843;

    fn status(address: &str, state: State, since: u64, error: Option<&str>) -> PeerStatus {
        PeerStatus {
            address: address.parse().unwrap(),
            asn: Asn(64512),
            state,
            since: at(since),
            last_error: error.map(str::to_string),
            router_id: None,
            counters: PeerCounters {
                received: 3,
                accepted: 2,
                advertised: 1,
                stale: 0,
            },
        }
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(format_rfc3339(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(at(NOW)), "2026-11-27T09:14:03Z");
    }

    #[test]
    fn renders_calicoctl_node_status() {
        let kinds: BTreeMap<IpAddr, PeerKind> = [
            ("10.0.0.12".parse().unwrap(), PeerKind::Mesh),
            ("10.0.0.1".parse().unwrap(), PeerKind::Global),
        ]
        .into();
        let report = StatusReport::new(
            &[
                status("10.0.0.12", State::Established, NOW, None),
                status(
                    "10.0.0.1",
                    State::Active,
                    NOW - 2,
                    Some("Socket: Connection refused"),
                ),
            ],
            &kinds,
            at(NOW),
        );
        let expected = "\
Felis process is running.

IPv4 BGP status
+--------------+-------------------+-------+----------+-----------------------------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |               INFO                |
+--------------+-------------------+-------+----------+-----------------------------------+
| 10.0.0.1     | global            | start | 09:14:01 | Active Socket: Connection refused |
| 10.0.0.12    | node-to-node mesh | up    | 09:14:03 | Established                       |
+--------------+-------------------+-------+----------+-----------------------------------+

IPv6 BGP status
No IPv6 peers found.
";
        assert_eq!(render_status(&report), expected);
    }

    #[test]
    fn header_centring_matches_calicoctl() {
        // The reference's table: INFO 11 wide, SINCE 8 wide.
        let rows = [[
            "10.0.0.12".to_string(),
            "node-to-node mesh".to_string(),
            "up".to_string(),
            "09:14:03".to_string(),
            "Established".to_string(),
        ]];
        let text = table(
            ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"],
            &rows,
        );
        assert_eq!(
            text.lines().nth(1),
            Some("| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |")
        );
        assert_eq!(
            text.lines().next(),
            Some("+--------------+-------------------+-------+----------+-------------+")
        );
    }

    #[test]
    fn older_states_show_the_date_and_ipv6_peers_get_their_own_table() {
        let kinds = [("fd00::2".parse().unwrap(), PeerKind::Node)].into();
        let report = StatusReport::new(
            &[status("fd00::2", State::Connect, NOW - 86_400, None)],
            &kinds,
            at(NOW),
        );
        let text = render_status(&report);
        assert!(text.contains("IPv4 BGP status\nNo IPv4 peers found.\n"));
        assert!(text.contains("| fd00::2      | node specific | start | 2026-11-26 | Connect |"));
    }

    #[test]
    fn json_carries_type_state_since_error_and_prefix_counts() {
        let kinds = [("10.0.0.1".parse().unwrap(), PeerKind::Global)].into();
        let report = StatusReport::new(
            &[status(
                "10.0.0.1",
                State::Idle,
                NOW,
                Some("hold timer expired"),
            )],
            &kinds,
            at(NOW),
        );
        let json = serde_json::to_value(&report).unwrap();
        let peer = &json["peers"][0];
        assert_eq!(peer["type"], "global");
        assert_eq!(peer["state"], "start");
        assert_eq!(peer["bgp_state"], "Idle");
        assert_eq!(peer["since"], "2026-11-27T09:14:03Z");
        assert_eq!(peer["last_error"], "hold timer expired");
        assert_eq!(peer["prefixes"]["received"], 3);
        assert_eq!(peer["prefixes"]["accepted"], 2);
        assert_eq!(peer["prefixes"]["advertised"], 1);
        let back: StatusReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn a_stopped_agent_says_so() {
        let report = StatusReport::not_running(at(NOW));
        assert_eq!(render_status(&report), "Felis process is not running.\n");
    }

    #[test]
    fn the_cli_trusts_only_a_fresh_status_file() {
        let kinds = [("10.0.0.1".parse().unwrap(), PeerKind::Global)].into();
        let report = StatusReport::new(
            &[status("10.0.0.1", State::Established, NOW, None)],
            &kinds,
            at(NOW),
        );
        let file = serde_json::to_vec(&report).unwrap();
        let fresh = StatusReport::from_status_file(Some(&file), at(NOW + 10), STATUS_MAX_AGE);
        assert_eq!(fresh, report);
        let stale = StatusReport::from_status_file(Some(&file), at(NOW + 31), STATUS_MAX_AGE);
        assert!(!stale.running);
        assert!(!StatusReport::from_status_file(None, at(NOW), STATUS_MAX_AGE).running);
        assert!(!StatusReport::from_status_file(Some(b"{"), at(NOW), STATUS_MAX_AGE).running);
    }
}
