//! Policy engine benchmarks: compiling a host's program and tracing one packet, over a
//! synthetic cluster (N namespaces × 10 pods, 2 policies per namespace, a few global ones).
//! Run with `cargo bench -p felis-policy --bench policy`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::net::Ipv4Addr;

use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use felis_api::selector::Selector;
use felis_policy::Action;
use felis_policy::Endpoint;
use felis_policy::EntityRule;
use felis_policy::Namespace;
use felis_policy::Packet;
use felis_policy::Policy;
use felis_policy::PolicySet;
use felis_policy::Port;
use felis_policy::Profile;
use felis_policy::Protocol;
use felis_policy::Rule;

const APPS: [&str; 5] = ["web", "api", "db", "cache", "worker"];

fn selector(source: &str) -> Option<Selector> {
    Selector::parse(source).ok()
}

fn pod_ip(ns: usize, pod: usize) -> IpAddr {
    let [_, _, hi, lo] = u32::try_from(ns * 16 + pod)
        .unwrap_or_default()
        .to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(10, 1, hi, lo))
}

fn cluster(namespaces: usize) -> PolicySet {
    let mut set = PolicySet::new();
    for ns in 0..namespaces {
        let name = format!("ns{ns}");
        let labels: BTreeMap<String, String> =
            [("team".to_string(), format!("t{}", ns % 7))].into();
        set.add_namespace(Namespace {
            name: name.clone(),
            labels,
        });
        set.add_profile(Profile::allow_all(format!("kns.{name}")));
        for pod in 0..10 {
            let app = APPS[pod % APPS.len()];
            set.add_endpoint(Endpoint {
                name: format!("{app}-{pod}"),
                namespace: Some(name.clone()),
                labels: [("app".to_string(), app.to_string())].into(),
                ips: vec![pod_ip(ns, pod).into()],
                profiles: vec![format!("kns.{name}")],
                orchestrator: Some("k8s".to_string()),
                ..Endpoint::default()
            });
        }
        let mut db = Policy::new("db-from-api", Some(&name));
        db.selector = Selector::parse("app == 'db'").unwrap_or_default();
        let mut allow = Rule::new(Action::Allow);
        allow.protocol = Some(Protocol::TCP);
        allow.source = EntityRule {
            selector: selector("app in {'api', 'worker'}"),
            ..EntityRule::default()
        };
        allow.destination.ports = vec![Port::Number(5432)];
        db.ingress = vec![allow];
        set.add_policy(db);
        let mut monitoring = Policy::new("from-monitoring", Some(&name));
        let mut allow = Rule::new(Action::Allow);
        allow.source = EntityRule {
            namespace_selector: selector("team == 't0'"),
            selector: selector("app == 'worker'"),
            ..EntityRule::default()
        };
        monitoring.ingress = vec![allow];
        set.add_policy(monitoring);
    }
    let mut global = Policy::new("deny-external-db", None);
    global.selector = Selector::parse("app == 'db'").unwrap_or_default();
    global.order = Some(10.0);
    let mut deny = Rule::new(Action::Deny);
    deny.source.not_selector = selector("has(app)");
    global.ingress = vec![deny, Rule::new(Action::Pass)];
    set.add_policy(global);
    set
}

fn benches(c: &mut Criterion) {
    for namespaces in [10, 100] {
        let set = cluster(namespaces);
        let local: Vec<&Endpoint> = set.endpoints.iter().take(20).collect();
        c.bench_function(
            &format!("policy/compile/20-local-of-{}-endpoints", namespaces * 10),
            |b| b.iter(|| black_box(&set).compile(local.iter().copied())),
        );
        let from = &set.endpoints[1];
        let to = &set.endpoints[2];
        let packet = Packet::tcp(pod_ip(0, 1), 40000, pod_ip(0, 2), 5432);
        c.bench_function(
            &format!("policy/verdict/{}-endpoints", namespaces * 10),
            |b| b.iter(|| black_box(&set).verdict(black_box(&packet), Some(from), Some(to))),
        );
    }
}

/// The stored resources of N namespaces × 10 pods, one Kubernetes NetworkPolicy per namespace.
fn stored(namespaces: usize) -> Vec<felis_api::Resource> {
    let mut text = String::new();
    for ns in 0..namespaces {
        text.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{ns}, labels: {{team: t{}}}}}\n---\n",
            ns % 7
        ));
        for pod in 0..10 {
            let app = APPS[pod % APPS.len()];
            text.push_str(&format!(
                "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
                 metadata: {{name: node1-k8s-{app}{pod}-eth0, namespace: ns{ns}, labels: {{app: {app}}}}}\n\
                 spec: {{orchestrator: k8s, node: node1, pod: {app}{pod}, endpoint: eth0, ipNetworks: [{}/32]}}\n---\n",
                pod_ip(ns, pod)
            ));
        }
        text.push_str(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: db, namespace: ns{ns}}}\n\
             spec: {{podSelector: {{matchLabels: {{app: db}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{app: api}}}}}}, \
             {{namespaceSelector: {{matchLabels: {{team: t1}}}}}}], ports: [{{port: 5432}}]}}]}}\n---\n"
        ));
    }
    felis_api::load::parse_documents(&text, None).unwrap_or_default()
}

fn trace_benches(c: &mut Criterion) {
    for namespaces in [10, 100] {
        let resources = stored(namespaces);
        assert_eq!(
            resources.len(),
            namespaces * 12,
            "the synthetic store parses"
        );
        let query = felis_policy::trace::Query::from_args(
            "ns0/api1",
            "ns0/db2",
            "TCP",
            Some(5432),
            None,
            None,
        );
        let Ok(query) = query else { return };
        c.bench_function(
            &format!(
                "policy/trace/from-resources-and-trace-{}-endpoints",
                namespaces * 10
            ),
            |b| {
                b.iter(|| {
                    PolicySet::from_resources(black_box(&resources))
                        .and_then(|set| felis_policy::trace(&set, &query))
                        .map(|report| report.verdict)
                })
            },
        );
    }
}

criterion_group!(policy, benches, trace_benches);
criterion_main!(policy);
