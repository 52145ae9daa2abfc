//! EC2 resources as plain data, and their decoding from EC2 Query API XML.
//!
//! Only the fields Felis needs are kept. Decoding is pure (XML text in, structs out) so it is
//! tested on captured answers without a network.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use roxmltree::Node;
use serde::Deserialize;
use serde::Serialize;

use crate::error::Error;

/// An EC2 instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// `i-…`.
    pub id: String,
    /// The subnet of the primary interface.
    pub subnet_id: Option<String>,
    /// The VPC.
    pub vpc_id: Option<String>,
    /// The primary private IPv4 address.
    pub private_ip: Option<Ipv4Addr>,
    /// The instance-level view of the primary interface's source/destination check.
    pub source_dest_check: Option<bool>,
    /// Attached network interfaces.
    pub network_interfaces: Vec<NetworkInterface>,
}

impl Instance {
    /// The interface attached at device index 0, which Calico treats as the primary one.
    #[must_use]
    pub fn primary_interface(&self) -> Option<&NetworkInterface> {
        self.network_interfaces
            .iter()
            .find(|i| i.device_index == Some(0))
    }
}

/// An elastic network interface (ENI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// `eni-…`.
    pub id: String,
    /// The subnet it lives in.
    pub subnet_id: Option<String>,
    /// The VPC.
    pub vpc_id: Option<String>,
    /// The attachment's device index (0 = primary), when attached.
    pub device_index: Option<u32>,
    /// The instance it is attached to, when DescribeNetworkInterfaces says so.
    pub instance_id: Option<String>,
    /// The primary private IPv4 address.
    pub private_ip: Option<Ipv4Addr>,
    /// All private IPv4 addresses, the primary first.
    pub private_ips: Vec<Ipv4Addr>,
    /// `true` when EC2 drops traffic not addressed from/to this interface's addresses.
    pub source_dest_check: bool,
    /// Security group ids.
    pub group_ids: Vec<String>,
    /// MAC address.
    pub mac_address: Option<String>,
}

/// A VPC subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// `subnet-…`.
    pub id: String,
    /// The VPC.
    pub vpc_id: Option<String>,
    /// IPv4 CIDR.
    pub cidr: Ipv4Net,
    /// e.g. `us-east-1a`.
    pub availability_zone: Option<String>,
}

/// A security group with its rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    /// `sg-…`.
    pub id: String,
    /// Group name.
    pub name: String,
    /// Inbound rules.
    pub ingress: Vec<Permission>,
    /// Outbound rules.
    pub egress: Vec<Permission>,
}

/// The IP protocol of a security group rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// `-1`: every protocol and port.
    All,
    /// An IP protocol number (`tcp` = 6, `udp` = 17, `icmp` = 1, IPIP = 4).
    Number(u8),
}

impl Protocol {
    /// Parses EC2's `ipProtocol` (`-1`, `tcp`, `udp`, `icmp`, `icmpv6`, or a number).
    #[must_use]
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "-1" | "all" => Some(Protocol::All),
            "tcp" => Some(Protocol::Number(6)),
            "udp" => Some(Protocol::Number(17)),
            "icmp" => Some(Protocol::Number(1)),
            "icmpv6" => Some(Protocol::Number(58)),
            "ipip" | "ipencap" => Some(Protocol::Number(4)),
            other => other.parse().ok().map(Protocol::Number),
        }
    }
}

/// One security group rule (EC2's `IpPermission`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// Protocol.
    pub protocol: Protocol,
    /// First port (TCP/UDP), absent or -1 for all.
    pub from_port: Option<i32>,
    /// Last port (TCP/UDP), absent or -1 for all.
    pub to_port: Option<i32>,
    /// IPv4 CIDRs the rule admits (source for ingress, destination for egress).
    pub cidrs: Vec<Ipv4Net>,
    /// Security groups the rule admits.
    pub group_ids: Vec<String>,
    /// Managed prefix lists the rule admits (not expanded by Felis).
    pub prefix_list_ids: Vec<String>,
}

