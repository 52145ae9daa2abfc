//! The whole plugin (env + stdin → stdout + exit code), delegating IPAM to Debian's reference
//! `host-local` (package `containernetworking-plugins`, binaries in `/usr/lib/cni`).
//! Namespaces are throwaway (`ct-<pid>-<n>`); skipped unless root and the plugins are present.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::Path;

use felis_cni::DelegatedIpam;
use felis_cni::Outcome;
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
    if !Path::new(CNI_PATH).join("host-local").exists() {
        eprintln!("SKIPPED {test}: apt-get install -y containernetworking-plugins");
        return true;
    }
    false
}

struct Fixture {
    host: TestNetns,
    data: tempfile::TempDir,
    options: PluginOptions,
}

impl Fixture {
    fn new() -> Fixture {
        let host = TestNetns::new().unwrap();
        host.ip(&["link", "add", "uplink", "type", "bridge"]);
        let options = PluginOptions {
            host_netns: Some(host.path().to_path_buf()),
            mtu_file: None,
            ..PluginOptions::default()
        };
        Fixture {
            host,
            data: tempfile::tempdir().unwrap(),
            options,
        }
    }

    fn config(&self, version: &str, subnet: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "felis-test",
            "type": "felis",
            "mtu": 1400,
            "nodename": "node-1",
            "ipam": {
                "type": "host-local",
                "dataDir": self.data.path(),
                "ranges": [[{"subnet": subnet}]]
            }
        })
    }

    fn call(
        &self,
        command: &str,
        container: &str,
        netns: Option<&Path>,
        config: &Value,
    ) -> Outcome {
        let mut vars = vec![
            ("CNI_COMMAND".to_string(), command.to_string()),
            ("CNI_CONTAINERID".to_string(), container.to_string()),
            ("CNI_IFNAME".to_string(), "eth0".to_string()),
            ("CNI_PATH".to_string(), CNI_PATH.to_string()),
            (
                "CNI_ARGS".to_string(),
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"),
            ),
        ];
        if let Some(netns) = netns {
            vars.push(("CNI_NETNS".to_string(), netns.display().to_string()));
        }
        felis_cni::run(
            vars,
            config.to_string().as_bytes(),
            &DelegatedIpam,
            &self.options,
        )
    }
}

fn json_of(outcome: &Outcome) -> Value {
    serde_json::from_str(&outcome.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", outcome.stdout))
}

#[test]
fn add_check_del_with_host_local_ipam() {
    if skip("add_check_del_with_host_local_ipam") {
        return;
    }
    let f = Fixture::new();
    let pod = TestNetns::new().unwrap();
    let config = f.config("1.0.0", "10.22.0.0/24");

    let add = f.call("ADD", "nginx", Some(pod.path()), &config);
    assert_eq!(add.exit_code, 0, "{}", add.stdout);
    let result = json_of(&add);
    let host_ifname =
        felis_cni::naming::host_veth_name("cali", Some(("default", "nginx")), "nginx");
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][0]["name"], host_ifname.as_str());
    assert_eq!(result["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(
        result["interfaces"][1]["sandbox"],
        pod.path().display().to_string()
    );
    assert_eq!(result["ips"][0]["address"], "10.22.0.2/24");
    assert_eq!(result["ips"][0]["interface"], 1);
    assert!(result["ips"][0].get("version").is_none());

    let routes = f.host.ip(&["route", "show", "proto", "boot"]);
    assert!(
        routes.contains(&format!("10.22.0.2 dev {host_ifname} scope link")),
        "{routes}"
    );
    assert!(
        pod.ip(&["addr", "show", "eth0"])
            .contains("inet 10.22.0.2/32")
    );
    assert!(pod.ip(&["link", "show", "eth0"]).contains("mtu 1400"));
    assert!(f.data.path().join("felis-test/10.22.0.2").exists());

    // CHECK with prevResult, as runtimes send it.
    let mut with_prev = config.clone();
    with_prev["prevResult"] = result.clone();
    let check = f.call("CHECK", "nginx", Some(pod.path()), &with_prev);
    assert_eq!(check.exit_code, 0, "{}", check.stdout);
    assert!(check.stdout.is_empty());

    // DEL releases the address and the veth; a second DEL is still success.
    let del = f.call("DEL", "nginx", Some(pod.path()), &with_prev);
    assert_eq!(del.exit_code, 0, "{}", del.stdout);
    assert!(!f.data.path().join("felis-test/10.22.0.2").exists());
    assert!(!f.host.ip(&["link"]).contains(&host_ifname));
    let del = f.call("DEL", "nginx", None, &with_prev);
    assert_eq!(del.exit_code, 0, "{}", del.stdout);

    // CHECK after DEL reports the difference with our code.
    let check = f.call("CHECK", "nginx", Some(pod.path()), &with_prev);
    assert_eq!(check.exit_code, 1);
    assert_eq!(json_of(&check)["code"], 101);
}

