//! The compiled form of a selector: a small tree of boxed strings, with `&&`/`||` flattened
//! into n-ary nodes and `!!x` collapsed to `x`, evaluated by a direct recursive walk. Each label
//! key also carries its slot in the selector's sorted table of distinct keys, so that all the
//! values can be fetched in one pass before evaluating.

use std::fmt;

/// A label key read by a selector, and its slot in the selector's table of distinct keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    /// The label key.
    pub(crate) name: Box<str>,
    /// Index of `name` in the sorted table of the selector's distinct keys.
    pub(crate) slot: u16,
}

impl Key {
    /// A key whose slot is assigned later (see [`Expr::assign_slots`]).
    pub(crate) fn new(name: Box<str>) -> Key {
        Key { name, slot: 0 }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// One node of a compiled selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Expr {
    /// `all()`: matches everything.
    All,
    /// `global()`: matches everything; scoping to non-namespaced objects is the caller's job.
    Global,
    /// `has(key)`.
    Has(Key),
    /// `key == "value"`: requires the label.
    Eq(Key, Box<str>),
    /// `key != "value"`: true when the label is absent.
    Ne(Key, Box<str>),
    /// `key in {...}`: requires the label; values sorted and deduplicated.
    In(Key, Box<[Box<str>]>),
    /// `key not in {...}`: true when the label is absent; values sorted and deduplicated.
    NotIn(Key, Box<[Box<str>]>),
    /// `key contains "s"`.
    Contains(Key, Box<str>),
    /// `key starts with "s"`.
    StartsWith(Key, Box<str>),
    /// `key ends with "s"`.
    EndsWith(Key, Box<str>),
    /// `!x` (never directly nested: `!!x` is `x`).
    Not(Box<Expr>),
    /// `a && b && ...` (at least two children, none of them `And`).
    And(Box<[Expr]>),
    /// `a || b || ...` (at least two children, none of them `Or`).
    Or(Box<[Expr]>),
}

impl Expr {
    /// Evaluates the expression; `lookup` gives the value of a label key.
    pub(crate) fn eval<'v>(&self, lookup: &impl Fn(&Key) -> Option<&'v str>) -> bool {
        match self {
            Expr::All | Expr::Global => true,
            Expr::Has(key) => lookup(key).is_some(),
            Expr::Eq(key, value) => lookup(key) == Some(&**value),
            Expr::Ne(key, value) => lookup(key) != Some(&**value),
            Expr::In(key, values) => lookup(key).is_some_and(|v| set_contains(values, v)),
            Expr::NotIn(key, values) => !lookup(key).is_some_and(|v| set_contains(values, v)),
            Expr::Contains(key, s) => lookup(key).is_some_and(|v| v.contains(&**s)),
            Expr::StartsWith(key, s) => lookup(key).is_some_and(|v| v.starts_with(&**s)),
            Expr::EndsWith(key, s) => lookup(key).is_some_and(|v| v.ends_with(&**s)),
            Expr::Not(inner) => !inner.eval(lookup),
            Expr::And(children) => children.iter().all(|c| c.eval(lookup)),
            Expr::Or(children) => children.iter().any(|c| c.eval(lookup)),
        }
    }

    /// Sets every key's slot to its index in `keys` (sorted, distinct, containing them all).
    pub(crate) fn assign_slots(&mut self, keys: &[Box<str>]) {
        match self {
            Expr::All | Expr::Global => {}
            Expr::Has(key)
            | Expr::Eq(key, _)
            | Expr::Ne(key, _)
            | Expr::In(key, _)
            | Expr::NotIn(key, _)
            | Expr::Contains(key, _)
            | Expr::StartsWith(key, _)
            | Expr::EndsWith(key, _) => {
                let index = keys.binary_search(&key.name).unwrap_or_default();
                key.slot = u16::try_from(index).unwrap_or(u16::MAX);
            }
            Expr::Not(inner) => inner.assign_slots(keys),
            Expr::And(children) | Expr::Or(children) => {
                children.iter_mut().for_each(|c| c.assign_slots(keys));
            }
        }
    }

    /// `!self`, collapsing a double negation.
    pub(crate) fn negate(self) -> Expr {
        match self {
            Expr::Not(inner) => *inner,
            other => Expr::Not(Box::new(other)),
        }
    }

