//! The network configuration read from stdin: the CNI fields and Calico's plugin fields.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

use crate::error::Error;
use crate::error::Result;
use crate::result::CniResult;
use crate::result::Dns;
use crate::version::CniVersion;

/// The MTU used when neither the config nor the agent's MTU file gives one (Calico: 1500).
pub const DEFAULT_MTU: u32 = 1500;

/// A network configuration (one plugin entry of a conflist, with `name` and `cniVersion`
/// injected by the runtime).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// `cniVersion`.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// `name`: the network name (Calico: `k8s-pod-network`).
    #[serde(default)]
    pub name: String,
    /// `type`: the plugin binary name.
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// `mtu`; `0` or absent means "ask the agent" (its MTU file), else 1500.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// `ipam`.
    #[serde(default)]
    pub ipam: Option<IpamConfig>,
    /// `dns`.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// `prevResult` (DEL, CHECK, chained ADD), in the config's version.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// Calico `nodename`.
    #[serde(default)]
    pub nodename: Option<String>,
    /// Calico `nodename_file` (default `/var/lib/calico/nodename`).
    #[serde(default)]
    pub nodename_file: Option<String>,
    /// Calico `nodename_file_optional`.
    #[serde(default)]
    pub nodename_file_optional: bool,
    /// Felis datastore URL (`file:///var/lib/felis/felis.db`, `etcd://host:2379`).
    #[serde(default)]
    pub datastore: Option<String>,
    /// Calico `datastore_type` (`etcdv3`, `kubernetes`).
    #[serde(default)]
    pub datastore_type: Option<String>,
    /// Calico `etcd_endpoints` (`http://10.0.0.1:2379,http://10.0.0.2:2379`).
    #[serde(default)]
    pub etcd_endpoints: Option<String>,
    /// Calico `etcd_key_file`.
    #[serde(default)]
    pub etcd_key_file: Option<String>,
    /// Calico `etcd_cert_file`.
    #[serde(default)]
    pub etcd_cert_file: Option<String>,
    /// Calico `etcd_ca_cert_file`.
    #[serde(default)]
    pub etcd_ca_cert_file: Option<String>,
    /// Calico `log_level`.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Calico `log_file_path`.
    #[serde(default)]
    pub log_file_path: Option<String>,
    /// Calico `container_settings`.
    #[serde(default)]
    pub container_settings: Option<ContainerSettings>,
    /// Calico `policy` (e.g. `{"type": "k8s"}`), kept opaque.
    #[serde(default)]
    pub policy: Option<Value>,
    /// Calico `kubernetes` (kubeconfig), kept opaque.
    #[serde(default)]
    pub kubernetes: Option<Value>,
    /// `runtimeConfig` (capability arguments from the runtime).
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<Value>,
    /// Everything else, kept so nothing is lost when the config is re-encoded.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// The `ipam` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpamConfig {
    /// `type`: the IPAM plugin (`calico-ipam`, `felis-ipam`, `host-local`).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Calico `assign_ipv4` (`"true"` by default).
    #[serde(default)]
    pub assign_ipv4: Option<String>,
    /// Calico `assign_ipv6` (`"false"` by default).
    #[serde(default)]
    pub assign_ipv6: Option<String>,
    /// Calico `ipv4_pools`: pool names or CIDRs to allocate from.
    #[serde(default)]
    pub ipv4_pools: Vec<String>,
    /// Calico `ipv6_pools`.
    #[serde(default)]
    pub ipv6_pools: Vec<String>,
    /// Everything else (host-local's `ranges`, `dataDir`, ...).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl IpamConfig {
    /// Whether to assign IPv4 (Calico default: yes).
    pub fn wants_ipv4(&self) -> bool {
        self.assign_ipv4.as_deref().is_none_or(|v| v == "true")
    }

    /// Whether to assign IPv6 (Calico default: no).
    pub fn wants_ipv6(&self) -> bool {
        self.assign_ipv6.as_deref() == Some("true")
    }
}

/// Calico `container_settings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSettings {
    /// Enable `ip_forward` inside the container.
    #[serde(default)]
    pub allow_ip_forwarding: bool,
}

impl NetworkConfig {
    /// Decodes stdin (CNI error 6 on bad JSON) and validates it (7), including the version (1).
    pub fn parse(bytes: &[u8]) -> Result<NetworkConfig> {
        let config: NetworkConfig =
            serde_json::from_slice(bytes).map_err(|source| Error::Decode {
                what: "network configuration".to_string(),
                source,
            })?;
        config.version()?;
        config.validate()?;
        Ok(config)
    }

    /// The requested spec version.
    pub fn version(&self) -> Result<CniVersion> {
        CniVersion::parse(&self.cni_version)
    }

    fn validate(&self) -> Result<()> {
        let invalid = |field: &str, reason: &str| Error::InvalidConfig {
            field: field.to_string(),
            reason: reason.to_string(),
        };
        // Spec 1.0.0: name starts alphanumeric, then alphanumerics, '_', '.', '-'.
        let mut chars = self.name.chars();
        let name_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !name_ok {
            return Err(invalid(
                "name",
                "must start alphanumeric, then [A-Za-z0-9_.-]",
            ));
        }
        if self.plugin_type.is_empty() {
            return Err(invalid("type", "missing"));
        }
        if let Some(mtu) = self.mtu
            && mtu != 0
            && !(68..=65535).contains(&mtu)
        {
            return Err(invalid("mtu", "must be 0 (auto) or between 68 and 65535"));
        }
        if let Some(ipam) = &self.ipam {
            let t = &ipam.plugin_type;
            if t.is_empty() {
                return Err(invalid("ipam.type", "missing"));
            }
            if t.contains('/') || t == "." || t == ".." {
                return Err(invalid("ipam.type", "must be a plain binary name"));
            }
            if !ipam.wants_ipv4() && !ipam.wants_ipv6() {
                return Err(invalid(
                    "ipam.assign_ipv4",
                    "both address families are disabled",
                ));
            }
        }
        Ok(())
    }

