//! projectcalico.org/v3 resources, defaulting, validation, YAML/JSON loading and the selector language.
