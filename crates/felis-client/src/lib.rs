//! Reads and writes v3 resources in a [`Datastore`], as calicoctl does. Used by the CLI, the
//! node agent (its Node) and the CNI plugin (WorkloadEndpoints).
//!
//! Writes of a multi-document file go into one store transaction: all of them land or none.
//! Values are stored as the resource's JSON without `resourceVersion`; reads set
//! `metadata.resourceVersion` from the key's mod revision, which is the compare-and-swap token.

use std::collections::BTreeMap;
use std::time::SystemTime;

use felis_api::{Kind, Resource};
use felis_store::{Datastore, KeyValue, Revision, TxnOp};

/// How many times a write that lost a compare-and-swap race is retried from a fresh read.
const CAS_ATTEMPTS: usize = 5;

/// Resource client errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] felis_store::Error),
    /// A stored value is not a valid resource.
    #[error("stored value at {key} is not a valid resource: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A resource (after a patch or label change) failed validation.
    #[error("{kind} {name:?} is invalid: {source}")]
    Invalid {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// The validation failure.
        #[source]
        source: felis_api::ValidationError,
    },
    /// The resource does not exist.
    #[error("resource does not exist: {kind}({name})")]
    NotFound {
        /// The kind.
        kind: &'static str,
        /// The name (with namespace, if any).
        name: String,
    },
    /// The resource already exists (create).
    #[error("resource already exists: {kind}({name})")]
    AlreadyExists {
        /// The kind.
        kind: &'static str,
        /// The name (with namespace, if any).
        name: String,
    },
    /// The document's `resourceVersion` is not the stored one.
    #[error(
        "update conflict: {kind}({name}) was modified (resourceVersion {given} given, {stored} stored)"
    )]
    Conflict {
        /// The kind.
        kind: &'static str,
        /// The name (with namespace, if any).
        name: String,
        /// The version in the document.
        given: String,
        /// The version in the store.
        stored: String,
    },
    /// A patch could not be applied.
    #[error("invalid patch: {0}")]
    Patch(String),
    /// A label operation was refused.
    #[error("{0}")]
    Label(String),
    /// Concurrent writers kept winning.
    #[error("gave up after {CAS_ATTEMPTS} attempts: the resources kept changing concurrently")]
    TooManyConflicts,
}

/// What a write command does with each document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Create, or replace what exists (`apply`).
    Apply,
    /// Create; existing resources are an error unless `skip_existing` (`create`).
    Create {
        /// Leave existing resources alone instead of failing.
        skip_existing: bool,
    },
    /// Replace; missing resources are an error (`replace`).
    Replace,
    /// Delete; missing resources are an error unless `skip_missing` (`delete -f`).
    Delete {
        /// Ignore resources that do not exist.
        skip_missing: bool,
    },
}

/// The outcome of a write command: how many resources were written and how many skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Resources written (created, replaced or deleted).
    pub written: usize,
    /// Resources skipped (`--skip-exists`, `--skip-not-exists`).
    pub skipped: usize,
    /// The kinds written, for calicoctl's "Successfully applied 2 'IPPool' resource(s)".
    pub kinds: Vec<Kind>,
}

/// A resource client over one datastore.
pub struct Client<'a> {
    store: &'a dyn Datastore,
}

