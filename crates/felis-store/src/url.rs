//! Datastore URLs: parsing `file://` and `etcd://` URLs and choosing one from flags and the
//! environment (Felis' own `FELIS_DATASTORE`, then Calico's `DATASTORE_TYPE`/`ETCD_ENDPOINTS`).

use std::path::PathBuf;

use crate::Error;

/// The datastore used when nothing else is configured.
pub const DEFAULT_URL: &str = "file:///var/lib/felis/felis.db";

/// Calico's default etcd endpoint (calicoctl, calico-node) when `ETCD_ENDPOINTS` is unset.
const CALICO_DEFAULT_ETCD_ENDPOINT: &str = "127.0.0.1:2379";

/// The etcd client port used when an `etcd://` endpoint names no port.
const ETCD_DEFAULT_PORT: u16 = 2379;

/// When an embedded-store commit reaches the disk (SQLite `synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is fsynced before it returns (`synchronous=FULL`, `file:///path?sync=full`).
    Full,
    /// Commits are atomic and survive any process crash (a killed agent or CNI plugin loses
    /// nothing), but the last ones may be lost on power failure or an OS crash
    /// (`synchronous=NORMAL` in WAL mode; `file:///path?sync=normal`). The default: several
    /// times faster on slow disks, and what a one-machine store needs.
    #[default]
    Normal,
}

/// A parsed datastore URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreUrl {
    /// The embedded SQLite store at this absolute path.
    File(PathBuf, Durability),
    /// An etcd v3 cluster reached over plain HTTP at these `host:port` endpoints.
    Etcd(Vec<String>),
}

impl DatastoreUrl {
    /// Parses `file:///abs/path.db` or `etcd://host:port[,host:port...]`.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = url.strip_prefix("file://") {
            let (path, durability) = match rest.split_once('?') {
                None => (rest, Durability::default()),
                Some((path, "sync=full")) => (path, Durability::Full),
                Some((path, "sync=normal")) => (path, Durability::Normal),
                Some(_) => {
                    return Err(invalid(
                        "the only file:// option is ?sync=full or ?sync=normal",
                    ));
                }
            };
            if path.is_empty() {
                return Err(invalid("file:// URL has no path"));
            }
            if !path.starts_with('/') {
                return Err(invalid(
                    "file:// URL needs an absolute path (file:///var/lib/felis/felis.db)",
                ));
            }
            if path.ends_with('/') {
                return Err(invalid(
                    "file:// URL names a directory, not a database file",
                ));
            }
            return Ok(Self::File(PathBuf::from(path), durability));
        }
        if let Some(list) = url.strip_prefix("etcd://") {
            let mut endpoints = Vec::new();
            for endpoint in list.split(',') {
                let endpoint = endpoint.trim().trim_end_matches('/');
                if endpoint.is_empty() {
                    return Err(invalid(
                        "empty etcd endpoint (etcd://host:port[,host:port])",
                    ));
                }
                endpoints.push(parse_endpoint(endpoint).map_err(|reason| invalid(&reason))?);
            }
            return Ok(Self::Etcd(endpoints));
        }
        if url.starts_with("etcds://") || url.starts_with("https://") {
            return Err(invalid("etcd over TLS is not supported yet"));
        }
        if url.starts_with("kubernetes") {
            return Err(invalid(
                "the Kubernetes datastore is not supported (use file:// or etcd://)",
            ));
        }
        Err(invalid(
            "expected file:///path/to.db or etcd://host:port[,host:port]",
        ))
    }
}

