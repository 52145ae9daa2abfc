//! Calico's selector language (the reference §3): parse once, evaluate fast.
//!
//! ```text
//! selector := or_expr | ""                 // "" == all()
//! or_expr  := and_expr ( "||" and_expr )*
//! and_expr := op ( "&&" op )*
//! op       := "!"* ( "(" or_expr ")" | "all()" | "global()" | "has(" label ")"
//!                  | label ("==" | "!=" | "contains" | "starts with" | "ends with") str
//!                  | label ("in" | "not in") "{" [str ("," str)*] "}" )
//! ```
//!
//! `!=` and `not in` are true when the label is absent; every other test needs the label.
//! A selector compiles to a small tree (`&&`/`||` flattened, `!!x` collapsed, `in` sets sorted),
//! which is also its identity: two selectors are equal when their compiled forms are, and
//! [`Display`](fmt::Display) prints a canonical string that parses back to an equal selector.

mod expr;
mod parser;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;

use self::expr::Expr;
use self::expr::Key;

/// A parsed, compiled selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    expr: Expr,
    /// The distinct label keys `expr` reads, sorted; each key in `expr` knows its slot here.
    keys: Box<[Box<str>]>,
}

/// Selectors reading at most this many distinct keys fetch them all in one
/// [`Labels::label_values`] call before evaluating (see `benches/selector.rs`).
const MAX_BATCHED_KEYS: usize = 8;

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

    /// Looks up `keys` (sorted, distinct) at once, storing the value of `keys[i]` in
    /// `values[i]`. The default calls [`label`](Labels::label) per key; sorted maps override
    /// it with a single merged pass.
    fn label_values<'a>(&'a self, keys: &[Box<str>], values: &mut [Option<&'a str>]) {
        for (key, value) in keys.iter().zip(values.iter_mut()) {
            *value = self.label(key);
        }
    }
}

/// Up to this many labels, a linear scan beats `BTreeMap::get`: it compares lengths and first
/// bytes inline and calls `memcmp` only for a likely hit (see `benches/selector.rs`).
const LINEAR_SCAN_MAX: usize = 24;

impl Labels for BTreeMap<String, String> {
    #[inline]
    fn label(&self, key: &str) -> Option<&str> {
        if self.len() > LINEAR_SCAN_MAX {
            return self.get(key).map(String::as_str);
        }
        let first = key.as_bytes().first();
        for (k, v) in self {
            if k.len() == key.len() && k == key {
                return Some(v);
            }
            // Keys are sorted: past the first byte of `key`, it cannot come any more.
            if k.as_bytes().first() > first {
                break;
            }
        }
        None
    }

    /// One merge of the sorted map with the sorted keys.
    fn label_values<'a>(&'a self, keys: &[Box<str>], values: &mut [Option<&'a str>]) {
        values.iter_mut().for_each(|v| *v = None);
        if self.len() > LINEAR_SCAN_MAX {
            for (key, value) in keys.iter().zip(values.iter_mut()) {
                *value = self.get(&**key).map(String::as_str);
            }
            return;
        }
        let mut wanted = keys.iter().zip(values.iter_mut()).peekable();
        'entries: for (k, v) in self {
            while let Some((key, value)) = wanted.peek_mut() {
                match fast_cmp(key, k) {
                    Ordering::Less => {
                        wanted.next();
                    }
                    Ordering::Equal => {
                        **value = Some(v.as_str());
                        wanted.next();
                        continue 'entries;
                    }
                    Ordering::Greater => continue 'entries,
                }
            }
            return;
        }
    }
}

/// `a.cmp(b)`, deciding on the first byte inline when it differs (it usually does).
#[inline]
fn fast_cmp(a: &str, b: &str) -> Ordering {
    match a.as_bytes().first().cmp(&b.as_bytes().first()) {
        Ordering::Equal => a.cmp(b),
        other => other,
    }
}

