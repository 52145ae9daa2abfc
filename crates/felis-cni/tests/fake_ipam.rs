//! The plugin against a recording fake IPAM: which IPAM calls ADD/DEL make, rollbacks, and an
//! ignored measurement of ADD/DEL latency. Throwaway namespaces; skipped unless root.

// Test helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use felis_cni::CniResult;
use felis_cni::IpamClient;
use felis_cni::IpamRequest;
use felis_cni::PluginOptions;
use felis_cni::result::IpConfig;
use felis_testns::TestNetns;
use felis_testns::skip_unless_root;
use serde_json::Value;
use serde_json::json;

/// Hands out the next address of 10.30.0.0/16 and records every call.
#[derive(Default)]
struct RecordingIpam {
    calls: Mutex<Vec<String>>,
    next: Mutex<u32>,
    empty: bool,
}

impl IpamClient for RecordingIpam {
    fn add(&self, request: &IpamRequest<'_>) -> felis_cni::Result<CniResult> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("add {}", request.handle));
        if self.empty {
            return Ok(CniResult::default());
        }
        let mut next = self.next.lock().unwrap();
        *next += 1;
        let ip = format!("10.30.{}.{}/32", *next / 250, *next % 250 + 1);
        Ok(CniResult {
            ips: vec![IpConfig {
                address: ip.parse().unwrap(),
                gateway: None,
                interface: None,
            }],
            ..CniResult::default()
        })
    }

    fn del(&self, request: &IpamRequest<'_>) -> felis_cni::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("del {}", request.handle));
        Ok(())
    }
}

fn config() -> Value {
    json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "felis", "mtu": 1450,
           "ipam": {"type": "felis-ipam"}})
}

fn vars(command: &str, container: &str, netns: &TestNetns) -> Vec<(String, String)> {
    vec![
        ("CNI_COMMAND".into(), command.into()),
        ("CNI_CONTAINERID".into(), container.into()),
        ("CNI_NETNS".into(), netns.path().display().to_string()),
        ("CNI_IFNAME".into(), "eth0".into()),
        ("CNI_PATH".into(), "/nonexistent".into()),
    ]
}

fn options(host: &TestNetns) -> PluginOptions {
    PluginOptions {
        host_netns: Some(host.path().to_path_buf()),
        mtu_file: None,
        ..PluginOptions::default()
    }
}

#[test]
fn add_then_del_call_ipam_with_calicos_handle() {
    if skip_unless_root("add_then_del_call_ipam_with_calicos_handle") {
        return;
    }
    let host = TestNetns::new().unwrap();
    let pod = TestNetns::new().unwrap();
    let ipam = RecordingIpam::default();
    let stdin = config().to_string();
    let add = felis_cni::run(
        vars("ADD", "c1", &pod),
        stdin.as_bytes(),
        &ipam,
        &options(&host),
    );
    assert_eq!(add.exit_code, 0, "{}", add.stdout);
    // Non-Kubernetes workload: cali + the container ID.
    let result: Value = serde_json::from_str(&add.stdout).unwrap();
    assert_eq!(result["interfaces"][0]["name"], "calic1");
    let del = felis_cni::run(
        vars("DEL", "c1", &pod),
        stdin.as_bytes(),
        &ipam,
        &options(&host),
    );
    assert_eq!(del.exit_code, 0, "{}", del.stdout);
    assert_eq!(
        *ipam.calls.lock().unwrap(),
        ["add k8s-pod-network.c1", "del k8s-pod-network.c1"]
    );
}

#[test]
fn ipam_without_addresses_is_rolled_back() {
    if skip_unless_root("ipam_without_addresses_is_rolled_back") {
        return;
    }
    let host = TestNetns::new().unwrap();
    let pod = TestNetns::new().unwrap();
    let ipam = RecordingIpam {
        empty: true,
        ..RecordingIpam::default()
    };
    let add = felis_cni::run(
        vars("ADD", "c2", &pod),
        config().to_string().as_bytes(),
        &ipam,
        &options(&host),
    );
    let e: Value = serde_json::from_str(&add.stdout).unwrap();
    assert_eq!((add.exit_code, e["code"].as_u64()), (1, Some(103)), "{e}");
    assert_eq!(
        *ipam.calls.lock().unwrap(),
        ["add k8s-pod-network.c2", "del k8s-pod-network.c2"]
    );
}

/// Run with: cargo test -p felis-cni --test fake_ipam -- --ignored --nocapture
#[test]
#[ignore = "measurement: prints ADD/DEL latency with 0 and 100k host routes"]
fn measure_add_del_latency() {
    if skip_unless_root("measure_add_del_latency") {
        return;
    }
    for routes in [0u32, 100_000] {
        let host = TestNetns::new().unwrap();
        if routes > 0 {
            let path = std::env::temp_dir().join(format!("felis-routes-{}", std::process::id()));
            let mut f = std::fs::File::create(&path).unwrap();
            for n in 0..routes {
                writeln!(
                    f,
                    "route add blackhole 10.{}.{}.{}/32 proto 12",
                    100 + n / 65536,
                    (n / 256) % 256,
                    n % 256
                )
                .unwrap();
            }
            drop(f);
            host.ip(&["-batch", &path.display().to_string()]);
            let _ = std::fs::remove_file(&path);
        }
        let ipam = RecordingIpam::default();
        let stdin = config().to_string();
        let (mut adds, mut dels) = (Vec::new(), Vec::new());
        for n in 0..30 {
            let pod = TestNetns::new().unwrap();
            let container = format!("m{n}");
            let t = Instant::now();
            let add = felis_cni::run(
                vars("ADD", &container, &pod),
                stdin.as_bytes(),
                &ipam,
                &options(&host),
            );
            adds.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(add.exit_code, 0, "{}", add.stdout);
            let t = Instant::now();
            let del = felis_cni::run(
                vars("DEL", &container, &pod),
                stdin.as_bytes(),
                &ipam,
                &options(&host),
            );
            dels.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(del.exit_code, 0, "{}", del.stdout);
        }
        let pct = |v: &mut Vec<f64>, p: f64| {
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * p) as usize]
        };
        println!(
            "host routes {routes}: ADD p50 {:.1} ms p95 {:.1} ms; DEL p50 {:.1} ms p95 {:.1} ms",
            pct(&mut adds, 0.5),
            pct(&mut adds, 0.95),
            pct(&mut dels, 0.5),
            pct(&mut dels, 0.95)
        );
    }
}
