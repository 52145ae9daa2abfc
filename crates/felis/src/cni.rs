//! The CNI entry points of the `felis` binary.
//!
//! - As the plugin (`"type": "felis"`, run with `CNI_COMMAND` set): `felis-cni` does the
//!   protocol and the veth; addresses come from Felis IPAM in-process (for `ipam.type`
//!   `felis-ipam` or `calico-ipam`) or from any delegated IPAM plugin; after a successful ADD
//!   the WorkloadEndpoint is written, and DEL removes it.
//! - As the IPAM plugin (invoked as `felis-ipam`, or `calico-ipam`): addresses only, usable by
//!   any CNI plugin; it needs no network namespace.
//!
//! The node comes from the config's `nodename`, else the agent's `nodename` file, else the
//! host name; the datastore from the config's `datastore` (or Calico's `datastore_type` +
//! `etcd_endpoints`), else `FELIS_DATASTORE`, else the default.

use std::collections::BTreeMap;
use std::io::Read;
use std::io::Write;
use std::sync::Arc;
use std::time::SystemTime;

use felis_api::Kind;
use felis_api::Resource;
use felis_client::Client;
use felis_cni::CniEnv;
use felis_cni::CniError;
use felis_cni::CniResult;
use felis_cni::CniVersion;
use felis_cni::Command;
use felis_cni::DelegatedIpam;
use felis_cni::Error;
use felis_cni::IpamClient;
use felis_cni::IpamRequest;
use felis_cni::NetworkConfig;
use felis_cni::result::IpConfig;
use felis_store::Datastore;
use ipnet::IpNet;
use serde_json::Value;

/// IPAM types served in-process by Felis IPAM.
const IN_PROCESS_IPAM: [&str; 2] = ["felis-ipam", "calico-ipam"];