    /// `prevResult` decoded (any supported version), if present.
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        self.prev_result
            .as_ref()
            .map(|v| CniResult::from_json(v, "prevResult"))
            .transpose()
    }

    /// The MTU for the veth: the config's if non-zero, else the agent's MTU file, else 1500.
    pub fn resolve_mtu(&self, mtu_file_contents: Option<&str>) -> u32 {
        self.mtu
            .filter(|m| *m != 0)
            .or_else(|| mtu_file_contents.and_then(|s| s.trim().parse().ok()))
            .filter(|m| *m != 0)
            .unwrap_or(DEFAULT_MTU)
    }

    /// The datastore to use: Felis's `datastore` URL, else Calico's `etcdv3` settings as an
    /// `etcd://` URL; `None` means the default (the embedded store).
    pub fn datastore_url(&self) -> Option<String> {
        if let Some(url) = self.datastore.as_ref().filter(|s| !s.is_empty()) {
            return Some(url.clone());
        }
        let etcd = self.datastore_type.as_deref() == Some("etcdv3")
            || (self.datastore_type.is_none() && self.etcd_endpoints.is_some());
        if !etcd {
            return None;
        }
        let endpoints: Vec<&str> = self
            .etcd_endpoints
            .as_deref()?
            .split(',')
            .map(|e| {
                let e = e.trim();
                e.strip_prefix("http://")
                    .or_else(|| e.strip_prefix("https://"))
                    .unwrap_or(e)
            })
            .filter(|e| !e.is_empty())
            .collect();
        (!endpoints.is_empty()).then(|| format!("etcd://{}", endpoints.join(",")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plugin entry of Calico's `10-calico.conflist` (calico.yaml v3.30, etcd flavour), as
    /// the runtime hands it to the plugin with name and cniVersion injected.
    const CALICO: &str = r#"{
        "cniVersion": "0.3.1",
        "name": "k8s-pod-network",
        "type": "calico",
        "log_level": "info",
        "log_file_path": "/var/log/calico/cni/cni.log",
        "etcd_endpoints": "http://10.0.0.10:2379,http://10.0.0.11:2379",
        "etcd_key_file": "",
        "datastore_type": "etcdv3",
        "nodename": "node-1",
        "mtu": 0,
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "ipv4_pools": ["10.244.0.0/16"]},
        "policy": {"type": "k8s"},
        "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"},
        "container_settings": {"allow_ip_forwarding": true},
        "capabilities": {"portMappings": true}
    }"#;

    #[test]
    fn calico_config_parses() {
        let c = NetworkConfig::parse(CALICO.as_bytes()).unwrap();
        assert_eq!(c.version().unwrap(), CniVersion::V0_3_1);
        assert_eq!(c.name, "k8s-pod-network");
        assert_eq!(c.nodename.as_deref(), Some("node-1"));
        let ipam = c.ipam.as_ref().unwrap();
        assert_eq!(ipam.plugin_type, "calico-ipam");
        assert_eq!(ipam.ipv4_pools, vec!["10.244.0.0/16"]);
        assert!(ipam.wants_ipv4() && !ipam.wants_ipv6());
        assert!(c.container_settings.as_ref().unwrap().allow_ip_forwarding);
        assert!(c.other.contains_key("capabilities"));
        assert_eq!(
            c.datastore_url().as_deref(),
            Some("etcd://10.0.0.10:2379,10.0.0.11:2379")
        );
    }

    #[test]
    fn mtu_comes_from_config_then_file_then_default() {
        let mut c = NetworkConfig::parse(CALICO.as_bytes()).unwrap();
        assert_eq!(c.resolve_mtu(Some("1450\n")), 1450);
        assert_eq!(c.resolve_mtu(None), 1500);
        assert_eq!(c.resolve_mtu(Some("garbage")), 1500);
        c.mtu = Some(8951);
        assert_eq!(c.resolve_mtu(Some("1450")), 8951);
    }

    #[test]
    fn felis_datastore_url_wins_and_default_is_none() {
        let c = NetworkConfig::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"felis","datastore":"file:///tmp/x.db"}"#,
        )
        .unwrap();
        assert_eq!(c.datastore_url().as_deref(), Some("file:///tmp/x.db"));
        let c =
            NetworkConfig::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"felis"}"#).unwrap();
        assert_eq!(c.datastore_url(), None);
    }

    #[test]
    fn bad_configs_map_to_the_right_errors() {
        type Expect = fn(&Error) -> bool;
        let cases: [(&str, Expect); 7] = [
            ("{not json", |e| matches!(e, Error::Decode { .. })),
            (r#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#, |e| {
                matches!(e, Error::IncompatibleVersion { .. })
            }),
            (r#"{"name":"n","type":"t"}"#, |e| {
                matches!(e, Error::IncompatibleVersion { .. })
            }),
            (
                r#"{"cniVersion":"1.0.0","name":"-n","type":"t"}"#,
                |e| matches!(e, Error::InvalidConfig { field, .. } if field == "name"),
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                |e| matches!(e, Error::InvalidConfig { field, .. } if field == "type"),
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"../x"}}"#,
                |e| matches!(e, Error::InvalidConfig { field, .. } if field == "ipam.type"),
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":10}"#,
                |e| matches!(e, Error::InvalidConfig { field, .. } if field == "mtu"),
            ),
        ];
        for (input, check) in cases {
            let e = NetworkConfig::parse(input.as_bytes()).unwrap_err();
            assert!(check(&e), "{input}: {e:?}");
        }
    }
}
