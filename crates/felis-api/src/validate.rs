//! Validation helpers shared by the resources: names, selectors, label keys.

use crate::error::ValidationError;
use crate::selector::Selector;

/// Whether `s` is a DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, starting and
/// ending alphanumeric, each dot-separated part non-empty, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label_body)
}

/// Whether `s` is a DNS-1123 label: like a subdomain but without dots, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_dns1123_label_body(s)
}

fn is_dns1123_label_body(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        }
        _ => false,
    }
}

/// Checks a selector field; the error quotes the selector and the column of the problem.
pub(crate) fn selector(path: &str, source: &str) -> Result<(), ValidationError> {
    Selector::parse(source).map(|_| ()).map_err(|e| {
        ValidationError::new(
            path,
            format!(
                "invalid selector {source:?} at column {}: {}",
                e.column, e.message
            ),
        )
    })
}

/// Checks that a name-like field is a DNS-1123 subdomain.
pub(crate) fn subdomain(path: &str, value: &str) -> Result<(), ValidationError> {
    if is_dns1123_subdomain(value) {
        Ok(())
    } else {
        Err(ValidationError::new(
            path,
            format!(
                "{value:?} is not a valid name: lowercase letters, digits, '-' and '.', \
                 starting and ending with a letter or digit, at most 253 characters"
            ),
        ))
    }
}

/// Checks an interface name: 1–15 characters, no `/`, whitespace or `:`; `*` is accepted when
/// `allow_wildcard`.
pub(crate) fn interface_name(
    path: &str,
    value: &str,
    allow_wildcard: bool,
) -> Result<(), ValidationError> {
    if allow_wildcard && value == "*" {
        return Ok(());
    }
    let ok = !value.is_empty()
        && value.len() <= 15
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            path,
            format!("invalid interface name {value:?}"),
        ))
    }
}

/// Whether `v` is `false`; for `skip_serializing_if`.
pub(crate) fn is_false(v: &bool) -> bool {
    !*v
}

/// `true`; for `#[serde(default = "...")]`.
pub(crate) fn default_true() -> bool {
    true
}

/// `all()`; for `#[serde(default = "...")]` of selectors that default to everything.
pub(crate) fn all_selector() -> String {
    "all()".to_string()
}

/// Fills in defaults the way Calico does, then validates; errors carry the field path.
pub(crate) trait Normalize {
    /// Defaults then validates `self` in place.
    fn normalize(&mut self) -> Result<(), ValidationError>;
}

/// Checks a MAC address `aa:bb:cc:dd:ee:ff` (also `-` separated).
pub(crate) fn mac(path: &str, value: &str) -> Result<(), ValidationError> {
    let parts: Vec<&str> = value.split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            path,
            format!("invalid MAC address {value:?}"),
        ))
    }
}

/// Whether `key` is a Kubernetes label key: an optional DNS subdomain prefix and `/`, then a
/// name of 1–63 characters (alphanumerics, `-`, `_`, `.`; alphanumeric at both ends).
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

/// Whether `value` is a Kubernetes label value: empty, or at most 63 characters of
/// alphanumerics, `-`, `_` and `.`, alphanumeric at both ends.
pub fn is_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    match (b.first(), b.last()) {
        (None, _) | (_, None) => true,
        (Some(first), Some(last)) => {
            b.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
    }
}

/// Checks every key and value of a label map at `path`.
pub(crate) fn labels(
    path: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), ValidationError> {
    for (k, v) in labels {
        if !is_label_key(k) {
            return Err(ValidationError::new(
                format!("{path}.{k}"),
                format!(
                    "invalid label key {k:?}: expected [prefix/]name, name of at most 63 characters"
                ),
            ));
        }
        if !is_label_value(v) {
            return Err(ValidationError::new(
                format!("{path}.{k}"),
                format!(
                    "invalid label value {v:?}: at most 63 letters, digits, '-', '_' or '.', \
                     starting and ending with a letter or digit"
                ),
            ));
        }
    }
    Ok(())
}