impl Permission {
    /// Whether the rule covers `protocol` and (for TCP/UDP) destination `port`.
    #[must_use]
    pub fn covers(&self, protocol: u8, port: Option<u16>) -> bool {
        match self.protocol {
            Protocol::All => true,
            Protocol::Number(p) if p != protocol => false,
            Protocol::Number(6 | 17) => match (port, self.from_port, self.to_port) {
                (None, _, _) => true,
                (Some(_), None, _) | (Some(_), _, None) => true,
                (Some(_), Some(-1), _) => true,
                (Some(port), Some(from), Some(to)) => {
                    from <= i32::from(port) && i32::from(port) <= to
                }
            },
            Protocol::Number(_) => true,
        }
    }
}

// ---- XML decoding ----------------------------------------------------------------------------

/// The AWS error code and message of an `<Errors><Error>` document, if `body` is one.
#[must_use]
pub fn parse_error_document(body: &str) -> Option<(String, String)> {
    let doc = roxmltree::Document::parse(body).ok()?;
    let error = doc.descendants().find(|n| n.has_tag_name("Error"))?;
    let code = child_text(error, "Code")?.to_owned();
    let message = child_text(error, "Message").unwrap_or_default().to_owned();
    Some((code, message))
}

/// The `nextToken` of a paged answer, when there are more pages.
#[must_use]
pub fn parse_next_token(body: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(body).ok()?;
    opt(doc.root_element(), "nextToken")
}

/// Decodes a DescribeInstances answer.
///
/// # Errors
/// [`Error::Xml`] or [`Error::Malformed`] naming the element.
pub fn parse_describe_instances(body: &str) -> Result<Vec<Instance>, Error> {
    let action = "DescribeInstances";
    let doc = parse(action, body)?;
    let mut out = Vec::new();
    for reservation in items(doc.root_element(), "reservationSet") {
        for node in items(reservation, "instancesSet") {
            let id = required(action, node, "instanceId")?;
            let mut network_interfaces = Vec::new();
            for eni in items(node, "networkInterfaceSet") {
                network_interfaces.push(parse_interface(action, eni)?);
            }
            out.push(Instance {
                subnet_id: opt(node, "subnetId"),
                vpc_id: opt(node, "vpcId"),
                private_ip: ipv4(action, node, "privateIpAddress")?,
                source_dest_check: child_text(node, "sourceDestCheck").map(|v| v == "true"),
                network_interfaces,
                id,
            });
        }
    }
    Ok(out)
}

/// Decodes a DescribeNetworkInterfaces answer.
///
/// # Errors
/// [`Error::Xml`] or [`Error::Malformed`] naming the element.
pub fn parse_describe_network_interfaces(body: &str) -> Result<Vec<NetworkInterface>, Error> {
    let action = "DescribeNetworkInterfaces";
    let doc = parse(action, body)?;
    items(doc.root_element(), "networkInterfaceSet")
        .map(|n| parse_interface(action, n))
        .collect()
}

/// Decodes a DescribeSubnets answer.
///
/// # Errors
/// [`Error::Xml`] or [`Error::Malformed`] naming the element.
pub fn parse_describe_subnets(body: &str) -> Result<Vec<Subnet>, Error> {
    let action = "DescribeSubnets";
    let doc = parse(action, body)?;
    items(doc.root_element(), "subnetSet")
        .map(|n| {
            let id = required(action, n, "subnetId")?;
            let cidr_text = required(action, n, "cidrBlock")?;
            let cidr = cidr_text.parse().map_err(|_| Error::Malformed {
                action: action.to_owned(),
                what: format!("subnet {id}: cidrBlock {cidr_text:?} is not an IPv4 CIDR"),
            })?;
            Ok(Subnet {
                vpc_id: opt(n, "vpcId"),
                availability_zone: opt(n, "availabilityZone"),
                cidr,
                id,
            })
        })
        .collect()
}

