//! Decoding the v3 resources IPAM reads (IPPool, IPReservation, IPAMConfiguration, Node) from
//! their stored JSON, with `felis-api`'s types, defaults and validation.

use std::collections::BTreeMap;

use felis_api::AssignmentMode;
use felis_api::Kind;
use felis_api::Resource;
use felis_api::selector::Selector;
use felis_store::KeyValue;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Error;
use crate::model::IpamConfig;
use crate::pool::Pool;

/// The key of the `IPAMConfiguration` resource `default`.
pub fn ipam_configuration_key() -> String {
    felis_api::key_for(Kind::IpamConfiguration, None, "default")
}

fn invalid(kv: &KeyValue, reason: impl Into<String>) -> Error {
    Error::InvalidResource {
        key: kv.key.clone(),
        reason: reason.into(),
    }
}

/// Decodes a stored resource: a manifest with `apiVersion` and `kind` goes through
/// [`Resource::from_value`] (defaults and validation); a bare body decodes as `T`.
fn decode_resource<T: DeserializeOwned>(
    kv: &KeyValue,
    pick: impl FnOnce(Resource) -> Option<T>,
) -> Result<T, Error> {
    let value: Value = serde_json::from_slice(&kv.value).map_err(|source| Error::Malformed {
        key: kv.key.clone(),
        source,
    })?;
    if value.get("kind").is_some() {
        let resource = Resource::from_value(value).map_err(|e| invalid(kv, e.to_string()))?;
        let kind = resource.kind();
        pick(resource).ok_or_else(|| invalid(kv, format!("unexpected kind {kind}")))
    } else {
        serde_json::from_value(value).map_err(|source| Error::Malformed {
            key: kv.key.clone(),
            source,
        })
    }
}

/// Decodes a stored IPPool into the allocator's view.
pub fn decode_pool(kv: &KeyValue) -> Result<Pool, Error> {
    let pool: felis_api::IpPool = decode_resource(kv, |r| match r {
        Resource::IpPool(p) => Some(p),
        _ => None,
    })?;
    let node_selector = Selector::parse(&pool.spec.node_selector)
        .map_err(|e| invalid(kv, format!("spec.nodeSelector: {e}")))?;
    // Resource::from_value validated this for manifests; a bare body was not.
    let block_size = pool.spec.block_size();
    let (lo, hi) = match pool.spec.cidr {
        IpNet::V4(_) => (20, 32),
        IpNet::V6(_) => (116, 128),
    };
    if !(lo..=hi).contains(&block_size) || block_size < pool.spec.cidr.prefix_len() {
        return Err(invalid(
            kv,
            format!(
                "spec.blockSize {block_size} does not fit pool {}",
                pool.spec.cidr
            ),
        ));
    }
    let allowed_uses = if pool.spec.allowed_uses.is_empty() {
        vec![
            felis_api::AllowedUse::Workload,
            felis_api::AllowedUse::Tunnel,
        ]
    } else {
        pool.spec.allowed_uses.clone()
    };
    Ok(Pool {
        name: pool.metadata.name.clone(),
        cidr: pool.spec.cidr.trunc(),
        block_size,
        disabled: pool.spec.disabled,
        node_selector,
        allowed_uses,
        manual: pool.spec.assignment_mode == AssignmentMode::Manual,
    })
}

/// Decodes a stored IPReservation into (name, CIDR) pairs.
pub fn decode_reservation(kv: &KeyValue) -> Result<Vec<(String, IpNet)>, Error> {
    let reservation: felis_api::IpReservation = decode_resource(kv, |r| match r {
        Resource::IpReservation(p) => Some(p),
        _ => None,
    })?;
    let name = reservation.metadata.name;
    Ok(reservation
        .spec
        .reserved_cidrs
        .into_iter()
        .map(|c| (name.clone(), c.trunc()))
        .collect())
}

/// Decodes the stored IPAMConfiguration resource.
pub fn decode_ipam_configuration(kv: &KeyValue) -> Result<IpamConfig, Error> {
    let config: felis_api::IpamConfiguration = decode_resource(kv, |r| match r {
        Resource::IpamConfiguration(c) => Some(c),
        _ => None,
    })?;
    Ok(IpamConfig {
        strict_affinity: config.spec.strict_affinity,
        auto_allocate_blocks: config.spec.auto_allocate_blocks,
        max_blocks_per_host: u32::try_from(config.spec.max_blocks_per_host).unwrap_or(0),
    })
}

/// The labels of a stored Node (read leniently: only `metadata.labels` matters here).
pub fn decode_node_labels(kv: &KeyValue) -> Result<BTreeMap<String, String>, Error> {
    let value: Value = serde_json::from_slice(&kv.value).map_err(|source| Error::Malformed {
        key: kv.key.clone(),
        source,
    })?;
    match value.pointer("/metadata/labels") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(labels) => serde_json::from_value(labels.clone()).map_err(|source| Error::Malformed {
            key: kv.key.clone(),
            source,
        }),
    }
}

/// The JSON of a Node resource named `name` with `labels` (for tests and tools).
pub fn node_value(name: &str, labels: &BTreeMap<String, String>) -> Vec<u8> {
    let node = serde_json::json!({
        "apiVersion": felis_api::CALICO_API_VERSION,
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
    });
    node.to_string().into_bytes()
}

/// The JSON of an IPPool resource for `pool` (for tests and tools).
pub fn pool_value(pool: &Pool) -> Vec<u8> {
    let uses: Vec<String> = pool.allowed_uses.iter().map(|u| format!("{u:?}")).collect();
    let value = serde_json::json!({
        "apiVersion": felis_api::CALICO_API_VERSION,
        "kind": "IPPool",
        "metadata": {"name": pool.name},
        "spec": {
            "cidr": pool.cidr.to_string(),
            "blockSize": pool.block_size,
            "disabled": pool.disabled,
            "nodeSelector": pool.node_selector.to_string(),
            "allowedUses": uses,
            "assignmentMode": if pool.manual { "Manual" } else { "Automatic" },
        },
    });
    value.to_string().into_bytes()
}

/// The JSON of an IPReservation resource (for tests and tools).
pub fn reservation_value(name: &str, cidrs: &[IpNet]) -> Vec<u8> {
    let cidrs: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    let value = serde_json::json!({
        "apiVersion": felis_api::CALICO_API_VERSION,
        "kind": "IPReservation",
        "metadata": {"name": name},
        "spec": {"reservedCIDRs": cidrs},
    });
    value.to_string().into_bytes()
}
