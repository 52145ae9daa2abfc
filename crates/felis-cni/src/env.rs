//! The CNI environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`,
//! `CNI_PATH`. Pure: parsed from a map the caller reads from the process environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::error::Error;
use crate::error::Result;

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// 1.1.0: is the plugin ready for ADD?
    Status,
    /// 1.1.0: clean up stale attachments.
    Gc,
}

impl Command {
    /// Parses the `CNI_COMMAND` value.
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(Error::InvalidEnv {
                    var: "CNI_COMMAND",
                    reason: format!("unknown command {other:?}"),
                });
            }
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parsed `CNI_ARGS` (`IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod;IP=10.0.0.5`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// Every pair, as given.
    pub pairs: BTreeMap<String, String>,
    /// `IgnoreUnknown`.
    pub ignore_unknown: bool,
    /// `K8S_POD_NAMESPACE`.
    pub k8s_pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub k8s_pod_name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub k8s_pod_infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    pub k8s_pod_uid: Option<String>,
    /// `IP`: requested addresses (comma-separated), as podman's `--ip` sends them.
    pub ips: Vec<IpAddr>,
}

/// The keys we understand; others are an error unless `IgnoreUnknown` is set.
const KNOWN_ARGS: [&str; 6] = [
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "IP",
];

impl CniArgs {
    /// Parses the `CNI_ARGS` value.
    pub fn parse(raw: &str) -> Result<CniArgs> {
        let invalid = |reason: String| Error::InvalidEnv {
            var: "CNI_ARGS",
            reason,
        };
        let mut args = CniArgs::default();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(format!("pair {pair:?} has no '='")))?;
            args.pairs.insert(key.to_string(), value.to_string());
        }
        if let Some(v) = args.pairs.get("IgnoreUnknown") {
            // As Go's UnmarshallableBool: "1" or "true" in any case.
            args.ignore_unknown = v == "1" || v.eq_ignore_ascii_case("true");
        }
        let text = |k: &str| args.pairs.get(k).filter(|v| !v.is_empty()).cloned();
        args.k8s_pod_namespace = text("K8S_POD_NAMESPACE");
        args.k8s_pod_name = text("K8S_POD_NAME");
        args.k8s_pod_infra_container_id = text("K8S_POD_INFRA_CONTAINER_ID");
        args.k8s_pod_uid = text("K8S_POD_UID");
        if let Some(ips) = text("IP") {
            for ip in ips.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let ip = ip
                    .parse()
                    .map_err(|_| invalid(format!("IP={ip:?} is not an IP address")))?;
                args.ips.push(ip);
            }
        }
        if !args.ignore_unknown
            && let Some(unknown) = args
                .pairs
                .keys()
                .find(|k| !KNOWN_ARGS.contains(&k.as_str()))
        {
            return Err(invalid(format!(
                "unknown argument {unknown:?} (set IgnoreUnknown=1 to allow)"
            )));
        }
        Ok(args)
    }

    /// The Kubernetes pod (`namespace`, `name`), when both are given.
    pub fn k8s_pod(&self) -> Option<(&str, &str)> {
        Some((
            self.k8s_pod_namespace.as_deref()?,
            self.k8s_pod_name.as_deref()?,
        ))
    }
}

