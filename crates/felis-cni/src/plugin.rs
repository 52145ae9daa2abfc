//! The plugin: one invocation in, stdout and an exit code out.
//!
//! ```text
//!  env + stdin ─▶ CniEnv, NetworkConfig ─▶ ADD:  IpamClient::add ─▶ setup_workload ─▶ result
//!                                          DEL:  teardown_workload ─▶ IpamClient::del
//!                                          CHECK: prevResult ─▶ check_workload ─▶ IpamClient::check
//!  any Error ─▶ CniError (one mapping) ─▶ {"cniVersion","code","msg","details"}, exit 1
//! ```
//!
//! IPAM runs outside the async runtime (implementations may block); the dataplane work runs on
//! one current-thread runtime per invocation.

use std::path::PathBuf;

use felis_netlink::Handle;
use serde_json::Value;

use crate::config::NetworkConfig;
use crate::dataplane;
use crate::dataplane::WorkloadSpec;
use crate::env::CniEnv;
use crate::env::Command;
use crate::error::CniError;
use crate::error::Error;
use crate::error::Result;
use crate::ipam::IpamClient;
use crate::ipam::IpamRequest;
use crate::naming;
use crate::result::CniResult;
use crate::result::Interface;
use crate::version::CniVersion;
use crate::version::version_info;

/// Settings that come from the host rather than the invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginOptions {
    /// Host veth prefix (first entry of `FELIX_INTERFACEPREFIX`; default `cali`).
    pub interface_prefix: String,
    /// The "host" namespace; `None` is the plugin's own (tests point this at a test netns).
    pub host_netns: Option<PathBuf>,
    /// The agent's MTU file, read when the config's `mtu` is 0 or absent.
    pub mtu_file: Option<PathBuf>,
}

impl Default for PluginOptions {
    fn default() -> Self {
        PluginOptions {
            interface_prefix: naming::DEFAULT_INTERFACE_PREFIX.to_string(),
            host_netns: None,
            mtu_file: Some(PathBuf::from("/var/lib/felis/mtu")),
        }
    }
}

impl PluginOptions {
    /// Options from the process environment: `FELIX_INTERFACEPREFIX` (first entry) and
    /// `FELIS_MTU_FILE`; everything else defaults.
    pub fn from_vars<I, K, V>(vars: I) -> PluginOptions
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut options = PluginOptions::default();
        for (k, v) in vars {
            match k.as_ref() {
                "FELIX_INTERFACEPREFIX" => {
                    options.interface_prefix = naming::interface_prefix(Some(v.as_ref()));
                }
                "FELIS_MTU_FILE" if !v.as_ref().is_empty() => {
                    options.mtu_file = Some(PathBuf::from(v.as_ref()));
                }
                _ => {}
            }
        }
        options
    }
}

/// What the process should print and exit with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Text for stdout (may be empty).
    pub stdout: String,
    /// Process exit code: 0 on success, 1 on error (after printing the error JSON).
    pub exit_code: i32,
}

/// Runs one invocation: `vars` is the process environment, `stdin` the config bytes.
pub fn run<I, K, V>(
    vars: I,
    stdin: &[u8],
    ipam: &dyn IpamClient,
    options: &PluginOptions,
) -> Outcome
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    finish(
        dispatch(vars, stdin, ipam, options),
        requested_version(stdin),
    )
}

/// The `cniVersion` on stdin, if stdin is JSON at all: VERSION echoes it, errors answer in it.
fn requested_version(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(stdin)
        .ok()?
        .get("cniVersion")?
        .as_str()
        .map(str::to_string)
}

/// Turns a command's outcome into stdout and an exit code; errors are answered in the
/// requested version when there is one.
fn finish(outcome: Result<Option<Value>>, requested_version: Option<String>) -> Outcome {
    match outcome {
        Ok(Some(value)) => Outcome {
            stdout: format!("{value}\n"),
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Err(e) => {
            tracing::error!(error = %e, "CNI command failed");
            let version = requested_version
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| CniVersion::LATEST.as_str().to_string());
            Outcome {
                stdout: format!("{}\n", CniError::from(&e).with_version(&version).to_json()),
                exit_code: 1,
            }
        }
    }
}

