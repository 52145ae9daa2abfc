//! Against the moto EC2 emulator and an IMDSv2 stub: the source/destination check and
//! `aws check`. Needs `moto_server` (`python3 -m pip install 'moto[server]'`).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use felis_aws::check;
use felis_aws::check::Cluster;
use felis_aws::check::EncapMode;
use felis_aws::check::NodeSpec;
use felis_aws::check::PoolSpec;
use felis_aws::check::Verdict;
use felis_aws::imds::Imds;
use felis_aws::srcdst;
use felis_aws::srcdst::SrcDstMode;
use felis_aws::srcdst::Status;

use support::Launched;
use support::MetadataStub;
use support::Moto;
use support::World;
use support::metadata_for;

#[test]
fn disable_turns_off_the_check_on_the_device_index_0_interface() {
    let moto = Moto::start();
    let world = World::new(&moto);
    let node = world.launch(&world.subnet_a.clone(), "10.0.1.10");
    let secondary = world.attach_interface(&node.instance_id, &world.subnet_a, 1);
    let _other = world.launch(&world.subnet_a.clone(), "10.0.1.11");
    // No credentials in the settings: they come from the instance role via the stub.
    let stub = MetadataStub::start(metadata_for(&node, Some("felis-node-role")));
    let config = world.config(&moto, &stub, false);

    let status = srcdst::apply_with(SrcDstMode::Disable, &config).expect("apply Disable");
    assert_eq!(
        status,
        Status::Changed {
            instance_id: node.instance_id.clone(),
            interface_id: node.interface_id.clone(),
            enabled: false
        }
    );
    assert!(
        !world.source_dest_check(&node.interface_id),
        "primary interface still checks"
    );
    assert!(
        world.source_dest_check(&secondary),
        "the device index 1 interface was changed"
    );
    assert!(
        world.source_dest_check(&_other.interface_id),
        "another instance was changed"
    );

    let again = srcdst::apply_with(SrcDstMode::Disable, &config).expect("apply Disable again");
    assert!(
        matches!(again, Status::AlreadySet { enabled: false, .. }),
        "{again:?}"
    );
    let enabled = srcdst::apply_with(SrcDstMode::Enable, &config).expect("apply Enable");
    assert!(
        matches!(enabled, Status::Changed { enabled: true, .. }),
        "{enabled:?}"
    );
    assert!(world.source_dest_check(&node.interface_id));

    // IMDSv2: a token PUT with a TTL, and every GET carries the token.
    let seen = stub.seen();
    assert!(
        seen.iter()
            .any(|r| r.method == "PUT" && r.path == "/latest/api/token" && r.ttl.is_some())
    );
    assert!(
        seen.iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.token.is_some())
    );
    assert!(
        seen.iter()
            .any(|r| r.path == "/latest/meta-data/iam/security-credentials/felis-node-role")
    );
    assert!(
        seen.iter()
            .any(|r| r.path == "/latest/meta-data/placement/region")
    );
}

#[test]
fn metadata_client_reads_instance_region_and_interfaces() {
    let metadata = support::Metadata {
        instance_id: "i-0123456789abcdef0".to_owned(),
        region: "eu-west-1".to_owned(),
        interfaces: vec![
            ("02:00:00:00:00:02".to_owned(), 1, "eni-second".to_owned()),
            ("02:00:00:00:00:01".to_owned(), 0, "eni-first".to_owned()),
        ],
        role: None,
    };
    let stub = MetadataStub::start(metadata);
    let imds = Imds::new(&felis_aws::AwsConfig {
        imds_endpoint: Some(format!("{}/", stub.endpoint)),
        ..felis_aws::AwsConfig::default()
    });
    assert_eq!(imds.instance_id().unwrap(), "i-0123456789abcdef0");
    assert_eq!(imds.region().unwrap(), "eu-west-1");
    let interfaces = imds.interfaces().unwrap();
    assert_eq!(interfaces[0].interface_id.as_deref(), Some("eni-first"));
    assert_eq!(interfaces[0].device_number, Some(0));
    assert_eq!(interfaces[1].interface_id.as_deref(), Some("eni-second"));
    assert!(matches!(
        imds.role_credentials(),
        Err(felis_aws::Error::NoCredentials)
    ));
    // One token for the whole session.
    assert_eq!(stub.seen().iter().filter(|r| r.method == "PUT").count(), 1);
    // An expired token (401) is replaced once and the request repeated.
    stub.expire_token();
    assert_eq!(imds.instance_id().unwrap(), "i-0123456789abcdef0");
    assert_eq!(stub.seen().iter().filter(|r| r.method == "PUT").count(), 2);
}