/// The parsed CNI environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION/STATUS/GC).
    pub container_id: String,
    /// `CNI_NETNS` (absent on DEL is allowed).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (empty for VERSION/STATUS/GC).
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
    /// `CNI_ARGS` as given, for delegated plugins.
    pub raw_args: String,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Parses the environment, checking what the spec requires for the command.
    pub fn from_vars<I, K, V>(vars: I) -> Result<CniEnv>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.as_ref().starts_with("CNI_"))
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .collect();
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let command = Command::parse(&get("CNI_COMMAND").ok_or(Error::MissingEnv("CNI_COMMAND"))?)?;
        let attach = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |k: &'static str| -> Result<String> {
            match get(k) {
                Some(v) => Ok(v),
                None if attach => Err(Error::MissingEnv(k)),
                None => Ok(String::new()),
            }
        };
        let container_id = required("CNI_CONTAINERID")?;
        let ifname = required("CNI_IFNAME")?;
        let netns = get("CNI_NETNS").map(PathBuf::from);
        if netns.is_none() && matches!(command, Command::Add | Command::Check) {
            return Err(Error::MissingEnv("CNI_NETNS"));
        }
        let raw_path = match get("CNI_PATH") {
            Some(p) => p,
            None if attach || command == Command::Gc => return Err(Error::MissingEnv("CNI_PATH")),
            None => String::new(),
        };
        if attach {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        let raw_args = get("CNI_ARGS").unwrap_or_default();
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args: CniArgs::parse(&raw_args)?,
            raw_args,
            path: raw_path
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        })
    }

    /// `CNI_PATH` joined back with `:`.
    pub fn path_string(&self) -> String {
        self.path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Spec: "alphanumeric, plus underscore, dot and hyphen", starting alphanumeric.
fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidEnv {
            var: "CNI_CONTAINERID",
            reason: format!("{id:?} must be alphanumeric with '_', '.' or '-'"),
        })
    }
}

/// Spec: at most 15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
fn validate_ifname(name: &str) -> Result<()> {
    felis_netlink::validate_ifname(name).map_err(|e| Error::InvalidEnv {
        var: "CNI_IFNAME",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_vars() -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/pod"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx;IP=10.88.0.5",
            ),
            ("HOME", "/root"),
        ]
    }

    #[test]
    fn add_environment_parses_fully() {
        let env = CniEnv::from_vars(add_vars()).unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.container_id, "abc123");
        assert_eq!(env.netns, Some(PathBuf::from("/run/netns/pod")));
        assert_eq!(
            env.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(env.args.k8s_pod(), Some(("default", "nginx")));
        assert_eq!(env.args.ips, vec!["10.88.0.5".parse::<IpAddr>().unwrap()]);
        assert!(env.args.ignore_unknown);
    }

    #[test]
    fn missing_required_variables_name_the_variable() {
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let vars = add_vars().into_iter().filter(|(k, _)| *k != missing);
            match CniEnv::from_vars(vars) {
                Err(Error::MissingEnv(var)) => assert_eq!(var, missing),
                other => panic!("{missing}: {other:?}"),
            }
        }
    }

    #[test]
    fn del_does_not_need_a_netns_and_version_needs_only_the_command() {
        let vars = add_vars()
            .into_iter()
            .map(|(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .filter(|(k, _)| *k != "CNI_NETNS");
        assert_eq!(CniEnv::from_vars(vars).unwrap().netns, None);
        let env = CniEnv::from_vars([("CNI_COMMAND", "VERSION")]).unwrap();
        assert_eq!(env.command, Command::Version);
    }

    #[test]
    fn unknown_args_fail_unless_ignored() {
        assert!(CniArgs::parse("FOO=bar").is_err());
        assert!(CniArgs::parse("IgnoreUnknown=true;FOO=bar").is_ok());
        assert!(CniArgs::parse("K8S_POD_NAME").is_err());
        assert!(CniArgs::parse("IP=not-an-ip").is_err());
        let args = CniArgs::parse("IP=10.0.0.1,fd00::1").unwrap();
        assert_eq!(args.ips.len(), 2);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }

    #[test]
    fn bad_container_ids_and_ifnames_are_invalid_environment() {
        let with = |k: &'static str, v: &'static str| {
            add_vars()
                .into_iter()
                .map(move |(kk, vv)| if kk == k { (kk, v) } else { (kk, vv) })
        };
        assert!(matches!(
            CniEnv::from_vars(with("CNI_CONTAINERID", "-bad")),
            Err(Error::InvalidEnv {
                var: "CNI_CONTAINERID",
                ..
            })
        ));
        assert!(matches!(
            CniEnv::from_vars(with("CNI_IFNAME", "a-very-long-ifname")),
            Err(Error::InvalidEnv {
                var: "CNI_IFNAME",
                ..
            })
        ));
        assert!(matches!(
            CniEnv::from_vars(with("CNI_COMMAND", "FROB")),
            Err(Error::InvalidEnv {
                var: "CNI_COMMAND",
                ..
            })
        ));
    }
}