/// The node this invocation is for.
pub fn node_name(config: &NetworkConfig) -> Result<String, Error> {
    if let Some(name) = config.nodename.as_ref().filter(|n| !n.is_empty()) {
        return Ok(name.clone());
    }
    let file = config
        .nodename_file
        .clone()
        .unwrap_or_else(|| "/var/lib/felis/nodename".into());
    if let Ok(name) = std::fs::read_to_string(&file) {
        let name = name.trim();
        if !name.is_empty() {
            return Ok(name.to_string());
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .map_err(|source| Error::Io {
            action: "reading the host name".into(),
            source,
        })
}

/// The datastore this invocation uses.
pub fn store(config: &NetworkConfig) -> Result<Arc<dyn Datastore>, Error> {
    let url = config
        .datastore_url()
        .unwrap_or_else(|| felis_store::url_from_env(None));
    felis_store::open(&url).map_err(|e| Error::TryAgainLater {
        reason: format!("datastore {url} unavailable: {e}"),
    })
}

fn ipam_error(op: &'static str, handle: &str) -> impl FnOnce(felis_ipam::Error) -> Error {
    let handle = handle.to_string();
    move |e| Error::Ipam {
        op,
        handle,
        reason: e.to_string(),
    }
}

/// Felis IPAM in-process, as an [`IpamClient`].
#[derive(Debug, Default, Clone, Copy)]
pub struct FelisIpam;

impl IpamClient for FelisIpam {
    fn add(&self, request: &IpamRequest<'_>) -> Result<CniResult, Error> {
        let config = request.config;
        let node = node_name(config)?;
        let store = store(config)?;
        let ipam = felis_ipam::Ipam::new(store.as_ref());
        let mut attributes = BTreeMap::new();
        if let Some((namespace, pod)) = request.env.args.k8s_pod() {
            attributes.insert("namespace".to_string(), namespace.to_string());
            attributes.insert("pod".to_string(), pod.to_string());
        }
        #[allow(clippy::disallowed_methods)] // the process edge reads the clock for IPAM
        let now = SystemTime::now();
        let mut addresses: Vec<IpNet> = Vec::new();
        if request.env.args.ips.is_empty() {
            let section = config.ipam.as_ref();
            let mut assign = felis_ipam::AutoAssignRequest::v4(&node, request.handle, 0);
            assign.num_v4 = usize::from(section.is_none_or(|s| s.wants_ipv4()));
            assign.num_v6 = usize::from(section.is_some_and(|s| s.wants_ipv6()));
            assign.pools_v4 = section.map(|s| s.ipv4_pools.clone()).unwrap_or_default();
            assign.pools_v6 = section.map(|s| s.ipv6_pools.clone()).unwrap_or_default();
            assign.attributes = attributes;
            let assigned = ipam
                .auto_assign(&assign, now, &mut rand::rng())
                .map_err(ipam_error("assign addresses", request.handle))?;
            addresses.extend(
                assigned
                    .v4
                    .iter()
                    .chain(&assigned.v6)
                    .map(|n| IpNet::from(n.addr())),
            );
        } else {
            for ip in &request.env.args.ips {
                let net = ipam
                    .assign_ip(*ip, request.handle, &attributes, &node, now)
                    .map_err(ipam_error("assign the requested address", request.handle))?;
                addresses.push(IpNet::from(net.addr()));
            }
        }
        if addresses.is_empty() {
            return Err(Error::NoAddresses {
                handle: request.handle.to_string(),
            });
        }
        Ok(CniResult {
            ips: addresses
                .into_iter()
                .map(|address| IpConfig {
                    address,
                    gateway: None,
                    interface: None,
                })
                .collect(),
            ..CniResult::default()
        })
    }

    fn del(&self, request: &IpamRequest<'_>) -> Result<(), Error> {
        let store = store(request.config)?;
        felis_ipam::Ipam::new(store.as_ref())
            .release_by_handle(request.handle)
            .map(|_| ())
            .map_err(ipam_error("release addresses", request.handle))
    }

    fn check(&self, request: &IpamRequest<'_>) -> Result<(), Error> {
        let store = store(request.config)?;
        let held = felis_ipam::Ipam::new(store.as_ref())
            .ips_by_handle(request.handle)
            .map_err(ipam_error("read addresses", request.handle))?;
        if held.is_empty() {
            return Err(Error::CheckFailed {
                what: format!("handle {} holds no addresses", request.handle),
            });
        }
        Ok(())
    }

    fn status(&self, config: &NetworkConfig) -> Result<(), Error> {
        let store = store(config)?;
        let client = Client::new(store.as_ref());
        let pools = client
            .list(Kind::IpPool, None)
            .map_err(|e| Error::NotAvailable {
                reason: e.to_string(),
            })?;
        if pools.is_empty() {
            return Err(Error::NotAvailable {
                reason: "no IP pool exists".into(),
            });
        }
        Ok(())
    }
}

/// Felis IPAM for `felis-ipam`/`calico-ipam`, any other `ipam.type` delegated.
struct Ipam;

impl Ipam {
    fn pick(config: &NetworkConfig) -> &'static dyn IpamClient {
        let in_process = config
            .ipam
            .as_ref()
            .is_none_or(|i| IN_PROCESS_IPAM.contains(&i.plugin_type.as_str()));
        if in_process {
            &FelisIpam
        } else {
            &DelegatedIpam
        }
    }
}

impl IpamClient for Ipam {
    fn add(&self, r: &IpamRequest<'_>) -> Result<CniResult, Error> {
        Ipam::pick(r.config).add(r)
    }
    fn del(&self, r: &IpamRequest<'_>) -> Result<(), Error> {
        Ipam::pick(r.config).del(r)
    }
    fn check(&self, r: &IpamRequest<'_>) -> Result<(), Error> {
        Ipam::pick(r.config).check(r)
    }
    fn status(&self, c: &NetworkConfig) -> Result<(), Error> {
        Ipam::pick(c).status(c)
    }
}

/// The WorkloadEndpoint for a workload just set up.
fn workload_endpoint(
    env: &CniEnv,
    config: &NetworkConfig,
    node: &str,
    result: &CniResult,
) -> Result<Resource, Error> {
    let (orchestrator, namespace, workload) = match env.args.k8s_pod() {
        Some((namespace, pod)) => ("k8s", namespace.to_string(), pod.to_string()),
        None => ("cni", "default".to_string(), env.container_id.clone()),
    };
    let host = result.interfaces.iter().find(|i| i.sandbox.is_none());
    let container = result.interfaces.iter().find(|i| i.sandbox.is_some());
    let mut labels: BTreeMap<String, String> = config
        .other
        .get("labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    labels.insert("projectcalico.org/namespace".into(), namespace.clone());
    labels.insert("projectcalico.org/orchestrator".into(), orchestrator.into());
    let name =
        felis_api::endpoint::workload_endpoint_name(node, orchestrator, &workload, &env.ifname);
    let value = serde_json::json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "WorkloadEndpoint",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "orchestrator": orchestrator,
            "workload": if orchestrator == "k8s" { String::new() } else { workload.clone() },
            "node": node,
            "containerID": env.container_id,
            "pod": if orchestrator == "k8s" { workload.clone() } else { String::new() },
            "endpoint": env.ifname,
            "ipNetworks": result.ips.iter().map(|ip| ip.address.to_string()).collect::<Vec<_>>(),
            "profiles": [format!("kns.{namespace}")],
            "interfaceName": host.map(|h| h.name.clone()).unwrap_or_default(),
            "mac": container.and_then(|c| c.mac.clone()).unwrap_or_default(),
        }
    });
    Resource::from_value(value).map_err(|e| Error::InvalidConfig {
        field: "WorkloadEndpoint".into(),
        reason: e.to_string(),
    })
}

fn wep_identity(env: &CniEnv, node: &str) -> (String, String) {
    match env.args.k8s_pod() {
        Some((namespace, pod)) => (
            namespace.to_string(),
            felis_api::endpoint::workload_endpoint_name(node, "k8s", pod, &env.ifname),
        ),
        None => (
            "default".to_string(),
            felis_api::endpoint::workload_endpoint_name(
                node,
                "cni",
                &env.container_id,
                &env.ifname,
            ),
        ),
    }
}

