//! Host-side veth names, as Calico derives them.

use sha1::Digest;
use sha1::Sha1;

/// Calico's default interface prefix (`FELIX_INTERFACEPREFIX`'s first entry).
pub const DEFAULT_INTERFACE_PREFIX: &str = "cali";

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// The host-side veth name for a workload.
///
/// Kubernetes pods: `prefix` + the first 11 hex chars of `sha1("<namespace>.<pod>")`; other
/// orchestrators: `prefix` + the first 11 chars of the container ID. The suffix is shortened if
/// a long prefix would exceed 15 bytes.
pub fn host_veth_name(prefix: &str, k8s_pod: Option<(&str, &str)>, container_id: &str) -> String {
    let suffix: String = match k8s_pod {
        Some((namespace, pod)) => {
            let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
            digest.iter().map(|b| format!("{b:02x}")).collect()
        }
        None => container_id.to_string(),
    };
    let room = MAX_IFNAME.saturating_sub(prefix.len()).min(11);
    let suffix: String = suffix.chars().take(room).collect();
    format!("{prefix}{suffix}")
}

/// The IPAM handle of a workload: `<network name>.<container id>` (Calico's handle ID).
pub fn ipam_handle(network: &str, container_id: &str) -> String {
    format!("{network}.{container_id}")
}

/// The first entry of a comma-separated `FELIX_INTERFACEPREFIX`, or `cali`.
pub fn interface_prefix(felix_interface_prefix: Option<&str>) -> String {
    felix_interface_prefix
        .and_then(|p| p.split(',').map(str::trim).find(|p| !p.is_empty()))
        .unwrap_or(DEFAULT_INTERFACE_PREFIX)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k8s_names_hash_namespace_and_pod() {
        // Expected values: python3 -c 'import hashlib;print(hashlib.sha1(b"default.nginx").hexdigest()[:11])'
        assert_eq!(
            host_veth_name("cali", Some(("default", "nginx")), "x"),
            "calic440f455693"
        );
        assert_eq!(
            host_veth_name("cali", Some(("kube-system", "coredns-abc")), "x"),
            "cali3d5d6ab04b5"
        );
    }

    #[test]
    fn other_orchestrators_use_the_container_id() {
        assert_eq!(
            host_veth_name("cali", None, "0123456789abcdef"),
            "cali0123456789a"
        );
        assert_eq!(host_veth_name("cali", None, "abc"), "caliabc");
    }

    #[test]
    fn names_never_exceed_ifnamsiz() {
        let name = host_veth_name("verylongpfx", Some(("a", "b")), "x");
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("verylongpfx"));
    }

    #[test]
    fn prefix_and_handle_follow_calico() {
        assert_eq!(interface_prefix(Some("tap,cali")), "tap");
        assert_eq!(interface_prefix(Some("")), "cali");
        assert_eq!(interface_prefix(None), "cali");
        assert_eq!(ipam_handle("k8s-pod-network", "abc"), "k8s-pod-network.abc");
    }
}
