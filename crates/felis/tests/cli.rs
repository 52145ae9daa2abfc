//! End-to-end tests of the CLI: the real `felis` binary against a fresh embedded datastore or a
//! real etcd of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Felis {
    dir: tempfile::TempDir,
    /// Environment that selects the datastore.
    datastore_env: Vec<(&'static str, String)>,
    _etcd: Option<felis_store::testing::EtcdServer>,
}

impl Felis {
    /// On a fresh embedded store.
    fn new() -> Felis {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("felis.db").display());
        Felis {
            dir,
            datastore_env: vec![("FELIS_DATASTORE", url)],
            _etcd: None,
        }
    }

    /// On a fresh etcd, selected with `FELIS_DATASTORE=etcd://...`.
    fn etcd() -> Felis {
        let etcd = felis_store::testing::EtcdServer::start()
            .expect("etcd is needed (Debian package etcd-server; scripts/test installs it)");
        Felis {
            dir: tempfile::tempdir().unwrap(),
            datastore_env: vec![("FELIS_DATASTORE", etcd.url())],
            _etcd: Some(etcd),
        }
    }

    /// On a fresh etcd, selected Calico's way: `DATASTORE_TYPE=etcdv3`, `ETCD_ENDPOINTS`.
    fn etcd_calico_env() -> Felis {
        let etcd = felis_store::testing::EtcdServer::start()
            .expect("etcd is needed (Debian package etcd-server; scripts/test installs it)");
        Felis {
            dir: tempfile::tempdir().unwrap(),
            datastore_env: vec![
                ("DATASTORE_TYPE", "etcdv3".into()),
                ("ETCD_ENDPOINTS", etcd.endpoint()),
            ],
            _etcd: Some(etcd),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_felis"));
        command
            .args(args)
            .env_remove("FELIS_DATASTORE")
            .env_remove("DATASTORE_TYPE")
            .env_remove("ETCD_ENDPOINTS");
        for (k, v) in &self.datastore_env {
            command.env(k, v);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "felis {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "felis {args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/cluster.yaml")
        .display()
        .to_string()
}

#[test]
fn apply_then_get_shows_the_pools_with_defaults() {
    apply_then_get(&Felis::new());
}

#[test]
fn apply_then_get_on_etcd() {
    apply_then_get(&Felis::etcd());
}

#[test]
fn calico_etcd_environment_selects_etcd() {
    let felis = Felis::etcd_calico_env();
    apply_then_get(&felis);
    // The data is in etcd, not in a default file: an embedded store sees nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_felis"))
        .args(["get", "ippools"])
        .env(
            "FELIS_DATASTORE",
            format!("file://{}", felis.dir.path().join("other.db").display()),
        )
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("default-ipv4-ippool"));
}

#[test]
fn bad_documents_write_nothing_on_etcd_either() {
    bad_document_writes_nothing(&Felis::etcd());
}

#[test]
fn patch_label_delete_on_etcd() {
    let felis = Felis::etcd();
    felis.ok(&["apply", "-f", &example()]);
    felis.ok(&[
        "patch",
        "ippool",
        "ipip-pool",
        "-p",
        r#"{"spec":{"disabled":true}}"#,
    ]);
    assert!(
        felis
            .ok(&["get", "ippool", "ipip-pool", "-o", "yaml"])
            .contains("disabled: true")
    );
    felis.ok(&["label", "ippool", "ipip-pool", "role=db"]);
    assert!(
        felis
            .ok(&["get", "ippool", "ipip-pool", "-o", "json"])
            .contains(r#""role": "db""#)
    );
    felis.ok(&["delete", "ippool", "ipip-pool"]);
    felis.fails(&["get", "ippool", "ipip-pool"]);
}

fn apply_then_get(felis: &Felis) {
    let out = felis.ok(&["apply", "-f", &example()]);
    assert!(out.starts_with("Successfully applied"), "{out}");
    let table = felis.ok(&["get", "ippools"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "CIDR", "SELECTOR"]);
    assert!(table.contains("default-ipv4-ippool"), "{table}");
    assert!(table.contains("10.244.0.0/16"), "{table}");

    let yaml = felis.ok(&["get", "ippool", "ipip-pool", "-o", "yaml"]);
    assert!(yaml.contains("blockSize: 26"), "defaults filled in: {yaml}");
    assert!(
        yaml.contains("vxlanMode: Never"),
        "defaults filled in: {yaml}"
    );
    assert!(yaml.contains("resourceVersion"), "{yaml}");

    let json = felis.ok(&["get", "networkpolicies", "-A", "-o", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["kind"], "NetworkPolicyList");
    assert_eq!(value["items"][0]["metadata"]["namespace"], "shop");

    let wide = felis.ok(&["get", "gnp", "-o", "wide"]);
    assert!(wide.contains("security.allow-dns"), "{wide}");
}

#[test]
fn get_yaml_round_trips_through_apply() {
    let felis = Felis::new();
    felis.ok(&["apply", "-f", &example()]);
    let first = felis.ok(&["get", "ippool", "default-ipv4-ippool", "-o", "yaml"]);
    let path = felis.file("pool.yaml", &first);
    felis.ok(&["apply", "-f", path.to_str().unwrap()]);
    let second = felis.ok(&["get", "ippool", "default-ipv4-ippool", "-o", "yaml"]);
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.contains("resourceVersion"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&first), strip(&second));
}

#[test]
fn a_bad_document_writes_nothing_and_names_the_document() {
    bad_document_writes_nothing(&Felis::new());
}

fn bad_document_writes_nothing(felis: &Felis) {
    let path = felis.file(
        "bad.yaml",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: good\nspec:\n  cidr: 10.1.0.0/16\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: bad\nspec:\n  cidr: 10.2.0.0/33\n",
    );
    let err = felis.fails(&["apply", "-f", path.to_str().unwrap()]);
    assert!(err.contains("spec.cidr"), "names the field: {err}");
    assert!(err.contains('2'), "names the document: {err}");
    let table = felis.ok(&["get", "ippools"]);
    assert!(!table.contains("good"), "nothing written: {table}");
}

#[test]
fn unknown_fields_are_refused() {
    let felis = Felis::new();
    let path = felis.file(
        "typo.yaml",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.1.0.0/16\n  natOutgoin: true\n",
    );
    let err = felis.fails(&["apply", "-f", path.to_str().unwrap()]);
    assert!(err.contains("natOutgoin"), "{err}");
}

#[test]
fn apply_from_stdin_and_directories() {
    let felis = Felis::new();
    let pool = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: from-stdin\nspec:\n  cidr: 10.9.0.0/16\n";
    let out = felis.run_with_stdin(&["apply", "-f", "-"], Some(pool));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sub = felis.dir.path().join("manifests/nested");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(
        sub.join("p.yaml"),
        pool.replace("from-stdin", "from-dir")
            .replace("10.9", "10.8"),
    )
    .unwrap();
    let dir = felis.dir.path().join("manifests");
    felis.ok(&["apply", "-f", dir.to_str().unwrap(), "-R"]);
    let table = felis.ok(&["get", "pools"]);
    assert!(
        table.contains("from-stdin") && table.contains("from-dir"),
        "{table}"
    );
}

#[test]
fn create_replace_delete_follow_calicoctl() {
    let felis = Felis::new();
    let path = felis.file(
        "p.yaml",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.1.0.0/16\n",
    );
    let p = path.to_str().unwrap();
    felis.fails(&["replace", "-f", p]);
    felis.ok(&["create", "-f", p]);
    let err = felis.fails(&["create", "-f", p]);
    assert!(err.contains("already exists"), "{err}");
    felis.ok(&["create", "-f", p, "--skip-exists"]);
    felis.ok(&["replace", "-f", p]);
    felis.ok(&["delete", "-f", p]);
    felis.fails(&["delete", "-f", p]);
    felis.ok(&["delete", "-f", p, "--skip-not-exists"]);
    felis.ok(&["create", "-f", p]);
    felis.ok(&["delete", "ippool", "p"]);
    let err = felis.fails(&["delete", "ippool", "p"]);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn patch_changes_a_field_and_is_validated() {
    let felis = Felis::new();
    felis.ok(&["apply", "-f", &example()]);
    felis.ok(&[
        "patch",
        "ippool",
        "ipip-pool",
        "-p",
        r#"{"spec":{"natOutgoing":false}}"#,
    ]);
    let json = felis.ok(&["get", "ippool", "ipip-pool", "-o", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    // Calico omits false booleans (`omitempty`).
    assert!(matches!(
        value["spec"].get("natOutgoing"),
        None | Some(serde_json::Value::Bool(false))
    ));
    let err = felis.fails(&[
        "patch",
        "ippool",
        "ipip-pool",
        "-p",
        r#"{"spec":{"ipipMode":"Sometimes"}}"#,
    ]);
    assert!(err.contains("ipipMode"), "{err}");
}

#[test]
fn label_sets_and_removes() {
    let felis = Felis::new();
    felis.ok(&["apply", "-f", &example()]);
    felis.ok(&["label", "ippool", "ipip-pool", "role=db"]);
    felis.fails(&["label", "ippool", "ipip-pool", "role=web"]);
    felis.ok(&["label", "ippool", "ipip-pool", "role=web", "--overwrite"]);
    let json = felis.ok(&["get", "ippool", "ipip-pool", "-o", "json"]);
    assert!(json.contains(r#""role": "web""#), "{json}");
    felis.ok(&["label", "ippool", "ipip-pool", "role", "--remove"]);
    let json = felis.ok(&["get", "ippool", "ipip-pool", "-o", "json"]);
    assert!(!json.contains("role"), "{json}");
}

#[test]
fn selector_match_prints_true_or_false_and_exits_2_on_bad_selectors() {
    let felis = Felis::new();
    let yes = felis.ok(&[
        "selector",
        "match",
        "role == 'db' && has(tier)",
        "--labels",
        r#"{"role":"db","tier":"x"}"#,
    ]);
    assert_eq!(yes.trim(), "true");
    let no = felis.ok(&[
        "selector",
        "match",
        "role == 'db'",
        "--labels",
        r#"{"role":"web"}"#,
    ]);
    assert_eq!(no.trim(), "false");
    let out = felis.run(&["selector", "match", "role == ", "--labels", "{}"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("column"));
}

#[test]
fn version_prints_the_client_version() {
    let felis = Felis::new();
    assert!(felis.ok(&["version"]).contains(env!("CARGO_PKG_VERSION")));
}

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../felis-api/tests/fixtures/cluster.yaml")
        .display()
        .to_string()
}

/// Every kind of a realistic Calico manifest (34 documents, every rule field) applies, and
/// `get -o yaml` gives back documents that apply again unchanged, defaults filled in.
fn manifest_round_trips(felis: &Felis) {
    let out = felis.ok(&["apply", "-f", &fixture()]);
    assert!(out.contains("Successfully applied 34 resource(s)"), "{out}");
    let kinds = [
        "ippools",
        "ipreservations",
        "ipamconfigurations",
        "nodes",
        "bgpconfigurations",
        "bgppeers",
        "bgpfilters",
        "felixconfigurations",
        "networkpolicies",
        "globalnetworkpolicies",
        "tiers",
        "profiles",
        "networksets",
        "globalnetworksets",
        "hostendpoints",
        "workloadendpoints",
        "kubecontrollersconfigurations",
        "clusterinformations",
        "k8snetworkpolicies",
        "namespaces",
    ];
    let mut count = 0;
    for kind in kinds {
        let first = felis.ok(&["get", kind, "-A", "-o", "yaml"]);
        let listed: serde_json::Value =
            serde_json::from_str(&felis.ok(&["get", kind, "-A", "-o", "json"])).unwrap();
        let items = listed["items"].as_array().unwrap().len();
        assert!(items > 0, "the fixture has some {kind}");
        count += items;
        let path = felis.file(&format!("{kind}.yaml"), &first);
        felis.ok(&["apply", "-f", path.to_str().unwrap()]);
        let second = felis.ok(&["get", kind, "-A", "-o", "yaml"]);
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.contains("resourceVersion"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&first), strip(&second), "{kind} changed on re-apply");
    }
    assert_eq!(count, 34, "every document came back");
}

#[test]
fn a_realistic_manifest_round_trips_through_get_yaml() {
    manifest_round_trips(&Felis::new());
}

#[test]
fn a_realistic_manifest_round_trips_on_etcd() {
    manifest_round_trips(&Felis::etcd());
}

#[test]
fn policy_trace_names_the_deciding_policy_and_gives_the_json_shape() {
    let felis = Felis::new();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/trace.yaml");
    felis.ok(&["apply", "-f", data.to_str().unwrap()]);
    let text = felis.ok(&[
        "policy",
        "trace",
        "--from",
        "shop/web",
        "--to",
        "shop/db",
        "--protocol",
        "TCP",
        "--port",
        "5432",
    ]);
    assert!(text.contains("policy shop/db-from-web, rule 0"), "{text}");
    assert!(text.trim_end().ends_with("verdict: allow"), "{text}");

    let json = felis.ok(&[
        "policy", "trace", "--from", "shop/web", "--to", "shop/db", "--port", "80", "-o", "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["egress"]["verdict"], "allow");
    assert_eq!(v["ingress"]["verdict"], "deny");
    assert_eq!(v["ingress"]["tier"], "default");
    for key in ["verdict", "tier", "policy", "rule"] {
        assert!(v["ingress"].get(key).is_some(), "ingress.{key} present");
    }

    // A side outside the cluster is null.
    let json = felis.ok(&[
        "policy",
        "trace",
        "--from",
        "203.0.113.5",
        "--to",
        "shop/db",
        "--port",
        "5432",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["egress"].is_null());
    assert_eq!(v["verdict"], "deny");

    let err = felis.fails(&[
        "policy",
        "trace",
        "--from",
        "shop/nope",
        "--to",
        "shop/db",
        "--port",
        "1",
    ]);
    assert!(err.contains("shop/nope"), "{err}");
}
