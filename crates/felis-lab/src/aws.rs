//! The lab's AWS: instance metadata (IMDSv2) and the EC2 Query API calls that an agent makes
//! about its source/destination check and `felis aws check` makes about the cluster, served from
//! the VPC router so that every host reaches it at its gateway. Each lab host is an instance (`i-<lab>-<host>`) with one network interface
//! (`eni-<lab>-<host>`, device index 0); `ModifyNetworkInterfaceAttribute` with
//! `SourceDestCheck.Value` turns the host's emulated check on or off, exactly as
//! `felis lab src-dst-check` does. So an agent configured with `awsSrcDstCheck: Disable` runs its
//! real AWS code path (IMDS token, instance id, region, DescribeInstances, Modify...) and the
//! lab's packets show the effect.
//!
//! An emulator, deliberately small: no signature check (any credentials pass), one request per
//! connection, and the instance is recognised by the caller's address for metadata calls.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::io::BufReader;
use std::io::Read as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::time::Duration;

use crate::Error;
use crate::State;
use crate::plan::Host;

/// The port the emulator listens on, on every gateway address of the router.
pub const PORT: u16 = 8773;
/// The region it reports.
pub const REGION: &str = "lab-1";
/// The IMDSv2 token it hands out (and then ignores).
const TOKEN: &str = "felis-lab-imds-token";
/// Largest request body it reads.
const MAX_BODY: usize = 64 * 1024;

/// The environment an agent on `host` needs to use the lab's AWS.
pub fn agent_env(host: &Host) -> Vec<(&'static str, String)> {
    let endpoint = format!("http://{}:{PORT}", host.gateway);
    vec![
        ("AWS_ENDPOINT_URL_EC2", endpoint.clone()),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint),
        ("AWS_ACCESS_KEY_ID", "felis-lab".into()),
        ("AWS_SECRET_ACCESS_KEY", "felis-lab".into()),
    ]
}

/// The instance id of a lab host.
pub fn instance_id(lab: &str, host: &str) -> String {
    format!("i-{lab}-{host}")
}

/// The network interface id of a lab host.
pub fn interface_id(lab: &str, host: &str) -> String {
    format!("eni-{lab}-{host}")
}

/// Serves until the process is killed (`lab down` kills it with the router namespace). Must run
/// inside the lab's router namespace.
///
/// # Errors
/// The lab's state cannot be read, or the port cannot be bound.
pub fn serve(name: &str) -> Result<(), Error> {
    let listener = TcpListener::bind(("0.0.0.0", PORT)).map_err(|source| Error::Spawn {
        command: format!("the lab's AWS emulator on port {PORT}"),
        source,
    })?;
    // Fail early when the lab is not there.
    State::load(name)?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let name = name.to_string();
        std::thread::spawn(move || {
            if let Err(e) = handle(&name, stream) {
                eprintln!("lab aws: {e}");
            }
        });
    }
    Ok(())
}

struct Request {
    method: String,
    path: String,
    body: String,
    peer: IpAddr,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let peer = stream.peer_addr()?.ip();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((key, value)) = header.split_once(':')
            && key.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0).min(MAX_BODY);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(Request {
        method,
        path,
        body: String::from_utf8_lossy(&body).into_owned(),
        peer,
    })
}

fn respond(
    mut stream: &TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Error",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn handle(name: &str, stream: TcpStream) -> Result<(), Error> {
    let io = |source| Error::Spawn {
        command: "the lab's AWS emulator".into(),
        source,
    };
    let request = match read_request(&stream) {
        Ok(r) if !r.method.is_empty() => r,
        // A bare connect (the readiness probe) or a broken client: nothing to answer.
        _ => return Ok(()),
    };
    // One request at a time: a Modify loads, changes and saves the lab's state.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let state = State::load(name)?;
    let (status, content_type, body) = answer(&state, &request);
    if status != 200 {
        eprintln!(
            "lab aws: {} {} -> {status} {body}",
            request.method, request.path
        );
    }
    respond(&stream, status, content_type, &body).map_err(io)
}

fn answer(state: &State, request: &Request) -> (u16, &'static str, String) {
    let lab = state.plan.spec.name.as_str();
    let text = "text/plain";
    match (request.method.as_str(), request.path.as_str()) {
        ("PUT", "/latest/api/token") => (200, text, TOKEN.into()),
        ("GET", path) if path.starts_with("/latest/meta-data/") => {
            let Some(host) = state
                .plan
                .hosts
                .iter()
                .find(|h| IpAddr::V4(h.address) == request.peer)
            else {
                return (404, text, "not a lab instance".into());
            };
            match &path["/latest/meta-data/".len()..] {
                "instance-id" => (200, text, instance_id(lab, &host.name)),
                "placement/region" => (200, text, REGION.into()),
                "local-ipv4" => (200, text, host.address.to_string()),
                _ => (404, text, "not found".into()),
            }
        }
        ("POST", "/") => ec2(state, &form(&request.body)),
        _ => (404, text, "not found".into()),
    }
}

