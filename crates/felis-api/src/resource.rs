//! The `Resource` envelope: any one object of any kind, decoded strictly from JSON values,
//! defaulted and validated as Calico does, and encoded back.

use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Map;
use serde_json::Value;

use crate::error::ValidationError;
use crate::error::join;
use crate::kind::Kind;
use crate::kind::key_for;
use crate::kind::kind_of_manifest;
use crate::meta::ObjectMeta;
use crate::validate;
use crate::validate::Normalize;

pub use crate::bgp::BgpConfiguration;
pub use crate::bgp::BgpFilter;
pub use crate::bgp::BgpPeer;
pub use crate::config::ClusterInformation;
pub use crate::config::KubeControllersConfiguration;
pub use crate::endpoint::GlobalNetworkSet;
pub use crate::endpoint::HostEndpoint;
pub use crate::endpoint::NetworkSet;
pub use crate::endpoint::WorkloadEndpoint;
pub use crate::felix::FelixConfiguration;
pub use crate::ipam::IpPool;
pub use crate::ipam::IpReservation;
pub use crate::ipam::IpamConfiguration;
pub use crate::k8s::K8sNetworkPolicy;
pub use crate::k8s::Namespace;
pub use crate::node::Node;
pub use crate::policy::GlobalNetworkPolicy;
pub use crate::policy::NetworkPolicy;
pub use crate::policy::Profile;
pub use crate::policy::Tier;

macro_rules! resources {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// One object of any kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Resource {
            $(
                #[doc = concat!("A `", stringify!($variant), "`.")]
                $variant($ty),
            )*
        }

        impl Resource {
            /// The kind of this object.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Resource::$variant(_) => Kind::$variant,)*
                }
            }

            /// Its metadata.
            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $(Resource::$variant(r) => &r.metadata,)*
                }
            }

            /// Its metadata, to change.
            pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(Resource::$variant(r) => &mut r.metadata,)*
                }
            }

            fn body_to_value(&self) -> Result<Value, serde_json::Error> {
                match self {
                    $(Resource::$variant(r) => serde_json::to_value(r),)*
                }
            }

            fn normalize_body(&mut self) -> Result<(), ValidationError> {
                match self {
                    $(Resource::$variant(r) => r.normalize(),)*
                }
            }

            fn decode_body(kind: Kind, body: Value) -> Result<Resource, ValidationError> {
                match kind {
                    $(Kind::$variant => decode::<$ty>(body).map(Resource::$variant),)*
                }
            }
        }

        $(
            impl From<$ty> for Resource {
                fn from(r: $ty) -> Resource {
                    Resource::$variant(r)
                }
            }
        )*
    };
}

resources! {
    IpPool(IpPool),
    IpReservation(IpReservation),
    IpamConfiguration(IpamConfiguration),
    Node(Node),
    NetworkPolicy(NetworkPolicy),
    GlobalNetworkPolicy(GlobalNetworkPolicy),
    Tier(Tier),
    Profile(Profile),
    NetworkSet(NetworkSet),
    GlobalNetworkSet(GlobalNetworkSet),
    HostEndpoint(HostEndpoint),
    WorkloadEndpoint(WorkloadEndpoint),
    BgpConfiguration(BgpConfiguration),
    BgpPeer(BgpPeer),
    BgpFilter(BgpFilter),
    FelixConfiguration(Box<FelixConfiguration>),
    KubeControllersConfiguration(KubeControllersConfiguration),
    ClusterInformation(ClusterInformation),
    K8sNetworkPolicy(K8sNetworkPolicy),
    Namespace(Namespace),
}

impl From<FelixConfiguration> for Resource {
    fn from(r: FelixConfiguration) -> Resource {
        Resource::FelixConfiguration(Box::new(r))
    }
}

impl Resource {
    /// Decodes a manifest object (with `apiVersion` and `kind`), strictly: an unknown field is
    /// an error naming its path. Defaults are filled in and the result validated. Objects of
    /// namespaced kinds without a namespace go in `default`.
    pub fn from_value(v: Value) -> Result<Resource, ValidationError> {
        Resource::from_value_in(v, None)
    }

    /// Like [`Resource::from_value`], but objects of namespaced kinds without a namespace go in
    /// `default_namespace` (or `default` when `None`).
    pub fn from_value_in(
        mut v: Value,
        default_namespace: Option<&str>,
    ) -> Result<Resource, ValidationError> {
        // As in Go's decoding of Calico manifests, `field: null` (YAML `field:` with nothing
        // after it) means the field is absent.
        strip_nulls(&mut v);
        let Value::Object(mut object) = v else {
            return Err(ValidationError::new(
                "",
                format!("expected an object, found {}", type_name(&v)),
            ));
        };
        let api_version = take_string(&mut object, "apiVersion")?;
        let kind_name = take_string(&mut object, "kind")?;
        let kind = kind_of_manifest(&api_version, &kind_name)?;
        let mut body = Value::Object(object);
        let untyped = match kind {
            Kind::FelixConfiguration => crate::felix::split_untyped(&mut body),
            _ => Default::default(),
        };
        let mut resource = Resource::decode_body(kind, body)?;
        if let Resource::FelixConfiguration(f) = &mut resource {
            f.spec.other = untyped;
        }
        resource.check_metadata(default_namespace)?;
        resource.normalize_body()?;
        Ok(resource)
    }