/// Decodes a DescribeSecurityGroups answer.
///
/// # Errors
/// [`Error::Xml`] or [`Error::Malformed`] naming the element.
pub fn parse_describe_security_groups(body: &str) -> Result<Vec<SecurityGroup>, Error> {
    let action = "DescribeSecurityGroups";
    let doc = parse(action, body)?;
    items(doc.root_element(), "securityGroupInfo")
        .map(|n| {
            let id = required(action, n, "groupId")?;
            let ingress = items(n, "ipPermissions")
                .map(|p| parse_permission(action, &id, p))
                .collect::<Result<_, _>>()?;
            let egress = items(n, "ipPermissionsEgress")
                .map(|p| parse_permission(action, &id, p))
                .collect::<Result<_, _>>()?;
            Ok(SecurityGroup {
                name: opt(n, "groupName").unwrap_or_default(),
                ingress,
                egress,
                id,
            })
        })
        .collect()
}

fn parse_interface(action: &str, n: Node<'_, '_>) -> Result<NetworkInterface, Error> {
    let id = required(action, n, "networkInterfaceId")?;
    let attachment = child(n, "attachment");
    let device_index = match attachment.and_then(|a| child_text(a, "deviceIndex")) {
        None => None,
        Some(v) => Some(v.parse().map_err(|_| Error::Malformed {
            action: action.to_owned(),
            what: format!("interface {id}: attachment/deviceIndex {v:?} is not a number"),
        })?),
    };
    let private_ip = ipv4(action, n, "privateIpAddress")?;
    let mut private_ips = Vec::new();
    for item in items(n, "privateIpAddressesSet") {
        if let Some(ip) = ipv4(action, item, "privateIpAddress")? {
            if child_text(item, "primary") == Some("true") {
                private_ips.insert(0, ip);
            } else {
                private_ips.push(ip);
            }
        }
    }
    if private_ips.is_empty() {
        private_ips.extend(private_ip);
    }
    Ok(NetworkInterface {
        subnet_id: opt(n, "subnetId"),
        vpc_id: opt(n, "vpcId"),
        device_index,
        instance_id: attachment.and_then(|a| opt(a, "instanceId")),
        private_ip,
        private_ips,
        // EC2 defaults the check to on; an absent element means on.
        source_dest_check: child_text(n, "sourceDestCheck") != Some("false"),
        group_ids: items(n, "groupSet")
            .filter_map(|g| opt(g, "groupId"))
            .collect(),
        mac_address: opt(n, "macAddress"),
        id,
    })
}

fn parse_permission(action: &str, group: &str, n: Node<'_, '_>) -> Result<Permission, Error> {
    let proto_text = required(action, n, "ipProtocol")?;
    let protocol = Protocol::parse(&proto_text).ok_or_else(|| Error::Malformed {
        action: action.to_owned(),
        what: format!("group {group}: ipProtocol {proto_text:?} is unknown"),
    })?;
    let port = |name: &str| -> Result<Option<i32>, Error> {
        match child_text(n, name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| Error::Malformed {
                action: action.to_owned(),
                what: format!("group {group}: {name} {v:?} is not a number"),
            }),
        }
    };
    let mut cidrs = Vec::new();
    for r in items(n, "ipRanges") {
        if let Some(text) = child_text(r, "cidrIp") {
            cidrs.push(text.parse().map_err(|_| Error::Malformed {
                action: action.to_owned(),
                what: format!("group {group}: cidrIp {text:?} is not an IPv4 CIDR"),
            })?);
        }
    }
    Ok(Permission {
        protocol,
        from_port: port("fromPort")?,
        to_port: port("toPort")?,
        cidrs,
        group_ids: items(n, "groups")
            .filter_map(|g| opt(g, "groupId"))
            .collect(),
        prefix_list_ids: items(n, "prefixListIds")
            .filter_map(|g| opt(g, "prefixListId"))
            .collect(),
    })
}

fn parse<'a>(action: &str, body: &'a str) -> Result<roxmltree::Document<'a>, Error> {
    roxmltree::Document::parse(body).map_err(|source| Error::Xml {
        action: action.to_owned(),
        source,
    })
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn child_text<'a>(n: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(n, name)
        .and_then(|c| c.text())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn opt(n: Node<'_, '_>, name: &str) -> Option<String> {
    child_text(n, name).map(str::to_owned)
}

fn required(action: &str, n: Node<'_, '_>, name: &str) -> Result<String, Error> {
    opt(n, name).ok_or_else(|| Error::Malformed {
        action: action.to_owned(),
        what: format!("<{}> has no <{name}>", n.tag_name().name()),
    })
}