/// `application/x-www-form-urlencoded` into a map.
fn form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

fn ec2_error(code: &str, message: &str) -> (u16, &'static str, String) {
    (
        400,
        "text/xml",
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>felis-lab</RequestID></Response>"
        ),
    )
}

fn ec2(state: &State, params: &BTreeMap<String, String>) -> (u16, &'static str, String) {
    let lab = state.plan.spec.name.as_str();
    let host_of = |id: &str, prefix: &str| {
        state
            .plan
            .hosts
            .iter()
            .find(|h| id == format!("{prefix}-{lab}-{}", h.name))
    };
    match params.get("Action").map(String::as_str) {
        Some("DescribeInstances") => {
            let ids: Vec<&String> = params
                .iter()
                .filter(|(k, _)| k.starts_with("InstanceId."))
                .map(|(_, v)| v)
                .collect();
            let mut items = String::new();
            for host in &state.plan.hosts {
                let id = instance_id(lab, &host.name);
                if !ids.is_empty() && !ids.iter().any(|i| **i == id) {
                    continue;
                }
                items.push_str(&instance_xml(state, host));
            }
            if items.is_empty() && !ids.is_empty() {
                return ec2_error(
                    "InvalidInstanceID.NotFound",
                    &format!(
                        "The instance IDs '{}' do not exist",
                        ids.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            (
                200,
                "text/xml",
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstancesResponse xmlns=\"{XMLNS}\"><requestId>felis-lab</requestId><reservationSet><item><reservationId>r-{lab}</reservationId><instancesSet>{items}</instancesSet></item></reservationSet></DescribeInstancesResponse>"
                ),
            )
        }
        Some("ModifyNetworkInterfaceAttribute") => {
            let Some(id) = params.get("NetworkInterfaceId") else {
                return ec2_error(
                    "MissingParameter",
                    "The request must contain the parameter NetworkInterfaceId",
                );
            };
            let Some(host) = host_of(id, "eni") else {
                return ec2_error(
                    "InvalidNetworkInterfaceID.NotFound",
                    &format!("The networkInterface ID '{id}' does not exist"),
                );
            };
            let on = match params.get("SourceDestCheck.Value").map(String::as_str) {
                Some("true") => true,
                Some("false") => false,
                _ => {
                    return ec2_error(
                        "InvalidParameterCombination",
                        "the lab emulates only SourceDestCheck.Value=true|false",
                    );
                }
            };
            if let Err(e) = crate::set_src_dst_check(lab, &host.name, on) {
                return (500, "text/plain", e.to_string());
            }
            eprintln!(
                "lab aws: ModifyNetworkInterfaceAttribute {id} SourceDestCheck={on} ({})",
                host.name
            );
            (
                200,
                "text/xml",
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ModifyNetworkInterfaceAttributeResponse xmlns=\"{XMLNS}\"><requestId>felis-lab</requestId><return>true</return></ModifyNetworkInterfaceAttributeResponse>"
                ),
            )
        }
        Some("DescribeNetworkInterfaces") => {
            let ids = numbered(params, "NetworkInterfaceId.");
            let addresses = filter_values(params, "addresses.private-ip-address");
            let items: String = state
                .plan
                .hosts
                .iter()
                .filter(|h| ids.is_empty() || ids.contains(&interface_id(lab, &h.name)))
                .filter(|h| addresses.is_empty() || addresses.contains(&h.address.to_string()))
                .map(|h| interface_xml(state, h))
                .collect();
            (
                200,
                "text/xml",
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeNetworkInterfacesResponse xmlns=\"{XMLNS}\"><requestId>felis-lab</requestId><networkInterfaceSet>{items}</networkInterfaceSet></DescribeNetworkInterfacesResponse>"
                ),
            )
        }
        Some("DescribeSubnets") => {
            let ids = numbered(params, "SubnetId.");
            let items: String = state
                .plan
                .subnets
                .iter()
                .filter(|s| ids.is_empty() || ids.contains(&subnet_id(lab, &s.name)))
                .map(|s| {
                    format!(
                        "<item><subnetId>{}</subnetId><vpcId>vpc-{lab}</vpcId><cidrBlock>{}</cidrBlock><availabilityZone>{REGION}a</availabilityZone></item>",
                        subnet_id(lab, &s.name),
                        s.cidr()
                    )
                })
                .collect();
            (
                200,
                "text/xml",
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeSubnetsResponse xmlns=\"{XMLNS}\"><requestId>felis-lab</requestId><subnetSet>{items}</subnetSet></DescribeSubnetsResponse>"
                ),
            )
        }
        Some("DescribeSecurityGroups") => {
            // One group on every host: all traffic from inside the VPC, anything out (the
            // lab's router filters addresses, not ports).
            let group = group_id(lab);
            let ids = numbered(params, "GroupId.");
            let items = if ids.is_empty() || ids.contains(&group) {
                format!(
                    "<item><groupId>{group}</groupId><groupName>felis-lab-nodes</groupName><vpcId>vpc-{lab}</vpcId><ipPermissions><item><ipProtocol>-1</ipProtocol><ipRanges><item><cidrIp>{VPC_CIDR}</cidrIp></item></ipRanges></item></ipPermissions><ipPermissionsEgress><item><ipProtocol>-1</ipProtocol><ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item></ipRanges></item></ipPermissionsEgress></item>"
                )
            } else {
                String::new()
            };
            (
                200,
                "text/xml",
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeSecurityGroupsResponse xmlns=\"{XMLNS}\"><requestId>felis-lab</requestId><securityGroupInfo>{items}</securityGroupInfo></DescribeSecurityGroupsResponse>"
                ),
            )
        }
        Some(other) => ec2_error(
            "InvalidAction",
            &format!("The lab's AWS does not emulate {other}"),
        ),
        None => ec2_error("MissingAction", "no Action"),
    }
}