/// Checks one `host:port` (or `host`, port 2379; IPv6 as `[addr]:port`) and returns `host:port`.
fn parse_endpoint(endpoint: &str) -> Result<String, String> {
    if endpoint.contains('/') || endpoint.contains('@') {
        return Err(format!("etcd endpoint {endpoint:?} must be host:port"));
    }
    let (host, port) = if let Some(rest) = endpoint.strip_prefix('[') {
        // [v6addr]:port or [v6addr]
        let Some((addr, after)) = rest.split_once(']') else {
            return Err(format!("etcd endpoint {endpoint:?} has an unclosed '['"));
        };
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                format!("etcd endpoint {endpoint:?}: expected ':port' after ']'")
            })?),
        };
        (format!("[{addr}]"), port)
    } else {
        match endpoint.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (endpoint.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("etcd endpoint {endpoint:?} has no host"));
    }
    let port = match port {
        None => ETCD_DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(format!(
                    "etcd endpoint {endpoint:?} has an invalid port {p:?}"
                ));
            }
        },
    };
    Ok(format!("{host}:{port}"))
}

/// Chooses the datastore URL: `flag` (e.g. `--datastore`), else `FELIS_DATASTORE`, else Calico's
/// `DATASTORE_TYPE=etcdv3` with `ETCD_ENDPOINTS` (`http://h:p,http://h:p` becomes
/// `etcd://h:p,h:p`; `ETCD_ENDPOINTS` alone also selects etcd, calicoctl's default type), else
/// [`DEFAULT_URL`]. Other `DATASTORE_TYPE`s come back as-is, for [`crate::open`] to reject.
pub fn url_from_env(flag: Option<&str>) -> String {
    url_from_lookup(flag, |name| std::env::var(name).ok())
}

/// [`url_from_env`] with the environment given as a lookup function (for tests and callers
/// that read configuration from elsewhere).
pub fn url_from_lookup(flag: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    let non_empty = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    if let Some(flag) = non_empty(flag.map(str::to_string)) {
        return flag;
    }
    if let Some(url) = non_empty(env("FELIS_DATASTORE")) {
        return url;
    }
    match non_empty(env("DATASTORE_TYPE")).as_deref() {
        Some("etcdv3") => {
            let endpoints = non_empty(env("ETCD_ENDPOINTS"))
                .unwrap_or_else(|| format!("http://{CALICO_DEFAULT_ETCD_ENDPOINT}"));
            calico_endpoints_to_url(&endpoints)
        }
        // Anything else Calico knows (`kubernetes`) is passed through so that `open` rejects
        // it by name instead of silently using the embedded store.
        Some(other) => other.to_string(),
        // calicoctl's default datastore type is etcdv3: endpoints alone select etcd.
        None => match non_empty(env("ETCD_ENDPOINTS")) {
            Some(endpoints) => calico_endpoints_to_url(&endpoints),
            None => DEFAULT_URL.to_string(),
        },
    }
}

