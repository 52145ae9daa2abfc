//! CNI spec versions this plugin speaks, and the VERSION command's answer.

use std::fmt;

use serde_json::Value;
use serde_json::json;

use crate::error::Error;

/// A CNI specification version we support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0
    V0_3_0,
    /// 0.3.1
    V0_3_1,
    /// 0.4.0 (adds CHECK)
    V0_4_0,
    /// 1.0.0 (drops `ips[].version`)
    V1_0_0,
    /// 1.1.0 (adds STATUS and GC)
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, oldest first.
    pub const SUPPORTED: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The newest supported version.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// Parses `"1.0.0"` etc.; anything else is an incompatible version (CNI error 1).
    pub fn parse(s: &str) -> Result<CniVersion, Error> {
        CniVersion::SUPPORTED
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| Error::IncompatibleVersion {
                version: s.to_string(),
            })
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0.0 carry `"version": "4"|"6"` in each IP.
    pub fn has_ip_version_field(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// CHECK exists from 0.4.0.
    pub fn supports_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0.
    pub fn supports_status_and_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The VERSION command's output: `{"cniVersion": .., "supportedVersions": [..]}`.
///
/// `requested` is the `cniVersion` the runtime sent on stdin, echoed when we speak it.
pub fn version_info(requested: Option<&str>) -> Value {
    let version = requested
        .and_then(|r| CniVersion::parse(r).ok())
        .unwrap_or(CniVersion::LATEST);
    let supported: Vec<&str> = CniVersion::SUPPORTED.iter().map(|v| v.as_str()).collect();
    json!({ "cniVersion": version.as_str(), "supportedVersions": supported })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_versions_parse_and_unknown_are_incompatible() {
        assert_eq!(CniVersion::parse("0.3.1").unwrap(), CniVersion::V0_3_1);
        assert_eq!(CniVersion::parse("1.0.0").unwrap(), CniVersion::V1_0_0);
        for bad in ["", "0.2.0", "1.0", "2.0.0"] {
            assert!(matches!(
                CniVersion::parse(bad),
                Err(Error::IncompatibleVersion { .. })
            ));
        }
    }

    #[test]
    fn version_output_lists_supported_versions() {
        let v = version_info(Some("0.4.0"));
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(version_info(Some("9.9.9"))["cniVersion"], "1.1.0");
        assert_eq!(version_info(None)["cniVersion"], "1.1.0");
    }

    #[test]
    fn feature_gates_follow_the_spec() {
        assert!(CniVersion::V0_3_1.has_ip_version_field());
        assert!(!CniVersion::V1_0_0.has_ip_version_field());
        assert!(!CniVersion::V0_3_1.supports_check());
        assert!(CniVersion::V0_4_0.supports_check());
        assert!(CniVersion::V1_1_0.supports_status_and_gc());
    }
}