#[test]
fn old_config_versions_get_old_results() {
    if skip("old_config_versions_get_old_results") {
        return;
    }
    let f = Fixture::new();
    for (n, version) in ["0.3.1", "0.4.0"].into_iter().enumerate() {
        let pod = TestNetns::new().unwrap();
        let container = format!("old{n}");
        let add = f.call(
            "ADD",
            &container,
            Some(pod.path()),
            &f.config(version, "10.23.0.0/24"),
        );
        assert_eq!(add.exit_code, 0, "{}", add.stdout);
        let result = json_of(&add);
        assert_eq!(result["cniVersion"], version);
        assert_eq!(result["ips"][0]["version"], "4");
    }
    // CHECK does not exist in 0.3.1.
    let pod = TestNetns::new().unwrap();
    let check = f.call(
        "CHECK",
        "old0",
        Some(pod.path()),
        &f.config("0.3.1", "10.23.0.0/24"),
    );
    assert_eq!(json_of(&check)["code"], 1);
}

#[test]
fn ipam_errors_pass_through_and_nothing_is_left_behind() {
    if skip("ipam_errors_pass_through_and_nothing_is_left_behind") {
        return;
    }
    let f = Fixture::new();
    // A /30 has exactly one usable host address after the gateway (.1): .2.
    let config = f.config("1.0.0", "10.24.0.0/30");
    let first = TestNetns::new().unwrap();
    let second = TestNetns::new().unwrap();
    assert_eq!(
        f.call("ADD", "one", Some(first.path()), &config).exit_code,
        0
    );
    let full = f.call("ADD", "two", Some(second.path()), &config);
    assert_eq!(full.exit_code, 1);
    let e = json_of(&full);
    // host-local's own code and message, unchanged, in the spec's error shape.
    assert_eq!(e["cniVersion"], "1.0.0");
    assert!(e["code"].as_u64().unwrap() >= 100, "{e}");
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("no IP addresses available"),
        "{e}"
    );
    let host_ifname = felis_cni::naming::host_veth_name("cali", Some(("default", "two")), "two");
    assert!(!f.host.ip(&["link"]).contains(&host_ifname));
    assert!(!second.ip(&["link"]).contains("eth0"));
}

#[test]
fn a_dataplane_failure_releases_the_address() {
    if skip("a_dataplane_failure_releases_the_address") {
        return;
    }
    let f = Fixture::new();
    let pod = TestNetns::new().unwrap();
    // Another interface already owns the route to .2: ADD fails after IPAM assigned it.
    f.host.ip(&["link", "set", "uplink", "up"]);
    f.host
        .ip(&["route", "add", "10.25.0.2/32", "dev", "uplink"]);
    let config = f.config("1.0.0", "10.25.0.0/24");
    let add = f.call("ADD", "busy", Some(pod.path()), &config);
    assert_eq!(add.exit_code, 1);
    let e = json_of(&add);
    assert_eq!(e["code"], 102, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("uplink"), "{e}");
    assert!(
        !f.data.path().join("felis-test/10.25.0.2").exists(),
        "address leaked"
    );
    // Nothing half-built is left on either side.
    assert!(!f.host.ip(&["link"]).contains("cali"));
    assert!(!pod.ip(&["link"]).contains("eth0"));
}