/// Runs one invocation as an IPAM plugin (`felis-ipam`, `calico-ipam`): the runtime-facing
/// protocol is the same, but ADD only allocates and returns `ips`/`routes`/`dns` (no
/// interfaces), DEL only releases, CHECK only asks IPAM. No dataplane work.
pub fn run_ipam<I, K, V>(vars: I, stdin: &[u8], ipam: &dyn IpamClient) -> Outcome
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let requested = requested_version(stdin);
    let outcome = (|| -> Result<Option<Value>> {
        let env = CniEnv::from_vars(vars)?;
        if env.command == Command::Version {
            return Ok(Some(version_info(requested.as_deref())));
        }
        let config = NetworkConfig::parse(stdin)?;
        let version = config.version()?;
        let handle = naming::ipam_handle(&config.name, &env.container_id);
        let request = IpamRequest {
            env: &env,
            config: &config,
            raw_config: stdin,
            handle: &handle,
        };
        match env.command {
            Command::Add => {
                let mut result = ipam.add(&request)?;
                if result.ips.is_empty() {
                    ipam.del(&request)?;
                    return Err(Error::NoAddresses { handle });
                }
                // An IPAM plugin names no interfaces; the main plugin assigns them.
                result.interfaces.clear();
                for ip in &mut result.ips {
                    ip.interface = None;
                }
                Ok(Some(result.to_json(version)))
            }
            Command::Del => ipam.del(&request).map(|()| None),
            Command::Check if version.supports_check() => ipam.check(&request).map(|()| None),
            Command::Status if version.supports_status_and_gc() => {
                ipam.status(&config).map(|()| None)
            }
            Command::Gc if version.supports_status_and_gc() => Ok(None),
            Command::Version => Ok(Some(version_info(Some(version.as_str())))),
            other => Err(Error::CommandNotInVersion {
                command: other.as_str(),
                version: version.to_string(),
            }),
        }
    })();
    finish(outcome, requested)
}

