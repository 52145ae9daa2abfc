//! `felis install-cni` places the plugin, the `felis-ipam` link and a configuration list that
//! a runtime can use as is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::io::Write;
use std::process::Command;
use std::process::Stdio;

#[test]
fn install_cni_places_the_plugin_the_ipam_link_and_a_conflist() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    let db = format!("file://{}", dir.path().join("felis.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_felis"))
        .args([
            "install-cni",
            "--bin-dir",
            bin.to_str().unwrap(),
            "--conf-dir",
            conf.to_str().unwrap(),
        ])
        .env("FELIS_DATASTORE", &db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(conf.join("10-felis.conflist")).unwrap())
            .unwrap();
    assert_eq!(list["plugins"][0]["type"], "felis");
    assert_eq!(list["plugins"][0]["ipam"]["type"], "felis-ipam");
    assert_eq!(list["plugins"][0]["datastore"], db.as_str());

    // The link answers as the IPAM plugin.
    let mut child = Command::new(bin.join("felis-ipam"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"cniVersion":"1.0.0"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        version["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "1.0.0"),
        "{version}"
    );

    // Installing again replaces in place.
    let again = Command::new(bin.join("felis"))
        .args([
            "install-cni",
            "--bin-dir",
            bin.to_str().unwrap(),
            "--no-conf",
        ])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
