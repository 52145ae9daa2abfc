//! Test helpers: throwaway network namespaces for tests that touch the kernel.
//!
//! Dev-only. Each [`TestNetns`] is a fresh namespace pinned at `/run/netns/ct-<pid>-<n>` (so
//! `ip -n ct-<pid>-<n> ...` and `ip netns exec` work while a test runs) and deleted when the
//! value drops, panics included. A test process killed before its drops ran leaves names
//! whose pid is dead; [`sweep_leftovers`] removes those.
//!
//! ```no_run
//! # fn main() -> Result<(), felis_netlink::Error> {
//! if felis_testns::skip_unless_root("my_test") { return Ok(()); }
//! let ns = felis_testns::TestNetns::new()?;
//! let out = ns.ip(&["link", "show"]);
//! assert!(out.contains("lo"));
//! # Ok(()) }
//! ```

// Dev-only helpers: a test helper that cannot do its job fails the test loudly.
#![allow(clippy::panic)]

pub mod bench;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;

use felis_netlink::Handle;
use felis_netlink::Netns;
use felis_netlink::Result;

/// Prefix of every namespace made by tests (CI sweeps `ct-<dead pid>-*`).
pub const PREFIX: &str = "ct-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A uniquely named network namespace, deleted on drop.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
    netns: Netns,
}

impl TestNetns {
    /// Creates `ct-<pid>-<n>`. The first call in a process also sweeps the leftovers of test
    /// processes that died without cleaning up.
    pub fn new() -> Result<TestNetns> {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(|| {
            if let Ok(swept) = sweep_leftovers()
                && !swept.is_empty()
            {
                eprintln!("swept leftover test namespaces: {swept:?}");
            }
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        let netns = Netns::create_named(&name)?;
        let test = TestNetns { name, netns };
        // Bring up loopback so tests can use 127.0.0.1 inside.
        test.run(|| {
            let _ = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status();
        });
        Ok(test)
    }

    /// The namespace name, e.g. `ct-1234-0`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pinned path, `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        // Created by name, so it always has a path.
        self.netns
            .path()
            .unwrap_or(Path::new(felis_netlink::NETNS_RUN_DIR))
    }

    /// The open namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Runs `f` on a throwaway thread inside the namespace; panics propagate.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match self.netns.run(f) {
            Ok(value) => value,
            Err(e) => panic!("entering test namespace {}: {e}", self.name),
        }
    }

    /// A netlink handle bound to this namespace (call inside a tokio runtime).
    pub async fn handle(&self) -> Result<Handle> {
        Handle::connect(self.netns.try_clone()?).await
    }

    /// Runs `ip -n <name> ARGS` and returns stdout; panics if `ip` fails. For assertions that
    /// check the kernel state through an independent tool.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_tool("ip", &full)
    }

    /// Joins this namespace to `peer` with a veth: `ifname` here holding `cidr`, `peer_ifname`
    /// there holding `peer_cidr`, both up. Panics if `ip` fails.
    pub fn link_to(
        &self,
        ifname: &str,
        cidr: &str,
        peer: &TestNetns,
        peer_ifname: &str,
        peer_cidr: &str,
    ) {
        self.ip(&[
            "link",
            "add",
            ifname,
            "type",
            "veth",
            "peer",
            "name",
            peer_ifname,
            "netns",
            peer.name(),
        ]);
        self.ip(&["addr", "add", cidr, "dev", ifname]);
        self.ip(&["link", "set", ifname, "up"]);
        peer.ip(&["addr", "add", peer_cidr, "dev", peer_ifname]);
        peer.ip(&["link", "set", peer_ifname, "up"]);
    }

    /// Runs `ip netns exec <name> PROGRAM ARGS` and returns stdout; panics if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run_tool("ip", &full)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = Netns::delete_named(&self.name) {
            eprintln!(
                "warning: could not delete test namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Deletes `ct-<pid>-*` namespaces whose pid is no longer running; returns their names.
pub fn sweep_leftovers() -> Result<Vec<String>> {
    let mut swept = Vec::new();
    for name in felis_netlink::list_named_netns()? {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        Netns::delete_named(&name)?;
        swept.push(name);
    }
    Ok(swept)
}

/// The pid encoded in a test namespace name `ct-<pid>-<n>`.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// True when running as root (namespace tests need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns `true` (and prints why) when the test must be skipped because we are not root.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        false
    } else {
        eprintln!(
            "SKIPPED {test}: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for network namespaces"
        );
        true
    }
}

fn run_tool(program: &str, args: &[&str]) -> String {
    let output = match Command::new(program).args(args).output() {
        Ok(output) => output,
        Err(e) => panic!("running {program} {args:?}: {e}"),
    };
    if !output.status.success() {
        panic!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_test_names() {
        assert_eq!(owner_pid("ct-1234-7"), Some(1234));
        assert_eq!(owner_pid("ct-1234"), None);
        assert_eq!(owner_pid("lab-1234-7"), None);
        assert_eq!(owner_pid("ct-x-7"), None);
    }

    #[test]
    fn test_netns_is_named_and_deleted_on_drop() {
        if skip_unless_root("test_netns_is_named_and_deleted_on_drop") {
            return;
        }
        let ns = TestNetns::new().unwrap();
        let path = ns.path().to_path_buf();
        assert!(
            ns.name()
                .starts_with(&format!("ct-{}-", std::process::id()))
        );
        assert!(path.exists());
        assert!(ns.ip(&["link", "show", "lo"]).contains("LOOPBACK"));
        drop(ns);
        assert!(!path.exists());
    }

    #[test]
    fn test_netns_is_deleted_when_the_test_panics() {
        if skip_unless_root("test_netns_is_deleted_when_the_test_panics") {
            return;
        }
        let path = std::sync::Mutex::new(None);
        let result = std::panic::catch_unwind(|| {
            let ns = TestNetns::new().unwrap();
            *path.lock().unwrap() = Some(ns.path().to_path_buf());
            ns.run(|| panic!("boom"));
        });
        assert!(result.is_err());
        let path = path.lock().unwrap().clone().unwrap();
        assert!(!path.exists(), "{} survived a panic", path.display());
    }

    #[test]
    fn sweep_removes_namespaces_of_dead_pids_only() {
        if skip_unless_root("sweep_removes_namespaces_of_dead_pids_only") {
            return;
        }
        // The first TestNetns::new() of the process sweeps once; get that out of the way.
        let live = TestNetns::new().unwrap();
        // pid_max is at most 4194304, so this pid cannot be alive.
        let dead = format!("{PREFIX}4194305-{}", std::process::id());
        Netns::create_named(&dead).unwrap();
        let swept = sweep_leftovers().unwrap();
        // Another test process may sweep it first: check the outcome, not who did it.
        assert!(!Path::new(felis_netlink::NETNS_RUN_DIR).join(&dead).exists());
        assert!(!swept.contains(&live.name().to_string()));
        assert!(live.path().exists());
    }
}
