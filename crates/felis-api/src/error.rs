//! The one error type of validation: a field path and a reason.

use std::fmt;

/// A resource that failed to decode, default or validate: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Dotted field path with list indices, e.g. `spec.ingress[0].destination.ports[1]`; empty
    /// when the problem is the object as a whole.
    pub path: String,
    /// What is wrong, lowercase, no trailing period.
    pub reason: String,
}

impl ValidationError {
    /// An error at `path` for `reason`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> ValidationError {
        ValidationError {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The same error with `prefix` put in front of its path (`prefix.path`).
    pub fn within(mut self, prefix: &str) -> ValidationError {
        self.path = join(prefix, &self.path);
        self
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for ValidationError {}

/// `parent.child`, or just one of them when the other is empty; `child` may start with `[`.
pub(crate) fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else if child.is_empty() {
        parent.to_string()
    } else if child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}
