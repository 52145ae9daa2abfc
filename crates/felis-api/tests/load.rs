//! Loading YAML and JSON manifests: multi-document, all or nothing, errors with positions.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers

use felis_api::Kind;
use felis_api::load::LoadError;
use felis_api::load::parse_documents;

const TWO_POOLS: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: a
spec:
  cidr: 10.0.0.0/16
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: b
spec:
  cidr: 10.1.0.0/16
";

#[test]
fn yaml_documents_are_loaded_in_order() {
    let r = parse_documents(TWO_POOLS, None).unwrap();
    let names: Vec<&str> = r.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn invalid_document_names_its_index_line_and_path() {
    let text = format!(
        "{TWO_POOLS}---\n# third\n\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: c\nspec:\n  cidr: 10.2.0.0/33\n"
    );
    let e = parse_documents(&text, None).unwrap_err();
    assert_eq!(e.document(), 3);
    assert_eq!(e.line(), 17, "the line of the document's first content");
    assert_eq!(e.path(), "spec.cidr");
    assert!(
        matches!(
            e,
            LoadError::Invalid {
                field_line: Some(22),
                ..
            }
        ),
        "{e:?}"
    );
    let shown = e.to_string();
    assert!(shown.contains("line 22"), "{shown}");
    assert!(
        shown.contains("document 3") && shown.contains("line 17") && shown.contains("spec.cidr"),
        "{shown}"
    );
}

#[test]
fn one_bad_document_fails_the_whole_load() {
    let text = TWO_POOLS.replace("cidr: 10.1.0.0/16", "cidr: 10.1.0.0/16\n  bogus: 1");
    let e = parse_documents(&text, None).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::Invalid {
                document: 2,
                line: 8,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.path(), "spec.bogus");
}

#[test]
fn yaml_syntax_error_has_line_and_column_in_the_whole_text() {
    let text = TWO_POOLS.replace("  name: b", "  name: b\n   bad: [");
    let e = parse_documents(&text, None).unwrap_err();
    match e {
        LoadError::Syntax {
            document,
            line,
            column,
            ref message,
        } => {
            assert_eq!(document, 2);
            assert!((11..=14).contains(&line), "line {line}: {message}");
            assert!(column >= 1);
            assert!(!message.contains('\n'), "one-line message: {message:?}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn empty_documents_and_comments_are_skipped() {
    let text = format!("---\n# nothing here\n---\n\n{TWO_POOLS}---\n---\n...\n");
    let r = parse_documents(&text, None).unwrap();
    assert_eq!(r.len(), 2);
    assert!(parse_documents("", None).unwrap().is_empty());
    assert!(
        parse_documents("# just a comment\n", None)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn namespaced_kinds_take_the_default_namespace() {
    let text = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: p\n---\n\
                apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: q\n  namespace: other\n";
    let r = parse_documents(text, Some("prod")).unwrap();
    assert_eq!(r[0].namespace(), Some("prod"));
    assert_eq!(r[1].namespace(), Some("other"));
    let r = parse_documents(text, None).unwrap();
    assert_eq!(r[0].namespace(), Some("default"));
}

#[test]
fn json_object_array_and_list_are_accepted() {
    let pool = r#"{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"a"},"spec":{"cidr":"10.0.0.0/16"}}"#;
    assert_eq!(parse_documents(pool, None).unwrap().len(), 1);
    let array = format!("[{pool},\n {}]", pool.replace("\"a\"", "\"b\""));
    assert_eq!(parse_documents(&array, None).unwrap().len(), 2);
    let list = format!(r#"{{"apiVersion":"v1","kind":"List","items":[{pool}]}}"#);
    assert_eq!(
        parse_documents(&list, None).unwrap()[0].kind(),
        Kind::IpPool
    );
    let stream = format!("{pool}\n{}", pool.replace("\"a\"", "\"c\""));
    assert_eq!(parse_documents(&stream, None).unwrap().len(), 2);
}

#[test]
fn yaml_list_kind_is_accepted_and_errors_name_the_item() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: projectcalico.org/v3\n  kind: Tier\n  metadata:\n    name: t\n- apiVersion: projectcalico.org/v3\n  kind: Tier\n  metadata:\n    name: T\n";
    let e = parse_documents(text, None).unwrap_err();
    assert_eq!(e.path(), "items[1].metadata.name");
    let ok = text.replace("name: T", "name: u");
    assert_eq!(parse_documents(&ok, None).unwrap().len(), 2);
}

#[test]
fn json_array_errors_name_the_element() {
    let text = r#"[{"apiVersion":"projectcalico.org/v3","kind":"Tier","metadata":{"name":"ok"}},
 {"apiVersion":"projectcalico.org/v3","kind":"Tier","metadata":{"name":"ok2"},"spec":{"order":"x"}}]"#;
    let e = parse_documents(text, None).unwrap_err();
    assert_eq!(e.path(), "[1].spec.order");
}

#[test]
fn json_syntax_error_has_line_and_column() {
    let text = "{\n  \"apiVersion\": \"projectcalico.org/v3\",\n  \"kind\": \"IPPool\",\n  oops\n}";
    let e = parse_documents(text, None).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::Syntax {
                line: 4,
                column: 3,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn marker_with_inline_content_and_crlf_are_handled() {
    let text = "--- {apiVersion: projectcalico.org/v3, kind: Tier, metadata: {name: t}}\r\n---\r\napiVersion: projectcalico.org/v3\r\nkind: Tier\r\nmetadata:\r\n  name: u\r\n";
    let r = parse_documents(text, None).unwrap();
    assert_eq!(r.len(), 2);
}

#[test]
fn duplicate_keys_are_syntax_errors_with_their_line() {
    let text = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: t\n  name: u\n";
    let e = parse_documents(text, None).unwrap_err();
    assert!(matches!(e, LoadError::Syntax { line: 5, .. }), "{e:?}");
    assert!(e.reason().contains("duplicate"), "{e}");
    assert!(!e.reason().contains("DuplicateKeyPolicy"), "{e}");
}

#[test]
fn calico_docs_policy_example_applies_unchanged() {
    let text = "\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: default-deny
spec:
  selector: projectcalico.org/namespace not in  {'kube-system', 'calico-system', 'calico-apiserver'}
  types:
  - Ingress
  - Egress
  egress:
  - action: Allow
    protocol: UDP
    destination:
      selector: k8s-app == \"kube-dns\"
      ports:
      - 53
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-tcp-6379
  namespace: production
spec:
  selector: role == 'database'
  types:
  - Ingress
  - Egress
  ingress:
  - action: Log
    protocol: TCP
    source:
      selector: role == 'frontend'
  - action: Allow
    protocol: TCP
    source:
      selector: role == 'frontend'
    destination:
      ports:
      - 6379
  egress:
  - action: Allow
";
    let r = parse_documents(text, None).unwrap();
    assert_eq!(r.len(), 2);
}

#[test]
fn empty_yaml_fields_mean_absent() {
    let text = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\n  labels:\nspec:\n  selector:\n  ingress:\n  egress:\n";
    let r = parse_documents(text, None).unwrap();
    assert_eq!(
        r[0].to_value()["spec"]["types"],
        serde_json::json!(["Ingress"])
    );
    let text = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: t\nspec:\n";
    assert_eq!(parse_documents(text, None).unwrap().len(), 1);
}

#[test]
fn yaml_flow_mapping_is_not_mistaken_for_json() {
    let text = "{apiVersion: projectcalico.org/v3, kind: Tier, metadata: {name: t}}\n";
    assert_eq!(parse_documents(text, None).unwrap()[0].name(), "t");
}
