//! The library half of the `felis` binary: the resource client behind `apply`, `get`, `delete`,
//! `patch` and `label`, and the output formats. The binary (`main.rs`) only parses arguments.

pub mod cni;
pub mod output;
