//! CNI results: one internal shape (spec 1.0.0/1.1.0), rendered for older requests and decoded
//! from any supported version.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Map;
use serde_json::Value;

use crate::error::Error;
use crate::error::Result;
use crate::version::CniVersion;

/// An ADD result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces created (host side without `sandbox`, container side with it).
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    pub ips: Vec<IpConfig>,
    /// Routes the container should have.
    pub routes: Vec<RouteEntry>,
    /// DNS settings.
    pub dns: Dns,
}

/// An entry of `interfaces`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:..`.
    pub mac: Option<String>,
    /// The netns path for interfaces inside the container.
    pub sandbox: Option<String>,
    /// MTU (1.1.0 only).
    pub mtu: Option<u32>,
}

/// An entry of `ips`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix length.
    pub address: IpNet,
    /// Default gateway, if the IPAM plugin gives one.
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// An entry of `routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    pub gw: Option<IpAddr>,
}

/// The `dns` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl CniResult {
    /// Renders the result for `version`: before 1.0.0 each IP carries `"version": "4"|"6"`;
    /// `interfaces[].mtu` is only emitted from 1.1.0.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.as_str().into());
        if !self.interfaces.is_empty() {
            let interfaces = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut o = Map::new();
                    o.insert("name".into(), i.name.clone().into());
                    if let Some(mac) = &i.mac {
                        o.insert("mac".into(), mac.clone().into());
                    }
                    if let (Some(mtu), true) = (i.mtu, version >= CniVersion::V1_1_0) {
                        o.insert("mtu".into(), mtu.into());
                    }
                    if let Some(sandbox) = &i.sandbox {
                        o.insert("sandbox".into(), sandbox.clone().into());
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !self.ips.is_empty() {
            let ips = self
                .ips
                .iter()
                .map(|ip| {
                    let mut o = Map::new();
                    if version.has_ip_version_field() {
                        let v = if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        };
                        o.insert("version".into(), v.into());
                    }
                    if let Some(i) = ip.interface {
                        o.insert("interface".into(), i.into());
                    }
                    o.insert("address".into(), ip.address.to_string().into());
                    if let Some(gw) = ip.gateway {
                        o.insert("gateway".into(), gw.to_string().into());
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes = self
                .routes
                .iter()
                .map(|r| {
                    let mut o = Map::new();
                    o.insert("dst".into(), r.dst.to_string().into());
                    if let Some(gw) = r.gw {
                        o.insert("gw".into(), gw.to_string().into());
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or_else(|_| Value::Object(Map::new())),
        );
        Value::Object(out)
    }

    /// Decodes a result of any supported version (0.3.0 to 1.1.0); `what` names it in errors.
    pub fn from_json(value: &Value, what: &str) -> Result<CniResult> {
        let wire: WireResult =
            serde_json::from_value(value.clone()).map_err(|source| Error::Decode {
                what: what.to_string(),
                source,
            })?;
        if let Some(v) = &wire.cni_version {
            CniVersion::parse(v)?;
        }
        let bad = |field: String, reason: String| Error::InvalidConfig {
            field: format!("{what}.{field}"),
            reason,
        };
        let mut result = CniResult {
            dns: wire.dns.unwrap_or_default(),
            ..CniResult::default()
        };
        for (n, i) in wire.interfaces.into_iter().enumerate() {
            if i.name.is_empty() {
                return Err(bad(format!("interfaces[{n}].name"), "missing".into()));
            }
            result.interfaces.push(Interface {
                name: i.name,
                mac: i.mac.filter(|m| !m.is_empty()),
                sandbox: i.sandbox.filter(|s| !s.is_empty()),
                mtu: i.mtu,
            });
        }
        for (n, ip) in wire.ips.into_iter().enumerate() {
            let address: IpNet = ip.address.parse().map_err(|_| {
                bad(
                    format!("ips[{n}].address"),
                    format!("{:?} is not a CIDR", ip.address),
                )
            })?;
            let gateway = match ip.gateway.filter(|g| !g.is_empty()) {
                Some(g) => Some(g.parse().map_err(|_| {
                    bad(format!("ips[{n}].gateway"), format!("{g:?} is not an IP"))
                })?),
                None => None,
            };
            if let Some(i) = ip.interface
                && i >= result.interfaces.len()
            {
                return Err(bad(
                    format!("ips[{n}].interface"),
                    format!("index {i} is out of range"),
                ));
            }
            result.ips.push(IpConfig {
                address,
                gateway,
                interface: ip.interface,
            });
        }
        for (n, r) in wire.routes.into_iter().enumerate() {
            let dst = r.dst.parse().map_err(|_| {
                bad(
                    format!("routes[{n}].dst"),
                    format!("{:?} is not a CIDR", r.dst),
                )
            })?;
            let gw =
                match r.gw.filter(|g| !g.is_empty()) {
                    Some(g) => Some(g.parse().map_err(|_| {
                        bad(format!("routes[{n}].gw"), format!("{g:?} is not an IP"))
                    })?),
                    None => None,
                };
            result.routes.push(RouteEntry { dst, gw });
        }
        Ok(result)
    }

    /// The addresses assigned to the interface called `ifname` inside `sandbox` (or, if the
    /// result names no interfaces, all addresses).
    pub fn addresses_of(&self, ifname: &str) -> Vec<IpNet> {
        self.ips
            .iter()
            .filter(
                |ip| match ip.interface.and_then(|i| self.interfaces.get(i)) {
                    Some(interface) => interface.name == ifname,
                    None => true,
                },
            )
            .map(|ip| ip.address)
            .collect()
    }
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(rename = "cniVersion", default)]
    cni_version: Option<String>,
    #[serde(default)]
    interfaces: Vec<WireInterface>,
    #[serde(default)]
    ips: Vec<WireIp>,
    #[serde(default)]
    routes: Vec<WireRoute>,
    #[serde(default)]
    dns: Option<Dns>,
}

#[derive(Deserialize)]
struct WireInterface {
    #[serde(default)]
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    sandbox: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
}

#[derive(Deserialize)]
struct WireIp {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct WireRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "calic440f455693".into(),
                    mac: Some("ee:ee:ee:ee:ee:ee".into()),
                    sandbox: None,
                    mtu: Some(1450),
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:42:ac:11:00:02".into()),
                    sandbox: Some("/run/netns/pod".into()),
                    mtu: Some(1450),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/32".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00:244::5/128".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![RouteEntry {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn v1_result_has_no_ip_version_and_no_mtu() {
        let json = sample().to_json(CniVersion::V1_0_0);
        assert_eq!(
            json,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "calic440f455693", "mac": "ee:ee:ee:ee:ee:ee"},
                    {"name": "eth0", "mac": "02:42:ac:11:00:02", "sandbox": "/run/netns/pod"}
                ],
                "ips": [
                    {"interface": 1, "address": "10.244.1.5/32"},
                    {"interface": 1, "address": "fd00:244::5/128"}
                ],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn old_results_carry_ip_versions_and_new_ones_mtu() {
        let json = sample().to_json(CniVersion::V0_3_1);
        assert_eq!(json["cniVersion"], "0.3.1");
        assert_eq!(json["ips"][0]["version"], "4");
        assert_eq!(json["ips"][1]["version"], "6");
        assert_eq!(
            sample().to_json(CniVersion::V1_1_0)["interfaces"][0]["mtu"],
            1450
        );
    }

    #[test]
    fn results_round_trip_through_every_version() {
        for v in CniVersion::SUPPORTED {
            let mut expected = sample();
            if v < CniVersion::V1_1_0 {
                for i in &mut expected.interfaces {
                    i.mtu = None;
                }
            }
            let back = CniResult::from_json(&sample().to_json(v), "result").unwrap();
            assert_eq!(back, expected, "{v}");
        }
    }

    /// host-local 1.1.1 (Debian containernetworking-plugins) ADD output for a 0.4.0 config.
    #[test]
    fn host_local_output_decodes() {
        let out = json!({
            "cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.22.0.2/24", "gateway": "10.22.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let r = CniResult::from_json(&out, "IPAM result").unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.22.0.2/24");
        assert_eq!(r.ips[0].gateway, Some("10.22.0.1".parse().unwrap()));
        assert_eq!(r.addresses_of("eth0").len(), 1);
    }

    #[test]
    fn malformed_results_name_the_field() {
        let out = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]});
        let e = CniResult::from_json(&out, "prevResult").unwrap_err();
        assert!(e.to_string().contains("prevResult.ips[0].address"), "{e}");
        let out =
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/32", "interface": 3}]});
        assert!(CniResult::from_json(&out, "prevResult").is_err());
    }

    mod prop {
        use std::net::Ipv4Addr;
        use std::net::Ipv6Addr;

        use proptest::prelude::*;

        use super::*;

        fn ip_net() -> impl Strategy<Value = IpNet> {
            prop_oneof![
                (any::<u32>(), 0u8..=32)
                    .prop_map(|(a, l)| IpNet::new(Ipv4Addr::from(a).into(), l).unwrap()),
                (any::<u128>(), 0u8..=128).prop_map(|(a, l)| IpNet::new(
                    Ipv6Addr::from(a).into(),
                    l
                )
                .unwrap()),
            ]
        }

        fn result() -> impl Strategy<Value = CniResult> {
            let interface = (
                "[a-z][a-z0-9]{0,14}",
                proptest::option::of("[0-9a-f:]{17}"),
                proptest::option::of("/run/netns/[a-z]{1,8}"),
            )
                .prop_map(|(name, mac, sandbox)| Interface {
                    name,
                    mac,
                    sandbox,
                    mtu: None,
                });
            (
                proptest::collection::vec(interface, 0..3),
                proptest::collection::vec((ip_net(), proptest::option::of(any::<u32>())), 0..4),
                proptest::collection::vec((ip_net(), proptest::option::of(any::<u32>())), 0..3),
            )
                .prop_map(|(interfaces, ips, routes)| {
                    let n = interfaces.len();
                    CniResult {
                        ips: ips
                            .into_iter()
                            .enumerate()
                            .map(|(i, (address, gw))| IpConfig {
                                address,
                                gateway: gw.map(|g| IpAddr::V4(Ipv4Addr::from(g))),
                                interface: (n > 0).then(|| i % n),
                            })
                            .collect(),
                        routes: routes
                            .into_iter()
                            .map(|(dst, gw)| RouteEntry {
                                dst,
                                gw: gw.map(|g| IpAddr::V4(Ipv4Addr::from(g))),
                            })
                            .collect(),
                        interfaces,
                        dns: Dns::default(),
                    }
                })
        }

        proptest! {
            #[test]
            fn any_result_round_trips_in_every_version(r in result()) {
                for v in CniVersion::SUPPORTED {
                    let back = CniResult::from_json(&r.to_json(v), "result").unwrap();
                    prop_assert_eq!(&back, &r);
                }
            }
        }
    }
}
