//! The EC2 source/destination check of this instance's primary interface.
//!
//! Calico's `awsSrcDstCheck` (felix/aws/ec2.go): at start-up, find this instance through the
//! metadata service, take the interface at device index 0 and set its `SourceDestCheck`
//! (`Enable` → true, `Disable` → false). [`plan`] decides; [`apply`] does the I/O.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;
use tracing::info;

use crate::config::AwsConfig;
use crate::ec2::Ec2Client;
use crate::error::Error;
use crate::imds::Imds;
use crate::model::Instance;

/// FelixConfiguration `awsSrcDstCheck`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SrcDstMode {
    /// Leave the check alone (the default): no metadata or EC2 calls at all.
    #[default]
    DoNothing,
    /// Turn the check on.
    Enable,
    /// Turn the check off, so un-encapsulated pod traffic can leave and enter the instance.
    Disable,
}

impl FromStr for SrcDstMode {
    type Err = String;
    fn from_str(s: &str) -> Result<SrcDstMode, String> {
        match s {
            "DoNothing" => Ok(SrcDstMode::DoNothing),
            "Enable" => Ok(SrcDstMode::Enable),
            "Disable" => Ok(SrcDstMode::Disable),
            other => Err(format!(
                "awsSrcDstCheck {other:?} is not one of DoNothing, Enable, Disable"
            )),
        }
    }
}

impl fmt::Display for SrcDstMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SrcDstMode::DoNothing => "DoNothing",
            SrcDstMode::Enable => "Enable",
            SrcDstMode::Disable => "Disable",
        })
    }
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Plan {
    /// `DoNothing`.
    Skip,
    /// The interface already has the wanted value.
    AlreadySet {
        /// `eni-…`.
        interface_id: String,
        /// The check's value.
        enabled: bool,
    },
    /// Call ModifyNetworkInterfaceAttribute.
    Modify {
        /// `eni-…`.
        interface_id: String,
        /// The value to set.
        enabled: bool,
    },
}

/// The outcome, for the agent's status and readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// `DoNothing`: nothing was asked.
    NotRequested,
    /// The check already had the wanted value.
    AlreadySet {
        /// The instance.
        instance_id: String,
        /// Its primary interface.
        interface_id: String,
        /// The check's value.
        enabled: bool,
    },
    /// The check was changed.
    Changed {
        /// The instance.
        instance_id: String,
        /// Its primary interface.
        interface_id: String,
        /// The check's new value.
        enabled: bool,
    },
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = |e: &bool| if *e { "enabled" } else { "disabled" };
        match self {
            Status::NotRequested => f.write_str("source/destination check left as is (DoNothing)"),
            Status::AlreadySet {
                instance_id,
                interface_id,
                enabled,
            } => write!(
                f,
                "source/destination check already {} on {interface_id} of {instance_id}",
                word(enabled)
            ),
            Status::Changed {
                instance_id,
                interface_id,
                enabled,
            } => write!(
                f,
                "source/destination check {} on {interface_id} of {instance_id}",
                word(enabled)
            ),
        }
    }
}

/// Decides what to do for `mode` given the described `instance`. Pure.
///
/// # Errors
/// [`Error::NoPrimaryInterface`] when no interface is attached at device index 0.
pub fn plan(mode: SrcDstMode, instance: &Instance) -> Result<Plan, Error> {
    let enabled = match mode {
        SrcDstMode::DoNothing => return Ok(Plan::Skip),
        SrcDstMode::Enable => true,
        SrcDstMode::Disable => false,
    };
    let primary = instance
        .primary_interface()
        .ok_or_else(|| Error::NoPrimaryInterface(instance.id.clone()))?;
    let interface_id = primary.id.clone();
    if primary.source_dest_check == enabled {
        Ok(Plan::AlreadySet {
            interface_id,
            enabled,
        })
    } else {
        Ok(Plan::Modify {
            interface_id,
            enabled,
        })
    }
}

/// How long to wait before attempt `failures + 1` after `failures` failed rounds of
/// [`apply`] (each already retried immediately): 30 s doubling to 8 min, as Calico.
#[must_use]
pub fn retry_delay(failures: u32) -> Duration {
    let base = Duration::from_secs(30);
    let max = Duration::from_secs(480);
    base.checked_mul(
        1_u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX),
    )
    .map_or(max, |d| d.min(max))
}