fn ipv4(action: &str, n: Node<'_, '_>, name: &str) -> Result<Option<Ipv4Addr>, Error> {
    match child_text(n, name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| Error::Malformed {
            action: action.to_owned(),
            what: format!("<{name}> {v:?} is not an IPv4 address"),
        }),
    }
}

/// The `<item>` children of the `set` child of `n`.
fn items<'a, 'i>(n: Node<'a, 'i>, set: &str) -> impl Iterator<Item = Node<'a, 'i>> {
    child(n, set).into_iter().flat_map(|s| {
        s.children()
            .filter(|c| c.is_element() && c.tag_name().name() == "item")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from moto 5.2 (`moto_server`), DescribeInstances after RunInstances into a subnet.
    const DESCRIBE_INSTANCES: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><reservationSet><item><reservationId>r-a82db2ecf33ff43fd</reservationId><ownerId>123456789012</ownerId><groupSet/><instancesSet><item><architecture>x86_64</architecture><networkInterfaceSet><item><association/><attachment><attachTime>2026-11-27T07:12:39.000Z</attachTime><attachmentId>eni-attach-5a3b84ec9446b4fe4</attachmentId><deleteOnTermination>false</deleteOnTermination><deviceIndex>0</deviceIndex><status>attached</status><networkCardIndex>0</networkCardIndex></attachment><description>Primary network interface</description><groupSet><item><groupId>sg-db50ec9c3d537bfba</groupId><groupName>nodes</groupName></item></groupSet><ipv6AddressesSet/><macAddress>02:00:00:25:d5:5d</macAddress><networkInterfaceId>eni-c0cd5414aa807b6a4</networkInterfaceId><ownerId>123456789012</ownerId><privateIpAddress>10.0.1.10</privateIpAddress><privateIpAddressesSet><item><primary>true</primary><privateIpAddress>10.0.1.10</privateIpAddress></item></privateIpAddressesSet><sourceDestCheck>true</sourceDestCheck><status>in-use</status><subnetId>subnet-eca09258fccb6d026</subnetId><vpcId>vpc-304e410eb8c949642</vpcId><interfaceType>interface</interfaceType></item></networkInterfaceSet><groupSet><item><groupId>sg-db50ec9c3d537bfba</groupId><groupName>nodes</groupName></item></groupSet><sourceDestCheck>true</sourceDestCheck><instanceId>i-ad245fedda0697d4e</instanceId><subnetId>subnet-eca09258fccb6d026</subnetId><vpcId>vpc-304e410eb8c949642</vpcId><privateIpAddress>10.0.1.10</privateIpAddress></item></instancesSet></item></reservationSet><requestId>request-id</requestId></DescribeInstancesResponse>"#;

    // Captured from moto 5.2: DescribeSecurityGroups with a group-referencing TCP 179 rule and
    // an IPIP (protocol 4) rule from a CIDR.
    const DESCRIBE_SECURITY_GROUPS: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<DescribeSecurityGroupsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><securityGroupInfo><item><groupId>sg-db50ec9c3d537bfba</groupId><ipPermissionsEgress><item><ipProtocol>-1</ipProtocol><groups/><ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item></ipRanges><ipv6Ranges/><prefixListIds/></item></ipPermissionsEgress><tagSet/><vpcId>vpc-304e410eb8c949642</vpcId><ownerId>123456789012</ownerId><groupName>nodes</groupName><groupDescription>d</groupDescription><ipPermissions><item><ipProtocol>tcp</ipProtocol><fromPort>179</fromPort><toPort>179</toPort><groups><item><userId>123456789012</userId><groupId>sg-db50ec9c3d537bfba</groupId></item></groups><ipRanges/><ipv6Ranges/><prefixListIds/></item><item><ipProtocol>4</ipProtocol><fromPort>-1</fromPort><toPort>-1</toPort><groups/><ipRanges><item><cidrIp>10.0.0.0/16</cidrIp></item></ipRanges><ipv6Ranges/><prefixListIds/></item></ipPermissions></item></securityGroupInfo><requestId>request-id</requestId></DescribeSecurityGroupsResponse>"#;

    #[test]
    fn describe_instances_from_moto_decodes_the_primary_interface() {
        let instances = parse_describe_instances(DESCRIBE_INSTANCES).unwrap();
        assert_eq!(instances.len(), 1);
        let i = &instances[0];
        assert_eq!(i.id, "i-ad245fedda0697d4e");
        assert_eq!(i.private_ip, Some(Ipv4Addr::new(10, 0, 1, 10)));
        let eni = i.primary_interface().unwrap();
        assert_eq!(eni.id, "eni-c0cd5414aa807b6a4");
        assert_eq!(eni.device_index, Some(0));
        assert!(eni.source_dest_check);
        assert_eq!(eni.group_ids, ["sg-db50ec9c3d537bfba"]);
        assert_eq!(eni.subnet_id.as_deref(), Some("subnet-eca09258fccb6d026"));
        assert_eq!(eni.mac_address.as_deref(), Some("02:00:00:25:d5:5d"));
    }

    #[test]
    fn describe_security_groups_from_moto_decodes_rules() {
        let groups = parse_describe_security_groups(DESCRIBE_SECURITY_GROUPS).unwrap();
        assert_eq!(groups.len(), 1);
        let g = &groups[0];
        assert_eq!(g.name, "nodes");
        assert_eq!(g.ingress.len(), 2);
        assert_eq!(g.ingress[0].protocol, Protocol::Number(6));
        assert_eq!(g.ingress[0].group_ids, ["sg-db50ec9c3d537bfba"]);
        assert!(g.ingress[0].covers(6, Some(179)));
        assert!(!g.ingress[0].covers(6, Some(180)));
        assert!(!g.ingress[0].covers(4, None));
        assert_eq!(g.ingress[1].protocol, Protocol::Number(4));
        assert!(g.ingress[1].covers(4, None));
        assert_eq!(g.egress[0].protocol, Protocol::All);
        assert!(g.egress[0].covers(17, Some(4789)));
        assert_eq!(g.egress[0].cidrs, ["0.0.0.0/0".parse::<Ipv4Net>().unwrap()]);
    }

    #[test]
    fn error_document_yields_code_and_message() {
        let body = r#"<?xml version="1.0" encoding="utf-8"?>
<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code><Message>The instance ID 'i-nope' does not exist</Message></Error></Errors><RequestID>x</RequestID></Response>"#;
        assert_eq!(
            parse_error_document(body),
            Some((
                "InvalidInstanceID.NotFound".to_owned(),
                "The instance ID 'i-nope' does not exist".to_owned()
            ))
        );
        assert_eq!(parse_error_document("<a/>"), None);
        assert_eq!(parse_error_document("not xml"), None);
    }

    #[test]
    fn malformed_answers_name_the_element() {
        let body = "<DescribeSubnetsResponse><subnetSet><item><subnetId>subnet-1</subnetId>\
                    <cidrBlock>nope</cidrBlock></item></subnetSet></DescribeSubnetsResponse>";
        let err = parse_describe_subnets(body).unwrap_err().to_string();
        assert!(
            err.contains("subnet-1") && err.contains("cidrBlock"),
            "{err}"
        );
        let body = "<DescribeInstancesResponse><reservationSet><item><instancesSet><item>\
                    </item></instancesSet></item></reservationSet></DescribeInstancesResponse>";
        let err = parse_describe_instances(body).unwrap_err().to_string();
        assert!(err.contains("instanceId"), "{err}");
    }

    #[test]
    fn next_token_is_read_from_the_top_level_only() {
        let paged = "<R><subnetSet/><nextToken>abc</nextToken></R>";
        assert_eq!(parse_next_token(paged).as_deref(), Some("abc"));
        assert_eq!(parse_next_token("<R><subnetSet/><nextToken/></R>"), None);
        assert_eq!(parse_next_token(DESCRIBE_INSTANCES), None);
    }

    #[test]
    fn protocol_names_and_numbers_parse() {
        assert_eq!(Protocol::parse("-1"), Some(Protocol::All));
        assert_eq!(Protocol::parse("TCP"), Some(Protocol::Number(6)));
        assert_eq!(Protocol::parse("4"), Some(Protocol::Number(4)));
        assert_eq!(Protocol::parse("bogus"), None);
    }
}