/// The whole plugin process: returns the exit code.
pub fn run_plugin() -> i32 {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let mut stdin = Vec::new();
    if let Err(source) = std::io::stdin().read_to_end(&mut stdin) {
        let e = Error::Io {
            action: "reading the network configuration from stdin".into(),
            source,
        };
        return print_error(&e, None);
    }
    let options =
        felis_cni::PluginOptions::from_vars(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let env = CniEnv::from_vars(vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))).ok();
    let config = NetworkConfig::parse(&stdin).ok();
    // DEL: the endpoint goes first, so that the agent stops routing to it before it is gone.
    if let (Some(env), Some(config)) = (&env, &config)
        && env.command == Command::Del
        && let Err(e) = delete_endpoint(env, config)
    {
        return print_error(&e, Some(config));
    }
    let outcome = felis_cni::run(
        vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &stdin,
        &Ipam,
        &options,
    );
    if outcome.exit_code == 0
        && let (Some(env), Some(config)) = (&env, &config)
        && env.command == Command::Add
        && let Err(e) = write_endpoint(env, config, &outcome.stdout)
    {
        // Undo the ADD so nothing is half-made, then report.
        let del_vars = vars.iter().map(|(k, v)| {
            if k == "CNI_COMMAND" {
                (k.as_str(), "DEL")
            } else {
                (k.as_str(), v.as_str())
            }
        });
        let _ = felis_cni::run(del_vars, &stdin, &Ipam, &options);
        return print_error(&e, Some(config));
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    outcome.exit_code
}

fn write_endpoint(env: &CniEnv, config: &NetworkConfig, stdout: &str) -> Result<(), Error> {
    let value: Value = serde_json::from_str(stdout).map_err(|source| Error::Decode {
        what: "our own ADD result".into(),
        source,
    })?;
    let result = CniResult::from_json(&value, "ADD result")?;
    let node = node_name(config)?;
    let resource = workload_endpoint(env, config, &node, &result)?;
    let store = store(config)?;
    Client::new(store.as_ref())
        .write(&[resource], felis_client::WriteMode::Apply)
        .map(|_| ())
        .map_err(|e| Error::TryAgainLater {
            reason: format!("writing the WorkloadEndpoint: {e}"),
        })
}

fn delete_endpoint(env: &CniEnv, config: &NetworkConfig) -> Result<(), Error> {
    let node = node_name(config)?;
    let (namespace, name) = wep_identity(env, &node);
    let store = store(config)?;
    Client::new(store.as_ref())
        .delete(Kind::WorkloadEndpoint, Some(&namespace), &name, true)
        .map(|_| ())
        .map_err(|e| Error::TryAgainLater {
            reason: format!("deleting the WorkloadEndpoint: {e}"),
        })
}

/// The sample network configuration list `install` writes.
pub fn sample_conflist(datastore: &str, nodename: Option<&str>) -> Value {
    let mut plugin = serde_json::json!({
        "type": "felis",
        "datastore": datastore,
        "mtu": 0,
        "ipam": {"type": "felis-ipam"},
    });
    if let (Some(name), Value::Object(fields)) = (nodename, &mut plugin) {
        fields.insert("nodename".into(), Value::String(name.to_string()));
    }
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [plugin],
    })
}

/// Installs the plugin: the running binary copied to `<bin_dir>/felis`, the link
/// `<bin_dir>/felis-ipam` to it, and (when `conf` is given) the sample configuration list. Each
/// file is written to a temporary name and renamed, so a runtime never sees half of one.
pub fn install(
    bin_dir: &std::path::Path,
    conf: Option<&std::path::Path>,
    datastore: &str,
    nodename: Option<&str>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(bin_dir)?;
    let me = std::env::current_exe()?;
    let target = bin_dir.join("felis");
    let tmp = bin_dir.join(".felis.tmp");
    if me != target {
        std::fs::copy(&me, &tmp)?;
        std::fs::rename(&tmp, &target)?;
    }
    let link = bin_dir.join("felis-ipam");
    let tmp_link = bin_dir.join(".felis-ipam.tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink("felis", &tmp_link)?;
    std::fs::rename(&tmp_link, &link)?;
    if let Some(conf) = conf {
        if let Some(dir) = conf.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(&sample_conflist(datastore, nodename))?;
        let tmp = conf.with_extension("tmp");
        std::fs::write(&tmp, text + "\n")?;
        std::fs::rename(&tmp, conf)?;
    }
    Ok(())
}

/// The IPAM plugin process (`felis-ipam`): returns the exit code.
pub fn run_ipam_plugin() -> i32 {
    felis_cni::run_ipam_process(&FelisIpam)
}

fn print_error(e: &Error, config: Option<&NetworkConfig>) -> i32 {
    let version = config
        .map(|c| c.cni_version.clone())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| CniVersion::LATEST.as_str().to_string());
    println!("{}", CniError::from(e).with_version(&version).to_json());
    1
}