/// Applies `mode` using the process environment ([`AwsConfig::from_env`]).
///
/// # Errors
/// Any metadata or EC2 failure, naming the call.
pub fn apply(mode: SrcDstMode) -> Result<Status, Error> {
    apply_with(mode, &AwsConfig::from_env())
}

/// Applies `mode` with explicit settings: IMDS → instance id → DescribeInstances → the
/// interface at device index 0 → ModifyNetworkInterfaceAttribute when it differs.
///
/// # Errors
/// Any metadata or EC2 failure, naming the call.
pub fn apply_with(mode: SrcDstMode, config: &AwsConfig) -> Result<Status, Error> {
    if mode == SrcDstMode::DoNothing {
        return Ok(Status::NotRequested);
    }
    let imds = Imds::new(config);
    let instance_id = imds.instance_id()?;
    let ec2 = Ec2Client::from_config(config, Some(&imds))?;
    let instance = ec2.describe_instance(&instance_id)?;
    let status = match plan(mode, &instance)? {
        Plan::Skip => Status::NotRequested,
        Plan::AlreadySet {
            interface_id,
            enabled,
        } => Status::AlreadySet {
            instance_id,
            interface_id,
            enabled,
        },
        Plan::Modify {
            interface_id,
            enabled,
        } => {
            ec2.set_source_dest_check(&interface_id, enabled)?;
            Status::Changed {
                instance_id,
                interface_id,
                enabled,
            }
        }
    };
    info!(%status, "AWS source/destination check");
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetworkInterface;

    fn interface(id: &str, device_index: u32, check: bool) -> NetworkInterface {
        NetworkInterface {
            id: id.to_owned(),
            subnet_id: None,
            vpc_id: None,
            device_index: Some(device_index),
            instance_id: None,
            private_ip: None,
            private_ips: Vec::new(),
            source_dest_check: check,
            group_ids: Vec::new(),
            mac_address: None,
        }
    }

    fn instance(interfaces: Vec<NetworkInterface>) -> Instance {
        Instance {
            id: "i-1".to_owned(),
            subnet_id: None,
            vpc_id: None,
            private_ip: None,
            source_dest_check: None,
            network_interfaces: interfaces,
        }
    }

    #[test]
    fn disable_modifies_the_device_index_0_interface_only() {
        let i = instance(vec![
            interface("eni-second", 1, true),
            interface("eni-primary", 0, true),
        ]);
        assert_eq!(
            plan(SrcDstMode::Disable, &i).unwrap(),
            Plan::Modify {
                interface_id: "eni-primary".to_owned(),
                enabled: false
            }
        );
    }

    #[test]
    fn enable_on_an_enabled_interface_is_already_set() {
        let i = instance(vec![interface("eni-primary", 0, true)]);
        assert_eq!(
            plan(SrcDstMode::Enable, &i).unwrap(),
            Plan::AlreadySet {
                interface_id: "eni-primary".to_owned(),
                enabled: true
            }
        );
    }

    #[test]
    fn do_nothing_skips_even_without_interfaces() {
        assert_eq!(
            plan(SrcDstMode::DoNothing, &instance(vec![])).unwrap(),
            Plan::Skip
        );
    }

    #[test]
    fn missing_primary_interface_is_an_error_naming_the_instance() {
        let err = plan(
            SrcDstMode::Disable,
            &instance(vec![interface("eni-x", 1, true)]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "instance i-1 has no network interface with device index 0"
        );
    }

    #[test]
    fn do_nothing_apply_makes_no_calls() {
        // An unreachable metadata endpoint proves no I/O happens.
        let config = AwsConfig {
            imds_endpoint: Some("http://127.0.0.1:1".to_owned()),
            ..AwsConfig::default()
        };
        assert_eq!(
            apply_with(SrcDstMode::DoNothing, &config).unwrap(),
            Status::NotRequested
        );
    }

    #[test]
    fn modes_parse_from_calico_spelling() {
        assert_eq!(
            "Disable".parse::<SrcDstMode>().unwrap(),
            SrcDstMode::Disable
        );
        assert!(
            "disable"
                .parse::<SrcDstMode>()
                .unwrap_err()
                .contains("awsSrcDstCheck")
        );
        assert_eq!(SrcDstMode::default().to_string(), "DoNothing");
    }

    #[test]
    fn retry_delay_doubles_from_30s_to_8min() {
        let secs: Vec<u64> = (1..=7).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 480, 480]);
        assert_eq!(retry_delay(100).as_secs(), 480);
    }
}