#[test]
fn ec2_errors_name_the_call_and_code() {
    let moto = Moto::start();
    let err = moto
        .ec2()
        .describe_instance("i-00000000000000000")
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidInstanceID.NotFound"));
    assert!(!err.is_retriable());
    let text = err.to_string();
    assert!(
        text.contains("DescribeInstances") && text.contains("InvalidInstanceID.NotFound"),
        "{text}"
    );
}

/// This node in subnet A, `same` in subnet A, `far` in subnet B; pool IPIP CrossSubnet.
struct Cluster3 {
    world: World,
    this: Launched,
    same: Launched,
    far: Launched,
}

fn cluster3(moto: &Moto, bgp: bool, ipip: bool, disable_checks: bool) -> Cluster3 {
    let world = World::new(moto);
    if bgp {
        world.allow_bgp_from_group();
    }
    if ipip {
        world.allow_ipip_from_vpc();
    }
    let this = world.launch(&world.subnet_a.clone(), "10.0.1.10");
    let same = world.launch(&world.subnet_a.clone(), "10.0.1.11");
    let far = world.launch(&world.subnet_b.clone(), "10.0.2.10");
    if disable_checks {
        for eni in [&this.interface_id, &same.interface_id, &far.interface_id] {
            world
                .ec2
                .set_source_dest_check(eni, false)
                .expect("disable check");
        }
    }
    Cluster3 {
        world,
        this,
        same,
        far,
    }
}

fn cluster_spec(c: &Cluster3, mode: EncapMode) -> Cluster {
    let node = |name: &str, l: &Launched, prefix: u8| NodeSpec {
        name: name.to_owned(),
        address: format!("{}/{prefix}", l.address).parse().unwrap(),
    };
    Cluster {
        this_node: Some("node-a1".to_owned()),
        nodes: vec![
            node("node-a1", &c.this, 24),
            node("node-a2", &c.same, 24),
            node("node-b1", &c.far, 24),
        ],
        pools: vec![PoolSpec {
            name: "default-ipv4-ippool".to_owned(),
            cidr: "192.168.0.0/16".parse().unwrap(),
            ipip_mode: mode,
            vxlan_mode: EncapMode::Never,
            disabled: false,
        }],
    }
}

fn run_check(moto: &Moto, c: &Cluster3, mode: EncapMode) -> check::Report {
    let stub = MetadataStub::start(metadata_for(&c.this, None));
    let report = check::run_with(&cluster_spec(c, mode), &c.world.config(moto, &stub, true))
        .expect("aws check");
    println!("{}", report.render_table());
    report
}

#[test]
fn check_reports_a_correct_setup_as_clean() {
    let moto = Moto::start();
    let c = cluster3(&moto, true, true, true);
    let report = run_check(&moto, &c, EncapMode::CrossSubnet);
    assert!(!report.blocking(), "{report:#?}");
    assert_eq!(report.instance_id, c.this.instance_id);
    assert_eq!(report.interface_id, c.this.interface_id);
    assert_eq!(report.peers.len(), 2);
    for peer in &report.peers {
        assert!(peer.findings.is_empty(), "{peer:#?}");
        assert_eq!(peer.bgp.verdict(), Verdict::Allowed);
    }
    let same = &report.peers[0];
    assert_eq!(same.node, "node-a2");
    assert_eq!(same.same_subnet, Some(true));
    assert_eq!(
        same.ipip, None,
        "same subnet is not encapsulated under CrossSubnet"
    );
    assert!(same.source_dest_check.must_be_off);
    let far = &report.peers[1];
    assert_eq!(far.same_subnet, Some(false));
    assert_eq!(far.ipip.map(|f| f.verdict()), Some(Verdict::Allowed));
    assert_eq!(far.instance_id.as_deref(), Some(c.far.instance_id.as_str()));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["peers"][1]["ipip"]["inbound"], "allowed");
}