/// The whole process edge for the binary: reads the environment and stdin, runs, prints the
/// outcome on stdout and returns the exit code.
pub fn run_process(ipam: &dyn IpamClient) -> i32 {
    process_edge(|vars, stdin| {
        let options = PluginOptions::from_vars(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        run(
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            stdin,
            ipam,
            &options,
        )
    })
}

/// [`run_process`] for the IPAM plugin mode ([`run_ipam`]).
pub fn run_ipam_process(ipam: &dyn IpamClient) -> i32 {
    process_edge(|vars, stdin| {
        run_ipam(
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            stdin,
            ipam,
        )
    })
}

/// Reads the environment and stdin, runs `f`, prints its stdout, returns the exit code.
fn process_edge(f: impl FnOnce(&[(String, String)], &[u8]) -> Outcome) -> i32 {
    use std::io::Read;
    use std::io::Write;

    let vars: Vec<(String, String)> = std::env::vars().collect();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => f(&vars, &stdin),
        Err(source) => {
            let e = Error::Io {
                action: "reading the network configuration from stdin".into(),
                source,
            };
            finish(Err(e), None)
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    outcome.exit_code
}

fn dispatch<I, K, V>(
    vars: I,
    stdin: &[u8],
    ipam: &dyn IpamClient,
    options: &PluginOptions,
) -> Result<Option<Value>>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let env = CniEnv::from_vars(vars)?;
    if env.command == Command::Version {
        // VERSION's stdin is just {"cniVersion": ...}; it may even be empty.
        return Ok(Some(version_info(requested_version(stdin).as_deref())));
    }
    let config = NetworkConfig::parse(stdin)?;
    let version = config.version()?;
    let handle = naming::ipam_handle(&config.name, &env.container_id);
    let request = IpamRequest {
        env: &env,
        config: &config,
        raw_config: stdin,
        handle: &handle,
    };
    match env.command {
        Command::Add => cmd_add(&request, ipam, options, version).map(Some),
        Command::Del => cmd_del(&request, ipam, options).map(|()| None),
        Command::Check => {
            if !version.supports_check() {
                return Err(Error::CommandNotInVersion {
                    command: "CHECK",
                    version: version.to_string(),
                });
            }
            cmd_check(&request, ipam, options).map(|()| None)
        }
        Command::Status => {
            if !version.supports_status_and_gc() {
                return Err(Error::CommandNotInVersion {
                    command: "STATUS",
                    version: version.to_string(),
                });
            }
            ipam.status(&config).map(|()| None)
        }
        Command::Gc => {
            if !version.supports_status_and_gc() {
                return Err(Error::CommandNotInVersion {
                    command: "GC",
                    version: version.to_string(),
                });
            }
            // Stale attachments are the agent's and IPAM's business (IPAM `check`); nothing
            // of ours outlives a DEL.
            Ok(None)
        }
        Command::Version => Ok(Some(version_info(Some(version.as_str())))),
    }
}

/// The host veth name for this invocation.
pub fn host_ifname(env: &CniEnv, options: &PluginOptions) -> String {
    naming::host_veth_name(
        &options.interface_prefix,
        env.args.k8s_pod(),
        &env.container_id,
    )
}

fn workload_spec(
    request: &IpamRequest<'_>,
    options: &PluginOptions,
    addresses: Vec<ipnet::IpNet>,
) -> Result<WorkloadSpec> {
    let container_netns = request
        .env
        .netns
        .clone()
        .ok_or(Error::MissingEnv("CNI_NETNS"))?;
    let mtu_file = options
        .mtu_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    Ok(WorkloadSpec {
        container_netns,
        container_ifname: request.env.ifname.clone(),
        host_ifname: host_ifname(request.env, options),
        addresses,
        mtu: request.config.resolve_mtu(mtu_file.as_deref()),
        allow_ip_forwarding: request
            .config
            .container_settings
            .as_ref()
            .is_some_and(|c| c.allow_ip_forwarding),
    })
}

async fn host_handle(options: &PluginOptions) -> Result<Handle> {
    match &options.host_netns {
        Some(path) => Handle::in_netns(path).await.map_err(Error::netlink(format!(
            "open netlink in host netns {}",
            path.display()
        ))),
        None => Handle::current()
            .await
            .map_err(Error::netlink("open netlink in the host netns")),
    }
}

fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    felis_netlink::block_on(future).map_err(Error::netlink("start the netlink runtime"))?
}

fn cmd_add(
    request: &IpamRequest<'_>,
    ipam: &dyn IpamClient,
    options: &PluginOptions,
    version: CniVersion,
) -> Result<Value> {
    let env = request.env;
    // Spec: ADD of an unknown container is error 3; check before allocating anything.
    // Unknown container (error 3) or a repeated ADD: refuse before IPAM, since rolling back
    // would release the live workload's addresses.
    let container_netns = env.netns.clone().ok_or(Error::MissingEnv("CNI_NETNS"))?;
    block_on(async {
        let container = dataplane::container_handle(&container_netns).await?;
        dataplane::ensure_ifname_free(&container, &env.ifname).await
    })?;
    let allocated = ipam.add(request)?;
    let addresses = allocated.addresses_of(&env.ifname);
    if addresses.is_empty() {
        release_after_failure(request, ipam);
        return Err(Error::NoAddresses {
            handle: request.handle.to_string(),
        });
    }
    let spec = match workload_spec(request, options, addresses) {
        Ok(spec) => spec,
        Err(e) => {
            release_after_failure(request, ipam);
            return Err(e);
        }
    };
    // setup_workload removes what it built if it fails half-way.
    let built = block_on(async {
        let host = host_handle(options).await?;
        dataplane::setup_workload(&host, &spec).await
    });
    let built = match built {
        Ok(built) => built,
        Err(e) => {
            release_after_failure(request, ipam);
            return Err(e);
        }
    };
    let result = CniResult {
        interfaces: vec![
            Interface {
                name: built.host_ifname.clone(),
                mac: Some(built.host_mac.to_string()),
                sandbox: None,
                mtu: Some(built.mtu),
            },
            Interface {
                name: built.container_ifname.clone(),
                mac: Some(built.container_mac.to_string()),
                sandbox: Some(spec.container_netns.display().to_string()),
                mtu: Some(built.mtu),
            },
        ],
        ips: allocated
            .ips
            .iter()
            .map(|ip| crate::result::IpConfig {
                address: ip.address,
                gateway: ip.gateway,
                interface: Some(1),
            })
            .collect(),
        routes: allocated.routes.clone(),
        dns: if allocated.dns == Default::default() {
            request.config.dns.clone().unwrap_or_default()
        } else {
            allocated.dns.clone()
        },
    };
    tracing::info!(
        container = %env.container_id,
        host_ifname = %built.host_ifname,
        addresses = ?built.addresses,
        "workload attached"
    );
    Ok(result.to_json(version))
}

