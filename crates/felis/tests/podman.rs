//! A real container runtime on Felis: podman (CNI backend) runs a busybox container in a lab
//! host's namespace with the `felis` plugin; it gets its address through Felis IPAM, reaches a
//! lab workload and the lab's internet, and its WorkloadEndpoint goes away with it. Needs root,
//! podman, runc and busybox-static (`scripts/test` installs them). Podman's storage, run
//! directory, configuration and network files all live in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;

use common::Lab;
use common::is_root;

fn felis(args: &[&str], datastore: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_felis"))
        .args(args)
        .env("FELIS_DATASTORE", datastore)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "felis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn podman_runs_a_container_on_the_felis_cni_plugin() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    for tool in ["podman", "runc"] {
        assert!(
            Command::new("which")
                .arg(tool)
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is needed (Debian packages podman, runc; scripts/test installs them)"
        );
    }
    assert!(
        Path::new("/bin/busybox").exists(),
        "busybox-static is needed (scripts/test installs it)"
    );

    let Some(lab) = Lab::up("m", &["--hosts", "1", "--subnets", "1", "--workloads", "1"]) else {
        return;
    };
    let name = lab.name.clone();
    let datastore = format!("file:///run/felis/lab/{name}/felis.db");
    let ps: serde_json::Value = serde_json::from_str(&felis(
        &["lab", "ps", "--name", &name, "-o", "json"],
        &datastore,
    ))
    .unwrap();
    let target = ps["workloads"][0]["address"].as_str().unwrap().to_string();

    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    for dir in ["bin", "net.d", "root", "runroot", "rootfs/bin"] {
        std::fs::create_dir_all(w.join(dir)).unwrap();
    }
    for plugin in ["felis", "felis-ipam"] {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_felis"), w.join("bin").join(plugin))
            .unwrap();
    }
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "felisnet",
        "plugins": [{"type": "felis", "nodename": "h1", "datastore": datastore, "mtu": 0,
                     "ipam": {"type": "felis-ipam"}}],
    });
    std::fs::write(w.join("net.d/felisnet.conflist"), conflist.to_string()).unwrap();
    // The settings REAL-PEERS.md lists for podman 4.3 on these machines.
    std::fs::write(
        w.join("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n",
            w.join("bin").display(),
            w.join("net.d").display()
        ),
    )
    .unwrap();
    std::fs::copy("/bin/busybox", w.join("rootfs/bin/busybox")).unwrap();
    for applet in ["sh", "ping", "ip"] {
        std::os::unix::fs::symlink("busybox", w.join("rootfs/bin").join(applet)).unwrap();
    }
    let podman = |args: &[&str]| {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{name}.h1"))
            .args(["podman", "--storage-driver", "vfs", "--root"])
            .arg(w.join("root"))
            .arg("--runroot")
            .arg(w.join("runroot"))
            .args(args)
            .env("CONTAINERS_CONF", w.join("containers.conf"));
        cmd
    };
    let tar = Command::new("tar")
        .arg("-C")
        .arg(w.join("rootfs"))
        .args(["-c", "."])
        .output()
        .unwrap();
    let mut import = podman(&["import", "-", "localhost/bb"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    assert!(import.wait().unwrap().success(), "podman import");

    let script =
        format!("ip -4 addr show eth0 && ping -c1 -W2 {target} && ping -c1 -W2 203.0.113.10");
    let out = podman(&[
        "run",
        "--rm",
        "--network",
        "felisnet",
        "--cap-add",
        "NET_RAW",
        "localhost/bb",
        "sh",
        "-c",
        &script,
    ])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "podman run: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("inet 10.244."),
        "an address from the lab pool: {stdout}"
    );
    assert_eq!(
        stdout.matches(" 0% packet loss").count(),
        2,
        "reached the workload and the internet: {stdout}"
    );

    // The container is gone, and so are its endpoint and its address.
    let weps = felis(&["get", "wep", "-A", "-o", "json"], &datastore);
    let weps: serde_json::Value = serde_json::from_str(&weps).unwrap();
    assert_eq!(
        weps["items"].as_array().unwrap().len(),
        1,
        "only the lab's own workload is left: {weps:#}"
    );
    let check = felis(&["ipam", "check", "--grace-period", "0s"], &datastore);
    assert!(
        check.contains("Check complete; found 0 problems."),
        "{check}"
    );
    let _ = podman(&["rmi", "-f", "localhost/bb"]).output();
}
