//! The EC2 client's retries, error mapping and request shape, against a scripted HTTP server.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use felis_aws::Error;
use felis_aws::ec2::Ec2Client;

use support::Moto;
use support::ScriptedServer;

fn error_doc(code: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>slow down</Message></Error></Errors><RequestID>r</RequestID></Response>"
    )
}

const SUBNETS: &str = "<DescribeSubnetsResponse><subnetSet><item><subnetId>subnet-1</subnetId>\
    <cidrBlock>10.0.1.0/24</cidrBlock></item></subnetSet></DescribeSubnetsResponse>";

fn client(server: &ScriptedServer) -> Ec2Client {
    Ec2Client::new(&server.endpoint, "us-east-1", support::test_credentials())
}

#[test]
fn throttling_is_retried_three_times_then_succeeds() {
    let server = ScriptedServer::start(vec![
        (503, error_doc("RequestLimitExceeded")),
        (400, error_doc("Throttling")),
        (500, String::new()),
        (200, SUBNETS.to_owned()),
    ]);
    let subnets = client(&server)
        .describe_subnets(&["subnet-1".to_owned()])
        .unwrap();
    assert_eq!(subnets[0].cidr.to_string(), "10.0.1.0/24");
    assert_eq!(server.requests().len(), 4);
}

#[test]
fn persistent_throttling_gives_up_after_three_retries() {
    let server = ScriptedServer::start(vec![(503, error_doc("RequestLimitExceeded"))]);
    let err = client(&server)
        .describe_subnets(&["subnet-1".to_owned()])
        .unwrap_err();
    assert_eq!(server.requests().len(), 4);
    assert_eq!(err.code(), Some("RequestLimitExceeded"));
    assert_eq!(
        err.to_string(),
        "EC2 DescribeSubnets failed with RequestLimitExceeded (HTTP 503): slow down"
    );
}

#[test]
fn permission_errors_are_not_retried() {
    let server = ScriptedServer::start(vec![(403, error_doc("UnauthorizedOperation"))]);
    let err = client(&server)
        .set_source_dest_check("eni-1", false)
        .unwrap_err();
    assert_eq!(server.requests().len(), 1);
    assert!(matches!(&err, Error::Api { action, code, status: 403, .. }
        if action == "ModifyNetworkInterfaceAttribute" && code == "UnauthorizedOperation"));
}

#[test]
fn requests_are_signed_form_posts() {
    let server = ScriptedServer::start(vec![(
        200,
        "<ModifyNetworkInterfaceAttributeResponse/>".to_owned(),
    )]);
    client(&server)
        .set_source_dest_check("eni-0abc", false)
        .unwrap();
    let request = &server.requests()[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/");
    assert_eq!(
        request.body,
        "Action=ModifyNetworkInterfaceAttribute&NetworkInterfaceId=eni-0abc\
         &SourceDestCheck.Value=false&Version=2016-11-15"
    );
    let auth = request.header("authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=testing/"),
        "{auth}"
    );
    assert!(auth.contains("/us-east-1/ec2/aws4_request"), "{auth}");
    assert!(
        auth.contains("SignedHeaders=content-type;host;x-amz-date"),
        "{auth}"
    );
    assert!(request.header("x-amz-date").is_some());
    let host = request.header("host").unwrap();
    assert_eq!(
        format!("http://{host}"),
        server.endpoint,
        "the signed host is the sent host"
    );
}

#[test]
fn paged_answers_are_followed() {
    let page1 = "<DescribeSubnetsResponse><subnetSet><item><subnetId>subnet-1</subnetId>\
        <cidrBlock>10.0.1.0/24</cidrBlock></item></subnetSet><nextToken>p2</nextToken>\
        </DescribeSubnetsResponse>";
    let page2 = SUBNETS.replace("subnet-1", "subnet-2");
    let server = ScriptedServer::start(vec![(200, page1.to_owned()), (200, page2)]);
    let subnets = client(&server)
        .describe_subnets(&["subnet-1".to_owned(), "subnet-2".to_owned()])
        .unwrap();
    assert_eq!(subnets.len(), 2);
    let requests = server.requests();
    assert!(
        requests[1].body.contains("NextToken=p2"),
        "{}",
        requests[1].body
    );
}

#[test]
fn unreachable_endpoint_is_a_transport_error_naming_it() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let ec2 = Ec2Client::new(
        "http://127.0.0.1:1",
        "us-east-1",
        support::test_credentials(),
    );
    let err = ec2.describe_instance("i-1").unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "EC2 DescribeInstances request to http://127.0.0.1:1 failed"
    );
}

#[test]
fn https_endpoints_speak_tls() {
    // A listener that reads the first byte the client sends: a TLS handshake record (0x16)
    // proves the rustls stack is compiled in and used for https:// endpoints.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut first = [0_u8; 1];
        std::io::Read::read_exact(&mut stream, &mut first).unwrap();
        first[0]
    });
    let ec2 = Ec2Client::new(
        &format!("https://127.0.0.1:{port}"),
        "us-east-1",
        support::test_credentials(),
    );
    let err = ec2.describe_subnets(&["subnet-1".to_owned()]).unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert_eq!(reader.join().unwrap(), 0x16);
}

#[test]
#[should_panic(expected = "python3 -m pip install 'moto[server]'")]
fn a_missing_emulator_fails_with_the_install_command() {
    let _moto = Moto::start_with("/nonexistent/moto_server");
}

#[test]
fn disabled_metadata_service_is_never_contacted() {
    let config = felis_aws::AwsConfig {
        imds_disabled: true,
        ..felis_aws::AwsConfig::default()
    };
    let imds = felis_aws::imds::Imds::new(&config);
    assert!(matches!(imds.instance_id(), Err(Error::ImdsDisabled)));
    let err =
        felis_aws::srcdst::apply_with(felis_aws::srcdst::SrcDstMode::Disable, &config).unwrap_err();
    assert_eq!(
        err.to_string(),
        "instance metadata is needed but AWS_EC2_METADATA_DISABLED is true"
    );
}
