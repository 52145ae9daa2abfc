//! Running `ip`, `nft` and friends, with their error output kept for the message.

use std::io::Write;
use std::process::Command;
use std::process::Stdio;

use crate::Error;

/// Runs `program args...`; fails with its stderr when it exits non-zero.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: program.to_string(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Runs `ip` with `args`.
pub(crate) fn ip(args: &[&str]) -> Result<String, Error> {
    run("ip", args)
}

/// Runs `ip -n netns args...`.
pub(crate) fn ip_in(netns: &str, args: &[&str]) -> Result<String, Error> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Runs a command inside `netns`.
pub(crate) fn exec_in(netns: &str, args: &[&str]) -> Result<String, Error> {
    let mut all = vec!["netns", "exec", netns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Sets a sysctl inside `netns`.
pub(crate) fn sysctl_in(netns: &str, key: &str, value: &str) -> Result<(), Error> {
    exec_in(netns, &["sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
}

/// Loads an nftables script inside `netns`, as one transaction.
pub(crate) fn nft_in(netns: &str, script: &str) -> Result<(), Error> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: "nft".into(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| Error::Spawn {
                command: "nft".into(),
                source,
            })?;
    }
    let output = child.wait_with_output().map_err(|source| Error::Spawn {
        command: "nft".into(),
        source,
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("ip netns exec {netns} nft -f -"),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// The names of every network namespace under `/run/netns`.
pub(crate) fn namespaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