/// The VPC's address range (every subnet is a /24 in it).
const VPC_CIDR: &str = "10.0.0.0/16";

fn subnet_id(lab: &str, subnet: &str) -> String {
    format!("subnet-{lab}-{subnet}")
}

fn group_id(lab: &str) -> String {
    format!("sg-{lab}-nodes")
}

/// The values of `Name.1`, `Name.2`, ...
fn numbered(params: &BTreeMap<String, String>, prefix: &str) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(prefix)
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
        .map(|(_, v)| v.clone())
        .collect()
}

/// The values of the `Filter.N` whose `Filter.N.Name` is `name`.
fn filter_values(params: &BTreeMap<String, String>, name: &str) -> Vec<String> {
    params
        .iter()
        .filter(|(k, v)| k.starts_with("Filter.") && k.ends_with(".Name") && v.as_str() == name)
        .flat_map(|(k, _)| {
            let prefix = format!("{}.Value.", k.trim_end_matches(".Name"));
            numbered(params, &prefix)
        })
        .collect()
}

fn interface_xml(state: &State, host: &Host) -> String {
    let lab = state.plan.spec.name.as_str();
    let check = state
        .src_dst_checks
        .get(&host.name)
        .copied()
        .unwrap_or(false);
    let subnet = subnet_id(lab, &host.subnet);
    let (id, eni, ip, group) = (
        instance_id(lab, &host.name),
        interface_id(lab, &host.name),
        host.address,
        group_id(lab),
    );
    format!(
        "<item><networkInterfaceId>{eni}</networkInterfaceId><subnetId>{subnet}</subnetId><vpcId>vpc-{lab}</vpcId><privateIpAddress>{ip}</privateIpAddress><sourceDestCheck>{check}</sourceDestCheck><groupSet><item><groupId>{group}</groupId><groupName>felis-lab-nodes</groupName></item></groupSet><attachment><deviceIndex>0</deviceIndex><instanceId>{id}</instanceId><status>attached</status></attachment><privateIpAddressesSet><item><privateIpAddress>{ip}</privateIpAddress><primary>true</primary></item></privateIpAddressesSet></item>"
    )
}

fn instance_xml(state: &State, host: &Host) -> String {
    let lab = state.plan.spec.name.as_str();
    let check = state
        .src_dst_checks
        .get(&host.name)
        .copied()
        .unwrap_or(false);
    format!(
        "<item><instanceId>{}</instanceId><privateIpAddress>{}</privateIpAddress><subnetId>{}</subnetId><vpcId>vpc-{lab}</vpcId><sourceDestCheck>{check}</sourceDestCheck><networkInterfaceSet>{}</networkInterfaceSet></item>",
        instance_id(lab, &host.name),
        host.address,
        subnet_id(lab, &host.subnet),
        interface_xml(state, host)
    )
}

/// The address the emulator answers on for `host` (its gateway), for tools and tests.
pub fn endpoint(host: &Host) -> SocketAddr {
    SocketAddr::from((host.gateway, PORT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_percent_and_plus() {
        let f = form("Action=DescribeInstances&InstanceId.1=i-a%2Db&X=a+b&Y=%zz");
        assert_eq!(f["Action"], "DescribeInstances");
        assert_eq!(f["InstanceId.1"], "i-a-b");
        assert_eq!(f["X"], "a b");
        assert_eq!(f["Y"], "%zz");
    }
}
