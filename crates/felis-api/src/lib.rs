//! `projectcalico.org/v3` resources, defaulting, validation, YAML/JSON loading and the selector
//! language. The vocabulary of Felis: the bottom layer, pure, no I/O.

pub mod selector;
