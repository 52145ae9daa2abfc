//! The emulated VPC drops what AWS drops. Needs root (CI runs as root); builds its own lab with a
//! unique name and removes it on drop, even when an assertion fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::Command;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

use felis_lab::LabSpec;
use felis_lab::PoolMode;

static NEXT: AtomicUsize = AtomicUsize::new(0);

struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = felis_lab::destroy(&self.0);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

fn lab(hosts: usize, subnets: usize) -> Option<(LabGuard, felis_lab::State)> {
    if !is_root() {
        eprintln!("skipped: needs root to make network namespaces");
        return None;
    }
    let name = format!(
        "ct{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let guard = LabGuard(name.clone());
    let state = felis_lab::create(LabSpec {
        name,
        hosts,
        subnets,
        workloads: 0,
        pool_mode: PoolMode::None,
        src_dst_check: false,
    })
    .unwrap();
    Some((guard, state))
}

fn sh(netns: &str, args: &str) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .args(args.split_whitespace());
    cmd.output().unwrap().status.success()
}

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hosts_reach_each_other_and_the_internet() {
    let Some((_guard, state)) = lab(3, 2) else {
        return;
    };
    let report = felis_lab::check(&state);
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.passed, 9);
}

#[test]
fn foreign_sources_cross_a_subnet_only_within_it_and_only_with_the_check_off() {
    let Some((_guard, state)) = lab(3, 2) else {
        return;
    };
    let ns = |h: &str| format!("{}.{h}", state.plan.spec.name);
    // h1 (10.0.1.10) sends from a container-like address; h3 is in its subnet, h2 is not.
    ip(&format!("-n {} addr add 10.244.1.1/32 dev lo", ns("h1")));
    ip(&format!(
        "-n {} route add 10.244.1.0/24 via 10.0.1.10",
        ns("h3")
    ));
    ip(&format!(
        "-n {} route add 10.244.1.0/24 via 10.0.2.1",
        ns("h2")
    ));
    let ping_from_pod = |dst: &str| sh(&ns("h1"), &format!("ping -c1 -W1 -q -I 10.244.1.1 {dst}"));
    assert!(
        ping_from_pod("10.0.1.11"),
        "same subnet, check off: delivered"
    );
    assert!(
        !ping_from_pod("10.0.2.10"),
        "across subnets: the VPC router drops it"
    );
    assert!(
        !ping_from_pod("203.0.113.10"),
        "to the internet: the gateway drops it"
    );

    felis_lab::set_src_dst_check(&state.plan.spec.name, "h1", true).unwrap();
    assert!(
        !ping_from_pod("10.0.1.11"),
        "same subnet, check on: dropped"
    );
    assert!(
        sh(&ns("h1"), "ping -c1 -W1 -q 10.0.1.11"),
        "the host's own address still passes"
    );
    felis_lab::set_src_dst_check(&state.plan.spec.name, "h1", false).unwrap();
    assert!(ping_from_pod("10.0.1.11"), "check off again: delivered");
}

#[test]
fn down_removes_exactly_the_labs_namespaces() {
    let Some((guard, state)) = lab(2, 1) else {
        return;
    };
    let Some((_other, other_state)) = lab(1, 1) else {
        return;
    };
    let removed = felis_lab::destroy(&guard.0).unwrap();
    assert_eq!(removed.len(), 4, "{removed:?}");
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains(&format!("{}.", state.plan.spec.name)),
        "{left}"
    );
    assert!(
        left.contains(&other_state.plan.router_netns),
        "the other lab is untouched: {left}"
    );
    assert!(matches!(
        felis_lab::State::load(&guard.0),
        Err(felis_lab::Error::NotFound(_))
    ));
}

#[test]
fn a_second_lab_with_the_same_name_is_refused() {
    let Some((guard, state)) = lab(1, 1) else {
        return;
    };
    let again = felis_lab::create(state.plan.spec.clone());
    assert!(
        matches!(again, Err(felis_lab::Error::Exists(_))),
        "{again:?}"
    );
    drop(guard);
}
