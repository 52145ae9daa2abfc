//! The IPAM seam: what ADD/DEL/CHECK need from an address allocator, and the delegated
//! implementation that executes an IPAM plugin binary from `CNI_PATH` (spec §Delegated plugins).
//!
//! The binary plugs in-process IPAM (`felis-ipam` on the store) in by implementing
//! [`IpamClient`]; it may fall back to [`DelegatedIpam`] for other `ipam.type`s.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command as Process;
use std::process::Stdio;

use serde_json::Value;

use crate::config::NetworkConfig;
use crate::env::CniEnv;
use crate::env::Command;
use crate::error::CniError;
use crate::error::Error;
use crate::error::Result;
use crate::result::CniResult;

/// Everything an IPAM backend gets for one request.
#[derive(Debug, Clone, Copy)]
pub struct IpamRequest<'a> {
    /// The CNI environment.
    pub env: &'a CniEnv,
    /// The decoded network configuration.
    pub config: &'a NetworkConfig,
    /// The configuration exactly as read from stdin (delegated plugins get these bytes).
    pub raw_config: &'a [u8],
    /// Calico's IPAM handle: `<network>.<container id>`.
    pub handle: &'a str,
}

/// An address allocator. Called outside any async runtime, so implementations may block
/// (or run their own runtime).
pub trait IpamClient {
    /// Assigns addresses for the workload (ADD).
    fn add(&self, request: &IpamRequest<'_>) -> Result<CniResult>;
    /// Releases the workload's addresses (DEL); releasing nothing is success.
    fn del(&self, request: &IpamRequest<'_>) -> Result<()>;
    /// Verifies the workload's addresses (CHECK).
    fn check(&self, _request: &IpamRequest<'_>) -> Result<()> {
        Ok(())
    }
    /// STATUS: is there anything to allocate from?
    fn status(&self, _config: &NetworkConfig) -> Result<()> {
        Ok(())
    }
}

/// Executes the plugin named by `ipam.type` from `CNI_PATH` with our stdin and environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct DelegatedIpam;

impl DelegatedIpam {
    fn plugin<'a>(&self, request: &'a IpamRequest<'_>) -> Result<&'a str> {
        request
            .config
            .ipam
            .as_ref()
            .map(|i| i.plugin_type.as_str())
            .ok_or_else(|| Error::InvalidConfig {
                field: "ipam".into(),
                reason: "missing".into(),
            })
    }
}

impl IpamClient for DelegatedIpam {
    fn add(&self, request: &IpamRequest<'_>) -> Result<CniResult> {
        let plugin = self.plugin(request)?;
        let output = exec_plugin(plugin, request.env, Command::Add, request.raw_config)?;
        let value = output.ok_or_else(|| Error::NoAddresses {
            handle: request.handle.to_string(),
        })?;
        CniResult::from_json(&value, &format!("{plugin} result"))
    }

    fn del(&self, request: &IpamRequest<'_>) -> Result<()> {
        let plugin = self.plugin(request)?;
        exec_plugin(plugin, request.env, Command::Del, request.raw_config).map(|_| ())
    }

    fn check(&self, request: &IpamRequest<'_>) -> Result<()> {
        let plugin = self.plugin(request)?;
        exec_plugin(plugin, request.env, Command::Check, request.raw_config).map(|_| ())
    }
}

/// Finds `plugin` on `CNI_PATH`.
pub fn find_plugin(plugin: &str, env: &CniEnv) -> Result<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(Error::InvalidConfig {
            field: "ipam.type".into(),
            reason: format!("{plugin:?} is not a plain binary name"),
        });
    }
    env.path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::PluginNotFound {
            plugin: plugin.to_string(),
            path: env.path_string(),
        })
}

/// Runs a delegated plugin; returns its stdout JSON (if any) or its CNI error.
pub fn exec_plugin(
    plugin: &str,
    env: &CniEnv,
    command: Command,
    stdin: &[u8],
) -> Result<Option<Value>> {
    let binary = find_plugin(plugin, env)?;
    let io_err = |action: &str| {
        let action = format!("{action} {plugin} plugin {}", binary.display());
        move |source| Error::Io { action, source }
    };
    let mut child = Process::new(&binary)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &env.container_id)
        .env(
            "CNI_NETNS",
            env.netns
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", &env.raw_args)
        .env("CNI_PATH", env.path_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err("starting"))?;
    // Write stdin from a helper thread so a chatty plugin cannot deadlock us on full pipes.
    let output = std::thread::scope(|scope| {
        let writer = child.stdin.take().map(|mut pipe| {
            scope.spawn(move || {
                let _ = pipe.write_all(stdin);
            })
        });
        let output = child.wait_with_output();
        if let Some(w) = writer {
            let _ = w.join();
        }
        output
    })
    .map_err(io_err("waiting for"))?;
    if output.status.success() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        let value = serde_json::from_str(&stdout).map_err(|source| Error::Decode {
            what: format!("{plugin} plugin output"),
            source,
        })?;
        return Ok(Some(value));
    }
    match serde_json::from_slice::<CniError>(&output.stdout) {
        Ok(e) => Err(Error::Delegated {
            plugin: plugin.to_string(),
            code: e.code,
            msg: e.msg,
            details: e.details,
        }),
        Err(_) => Err(Error::DelegatedCrashed {
            plugin: plugin.to_string(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        }),
    }
}