    /// Joins `children` with `&&`, flattening nested `And`s.
    pub(crate) fn and(children: Vec<Expr>) -> Expr {
        Self::join(children, true)
    }

    /// Joins `children` with `||`, flattening nested `Or`s.
    pub(crate) fn or(children: Vec<Expr>) -> Expr {
        Self::join(children, false)
    }

    fn join(children: Vec<Expr>, is_and: bool) -> Expr {
        let mut flat = Vec::with_capacity(children.len());
        for child in children {
            match child {
                Expr::And(inner) if is_and => flat.extend(inner.into_vec()),
                Expr::Or(inner) if !is_and => flat.extend(inner.into_vec()),
                other => flat.push(other),
            }
        }
        if flat.len() <= 1 {
            return flat.pop().unwrap_or(Expr::All);
        }
        if is_and {
            Expr::And(flat.into_boxed_slice())
        } else {
            Expr::Or(flat.into_boxed_slice())
        }
    }

    /// Calls `visit` on every label key the expression reads, in source order.
    pub(crate) fn visit_keys<'a>(&'a self, visit: &mut dyn FnMut(&'a str)) {
        match self {
            Expr::All | Expr::Global => {}
            Expr::Has(key)
            | Expr::Eq(key, _)
            | Expr::Ne(key, _)
            | Expr::In(key, _)
            | Expr::NotIn(key, _)
            | Expr::Contains(key, _)
            | Expr::StartsWith(key, _)
            | Expr::EndsWith(key, _) => visit(&key.name),
            Expr::Not(inner) => inner.visit_keys(visit),
            Expr::And(children) | Expr::Or(children) => {
                children.iter().for_each(|c| c.visit_keys(visit));
            }
        }
    }
}

/// Membership in a sorted set of values: linear for the usual handful, binary search beyond.
fn set_contains(values: &[Box<str>], value: &str) -> bool {
    if values.len() <= 8 {
        values.iter().any(|v| **v == *value)
    } else {
        values.binary_search_by(|v| (**v).cmp(value)).is_ok()
    }
}

/// Writes a string literal: double quotes unless the value contains one (there are no escapes).
fn write_quoted(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    if value.contains('"') {
        write!(f, "'{value}'")
    } else {
        write!(f, "\"{value}\"")
    }
}

fn write_set(f: &mut fmt::Formatter<'_>, values: &[Box<str>]) -> fmt::Result {
    f.write_str("{")?;
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write_quoted(f, value)?;
    }
    f.write_str("}")
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::All => f.write_str("all()"),
            Expr::Global => f.write_str("global()"),
            Expr::Has(key) => write!(f, "has({key})"),
            Expr::Eq(key, value) => {
                write!(f, "{key} == ")?;
                write_quoted(f, value)
            }
            Expr::Ne(key, value) => {
                write!(f, "{key} != ")?;
                write_quoted(f, value)
            }
            Expr::In(key, values) => {
                write!(f, "{key} in ")?;
                write_set(f, values)
            }
            Expr::NotIn(key, values) => {
                write!(f, "{key} not in ")?;
                write_set(f, values)
            }
            Expr::Contains(key, value) => {
                write!(f, "{key} contains ")?;
                write_quoted(f, value)
            }
            Expr::StartsWith(key, value) => {
                write!(f, "{key} starts with ")?;
                write_quoted(f, value)
            }
            Expr::EndsWith(key, value) => {
                write!(f, "{key} ends with ")?;
                write_quoted(f, value)
            }
            Expr::Not(inner) => match **inner {
                Expr::And(_) | Expr::Or(_) => write!(f, "!({inner})"),
                _ => write!(f, "!{inner}"),
            },
            Expr::And(children) => {
                for (i, child) in children.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" && ")?;
                    }
                    match child {
                        Expr::Or(_) | Expr::And(_) => write!(f, "({child})")?,
                        _ => write!(f, "{child}")?,
                    }
                }
                Ok(())
            }
            Expr::Or(children) => {
                for (i, child) in children.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" || ")?;
                    }
                    match child {
                        Expr::Or(_) => write!(f, "({child})")?,
                        _ => write!(f, "{child}")?,
                    }
                }
                Ok(())
            }
        }
    }
}