impl Labels for HashMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<L: Labels + ?Sized> Labels for &L {
    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }

    fn label_values<'a>(&'a self, keys: &[Box<str>], values: &mut [Option<&'a str>]) {
        (**self).label_values(keys, values);
    }
}

/// A condition every label set matching a selector satisfies: what an index can look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement<'a> {
    /// Label `key` must be present.
    Present {
        /// The label key.
        key: &'a str,
    },
    /// Label `key` must have one of `values` (one value for `==`).
    OneOf {
        /// The label key.
        key: &'a str,
        /// The accepted values, sorted.
        values: Vec<&'a str>,
    },
}

impl Selector {
    /// Parses `source`; the empty string means `all()`.
    pub fn parse(source: &str) -> Result<Selector, ParseError> {
        parser::parse(source).map(Selector::compile)
    }

    fn compile(mut expr: Expr) -> Selector {
        let mut keys: Vec<Box<str>> = Vec::new();
        expr.visit_keys(&mut |key| keys.push(key.into()));
        keys.sort_unstable();
        keys.dedup();
        expr.assign_slots(&keys);
        Selector {
            expr,
            keys: keys.into_boxed_slice(),
        }
    }

    /// The selector `all()`, which matches every label set.
    pub fn all() -> Selector {
        Selector {
            expr: Expr::All,
            keys: Box::default(),
        }
    }

    /// Whether this is exactly `all()` (or was parsed from the empty string).
    pub fn is_all(&self) -> bool {
        self.expr == Expr::All
    }

    /// Whether the labels match.
    #[inline]
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        let count = self.keys.len();
        if count == 0 || count > MAX_BATCHED_KEYS {
            return self.expr.eval(&|key: &Key| labels.label(&key.name));
        }
        let mut buffer = [None; MAX_BATCHED_KEYS];
        let values = buffer.get_mut(..count).unwrap_or_default();
        labels.label_values(&self.keys, values);
        let values = &*values;
        self.expr
            .eval(&|key: &Key| values.get(usize::from(key.slot)).copied().flatten())
    }

    /// Whether the selector is `global()` or a top-level `&&` containing `global()`: as a rule's
    /// `namespaceSelector` it scopes the rule to non-namespaced objects.
    pub fn is_global(&self) -> bool {
        match &self.expr {
            Expr::Global => true,
            Expr::And(children) => children.contains(&Expr::Global),
            _ => false,
        }
    }

    /// The distinct label keys the selector reads, sorted.
    pub fn label_keys(&self) -> Vec<&str> {
        self.keys.iter().map(|key| &**key).collect()
    }

    /// Conditions implied by the top level of the selector (`has`, `==`, `in`, alone or as
    /// terms of a top-level `&&`): any matching label set satisfies all of them. Empty when
    /// the selector has no indexable term, e.g. `a != "x"` or `a == "x" || b == "y"`.
    pub fn requirements(&self) -> Vec<Requirement<'_>> {
        let terms = match &self.expr {
            Expr::And(children) => &children[..],
            single => std::slice::from_ref(single),
        };
        terms
            .iter()
            .filter_map(|term| match term {
                Expr::Has(key) => Some(Requirement::Present { key: &key.name }),
                Expr::Eq(key, value) => Some(Requirement::OneOf {
                    key: &key.name,
                    values: vec![value],
                }),
                Expr::In(key, values) => Some(Requirement::OneOf {
                    key: &key.name,
                    values: values.iter().map(|v| &**v).collect(),
                }),
                Expr::Contains(key, _) | Expr::StartsWith(key, _) | Expr::EndsWith(key, _) => {
                    Some(Requirement::Present { key: &key.name })
                }
                _ => None,
            })
            .collect()
    }
}

impl Default for Selector {
    fn default() -> Self {
        Selector::all()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.expr, f)
    }
}

impl FromStr for Selector {
    type Err = ParseError;

    fn from_str(source: &str) -> Result<Self, Self::Err> {
        Selector::parse(source)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Selector::parse(&source).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
