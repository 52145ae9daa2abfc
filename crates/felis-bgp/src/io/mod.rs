//! Tokio shell.