/// `http://h:p,http://h2:p` → `etcd://h:p,h2:p`; `https://` → `etcds://...` (rejected by
/// [`DatastoreUrl::parse`] with a clear reason).
fn calico_endpoints_to_url(endpoints: &str) -> String {
    let mut tls = false;
    let hosts: Vec<&str> = endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            if let Some(rest) = e.strip_prefix("https://") {
                tls = true;
                rest
            } else {
                e.strip_prefix("http://").unwrap_or(e)
            }
        })
        .map(|e| e.trim_end_matches('/'))
        .collect();
    let scheme = if tls { "etcds" } else { "etcd" };
    format!("{scheme}://{}", hosts.join(","))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn flag_wins_over_everything() {
        let e = env(&[
            ("FELIS_DATASTORE", "etcd://a:1"),
            ("DATASTORE_TYPE", "etcdv3"),
        ]);
        assert_eq!(url_from_lookup(Some("file:///x.db"), e), "file:///x.db");
    }

    #[test]
    fn felis_datastore_wins_over_calico_variables() {
        let e = env(&[
            ("FELIS_DATASTORE", "etcd://a:1"),
            ("DATASTORE_TYPE", "etcdv3"),
            ("ETCD_ENDPOINTS", "http://b:2"),
        ]);
        assert_eq!(url_from_lookup(None, e), "etcd://a:1");
    }

    #[test]
    fn calico_etcd_endpoints_become_an_etcd_url() {
        let e = env(&[
            ("DATASTORE_TYPE", "etcdv3"),
            (
                "ETCD_ENDPOINTS",
                "http://10.0.0.1:2379, http://10.0.0.2:2379/",
            ),
        ]);
        assert_eq!(
            url_from_lookup(None, e),
            "etcd://10.0.0.1:2379,10.0.0.2:2379"
        );
    }

    #[test]
    fn calico_etcd_without_endpoints_uses_calico_default() {
        let e = env(&[("DATASTORE_TYPE", "etcdv3")]);
        assert_eq!(url_from_lookup(None, e), "etcd://127.0.0.1:2379");
    }

    #[test]
    fn https_endpoints_are_rejected_by_open() {
        let e = env(&[
            ("DATASTORE_TYPE", "etcdv3"),
            ("ETCD_ENDPOINTS", "https://a:2379"),
        ]);
        let url = url_from_lookup(None, e);
        assert!(matches!(
            DatastoreUrl::parse(&url),
            Err(Error::InvalidUrl { .. })
        ));
    }

    #[test]
    fn kubernetes_datastore_type_is_rejected_by_name() {
        let url = url_from_lookup(None, env(&[("DATASTORE_TYPE", "kubernetes")]));
        let err = DatastoreUrl::parse(&url).unwrap_err();
        assert!(err.to_string().contains("Kubernetes"), "{err}");
    }

    #[test]
    fn etcd_endpoints_alone_select_etcd_like_calicoctl() {
        let e = env(&[("ETCD_ENDPOINTS", "http://10.0.0.9:2379")]);
        assert_eq!(url_from_lookup(None, e), "etcd://10.0.0.9:2379");
    }

    #[test]
    fn nothing_set_gives_default_file() {
        assert_eq!(url_from_lookup(None, env(&[])), DEFAULT_URL);
        assert_eq!(
            url_from_lookup(Some("  "), env(&[("FELIS_DATASTORE", "")])),
            DEFAULT_URL
        );
    }

    #[test]
    fn parses_file_urls() {
        assert_eq!(
            DatastoreUrl::parse("file:///var/lib/felis/felis.db").unwrap(),
            DatastoreUrl::File(PathBuf::from("/var/lib/felis/felis.db"), Durability::Normal)
        );
        assert_eq!(
            DatastoreUrl::parse("file:///tmp/x.db?sync=normal").unwrap(),
            DatastoreUrl::File(PathBuf::from("/tmp/x.db"), Durability::Normal)
        );
        assert_eq!(
            DatastoreUrl::parse("file:///tmp/x.db?sync=full").unwrap(),
            DatastoreUrl::File(PathBuf::from("/tmp/x.db"), Durability::Full)
        );
        for bad in [
            "file://",
            "file://relative.db",
            "file:///var/lib/",
            "file:///x.db?sync=off",
        ] {
            assert!(
                matches!(DatastoreUrl::parse(bad), Err(Error::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_etcd_urls() {
        assert_eq!(
            DatastoreUrl::parse("etcd://127.0.0.1:2379,host-b:4001,host-c,[::1]:12").unwrap(),
            DatastoreUrl::Etcd(vec![
                "127.0.0.1:2379".into(),
                "host-b:4001".into(),
                "host-c:2379".into(),
                "[::1]:12".into(),
            ])
        );
        for bad in [
            "etcd://",
            "etcd://a:1,,b:2",
            "etcd://a:notaport",
            "etcd://a:0",
            "etcd://a:99999",
            "etcd://:2379",
            "etcd://a:1/path",
            "etcd://[::1",
        ] {
            assert!(
                matches!(DatastoreUrl::parse(bad), Err(Error::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_schemes_are_invalid_with_a_hint() {
        let err = DatastoreUrl::parse("postgres://x").unwrap_err();
        assert!(err.to_string().contains("file:///"), "{err}");
        assert!(matches!(
            DatastoreUrl::parse("/var/lib/x.db"),
            Err(Error::InvalidUrl { .. })
        ));
    }
}