#[test]
fn a_repeated_add_does_not_release_the_live_address() {
    if skip("a_repeated_add_does_not_release_the_live_address") {
        return;
    }
    let f = Fixture::new();
    let pod = TestNetns::new().unwrap();
    let config = f.config("1.0.0", "10.31.0.0/24");
    assert_eq!(
        f.call("ADD", "again", Some(pod.path()), &config).exit_code,
        0
    );
    let again = f.call("ADD", "again", Some(pod.path()), &config);
    assert_eq!(
        (again.exit_code, json_of(&again)["code"].as_u64()),
        (1, Some(102))
    );
    assert!(
        f.data.path().join("felis-test/10.31.0.2").exists(),
        "live address released"
    );
    assert!(pod.ip(&["addr", "show", "eth0"]).contains("10.31.0.2/32"));
}

#[test]
fn protocol_errors_have_spec_codes() {
    if skip("protocol_errors_have_spec_codes") {
        return;
    }
    let f = Fixture::new();
    let config = f.config("1.0.0", "10.26.0.0/24");
    // Unknown container namespace: 3, and IPAM is never called.
    let gone = Path::new("/run/netns/ct-no-such-namespace");
    let add = f.call("ADD", "ghost", Some(gone), &config);
    let e = json_of(&add);
    assert_eq!((add.exit_code, e["code"].as_u64()), (1, Some(3)), "{e}");
    assert!(!f.data.path().join("felis-test").exists());
    // Missing CNI_NETNS on ADD: 4.
    assert_eq!(json_of(&f.call("ADD", "ghost", None, &config))["code"], 4);
    // Unsupported version: 1, answered in the requested version.
    let e = json_of(&f.call(
        "ADD",
        "ghost",
        Some(gone),
        &f.config("0.2.0", "10.26.0.0/24"),
    ));
    assert_eq!(
        (e["code"].as_u64(), e["cniVersion"].as_str()),
        (Some(1), Some("0.2.0"))
    );
    // Undecodable stdin: 6.
    let out = felis_cni::run(
        [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", CNI_PATH),
        ],
        b"{\"cniVersion\":",
        &DelegatedIpam,
        &f.options,
    );
    assert_eq!(json_of(&out)["code"], 6);
    // Missing IPAM plugin: 5 (I/O).
    let mut bad = config.clone();
    bad["ipam"]["type"] = "no-such-ipam".into();
    let pod = TestNetns::new().unwrap();
    assert_eq!(
        json_of(&f.call("ADD", "x", Some(pod.path()), &bad))["code"],
        5
    );
}

#[test]
fn version_and_status() {
    // Pure: no root needed.
    let options = PluginOptions::default();
    let out = felis_cni::run(
        [("CNI_COMMAND", "VERSION")],
        b"{\"cniVersion\":\"0.4.0\"}",
        &DelegatedIpam,
        &options,
    );
    assert_eq!(out.exit_code, 0);
    let v = json_of(&out);
    assert_eq!(v["cniVersion"], "0.4.0");
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.0.0"))
    );
    let out = felis_cni::run([("CNI_COMMAND", "VERSION")], b"", &DelegatedIpam, &options);
    assert_eq!(json_of(&out)["cniVersion"], "1.1.0");
    let status = json!({"cniVersion": "1.1.0", "name": "n", "type": "felis"});
    let out = felis_cni::run(
        [("CNI_COMMAND", "STATUS")],
        status.to_string().as_bytes(),
        &DelegatedIpam,
        &options,
    );
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, ""));
    let old = json!({"cniVersion": "1.0.0", "name": "n", "type": "felis"});
    let out = felis_cni::run(
        [("CNI_COMMAND", "STATUS")],
        old.to_string().as_bytes(),
        &DelegatedIpam,
        &options,
    );
    assert_eq!(json_of(&out)["code"], 1);
}

#[test]
fn a_requested_ip_in_cni_args_reaches_host_local() {
    if skip("a_requested_ip_in_cni_args_reaches_host_local") {
        return;
    }
    // podman --ip 10.27.0.50 sends IP=10.27.0.50 in CNI_ARGS; the delegated IPAM honours it.
    let f = Fixture::new();
    let pod = TestNetns::new().unwrap();
    let vars = [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", "fixedip".to_string()),
        ("CNI_NETNS", pod.path().display().to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", CNI_PATH.to_string()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAME=fixed;IP=10.27.0.50".to_string(),
        ),
    ];
    let config = f.config("1.0.0", "10.27.0.0/24");
    let add = felis_cni::run(
        vars,
        config.to_string().as_bytes(),
        &DelegatedIpam,
        &f.options,
    );
    assert_eq!(add.exit_code, 0, "{}", add.stdout);
    assert_eq!(json_of(&add)["ips"][0]["address"], "10.27.0.50/24");
    // Only one of namespace/pod given: not a Kubernetes name, so cali + container ID.
    assert!(f.host.ip(&["link"]).contains("califixedip"));
}

