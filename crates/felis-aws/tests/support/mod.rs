//! Test harness: a moto EC2 emulator process and an IMDSv2 metadata stub, both on loopback.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic
)]

use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::net::Ipv4Addr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use felis_aws::AwsConfig;
use felis_aws::ec2::Ec2Client;
use felis_aws::sigv4::Credentials;

pub const INSTALL_HINT: &str = "the EC2 emulator `moto_server` is not installed: run \
     `python3 -m pip install 'moto[server]'` (or set MOTO_SERVER to the moto_server binary)";

/// A `moto_server` on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
    _log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts `$MOTO_SERVER`, else `moto_server` from PATH.
    pub fn start() -> Moto {
        let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_owned());
        Moto::start_with(&program)
    }

    /// Starts `program` as moto_server.
    pub fn start_with(program: &str) -> Moto {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("temp file for moto's log");
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("reopen log"))
            .stderr(log.reopen().expect("reopen log"))
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
            Err(e) => panic!("cannot start {program}: {e}; {INSTALL_HINT}"),
        };
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _log: log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                let log = std::fs::read_to_string(moto._log.path()).unwrap_or_default();
                panic!("{program} exited with {status} before serving: {log}\n{INSTALL_HINT}");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && moto.ec2().call("DescribeRegions", &[]).is_ok()
            {
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A client with moto's dummy credentials.
    pub fn ec2(&self) -> Ec2Client {
        Ec2Client::new(&self.endpoint, "us-east-1", test_credentials())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn test_credentials() -> Credentials {
    Credentials {
        access_key_id: "testing".to_owned(),
        secret_access_key: "testing".to_owned(),
        session_token: None,
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// One request the stub saw.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub token: Option<String>,
    pub ttl: Option<String>,
}

/// What the stub answers.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub instance_id: String,
    pub region: String,
    /// (mac, device number, interface id)
    pub interfaces: Vec<(String, u32, String)>,
    /// Instance role name; `None` for no role.
    pub role: Option<String>,
}

/// A tiny IMDSv2 server: `PUT /latest/api/token`, then GETs that must carry the token.
pub struct MetadataStub {
    pub endpoint: String,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Arc<AtomicBool>,
    /// Bumped by [`MetadataStub::expire_token`]; the valid token is `stub-token-<generation>`.
    generation: Arc<AtomicUsize>,
    port: u16,
    thread: Option<JoinHandle<()>>,
}

impl MetadataStub {
    pub fn start(metadata: Metadata) -> MetadataStub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind metadata stub");
        let port = listener.local_addr().expect("local addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicUsize::new(0));
        let thread = {
            let seen = Arc::clone(&seen);
            let stop = Arc::clone(&stop);
            let generation = Arc::clone(&generation);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let token = format!("stub-token-{}", generation.load(Ordering::SeqCst));
                        let _ = serve(stream, &metadata, &seen, &token);
                    }
                }
            })
        };
        MetadataStub {
            endpoint: format!("http://127.0.0.1:{port}"),
            seen,
            stop,
            generation,
            port,
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("lock").clone()
    }

    /// Invalidates the session token handed out so far, as its TTL running out would.
    pub fn expire_token(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for MetadataStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A parsed HTTP/1.1 request.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(stream: &TcpStream) -> std::io::Result<HttpRequest> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0_usize);
    let mut body = vec![0; length];
    std::io::Read::read_exact(&mut reader, &mut body)?;
    Ok(HttpRequest {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn write_response(mut stream: TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Bad Request",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn serve(
    stream: TcpStream,
    metadata: &Metadata,
    seen: &Mutex<Vec<SeenRequest>>,
    current_token: &str,
) -> std::io::Result<()> {
    let request = read_request(&stream)?;
    let token = request
        .header("x-aws-ec2-metadata-token")
        .map(str::to_owned);
    let ttl = request
        .header("x-aws-ec2-metadata-token-ttl-seconds")
        .map(str::to_owned);
    seen.lock().expect("lock").push(SeenRequest {
        method: request.method.clone(),
        path: request.path.clone(),
        token: token.clone(),
        ttl: ttl.clone(),
    });
    let (status, body) = answer(
        &request.method,
        &request.path,
        token.as_deref(),
        ttl.as_deref(),
        current_token,
        metadata,
    );
    write_response(stream, status, &body)
}

/// An HTTP server answering requests with a fixed script of (status, body), the last one
/// repeated; records the requests. Stands in for EC2 where moto cannot (throttling, 5xx).
pub struct ScriptedServer {
    pub endpoint: String,
    pub requests: Arc<Mutex<Vec<HttpRequest>>>,
    stop: Arc<AtomicBool>,
    port: u16,
    thread: Option<JoinHandle<()>>,
}

impl ScriptedServer {
    pub fn start(script: Vec<(u16, String)>) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted server");
        let port = listener.local_addr().expect("local addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let requests = Arc::clone(&requests);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let Ok(request) = read_request(&stream) else {
                        continue;
                    };
                    let n = {
                        let mut seen = requests.lock().expect("lock");
                        seen.push(request);
                        seen.len()
                    };
                    let (status, body) = script
                        .get(n - 1)
                        .or(script.last())
                        .cloned()
                        .unwrap_or((500, String::new()));
                    let _ = write_response(stream, status, &body);
                }
            })
        };
        ScriptedServer {
            endpoint: format!("http://127.0.0.1:{port}"),
            requests,
            stop,
            port,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<HttpRequest> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(
    method: &str,
    path: &str,
    token: Option<&str>,
    ttl: Option<&str>,
    current_token: &str,
    m: &Metadata,
) -> (u16, String) {
    if path == "/latest/api/token" {
        return match (method, ttl) {
            ("PUT", Some(_)) => (200, current_token.to_owned()),
            _ => (400, String::new()),
        };
    }
    if method != "GET" {
        return (400, String::new());
    }
    if token != Some(current_token) {
        return (401, String::new());
    }
    let macs = "/latest/meta-data/network/interfaces/macs/";
    let creds = "/latest/meta-data/iam/security-credentials/";
    match path {
        "/latest/meta-data/instance-id" => (200, m.instance_id.clone()),
        "/latest/meta-data/placement/region" => (200, m.region.clone()),
        p if p == macs => {
            (200, m.interfaces.iter().map(|(mac, _, _)| format!("{mac}/")).collect::<Vec<_>>().join("\n"))
        }
        p if p.starts_with(macs) => {
            let rest = &p[macs.len()..];
            let (mac, leaf) = rest.split_once('/').unwrap_or((rest, ""));
            match m.interfaces.iter().find(|(x, _, _)| x == mac) {
                Some((_, n, _)) if leaf == "device-number" => (200, n.to_string()),
                Some((_, _, id)) if leaf == "interface-id" => (200, id.clone()),
                _ => (404, String::new()),
            }
        }
        p if p == creds => match &m.role {
            Some(role) => (200, role.clone()),
            None => (404, String::new()),
        },
        p if p.starts_with(creds) && m.role.as_deref() == Some(&p[creds.len()..]) => (
            200,
            r#"{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"ASIAROLE","SecretAccessKey":"rolesecret","Token":"roletoken","Expiration":"2099-01-01T00:00:00Z"}"#.to_owned(),
        ),
        _ => (404, String::new()),
    }
}

// ---- building an EC2 world in moto ---------------------------------------------------------

/// The text of the first element named `tag` in `xml`.
pub fn text(xml: &str, tag: &str) -> String {
    let doc = roxmltree::Document::parse(xml).expect("XML from moto");
    doc.descendants()
        .find(|n| n.has_tag_name(tag))
        .and_then(|n| n.text())
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
        .to_owned()
}

pub fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A VPC with two subnets and one security group, in moto.
pub struct World {
    pub ec2: Ec2Client,
    pub vpc: String,
    pub subnet_a: String,
    pub subnet_b: String,
    pub group: String,
}

/// A launched instance.
#[derive(Debug, Clone)]
pub struct Launched {
    pub instance_id: String,
    pub interface_id: String,
    pub mac: String,
    pub address: Ipv4Addr,
}

impl World {
    pub fn new(moto: &Moto) -> World {
        let ec2 = moto.ec2();
        let vpc = text(
            &ec2.call("CreateVpc", &p(&[("CidrBlock", "10.0.0.0/16")]))
                .expect("CreateVpc"),
            "vpcId",
        );
        let subnet = |cidr: &str| {
            text(
                &ec2.call("CreateSubnet", &p(&[("VpcId", &vpc), ("CidrBlock", cidr)]))
                    .expect("CreateSubnet"),
                "subnetId",
            )
        };
        let subnet_a = subnet("10.0.1.0/24");
        let subnet_b = subnet("10.0.2.0/24");
        let group = text(
            &ec2.call(
                "CreateSecurityGroup",
                &p(&[
                    ("VpcId", &vpc),
                    ("GroupName", "felis-nodes"),
                    ("GroupDescription", "nodes"),
                ]),
            )
            .expect("CreateSecurityGroup"),
            "groupId",
        );
        World {
            ec2,
            vpc,
            subnet_a,
            subnet_b,
            group,
        }
    }

    /// Allows inbound TCP 179 from members of the same group.
    pub fn allow_bgp_from_group(&self) {
        self.ec2
            .call(
                "AuthorizeSecurityGroupIngress",
                &p(&[
                    ("GroupId", &self.group),
                    ("IpPermissions.1.IpProtocol", "tcp"),
                    ("IpPermissions.1.FromPort", "179"),
                    ("IpPermissions.1.ToPort", "179"),
                    ("IpPermissions.1.Groups.1.GroupId", &self.group),
                ]),
            )
            .expect("authorize TCP 179");
    }

    /// Allows inbound IPIP from the VPC CIDR (moto wants ports -1 for protocol 4).
    pub fn allow_ipip_from_vpc(&self) {
        self.ec2
            .call(
                "AuthorizeSecurityGroupIngress",
                &p(&[
                    ("GroupId", &self.group),
                    ("IpPermissions.1.IpProtocol", "4"),
                    ("IpPermissions.1.FromPort", "-1"),
                    ("IpPermissions.1.ToPort", "-1"),
                    ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/16"),
                ]),
            )
            .expect("authorize protocol 4");
    }

    pub fn launch(&self, subnet: &str, address: &str) -> Launched {
        let xml = self
            .ec2
            .call(
                "RunInstances",
                &p(&[
                    ("ImageId", "ami-12345678"),
                    ("MinCount", "1"),
                    ("MaxCount", "1"),
                    ("SubnetId", subnet),
                    ("SecurityGroupId.1", &self.group),
                    ("PrivateIpAddress", address),
                ]),
            )
            .expect("RunInstances");
        Launched {
            instance_id: text(&xml, "instanceId"),
            interface_id: text(&xml, "networkInterfaceId"),
            mac: text(&xml, "macAddress"),
            address: address.parse().expect("address"),
        }
    }

    /// Creates an interface in `subnet` and attaches it to `instance` at `device_index`.
    pub fn attach_interface(&self, instance: &str, subnet: &str, device_index: u32) -> String {
        let xml = self
            .ec2
            .call(
                "CreateNetworkInterface",
                &p(&[("SubnetId", subnet), ("SecurityGroupId.1", &self.group)]),
            )
            .expect("CreateNetworkInterface");
        let id = text(&xml, "networkInterfaceId");
        self.ec2
            .call(
                "AttachNetworkInterface",
                &p(&[
                    ("NetworkInterfaceId", &id),
                    ("InstanceId", instance),
                    ("DeviceIndex", &device_index.to_string()),
                ]),
            )
            .expect("AttachNetworkInterface");
        id
    }

    pub fn source_dest_check(&self, interface_id: &str) -> bool {
        let found = self
            .ec2
            .describe_network_interfaces(&[interface_id.to_owned()])
            .expect("DescribeNetworkInterfaces");
        found.first().expect("the interface").source_dest_check
    }

    /// Settings pointing at moto and a metadata stub for `instance`.
    pub fn config(
        &self,
        moto: &Moto,
        stub: &MetadataStub,
        with_env_credentials: bool,
    ) -> AwsConfig {
        AwsConfig {
            ec2_endpoint: Some(moto.endpoint.clone()),
            imds_endpoint: Some(stub.endpoint.clone()),
            imds_disabled: false,
            region: None,
            credentials: with_env_credentials.then(test_credentials),
        }
    }
}

pub fn metadata_for(instance: &Launched, role: Option<&str>) -> Metadata {
    Metadata {
        instance_id: instance.instance_id.clone(),
        region: "us-east-1".to_owned(),
        interfaces: vec![(instance.mac.clone(), 0, instance.interface_id.clone())],
        role: role.map(str::to_owned),
    }
}
