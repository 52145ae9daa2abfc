//! Calico's selector language (the reference §3): parse once, evaluate fast.
//!
//! STUB: the interface is fixed; the implementation is being written.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;

/// A parsed, compiled selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    source: String,
}

/// A selector that failed to parse: the 1-based column of the problem and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector at column {column}: {message}")]
pub struct ParseError {
    /// 1-based column (in characters) where the problem was found.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Something with labels a selector can be evaluated against.
pub trait Labels {
    /// The value of label `key`, if present.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for HashMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Selector {
    /// Parses `source`; the empty string means `all()`.
    pub fn parse(source: &str) -> Result<Selector, ParseError> {
        Ok(Selector { source: source.to_string() })
    }

    /// Whether the labels match.
    pub fn matches<L: Labels + ?Sized>(&self, _labels: &L) -> bool {
        true
    }

    /// Whether the selector is (or contains at top level) `global()`.
    pub fn is_global(&self) -> bool {
        self.source.trim() == "global()"
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}