#[test]
fn dual_stack_with_host_local() {
    if skip("dual_stack_with_host_local") {
        return;
    }
    let f = Fixture::new();
    let pod = TestNetns::new().unwrap();
    let mut config = f.config("1.0.0", "10.28.0.0/24");
    config["ipam"]["ranges"] = json!([[{"subnet": "10.28.0.0/24"}], [{"subnet": "fd00:28::/64"}]]);
    let add = f.call("ADD", "dual", Some(pod.path()), &config);
    assert_eq!(add.exit_code, 0, "{}", add.stdout);
    let result = json_of(&add);
    assert_eq!(result["ips"][0]["address"], "10.28.0.2/24");
    assert_eq!(result["ips"][1]["address"], "fd00:28::2/64");
    assert_eq!(result["ips"][1]["interface"], 1);
    let v6 = pod.ip(&["-6", "addr", "show", "eth0"]);
    assert!(v6.contains("inet6 fd00:28::2/128"), "{v6}");
    // DAD is off, so the kernel's (asynchronous) DAD work clears "tentative" at once, well
    // before the 1 s a real DAD probe would take.
    let dad = pod.exec("cat", &["/proc/sys/net/ipv6/conf/eth0/accept_dad"]);
    assert_eq!(dad.trim(), "0");
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    while pod
        .ip(&["-6", "addr", "show", "eth0"])
        .contains("tentative")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "address still tentative after 500 ms"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let host_ifname = felis_cni::naming::host_veth_name("cali", Some(("default", "dual")), "dual");
    let routes = f.host.ip(&["-6", "route", "show", "proto", "boot"]);
    assert!(
        routes.contains(&format!("fd00:28::2 dev {host_ifname}")),
        "{routes}"
    );
    let proxy_ndp = f.host.exec(
        "cat",
        &[&format!("/proc/sys/net/ipv6/conf/{host_ifname}/proxy_ndp")],
    );
    assert_eq!(proxy_ndp.trim(), "1");
    let mut with_prev = config.clone();
    with_prev["prevResult"] = result;
    assert_eq!(
        f.call("CHECK", "dual", Some(pod.path()), &with_prev)
            .exit_code,
        0
    );
    assert_eq!(
        f.call("DEL", "dual", Some(pod.path()), &with_prev)
            .exit_code,
        0
    );
}

#[test]
fn parallel_adds_and_dels_on_one_host() {
    if skip("parallel_adds_and_dels_on_one_host") {
        return;
    }
    let f = Fixture::new();
    let config = f.config("1.0.0", "10.29.0.0/24");
    let pods: Vec<TestNetns> = (0..8).map(|_| TestNetns::new().unwrap()).collect();
    std::thread::scope(|s| {
        for (n, pod) in pods.iter().enumerate() {
            let (f, config) = (&f, &config);
            s.spawn(move || {
                let add = f.call("ADD", &format!("par{n}"), Some(pod.path()), config);
                assert_eq!(add.exit_code, 0, "{}", add.stdout);
            });
        }
    });
    let routes = f.host.ip(&["route", "show", "proto", "boot"]);
    assert_eq!(routes.lines().count(), 8, "{routes}");
    std::thread::scope(|s| {
        for (n, pod) in pods.iter().enumerate() {
            let (f, config) = (&f, &config);
            s.spawn(move || {
                let del = f.call("DEL", &format!("par{n}"), Some(pod.path()), config);
                assert_eq!(del.exit_code, 0, "{}", del.stdout);
            });
        }
    });
    assert!(f.host.ip(&["route", "show", "proto", "boot"]).is_empty());
    assert!(!f.host.ip(&["link"]).contains("cali"));
}
