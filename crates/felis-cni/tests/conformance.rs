//! Conformance with Debian's reference plugins (`containernetworking-plugins`): our result and
//! error JSON have the shape `ptp` (also a veth plugin) produces for the same request.
//! Skipped unless root and the plugins are installed.

// Test helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;

use felis_cni::DelegatedIpam;
use felis_cni::PluginOptions;
use felis_testns::TestNetns;
use felis_testns::skip_unless_root;
use serde_json::Value;
use serde_json::json;

const CNI_PATH: &str = "/usr/lib/cni";

fn skip(test: &str) -> bool {
    if skip_unless_root(test) {
        return true;
    }
    if !Path::new(CNI_PATH).join("ptp").exists() {
        eprintln!("SKIPPED {test}: apt-get install -y containernetworking-plugins");
        return true;
    }
    false
}

fn config(version: &str, plugin: &str, data: &Path, subnet: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "conformance",
        "type": plugin,
        "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": subnet}]]}
    })
}

fn vars(command: &str, container: &str, netns: Option<&Path>) -> Vec<(String, String)> {
    let mut v = vec![
        ("CNI_COMMAND".to_string(), command.to_string()),
        ("CNI_CONTAINERID".to_string(), container.to_string()),
        ("CNI_IFNAME".to_string(), "eth0".to_string()),
        ("CNI_PATH".to_string(), CNI_PATH.to_string()),
    ];
    if let Some(n) = netns {
        v.push(("CNI_NETNS".to_string(), n.display().to_string()));
    }
    v
}

/// Runs the reference `ptp` plugin inside `host` (it creates its veth in the caller's
/// namespace) and returns (exit code, stdout JSON).
fn ptp(host: &TestNetns, vars: &[(String, String)], stdin: &Value) -> (i32, Value) {
    let out = host.run(|| {
        let mut child = Command::new(Path::new(CNI_PATH).join("ptp"))
            .env_clear()
            .envs(vars.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    });
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), json)
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn add_results_have_the_reference_shape_in_every_version() {
    if skip("add_results_have_the_reference_shape_in_every_version") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    for (n, version) in ["0.3.1", "0.4.0", "1.0.0"].into_iter().enumerate() {
        let host = TestNetns::new().unwrap();
        let (pod_ref, pod_ours) = (TestNetns::new().unwrap(), TestNetns::new().unwrap());
        let subnet = format!("10.40.{n}.0/24");
        let (code, reference) = ptp(
            &host,
            &vars("ADD", &format!("ref{n}"), Some(pod_ref.path())),
            &config(version, "ptp", data.path(), &subnet),
        );
        assert_eq!(code, 0, "{reference}");
        let options = PluginOptions {
            host_netns: Some(host.path().to_path_buf()),
            mtu_file: None,
            ..PluginOptions::default()
        };
        let stdin = config(version, "felis", data.path(), &subnet).to_string();
        let out = felis_cni::run(
            vars("ADD", &format!("ours{n}"), Some(pod_ours.path())),
            stdin.as_bytes(),
            &DelegatedIpam,
            &options,
        );
        assert_eq!(out.exit_code, 0, "{}", out.stdout);
        let ours: Value = serde_json::from_str(&out.stdout).unwrap();

        assert_eq!(ours["cniVersion"], reference["cniVersion"], "{version}");
        // Same top-level keys (`dns` included, even when empty).
        assert_eq!(
            keys(&ours),
            keys(&reference),
            "{version}: {ours} vs {reference}"
        );
        // Interfaces: a host veth without sandbox, then the container side with it.
        for (i, has_sandbox) in [(0, false), (1, true)] {
            assert_eq!(
                keys(&ours["interfaces"][i]),
                keys(&reference["interfaces"][i]),
                "{version} interfaces[{i}]: {ours} vs {reference}"
            );
            assert_eq!(ours["interfaces"][i].get("sandbox").is_some(), has_sandbox);
        }
        assert_eq!(
            ours["interfaces"][1]["name"],
            reference["interfaces"][1]["name"]
        );
        // IPs point at the container interface; `version` only before 1.0.0.
        assert_eq!(
            keys(&ours["ips"][0]),
            keys(&reference["ips"][0]),
            "{version}"
        );
        assert_eq!(
            ours["ips"][0]["interface"],
            reference["ips"][0]["interface"]
        );
    }
}

#[test]
fn errors_have_the_reference_shape_plus_cni_version() {
    if skip("errors_have_the_reference_shape_plus_cni_version") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let host = TestNetns::new().unwrap();
    let stdin_ref = config("1.0.0", "ptp", data.path(), "10.41.0.0/24");
    let stdin_ours = config("1.0.0", "felis", data.path(), "10.41.0.0/24");
    let options = PluginOptions {
        host_netns: Some(host.path().to_path_buf()),
        mtu_file: None,
        ..PluginOptions::default()
    };
    // Missing CNI_NETNS on ADD: both say code 4.
    let (code, reference) = ptp(&host, &vars("ADD", "e1", None), &stdin_ref);
    let out = felis_cni::run(
        vars("ADD", "e1", None),
        stdin_ours.to_string().as_bytes(),
        &DelegatedIpam,
        &options,
    );
    let ours: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!((code, out.exit_code), (1, 1));
    assert_eq!(reference["code"], 4);
    assert_eq!(ours["code"], 4);
    // The reference (libcni's types.Error) prints code, msg and details when set; the spec's
    // error object also has cniVersion, which we include.
    let mut expected = keys(&reference);
    expected.insert("cniVersion".to_string());
    assert_eq!(keys(&ours), expected, "{ours} vs {reference}");
    // Undecodable config: both say code 6.
    let (_, reference) = ptp(&host, &vars("ADD", "e2", Some(host.path())), &json!("{"));
    let out = felis_cni::run(
        vars("ADD", "e2", Some(host.path())),
        b"\"{\"",
        &DelegatedIpam,
        &options,
    );
    let ours: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(reference["code"], 6, "{reference}");
    assert_eq!(ours["code"], 6, "{ours}");
}