impl<'a> Client<'a> {
    /// A client over `store`.
    pub fn new(store: &'a dyn Datastore) -> Client<'a> {
        Client { store }
    }

    /// Writes `resources` in one transaction according to `mode`: all or nothing.
    pub fn write(&self, resources: &[Resource], mode: WriteMode) -> Result<WriteSummary, Error> {
        for _ in 0..CAS_ATTEMPTS {
            let mut ops = Vec::with_capacity(resources.len());
            let mut summary = WriteSummary::default();
            for resource in resources {
                let key = resource.key();
                let current = self.store.get(&key)?;
                match self.op_for(resource, key, current, mode)? {
                    Some(op) => {
                        ops.push(op);
                        summary.written += 1;
                        if !summary.kinds.contains(&resource.kind()) {
                            summary.kinds.push(resource.kind());
                        }
                    }
                    None => summary.skipped += 1,
                }
            }
            if ops.is_empty() {
                return Ok(summary);
            }
            match self.store.commit(&ops) {
                Ok(_) => return Ok(summary),
                // Someone wrote between our reads and the commit: read again and retry.
                Err(
                    felis_store::Error::Conflict { .. }
                    | felis_store::Error::AlreadyExists { .. }
                    | felis_store::Error::NotFound { .. },
                ) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::TooManyConflicts)
    }

    fn op_for(
        &self,
        resource: &Resource,
        key: String,
        current: Option<KeyValue>,
        mode: WriteMode,
    ) -> Result<Option<TxnOp>, Error> {
        let kind = resource.kind().name();
        let name = display_name(resource);
        let given_version = resource
            .metadata()
            .resource_version
            .clone()
            .filter(|v| !v.is_empty());
        match (mode, current) {
            (
                WriteMode::Create {
                    skip_existing: true,
                },
                Some(_),
            ) => Ok(None),
            (WriteMode::Create { .. }, Some(_)) => Err(Error::AlreadyExists { kind, name }),
            (WriteMode::Create { .. } | WriteMode::Apply, None) => {
                let value = encode_new(resource)?;
                Ok(Some(TxnOp::Create { key, value }))
            }
            (WriteMode::Replace, None) => Err(Error::NotFound { kind, name }),
            (WriteMode::Apply | WriteMode::Replace, Some(current)) => {
                if let Some(given) =
                    given_version.filter(|g| *g != current.mod_revision.to_string())
                {
                    return Err(Error::Conflict {
                        kind,
                        name,
                        given,
                        stored: current.mod_revision.to_string(),
                    });
                }
                let value = encode_replacement(resource, &current)?;
                Ok(Some(TxnOp::Update {
                    key,
                    value,
                    expected: Some(current.mod_revision),
                }))
            }
            (WriteMode::Delete { skip_missing: true }, None) => Ok(None),
            (WriteMode::Delete { .. }, None) => Err(Error::NotFound { kind, name }),
            (WriteMode::Delete { .. }, Some(current)) => Ok(Some(TxnOp::Delete {
                key,
                expected: Some(current.mod_revision),
            })),
        }
    }

    /// Reads one resource.
    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Result<Resource, Error> {
        let key = felis_api::key_for(kind, namespace, name);
        match self.store.get(&key)? {
            Some(kv) => decode(&kv),
            None => Err(Error::NotFound {
                kind: kind.name(),
                name: qualified(namespace, name),
            }),
        }
    }

    /// Lists resources of `kind`: in `namespace` for namespaced kinds, or in every namespace
    /// when `namespace` is `None`.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Resource>, Error> {
        let mut prefix = kind.key_prefix();
        if let (true, Some(ns)) = (kind.is_namespaced(), namespace) {
            prefix.push_str(ns);
            prefix.push('/');
        }
        let listing = self.store.list(&prefix)?;
        listing.items.iter().map(decode).collect()
    }

    /// Every stored resource of every kind (for `policy trace`, which needs the whole picture).
    pub fn list_all(&self) -> Result<Vec<Resource>, Error> {
        let mut all = Vec::new();
        for kind in Kind::all() {
            all.extend(self.list(*kind, None)?);
        }
        Ok(all)
    }

    /// Deletes one resource by name.
    pub fn delete(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        skip_missing: bool,
    ) -> Result<bool, Error> {
        let key = felis_api::key_for(kind, namespace, name);
        match self.store.delete(&key, None) {
            Ok(_) => Ok(true),
            Err(felis_store::Error::NotFound { .. }) if skip_missing => Ok(false),
            Err(felis_store::Error::NotFound { .. }) => Err(Error::NotFound {
                kind: kind.name(),
                name: qualified(namespace, name),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a resource, changes its JSON with `change`, validates and writes it back with
    /// compare-and-swap, retrying from a fresh read when another writer got there first.
    pub fn modify(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        change: &dyn Fn(&mut serde_json::Value) -> Result<(), Error>,
    ) -> Result<Resource, Error> {
        let key = felis_api::key_for(kind, namespace, name);
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self.store.get(&key)? else {
                return Err(Error::NotFound {
                    kind: kind.name(),
                    name: qualified(namespace, name),
                });
            };
            let mut value = decode(&current)?.to_value();
            change(&mut value)?;
            let resource = Resource::from_value(value).map_err(|source| Error::Invalid {
                kind: kind.name(),
                name: qualified(namespace, name),
                source,
            })?;
            if resource.key() != key {
                return Err(Error::Patch(
                    "a patch may not change the name or namespace".into(),
                ));
            }
            let bytes = encode_replacement(&resource, &current)?;
            match self.store.update(&key, &bytes, Some(current.mod_revision)) {
                Ok(revision) => {
                    let mut resource = resource;
                    resource.metadata_mut().resource_version = Some(revision.to_string());
                    return Ok(resource);
                }
                Err(felis_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::TooManyConflicts)
    }
}

impl Client<'_> {
    /// Deletes `old` and creates `new` in one transaction (`ipam split`).
    pub fn replace_with(&self, old: &Resource, new: &[Resource]) -> Result<(), Error> {
        let key = old.key();
        let Some(current) = self.store.get(&key)? else {
            return Err(Error::NotFound {
                kind: old.kind().name(),
                name: display_name(old),
            });
        };
        let mut ops = vec![TxnOp::Delete {
            key,
            expected: Some(current.mod_revision),
        }];
        for resource in new {
            ops.push(TxnOp::Create {
                key: resource.key(),
                value: encode_new(resource)?,
            });
        }
        self.store.commit(&ops)?;
        Ok(())
    }

    /// Reads a resource (or its absence), lets `change` say what it should be, and writes that
    /// with compare-and-swap (create when absent), retrying from a fresh read on conflicts.
    pub fn upsert(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        change: &dyn Fn(Option<Resource>) -> Result<Resource, Error>,
    ) -> Result<Resource, Error> {
        let key = felis_api::key_for(kind, namespace, name);
        for _ in 0..CAS_ATTEMPTS {
            let current = self.store.get(&key)?;
            let existing = current.as_ref().map(decode).transpose()?;
            let mut resource = change(existing)?;
            if resource.key() != key {
                return Err(Error::Patch(
                    "an upsert may not change the name or namespace".into(),
                ));
            }
            resource.metadata_mut().resource_version = None;
            let result = match &current {
                Some(kv) => {
                    let bytes = encode_replacement(&resource, kv)?;
                    self.store.update(&key, &bytes, Some(kv.mod_revision))
                }
                None => self.store.create(&key, &encode_new(&resource)?),
            };
            match result {
                Ok(revision) => {
                    resource.metadata_mut().resource_version = Some(revision.to_string());
                    return Ok(resource);
                }
                Err(
                    felis_store::Error::Conflict { .. }
                    | felis_store::Error::AlreadyExists { .. }
                    | felis_store::Error::NotFound { .. },
                ) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::TooManyConflicts)
    }
}

/// Applies an RFC 7386 JSON merge patch to `target`.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (k, v) in patch {
                if v.is_null() {
                    target.remove(k);
                } else {
                    merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (target, patch) => {
            if let Value::Object(patch_map) = patch {
                // Patching a non-object with an object starts from an empty object.
                let mut fresh = Value::Object(serde_json::Map::new());
                merge_patch(&mut fresh, &Value::Object(patch_map.clone()));
                *target = fresh;
            } else {
                *target = patch.clone();
            }
        }
    }
}

/// A label change for [`label_change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelOp {
    /// Set `key=value`; an existing different value needs `overwrite`.
    Set {
        /// The label key.
        key: String,
        /// The value.
        value: String,
        /// Replace an existing value.
        overwrite: bool,
    },
    /// Remove `key`; it must exist.
    Remove {
        /// The label key.
        key: String,
    },
}

/// Applies a label operation to a resource's JSON (`metadata.labels`).
pub fn label_change(value: &mut serde_json::Value, op: &LabelOp) -> Result<(), Error> {
    let labels: BTreeMap<String, String> = value
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    let mut labels = labels;
    match op {
        LabelOp::Set {
            key,
            value: v,
            overwrite,
        } => {
            if let Some(existing) = labels.get(key).filter(|e| *e != v && !overwrite) {
                return Err(Error::Label(format!(
                    "label {key} already has value {existing:?}; use --overwrite to change it"
                )));
            }
            labels.insert(key.clone(), v.clone());
        }
        LabelOp::Remove { key } => {
            if labels.remove(key).is_none() {
                return Err(Error::Label(format!("label {key} is not set")));
            }
        }
    }
    let metadata = value
        .as_object_mut()
        .and_then(|o| o.get_mut("metadata"))
        .and_then(|m| m.as_object_mut())
        .ok_or_else(|| Error::Label("resource has no metadata".into()))?;
    metadata.insert("labels".into(), serde_json::json!(labels));
    Ok(())
}

fn qualified(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn display_name(resource: &Resource) -> String {
    let meta = resource.metadata();
    let namespace = if resource.kind().is_namespaced() {
        meta.namespace.as_deref()
    } else {
        None
    };
    qualified(namespace, &meta.name)
}

/// The stored form of a resource: its JSON without `resourceVersion`.
fn encode(resource: &Resource) -> Result<Vec<u8>, Error> {
    let mut value = resource.to_value();
    if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&value).map_err(|e| Error::Corrupt {
        key: resource.key(),
        reason: e.to_string(),
    })
}

/// A new resource gets a uid and a creation timestamp, as the API server would give it.
fn encode_new(resource: &Resource) -> Result<Vec<u8>, Error> {
    let mut resource = resource.clone();
    let meta = resource.metadata_mut();
    meta.uid = Some(new_uid());
    meta.creation_timestamp = Some(now_rfc3339());
    encode(&resource)
}

/// A replacement keeps the stored uid and creation timestamp.
fn encode_replacement(resource: &Resource, current: &KeyValue) -> Result<Vec<u8>, Error> {
    let stored = decode(current)?;
    let mut resource = resource.clone();
    let meta = resource.metadata_mut();
    meta.uid = stored.metadata().uid.clone();
    meta.creation_timestamp = stored.metadata().creation_timestamp.clone();
    encode(&resource)
}

/// Decodes a stored value, setting `resourceVersion` from the key's mod revision.
pub fn decode(kv: &KeyValue) -> Result<Resource, Error> {
    let value: serde_json::Value =
        serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt {
            key: kv.key.clone(),
            reason: e.to_string(),
        })?;
    let mut resource = Resource::from_value(value).map_err(|e| Error::Corrupt {
        key: kv.key.clone(),
        reason: e.to_string(),
    })?;
    resource.metadata_mut().resource_version = Some(revision_string(kv.mod_revision));
    Ok(resource)
}

fn revision_string(revision: Revision) -> String {
    revision.to_string()
}

fn new_uid() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The current time in RFC 3339 (UTC, seconds), as Kubernetes writes `creationTimestamp`.
fn now_rfc3339() -> String {
    #[allow(clippy::disallowed_methods)] // the CLI edge is where the clock is read
    felis_api::time::format_rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = serde_json::json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(
            &mut target,
            &serde_json::json!({"a": "z", "c": {"f": null}}),
        );
        assert_eq!(target, serde_json::json!({"a": "z", "c": {"d": "e"}}));
        let mut target = serde_json::json!({"a": [1, 2]});
        merge_patch(&mut target, &serde_json::json!({"a": [3]}));
        assert_eq!(target, serde_json::json!({"a": [3]}));
    }

    #[test]
    fn label_needs_overwrite_to_change_a_value() {
        let mut v = serde_json::json!({"metadata": {"name": "x", "labels": {"role": "web"}}});
        let set = |overwrite| LabelOp::Set {
            key: "role".into(),
            value: "db".into(),
            overwrite,
        };
        assert!(label_change(&mut v, &set(false)).is_err());
        label_change(&mut v, &set(true)).unwrap();
        assert_eq!(v["metadata"]["labels"]["role"], "db");
        label_change(&mut v, &LabelOp::Remove { key: "role".into() }).unwrap();
        assert!(label_change(&mut v, &LabelOp::Remove { key: "role".into() }).is_err());
    }

    #[test]
    fn uids_look_like_uuids() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.matches('-').count(), 4);
    }
}
