//! Cluster-wide singletons: `KubeControllersConfiguration` and `ClusterInformation`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use crate::bgp::check_log_level;
use crate::duration;
use crate::error::ValidationError;
use crate::meta::ObjectMeta;
use crate::validate;
use crate::validate::Normalize;

/// The `KubeControllersConfiguration` singleton (`default`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeControllersConfiguration {
    /// Name (`default`).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The settings.
    #[serde(default)]
    pub spec: KubeControllersConfigurationSpec,
    /// The configuration actually running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<KubeControllersConfigurationStatus>,
}

/// The spec of `KubeControllersConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeControllersConfigurationSpec {
    /// Log level (default Info).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<String>,
    /// `Enabled` (default) or `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_checks: Option<String>,
    /// etcd compaction period (default 10m; 0 disables).
    #[serde(
        default,
        rename = "etcdV3CompactionPeriod",
        skip_serializing_if = "Option::is_none"
    )]
    pub etcd_v3_compaction_period: Option<String>,
    /// Prometheus port (0 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_port: Option<u16>,
    /// pprof port (0 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_profile_port: Option<u16>,
    /// The controllers to run and their settings.
    #[serde(default)]
    pub controllers: ControllersConfig,
}

/// Status of `KubeControllersConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeControllersConfigurationStatus {
    /// The configuration in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_config: Option<KubeControllersConfigurationSpec>,
    /// Environment variables that override it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment_vars: BTreeMap<String, String>,
}

/// The controllers; an absent one is not run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControllersConfig {
    /// Node controller: IPAM garbage collection, label sync, auto host endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeControllerConfig>,
    /// Policy controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ReconcilerConfig>,
    /// Workload endpoint controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_endpoint: Option<ReconcilerConfig>,
    /// Service account controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ReconcilerConfig>,
    /// Namespace controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<ReconcilerConfig>,
    /// LoadBalancer IPAM controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerControllerConfig>,
}

/// A controller with just a reconcile period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReconcilerConfig {
    /// Full resync period (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciler_period: Option<String>,
}

/// The node controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeControllerConfig {
    /// Full resync period (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciler_period: Option<String>,
    /// `Enabled` (default) or `Disabled`: copy Kubernetes node labels to Calico nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_labels: Option<String>,
    /// Automatic host endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_endpoint: Option<AutoHostEndpointConfig>,
    /// How long an address must look leaked before it is released (default 15m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak_grace_period: Option<String>,
}

/// Automatic host endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoHostEndpointConfig {
    /// `Enabled` or `Disabled` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_create: Option<String>,
    /// `Enabled` (default) or `Disabled`: the `*` endpoint of each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_default_host_endpoint: Option<String>,
    /// Templates of extra host endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<AutoHostEndpointTemplate>,
}

/// A template of automatic host endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoHostEndpointTemplate {
    /// Name prefix of the endpoints.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generate_name: String,
    /// Interfaces with addresses in these CIDRs.
    #[serde(
        default,
        rename = "interfaceCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub interface_cidrs: Vec<String>,
    /// Labels of the endpoints.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Nodes the template applies to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_selector: String,
}

/// The LoadBalancer controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerControllerConfig {
    /// `AllServices` or `RequestedServicesOnly`.
    #[serde(default, rename = "assignIPs", skip_serializing_if = "Option::is_none")]
    pub assign_ips: Option<String>,
}

fn enabled_disabled(path: &str, v: Option<&str>) -> Result<(), ValidationError> {
    match v {
        None | Some("Enabled") | Some("Disabled") => Ok(()),
        Some(other) => Err(ValidationError::new(
            path,
            format!("must be Enabled or Disabled, not {other:?}"),
        )),
    }
}

impl Normalize for KubeControllersConfiguration {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        let s = &self.spec;
        if let Some(level) = &s.log_severity_screen {
            check_log_level("spec.logSeverityScreen", level)?;
        }
        enabled_disabled("spec.healthChecks", s.health_checks.as_deref())?;
        duration::check(
            "spec.etcdV3CompactionPeriod",
            s.etcd_v3_compaction_period.as_deref(),
        )?;
        let c = &s.controllers;
        if let Some(node) = &c.node {
            duration::check(
                "spec.controllers.node.reconcilerPeriod",
                node.reconciler_period.as_deref(),
            )?;
            duration::check(
                "spec.controllers.node.leakGracePeriod",
                node.leak_grace_period.as_deref(),
            )?;
            enabled_disabled(
                "spec.controllers.node.syncLabels",
                node.sync_labels.as_deref(),
            )?;
            if let Some(hep) = &node.host_endpoint {
                enabled_disabled(
                    "spec.controllers.node.hostEndpoint.autoCreate",
                    hep.auto_create.as_deref(),
                )?;
                enabled_disabled(
                    "spec.controllers.node.hostEndpoint.createDefaultHostEndpoint",
                    hep.create_default_host_endpoint.as_deref(),
                )?;
                for (i, t) in hep.templates.iter().enumerate() {
                    let path = format!("spec.controllers.node.hostEndpoint.templates[{i}]");
                    if !t.node_selector.is_empty() {
                        validate::selector(&format!("{path}.nodeSelector"), &t.node_selector)?;
                    }
                    for (j, cidr) in t.interface_cidrs.iter().enumerate() {
                        crate::net::parse_cidr(cidr).map_err(|r| {
                            ValidationError::new(format!("{path}.interfaceCIDRs[{j}]"), r)
                        })?;
                    }
                }
            }
        }
        for (field, r) in [
            ("policy", &c.policy),
            ("workloadEndpoint", &c.workload_endpoint),
            ("serviceAccount", &c.service_account),
            ("namespace", &c.namespace),
        ] {
            if let Some(r) = r {
                duration::check(
                    &format!("spec.controllers.{field}.reconcilerPeriod"),
                    r.reconciler_period.as_deref(),
                )?;
            }
        }
        if let Some(lb) = &c.load_balancer
            && let Some(v) = &lb.assign_ips
            && v != "AllServices"
            && v != "RequestedServicesOnly"
        {
            return Err(ValidationError::new(
                "spec.controllers.loadBalancer.assignIPs",
                format!("must be AllServices or RequestedServicesOnly, not {v:?}"),
            ));
        }
        Ok(())
    }
}

/// The `ClusterInformation` singleton (`default`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterInformation {
    /// Name (`default`).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The information.
    #[serde(default)]
    pub spec: ClusterInformationSpec,
}

/// The spec of `ClusterInformation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterInformationSpec {
    /// Unique ID of the cluster.
    #[serde(
        default,
        rename = "clusterGUID",
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_guid: Option<String>,
    /// Comma-separated features (`k8s,bgp,kdd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_type: Option<String>,
    /// Version that last wrote this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calico_version: Option<String>,
    /// Whether agents may use the datastore (false during migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_ready: Option<bool>,
    /// Product variant (`Calico`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Normalize for ClusterInformation {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        Ok(())
    }
}
