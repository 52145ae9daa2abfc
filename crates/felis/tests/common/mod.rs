//! What the lab tests share: a `felis lab` that is removed on drop (even when the test fails),
//! and the CLI against its datastore. Each test binary uses only part of it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::io::Write as _;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A running lab with a unique name; `felis lab down` on drop.
pub(crate) struct Lab {
    /// The lab's name (`--name`).
    pub(crate) name: String,
    /// Its datastore URL.
    pub(crate) datastore: String,
    /// Scratch space for manifests.
    pub(crate) dir: tempfile::TempDir,
}

impl Lab {
    /// `felis lab up --name <unique> ARGS`, or `None` when not root. `prefix` (one letter)
    /// keeps the names of different test binaries apart.
    pub(crate) fn up(prefix: &str, args: &[&str]) -> Option<Lab> {
        if !is_root() {
            eprintln!("skipped: needs root to make network namespaces");
            return None;
        }
        let name = format!(
            "{prefix}{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab {
            datastore: format!("file:///run/felis/lab/{name}/felis.db"),
            name,
            dir: tempfile::tempdir().unwrap(),
        };
        let out = lab.felis(&[&["lab", "up", "--name", &lab.name], args].concat());
        assert!(
            out.status.success(),
            "lab up: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        Some(lab)
    }

    /// Runs the `felis` binary.
    pub(crate) fn felis(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_felis"))
            .args(args)
            .output()
            .unwrap()
    }

    /// A CLI command against the lab's datastore; it must succeed.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = self.felis(&[&["--datastore", &self.datastore], args].concat());
        assert!(
            out.status.success(),
            "felis {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `felis lab check -o json`.
    pub(crate) fn check(&self) -> serde_json::Value {
        let out = self.felis(&["lab", "check", "--name", &self.name, "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The namespace of a lab host or workload (`h1`, `h1-w1`).
    pub(crate) fn netns(&self, what: &str) -> String {
        format!("{}.{what}", self.name)
    }

    /// The output of `ip ARGS` inside a lab host or workload (empty when it fails).
    pub(crate) fn ip(&self, what: &str, args: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.netns(what)])
            .args(args.split_whitespace())
            .output()
            .unwrap();
        text(&out.stdout)
    }

    /// Workload name → address, from `felis lab ps -o json`.
    pub(crate) fn addresses(&self) -> std::collections::BTreeMap<String, String> {
        let ps: serde_json::Value = serde_json::from_slice(
            &self
                .felis(&["lab", "ps", "--name", &self.name, "-o", "json"])
                .stdout,
        )
        .unwrap();
        ps["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["name"].as_str().unwrap().to_string(),
                    w["address"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// One echo request from `from` (host or workload) to `address`, answered within `wait`
    /// seconds.
    pub(crate) fn ping(&self, from: &str, address: &str, wait: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.netns(from)])
            .args(["ping", "-n", "-q", "-c", "1", "-W", wait, address])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// Applies `yaml` with `felis apply -f`; returns when the command has returned.
    pub(crate) fn apply(&self, yaml: &str) -> Instant {
        let path = self.dir.path().join("apply.yaml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        self.cli(&["apply", "-f", path.to_str().unwrap()]);
        Instant::now()
    }

    /// The agent log of `host`, without colours.
    pub(crate) fn log(&self, host: &str) -> String {
        let log = std::fs::read_to_string(format!("/run/felis/lab/{}/{host}.log", self.name))
            .unwrap_or_default();
        strip_colours(&log)
    }

    /// Waits until `host`'s agent has programmed the datastore up to `revision` (its
    /// `synced-revision` state file).
    pub(crate) fn wait_synced(&self, host: &str, revision: i64, timeout: Duration) {
        felis_lab::wait_synced(&self.name, host, revision, timeout).unwrap();
    }

    /// Rewrites the marker resource `marker` and returns the datastore revision it got: every
    /// change made before is at or below it.
    pub(crate) fn mark_revision(&self, marker: &str) -> i64 {
        let state = felis_lab::State::load(&self.name).unwrap();
        felis_lab::mark_revision(
            &state,
            std::path::Path::new(env!("CARGO_BIN_EXE_felis")),
            marker,
        )
        .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.felis(&["lab", "down", "--name", &self.name]);
    }
}

/// Whether the tests run as root (namespaces need it).
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// Bytes as text, lossily.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Removes ANSI colour sequences (`ESC [ ... m`).
pub(crate) fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
