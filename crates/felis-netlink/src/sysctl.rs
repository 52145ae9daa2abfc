//! Sysctls under `/proc/sys`, read and written inside a given network namespace.
//!
//! `/proc/sys/net` shows the namespace of the thread that opens the file, so every access
//! happens on a throwaway thread that entered the namespace first.

use std::fs;
use std::io;
use std::path::PathBuf;

use crate::error::Error;
use crate::error::Result;
use crate::netns::Netns;

/// Writes `settings` (`key`, `value`) in order inside `netns`; stops at the first failure.
pub fn write_in(netns: &Netns, settings: &[(String, String)]) -> Result<()> {
    for (key, _) in settings {
        sysctl_path(key)?;
    }
    netns.run(|| {
        for (key, value) in settings {
            let path = sysctl_path(key)?;
            fs::write(&path, value.as_bytes()).map_err(|source| Error::Sysctl {
                op: "write",
                key: key.clone(),
                source,
            })?;
        }
        Ok(())
    })?
}

/// Reads one sysctl inside `netns`, trimmed.
pub fn read_in(netns: &Netns, key: &str) -> Result<String> {
    let path = sysctl_path(key)?;
    netns.run(|| {
        fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|source| Error::Sysctl {
                op: "read",
                key: key.to_string(),
                source,
            })
    })?
}

/// The key of a per-interface IPv4 setting: `net/ipv4/conf/<ifname>/<knob>`.
pub fn ipv4_conf(ifname: &str, knob: &str) -> String {
    format!("net/ipv4/conf/{ifname}/{knob}")
}

/// The key of a per-interface IPv4 neighbour setting: `net/ipv4/neigh/<ifname>/<knob>`.
pub fn ipv4_neigh(ifname: &str, knob: &str) -> String {
    format!("net/ipv4/neigh/{ifname}/{knob}")
}

/// The key of a per-interface IPv6 setting: `net/ipv6/conf/<ifname>/<knob>`.
pub fn ipv6_conf(ifname: &str, knob: &str) -> String {
    format!("net/ipv6/conf/{ifname}/{knob}")
}

/// Maps a key (`net/ipv4/ip_forward` or `net.ipv4.ip_forward`) to its `/proc/sys` path,
/// refusing anything that could leave `/proc/sys`.
fn sysctl_path(key: &str) -> Result<PathBuf> {
    let invalid = |reason| Error::InvalidName {
        name: key.to_string(),
        reason,
    };
    // Dotted form only when there is no slash: interface names may contain dots.
    let normalised = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    if normalised.is_empty() {
        return Err(invalid("empty sysctl key"));
    }
    let mut path = PathBuf::from("/proc/sys");
    for part in normalised.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.contains('\0') {
            return Err(invalid("sysctl key has an empty, '.' or '..' component"));
        }
        path.push(part);
    }
    Ok(path)
}

/// True when `e` means the sysctl does not exist (e.g. IPv6 disabled).
pub fn is_missing(e: &Error) -> bool {
    matches!(e, Error::Sysctl { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_map_under_proc_sys() {
        assert_eq!(
            sysctl_path("net/ipv4/conf/vxlan.calico/proxy_arp").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/vxlan.calico/proxy_arp")
        );
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
    }

    #[test]
    fn sysctl_keys_cannot_escape_proc_sys() {
        for bad in [
            "",
            "net/../../etc/passwd",
            "/net/ipv4",
            "net//ipv4",
            "net/ipv4/",
        ] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
    }
}