fn release_after_failure(request: &IpamRequest<'_>, ipam: &dyn IpamClient) {
    if let Err(e) = ipam.del(request) {
        tracing::warn!(handle = request.handle, error = %e, "releasing addresses after failed ADD failed");
    }
}

fn cmd_del(
    request: &IpamRequest<'_>,
    ipam: &dyn IpamClient,
    options: &PluginOptions,
) -> Result<()> {
    let env = request.env;
    let host_ifname = host_ifname(env, options);
    block_on(async {
        let host = host_handle(options).await?;
        dataplane::teardown_workload(&host, env.netns.as_deref(), &env.ifname, &host_ifname).await
    })?;
    ipam.del(request)
}

fn cmd_check(
    request: &IpamRequest<'_>,
    ipam: &dyn IpamClient,
    options: &PluginOptions,
) -> Result<()> {
    let prev = request
        .config
        .prev_result()?
        .ok_or_else(|| Error::InvalidConfig {
            field: "prevResult".into(),
            reason: "CHECK needs the result of ADD".into(),
        })?;
    let addresses = prev.addresses_of(&request.env.ifname);
    let spec = workload_spec(request, options, addresses)?;
    block_on(async {
        let host = host_handle(options).await?;
        dataplane::check_workload(&host, &spec).await
    })?;
    ipam.check(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_follow_felix_interface_prefix() {
        let o = PluginOptions::from_vars([("FELIX_INTERFACEPREFIX", "tap,cali"), ("X", "y")]);
        assert_eq!(o.interface_prefix, "tap");
        let o = PluginOptions::from_vars([("FELIS_MTU_FILE", "/run/felis/mtu")]);
        assert_eq!(o.mtu_file, Some(PathBuf::from("/run/felis/mtu")));
        assert_eq!(
            PluginOptions::from_vars(Vec::<(String, String)>::new()),
            PluginOptions::default()
        );
    }

    struct OneAddress;

    impl IpamClient for OneAddress {
        fn add(&self, request: &IpamRequest<'_>) -> Result<CniResult> {
            assert_eq!(request.handle, "k8s-pod-network.c1");
            CniResult::from_json(
                &serde_json::json!({"cniVersion": "1.0.0",
                    "interfaces": [{"name": "eth0"}],
                    "ips": [{"address": "10.244.1.5/32", "interface": 0}]}),
                "test",
            )
        }
        fn del(&self, _request: &IpamRequest<'_>) -> Result<()> {
            Ok(())
        }
    }

    fn ipam_vars(command: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
    }

    #[test]
    fn ipam_plugin_mode_returns_addresses_without_interfaces() {
        let stdin = br#"{"cniVersion":"0.3.1","name":"k8s-pod-network","type":"calico",
            "ipam":{"type":"felis-ipam"}}"#;
        let out = run_ipam(ipam_vars("ADD"), stdin, &OneAddress);
        assert_eq!(out.exit_code, 0, "{}", out.stdout);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion": "0.3.1",
                "ips": [{"version": "4", "address": "10.244.1.5/32"}], "dns": {}})
        );
        assert_eq!(
            run_ipam(ipam_vars("DEL"), stdin, &OneAddress),
            Outcome {
                stdout: String::new(),
                exit_code: 0
            }
        );
        let check = run_ipam(ipam_vars("CHECK"), stdin, &OneAddress);
        let v: Value = serde_json::from_str(&check.stdout).unwrap();
        assert_eq!((check.exit_code, v["code"].as_u64()), (1, Some(1)));
    }
}
