//! Golden replays of the session FSM: `tests/golden/<case>/input.jsonl` holds one `Event` per
//! line; `expected.jsonl` the `Vec<Action>` each produced. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p felis-bgp --test golden` and review the diff like code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use felis_bgp::Asn;
use felis_bgp::session::Action;
use felis_bgp::session::Event;
use felis_bgp::session::Session;
use felis_bgp::session::SessionConfig;

fn replay(case: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case);
    let input = std::fs::read_to_string(dir.join("input.jsonl")).unwrap();
    let mut session = Session::new(SessionConfig::new(
        Asn(64512),
        Asn(64513),
        Ipv4Addr::new(192, 0, 2, 1),
    ));
    let mut now = Instant::now();
    let mut lines = Vec::new();
    for line in input.lines().filter(|l| !l.trim().is_empty()) {
        let event: Event = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let mut out: Vec<Action> = Vec::new();
        now += Duration::from_millis(10);
        session.handle(now, event, &mut out);
        lines.push(serde_json::to_string(&out).unwrap());
    }
    let actual = lines.join("\n") + "\n";
    let expected_path = dir.join("expected.jsonl");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap();
    assert_eq!(
        actual, expected,
        "golden {case} differs; UPDATE_GOLDEN=1 regenerates"
    );
}

#[test]
fn session_establish_then_tcp_loss() {
    replay("session-establish-then-tcp-loss");
}