    /// The object as a manifest: `apiVersion`, `kind`, `metadata`, `spec`, with defaults
    /// filled in and no nulls.
    pub fn to_value(&self) -> Value {
        // Serializing these plain structs (string keys only) cannot fail; a failure would
        // surface as a null body, which from_value rejects.
        let mut body = self.body_to_value().unwrap_or(Value::Null);
        if let Resource::FelixConfiguration(f) = self {
            crate::felix::merge_untyped(&mut body, &f.spec.other);
        }
        strip_nulls(&mut body);
        let mut out = Map::new();
        out.insert(
            "apiVersion".into(),
            Value::String(self.kind().api_version().into()),
        );
        out.insert("kind".into(), Value::String(self.kind().name().into()));
        if let Value::Object(fields) = body {
            out.extend(fields);
        }
        Value::Object(out)
    }

    /// Defaults and validates again after a change made in code (a label added, a field
    /// patched): the same checks as [`Resource::from_value`].
    pub fn revalidated(&self) -> Result<Resource, ValidationError> {
        Resource::from_value_in(self.to_value(), self.namespace())
    }

    /// The object's datastore key (Calico's etcd layout).
    pub fn key(&self) -> String {
        let m = self.metadata();
        key_for(self.kind(), m.namespace.as_deref(), &m.name)
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// The object's namespace, for namespaced kinds.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    fn check_metadata(&mut self, default_namespace: Option<&str>) -> Result<(), ValidationError> {
        let kind = self.kind();
        let meta = self.metadata_mut();
        if kind.is_namespaced() {
            let ns = match meta.namespace.take().filter(|ns| !ns.is_empty()) {
                Some(ns) => ns,
                None => default_namespace
                    .filter(|ns| !ns.is_empty())
                    .unwrap_or("default")
                    .to_string(),
            };
            if !validate::is_dns1123_label(&ns) {
                return Err(ValidationError::new(
                    "metadata.namespace",
                    format!("{ns:?} is not a valid namespace name"),
                ));
            }
            meta.namespace = Some(ns);
        } else if let Some(ns) = meta.namespace.as_deref() {
            if !ns.is_empty() {
                return Err(ValidationError::new(
                    "metadata.namespace",
                    format!("{} is not namespaced; remove namespace {ns:?}", kind.name()),
                ));
            }
            meta.namespace = None;
        }
        check_name(kind, &meta.name)?;
        validate::labels("metadata.labels", &meta.labels)
    }
}

/// Checks `metadata.name` for `kind`.
fn check_name(kind: Kind, name: &str) -> Result<(), ValidationError> {
    const PATH: &str = "metadata.name";
    if name.is_empty() {
        return Err(ValidationError::new(PATH, "name is required"));
    }
    match kind {
        Kind::IpamConfiguration | Kind::KubeControllersConfiguration | Kind::ClusterInformation => {
            if name != "default" {
                return Err(ValidationError::new(
                    PATH,
                    format!(
                        "{} is a singleton: its name must be \"default\", not {name:?}",
                        kind.name()
                    ),
                ));
            }
            Ok(())
        }
        Kind::FelixConfiguration | Kind::BgpConfiguration => {
            if name == "default" {
                return Ok(());
            }
            match name.strip_prefix("node.") {
                Some(node) if validate::is_dns1123_subdomain(node) => Ok(()),
                _ => Err(ValidationError::new(
                    PATH,
                    format!(
                        "{} must be named \"default\" or \"node.<nodename>\", not {name:?}",
                        kind.name()
                    ),
                )),
            }
        }
        Kind::Tier | Kind::Namespace => {
            if validate::is_dns1123_label(name) {
                Ok(())
            } else {
                Err(ValidationError::new(
                    PATH,
                    format!(
                        "{name:?} is not a valid {} name: lowercase letters, digits and '-', \
                         starting and ending with a letter or digit, at most 63 characters",
                        kind.name()
                    ),
                ))
            }
        }
        _ => validate::subdomain(PATH, name),
    }
}

/// Decodes the body (everything but `apiVersion` and `kind`) of one kind, mapping serde errors
/// to the path of the offending field.
fn decode<T: DeserializeOwned>(body: Value) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize::<_, T>(body).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.into_inner().to_string();
        serde_error(&path, reason)
    })
}

/// Turns a serde message at `path` into a `ValidationError`; unknown-field errors name the field
/// in the path, as calicoctl does.
pub(crate) fn serde_error(path: &str, reason: String) -> ValidationError {
    let path = if path == "." { "" } else { path };
    if let Some(rest) = reason.strip_prefix("unknown field `")
        && let Some((field, _)) = rest.split_once('`')
    {
        let full = join(path, field);
        let field_path = if path.ends_with(field) {
            path.to_string()
        } else {
            full
        };
        return ValidationError::new(field_path, format!("unknown field {field:?}"));
    }
    if let Some(rest) = reason.strip_prefix("missing field `")
        && let Some((field, _)) = rest.split_once('`')
    {
        return ValidationError::new(join(path, field), "field is required");
    }
    ValidationError::new(path, reason)
}

fn take_string(object: &mut Map<String, Value>, field: &str) -> Result<String, ValidationError> {
    match object.remove(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ValidationError::new(
            field,
            format!("expected a string, found {}", type_name(&other)),
        )),
        None => Err(ValidationError::new(field, "field is required")),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Removes null members of objects, recursively.
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Resource, D::Error> {
        let v = Value::deserialize(d)?;
        Resource::from_value(v).map_err(serde::de::Error::custom)
    }
}