#[test]
fn check_finds_a_missing_bgp_rule() {
    let moto = Moto::start();
    let c = cluster3(&moto, false, true, true);
    let report = run_check(&moto, &c, EncapMode::CrossSubnet);
    assert!(report.blocking());
    for peer in &report.peers {
        assert_eq!(peer.bgp.inbound, Verdict::Denied, "{peer:#?}");
        assert!(
            peer.findings
                .iter()
                .any(|f| f.blocking && f.message.contains("TCP 179")),
            "{peer:#?}"
        );
    }
    assert!(report.render_table().contains("BLOCKED"));
}

#[test]
fn check_finds_a_missing_ipip_rule() {
    let moto = Moto::start();
    let c = cluster3(&moto, true, false, true);
    let report = run_check(&moto, &c, EncapMode::CrossSubnet);
    assert!(report.blocking());
    let same = &report.peers[0];
    assert!(
        same.findings.is_empty(),
        "same subnet needs no IPIP: {same:#?}"
    );
    let far = &report.peers[1];
    assert_eq!(far.ipip.map(|f| f.inbound), Some(Verdict::Denied));
    assert!(
        far.findings
            .iter()
            .any(|f| f.blocking && f.message.contains("IP protocol 4")),
        "{far:#?}"
    );
    // With IPIP Always, the same-subnet peer needs protocol 4 too.
    let always = run_check(&moto, &c, EncapMode::Always);
    assert!(
        always
            .peers
            .iter()
            .all(|p| p.ipip.map(|f| f.verdict()) == Some(Verdict::Denied))
    );
}

#[test]
fn check_finds_the_source_dest_check_left_on() {
    let moto = Moto::start();
    let c = cluster3(&moto, true, true, false);
    let report = run_check(&moto, &c, EncapMode::CrossSubnet);
    assert!(report.blocking());
    assert!(report.source_dest_check);
    let same = &report.peers[0];
    assert!(
        same.findings.iter().any(|f| f.blocking
            && f.message.contains("source/destination check is on")
            && f.message.contains(&c.this.interface_id)),
        "{same:#?}"
    );
    // The far peer is reached through IPIP: the check does not matter there.
    assert!(
        report.peers[1].findings.is_empty(),
        "{:#?}",
        report.peers[1]
    );
    // Disabling it through the agent's path clears the finding.
    let stub = MetadataStub::start(metadata_for(&c.this, None));
    let config = c.world.config(&moto, &stub, true);
    srcdst::apply_with(SrcDstMode::Disable, &config).unwrap();
    c.world
        .ec2
        .set_source_dest_check(&c.same.interface_id, false)
        .unwrap();
    let after = check::run_with(&cluster_spec(&c, EncapMode::CrossSubnet), &config).unwrap();
    assert!(!after.blocking(), "{}", after.render_table());
}

#[test]
fn check_evaluates_a_peer_outside_ec2_from_this_side_only() {
    let moto = Moto::start();
    let c = cluster3(&moto, true, true, true);
    let mut spec = cluster_spec(&c, EncapMode::CrossSubnet);
    spec.nodes.push(NodeSpec {
        name: "onprem".to_owned(),
        address: "172.16.0.5/24".parse().unwrap(),
    });
    let stub = MetadataStub::start(metadata_for(&c.this, None));
    let report = check::run_with(&spec, &c.world.config(&moto, &stub, true)).unwrap();
    println!("{}", report.render_table());
    let onprem = report.peers.iter().find(|p| p.node == "onprem").unwrap();
    assert_eq!(onprem.interface_id, None);
    // TCP 179 is only allowed from the group, which cannot be matched to it.
    assert_eq!(onprem.bgp.inbound, Verdict::Unknown);
    // Protocol 4 is allowed from 10.0.0.0/16 only: denied from 172.16.0.5.
    assert_eq!(onprem.ipip.map(|f| f.inbound), Some(Verdict::Denied));
    assert!(report.limitations.iter().any(|l| l.contains("onprem")));
}
