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
    // The version to answer errors in: the config's, when it can be read at all.
    let requested_version = serde_json::from_slice::<Value>(stdin).ok().and_then(|v| {
        v.get("cniVersion")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    match dispatch(vars, stdin, ipam, options) {
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
        let requested = serde_json::from_slice::<Value>(stdin).ok();
        let requested = requested
            .as_ref()
            .and_then(|v| v.get("cniVersion"))
            .and_then(Value::as_str);
        return Ok(Some(version_info(requested)));
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
    ensure_netns_exists(env)?;
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

/// Spec: a command on a container whose namespace is gone is error 3 (container unknown).
fn ensure_netns_exists(env: &CniEnv) -> Result<()> {
    if let Some(netns) = &env.netns
        && let Err(source) = std::fs::metadata(netns)
    {
        return Err(Error::ContainerUnknown {
            netns: netns.clone(),
            source,
        });
    }
    Ok(())
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
    ensure_netns_exists(request.env)?;
    block_on(async {
        let host = host_handle(options).await?;
        dataplane::check_workload(&host, &spec).await
    })?;
    ipam.check(request)
}
